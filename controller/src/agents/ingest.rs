//! The only writer of inventories: registrations, full updates and deltas.
//!
//! Connections submit a [`Change`] and await its outcome; one worker takes whatever is
//! queued (up to a batch), computes each new document from the previous one, and commits the
//! whole batch in one store transaction, so a boot storm costs one fsync per batch, not one
//! per agent. The queue is bounded: when the store falls behind, submitters wait (each on its
//! own connection), which slows those agents down instead of growing memory.
//!
//! [`prepare`] is the one place where a new document is made from the previous one; it
//! returns both, which is where derived writes (history, hardware-change events) hook in.

use std::collections::HashMap;
use std::sync::Arc;

use qs_proto::MercuryId;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::counters::Counters;
use crate::store::{Store, StoreError, Write};

/// Limits on what a peer may make the controller store.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
    /// Most values (objects, arrays, scalars) in one document.
    pub max_nodes: usize,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        // Real inventories nest under ten levels and hold a few thousand values.
        Self {
            max_depth: 32,
            max_nodes: 200_000,
        }
    }
}

/// Settings of the ingest worker.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Changes queued before submitters wait.
    pub queue: usize,
    /// Most changes committed in one transaction.
    pub max_batch: usize,
    /// Limits every stored document must meet.
    pub limits: DocumentLimits,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue: 4096,
            max_batch: 512,
            limits: DocumentLimits::default(),
        }
    }
}

/// What an agent sent that changes its inventory.
#[derive(Debug)]
pub enum Change {
    /// A registration: the whole inventory and the agent fields of the new session.
    Register {
        /// The inventory.
        inventory: Value,
        /// The `agent` subdocument.
        agent: Value,
        /// When the agent collected it (RFC 3339, agent clock), if it said.
        collected_at: Option<String>,
    },
    /// A whole inventory replacing the stored one.
    Replace {
        /// The inventory.
        inventory: Value,
        /// When the agent collected it, if it said.
        collected_at: Option<String>,
    },
    /// An RFC 6902 patch against the stored inventory.
    Patch {
        /// The patch.
        patch: json_patch::Patch,
        /// When the agent collected the inventory the patch makes, if it said.
        collected_at: Option<String>,
    },
}

impl Change {
    /// When the agent collected the inventory this change makes, if it said.
    fn collected_at(&self) -> Option<String> {
        match self {
            Change::Register { collected_at, .. }
            | Change::Replace { collected_at, .. }
            | Change::Patch { collected_at, .. } => collected_at.clone(),
        }
    }
}

/// The stored inventory before and after a change (without the `agent` subdocument).
#[derive(Debug, Clone)]
pub struct Ingested {
    /// What was stored before, if anything.
    pub previous: Option<Arc<Map<String, Value>>>,
    /// What is stored now.
    pub current: Arc<Map<String, Value>>,
}

/// Why a change was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The inventory is not a JSON object.
    #[error("inventory is not a document")]
    NotADocument,
    /// The patch does not apply to the stored inventory.
    #[error("delta does not apply")]
    PatchFailed(#[source] json_patch::PatchError),
    /// The document is nested deeper than allowed.
    #[error("inventory nests deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The document holds more values than allowed.
    #[error("inventory holds more than {limit} values")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The store failed; nothing of the batch was written.
    #[error("inventory could not be stored")]
    Store(#[source] Arc<StoreError>),
    /// The controller is shutting down.
    #[error("controller is shutting down")]
    ShuttingDown,
}

impl IngestError {
    /// Whether the sender is at fault (as opposed to the controller).
    pub fn is_callers(&self) -> bool {
        !matches!(self, IngestError::Store(_) | IngestError::ShuttingDown)
    }
}

struct Request {
    id: MercuryId,
    change: Change,
    reply: oneshot::Sender<Result<Ingested, IngestError>>,
}

/// Handle to the ingest worker.
pub struct Ingest {
    tx: mpsc::Sender<Request>,
}

impl Ingest {
    /// Starts the worker; it stops when `shutdown` is cancelled and the queue is drained.
    pub fn start(
        store: Store,
        config: IngestConfig,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue);
        let worker = tokio::spawn(run(store, config, counters, rx, shutdown));
        (Arc::new(Self { tx }), worker)
    }

    /// Submits a change and waits until it is committed (or refused).
    pub async fn submit(&self, id: &MercuryId, change: Change) -> Result<Ingested, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                id: id.clone(),
                change,
                reply,
            })
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        rx.await.map_err(|_| IngestError::ShuttingDown)?
    }
}

