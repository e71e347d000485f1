//! The agent's connection to the controller.
//!
//! The agent dials out (DEALER, routing id = MercuryId), registers with its full inventory,
//! heartbeats at the interval the controller asks for, and serves capability calls. Anything
//! from the controller counts as a sign of life; when nothing arrives for three heartbeat
//! intervals (or a reply times out), the session is dropped and a new one is dialled with
//! exponential backoff. A controller that restarted answers the first heartbeat with
//! `not_registered`, and the agent registers again on the same connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use qs_capabilities::{CapabilityError, Registry};
use qs_inspectors::SysRoot;
use qs_proto::codec::{self, DecodeError};
use qs_proto::inventory::Inventory;
use qs_proto::{
    Body, CallOutcome, CallProgress, CallResult, CapabilityCall, Envelope, ErrorBody, ErrorCode,
    ErrorReport, Heartbeat, MercuryId, MessageId, Register,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::backoff::Backoff;
use crate::identity;
use crate::kernel_events;
use crate::sent_inventory::SentInventory;

/// How long to wait between attempts to derive a MercuryId when nothing usable was found.
const ID_RETRY: Duration = Duration::from_secs(30);
/// Heartbeat interval until the controller says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// Validated settings of `qs-agent run`.
pub struct SessionConfig {
    endpoint: String,
    root: SysRoot,
    max_frame: usize,
    reply_timeout: Duration,
    lldp_window: Option<Duration>,
}

impl SessionConfig {
    /// Checks the controller endpoint (`tcp://HOST:PORT`) and keeps the rest.
    pub fn new(
        endpoint: &str,
        root: SysRoot,
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
            root,
            max_frame,
            reply_timeout,
            lldp_window: None,
        })
    }

    /// Listen for LLDP neighbours for `window` at a time (None: never).
    pub fn with_lldp(mut self, window: Option<Duration>) -> Self {
        self.lldp_window = window;
        self
    }
}

/// State shared by the session loop and the tasks serving calls.
struct Agent {
    id: MercuryId,
    capabilities: Registry,
    boot_id: String,
    /// The inventory last sent to the controller.
    inventory: Mutex<SentInventory>,
    /// Held by capabilities that must not run alongside each other.
    exclusive: Mutex<()>,
    /// The LLDP neighbours last heard, when listening.
    lldp: watch::Receiver<Option<Value>>,
    /// The latest full inventory from the background inspections (slow facts, hotplug).
    slow: watch::Receiver<Option<Value>>,
}

/// Why a session ended (the controller went away or stopped answering).
enum SessionEnd {
    Lost(String),
}

