//! The embedded store: redb on disk, nothing of the documents held in memory.
//!
//! Tables: `inventory` (MercuryId → the inventory, MessagePack, field order kept), `agent` and
//! `boot` (the controller's subdocuments, so a liveness update rewrites a few hundred bytes
//! rather than a whole inventory), `version` (MercuryId → inventory version, for compare and
//! swap), `history` ((MercuryId, seq) → [`HistoryEntry`]), one `index:PATH` table per indexed
//! path (encoded value + MercuryId, see [`super::index`]), `record:NAME` per controller
//! collection, and `meta`. Every write commits with redb's immediate durability before it is
//! acknowledged, so `kill -9` loses nothing acknowledged.
//!
//! Queries read documents from redb: an indexed equality or range reads only the candidates the
//! index names; anything else scans, decoding one document at a time and keeping only matches
//! (for a sort with a limit, only the best `skip + limit`). Memory holds no document beyond the
//! current request.
//!
//! An I/O error (a full disk) does not poison the store: the database is dropped and reopened
//! (redb repairs it to its last commit), [`EmbeddedStore::health`] says `degraded` with the
//! reason until a reopen and a probe write succeed.

use std::collections::BTreeSet;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::history::HistoryEntry;
use super::index::{self, Part};
use super::msgpack::Need;
use super::{document, Collection, Health, StoreError, StoreOptions, Write};
use qs_query::{Count, Distinct, Pipeline, Query};

const INVENTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("inventory");
const AGENT: TableDefinition<&str, &[u8]> = TableDefinition::new("agent");
/// MercuryId → the controller's `boot` subdocument (what the host boots when it PXE-boots).
const BOOT: TableDefinition<&str, &[u8]> = TableDefinition::new("boot");
/// MercuryId → the version of its inventory (bumped by every inventory write).
const VERSION: TableDefinition<&str, u64> = TableDefinition::new("version");
/// (MercuryId, seq) → a history entry (JSON).
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// Small controller-wide values (the process epoch counter).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Indexed path → 1 once its index table is complete.
const INDEXES: TableDefinition<&str, u64> = TableDefinition::new("indexes");

fn index_table(name: &str) -> TableDefinition<'_, &'static [u8], ()> {
    TableDefinition::new(name)
}

fn record_table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// The table of a record collection.
fn record_table_name(collection: Collection) -> String {
    format!("record:{}", collection.name())
}

/// The index table of a record collection's indexed path (entries: encoded value + key).
fn record_index_name(collection: Collection, path: &str) -> String {
    format!("record_index:{}:{path}", collection.name())
}

/// How long a degraded store waits between reopen attempts.
const RETRY: Duration = Duration::from_millis(500);

struct State {
    /// Why the store is degraded, and since when; `None` when it works.
    degraded: Option<(String, String)>,
    last_attempt: Option<Instant>,
}

/// Inventory documents in a redb file.
pub struct EmbeddedStore {
    path: PathBuf,
    /// `None` while degraded and not yet reopened.
    db: RwLock<Option<Arc<Database>>>,
    state: Mutex<State>,
    /// Indexed paths and their table names.
    indexes: Vec<(String, String)>,
    history: usize,
    /// Serialises batches so a conditional write is decided against exactly what it replaces.
    writer: Mutex<()>,
}