async fn run(
    store: Store,
    config: IngestConfig,
    counters: Arc<Counters>,
    mut rx: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, config.max_batch) => n,
            () = shutdown.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, config.max_batch).await
            }
        };
        if n == 0 {
            return;
        }
        commit(&store, &config, &counters, std::mem::take(&mut batch)).await;
    }
}

/// Computes every change of the batch and commits them in one transaction.
async fn commit(store: &Store, config: &IngestConfig, counters: &Counters, batch: Vec<Request>) {
    // Documents as this batch leaves them, so two changes to one host in a batch chain.
    let mut overlay: HashMap<MercuryId, Arc<Map<String, Value>>> = HashMap::new();
    let mut writes = Vec::with_capacity(batch.len() * 2);
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        let previous = match overlay.get(&request.id) {
            Some(doc) => Some(doc.clone()),
            None => match store.get_inventory(request.id.as_str()).await {
                Ok(doc) => doc.and_then(stored_inventory).map(Arc::new),
                Err(error) => {
                    let _ = request.reply.send(Err(IngestError::Store(Arc::new(error))));
                    continue;
                }
            },
        };
        let collected_at = request.change.collected_at();
        let (change, agent) = match request.change {
            Change::Register {
                inventory,
                agent,
                collected_at,
            } => (
                Change::Replace {
                    inventory,
                    collected_at,
                },
                Some(agent),
            ),
            other => (other, None),
        };
        match prepare(&request.id, previous.as_deref(), change, &config.limits) {
            Ok(mut current) => {
                // `schema` and `received_at` are stamped where the new document is made, with
                // the agent's `collected_at` (an earlier collection's time never stays on).
                crate::store::document::stamp(&mut current);
                match collected_at {
                    Some(at) => current.insert("collected_at".into(), Value::String(at)),
                    None => current.remove("collected_at"),
                };
                let current = Arc::new(current);
                overlay.insert(request.id.clone(), current.clone());
                writes.push(Write::Inventory {
                    id: request.id.to_string(),
                    doc: (*current).clone(),
                });
                if let Some(agent) = agent {
                    writes.push(Write::Agent {
                        id: request.id.to_string(),
                        agent,
                        only_if_session: None,
                    });
                }
                outcomes.push((request.reply, Ingested { previous, current }));
            }
            Err(error) => {
                debug!(mercury_id = %request.id, error = %error, "inventory change refused");
                let _ = request.reply.send(Err(error));
            }
        }
    }
    if writes.is_empty() {
        return;
    }
    Counters::bump(&counters.ingest_batches);
    match store.write_batch(writes).await {
        Ok(()) => {
            for (reply, ingested) in outcomes {
                let _ = reply.send(Ok(ingested));
            }
        }
        Err(error) => {
            warn!(error = %qs_proto::ErrorReport::from_error(&error), changes = outcomes.len(), "inventory batch could not be stored");
            let error = Arc::new(error);
            for (reply, _) in outcomes {
                let _ = reply.send(Err(IngestError::Store(error.clone())));
            }
        }
    }
}

/// The inventory part of a stored document (the controller-owned `agent` removed).
fn stored_inventory(doc: Value) -> Option<Map<String, Value>> {
    match doc {
        Value::Object(mut map) => {
            map.remove("agent");
            Some(map)
        }
        _ => None,
    }
}

/// The new inventory of `id` after `change`: `mercury_id` forced to the agent's id, the
/// controller-owned `agent` field never taken from the agent, and the limits checked.
pub fn prepare(
    id: &MercuryId,
    previous: Option<&Map<String, Value>>,
    change: Change,
    limits: &DocumentLimits,
) -> Result<Map<String, Value>, IngestError> {
    let mut doc = match change {
        Change::Register { inventory, .. } | Change::Replace { inventory, .. } => match inventory {
            Value::Object(map) => map,
            _ => return Err(IngestError::NotADocument),
        },
        Change::Patch { patch, .. } => {
            let mut doc = Value::Object(previous.cloned().unwrap_or_default());
            // json_patch::patch is all-or-nothing: a failed operation leaves it unchanged.
            json_patch::patch(&mut doc, &patch).map_err(IngestError::PatchFailed)?;
            match doc {
                Value::Object(map) => map,
                _ => return Err(IngestError::NotADocument),
            }
        }
    };
    doc.remove("agent");
    doc.insert("mercury_id".into(), Value::String(id.to_string()));
    check_limits(&doc, limits)?;
    Ok(doc)
}

