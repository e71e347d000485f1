//! `POST /api/v1/inventory/{count,distinct,aggregate}`: MongoDB's count, distinct and an
//! aggregation subset over inventory documents, on whichever store backs the controller.
//!
//! Each body is compiled by `qs-query` first, so a request outside the supported language is a
//! 400 naming the operator or stage on every backend, before any backend sees it. They are scans
//! like `query`, so they pass the same gate (concurrency, timeout, answer size).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use qs_query::{Count, Distinct, Pipeline, QueryError};

use super::{approximate_json_size, json_body, ApiError, AppState, QueryGate};
use crate::store::Store;

fn bad_query(e: QueryError) -> ApiError {
    ApiError::bad_request("bad_query", e.to_string())
}

/// `{"filter": {...}}` → `{"count": n}`.
pub(super) async fn count_inventory(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    count(&state.store, &state.queries, &json_body(body)?)
        .await
        .map(Json)
}

/// `{"path": "a.b", "filter": {...}}` → `{"values": [...]}`.
pub(super) async fn distinct_inventory(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    distinct(&state.store, &state.queries, &json_body(body)?)
        .await
        .map(Json)
}

/// `{"pipeline": [...]}` → the documents the pipeline produces.
pub(super) async fn aggregate_inventory(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    aggregate(&state.store, &state.queries, &json_body(body)?)
        .await
        .map(Json)
}

async fn count(store: &Store, gate: &QueryGate, body: &Value) -> Result<Value, ApiError> {
    let request = Count::from_request(body).map_err(bad_query)?;
    let store = store.clone();
    let n = gate
        .run(async move {
            store
                .count(&request)
                .await
                .map_err(|e| ApiError::internal(&e))
        })
        .await?;
    Ok(json!({"count": n}))
}

async fn distinct(store: &Store, gate: &QueryGate, body: &Value) -> Result<Value, ApiError> {
    let request = Distinct::from_request(body).map_err(bad_query)?;
    let store = store.clone();
    let values = gate
        .run(async move {
            store
                .distinct(&request)
                .await
                .map_err(|e| ApiError::internal(&e))
        })
        .await?;
    gate.check_size(values.iter().map(approximate_json_size).sum())?;
    Ok(json!({"values": values}))
}

async fn aggregate(store: &Store, gate: &QueryGate, body: &Value) -> Result<Vec<Value>, ApiError> {
    let pipeline = Pipeline::from_request(body).map_err(bad_query)?;
    let store = store.clone();
    let docs = gate
        .run(async move {
            store
                .aggregate(&pipeline)
                .await
                .map_err(|e| ApiError::internal(&e))
        })
        .await?;
    gate.check_size(docs.iter().map(approximate_json_size).sum())?;
    Ok(docs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::QueryLimits;
    use axum::response::IntoResponse;

    fn gate() -> QueryGate {
        QueryGate::new(QueryLimits::default())
    }

    async fn store_with_hosts(dir: &std::path::Path) -> Store {
        let store = Store::open_embedded(dir).unwrap();
        for (id, bios, mem) in [
            ("013c16030373937262a32e831ff18c941b6481ded8", "2.1", 64),
            ("013c16030373937262a32e831ff18c941b6481ded9", "2.3", 128),
            ("013c16030373937262a32e831ff18c941b6481deda", "2.1", 32),
        ] {
            store
                .put_inventory(
                    id,
                    json!({"mercury_id": id, "dmi": {"bios_version": bios}, "mem": {"total": mem}}),
                )
                .await
                .unwrap();
        }
        store
    }

    async fn status(result: Result<impl Sized, ApiError>) -> (u16, String) {
        let response = result.err().unwrap().into_response();
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn count_distinct_and_hosts_per_bios_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_hosts(dir.path()).await;
        assert_eq!(
            count(
                &store,
                &gate(),
                &json!({"filter": {"mem.total": {"$gte": 64}}})
            )
            .await
            .unwrap(),
            json!({"count": 2})
        );
        assert_eq!(
            distinct(&store, &gate(), &json!({"path": "dmi.bios_version"}))
                .await
                .unwrap(),
            json!({"values": ["2.1", "2.3"]})
        );
        assert_eq!(
            aggregate(
                &store,
                &gate(),
                &json!({"pipeline": [
                    {"$group": {"_id": "$dmi.bios_version", "hosts": {"$sum": 1}}},
                    {"$sort": {"_id": 1}}
                ]})
            )
            .await
            .unwrap(),
            vec![
                json!({"_id": "2.1", "hosts": 2}),
                json!({"_id": "2.3", "hosts": 1})
            ]
        );
    }

    #[tokio::test]
    async fn unsupported_operators_and_stages_are_400_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_hosts(dir.path()).await;
        let (code, body) =
            status(count(&store, &gate(), &json!({"filter": {"$where": "1"}})).await).await;
        assert_eq!(code, 400);
        assert!(
            body.contains("$where") && body.contains("bad_query"),
            "{body}"
        );
        let (code, body) = status(distinct(&store, &gate(), &json!({"filter": {}})).await).await;
        assert_eq!(code, 400);
        assert!(body.contains("path"), "{body}");
        let (code, body) =
            status(aggregate(&store, &gate(), &json!({"pipeline": [{"$lookup": {}}]})).await).await;
        assert_eq!(code, 400);
        assert!(body.contains("$lookup"), "{body}");
        let (code, body) = status(
            aggregate(&store, &gate(),
                &json!({"pipeline": [{"$group": {"_id": null, "s": {"$stdDevPop": "$mem.total"}}}]}),
            )
            .await,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("$stdDevPop"), "{body}");
    }
}
