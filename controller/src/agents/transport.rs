//! The agent port: owns every agent's TCP stream, from the first byte to the last.
//!
//! Each connection is one task that does the ZMTP handshake (with a deadline), reads frames
//! with limits (an oversize message is skipped without allocating for it; a peer silent for
//! longer than the idle deadline is closed), and hands each complete message to the
//! [`Handler`] in arrival order, so an agent's register always precedes its heartbeats. A
//! second, small task per connection writes what the controller sends. The controller plays
//! the ROUTER side of ZMTP itself: ZMTP is parsed once, here, and nothing else ever sees a
//! byte from a peer that has not completed the handshake.
//!
//! Every session is encrypted and mutually authenticated (`qs-noise`): after READY, the
//! agent's first message is a Noise `IK` handshake message made for this controller's key, the
//! controller answers with the second, and every later message is a sealed transport message
//! (chunks of at most 65,535 bytes, each authenticated). The handshake is part of the
//! handshake deadline; a message that does not authenticate closes the connection, so
//! unauthenticated bytes never reach a decoder. The connection records the agent's key.
//!
//! Only the connection's own task waits on its handler: a slow store write for one agent
//! holds that agent's next message, never anyone else's.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qs_noise::{KeyPair, NoiseError, Opener, PublicKey, Sealer};
use qs_proto::MercuryId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::zmtp::{self, Header, ZmtpError};

/// Most frames one multipart message may have; agents send one.
const MAX_FRAMES_PER_MESSAGE: usize = 16;
/// Messages queued for one agent before senders wait.
const OUTBOX_CAPACITY: usize = 64;
/// How long a closing connection gets to take the messages already queued for it.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer that does not take a message for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection: small, because idle agents are the common case; large frames
/// bypass it.
const READ_BUFFER: usize = 1024;

/// Limits the transport enforces.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest message (sum of its frames) accepted; larger ones are skipped unread.
    pub max_frame: usize,
    /// Time a new connection gets to send its greeting and READY command.
    pub handshake_timeout: Duration,
    /// A session that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one source address.
    pub max_connections_per_source: usize,
    /// The controller's long-term key pair: agents pin its public half.
    pub key: Arc<KeyPair>,
}

