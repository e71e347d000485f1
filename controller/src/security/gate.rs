//! The HTTP gate: every API request but the health checks (and the boot routes, which firmware
//! fetches and which are merged outside the gate) needs `Authorization: Bearer <token>` with a
//! strong enough role: 401 without a valid token, 403 when its role is too weak. A request that
//! passes carries a [`Caller`] extension (token, role, segment, address) for its handler.
//!
//! A token restricted to an inventory segment sees and acts only on the hosts its filter
//! selects. The gate enforces that for every route that exists today: query, count and distinct
//! filters get the segment ANDed in, aggregation pipelines start with a `$match` of it, the
//! agent list is cut to the segment, and a route naming one host answers 404 for a host outside
//! it. Routes that apply [`Caller::restrict`] themselves are listed in [`SEGMENT_AWARE`]; any
//! other route refuses a segment-restricted token (403), so a new route cannot leak by default.
//!
//! Every state-changing request that passes is written to the audit log (who, from where, what,
//! when, the answer): `audit.log` in the data dir (one JSON object a line) and the store's
//! `audit` collection (shared by controllers). Request bodies and secrets are never logged.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::caller::Caller;
use super::tokens::{check_segment, Role, TokenError, TokenStore};
use crate::http::ApiError;
use crate::store::{Collection, Store, Write};

/// File of audit records in the data dir.
pub const AUDIT_FILE: &str = "audit.log";

/// Largest request body the gate reads to put a segment into it (the API's own JSON limit).
const MAX_REWRITTEN_BODY: usize = 2 << 20;

/// Largest agent list the gate cuts to a segment.
const MAX_FILTERED_ANSWER: usize = 256 << 20;

/// Path prefixes whose handlers apply the caller's segment themselves ([`Caller::restrict`],
/// [`Caller::may_act_on`]); segment-restricted tokens may use them.
/// Jobs: creation ANDs the segment into the job's query; a restricted token sees only the
/// jobs (and their tasks) it created.
pub const SEGMENT_AWARE: &[&str] = &["/api/v1/jobs", "/api/v1/tasks/"];

/// Tokens, the audit log, and what was refused.
pub struct Gate {
    tokens: TokenStore,
    store: Store,
    audit: Mutex<std::fs::File>,
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    outside_segment: AtomicU64,
}

impl Gate {
    /// The gate over `tokens`, appending audit records to `audit.log` in `dir` and to the
    /// store's audit collection.
    pub fn open(tokens: TokenStore, store: Store, dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let audit = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join(AUDIT_FILE))?;
        Ok(Self {
            tokens,
            store,
            audit: Mutex::new(audit),
            unauthorized: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            outside_segment: AtomicU64::new(0),
        })
    }

    async fn audit(&self, caller: &Caller, method: &Method, path: &str, status: StatusCode) {
        let now = OffsetDateTime::now_utc();
        let record = json!({
            "time": now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "token": caller.name,
            "role": caller.role,
            "address": caller.address.map(|a| a.to_string()),
            "segment": caller.segment,
            "method": method.as_str(),
            "path": path,
            "status": status.as_u16(),
        });
        info!(target: "audit", token = %caller.name, role = %caller.role, address = ?caller.address, %method, path, status = status.as_u16(), "state-changing request");
        {
            let mut file = self
                .audit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(error) = writeln!(file, "{record}") {
                warn!(error = %error, "audit record not written to the file");
            }
        }
        let mut suffix = [0u8; 4];
        let _ = getrandom::fill(&mut suffix);
        let key = format!("{:020}-{}", now.unix_timestamp_nanos(), hex::encode(suffix));
        let write = Write::Record {
            collection: Collection::Audit,
            key,
            value: Some(record),
        };
        if let Err(error) = self.store.write_batch(vec![write]).await {
            warn!(error = %error, "audit record not written to the store");
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

/// Whether a path is about enrollment (admin business: who may join the fleet).
fn is_enrollment(path: &str) -> bool {
    path == "/api/v1/agents/pending"
        || path == "/api/v1/agents/allowlist"
        || path.starts_with("/api/v1/agents/allowlist/")
        || (path.starts_with("/api/v1/agents/") && path.ends_with("/approve"))
        || path == "/api/v1/enrollment"
}

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
    if is_enrollment(path) && !reads {
        return (Some(Role::Admin), true);
    }
    if reads {
        (Some(Role::Viewer), false)
    } else {
        // Capability calls, boot modes, and whatever else acts on hosts.
        (Some(Role::Operator), true)
    }
}

/// What a segment-restricted token may do with a request.
#[derive(Debug, PartialEq, Eq)]
enum SegmentRule {
    /// Nothing about hosts (health, counters).
    Open,
    /// The body's `filter` gets the segment ANDed in.
    Filter,
    /// The body's `pipeline` starts with a `$match` of the segment.
    Pipeline,
    /// The route names one host: 404 unless it is in the segment.
    Host(String),
    /// The answer (a list of agents) is cut to the segment.
    AgentList,
    /// The handler applies the segment itself.
    Aware,
    /// Not for restricted tokens.
    Deny,
}

fn segment_rule(method: &Method, path: &str) -> SegmentRule {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        (_, ["healthz"] | ["api", "v1", "healthz" | "counters"]) => SegmentRule::Open,
        ("POST", ["api", "v1", "inventory", "query" | "count" | "distinct"]) => SegmentRule::Filter,
        ("POST", ["api", "v1", "inventory", "aggregate"]) => SegmentRule::Pipeline,
        ("GET", ["api", "v1", "agents"]) => SegmentRule::AgentList,
        _ if is_enrollment(path) => SegmentRule::Deny,
        ("GET", ["api", "v1", "agents", id])
        | ("POST", ["api", "v1", "agents", id, "calls"])
        | ("GET", ["api", "v1", "inventory", id])
        | ("GET", ["api", "v1", "inventory", id, "history" | "diff"])
        | ("PUT", ["api", "v1", "hosts", id, "boot"]) => SegmentRule::Host((*id).to_owned()),
        _ if SEGMENT_AWARE.iter().any(|p| path.starts_with(p)) => SegmentRule::Aware,
        _ => SegmentRule::Deny,
    }
}

