//! The operator HTTP API under `/api/v1`.
//!
//! [`router`] builds the whole API from state, so handler tests call it without a socket.

pub mod assets;
mod error;
pub mod history;
pub mod hosts;
mod inventory_queries;
pub mod jobs;
pub mod plans;
pub mod query_gate;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use qs_proto::{CallOutcome, MercuryId};
use serde::Deserialize;
use serde_json::{json, Value};

pub use error::ApiError;
pub use query_gate::{QueryGate, QueryLimits};

use crate::agents::counters::{Counters, CountersSnapshot};
use crate::agents::dispatcher::{CallError, Dispatcher, DispatcherStatus, Progress};
use crate::agents::registry::{AgentSummary, Registry};
use crate::store::Store;
use qs_query::Query;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Inventory documents.
    pub store: Store,
    /// Agent state.
    pub registry: Arc<Registry>,
    /// Requests to agents (capability calls).
    pub dispatcher: Arc<Dispatcher>,
    /// Agent endpoint counters.
    pub counters: Arc<Counters>,
    /// Bounds on inventory queries.
    pub queries: Arc<QueryGate>,
    /// Where plan sets live (`--config-dir`).
    pub config_dir: std::path::PathBuf,
    /// Jobs and their tasks.
    pub jobs: Arc<crate::jobs::Jobs>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/agents", get(list_agents))
        .route("/agents/{mercury_id}/calls", post(call_capability))
        .route("/inventory/{mercury_id}", get(get_inventory))
        .route("/inventory/query", post(query_inventory))
        .route("/inventory/{mercury_id}/history", get(history::list))
        .route("/inventory/{mercury_id}/diff", get(history::diff))
        .route("/plans", get(plans::list))
        .route("/plans/{set}/{name}", get(plans::show))
        .route("/assets", post(assets::import))
        .route("/assets/{key}", get(assets::show))
        .route("/inventory/count", post(inventory_queries::count_inventory))
        .route(
            "/inventory/distinct",
            post(inventory_queries::distinct_inventory),
        )
        .route(
            "/inventory/aggregate",
            post(inventory_queries::aggregate_inventory),
        )
        .route(
            "/hosts/{mercury_id}/boot",
            axum::routing::put(hosts::set_boot),
        )
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/tasks/{id}", get(jobs::task))
        .route("/tasks/{id}/logs", get(jobs::logs))
        .route("/capabilities", get(jobs::capabilities))
        .route(
            "/agents/{mercury_id}/capabilities",
            get(jobs::host_capabilities),
        )
        .route("/counters", get(counters))
        .route("/dispatcher", get(dispatcher_status));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such API path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        })
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}

/// `{"status": "ok"|"degraded", "store": {"state", "reason"?, "since"?, "location"}}`: 503 while
/// the store is degraded (it keeps retrying; the reason says why).
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let health = state.store.health().await;
    let mut store = serde_json::to_value(&health).unwrap_or_else(|_| json!({}));
    store["location"] = json!(state.store.describe());
    match health {
        crate::store::Health::Ok => (
            StatusCode::OK,
            Json(json!({"status": "ok", "store": store})),
        ),
        crate::store::Health::Degraded { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "store": store})),
        ),
    }
}

async fn list_agents(State(state): State<AppState>) -> Result<Json<Vec<AgentSummary>>, ApiError> {
    state
        .registry
        .list()
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(&e))
}

async fn dispatcher_status(State(state): State<AppState>) -> Json<DispatcherStatus> {
    Json(state.dispatcher.status())
}

async fn counters(State(state): State<AppState>) -> Json<CountersSnapshot> {
    Json(state.counters.snapshot())
}

fn parse_id(text: &str) -> Result<MercuryId, ApiError> {
    text.parse()
        .map_err(|e: qs_proto::mercury_id::InvalidMercuryId| {
            ApiError::bad_request("bad_mercury_id", e.to_string())
        })
}

fn json_body(body: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    body.map(|Json(v)| v).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                rejection.body_text(),
            )
        } else {
            ApiError::bad_request("bad_json", rejection.body_text())
        }
    })
}

