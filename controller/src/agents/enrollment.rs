//! Enrollment: which agents the controller admits (`qs serve --enroll open|approve|allowlist`).
//!
//! An agent proves a key in its Noise handshake and claims a MercuryId in its register. The
//! controller admits it when:
//! - its handshake carried a valid one-time boot token (any policy): `/boot/ipxe` puts a fresh
//!   one, bound to the MAC or UUID that asked, on the kernel command line (`qs.token=`), and
//!   `qs tokens boot create --mac M|--uuid U` makes one for hosts not booted by us. The first
//!   registration whose inventory carries that MAC or UUID consumes it and binds the agent's
//!   key to its MercuryId;
//! - the MercuryId is already admitted with this very key (a reconnect of the same process);
//! - the policy says so: `open` admits everyone; `allowlist` admits MercuryIds listed in
//!   advance (`qs agents allow ID…`); `approve` (the default) admits listed ones too, and
//!   records any other agent as pending (it is answered `enrollment_pending` and registers
//!   again later) until `qs agents approve ID` admits the key it presented.
//!
//! Anything else is refused: the agent gets nothing (the connection is closed), and the
//! refusal is counted and logged with its address.
//!
//! State lives in the store ([`Collection::Enrollment`] per MercuryId, [`Collection::BootTokens`]
//! per token), so controllers sharing a MongoDB share it. Boot tokens are kept as SHA-256 hashes
//! only. Records are read-modify-written without a compare-and-swap: two controllers approving
//! or consuming the same record in the same instant could both succeed (documented limit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use qs_boot::{HostKey, Identifiers};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::security::tokens::{hash, random_bytes, same};
use crate::store::{Collection, Store, StoreError, Write};

/// How long a token minted for a `/boot/ipxe` answer is valid: the boot must reach the agent.
pub const BOOT_SCRIPT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long a token for `qs serve --local-agent` is valid.
pub const LOCAL_AGENT_TOKEN_TTL: Duration = Duration::from_secs(600);
/// A pending agent's record is rewritten at most this often (it retries with backoff).
const PENDING_REFRESH: Duration = Duration::from_secs(5);
/// An identity conflict is written at most this often per MercuryId (a flood stays in memory).
const CONFLICT_REFRESH: Duration = Duration::from_secs(1);
/// Expired boot tokens are looked for at most this often.
const BOOT_TOKEN_PURGE: Duration = Duration::from_secs(600);

/// Which agents `qs serve` admits without a boot token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Every agent that completes the handshake (labs).
    Open,
    /// Agents an operator approved (`qs agents approve ID`) or listed in advance.
    #[default]
    Approve,
    /// Only MercuryIds listed in advance (`qs agents allow ID…`).
    Allowlist,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Open => "open",
            Policy::Approve => "approve",
            Policy::Allowlist => "allowlist",
        })
    }
}

/// What enrollment decided about one registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `via` says why (`boot_token`, `key`, `open`, `allowlist`).
    Admit {
        /// Why.
        via: &'static str,
    },
    /// Recorded as pending an operator's approval.
    Pending,
    /// Refused; the reason is for the log only.
    Refuse(&'static str),
}

/// Why an enrollment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No pending agent with that MercuryId.
    #[error("no agent {0} is pending")]
    NotPending(String),
    /// A boot token needs a MAC or a UUID to be bound to.
    #[error("a boot token is bound to a MAC (--mac) or an SMBIOS UUID (--uuid): {0}")]
    BadBinding(String),
    /// No random source.
    #[error("no random source: {0}")]
    Random(String),
}

/// What enrollment counted since start.
#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    pending: AtomicU64,
    refused: AtomicU64,
    boot_tokens_consumed: AtomicU64,
    boot_tokens_refused: AtomicU64,
    identity_conflicts: AtomicU64,
}

