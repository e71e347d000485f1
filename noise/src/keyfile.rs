//! The controller's long-term key pair in its data dir: `controller.key` (the secret, base64,
//! mode 0600) and `controller.pub` (the public key, base64, for operators and boot scripts).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::{KeyPair, NoiseError, PublicKey, KEY_LEN};

/// File name of the secret key in the data dir.
pub const SECRET_FILE: &str = "controller.key";
/// File name of the public key in the data dir.
pub const PUBLIC_FILE: &str = "controller.pub";

/// Why the key files could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold a key, or the two files do not belong together.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Key generation failed.
    #[error(transparent)]
    Noise(#[from] NoiseError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the key pair from `dir`, or creates it there (secret first, mode 0600, then the
/// public key) when neither file exists.
pub fn load_or_create(dir: &Path) -> Result<KeyPair, KeyFileError> {
    let secret_path = dir.join(SECRET_FILE);
    let public_path = dir.join(PUBLIC_FILE);
    if !secret_path.exists() {
        let pair = KeyPair::generate()?;
        // create_new: two processes racing on one data dir never overwrite each other's key.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_path)
            .map_err(io(&secret_path))?;
        file.write_all(format!("{}\n", pair.secret_base64()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&secret_path))?;
        fs::write(&public_path, format!("{}\n", pair.public())).map_err(io(&public_path))?;
        return Ok(pair);
    }
    let mode = fs::metadata(&secret_path)
        .map_err(io(&secret_path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Invalid {
            path: secret_path,
            reason: format!("readable by others (mode {:o}); chmod 600 it", mode & 0o777),
        });
    }
    let text = fs::read_to_string(&secret_path).map_err(io(&secret_path))?;
    let secret: [u8; KEY_LEN] = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyFileError::Invalid {
            path: secret_path.clone(),
            reason: "not a 32-byte base64 key".into(),
        })?;
    let public = read_public(dir)?;
    KeyPair::from_parts(secret, public).map_err(|_| KeyFileError::Invalid {
        path: public_path,
        reason: format!("is not the public half of {SECRET_FILE}"),
    })
}

/// Reads `controller.pub` from `dir`.
pub fn read_public(dir: &Path) -> Result<PublicKey, KeyFileError> {
    let path = dir.join(PUBLIC_FILE);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    text.parse().map_err(|_| KeyFileError::Invalid {
        path,
        reason: "not a 32-byte base64 key".into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_once_then_loaded_with_a_private_secret() {
        let dir = tempfile::tempdir().unwrap();
        let created = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_public(dir.path()).unwrap(), *created.public());
        let loaded = load_or_create(dir.path()).unwrap();
        assert_eq!(loaded.public(), created.public());
    }

    #[test]
    fn mismatched_or_exposed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let other = KeyPair::generate().unwrap();
        fs::write(dir.path().join(PUBLIC_FILE), other.public().to_string()).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyFileError::Invalid { .. })
        ));
        let secret = dir.path().join(SECRET_FILE);
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyFileError::Invalid { .. })
        ));
    }
}
