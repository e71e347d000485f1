//! The envelope every ZeroMQ frame carries.

use serde::{Deserialize, Serialize};

use crate::message::Body;

/// The protocol version this build speaks; a breaking change bumps it (see `compat` notes in docs).
pub const PROTOCOL_VERSION: u16 = 1;

/// Identifies a message within one sender's stream, so a reply can name what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub u64);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One ZeroMQ frame: protocol version, message id, the id it answers (if any), one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version of the sender.
    pub v: u16,
    /// This message's id, unique per sender and connection.
    pub id: MessageId,
    /// The id of the request this message answers; `None` for requests and notices.
    #[serde(default)]
    pub re: Option<MessageId>,
    /// The message itself.
    pub body: Body,
}

impl Envelope {
    /// A new request or notice at the current protocol version.
    pub fn new(id: MessageId, body: Body) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            re: None,
            body,
        }
    }

    /// A reply to the message `re`.
    pub fn reply(id: MessageId, re: MessageId, body: Body) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            re: Some(re),
            body,
        }
    }
}