/// The enrollment policy and state.
pub struct Enrollment {
    policy: Policy,
    store: Store,
    counters: Counters,
    /// When each pending or conflicting MercuryId was last written, to bound writes.
    throttle: Mutex<HashMap<(String, &'static str), Instant>>,
    /// Serialises this process's read-modify-writes of enrollment records.
    writing: tokio::sync::Mutex<()>,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn random(bytes: usize) -> Result<Vec<u8>, EnrollmentError> {
    random_bytes(bytes).map_err(EnrollmentError::Random)
}

/// The MACs an inventory document reports (addresses and permanent addresses), lowercase.
fn inventory_macs(inventory: &Value) -> Vec<String> {
    let Some(interfaces) = inventory.get("interfaces").and_then(Value::as_array) else {
        return Vec::new();
    };
    interfaces
        .iter()
        .flat_map(|i| ["address", "permanent_address"].map(|k| i.get(k)))
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Whether a token's binding names the machine whose inventory this is.
fn binding_matches(binding: &Value, inventory: &Value) -> bool {
    if binding.get("local").and_then(Value::as_bool) == Some(true) {
        return true;
    }
    let ids = Identifiers::from_raw(
        binding.get("mac").and_then(Value::as_str),
        binding.get("uuid").and_then(Value::as_str),
        None,
    );
    let macs = inventory_macs(inventory);
    let uuid = inventory
        .pointer("/dmi/product_uuid")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    ids.keys().iter().any(|key| match key {
        HostKey::Mac(mac) => macs.iter().any(|m| m == mac),
        HostKey::Uuid(spellings) => uuid
            .as_ref()
            .is_some_and(|u| spellings.iter().any(|s| s.eq_ignore_ascii_case(u))),
        HostKey::Serial(_) => false,
    })
}

/// A record without its secret hash, for listings.
fn public(mut record: Value) -> Value {
    if let Some(map) = record.as_object_mut() {
        map.remove("hash");
    }
    record
}

impl Enrollment {
    /// Enrollment under `policy`, with its state in `store`.
    pub fn new(policy: Policy, store: Store) -> Self {
        Self {
            policy,
            store,
            counters: Counters::default(),
            throttle: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The policy `qs serve` was started with.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether `what` for `id` was written less than `every` ago (and if not, notes it now).
    fn throttled(&self, id: &str, what: &'static str, every: Duration) -> bool {
        let mut seen = self
            .throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (id.to_owned(), what);
        if seen.get(&key).is_some_and(|at| at.elapsed() < every) {
            return true;
        }
        if seen.len() > 100_000 {
            seen.retain(|_, at| at.elapsed() < every);
        }
        seen.insert(key, Instant::now());
        false
    }

    async fn record(&self, id: &str) -> Result<Map<String, Value>, StoreError> {
        Ok(
            match self.store.get_record(Collection::Enrollment, id).await? {
                Some(Value::Object(map)) => map,
                _ => {
                    let mut map = Map::new();
                    map.insert("mercury_id".into(), id.into());
                    map
                }
            },
        )
    }

    /// Decides on a registration of `id` by an agent holding `key` (base64; empty for test
    /// connections without a handshake) from `peer`, whose handshake carried `token`, with
    /// `inventory` (a boot token must name one of its MACs or its UUID).
    pub async fn admit(
        &self,
        id: &str,
        key: &str,
        token: Option<&str>,
        peer: SocketAddr,
        inventory: &Value,
    ) -> Result<Admission, StoreError> {
        let decision = self.decide(id, key, token, peer, inventory).await?;
        let counter = match decision {
            Admission::Admit { .. } => &self.counters.admitted,
            Admission::Pending => &self.counters.pending,
            Admission::Refuse(_) => &self.counters.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(decision)
    }

    async fn decide(
        &self,
        id: &str,
        key: &str,
        token: Option<&str>,
        peer: SocketAddr,
        inventory: &Value,
    ) -> Result<Admission, StoreError> {
        // Open admits without a look at the store: a boot storm costs no extra reads.
        if self.policy == Policy::Open && token.is_none() {
            return Ok(Admission::Admit { via: "open" });
        }
        let record = self.record(id).await?;
        let admitted_key = record.get("admitted").and_then(|a| a.get("key"));
        if !key.is_empty() && admitted_key.and_then(Value::as_str) == Some(key) {
            return Ok(Admission::Admit { via: "key" });
        }
        if let Some(token) = token {
            if self.consume(token, id, key, peer, inventory).await? {
                return Ok(Admission::Admit { via: "boot_token" });
            }
        }
        let allowed = record.contains_key("allowed");
        match self.policy {
            Policy::Open => Ok(Admission::Admit { via: "open" }),
            Policy::Allowlist | Policy::Approve if allowed => {
                // Listed after it had asked: it is no longer waiting.
                if record.contains_key("pending") {
                    self.clear_pending(id).await?;
                }
                Ok(Admission::Admit { via: "allowlist" })
            }
            Policy::Allowlist => Ok(Admission::Refuse("not on the allowlist")),
            Policy::Approve => {
                if !self.throttled(id, "pending", PENDING_REFRESH) {
                    self.note_pending(id, key, peer).await?;
                }
                Ok(Admission::Pending)
            }
        }
    }

    async fn clear_pending(&self, id: &str) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let mut record = self.record(id).await?;
        if record.remove("pending").is_none() {
            return Ok(());
        }
        self.store
            .write_batch(vec![Write::Record {
                collection: Collection::Enrollment,
                key: id.to_owned(),
                value: Some(Value::Object(record)),
            }])
            .await
    }

    async fn note_pending(&self, id: &str, key: &str, peer: SocketAddr) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let mut record = self.record(id).await?;
        let at = rfc3339(now());
        let same_key = record
            .get("pending")
            .and_then(|p| p.get("key"))
            .and_then(Value::as_str)
            == Some(key);
        let (first_seen, attempts) = match record.get("pending") {
            Some(p) if same_key => (
                p.get("first_seen")
                    .cloned()
                    .unwrap_or_else(|| at.clone().into()),
                p.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            ),
            _ => (at.clone().into(), 0),
        };
        record.insert(
            "pending".into(),
            json!({"key": key, "address": peer.to_string(), "first_seen": first_seen,
                   "last_seen": at, "attempts": attempts + 1}),
        );
        self.store
            .write_batch(vec![Write::Record {
                collection: Collection::Enrollment,
                key: id.to_owned(),
                value: Some(Value::Object(record)),
            }])
            .await
    }

    /// Consumes `token` for `id` when it is valid for this machine; false (counted, logged)
    /// otherwise.
    async fn consume(
        &self,
        token: &str,
        id: &str,
        key: &str,
        peer: SocketAddr,
        inventory: &Value,
    ) -> Result<bool, StoreError> {
        let refuse = |why: &str| {
            self.counters
                .boot_tokens_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(mercury_id = %id, %peer, reason = why, "boot token refused");
            Ok(false)
        };
        let Some(token_id) = token
            .strip_prefix("qsb_")
            .and_then(|t| t.split('_').next())
            .filter(|t| !t.is_empty() && t.len() <= 32)
        else {
            return refuse("not a boot token");
        };
        let _writing = self.writing.lock().await;
        let Some(mut stored) = self
            .store
            .get_record(Collection::BootTokens, token_id)
            .await?
        else {
            return refuse("unknown");
        };
        let hash_ok = stored
            .get("hash")
            .and_then(Value::as_str)
            .is_some_and(|h| same(h, &hash(token)));
        if !hash_ok {
            return refuse("wrong secret");
        }
        if stored.get("consumed").is_some() {
            return refuse("already used");
        }
        let expired = stored
            .get("expires")
            .and_then(Value::as_str)
            .and_then(|e| {
                OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_none_or(|e| e <= now());
        if expired {
            return refuse("expired");
        }
        if !binding_matches(stored.get("binding").unwrap_or(&Value::Null), inventory) {
            return refuse("bound to another MAC or UUID");
        }
        let at = rfc3339(now());
        stored["consumed"] =
            json!({"mercury_id": id, "key": key, "address": peer.to_string(), "at": at});
        let mut record = self.record(id).await?;
        record.remove("pending");
        record.insert(
            "admitted".into(),
            json!({"key": key, "via": "boot_token", "token": token_id, "address": peer.to_string(), "at": at}),
        );
        self.store
            .write_batch(vec![
                Write::Record {
                    collection: Collection::BootTokens,
                    key: token_id.to_owned(),
                    value: Some(stored),
                },
                Write::Record {
                    collection: Collection::Enrollment,
                    key: id.to_owned(),
                    value: Some(Value::Object(record)),
                },
            ])
            .await?;
        self.counters
            .boot_tokens_consumed
            .fetch_add(1, Ordering::Relaxed);
        info!(mercury_id = %id, %peer, token = token_id, "boot token consumed: agent key bound");
        Ok(true)
    }

    /// Admits the key pending for `id` (`qs agents approve ID`); `by` names the caller.
    pub async fn approve(&self, id: &str, by: &str) -> Result<Value, EnrollmentError> {
        let _writing = self.writing.lock().await;
        let mut record = self.record(id).await?;
        let Some(pending) = record.remove("pending") else {
            return Err(EnrollmentError::NotPending(id.to_owned()));
        };
        record.insert(
            "admitted".into(),
            json!({"key": pending.get("key").cloned().unwrap_or(Value::Null),
                   "via": "approval", "by": by, "address": pending.get("address").cloned().unwrap_or(Value::Null),
                   "at": rfc3339(now())}),
        );
        let record = Value::Object(record);
        self.store
            .write_batch(vec![Write::Record {
                collection: Collection::Enrollment,
                key: id.to_owned(),
                value: Some(record.clone()),
            }])
            .await?;
        info!(mercury_id = %id, by, "agent approved");
        Ok(record)
    }

    /// Lists `ids` in advance (`qs agents allow ID…`), or with `allow` false removes them.
    pub async fn allow(&self, ids: &[String], allow: bool, by: &str) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let mut writes = Vec::new();
        for id in ids {
            let mut record = self.record(id).await?;
            if allow {
                record.insert("allowed".into(), json!({"by": by, "at": rfc3339(now())}));
            } else if record.remove("allowed").is_none() {
                continue;
            }
            writes.push(Write::Record {
                collection: Collection::Enrollment,
                key: id.clone(),
                value: Some(Value::Object(record)),
            });
        }
        if !writes.is_empty() {
            self.store.write_batch(writes).await?;
        }
        info!(count = ids.len(), allow, by, "allowlist changed");
        Ok(())
    }

    /// Records that a second key claimed `id` while it was online under another one.
    pub async fn conflict(&self, id: &str, peer: SocketAddr) -> Result<(), StoreError> {
        self.counters
            .identity_conflicts
            .fetch_add(1, Ordering::Relaxed);
        if self.throttled(id, "conflict", CONFLICT_REFRESH) {
            return Ok(());
        }
        let _writing = self.writing.lock().await;
        let mut record = self.record(id).await?;
        let count = record
            .get("conflicts")
            .and_then(|c| c.get("count"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        record.insert(
            "conflicts".into(),
            json!({"count": count + 1, "last_address": peer.to_string(), "last_at": rfc3339(now())}),
        );
        self.store
            .write_batch(vec![Write::Record {
                collection: Collection::Enrollment,
                key: id.to_owned(),
                value: Some(Value::Object(record)),
            }])
            .await
    }

    /// The enrollment record of `id`, if any.
    pub async fn show(&self, id: &str) -> Result<Option<Value>, StoreError> {
        self.store.get_record(Collection::Enrollment, id).await
    }

    async fn find(&self, collection: Collection, filter: Value) -> Result<Vec<Value>, StoreError> {
        let query = qs_query::Query::from_request(&json!({"filter": filter})).map_err(|e| {
            StoreError::Refused {
                message: e.to_string(),
            }
        })?;
        self.store.find_records(collection, &query).await
    }

    /// Agents waiting for approval.
    pub async fn pending(&self) -> Result<Vec<Value>, StoreError> {
        self.find(
            Collection::Enrollment,
            json!({"pending": {"$exists": true}}),
        )
        .await
    }

    /// MercuryIds listed in advance.
    pub async fn allowlist(&self) -> Result<Vec<Value>, StoreError> {
        self.find(
            Collection::Enrollment,
            json!({"allowed": {"$exists": true}}),
        )
        .await
    }

    /// Removes boot tokens that expired, and (`superseded`) the unused ones bound to exactly
    /// `binding`: a machine that PXE-boots again needs only its newest token, and anyone who
    /// can reach `/boot/ipxe` can make it mint one, so they must not pile up.
    async fn prune_boot_tokens(&self, superseded: Option<&Value>) -> Result<(), StoreError> {
        let mut filters = Vec::new();
        if !self.throttled("", "boot_token_purge", BOOT_TOKEN_PURGE) {
            filters.push(json!({"expires": {"$lte": rfc3339(now())}}));
        }
        if let Some(binding) = superseded {
            filters.push(json!({"binding": binding, "consumed": {"$exists": false}}));
        }
        let mut writes = Vec::new();
        for filter in filters {
            for old in self.find(Collection::BootTokens, filter).await? {
                if let Some(id) = old.get("id").and_then(Value::as_str) {
                    writes.push(Write::Record {
                        collection: Collection::BootTokens,
                        key: id.to_owned(),
                        value: None,
                    });
                }
            }
        }
        if !writes.is_empty() {
            self.store.write_batch(writes).await?;
        }
        Ok(())
    }

    /// Makes a one-time boot token bound to `mac` and/or `uuid` (or, with `local`, to whatever
    /// machine uses it: the agent `qs serve --local-agent` starts), valid for `ttl`; returns its
    /// record (without hash) and its secret, which is never stored.
    pub async fn create_boot_token(
        &self,
        mac: Option<&str>,
        uuid: Option<&str>,
        local: bool,
        ttl: Duration,
        note: &str,
    ) -> Result<(Value, String), EnrollmentError> {
        let ids = Identifiers::from_raw(mac, uuid, None);
        let mut binding = Map::new();
        if local {
            binding.insert("local".into(), true.into());
        } else {
            if mac.is_some() && ids.mac.is_none() {
                return Err(EnrollmentError::BadBinding(format!(
                    "MAC {mac:?} is not usable"
                )));
            }
            if uuid.is_some() && ids.uuid.is_none() {
                return Err(EnrollmentError::BadBinding(format!(
                    "UUID {uuid:?} is not usable"
                )));
            }
            if let Some(m) = &ids.mac {
                binding.insert("mac".into(), m.clone().into());
            }
            if let Some(u) = &ids.uuid {
                binding.insert("uuid".into(), u.to_ascii_lowercase().into());
            }
            if binding.is_empty() {
                return Err(EnrollmentError::BadBinding("neither was given".into()));
            }
        }
        if let Err(error) = self.prune_boot_tokens(None).await {
            warn!(error = %error, "expired boot tokens not removed");
        }
        let id = hex::encode(random(8)?);
        let secret = format!("qsb_{id}_{}", URL_SAFE_NO_PAD.encode(random(32)?));
        let created = now();
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::HOUR);
        let record = json!({
            "id": id, "hash": hash(&secret), "binding": binding,
            "created": rfc3339(created), "expires": rfc3339(created + ttl), "note": note,
        });
        self.store
            .write_batch(vec![Write::Record {
                collection: Collection::BootTokens,
                key: id,
                value: Some(record.clone()),
            }])
            .await?;
        Ok((public(record), secret))
    }

    /// Boot tokens not yet expired (used ones included), without hashes.
    pub async fn boot_tokens(&self) -> Result<Vec<Value>, StoreError> {
        let docs = self
            .find(
                Collection::BootTokens,
                json!({"expires": {"$gt": rfc3339(now())}}),
            )
            .await?;
        Ok(docs.into_iter().map(public).collect())
    }

    /// The policy and what was counted since start.
    pub fn status(&self) -> Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "policy": self.policy,
            "counters": {
                "admitted": n(&c.admitted),
                "pending": n(&c.pending),
                "refused": n(&c.refused),
                "boot_tokens_consumed": n(&c.boot_tokens_consumed),
                "boot_tokens_refused": n(&c.boot_tokens_refused),
                "identity_conflicts": n(&c.identity_conflicts),
            },
        })
    }
}

/// A boot server host directory that also mints a one-time boot token for every agent script
/// it answers, bound to the MAC and UUID the booting machine gave.
#[derive(Clone)]
pub struct EnrollingHosts<D> {
    inner: D,
    enrollment: std::sync::Arc<Enrollment>,
}

impl<D> EnrollingHosts<D> {
    /// `inner`'s lookups, with tokens from `enrollment`.
    pub fn new(inner: D, enrollment: std::sync::Arc<Enrollment>) -> Self {
        Self { inner, enrollment }
    }
}

impl<D: qs_boot::HostDirectory> qs_boot::HostDirectory for EnrollingHosts<D> {
    async fn find(&self, key: &HostKey) -> Result<Vec<qs_boot::KnownHost>, qs_boot::LookupError> {
        self.inner.find(key).await
    }

    async fn enrollment_token(&self, ids: &Identifiers) -> Option<String> {
        if ids.mac.is_none() && ids.uuid.is_none() {
            return None;
        }
        let mut binding = Map::new();
        if let Some(m) = &ids.mac {
            binding.insert("mac".into(), m.clone().into());
        }
        if let Some(u) = &ids.uuid {
            binding.insert("uuid".into(), u.to_ascii_lowercase().into());
        }
        if let Err(error) = self
            .enrollment
            .prune_boot_tokens(Some(&Value::Object(binding)))
            .await
        {
            warn!(error = %error, "superseded boot tokens not removed");
        }
        match self
            .enrollment
            .create_boot_token(
                ids.mac.as_deref(),
                ids.uuid.as_deref(),
                false,
                BOOT_SCRIPT_TOKEN_TTL,
                "boot script",
            )
            .await
        {
            Ok((record, secret)) => {
                info!(token = %record["id"], binding = %record["binding"], "boot token minted for a boot script");
                Some(secret)
            }
            Err(error) => {
                warn!(error = %error, "no boot token for this boot script");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ID: &str = "013c16030373937262a32e831ff18c941b6481ded8";
    const OTHER: &str = "013c16030373937262a32e831ff18c941b6481ded9";

    fn peer() -> SocketAddr {
        "192.0.2.7:4000".parse().unwrap()
    }

    fn inventory() -> Value {
        json!({"interfaces": [{"name": "eth0", "address": "52:54:00:12:34:56"}],
               "dmi": {"product_uuid": "5f2c1a3e-8b4d-4c6a-9e21-0a1b2c3d4e5f"}})
    }

    fn rig(policy: Policy) -> (Enrollment, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        (Enrollment::new(policy, store), dir)
    }

    async fn admit(e: &Enrollment, id: &str, key: &str, token: Option<&str>) -> Admission {
        e.admit(id, key, token, peer(), &inventory()).await.unwrap()
    }

    #[tokio::test]
    async fn approve_keeps_an_agent_pending_until_its_key_is_approved() {
        let (e, _dir) = rig(Policy::Approve);
        assert_eq!(admit(&e, ID, "k1", None).await, Admission::Pending);
        let pending = e.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0]["mercury_id"], ID);
        assert_eq!(pending[0]["pending"]["address"], "192.0.2.7:4000");
        assert!(matches!(
            e.approve(OTHER, "t").await,
            Err(EnrollmentError::NotPending(_))
        ));
        e.approve(ID, "admin-token").await.unwrap();
        assert!(e.pending().await.unwrap().is_empty());
        assert_eq!(
            admit(&e, ID, "k1", None).await,
            Admission::Admit { via: "key" }
        );
        // Another key for the same MercuryId (a reboot, or someone else) waits again.
        e.throttle.lock().unwrap().clear();
        assert_eq!(admit(&e, ID, "k2", None).await, Admission::Pending);
        // Listed in advance: admitted whatever the key; listed after asking: no longer pending.
        e.allow(&[OTHER.into()], true, "t").await.unwrap();
        assert_eq!(
            admit(&e, OTHER, "k9", None).await,
            Admission::Admit { via: "allowlist" }
        );
        e.allow(&[ID.into()], true, "t").await.unwrap();
        assert_eq!(
            admit(&e, ID, "k2", None).await,
            Admission::Admit { via: "allowlist" }
        );
        assert!(e.pending().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn allowlist_refuses_unlisted_agents_and_open_admits_all() {
        let (e, _dir) = rig(Policy::Allowlist);
        assert!(matches!(
            admit(&e, ID, "k1", None).await,
            Admission::Refuse(_)
        ));
        assert!(e.pending().await.unwrap().is_empty());
        e.allow(&[ID.into()], true, "t").await.unwrap();
        assert_eq!(e.allowlist().await.unwrap().len(), 1);
        assert!(matches!(
            admit(&e, ID, "k1", None).await,
            Admission::Admit { .. }
        ));
        e.allow(&[ID.into()], false, "t").await.unwrap();
        assert!(matches!(
            admit(&e, ID, "k1", None).await,
            Admission::Refuse(_)
        ));
        assert_eq!(e.status()["counters"]["refused"], 2);

        let (open, _dir) = rig(Policy::Open);
        assert_eq!(
            admit(&open, ID, "k1", None).await,
            Admission::Admit { via: "open" }
        );
    }

    #[tokio::test]
    async fn a_boot_token_admits_once_for_the_machine_it_is_bound_to() {
        let (e, _dir) = rig(Policy::Allowlist);
        let (record, secret) = e
            .create_boot_token(
                Some("52-54-00-12-34-56"),
                None,
                false,
                BOOT_SCRIPT_TOKEN_TTL,
                "",
            )
            .await
            .unwrap();
        assert!(record.get("hash").is_none());
        assert_eq!(record["binding"]["mac"], "52:54:00:12:34:56");
        // Bound to another machine's MAC: refused, and it stays unused.
        let (_, elsewhere) = e
            .create_boot_token(
                Some("52:54:00:99:99:99"),
                None,
                false,
                BOOT_SCRIPT_TOKEN_TTL,
                "",
            )
            .await
            .unwrap();
        assert!(matches!(
            admit(&e, ID, "k1", Some(&elsewhere)).await,
            Admission::Refuse(_)
        ));
        // A forged secret with a real id: refused.
        let forged = format!("{}x", &secret[..secret.len() - 1]);
        assert!(matches!(
            admit(&e, ID, "k1", Some(&forged)).await,
            Admission::Refuse(_)
        ));
        assert_eq!(
            admit(&e, ID, "k1", Some(&secret)).await,
            Admission::Admit { via: "boot_token" }
        );
        // The same key again (a reconnect): admitted by its bound key.
        assert_eq!(
            admit(&e, ID, "k1", Some(&secret)).await,
            Admission::Admit { via: "key" }
        );
        // Another key with the used token: refused.
        assert!(matches!(
            admit(&e, ID, "k2", Some(&secret)).await,
            Admission::Refuse(_)
        ));
        assert_eq!(e.status()["counters"]["boot_tokens_consumed"], 1);
        assert_eq!(e.status()["counters"]["boot_tokens_refused"], 3);
        let shown = e.show(ID).await.unwrap().unwrap();
        assert_eq!(shown["admitted"]["via"], "boot_token");
        assert_eq!(shown["admitted"]["key"], "k1");
        // UUID bindings match either byte order of the inventory's UUID.
        let (_, by_uuid) = e
            .create_boot_token(
                None,
                Some("3e1a2c5f-4d8b-6a4c-9e21-0a1b2c3d4e5f"),
                false,
                BOOT_SCRIPT_TOKEN_TTL,
                "",
            )
            .await
            .unwrap();
        assert!(matches!(
            admit(&e, OTHER, "k3", Some(&by_uuid)).await,
            Admission::Admit { .. }
        ));
        // Expired tokens are refused.
        let (_, expired) = e
            .create_boot_token(None, None, true, Duration::ZERO, "")
            .await
            .unwrap();
        assert!(matches!(
            admit(
                &e,
                "01aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "k4",
                Some(&expired)
            )
            .await,
            Admission::Refuse(_)
        ));
        assert!(e
            .create_boot_token(None, None, false, BOOT_SCRIPT_TOKEN_TTL, "")
            .await
            .is_err());
        assert!(e
            .create_boot_token(Some("zz"), None, false, BOOT_SCRIPT_TOKEN_TTL, "")
            .await
            .is_err());
    }

    #[tokio::test]
    async fn boot_scripts_keep_one_unused_token_per_machine_and_expired_ones_go() {
        use qs_boot::HostDirectory as _;
        #[derive(Clone)]
        struct Nobody;
        impl qs_boot::HostDirectory for Nobody {
            async fn find(
                &self,
                _: &HostKey,
            ) -> Result<Vec<qs_boot::KnownHost>, qs_boot::LookupError> {
                Ok(Vec::new())
            }
        }
        let (e, _dir) = rig(Policy::Approve);
        let e = std::sync::Arc::new(e);
        let hosts = EnrollingHosts::new(Nobody, e.clone());
        let ids = Identifiers::from_raw(Some("52-54-00-12-34-56"), None, None);
        let first = hosts.enrollment_token(&ids).await.unwrap();
        let second = hosts.enrollment_token(&ids).await.unwrap();
        assert_eq!(e.boot_tokens().await.unwrap().len(), 1);
        // The superseded one no longer admits; the newest does.
        assert!(matches!(
            admit(&e, ID, "k1", Some(&first)).await,
            Admission::Pending
        ));
        assert_eq!(
            admit(&e, ID, "k1", Some(&second)).await,
            Admission::Admit { via: "boot_token" }
        );
        // Expired tokens are removed when the next one is made.
        e.create_boot_token(None, None, true, Duration::ZERO, "")
            .await
            .unwrap();
        e.throttle.lock().unwrap().clear();
        e.create_boot_token(None, None, true, BOOT_SCRIPT_TOKEN_TTL, "")
            .await
            .unwrap();
        let all = e.find(Collection::BootTokens, json!({})).await.unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
    }

    #[tokio::test]
    async fn identity_conflicts_are_counted_in_the_record() {
        let (e, _dir) = rig(Policy::Open);
        e.conflict(ID, peer()).await.unwrap();
        e.throttle.lock().unwrap().clear();
        e.conflict(ID, "192.0.2.8:1".parse().unwrap())
            .await
            .unwrap();
        let shown = e.show(ID).await.unwrap().unwrap();
        assert_eq!(shown["conflicts"]["count"], 2);
        assert_eq!(shown["conflicts"]["last_address"], "192.0.2.8:1");
    }
}
