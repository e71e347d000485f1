//! Security of the agent session: a Noise `IK` handshake (the `snow` crate) and the chunked
//! transport messages that carry every envelope afterwards.
//!
//! The agent (initiator) knows the controller's long-term public key in advance and proves its
//! own key in the first message; the controller (responder) answers with the second, after
//! which both sides hold a [`Session`]. Each side's outgoing half is a [`Sealer`], its incoming
//! half an [`Opener`]; they keep their own nonce, so a reading task and a writing task need no
//! shared lock.
//!
//! One sealed message (one ZMTP message on the wire) is a sequence of chunks, each a 2-byte
//! big-endian length and one Noise transport message of at most 65,535 bytes. Every chunk's
//! plaintext ends with a flag byte (`0`: more chunks follow, `1`: last), so a message cut
//! short, reordered, replayed or extended fails authentication or framing instead of being
//! delivered shorter. Reassembly stops at the caller's limit.
//!
//! No I/O beyond [`keyfile`], no async: both the controller and the agent link it.

pub mod keyfile;

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use snow::{Builder, HandshakeState};

/// The Noise protocol every agent session speaks. AES-256-GCM rather than ChaChaPoly: with
/// ring's AES-NI/VAES code it seals and opens about four times faster on the x86-64 servers
/// the controller and agents run on (`cargo bench -p qs-noise`).
pub const PATTERN: &str = "Noise_IK_25519_AESGCM_BLAKE2s";
/// Bound into the handshake hash: a session of another protocol (or version) cannot complete.
const PROLOGUE: &[u8] = b"quicksilver agent session 1";
/// Largest Noise message.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// Authentication tag of every Noise message.
const TAG: usize = 16;
/// Bytes of a chunk header on the wire (the length prefix).
const CHUNK_HEADER: usize = 2;
/// Plaintext bytes one chunk carries besides its flag byte.
pub const CHUNK_PAYLOAD: usize = MAX_NOISE_MESSAGE - TAG - 1;
/// Length of the agent's first handshake message (no payload): ephemeral key, encrypted static
/// key with its tag, and the empty payload's tag.
pub const FIRST_MESSAGE_LEN: usize = 32 + 32 + TAG + TAG;
/// Length of the controller's reply (no payload): ephemeral key and the empty payload's tag.
pub const REPLY_LEN: usize = 32 + TAG;
/// Largest payload the agent's first message may carry (an enrollment token): it is encrypted
/// to the controller's key and bound to the agent's, so it never travels in an envelope.
pub const MAX_FIRST_PAYLOAD: usize = 256;
/// Largest first message a controller reads.
pub const MAX_FIRST_MESSAGE_LEN: usize = FIRST_MESSAGE_LEN + MAX_FIRST_PAYLOAD;
const KEY_LEN: usize = 32;
const LAST: u8 = 1;
const MORE: u8 = 0;

/// Why a handshake or a transport message failed.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// A key is not 32 bytes of base64.
    #[error("not a Curve25519 key (32 bytes, base64)")]
    BadKey,
    /// The handshake message was refused: wrong keys, tampered, or not Noise at all.
    #[error("Noise handshake failed: {0}")]
    Handshake(snow::Error),
    /// A chunk did not authenticate (tampered, replayed, reordered, or another session's).
    #[error("transport message did not authenticate")]
    Tampered,
    /// The message ended inside a chunk or before its last chunk.
    #[error("transport message truncated")]
    Truncated,
    /// Bytes followed the last chunk, or a chunk's flag byte was neither 0 nor 1.
    #[error("transport message framing is invalid")]
    BadFraming,
    /// The reassembled plaintext would exceed the receiver's limit.
    #[error("transport message exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Encryption failed (a nonce ran out: 2^64 messages).
    #[error("transport message could not be sealed: {0}")]
    Seal(String),
}

/// A Curve25519 public key; base64 in text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, NoiseError> {
        bytes.try_into().map(Self).map_err(|_| NoiseError::BadKey)
    }
}

