//! The agent's connection to the controller.
//!
//! The agent dials out (DEALER, routing id = MercuryId), authenticates (a Noise `IK` handshake
//! with the controller's pinned key, `qs-noise`), registers with its full inventory,
//! heartbeats at the interval the controller asks for, and serves capability calls. Anything
//! from the controller counts as a sign of life; when nothing arrives for three heartbeat
//! intervals (or a reply times out), the session is dropped and a new one is dialled with
//! exponential backoff. A controller that restarted answers the first heartbeat with
//! `not_registered`, and the agent registers again on the same connection.
//!
//! Every message after the handshake is sealed (encrypted and authenticated). A controller that
//! does not hold the key given with `--server-key` cannot complete the handshake: the agent
//! refuses it, says so, and dials again later. The agent's own key pair is made at start and
//! lives as long as the process (a boot, for the boot image).
//!
//! [`run`] is `qs-agent run`: it inspects the machine, starts the background inspections and
//! serves the controller with [`serve_controller`]. Simulated fleets (the boot-storm bench)
//! call [`serve_controller`] directly with an [`Agent`] built from a given id, inventory and
//! capabilities, and watch it through a [`SessionObserver`]: the same session code, without
//! inspection, signals, LLDP or kernel events.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use qs_capabilities::Registry;
use qs_inspectors::SysRoot;
use qs_noise::{Initiator, KeyPair, PublicKey};
use qs_proto::codec::{self, DecodeError};
use qs_proto::inventory::Inventory;
use qs_proto::{Body, Envelope, ErrorBody, ErrorCode, Heartbeat, MercuryId, MessageId, Register};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::backoff::Backoff;
use crate::calls::{self, CallTable};
use crate::identity;
use crate::kernel_events;
use crate::reinspection;
use crate::sent_inventory::SentInventory;

/// How long to wait between attempts to derive a MercuryId when nothing usable was found.
const ID_RETRY: Duration = Duration::from_secs(30);
/// Heartbeat interval until the controller says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// First reconnect delay, doubled after each session that did not register.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// First id of the messages call tasks send (the session loop counts from 1 per session).
const CALL_MESSAGE_IDS: u64 = 1 << 40;

/// Validated settings of a connection to the controller.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    endpoint: String,
    server_key: PublicKey,
    max_frame: usize,
    reply_timeout: Duration,
}

impl SessionConfig {
    /// Checks the controller endpoint (`tcp://HOST:PORT`) and keeps the rest; `server_key` is
    /// the controller's public key (its `controller.pub`), the only one the agent accepts.
    pub fn new(
        endpoint: &str,
        server_key: PublicKey,
        max_frame: usize,
        reply_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let Some(rest) = endpoint.strip_prefix("tcp://") else {
            bail!("--controller must look like tcp://HOST:PORT, got {endpoint:?}");
        };
        let port_ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !port_ok {
            bail!("--controller must look like tcp://HOST:PORT, got {endpoint:?}");
        }
        if reply_timeout.is_zero() {
            bail!("--reply-timeout must be positive");
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            server_key,
            max_frame,
            reply_timeout,
        })
    }
}

/// What a session reports as it goes, for benches and simulated fleets. Called on the session's
/// task, so implementations must be quick; every method does nothing by default.
pub trait SessionObserver: Send + Sync {
    /// The controller acknowledged a registration; `nth` counts them in this session from 1
    /// (more than one: the controller forgot the session and the agent registered again).
    fn registered(&self, _nth: u32) {}
    /// A heartbeat was sent (echoes fewer than these: some went unanswered).
    fn heartbeat_sent(&self) {}
    /// The controller echoed a heartbeat `rtt` after it was sent.
    fn heartbeat_echoed(&self, _rtt: Duration) {}
    /// A session ended (the next one is dialled after a backoff).
    fn session_ended(&self, _end: &SessionEnd) {}
}

