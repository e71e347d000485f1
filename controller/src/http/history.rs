//! Inventory history over HTTP: `GET /api/v1/inventory/{id}/history` lists a host's kept
//! versions (when, what changed), `GET /api/v1/inventory/{id}/diff?from=T&to=T` gives the JSON
//! patch between two of them (default: the version before the newest, and the newest).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_id, ApiError, AppState};
use crate::store::history::{self, HistoryEntry};

/// Loads a host's current document and kept history, or says why not.
async fn load(state: &AppState, id: &str) -> Result<(Value, Vec<HistoryEntry>), ApiError> {
    let id = parse_id(id)?;
    let current = state
        .store
        .get_inventory(id.as_str())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no inventory for {id}")))?;
    let entries = state
        .store
        .history(id.as_str())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok((current, entries))
}

/// `GET /inventory/{id}/history`: the kept versions, oldest first.
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (current, entries) = load(&state, &id).await?;
    let versions: Vec<Value> = entries
        .iter()
        .map(|e| json!({"seq": e.seq, "at": e.at, "summary": e.summary(), "changes": e.changes}))
        .collect();
    Ok(Json(json!({
        "mercury_id": current.get("mercury_id").cloned().unwrap_or(Value::String(id)),
        "versions": versions,
    })))
}

/// The times a diff is asked between (RFC 3339).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffRange {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /inventory/{id}/diff?from=T&to=T`: the JSON patch from one kept version to another.
pub async fn diff(
    State(state): State<AppState>,
    Path(id): Path<String>,
    range: Result<Query<DiffRange>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(range) = range.map_err(|e| ApiError::bad_request("bad_request", e.body_text()))?;
    let (current, entries) = load(&state, &id).await?;
    let versions = history::versions(&current, &entries).map_err(|e| ApiError::internal(&e))?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no history kept for {id}")));
    }
    let unknown = |e: history::HistoryError| {
        ApiError::new(StatusCode::NOT_FOUND, "no_such_version", e.to_string())
    };
    let (to_entry, to_doc) =
        history::version_at(&versions, range.to.as_deref()).map_err(unknown)?;
    let (from_entry, from_doc) = match range.from.as_deref() {
        Some(t) => history::version_at(&versions, Some(t)).map_err(unknown)?,
        None => {
            let i = versions
                .iter()
                .position(|(e, _)| e.seq == to_entry.seq)
                .unwrap_or(0);
            &versions[i.saturating_sub(1)]
        }
    };
    Ok(Json(json!({
        "mercury_id": current.get("mercury_id").cloned().unwrap_or(Value::String(id)),
        "from": {"seq": from_entry.seq, "at": from_entry.at},
        "to": {"seq": to_entry.seq, "at": to_entry.at},
        "patch": history::diff(from_doc, to_doc),
    })))
}
