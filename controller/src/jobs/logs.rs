//! A task's output as the controller keeps it: for each stream, the first and the last MiB
//! (a firmware tool's banner and its final error are what an operator needs), and how many
//! bytes in between were dropped. Chunks arrive with their offset in the stream, so a chunk
//! repeated after a reconnect is not counted twice and a gap is counted as dropped.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Bytes kept at each end of a stream.
pub const KEPT_BYTES: usize = 1 << 20;

/// One stream's kept bytes.
#[derive(Debug, Clone, Default)]
pub struct StreamLog {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes of the stream seen or skipped so far (the next expected offset).
    total: u64,
    /// Bytes that arrived nowhere (a gap in offsets).
    gaps: u64,
    limit: usize,
}

/// A stream's kept bytes as the API shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamText {
    /// The first bytes (lossy UTF-8).
    pub head: String,
    /// The last bytes after the head (lossy UTF-8); empty while everything fits in the head.
    pub tail: String,
    /// Bytes the stream carried.
    pub total_bytes: u64,
    /// Bytes in neither head nor tail.
    pub dropped_bytes: u64,
}

impl StreamLog {
    /// An empty stream keeping [`KEPT_BYTES`] at each end.
    pub fn new() -> Self {
        Self::with_limit(KEPT_BYTES)
    }

    /// An empty stream keeping `limit` bytes at each end.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Adds a chunk that starts at `offset` in the stream.
    pub fn push(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if end <= self.total {
            return; // Already seen (a resend after a reconnect).
        }
        let data = if offset < self.total {
            // Overlaps what we have: keep only the new part.
            let skip = usize::try_from(self.total - offset).unwrap_or(data.len());
            &data[skip.min(data.len())..]
        } else {
            if offset > self.total {
                self.gaps += offset - self.total;
                self.total = offset;
            }
            data
        };
        self.total += data.len() as u64;
        let mut rest = data;
        if self.head.len() < self.limit && self.gaps == 0 && self.tail.is_empty() {
            let room = self.limit - self.head.len();
            let (into_head, after) = rest.split_at(room.min(rest.len()));
            self.head.extend_from_slice(into_head);
            rest = after;
        }
        if rest.len() >= self.limit {
            self.tail.clear();
            self.tail.extend(&rest[rest.len() - self.limit..]);
        } else {
            let overflow = (self.tail.len() + rest.len()).saturating_sub(self.limit);
            self.tail.drain(..overflow);
            self.tail.extend(rest);
        }
    }

    /// Bytes the stream carried so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The kept bytes as text.
    pub fn text(&self) -> StreamText {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        StreamText {
            head: String::from_utf8_lossy(&self.head).into_owned(),
            tail: String::from_utf8_lossy(&tail).into_owned(),
            total_bytes: self.total,
            dropped_bytes: self.total.saturating_sub(kept),
        }
    }
}

/// Both streams of a task (or of one step of a plan task).
#[derive(Debug, Clone, Default)]
pub struct TaskLog {
    /// Standard output.
    pub stdout: StreamLog,
    /// Standard error.
    pub stderr: StreamLog,
}

impl TaskLog {
    /// Empty streams.
    pub fn new() -> Self {
        Self {
            stdout: StreamLog::new(),
            stderr: StreamLog::new(),
        }
    }

    /// The record stored in the `task_logs` collection.
    pub fn to_value(&self, finished: bool) -> serde_json::Value {
        serde_json::json!({
            "stdout": self.stdout.text(),
            "stderr": self.stderr.text(),
            "finished": finished,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail_and_counts_what_it_dropped() {
        let mut log = StreamLog::with_limit(4);
        log.push(0, b"abcdefgh");
        log.push(8, b"ij");
        let t = log.text();
        assert_eq!(t.head, "abcd");
        assert_eq!(t.tail, "ghij");
        assert_eq!(t.total_bytes, 10);
        assert_eq!(t.dropped_bytes, 2);
    }

    #[test]
    fn a_short_stream_is_all_head() {
        let mut log = StreamLog::with_limit(16);
        log.push(0, b"hello ");
        log.push(6, b"world");
        let t = log.text();
        assert_eq!((t.head.as_str(), t.tail.as_str()), ("hello world", ""));
        assert_eq!(t.dropped_bytes, 0);
    }

    #[test]
    fn resent_and_overlapping_chunks_count_once_and_gaps_count_as_dropped() {
        let mut log = StreamLog::with_limit(64);
        log.push(0, b"abc");
        log.push(0, b"abc");
        log.push(1, b"bcde");
        assert_eq!(log.text().head, "abcde");
        log.push(10, b"xyz");
        let t = log.text();
        assert_eq!(t.total_bytes, 13);
        assert_eq!(t.dropped_bytes, 5);
        assert_eq!(t.tail, "xyz");
    }
}