fn outside_segment(gate: &Gate, caller: &Caller, path: &str, status: StatusCode) -> Response {
    gate.outside_segment.fetch_add(1, Ordering::Relaxed);
    warn!(token = %caller.name, path, "request outside the token's segment refused");
    if status == StatusCode::NOT_FOUND {
        ApiError::not_found("no such host").into_response()
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_segment",
            format!(
                "token {} is restricted to an inventory segment; this path is not",
                caller.name
            ),
        )
        .into_response()
    }
}

/// The request with its JSON body rewritten by `f` (a body that is not a JSON object is left
/// as it is: the handler answers it).
async fn rewrite_body(
    request: Request,
    f: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> Result<Request, Response> {
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REWRITTEN_BODY).await else {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body too large",
        )
        .into_response());
    };
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut map)) => {
            f(&mut map);
            let bytes = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
            parts.headers.remove(header::CONTENT_LENGTH);
            bytes.into()
        }
        _ => bytes,
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The agent a direct capability call is for (`POST /api/v1/agents/{id}/calls`).
fn call_target(method: &Method, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["api", "v1", "agents", id, "calls"]) => Some((*id).to_owned()),
        _ => None,
    }
}

/// A call of a capability the agent marks destructive needs an admin (issue 12's roles): the
/// request back for a capability that is not, 403 for one that is.
async fn refuse_destructive(
    gate: &Gate,
    caller: &Caller,
    id: &str,
    request: Request,
) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REWRITTEN_BODY).await else {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body too large",
        )
        .into_response());
    };
    let capability = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|b| b.get("capability")?.as_str().map(str::to_owned));
    if let Some(capability) = capability {
        let doc = gate
            .store
            .get_inventory(id)
            .await
            .map_err(|e| ApiError::internal(&e).into_response())?;
        let destructive = doc
            .as_ref()
            .and_then(|d| d.pointer("/agent/capabilities")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|c| c["name"] == capability.as_str() && c["destructive"] == true);
        if destructive {
            gate.forbidden.fetch_add(1, Ordering::Relaxed);
            warn!(token = %caller.name, role = %caller.role, capability, mercury_id = id, "destructive call refused: role too weak");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{capability} is destructive: it needs an admin token (token {} has role {})",
                    caller.name, caller.role
                ),
            )
            .into_response());
        }
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The agent list cut to the caller's segment.
async fn filter_agents(gate: &Gate, caller: &Caller, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        return Response::from_parts(parts, body);
    }
    let internal = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "agent list not cut to a segment");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "agent list could not be cut to the segment",
        )
        .into_response()
    };
    let bytes = match axum::body::to_bytes(body, MAX_FILTERED_ANSWER).await {
        Ok(b) => b,
        Err(e) => return internal(&e),
    };
    let Ok(Value::Array(agents)) = serde_json::from_slice::<Value>(&bytes) else {
        return internal(&"not a list");
    };
    let ids: Vec<&Value> = agents.iter().filter_map(|a| a.get("mercury_id")).collect();
    let filter = caller.restrict(json!({"mercury_id": {"$in": ids}}));
    let query = match qs_query::Query::from_request(
        &json!({"filter": filter, "projection": {"mercury_id": 1}}),
    ) {
        Ok(q) => q,
        Err(e) => return internal(&e),
    };
    let inside: std::collections::HashSet<String> = match gate.store.find(&query).await {
        Ok(docs) => docs
            .iter()
            .filter_map(|d| d.get("mercury_id")?.as_str().map(str::to_owned))
            .collect(),
        Err(e) => return internal(&e),
    };
    let kept: Vec<&Value> = agents
        .iter()
        .filter(|a| {
            a.get("mercury_id")
                .and_then(Value::as_str)
                .is_some_and(|id| inside.contains(id))
        })
        .collect();
    Json(kept).into_response()
}

