//! Per-host asset sets (`qs assets import`): values templates read as `assets.*`.
//!
//! Each set is one record of [`Collection::Assets`] keyed by what the operator wrote: a
//! MercuryId or a serial number. The set that applies to a host is the one under its
//! MercuryId, else under its `dmi.product_serial`, else under its `dmi.chassis_serial`
//! (placeholder serials such as `To Be Filled By O.E.M.` never match).

use serde_json::{json, Map, Value};

use crate::store::{Collection, Store, StoreError, Write};

/// One stored asset set.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetSet {
    /// The key it was imported under (MercuryId or serial).
    pub key: String,
    /// The values.
    pub assets: Value,
    /// When it was imported (RFC 3339).
    pub imported_at: Option<String>,
}

impl AssetSet {
    /// As the API shows it.
    pub fn to_json(&self) -> Value {
        json!({"key": self.key, "assets": self.assets, "imported_at": self.imported_at})
    }
}

/// The keys a host's asset set may be stored under, in the order they are tried.
pub fn keys_for(inventory: &Value) -> Vec<String> {
    let mut keys = Vec::with_capacity(3);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).map(str::to_owned);
    if let Some(id) = text(inventory.get("mercury_id")) {
        keys.push(id);
    }
    for field in ["product_serial", "chassis_serial"] {
        if let Some(serial) = text(inventory.get("dmi").and_then(|d| d.get(field))) {
            if qs_plans::assets::is_asset_key(&serial)
                && !qs_proto::mercury_id::is_placeholder(&serial)
                && !keys.contains(&serial)
            {
                keys.push(serial);
            }
        }
    }
    keys
}

/// The asset set that applies to the host whose inventory this is, with the key it matched.
pub async fn asset_set_for(
    store: &Store,
    inventory: &Value,
) -> Result<Option<AssetSet>, StoreError> {
    for key in keys_for(inventory) {
        if let Some(set) = get(store, &key).await? {
            return Ok(Some(set));
        }
    }
    Ok(None)
}

/// The asset values that apply to the host whose inventory this is (for templates' `assets`).
pub async fn assets_for(store: &Store, inventory: &Value) -> Result<Option<Value>, StoreError> {
    Ok(asset_set_for(store, inventory).await?.map(|set| set.assets))
}

/// Point reads up to this many candidate keys; past it one read of the whole collection is
/// cheaper than a store round trip per key (a job over a fleet).
const POINT_READS: usize = 256;

/// [`assets_for`] for many hosts at once, in their order: what a job over a fleet needs at
/// creation, without three store reads per host.
pub async fn assets_for_many(
    store: &Store,
    inventories: &[&Value],
) -> Result<Vec<Option<Value>>, StoreError> {
    let candidates: Vec<Vec<String>> = inventories.iter().map(|doc| keys_for(doc)).collect();
    let mut wanted: Vec<&String> = candidates.iter().flatten().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    if wanted.len() <= POINT_READS {
        for key in wanted {
            if let Some(set) = get(store, key).await? {
                found.insert(set.key, set.assets);
            }
        }
    } else {
        let all = qs_query::Query::from_request(&json!({"filter": {}})).map_err(|e| {
            StoreError::Refused {
                message: e.to_string(),
            }
        })?;
        for record in store.find_records(Collection::Assets, &all).await? {
            if let (Some(key), Some(assets)) = (
                record.get("key").and_then(Value::as_str),
                record.get("assets"),
            ) {
                found.insert(key.to_owned(), assets.clone());
            }
        }
    }
    Ok(candidates
        .iter()
        .map(|keys| keys.iter().find_map(|k| found.get(k).cloned()))
        .collect())
}

/// The set stored under exactly this key.
pub async fn get(store: &Store, key: &str) -> Result<Option<AssetSet>, StoreError> {
    let Some(record) = store.get_record(Collection::Assets, key).await? else {
        return Ok(None);
    };
    Ok(Some(AssetSet {
        key: key.to_owned(),
        assets: record.get("assets").cloned().unwrap_or_else(|| json!({})),
        imported_at: record
            .get("imported_at")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }))
}

/// Why an import was refused before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The body is not a map of key to map of values.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("the asset sets could not be stored")]
    Store(#[from] StoreError),
}