impl FromStr for PublicKey {
    type Err = NoiseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| NoiseError::BadKey)?;
        Self::from_slice(&bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A long-term or per-boot key pair. `Debug` shows the public key only.
#[derive(Clone)]
pub struct KeyPair {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn builder() -> Builder<'static> {
    builder_for(PATTERN)
}

/// A builder for protocol `name` (a constant: this crate's tests parse every one used).
fn builder_for(name: &str) -> Builder<'static> {
    #[allow(clippy::expect_used)]
    Builder::new(name.parse().expect("a valid Noise protocol name"))
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, NoiseError> {
        let pair = builder()
            .generate_keypair()
            .map_err(NoiseError::Handshake)?;
        Ok(Self {
            secret: pair
                .private
                .as_slice()
                .try_into()
                .map_err(|_| NoiseError::BadKey)?,
            public: PublicKey::from_slice(&pair.public)?,
        })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Whether `public` is the public half of `secret`: a handshake between them completes.
    fn from_parts(secret: [u8; KEY_LEN], public: PublicKey) -> Result<Self, NoiseError> {
        let pair = Self { secret, public };
        let probe = KeyPair::generate()?;
        let (initiator, first) = Initiator::new(&probe, &public)?;
        let (reply, _) = respond(&pair, &first)?;
        initiator.finish(&reply)?;
        Ok(pair)
    }

    fn secret_base64(&self) -> String {
        BASE64.encode(self.secret)
    }
}

/// The agent's side of a handshake in progress.
pub struct Initiator {
    state: HandshakeState,
    protocol: String,
}

impl Initiator {
    /// Starts a handshake as `local` towards the controller known by `server`; returns the
    /// first message to send.
    pub fn new(local: &KeyPair, server: &PublicKey) -> Result<(Self, Vec<u8>), NoiseError> {
        Self::with_payload(local, server, &[])
    }

    /// As [`Initiator::new`], carrying `payload` (at most [`MAX_FIRST_PAYLOAD`] bytes, e.g. a
    /// one-time enrollment token) encrypted to the controller's key inside the first message.
    pub fn with_payload(
        local: &KeyPair,
        server: &PublicKey,
        payload: &[u8],
    ) -> Result<(Self, Vec<u8>), NoiseError> {
        if payload.len() > MAX_FIRST_PAYLOAD {
            return Err(NoiseError::BadFraming);
        }
        let state = builder()
            .local_private_key(&local.secret)
            .and_then(|b| b.remote_public_key(server.as_bytes()))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(Builder::build_initiator)
            .map_err(NoiseError::Handshake)?;
        Self::first(state, payload, PATTERN)
    }

    fn first(
        mut state: HandshakeState,
        payload: &[u8],
        protocol: &str,
    ) -> Result<(Self, Vec<u8>), NoiseError> {
        let mut first = vec![0u8; FIRST_MESSAGE_LEN + payload.len()];
        let n = state
            .write_message(payload, &mut first)
            .map_err(NoiseError::Handshake)?;
        first.truncate(n);
        Ok((
            Self {
                state,
                protocol: protocol.to_owned(),
            },
            first,
        ))
    }

    /// Reads the controller's reply: the session, or an error when the reply was not made
    /// with the controller's key (another controller, or a tampered reply).
    pub fn finish(mut self, reply: &[u8]) -> Result<Session, NoiseError> {
        if reply.len() > MAX_NOISE_MESSAGE {
            return Err(NoiseError::BadFraming);
        }
        let mut payload = vec![0u8; reply.len()];
        self.state
            .read_message(reply, &mut payload)
            .map_err(NoiseError::Handshake)?;
        Session::from_handshake(self.state, &self.protocol)
    }
}

/// The controller's side: reads the agent's first message with `local` (the controller's key)
/// and returns the reply to send and the session. The agent's key is
/// [`Session::remote_key`], what its first message carried [`Session::first_payload`].
pub fn respond(local: &KeyPair, first: &[u8]) -> Result<(Vec<u8>, Session), NoiseError> {
    let state = builder()
        .local_private_key(&local.secret)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(Builder::build_responder)
        .map_err(NoiseError::Handshake)?;
    respond_with(state, first, &[], PATTERN)
}

fn respond_with(
    mut state: HandshakeState,
    first: &[u8],
    payload: &[u8],
    protocol: &str,
) -> Result<(Vec<u8>, Session), NoiseError> {
    if first.len() > MAX_NOISE_MESSAGE {
        return Err(NoiseError::BadFraming);
    }
    let mut received = vec![0u8; first.len()];
    let n = state
        .read_message(first, &mut received)
        .map_err(NoiseError::Handshake)?;
    received.truncate(n);
    let mut reply = vec![0u8; REPLY_LEN + payload.len()];
    let n = state
        .write_message(payload, &mut reply)
        .map_err(NoiseError::Handshake)?;
    reply.truncate(n);
    let mut session = Session::from_handshake(state, protocol)?;
    session.payload = received;
    Ok((reply, session))
}

/// One direction's cipher of a session: the Noise transport `CipherState` (k, n) with ring's
/// AEAD sealing and opening in place (snow's transport copies every message through a second
/// buffer; this is the hot path of every envelope).
struct Cipher {
    key: LessSafeKey,
    /// Noise's AESGCM nonce is the counter big-endian, ChaChaPoly's little-endian.
    big_endian: bool,
}

impl Cipher {
    /// The cipher of `protocol` (a Noise protocol name) keyed with `key` from the split.
    fn new(protocol: &str, key: &[u8; KEY_LEN]) -> Result<Self, NoiseError> {
        let (algorithm, big_endian) = if protocol.contains("_AESGCM_") {
            (&AES_256_GCM, true)
        } else {
            (&CHACHA20_POLY1305, false)
        };
        let key = UnboundKey::new(algorithm, key).map_err(|_| NoiseError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            big_endian,
        })
    }

    fn nonce(&self, n: u64) -> Result<Nonce, NoiseError> {
        // 2^64 - 1 is reserved by the specification.
        if n == u64::MAX {
            return Err(NoiseError::Seal("nonces exhausted".into()));
        }
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&if self.big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        });
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Encrypts `data` in place and returns its tag.
    fn seal(&self, n: u64, data: &mut [u8]) -> Result<[u8; TAG], NoiseError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(n)?, Aad::empty(), data)
            .map_err(|_| NoiseError::Seal("encryption failed".into()))?;
        let mut out = [0u8; TAG];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `data` (ciphertext and tag) in place; returns the plaintext's length.
    fn open(&self, n: u64, data: &mut [u8]) -> Result<usize, NoiseError> {
        self.key
            .open_in_place(self.nonce(n)?, Aad::empty(), data)
            .map(|plain| plain.len())
            .map_err(|_| NoiseError::Tampered)
    }
}

