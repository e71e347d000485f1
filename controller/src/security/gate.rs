//! The HTTP gate: every API request but the health checks (and the boot routes, which firmware
//! fetches and which are merged outside the gate) needs `Authorization: Bearer <token>` with a
//! strong enough role: 401 without a valid token, 403 when its role is too weak. Every
//! state-changing request that passes is written to the audit log (`audit.log` in the data
//! dir, one JSON object a line: when, which token, its role, method, path, status). Request
//! bodies and secrets are never logged.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::tokens::{Role, TokenError, TokenRecord, TokenStore};
use crate::http::ApiError;

/// File of audit records in the data dir.
pub const AUDIT_FILE: &str = "audit.log";

/// Tokens, the audit log, and what was refused.
pub struct Gate {
    tokens: TokenStore,
    audit: Mutex<std::fs::File>,
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
}

impl Gate {
    /// The gate over `tokens`, appending audit records to `audit.log` in `dir`.
    pub fn open(tokens: TokenStore, dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let audit = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join(AUDIT_FILE))?;
        Ok(Self {
            tokens,
            audit: Mutex::new(audit),
            unauthorized: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
        })
    }

    fn audit(&self, token: &TokenRecord, method: &Method, path: &str, status: StatusCode) {
        let record = json!({
            "time": OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "token": token.id,
            "role": token.role,
            "method": method.as_str(),
            "path": path,
            "status": status.as_u16(),
        });
        info!(target: "audit", token = %token.id, role = %token.role, %method, path, status = status.as_u16(), "state-changing request");
        let mut file = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = writeln!(file, "{record}") {
            warn!(error = %error, "audit record not written");
        }
    }
}

/// Read-only requests sent as POST (queries carry their filter in the body).
const READ_POSTS: [&str; 4] = [
    "/api/v1/inventory/query",
    "/api/v1/inventory/count",
    "/api/v1/inventory/distinct",
    "/api/v1/inventory/aggregate",
];

/// The role a request needs (None: open), and whether it changes state.
fn required(method: &Method, path: &str) -> (Option<Role>, bool) {
    if path == "/healthz" || path == "/api/v1/healthz" {
        return (None, false);
    }
    let reads = *method == Method::GET
        || *method == Method::HEAD
        || (*method == Method::POST && READ_POSTS.contains(&path));
    if path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/") {
        return (Some(Role::Admin), !reads);
    }
    if reads {
        (Some(Role::Viewer), false)
    } else {
        // Capability calls, boot modes, and whatever else acts on hosts.
        (Some(Role::Operator), true)
    }
}

async fn check(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (Some(need), changes) = required(&method, &path) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.and_then(|secret| gate.tokens.check(secret)) else {
        gate.unauthorized.fetch_add(1, Ordering::Relaxed);
        warn!(%method, path, presented = presented.is_some(), "request without a valid token refused");
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (qs reads admin.token from the data dir, or QS_TOKEN)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    if token.role < need {
        gate.forbidden.fetch_add(1, Ordering::Relaxed);
        warn!(%method, path, token = %token.id, role = %token.role, needs = %need, "request refused: role too weak");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} has role {}; this needs {need}",
                token.id, token.role
            ),
        )
        .into_response();
    }
    let response = next.run(request).await;
    if changes {
        gate.audit(&token, &method, &path, response.status());
    }
    response
}

#[derive(Deserialize)]
struct NewToken {
    role: Role,
    /// How long it is valid (`30d`, `12h`); forever when absent.
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    note: String,
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::Unknown(_) => ApiError::not_found(error.to_string()),
        other => ApiError::internal(&other),
    }
}

async fn list_tokens(State(gate): State<Arc<Gate>>) -> Json<Value> {
    Json(json!(gate.tokens.list()))
}

async fn create_token(
    State(gate): State<Arc<Gate>>,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let expires = match new.expires.as_deref() {
        None => None,
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| {
                ApiError::bad_request("bad_arguments", format!("expires {text:?}: {e}"))
            })?;
            let d = time::Duration::try_from(d)
                .map_err(|e| ApiError::bad_request("bad_arguments", e.to_string()))?;
            Some(OffsetDateTime::now_utc() + d)
        }
    };
    let (record, secret) = gate
        .tokens
        .create(new.role, expires, new.note)
        .map_err(token_error)?;
    info!(token = %record.id, role = %record.role, "token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": record, "secret": secret})),
    ))
}

async fn revoke_token(
    State(gate): State<Arc<Gate>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let record = gate.tokens.revoke(&id).map_err(token_error)?;
    info!(token = %record.id, "token revoked");
    Ok(Json(json!(record)))
}

async fn gate_status(State(gate): State<Arc<Gate>>) -> Json<Value> {
    Json(json!({
        "unauthorized": gate.unauthorized.load(Ordering::Relaxed),
        "forbidden": gate.forbidden.load(Ordering::Relaxed),
    }))
}

/// `app` with the token routes added and every route behind the gate.
pub fn protect(app: Router, gate: Arc<Gate>) -> Router {
    let routes = Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/gate", get(gate_status))
        .with_state(gate.clone());
    app.merge(routes)
        .layer(middleware::from_fn_with_state(gate, check))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_follow_what_a_request_does() {
        let r = |m: Method, p: &str| required(&m, p);
        assert_eq!(r(Method::GET, "/healthz"), (None, false));
        assert_eq!(r(Method::GET, "/api/v1/healthz"), (None, false));
        assert_eq!(
            r(Method::GET, "/api/v1/agents"),
            (Some(Role::Viewer), false)
        );
        assert_eq!(
            r(Method::POST, "/api/v1/inventory/query"),
            (Some(Role::Viewer), false)
        );
        assert_eq!(
            r(Method::POST, "/api/v1/agents/00ab/calls"),
            (Some(Role::Operator), true)
        );
        assert_eq!(
            r(Method::PUT, "/api/v1/hosts/00ab/boot"),
            (Some(Role::Operator), true)
        );
        assert_eq!(r(Method::GET, "/api/v1/tokens"), (Some(Role::Admin), false));
        assert_eq!(r(Method::POST, "/api/v1/tokens"), (Some(Role::Admin), true));
        assert_eq!(
            r(Method::DELETE, "/api/v1/tokens/abc"),
            (Some(Role::Admin), true)
        );
    }
}