/// Stores every set of `{key: {values}}` in one transaction (all or none); a key imported
/// again has its set replaced. Returns the keys written, in the body's order.
pub async fn import(store: &Store, sets: &Map<String, Value>) -> Result<Vec<String>, ImportError> {
    let imported_at = crate::store::document::now();
    let mut writes = Vec::with_capacity(sets.len());
    for (key, assets) in sets {
        if !qs_plans::assets::is_asset_key(key) {
            return Err(ImportError::Invalid(format!(
                "`{key}` is not a MercuryId or serial number (no spaces or `/`)"
            )));
        }
        if !assets.is_object() {
            return Err(ImportError::Invalid(format!(
                "the assets of `{key}` must be an object of names to values"
            )));
        }
        writes.push(Write::Record {
            collection: Collection::Assets,
            key: key.clone(),
            // The key inside too: a scan of the collection ([`assets_for_many`]) reads it there.
            value: Some(json!({"key": key, "assets": assets, "imported_at": imported_at})),
        });
    }
    store.write_batch(writes).await?;
    Ok(sets.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ID: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    #[test]
    fn keys_are_tried_id_then_serials_without_placeholders() {
        let doc =
            json!({"mercury_id": ID, "dmi": {"product_serial": "SN1", "chassis_serial": "CH1"}});
        assert_eq!(keys_for(&doc), [ID, "SN1", "CH1"]);
        let doc = json!({"mercury_id": ID, "dmi": {"product_serial": "To Be Filled By O.E.M.", "chassis_serial": "SN1"}});
        assert_eq!(keys_for(&doc), [ID, "SN1"]);
        assert!(keys_for(&json!({})).is_empty());
    }

    #[tokio::test]
    async fn the_most_specific_set_applies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let file = "SN1:\n  rack: 3\nCH1:\n  rack: 4\n";
        let sets: Map<String, Value> = qs_plans::parse_assets(file).unwrap().into_iter().collect();
        assert_eq!(import(&store, &sets).await.unwrap(), ["SN1", "CH1"]);
        let doc =
            json!({"mercury_id": ID, "dmi": {"product_serial": "SN1", "chassis_serial": "CH1"}});
        assert_eq!(
            assets_for(&store, &doc).await.unwrap(),
            Some(json!({"rack": 3}))
        );
        let only_chassis = json!({"mercury_id": ID, "dmi": {"chassis_serial": "CH1"}});
        assert_eq!(
            assets_for(&store, &only_chassis).await.unwrap(),
            Some(json!({"rack": 4}))
        );
        let by_id: Map<String, Value> = [(ID.to_owned(), json!({"rack": 9}))].into_iter().collect();
        import(&store, &by_id).await.unwrap();
        let set = asset_set_for(&store, &doc).await.unwrap().unwrap();
        assert_eq!((set.key.as_str(), set.assets), (ID, json!({"rack": 9})));
        assert!(set.imported_at.is_some());
        assert_eq!(assets_for(&store, &json!({"dmi": {}})).await.unwrap(), None);
    }

    #[tokio::test]
    async fn many_hosts_at_once_get_what_each_would_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let mut sets = Map::new();
        for i in 0..400 {
            if i % 3 == 0 {
                sets.insert(format!("SN{i}"), json!({"slot": i}));
            }
            if i % 5 == 0 {
                sets.insert(format!("{i:042}"), json!({"by_id": i}));
            }
        }
        import(&store, &sets).await.unwrap();
        let docs: Vec<Value> = (0..400)
            .map(|i| json!({"mercury_id": format!("{i:042}"), "dmi": {"product_serial": format!("SN{i}")}}))
            .collect();
        for hosts in [docs.len(), 10] {
            let refs: Vec<&Value> = docs[..hosts].iter().collect();
            let many = assets_for_many(&store, &refs).await.unwrap();
            assert_eq!(many.len(), hosts);
            for (doc, got) in refs.iter().zip(&many) {
                assert_eq!(got, &assets_for(&store, doc).await.unwrap(), "{doc}");
            }
            assert!(many.iter().any(Option::is_none));
        }
        assert_eq!(
            assets_for_many(&store, &[&docs[15]]).await.unwrap(),
            [Some(json!({"by_id": 15}))]
        );
    }

    #[tokio::test]
    async fn a_bad_set_refuses_the_whole_import() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let sets: Map<String, Value> =
            serde_json::from_value(json!({"SN1": {"a": 1}, "SN2": 5})).unwrap();
        assert!(matches!(
            import(&store, &sets).await,
            Err(ImportError::Invalid(_))
        ));
        assert!(get(&store, "SN1").await.unwrap().is_none());
    }
}
