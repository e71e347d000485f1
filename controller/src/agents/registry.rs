//! The one owner of agent sessions and liveness.
//!
//! A session is an agent's registration over one connection to this controller process; it
//! lives in memory only. What operators query — the `agent` subdocument of each inventory
//! document — is in the store and is the one truth for listings (`GET /agents` and
//! `agent.online` queries read the same thing). Registration writes the agent fields together
//! with the inventory (see [`super::ingest`]); after that, heartbeats touch memory only, and
//! the sweep writes changed `last_seen` values, sessions that went silent and sessions whose
//! connection ended, all in one transaction per sweep.
//!
//! Every agent record names its session (`agent.session`, unique across controller
//! processes) and the controller that owns it (`agent.controller`). The sweep's writes are
//! conditional on the session still being the stored one, so a session that ended never
//! overwrites the one that replaced it, and a controller sharing a database never marks
//! offline an agent another controller serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qs_proto::{CapabilityInfo, MercuryId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::transport::{Connection, ConnectionId};
use crate::store::{Store, StoreError, Write};
use qs_query::{Query, QueryError};

/// How far a stored `last_seen` may lag the agent's last sign of life.
pub const LAST_SEEN_RESOLUTION: Duration = Duration::from_secs(60);

/// Why the registry could not read or write agent state.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed.
    #[error("agent state could not be stored")]
    Store(#[from] StoreError),
    /// Agent fields could not be encoded as a document.
    #[error("agent fields of {id} could not be encoded")]
    Encode {
        /// The agent.
        id: String,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// A listing query was refused (a bug: it is a constant).
    #[error("agent listing query is invalid")]
    Query(#[source] QueryError),
}

/// The `agent` subdocument of an inventory document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Whether the agent has a live session.
    pub online: bool,
    /// Last heartbeat or message, RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// When the current (or last) session registered, RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub registered: OffsetDateTime,
    /// `qs-agent` version.
    pub version: String,
    /// Linux boot id of the session.
    pub boot_id: String,
    /// Address the agent connects from, as the controller sees it.
    #[serde(default)]
    pub address: Option<String>,
    /// Capabilities the agent offers.
    #[serde(default)]
    pub capabilities: Vec<CapabilityInfo>,
    /// Build id of the boot image the agent runs in, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The session this record belongs to (controller epoch and connection).
    #[serde(default)]
    pub session: u64,
    /// The controller that serves (or last served) the session.
    #[serde(default)]
    pub controller: String,
}

/// An agent as listed by `GET /api/v1/agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSummary {
    /// The server's MercuryId.
    pub mercury_id: MercuryId,
    /// The persisted agent fields.
    #[serde(flatten)]
    pub record: AgentRecord,
}

/// One registration over one connection.
#[derive(Debug)]
struct Session {
    conn: Arc<Connection>,
    /// The agent's version number of the inventory stored for it.
    inventory_version: u64,
    record: AgentRecord,
    /// `last_seen` changed since it was last written.
    dirty: bool,
    /// The `last_seen` the store holds for this session.
    written_last_seen: OffsetDateTime,
}

/// Agent records the sweep commits per transaction.
const SWEEP_CHUNK: usize = 1000;

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// An agent silent this long is offline.
    pub timeout: Duration,
    /// This controller's name (`agent.controller`).
    pub controller: String,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Records written (one transaction).
    pub written: usize,
    /// Sessions ended because the agent went silent.
    pub went_silent: usize,
    /// Sessions whose connection had ended.
    pub disconnected: usize,
}

/// Agent sessions of this controller process.
pub struct Registry {
    store: Store,
    config: RegistryConfig,
    sessions: Mutex<HashMap<MercuryId, Session>>,
    /// Records of sessions that ended, to be written offline by the next sweep.
    ended: Mutex<Vec<(MercuryId, AgentRecord)>>,
    wake: Notify,
}

impl Registry {
    /// A registry with no sessions.
    pub fn new(store: Store, config: RegistryConfig) -> Self {
        Self {
            store,
            config,
            sessions: Mutex::new(HashMap::new()),
            ended: Mutex::new(Vec::new()),
            wake: Notify::new(),
        }
    }

