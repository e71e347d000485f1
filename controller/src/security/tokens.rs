//! Operator tokens: a bearer secret shown once, stored only as a SHA-256 hash, with a role, an
//! optional inventory segment (a filter: the token sees and acts only on those hosts) and an
//! optional expiry, in the store's `tokens` collection, so controllers sharing a MongoDB share
//! them. A `tokens.json` left by an earlier version in the data dir is imported once (then
//! renamed `tokens.json.migrated`).
//!
//! A secret is `qs_<id>_<43 characters>`: the id finds the record, the hash proves the secret.
//! Checked records are cached for [`CACHE_TTL`], so a revocation made by another controller
//! takes effect within that time (at once on the controller that made it).

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::store::{Collection, Store, StoreError, Write};

/// How long a checked token record is trusted before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// File of token records an earlier version kept in the data dir (imported once).
pub const TOKENS_FILE: &str = "tokens.json";
/// File holding the first admin token's secret in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What a token may do; each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: agents, inventory, queries, counters.
    Viewer,
    /// Read, and act on hosts: capability calls, boot modes.
    Operator,
    /// Everything, including tokens.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// One token as stored and listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Public id (part of the secret, safe to show and log).
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// After this it is refused.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires: Option<OffsetDateTime>,
    /// Revoked tokens stay listed, refused.
    #[serde(default)]
    pub revoked: bool,
    /// Free text (who it is for).
    #[serde(default)]
    pub note: String,
    /// The inventory filter the token is restricted to; absent: every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Value>,
    /// SHA-256 of the secret, hex; not listed.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    hash: String,
}

impl TokenRecord {
    /// The record without its hash, for listings.
    pub fn public(&self) -> Self {
        Self {
            hash: String::new(),
            ..self.clone()
        }
    }
}

/// Why a token store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{}: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: serde_json::Error,
    },
    /// No random source.
    #[error("no random source: {0}")]
    Random(String),
    /// No such token.
    #[error("no token {0}")]
    Unknown(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A segment that is not a filter the query language accepts.
    #[error("segment is not a usable filter: {0}")]
    BadSegment(String),
}

