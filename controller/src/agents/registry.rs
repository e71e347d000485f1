//! What the controller knows about each agent: session, liveness, version, address.
//!
//! Sessions live in memory: after a controller restart every agent must register again (its
//! first heartbeat is answered with `not_registered`), which also refreshes its inventory. The
//! `agent` subdocument of each inventory document is the persisted view operators query.
//! Heartbeats only touch memory; the sweep writes changed `last_seen` values in batches and
//! online/offline transitions at once, so thousands of agents do not mean thousands of writes a
//! second.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use qs_proto::{CapabilityInfo, MercuryId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::store::{Store, StoreError};
use qs_query::{Query, QueryError};

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
        id: MercuryId,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// The listing query was refused (a bug: it is a constant).
    #[error("agent listing query is invalid")]
    Query(#[source] QueryError),
}

/// The `agent` subdocument of an inventory document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Whether heartbeats are arriving.
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

/// What only lives as long as an agent's connection to this controller process.
#[derive(Debug, Clone, Copy)]
struct Session {
    /// The agent's version number of the inventory stored for it.
    inventory_version: u64,
}

#[derive(Debug)]
struct Entry {
    record: AgentRecord,
    /// The session with this controller process, if the agent registered.
    session: Option<Session>,
    /// `last_seen` changed since it was last written.
    dirty: bool,
}

/// All agents, in memory, backed by the store.
pub struct Registry {
    store: Store,
    timeout: Duration,
    agents: Mutex<BTreeMap<MercuryId, Entry>>,
}

impl Registry {
    /// Loads every agent the store knows, without sessions, so listings survive restarts.
    pub async fn load(store: Store, timeout: Duration) -> Result<Self, RegistryError> {
        let all = Query::from_request(&serde_json::json!({"projection": {"agent": 1}}))
            .map_err(RegistryError::Query)?;
        let mut agents = BTreeMap::new();
        for doc in store.find(&all).await? {
            let id = doc
                .get("mercury_id")
                .and_then(|v| v.as_str())
                .map(str::parse::<MercuryId>);
            let record = doc
                .get("agent")
                .cloned()
                .map(serde_json::from_value::<AgentRecord>);
            match (id, record) {
                (Some(Ok(id)), Some(Ok(record))) => {
                    agents.insert(
                        id,
                        Entry {
                            record,
                            session: None,
                            dirty: false,
                        },
                    );
                }
                (Some(Ok(id)), _) => {
                    warn!(mercury_id = %id, "stored document has no readable agent fields")
                }
                _ => warn!("stored document has no valid mercury_id"),
            }
        }
        info!(agents = agents.len(), "agent registry loaded");
        Ok(Self {
            store,
            timeout,
            agents: Mutex::new(agents),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<MercuryId, Entry>> {
        // Every update below leaves entries whole, so a poisoned lock still holds valid data.
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session and persists the agent fields at once.
    pub async fn register(
        &self,
        id: &MercuryId,
        record: AgentRecord,
        inventory_version: u64,
    ) -> Result<(), RegistryError> {
        let doc = encode(id, &record)?;
        self.lock().insert(
            id.clone(),
            Entry {
                record,
                session: Some(Session { inventory_version }),
                dirty: false,
            },
        );
        Ok(self.store.set_agent(id.as_str(), doc).await?)
    }

    /// Records a sign of life. Returns false when the agent has no session here (it must
    /// register). An agent coming back online is persisted at once.
    pub async fn seen(&self, id: &MercuryId) -> Result<bool, RegistryError> {
        let came_back = {
            let mut agents = self.lock();
            let Some(entry) = agents.get_mut(id).filter(|e| e.session.is_some()) else {
                return Ok(false);
            };
            entry.record.last_seen = OffsetDateTime::now_utc();
            entry.dirty = true;
            let came_back = !entry.record.online;
            entry.record.online = true;
            came_back.then(|| entry.record.clone())
        };
        if let Some(record) = came_back {
            info!(mercury_id = %id, "agent back online");
            self.persist(id, &record).await?;
        }
        Ok(true)
    }

    /// Whether the agent has a session with this controller.
    pub fn has_session(&self, id: &MercuryId) -> bool {
        self.lock().get(id).is_some_and(|e| e.session.is_some())
    }

    /// The version of the inventory the controller holds for a session, if any.
    pub fn inventory_version(&self, id: &MercuryId) -> Option<u64> {
        self.lock()
            .get(id)
            .and_then(|e| e.session.as_ref())
            .map(|s| s.inventory_version)
    }

    /// Records that the stored inventory is now the agent's version `version`.
    pub fn set_inventory_version(&self, id: &MercuryId, version: u64) {
        if let Some(session) = self.lock().get_mut(id).and_then(|e| e.session.as_mut()) {
            session.inventory_version = version;
        }
    }

    /// Marks silent agents offline and writes changed `last_seen` values.
    pub async fn sweep(&self) -> Result<(), RegistryError> {
        let now = OffsetDateTime::now_utc();
        let mut writes = Vec::new();
        let mut going_offline = HashSet::new();
        {
            let mut agents = self.lock();
            for (id, entry) in agents.iter_mut() {
                let silent = now - entry.record.last_seen > self.timeout;
                if entry.record.online && silent {
                    let mut record = entry.record.clone();
                    record.online = false;
                    going_offline.insert(id.clone());
                    entry.dirty = false;
                    writes.push((id.clone(), record));
                } else if entry.dirty {
                    entry.dirty = false;
                    writes.push((id.clone(), entry.record.clone()));
                }
            }
        }
        // The store first, then memory: a listing never shows what the documents do not.
        for (id, record) in &writes {
            if going_offline.contains(id) {
                warn!(mercury_id = %id, last_seen = %record.last_seen, "agent offline: heartbeats stopped");
            }
            self.persist(id, record).await?;
        }
        let mut agents = self.lock();
        for (id, record) in writes {
            let Some(entry) = agents.get_mut(&id) else {
                continue;
            };
            if !going_offline.contains(&id) {
                continue;
            }
            if entry.record.last_seen == record.last_seen {
                entry.record.online = false;
                entry.session = None;
            } else {
                // It spoke while we wrote "offline": the next sweep writes it back online.
                entry.dirty = true;
            }
        }
        Ok(())
    }

    async fn persist(&self, id: &MercuryId, record: &AgentRecord) -> Result<(), RegistryError> {
        let doc = encode(id, record)?;
        Ok(self.store.set_agent(id.as_str(), doc).await?)
    }

    /// Every known agent, ordered by MercuryId.
    pub fn list(&self) -> Vec<AgentSummary> {
        self.lock()
            .iter()
            .map(|(id, e)| AgentSummary {
                mercury_id: id.clone(),
                record: e.record.clone(),
            })
            .collect()
    }
}

fn encode(id: &MercuryId, record: &AgentRecord) -> Result<serde_json::Value, RegistryError> {
    serde_json::to_value(record).map_err(|source| RegistryError::Encode {
        id: id.clone(),
        source,
    })
}