    /// This controller's name.
    pub fn controller(&self) -> &str {
        &self.config.controller
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MercuryId, Session>> {
        // Every update below leaves sessions whole, so a poisoned lock still holds valid data.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks offline every agent this controller left online (it crashed or stopped without
    /// a last sweep): until an agent speaks again, nothing is known about it.
    pub async fn mark_stale_offline(&self) -> Result<usize, RegistryError> {
        let query = Query::from_request(&serde_json::json!({
            "filter": {"agent.online": true, "$or": [
                {"agent.controller": &self.config.controller},
                {"agent.controller": {"$exists": false}},
                {"agent.controller": ""},
            ]},
            "projection": {"agent": 1},
        }))
        .map_err(RegistryError::Query)?;
        let mut writes = Vec::new();
        for doc in self.store.find(&query).await? {
            let id = doc.get("mercury_id").and_then(|v| v.as_str());
            let record = doc
                .get("agent")
                .cloned()
                .map(serde_json::from_value::<AgentRecord>);
            match (id, record) {
                (Some(id), Some(Ok(mut record))) => {
                    record.online = false;
                    let session = record.session;
                    writes.push(Write::Agent {
                        id: id.to_owned(),
                        agent: encode_record(id, &record)?,
                        only_if_session: Some(session),
                    });
                }
                (Some(id), _) => warn!(mercury_id = id, "stored agent fields are unreadable"),
                _ => warn!("stored document has no mercury_id"),
            }
        }
        let n = writes.len();
        if n > 0 {
            self.store.write_batch(writes).await?;
            info!(
                agents = n,
                "agents left online by an earlier run marked offline until they speak"
            );
        }
        Ok(n)
    }

    /// Starts (or replaces) the agent's session once its registration is stored.
    pub fn start_session(&self, conn: &Arc<Connection>, record: AgentRecord, version: u64) {
        let previous = self.lock().insert(
            conn.identity().clone(),
            Session {
                conn: conn.clone(),
                inventory_version: version,
                written_last_seen: record.last_seen,
                record,
                dirty: false,
            },
        );
        if let Some(previous) = previous {
            if previous.conn.id() != conn.id() {
                // The agent reconnected; its old connection is dead or about to be.
                previous.conn.close();
            }
        }
    }

    /// Records a sign of life on `conn`. False when it carries no session (register first).
    pub fn seen(&self, conn: &Connection) -> bool {
        let mut sessions = self.lock();
        match sessions.get_mut(conn.identity()) {
            Some(s) if s.conn.id() == conn.id() => {
                s.record.last_seen = OffsetDateTime::now_utc();
                s.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// The inventory version stored for the session on `conn`, if it has one.
    pub fn inventory_version(&self, conn: &Connection) -> Option<u64> {
        self.lock()
            .get(conn.identity())
            .filter(|s| s.conn.id() == conn.id())
            .map(|s| s.inventory_version)
    }

    /// Records that the stored inventory is now the agent's version `version`.
    pub fn set_inventory_version(&self, conn: &Connection, version: u64) {
        if let Some(s) = self
            .lock()
            .get_mut(conn.identity())
            .filter(|s| s.conn.id() == conn.id())
        {
            s.inventory_version = version;
        }
    }

    /// The connection of the agent's session, if it has one here.
    pub fn connection(&self, id: &MercuryId) -> Option<Arc<Connection>> {
        self.lock()
            .get(id)
            .map(|s| s.conn.clone())
            .filter(|c| !c.is_closed())
    }

    /// The capabilities an agent with a session here announced.
    pub fn capabilities(&self, id: &MercuryId) -> Option<Vec<CapabilityInfo>> {
        self.lock().get(id).map(|s| s.record.capabilities.clone())
    }

    /// Sessions alive now.
    pub fn session_count(&self) -> usize {
        self.lock().len()
    }

    /// Ends the session carried by a connection that closed; the next sweep (woken now)
    /// writes it offline.
    pub fn end_session(&self, conn: &ConnectionId, id: &MercuryId) {
        let ended = {
            let mut sessions = self.lock();
            match sessions.get(id) {
                Some(s) if s.conn.id() == *conn => sessions.remove(id),
                _ => None,
            }
        };
        if let Some(session) = ended {
            info!(mercury_id = %id, "agent disconnected");
            let mut record = session.record;
            record.online = false;
            self.ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((id.clone(), record));
            self.wake.notify_one();
        }
    }

    /// Resolves when something asks for a sweep before the next tick.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Ends sessions silent for longer than the timeout, and writes every changed record
    /// (`last_seen`, sessions gone silent or disconnected) in one transaction.
    pub async fn sweep(&self) -> Result<SweepReport, RegistryError> {
        let now = OffsetDateTime::now_utc();
        let mut report = SweepReport::default();
        let mut records: Vec<(MercuryId, AgentRecord)> = std::mem::take(
            &mut *self
                .ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        report.disconnected = records.len();
        {
            let mut sessions = self.lock();
            let silent: Vec<MercuryId> = sessions
                .iter()
                .filter(|(_, s)| now - s.record.last_seen > self.config.timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in silent {
                if let Some(s) = sessions.remove(&id) {
                    warn!(mercury_id = %id, last_seen = %s.record.last_seen, "agent offline: heartbeats stopped");
                    s.conn.close();
                    let mut record = s.record;
                    record.online = false;
                    records.push((id, record));
                    report.went_silent += 1;
                }
            }
            // `last_seen` is worth a write only when it moved by a good part of the timeout
            // and by a minute (four timeouts for very short ones): liveness lives in memory
            // and `agent.online`, and rewriting 10,000 agent records at every heartbeat cost
            // the controller a tenth of a core for nothing an operator reads.
            let every =
                (self.config.timeout / 3).max(LAST_SEEN_RESOLUTION.min(self.config.timeout * 4));
            for (id, s) in sessions.iter_mut().filter(|(_, s)| s.dirty) {
                if s.record.last_seen - s.written_last_seen < every {
                    continue;
                }
                s.dirty = false;
                s.written_last_seen = s.record.last_seen;
                records.push((id.clone(), s.record.clone()));
            }
        }
        let mut writes = Vec::with_capacity(records.len());
        for (id, record) in &records {
            writes.push(Write::Agent {
                id: id.to_string(),
                agent: encode_record(id.as_str(), record)?,
                only_if_session: Some(record.session),
            });
        }
        report.written = writes.len();
        let mut failed = None;
        // A fleet disconnecting at once must not become one huge transaction held in memory.
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let chunk: Vec<Write> = writes.by_ref().take(SWEEP_CHUNK).collect();
            if let Err(error) = self.store.write_batch(chunk).await {
                failed = Some(error);
                break;
            }
        }
        if let Some(error) = failed {
            // Put the records back so the next sweep retries them (rewriting a record a
            // committed chunk already holds is harmless).
            let mut sessions = self.lock();
            let mut ended = self
                .ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, record) in records {
                match sessions.get_mut(&id) {
                    Some(s) if s.record.session == record.session => s.dirty = true,
                    Some(_) => {}
                    None => ended.push((id, record)),
                }
            }
            return Err(error.into());
        }
        Ok(report)
    }

    /// Every agent the store knows, ordered by MercuryId (the store is the one truth).
    pub async fn list(&self) -> Result<Vec<AgentSummary>, RegistryError> {
        let query = Query::from_request(&serde_json::json!({
            "filter": {"agent": {"$exists": true}},
            "projection": {"agent": 1},
            "sort": {"mercury_id": 1},
        }))
        .map_err(RegistryError::Query)?;
        let mut out = Vec::new();
        for doc in self.store.find(&query).await? {
            let id = doc
                .get("mercury_id")
                .and_then(|v| v.as_str())
                .map(str::parse::<MercuryId>);
            let record = doc
                .get("agent")
                .cloned()
                .map(serde_json::from_value::<AgentRecord>);
            match (id, record) {
                (Some(Ok(mercury_id)), Some(Ok(record))) => {
                    out.push(AgentSummary { mercury_id, record })
                }
                (Some(Ok(id)), _) => warn!(mercury_id = %id, "stored agent fields are unreadable"),
                _ => warn!("stored document has no valid mercury_id"),
            }
        }
        Ok(out)
    }
}

/// The agent fields as a document.
pub fn encode_record(id: &str, record: &AgentRecord) -> Result<serde_json::Value, RegistryError> {
    serde_json::to_value(record).map_err(|source| RegistryError::Encode {
        id: id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::sync::mpsc;

    const A: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    fn conn(n: u64) -> Arc<Connection> {
        let (tx, _rx) = mpsc::channel(8);
        Arc::new(Connection::new(
            ConnectionId(n),
            "127.0.0.1:1".parse().unwrap(),
            A.parse().unwrap(),
            tx,
        ))
    }

    fn record(session: u64) -> AgentRecord {
        let now = OffsetDateTime::now_utc();
        AgentRecord {
            online: true,
            last_seen: now,
            registered: now,
            version: "0.1.0".into(),
            boot_id: "b".into(),
            address: None,
            capabilities: Vec::new(),
            image_id: None,
            session,
            controller: "test".into(),
        }
    }

    async fn registry(timeout: Duration) -> (Registry, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let reg = Registry::new(
            store.clone(),
            RegistryConfig {
                timeout,
                controller: "test".into(),
            },
        );
        (reg, store, dir)
    }

    async fn store_record(store: &Store, r: &AgentRecord) {
        store
            .write_batch(vec![Write::Agent {
                id: A.into(),
                agent: encode_record(A, r).unwrap(),
                only_if_session: None,
            }])
            .await
            .unwrap();
    }

    async fn stored(store: &Store) -> serde_json::Value {
        store.get_inventory(A).await.unwrap().unwrap()["agent"].clone()
    }

    #[tokio::test]
    async fn a_duplicate_register_replaces_the_session_and_closes_the_old_connection() {
        let (reg, _store, _dir) = registry(Duration::from_secs(15)).await;
        let (c1, c2) = (conn(1), conn(2));
        reg.start_session(&c1, record(1), 1);
        reg.start_session(&c2, record(2), 5);
        assert!(c1.is_closed());
        assert!(!reg.seen(&c1), "the old connection carries no session");
        assert!(reg.seen(&c2));
        assert_eq!(reg.inventory_version(&c2), Some(5));
        assert_eq!(reg.inventory_version(&c1), None);
        // The old connection's end does not end the new session.
        reg.end_session(&c1.id(), c1.identity());
        assert_eq!(reg.session_count(), 1);
    }

    #[tokio::test]
    async fn a_sweep_run_directly_writes_liveness_in_one_batch_and_ends_silent_sessions() {
        let (reg, store, _dir) = registry(Duration::from_millis(50)).await;
        let c = conn(1);
        let r = record(1);
        store_record(&store, &r).await;
        reg.start_session(&c, r, 1);
        assert!(reg.seen(&c));
        // Right after registering, last_seen is not worth a write.
        assert_eq!(reg.sweep().await.unwrap().written, 0);
        {
            let mut sessions = reg.lock();
            let s = sessions.get_mut(c.identity()).unwrap();
            s.written_last_seen -= time::Duration::milliseconds(200);
        }
        assert!(reg.seen(&c));
        let report = reg.sweep().await.unwrap();
        assert_eq!(report.written, 1);
        assert_eq!(stored(&store).await["online"], true);
        // Silence past the timeout: the next sweep ends the session and closes the connection.
        {
            let mut sessions = reg.lock();
            let s = sessions.get_mut(c.identity()).unwrap();
            s.record.last_seen -= time::Duration::seconds(1);
        }
        let report = reg.sweep().await.unwrap();
        assert_eq!(report.went_silent, 1);
        assert!(c.is_closed());
        assert_eq!(stored(&store).await["online"], false);
        assert!(!reg.seen(&c));
    }

    #[tokio::test]
    async fn a_fleet_disconnecting_at_once_is_written_offline_in_chunks() {
        let (reg, store, _dir) = registry(Duration::from_secs(15)).await;
        let n = SWEEP_CHUNK * 2 + 500;
        let mut conns = Vec::new();
        for i in 0..n {
            let (tx, _rx) = mpsc::channel(1);
            let id = format!("00{:040x}", i + 1);
            let c = Arc::new(Connection::new(
                ConnectionId(i as u64),
                "127.0.0.1:1".parse().unwrap(),
                id.parse().unwrap(),
                tx,
            ));
            let r = record(i as u64);
            store
                .write_batch(vec![Write::Agent {
                    id: id.clone(),
                    agent: encode_record(&id, &r).unwrap(),
                    only_if_session: None,
                }])
                .await
                .unwrap();
            reg.start_session(&c, r, 1);
            conns.push(c);
        }
        for c in &conns {
            reg.end_session(&c.id(), c.identity());
        }
        let report = reg.sweep().await.unwrap();
        assert_eq!((report.disconnected, report.written), (n, n));
        let offline =
            Query::from_request(&serde_json::json!({"filter": {"agent.online": false}})).unwrap();
        assert_eq!(store.find(&offline).await.unwrap().len(), n);
    }

    #[tokio::test]
    async fn an_ended_session_never_overwrites_the_one_that_replaced_it() {
        let (reg, store, _dir) = registry(Duration::from_secs(15)).await;
        let (c1, c2) = (conn(1), conn(2));
        store_record(&store, &record(1)).await;
        reg.start_session(&c1, record(1), 1);
        reg.end_session(&c1.id(), c1.identity());
        // The agent registers again before the sweep writes the old session offline.
        store_record(&store, &record(2)).await;
        reg.start_session(&c2, record(2), 1);
        reg.sweep().await.unwrap();
        let agent = stored(&store).await;
        assert_eq!(
            (agent["online"].clone(), agent["session"].clone()),
            (true.into(), 2.into())
        );
    }

    #[tokio::test]
    async fn stale_online_records_of_this_controller_are_marked_offline_at_start() {
        let (reg, store, _dir) = registry(Duration::from_secs(15)).await;
        store_record(&store, &record(9)).await;
        assert_eq!(reg.mark_stale_offline().await.unwrap(), 1);
        assert_eq!(stored(&store).await["online"], false);
        let listed = reg.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].record.online);
    }
}