/// SHA-256 of a secret, hex: what is stored instead of it.
pub(crate) fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equal without an early exit, so timing does not tell how much of a hash matched.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `bytes` bytes from the operating system's random source.
pub(crate) fn random_bytes(bytes: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn random(bytes: usize) -> Result<Vec<u8>, TokenError> {
    random_bytes(bytes).map_err(TokenError::Random)
}

/// The token records, in the store, with a short-lived cache of checked ones.
pub struct TokenStore {
    store: Store,
    cache: Mutex<HashMap<String, (TokenRecord, Instant)>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

/// Checks that `segment` is a filter the query language accepts.
pub fn check_segment(segment: &Value) -> Result<(), TokenError> {
    qs_query::Count::from_request(&json!({ "filter": segment }))
        .map(|_| ())
        .map_err(|e| TokenError::BadSegment(e.to_string()))
}

impl TokenStore {
    /// Opens the tokens in `store`. A `tokens.json` in `dir` is imported once (tokens already
    /// in the store win) and renamed. When the store holds no token at all (first start), one
    /// admin token is made and its secret written to `admin.token` in `dir` (mode 0600);
    /// returns the store and, then, that file's path.
    pub async fn open(store: Store, dir: &Path) -> Result<(Self, Option<PathBuf>), TokenError> {
        let tokens = Self {
            store,
            cache: Mutex::new(HashMap::new()),
        };
        tokens.migrate(dir).await?;
        if !tokens.list().await?.is_empty() {
            return Ok((tokens, None));
        }
        let (_, secret) = tokens
            .create(Role::Admin, None, None, "admin.token (first start)".into())
            .await?;
        let admin = dir.join(ADMIN_TOKEN_FILE);
        write_private(&admin, format!("{secret}\n").as_bytes())?;
        Ok((tokens, Some(admin)))
    }

    async fn migrate(&self, dir: &Path) -> Result<(), TokenError> {
        let path = dir.join(TOKENS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(TokenError::Io { path, source }),
        };
        let list: Vec<TokenRecord> =
            serde_json::from_slice(&bytes).map_err(|source| TokenError::Corrupt {
                path: path.clone(),
                source,
            })?;
        let mut writes = Vec::new();
        for record in list {
            if self
                .store
                .get_record(Collection::Tokens, &record.id)
                .await?
                .is_none()
            {
                writes.push(self.write(&record)?);
            }
        }
        let imported = writes.len();
        if !writes.is_empty() {
            self.store.write_batch(writes).await?;
        }
        let done = path.with_extension("json.migrated");
        std::fs::rename(&path, &done).map_err(|source| TokenError::Io {
            path: path.clone(),
            source,
        })?;
        tracing::info!(imported, from = %path.display(), "operator tokens imported into the store");
        Ok(())
    }

    fn write(&self, record: &TokenRecord) -> Result<Write, TokenError> {
        let value = serde_json::to_value(record).map_err(|source| TokenError::Corrupt {
            path: PathBuf::from(Collection::Tokens.name()),
            source,
        })?;
        Ok(Write::Record {
            collection: Collection::Tokens,
            key: record.id.clone(),
            value: Some(value),
        })
    }

    /// Makes a token; returns its record and its secret (shown once, never stored).
    pub async fn create(
        &self,
        role: Role,
        segment: Option<Value>,
        expires: Option<OffsetDateTime>,
        note: String,
    ) -> Result<(TokenRecord, String), TokenError> {
        if let Some(segment) = &segment {
            check_segment(segment)?;
        }
        let id = hex::encode(random(6)?);
        let secret = format!("qs_{id}_{}", URL_SAFE_NO_PAD.encode(random(32)?));
        let record = TokenRecord {
            id,
            role,
            created: OffsetDateTime::now_utc(),
            expires,
            revoked: false,
            note,
            segment,
            hash: hash(&secret),
        };
        self.store.write_batch(vec![self.write(&record)?]).await?;
        Ok((record.public(), secret))
    }

    /// Every token, without hashes.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let query = qs_query::Query::from_request(&json!({"sort": {"created": 1}}))
            .map_err(|e| TokenError::BadSegment(e.to_string()))?;
        let docs = self.store.find_records(Collection::Tokens, &query).await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| serde_json::from_value::<TokenRecord>(d).ok())
            .map(|t| t.public())
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        Ok(self
            .store
            .get_record(Collection::Tokens, id)
            .await?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    /// Revokes token `id` (it stays listed).
    pub async fn revoke(&self, id: &str) -> Result<TokenRecord, TokenError> {
        let mut record = self
            .get(id)
            .await?
            .ok_or_else(|| TokenError::Unknown(id.to_owned()))?;
        record.revoked = true;
        self.store.write_batch(vec![self.write(&record)?]).await?;
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        Ok(record.public())
    }

    /// The valid (known, unrevoked, unexpired) token whose secret this is; `Ok(None)` for any
    /// other secret, an error only when the store cannot be read.
    pub async fn check(&self, secret: &str) -> Result<Option<TokenRecord>, TokenError> {
        let Some(id) = secret
            .strip_prefix("qs_")
            .and_then(|s| s.split('_').next())
            .filter(|id| !id.is_empty() && id.len() <= 32)
        else {
            return Ok(None);
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(record, _)| record.clone());
        let record = match cached {
            Some(record) => record,
            None => {
                let Some(record) = self.get(id).await? else {
                    return Ok(None);
                };
                let mut cache = self
                    .cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() > 10_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                }
                cache.insert(id.to_owned(), (record.clone(), Instant::now()));
                record
            }
        };
        let valid = same(&record.hash, &hash(secret))
            && !record.revoked
            && record
                .expires
                .is_none_or(|at| at > OffsetDateTime::now_utc());
        Ok(valid.then(|| record.public()))
    }
}

/// Writes a new file readable by its owner only, synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn the_first_start_makes_a_private_admin_token_that_checks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let (tokens, admin) = TokenStore::open(store.clone(), dir.path()).await.unwrap();
        let admin = admin.unwrap();
        let mode = std::fs::metadata(&admin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = std::fs::read_to_string(&admin).unwrap();
        let checked = tokens.check(secret.trim()).await.unwrap().unwrap();
        assert_eq!(checked.role, Role::Admin);
        // The store holds a hash, never the secret.
        let stored = store
            .get_record(Collection::Tokens, &checked.id)
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.to_string().contains(secret.trim()));
        // A second start finds it and makes no other.
        let (again, admin) = TokenStore::open(store, dir.path()).await.unwrap();
        assert!(admin.is_none());
        assert!(again.check(secret.trim()).await.unwrap().is_some());
        assert_eq!(again.list().await.unwrap().len(), 1);
        assert!(again.list().await.unwrap()[0].hash.is_empty());
    }

    #[tokio::test]
    async fn wrong_revoked_or_expired_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let (tokens, _) = TokenStore::open(store, dir.path()).await.unwrap();
        let (record, secret) = tokens
            .create(Role::Viewer, None, None, String::new())
            .await
            .unwrap();
        assert_eq!(
            tokens.check(&secret).await.unwrap().unwrap().role,
            Role::Viewer
        );
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('A') { 'B' } else { 'A' });
        assert!(tokens.check(&wrong).await.unwrap().is_none());
        assert!(tokens.check("qs_nothing_here").await.unwrap().is_none());
        assert!(tokens.check("").await.unwrap().is_none());
        tokens.revoke(&record.id).await.unwrap();
        assert!(tokens.check(&secret).await.unwrap().is_none());
        let past = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let (_, expired) = tokens
            .create(Role::Admin, None, Some(past), String::new())
            .await
            .unwrap();
        assert!(tokens.check(&expired).await.unwrap().is_none());
        assert!(matches!(
            tokens.revoke("nope").await,
            Err(TokenError::Unknown(_))
        ));
        // Segments must be filters.
        let (seg, _) = tokens
            .create(
                Role::Operator,
                Some(json!({"rack": "r1"})),
                None,
                String::new(),
            )
            .await
            .unwrap();
        assert_eq!(seg.segment, Some(json!({"rack": "r1"})));
        assert!(matches!(
            tokens
                .create(
                    Role::Operator,
                    Some(json!({"$nope": 1})),
                    None,
                    String::new()
                )
                .await,
            Err(TokenError::BadSegment(_))
        ));
    }

    #[tokio::test]
    async fn a_tokens_file_of_an_earlier_version_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "qs_00112233aabb_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHI";
        let record = json!([{"id": "00112233aabb", "role": "operator",
            "created": "2026-11-30T10:00:00Z", "revoked": false, "note": "old",
            "hash": hash(secret)}]);
        std::fs::write(dir.path().join(TOKENS_FILE), record.to_string()).unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let (tokens, admin) = TokenStore::open(store, dir.path()).await.unwrap();
        // The imported token counts as a first token: no new admin token.
        assert!(admin.is_none());
        assert_eq!(
            tokens.check(secret).await.unwrap().unwrap().role,
            Role::Operator
        );
        assert!(!dir.path().join(TOKENS_FILE).exists());
        assert!(dir.path().join("tokens.json.migrated").exists());
    }
}
