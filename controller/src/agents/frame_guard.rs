//! A ZMTP-aware guard between agents' TCP connections and the ROUTER socket.
//!
//! The `zeromq` crate trusts the frame length a peer announces: it reserves that many bytes
//! before reading them and buffers whole multipart messages, with no size limit. One hostile
//! 8-byte header could make it allocate a terabyte and abort the controller. So the public agent
//! port is this guard: it parses the client's ZMTP stream (greeting, commands, frame headers)
//! without buffering message bodies, drops oversize messages before anything allocates for
//! them, closes connections that break the framing rules, and forwards everything else byte for
//! byte to the ROUTER socket listening on a private Unix socket. It also learns each peer's
//! routing id from its READY command, so the controller can report agents' real addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::counters::Counters;

/// Largest ZMTP command frame accepted (READY with its properties is far smaller).
const MAX_COMMAND: u64 = 64 * 1024;
/// Most frames one multipart message may have; our agents send one.
const MAX_FRAMES_PER_MESSAGE: usize = 16;

/// Limits the guard enforces.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Largest message (sum of its frames) forwarded; larger ones are dropped unread.
    pub max_frame: usize,
    /// Time a new connection gets to send its greeting and READY command.
    pub handshake_timeout: Duration,
}

/// Why the guard closed a connection.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The first 64 bytes are not a ZMTP 3 NULL-mechanism greeting.
    #[error("not a ZMTP 3 greeting with the NULL mechanism")]
    BadGreeting,
    /// The connection ended or failed before the greeting and READY were complete.
    #[error("connection ended during the handshake")]
    IncompleteHandshake(#[source] std::io::Error),
    /// The greeting or READY did not arrive in time.
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    /// A frame header has reserved flag bits set.
    #[error("frame flags {0:#04x} have reserved bits set")]
    BadFlags(u8),
    /// A command frame is larger than any valid command.
    #[error("command frame of {0} bytes is too large")]
    OversizeCommand(u64),
    /// A command frame is not a well-formed READY.
    #[error("malformed command frame")]
    BadCommand,
    /// A message frame arrived before the READY command.
    #[error("message before READY")]
    MessageBeforeReady,
    /// A multipart message grew past the limits after some of it was forwarded.
    #[error("multipart message exceeds {limit} bytes or {MAX_FRAMES_PER_MESSAGE} frames")]
    OversizeMultipart {
        /// The configured limit.
        limit: usize,
    },
    /// Reading from or writing to either side failed.
    #[error("connection i/o failed")]
    Io(#[from] std::io::Error),
}

/// Routing ids learned from READY commands, mapped to the TCP peer that sent them.
#[derive(Debug, Default)]
pub struct PeerAddresses {
    by_identity: Mutex<HashMap<Vec<u8>, SocketAddr>>,
}

impl PeerAddresses {
    /// The address of the connection that announced `identity`, if it is still connected.
    pub fn get(&self, identity: &[u8]) -> Option<SocketAddr> {
        self.lock().get(identity).copied()
    }

    fn insert(&self, identity: Vec<u8>, addr: SocketAddr) {
        self.lock().insert(identity, addr);
    }

    fn remove(&self, identity: &[u8], addr: SocketAddr) {
        let mut map = self.lock();
        // A reconnect may already have replaced this entry; only remove our own.
        if map.get(identity) == Some(&addr) {
            map.remove(identity);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, SocketAddr>> {
        // The map stays consistent even if a holder panicked: every update is one insert/remove.
        self.by_identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The public agent endpoint: accepts TCP, checks ZMTP framing, forwards to the ROUTER.
pub struct FrameGuard {
    listener: TcpListener,
    upstream: PathBuf,
    config: GuardConfig,
    counters: Arc<Counters>,
    peers: Arc<PeerAddresses>,
}

impl FrameGuard {
    /// A guard accepting on `listener` and forwarding to the ROUTER's Unix socket `upstream`.
    pub fn new(
        listener: TcpListener,
        upstream: PathBuf,
        config: GuardConfig,
        counters: Arc<Counters>,
        peers: Arc<PeerAddresses>,
    ) -> Self {
        Self {
            listener,
            upstream,
            config,
            counters,
            peers,
        }
    }

    /// Accepts connections until `shutdown` is cancelled, then closes them all.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        Counters::bump(&self.counters.connections);
                        let upstream = self.upstream.clone();
                        let config = self.config.clone();
                        let counters = self.counters.clone();
                        let peers = self.peers.clone();
                        connections.spawn(async move {
                            serve_connection(stream, peer, upstream, config, counters, peers).await;
                        });
                    }
                    Err(error) => {
                        // Running out of file descriptors must not stop the endpoint for good.
                        warn!(error = %error, "accept failed on the agent port");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        connections.shutdown().await;
    }
}

async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: PathBuf,
    config: GuardConfig,
    counters: Arc<Counters>,
    peers: Arc<PeerAddresses>,
) {
    let _ = client.set_nodelay(true);
    let upstream = match UnixStream::connect(&upstream).await {
        Ok(s) => s,
        Err(error) => {
            warn!(%peer, error = %error, path = %upstream.display(), "cannot reach the ROUTER socket");
            return;
        }
    };
    let (client_read, mut client_write) = client.into_split();
    let (mut upstream_read, upstream_write) = upstream.into_split();
    let mut identity = None;
    let outcome = tokio::select! {
        r = forward_client(client_read, upstream_write, peer, &config, &counters, &peers, &mut identity) => r,
        r = tokio::io::copy(&mut upstream_read, &mut client_write) => r.map(|_| ()).map_err(GuardError::from),
    };
    if let Some(id) = identity {
        peers.remove(&id, peer);
    }
    match outcome {
        Ok(()) => debug!(%peer, "agent connection closed"),
        Err(GuardError::Io(error)) => debug!(%peer, error = %error, "agent connection ended"),
        Err(error) => {
            Counters::bump(&counters.rejected_connections);
            warn!(%peer, error = %error, "agent connection rejected");
        }
    }
}

/// One ZMTP frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    flags: u8,
    len: u64,
}

impl Header {
    const MORE: u8 = 0x01;
    const LONG: u8 = 0x02;
    const COMMAND: u8 = 0x04;

    fn more(self) -> bool {
        self.flags & Self::MORE != 0
    }

    fn command(self) -> bool {
        self.flags & Self::COMMAND != 0
    }

    fn encode(self) -> Vec<u8> {
        if self.flags & Self::LONG != 0 {
            let mut out = vec![self.flags];
            out.extend_from_slice(&self.len.to_be_bytes());
            out
        } else {
            // Short frames announce their length in one byte, so `len` fits.
            vec![self.flags, self.len as u8]
        }
    }
}

async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Header>, GuardError> {
    let flags = match r.read_u8().await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if flags & !(Header::MORE | Header::LONG | Header::COMMAND) != 0 {
        return Err(GuardError::BadFlags(flags));
    }
    let len = if flags & Header::LONG != 0 {
        r.read_u64().await?
    } else {
        u64::from(r.read_u8().await?)
    };
    Ok(Some(Header { flags, len }))
}

fn check_greeting(g: &[u8; 64]) -> Result<(), GuardError> {
    let signature_ok = g[0] == 0xff && g[9] == 0x7f;
    let version_ok = g[10] >= 3;
    let mechanism = &g[12..32];
    let null_ok = mechanism.starts_with(b"NULL") && mechanism[4..].iter().all(|b| *b == 0);
    if signature_ok && version_ok && null_ok {
        Ok(())
    } else {
        Err(GuardError::BadGreeting)
    }
}

/// Reads the `Identity` property from a READY command body, if present.
fn ready_identity(body: &[u8]) -> Result<Option<Vec<u8>>, GuardError> {
    let (&name_len, rest) = body.split_first().ok_or(GuardError::BadCommand)?;
    let name = rest
        .get(..usize::from(name_len))
        .ok_or(GuardError::BadCommand)?;
    if name != b"READY" {
        return Ok(None);
    }
    let mut props = &rest[usize::from(name_len)..];
    let mut identity = None;
    while let Some((&key_len, rest)) = props.split_first() {
        let key = rest
            .get(..usize::from(key_len))
            .ok_or(GuardError::BadCommand)?;
        let rest = &rest[usize::from(key_len)..];
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(GuardError::BadCommand)?;
        let value_len = u32::from_be_bytes(len_bytes) as usize;
        let value = rest.get(4..4 + value_len).ok_or(GuardError::BadCommand)?;
        if key.eq_ignore_ascii_case(b"Identity") && !value.is_empty() {
            identity = Some(value.to_vec());
        }
        props = &rest[4 + value_len..];
    }
    Ok(identity)
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> Result<(), GuardError> {
    forward_exact(r, &mut tokio::io::sink(), len).await
}

async fn forward_exact<R, W>(r: &mut R, w: &mut W, len: u64) -> Result<(), GuardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(&mut r.take(len), w).await?;
    if copied < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

async fn handshake<R, W>(
    r: &mut R,
    w: &mut W,
    peer: SocketAddr,
    peers: &PeerAddresses,
    identity: &mut Option<Vec<u8>>,
) -> Result<(), GuardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 64];
    r.read_exact(&mut greeting).await?;
    check_greeting(&greeting)?;
    w.write_all(&greeting).await?;
    loop {
        let Some(header) = read_header(r).await? else {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        };
        if !header.command() {
            return Err(GuardError::MessageBeforeReady);
        }
        if header.len > MAX_COMMAND {
            return Err(GuardError::OversizeCommand(header.len));
        }
        // Bounded by MAX_COMMAND above.
        let mut body = vec![0u8; header.len as usize];
        r.read_exact(&mut body).await?;
        let is_ready = body.get(1..6) == Some(b"READY".as_slice());
        if let Some(id) = ready_identity(&body)? {
            peers.insert(id.clone(), peer);
            *identity = Some(id);
        }
        w.write_all(&header.encode()).await?;
        w.write_all(&body).await?;
        if is_ready {
            return Ok(());
        }
    }
}

async fn forward_client<R, W>(
    client: R,
    mut upstream: W,
    peer: SocketAddr,
    config: &GuardConfig,
    counters: &Counters,
    peers: &PeerAddresses,
    identity: &mut Option<Vec<u8>>,
) -> Result<(), GuardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(64 * 1024, client);
    tokio::time::timeout(
        config.handshake_timeout,
        handshake(&mut r, &mut upstream, peer, peers, identity),
    )
    .await
    .map_err(|_| GuardError::HandshakeTimeout(config.handshake_timeout))?
    .map_err(|e| match e {
        // A peer that leaves mid-handshake (a port scan, a stray client) is a rejection too.
        GuardError::Io(io) => GuardError::IncompleteHandshake(io),
        other => other,
    })?;

    let limit = config.max_frame as u64;
    // Bytes and frames of the message being forwarded; None between messages.
    let mut forwarding: Option<(u64, usize)> = None;
    let mut dropping = false;
    while let Some(header) = read_header(&mut r).await? {
        if header.command() {
            // Commands after READY (PING/PONG in ZMTP 3.1) are small and passed through.
            if header.len > MAX_COMMAND {
                return Err(GuardError::OversizeCommand(header.len));
            }
            upstream.write_all(&header.encode()).await?;
            forward_exact(&mut r, &mut upstream, header.len).await?;
            continue;
        }
        if dropping {
            discard(&mut r, header.len).await?;
            dropping = header.more();
            continue;
        }
        let (bytes, frames) = forwarding.unwrap_or((0, 0));
        let (bytes, frames) = (bytes.saturating_add(header.len), frames + 1);
        if bytes > limit || frames > MAX_FRAMES_PER_MESSAGE {
            if forwarding.is_some() {
                // Part of this message is already upstream; it cannot be taken back.
                return Err(GuardError::OversizeMultipart {
                    limit: config.max_frame,
                });
            }
            Counters::bump(&counters.oversize_frames);
            warn!(%peer, bytes = header.len, limit, "oversize message dropped before decoding");
            discard(&mut r, header.len).await?;
            dropping = header.more();
            continue;
        }
        upstream.write_all(&header.encode()).await?;
        forward_exact(&mut r, &mut upstream, header.len).await?;
        forwarding = header.more().then_some((bytes, frames));
    }
    info!(%peer, "agent disconnected");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn greeting() -> [u8; 64] {
        let mut g = [0u8; 64];
        g[0] = 0xff;
        g[9] = 0x7f;
        g[10] = 3;
        g[11] = 1;
        g[12..16].copy_from_slice(b"NULL");
        g
    }

    fn ready(identity: &[u8]) -> Vec<u8> {
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        for (k, v) in [
            (b"Socket-Type".as_slice(), b"DEALER".as_slice()),
            (b"Identity", identity),
        ] {
            body.push(k.len() as u8);
            body.extend_from_slice(k);
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        let mut frame = vec![Header::COMMAND, body.len() as u8];
        frame.extend(body);
        frame
    }

    async fn run(
        input: Vec<u8>,
        max_frame: usize,
    ) -> (Result<(), GuardError>, Vec<u8>, Counters, Option<Vec<u8>>) {
        let counters = Counters::default();
        let peers = PeerAddresses::default();
        let mut out = Vec::new();
        let mut identity = None;
        let config = GuardConfig {
            max_frame,
            handshake_timeout: Duration::from_secs(5),
        };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let r = forward_client(
            input.as_slice(),
            &mut out,
            peer,
            &config,
            &counters,
            &peers,
            &mut identity,
        )
        .await;
        (r, out, counters, identity)
    }

    fn message(payload: &[u8], more: bool) -> Vec<u8> {
        let more = if more { Header::MORE } else { 0 };
        let mut f = if payload.len() > 255 {
            let mut f = vec![Header::LONG | more];
            f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            f
        } else {
            vec![more, payload.len() as u8]
        };
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn forwards_a_valid_stream_unchanged_and_learns_the_identity() {
        let mut input = greeting().to_vec();
        input.extend(ready(b"agent-1"));
        input.extend(message(b"hello", false));
        input.extend(message(&[7u8; 300], false));
        let (r, out, counters, identity) = run(input.clone(), 1024).await;
        r.unwrap();
        assert_eq!(out, input);
        assert_eq!(identity.as_deref(), Some(b"agent-1".as_slice()));
        assert_eq!(counters.snapshot().oversize_frames, 0);
    }

    #[tokio::test]
    async fn drops_an_oversize_message_and_keeps_the_connection() {
        let mut input = greeting().to_vec();
        input.extend(ready(b"a"));
        let head = input.clone();
        input.extend(message(&[1u8; 2000], true));
        input.extend(message(b"tail of the dropped message", false));
        input.extend(message(b"next", false));
        let (r, out, counters, _) = run(input, 1024).await;
        r.unwrap();
        let mut expected = head;
        expected.extend(message(b"next", false));
        assert_eq!(out, expected);
        assert_eq!(counters.snapshot().oversize_frames, 1);
    }

    #[tokio::test]
    async fn a_huge_announced_length_allocates_nothing() {
        let mut input = greeting().to_vec();
        input.extend(ready(b"a"));
        input.push(Header::LONG);
        input.extend_from_slice(&(1u64 << 60).to_be_bytes());
        let (r, _, counters, _) = run(input, 1024).await;
        // The body never arrives: the stream ends while discarding, without any allocation.
        assert!(matches!(r, Err(GuardError::Io(_))));
        assert_eq!(counters.snapshot().oversize_frames, 1);
    }

    #[tokio::test]
    async fn rejects_garbage_and_protocol_violations() {
        let (r, out, _, _) = run(b"GET / HTTP/1.1\r\n\r\n".repeat(8), 1024).await;
        assert!(matches!(r, Err(GuardError::BadGreeting)));
        assert!(out.is_empty());

        let mut input = greeting().to_vec();
        input.extend(message(b"x", false));
        assert!(matches!(
            run(input, 1024).await.0,
            Err(GuardError::MessageBeforeReady)
        ));

        let mut input = greeting().to_vec();
        input.extend(ready(b"a"));
        input.push(0x80);
        assert!(matches!(
            run(input, 1024).await.0,
            Err(GuardError::BadFlags(0x80))
        ));

        let mut input = greeting().to_vec();
        input.extend(ready(b"a"));
        input.extend(message(&[0u8; 600], true));
        input.extend(message(&[0u8; 600], false));
        assert!(matches!(
            run(input, 1024).await.0,
            Err(GuardError::OversizeMultipart { .. })
        ));
    }

    #[test]
    fn ready_parser_rejects_truncated_properties() {
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        body.extend_from_slice(&[8, b'I', b'd']);
        assert!(ready_identity(&body).is_err());
        assert_eq!(ready_identity(&[4, b'P', b'I', b'N', b'G']).unwrap(), None);
        assert!(ready_identity(&[]).is_err());
    }
}
