//! Every request the controller sends to an agent, and what comes back for it.
//!
//! A request's message id is unique across controller restarts: the high 32 bits are this
//! process's epoch (a counter the store increments at every start), the low 32 bits count
//! requests. A reply is matched only to the request with its id *and* from the agent it was
//! sent to; anything else (a late result, one for a previous controller process, a forged
//! one) is recorded as late and never completes another request. Every request has a
//! deadline, capped by configuration; a request whose agent disconnects fails at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use qs_proto::codec;
use qs_proto::{
    Body, CallOutcome, CallOutput, CallProgress, CallRecord, CallResult, CancelCall,
    CapabilityCall, Envelope, ErrorBody, ErrorCode, MercuryId, MessageId,
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::transport::{Connection, ConnectionId};

/// Late replies kept for operators to look at.
const LATE_KEPT: usize = 256;

/// Why a request did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent has no session with this controller.
    #[error("agent {0} is not connected")]
    NotConnected(MercuryId),
    /// No reply arrived in time.
    #[error("agent {id} did not answer {capability} within {timeout:?}")]
    Timeout {
        /// The agent.
        id: MercuryId,
        /// The capability called.
        capability: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The agent's connection ended before it answered.
    #[error("agent {0} disconnected before answering")]
    Disconnected(MercuryId),
    /// The agent refused the call.
    #[error("agent refused the call ({code:?}): {message}")]
    Refused {
        /// The agent's reason code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The deadline asked for is beyond the configured maximum.
    #[error("timeout {asked:?} exceeds the maximum of {max:?}")]
    TimeoutTooLong {
        /// What the caller asked for.
        asked: Duration,
        /// The configured cap.
        max: Duration,
    },
    /// The controller is shutting down.
    #[error("controller is shutting down")]
    ShuttingDown,
    /// The call could not be encoded.
    #[error("call could not be encoded")]
    Encode(#[source] codec::EncodeError),
}

/// How a request ended, as the agent said.
#[derive(Debug)]
pub enum Reply {
    /// The capability ran (successfully or not).
    Outcome(CallOutcome),
    /// The agent refused it.
    Refused(ErrorBody),
}

/// A progress report for a request in flight.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// What the agent said.
    pub message: String,
    /// Completion, 0–100, when the capability knows it.
    pub percent: Option<f32>,
}

/// A message about a call that nobody in this dispatcher waits for.
#[derive(Debug)]
pub enum CallMessage {
    /// The call's final result.
    Result(CallResult),
    /// The agent refused the call.
    Refused(ErrorBody),
    /// Progress (or the agent's `received` / `running` stage).
    Progress(CallProgress),
    /// Bytes the call wrote.
    Output(CallOutput),
}

/// The owner of calls sent with [`Dispatcher::send_call`] (the job engine): it gets every
/// message for them, and hears of registrations (with the calls the agent reports) and
/// disconnections so it can reconcile.
pub trait CallObserver: Send + Sync {
    /// A message from `from` over `connection` about call `re`; true when the observer owns
    /// the call (otherwise it is recorded as a late reply).
    fn on_call_message(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: MessageId,
        message: CallMessage,
    ) -> bool;
    /// `agent` registered over `connection` and reports these calls.
    fn on_registered(&self, agent: &MercuryId, connection: ConnectionId, calls: &[CallRecord]);
    /// `agent`'s `connection` ended.
    fn on_disconnected(&self, agent: &MercuryId, connection: ConnectionId);
}

struct Pending {
    agent: MercuryId,
    connection: ConnectionId,
    capability: String,
    sent: OffsetDateTime,
    done: oneshot::Sender<Result<Reply, CallError>>,
    progress: Option<mpsc::Sender<Progress>>,
}

/// A reply that matched no request in flight.
#[derive(Debug, Clone, Serialize)]
pub struct LateReply {
    /// The agent that sent it.
    pub agent: MercuryId,
    /// The message id it answered.
    pub re: Option<u64>,
    /// `result`, `error` or `progress`.
    pub kind: &'static str,
    /// When it arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub received: OffsetDateTime,
    /// Whether the id belongs to an earlier controller process.
    pub earlier_epoch: bool,
}

/// A request in flight, as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    /// Its message id.
    pub id: u64,
    /// The agent.
    pub agent: MercuryId,
    /// The capability.
    pub capability: String,
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub sent: OffsetDateTime,
}

/// What the dispatcher holds, for `GET /api/v1/dispatcher`.
#[derive(Debug, Clone, Serialize)]
pub struct DispatcherStatus {
    /// This process's epoch (high 32 bits of every id it sends).
    pub epoch: u32,
    /// Requests waiting for their reply.
    pub in_flight: Vec<InFlight>,
    /// The most recent replies that matched no request.
    pub late: Vec<LateReply>,
}

/// Sends requests to agents and routes their replies.
pub struct Dispatcher {
    epoch: u32,
    seq: AtomicU32,
    max_timeout: Duration,
    counters: Arc<Counters>,
    pending: Mutex<HashMap<MessageId, Pending>>,
    late: Mutex<VecDeque<LateReply>>,
    observer: OnceLock<Arc<dyn CallObserver>>,
}

impl Dispatcher {
    /// A dispatcher for this process's `epoch`, capping deadlines at `max_timeout`.
    pub fn new(epoch: u32, max_timeout: Duration, counters: Arc<Counters>) -> Self {
        Self {
            epoch,
            seq: AtomicU32::new(0),
            max_timeout,
            counters,
            pending: Mutex::new(HashMap::new()),
            late: Mutex::new(VecDeque::new()),
            observer: OnceLock::new(),
        }
    }

    /// Installs the owner of calls sent with [`Dispatcher::send_call`]; only the first one
    /// counts.
    pub fn set_observer(&self, observer: Arc<dyn CallObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Sends a call with a message id the caller chose (and recorded) without waiting for it:
    /// what comes back goes to the [`CallObserver`]. Err when the connection is gone (nothing
    /// was sent).
    pub async fn send_call(
        &self,
        conn: &Connection,
        id: MessageId,
        capability: &str,
        args: serde_json::Value,
    ) -> Result<(), CallError> {
        let env = Envelope::new(
            id,
            Body::CapabilityCall(CapabilityCall {
                capability: capability.to_owned(),
                args,
            }),
        );
        let frame = codec::encode(&env).map_err(CallError::Encode)?;
        if conn.is_closed() || conn.send(&frame).await.is_err() {
            return Err(CallError::Disconnected(conn.identity().clone()));
        }
        Ok(())
    }

    /// Asks the agent to stop call `id`; its result says how it ended.
    pub async fn cancel_call(&self, conn: &Connection, id: MessageId) -> Result<(), CallError> {
        let env = Envelope::reply(self.next_id(), id, Body::CancelCall(CancelCall {}));
        let frame = codec::encode(&env).map_err(CallError::Encode)?;
        if conn.is_closed() || conn.send(&frame).await.is_err() {
            return Err(CallError::Disconnected(conn.identity().clone()));
        }
        Ok(())
    }

    /// Tells the call owner that `agent` registered and which calls it reports.
    pub fn on_registered(&self, agent: &MercuryId, connection: ConnectionId, calls: &[CallRecord]) {
        if let Some(observer) = self.observer.get() {
            observer.on_registered(agent, connection, calls);
        }
    }

    /// Offers a message nobody here waits for to the call owner; true if it took it.
    fn offer(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: Option<MessageId>,
        message: CallMessage,
    ) -> bool {
        match (re, self.observer.get()) {
            (Some(re), Some(observer)) => observer.on_call_message(from, connection, re, message),
            _ => false,
        }
    }

    /// The longest deadline a call may have (`--max-call-timeout`).
    pub fn max_timeout(&self) -> Duration {
        self.max_timeout
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// A fresh message id: this process's epoch, then a counter.
    pub fn next_id(&self) -> MessageId {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        MessageId((u64::from(self.epoch) << 32) | u64::from(seq))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Pending>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls a capability over `conn` and waits for its outcome, forwarding progress reports
    /// to `progress` when given.
    pub async fn call(
        &self,
        conn: &Arc<Connection>,
        capability: &str,
        args: serde_json::Value,
        timeout: Duration,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<CallOutcome, CallError> {
        let agent = conn.identity().clone();
        if timeout > self.max_timeout {
            return Err(CallError::TimeoutTooLong {
                asked: timeout,
                max: self.max_timeout,
            });
        }
        let id = self.next_id();
        let env = Envelope::new(
            id,
            Body::CapabilityCall(CapabilityCall {
                capability: capability.to_owned(),
                args,
            }),
        );
        let frame = codec::encode(&env).map_err(CallError::Encode)?;
        let (done, rx) = oneshot::channel();
        self.pending().insert(
            id,
            Pending {
                agent: agent.clone(),
                connection: conn.id(),
                capability: capability.to_owned(),
                sent: OffsetDateTime::now_utc(),
                done,
                progress,
            },
        );
        if conn.is_closed() || conn.send(&frame).await.is_err() {
            self.pending().remove(&id);
            return Err(CallError::Disconnected(agent));
        }
        let reply = tokio::time::timeout(timeout, rx).await;
        self.pending().remove(&id);
        match reply {
            Ok(Ok(Ok(Reply::Outcome(outcome)))) => Ok(outcome),
            Ok(Ok(Ok(Reply::Refused(e)))) => Err(CallError::Refused {
                code: e.code,
                message: e.message,
            }),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(CallError::ShuttingDown),
            Err(_) => {
                info!(mercury_id = %agent, capability, id = id.0, "request timed out");
                Err(CallError::Timeout {
                    id: agent,
                    capability: capability.to_owned(),
                    timeout,
                })
            }
        }
    }

    /// Routes a result from `from` answering `re`.
    pub fn on_result(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: Option<MessageId>,
        result: CallResult,
    ) {
        self.route(from, connection, re, CallMessage::Result(result));
    }

    /// Routes a refusal from `from` answering `re`.
    pub fn on_refusal(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: Option<MessageId>,
        error: ErrorBody,
    ) {
        self.route(from, connection, re, CallMessage::Refused(error));
    }

    /// A result or refusal completes the waiter of its request, else goes to the call owner,
    /// else is recorded as late.
    fn route(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: Option<MessageId>,
        message: CallMessage,
    ) {
        let kind = match &message {
            CallMessage::Refused(_) => "error",
            _ => "result",
        };
        match (re.and_then(|re| self.take_if_from(re, from)), message) {
            (Some(p), CallMessage::Result(result)) => {
                let _ = p.done.send(Ok(Reply::Outcome(result.outcome)));
            }
            (Some(p), CallMessage::Refused(error)) => {
                let _ = p.done.send(Ok(Reply::Refused(error)));
            }
            (_, message) => {
                if !self.offer(from, connection, re, message) {
                    self.record_late(from, re, kind);
                }
            }
        }
    }

    /// Routes a chunk of a call's output to the call's owner.
    pub fn on_output(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: Option<MessageId>,
        output: CallOutput,
    ) {
        let waited = re.is_some_and(|re| self.pending().get(&re).is_some_and(|p| &p.agent == from));
        // A caller waiting on a single call gets progress, not output.
        if !waited && !self.offer(from, connection, re, CallMessage::Output(output)) {
            self.record_late(from, re, "output");
        }
    }

    /// Forwards a progress report to whoever waits on the request it names.
    pub fn on_progress(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: Option<MessageId>,
        progress: CallProgress,
    ) {
        let sink = re.and_then(|re| {
            self.pending()
                .get(&re)
                .filter(|p| &p.agent == from)
                .map(|p| (p.progress.clone(), p.capability.clone()))
        });
        match sink {
            Some((sink, capability)) => {
                debug!(mercury_id = %from, capability, message = %progress.message, percent = ?progress.percent, "call progress");
                if let Some(sink) = sink {
                    // A watcher that stopped reading loses progress, never the result.
                    let _ = sink.try_send(Progress {
                        message: progress.message,
                        percent: progress.percent,
                    });
                }
            }
            None => {
                if !self.offer(from, connection, re, CallMessage::Progress(progress)) {
                    self.record_late(from, re, "progress");
                }
            }
        }
    }

    /// Fails every request in flight on a connection that ended.
    pub fn on_disconnect(&self, conn: &Connection) {
        let gone: Vec<Pending> = {
            let mut pending = self.pending();
            let ids: Vec<MessageId> = pending
                .iter()
                .filter(|(_, p)| p.connection == conn.id())
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in gone {
            info!(mercury_id = %p.agent, capability = %p.capability, "agent disconnected with a request in flight");
            let _ = p.done.send(Err(CallError::Disconnected(p.agent.clone())));
        }
        if let Some(observer) = self.observer.get() {
            observer.on_disconnected(conn.identity(), conn.id());
        }
    }

    fn take_if_from(&self, re: MessageId, from: &MercuryId) -> Option<Pending> {
        let mut pending = self.pending();
        if pending.get(&re).is_some_and(|p| &p.agent == from) {
            pending.remove(&re)
        } else {
            None
        }
    }

    fn record_late(&self, from: &MercuryId, re: Option<MessageId>, kind: &'static str) {
        Counters::bump(&self.counters.late_replies);
        let earlier_epoch = re.is_some_and(|re| (re.0 >> 32) as u32 != self.epoch);
        warn!(mercury_id = %from, re = ?re, kind, earlier_epoch, "reply matches no request in flight (late, or for an earlier controller process)");
        let mut late = self
            .late
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if late.len() == LATE_KEPT {
            late.pop_front();
        }
        late.push_back(LateReply {
            agent: from.clone(),
            re: re.map(|r| r.0),
            kind,
            received: OffsetDateTime::now_utc(),
            earlier_epoch,
        });
    }

    /// Requests in flight and recent late replies.
    pub fn status(&self) -> DispatcherStatus {
        let mut in_flight: Vec<InFlight> = self
            .pending()
            .iter()
            .map(|(id, p)| InFlight {
                id: id.0,
                agent: p.agent.clone(),
                capability: p.capability.clone(),
                sent: p.sent,
            })
            .collect();
        in_flight.sort_by_key(|f| f.id);
        let late = self
            .late
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        DispatcherStatus {
            epoch: self.epoch,
            in_flight,
            late,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &str = "013c16030373937262a32e831ff18c941b6481ded8";
    const B: &str = "00bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn conn(id: &str, n: u64) -> (Arc<Connection>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(8);
        let c = Connection::new(
            ConnectionId(n),
            "127.0.0.1:1".parse().unwrap(),
            id.parse().unwrap(),
            tx,
        );
        (Arc::new(c), rx)
    }

    fn succeeded(output: serde_json::Value) -> CallResult {
        CallResult {
            outcome: CallOutcome::Succeeded(output),
            output: None,
        }
    }

    fn dispatcher(epoch: u32) -> Arc<Dispatcher> {
        Arc::new(Dispatcher::new(
            epoch,
            Duration::from_secs(3600),
            Arc::new(Counters::default()),
        ))
    }

    /// The id of the call the agent received.
    async fn sent_id(rx: &mut mpsc::Receiver<Vec<u8>>) -> MessageId {
        let frame = rx.recv().await.unwrap();
        // Strip the ZMTP header (short or long form).
        let body = if frame[0] & 0x02 != 0 {
            &frame[9..]
        } else {
            &frame[2..]
        };
        codec::decode(body, 1 << 20).unwrap().id
    }

    #[test]
    fn ids_carry_the_epoch_and_never_repeat_across_epochs() {
        let first = dispatcher(1);
        let second = dispatcher(2);
        let a = first.next_id();
        let b = second.next_id();
        assert_ne!(a, b);
        assert_eq!(a.0 >> 32, 1);
        assert_eq!(b.0 >> 32, 2);
        assert_eq!(a.0 & 0xffff_ffff, b.0 & 0xffff_ffff);
    }

    #[tokio::test]
    async fn a_result_completes_its_own_call_only() {
        let d = dispatcher(7);
        let (c, mut rx) = conn(A, 1);
        let call = {
            let (d, c) = (d.clone(), c.clone());
            tokio::spawn(async move {
                d.call(
                    &c,
                    "inspect",
                    serde_json::json!({}),
                    Duration::from_secs(30),
                    None,
                )
                .await
            })
        };
        let id = sent_id(&mut rx).await;
        // A result for another id (a previous controller process's) is late, not a match.
        let old = MessageId((6u64 << 32) | (id.0 & 0xffff_ffff));
        d.on_result(
            &A.parse().unwrap(),
            ConnectionId(1),
            Some(old),
            succeeded(serde_json::json!("old")),
        );
        // The right id from another agent is not a match either.
        d.on_result(
            &B.parse().unwrap(),
            ConnectionId(1),
            Some(id),
            succeeded(serde_json::json!("forged")),
        );
        d.on_result(
            &A.parse().unwrap(),
            ConnectionId(1),
            Some(id),
            succeeded(serde_json::json!("new")),
        );
        let outcome = call.await.unwrap().unwrap();
        assert!(matches!(outcome, CallOutcome::Succeeded(v) if v == "new"));
        let status = d.status();
        assert_eq!(status.late.len(), 2);
        assert!(status.late[0].earlier_epoch);
        assert!(!status.late[1].earlier_epoch);
        assert!(status.in_flight.is_empty());
    }

    #[tokio::test]
    async fn a_late_result_is_recorded_and_changes_nothing() {
        let d = dispatcher(3);
        let (c, mut rx) = conn(A, 1);
        let r = d
            .call(
                &c,
                "inspect",
                serde_json::json!({}),
                Duration::from_millis(20),
                None,
            )
            .await;
        assert!(matches!(r, Err(CallError::Timeout { .. })));
        let id = sent_id(&mut rx).await;
        d.on_result(
            &A.parse().unwrap(),
            ConnectionId(1),
            Some(id),
            succeeded(serde_json::json!(1)),
        );
        assert_eq!(d.status().late.len(), 1);
        assert_eq!(d.counters.snapshot().late_replies, 1);
    }

    #[tokio::test]
    async fn a_disconnect_fails_the_call_at_once() {
        let d = dispatcher(1);
        let (c, mut rx) = conn(A, 1);
        let call = {
            let (d, c) = (d.clone(), c.clone());
            tokio::spawn(async move {
                d.call(
                    &c,
                    "inspect",
                    serde_json::json!({}),
                    Duration::from_secs(3600),
                    None,
                )
                .await
            })
        };
        sent_id(&mut rx).await;
        d.on_disconnect(&c);
        assert!(matches!(
            call.await.unwrap(),
            Err(CallError::Disconnected(_))
        ));
    }

    #[tokio::test]
    async fn progress_reaches_the_waiter_and_deadlines_are_capped() {
        let d = Arc::new(Dispatcher::new(
            1,
            Duration::from_secs(60),
            Arc::new(Counters::default()),
        ));
        let (c, mut rx) = conn(A, 1);
        let too_long = d
            .call(
                &c,
                "inspect",
                serde_json::json!({}),
                Duration::from_secs(61),
                None,
            )
            .await;
        assert!(matches!(too_long, Err(CallError::TimeoutTooLong { .. })));
        let (ptx, mut prx) = mpsc::channel(8);
        let call = {
            let (d, c) = (d.clone(), c.clone());
            tokio::spawn(async move {
                d.call(
                    &c,
                    "inspect",
                    serde_json::json!({}),
                    Duration::from_secs(30),
                    Some(ptx),
                )
                .await
            })
        };
        let id = sent_id(&mut rx).await;
        let a: MercuryId = A.parse().unwrap();
        d.on_progress(
            &a,
            ConnectionId(1),
            Some(id),
            CallProgress {
                message: "half".into(),
                percent: Some(50.0),
                stage: None,
            },
        );
        assert_eq!(prx.recv().await.unwrap().message, "half");
        d.on_refusal(
            &a,
            ConnectionId(1),
            Some(id),
            ErrorBody {
                code: ErrorCode::UnknownCapability,
                message: "no".into(),
            },
        );
        assert!(matches!(
            call.await.unwrap(),
            Err(CallError::Refused { .. })
        ));
    }
}