/// Who the agent is and what it offers: shared by the session loop and the tasks serving calls.
pub struct Agent {
    id: MercuryId,
    /// This agent's key pair for the Noise handshake, made when the agent starts.
    key: KeyPair,
    pub(crate) capabilities: Registry,
    boot_id: String,
    /// The inventory last sent to the controller.
    inventory: Mutex<SentInventory>,
    /// Held by capabilities that must not run alongside each other.
    pub(crate) exclusive: Mutex<()>,
    /// Running and recently finished calls; outlives sessions.
    pub(crate) calls: CallTable,
    /// The registered session's outbox, for call tasks that outlive the session they came in.
    registered: std::sync::Mutex<Option<mpsc::Sender<Envelope>>>,
    /// Ids of messages call tasks send, apart from the session loop's small ones.
    call_message_ids: AtomicU64,
    /// The LLDP neighbours last heard, when listening.
    lldp: watch::Receiver<Option<Value>>,
    /// The latest full inventory from the background inspections (slow facts, hotplug).
    slow: watch::Receiver<Option<Value>>,
    observer: Option<Arc<dyn SessionObserver>>,
    /// A one-time enrollment token (`qs.token=`), presented inside every handshake.
    enrollment_token: Option<String>,
}

impl Agent {
    /// An agent known as `id` that registers with `inventory` (its `mercury_id` is set to `id`)
    /// and serves `capabilities`; without updates it never sends another inventory. It makes
    /// a fresh key pair (which fails only without a random source).
    pub fn new(
        id: MercuryId,
        mut inventory: Value,
        capabilities: Registry,
        boot_id: String,
    ) -> anyhow::Result<Self> {
        if let Some(map) = inventory.as_object_mut() {
            map.insert("mercury_id".into(), id.to_string().into());
        }
        let key = KeyPair::generate().context("cannot make the agent's key pair")?;
        Ok(Self {
            id,
            key,
            capabilities,
            boot_id,
            inventory: Mutex::new(SentInventory::new(inventory)),
            exclusive: Mutex::new(()),
            calls: CallTable::new(),
            registered: std::sync::Mutex::new(None),
            call_message_ids: AtomicU64::new(CALL_MESSAGE_IDS),
            lldp: watch::channel(None).1,
            slow: watch::channel(None).1,
            observer: None,
            enrollment_token: None,
        })
    }

    /// Presents `token` (a one-time boot token from `/boot/ipxe` or `qs tokens boot create`)
    /// inside the Noise handshake, so a controller that does not admit agents freely admits
    /// this one and binds its key.
    pub fn with_enrollment_token(mut self, token: Option<String>) -> Self {
        self.enrollment_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Sends each full inventory published on `inventories` (re-inspections) as an update.
    pub fn with_inventory_updates(mut self, inventories: watch::Receiver<Option<Value>>) -> Self {
        self.slow = inventories;
        self
    }

    /// Adds the LLDP neighbours published on `neighbours` to the inventory.
    pub fn with_lldp(mut self, neighbours: watch::Receiver<Option<Value>>) -> Self {
        self.lldp = neighbours;
        self
    }

    /// Reports what each session does to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn SessionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The MercuryId it registers with.
    pub fn id(&self) -> &MercuryId {
        &self.id
    }

    /// Its public key, which the controller sees in the handshake.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public()
    }

    /// Calls running now (benches watch them).
    pub fn calls_running(&self) -> usize {
        self.calls.running()
    }

    /// A message id for a call task's message.
    pub(crate) fn next_message_id(&self) -> MessageId {
        MessageId(self.call_message_ids.fetch_add(1, Ordering::Relaxed))
    }

