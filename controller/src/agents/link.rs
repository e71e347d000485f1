//! The controller's side of the agent protocol, over the ROUTER socket.
//!
//! One task receives frames and handles them in arrival order (so an agent's register always
//! precedes its heartbeats); one task sends. Every frame is decoded with the size limit; a frame
//! that does not decode is counted and logged, and answered with an error whenever its message
//! id could be read. Capability calls wait for their reply with a timeout: every request gets a
//! reply or a timeout, never silence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use qs_proto::codec::{self, DecodeError};
use qs_proto::{
    Body, CallOutcome, CapabilityCall, Envelope, ErrorBody, ErrorCode, Heartbeat, InventoryDelta,
    MercuryId, MessageId, Register, Registered,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};
use zeromq::{RouterRecvHalf, RouterSendHalf, SocketRecv, SocketSend, ZmqMessage};

use super::counters::Counters;
use super::frame_guard::PeerAddresses;
use super::registry::{AgentRecord, Registry};
use crate::store::Store;

/// Settings of the protocol handler.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Largest frame decoded.
    pub max_frame: usize,
    /// Heartbeat interval agents are told to use.
    pub heartbeat_interval: Duration,
}

/// Why a capability call did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent has no session with this controller.
    #[error("agent {0} is not connected")]
    NotConnected(MercuryId),
    /// No reply arrived in time.
    #[error("agent {id} did not answer {capability} within {timeout:?}")]
    Timeout {
        /// The agent.
        id: MercuryId,
        /// The capability called.
        capability: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The agent refused the call.
    #[error("agent refused the call ({code:?}): {message}")]
    Refused {
        /// The agent's reason code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The controller is shutting down.
    #[error("controller is shutting down")]
    ShuttingDown,
    /// The call could not be encoded.
    #[error("call could not be encoded")]
    Encode(#[source] codec::EncodeError),
}

enum Reply {
    Outcome(CallOutcome),
    Refused(ErrorBody),
}

struct Outgoing {
    identity: Bytes,
    frame: Vec<u8>,
}

/// The agent protocol endpoint: handles agents' messages and sends calls to them.
pub struct AgentLink {
    config: LinkConfig,
    counters: Arc<Counters>,
    registry: Arc<Registry>,
    store: Store,
    peers: Arc<PeerAddresses>,
    outbox: mpsc::Sender<Outgoing>,
    pending: Mutex<HashMap<(MercuryId, MessageId), oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
}

impl AgentLink {
    /// Builds the link and the receiving end of its outbox (for [`AgentLink::run`]).
    pub fn new(
        config: LinkConfig,
        counters: Arc<Counters>,
        registry: Arc<Registry>,
        store: Store,
        peers: Arc<PeerAddresses>,
    ) -> (Arc<Self>, OutboxReceiver) {
        let (outbox, rx) = mpsc::channel(1024);
        let link = Arc::new(Self {
            config,
            counters,
            registry,
            store,
            peers,
            outbox,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        (link, OutboxReceiver(rx))
    }

    fn next_id(&self) -> MessageId {
        MessageId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(MercuryId, MessageId), oneshot::Sender<Reply>>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls a capability on one agent and waits for its outcome.
    #[instrument(skip(self, args), fields(host = %id))]
    pub async fn call(
        &self,
        id: &MercuryId,
        capability: &str,
        args: serde_json::Value,
        timeout: Duration,
    ) -> Result<CallOutcome, CallError> {
        if !self.registry.has_session(id) {
            return Err(CallError::NotConnected(id.clone()));
        }
        let msg_id = self.next_id();
        let env = Envelope::new(
            msg_id,
            Body::CapabilityCall(CapabilityCall {
                capability: capability.to_owned(),
                args,
            }),
        );
        let frame = codec::encode(&env).map_err(CallError::Encode)?;
        let (tx, rx) = oneshot::channel();
        self.pending().insert((id.clone(), msg_id), tx);
        let sent = self
            .outbox
            .send(Outgoing {
                identity: Bytes::copy_from_slice(id.as_str().as_bytes()),
                frame,
            })
            .await;
        if sent.is_err() {
            self.pending().remove(&(id.clone(), msg_id));
            return Err(CallError::ShuttingDown);
        }
        let reply = tokio::time::timeout(timeout, rx).await;
        self.pending().remove(&(id.clone(), msg_id));
        match reply {
            Ok(Ok(Reply::Outcome(outcome))) => Ok(outcome),
            Ok(Ok(Reply::Refused(e))) => Err(CallError::Refused {
                code: e.code,
                message: e.message,
            }),
            Ok(Err(_)) => Err(CallError::ShuttingDown),
            Err(_) => Err(CallError::Timeout {
                id: id.clone(),
                capability: capability.to_owned(),
                timeout,
            }),
        }
    }

    /// Runs the receive and send loops until `shutdown` is cancelled.
    pub async fn run(
        self: Arc<Self>,
        recv: RouterRecvHalf,
        send: RouterSendHalf,
        outbox: OutboxReceiver,
        shutdown: CancellationToken,
    ) {
        let sender = tokio::spawn(send_loop(send, outbox.0, shutdown.clone()));
        self.recv_loop(recv, shutdown).await;
        let _ = sender.await;
    }

    async fn recv_loop(&self, mut recv: RouterRecvHalf, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                m = recv.recv() => m,
            };
            match message {
                Ok(message) => self.handle_frames(message).await,
                Err(error) => {
                    // The socket's own errors are per-peer; keep serving everyone else.
                    debug!(error = %error, "ROUTER receive error");
                }
            }
        }
    }

    async fn handle_frames(&self, message: ZmqMessage) {
        let mut frames = message.into_vecdeque();
        let (Some(identity), Some(payload), None) =
            (frames.pop_front(), frames.pop_front(), frames.pop_front())
        else {
            Counters::bump(&self.counters.malformed_frames);
            warn!("message with an unexpected number of frames dropped");
            return;
        };
        let peer = self.peers.get(&identity);
        let peer_text = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        let env = match codec::decode(&payload, self.config.max_frame) {
            Ok(env) => env,
            Err(error) => {
                self.count_decode_error(&error);
                warn!(peer = %peer_text, bytes = payload.len(), error = %error, "undecodable frame");
                if let Some(re) = error.message_id() {
                    let code = match error {
                        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                        _ => ErrorCode::Malformed,
                    };
                    self.reply_error(&identity, re, code, error.to_string())
                        .await;
                }
                return;
            }
        };
        Counters::bump(&self.counters.messages);
        let id = match std::str::from_utf8(&identity)
            .ok()
            .map(str::parse::<MercuryId>)
        {
            Some(Ok(id)) => id,
            _ => {
                Counters::bump(&self.counters.refused);
                warn!(peer = %peer_text, "message from a peer whose routing id is not a MercuryId");
                self.reply_error(
                    &identity,
                    env.id,
                    ErrorCode::NotRegistered,
                    "routing id must be the agent's MercuryId".into(),
                )
                .await;
                return;
            }
        };
        self.handle(&identity, id, peer.map(|p| p.to_string()), env)
            .await;
    }

    fn count_decode_error(&self, error: &DecodeError) {
        let counter = match error {
            DecodeError::Oversize { .. } => &self.counters.oversize_frames,
            DecodeError::Malformed(_) => &self.counters.malformed_frames,
            DecodeError::UnsupportedVersion { .. } => &self.counters.unsupported_versions,
            DecodeError::BadBody { .. } => &self.counters.bad_bodies,
        };
        Counters::bump(counter);
    }

    async fn handle(
        &self,
        identity: &Bytes,
        id: MercuryId,
        address: Option<String>,
        env: Envelope,
    ) {
        match env.body {
            Body::Register(register) => {
                self.on_register(identity, id, address, env.id, register)
                    .await
            }
            Body::Heartbeat(_) => match self.registry.seen(&id).await {
                Ok(true) => {
                    let reply =
                        Envelope::reply(self.next_id(), env.id, Body::Heartbeat(Heartbeat {}));
                    self.send(identity, &reply).await;
                }
                Ok(false) => {
                    debug!(mercury_id = %id, "heartbeat without a session: asking to register");
                    self.refuse_unregistered(identity, env.id).await;
                }
                Err(error) => {
                    self.internal_error(identity, env.id, qs_proto::ErrorReport::from_error(&error))
                        .await
                }
            },
            Body::InventoryUpdate(update) => {
                if !self.registry.has_session(&id) {
                    self.refuse_unregistered(identity, env.id).await;
                    return;
                }
                if let Err(error) = self.store_inventory(&id, update.inventory).await {
                    self.internal_error(
                        identity,
                        env.id,
                        qs_proto::ErrorReport::from_error(&*error),
                    )
                    .await;
                    return;
                }
                self.registry.set_inventory_version(&id, update.version);
                Counters::bump(&self.counters.inventory_updates);
                let _ = self.registry.seen(&id).await;
                info!(mercury_id = %id, version = update.version, "inventory updated");
            }
            Body::InventoryDelta(delta) => self.on_delta(identity, &id, env.id, delta).await,
            Body::CallProgress(progress) => {
                info!(mercury_id = %id, re = ?env.re, percent = ?progress.percent, message = %progress.message, "call progress");
            }
            Body::CallResult(result) => self.resolve(&id, env.re, Reply::Outcome(result.outcome)),
            Body::Error(error) => {
                warn!(mercury_id = %id, re = ?env.re, code = ?error.code, message = %error.message, "agent reported an error");
                self.resolve(&id, env.re, Reply::Refused(error));
            }
            Body::Registered(_) | Body::CapabilityCall(_) => {
                Counters::bump(&self.counters.refused);
                self.reply_error(
                    identity,
                    env.id,
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not sent to the controller", env.body.kind()),
                )
                .await;
            }
        }
    }

    async fn on_register(
        &self,
        identity: &Bytes,
        id: MercuryId,
        address: Option<String>,
        msg_id: MessageId,
        register: Register,
    ) {
        if register.mercury_id != id {
            Counters::bump(&self.counters.refused);
            warn!(routing_id = %id, claimed = %register.mercury_id, "register names another MercuryId");
            self.reply_error(
                identity,
                msg_id,
                ErrorCode::BadArguments,
                "mercury_id differs from the routing id".into(),
            )
            .await;
            return;
        }
        let now = OffsetDateTime::now_utc();
        let record = AgentRecord {
            online: true,
            last_seen: now,
            registered: now,
            version: register.agent_version,
            boot_id: register.boot_id,
            address,
            capabilities: register.capabilities,
        };
        // The inventory first: a registered agent always has a document to query.
        if let Err(error) = self.store_inventory(&id, register.inventory).await {
            self.internal_error(identity, msg_id, qs_proto::ErrorReport::from_error(&*error))
                .await;
            return;
        }
        let version = register.inventory_version;
        Counters::bump(&self.counters.inventory_updates);
        if let Err(error) = self.registry.register(&id, record, version).await {
            self.internal_error(identity, msg_id, qs_proto::ErrorReport::from_error(&error))
                .await;
            return;
        }
        info!(mercury_id = %id, "agent registered");
        let reply = Envelope::reply(
            self.next_id(),
            msg_id,
            Body::Registered(Registered {
                heartbeat_interval_ms: u64::try_from(self.config.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
            }),
        );
        self.send(identity, &reply).await;
    }

    /// Applies an inventory delta to the stored inventory, if it is the version the delta was
    /// made against; otherwise asks for the whole inventory. The result is stored exactly as a
    /// full update with the same content would be.
    async fn on_delta(
        &self,
        identity: &Bytes,
        id: &MercuryId,
        msg_id: MessageId,
        delta: InventoryDelta,
    ) {
        let Some(have) = self.registry.inventory_version(id) else {
            self.refuse_unregistered(identity, msg_id).await;
            return;
        };
        if have != delta.base {
            Counters::bump(&self.counters.refused);
            let message = format!(
                "delta is against version {}, the controller has {have}",
                delta.base
            );
            self.reply_error(identity, msg_id, ErrorCode::StaleBase, message)
                .await;
            return;
        }
        let mut doc = match self.store.get_inventory(id.as_str()).await {
            Ok(Some(doc)) => doc,
            Ok(None) => serde_json::Value::Object(Default::default()),
            Err(error) => {
                self.internal_error(identity, msg_id, qs_proto::ErrorReport::from_error(&error))
                    .await;
                return;
            }
        };
        if let Some(map) = doc.as_object_mut() {
            map.remove("agent");
        }
        // json_patch::patch is all-or-nothing: a failed operation leaves the document as it was.
        if let Err(error) = json_patch::patch(&mut doc, &delta.patch) {
            Counters::bump(&self.counters.refused);
            warn!(mercury_id = %id, error = %error, "inventory delta does not apply");
            let message = format!("delta does not apply: {error}");
            self.reply_error(identity, msg_id, ErrorCode::StaleBase, message)
                .await;
            return;
        }
        if let Err(error) = self.store_inventory(id, doc).await {
            self.internal_error(identity, msg_id, qs_proto::ErrorReport::from_error(&*error))
                .await;
            return;
        }
        self.registry.set_inventory_version(id, delta.version);
        Counters::bump(&self.counters.inventory_deltas);
        let _ = self.registry.seen(id).await;
        info!(mercury_id = %id, version = delta.version, operations = delta.patch.0.len(), "inventory delta applied");
    }

    /// Stores an inventory document, keeping the controller-owned `agent` fields.
    async fn store_inventory(
        &self,
        id: &MercuryId,
        inventory: serde_json::Value,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let serde_json::Value::Object(mut doc) = inventory else {
            return Err("inventory is not a document".into());
        };
        doc.insert(
            "mercury_id".into(),
            serde_json::Value::String(id.to_string()),
        );
        // The agent does not own these fields; whatever it sent is replaced by ours.
        doc.remove("agent");
        self.store
            .put_inventory(id.as_str(), serde_json::Value::Object(doc))
            .await?;
        Ok(())
    }

    fn resolve(&self, id: &MercuryId, re: Option<MessageId>, reply: Reply) {
        let waiter = re.and_then(|re| self.pending().remove(&(id.clone(), re)));
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => {
                debug!(mercury_id = %id, re = ?re, "reply to no pending call (late or unknown)")
            }
        }
    }

    async fn internal_error(&self, identity: &Bytes, re: MessageId, report: qs_proto::ErrorReport) {
        warn!(error = %report, "handling an agent message failed");
        self.reply_error(identity, re, ErrorCode::Internal, report.to_string())
            .await;
    }

    /// Tells an agent without a session here to register (after a controller restart).
    async fn refuse_unregistered(&self, identity: &Bytes, re: MessageId) {
        Counters::bump(&self.counters.refused);
        self.reply_error(
            identity,
            re,
            ErrorCode::NotRegistered,
            "register first".into(),
        )
        .await;
    }

    async fn reply_error(&self, identity: &Bytes, re: MessageId, code: ErrorCode, message: String) {
        let reply = Envelope::reply(self.next_id(), re, Body::Error(ErrorBody { code, message }));
        self.send(identity, &reply).await;
    }

    async fn send(&self, identity: &Bytes, env: &Envelope) {
        match codec::encode(env) {
            Ok(frame) => {
                let _ = self
                    .outbox
                    .send(Outgoing {
                        identity: identity.clone(),
                        frame,
                    })
                    .await;
            }
            Err(error) => warn!(error = %error, "reply could not be encoded"),
        }
    }
}

/// The receiving end of the link's outbox, consumed by [`AgentLink::run`].
pub struct OutboxReceiver(mpsc::Receiver<Outgoing>);

async fn send_loop(
    mut send: RouterSendHalf,
    mut outbox: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    loop {
        let out = tokio::select! {
            () = shutdown.cancelled() => return,
            o = outbox.recv() => match o { Some(o) => o, None => return },
        };
        let mut message = ZmqMessage::from(out.identity);
        message.push_back(Bytes::from(out.frame));
        // A peer whose queue stays full must not stall replies to everyone else.
        match tokio::time::timeout(Duration::from_secs(5), send.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(error = %error, "send to agent failed (disconnected?)"),
            Err(_) => warn!("send to agent timed out; message dropped"),
        }
    }
}
