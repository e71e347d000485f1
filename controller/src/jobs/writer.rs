//! The one writer of job, task and log records: changes are coalesced per record (the latest
//! wins) and committed in batches, one store transaction for many tasks, so 10,000 tasks
//! changing state at once cost a few commits rather than 40,000. Whoever must know a change
//! is durable before acting (a destructive task is recorded as dispatched before it is sent)
//! waits for [`RecordWriter::durable`].

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::store::{Collection, Store, StoreError, Write};

/// Most records in one transaction.
const MAX_BATCH: usize = 4096;
/// How long the writer gathers changes before committing.
const GATHER: Duration = Duration::from_millis(20);

enum Command {
    Put(Collection, String, Option<Value>),
    Durable(oneshot::Sender<Result<(), String>>),
}

/// Hands record changes to the writer task.
#[derive(Clone)]
pub struct RecordWriter {
    tx: mpsc::UnboundedSender<Command>,
}

/// Why a change could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The writer stopped (the controller is shutting down).
    #[error("the record writer has stopped")]
    Stopped,
    /// The store refused the batch.
    #[error("records could not be stored: {0}")]
    Store(String),
}

impl RecordWriter {
    /// Starts the writer over `store`; it runs until every handle is dropped.
    pub fn start(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(run(store, rx));
        (Self { tx }, worker)
    }

    /// Replaces (or with `None` deletes) a record; committed with the next batch.
    pub fn put(&self, collection: Collection, key: &str, value: Option<Value>) {
        // A stopped writer means shutdown; the record is rewritten from memory at next start.
        let _ = self
            .tx
            .send(Command::Put(collection, key.to_owned(), value));
    }

    /// Waits until every change handed over before this call is committed.
    pub async fn durable(&self) -> Result<(), WriterError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Durable(tx))
            .map_err(|_| WriterError::Stopped)?;
        rx.await
            .map_err(|_| WriterError::Stopped)?
            .map_err(WriterError::Store)
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut pending: HashMap<(Collection, String), Option<Value>> = HashMap::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let take = |cmd: Command,
                    pending: &mut HashMap<(Collection, String), Option<Value>>,
                    waiters: &mut Vec<_>| match cmd {
            Command::Put(c, k, v) => {
                pending.insert((c, k), v);
            }
            Command::Durable(w) => waiters.push(w),
        };
        take(first, &mut pending, &mut waiters);
        let deadline = tokio::time::Instant::now() + GATHER;
        while pending.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => take(cmd, &mut pending, &mut waiters),
                Ok(None) | Err(_) => break,
            }
        }
        let result = commit(&store, &mut pending)
            .await
            .map_err(|e| e.to_string());
        for w in waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }
    if !pending.is_empty() {
        let _ = commit(&store, &mut pending).await;
    }
}

/// Commits what is pending; a transient failure is retried (the store recovers by itself),
/// so nothing handed over is lost while the process lives.
async fn commit(
    store: &Store,
    pending: &mut HashMap<(Collection, String), Option<Value>>,
) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    let writes: Vec<Write> = pending
        .drain()
        .map(|((collection, key), value)| Write::Record {
            collection,
            key,
            value,
        })
        .collect();
    let mut wait = Duration::from_millis(100);
    loop {
        match store.write_batch(writes.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                error!(error = %e, records = writes.len(), retry_in = ?wait, "job records not stored yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                error!(error = %e, records = writes.len(), "job records refused by the store");
                return Err(e);
            }
        }
        if wait >= Duration::from_secs(5) {
            info!("still retrying job records");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn coalesces_and_is_durable_when_it_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let (writer, _worker) = RecordWriter::start(store.clone());
        for i in 0..100 {
            writer.put(Collection::Jobs, "j", Some(serde_json::json!({"n": i})));
        }
        writer.put(Collection::Jobs, "gone", Some(serde_json::json!({})));
        writer.put(Collection::Jobs, "gone", None);
        writer.durable().await.unwrap();
        assert_eq!(
            store.get_record(Collection::Jobs, "j").await.unwrap(),
            Some(serde_json::json!({"n": 99}))
        );
        assert_eq!(
            store.get_record(Collection::Jobs, "gone").await.unwrap(),
            None
        );
    }
}