    fn registered_outbox(&self) -> Option<mpsc::Sender<Envelope>> {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_registered(&self, outbox: Option<mpsc::Sender<Envelope>>) {
        *self.registered.lock().unwrap_or_else(|e| e.into_inner()) = outbox;
    }

    /// Sends `body` about call `call` on the registered session; false when none is.
    pub(crate) async fn send_for_call(&self, call: MessageId, body: Body) -> bool {
        let Some(outbox) = self.registered_outbox() else {
            return false;
        };
        let env = Envelope::reply(self.next_message_id(), call, body);
        outbox.send(env).await.is_ok()
    }

    /// After a full `inspect` call: the registered session gets what changed.
    pub(crate) async fn refresh_after_inspect(&self, inventory: &Value) {
        if let Some(outbox) = self.registered_outbox() {
            refresh_inventory(self, inventory, &outbox, self.next_message_id()).await;
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    /// Registrations the controller acknowledged during the session.
    pub registrations: u32,
    /// Why it ended (the controller went away, stopped answering, or refused).
    pub reason: String,
}

/// Why the session loop returned.
enum Lost {
    /// The connection or the controller failed: dial again.
    Reason(String),
}

/// Inspects the machine under `root`, then serves the controller until SIGINT/SIGTERM,
/// reconnecting as needed (`qs-agent run`). `lldp_window`: listen for LLDP neighbours that
/// long at a time (None: never). `boot_token`: a one-time enrollment token to present.
pub async fn run(
    config: SessionConfig,
    root: SysRoot,
    lldp_window: Option<Duration>,
    boot_token: Option<String>,
) -> anyhow::Result<()> {
    let (identified, id) = inspect_until_identified(&root).await?;
    // The first stdout line tells scripts and tests who this agent is.
    println!("{}", serde_json::json!({"mercury_id": id.to_string()}));
    info!(mercury_id = %id, controller = %config.endpoint, "agent starting");
    let inventory = serde_json::to_value(&identified).context("inventory is not serialisable")?;
    // Link changes feed both the network re-inspection and the LLDP listener.
    let links = if root.is_live() {
        kernel_events::links()
    } else {
        None
    };
    let agent = Agent::new(
        id,
        inventory,
        Registry::standard(root.clone()),
        identity::boot_id(&root),
    )?
    .with_enrollment_token(boot_token)
    .with_lldp(reinspection::spawn_lldp_listener(
        root.clone(),
        lldp_window,
        links.clone(),
    ))
    .with_inventory_updates(reinspection::spawn_inspections(root, identified, links));
    serve_controller(Arc::new(agent), &config, shutdown_signal()).await;
    Ok(())
}

/// Serves the controller as `agent` until `shutdown` completes: one session after another,
/// dialled again after a backoff whenever one ends.
pub async fn serve_controller(
    agent: Arc<Agent>,
    config: &SessionConfig,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    loop {
        let end = tokio::select! {
            () = &mut shutdown => return,
            end = session(&agent, config) => end,
        };
        if let Some(observer) = &agent.observer {
            observer.session_ended(&end);
        }
        let delay = backoff.after_session(end.registrations > 0);
        warn!(reason = %end.reason, registrations = end.registrations, retry_in = ?delay, "controller session lost");
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn inspect_until_identified(root: &SysRoot) -> anyhow::Result<(Inventory, MercuryId)> {
    loop {
        let r = root.clone();
        let inventory = tokio::task::spawn_blocking(move || identity::inspect_quickly(&r, None))
            .await
            .context("inspection panicked")?;
        match identity::derive(&inventory) {
            Ok(derivation) => {
                info!(mercury_id = %derivation.id, rule = %derivation.rule, "identified");
                return Ok((inventory, derivation.id));
            }
            Err(no_id) => {
                // Never invent an id: say why, and look again later (firmware or NICs may appear).
                warn!(reason = %no_id, retry_in = ?ID_RETRY, "no MercuryId yet");
                tokio::time::sleep(ID_RETRY).await;
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    info!("agent stopping");
}

/// Message ids of this session.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> MessageId {
        self.0 += 1;
        MessageId(self.0)
    }
}

/// One connection: dial, register, serve until it is lost.
async fn session(agent: &Arc<Agent>, config: &SessionConfig) -> SessionEnd {
    let mut registrations = 0;
    let reason = match connect_and_serve(agent, config, &mut registrations).await {
        Ok(Lost::Reason(reason)) => reason,
        Err(error) => format!("{error:#}"),
    };
    SessionEnd {
        registrations,
        reason,
    }
}

async fn connect_and_serve(
    agent: &Arc<Agent>,
    config: &SessionConfig,
    registrations: &mut u32,
) -> anyhow::Result<Lost> {
    let mut options = SocketOptions::default();
    options.peer_identity(
        agent
            .id
            .as_str()
            .as_bytes()
            .try_into()
            .map_err(|e| anyhow!("MercuryId is not a valid routing id: {e}"))?,
    );
    options.connect_timeout(config.reply_timeout);
    let mut socket = DealerSocket::with_options(options);
    socket
        .connect(&config.endpoint)
        .await
        .with_context(|| format!("cannot connect to {}", config.endpoint))?;
    let token = agent.enrollment_token.as_deref().unwrap_or_default();
    let (initiator, first) =
        Initiator::with_payload(&agent.key, &config.server_key, token.as_bytes())?;
    socket
        .send(ZmqMessage::from(Bytes::from(first)))
        .await
        .context("cannot send the handshake")?;
    let reply = tokio::time::timeout(config.reply_timeout, socket.recv())
        .await
        .map_err(|_| {
            anyhow!(
                "the controller did not complete the handshake within {:?}: does it hold the key given with --server-key?",
                config.reply_timeout
            )
        })?
        .context("the controller closed the connection during the handshake: does it hold the key given with --server-key?")?;
    let reply = reply.get(0).cloned().unwrap_or_default();
    let session = initiator.finish(&reply).map_err(|error| {
        anyhow!("refusing the controller at {}: its handshake is not made with the key given with --server-key ({error})", config.endpoint)
    })?;
    info!(controller = %config.endpoint, "controller authenticated");
    let (mut sealer, opener) = session.split();
    let (mut send_half, recv_half) = socket.split();
    let (outbox, mut outbox_rx) = mpsc::channel::<Envelope>(256);
    let writer = tokio::spawn(async move {
        while let Some(env) = outbox_rx.recv().await {
            let sealed = codec::encode(&env)
                .map_err(anyhow::Error::from)
                .and_then(|frame| sealer.seal(&frame).map_err(anyhow::Error::from));
            match sealed {
                Ok(frame) => {
                    if let Err(error) = send_half.send(ZmqMessage::from(Bytes::from(frame))).await {
                        debug!(error = %error, "send to controller failed");
                        return;
                    }
                }
                Err(error) => warn!(error = %error, "message could not be encoded"),
            }
        }
    });
    let mut recv = Receiver {
        half: recv_half,
        opener,
    };
    let end = serve(agent, config, &mut recv, &outbox, registrations).await;
    agent.set_registered(None);
    writer.abort();
    end
}

/// The receiving half of a session: ZeroMQ messages, opened.
struct Receiver {
    half: zeromq::DealerRecvHalf,
    opener: qs_noise::Opener,
}

async fn send(outbox: &mpsc::Sender<Envelope>, env: Envelope) -> anyhow::Result<()> {
    outbox
        .send(env)
        .await
        .map_err(|_| anyhow!("connection writer stopped"))
}

async fn register(
    agent: &Agent,
    ids: &mut Ids,
    outbox: &mpsc::Sender<Envelope>,
) -> anyhow::Result<MessageId> {
    let id = ids.next();
    let (inventory, inventory_version, collected_at) = {
        let sent = agent.inventory.lock().await;
        let (doc, version) = sent.current();
        (doc.clone(), version, sent.collected_at().to_owned())
    };
    let body = Body::Register(Register {
        mercury_id: agent.id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot_id: agent.boot_id.clone(),
        capabilities: agent.capabilities.describe(),
        inventory,
        inventory_version,
        image_id: image_id(),
        calls: agent.calls.records(),
        collected_at: Some(collected_at),
    });
    send(outbox, Envelope::new(id, body)).await?;
    Ok(id)
}

/// The boot image's build id, which `images/build` writes to `/etc/qs/image-id`; an agent run
/// outside the image has none.
fn image_id() -> Option<String> {
    let text = std::fs::read_to_string("/etc/qs/image-id").ok()?;
    let id = text.trim();
    (!id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()))
        .then(|| id.to_owned())
}

async fn serve(
    agent: &Arc<Agent>,
    config: &SessionConfig,
    recv: &mut Receiver,
    outbox: &mpsc::Sender<Envelope>,
    registrations: &mut u32,
) -> anyhow::Result<Lost> {
    let mut ids = Ids(0);
    let mut heartbeat = DEFAULT_HEARTBEAT;
    let mut registering = Some((register(agent, &mut ids, outbox).await?, Instant::now()));
    let mut last_heard = Instant::now();
    // The last heartbeat sent and when, to time its echo.
    let mut heartbeat_sent: Option<(MessageId, Instant)> = None;
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lldp = agent.lldp.clone();
    let mut lldp_open = true;
    let mut slow = agent.slow.clone();
    let mut slow_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Some((_, since)) = registering {
                    if since.elapsed() > config.reply_timeout {
                        return Ok(Lost::Reason("registration was not answered".into()));
                    }
                    continue;
                }
                let silence = last_heard.elapsed();
                if silence > (heartbeat * 3).max(config.reply_timeout) {
                    return Ok(Lost::Reason(format!("controller silent for {silence:?}")));
                }
                let id = ids.next();
                heartbeat_sent = Some((id, Instant::now()));
                if let Some(observer) = &agent.observer {
                    observer.heartbeat_sent();
                }
                send(outbox, Envelope::new(id, Body::Heartbeat(Heartbeat {}))).await?;
            }
            changed = slow.changed(), if slow_open && registering.is_none() => {
                if changed.is_err() {
                    slow_open = false;
                    continue;
                }
                let full = slow.borrow_and_update().clone();
                if let Some(full) = full {
                    refresh_inventory(agent, &full, outbox, ids.next()).await;
                }
            }
            changed = lldp.changed(), if lldp_open && registering.is_none() => {
                if changed.is_err() {
                    lldp_open = false;
                    continue;
                }
                let neighbours = lldp.borrow_and_update().clone();
                if let Some(neighbours) = neighbours {
                    let mut sent = agent.inventory.lock().await;
                    let mut doc = sent.current().0.clone();
                    if let Some(map) = doc.as_object_mut() {
                        map.insert("lldp".into(), neighbours);
                    }
                    if let Some(body) = sent.update_to(doc) {
                        send(outbox, Envelope::new(ids.next(), body)).await?;
                    }
                }
            }
            message = recv.half.recv() => {
                let message = match message {
                    Ok(m) => m,
                    Err(error) => return Ok(Lost::Reason(format!("receive failed: {error}"))),
                };
                let Some(sealed) = message.get(0).cloned() else { continue };
                // Anything that does not authenticate ends the session: the stream is not the
                // controller's any more (or a bit flipped), and nonces would not line up again.
                let frame = match recv.opener.open(&sealed, config.max_frame) {
                    Ok(frame) => frame,
                    Err(error) => return Ok(Lost::Reason(format!("message from the controller refused: {error}"))),
                };
                let env = match codec::decode(&frame, config.max_frame) {
                    Ok(env) => env,
                    Err(error) => {
                        reject_frame(&error, &mut ids, outbox).await?;
                        continue;
                    }
                };
                last_heard = Instant::now();
                match env.body {
                    Body::Registered(registered) => {
                        if registering.is_some_and(|(id, _)| Some(id) == env.re) {
                            registering = None;
                            *registrations += 1;
                            if let Some(observer) = &agent.observer {
                                observer.registered(*registrations);
                            }
                            heartbeat = Duration::from_millis(registered.heartbeat_interval_ms.clamp(100, 600_000));
                            ticker = tokio::time::interval(heartbeat);
                            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            info!(heartbeat = ?heartbeat, "registered with the controller");
                            agent.set_registered(Some(outbox.clone()));
                            for (call, result) in agent.calls.take_unsent() {
                                send(outbox, Envelope::reply(agent.next_message_id(), call, Body::CallResult(result))).await?;
                            }
                        }
                    }
                    Body::Heartbeat(_) => {
                        if let Some((id, sent)) = heartbeat_sent {
                            if env.re == Some(id) {
                                heartbeat_sent = None;
                                if let Some(observer) = &agent.observer {
                                    observer.heartbeat_echoed(sent.elapsed());
                                }
                            }
                        }
                    }
                    Body::Error(ErrorBody { code: ErrorCode::NotRegistered, .. }) => {
                        if registering.is_none() {
                            info!("controller does not know this session (restarted?): registering again");
                            agent.set_registered(None);
                            registering = Some((register(agent, &mut ids, outbox).await?, Instant::now()));
                        }
                    }
                    Body::Error(ErrorBody { code: ErrorCode::EnrollmentPending, message }) if registering.is_some_and(|(id, _)| Some(id) == env.re) => {
                        info!(mercury_id = %agent.id, reason = %message, "waiting for an operator to admit this agent (qs agents approve ID); registering again later");
                        return Ok(Lost::Reason(format!("enrollment pending: {message}")));
                    }
                    Body::Error(ErrorBody { code: ErrorCode::StaleBase, message }) => {
                        info!(reason = %message, "controller cannot apply the delta: sending the whole inventory");
                        let body = agent.inventory.lock().await.resend();
                        send(outbox, Envelope::new(ids.next(), body)).await?;
                    }
                    Body::Error(error) => {
                        warn!(code = ?error.code, message = %error.message, re = ?env.re, "controller refused a message");
                        if registering.is_some_and(|(id, _)| Some(id) == env.re) {
                            bail!("registration refused: {}", error.message);
                        }
                    }
                    Body::CapabilityCall(call) => {
                        if let Some(refusal) = calls::admit(agent, env.id, call) {
                            send(outbox, Envelope::reply(ids.next(), env.id, Body::Error(refusal))).await?;
                        }
                    }
                    Body::CancelCall(_) => {
                        if let Some(reply) = calls::cancel(agent, env.re) {
                            send(outbox, Envelope::reply(ids.next(), env.id, reply)).await?;
                        }
                    }
                    other => {
                        let reply = Envelope::reply(ids.next(), env.id, Body::Error(ErrorBody {
                            code: ErrorCode::UnexpectedMessage,
                            message: format!("{} is not sent to an agent", other.kind()),
                        }));
                        send(outbox, reply).await?;
                    }
                }
            }
        }
    }
}

async fn reject_frame(
    error: &DecodeError,
    ids: &mut Ids,
    outbox: &mpsc::Sender<Envelope>,
) -> anyhow::Result<()> {
    warn!(error = %error, kind = error.kind(), "undecodable frame from the controller");
    if let Some(re) = error.message_id() {
        let code = match error {
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Malformed,
        };
        let reply = Envelope::reply(
            ids.next(),
            re,
            Body::Error(ErrorBody {
                code,
                message: error.to_string(),
            }),
        );
        send(outbox, reply).await?;
    }
    Ok(())
}

/// After a full inspection the controller gets what changed: a delta, the whole inventory, or
/// nothing.
pub(crate) async fn refresh_inventory(
    agent: &Agent,
    output: &serde_json::Value,
    outbox: &mpsc::Sender<Envelope>,
    id: MessageId,
) {
    let mut doc = output.clone();
    let mut sent = agent.inventory.lock().await;
    if let Some(map) = doc.as_object_mut() {
        map.insert("mercury_id".into(), agent.id.to_string().into());
        // Neighbours come from the listener, not the inspectors: keep the last heard.
        if let Some(lldp) = sent.current().0.get("lldp") {
            map.entry("lldp").or_insert_with(|| lldp.clone());
        }
    }
    let body = sent.update_to(doc);
    drop(sent);
    if let Some(body) = body {
        let _ = outbox.send(Envelope::new(id, body)).await;
    }
}
