//! The operator HTTP API under `/api/v1`.
//!
//! [`router`] builds the whole API from state, so handler tests call it without a socket.

mod error;

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

use crate::agents::counters::{Counters, CountersSnapshot};
use crate::agents::link::{AgentLink, CallError};
use crate::agents::registry::{AgentSummary, Registry};
use crate::inventory::query::Query;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Inventory documents.
    pub store: Store,
    /// Agent state.
    pub registry: Arc<Registry>,
    /// The agent protocol endpoint, for capability calls.
    pub link: Arc<AgentLink>,
    /// Agent endpoint counters.
    pub counters: Arc<Counters>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/agents", get(list_agents))
        .route("/agents/{mercury_id}/calls", post(call_capability))
        .route("/inventory/{mercury_id}", get(get_inventory))
        .route("/inventory/query", post(query_inventory))
        .route("/counters", get(counters));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such API path") })
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn list_agents(State(state): State<AppState>) -> Json<Vec<AgentSummary>> {
    Json(state.registry.list())
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
    body.map(|Json(v)| v)
        .map_err(|rejection| ApiError::bad_request("bad_json", rejection.body_text()))
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
    state
        .store
        .find(&query)
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(&e))
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
    let outcome = state
        .link
        .call(&id, &request.capability, request.args, timeout)
        .await
        .map_err(|error| match &error {
            CallError::NotConnected(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_connected", error.to_string())
            }
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
        CallOutcome::Succeeded(output) => json!({"outcome": "succeeded", "output": output}),
        CallOutcome::Failed(report) => json!({"outcome": "failed", "error": report}),
    }))
}