async fn check(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (Some(need), changes) = required(&method, &path) else {
        return next.run(request).await;
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let checked = match presented {
        Some(secret) => gate.tokens.check(secret).await,
        None => Ok(None),
    };
    let token = match checked {
        Ok(Some(token)) => token,
        Ok(None) => {
            gate.unauthorized.fetch_add(1, Ordering::Relaxed);
            warn!(%method, path, address = ?address, presented = presented.is_some(), "request without a valid token refused");
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
        }
        Err(error) => {
            warn!(error = %error, "tokens could not be read");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "operator tokens cannot be read from the store right now",
            )
            .into_response();
        }
    };
    let caller = Caller {
        name: token.id.clone(),
        role: token.role,
        segment: token.segment.clone(),
        address,
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
    let mut agent_list = false;
    if let Some(segment) = caller.segment.clone() {
        match segment_rule(&method, &path) {
            SegmentRule::Open | SegmentRule::Aware => {}
            SegmentRule::Filter => {
                let restricted = caller.clone();
                request = match rewrite_body(request, move |body| {
                    let filter = body.remove("filter").unwrap_or_else(|| json!({}));
                    body.insert("filter".into(), restricted.restrict(filter));
                })
                .await
                {
                    Ok(r) => r,
                    Err(response) => return response,
                };
            }
            SegmentRule::Pipeline => {
                request = match rewrite_body(request, move |body| {
                    let pipeline = match body.remove("pipeline") {
                        Some(Value::Array(stages)) => stages,
                        Some(other) => vec![other],
                        None => Vec::new(),
                    };
                    let mut stages = vec![json!({"$match": segment})];
                    stages.extend(pipeline);
                    body.insert("pipeline".into(), Value::Array(stages));
                })
                .await
                {
                    Ok(r) => r,
                    Err(response) => return response,
                };
            }
            SegmentRule::Host(id) => match caller.may_act_on(&gate.store, &id).await {
                Ok(true) => {}
                Ok(false) => return outside_segment(&gate, &caller, &path, StatusCode::NOT_FOUND),
                Err(error) => return ApiError::internal(&error).into_response(),
            },
            SegmentRule::AgentList => agent_list = true,
            SegmentRule::Deny => {
                return outside_segment(&gate, &caller, &path, StatusCode::FORBIDDEN)
            }
        }
    }
    if caller.role < Role::Admin {
        if let Some(id) = call_target(&method, &path) {
            request = match refuse_destructive(&gate, &caller, &id, request).await {
                Ok(r) => r,
                Err(response) => return response,
            };
        }
    }
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    if agent_list {
        response = filter_agents(&gate, &caller, response).await;
    }
    if changes {
        gate.audit(&caller, &method, &path, response.status()).await;
    }
    response
}

#[derive(Deserialize)]
struct NewToken {
    role: Role,
    /// An inventory filter the token is restricted to.
    #[serde(default)]
    segment: Option<Value>,
    /// How long it is valid (`30d`, `12h`); forever when absent.
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    note: String,
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::Unknown(_) => ApiError::not_found(error.to_string()),
        TokenError::BadSegment(_) => ApiError::bad_request("bad_segment", error.to_string()),
        other => ApiError::internal(&other),
    }
}

