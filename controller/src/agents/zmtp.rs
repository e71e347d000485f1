//! The parts of ZMTP 3.0 (ZeroMQ's wire protocol, RFC 23) the controller speaks with agents.
//!
//! Agents use the `zeromq` crate's DEALER socket; the controller plays the ROUTER side itself
//! (see [`super::transport`]) so it parses every byte a peer sends exactly once, with limits,
//! and never lets a peer's announced length reserve memory. Only the NULL mechanism is
//! spoken: authentication and encryption come from a Noise session layered on top.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of the greeting each side sends first.
pub const GREETING_LEN: usize = 64;
/// Largest command frame accepted (READY with its properties is far smaller).
pub const MAX_COMMAND: u64 = 64 * 1024;

/// Why a ZMTP stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    /// The first 64 bytes are not a ZMTP 3 NULL-mechanism greeting.
    #[error("not a ZMTP 3 greeting with the NULL mechanism")]
    BadGreeting,
    /// A frame header has reserved flag bits set.
    #[error("frame flags {0:#04x} have reserved bits set")]
    BadFlags(u8),
    /// A command frame is larger than any valid command.
    #[error("command frame of {0} bytes is too large")]
    OversizeCommand(u64),
    /// A command frame is not well formed.
    #[error("malformed command frame")]
    BadCommand,
    /// Reading from the peer failed.
    #[error("connection i/o failed")]
    Io(#[from] std::io::Error),
}

/// The greeting this side sends: ZMTP 3.0, NULL mechanism, not the server of the mechanism.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Checks a peer's greeting: ZMTP 3 or later with the NULL mechanism.
pub fn check_greeting(g: &[u8; GREETING_LEN]) -> Result<(), ZmtpError> {
    let signature_ok = g[0] == 0xff && g[9] == 0x7f;
    let version_ok = g[10] >= 3;
    let mechanism = &g[12..32];
    let null_ok = mechanism.starts_with(b"NULL") && mechanism[4..].iter().all(|b| *b == 0);
    if signature_ok && version_ok && null_ok {
        Ok(())
    } else {
        Err(ZmtpError::BadGreeting)
    }
}

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flag bits (MORE, LONG, COMMAND).
    pub flags: u8,
    /// Body length announced by the peer (not yet trusted).
    pub len: u64,
}

impl Header {
    /// More frames of the same message follow.
    pub const MORE: u8 = 0x01;
    /// The length is 8 bytes instead of 1.
    pub const LONG: u8 = 0x02;
    /// A command frame, not a message frame.
    pub const COMMAND: u8 = 0x04;

    /// Whether more frames of this message follow.
    pub fn more(self) -> bool {
        self.flags & Self::MORE != 0
    }

    /// Whether this is a command frame.
    pub fn command(self) -> bool {
        self.flags & Self::COMMAND != 0
    }

    /// The header of a frame carrying `len` bytes (short form when it fits).
    pub fn for_body(base_flags: u8, len: usize) -> Self {
        let long = if len > 255 { Self::LONG } else { 0 };
        Self {
            flags: base_flags | long,
            len: len as u64,
        }
    }

    /// The header's bytes.
    pub fn encode(self, out: &mut Vec<u8>) {
        out.push(self.flags);
        if self.flags & Self::LONG != 0 {
            out.extend_from_slice(&self.len.to_be_bytes());
        } else {
            // Short frames announce their length in one byte; `for_body` keeps it below 256.
            out.push(self.len as u8);
        }
    }
}

/// Reads one frame header; `None` at a clean end of stream.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Header>, ZmtpError> {
    let flags = match r.read_u8().await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if flags & !(Header::MORE | Header::LONG | Header::COMMAND) != 0 {
        return Err(ZmtpError::BadFlags(flags));
    }
    let len = if flags & Header::LONG != 0 {
        r.read_u64().await?
    } else {
        u64::from(r.read_u8().await?)
    };
    Ok(Some(Header { flags, len }))
}

/// A parsed command frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command name (`READY`, `PING` …).
    pub name: Vec<u8>,
    /// The `Identity` property of a READY, when present and non-empty.
    pub identity: Option<Vec<u8>>,
    /// The `Socket-Type` property of a READY.
    pub socket_type: Option<Vec<u8>>,
}

