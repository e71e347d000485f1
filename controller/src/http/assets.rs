//! `/api/v1/assets`: per-host asset sets (`qs assets import|show`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use qs_proto::MercuryId;
use qs_query::Query;
use serde_json::{json, Value};

use super::{json_body, ApiError, AppState};
use crate::assets::{self, AssetSet, ImportError};

/// `POST /api/v1/assets` with `{KEY: {values}, ...}` (KEY: MercuryId or serial): stores every
/// set in one transaction, replacing earlier sets under the same keys.
pub async fn import(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(body)?;
    let Value::Object(sets) = body else {
        return Err(ApiError::bad_request(
            "bad_assets",
            "the body must be an object of MercuryId or serial to an object of values",
        ));
    };
    let keys = assets::import(&state.store, &sets)
        .await
        .map_err(|error| match &error {
            ImportError::Invalid(reason) => ApiError::bad_request("bad_assets", reason.clone()),
            ImportError::Store(_) => ApiError::internal(&error),
        })?;
    Ok(Json(json!({"imported": keys.len(), "keys": keys})))
}

/// `GET /api/v1/assets/{key}`: the set that applies to the host `key` names (a MercuryId, or
/// a serial number of a known host), else the set stored under exactly `key`:
/// `{"key": the key it was found under, "host": MercuryId or null, "assets", "imported_at"}`.
pub async fn show(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store_error = |e: crate::store::StoreError| ApiError::internal(&e);
    let inventory = match key.parse::<MercuryId>() {
        Ok(id) => state
            .store
            .get_inventory(id.as_str())
            .await
            .map_err(store_error)?,
        Err(_) => host_with_serial(&state, &key).await?,
    };
    let host = inventory
        .as_ref()
        .and_then(|doc| doc.get("mercury_id"))
        .cloned()
        .unwrap_or(Value::Null);
    let found: Option<AssetSet> = match &inventory {
        Some(doc) => assets::asset_set_for(&state.store, doc)
            .await
            .map_err(store_error)?,
        None => None,
    };
    let found = match found {
        Some(set) => Some(set),
        None => assets::get(&state.store, &key).await.map_err(store_error)?,
    };
    let set = found.ok_or_else(|| ApiError::not_found(format!("no asset set applies to {key}")))?;
    let mut value = set.to_json();
    value["host"] = host;
    Ok(Json(value))
}

/// The one host whose product or chassis serial is `serial`; none when no host, or several,
/// have it (then only a set stored under exactly that serial is shown).
async fn host_with_serial(state: &AppState, serial: &str) -> Result<Option<Value>, ApiError> {
    let query = Query::from_request(&json!({
        "filter": {"$or": [{"dmi.product_serial": serial}, {"dmi.chassis_serial": serial}]},
        "limit": 2,
    }))
    .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let mut docs = state
        .store
        .find(&query)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok((docs.len() == 1).then(|| docs.remove(0)))
}
