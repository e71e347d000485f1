//! The MongoDB backend: `qs serve --store mongodb://HOST:PORT/DB`, the official `mongodb`
//! driver.
//!
//! Collections: `inventory` (one document per host: `_id` and `mercury_id` the MercuryId, the
//! inventory's fields in the agent's order, the controller's `agent` and `boot`, and `_rev`,
//! the inventory version compare-and-swap checks), `inventory_history` (one row per kept
//! version: `mercury_id`, `seq`, `at`, `changes`, `reverse` as JSON text), `meta` (the epoch
//! counter) and one collection per [`Collection`] (each record a document: its key as `_id`, then
//! its fields). Indexes are created on first use after start
//! (`mercury_id` unique, the indexed paths, history by host and seq).
//!
//! Filters, projections, sorts, skips, limits, counts, distincts and pipelines go to the
//! server; nothing is kept in memory as the truth, so several controllers can share a database:
//! an inventory write is a compare-and-swap on `_rev` (retried on a race), agent writes are
//! single-document updates (conditional ones filter on `agent.session`). A batch is one
//! multi-document transaction when the deployment has them (a replica set, even of one node);
//! on a standalone server, which refuses transactions, it is applied write by write: each write
//! is atomic, the batch is not.
//!
//! Errors never carry driver types: a server that cannot be reached is
//! [`StoreError::Unavailable`] naming the URL without its password; [`MongoStore::health`]
//! pings the server, so `/healthz` reports the state and recovery is seen when it returns (the
//! driver reconnects by itself).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Regex};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, ClientSession, IndexModel};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::history::HistoryEntry;
use super::{document, Collection, Health, StoreError, StoreOptions, Write};
use qs_query::{Count, Distinct, Pipeline, Query, FIND_KEY};

const INVENTORY: &str = "inventory";
const HISTORY: &str = "inventory_history";
const META: &str = "meta";
/// The inventory version field (hidden from every answer).
const REV: &str = "_rev";

/// A MongoDB database holding the controller's collections.
pub struct MongoStore {
    client: Client,
    database: String,
    /// The URL with its password removed, for messages.
    url: String,
    indexes: Vec<String>,
    history: usize,
    indexes_ready: AtomicBool,
    /// Whether the deployment runs multi-document transactions (learnt at start).
    transactions: AtomicBool,
    state: Mutex<HealthState>,
}

/// The last failure (what, why) and since when the server has been failing.
type HealthState = (Option<(String, String)>, Option<Instant>);