/// Inspects, then serves the controller until SIGINT/SIGTERM, reconnecting as needed.
pub async fn run(config: SessionConfig) -> anyhow::Result<()> {
    let (inventory, id) = inspect_until_identified(&config.root).await?;
    // The first stdout line tells scripts and tests who this agent is.
    println!("{}", serde_json::json!({"mercury_id": id.to_string()}));
    info!(mercury_id = %id, controller = %config.endpoint, "agent starting");
    // Link changes feed both the network re-inspection and the LLDP listener.
    let links = if config.root.is_live() {
        kernel_events::links()
    } else {
        None
    };
    let agent = Arc::new(Agent {
        boot_id: identity::boot_id(&config.root),
        capabilities: Registry::standard(config.root.clone()),
        id,
        inventory: Mutex::new(SentInventory::new(inventory)),
        exclusive: Mutex::new(()),
        lldp: spawn_lldp_listener(&config, links.clone()),
        slow: spawn_inspections(&config, links),
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            () = &mut shutdown => return Ok(()),
            end = session(&agent, &config) => end,
        };
        let reason = match end {
            Ok(SessionEnd::Lost(reason)) => reason,
            Err(error) => format!("{error:#}"),
        };
        // A session that lasted a while was healthy: start the next one quickly.
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(reason = %reason, retry_in = ?delay, "controller session lost");
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How long a burst of kernel events (a disk and its partitions, a link and its addresses)
/// gets to settle before inspecting again.
const HOTPLUG_SETTLE: Duration = Duration::from_secs(2);

/// What the next background inspection has to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reinspect {
    /// Everything, slow facts included: start-up, or a device came or went.
    Everything,
    /// Only interfaces and routes: a link went up or down, an address or route changed.
    Network,
}

/// Waits for a kernel event counter to move; a source that is missing or stopped never does.
async fn changed(events: &mut Option<watch::Receiver<u64>>) {
    match events {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *events = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Full inspections in the background: once after start-up with the slow facts (SMART, BMC),
/// so registration never waits for them; again whenever the kernel reports a network or block
/// device appearing or disappearing; and, for link, address and route changes, the network
/// inspectors alone (live machine only).
fn spawn_inspections(
    config: &SessionConfig,
    mut links: Option<watch::Receiver<u64>>,
) -> watch::Receiver<Option<Value>> {
    let (tx, rx) = watch::channel(None);
    let root = config.root.clone();
    let mut devices = if root.is_live() {
        kernel_events::devices()
    } else {
        None
    };
    tokio::spawn(async move {
        let mut last: Option<Inventory> = None;
        let mut next = Reinspect::Everything;
        loop {
            let r = root.clone();
            let previous = last.take();
            let inspected = tokio::task::spawn_blocking(move || match (next, previous) {
                (Reinspect::Network, Some(previous)) => reinspect_network(&r, previous),
                _ => identity::inspect(&r, None),
            })
            .await;
            match inspected {
                Ok(inventory) => {
                    match serde_json::to_value(&inventory) {
                        Ok(doc) => {
                            tx.send_if_modified(|current| {
                                let changed = current.as_ref() != Some(&doc);
                                *current = Some(doc);
                                changed
                            });
                        }
                        Err(error) => warn!(error = %error, "full inventory is not serialisable"),
                    }
                    last = Some(inventory);
                }
                Err(error) => warn!(error = %error, "inspection panicked"),
            }
            if devices.is_none() && links.is_none() {
                return;
            }
            next = tokio::select! {
                () = changed(&mut devices) => Reinspect::Everything,
                () = changed(&mut links) => Reinspect::Network,
            };
            tokio::time::sleep(HOTPLUG_SETTLE).await;
            // A device event during the settling time widens a network-only look.
            if devices
                .as_ref()
                .is_some_and(|d| d.has_changed().unwrap_or(false))
            {
                next = Reinspect::Everything;
            }
            for events in [&mut devices, &mut links].into_iter().flatten() {
                events.borrow_and_update();
            }
            match next {
                Reinspect::Everything => info!("hardware changed: inspecting again"),
                Reinspect::Network => info!("links changed: inspecting the network again"),
            }
        }
    });
    rx
}

/// The previous inventory with its interfaces and routes inspected again.
fn reinspect_network(root: &SysRoot, mut inventory: Inventory) -> Inventory {
    use qs_inspectors::InspectorName as N;
    let network = [N::Interfaces, N::Routes];
    let fresh = qs_inspectors::run_all(root, Some(&network));
    inventory.interfaces = fresh.interfaces;
    inventory.routes = fresh.routes;
    inventory
        .errors
        .retain(|e| !network.iter().any(|n| n.as_str() == e.inspector));
    inventory.errors.extend(fresh.errors);
    inventory
}

/// How long to wait between LLDP listening windows: switches announce every 30 s, and
/// neighbours change only when someone recables.
const LLDP_PAUSE: Duration = Duration::from_secs(300);

/// Listens for LLDP in the background, publishing each window's neighbours when they change.
/// Between windows it waits [`LLDP_PAUSE`], or less when a link comes up or goes down: a
/// server recabled to another switch port shows its new neighbour within one window.
fn spawn_lldp_listener(
    config: &SessionConfig,
    mut links: Option<watch::Receiver<u64>>,
) -> watch::Receiver<Option<Value>> {
    let (tx, rx) = watch::channel(None);
    let Some(window) = config.lldp_window else {
        return rx;
    };
    let root = config.root.clone();
    tokio::spawn(async move {
        loop {
            let r = root.clone();
            let listened_on = qs_inspectors::lldp::up_interfaces(&root).ok();
            let names = listened_on.clone();
            let heard = tokio::task::spawn_blocking(move || match names {
                Some(names) if r.is_live() => qs_inspectors::lldp::listen_on(&names, window),
                _ => qs_inspectors::lldp::listen(&r, window),
            })
            .await;
            match heard {
                Ok(Ok(neighbours)) => {
                    info!(
                        neighbours = neighbours.len(),
                        "LLDP listening window closed"
                    );
                    let value = serde_json::to_value(&neighbours).ok();
                    tx.send_if_modified(|current| {
                        let changed = *current != value;
                        *current = value;
                        changed
                    });
                }
                Ok(Err(qs_inspectors::lldp::LldpError::NotLive)) => {
                    info!("not listening for LLDP: the root is a captured tree");
                    return;
                }
                Ok(Err(error)) => {
                    warn!(error = %ErrorReport::from_error(&error), "LLDP listening failed")
                }
                Err(error) => warn!(error = %error, "LLDP listener panicked"),
            }
            let pause_over = tokio::time::sleep(LLDP_PAUSE);
            tokio::pin!(pause_over);
            loop {
                tokio::select! {
                    () = &mut pause_over => break,
                    () = changed(&mut links) => {
                        tokio::time::sleep(HOTPLUG_SETTLE).await;
                        if let Some(events) = links.as_mut() {
                            events.borrow_and_update();
                        }
                        if qs_inspectors::lldp::up_interfaces(&root).ok() != listened_on {
                            info!("links went up or down: listening for LLDP now");
                            break;
                        }
                    }
                }
            }
        }
    });
    rx
}

async fn inspect_until_identified(
    root: &SysRoot,
) -> anyhow::Result<(serde_json::Value, MercuryId)> {
    loop {
        let r = root.clone();
        let inventory = tokio::task::spawn_blocking(move || identity::inspect_quickly(&r, None))
            .await
            .context("inspection panicked")?;
        match identity::derive(&inventory) {
            Ok(derivation) => {
                info!(mercury_id = %derivation.id, rule = %derivation.rule, "identified");
                let mut doc =
                    serde_json::to_value(&inventory).context("inventory is not serialisable")?;
                if let Some(map) = doc.as_object_mut() {
                    map.insert("mercury_id".into(), derivation.id.to_string().into());
                }
                return Ok((doc, derivation.id));
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

async fn session(agent: &Arc<Agent>, config: &SessionConfig) -> anyhow::Result<SessionEnd> {
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
    let (mut send_half, mut recv_half) = socket.split();
    let (outbox, mut outbox_rx) = mpsc::channel::<Envelope>(256);
    let writer = tokio::spawn(async move {
        while let Some(env) = outbox_rx.recv().await {
            match codec::encode(&env) {
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
    let end = serve(agent, config, &mut recv_half, &outbox).await;
    writer.abort();
    end
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
    let (inventory, inventory_version) = {
        let sent = agent.inventory.lock().await;
        let (doc, version) = sent.current();
        (doc.clone(), version)
    };
    let body = Body::Register(Register {
        mercury_id: agent.id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot_id: agent.boot_id.clone(),
        capabilities: agent.capabilities.describe(),
        inventory,
        inventory_version,
        image_id: None,
    });
    send(outbox, Envelope::new(id, body)).await?;
    Ok(id)
}

async fn serve(
    agent: &Arc<Agent>,
    config: &SessionConfig,
    recv: &mut zeromq::DealerRecvHalf,
    outbox: &mpsc::Sender<Envelope>,
) -> anyhow::Result<SessionEnd> {
    let mut ids = Ids(0);
    let mut heartbeat = DEFAULT_HEARTBEAT;
    let mut registering = Some((register(agent, &mut ids, outbox).await?, Instant::now()));
    let mut last_heard = Instant::now();
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
                        return Ok(SessionEnd::Lost("registration was not answered".into()));
                    }
                    continue;
                }
                let silence = last_heard.elapsed();
                if silence > (heartbeat * 3).max(config.reply_timeout) {
                    return Ok(SessionEnd::Lost(format!("controller silent for {silence:?}")));
                }
                send(outbox, Envelope::new(ids.next(), Body::Heartbeat(Heartbeat {}))).await?;
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
            message = recv.recv() => {
                let message = match message {
                    Ok(m) => m,
                    Err(error) => return Ok(SessionEnd::Lost(format!("receive failed: {error}"))),
                };
                let Some(frame) = message.get(0).cloned() else { continue };
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
                            heartbeat = Duration::from_millis(registered.heartbeat_interval_ms.clamp(100, 600_000));
                            ticker = tokio::time::interval(heartbeat);
                            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            info!(heartbeat = ?heartbeat, "registered with the controller");
                        }
                    }
                    Body::Heartbeat(_) => {}
                    Body::Error(ErrorBody { code: ErrorCode::NotRegistered, .. }) => {
                        if registering.is_none() {
                            info!("controller does not know this session (restarted?): registering again");
                            registering = Some((register(agent, &mut ids, outbox).await?, Instant::now()));
                        }
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
                        tokio::spawn(serve_call(agent.clone(), env.id, call, outbox.clone(), ids.next().0 << 32));
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

/// Runs one call off the session loop; `id_base` keeps its message ids apart from the loop's.
async fn serve_call(
    agent: Arc<Agent>,
    call_id: MessageId,
    call: CapabilityCall,
    outbox: mpsc::Sender<Envelope>,
    id_base: u64,
) {
    let mut next = id_base;
    let mut new_id = move || {
        next += 1;
        MessageId(next)
    };
    let Some(exclusive) = agent.capabilities.is_exclusive(&call.capability) else {
        warn!(capability = %call.capability, "unknown capability called");
        let error = ErrorBody {
            code: ErrorCode::UnknownCapability,
            message: CapabilityError::Unknown {
                name: call.capability.clone(),
            }
            .to_string(),
        };
        let _ = outbox
            .send(Envelope::reply(new_id(), call_id, Body::Error(error)))
            .await;
        return;
    };
    let _lock = if exclusive {
        Some(agent.exclusive.lock().await)
    } else {
        None
    };
    info!(capability = %call.capability, "serving call");
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<(String, Option<f32>)>();
    let runner = {
        let agent = agent.clone();
        let call = call.clone();
        tokio::task::spawn_blocking(move || {
            let mut progress = |message: &str, percent: Option<f32>| {
                let _ = progress_tx.send((message.to_owned(), percent));
            };
            agent
                .capabilities
                .call(&call.capability, &call.args, &mut progress)
        })
    };
    tokio::pin!(runner);
    let result = loop {
        tokio::select! {
            Some((message, percent)) = progress_rx.recv() => {
                let body = Body::CallProgress(CallProgress { message, percent });
                let _ = outbox.send(Envelope::reply(new_id(), call_id, body)).await;
            }
            joined = &mut runner => break joined,
        }
    };
    let reply = match result {
        Ok(Ok(output)) => {
            // A partial inspection (`only`) must not replace the stored full inventory.
            let full = call.args.get("only").is_none();
            if call.capability == "inspect" && full {
                refresh_inventory(&agent, &output, &outbox, new_id()).await;
            }
            Body::CallResult(CallResult {
                outcome: CallOutcome::Succeeded(output),
            })
        }
        Ok(Err(CapabilityError::BadArguments { capability, reason })) => Body::Error(ErrorBody {
            code: ErrorCode::BadArguments,
            message: format!("bad arguments for {capability}: {reason}"),
        }),
        Ok(Err(error)) => Body::CallResult(CallResult {
            outcome: CallOutcome::Failed(ErrorReport::from_error(&error)),
        }),
        Err(join_error) => Body::CallResult(CallResult {
            outcome: CallOutcome::Failed(ErrorReport {
                message: format!("{} crashed", call.capability),
                causes: vec![join_error.to_string()],
            }),
        }),
    };
    let _ = outbox.send(Envelope::reply(new_id(), call_id, reply)).await;
}

/// After a full inspection the controller gets what changed: a delta, the whole inventory, or
/// nothing.
async fn refresh_inventory(
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
