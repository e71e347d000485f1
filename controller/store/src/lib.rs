//! Where inventory documents live: one document per server, keyed by MercuryId, with the last
//! versions of each kept as history.
//!
//! One interface, [`Store`], over two backends: the embedded one ([`embedded::EmbeddedStore`],
//! redb in a data dir, zero setup) and MongoDB ([`mongo::MongoStore`]). Both answer the same
//! [`Query`], [`Count`], [`Distinct`] and [`Pipeline`] the same way (the conformance suite runs
//! against this interface), report failures as [`StoreError`] without leaking a backend's own
//! types, and report their state ([`Health`]) so `/healthz` can say when the store is degraded.
//!
//! The controller owns each document's top-level `agent` and `boot` subdocuments and writes them
//! separately ([`Write::Agent`], [`Store::set_boot`]) so liveness updates never rewrite an
//! inventory. Inventory writes derive history rows (a reverse patch and a one-line summary,
//! [`history`]) in the same transaction on the embedded backend.

pub mod document;
pub mod embedded;
pub mod history;
pub mod index;
pub mod mongo;
pub mod msgpack;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use qs_query::{Count, Distinct, Pipeline, Query};

pub use history::{HistoryEntry, HistoryError};

/// Default number of inventory versions kept per host (`qs serve --history`).
pub const DEFAULT_HISTORY: usize = 20;

/// Paths indexed on every store; `qs serve --index PATH` adds more.
pub const DEFAULT_INDEXES: &[&str] = &[
    "mercury_id",
    "dmi.product_serial",
    "dmi.chassis_serial",
    "interfaces.address",
    "bmc.lan.ip_address",
    "agent.online",
];

/// Why the store could not serve a request. No variant carries a backend's own error type:
/// causes are kept as text, so callers never depend on redb or mongodb.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's files could not be opened or created.
    #[error("cannot open the embedded store at {path}: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What the backend reported.
        reason: String,
    },
    /// Another controller has the store open.
    #[error("the embedded store at {path} is in use by another controller")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// A `--store` location that is not a usable URL.
    #[error("bad store URL {url}: {reason}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store cannot be used right now (I/O error, disk full, server unreachable); the
    /// backend retries and recovers by itself when the cause is gone.
    #[error("store {store} unavailable during {operation}: {reason}")]
    Unavailable {
        /// The store (data-dir file or URL without its password).
        store: String,
        /// What was being done.
        operation: &'static str,
        /// What the backend reported.
        reason: String,
    },
    /// A stored document could not be decoded or a document could not be encoded.
    #[error("document {id} cannot be encoded or decoded: {reason}")]
    Corrupt {
        /// The document's MercuryId.
        id: String,
        /// What the codec reported.
        reason: String,
    },
    /// A document to store is not a JSON object.
    #[error("document {id} is not a JSON object")]
    NotADocument {
        /// The document's MercuryId.
        id: String,
    },
    /// A record uses a field the store reserves.
    #[error("record {id} has a field {field}, which the store reserves")]
    ReservedField {
        /// The record's key.
        id: String,
        /// The field.
        field: &'static str,
    },
    /// A compare-and-swap found another version than the one the write was made against.
    #[error("document {id} is at version {found}, not {expected}")]
    Conflict {
        /// The document's MercuryId.
        id: String,
        /// The version the write expected.
        expected: u64,
        /// The version stored.
        found: u64,
    },
    /// The server refused a query the engine had accepted.
    #[error("the store refused the query: {message}")]
    Refused {
        /// The server's message.
        message: String,
    },
    /// The blocking storage task did not finish.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether retrying later may succeed (the store is degraded, not the request wrong).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::Task(_))
    }
}

