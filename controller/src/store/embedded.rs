//! The embedded store: redb on disk, every document also in memory for queries.
//!
//! Two tables: `inventory` (MercuryId → inventory JSON) and `agent` (MercuryId → the
//! controller's agent fields), so a liveness update rewrites a few hundred bytes rather than a
//! whole inventory. Every write commits to redb first and then updates memory, so memory never
//! shows what a crash could lose, and a document is always either the old or the new one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Map, Value};

use super::{StoreError, Write};
use qs_query::Query;

const INVENTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("inventory");
const AGENT: TableDefinition<&str, &[u8]> = TableDefinition::new("agent");
/// MercuryId → the controller's `boot` subdocument (what the host boots when it PXE-boots).
const BOOT: TableDefinition<&str, &[u8]> = TableDefinition::new("boot");
/// Small controller-wide values (the process epoch counter).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One server's stored parts.
#[derive(Debug, Clone, Default)]
struct Entry {
    inventory: Option<Map<String, Value>>,
    agent: Option<Value>,
    /// The controller-owned `boot` subdocument, set by operators.
    boot: Option<Value>,
    /// `inventory` with `agent` merged in: what reads and queries see.
    merged: Arc<Value>,
}

impl Entry {
    fn remerge(&mut self, id: &str) {
        let mut doc = self.inventory.clone().unwrap_or_default();
        doc.insert("mercury_id".into(), Value::String(id.to_owned()));
        if let Some(agent) = &self.agent {
            doc.insert("agent".into(), agent.clone());
        }
        // Only the controller writes `boot`: an inventory's own key of that name never shows.
        match &self.boot {
            Some(boot) => doc.insert("boot".into(), boot.clone()),
            None => doc.remove("boot"),
        };
        self.merged = Arc::new(Value::Object(doc));
    }
}

/// Inventory documents in a redb file, mirrored in memory.
pub struct EmbeddedStore {
    db: Database,
    docs: RwLock<BTreeMap<String, Entry>>,
    /// Held across a batch's conditions, commit and memory update, so a conditional write is
    /// decided against exactly what it replaces (redb serialises write transactions anyway).
    writer: std::sync::Mutex<()>,
}

fn storage(operation: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Storage { operation, source }
}