/// `url` with the password of its user info replaced by `****`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:****@{hosts}{tail}")
            } else {
                format!("{scheme}://{user}@{hosts}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

impl MongoStore {
    /// Parses the URL and makes a client; the server is not contacted yet.
    pub async fn open(url: &str, options: StoreOptions) -> Result<MongoStore, StoreError> {
        let shown = redact(url);
        let bad = |reason: String| StoreError::BadUrl {
            url: shown.clone(),
            reason,
        };
        let mut client_options = ClientOptions::parse(url)
            .await
            .map_err(|e| bad(redact_text(&e.to_string(), url, &shown)))?;
        let database = client_options
            .default_database
            .clone()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad("it names no database (mongodb://HOST:PORT/DB)".into()))?;
        // Fail fast when the server is away, so /healthz and writers see it within seconds.
        client_options.server_selection_timeout = Some(Duration::from_secs(3));
        client_options.connect_timeout = Some(Duration::from_secs(3));
        client_options.app_name = Some("quicksilver".into());
        let client = Client::with_options(client_options)
            .map_err(|e| bad(redact_text(&e.to_string(), url, &shown)))?;
        Ok(MongoStore {
            client,
            database,
            url: shown,
            indexes: options.index_paths(),
            history: options.history,
            indexes_ready: AtomicBool::new(false),
            transactions: AtomicBool::new(false),
            state: Mutex::new((None, None)),
        })
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn coll(&self, name: &str) -> mongodb::Collection<Document> {
        self.client.database(&self.database).collection(name)
    }

    fn unavailable(&self, operation: &'static str, e: &mongodb::error::Error) -> StoreError {
        let reason = e.to_string();
        warn!(store = %self.url, operation, error = %reason, "MongoDB store degraded");
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0.is_none() {
            state.0 = Some((reason.clone(), document::now()));
        }
        StoreError::Unavailable {
            store: self.url.clone(),
            operation,
            reason,
        }
    }

    /// A driver error as a store error: a refused command is the query's fault, anything else
    /// makes the store degraded.
    fn error(&self, operation: &'static str, e: mongodb::error::Error) -> StoreError {
        match *e.kind {
            mongodb::error::ErrorKind::Command(ref c) => StoreError::Refused {
                message: c.message.clone(),
            },
            _ => self.unavailable(operation, &e),
        }
    }

    fn healthy(&self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0.take().is_some() {
            info!(store = %self.url, "MongoDB store recovered");
        }
    }

    /// Creates the indexes once per start (again after a failure).
    async fn ready(&self) -> Result<(), StoreError> {
        if self.indexes_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut models = vec![IndexModel::builder()
            .keys(doc! {FIND_KEY: 1})
            .options(IndexOptions::builder().unique(true).build())
            .build()];
        for path in self.indexes.iter().filter(|p| p.as_str() != FIND_KEY) {
            models.push(IndexModel::builder().keys(doc! {path: 1}).build());
        }
        self.coll(INVENTORY)
            .create_indexes(models)
            .await
            .map_err(|e| self.unavailable("create indexes", &e))?;
        self.coll(HISTORY)
            .create_index(
                IndexModel::builder()
                    .keys(doc! {FIND_KEY: 1, "seq": 1})
                    .build(),
            )
            .await
            .map_err(|e| self.unavailable("create indexes", &e))?;
        for &collection in Collection::ALL {
            let models: Vec<IndexModel> = collection
                .indexed_paths()
                .iter()
                .map(|path| IndexModel::builder().keys(doc! {*path: 1}).build())
                .collect();
            if !models.is_empty() {
                self.coll(collection.name())
                    .create_indexes(models)
                    .await
                    .map_err(|e| self.unavailable("create indexes", &e))?;
            }
        }
        // Transactions need a replica set (or a sharded cluster); a standalone server refuses
        // them, and the driver with it.
        let hello = self
            .client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| self.unavailable("hello", &e))?;
        let transactions =
            hello.get_str("setName").is_ok() || hello.get_str("msg").is_ok_and(|m| m == "isdbgrid");
        self.transactions.store(transactions, Ordering::Release);
        self.indexes_ready.store(true, Ordering::Release);
        info!(store = %self.url, indexes = ?self.indexes, transactions, "MongoDB indexes ready");
        Ok(())
    }

    /// Pings the server (at most once a second while healthy).
    pub async fn health(&self) -> Health {
        {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.0.is_none()
                && state
                    .1
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return Health::Ok;
            }
            state.1 = Some(Instant::now());
        }
        let ping = self
            .client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await;
        match ping {
            Ok(_) => match self.ready().await {
                Ok(()) => {
                    self.healthy();
                    Health::Ok
                }
                Err(e) => self.degraded(e.to_string()),
            },
            Err(e) => {
                let _ = self.unavailable("ping", &e);
                self.degraded(format!("{}: {e}", self.url))
            }
        }
    }

    fn degraded(&self, fallback: String) -> Health {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (reason, since) = state
            .0
            .clone()
            .unwrap_or_else(|| (fallback, document::now()));
        Health::Degraded {
            reason: format!("{}: {reason}", self.url),
            since,
        }
    }

    /// One host's merged document.
    pub async fn get(&self, id: &str) -> Result<Option<Value>, StoreError> {
        self.ready().await?;
        let found = self
            .coll(INVENTORY)
            .find_one(doc! {"_id": id})
            .projection(doc! {"_id": 0, REV: 0})
            .await
            .map_err(|e| self.error("read", e))?;
        self.healthy();
        Ok(found.map(|d| document::upgrade(to_json(&Bson::Document(d)))))
    }

    /// The version of a host's inventory (0: none).
    pub async fn inventory_version(&self, id: &str) -> Result<u64, StoreError> {
        self.ready().await?;
        let found = self
            .coll(INVENTORY)
            .find_one(doc! {"_id": id})
            .projection(doc! {REV: 1})
            .await
            .map_err(|e| self.error("read", e))?;
        Ok(found.map_or(0, |d| rev_of(&d)))
    }

    /// The next controller epoch, shared by every controller of the database.
    pub async fn next_epoch(&self) -> Result<u32, StoreError> {
        self.ready().await?;
        let after = self
            .coll(META)
            .find_one_and_update(doc! {"_id": "epoch"}, doc! {"$inc": {"value": 1_i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.error("epoch", e))?;
        let value = after
            .and_then(|d| match d.get("value") {
                Some(Bson::Int64(v)) => Some(*v as u64),
                Some(Bson::Int32(v)) => Some(*v as u64),
                _ => None,
            })
            .unwrap_or(1);
        Ok(((value & u64::from(u32::MAX)).max(1)) as u32)
    }

    /// Replaces a host's `boot` subdocument.
    pub async fn set_boot(&self, id: &str, boot: Value) -> Result<(), StoreError> {
        self.ready().await?;
        self.coll(INVENTORY)
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"boot": to_bson(&boot)}, "$setOnInsert": {FIND_KEY: id}},
            )
            .upsert(true)
            .await
            .map_err(|e| self.error("write", e))?;
        Ok(())
    }

    /// Applies a batch: in one multi-document transaction when the deployment has them (a
    /// replica set or sharded cluster), retried whole on a transient error (a write conflict
    /// with another controller); on a standalone server, write by write (each atomic on its
    /// own; see ARCHITECTURE.md).
    pub async fn write_batch(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        for w in &writes {
            if let Write::Record {
                key,
                value: Some(v),
                ..
            } = w
            {
                super::check_record(key, v)?;
            }
        }
        self.ready().await?;
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| self.error("start session", e))?;
        if !self.transactions.load(Ordering::Acquire) {
            self.apply(&mut session, &writes)
                .await
                .map_err(|f| f.into_store(self))?;
            self.healthy();
            return Ok(());
        }
        let started = Instant::now();
        for attempt in 0..TRANSACTION_ATTEMPTS {
            if attempt > 0 {
                if started.elapsed() > TRANSACTION_PATIENCE {
                    break;
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
            session
                .start_transaction()
                .await
                .map_err(|e| self.error("start transaction", e))?;
            let applied = self.apply(&mut session, &writes).await;
            match applied {
                Ok(()) => match commit(&mut session).await {
                    Ok(()) => {
                        self.healthy();
                        return Ok(());
                    }
                    Err(e) if retryable(&e) => continue,
                    Err(e) => return Err(self.error("commit", e)),
                },
                Err(failure) => {
                    let _ = session.abort_transaction().await;
                    match failure {
                        Failure::Driver(_, e) if retryable(&e) => continue,
                        other => return Err(other.into_store(self)),
                    }
                }
            }
        }
        Err(StoreError::Unavailable {
            store: self.url.clone(),
            operation: "write",
            reason: format!(
                "the transaction kept conflicting with other writers for {:?}",
                started.elapsed()
            ),
        })
    }

    /// Applies every write of a batch in `session` (inside its transaction, if one is open).
    async fn apply(&self, session: &mut ClientSession, writes: &[Write]) -> Result<(), Failure> {
        for w in writes {
            match w {
                Write::Inventory { id, doc } => {
                    self.put_inventory(session, id, doc.clone(), None).await?
                }
                Write::InventoryIfVersion { id, doc, version } => {
                    self.put_inventory(session, id, doc.clone(), Some(*version))
                        .await?
                }
                Write::Agent {
                    id,
                    agent,
                    only_if_session,
                } => {
                    let coll = self.coll(INVENTORY);
                    let result = match only_if_session {
                        Some(s) => {
                            coll.update_one(
                                doc! {"_id": id, "agent.session": to_bson(&Value::from(*s))},
                                doc! {"$set": {"agent": to_bson(agent)}},
                            )
                            .session(&mut *session)
                            .await
                        }
                        None => {
                            coll.update_one(
                                doc! {"_id": id},
                                doc! {"$set": {"agent": to_bson(agent)}, "$setOnInsert": {FIND_KEY: id}},
                            )
                            .upsert(true)
                            .session(&mut *session)
                            .await
                        }
                    };
                    result.map_err(|e| Failure::Driver("write", e))?;
                }
                Write::Record {
                    collection,
                    key,
                    value,
                } => {
                    let coll = self.coll(collection.name());
                    match value {
                        Some(v) => {
                            coll.replace_one(doc! {"_id": key}, record_document(key, v))
                                .upsert(true)
                                .session(&mut *session)
                                .await
                                .map_err(|e| Failure::Driver("write", e))?;
                        }
                        None => {
                            coll.delete_one(doc! {"_id": key})
                                .session(&mut *session)
                                .await
                                .map_err(|e| Failure::Driver("write", e))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Replaces a host's inventory: a compare-and-swap on `_rev` (retried when another writer
    /// got there first, unless the caller named the version), then its history row.
    async fn put_inventory(
        &self,
        session: &mut ClientSession,
        id: &str,
        mut inventory: Map<String, Value>,
        expected: Option<u64>,
    ) -> Result<(), Failure> {
        inventory.remove("agent");
        inventory.remove("boot");
        if !inventory.contains_key(FIND_KEY) {
            inventory.insert(FIND_KEY.into(), Value::String(id.to_owned()));
        }
        let coll = self.coll(INVENTORY);
        let driver = |op: &'static str| move |e| Failure::Driver(op, e);
        for _attempt in 0..16 {
            let current = coll
                .find_one(doc! {"_id": id})
                .session(&mut *session)
                .await
                .map_err(driver("read"))?;
            let rev = current.as_ref().map_or(0, rev_of);
            if let Some(expected) = expected {
                if expected != rev {
                    return Err(Failure::Store(StoreError::Conflict {
                        id: id.to_owned(),
                        expected,
                        found: rev,
                    }));
                }
            }
            let mut new = Document::new();
            new.insert("_id", id);
            for (k, v) in &inventory {
                new.insert(k.clone(), to_bson(v));
            }
            for part in ["agent", "boot"] {
                if let Some(v) = current.as_ref().and_then(|c| c.get(part)) {
                    new.insert(part, v.clone());
                }
            }
            new.insert(REV, (rev + 1) as i64);
            let written = match &current {
                None => match coll.insert_one(new).session(&mut *session).await {
                    Ok(_) => true,
                    Err(e) if is_duplicate(&e) => false,
                    Err(e) => return Err(Failure::Driver("write", e)),
                },
                Some(c) => {
                    let filter = match c.get(REV) {
                        Some(r) => doc! {"_id": id, REV: r.clone()},
                        None => doc! {"_id": id, REV: {"$exists": false}},
                    };
                    coll.replace_one(filter, new)
                        .session(&mut *session)
                        .await
                        .map_err(driver("write"))?
                        .matched_count
                        == 1
                }
            };
            if !written {
                continue;
            }
            let old = current.map(|c| {
                let mut v = to_json(&Bson::Document(c));
                if let Value::Object(m) = &mut v {
                    m.remove("_id");
                    m.remove(REV);
                }
                v
            });
            let old_inventory = old
                .as_ref()
                .and_then(Value::as_object)
                .map(super::inventory_part)
                .filter(|m| m.len() > 1 || !m.contains_key(FIND_KEY));
            let changed = match &old_inventory {
                Some(o) => document::changed(o, &inventory),
                None => true,
            };
            if changed && self.history > 0 {
                let old_value = old_inventory.map(Value::Object);
                self.record_history(
                    session,
                    id,
                    rev + 1,
                    old_value.as_ref(),
                    &Value::Object(inventory),
                )
                .await?;
            }
            return Ok(());
        }
        Err(Failure::Store(StoreError::Unavailable {
            store: self.url.clone(),
            operation: "write",
            reason: format!("document {id} kept changing under 16 attempts"),
        }))
    }

    async fn record_history(
        &self,
        session: &mut ClientSession,
        id: &str,
        seq: u64,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), Failure> {
        let entry = HistoryEntry::record(seq, old, new);
        let reverse = serde_json::to_string(&entry.reverse).map_err(|e| {
            Failure::Store(StoreError::Corrupt {
                id: id.to_owned(),
                reason: e.to_string(),
            })
        })?;
        let coll = self.coll(HISTORY);
        coll.insert_one(doc! {
            FIND_KEY: id,
            "seq": seq as i64,
            "at": &entry.at,
            "changes": entry.changes.clone(),
            "reverse": reverse,
        })
        .session(&mut *session)
        .await
        .map_err(|e| Failure::Driver("write history", e))?;
        // Prune to the newest N: the Nth newest seq is the oldest kept.
        let keep = self.history.max(1) as u64;
        let prune = |e| Failure::Driver("prune history", e);
        let mut cursor = coll
            .find(doc! {FIND_KEY: id})
            .sort(doc! {"seq": -1})
            .skip(keep)
            .limit(1)
            .projection(doc! {"seq": 1})
            .session(&mut *session)
            .await
            .map_err(prune)?;
        let newest: Vec<Document> = cursor
            .stream(&mut *session)
            .try_collect()
            .await
            .map_err(prune)?;
        if let Some(cut) = newest.first().and_then(|d| d.get("seq")).cloned() {
            coll.delete_many(doc! {FIND_KEY: id, "seq": {"$lte": cut}})
                .session(&mut *session)
                .await
                .map_err(prune)?;
        }
        Ok(())
    }

    /// A host's kept history, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.ready().await?;
        let rows: Vec<Document> = self
            .coll(HISTORY)
            .find(doc! {FIND_KEY: id})
            .sort(doc! {"seq": 1})
            .await
            .map_err(|e| self.error("read history", e))?
            .try_collect()
            .await
            .map_err(|e| self.error("read history", e))?;
        rows.into_iter()
            .map(|d| {
                let corrupt = |reason: String| StoreError::Corrupt {
                    id: id.to_owned(),
                    reason,
                };
                let reverse = d.get_str("reverse").map_err(|e| corrupt(e.to_string()))?;
                Ok(HistoryEntry {
                    seq: rev_of_field(&d, "seq"),
                    at: d
                        .get_str("at")
                        .map_err(|e| corrupt(e.to_string()))?
                        .to_owned(),
                    changes: d
                        .get_array("changes")
                        .map_err(|e| corrupt(e.to_string()))?
                        .iter()
                        .filter_map(|b| b.as_str().map(str::to_owned))
                        .collect(),
                    reverse: serde_json::from_str(reverse).map_err(|e| corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    /// A record of a controller collection.
    pub async fn get_record(
        &self,
        collection: Collection,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        self.ready().await?;
        let found = self
            .coll(collection.name())
            .find_one(doc! {"_id": key})
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| self.error("read", e))?;
        Ok(found.map(|d| to_json(&Bson::Document(d))))
    }

    /// Runs a query over a record collection on the server; ties of the sort (and everything
    /// without one) come in key order, as on the embedded backend.
    pub async fn find_records(
        &self,
        collection: Collection,
        query: &Query,
    ) -> Result<Vec<Value>, StoreError> {
        self.ready().await?;
        let mut sort = match query.sort_document() {
            Some(s) => query_document(s),
            None => Document::new(),
        };
        if !sort.contains_key("_id") {
            sort.insert("_id", 1);
        }
        let coll = self.coll(collection.name());
        let find = coll
            .find(query_document(query.filter_document()))
            .projection(query_document(&qs_query::server::find_projection(
                query.projection_document(),
            )))
            .sort(sort);
        let docs = self.page_and_collect(find, query).await?;
        Ok(docs
            .into_iter()
            .map(|d| to_json(&Bson::Document(d)))
            .collect())
    }

    /// Applies a query's skip and limit to a find and reads every document it returns.
    async fn page_and_collect(
        &self,
        mut find: mongodb::action::Find<'_, Document>,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError> {
        if let Some(skip) = query.skip.filter(|s| *s > 0) {
            find = find.skip(skip);
        }
        if let Some(limit) = query.limit.filter(|l| *l > 0) {
            find = find.limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let docs: Vec<Document> = find
            .await
            .map_err(|e| self.error("find", e))?
            .try_collect()
            .await
            .map_err(|e| self.error("find", e))?;
        self.healthy();
        Ok(docs)
    }

    /// Counts records of a collection on the server.
    pub async fn count_records(
        &self,
        collection: Collection,
        count: &Count,
    ) -> Result<u64, StoreError> {
        self.ready().await?;
        self.coll(collection.name())
            .count_documents(query_document(count.filter.document()))
            .await
            .map_err(|e| self.error("count", e))
    }

    /// Runs a query on the server.
    pub async fn find(&self, query: &Query) -> Result<Vec<Value>, StoreError> {
        self.ready().await?;
        let coll = self.coll(INVENTORY);
        let mut find = coll
            .find(query_document(query.filter_document()))
            .projection(projection(query.projection_document()));
        if let Some(sort) = query.sort_document() {
            find = find.sort(query_document(sort));
        }
        let docs = self.page_and_collect(find, query).await?;
        Ok(docs
            .into_iter()
            .map(|d| document::upgrade(to_json(&Bson::Document(d))))
            .collect())
    }

    /// Counts on the server.
    pub async fn count(&self, count: &Count) -> Result<u64, StoreError> {
        self.ready().await?;
        self.coll(INVENTORY)
            .count_documents(query_document(count.filter.document()))
            .await
            .map_err(|e| self.error("count", e))
    }

    /// Distinct values on the server.
    pub async fn distinct(&self, distinct: &Distinct) -> Result<Vec<Value>, StoreError> {
        self.ready().await?;
        let values = self
            .coll(INVENTORY)
            .distinct(
                distinct.path(),
                query_document(distinct.filter().document()),
            )
            .await
            .map_err(|e| self.error("distinct", e))?;
        Ok(values.iter().map(to_json).collect())
    }

    /// Runs a pipeline on the server, the server's own fields removed first.
    pub async fn aggregate(&self, pipeline: &Pipeline) -> Result<Vec<Value>, StoreError> {
        self.ready().await?;
        let mut stages = vec![doc! {"$project": {"_id": 0, REV: 0}}];
        stages.extend(pipeline.stages().iter().map(query_document));
        let docs: Vec<Document> = self
            .coll(INVENTORY)
            .aggregate(stages)
            .await
            .map_err(|e| self.error("aggregate", e))?
            .try_collect()
            .await
            .map_err(|e| self.error("aggregate", e))?;
        Ok(docs
            .into_iter()
            .map(|d| to_json(&Bson::Document(d)))
            .collect())
    }
}

/// How many times a batch's transaction is tried when it keeps conflicting, and for how long
/// at most (MongoDB's drivers give their own transaction helper 120 s).
const TRANSACTION_ATTEMPTS: u32 = 64;
const TRANSACTION_PATIENCE: Duration = Duration::from_secs(30);

/// The wait before trying a conflicting transaction again: growing, capped, and jittered so
/// two controllers writing the same documents stop meeting each other.
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = (5u64 << attempt.min(7)).min(500);
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// Why a write of a batch failed: the store's answer, or the driver's (kept whole so its
/// labels tell whether the transaction can be retried).
enum Failure {
    Store(StoreError),
    Driver(&'static str, mongodb::error::Error),
}

impl Failure {
    fn into_store(self, store: &MongoStore) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::Driver(op, e) => store.error(op, e),
        }
    }
}

/// Whether a transaction that failed with `e` is worth running again now: a conflict with
/// another writer is; a server that cannot be reached is reported at once instead.
fn retryable(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        && !matches!(
            *e.kind,
            ErrorKind::Io(_)
                | ErrorKind::ServerSelection { .. }
                | ErrorKind::ConnectionPoolCleared { .. }
        )
}

/// Commits, retrying the commit itself while its outcome is unknown (the driver's advice).
async fn commit(session: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    let mut attempts = 0;
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempts < 3 => {
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// A record as stored: its key as `_id`, then its fields in their order.
fn record_document(key: &str, record: &Value) -> Document {
    let mut out = Document::new();
    out.insert("_id", key);
    if let Bson::Document(fields) = to_bson(record) {
        out.extend(fields);
    }
    out
}

fn redact_text(text: &str, url: &str, shown: &str) -> String {
    text.replace(url, shown)
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000)
}

fn rev_of(d: &Document) -> u64 {
    rev_of_field(d, REV)
}

fn rev_of_field(d: &Document, field: &str) -> u64 {
    match d.get(field) {
        Some(Bson::Int64(v)) => *v as u64,
        Some(Bson::Int32(v)) => *v as u64,
        Some(Bson::Double(v)) => *v as u64,
        _ => 0,
    }
}

/// The projection our API means, as the server takes it (qs-query's translation: `_id` never
/// shown, `mercury_id` kept by inclusions unless excluded), with `_rev` hidden as well.
fn projection(p: Option<&Value>) -> Document {
    let mut out = query_document(&qs_query::server::find_projection(p));
    let inclusion = out.iter().any(|(k, v)| {
        k != "_id"
            && match v {
                Bson::Int32(n) => *n != 0,
                Bson::Int64(n) => *n != 0,
                Bson::Double(f) => *f != 0.0,
                Bson::Boolean(b) => *b,
                _ => true,
            }
    });
    if !inclusion {
        out.insert(REV, 0);
    }
    out
}

/// JSON to BSON as this backend stores it: whole numbers as int32 when they fit, else int64;
/// other numbers as doubles.
pub fn to_bson(v: &Value) -> Bson {
    convert(v, false)
}

/// A filter, sort or stage document: as [`to_bson`], and `{"$regex", "$options"}` inside arrays
/// as BSON regexes (JSON's spelling of `/re/` in `$in`, `$nin`, `$all`); anything but a JSON
/// object is sent as one the server refuses, as it would refuse the value.
pub fn query_document(v: &Value) -> Document {
    match convert(v, true) {
        Bson::Document(d) => d,
        other => doc! {"$qs_not_a_document": other},
    }
}

fn convert(v: &Value, query: bool) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::String(s) => Bson::String(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => match i32::try_from(i) {
                Ok(small) => Bson::Int32(small),
                Err(_) => Bson::Int64(i),
            },
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::Array(items) => Bson::Array(
            items
                .iter()
                .map(|item| {
                    query
                        .then(|| regex_of(item))
                        .flatten()
                        .unwrap_or_else(|| convert(item, query))
                })
                .collect(),
        ),
        Value::Object(map) => Bson::Document(
            map.iter()
                .map(|(k, v)| (k.clone(), convert(v, query)))
                .collect(),
        ),
    }
}

fn regex_of(v: &Value) -> Option<Bson> {
    let map = v.as_object()?;
    let pattern = map.get("$regex")?.as_str()?;
    let options = map
        .get("$options")
        .map(|o| o.as_str())
        .unwrap_or(Some(""))?;
    if map.keys().any(|k| k != "$regex" && k != "$options") {
        return None;
    }
    let mut flags: Vec<char> = options.chars().collect();
    flags.sort_unstable();
    Some(Bson::RegularExpression(Regex {
        pattern: pattern.to_owned(),
        options: flags.into_iter().collect(),
    }))
}

/// BSON back to JSON: numbers keep their kind (a double stays a double).
pub fn to_json(b: &Bson) -> Value {
    match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(x) => Value::Bool(*x),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Document(d) => {
            Value::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        Bson::RegularExpression(r) => {
            serde_json::json!({"$regex": r.pattern, "$options": r.options})
        }
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("mongodb://qs:s3cret@db1:27017,db2/inv?authSource=admin"),
            "mongodb://qs:****@db1:27017,db2/inv?authSource=admin"
        );
        assert_eq!(redact("mongodb://db:27017/x"), "mongodb://db:27017/x");
    }
}
