//! Where inventory documents live: one document per server, keyed by MercuryId.
//!
//! One interface, [`Store`], over backends; the embedded one ([`embedded::EmbeddedStore`]) needs
//! no database server. The controller owns each document's top-level `agent` subdocument and
//! writes it separately ([`Store::set_agent`]) so liveness updates never rewrite an inventory.

pub mod embedded;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use qs_query::Query;

/// Why the store could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's files could not be opened or created.
    #[error("cannot open the embedded store at {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::DatabaseError,
    },
    /// Another controller has the store open.
    #[error("the embedded store at {path} is in use by another controller")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// A storage operation failed.
    #[error("storage {operation} failed")]
    Storage {
        /// What was being done.
        operation: &'static str,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// A stored document could not be decoded or a document could not be encoded.
    #[error("document {id} is not valid JSON")]
    Corrupt {
        /// The document's MercuryId.
        id: String,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// A document to store is not a JSON object.
    #[error("document {id} is not a JSON object")]
    NotADocument {
        /// The document's MercuryId.
        id: String,
    },
    /// The blocking storage task did not finish.
    #[error("storage task failed")]
    Task(#[source] tokio::task::JoinError),
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
}

impl Write {
    /// The MercuryId the write is for.
    pub fn id(&self) -> &str {
        match self {
            Write::Inventory { id, .. } | Write::Agent { id, .. } => id,
        }
    }
}

/// The inventory store the controller uses.
#[derive(Clone)]
pub enum Store {
    /// The embedded, zero-setup store in a data dir.
    Embedded(Arc<embedded::EmbeddedStore>),
}

impl Store {
    /// Opens (creating if needed) the embedded store in `data_dir`.
    pub fn open_embedded(data_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::Embedded(Arc::new(embedded::EmbeddedStore::open(
            data_dir,
        )?)))
    }

    /// Replaces a server's inventory (everything but the `agent` subdocument).
    pub async fn put_inventory(&self, id: &str, doc: Value) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.put_inventory(&id, doc)).await
            }
        }
    }

    /// Replaces a server's `agent` subdocument; creates the document if it does not exist.
    pub async fn set_agent(&self, id: &str, agent: Value) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.set_agent(&id, agent)).await
            }
        }
    }

    /// Replaces a server's controller-owned `boot` subdocument (`{"mode", "set_at"}`: what it
    /// boots when it PXE-boots); creates the document if it does not exist.
    pub async fn set_boot(&self, id: &str, boot: Value) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => {
                let (s, id) = (s.clone(), id.to_owned());
                blocking(move || s.set_boot(&id, boot)).await
            }
        }
    }

    /// One server's document, with its `agent` subdocument.
    pub async fn get_inventory(&self, id: &str) -> Result<Option<Value>, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.get(id)),
        }
    }

    /// Applies many writes (several servers' inventories and agent fields) in one
    /// transaction: all of them or none.
    pub async fn write_batch(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => {
                let s = s.clone();
                blocking(move || s.write_batch(writes)).await
            }
        }
    }

    /// A number no earlier start of this controller's store returned.
    pub async fn next_epoch(&self) -> Result<u32, StoreError> {
        match self {
            Store::Embedded(s) => {
                let s = s.clone();
                blocking(move || s.next_epoch()).await
            }
        }
    }

    /// The documents a query selects, sorted, paged and projected.
    pub async fn find(&self, query: &Query) -> Result<Vec<Value>, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.find(query)),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StoreError::Task)?
}