impl EmbeddedStore {
    /// Opens or creates `quicksilver.redb` in `data_dir` and loads every document.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.to_owned(),
            source: redb::DatabaseError::Storage(redb::StorageError::Io(e)),
        })?;
        let path = data_dir.join("quicksilver.redb");
        let db = Database::create(&path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            source => StoreError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let store = Self {
            db,
            docs: RwLock::new(BTreeMap::new()),
            writer: std::sync::Mutex::new(()),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<(), StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(|e| storage("begin")(e.into()))?;
        // Create both tables on first open, so reads below never miss them.
        write
            .open_table(INVENTORY)
            .map_err(|e| storage("open table")(e.into()))?;
        write
            .open_table(AGENT)
            .map_err(|e| storage("open table")(e.into()))?;
        write
            .open_table(META)
            .map_err(|e| storage("open table")(e.into()))?;
        write.commit().map_err(|e| storage("commit")(e.into()))?;

        let read = self
            .db
            .begin_read()
            .map_err(|e| storage("begin")(e.into()))?;
        let mut docs: BTreeMap<String, Entry> = BTreeMap::new();
        let inventory = read
            .open_table(INVENTORY)
            .map_err(|e| storage("open table")(e.into()))?;
        for row in inventory.iter().map_err(|e| storage("scan")(e.into()))? {
            let (k, v) = row.map_err(|e| storage("scan")(e.into()))?;
            let id = k.value().to_owned();
            let doc: Map<String, Value> =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    id: id.clone(),
                    source,
                })?;
            docs.entry(id).or_default().inventory = Some(doc);
        }
        let agents = read
            .open_table(AGENT)
            .map_err(|e| storage("open table")(e.into()))?;
        for row in agents.iter().map_err(|e| storage("scan")(e.into()))? {
            let (k, v) = row.map_err(|e| storage("scan")(e.into()))?;
            let id = k.value().to_owned();
            let agent: Value =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    id: id.clone(),
                    source,
                })?;
            docs.entry(id).or_default().agent = Some(agent);
        }
        self.load_boot(&mut docs)?;
        for (id, entry) in docs.iter_mut() {
            entry.remerge(id);
        }
        *self.write_docs() = docs;
        Ok(())
    }

    fn write_docs(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        // Entries are replaced whole, so a poisoned lock still guards consistent data.
        self.docs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_docs(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.docs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn commit(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(|e| storage("begin")(e.into()))?;
        {
            let mut t = write
                .open_table(table)
                .map_err(|e| storage("open table")(e.into()))?;
            t.insert(id, bytes)
                .map_err(|e| storage("insert")(e.into()))?;
        }
        write.commit().map_err(|e| storage("commit")(e.into()))
    }

    /// Replaces a server's inventory; a top-level `agent` key in `doc` is ignored.
    pub fn put_inventory(&self, id: &str, doc: Value) -> Result<(), StoreError> {
        let Value::Object(mut doc) = doc else {
            return Err(StoreError::NotADocument { id: id.to_owned() });
        };
        doc.remove("agent");
        doc.insert("mercury_id".into(), Value::String(id.to_owned()));
        let bytes = serde_json::to_vec(&doc).map_err(|source| StoreError::Corrupt {
            id: id.to_owned(),
            source,
        })?;
        self.commit(INVENTORY, id, &bytes)?;
        let mut docs = self.write_docs();
        let entry = docs.entry(id.to_owned()).or_default();
        entry.inventory = Some(doc);
        entry.remerge(id);
        Ok(())
    }

    /// Replaces a server's `agent` subdocument.
    pub fn set_agent(&self, id: &str, agent: Value) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&agent).map_err(|source| StoreError::Corrupt {
            id: id.to_owned(),
            source,
        })?;
        self.commit(AGENT, id, &bytes)?;
        let mut docs = self.write_docs();
        let entry = docs.entry(id.to_owned()).or_default();
        entry.agent = Some(agent);
        entry.remerge(id);
        Ok(())
    }

    /// Creates the `boot` table on first open and reads it into `docs`.
    fn load_boot(&self, docs: &mut BTreeMap<String, Entry>) -> Result<(), StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(|e| storage("begin")(e.into()))?;
        write
            .open_table(BOOT)
            .map_err(|e| storage("open table")(e.into()))?;
        write.commit().map_err(|e| storage("commit")(e.into()))?;
        let read = self
            .db
            .begin_read()
            .map_err(|e| storage("begin")(e.into()))?;
        let boot = read
            .open_table(BOOT)
            .map_err(|e| storage("open table")(e.into()))?;
        for row in boot.iter().map_err(|e| storage("scan")(e.into()))? {
            let (k, v) = row.map_err(|e| storage("scan")(e.into()))?;
            let id = k.value().to_owned();
            let value: Value =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    id: id.clone(),
                    source,
                })?;
            docs.entry(id).or_default().boot = Some(value);
        }
        Ok(())
    }

    /// Replaces a server's `boot` subdocument.
    pub fn set_boot(&self, id: &str, boot: Value) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&boot).map_err(|source| StoreError::Corrupt {
            id: id.to_owned(),
            source,
        })?;
        self.commit(BOOT, id, &bytes)?;
        let mut docs = self.write_docs();
        let entry = docs.entry(id.to_owned()).or_default();
        entry.boot = Some(boot);
        entry.remerge(id);
        Ok(())
    }

    /// Increments and returns the controller epoch: a number no earlier start of this store
    /// returned (message ids carry it, so they never repeat across restarts).
    pub fn next_epoch(&self) -> Result<u32, StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(|e| storage("begin")(e.into()))?;
        let epoch = {
            let mut t = write
                .open_table(META)
                .map_err(|e| storage("open table")(e.into()))?;
            let last = t
                .get("epoch")
                .map_err(|e| storage("read")(e.into()))?
                .map(|v| v.value())
                .unwrap_or(0);
            // Epochs live in 32 bits of a message id; after 4 billion starts they wrap.
            let next = (last + 1) & u64::from(u32::MAX);
            let next = next.max(1);
            t.insert("epoch", next)
                .map_err(|e| storage("insert")(e.into()))?;
            next as u32
        };
        write.commit().map_err(|e| storage("commit")(e.into()))?;
        Ok(epoch)
    }

    /// Applies every write in one transaction (one fsync), then updates memory. A conditional
    /// agent write whose session no longer matches the stored one is skipped.
    pub fn write_batch(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut encoded: Vec<(Write, Vec<u8>)> = Vec::with_capacity(writes.len());
        for w in writes {
            let bytes = match &w {
                Write::Inventory { doc, .. } => serde_json::to_vec(doc),
                Write::Agent { agent, .. } => serde_json::to_vec(agent),
            }
            .map_err(|source| StoreError::Corrupt {
                id: w.id().to_owned(),
                source,
            })?;
            encoded.push((w, bytes));
        }
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Decide conditional writes against memory, which mirrors what is committed; the
        // writer lock keeps anything from changing in between.
        let applied: Vec<bool> = {
            let docs = self.read_docs();
            encoded
                .iter()
                .map(|(w, _)| match w {
                    Write::Agent {
                        id,
                        only_if_session: Some(session),
                        ..
                    } => docs
                        .get(id)
                        .and_then(|e| e.agent.as_ref())
                        .and_then(|a| a.get("session"))
                        .and_then(Value::as_u64)
                        == Some(*session),
                    _ => true,
                })
                .collect()
        };
        let write = self
            .db
            .begin_write()
            .map_err(|e| storage("begin")(e.into()))?;
        {
            let mut inventory = write
                .open_table(INVENTORY)
                .map_err(|e| storage("open table")(e.into()))?;
            let mut agent = write
                .open_table(AGENT)
                .map_err(|e| storage("open table")(e.into()))?;
            for ((w, bytes), apply) in encoded.iter().zip(&applied) {
                if !apply {
                    continue;
                }
                let table = match w {
                    Write::Inventory { .. } => &mut inventory,
                    Write::Agent { .. } => &mut agent,
                };
                table
                    .insert(w.id(), bytes.as_slice())
                    .map_err(|e| storage("insert")(e.into()))?;
            }
        }
        write.commit().map_err(|e| storage("commit")(e.into()))?;
        let mut docs = self.write_docs();
        for ((w, _), apply) in encoded.into_iter().zip(applied) {
            if !apply {
                continue;
            }
            match w {
                Write::Inventory { id, doc } => {
                    let entry = docs.entry(id.clone()).or_default();
                    entry.inventory = Some(doc);
                    entry.remerge(&id);
                }
                Write::Agent { id, agent, .. } => {
                    let entry = docs.entry(id.clone()).or_default();
                    entry.agent = Some(agent);
                    entry.remerge(&id);
                }
            }
        }
        Ok(())
    }

    /// One server's merged document.
    pub fn get(&self, id: &str) -> Option<Value> {
        self.read_docs().get(id).map(|e| (*e.merged).clone())
    }

    /// Runs a query over every merged document, in MercuryId order before any sort.
    pub fn find(&self, query: &Query) -> Vec<Value> {
        // Snapshot the Arcs so a slow query never holds the lock writers need.
        let snapshot: Vec<Arc<Value>> = self
            .read_docs()
            .values()
            .map(|e| e.merged.clone())
            .collect();
        query.run(snapshot.iter().map(|d| d.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn all() -> Query {
        Query::from_request(&json!({})).unwrap()
    }

    #[test]
    fn documents_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.put_inventory("a", json!({"mem": {"total": 1}})).unwrap();
            s.set_agent("a", json!({"online": true})).unwrap();
            s.put_inventory("a", json!({"mem": {"total": 2}, "agent": {"forged": 1}}))
                .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            s.get("a").unwrap(),
            json!({"mercury_id": "a", "mem": {"total": 2}, "agent": {"online": true}})
        );
        assert_eq!(s.find(&all()).len(), 1);
    }

    #[test]
    fn agent_fields_alone_make_a_document() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        s.set_agent("b", json!({"online": false})).unwrap();
        assert_eq!(
            s.get("b").unwrap(),
            json!({"mercury_id": "b", "agent": {"online": false}})
        );
        assert!(s.get("c").is_none());
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let second = EmbeddedStore::open(dir.path());
        let Err(err) = second else {
            panic!("second open succeeded")
        };
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("quicksilver.redb"));
    }

    #[test]
    fn non_objects_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert!(matches!(
            s.put_inventory("x", json!([1])),
            Err(StoreError::NotADocument { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open_embedded(dir.path()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let store = store.clone();
            tasks.spawn(async move {
                let id = format!("host-{i:02}");
                store.put_inventory(&id, json!({"n": i})).await.unwrap();
                store.set_agent(&id, json!({"online": true})).await.unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let docs = store.find(&all()).await.unwrap();
        assert_eq!(docs.len(), 16);
        assert!(docs.iter().all(|d| d["agent"]["online"] == true));
    }
}
