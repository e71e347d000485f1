//! Counters of what arrived on the agent port and what was refused, for operators and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Monotonic counters of the agent-facing endpoint; cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Counters {
    /// TCP connections accepted on the agent port.
    pub connections: AtomicU64,
    /// Connections closed because their ZMTP stream broke the rules (bad greeting, bad frame).
    pub rejected_connections: AtomicU64,
    /// Messages dropped unread because a frame exceeded the size limit.
    pub oversize_frames: AtomicU64,
    /// Frames that reached the controller but did not decode as an envelope.
    pub malformed_frames: AtomicU64,
    /// Envelopes with a protocol version this build does not speak.
    pub unsupported_versions: AtomicU64,
    /// Envelopes whose body was unknown or malformed.
    pub bad_bodies: AtomicU64,
    /// Envelopes decoded and handled.
    pub messages: AtomicU64,
    /// Requests refused with an error reply (not registered, unexpected message …).
    pub refused: AtomicU64,
    /// Inventory deltas applied.
    pub inventory_deltas: AtomicU64,
    /// Whole inventories received (registrations and full updates).
    pub inventory_updates: AtomicU64,
    /// Connections refused because a connection limit was reached.
    pub refused_connections: AtomicU64,
    /// Sessions closed because the agent sent nothing within the idle deadline.
    pub idle_closed: AtomicU64,
    /// Replies that matched no request in flight (late, or for an earlier controller process).
    pub late_replies: AtomicU64,
    /// Inventories refused for their shape or size (not a document, too deep, too large, a delta that does not apply).
    pub documents_refused: AtomicU64,
    /// Store transactions the ingest worker committed (each holds many agents' changes).
    pub ingest_batches: AtomicU64,
    /// Peers disconnected because every recent message they sent was refused.
    pub peers_disconnected: AtomicU64,
    /// Connections closed because the Noise handshake or a transport message did not
    /// authenticate (wrong keys, tampered or replayed bytes, a peer speaking plain envelopes).
    pub unauthenticated: AtomicU64,
    /// Registrations refused because their MercuryId is online under another agent key.
    pub identity_conflicts: AtomicU64,
}

/// A point-in-time copy of [`Counters`], as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CountersSnapshot {
    /// See [`Counters::connections`].
    pub connections: u64,
    /// See [`Counters::rejected_connections`].
    pub rejected_connections: u64,
    /// See [`Counters::oversize_frames`].
    pub oversize_frames: u64,
    /// See [`Counters::malformed_frames`].
    pub malformed_frames: u64,
    /// See [`Counters::unsupported_versions`].
    pub unsupported_versions: u64,
    /// See [`Counters::bad_bodies`].
    pub bad_bodies: u64,
    /// See [`Counters::messages`].
    pub messages: u64,
    /// See [`Counters::refused`].
    pub refused: u64,
    /// See [`Counters::inventory_deltas`].
    pub inventory_deltas: u64,
    /// See [`Counters::inventory_updates`].
    pub inventory_updates: u64,
    /// See [`Counters::refused_connections`].
    pub refused_connections: u64,
    /// See [`Counters::idle_closed`].
    pub idle_closed: u64,
    /// See [`Counters::late_replies`].
    pub late_replies: u64,
    /// See [`Counters::documents_refused`].
    pub documents_refused: u64,
    /// See [`Counters::ingest_batches`].
    pub ingest_batches: u64,
    /// See [`Counters::peers_disconnected`].
    pub peers_disconnected: u64,
    /// See [`Counters::unauthenticated`].
    pub unauthenticated: u64,
    /// See [`Counters::identity_conflicts`].
    pub identity_conflicts: u64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            connections: get(&self.connections),
            rejected_connections: get(&self.rejected_connections),
            oversize_frames: get(&self.oversize_frames),
            malformed_frames: get(&self.malformed_frames),
            unsupported_versions: get(&self.unsupported_versions),
            bad_bodies: get(&self.bad_bodies),
            messages: get(&self.messages),
            refused: get(&self.refused),
            inventory_deltas: get(&self.inventory_deltas),
            inventory_updates: get(&self.inventory_updates),
            refused_connections: get(&self.refused_connections),
            idle_closed: get(&self.idle_closed),
            late_replies: get(&self.late_replies),
            documents_refused: get(&self.documents_refused),
            ingest_batches: get(&self.ingest_batches),
            peers_disconnected: get(&self.peers_disconnected),
            unauthenticated: get(&self.unauthenticated),
            identity_conflicts: get(&self.identity_conflicts),
        }
    }
}
