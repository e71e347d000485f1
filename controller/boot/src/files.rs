//! The boot directory: which of its files may be served, and what `image.json` says.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why a boot file request names no servable file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileRefused {
    /// The name is not a plain file name (a path, `..`, a hidden file, odd characters).
    #[error("{0:?} is not a file name of the boot directory")]
    BadName(String),
    /// No regular file of that name (symbolic links are not followed out of the directory).
    #[error("the boot directory has no file {0:?}")]
    Missing(String),
}

/// A directory holding `vmlinuz`, `initramfs.img` and `image.json`.
#[derive(Debug, Clone)]
pub struct BootDir {
    dir: PathBuf,
}

impl BootDir {
    /// Serves files of `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path of the regular file `name` directly inside the directory. Only plain names of
    /// letters, digits, `.`, `_` and `-` not starting with `.` are served, and only regular
    /// files (not symbolic links), so no request reaches outside the directory.
    pub fn file(&self, name: &str) -> Result<PathBuf, FileRefused> {
        let plain = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain {
            return Err(FileRefused::BadName(name.to_owned()));
        }
        let path = self.dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => Ok(path),
            _ => Err(FileRefused::Missing(name.to_owned())),
        }
    }

    /// `image.json`, when present and valid; read per request, so a rebuilt image shows at once.
    pub fn image(&self) -> Option<Value> {
        let bytes = std::fs::read(self.dir.join("image.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The image's build id from `image.json`.
    pub fn build_id(&self) -> Option<String> {
        self.image()?
            .get("build_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// The default boot directory: `images/out` of the workspace the `qs` binary was built in
/// (`<workspace>/target/<profile>/qs`), when it holds a kernel.
pub fn default_boot_dir(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.join("images").is_dir())
        .map(|workspace| workspace.join("images/out"))
        .filter(|out| out.join("vmlinuz").is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_regular_files_directly_inside_are_served() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let boot = BootDir::new(dir.path().to_owned());
        assert_eq!(boot.file("vmlinuz").unwrap(), dir.path().join("vmlinuz"));
        for bad in [
            "../etc/passwd",
            "..",
            ".hidden",
            "a/b",
            "",
            "%2e%2e",
            "a\\b",
        ] {
            assert_eq!(
                boot.file(bad),
                Err(FileRefused::BadName(bad.into())),
                "{bad}"
            );
        }
        for missing in ["sub", "passwd", "initramfs.img"] {
            assert_eq!(
                boot.file(missing),
                Err(FileRefused::Missing(missing.into())),
                "{missing}"
            );
        }
    }

    #[test]
    fn build_id_comes_from_image_json() {
        let dir = tempfile::tempdir().unwrap();
        let boot = BootDir::new(dir.path().to_owned());
        assert_eq!(boot.build_id(), None);
        std::fs::write(dir.path().join("image.json"), br#"{"build_id": "qs-1"}"#).unwrap();
        assert_eq!(boot.build_id().as_deref(), Some("qs-1"));
    }

    #[test]
    fn default_dir_is_the_workspace_images_out_with_a_kernel() {
        let ws = tempfile::tempdir().unwrap();
        let exe = ws.path().join("target/debug/qs");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::write(ws.path().join("Cargo.toml"), b"").unwrap();
        std::fs::create_dir_all(ws.path().join("images/out")).unwrap();
        assert_eq!(default_boot_dir(&exe), None);
        std::fs::write(ws.path().join("images/out/vmlinuz"), b"k").unwrap();
        assert_eq!(default_boot_dir(&exe), Some(ws.path().join("images/out")));
    }
}