/// A completed handshake.
pub struct Session {
    send: Cipher,
    recv: Cipher,
    remote: PublicKey,
    payload: Vec<u8>,
}

impl Session {
    fn from_handshake(mut state: HandshakeState, protocol: &str) -> Result<Self, NoiseError> {
        let remote = state
            .get_remote_static()
            .ok_or(NoiseError::BadKey)
            .and_then(PublicKey::from_slice)?;
        if !state.is_handshake_finished() {
            return Err(NoiseError::BadFraming);
        }
        // The split: the initiator sends with the first key, the responder with the second.
        let (first, second) = state.dangerously_get_raw_split();
        let (send, recv) = if state.is_initiator() {
            (first, second)
        } else {
            (second, first)
        };
        Ok(Self {
            send: Cipher::new(protocol, &send)?,
            recv: Cipher::new(protocol, &recv)?,
            remote,
            payload: Vec::new(),
        })
    }

    /// The peer's long-term key, proven during the handshake.
    pub fn remote_key(&self) -> &PublicKey {
        &self.remote
    }

    /// What the agent's first message carried (the controller's side; empty on the agent's).
    pub fn first_payload(&self) -> &[u8] {
        &self.payload
    }

    /// The outgoing and incoming halves.
    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer {
                cipher: self.send,
                nonce: 0,
            },
            Opener {
                cipher: self.recv,
                nonce: 0,
            },
        )
    }
}

