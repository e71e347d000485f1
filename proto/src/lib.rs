//! Quicksilver's wire protocol, shared by the agent and the controller.
//!
//! Principal types:
//! - [`Envelope`]: one ZeroMQ frame, `{v, id, re, body}`, MessagePack with named fields;
//! - [`Body`]: the messages (register, heartbeat, inventory update, capability calls …);
//! - [`codec::decode`] / [`codec::encode`]: size-limited, version-checked, panic-free codec;
//! - [`MercuryId`]: the stable server identity and its derivation rules;
//! - [`inventory`]: the typed inventory the inspectors produce.
//!
//! ```
//! use qs_proto::{codec, Body, Envelope, Heartbeat, MessageId};
//! let frame = codec::encode(&Envelope::new(MessageId(7), Body::Heartbeat(Heartbeat::default()))).unwrap();
//! let back = codec::decode(&frame, codec::DEFAULT_MAX_FRAME).unwrap();
//! assert_eq!(back.id, MessageId(7));
//! ```

pub mod capability;
pub mod codec;
pub mod delta;
pub mod envelope;
pub mod error_report;
pub mod inventory;
pub mod mercury_id;
pub mod message;

pub use capability::{check_args, ArgError, ArgInfo, CapabilityInfo};
pub use envelope::{Envelope, MessageId, PROTOCOL_VERSION};
pub use error_report::ErrorReport;
pub use mercury_id::MercuryId;
pub use message::{
    Body, CallFinished, CallOutcome, CallOutput, CallProgress, CallRecord, CallResult, CallStage,
    CancelCall, CapabilityCall, ErrorBody, ErrorCode, Heartbeat, InventoryDelta, InventoryUpdate,
    OutputStream, Register, Registered,
};