impl Command {
    /// Whether this is the READY command that ends the handshake.
    pub fn is_ready(&self) -> bool {
        self.name == b"READY"
    }
}

/// Parses a command frame body (name, then for READY its properties).
pub fn parse_command(body: &[u8]) -> Result<Command, ZmtpError> {
    let (&name_len, rest) = body.split_first().ok_or(ZmtpError::BadCommand)?;
    let name = rest
        .get(..usize::from(name_len))
        .ok_or(ZmtpError::BadCommand)?
        .to_vec();
    let mut command = Command {
        name,
        identity: None,
        socket_type: None,
    };
    if !command.is_ready() {
        return Ok(command);
    }
    let mut props = &rest[usize::from(name_len)..];
    while let Some((&key_len, rest)) = props.split_first() {
        let key = rest
            .get(..usize::from(key_len))
            .ok_or(ZmtpError::BadCommand)?;
        let rest = &rest[usize::from(key_len)..];
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(ZmtpError::BadCommand)?;
        let value_len = u32::from_be_bytes(len_bytes) as usize;
        let value = rest
            .get(4..4usize.saturating_add(value_len))
            .ok_or(ZmtpError::BadCommand)?;
        if key.eq_ignore_ascii_case(b"Identity") && !value.is_empty() {
            command.identity = Some(value.to_vec());
        } else if key.eq_ignore_ascii_case(b"Socket-Type") {
            command.socket_type = Some(value.to_vec());
        }
        props = &rest[4 + value_len..];
    }
    Ok(command)
}

/// The READY command frame (header included) this side sends as a ROUTER.
pub fn ready_frame() -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    let (key, value) = (b"Socket-Type".as_slice(), b"ROUTER".as_slice());
    body.push(key.len() as u8);
    body.extend_from_slice(key);
    body.extend_from_slice(&(value.len() as u32).to_be_bytes());
    body.extend_from_slice(value);
    let mut frame = Vec::with_capacity(body.len() + 9);
    Header::for_body(Header::COMMAND, body.len()).encode(&mut frame);
    frame.extend(body);
    frame
}

/// One single-frame message (header and body), as a DEALER expects from its ROUTER.
pub fn message_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 9);
    Header::for_body(0, payload.len()).encode(&mut frame);
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn our_greeting_passes_our_check() {
        check_greeting(&greeting()).unwrap();
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        assert!(check_greeting(&curve).is_err());
        let mut v2 = greeting();
        v2[10] = 2;
        assert!(check_greeting(&v2).is_err());
    }

    #[test]
    fn ready_round_trips_through_the_parser() {
        let frame = ready_frame();
        assert_eq!(frame[0], Header::COMMAND);
        let cmd = parse_command(&frame[2..]).unwrap();
        assert!(cmd.is_ready());
        assert_eq!(cmd.socket_type.as_deref(), Some(b"ROUTER".as_slice()));
        assert_eq!(cmd.identity, None);
    }

    #[test]
    fn truncated_properties_are_refused() {
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        body.extend_from_slice(&[8, b'I', b'd']);
        assert!(parse_command(&body).is_err());
        assert_eq!(
            parse_command(&[4, b'P', b'I', b'N', b'G']).unwrap().name,
            b"PING"
        );
        assert!(parse_command(&[]).is_err());
    }

    #[tokio::test]
    async fn headers_round_trip_in_short_and_long_form() {
        for len in [0usize, 1, 255, 256, 70_000] {
            let frame = message_frame(&vec![7u8; len]);
            let mut r = frame.as_slice();
            let h = read_header(&mut r).await.unwrap().unwrap();
            assert_eq!(h.len as usize, len);
            assert!(!h.more() && !h.command());
            assert_eq!(r.len(), len);
        }
        let mut bad: &[u8] = &[0x80, 0];
        assert!(matches!(
            read_header(&mut bad).await,
            Err(ZmtpError::BadFlags(0x80))
        ));
    }

    proptest! {
        #[test]
        fn command_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_command(&body);
        }
    }
}