fn encode_doc(id: &str, v: &Value) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn decode_doc(id: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

/// One document's stored parts, merged as reads and queries see it: the inventory, its
/// `mercury_id`, then `agent` and `boot`.
fn merge(id: &str, inventory: Option<Value>, agent: Option<Value>, boot: Option<Value>) -> Value {
    let mut doc = match inventory {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if !doc.contains_key("mercury_id") {
        doc.insert("mercury_id".into(), Value::String(id.to_owned()));
    }
    doc.remove("agent");
    doc.remove("boot");
    if let Some(agent) = agent {
        doc.insert("agent".into(), agent);
    }
    if let Some(boot) = boot {
        doc.insert("boot".into(), boot);
    }
    document::upgrade(Value::Object(doc))
}

impl EmbeddedStore {
    /// Opens or creates `quicksilver.redb` in `data_dir`, building any index not built yet.
    pub fn open(data_dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.to_owned(),
            reason: e.to_string(),
        })?;
        let path = data_dir.join("quicksilver.redb");
        let db = open_db(&path)?;
        let indexes = options
            .index_paths()
            .into_iter()
            .map(|p| {
                let table = format!("index:{p}");
                (p, table)
            })
            .collect();
        let store = Self {
            path,
            db: RwLock::new(Some(Arc::new(db))),
            state: Mutex::new(State {
                degraded: None,
                last_attempt: None,
            }),
            indexes,
            history: options.history,
            writer: Mutex::new(()),
        };
        store.prepare().map_err(|e| StoreError::Open {
            path: store.path.clone(),
            reason: e.to_string(),
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables on first open and builds indexes named for the first time.
    fn prepare(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let write = db.begin_write().map_err(self.fail("begin"))?;
        write
            .open_table(INVENTORY)
            .map_err(self.fail("open table"))?;
        write.open_table(AGENT).map_err(self.fail("open table"))?;
        write.open_table(BOOT).map_err(self.fail("open table"))?;
        write.open_table(VERSION).map_err(self.fail("open table"))?;
        write.open_table(HISTORY).map_err(self.fail("open table"))?;
        write.open_table(META).map_err(self.fail("open table"))?;
        let missing: Vec<(String, String)> = {
            let built = write.open_table(INDEXES).map_err(self.fail("open table"))?;
            let mut missing = Vec::new();
            for (path, table) in &self.indexes {
                if built
                    .get(path.as_str())
                    .map_err(self.fail("read"))?
                    .is_none()
                {
                    missing.push((path.clone(), table.clone()));
                }
            }
            missing
        };
        if !missing.is_empty() {
            let started = Instant::now();
            let mut count = 0u64;
            {
                let inventory = write
                    .open_table(INVENTORY)
                    .map_err(self.fail("open table"))?;
                let agent = write.open_table(AGENT).map_err(self.fail("open table"))?;
                let boot = write.open_table(BOOT).map_err(self.fail("open table"))?;
                let mut ids: BTreeSet<String> = BTreeSet::new();
                for t in [&inventory, &agent, &boot] {
                    for row in t.iter().map_err(self.fail("scan"))? {
                        let (k, _) = row.map_err(self.fail("scan"))?;
                        ids.insert(k.value().to_owned());
                    }
                }
                for (path, table) in &missing {
                    let mut idx = write
                        .open_table(index_table(table))
                        .map_err(self.fail("open table"))?;
                    for id in &ids {
                        let part = match index::part_of(path) {
                            Part::Id => Some(Value::String(id.clone())),
                            Part::Inventory => get_doc(&inventory, id, self)?,
                            Part::Agent => get_doc(&agent, id, self)?,
                            Part::Boot => get_doc(&boot, id, self)?,
                        };
                        for k in index::keys_of(part.as_ref(), path) {
                            idx.insert(index::key(&k, id).as_slice(), ())
                                .map_err(self.fail("insert"))?;
                            count += 1;
                        }
                    }
                }
            }
            let mut built = write.open_table(INDEXES).map_err(self.fail("open table"))?;
            for (path, _) in &missing {
                built
                    .insert(path.as_str(), 1)
                    .map_err(self.fail("insert"))?;
            }
            info!(paths = ?missing.iter().map(|(p, _)| p).collect::<Vec<_>>(), entries = count, elapsed = ?started.elapsed(), "built indexes");
        }
        for &collection in Collection::ALL {
            self.prepare_records(&write, collection)?;
        }
        write.commit().map_err(self.fail("commit"))?;
        Ok(())
    }

    /// Creates a record collection's table and builds its indexes not built yet (records
    /// written by a controller that did not index them).
    fn prepare_records(
        &self,
        write: &WriteTransaction,
        collection: Collection,
    ) -> Result<(), StoreError> {
        let name = record_table_name(collection);
        let records = write
            .open_table(record_table(&name))
            .map_err(self.fail("open table"))?;
        let mut built = write.open_table(INDEXES).map_err(self.fail("open table"))?;
        for path in collection.indexed_paths() {
            let index = record_index_name(collection, path);
            if built
                .get(index.as_str())
                .map_err(self.fail("read"))?
                .is_some()
            {
                continue;
            }
            let mut idx = write
                .open_table(index_table(&index))
                .map_err(self.fail("open table"))?;
            for row in records.iter().map_err(self.fail("scan"))? {
                let (k, v) = row.map_err(self.fail("scan"))?;
                let record = decode_doc(k.value(), v.value())?;
                for key in index::record_keys(Some(&record), path) {
                    idx.insert(index::key(&key, k.value()).as_slice(), ())
                        .map_err(self.fail("insert"))?;
                }
            }
            built
                .insert(index.as_str(), 1)
                .map_err(self.fail("insert"))?;
        }
        Ok(())
    }

    /// The open database, reopening it first when degraded (at most every [`RETRY`]).
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Ok(db.clone());
        }
        self.reopen()
    }

    fn reopen(&self) -> Result<Arc<Database>, StoreError> {
        let reason = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let reason = state
                .degraded
                .as_ref()
                .map(|(r, _)| r.clone())
                .unwrap_or_else(|| "closed".into());
            if state.last_attempt.is_some_and(|t| t.elapsed() < RETRY) {
                return Err(self.unavailable("reopen", reason));
            }
            state.last_attempt = Some(Instant::now());
            reason
        };
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        match open_db(&self.path) {
            Ok(db) => {
                let db = Arc::new(db);
                *slot = Some(db.clone());
                info!(path = %self.path.display(), "embedded store reopened");
                Ok(db)
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "embedded store still cannot be reopened");
                Err(self.unavailable("reopen", format!("{reason}; reopening: {e}")))
            }
        }
    }

    fn unavailable(&self, operation: &'static str, reason: String) -> StoreError {
        StoreError::Unavailable {
            store: self.path.display().to_string(),
            operation,
            reason,
        }
    }

    /// Maps a redb error to [`StoreError::Unavailable`], marks the store degraded and drops the
    /// database so the next use reopens it (redb refuses every write after an I/O error).
    fn fail<E: Into<redb::Error>>(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| {
            let e: redb::Error = e.into();
            let reason = e.to_string();
            warn!(path = %self.path.display(), operation, error = %reason, "embedded store degraded");
            {
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.degraded.is_none() {
                    state.degraded = Some((reason.clone(), document::now()));
                }
                state.last_attempt = None;
            }
            *self
                .db
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            self.unavailable(operation, reason)
        }
    }

    /// Whether the store works; when degraded, tries to reopen it and write a probe.
    pub fn health(&self) -> Health {
        let degraded = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .degraded
            .clone();
        let Some((reason, since)) = degraded else {
            return Health::Ok;
        };
        let probe = self.db().and_then(|db| {
            let write = db.begin_write().map_err(self.fail("begin"))?;
            {
                let mut meta = write.open_table(META).map_err(self.fail("open table"))?;
                meta.insert("health_probe", 0)
                    .map_err(self.fail("insert"))?;
            }
            write.commit().map_err(self.fail("commit"))
        });
        match probe {
            Ok(()) => {
                info!(path = %self.path.display(), "embedded store recovered");
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.degraded = None;
                Health::Ok
            }
            Err(e) => {
                let now = match e {
                    StoreError::Unavailable { reason, .. } => reason,
                    other => other.to_string(),
                };
                let text = if now.contains(&reason) {
                    now
                } else {
                    format!("{reason} (now: {now})")
                };
                Health::Degraded {
                    reason: text.chars().take(500).collect(),
                    since,
                }
            }
        }
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db()?.begin_read().map_err(self.fail("begin read"))
    }

    /// Replaces a server's `boot` subdocument.
    pub fn set_boot(&self, id: &str, boot: Value) -> Result<(), StoreError> {
        self.batch(|txn| self.put_part(txn, Part::Boot, id, Some(boot)))
    }

    /// Runs `f` in one write transaction under the writer lock and commits it.
    fn batch<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = self.db()?;
        let write = db.begin_write().map_err(self.fail("begin"))?;
        let out = f(&write)?;
        write.commit().map_err(self.fail("commit"))?;
        Ok(out)
    }

    /// Replaces one part of a document and its index entries.
    fn put_part(
        &self,
        txn: &WriteTransaction,
        part: Part,
        id: &str,
        value: Option<Value>,
    ) -> Result<(), StoreError> {
        let def = match part {
            Part::Inventory => INVENTORY,
            Part::Agent => AGENT,
            Part::Boot => BOOT,
            Part::Id => return Ok(()),
        };
        let mut table = txn.open_table(def).map_err(self.fail("open table"))?;
        let old = get_doc(&table, id, self)?;
        for (path, name) in &self.indexes {
            let path_part = index::part_of(path);
            let mut idx = txn
                .open_table(index_table(name))
                .map_err(self.fail("open table"))?;
            if path_part == Part::Id {
                let k = index::key(
                    &index::encode(&Value::String(id.to_owned())).unwrap_or_default(),
                    id,
                );
                idx.insert(k.as_slice(), ()).map_err(self.fail("insert"))?;
                continue;
            }
            if path_part != part {
                continue;
            }
            let before = index::keys_of(old.as_ref(), path);
            let after = index::keys_of(value.as_ref(), path);
            for k in before.iter().filter(|k| !after.contains(k)) {
                idx.remove(index::key(k, id).as_slice())
                    .map_err(self.fail("remove"))?;
            }
            for k in after.iter().filter(|k| !before.contains(k)) {
                idx.insert(index::key(k, id).as_slice(), ())
                    .map_err(self.fail("insert"))?;
            }
        }
        match value {
            Some(v) => {
                let bytes = encode_doc(id, &v)?;
                table
                    .insert(id, bytes.as_slice())
                    .map_err(self.fail("insert"))?;
            }
            None => {
                table.remove(id).map_err(self.fail("remove"))?;
            }
        }
        Ok(())
    }

    /// Writes an inventory, its version, and (when it changed) a history row.
    fn put_inventory_in(
        &self,
        txn: &WriteTransaction,
        id: &str,
        mut doc: Map<String, Value>,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let version = {
            let t = txn.open_table(VERSION).map_err(self.fail("open table"))?;
            let v = t.get(id).map_err(self.fail("read"))?.map(|v| v.value());
            v.unwrap_or(0)
        };
        if let Some(expected) = expected {
            if expected != version {
                return Err(StoreError::Conflict {
                    id: id.to_owned(),
                    expected,
                    found: version,
                });
            }
        }
        doc.remove("agent");
        doc.remove("boot");
        if !doc.contains_key("mercury_id") {
            doc.insert("mercury_id".into(), Value::String(id.to_owned()));
        }
        let old = {
            let t = txn.open_table(INVENTORY).map_err(self.fail("open table"))?;
            get_doc(&t, id, self)?
        };
        let changed = match old.as_ref().and_then(Value::as_object) {
            Some(o) => document::changed(o, &doc),
            None => true,
        };
        let new = Value::Object(doc);
        if changed && self.history > 0 {
            let mut h = txn.open_table(HISTORY).map_err(self.fail("open table"))?;
            let seqs: Vec<u64> = h
                .range((id, 0)..=(id, u64::MAX))
                .map_err(self.fail("scan"))?
                .map(|row| row.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()
                .map_err(self.fail("scan"))?;
            let seq = seqs.last().map_or(1, |s| s + 1);
            let entry = HistoryEntry::record(seq, old.as_ref(), &new);
            let bytes = serde_json::to_vec(&entry).map_err(|e| StoreError::Corrupt {
                id: id.to_owned(),
                reason: e.to_string(),
            })?;
            h.insert((id, seq), bytes.as_slice())
                .map_err(self.fail("insert"))?;
            let mut all = seqs;
            all.push(seq);
            for s in super::history::pruned(&all, self.history) {
                h.remove((id, s)).map_err(self.fail("remove"))?;
            }
        }
        self.put_part(txn, Part::Inventory, id, Some(new))?;
        let mut t = txn.open_table(VERSION).map_err(self.fail("open table"))?;
        t.insert(id, version + 1).map_err(self.fail("insert"))?;
        Ok(())
    }

    /// The version of a server's inventory (0: none).
    pub fn inventory_version(&self, id: &str) -> Result<u64, StoreError> {
        let read = self.read()?;
        let t = read.open_table(VERSION).map_err(self.fail("open table"))?;
        let v = t.get(id).map_err(self.fail("read"))?.map(|v| v.value());
        Ok(v.unwrap_or(0))
    }

    /// Increments and returns the controller epoch: a number no earlier start of this store
    /// returned (message ids carry it, so they never repeat across restarts).
    pub fn next_epoch(&self) -> Result<u32, StoreError> {
        self.batch(|write| {
            let mut t = write.open_table(META).map_err(self.fail("open table"))?;
            let last = t
                .get("epoch")
                .map_err(self.fail("read"))?
                .map(|v| v.value())
                .unwrap_or(0);
            // Epochs live in 32 bits of a message id; after 4 billion starts they wrap.
            let next = ((last + 1) & u64::from(u32::MAX)).max(1);
            t.insert("epoch", next).map_err(self.fail("insert"))?;
            Ok(next as u32)
        })
    }

    /// Applies every write in one transaction (one fsync). A conditional agent write whose
    /// session no longer matches the stored one is skipped; a failed compare-and-swap fails the
    /// whole batch.
    pub fn write_batch(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.batch(|txn| {
            for w in writes {
                match w {
                    Write::Inventory { id, doc } => self.put_inventory_in(txn, &id, doc, None)?,
                    Write::InventoryIfVersion { id, doc, version } => {
                        self.put_inventory_in(txn, &id, doc, Some(version))?
                    }
                    Write::Agent {
                        id,
                        agent,
                        only_if_session,
                    } => {
                        if let Some(session) = only_if_session {
                            let t = txn.open_table(AGENT).map_err(self.fail("open table"))?;
                            let stored = get_doc(&t, &id, self)?;
                            if stored
                                .as_ref()
                                .and_then(|a| a.get("session"))
                                .and_then(Value::as_u64)
                                != Some(session)
                            {
                                continue;
                            }
                        }
                        self.put_part(txn, Part::Agent, &id, Some(agent))?;
                    }
                    Write::Record {
                        collection,
                        key,
                        value,
                    } => self.put_record(txn, collection, &key, value)?,
                }
            }
            Ok(())
        })
    }

    /// Replaces or removes a record and its index entries, in the batch's transaction.
    fn put_record(
        &self,
        txn: &WriteTransaction,
        collection: Collection,
        key: &str,
        value: Option<Value>,
    ) -> Result<(), StoreError> {
        if let Some(v) = &value {
            super::check_record(key, v)?;
        }
        let name = record_table_name(collection);
        let mut t = txn
            .open_table(record_table(&name))
            .map_err(self.fail("open table"))?;
        let paths = collection.indexed_paths();
        let old = if paths.is_empty() {
            None
        } else {
            get_doc(&t, key, self)?
        };
        for path in paths {
            let mut idx = txn
                .open_table(index_table(&record_index_name(collection, path)))
                .map_err(self.fail("open table"))?;
            let before = index::record_keys(old.as_ref(), path);
            let after = index::record_keys(value.as_ref(), path);
            for k in before.iter().filter(|k| !after.contains(k)) {
                idx.remove(index::key(k, key).as_slice())
                    .map_err(self.fail("remove"))?;
            }
            for k in after.iter().filter(|k| !before.contains(k)) {
                idx.insert(index::key(k, key).as_slice(), ())
                    .map_err(self.fail("insert"))?;
            }
        }
        match value {
            Some(v) => {
                let bytes = encode_doc(key, &v)?;
                t.insert(key, bytes.as_slice())
                    .map_err(self.fail("insert"))?;
            }
            None => {
                t.remove(key).map_err(self.fail("remove"))?;
            }
        }
        Ok(())
    }

    /// Calls `f` with every record of a collection that `filter` may select (the candidates of
    /// an indexed path, or all), in key order, until it breaks.
    fn each_record(
        &self,
        collection: Collection,
        filter: &qs_query::Filter,
        mut f: impl FnMut(Value) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let read = self.read()?;
        let name = record_table_name(collection);
        let table = match read.open_table(record_table(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(self.fail("open table")(e)),
        };
        let paths: Vec<String> = collection
            .indexed_paths()
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        if let Some(lookup) = index::plan(filter.document(), &paths) {
            let idx = read
                .open_table(index_table(&record_index_name(collection, &lookup.path)))
                .map_err(self.fail("open table"))?;
            let mut keys = BTreeSet::new();
            for (start, end) in &lookup.ranges {
                for row in idx
                    .range::<&[u8]>((as_slice(start), as_slice(end)))
                    .map_err(self.fail("scan"))?
                {
                    let (k, _) = row.map_err(self.fail("scan"))?;
                    if let Some(key) = index::id_of(k.value()) {
                        keys.insert(key);
                    }
                }
            }
            for key in keys {
                if let Some(record) = get_doc(&table, &key, self)? {
                    if filter.matches(&record) && f(record).is_break() {
                        break;
                    }
                }
            }
            return Ok(());
        }
        for row in table.iter().map_err(self.fail("scan"))? {
            let (k, v) = row.map_err(self.fail("scan"))?;
            let record = decode_doc(k.value(), v.value())?;
            if filter.matches(&record) && f(record).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The records of a collection a query selects (ties of its sort in key order).
    pub fn find_records(
        &self,
        collection: Collection,
        query: &Query,
    ) -> Result<Vec<Value>, StoreError> {
        let matched =
            self.collect_top(query, |f| self.each_record(collection, &query.filter, f))?;
        Ok(query.run(matched.iter()))
    }

    /// How many records of a collection a filter selects.
    pub fn count_records(&self, collection: Collection, count: &Count) -> Result<u64, StoreError> {
        let mut n = 0u64;
        self.each_record(collection, &count.filter, |_| {
            n += 1;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    /// The matches `each` gives, cut down while it runs to what a query can return: the first
    /// `skip + limit` without a sort, the best of them with one.
    fn collect_top(
        &self,
        query: &Query,
        each: impl FnOnce(&mut dyn FnMut(Value) -> ControlFlow<()>) -> Result<(), StoreError>,
    ) -> Result<Vec<Value>, StoreError> {
        self.collect_top_by(query, |d: &Value| d, each)
    }

    /// [`Self::collect_top`] over items that carry a document (`doc` finds it).
    fn collect_top_by<T>(
        &self,
        query: &Query,
        doc: impl Fn(&T) -> &Value,
        each: impl FnOnce(&mut dyn FnMut(T) -> ControlFlow<()>) -> Result<(), StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let keep = match query.limit {
            None | Some(0) => None,
            Some(n) => usize::try_from(n.saturating_add(query.skip.unwrap_or(0))).ok(),
        };
        let mut matched: Vec<T> = Vec::new();
        each(&mut |item| {
            matched.push(item);
            match (keep, &query.sort) {
                (Some(k), Some(sort)) if matched.len() >= 2 * k.max(64) => {
                    // Stable: ties keep key order, as a full sort would.
                    matched.sort_by(|a, b| sort.compare(doc(a), doc(b)));
                    matched.truncate(k);
                    ControlFlow::Continue(())
                }
                (Some(k), None) if matched.len() >= k => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        })?;
        Ok(matched)
    }

    /// A record of a controller collection.
    pub fn get_record(
        &self,
        collection: Collection,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        let read = self.read()?;
        let name = record_table_name(collection);
        match read.open_table(record_table(&name)) {
            Ok(t) => get_doc(&t, key, self),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.fail("open table")(e)),
        }
    }

    /// One server's merged document.
    pub fn get(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let read = self.read()?;
        let tables = Tables::open(&read, self)?;
        tables.merged(id, self)
    }

    /// A host's kept history, oldest first.
    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let read = self.read()?;
        let h = read.open_table(HISTORY).map_err(self.fail("open table"))?;
        let mut out = Vec::new();
        for row in h
            .range((id, 0)..=(id, u64::MAX))
            .map_err(self.fail("scan"))?
        {
            let (_, v) = row.map_err(self.fail("scan"))?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    id: id.to_owned(),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// The candidates of an indexed filter, in MercuryId order; `None` when no index applies.
    fn candidates(
        &self,
        read: &ReadTransaction,
        filter: &Value,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let paths: Vec<String> = self.indexes.iter().map(|(p, _)| p.clone()).collect();
        let Some(lookup) = index::plan(filter, &paths) else {
            return Ok(None);
        };
        let Some((_, name)) = self.indexes.iter().find(|(p, _)| *p == lookup.path) else {
            return Ok(None);
        };
        let idx = read
            .open_table(index_table(name))
            .map_err(self.fail("open table"))?;
        let mut ids = BTreeSet::new();
        for (start, end) in &lookup.ranges {
            let range = (as_slice(start), as_slice(end));
            for row in idx.range::<&[u8]>(range).map_err(self.fail("scan"))? {
                let (k, _) = row.map_err(self.fail("scan"))?;
                if let Some(id) = index::id_of(k.value()) {
                    ids.insert(id);
                }
            }
        }
        Ok(Some(ids.into_iter().collect()))
    }

    /// Calls `f` with every document a filter may select (index candidates, or all) that the
    /// scan's test accepts, in MercuryId order, until it breaks. Documents are decoded (only the
    /// fields the scan names) and tested on several threads, a batch at a time; `f` sees them
    /// in order on this one.
    fn each(
        &self,
        read: &ReadTransaction,
        filter: &Value,
        scan: &Scan<'_>,
        mut f: impl FnMut(&str, Value) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let tables = Tables::open(read, self)?;
        let mut batch = Vec::with_capacity(BATCH);
        let mut flush = |batch: &mut Vec<Raw>| -> Result<ControlFlow<()>, StoreError> {
            for (i, doc) in matching(batch, scan)? {
                if f(&batch[i].id, doc).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            batch.clear();
            Ok(ControlFlow::Continue(()))
        };
        if let Some(ids) = self.candidates(read, filter)? {
            for id in ids {
                if let Some(raw) = tables.raw(id, self)? {
                    batch.push(raw);
                }
                if batch.len() == BATCH && flush(&mut batch)?.is_break() {
                    return Ok(());
                }
            }
            let _ = flush(&mut batch)?;
            return Ok(());
        }
        let mut stopped = false;
        tables.scan(self, |raw| {
            batch.push(raw);
            if batch.len() == BATCH {
                let flow = flush(&mut batch)?;
                stopped = flow.is_break();
                return Ok(flow);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if !stopped {
            let _ = flush(&mut batch)?;
        }
        Ok(())
    }

    /// Runs a query: index candidates or a scan, keeping only matches (and for a sorted,
    /// limited query only the best `skip + limit`, chosen on the sort's fields alone and read
    /// whole at the end).
    pub fn find(&self, query: &Query) -> Result<Vec<Value>, StoreError> {
        let read = self.read()?;
        let keep = |d: &Value| query.filter.matches(d);
        let test = Need::of_paths(query.filter.paths().iter().map(String::as_str));
        let limited = matches!(query.limit, Some(n) if n > 0);
        let sort_fields = match (&query.sort, limited) {
            (Some(sort), true) => Some(sort_paths(sort.document())),
            _ => None,
        };
        let Some(sort_fields) = sort_fields else {
            let scan = Scan {
                test,
                keep: &keep,
                out: Output::Whole,
            };
            let matched = self.collect_top(query, |f| {
                self.each(&read, query.filter_document(), &scan, |_, d| f(d))
            })?;
            return Ok(query.run(matched.iter()));
        };
        let scan = Scan {
            test,
            keep: &keep,
            out: Output::Cut(sort_fields),
        };
        let best = self.collect_top_by(
            query,
            |(_, d): &(String, Value)| d,
            |f| {
                self.each(&read, query.filter_document(), &scan, |id, d| {
                    f((id.to_owned(), d))
                })
            },
        )?;
        let tables = Tables::open(&read, self)?;
        let mut whole = Vec::with_capacity(best.len());
        for (id, _) in &best {
            if let Some(doc) = tables.merged(id, self)? {
                whole.push(doc);
            }
        }
        Ok(query.run(whole.iter()))
    }

    /// Counts the documents a filter selects: from the index alone for an equality on an
    /// indexed path to a string or boolean (index keys of those values are exact), otherwise
    /// by testing each candidate's filtered fields.
    pub fn count(&self, count: &Count) -> Result<u64, StoreError> {
        let read = self.read()?;
        if let Some(n) = self.count_from_index(&read, count.filter.document())? {
            return Ok(n);
        }
        let keep = |d: &Value| count.filter.matches(d);
        let scan = Scan {
            test: Need::of_paths(count.filter.paths().iter().map(String::as_str)),
            keep: &keep,
            out: Output::Nothing,
        };
        let mut n = 0u64;
        self.each(&read, count.filter.document(), &scan, |_, _| {
            n += 1;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    /// The number of index entries of `{path: value}` when that is the whole filter, the path is
    /// indexed and the value a string or boolean: each document has at most one entry per
    /// value, and an entry exists exactly when the document has the value at the path.
    fn count_from_index(
        &self,
        read: &ReadTransaction,
        filter: &Value,
    ) -> Result<Option<u64>, StoreError> {
        let Some(map) = filter.as_object() else {
            return Ok(None);
        };
        let mut entries = map.iter();
        let (Some((path, cond)), None) = (entries.next(), entries.next()) else {
            return Ok(None);
        };
        let value = match cond {
            Value::Object(ops) if ops.len() == 1 => match ops.get("$eq") {
                Some(v) => v,
                None => return Ok(None),
            },
            v => v,
        };
        if !matches!(value, Value::String(_) | Value::Bool(_)) {
            return Ok(None);
        }
        let Some((_, name)) = self.indexes.iter().find(|(p, _)| p == path) else {
            return Ok(None);
        };
        let Some(start) = index::encode(value) else {
            return Ok(None);
        };
        let mut end = start.clone();
        end.push(0xFF);
        let idx = read
            .open_table(index_table(name))
            .map_err(self.fail("open table"))?;
        let mut n = 0u64;
        for row in idx
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(self.fail("scan"))?
        {
            row.map_err(self.fail("scan"))?;
            n += 1;
        }
        Ok(Some(n))
    }

    /// The distinct values at a path among the documents a filter selects; only the filter's
    /// fields and the path's top-level field are decoded.
    pub fn distinct(&self, distinct: &Distinct) -> Result<Vec<Value>, StoreError> {
        let read = self.read()?;
        let keep = |d: &Value| distinct.filter().matches(d);
        let scan = Scan {
            test: Need::of_paths(distinct.filter().paths().iter().map(String::as_str)),
            keep: &keep,
            out: Output::Cut(Need::of_paths([distinct.path()])),
        };
        let mut kept = Vec::new();
        self.each(&read, distinct.filter().document(), &scan, |_, doc| {
            kept.push(doc);
            ControlFlow::Continue(())
        })?;
        let all = Distinct::new(distinct.path(), &Value::Object(Map::new())).map_err(|e| {
            StoreError::Refused {
                message: e.to_string(),
            }
        })?;
        Ok(all.run(kept.iter()))
    }

    /// Runs a pipeline: its leading `$match/$project/$unwind` stages per document while
    /// scanning (the first `$match` through an index when it can), then the rest over what they
    /// kept, cut down to the top-level fields the rest refers to.
    pub fn aggregate(&self, pipeline: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let stages = pipeline.stages();
        let split = stages
            .iter()
            .position(|s| {
                !["$match", "$project", "$unwind"]
                    .iter()
                    .any(|k| s.get(*k).is_some())
            })
            .unwrap_or(stages.len());
        let refused = |e: qs_query::QueryError| StoreError::Refused {
            message: e.to_string(),
        };
        let head = Pipeline::parse(&Value::Array(stages[..split].to_vec())).map_err(refused)?;
        let tail = Pipeline::parse(&Value::Array(stages[split..].to_vec())).map_err(refused)?;
        let index_filter = stages
            .first()
            .and_then(|s| s.get("$match"))
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let narrow = referenced_fields(&stages[split..]);
        let mut kept = Vec::new();
        let first_match = match stages.first().and_then(|s| s.get("$match")) {
            Some(m) => Some(qs_query::Filter::parse(m).map_err(refused)?),
            None => None,
        };
        let keep = |d: &Value| first_match.as_ref().is_none_or(|m| m.matches(d));
        // Only the fields the pipeline reads are decoded when it is `$match` stages, then a
        // tail that ends in `$group`/`$count` and names its fields.
        let only_matches = stages[..split].iter().all(|s| s.get("$match").is_some());
        let wanted = match (&narrow, only_matches) {
            (Some(paths), true) => {
                let mut all = paths.clone();
                for s in &stages[..split] {
                    if let Some(m) = s.get("$match") {
                        all.extend(qs_query::Filter::parse(m).map_err(refused)?.paths());
                    }
                }
                Some(all)
            }
            _ => None,
        };
        let scan = Scan {
            test: match &first_match {
                Some(m) => Need::of_paths(m.paths().iter().map(String::as_str)),
                None => Need::Fields(Default::default()),
            },
            keep: &keep,
            out: match &wanted {
                Some(paths) => Output::Cut(Need::of_paths(paths.iter().map(String::as_str))),
                None => Output::Whole,
            },
        };
        // Documents the head hands on whole are cut down to the fields the tail reads.
        let tops: Option<BTreeSet<String>> = narrow.as_ref().map(|paths| {
            paths
                .iter()
                .map(|p| p.split('.').next().unwrap_or_default().to_owned())
                .collect()
        });
        let read = self.read()?;
        self.each(&read, &index_filter, &scan, |_, doc| {
            for out in head.run(std::iter::once(&doc)) {
                kept.push(match (&tops, out) {
                    (Some(fields), Value::Object(m)) if wanted.is_none() => {
                        Value::Object(m.into_iter().filter(|(k, _)| fields.contains(k)).collect())
                    }
                    (_, out) => out,
                });
            }
            ControlFlow::Continue(())
        })?;
        Ok(tail.run(kept.iter()))
    }
}

/// The paths the rest of a pipeline can read, when it ends its use of whole
/// documents in a `$group` or `$count` (before which only `$match`, `$sort`, `$skip` and `$limit`
/// run); `None` when documents may reach the output whole, or `$$ROOT`-like variables are used.
fn referenced_fields(stages: &[Value]) -> Option<BTreeSet<String>> {
    fn visit(v: &Value, out: &mut BTreeSet<String>, whole: &mut bool) {
        match v {
            Value::String(s) if s.starts_with("$$") => *whole = true,
            Value::String(s) if s.starts_with('$') => {
                out.insert(s[1..].to_owned());
            }
            Value::Object(m) => {
                for (k, v) in m {
                    if !k.starts_with('$') {
                        out.insert(k.clone());
                    }
                    visit(v, out, whole);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| visit(i, out, whole)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    let mut whole = false;
    for s in stages {
        let reshapes = s.get("$group").is_some() || s.get("$count").is_some();
        let passes = ["$match", "$sort", "$skip", "$limit"]
            .iter()
            .any(|k| s.get(*k).is_some());
        if !reshapes && !passes {
            return None;
        }
        visit(s, &mut out, &mut whole);
        if reshapes {
            return (!whole).then_some(out);
        }
    }
    None
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// redb's page cache: bounded, so memory does not grow with the store (the OS page cache
/// still holds what is read often).
const CACHE_BYTES: usize = 64 << 20;

fn open_db(path: &Path) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_owned(),
            },
            source => StoreError::Open {
                path: path.to_owned(),
                reason: source.to_string(),
            },
        })
}

fn get_doc<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    id: &str,
    store: &EmbeddedStore,
) -> Result<Option<Value>, StoreError> {
    match table.get(id).map_err(store.fail("read"))? {
        Some(bytes) => decode_doc(id, bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// The three tables a merged document is read from.
struct Tables {
    inventory: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    agent: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    boot: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl Tables {
    fn open(read: &ReadTransaction, store: &EmbeddedStore) -> Result<Tables, StoreError> {
        Ok(Tables {
            inventory: read
                .open_table(INVENTORY)
                .map_err(store.fail("open table"))?,
            agent: read.open_table(AGENT).map_err(store.fail("open table"))?,
            boot: read.open_table(BOOT).map_err(store.fail("open table"))?,
        })
    }

    fn merged(&self, id: &str, store: &EmbeddedStore) -> Result<Option<Value>, StoreError> {
        let inventory = get_doc(&self.inventory, id, store)?;
        let agent = get_doc(&self.agent, id, store)?;
        let boot = get_doc(&self.boot, id, store)?;
        if inventory.is_none() && agent.is_none() && boot.is_none() {
            return Ok(None);
        }
        Ok(Some(merge(id, inventory, agent, boot)))
    }

    /// One document's stored bytes, if it has any part.
    fn raw(&self, id: String, store: &EmbeddedStore) -> Result<Option<Raw>, StoreError> {
        let get = |t: &redb::ReadOnlyTable<&'static str, &'static [u8]>| {
            t.get(id.as_str())
                .map(|v| v.map(|v| v.value().to_vec()))
                .map_err(store.fail("read"))
        };
        let parts = [get(&self.inventory)?, get(&self.agent)?, get(&self.boot)?];
        if parts.iter().all(Option::is_none) {
            return Ok(None);
        }
        Ok(Some(Raw { id, parts }))
    }

    /// Every document's bytes in MercuryId order: the three tables walked side by side.
    fn scan(
        &self,
        store: &EmbeddedStore,
        mut f: impl FnMut(Raw) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        type Rows<'a> = std::iter::Peekable<redb::Range<'a, &'static str, &'static [u8]>>;
        fn next_key(
            rows: &mut Rows<'_>,
            store: &EmbeddedStore,
        ) -> Result<Option<String>, StoreError> {
            match rows.peek() {
                None => Ok(None),
                Some(Ok((k, _))) => Ok(Some(k.value().to_owned())),
                Some(Err(_)) => match rows.next() {
                    Some(Err(e)) => Err(store.fail("scan")(e)),
                    _ => Ok(None),
                },
            }
        }
        fn take(
            rows: &mut Rows<'_>,
            id: &str,
            store: &EmbeddedStore,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            if next_key(rows, store)?.as_deref() != Some(id) {
                return Ok(None);
            }
            match rows.next() {
                Some(Ok((_, v))) => Ok(Some(v.value().to_vec())),
                Some(Err(e)) => Err(store.fail("scan")(e)),
                None => Ok(None),
            }
        }
        let mut inv: Rows<'_> = self
            .inventory
            .iter()
            .map_err(store.fail("scan"))?
            .peekable();
        let mut agent: Rows<'_> = self.agent.iter().map_err(store.fail("scan"))?.peekable();
        let mut boot: Rows<'_> = self.boot.iter().map_err(store.fail("scan"))?.peekable();
        loop {
            let keys = [
                next_key(&mut inv, store)?,
                next_key(&mut agent, store)?,
                next_key(&mut boot, store)?,
            ];
            let Some(id) = keys.into_iter().flatten().min() else {
                return Ok(());
            };
            let parts = [
                take(&mut inv, &id, store)?,
                take(&mut agent, &id, store)?,
                take(&mut boot, &id, store)?,
            ];
            if f(Raw { id, parts })?.is_break() {
                return Ok(());
            }
        }
    }
}

/// Documents decoded and tested per batch.
const BATCH: usize = 1024;

/// A test run on each decoded document, on the scan's worker threads.
type Keep<'a> = &'a (dyn Fn(&Value) -> bool + Sync);

/// What a scan decodes of each document and hands on for a match.
struct Scan<'a> {
    /// What of each document `keep` reads.
    test: Need,
    /// The test.
    keep: Keep<'a>,
    /// What a match is handed on as.
    out: Output,
}

/// What a scan hands on for a match.
enum Output {
    /// The whole merged document.
    Whole,
    /// The document cut as this says.
    Cut(Need),
    /// Nothing (`null`): the caller counts.
    Nothing,
}

/// The paths a sort document sorts on.
fn sort_paths(doc: &Value) -> Need {
    Need::of_paths(
        doc.as_object()
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str)),
    )
}

/// One document's stored parts, undecoded: inventory, agent, boot.
struct Raw {
    id: String,
    parts: [Option<Vec<u8>>; 3],
}

impl Raw {
    fn decode(&self) -> Result<Value, StoreError> {
        let part = |i: usize| {
            self.parts[i]
                .as_deref()
                .map(|b| decode_doc(&self.id, b))
                .transpose()
        };
        Ok(merge(&self.id, part(0)?, part(1)?, part(2)?))
    }

    /// The merged document cut as `need` says, decoding nothing else: what [`Raw::decode`]
    /// gives, less what `need` leaves out, for a document whose stored schema needs no
    /// conversion (others are decoded whole first). `agent` and `boot` come whole when named.
    fn cut(&self, need: &Need) -> Result<Value, StoreError> {
        let Need::Fields(top) = need else {
            return self.decode();
        };
        let corrupt = |e: super::msgpack::PartialError| StoreError::Corrupt {
            id: self.id.clone(),
            reason: e.to_string(),
        };
        let mut doc = match &self.parts[0] {
            Some(bytes) => {
                let mut m = super::msgpack::pruned_fields(bytes, top).map_err(corrupt)?;
                if !top.contains_key("schema") {
                    // Cheap to look at (a few bytes), and it says whether the cut is exact.
                    let schema = super::msgpack::pruned_fields(bytes, &SCHEMA_ONLY)
                        .map_err(corrupt)?
                        .get("schema")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if document::needs_upgrade(schema) {
                        return Ok(cut_value(self.decode()?, need));
                    }
                } else if document::needs_upgrade(
                    m.get("schema").and_then(Value::as_u64).unwrap_or(0),
                ) {
                    return Ok(cut_value(self.decode()?, need));
                }
                m.remove("agent");
                m.remove("boot");
                m
            }
            None => Map::new(),
        };
        if top.contains_key("mercury_id") && !doc.contains_key("mercury_id") {
            doc.insert("mercury_id".into(), Value::String(self.id.clone()));
        }
        for (i, name) in [(1, "agent"), (2, "boot")] {
            if let (true, Some(bytes)) = (top.contains_key(name), &self.parts[i]) {
                doc.insert(name.into(), decode_doc(&self.id, bytes)?);
            }
        }
        Ok(Value::Object(doc))
    }
}

static SCHEMA_ONLY: std::sync::LazyLock<std::collections::BTreeMap<String, Need>> =
    std::sync::LazyLock::new(|| [("schema".to_owned(), Need::Whole)].into());

/// A decoded value cut as `need` says (for documents decoded whole first).
fn cut_value(v: Value, need: &Need) -> Value {
    match (need, v) {
        (Need::Whole, v) => v,
        (Need::Fields(f), Value::Object(m)) => Value::Object(
            m.into_iter()
                .filter_map(|(k, v)| f.get(&k).map(|n| (k, cut_value(v, n))))
                .collect(),
        ),
        (Need::Fields(_), Value::Array(items)) => {
            Value::Array(items.into_iter().map(|i| cut_value(i, need)).collect())
        }
        (_, v) => v,
    }
}

/// The documents of a batch the scan's test accepts, with their positions, in order: decoded
/// (only what the scan names) and tested on up to four threads (decoding is most of a scan's
/// cost).
fn matching(batch: &[Raw], scan: &Scan<'_>) -> Result<Vec<(usize, Value)>, StoreError> {
    let run = |offset: usize, part: &[Raw]| -> Result<Vec<(usize, Value)>, StoreError> {
        let mut out = Vec::new();
        for (i, raw) in part.iter().enumerate() {
            let tested = raw.cut(&scan.test)?;
            if !(scan.keep)(&tested) {
                continue;
            }
            let doc = match &scan.out {
                Output::Nothing => Value::Null,
                Output::Whole if scan.test == Need::Whole => tested,
                Output::Whole => raw.decode()?,
                Output::Cut(n) if *n == scan.test => tested,
                Output::Cut(n) => raw.cut(n)?,
            };
            out.push((offset + i, doc));
        }
        Ok(out)
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    if threads < 2 || batch.len() < 64 {
        return run(0, batch);
    }
    let size = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = batch.chunks(size).enumerate();
        let first = parts.next().map(|(_, p)| p).unwrap_or_default();
        let handles: Vec<_> = parts
            .map(|(k, p)| scope.spawn(move || run(k * size, p)))
            .collect();
        let mut out = run(0, first)?;
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| StoreError::Task("a scan thread panicked".into()))??,
            );
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn all() -> Query {
        Query::from_request(&json!({})).unwrap()
    }

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, StoreOptions::default()).unwrap()
    }

    fn put(s: &EmbeddedStore, id: &str, doc: Value) {
        s.write_batch(vec![Write::Inventory {
            id: id.into(),
            doc: doc.as_object().unwrap().clone(),
        }])
        .unwrap();
    }

    fn agent(s: &EmbeddedStore, id: &str, agent: Value) {
        s.write_batch(vec![Write::Agent {
            id: id.into(),
            agent,
            only_if_session: None,
        }])
        .unwrap();
    }

    #[test]
    fn documents_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            put(&s, "a", json!({"mem": {"total": 1}}));
            agent(&s, "a", json!({"online": true}));
            put(
                &s,
                "a",
                json!({"mem": {"total": 2}, "agent": {"forged": 1}}),
            );
        }
        let s = open(dir.path());
        assert_eq!(
            s.get("a").unwrap().unwrap(),
            json!({"mem": {"total": 2}, "mercury_id": "a", "agent": {"online": true}})
        );
        assert_eq!(s.find(&all()).unwrap().len(), 1);
        assert_eq!(s.inventory_version("a").unwrap(), 2);
        assert_eq!(s.history("a").unwrap().len(), 2);
    }

    #[test]
    fn agent_fields_alone_make_a_document() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        agent(&s, "b", json!({"online": false}));
        assert_eq!(
            s.get("b").unwrap().unwrap(),
            json!({"mercury_id": "b", "agent": {"online": false}})
        );
        assert!(s.get("c").unwrap().is_none());
        let q = Query::from_request(&json!({"filter": {"mercury_id": "b"}})).unwrap();
        assert_eq!(s.find(&q).unwrap().len(), 1);
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let second = EmbeddedStore::open(dir.path(), StoreOptions::default());
        let Err(err) = second else {
            panic!("second open succeeded")
        };
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("quicksilver.redb"));
    }

    #[test]
    fn indexed_queries_answer_as_scans_do() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(
            dir.path(),
            StoreOptions {
                indexes: vec!["mem.total".into()],
                history: 3,
            },
        )
        .unwrap();
        for i in 0..40u64 {
            put(
                &s,
                &format!("h{i:02}"),
                json!({"mem": {"total": i % 7}, "interfaces": [{"address": format!("m{i}")}, {"address": "shared"}]}),
            );
            agent(&s, &format!("h{i:02}"), json!({"online": i % 2 == 0}));
        }
        for filter in [
            json!({"interfaces.address": "m7"}),
            json!({"interfaces.address": "shared"}),
            json!({"mem.total": {"$gte": 2, "$lt": 4}}),
            json!({"mem.total": {"$in": [1, 6.0]}}),
            json!({"agent.online": true, "mem.total": 3}),
        ] {
            let q = Query::from_request(
                &json!({"filter": filter, "sort": {"mem.total": -1}, "limit": 5}),
            )
            .unwrap();
            let scanned = q.run(s.find(&all()).unwrap().iter());
            assert_eq!(s.find(&q).unwrap(), scanned, "{filter}");
            let c = Count::from_request(&json!({"filter": filter})).unwrap();
            assert_eq!(
                s.count(&c).unwrap(),
                c.run(s.find(&all()).unwrap().iter()),
                "{filter}"
            );
        }
        // Index entries follow rewrites: the old value no longer finds the document.
        put(&s, "h07", json!({"mem": {"total": 100}}));
        let q = Query::from_request(&json!({"filter": {"interfaces.address": "m7"}})).unwrap();
        assert!(s.find(&q).unwrap().is_empty());
        let q = Query::from_request(&json!({"filter": {"mem.total": 100}})).unwrap();
        assert_eq!(s.find(&q).unwrap().len(), 1);
        // An index named later is built from what is stored.
        drop(s);
        let s = EmbeddedStore::open(
            dir.path(),
            StoreOptions {
                indexes: vec!["mem.total".into(), "agent.online".into()],
                history: 3,
            },
        )
        .unwrap();
        let q = Query::from_request(&json!({"filter": {"agent.online": false}})).unwrap();
        assert_eq!(s.find(&q).unwrap().len(), 20);
    }

    #[test]
    fn indexed_record_queries_read_only_their_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let task = |key: &str, job: &str| Write::Record {
            collection: Collection::Tasks,
            key: key.into(),
            value: Some(json!({"job": job, "state": "queued"})),
        };
        s.write_batch(vec![task("a", "j1"), task("b", "j2"), task("c", "j1")])
            .unwrap();
        // A record no index names, unreadable: only a scan reads it.
        {
            let db = s.db().unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(record_table("record:tasks"))
                .unwrap()
                .insert("zz", [0x81u8].as_slice())
                .unwrap();
            w.commit().unwrap();
        }
        let q = Query::from_request(&json!({"filter": {"job": {"$in": ["j1", "j3"]}}})).unwrap();
        assert_eq!(s.find_records(Collection::Tasks, &q).unwrap().len(), 2);
        let c = Count::from_request(&json!({"filter": {"job": "j2"}})).unwrap();
        assert_eq!(s.count_records(Collection::Tasks, &c).unwrap(), 1);
        let scan = Query::from_request(&json!({"filter": {"other": null}})).unwrap();
        let scanned = s.find_records(Collection::Tasks, &scan);
        assert!(
            matches!(scanned, Err(StoreError::Corrupt { .. })),
            "{scanned:?}"
        );
        // Records written before their index existed are indexed at the next open.
        {
            let db = s.db().unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(record_table("record:tasks"))
                .unwrap()
                .remove("zz")
                .unwrap();
            w.open_table(INDEXES)
                .unwrap()
                .remove("record_index:tasks:job")
                .unwrap();
            w.delete_table(index_table("record_index:tasks:job"))
                .unwrap();
            w.commit().unwrap();
        }
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.find_records(Collection::Tasks, &q).unwrap().len(), 2);
    }

    #[test]
    fn history_is_pruned_and_skips_unchanged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(
            dir.path(),
            StoreOptions {
                indexes: vec![],
                history: 3,
            },
        )
        .unwrap();
        for n in 0..6 {
            put(&s, "h", json!({"n": n}));
            put(&s, "h", json!({"n": n}));
        }
        let h = s.history("h").unwrap();
        assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert_eq!(h[2].changes, vec!["n 4 → 5"]);
        let current = s.get("h").unwrap().unwrap();
        let v = super::super::history::versions(&current, &h).unwrap();
        assert_eq!(v[0].1, json!({"n": 3, "mercury_id": "h"}));
    }

    #[test]
    fn compare_and_swap_refuses_a_stale_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let w = |version| Write::InventoryIfVersion {
            id: "x".into(),
            doc: json!({"v": version}).as_object().unwrap().clone(),
            version,
        };
        s.write_batch(vec![w(0)]).unwrap();
        s.write_batch(vec![w(1)]).unwrap();
        let err = s.write_batch(vec![w(1)]).unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { found: 2, .. }),
            "{err}"
        );
        assert_eq!(s.get("x").unwrap().unwrap()["v"], json!(1));
    }

    #[test]
    fn aggregates_and_distinct_read_what_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        for i in 0..10 {
            put(
                &s,
                &format!("h{i}"),
                json!({"bios": format!("v{}", i % 3), "big": vec![i; 50]}),
            );
        }
        let p = Pipeline::from_request(&json!({"pipeline": [{"$group": {"_id": "$bios", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]})).unwrap();
        assert_eq!(
            s.aggregate(&p).unwrap(),
            vec![
                json!({"_id": "v0", "n": 4}),
                json!({"_id": "v1", "n": 3}),
                json!({"_id": "v2", "n": 3})
            ]
        );
        let d = Distinct::from_request(&json!({"path": "bios", "filter": {"big": 1}})).unwrap();
        assert_eq!(s.distinct(&d).unwrap(), vec![json!("v1")]);
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