/// One write of a batch ([`Store::write_batch`]).
#[derive(Debug, Clone)]
pub enum Write {
    /// Replaces a server's inventory (everything but the controller-owned `agent` field).
    Inventory {
        /// The MercuryId.
        id: String,
        /// The inventory, `mercury_id` included, `agent` excluded.
        doc: serde_json::Map<String, Value>,
    },
    /// Replaces a server's inventory only if its stored version is `version` (compare and
    /// swap: a delta applies only to the version it was made against); otherwise the whole
    /// batch fails with [`StoreError::Conflict`].
    InventoryIfVersion {
        /// The MercuryId.
        id: String,
        /// The inventory, `mercury_id` included, `agent` excluded.
        doc: serde_json::Map<String, Value>,
        /// The version ([`Store::inventory_version`]) the new inventory was made from; 0 for
        /// "no inventory stored yet".
        version: u64,
    },
    /// Replaces a server's `agent` subdocument.
    Agent {
        /// The MercuryId.
        id: String,
        /// The agent fields.
        agent: Value,
        /// Write only if the stored `agent.session` is this one: a session that ended must not
        /// overwrite the record of the session that replaced it.
        only_if_session: Option<u64>,
    },
    /// Replaces (or with `None` removes) a record of a controller collection other than
    /// inventory (jobs, tasks, events, tokens, audit): later features add a collection name,
    /// not a backend method. A record is a JSON object without an `_id` field
    /// ([`StoreError::NotADocument`], [`StoreError::ReservedField`] otherwise).
    Record {
        /// The collection.
        collection: Collection,
        /// The record's key.
        key: String,
        /// The record, or `None` to delete it.
        value: Option<Value>,
    },
}

impl Write {
    /// The MercuryId (or record key) the write is for.
    pub fn id(&self) -> &str {
        match self {
            Write::Inventory { id, .. }
            | Write::InventoryIfVersion { id, .. }
            | Write::Agent { id, .. } => id,
            Write::Record { key, .. } => key,
        }
    }
}

/// A collection of controller records beside inventory; every backend stores any of them the
/// same way (one JSON object per key, written in the same transaction as inventory) and answers
/// [`Store::find_records`] / [`Store::count_records`] over them as it answers inventory queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    /// Inventory-derived events (hardware changes).
    Events,
    /// Jobs.
    Jobs,
    /// The tasks of jobs (one per job and host).
    Tasks,
    /// Output and progress lines of tasks.
    TaskLogs,
    /// Assets (files, images) jobs refer to.
    Assets,
    /// API tokens.
    Tokens,
    /// The audit log.
    Audit,
    /// Agent enrollment: pending, approved and allowed MercuryIds, identity conflicts.
    Enrollment,
    /// One-time boot tokens (hashes) that admit an agent.
    BootTokens,
}

impl Collection {
    /// Every collection, for backends that prepare them all at start.
    pub const ALL: &'static [Collection] = &[
        Collection::Events,
        Collection::Jobs,
        Collection::Tasks,
        Collection::TaskLogs,
        Collection::Assets,
        Collection::Tokens,
        Collection::Audit,
        Collection::Enrollment,
        Collection::BootTokens,
    ];

    /// The collection's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Collection::Events => "events",
            Collection::Jobs => "jobs",
            Collection::Tasks => "tasks",
            Collection::TaskLogs => "task_logs",
            Collection::Assets => "assets",
            Collection::Tokens => "tokens",
            Collection::Audit => "audit",
            Collection::Enrollment => "enrollment",
            Collection::BootTokens => "boot_tokens",
        }
    }

    /// The record paths indexed in this collection: an equality, `$in` or range on one of them
    /// reads only the records it names (on the embedded backend; MongoDB gets the same indexes).
    pub fn indexed_paths(self) -> &'static [&'static str] {
        match self {
            Collection::Jobs => &["state", "created_at"],
            Collection::Tasks => &["job", "host", "state"],
            Collection::Events
            | Collection::TaskLogs
            | Collection::Assets
            | Collection::Tokens
            | Collection::Audit
            | Collection::Enrollment
            | Collection::BootTokens => &[],
        }
    }
}

/// A record's checks before it is stored: a JSON object without `_id` (the key plays that part,
/// and the MongoDB backend stores it there).
pub(crate) fn check_record(key: &str, value: &Value) -> Result<(), StoreError> {
    match value {
        Value::Object(m) if m.contains_key("_id") => Err(StoreError::ReservedField {
            id: key.to_owned(),
            field: "_id",
        }),
        Value::Object(_) => Ok(()),
        _ => Err(StoreError::NotADocument { id: key.to_owned() }),
    }
}

/// Where the store lives and how it is set up (`qs serve --store/--index/--history`).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Extra indexed paths beside [`DEFAULT_INDEXES`].
    pub indexes: Vec<String>,
    /// Inventory versions kept per host.
    pub history: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            indexes: Vec::new(),
            history: DEFAULT_HISTORY,
        }
    }
}