async fn get_inventory(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    match state.store.get_inventory(id.as_str()).await {
        Ok(Some(doc)) => Ok(Json(doc)),
        Ok(None) => Err(ApiError::not_found(format!("no inventory for {id}"))),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

async fn query_inventory(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let body = json_body(body)?;
    let query = Query::from_request(&body)
        .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let store = state.store.clone();
    let docs = state
        .queries
        .run(async move { store.find(&query).await.map_err(|e| ApiError::internal(&e)) })
        .await?;
    let bytes: usize = docs.iter().map(approximate_json_size).sum();
    state.queries.check_size(bytes)?;
    Ok(Json(docs))
}

/// Bytes a value takes as JSON, within a few percent, without serialising it.
fn approximate_json_size(value: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 12,
            Value::String(s) => s.len() + 3,
            Value::Array(items) => {
                stack.extend(items);
                2 + items.len()
            }
            Value::Object(map) => {
                stack.extend(map.values());
                2 + map.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
    }
    total
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallRequest {
    capability: String,
    #[serde(default = "empty_args")]
    args: Value,
    /// Seconds to wait for the outcome.
    #[serde(default = "default_call_timeout")]
    timeout: f64,
}

fn empty_args() -> Value {
    json!({})
}

fn default_call_timeout() -> f64 {
    300.0
}

async fn call_capability(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let request: CallRequest = serde_json::from_value(json_body(body)?)
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let timeout = Duration::try_from_secs_f64(request.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                "timeout must be a positive number of seconds",
            )
        })?;
    let conn = state
        .registry
        .connection(&id)
        .ok_or_else(|| CallError::NotConnected(id.clone()))
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "not_connected", e.to_string()))?;
    // Progress is collected while the call runs and returned with its outcome.
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::channel::<Progress>(256);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(p) = progress_rx.recv().await {
            all.push(p);
        }
        all
    });
    let outcome = state
        .dispatcher
        .call(
            &conn,
            &request.capability,
            request.args,
            timeout,
            Some(progress_tx),
        )
        .await;
    let progress = collector.await.unwrap_or_default();
    let outcome = outcome.map_err(|error| match &error {
        CallError::NotConnected(_) | CallError::Disconnected(_) => {
            ApiError::new(StatusCode::CONFLICT, "not_connected", error.to_string())
        }
        CallError::TimeoutTooLong { .. } => ApiError::bad_request("bad_request", error.to_string()),
        CallError::Timeout { .. } => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", error.to_string())
        }
        CallError::Refused { code, .. } => {
            let code = match code {
                qs_proto::ErrorCode::UnknownCapability => "unknown_capability",
                qs_proto::ErrorCode::BadArguments => "bad_arguments",
                _ => "refused",
            };
            ApiError::bad_request(code, error.to_string())
        }
        CallError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            error.to_string(),
        ),
        CallError::Encode(_) => ApiError::internal(&error),
    })?;
    Ok(Json(match outcome {
        CallOutcome::Succeeded(output) => {
            json!({"outcome": "succeeded", "output": output, "progress": progress})
        }
        CallOutcome::Failed(report) => {
            json!({"outcome": "failed", "error": report, "progress": progress})
        }
        CallOutcome::TimedOut(report) => {
            json!({"outcome": "timed_out", "error": report, "progress": progress})
        }
        CallOutcome::Cancelled(report) => {
            json!({"outcome": "cancelled", "error": report, "progress": progress})
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn app(dir: &std::path::Path) -> (Router, Store) {
        let store = Store::open_embedded(dir).unwrap();
        let registry = Arc::new(Registry::new(
            store.clone(),
            crate::agents::registry::RegistryConfig {
                timeout: Duration::from_secs(15),
                controller: "test".into(),
            },
        ));
        let counters = Arc::new(Counters::default());
        let dispatcher = Arc::new(Dispatcher::new(
            1,
            Duration::from_secs(3600),
            counters.clone(),
        ));
        let (records, _) = crate::jobs::writer::RecordWriter::start(store.clone());
        let jobs = crate::jobs::Jobs::new(
            store.clone(),
            registry.clone(),
            dispatcher.clone(),
            records,
            crate::jobs::JobsConfig {
                default_timeout: Duration::from_secs(60),
                retention: Duration::from_secs(3600),
                grace: Duration::from_secs(1),
                reconnect_wait: Duration::from_secs(1),
                config_dir: dir.join("config"),
            },
        );
        let state = AppState {
            store: store.clone(),
            registry,
            dispatcher,
            counters,
            queries: Arc::new(QueryGate::new(QueryLimits::default())),
            jobs,
            config_dir: dir.join("config"),
        };
        (router(state), store)
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    const ID: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    #[tokio::test]
    async fn caller_mistakes_are_json_4xx() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path()).await;
        for (method, uri, body, status, code) in [
            (
                "GET",
                "/api/v1/inventory/not-an-id",
                "",
                400,
                "bad_mercury_id",
            ),
            (
                "GET",
                &format!("/api/v1/inventory/{ID}"),
                "",
                404,
                "not_found",
            ),
            (
                "POST",
                "/api/v1/inventory/query",
                "{not json",
                400,
                "bad_json",
            ),
            (
                "POST",
                "/api/v1/inventory/query",
                r#"{"filter": {"a": {"$foo": 1}}}"#,
                400,
                "bad_query",
            ),
            (
                "POST",
                "/api/v1/inventory/query",
                r#"{"filter": {}, "limit": -3}"#,
                400,
                "bad_query",
            ),
            ("DELETE", "/api/v1/agents", "", 405, "method_not_allowed"),
            // An undecodable path segment is a JSON error too, not axum's plain text.
            ("GET", "/api/v1/inventory/%ff", "", 400, "bad_request"),
            ("GET", "/api/v2/anything", "", 404, "not_found"),
            (
                "POST",
                &format!("/api/v1/agents/{ID}/calls"),
                r#"{"capability": "inspect"}"#,
                409,
                "not_connected",
            ),
            (
                "POST",
                &format!("/api/v1/agents/{ID}/calls"),
                r#"{"capability": "inspect", "timeout": -1}"#,
                400,
                "bad_request",
            ),
            (
                "POST",
                &format!("/api/v1/agents/{ID}/calls"),
                r#"{"cap": "inspect"}"#,
                400,
                "bad_request",
            ),
        ] {
            let (got, body) = call(&app, method, uri, body).await;
            assert_eq!(got.as_u16(), status, "{method} {uri}: {body}");
            assert_eq!(body["error"]["code"], code, "{method} {uri}: {body}");
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
        let (_, body) = call(
            &app,
            "POST",
            "/api/v1/inventory/query",
            r#"{"filter": {"a": {"$foo": 1}}}"#,
        )
        .await;
        assert!(body["error"]["message"].as_str().unwrap().contains("$foo"));
    }

    #[tokio::test]
    async fn an_oversize_body_is_413_in_the_json_shape() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path()).await;
        let big = format!(
            r#"{{"filter": {{"x": "{}"}}}}"#,
            "a".repeat(3 * 1024 * 1024)
        );
        let (status, body) = call(&app, "POST", "/api/v1/inventory/query", &big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "body_too_large");
    }

    #[tokio::test]
    async fn queries_and_reads_documents() {
        let dir = tempfile::tempdir().unwrap();
        let (app, store) = app(dir.path()).await;
        store
            .put_inventory(ID, serde_json::json!({"mem": {"total": 1024}}))
            .await
            .unwrap();
        let (status, docs) = call(
            &app,
            "POST",
            "/api/v1/inventory/query",
            r#"{"filter": {"mem.total": {"$gte": 1024}}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            docs,
            serde_json::json!([{"mercury_id": ID, "mem": {"total": 1024}}])
        );
        let (status, doc) = call(&app, "GET", &format!("/api/v1/inventory/{ID}"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["mem"]["total"], 1024);
        let (status, health) = call(&app, "GET", "/healthz", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(health["status"], "ok");
        assert_eq!(health["store"]["state"], "ok");
    }
}