/// `30d`, `12h`… from now.
pub fn expiry(text: &str) -> Result<OffsetDateTime, ApiError> {
    let d = humantime::parse_duration(text)
        .map_err(|e| ApiError::bad_request("bad_arguments", format!("expires {text:?}: {e}")))?;
    let d = time::Duration::try_from(d)
        .map_err(|e| ApiError::bad_request("bad_arguments", e.to_string()))?;
    Ok(OffsetDateTime::now_utc() + d)
}

async fn list_tokens(State(gate): State<Arc<Gate>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(gate
        .tokens
        .list()
        .await
        .map_err(token_error)?)))
}

async fn create_token(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let expires = new.expires.as_deref().map(expiry).transpose()?;
    if let Some(segment) = &new.segment {
        check_segment(segment).map_err(token_error)?;
    }
    let (record, secret) = gate
        .tokens
        .create(new.role, new.segment, expires, new.note)
        .await
        .map_err(token_error)?;
    info!(token = %record.id, role = %record.role, segment = record.segment.is_some(), by = %caller.describe(), "token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": record, "secret": secret})),
    ))
}

async fn revoke_token(
    State(gate): State<Arc<Gate>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let record = gate.tokens.revoke(&id).await.map_err(token_error)?;
    info!(token = %record.id, "token revoked");
    Ok(Json(json!(record)))
}

async fn gate_status(State(gate): State<Arc<Gate>>) -> Json<Value> {
    Json(json!({
        "unauthorized": gate.unauthorized.load(Ordering::Relaxed),
        "forbidden": gate.forbidden.load(Ordering::Relaxed),
        "outside_segment": gate.outside_segment.load(Ordering::Relaxed),
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
        assert_eq!(
            r(Method::POST, "/api/v1/agents/00ab/approve"),
            (Some(Role::Admin), true)
        );
        assert_eq!(
            r(Method::POST, "/api/v1/agents/allowlist"),
            (Some(Role::Admin), true)
        );
        assert_eq!(
            r(Method::GET, "/api/v1/agents/pending"),
            (Some(Role::Viewer), false)
        );
    }

    #[test]
    fn segment_restricted_tokens_reach_only_routes_that_honour_segments() {
        let s = |m: Method, p: &str| segment_rule(&m, p);
        assert_eq!(s(Method::GET, "/api/v1/counters"), SegmentRule::Open);
        assert_eq!(
            s(Method::POST, "/api/v1/inventory/query"),
            SegmentRule::Filter
        );
        assert_eq!(
            s(Method::POST, "/api/v1/inventory/aggregate"),
            SegmentRule::Pipeline
        );
        assert_eq!(s(Method::GET, "/api/v1/agents"), SegmentRule::AgentList);
        assert_eq!(
            s(Method::POST, "/api/v1/agents/01ab/calls"),
            SegmentRule::Host("01ab".into())
        );
        assert_eq!(
            s(Method::GET, "/api/v1/inventory/01ab/history"),
            SegmentRule::Host("01ab".into())
        );
        assert_eq!(
            s(Method::PUT, "/api/v1/hosts/01ab/boot"),
            SegmentRule::Host("01ab".into())
        );
        assert_eq!(s(Method::GET, "/api/v1/agents/pending"), SegmentRule::Deny);
        assert_eq!(
            s(Method::POST, "/api/v1/agents/01ab/approve"),
            SegmentRule::Deny
        );
        assert_eq!(s(Method::GET, "/api/v1/dispatcher"), SegmentRule::Deny);
        assert_eq!(s(Method::GET, "/api/v1/boot"), SegmentRule::Deny);
        assert_eq!(s(Method::GET, "/api/v1/tokens"), SegmentRule::Deny);
        assert_eq!(s(Method::GET, "/api/v1/jobs"), SegmentRule::Aware);
        assert_eq!(s(Method::GET, "/api/v1/plans"), SegmentRule::Deny);
    }
}
