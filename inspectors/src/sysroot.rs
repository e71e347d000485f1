//! The one way inspectors read the machine: through a root directory.
//!
//! `SysRoot::live()` reads `/`; `SysRoot::new(dir)` reads a captured tree, so tests run the
//! real inspectors on real captures. Paths are resolved component by component inside the root
//! (sysfs is mostly symlinks, some absolute), never escaping it. In recording mode every file,
//! listing and symlink that is read is mirrored into an output directory: that is how fixture
//! trees are captured, with exactly what the inspectors read.
//!
//! Interface addresses come from netlink, not files: live roots ask the kernel
//! (`getifaddrs`), captured roots read `.qs/addresses.json`, which recording writes.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Where captured roots keep what the kernel gives through calls rather than files.
const ADDRESSES_FILE: &str = ".qs/addresses.json";
/// Where captured roots keep tools' outputs, one file per command line.
const COMMANDS_DIR: &str = ".qs/commands";
/// Where vendor tools install themselves outside PATH.
const TOOL_DIRS: &[&str] = &["/opt/MegaRAID/storcli", "/opt/smartstorageadmin/ssacli/bin"];
/// Marks a recorded command that failed; the file holds its status line, then its stderr.
const FAILED_SUFFIX: &str = ".failed";
/// How long a tool may run unless its caller says otherwise (storcli on a big controller is
/// slow).
const TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Symlink hops allowed while resolving one path (Linux allows 40).
const MAX_HOPS: usize = 40;

/// A read under the root failed.
#[derive(Debug, thiserror::Error)]
pub enum SysRootError {
    /// Reading a path failed (missing, permission, or the kernel refused the attribute).
    #[error("cannot read {path}")]
    Read {
        /// The full path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A symlink chain loops or is too deep.
    #[error("too many symlinks resolving {path}")]
    SymlinkLoop {
        /// The full path.
        path: PathBuf,
    },
    /// A file is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The full path.
        path: PathBuf,
    },
    /// The captured address list is malformed.
    #[error("{path} is not a map of interface names to address lists")]
    BadAddresses {
        /// The full path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A tool could not be started or read.
    #[error("cannot run {program}")]
    Command {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran longer than allowed and was killed.
    #[error("{program} did not finish within {seconds} s")]
    CommandTimeout {
        /// The program.
        program: String,
        /// The limit.
        seconds: u64,
    },
    /// A tool failed without output.
    #[error("{program} failed ({status}): {stderr}")]
    CommandFailed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// The start of what it printed on stderr.
        stderr: String,
    },
    /// The kernel refused to list interface addresses.
    #[error("cannot list interface addresses")]
    Netlink(#[source] nix::Error),
}

/// A view of a machine rooted at a directory.
#[derive(Debug, Clone)]
pub struct SysRoot {
    root: PathBuf,
    live: bool,
    record: Option<Arc<PathBuf>>,
}

impl SysRoot {
    /// The running machine.
    pub fn live() -> Self {
        Self {
            root: PathBuf::from("/"),
            live: true,
            record: None,
        }
    }

    /// A captured tree (or `/`, which is then treated as live).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            live: root == Path::new("/"),
            root,
            record: None,
        }
    }

    /// Reads `root` and mirrors everything read into `out`.
    pub fn recording(root: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        let mut s = Self::new(root);
        s.record = Some(Arc::new(out.into()));
        s
    }