/// Bytes on the wire for a message of `plain` bytes.
pub fn sealed_len(plain: usize) -> usize {
    let chunks = plain.div_ceil(CHUNK_PAYLOAD).max(1);
    plain + chunks * (CHUNK_HEADER + 1 + TAG)
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// Seals outgoing messages, in order.
pub struct Sealer {
    cipher: Cipher,
    nonce: u64,
}

impl Sealer {
    /// One message, chunked as the module describes: each chunk is written once into the
    /// output (its plaintext, then its flag) and encrypted there.
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut out = Vec::with_capacity(sealed_len(plain.len()));
        let pieces = plain.len().div_ceil(CHUNK_PAYLOAD).max(1);
        for i in 0..pieces {
            let piece = plain
                .get(i * CHUNK_PAYLOAD..((i + 1) * CHUNK_PAYLOAD).min(plain.len()))
                .unwrap_or_default();
            let len = piece.len() + 1 + TAG;
            // len <= MAX_NOISE_MESSAGE: a piece is at most CHUNK_PAYLOAD bytes.
            out.extend_from_slice(&(len as u16).to_be_bytes());
            let body = out.len();
            out.extend_from_slice(piece);
            // Last, so that the receiver decrypts every chunk straight into the message.
            out.push(if i + 1 < pieces { MORE } else { LAST });
            let tag = self.cipher.seal(self.nonce, &mut out[body..])?;
            self.nonce += 1;
            out.extend_from_slice(&tag);
        }
        Ok(out)
    }
}

/// Opens incoming messages, in order.
pub struct Opener {
    cipher: Cipher,
    nonce: u64,
}

impl Opener {
    /// Accounts for a message of `sealed_bytes` that was skipped unread (over the size limit),
    /// so the messages after it still open: every chunk but the last is full-size.
    pub fn skip(&mut self, sealed_bytes: u64) {
        let full = (CHUNK_HEADER + MAX_NOISE_MESSAGE) as u64;
        self.nonce += sealed_bytes.div_ceil(full).max(1);
    }

