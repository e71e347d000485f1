//! Bounds on inventory queries: how many run at once, how long a caller waits, how big an
//! answer may be.
//!
//! Queries run on the store's blocking threads, never on the runtime's workers, so a slow one
//! cannot hold up heartbeats or `/healthz`. Each holds a permit for as long as it really runs
//! (also after its caller gave up at the deadline), so the cap on concurrent queries bounds the
//! work and memory queries can take, not only the number of waiting callers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use super::ApiError;

/// Limits of the query gate.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Queries running at once; more wait for a permit.
    pub concurrent: usize,
    /// Longest a caller waits (for a permit and the answer together).
    pub timeout: Duration,
    /// Largest answer, in bytes of JSON.
    pub max_result_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            concurrent: 4,
            timeout: Duration::from_secs(30),
            max_result_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Admits queries within [`QueryLimits`].
#[derive(Debug)]
pub struct QueryGate {
    permits: Arc<Semaphore>,
    limits: QueryLimits,
}

impl QueryGate {
    /// A gate with these limits.
    pub fn new(limits: QueryLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrent.max(1))),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// Runs a query: 503 when no permit frees up in time, 504 when it does not answer in time.
    pub async fn run<T, F>(&self, query: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!(
                        "{} queries are running; none finished within {:?}",
                        self.limits.concurrent, self.limits.timeout
                    ),
                )
            })?
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "shutting down",
                )
            })?;
        let running = tokio::spawn(async move {
            let answer = query.await;
            drop(permit);
            answer
        });
        match tokio::time::timeout_at(deadline, running).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(join)) => Err(ApiError::internal(&join)),
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "query_timeout",
                format!(
                    "the query did not finish within {:?} (--query-timeout); narrow the filter or add a limit",
                    self.limits.timeout
                ),
            )),
        }
    }

    /// Refuses an answer over the size limit (the caller asks for less: a limit, a projection).
    pub fn check_size(&self, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.limits.max_result_bytes {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "result_too_large",
                format!(
                    "the answer is {bytes} bytes, over the {}-byte limit; add a limit or a projection",
                    self.limits.max_result_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::response::IntoResponse;

    fn gate(concurrent: usize, timeout_ms: u64) -> QueryGate {
        QueryGate::new(QueryLimits {
            concurrent,
            timeout: Duration::from_millis(timeout_ms),
            max_result_bytes: 10,
        })
    }

    #[tokio::test]
    async fn a_slow_query_times_out_and_keeps_its_permit_until_it_ends() {
        let g = gate(1, 50);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = g
            .run(async move {
                let _ = released.await;
                Ok::<_, ApiError>(1)
            })
            .await;
        assert_eq!(
            slow.unwrap_err().into_response().status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        // The abandoned query still runs: the next caller finds no permit.
        let busy = g.run(async { Ok::<_, ApiError>(2) }).await;
        assert_eq!(
            busy.unwrap_err().into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        release.send(()).unwrap();
        let mut answer = None;
        for _ in 0..100 {
            if let Ok(v) = g.run(async { Ok::<_, ApiError>(3) }).await {
                answer = Some(v);
                break;
            }
        }
        assert_eq!(answer, Some(3));
    }

    #[test]
    fn oversize_answers_are_refused() {
        let g = gate(1, 50);
        assert!(g.check_size(10).is_ok());
        assert_eq!(
            g.check_size(11).unwrap_err().into_response().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
