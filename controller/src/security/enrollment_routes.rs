//! The HTTP side of enrollment ([`crate::agents::enrollment`]):
//! - `GET /api/v1/agents/pending`: agents waiting for approval;
//! - `POST /api/v1/agents/{id}/approve` (admin): admits the key the agent presented;
//! - `GET|POST /api/v1/agents/allowlist`, `DELETE /api/v1/agents/allowlist/{id}` (admin to
//!   change): MercuryIds admitted in advance (`{"ids": [...]}`);
//! - `GET /api/v1/agents/{id}`: one agent: its record, boot mode, enrollment and identity
//!   conflicts (count, last claimant address and time);
//! - `GET|POST /api/v1/tokens/boot` (admin): one-time boot tokens (`{"mac"|"uuid", "expires"}`);
//!   the secret is in the creation answer only;
//! - `GET /api/v1/enrollment`: the policy and its counters.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use crate::agents::enrollment::{Enrollment, EnrollmentError};
use crate::http::ApiError;
use crate::store::Store;

/// Default validity of a boot token made with `qs tokens boot create`.
pub const DEFAULT_BOOT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
struct RouteState {
    enrollment: Arc<Enrollment>,
    store: Store,
}

fn parse_id(text: &str) -> Result<String, ApiError> {
    text.parse::<qs_proto::MercuryId>()
        .map(|id| id.to_string())
        .map_err(|e| ApiError::bad_request("bad_mercury_id", e.to_string()))
}

fn failed(error: EnrollmentError) -> ApiError {
    match error {
        EnrollmentError::NotPending(_) => ApiError::not_found(error.to_string()),
        EnrollmentError::BadBinding(_) => ApiError::bad_request("bad_arguments", error.to_string()),
        other => ApiError::internal(&other),
    }
}

async fn pending(State(s): State<RouteState>) -> Result<Json<Value>, ApiError> {
    let pending = s
        .enrollment
        .pending()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!(pending)))
}

async fn approve(
    State(s): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let record = s
        .enrollment
        .approve(&id, &caller.name)
        .await
        .map_err(failed)?;
    Ok(Json(record))
}

async fn allowlist(State(s): State<RouteState>) -> Result<Json<Value>, ApiError> {
    let listed = s
        .enrollment
        .allowlist()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!(listed)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<String>,
}

async fn allow(
    State(s): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<Ids>,
) -> Result<Json<Value>, ApiError> {
    let ids = body
        .ids
        .iter()
        .map(|id| parse_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    s.enrollment
        .allow(&ids, true, &caller.name)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({"allowed": ids})))
}

async fn disallow(
    State(s): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    s.enrollment
        .allow(std::slice::from_ref(&id), false, &caller.name)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({"removed": id})))
}

async fn show(
    State(s): State<RouteState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let doc = s
        .store
        .get_inventory(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let enrollment = s
        .enrollment
        .show(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if doc.is_none() && enrollment.is_none() {
        return Err(ApiError::not_found(format!("no agent {id}")));
    }
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let conflicts = enrollment
        .as_ref()
        .and_then(|e| e.get("conflicts"))
        .cloned()
        .unwrap_or_else(|| json!({"count": 0}));
    Ok(Json(json!({
        "mercury_id": id,
        "agent": field("agent"),
        "boot": field("boot"),
        "enrollment": enrollment,
        "identity_conflicts": conflicts,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBootToken {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    /// How long it is valid (`24h` when absent).
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    note: String,
}

async fn create_boot_token(
    State(s): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Json(new): Json<NewBootToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ttl = match new.expires.as_deref() {
        None => DEFAULT_BOOT_TOKEN_TTL,
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request("bad_arguments", format!("expires {text:?}: {e}"))
        })?,
    };
    let (record, secret) = s
        .enrollment
        .create_boot_token(
            new.mac.as_deref(),
            new.uuid.as_deref(),
            false,
            ttl,
            &new.note,
        )
        .await
        .map_err(failed)?;
    tracing::info!(token = %record["id"], binding = %record["binding"], by = %caller.describe(), "boot token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": record, "secret": secret})),
    ))
}

async fn boot_tokens(State(s): State<RouteState>) -> Result<Json<Value>, ApiError> {
    let tokens = s
        .enrollment
        .boot_tokens()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!(tokens)))
}

async fn status(State(s): State<RouteState>) -> Json<Value> {
    Json(s.enrollment.status())
}

/// The enrollment routes (merge them before [`super::gate::protect`], which guards them).
pub fn routes(enrollment: Arc<Enrollment>, store: Store) -> Router {
    Router::new()
        .route("/api/v1/agents/pending", get(pending))
        .route("/api/v1/agents/allowlist", get(allowlist).post(allow))
        .route("/api/v1/agents/allowlist/{mercury_id}", delete(disallow))
        .route("/api/v1/agents/{mercury_id}", get(show))
        .route("/api/v1/agents/{mercury_id}/approve", post(approve))
        .route(
            "/api/v1/tokens/boot",
            get(boot_tokens).post(create_boot_token),
        )
        .route("/api/v1/enrollment", get(status))
        .with_state(RouteState { enrollment, store })
}
