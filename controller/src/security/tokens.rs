//! Operator tokens: a bearer secret shown once, stored only as a SHA-256 hash, with a role and
//! an optional expiry, in `tokens.json` in the data dir (mode 0600).
//!
//! The store has no collection for them yet, so they live in this small file, written whole
//! through a temporary file and a rename. Controllers sharing one MongoDB do not share tokens.
//! A secret is `qs_<id>_<43 characters>`: the id finds the record, the hash proves the secret.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// File of token records in the data dir.
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
}

/// The token records, in memory and in their file.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    tokens: Mutex<BTreeMap<String, TokenRecord>>,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equal without an early exit, so timing does not tell how much of a hash matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn random(bytes: usize) -> Result<Vec<u8>, TokenError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(buf)
}

impl TokenStore {
    /// Opens `tokens.json` in `dir`; on first start (no file) creates it with one admin token
    /// whose secret goes to `admin.token` (mode 0600). Returns the store and, when it created
    /// the admin token, the path of that file.
    pub fn open(dir: &Path) -> Result<(Self, Option<PathBuf>), TokenError> {
        let path = dir.join(TOKENS_FILE);
        let tokens = match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<TokenRecord> =
                    serde_json::from_slice(&bytes).map_err(|source| TokenError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                list.into_iter().map(|t| (t.id.clone(), t)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(TokenError::Io { path, source }),
        };
        let store = Self {
            path,
            tokens: Mutex::new(tokens),
        };
        let first = store
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty();
        if !first {
            return Ok((store, None));
        }
        let (_, secret) = store.create(Role::Admin, None, "admin.token (first start)".into())?;
        let admin = dir.join(ADMIN_TOKEN_FILE);
        write_private(&admin, format!("{secret}\n").as_bytes())?;
        Ok((store, Some(admin)))
    }

    /// Makes a token; returns its record and its secret (shown once, never stored).
    pub fn create(
        &self,
        role: Role,
        expires: Option<OffsetDateTime>,
        note: String,
    ) -> Result<(TokenRecord, String), TokenError> {
        let id = hex::encode(random(6)?);
        let secret = format!("qs_{id}_{}", URL_SAFE_NO_PAD.encode(random(32)?));
        let record = TokenRecord {
            id: id.clone(),
            role,
            created: OffsetDateTime::now_utc(),
            expires,
            revoked: false,
            note,
            hash: hash(&secret),
        };
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.insert(id, record.clone());
        self.save(&tokens)?;
        Ok((record.public(), secret))
    }

    /// Every token, without hashes.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(TokenRecord::public)
            .collect()
    }

    /// Revokes token `id` (it stays listed).
    pub fn revoke(&self, id: &str) -> Result<TokenRecord, TokenError> {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = tokens
            .get_mut(id)
            .ok_or_else(|| TokenError::Unknown(id.to_owned()))?;
        record.revoked = true;
        let public = record.public();
        self.save(&tokens)?;
        Ok(public)
    }

    /// The valid (known, unrevoked, unexpired) token whose secret this is.
    pub fn check(&self, secret: &str) -> Option<TokenRecord> {
        let id = secret.strip_prefix("qs_")?.split('_').next()?;
        let tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = tokens.get(id)?;
        let valid = same(&record.hash, &hash(secret))
            && !record.revoked
            && record
                .expires
                .is_none_or(|at| at > OffsetDateTime::now_utc());
        valid.then(|| record.public())
    }

    fn save(&self, tokens: &BTreeMap<String, TokenRecord>) -> Result<(), TokenError> {
        let list: Vec<&TokenRecord> = tokens.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|source| TokenError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, &bytes)?;
        std::fs::rename(&tmp, &self.path).map_err(|source| TokenError::Io {
            path: self.path.clone(),
            source,
        })
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

    #[test]
    fn the_first_start_makes_a_private_admin_token_that_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (store, admin) = TokenStore::open(dir.path()).unwrap();
        let admin = admin.unwrap();
        let mode = std::fs::metadata(&admin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = std::fs::read_to_string(&admin).unwrap();
        assert_eq!(store.check(secret.trim()).unwrap().role, Role::Admin);
        // The file holds a hash, never the secret.
        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(secret.trim()));
        // A second start finds it and makes no other.
        let (again, admin) = TokenStore::open(dir.path()).unwrap();
        assert!(admin.is_none());
        assert!(again.check(secret.trim()).is_some());
        assert_eq!(again.list().len(), 1);
        assert!(again.list()[0].hash.is_empty());
    }

    #[test]
    fn wrong_revoked_or_expired_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = TokenStore::open(dir.path()).unwrap();
        let (record, secret) = store.create(Role::Viewer, None, String::new()).unwrap();
        assert_eq!(store.check(&secret).unwrap().role, Role::Viewer);
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('A') { 'B' } else { 'A' });
        assert!(store.check(&wrong).is_none());
        assert!(store.check("qs_nothing_here").is_none());
        assert!(store.check("").is_none());
        store.revoke(&record.id).unwrap();
        assert!(store.check(&secret).is_none());
        let past = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let (_, expired) = store
            .create(Role::Admin, Some(past), String::new())
            .unwrap();
        assert!(store.check(&expired).is_none());
        assert!(matches!(store.revoke("nope"), Err(TokenError::Unknown(_))));
    }
}