    /// One message; its plaintext is at most `limit` bytes, checked before each chunk is kept.
    pub fn open(&mut self, sealed: &[u8], limit: usize) -> Result<Vec<u8>, NoiseError> {
        let mut plain = Vec::with_capacity(sealed.len().min(limit.saturating_add(1)));
        let mut rest = sealed;
        loop {
            let (len, tail) = match rest {
                [a, b, tail @ ..] => (u16::from_be_bytes([*a, *b]) as usize, tail),
                _ => return Err(NoiseError::Truncated),
            };
            let Some(message) = tail.get(..len) else {
                return Err(NoiseError::Truncated);
            };
            // Every chunk holds at least its flag byte.
            let Some(data) = len.checked_sub(TAG + 1) else {
                return Err(NoiseError::BadFraming);
            };
            let start = plain.len();
            if start + data > limit {
                return Err(NoiseError::TooLarge { limit });
            }
            plain.extend_from_slice(message);
            let n = self.cipher.open(self.nonce, &mut plain[start..])?;
            self.nonce += 1;
            let flag = plain[start + n - 1];
            plain.truncate(start + n - 1);
            rest = &tail[len..];
            match flag {
                LAST if rest.is_empty() => return Ok(plain),
                MORE => {}
                _ => return Err(NoiseError::BadFraming),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    fn pair() -> (Session, Session) {
        let server = KeyPair::generate().unwrap();
        let agent = KeyPair::generate().unwrap();
        let (initiator, first) = Initiator::new(&agent, server.public()).unwrap();
        assert_eq!(first.len(), FIRST_MESSAGE_LEN);
        let (reply, controller) = respond(&server, &first).unwrap();
        assert_eq!(reply.len(), REPLY_LEN);
        assert_eq!(controller.remote_key(), agent.public());
        let agent_session = initiator.finish(&reply).unwrap();
        assert_eq!(agent_session.remote_key(), server.public());
        (agent_session, controller)
    }

    #[test]
    fn the_first_message_carries_a_bounded_payload_to_the_controller_only() {
        let server = KeyPair::generate().unwrap();
        let agent = KeyPair::generate().unwrap();
        let token = b"qsb_0123456789ab_secret";
        let (initiator, first) = Initiator::with_payload(&agent, server.public(), token).unwrap();
        assert!(first.len() <= MAX_FIRST_MESSAGE_LEN);
        // Encrypted: the token's bytes are not on the wire.
        assert!(!first.windows(token.len()).any(|w| w == token));
        let (reply, controller) = respond(&server, &first).unwrap();
        assert_eq!(controller.first_payload(), token);
        assert!(initiator.finish(&reply).unwrap().first_payload().is_empty());
        // Another controller's key cannot read it.
        let other = KeyPair::generate().unwrap();
        assert!(respond(&other, &first).is_err());
        let long = vec![7u8; MAX_FIRST_PAYLOAD + 1];
        assert!(Initiator::with_payload(&agent, server.public(), &long).is_err());
    }

    /// The Noise specification's test vectors (cacophony, as shipped with snow 0.10.0 in
    /// tests/vectors/cacophony.txt) for this protocol and for the ChaChaPoly one it replaced:
    /// our construction of both sides, with the vector's keys, prologue and ephemerals, must
    /// produce its bytes exactly.
    #[test]
    fn the_published_test_vectors_are_reproduced() {
        let aes = include_str!("../vectors/Noise_IK_25519_AESGCM_BLAKE2s.json");
        let chacha = include_str!("../vectors/Noise_IK_25519_ChaChaPoly_BLAKE2s.json");
        assert!(aes.contains(PATTERN));
        for vector in [aes, chacha] {
            reproduce(serde_json::from_str(vector).unwrap());
        }
    }

    fn reproduce(v: Value) {
        let builder = || builder_for(v["protocol_name"].as_str().unwrap());
        let h = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
        let (prologue, is, ie, irs) = (
            h("init_prologue"),
            h("init_static"),
            h("init_ephemeral"),
            h("init_remote_static"),
        );
        let (rs, re) = (h("resp_static"), h("resp_ephemeral"));
        let messages = v["messages"].as_array().unwrap();
        let m = |i: usize, k: &str| hex::decode(messages[i][k].as_str().unwrap()).unwrap();
        let init = builder()
            .local_private_key(&is)
            .unwrap()
            .remote_public_key(&irs)
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&ie)
            .build_initiator()
            .unwrap();
        let resp = builder()
            .local_private_key(&rs)
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&re)
            .build_responder()
            .unwrap();
        let protocol = v["protocol_name"].as_str().unwrap();
        let (initiator, first) = Initiator::first(init, &m(0, "payload"), protocol).unwrap();
        assert_eq!(first, m(0, "ciphertext"));
        let (reply, resp) = respond_with(resp, &first, &m(1, "payload"), protocol).unwrap();
        assert_eq!(reply, m(1, "ciphertext"));
        let init = initiator.finish(&reply).unwrap();
        // Transport messages alternate initiator, responder, starting with nonce 0 each; both
        // directions are checked with our ciphers (the receiving side opens what was sent).
        for (i, msg) in messages.iter().enumerate().skip(2) {
            let (sender, nonce) = if i % 2 == 0 {
                (&init, (i as u64 - 2) / 2)
            } else {
                (&resp, (i as u64 - 3) / 2)
            };
            let receiver = if i % 2 == 0 { &resp } else { &init };
            let payload = hex::decode(msg["payload"].as_str().unwrap()).unwrap();
            let mut out = payload.clone();
            let tag = sender.send.seal(nonce, &mut out).unwrap();
            out.extend_from_slice(&tag);
            assert_eq!(out, m(i, "ciphertext"), "message {i}");
            let n = receiver.recv.open(nonce, &mut out).unwrap();
            assert_eq!(out[..n], payload[..], "message {i}");
        }
    }

    #[test]
    fn messages_of_every_size_round_trip_in_order() {
        let (agent, controller) = pair();
        let (mut seal, _) = agent.split();
        let (_, mut open) = controller.split();
        for len in [
            0,
            1,
            CHUNK_PAYLOAD - 1,
            CHUNK_PAYLOAD,
            CHUNK_PAYLOAD + 1,
            3 * CHUNK_PAYLOAD + 7,
            1 << 20,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = seal.seal(&plain).unwrap();
            assert_eq!(sealed.len(), sealed_len(len), "len {len}");
            assert_eq!(open.open(&sealed, 1 << 20).unwrap(), plain, "len {len}");
        }
    }

    #[test]
    fn a_wrong_controller_key_fails_the_handshake_on_both_sides() {
        let server = KeyPair::generate().unwrap();
        let impostor = KeyPair::generate().unwrap();
        let agent = KeyPair::generate().unwrap();
        // The agent pinned `server`; `impostor` answers.
        let (initiator, first) = Initiator::new(&agent, server.public()).unwrap();
        assert!(matches!(
            respond(&impostor, &first),
            Err(NoiseError::Handshake(_))
        ));
        // A reply made by another controller for another first message is refused too.
        let (_, other_first) = Initiator::new(&agent, impostor.public()).unwrap();
        let (impostor_reply, _) = respond(&impostor, &other_first).unwrap();
        assert!(initiator.finish(&impostor_reply).is_err());
    }

    #[test]
    fn a_replayed_handshake_cannot_read_or_write_the_session() {
        let server = KeyPair::generate().unwrap();
        let agent = KeyPair::generate().unwrap();
        let (initiator, first) = Initiator::new(&agent, server.public()).unwrap();
        let (reply, controller) = respond(&server, &first).unwrap();
        let (mut agent_seal, _) = initiator.finish(&reply).unwrap().split();
        let (_, mut controller_open) = controller.split();
        let recorded = agent_seal.seal(b"register").unwrap();
        assert_eq!(controller_open.open(&recorded, 1024).unwrap(), b"register");
        // An attacker replays the first message and the recorded transport message: the
        // controller accepts the handshake (IK's first message is replayable) but its fresh
        // ephemeral key makes new session keys, so the recorded traffic does not open.
        let (_, replayed) = respond(&server, &first).unwrap();
        let (_, mut replayed_open) = replayed.split();
        assert!(matches!(
            replayed_open.open(&recorded, 1024),
            Err(NoiseError::Tampered)
        ));
    }

    #[test]
    fn tampered_truncated_replayed_or_oversize_messages_are_refused() {
        let (agent, controller) = pair();
        let (mut seal, _) = agent.split();
        let (_, mut open) = controller.split();
        let plain = vec![7u8; 2 * CHUNK_PAYLOAD + 5];
        let sealed = seal.seal(&plain).unwrap();
        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        assert!(matches!(
            open.open(&flipped, 1 << 20),
            Err(NoiseError::Tampered)
        ));
        let (agent, controller) = pair();
        let (mut seal, _) = agent.split();
        let (_, mut open) = controller.split();
        let sealed = seal.seal(&plain).unwrap();
        assert!(matches!(
            open.open(&sealed[..sealed.len() - 1], 1 << 20),
            Err(NoiseError::Truncated)
        ));
        // Dropping the last chunk entirely: the message ends before a chunk flagged last.
        let (agent, controller) = pair();
        let (mut seal, _) = agent.split();
        let (_, mut open) = controller.split();
        let sealed = seal.seal(&plain).unwrap();
        let two_chunks = 2 * (CHUNK_HEADER + MAX_NOISE_MESSAGE);
        assert!(matches!(
            open.open(&sealed[..two_chunks], 1 << 20),
            Err(NoiseError::Truncated)
        ));
        // A replayed message: its nonces are spent.
        let (agent, controller) = pair();
        let (mut seal, _) = agent.split();
        let (_, mut open) = controller.split();
        let sealed = seal.seal(b"once").unwrap();
        open.open(&sealed, 64).unwrap();
        assert!(matches!(open.open(&sealed, 64), Err(NoiseError::Tampered)));
        // A message skipped unread does not desynchronise the next one.
        let skipped = seal.seal(&plain).unwrap();
        open.skip(skipped.len() as u64);
        let next = seal.seal(b"next").unwrap();
        assert_eq!(open.open(&next, 64).unwrap(), b"next");
        // Over the receiver's limit.
        let sealed = seal.seal(&plain).unwrap();
        assert!(matches!(
            open.open(&sealed, CHUNK_PAYLOAD),
            Err(NoiseError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_plain_peer_is_not_a_handshake() {
        let server = KeyPair::generate().unwrap();
        for junk in [
            &b""[..],
            b"\x83\xa1v\x01\xa2id\x01\xa4body\x81\xa9heartbeat\x80",
            &[0u8; 96],
        ] {
            assert!(respond(&server, junk).is_err());
        }
    }

    #[test]
    fn keys_print_as_base64_and_parse_back() {
        let pair = KeyPair::generate().unwrap();
        let text = pair.public().to_string();
        assert_eq!(text.parse::<PublicKey>().unwrap(), *pair.public());
        assert!("bm90IGEga2V5".parse::<PublicKey>().is_err());
        assert!(!format!("{pair:?}").contains(&pair.secret_base64()));
    }
}
