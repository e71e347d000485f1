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
//! Only the connection's own task waits on its handler: a slow store write for one agent
//! holds that agent's next message, never anyone else's.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        }
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
        self.outbox
            .send(zmtp::message_frame(payload))
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
    let handshake =
        tokio::time::timeout(config.handshake_timeout, handshake(&mut reader, &mut write)).await;
    let identity = match handshake {
        Ok(Ok(identity)) => identity,
        outcome => {
            let error = match outcome {
                Err(_) => TransportError::HandshakeTimeout(config.handshake_timeout),
                Ok(Err(TransportError::Io(io) | TransportError::Zmtp(ZmtpError::Io(io)))) => {
                    TransportError::IncompleteHandshake(io)
                }
                Ok(Err(other)) => other,
                Ok(Ok(_)) => return,
            };
            Counters::bump(&counters.rejected_connections);
            warn!(%peer, error = %error, "agent connection rejected");
            return;
        }
    };
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let conn = Arc::new(Connection::new(id, peer, identity, outbox));
    debug!(%peer, mercury_id = %conn.identity(), "agent connected");
    let writer = tokio::spawn(write_loop(write, outbox_rx, conn.clone()));
    let outcome = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        () = conn.closed() => Ok(()),
        r = read_loop(&mut reader, &conn, &config, &counters, &*handler) => r,
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
            Counters::bump(&counters.rejected_connections);
            warn!(%peer, mercury_id = %conn.identity(), error = %error, "agent connection closed for breaking the protocol");
        }
    }
}

/// Greeting both ways, then the peer's commands up to READY; returns the peer's MercuryId.
async fn handshake<R, W>(r: &mut R, w: &mut W) -> Result<MercuryId, TransportError>
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
    conn: &Arc<Connection>,
    config: &TransportConfig,
    counters: &Counters,
    handler: &H,
) -> Result<(), TransportError>
where
    R: AsyncRead + Unpin,
    H: Handler,
{
    let limit = config.max_frame as u64;
    loop {
        // One message: its frames, or nothing if it was oversize.
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0u64;
        let mut dropping = false;
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
            continue;
        }
        if frames.len() != 1 {
            handler.on_multipart(conn);
            continue;
        }
        if let Some(payload) = frames.pop() {
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
    loop {
        let frame = tokio::select! {
            () = conn.closed() => break,
            f = outbox.recv() => match f { Some(f) => f, None => break },
        };
        match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                debug!(peer = %conn.peer(), error = %error, "write to agent failed");
                break;
            }
            Err(_) => {
                warn!(peer = %conn.peer(), "agent does not read its messages: closing");
                break;
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
        }
    }

    async fn read_all(
        input: Vec<u8>,
        max_frame: usize,
    ) -> (Result<(), TransportError>, Recorder, Counters) {
        let mut r = input.as_slice();
        let mut out = Vec::new();
        let handler = Recorder::default();
        let counters = Counters::default();
        let identity = match handshake(&mut r, &mut out).await {
            Ok(id) => id,
            Err(e) => return (Err(e), handler, counters),
        };
        let (tx, _rx) = mpsc::channel(4);
        let conn = Arc::new(Connection::new(
            ConnectionId(1),
            "127.0.0.1:1".parse().unwrap(),
            identity,
            tx,
        ));
        let r2 = read_loop(&mut r, &conn, &config(max_frame), &counters, &handler).await;
        (r2, handler, counters)
    }

    #[tokio::test]
    async fn messages_arrive_whole_and_in_order() {
        let mut input = hello(ID.as_bytes());
        input.extend(zmtp::message_frame(b"one"));
        input.extend(zmtp::message_frame(&[9u8; 300]));
        let (r, handler, _) = read_all(input, 1024).await;
        r.unwrap();
        let got = handler.messages.lock().unwrap().clone();
        assert_eq!(got, vec![b"one".to_vec(), vec![9u8; 300]]);
    }

    #[tokio::test]
    async fn an_oversize_message_is_skipped_and_the_stream_goes_on() {
        let mut input = hello(ID.as_bytes());
        let mut first = zmtp::message_frame(&[1u8; 2000]);
        first[0] |= Header::MORE;
        input.extend(first);
        input.extend(zmtp::message_frame(b"tail of the dropped message"));
        input.extend(zmtp::message_frame(b"next"));
        let (r, handler, counters) = read_all(input, 1024).await;
        r.unwrap();
        assert_eq!(*handler.messages.lock().unwrap(), vec![b"next".to_vec()]);
        assert_eq!(counters.snapshot().oversize_frames, 1);
    }

    #[tokio::test]
    async fn a_huge_announced_length_allocates_nothing() {
        let mut input = hello(ID.as_bytes());
        input.push(Header::LONG);
        input.extend_from_slice(&(1u64 << 60).to_be_bytes());
        let (r, _, counters) = read_all(input, 1024).await;
        assert!(matches!(r, Err(TransportError::Io(_))));
        assert_eq!(counters.snapshot().oversize_frames, 1);
    }

    #[tokio::test]
    async fn multipart_messages_are_reported_not_delivered() {
        let mut input = hello(ID.as_bytes());
        let mut first = zmtp::message_frame(b"a");
        first[0] |= Header::MORE;
        input.extend(first);
        input.extend(zmtp::message_frame(b"b"));
        let (r, handler, _) = read_all(input, 1024).await;
        r.unwrap();
        assert!(handler.messages.lock().unwrap().is_empty());
        assert_eq!(handler.multipart.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn protocol_violations_are_refused() {
        let (r, _, _) = read_all(b"GET / HTTP/1.1\r\n\r\n".repeat(8), 1024).await;
        assert!(matches!(
            r,
            Err(TransportError::Zmtp(ZmtpError::BadGreeting))
        ));

        let mut input = zmtp::greeting().to_vec();
        input.extend(zmtp::message_frame(b"x"));
        assert!(matches!(
            read_all(input, 1024).await.0,
            Err(TransportError::MessageBeforeReady)
        ));

        let (r, _, _) = read_all(hello(b"not-a-mercury-id"), 1024).await;
        assert!(matches!(r, Err(TransportError::BadIdentity)));

        let mut input = hello(ID.as_bytes());
        input.push(0x80);
        assert!(matches!(
            read_all(input, 1024).await.0,
            Err(TransportError::Zmtp(ZmtpError::BadFlags(0x80)))
        ));

        let mut input = hello(ID.as_bytes());
        let mut first = zmtp::message_frame(&[0u8; 600]);
        first[0] |= Header::MORE;
        input.extend(first);
        input.extend(zmtp::message_frame(&[0u8; 600]));
        assert!(matches!(
            read_all(input, 1024).await.0,
            Err(TransportError::OversizeMultipart { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_session_is_closed_after_the_idle_deadline() {
        let (client, server) = tokio::io::duplex(4096);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        client_w.write_all(&hello(ID.as_bytes())).await.unwrap();
        let identity = handshake(&mut server_r, &mut server_w).await.unwrap();
        let mut greeting = [0u8; 64];
        client_r.read_exact(&mut greeting).await.unwrap();
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