impl StoreOptions {
    /// Every indexed path: the defaults, then the extra ones, without repeats.
    pub fn index_paths(&self) -> Vec<String> {
        let mut out: Vec<String> = DEFAULT_INDEXES.iter().map(|p| (*p).to_owned()).collect();
        for p in &self.indexes {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// The store's state as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Health {
    /// Reads and writes work.
    Ok,
    /// The last operation failed; the store is retrying (reopening, reconnecting).
    Degraded {
        /// Why, as the backend reported it.
        reason: String,
        /// When it started (RFC 3339).
        since: String,
    },
}

/// Where `qs serve --store` keeps inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// redb in the data dir.
    Embedded,
    /// A MongoDB database (`mongodb://HOST:PORT/DB`).
    MongoDb(String),
}

impl StoreLocation {
    /// Parses `embedded` or a `mongodb://` / `mongodb+srv://` URL.
    pub fn parse(text: &str) -> Result<StoreLocation, StoreError> {
        match text {
            "" | "embedded" => Ok(StoreLocation::Embedded),
            url if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") => {
                Ok(StoreLocation::MongoDb(url.to_owned()))
            }
            other => Err(StoreError::BadUrl {
                url: mongo::redact(other),
                reason: "expected `embedded` or mongodb://HOST:PORT/DB".into(),
            }),
        }
    }
}

/// The inventory store the controller uses.
#[derive(Clone)]
pub enum Store {
    /// The embedded, zero-setup store in a data dir.
    Embedded(Arc<embedded::EmbeddedStore>),
    /// A MongoDB database.
    Mongo(Arc<mongo::MongoStore>),
}

impl Store {
    /// Opens (creating if needed) the embedded store in `data_dir` with the default options.
    pub fn open_embedded(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_embedded_with(data_dir, StoreOptions::default())
    }

    /// Opens (creating if needed) the embedded store in `data_dir`.
    pub fn open_embedded_with(data_dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Ok(Store::Embedded(Arc::new(embedded::EmbeddedStore::open(
            data_dir, options,
        )?)))
    }

    /// Prepares a MongoDB store at `url` (`mongodb://HOST:PORT/DB`). A malformed URL fails
    /// here; an unreachable server does not (the client connects, and reconnects, on use).
    pub async fn open_mongodb(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        Ok(Store::Mongo(Arc::new(
            mongo::MongoStore::open(url, options).await?,
        )))
    }

