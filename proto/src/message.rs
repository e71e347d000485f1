//! The messages an envelope can carry.
//!
//! Structs encode as MessagePack maps and enum variants by name, so optional fields can be added
//! with `#[serde(default)]` without breaking older peers. Never rename or reuse a field.

use serde::{Deserialize, Serialize};

use crate::capability::CapabilityInfo;
use crate::envelope::MessageId;
use crate::error_report::ErrorReport;
use crate::mercury_id::MercuryId;

/// One message; the variant name is its type on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// Agent -> controller: first message of a session.
    Register(Register),
    /// Controller -> agent: reply to `Register`.
    Registered(Registered),
    /// Agent -> controller keeps the agent online; the controller echoes it as the reply.
    Heartbeat(Heartbeat),
    /// Agent -> controller: a fresh inventory.
    InventoryUpdate(InventoryUpdate),
    /// Agent -> controller: what changed since the inventory the controller has.
    InventoryDelta(InventoryDelta),
    /// Controller -> agent: run a capability.
    CapabilityCall(CapabilityCall),
    /// Agent -> controller: progress of a running call (`re` = the call's id).
    CallProgress(CallProgress),
    /// Agent -> controller: the final outcome of a call (`re` = the call's id).
    CallResult(CallResult),
    /// Agent -> controller: bytes a running call wrote (`re` = the call's id).
    CallOutput(CallOutput),
    /// Controller -> agent: stop the running call named by `re`.
    CancelCall(CancelCall),
    /// Either way: the request named by `re` (or an undecodable one) was refused.
    Error(ErrorBody),
}

impl Body {
    /// The wire name of this message type, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Register(_) => "register",
            Body::Registered(_) => "registered",
            Body::Heartbeat(_) => "heartbeat",
            Body::InventoryUpdate(_) => "inventory_update",
            Body::InventoryDelta(_) => "inventory_delta",
            Body::CapabilityCall(_) => "capability_call",
            Body::CallProgress(_) => "call_progress",
            Body::CallResult(_) => "call_result",
            Body::CallOutput(_) => "call_output",
            Body::CancelCall(_) => "cancel_call",
            Body::Error(_) => "error",
        }
    }
}

/// An agent announces itself: identity, versions, capabilities and its full inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// The server's MercuryId (also the ZeroMQ routing id).
    pub mercury_id: MercuryId,
    /// `qs-agent` version.
    pub agent_version: String,
    /// The Linux boot id (`/proc/sys/kernel/random/boot_id`); a new one means the server rebooted.
    pub boot_id: String,
    /// Capabilities this agent serves.
    #[serde(default)]
    pub capabilities: Vec<CapabilityInfo>,
    /// The inventory document; self-describing so a controller keeps fields it does not know yet.
    pub inventory: serde_json::Value,
    /// The agent's version number of that inventory; deltas name the version they apply to.
    #[serde(default)]
    pub inventory_version: u64,
    /// Build id of the boot image the agent runs in (`image.json`), when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Calls this agent process is running or finished recently, so a controller that lost
    /// track (restarted) can reconcile; a finished call is repeated until it ages out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallRecord>,
    /// When the inventory was collected (RFC 3339, agent clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<String>,
}

/// A call an agent process is running or has finished, as reported at registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call's id (the `id` of its `CapabilityCall` envelope).
    pub id: MessageId,
    /// The capability called.
    pub capability: String,
    /// When it started (RFC 3339, agent clock).
    pub started_at: String,
    /// How it ended; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<CallFinished>,
}

/// How and when a reported call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFinished {
    /// The result, as sent (or as it would have been sent) in `CallResult`.
    pub result: CallResult,
    /// When it ended (RFC 3339, agent clock).
    pub finished_at: String,
}

/// The controller accepted a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// How often the agent must send a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// Liveness ping (and, with `re` set, its echo).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {}

/// A complete inventory document replacing the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryUpdate {
    /// The inventory document.
    pub inventory: serde_json::Value,
    /// The agent's version number of this inventory.
    #[serde(default)]
    pub version: u64,
    /// When the inventory was collected (RFC 3339, agent clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<String>,
}

/// The difference between two inventories, as an RFC 6902 JSON patch.
///
/// The controller applies it only to the version it names as `base`; otherwise it answers
/// `stale_base` and the agent sends the whole inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryDelta {
    /// The version the patch applies to.
    pub base: u64,
    /// The version the patch produces.
    pub version: u64,
    /// The changes.
    pub patch: json_patch::Patch,
    /// When the new inventory was collected (RFC 3339, agent clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<String>,
}

/// Run one capability with arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityCall {
    /// Capability name, as announced in `Register`.
    pub capability: String,
    /// Arguments: a map from argument name to value.
    #[serde(default)]
    pub args: serde_json::Value,
}

/// Progress of a running call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallProgress {
    /// What is happening now, for the operator.
    pub message: String,
    /// Completion in percent, when known.
    #[serde(default)]
    pub percent: Option<f32>,
    /// Set when the report marks a step of the call's life (accepted, started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<CallStage>,
}

/// Where a call is on the agent, as its progress reports say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStage {
    /// The agent accepted the call (it is new to it and it offers the capability).
    Received,
    /// The call started (after the exclusive lock, when it needs it).
    Running,
}

/// Which output stream of a call bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A chunk of a running call's output; chunks of one stream arrive in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOutput {
    /// The stream the bytes were written to.
    pub stream: OutputStream,
    /// Byte offset of `data` within the stream.
    pub offset: u64,
    /// The bytes (MessagePack `bin`, not an array of numbers).
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

/// Stop the call named by the envelope's `re`; it ends with outcome `cancelled`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelCall {}

/// The final outcome of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    /// Success with output, or failure with the error chain.
    pub outcome: CallOutcome,
    /// The structured output of a call that did not succeed (for `run`: exit code, streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// The capability finished; its output.
    Succeeded(serde_json::Value),
    /// The capability failed.
    Failed(ErrorReport),
    /// The call ran out of time and was stopped.
    TimedOut(ErrorReport),
    /// The call was stopped by a `CancelCall`.
    Cancelled(ErrorReport),
}

/// A refusal: what went wrong and a code the peer can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded.
    Malformed,
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion,
    /// The capability name is not offered by this agent.
    UnknownCapability,
    /// The arguments do not fit the capability.
    BadArguments,
    /// The sender must register first.
    NotRegistered,
    /// The message type is not valid in this direction.
    UnexpectedMessage,
    /// The receiver failed while handling a valid request.
    Internal,
    /// An inventory delta names a base version the controller does not have.
    StaleBase,
    /// This agent process already ran (or is running) a call with this id; it never runs twice.
    DuplicateCall,
    /// `CancelCall` names a call this agent is not running.
    UnknownCall,
    /// The controller has not admitted this agent yet (its enrollment policy is `approve`):
    /// the agent ends the session and registers again later, with backoff.
    EnrollmentPending,
    /// A code from a newer peer.
    #[serde(other)]
    Other,
}

/// `Vec<u8>` as MessagePack `bin` (one value, not one per byte); reads arrays of numbers too.
mod bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The size hint comes from the peer: cap what it may make us reserve.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}