    /// Whether this is the running machine (addresses then come from the kernel).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The full path of `rel` under the root, without resolving symlinks.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read_error(&self, rel: &Path, source: std::io::Error) -> SysRootError {
        SysRootError::Read {
            path: self.root.join(rel),
            source,
        }
    }

    /// The path to open for `rel`: on the live machine the kernel follows symlinks itself (a
    /// path walk in the kernel is far cheaper than one `statx` per component here); captured
    /// trees and recordings resolve component by component so links stay inside the root.
    fn real_path(&self, rel: &str) -> Result<PathBuf, SysRootError> {
        if self.live && self.record.is_none() {
            Ok(PathBuf::from(rel.trim_start_matches('/')))
        } else {
            self.resolve(rel)
        }
    }

    /// The real path of `rel` relative to the root, every symlink resolved (the kernel's
    /// `realpath` on the live machine, [`SysRoot::resolve`] otherwise).
    pub fn canonical(&self, rel: &str) -> Result<PathBuf, SysRootError> {
        if self.live && self.record.is_none() {
            let full = self.root.join(rel.trim_start_matches('/'));
            let real = kernel_realpath(&full).map_err(|e| self.read_error(Path::new(rel), e))?;
            Ok(real
                .strip_prefix(&self.root)
                .map(Path::to_path_buf)
                .unwrap_or(real))
        } else {
            self.resolve(rel)
        }
    }

    /// Resolves every symlink in `rel`, staying inside the root; returns the real relative path.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, SysRootError> {
        let mut pending: Vec<String> = components(Path::new(rel.trim_start_matches('/')));
        pending.reverse();
        let mut done = PathBuf::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            let next = done.join(&part);
            let full = self.root.join(&next);
            // Name the path asked for, not the component that failed: that is what callers know.
            let meta =
                std::fs::symlink_metadata(&full).map_err(|e| self.read_error(Path::new(rel), e))?;
            if !meta.file_type().is_symlink() {
                done = next;
                continue;
            }
            hops += 1;
            if hops > MAX_HOPS {
                return Err(SysRootError::SymlinkLoop {
                    path: self.root.join(rel),
                });
            }
            let target = std::fs::read_link(&full).map_err(|e| self.read_error(&next, e))?;
            self.record_symlink(&next, &target);
            let mut rest = components(&target);
            if target.is_absolute() {
                done = PathBuf::new();
            }
            rest.reverse();
            pending.extend(rest);
        }
        Ok(done)
    }

    /// The file's bytes.
    pub fn read_bytes(&self, rel: &str) -> Result<Vec<u8>, SysRootError> {
        let real = self.real_path(rel)?;
        let bytes = read_small(&self.root.join(&real)).map_err(|e| self.read_error(&real, e))?;
        if let Some(out) = &self.record {
            write_mirror(&out.join(&real), &bytes);
        }
        Ok(bytes)
    }

    /// The file as text.
    pub fn read_to_string(&self, rel: &str) -> Result<String, SysRootError> {
        let bytes = self.read_bytes(rel)?;
        String::from_utf8(bytes).map_err(|_| SysRootError::NotText {
            path: self.path(rel),
        })
    }

    /// The file as text without surrounding whitespace (sysfs values end in a newline).
    pub fn read_trimmed(&self, rel: &str) -> Result<String, SysRootError> {
        Ok(self.read_to_string(rel)?.trim().to_owned())
    }

    /// Names in a directory, sorted.
    pub fn read_dir(&self, rel: &str) -> Result<Vec<String>, SysRootError> {
        let real = self.real_path(rel)?;
        let full = self.root.join(&real);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&full).map_err(|e| self.read_error(&real, e))? {
            let entry = entry.map_err(|e| self.read_error(&real, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(out) = &self.record {
                // Listings are mirrored as names: symlinks as links, directories as directories;
                // files appear in the capture when they are read.
                let child = real.join(&name);
                match entry.file_type() {
                    Ok(t) if t.is_symlink() => {
                        if let Ok(target) = std::fs::read_link(entry.path()) {
                            self.record_symlink(&child, &target);
                        }
                    }
                    Ok(t) if t.is_dir() => {
                        let _ = std::fs::create_dir_all(out.join(&child));
                    }
                    _ => {}
                }
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Whether `rel` exists (following symlinks); recorded like any read.
    pub fn exists(&self, rel: &str) -> bool {
        if self.live && self.record.is_none() {
            return self.root.join(rel.trim_start_matches('/')).exists();
        }
        match self.resolve(rel) {
            Ok(real) => {
                let full = self.root.join(&real);
                if let (Some(out), Ok(meta)) = (&self.record, std::fs::metadata(&full)) {
                    if meta.is_dir() {
                        let _ = std::fs::create_dir_all(out.join(&real));
                    } else {
                        // Presence is what was read; an empty file records it.
                        let target = out.join(&real);
                        if !target.exists() {
                            write_mirror(&target, b"");
                        }
                    }
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The target of the symlink `rel` (its last component is not followed).
    pub fn read_link(&self, rel: &str) -> Result<PathBuf, SysRootError> {
        let rel = Path::new(rel.trim_start_matches('/'));
        if self.live && self.record.is_none() {
            return std::fs::read_link(self.root.join(rel)).map_err(|e| self.read_error(rel, e));
        }
        let parent = rel.parent().and_then(Path::to_str).unwrap_or("");
        let real_parent = self.resolve(parent)?;
        let name = rel.file_name().unwrap_or_default();
        let link = real_parent.join(name);
        let target =
            std::fs::read_link(self.root.join(&link)).map_err(|e| self.read_error(&link, e))?;
        self.record_symlink(&link, &target);
        Ok(target)
    }

    /// A reference file (a database such as pci.ids): read, but never recorded, because it
    /// describes the world rather than the machine. None when absent or unreadable.
    pub fn open_reference(&self, rel: &str) -> Option<std::fs::File> {
        if self.live {
            return std::fs::File::open(self.path(rel)).ok();
        }
        let real = self.resolve_quietly(rel)?;
        std::fs::File::open(self.root.join(real)).ok()
    }

    fn resolve_quietly(&self, rel: &str) -> Option<PathBuf> {
        let quiet = Self {
            root: self.root.clone(),
            live: self.live,
            record: None,
        };
        quiet.resolve(rel).ok()
    }

    /// IP addresses by interface name: from the kernel when live, else from the capture.
    pub fn addresses(&self) -> Result<BTreeMap<String, Vec<String>>, SysRootError> {
        let map = if self.live {
            live_addresses()?
        } else {
            match self.read_bytes(ADDRESSES_FILE) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|source| SysRootError::BadAddresses {
                        path: self.path(ADDRESSES_FILE),
                        source,
                    })?
                }
                Err(SysRootError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    BTreeMap::new()
                }
                Err(e) => return Err(e),
            }
        };
        if let (Some(out), true) = (&self.record, self.live) {
            if let Ok(json) = serde_json::to_vec_pretty(&map) {
                write_mirror(&out.join(ADDRESSES_FILE), &json);
            }
        }
        Ok(map)
    }

    /// Runs a tool and returns its stdout, or None when the tool is not installed. Captured
    /// roots replay the output recorded for the same command line.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Option<String>, SysRootError> {
        self.run_within(program, args, TOOL_TIMEOUT)
    }

    /// Like [`SysRoot::run`], killing the tool after `timeout`.
    pub fn run_within(
        &self,
        program: &str,
        args: &[&str],
        timeout: std::time::Duration,
    ) -> Result<Option<String>, SysRootError> {
        let file = format!("{COMMANDS_DIR}/{}", command_file_name(program, args));
        let failed = format!("{file}{FAILED_SUFFIX}");
        if !self.live {
            if let Ok(text) = self.read_to_string(&failed) {
                let (status, stderr) = text.split_once('\n').unwrap_or((text.as_str(), ""));
                return Err(SysRootError::CommandFailed {
                    program: program.to_owned(),
                    status: status.to_owned(),
                    stderr: stderr.to_owned(),
                });
            }
            return match self.read_to_string(&file) {
                Ok(out) => Ok(Some(out)),
                Err(SysRootError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        }
        let Some(path) = find_program(program) else {
            return Ok(None);
        };
        let result = run_with_timeout(program, &path, args, timeout);
        if let Some(dir) = &self.record {
            // A failure is a fact about the machine too (a BMC that lacks a command): keep it
            // so the replay fails the same way.
            match &result {
                Ok(out) => write_mirror(&dir.join(&file), out.as_bytes()),
                Err(SysRootError::CommandFailed { status, stderr, .. }) => {
                    write_mirror(&dir.join(&failed), format!("{status}\n{stderr}").as_bytes())
                }
                Err(_) => {}
            }
        }
        result.map(Some)
    }

    fn record_symlink(&self, rel: &Path, target: &Path) {
        let Some(out) = &self.record else { return };
        let at = out.join(rel);
        if std::fs::symlink_metadata(&at).is_ok() {
            return;
        }
        if let Some(parent) = at.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // Absolute targets would point out of the capture; make them relative to its root.
        let target = if target.is_absolute() {
            let depth = rel.components().count().saturating_sub(1);
            let mut t = PathBuf::new();
            for _ in 0..depth {
                t.push("..");
            }
            t.join(target.strip_prefix("/").unwrap_or(target))
        } else {
            target.to_owned()
        };
        let _ = std::os::unix::fs::symlink(target, at);
    }
}

/// Reads a file without asking its size first: sysfs files all claim 4096 bytes, so the
/// `statx` that `std::fs::read` makes for a size hint is one system call per file for nothing.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(4096);
    file.take(u64::MAX).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The path with every symlink resolved by the kernel in one walk (`O_PATH`, then the fd's
/// name), where glibc's `realpath` reads each component's link separately.
fn kernel_realpath(path: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_PATH.bits())
        .open(path);
    match opened {
        Ok(file) => std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .or_else(|_| std::fs::canonicalize(path)),
        Err(e) => Err(e),
    }
}

fn command_file_name(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
        .replace('/', "_")
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(TOOL_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn run_with_timeout(
    program: &str,
    path: &Path,
    args: &[&str],
    timeout: std::time::Duration,
) -> Result<String, SysRootError> {
    use std::io::Read;
    let mut child = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| SysRootError::Command {
            program: program.to_owned(),
            source,
        })?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let read_out = stdout.as_mut().map(|s| s.read_to_string(&mut out));
        let _ = stderr.as_mut().map(|s| s.read_to_string(&mut err));
        let _ = tx.send((read_out, out, err));
    });
    let Ok((read_out, out, err)) = rx.recv_timeout(timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SysRootError::CommandTimeout {
            program: program.to_owned(),
            seconds: timeout.as_secs(),
        });
    };
    let status = child.wait().map_err(|source| SysRootError::Command {
        program: program.to_owned(),
        source,
    })?;
    if let Some(Err(source)) = read_out {
        return Err(SysRootError::Command {
            program: program.to_owned(),
            source,
        });
    }
    // Tools such as storcli exit non-zero yet print a usable report; only silence is failure.
    if !status.success() && out.trim().is_empty() {
        return Err(SysRootError::CommandFailed {
            program: program.to_owned(),
            status: status.to_string(),
            stderr: stderr_summary(&err),
        });
    }
    Ok(out)
}

/// A tool's stderr on one line: repeated lines once (ipmitool retries a command per channel),
/// joined with "; ", at most 500 characters.
fn stderr_summary(err: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in err.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines.join("; ").chars().take(500).collect()
}

fn components(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

fn write_mirror(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(error) = std::fs::write(path, bytes) {
        tracing::warn!(path = %path.display(), error = %error, "could not record file");
    }
}

fn live_addresses() -> Result<BTreeMap<String, Vec<String>>, SysRootError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(SysRootError::Netlink)? {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let text = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            format!("{}/{}", a.ip(), u32::from(m.ip()).count_ones())
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let prefix: u32 = m.ip().octets().iter().map(|b| b.count_ones()).sum();
            format!("{}/{}", a.ip(), prefix)
        } else {
            continue;
        };
        map.entry(ifa.interface_name).or_default().push(text);
    }
    for list in map.values_mut() {
        list.sort();
        list.dedup();
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("sys/devices/pci0000:00/0000:00:03.0/net/eth0")).unwrap();
        std::fs::write(
            r.join("sys/devices/pci0000:00/0000:00:03.0/net/eth0/mtu"),
            "1500\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("sys/class/net")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:03.0/net/eth0",
            r.join("sys/class/net/eth0"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/sys/devices/pci0000:00/0000:00:03.0",
            r.join("sys/devices/pci0000:00/0000:00:03.0/net/eth0/device"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_relative_and_absolute_links_inside_the_root() {
        let dir = tree();
        let root = SysRoot::new(dir.path());
        assert_eq!(root.read_trimmed("sys/class/net/eth0/mtu").unwrap(), "1500");
        assert_eq!(
            root.resolve("sys/class/net/eth0/device").unwrap(),
            PathBuf::from("sys/devices/pci0000:00/0000:00:03.0")
        );
        assert_eq!(
            root.read_dir("sys/class/net").unwrap(),
            vec!["eth0".to_string()]
        );
        let err = root.read_trimmed("sys/class/net/eth1/mtu").unwrap_err();
        assert!(err.to_string().contains("sys/class/net/eth1"), "{err}");
    }

    #[test]
    fn recording_replays_the_same_reads() {
        let dir = tree();
        let out = tempfile::tempdir().unwrap();
        let rec = SysRoot::recording(dir.path(), out.path());
        rec.read_dir("sys/class/net").unwrap();
        assert_eq!(rec.read_trimmed("sys/class/net/eth0/mtu").unwrap(), "1500");
        assert!(rec.exists("sys/class/net/eth0/device"));
        let replay = SysRoot::new(out.path());
        assert_eq!(
            replay.read_trimmed("sys/class/net/eth0/mtu").unwrap(),
            "1500"
        );
        assert_eq!(
            replay.resolve("sys/class/net/eth0/device").unwrap(),
            PathBuf::from("sys/devices/pci0000:00/0000:00:03.0")
        );
    }

    #[test]
    fn tools_run_live_are_replayed_from_the_capture() {
        let out = tempfile::tempdir().unwrap();
        let rec = SysRoot::recording("/", out.path());
        let live = rec.run("uname", &["-s"]).unwrap().unwrap();
        assert_eq!(live.trim(), "Linux");
        assert_eq!(rec.run("qs-no-such-tool", &[]).unwrap(), None);
        let replay = SysRoot::new(out.path());
        assert_eq!(replay.run("uname", &["-s"]).unwrap(), Some(live));
        assert_eq!(replay.run("uname", &["-a"]).unwrap(), None);
        assert!(matches!(
            rec.run("false", &[]),
            Err(SysRootError::CommandFailed { .. })
        ));
        // The failure was recorded and fails the replay the same way.
        assert!(matches!(
            replay.run("false", &[]),
            Err(SysRootError::CommandFailed { status, .. }) if status.contains("exit status: 1")
        ));
    }

    #[test]
    fn the_kernels_walk_agrees_with_realpath() {
        let dir = tree();
        for rel in ["sys/class/net/eth0/device", "sys/class/net/eth0/mtu", "sys"] {
            let path = dir.path().join(rel);
            assert_eq!(
                kernel_realpath(&path).ok(),
                std::fs::canonicalize(&path).ok(),
                "{rel}"
            );
        }
        assert!(kernel_realpath(&dir.path().join("sys/nothing")).is_err());
        assert_eq!(
            read_small(&dir.path().join("sys/class/net/eth0/mtu")).ok(),
            Some(b"1500\n".to_vec())
        );
    }

    #[test]
    fn a_tool_that_hangs_is_killed_at_its_deadline() {
        let started = std::time::Instant::now();
        let result = SysRoot::live().run_within("sleep", &["30"], Duration::from_millis(300));
        assert!(
            matches!(result, Err(SysRootError::CommandTimeout { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn tool_errors_are_one_line_without_repeats() {
        let err = "IPMI failed: Invalid command\nIPMI failed: Invalid command\n\nGiving up\n";
        assert_eq!(
            stderr_summary(err),
            "IPMI failed: Invalid command; Giving up"
        );
        assert_eq!(stderr_summary(&"x".repeat(900)).len(), 500);
    }

    #[test]
    fn symlink_loops_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        assert!(matches!(
            SysRoot::new(dir.path()).resolve("a"),
            Err(SysRootError::SymlinkLoop { .. })
        ));
    }
}