    /// Opens the store `qs serve` was given, without waiting for a MongoDB server to answer (a
    /// malformed URL fails at once; [`Store::wait_until_healthy`] waits). Starts the health
    /// watcher that retries a degraded store in the background, so it recovers without a
    /// request.
    pub async fn open_for_serve(
        location: &StoreLocation,
        data_dir: &Path,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let store = match location {
            StoreLocation::Embedded => Self::open_embedded_with(data_dir, options)?,
            StoreLocation::MongoDb(url) => Self::open_mongodb(url, options).await?,
        };
        let watched = store.clone();
        tokio::spawn(async move {
            let mut last = Health::Ok;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let now = watched.health().await;
                if now != last {
                    match &now {
                        Health::Ok => {
                            tracing::info!(store = %watched.describe(), "store recovered")
                        }
                        Health::Degraded { reason, .. } => {
                            tracing::error!(store = %watched.describe(), %reason, "store degraded")
                        }
                    }
                }
                last = now;
            }
        });
        Ok(store)
    }

    /// Returns once the store works, retrying with backoff; each failure is logged with the
    /// store's location (a MongoDB URL without its password).
    pub async fn wait_until_healthy(&self) {
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            match self.health().await {
                Health::Ok => return,
                Health::Degraded { reason, .. } => {
                    tracing::error!(store = %self.describe(), %reason, retry_in = ?wait, "cannot use the store; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
    }

    /// Where the store is, for messages (a MongoDB URL without its password).
    pub fn describe(&self) -> String {
        match self {
            Store::Embedded(s) => s.path().display().to_string(),
            Store::Mongo(s) => s.url().to_owned(),
        }
    }

    /// Whether the store works now; a degraded store tries to recover first.
    pub async fn health(&self) -> Health {
        match self {
            Store::Embedded(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.health())
                    .await
                    .unwrap_or_else(|e| Health::Degraded {
                        reason: format!("health check failed: {e}"),
                        since: document::now(),
                    })
            }
            Store::Mongo(s) => s.health().await,
        }
    }

    /// Replaces a server's inventory (everything but the `agent` subdocument).
    pub async fn put_inventory(&self, id: &str, doc: Value) -> Result<(), StoreError> {
        let Value::Object(doc) = doc else {
            return Err(StoreError::NotADocument { id: id.to_owned() });
        };
        self.write_batch(vec![Write::Inventory {
            id: id.to_owned(),
            doc,
        }])
        .await
    }

    /// Replaces a server's `agent` subdocument; creates the document if it does not exist.
    pub async fn set_agent(&self, id: &str, agent: Value) -> Result<(), StoreError> {
        self.write_batch(vec![Write::Agent {
            id: id.to_owned(),
            agent,
            only_if_session: None,
        }])
        .await
    }

    /// Replaces a server's controller-owned `boot` subdocument (`{"mode", "set_at"}`: what it
    /// boots when it PXE-boots); creates the document if it does not exist.
    pub async fn set_boot(&self, id: &str, boot: Value) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.set_boot(&id, boot)).await
            }
            Store::Mongo(s) => s.set_boot(id, boot).await,
        }
    }

    /// One server's document, with its `agent` and `boot` subdocuments.
    pub async fn get_inventory(&self, id: &str) -> Result<Option<Value>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.get(&id)).await
            }
            Store::Mongo(s) => s.get(id).await,
        }
    }

    /// The version of a server's stored inventory (0: none stored), for
    /// [`Write::InventoryIfVersion`].
    pub async fn inventory_version(&self, id: &str) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.inventory_version(&id)).await
            }
            Store::Mongo(s) => s.inventory_version(id).await,
        }
    }

    /// Applies many writes (several servers' inventories and agent fields, records) in one
    /// transaction: all of them or none. Inventory writes that change a document also record a
    /// history row in the same transaction.
    pub async fn write_batch(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => {
                let s = s.clone();
                blocking(move || s.write_batch(writes)).await
            }
            Store::Mongo(s) => s.write_batch(writes).await,
        }
    }

    /// A record of a controller collection.
    pub async fn get_record(
        &self,
        collection: Collection,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, key) = (s.clone(), key.to_owned());
                blocking(move || s.get_record(collection, &key)).await
            }
            Store::Mongo(s) => s.get_record(collection, key).await,
        }
    }

    /// The records of a collection a query selects, sorted (ties in key order), paged and
    /// projected, with the semantics of inventory queries.
    pub async fn find_records(
        &self,
        collection: Collection,
        query: &Query,
    ) -> Result<Vec<Value>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, q) = (s.clone(), query.clone());
                blocking(move || s.find_records(collection, &q)).await
            }
            Store::Mongo(s) => s.find_records(collection, query).await,
        }
    }

    /// How many records of a collection a filter selects.
    pub async fn count_records(
        &self,
        collection: Collection,
        count: &Count,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, c) = (s.clone(), count.clone());
                blocking(move || s.count_records(collection, &c)).await
            }
            Store::Mongo(s) => s.count_records(collection, count).await,
        }
    }

    /// A number no earlier start of a controller on this store returned.
    pub async fn next_epoch(&self) -> Result<u32, StoreError> {
        match self {
            Store::Embedded(s) => {
                let s = s.clone();
                blocking(move || s.next_epoch()).await
            }
            Store::Mongo(s) => s.next_epoch().await,
        }
    }

    /// The documents a query selects, sorted, paged and projected.
    pub async fn find(&self, query: &Query) -> Result<Vec<Value>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, q) = (s.clone(), query.clone());
                blocking(move || s.find(&q)).await
            }
            Store::Mongo(s) => s.find(query).await,
        }
    }

    /// How many documents a filter selects.
    pub async fn count(&self, count: &Count) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, c) = (s.clone(), count.clone());
                blocking(move || s.count(&c)).await
            }
            Store::Mongo(s) => s.count(count).await,
        }
    }

    /// The distinct values at a path among the documents a filter selects.
    pub async fn distinct(&self, distinct: &Distinct) -> Result<Vec<Value>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, d) = (s.clone(), distinct.clone());
                blocking(move || s.distinct(&d)).await
            }
            Store::Mongo(s) => s.distinct(distinct).await,
        }
    }

    /// Runs an aggregation pipeline over every document.
    pub async fn aggregate(&self, pipeline: &Pipeline) -> Result<Vec<Value>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, p) = (s.clone(), pipeline.clone());
                blocking(move || s.aggregate(&p)).await
            }
            Store::Mongo(s) => s.aggregate(pipeline).await,
        }
    }

    /// A host's kept history rows, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.history(&id)).await
            }
            Store::Mongo(s) => s.history(id).await,
        }
    }
}

/// The inventory part of a merged document: without the controller-owned subdocuments.
pub fn inventory_part(doc: &Map<String, Value>) -> Map<String, Value> {
    doc.iter()
        .filter(|(k, _)| k.as_str() != "agent" && k.as_str() != "boot")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
