//! Hosts as the boot server sees them: `PUT /api/v1/hosts/{mercury_id}/boot` sets what a host
//! boots when it PXE-boots, and [`StoreHosts`] finds the host behind a boot request in the
//! inventory store.
//!
//! The mode lives in the controller-owned `boot` subdocument of the host's document
//! (`{"mode": "local"|"agent", "set_at": RFC 3339}`), so queries see it like any other field.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use qs_boot::{BootMode, HostDirectory, HostKey, KnownHost, LookupError};
use qs_query::Query;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, parse_id, ApiError, AppState};
use crate::store::Store;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootRequest {
    mode: String,
}

/// `PUT /api/v1/hosts/{mercury_id}/boot` with `{"mode": "local"|"agent"}`: only hosts the
/// controller has a document for (a mistyped id must not create one).
pub(super) async fn set_boot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let request: BootRequest = serde_json::from_value(json_body(body)?)
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let mode: BootMode = request
        .mode
        .parse()
        .map_err(|e: qs_boot::hosts::UnknownBootMode| {
            ApiError::bad_request("bad_boot_mode", e.to_string())
        })?;
    match state.store.get_inventory(id.as_str()).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ApiError::not_found(format!("no host {id}"))),
        Err(error) => return Err(ApiError::internal(&error)),
    }
    let set_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let boot = json!({"mode": mode.as_str(), "set_at": set_at});
    state
        .store
        .set_boot(id.as_str(), boot.clone())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(host = %id, mode = mode.as_str(), "boot mode set");
    Ok(Json(boot))
}

/// The inventory store as the boot server's host directory.
#[derive(Clone)]
pub struct StoreHosts {
    store: Store,
}

impl StoreHosts {
    /// Looks hosts up in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The MongoDB filter that finds `key` in inventory documents.
fn filter(key: &HostKey) -> Value {
    match key {
        HostKey::Uuid(spellings) => json!({"dmi.product_uuid": {"$in": spellings}}),
        HostKey::Mac(mac) => json!({"$or": [
            {"interfaces.address": mac},
            {"interfaces.permanent_address": mac},
        ]}),
        HostKey::Serial(serial) => json!({"dmi.product_serial": serial}),
    }
}

impl HostDirectory for StoreHosts {
    async fn find(&self, key: &HostKey) -> Result<Vec<KnownHost>, LookupError> {
        let query = Query::from_request(&json!({
            "filter": filter(key),
            "projection": {"mercury_id": 1, "boot": 1},
        }))
        .map_err(|e| LookupError(Box::new(e)))?;
        let docs = self
            .store
            .find(&query)
            .await
            .map_err(|e| LookupError(Box::new(e)))?;
        Ok(docs
            .iter()
            .filter_map(|doc| {
                let mercury_id = doc.get("mercury_id")?.as_str()?.to_owned();
                let mode = doc
                    .pointer("/boot/mode")
                    .and_then(Value::as_str)
                    .and_then(|m| m.parse().ok());
                Some(KnownHost { mercury_id, mode })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use qs_boot::Identifiers;

    const HOST: &str = "01a3a4a71d3ad15ff5fb22f39d1b4ac3bd1e1ba7d1";
    const OTHER: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    async fn store_with_hosts(dir: &std::path::Path) -> Store {
        let store = Store::open_embedded(dir).unwrap();
        store
            .put_inventory(
                HOST,
                json!({
                    "dmi": {"product_uuid": "5f2c1a3e-8b4d-4c6a-9e21-0a1b2c3d4e5f", "product_serial": "QSG-0001"},
                    "interfaces": [{"name": "eth0", "address": "52:54:00:12:34:56"},
                                   {"name": "eth1", "address": "52:54:00:12:34:57"}],
                    "boot": {"mode": "local", "forged": true},
                }),
            )
            .await
            .unwrap();
        store
            .put_inventory(
                OTHER,
                json!({
                    "dmi": {"product_serial": "SHARED"},
                    "interfaces": [{"name": "eth0", "address": "52:54:00:00:00:01",
                                    "permanent_address": "52:54:00:00:00:02"}],
                }),
            )
            .await
            .unwrap();
        store
    }

    async fn who(store: &Store, mac: &str, uuid: &str, serial: &str) -> Option<KnownHost> {
        let ids = Identifiers::from_raw(Some(mac), Some(uuid), Some(serial));
        qs_boot::hosts::identify(&StoreHosts::new(store.clone()), &ids)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn hosts_are_found_by_uuid_in_either_byte_order_mac_or_serial() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_hosts(dir.path()).await;
        let host = Some(KnownHost {
            mercury_id: HOST.into(),
            mode: None,
        });
        // The inventory's own `boot` key is not the controller's: no mode yet.
        assert_eq!(
            who(&store, "", "5F2C1A3E-8B4D-4C6A-9E21-0A1B2C3D4E5F", "").await,
            host
        );
        assert_eq!(
            who(&store, "", "3e1a2c5f-4d8b-6a4c-9e21-0a1b2c3d4e5f", "").await,
            host
        );
        assert_eq!(who(&store, "52:54:00:12:34:57", "", "").await, host);
        assert_eq!(who(&store, "", "", "QSG-0001").await, host);
        assert_eq!(
            who(&store, "52-54-00-00-00-02", "", "")
                .await
                .unwrap()
                .mercury_id,
            OTHER
        );
        assert_eq!(who(&store, "52:54:00:99:99:99", "", "nobody").await, None);
    }

    #[tokio::test]
    async fn a_key_shared_by_two_hosts_names_neither() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_hosts(dir.path()).await;
        store
            .put_inventory(
                OTHER,
                json!({"dmi": {"product_serial": "QSG-0001"},
                       "interfaces": [{"name": "eth0", "address": "52:54:00:00:00:01"}]}),
            )
            .await
            .unwrap();
        assert_eq!(who(&store, "", "", "QSG-0001").await, None);
        // A key that names one host still decides when an earlier one is shared.
        assert_eq!(
            who(&store, "52:54:00:00:00:01", "", "QSG-0001")
                .await
                .unwrap()
                .mercury_id,
            OTHER
        );
    }

    #[tokio::test]
    async fn boot_mode_is_a_controller_owned_subdocument_that_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = store_with_hosts(dir.path()).await;
            store
                .set_boot(
                    HOST,
                    json!({"mode": "local", "set_at": "2026-12-01T08:00:00Z"}),
                )
                .await
                .unwrap();
            // A later inventory cannot overwrite what the operator set.
            store
                .put_inventory(
                    HOST,
                    json!({"dmi": {"product_serial": "QSG-0001"}, "boot": {"mode": "agent"}}),
                )
                .await
                .unwrap();
        }
        let store = Store::open_embedded(dir.path()).unwrap();
        let doc = store.get_inventory(HOST).await.unwrap().unwrap();
        assert_eq!(
            doc["boot"],
            json!({"mode": "local", "set_at": "2026-12-01T08:00:00Z"})
        );
        assert_eq!(
            who(&store, "", "", "QSG-0001").await.unwrap().mode,
            Some(BootMode::Local)
        );
        assert!(store
            .get_inventory(OTHER)
            .await
            .unwrap()
            .unwrap()
            .get("boot")
            .is_none());
    }
}