/// Why the transport closed a connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The ZMTP stream broke the rules.
    #[error(transparent)]
    Zmtp(#[from] ZmtpError),
    /// The greeting or READY did not arrive in time.
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    /// The connection ended or failed before the handshake was complete.
    #[error("connection ended during the handshake")]
    IncompleteHandshake(#[source] std::io::Error),
    /// A message frame arrived before the READY command.
    #[error("message before READY")]
    MessageBeforeReady,
    /// The READY command named no identity, or one that is not a MercuryId.
    #[error("READY identity is not a MercuryId")]
    BadIdentity,
    /// A multipart message grew past the limits after part of it was read.
    #[error("multipart message exceeds {limit} bytes or {MAX_FRAMES_PER_MESSAGE} frames")]
    OversizeMultipart {
        /// The configured limit.
        limit: usize,
    },
    /// Nothing arrived within the idle deadline.
    #[error("silent for {0:?}")]
    Idle(Duration),
    /// Reading from the peer failed.
    #[error("connection i/o failed")]
    Io(#[from] std::io::Error),
    /// The Noise handshake or a transport message did not authenticate.
    #[error("not authenticated: {0}")]
    Noise(#[from] NoiseError),
    /// The handshake message was missing, multipart or too long to be one.
    #[error("expected a Noise handshake message")]
    NotAHandshake,
}

/// A connection's number, unique within this controller process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// The connection is closed; nothing more can be sent on it.
#[derive(Debug, thiserror::Error)]
#[error("agent connection {0:?} is closed")]
pub struct Closed(pub ConnectionId);

/// One agent's connection after its handshake.
#[derive(Debug)]
pub struct Connection {
    id: ConnectionId,
    peer: SocketAddr,
    identity: MercuryId,
    outbox: mpsc::Sender<Vec<u8>>,
    closed: CancellationToken,
    /// Seals what `send` queues; a lock, so that sealing order (the nonce) is queue order.
    sealer: Option<tokio::sync::Mutex<Sealer>>,
    peer_key: Option<PublicKey>,
    /// The one-time enrollment token the agent's handshake carried, if any.
    enrollment_token: Option<String>,
}

impl Connection {
    /// Builds a connection whose frames go to `outbox` (for the transport and for tests).
    pub fn new(
        id: ConnectionId,
        peer: SocketAddr,
        identity: MercuryId,
        outbox: mpsc::Sender<Vec<u8>>,
    ) -> Self {
        Self {
            id,
            peer,
            identity,
            outbox,
            closed: CancellationToken::new(),
            sealer: None,
            peer_key: None,
            enrollment_token: None,
        }
    }

    /// The same connection, carrying the enrollment token its handshake presented.
    pub fn with_enrollment_token(mut self, token: Option<String>) -> Self {
        self.enrollment_token = token;
        self
    }

    /// The one-time enrollment (boot) token the agent presented inside its Noise handshake.
    pub fn enrollment_token(&self) -> Option<&str> {
        self.enrollment_token.as_deref()
    }

    /// A connection whose messages are sealed for the agent whose key is `peer_key`.
    fn sealed(
        id: ConnectionId,
        peer: SocketAddr,
        identity: MercuryId,
        outbox: mpsc::Sender<Vec<u8>>,
        sealer: Sealer,
        peer_key: PublicKey,
    ) -> Self {
        Self {
            sealer: Some(tokio::sync::Mutex::new(sealer)),
            peer_key: Some(peer_key),
            ..Self::new(id, peer, identity, outbox)
        }
    }

    /// The agent's public key, proven in the Noise handshake (None only for connections
    /// built by tests without one).
    pub fn peer_key(&self) -> Option<&PublicKey> {
        self.peer_key.as_ref()
    }

    /// This connection's number.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The TCP peer.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The MercuryId the peer announced in its READY command (its ZeroMQ routing id).
    pub fn identity(&self) -> &MercuryId {
        &self.identity
    }

    /// Queues one message (an encoded envelope) for the agent; waits while its queue is full.
    pub async fn send(&self, payload: &[u8]) -> Result<(), Closed> {
        if self.closed.is_cancelled() {
            return Err(Closed(self.id));
        }
        let Some(sealer) = &self.sealer else {
            return self
                .outbox
                .send(zmtp::message_frame(payload))
                .await
                .map_err(|_| Closed(self.id));
        };
        let mut sealer = sealer.lock().await;
        let sealed = sealer.seal(payload).map_err(|error| {
            warn!(peer = %self.peer, error = %error, "message could not be sealed: closing");
            self.close();
            Closed(self.id)
        })?;
        self.outbox
            .send(zmtp::message_frame(&sealed))
            .await
            .map_err(|_| Closed(self.id))
    }

    /// Closes the connection (both tasks end; the handler hears of it once).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

/// What the transport hands complete messages and disconnections to.
pub trait Handler: Send + Sync + 'static {
    /// One message (the single frame an agent sent), in arrival order for its connection.
    fn on_message(
        &self,
        conn: &Arc<Connection>,
        payload: Vec<u8>,
    ) -> impl Future<Output = ()> + Send;
    /// A malformed multipart message (more than one frame) that was dropped.
    fn on_multipart(&self, conn: &Arc<Connection>);
    /// The connection is gone; called once, after the last `on_message`.
    fn on_disconnect(&self, conn: &Arc<Connection>);
}

/// Counts connections in total and per source address, refusing past the caps.
#[derive(Debug, Default)]
struct Admission {
    per_source: Mutex<HashMap<IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

impl Admission {
    fn admit(&self, ip: IpAddr, config: &TransportConfig) -> bool {
        let mut map = self
            .per_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(ip).or_insert(0);
        if *count >= config.max_connections_per_source
            || self.total.load(Ordering::Relaxed) >= config.max_connections
        {
            if *count == 0 {
                map.remove(&ip);
            }
            return false;
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self
            .per_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&ip);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The public agent endpoint.
pub struct Transport<H> {
    listener: TcpListener,
    config: TransportConfig,
    counters: Arc<Counters>,
    handler: Arc<H>,
    admission: Arc<Admission>,
    next_id: AtomicU64,
}

impl<H: Handler> Transport<H> {
    /// A transport accepting on `listener` and handing messages to `handler`.
    pub fn new(
        listener: TcpListener,
        config: TransportConfig,
        counters: Arc<Counters>,
        handler: Arc<H>,
    ) -> Self {
        Self {
            listener,
            config,
            counters,
            handler,
            admission: Arc::default(),
            next_id: AtomicU64::new(1),
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
                        if !self.admission.admit(peer.ip(), &self.config) {
                            Counters::bump(&self.counters.refused_connections);
                            debug!(%peer, "connection refused: connection limit reached");
                            drop(stream);
                            continue;
                        }
                        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
                        let task = serve_connection(
                            stream,
                            peer,
                            id,
                            self.config.clone(),
                            self.counters.clone(),
                            self.handler.clone(),
                            shutdown.clone(),
                        );
                        let admission = self.admission.clone();
                        connections.spawn(async move {
                            task.await;
                            admission.release(peer.ip());
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

async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnectionId,
    config: TransportConfig,
    counters: Arc<Counters>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, read);
    let handshake = tokio::time::timeout(
        config.handshake_timeout,
        handshake(&mut reader, &mut write, &config.key),
    )
    .await;
    let (identity, session) = match handshake {
        Ok(Ok(done)) => done,
        outcome => {
            let error = match outcome {
                Err(_) => TransportError::HandshakeTimeout(config.handshake_timeout),
                Ok(Err(TransportError::Io(io) | TransportError::Zmtp(ZmtpError::Io(io)))) => {
                    TransportError::IncompleteHandshake(io)
                }
                Ok(Err(other)) => other,
                Ok(Ok(_)) => return,
            };
            if matches!(
                error,
                TransportError::Noise(_) | TransportError::NotAHandshake
            ) {
                Counters::bump(&counters.unauthenticated);
            }
            Counters::bump(&counters.rejected_connections);
            warn!(%peer, error = %error, "agent connection rejected");
            return;
        }
    };
    let peer_key = *session.remote_key();
    // Text or nothing: the payload was authenticated, but its meaning is enrollment's to judge.
    let token = std::str::from_utf8(session.first_payload())
        .ok()
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let (sealer, mut opener) = session.split();
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let conn = Arc::new(
        Connection::sealed(id, peer, identity, outbox, sealer, peer_key)
            .with_enrollment_token(token),
    );
    debug!(%peer, mercury_id = %conn.identity(), agent_key = %peer_key, "agent connected");
    let writer = tokio::spawn(write_loop(write, outbox_rx, conn.clone()));
    let outcome = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        () = conn.closed() => Ok(()),
        r = read_loop(&mut reader, &mut opener, &conn, &config, &counters, &*handler) => r,
    };
    conn.close();
    let _ = writer.await;
    handler.on_disconnect(&conn);
    match outcome {
        Ok(()) => debug!(%peer, mercury_id = %conn.identity(), "agent connection closed"),
        Err(TransportError::Io(error)) => {
            debug!(%peer, error = %error, "agent connection ended")
        }
        Err(TransportError::Idle(after)) => {
            Counters::bump(&counters.idle_closed);
            info!(%peer, mercury_id = %conn.identity(), silent = ?after, "idle agent connection closed");
        }
        Err(error) => {
            if matches!(error, TransportError::Noise(_)) {
                Counters::bump(&counters.unauthenticated);
            }
            Counters::bump(&counters.rejected_connections);
            warn!(%peer, mercury_id = %conn.identity(), error = %error, "agent connection closed for breaking the protocol");
        }
    }
}

/// Largest first message accepted: the Noise handshake message with at most a short payload
/// (an enrollment token).
const MAX_HANDSHAKE_MESSAGE: u64 = qs_noise::MAX_FIRST_MESSAGE_LEN as u64;

/// Greeting both ways, the peer's commands up to READY, then the Noise handshake; returns the
/// peer's MercuryId and the session.
async fn handshake<R, W>(
    r: &mut R,
    w: &mut W,
    key: &KeyPair,
) -> Result<(MercuryId, qs_noise::Session), TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let identity = zmtp_handshake(r, w).await?;
    let first = loop {
        let Some(header) = zmtp::read_header(r).await? else {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        };
        if header.command() {
            read_command(r, header).await?;
            continue;
        }
        if header.more() || header.len > MAX_HANDSHAKE_MESSAGE {
            return Err(TransportError::NotAHandshake);
        }
        // Bounded by MAX_HANDSHAKE_MESSAGE above.
        let mut body = vec![0u8; header.len as usize];
        r.read_exact(&mut body).await?;
        break body;
    };
    let (reply, session) = qs_noise::respond(key, &first)?;
    w.write_all(&zmtp::message_frame(&reply)).await?;
    Ok((identity, session))
}

/// Greeting both ways, then the peer's commands up to READY; returns the peer's MercuryId.
async fn zmtp_handshake<R, W>(r: &mut R, w: &mut W) -> Result<MercuryId, TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&zmtp::greeting()).await?;
    let mut greeting = [0u8; zmtp::GREETING_LEN];
    r.read_exact(&mut greeting).await?;
    zmtp::check_greeting(&greeting)?;
    loop {
        let Some(header) = zmtp::read_header(r).await? else {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        };
        if !header.command() {
            return Err(TransportError::MessageBeforeReady);
        }
        let body = read_command(r, header).await?;
        let command = zmtp::parse_command(&body)?;
        if command.is_ready() {
            let identity = command
                .identity
                .as_deref()
                .and_then(|id| std::str::from_utf8(id).ok())
                .and_then(|id| id.parse::<MercuryId>().ok())
                .ok_or(TransportError::BadIdentity)?;
            w.write_all(&zmtp::ready_frame()).await?;
            return Ok(identity);
        }
    }
}

async fn read_command<R: AsyncRead + Unpin>(
    r: &mut R,
    header: Header,
) -> Result<Vec<u8>, TransportError> {
    if header.len > zmtp::MAX_COMMAND {
        return Err(ZmtpError::OversizeCommand(header.len).into());
    }
    // Bounded by MAX_COMMAND above.
    let mut body = vec![0u8; header.len as usize];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> Result<(), TransportError> {
    let copied = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    into: &mut Vec<u8>,
) -> Result<(), TransportError> {
    // Grow as bytes arrive: an announced length reserves nothing a peer has not sent.
    into.reserve(len.min(64 * 1024) as usize);
    let read = r.take(len).read_to_end(into).await?;
    if (read as u64) < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

async fn read_loop<R, H>(
    r: &mut R,
    opener: &mut Opener,
    conn: &Arc<Connection>,
    config: &TransportConfig,
    counters: &Counters,
    handler: &H,
) -> Result<(), TransportError>
where
    R: AsyncRead + Unpin,
    H: Handler,
{
    // On the wire a message is sealed: its plaintext limit plus the chunks' overhead.
    let limit = qs_noise::sealed_len(config.max_frame) as u64;
    loop {
        // One message: its frames, or nothing if it was oversize.
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0u64;
        let mut dropping = false;
        let mut dropped = 0u64;
        loop {
            let header = tokio::time::timeout(config.idle_timeout, zmtp::read_header(r))
                .await
                .map_err(|_| TransportError::Idle(config.idle_timeout))??;
            let Some(header) = header else {
                return Ok(());
            };
            if header.command() {
                let body = read_command(r, header).await?;
                if let Ok(cmd) = zmtp::parse_command(&body) {
                    if cmd.name == b"PING" {
                        send_pong(conn, &body).await;
                    }
                }
                continue;
            }
            if dropping {
                dropped = dropped.saturating_add(header.len);
                discard(r, header.len).await?;
            } else if bytes.saturating_add(header.len) > limit
                || frames.len() >= MAX_FRAMES_PER_MESSAGE
            {
                if !frames.is_empty() {
                    return Err(TransportError::OversizeMultipart {
                        limit: config.max_frame,
                    });
                }
                Counters::bump(&counters.oversize_frames);
                warn!(peer = %conn.peer(), mercury_id = %conn.identity(), bytes = header.len, limit, "oversize message dropped before decoding");
                discard(r, header.len).await?;
                dropped = header.len;
                dropping = true;
            } else {
                bytes += header.len;
                let mut body = Vec::new();
                read_body(r, header.len, &mut body).await?;
                frames.push(body);
            }
            if !header.more() {
                break;
            }
        }
        if dropping {
            // The agent sealed it: its chunks used nonces this side must skip too.
            opener.skip(dropped);
            continue;
        }
        if frames.len() != 1 {
            handler.on_multipart(conn);
            continue;
        }
        if let Some(sealed) = frames.pop() {
            let payload = opener.open(&sealed, config.max_frame)?;
            handler.on_message(conn, payload).await;
        }
    }
}

/// Answers a ZMTP 3.1 PING with a PONG carrying its context.
async fn send_pong(conn: &Connection, ping: &[u8]) {
    // PING: name length, "PING", 2-byte TTL, context.
    let context = ping.get(7..).unwrap_or_default();
    let mut body = vec![4];
    body.extend_from_slice(b"PONG");
    body.extend_from_slice(context);
    let mut frame = Vec::with_capacity(body.len() + 9);
    Header::for_body(Header::COMMAND, body.len()).encode(&mut frame);
    frame.extend(body);
    let _ = conn.outbox.send(frame).await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut outbox: mpsc::Receiver<Vec<u8>>,
    conn: Arc<Connection>,
) {
    let closed_here = loop {
        let frame = tokio::select! {
            biased;
            f = outbox.recv() => match f { Some(f) => f, None => break false },
            () = conn.closed() => break true,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                debug!(peer = %conn.peer(), error = %error, "write to agent failed");
                break false;
            }
            Err(_) => {
                warn!(peer = %conn.peer(), "agent does not read its messages: closing");
                break false;
            }
        }
    };
    if closed_here {
        // The controller hung up (a persistent offender, a replaced session): what it queued
        // before, such as the refusal that explains the hang-up, still goes out, briefly.
        while let Ok(frame) = outbox.try_recv() {
            match tokio::time::timeout(FLUSH_TIMEOUT, w.write_all(&frame)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    conn.close();
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ID: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    /// The agent's side of a session under test.
    struct Client {
        sealer: Sealer,
        _stream: tokio::io::DuplexStream,
    }

    /// Runs the whole handshake between `hello` (ZMTP greeting and READY, or anything) plus a
    /// Noise first message for `key`, and the controller side over an in-memory pipe.
    async fn connect(
        hello: Vec<u8>,
        key: &Arc<KeyPair>,
    ) -> (
        Result<(MercuryId, qs_noise::Session), TransportError>,
        tokio::io::DuplexStream,
        Option<Client>,
    ) {
        let (mut client, mut server) = tokio::io::duplex(1 << 22);
        let agent = KeyPair::generate().unwrap();
        let (initiator, first) = qs_noise::Initiator::new(&agent, key.public()).unwrap();
        let mut input = hello;
        input.extend(zmtp::message_frame(&first));
        client.write_all(&input).await.unwrap();
        let outcome = {
            let (mut sr, mut sw) = tokio::io::split(&mut server);
            handshake(&mut sr, &mut sw, key).await
        };
        if outcome.is_err() {
            return (outcome, server, None);
        }
        // Greeting, READY, then the reply frame (short: 2-byte header).
        let mut head = vec![0u8; zmtp::GREETING_LEN + zmtp::ready_frame().len()];
        client.read_exact(&mut head).await.unwrap();
        let mut reply = vec![0u8; 2 + qs_noise::REPLY_LEN];
        client.read_exact(&mut reply).await.unwrap();
        let (sealer, _) = initiator.finish(&reply[2..]).unwrap().split();
        let client = Client {
            sealer,
            _stream: client,
        };
        (outcome, server, Some(client))
    }

    fn hello(identity: &[u8]) -> Vec<u8> {
        let mut g = zmtp::greeting().to_vec();
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
        g.extend([Header::COMMAND, body.len() as u8]);
        g.extend(body);
        g
    }

    #[derive(Default)]
    struct Recorder {
        messages: Mutex<Vec<Vec<u8>>>,
        multipart: AtomicU64,
    }

    impl Handler for Recorder {
        async fn on_message(&self, _conn: &Arc<Connection>, payload: Vec<u8>) {
            self.messages.lock().unwrap().push(payload);
        }
        fn on_multipart(&self, _conn: &Arc<Connection>) {
            self.multipart.fetch_add(1, Ordering::Relaxed);
        }
        fn on_disconnect(&self, _conn: &Arc<Connection>) {}
    }

    fn config(max_frame: usize) -> TransportConfig {
        TransportConfig {
            max_frame,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_connections: 10,
            max_connections_per_source: 10,
            key: Arc::new(KeyPair::generate().unwrap()),
        }
    }

    /// `after` builds what the agent sends after the handshake (sealing with its session).
    async fn read_all(
        hello: Vec<u8>,
        max_frame: usize,
        after: impl FnOnce(&mut Sealer) -> Vec<u8>,
    ) -> (Result<(), TransportError>, Recorder, Counters) {
        let handler = Recorder::default();
        let counters = Counters::default();
        let key = Arc::new(KeyPair::generate().unwrap());
        let (outcome, server, client) = connect(hello, &key).await;
        let (identity, session) = match outcome {
            Ok(done) => done,
            Err(e) => return (Err(e), handler, counters),
        };
        let input = after(&mut client.unwrap().sealer);
        let (_, mut opener) = session.split();
        let (tx, _rx) = mpsc::channel(4);
        let conn = Arc::new(Connection::new(
            ConnectionId(1),
            "127.0.0.1:1".parse().unwrap(),
            identity,
            tx,
        ));
        drop(server);
        let mut r = input.as_slice();
        let r2 = read_loop(
            &mut r,
            &mut opener,
            &conn,
            &config(max_frame),
            &counters,
            &handler,
        )
        .await;
        (r2, handler, counters)
    }

    fn sealed(sealer: &mut Sealer, plain: &[u8]) -> Vec<u8> {
        zmtp::message_frame(&sealer.seal(plain).unwrap())
    }

    #[tokio::test]
    async fn messages_arrive_whole_and_in_order() {
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (r, handler, _) = read_all(hello(ID.as_bytes()), 1 << 20, |s| {
            let mut input = sealed(s, b"one");
            input.extend(sealed(s, &big));
            input.extend(sealed(s, b""));
            input
        })
        .await;
        r.unwrap();
        let got = handler.messages.lock().unwrap().clone();
        assert_eq!(got, vec![b"one".to_vec(), big, Vec::new()]);
    }

    #[tokio::test]
    async fn an_oversize_message_is_skipped_and_the_stream_goes_on() {
        let (r, handler, counters) = read_all(hello(ID.as_bytes()), 1024, |s| {
            let mut input = sealed(s, &[1u8; 200_000]);
            input.extend(sealed(s, &[2u8; 2000]));
            input.extend(sealed(s, b"next"));
            input
        })
        .await;
        r.unwrap();
        assert_eq!(*handler.messages.lock().unwrap(), vec![b"next".to_vec()]);
        assert_eq!(counters.snapshot().oversize_frames, 2);
    }

    #[tokio::test]
    async fn a_huge_announced_length_allocates_nothing() {
        let (r, _, counters) = read_all(hello(ID.as_bytes()), 1024, |_| {
            let mut input = vec![Header::LONG];
            input.extend_from_slice(&(1u64 << 60).to_be_bytes());
            input
        })
        .await;
        assert!(matches!(r, Err(TransportError::Io(_))));
        assert_eq!(counters.snapshot().oversize_frames, 1);
    }

    #[tokio::test]
    async fn multipart_messages_are_reported_not_delivered() {
        let (r, handler, _) = read_all(hello(ID.as_bytes()), 1024, |s| {
            let mut first = sealed(s, b"a");
            first[0] |= Header::MORE;
            first.extend(sealed(s, b"b"));
            first
        })
        .await;
        r.unwrap();
        assert!(handler.messages.lock().unwrap().is_empty());
        assert_eq!(handler.multipart.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn plain_tampered_or_replayed_messages_close_the_session() {
        // A peer that completed the handshake but sends a plain envelope.
        let plain = b"\x83\xa1v\x01\xa2id\x01\xa4body\x81\xa9heartbeat\x80";
        let (r, handler, _) =
            read_all(hello(ID.as_bytes()), 1024, |_| zmtp::message_frame(plain)).await;
        assert!(matches!(r, Err(TransportError::Noise(_))), "{r:?}");
        assert!(handler.messages.lock().unwrap().is_empty());
        // One flipped bit.
        let (r, handler, _) = read_all(hello(ID.as_bytes()), 1024, |s| {
            let mut m = sealed(s, b"heartbeat");
            let last = m.len() - 1;
            m[last] ^= 1;
            m
        })
        .await;
        assert!(matches!(r, Err(TransportError::Noise(_))), "{r:?}");
        assert!(handler.messages.lock().unwrap().is_empty());
        // A message sent twice: the second copy is refused.
        let (r, handler, _) = read_all(hello(ID.as_bytes()), 1024, |s| {
            let m = sealed(s, b"once");
            [m.clone(), m].concat()
        })
        .await;
        assert!(matches!(r, Err(TransportError::Noise(_))), "{r:?}");
        assert_eq!(*handler.messages.lock().unwrap(), vec![b"once".to_vec()]);
    }

    #[tokio::test]
    async fn a_handshake_for_another_controller_or_no_handshake_is_refused() {
        let key = Arc::new(KeyPair::generate().unwrap());
        let other = Arc::new(KeyPair::generate().unwrap());
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let agent = KeyPair::generate().unwrap();
        let (_, first) = qs_noise::Initiator::new(&agent, other.public()).unwrap();
        let mut input = hello(ID.as_bytes());
        input.extend(zmtp::message_frame(&first));
        let (_, mut cw) = tokio::io::split(client);
        cw.write_all(&input).await.unwrap();
        let (mut sr, mut sw) = tokio::io::split(&mut server);
        let r = handshake(&mut sr, &mut sw, &key).await;
        assert!(matches!(r, Err(TransportError::Noise(_))), "{r:?}");

        // A plain peer: READY, then an envelope where the handshake belongs.
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut input = hello(ID.as_bytes());
        input.extend(zmtp::message_frame(&[0x90u8; 200]));
        let (_, mut cw) = tokio::io::split(client);
        cw.write_all(&input).await.unwrap();
        let (mut sr, mut sw) = tokio::io::split(&mut server);
        let r = handshake(&mut sr, &mut sw, &key).await;
        // Short enough to be a handshake with a payload: it fails as one.
        assert!(
            matches!(
                r,
                Err(TransportError::NotAHandshake | TransportError::Noise(_))
            ),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn protocol_violations_are_refused() {
        let key = Arc::new(KeyPair::generate().unwrap());
        let (r, _, _) = connect(b"GET / HTTP/1.1\r\n\r\n".repeat(8), &key).await;
        assert!(matches!(
            r,
            Err(TransportError::Zmtp(ZmtpError::BadGreeting))
        ));

        let mut input = zmtp::greeting().to_vec();
        input.extend(zmtp::message_frame(b"x"));
        let (r, _, _) = connect(input, &key).await;
        assert!(matches!(r, Err(TransportError::MessageBeforeReady)));

        let (r, _, _) = connect(hello(b"not-a-mercury-id"), &key).await;
        assert!(matches!(r, Err(TransportError::BadIdentity)));

        let (r, _, _) = read_all(hello(ID.as_bytes()), 1024, |_| vec![0x80]).await;
        assert!(matches!(
            r,
            Err(TransportError::Zmtp(ZmtpError::BadFlags(0x80)))
        ));

        let (r, _, _) = read_all(hello(ID.as_bytes()), 1024, |s| {
            let mut first = sealed(s, &[0u8; 600]);
            first[0] |= Header::MORE;
            first.extend(sealed(s, &[0u8; 600]));
            first
        })
        .await;
        assert!(matches!(r, Err(TransportError::OversizeMultipart { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_session_is_closed_after_the_idle_deadline() {
        let key = Arc::new(KeyPair::generate().unwrap());
        let (outcome, server, _client) = connect(hello(ID.as_bytes()), &key).await;
        let (identity, session) = outcome.unwrap();
        let (_, mut opener) = session.split();
        let (mut server_r, _server_w) = tokio::io::split(server);
        let (tx, _rx) = mpsc::channel(4);
        let conn = Arc::new(Connection::new(
            ConnectionId(1),
            "127.0.0.1:1".parse().unwrap(),
            identity,
            tx,
        ));
        let handler = Recorder::default();
        let r = read_loop(
            &mut server_r,
            &mut opener,
            &conn,
            &config(1024),
            &Counters::default(),
            &handler,
        )
        .await;
        assert!(matches!(r, Err(TransportError::Idle(_))), "{r:?}");
    }

    #[test]
    fn admission_caps_per_source_and_in_total() {
        let admission = Admission::default();
        let mut config = config(1024);
        config.max_connections_per_source = 2;
        config.max_connections = 3;
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(admission.admit(a, &config));
        assert!(admission.admit(a, &config));
        assert!(!admission.admit(a, &config));
        assert!(admission.admit(b, &config));
        assert!(!admission.admit(b, &config));
        admission.release(a);
        assert!(admission.admit(b, &config));
    }
}
