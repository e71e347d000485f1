//! What a process uses, read from /proc: resident memory, CPU time (whole process and per
//! thread), open files. Benches sample it before and after a load to attribute the cost.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on every Linux architecture
/// that matters here).
const TICKS_PER_SECOND: u64 = 100;

/// A process under observation.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pid: u32,
}

/// CPU time of one thread, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    /// The thread's name (`comm`).
    pub name: String,
    /// Its thread id.
    pub tid: u32,
    /// User plus system time so far.
    pub cpu: Duration,
}

impl Process {
    /// The process with this pid.
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}", self.pid))
    }

    /// A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), in bytes.
    pub fn status_bytes(&self, field: &str) -> anyhow::Result<u64> {
        let path = self.dir().join("status");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .ok_or_else(|| anyhow!("{} has no {field}", path.display()))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{field} in {} is not a number", path.display()))?;
        Ok(kib * 1024)
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmRSS")
    }

    /// User plus system CPU time so far (all threads, living and ended).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        Ok(stat_cpu(&std::fs::read_to_string(self.dir().join("stat"))?)?.1)
    }

    /// CPU time of each living thread.
    pub fn threads(&self) -> anyhow::Result<Vec<ThreadCpu>> {
        let mut threads = Vec::new();
        for entry in std::fs::read_dir(self.dir().join("task"))? {
            let entry = entry?;
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // A thread may end between the listing and the read.
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (name, cpu) = stat_cpu(&text)?;
            threads.push(ThreadCpu { name, tid, cpu });
        }
        Ok(threads)
    }

    /// Open file descriptors now.
    pub fn open_files(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(self.dir().join("fd"))?.count())
    }
}

/// The name and user+system time from a /proc/.../stat line.
fn stat_cpu(text: &str) -> anyhow::Result<(String, Duration)> {
    // The name is in parentheses and may hold spaces; the fields after it are plain.
    let open = text
        .find('(')
        .ok_or_else(|| anyhow!("stat without a name: {text}"))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| anyhow!("stat without a name: {text}"))?;
    let name = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .ok_or_else(|| anyhow!("stat has no field {i}: {text}"))?
            .parse()
            .with_context(|| format!("stat field {i} is not a number: {text}"))
    };
    let ticks = tick(14)? + tick(15)?;
    Ok((name, Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)))
}

/// The `n` threads that used the most CPU between two samples (threads that ended are left out).
pub fn busiest_threads(before: &[ThreadCpu], after: &[ThreadCpu], n: usize) -> Vec<ThreadCpu> {
    let mut used: Vec<ThreadCpu> = after
        .iter()
        .map(|t| {
            let earlier = before
                .iter()
                .find(|b| b.tid == t.tid)
                .map_or(Duration::ZERO, |b| b.cpu);
            ThreadCpu {
                name: t.name.clone(),
                tid: t.tid,
                cpu: t.cpu.saturating_sub(earlier),
            }
        })
        .collect();
    used.sort_by_key(|t| std::cmp::Reverse(t.cpu));
    used.truncate(n);
    used
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_gives_name_and_cpu() {
        let line = "1234 (tokio-runtime w) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        let (name, cpu) = stat_cpu(line).unwrap();
        assert_eq!(name, "tokio-runtime w");
        assert_eq!(cpu, Duration::from_secs(3));
    }

    #[test]
    fn this_process_has_memory_cpu_and_files() {
        let me = Process::new(std::process::id());
        assert!(me.rss().unwrap() > 0);
        assert!(!me.threads().unwrap().is_empty());
        assert!(me.open_files().unwrap() >= 3);
    }
}