/// Checks depth and size without recursion, so a hostile document cannot exhaust the stack.
fn check_limits(doc: &Map<String, Value>, limits: &DocumentLimits) -> Result<(), IngestError> {
    let mut stack: Vec<(&Value, usize)> = doc.values().map(|v| (v, 1)).collect();
    let mut nodes = 1usize;
    while let Some((value, depth)) = stack.pop() {
        nodes += 1;
        if nodes > limits.max_nodes {
            return Err(IngestError::TooLarge {
                limit: limits.max_nodes,
            });
        }
        if depth > limits.max_depth {
            return Err(IngestError::TooDeep {
                limit: limits.max_depth,
            });
        }
        match value {
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const A: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    fn id() -> MercuryId {
        A.parse().unwrap()
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn mercury_id_is_forced_and_agent_fields_are_never_the_agents() {
        let doc = prepare(
            &id(),
            None,
            Change::Replace {
                inventory: json!({"mercury_id": "forged", "agent": {"online": true}, "mem": {"total": 1}}),
                collected_at: None,
            },
            &DocumentLimits::default(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(doc),
            json!({"mercury_id": A, "mem": {"total": 1}})
        );
    }

    #[test]
    fn a_patch_applies_to_the_previous_document_all_or_nothing() {
        let previous = map(json!({"mercury_id": A, "disks": ["sda", "sdb"]}));
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "remove", "path": "/disks/1"}])).unwrap();
        let doc = prepare(
            &id(),
            Some(&previous),
            Change::Patch {
                patch,
                collected_at: None,
            },
            &DocumentLimits::default(),
        )
        .unwrap();
        assert_eq!(doc["disks"], json!(["sda"]));
        let bad: json_patch::Patch = serde_json::from_value(json!([
            {"op": "remove", "path": "/disks/0"},
            {"op": "remove", "path": "/nothing/here"}
        ]))
        .unwrap();
        assert!(matches!(
            prepare(
                &id(),
                Some(&previous),
                Change::Patch {
                    patch: bad,
                    collected_at: None,
                },
                &DocumentLimits::default()
            ),
            Err(IngestError::PatchFailed(_))
        ));
    }

    #[test]
    fn non_documents_and_oversize_or_deep_documents_are_the_callers_mistake() {
        let limits = DocumentLimits {
            max_depth: 4,
            max_nodes: 100,
        };
        let refused = |inventory: Value| {
            let change = Change::Replace {
                inventory,
                collected_at: None,
            };
            prepare(&id(), None, change, &limits).unwrap_err()
        };
        assert!(matches!(refused(json!([1, 2])), IngestError::NotADocument));
        let mut deep = json!(1);
        for _ in 0..10 {
            deep = json!({ "x": deep });
        }
        let e = refused(json!({ "a": deep }));
        assert!(matches!(e, IngestError::TooDeep { .. }) && e.is_callers());
        let e = refused(json!({"zeros": vec![0; 500]}));
        assert!(matches!(e, IngestError::TooLarge { .. }) && e.is_callers());
    }

    #[tokio::test]
    async fn a_batch_commits_many_hosts_and_chains_changes_to_one_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let (ingest, worker) = Ingest::start(
            store.clone(),
            IngestConfig::default(),
            counters.clone(),
            shutdown.clone(),
        );
        let first = ingest
            .submit(
                &id(),
                Change::Replace {
                    inventory: json!({"n": 1}),
                    collected_at: Some("2026-12-01T10:00:00Z".into()),
                },
            )
            .await
            .unwrap();
        assert!(first.previous.is_none());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50u64 {
            let ingest = ingest.clone();
            tasks.spawn(async move {
                let host: MercuryId = format!("00{:040x}", i + 1).parse().unwrap();
                ingest
                    .submit(
                        &host,
                        Change::Register {
                            inventory: json!({"n": i}),
                            agent: json!({"online": true}),
                            collected_at: None,
                        },
                    )
                    .await
                    .unwrap()
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "replace", "path": "/n", "value": 2}])).unwrap();
        assert_eq!(first.current["collected_at"], "2026-12-01T10:00:00Z");
        let change = Change::Patch {
            patch,
            collected_at: Some("2026-12-01T10:05:00Z".into()),
        };
        let second = ingest.submit(&id(), change).await.unwrap();
        assert_eq!(second.previous.unwrap()["n"], 1);
        assert_eq!(second.current["n"], 2);
        // The stored document carries the agent's clock, and only the latest collection's.
        let stored = store.get_inventory(id().as_str()).await.unwrap().unwrap();
        assert_eq!(stored["collected_at"], "2026-12-01T10:05:00Z");
        assert!(stored["received_at"].is_string());
        let all = qs_query::Query::from_request(&json!({})).unwrap();
        assert_eq!(store.find(&all).await.unwrap().len(), 51);
        // On this single-threaded runtime all 50 are queued before the worker runs: one
        // transaction for them, between the first change and the patch.
        assert_eq!(counters.snapshot().ingest_batches, 3);
        shutdown.cancel();
        worker.await.unwrap();
    }
}
