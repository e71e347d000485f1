//! The controller's side of the agent protocol: what each message from an agent does.
//!
//! The transport hands each message here in arrival order for its connection. Heartbeats and
//! replies touch memory only; inventory changes go through [`Ingest`] and this connection
//! waits for their commit (so a register is stored before it is acknowledged and before the
//! agent's next message is read), while every other connection goes on. Every frame is decoded
//! with the size limit; one that does not decode is counted, logged, and answered with an
//! error whenever its message id could be read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qs_proto::codec::{self, DecodeError};
use qs_proto::{
    Body, Envelope, ErrorBody, ErrorCode, Heartbeat, InventoryDelta, MessageId, Register,
    Registered,
};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::dispatcher::Dispatcher;
use super::enrollment::{Admission, Enrollment};
use super::ingest::{Change, Ingest, IngestError};
use super::registry::{encode_record, AgentRecord, Registry};
use super::transport::{Connection, ConnectionId, Handler};

/// Refused messages in a row after which a peer is disconnected: an agent with a bug gets its
/// errors answered, a peer that only sends garbage does not keep a session busy.
pub const MAX_STRIKES: u32 = 10;

/// Settings of the protocol handler.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    /// Largest frame decoded.
    pub max_frame: usize,
    /// Heartbeat interval agents are told to use.
    pub heartbeat_interval: Duration,
}

/// Handles agents' messages.
pub struct AgentProtocol {
    config: ProtocolConfig,
    counters: Arc<Counters>,
    registry: Arc<Registry>,
    ingest: Arc<Ingest>,
    dispatcher: Arc<Dispatcher>,
    /// Refused messages in a row, per connection.
    strikes: Mutex<HashMap<ConnectionId, u32>>,
    /// Which agents are admitted; `None` admits every agent (tests, benches).
    enrollment: Option<Arc<Enrollment>>,
}

impl AgentProtocol {
    /// A handler over the controller's owners of agent state.
    pub fn new(
        config: ProtocolConfig,
        counters: Arc<Counters>,
        registry: Arc<Registry>,
        ingest: Arc<Ingest>,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        Self {
            config,
            counters,
            registry,
            ingest,
            dispatcher,
            strikes: Mutex::new(HashMap::new()),
            enrollment: None,
        }
    }

    /// The same handler, admitting agents as `enrollment` decides.
    pub fn with_enrollment(mut self, enrollment: Arc<Enrollment>) -> Self {
        self.enrollment = Some(enrollment);
        self
    }

    /// Records whether the connection's last message was refused; a peer refused
    /// [`MAX_STRIKES`] times in a row is disconnected.
    fn judge(&self, conn: &Connection, refused: bool) {
        let mut strikes = self
            .strikes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !refused {
            strikes.remove(&conn.id());
            return;
        }
        let n = strikes.entry(conn.id()).or_insert(0);
        *n += 1;
        if *n >= MAX_STRIKES {
            strikes.remove(&conn.id());
            drop(strikes);
            Counters::bump(&self.counters.peers_disconnected);
            warn!(peer = %conn.peer(), mercury_id = %conn.identity(), strikes = MAX_STRIKES, "peer disconnected: every recent message was refused");
            conn.close();
        }
    }

    fn count_decode_error(&self, error: &DecodeError) {
        let counter = match error {
            DecodeError::Oversize { .. } => &self.counters.oversize_frames,
            DecodeError::Malformed(_) => &self.counters.malformed_frames,
            DecodeError::UnsupportedVersion { .. } => &self.counters.unsupported_versions,
            DecodeError::BadBody { .. } => &self.counters.bad_bodies,
            DecodeError::TooManyValues { .. } => &self.counters.documents_refused,
        };
        Counters::bump(counter);
    }

    /// Handles one message; true when it was refused as the peer's mistake.
    async fn handle(&self, conn: &Arc<Connection>, env: Envelope) -> bool {
        match env.body {
            Body::Register(register) => self.on_register(conn, env.id, register).await,
            Body::Heartbeat(_) => {
                if self.registry.seen(conn) {
                    let reply = Envelope::reply(
                        self.dispatcher.next_id(),
                        env.id,
                        Body::Heartbeat(Heartbeat {}),
                    );
                    self.send(conn, &reply).await;
                } else {
                    debug!(mercury_id = %conn.identity(), "heartbeat without a session: asking to register");
                    self.refuse_unregistered(conn, env.id).await;
                }
                false
            }
            Body::InventoryUpdate(update) => {
                if self.registry.inventory_version(conn).is_none() {
                    self.refuse_unregistered(conn, env.id).await;
                    return false;
                }
                let change = Change::Replace {
                    inventory: update.inventory,
                    collected_at: update.collected_at,
                };
                let stored = self.ingest(conn, env.id, change).await;
                if stored == Stored::Yes {
                    self.registry.set_inventory_version(conn, update.version);
                    self.registry.seen(conn);
                    Counters::bump(&self.counters.inventory_updates);
                    info!(mercury_id = %conn.identity(), version = update.version, "inventory updated");
                }
                stored == Stored::Refused
            }
            Body::InventoryDelta(delta) => self.on_delta(conn, env.id, delta).await,
            Body::CallProgress(progress) => {
                self.registry.seen(conn);
                self.dispatcher
                    .on_progress(conn.identity(), conn.id(), env.re, progress);
                false
            }
            Body::CallResult(result) => {
                self.registry.seen(conn);
                self.dispatcher
                    .on_result(conn.identity(), conn.id(), env.re, result);
                false
            }
            Body::Error(error) => {
                warn!(mercury_id = %conn.identity(), re = ?env.re, code = ?error.code, message = %error.message, "agent reported an error");
                self.dispatcher
                    .on_refusal(conn.identity(), conn.id(), env.re, error);
                false
            }
            Body::CallOutput(output) => {
                self.registry.seen(conn);
                self.dispatcher
                    .on_output(conn.identity(), conn.id(), env.re, output);
                false
            }
            Body::Registered(_) | Body::CapabilityCall(_) | Body::CancelCall(_) => {
                Counters::bump(&self.counters.refused);
                self.reply_error(
                    conn,
                    env.id,
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not sent to the controller", env.body.kind()),
                )
                .await;
                true
            }
        }
    }

    async fn on_register(
        &self,
        conn: &Arc<Connection>,
        msg_id: MessageId,
        register: Register,
    ) -> bool {
        if &register.mercury_id != conn.identity() {
            Counters::bump(&self.counters.refused);
            warn!(routing_id = %conn.identity(), claimed = %register.mercury_id, "register names another MercuryId");
            self.reply_error(
                conn,
                msg_id,
                ErrorCode::BadArguments,
                "mercury_id differs from the routing id".into(),
            )
            .await;
            return true;
        }
        // A MercuryId online under one agent key is not taken over by another key: the
        // claimant gets nothing and is cut off (the same key may resume its own session).
        if let Some(online) = self.registry.connection(conn.identity()) {
            if online.id() != conn.id()
                && !online.is_closed()
                && online.peer_key() != conn.peer_key()
            {
                Counters::bump(&self.counters.identity_conflicts);
                warn!(mercury_id = %conn.identity(), peer = %conn.peer(), online_peer = %online.peer(), "identity conflict: MercuryId online under another key; registration refused");
                // Recorded on its own task: closing the connection ends this handler's.
                if let Some(enrollment) = self.enrollment.clone() {
                    let (id, peer) = (conn.identity().to_string(), conn.peer());
                    tokio::spawn(async move {
                        if let Err(error) = enrollment.conflict(&id, peer).await {
                            warn!(error = %error, "identity conflict not recorded");
                        }
                    });
                }
                conn.close();
                return true;
            }
        }
        if !self.enrolled(conn, msg_id, &register.inventory).await {
            return true;
        }
        let now = OffsetDateTime::now_utc();
        let record = AgentRecord {
            online: true,
            last_seen: now,
            registered: now,
            version: register.agent_version,
            boot_id: register.boot_id,
            address: Some(conn.peer().to_string()),
            capabilities: register.capabilities,
            image_id: register.image_id,
            session: session_number(self.dispatcher.epoch(), conn),
            controller: self.registry.controller().to_owned(),
        };
        let agent = match encode_record(conn.identity().as_str(), &record) {
            Ok(agent) => agent,
            Err(error) => {
                self.internal_error(conn, msg_id, qs_proto::ErrorReport::from_error(&error))
                    .await;
                return false;
            }
        };
        let change = Change::Register {
            inventory: register.inventory,
            agent,
            collected_at: register.collected_at,
        };
        // The store first, then memory: a session exists only once its record is stored.
        match self.ingest(conn, msg_id, change).await {
            Stored::Yes => {}
            Stored::Refused => return true,
            Stored::Failed => return false,
        }
        self.registry
            .start_session(conn, record, register.inventory_version);
        // After the session exists, so a task the report lets go on can be sent at once.
        self.dispatcher
            .on_registered(conn.identity(), conn.id(), &register.calls);
        Counters::bump(&self.counters.inventory_updates);
        info!(mercury_id = %conn.identity(), peer = %conn.peer(), "agent registered");
        let reply = Envelope::reply(
            self.dispatcher.next_id(),
            msg_id,
            Body::Registered(Registered {
                heartbeat_interval_ms: u64::try_from(self.config.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
            }),
        );
        self.send(conn, &reply).await;
        false
    }

    /// Whether enrollment admits this registration. A pending agent is told so; a refused one
    /// gets nothing and is cut off.
    async fn enrolled(
        &self,
        conn: &Arc<Connection>,
        msg_id: MessageId,
        inventory: &serde_json::Value,
    ) -> bool {
        let Some(enrollment) = &self.enrollment else {
            return true;
        };
        let key = conn.peer_key().map(ToString::to_string).unwrap_or_default();
        let id = conn.identity().as_str();
        let decision = enrollment
            .admit(id, &key, conn.enrollment_token(), conn.peer(), inventory)
            .await;
        match decision {
            Ok(Admission::Admit { via }) => {
                debug!(mercury_id = %id, peer = %conn.peer(), via, "agent admitted");
                true
            }
            Ok(Admission::Pending) => {
                info!(mercury_id = %id, peer = %conn.peer(), "agent pending approval (qs agents pending / approve)");
                let message =
                    format!("{id} is pending an operator's approval (qs agents approve {id})");
                self.reply_error(conn, msg_id, ErrorCode::EnrollmentPending, message)
                    .await;
                false
            }
            Ok(Admission::Refuse(reason)) => {
                warn!(mercury_id = %id, peer = %conn.peer(), reason, policy = %enrollment.policy(), "agent refused by enrollment");
                conn.close();
                false
            }
            Err(error) => {
                self.internal_error(conn, msg_id, qs_proto::ErrorReport::from_error(&error))
                    .await;
                false
            }
        }
    }

    /// Applies an inventory delta if it was made against the version stored for this session;
    /// otherwise asks for the whole inventory.
    async fn on_delta(
        &self,
        conn: &Arc<Connection>,
        msg_id: MessageId,
        delta: InventoryDelta,
    ) -> bool {
        let Some(have) = self.registry.inventory_version(conn) else {
            self.refuse_unregistered(conn, msg_id).await;
            return false;
        };
        if have != delta.base {
            Counters::bump(&self.counters.refused);
            let message = format!(
                "controller holds inventory version {have}, the delta is against {}",
                delta.base
            );
            self.reply_error(conn, msg_id, ErrorCode::StaleBase, message)
                .await;
            return false;
        }
        let operations = delta.patch.0.len();
        let stored = self
            .ingest(
                conn,
                msg_id,
                Change::Patch {
                    patch: delta.patch,
                    collected_at: delta.collected_at,
                },
            )
            .await;
        if stored == Stored::Yes {
            self.registry.set_inventory_version(conn, delta.version);
            self.registry.seen(conn);
            Counters::bump(&self.counters.inventory_deltas);
            info!(mercury_id = %conn.identity(), version = delta.version, operations, "inventory delta applied");
        }
        stored == Stored::Refused
    }

    /// Submits a change and answers a refusal.
    async fn ingest(&self, conn: &Arc<Connection>, msg_id: MessageId, change: Change) -> Stored {
        let is_patch = matches!(change, Change::Patch { .. });
        match self.ingest.submit(conn.identity(), change).await {
            Ok(_) => Stored::Yes,
            Err(error) if error.is_callers() => {
                Counters::bump(&self.counters.documents_refused);
                warn!(mercury_id = %conn.identity(), peer = %conn.peer(), error = %qs_proto::ErrorReport::from_error(&error), "inventory refused");
                // A delta that does not apply is answered so the agent sends everything.
                let code = if is_patch && matches!(error, IngestError::PatchFailed(_)) {
                    ErrorCode::StaleBase
                } else {
                    ErrorCode::BadArguments
                };
                let message = qs_proto::ErrorReport::from_error(&error).to_string();
                self.reply_error(conn, msg_id, code, message).await;
                Stored::Refused
            }
            Err(error) => {
                self.internal_error(conn, msg_id, qs_proto::ErrorReport::from_error(&error))
                    .await;
                Stored::Failed
            }
        }
    }

    async fn internal_error(
        &self,
        conn: &Connection,
        re: MessageId,
        report: qs_proto::ErrorReport,
    ) {
        warn!(mercury_id = %conn.identity(), error = %report, "handling an agent message failed");
        self.reply_error(conn, re, ErrorCode::Internal, report.to_string())
            .await;
    }

    /// Tells an agent without a session here to register (after a controller restart).
    async fn refuse_unregistered(&self, conn: &Connection, re: MessageId) {
        Counters::bump(&self.counters.refused);
        self.reply_error(conn, re, ErrorCode::NotRegistered, "register first".into())
            .await;
    }

    async fn reply_error(
        &self,
        conn: &Connection,
        re: MessageId,
        code: ErrorCode,
        message: String,
    ) {
        let reply = Envelope::reply(
            self.dispatcher.next_id(),
            re,
            Body::Error(ErrorBody { code, message }),
        );
        self.send(conn, &reply).await;
    }

    async fn send(&self, conn: &Connection, env: &Envelope) {
        match codec::encode(env) {
            Ok(frame) => {
                if conn.send(&frame).await.is_err() {
                    debug!(mercury_id = %conn.identity(), "reply not sent: connection closed");
                }
            }
            Err(error) => warn!(error = %error, "reply could not be encoded"),
        }
    }
}

/// What became of an inventory change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Committed.
    Yes,
    /// Refused as the peer's mistake.
    Refused,
    /// The controller failed (the store); not the peer's fault.
    Failed,
}

/// A session number unique across controller processes: the epoch, then the connection.
fn session_number(epoch: u32, conn: &Connection) -> u64 {
    (u64::from(epoch) << 32) | (conn.id().0 & 0xffff_ffff)
}

impl Handler for AgentProtocol {
    async fn on_message(&self, conn: &Arc<Connection>, payload: Vec<u8>) {
        let env = match codec::decode(&payload, self.config.max_frame) {
            Ok(env) => env,
            Err(error) => {
                self.count_decode_error(&error);
                warn!(peer = %conn.peer(), mercury_id = %conn.identity(), bytes = payload.len(), error = %error, "undecodable frame");
                if let Some(re) = error.message_id() {
                    let code = match error {
                        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                        _ => ErrorCode::Malformed,
                    };
                    self.reply_error(conn, re, code, error.to_string()).await;
                }
                self.judge(conn, true);
                return;
            }
        };
        drop(payload);
        Counters::bump(&self.counters.messages);
        let refused = self.handle(conn, env).await;
        self.judge(conn, refused);
    }

    fn on_multipart(&self, conn: &Arc<Connection>) {
        Counters::bump(&self.counters.malformed_frames);
        warn!(peer = %conn.peer(), mercury_id = %conn.identity(), "message with more than one frame dropped");
        self.judge(conn, true);
    }

    fn on_disconnect(&self, conn: &Arc<Connection>) {
        self.strikes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&conn.id());
        self.dispatcher.on_disconnect(conn);
        self.registry.end_session(&conn.id(), conn.identity());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agents::dispatcher::Dispatcher;
    use crate::agents::ingest::IngestConfig;
    use crate::agents::registry::RegistryConfig;
    use crate::agents::transport::ConnectionId;
    use crate::store::Store;
    use qs_proto::InventoryUpdate;
    use serde_json::json;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    const A: &str = "013c16030373937262a32e831ff18c941b6481ded8";

    struct Rig {
        protocol: AgentProtocol,
        store: Store,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        _dir: tempfile::TempDir,
        _shutdown: CancellationToken,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let counters = Arc::new(Counters::default());
        let registry = Arc::new(Registry::new(
            store.clone(),
            RegistryConfig {
                timeout: Duration::from_secs(15),
                controller: "test".into(),
            },
        ));
        let shutdown = CancellationToken::new();
        let (ingest, _worker) = Ingest::start(
            store.clone(),
            IngestConfig::default(),
            counters.clone(),
            shutdown.clone(),
        );
        let dispatcher = Arc::new(Dispatcher::new(
            5,
            Duration::from_secs(3600),
            counters.clone(),
        ));
        let protocol = AgentProtocol::new(
            ProtocolConfig {
                max_frame: 1 << 20,
                heartbeat_interval: Duration::from_secs(5),
            },
            counters.clone(),
            registry.clone(),
            ingest,
            dispatcher,
        );
        Rig {
            protocol,
            store,
            registry,
            counters,
            _dir: dir,
            _shutdown: shutdown,
        }
    }

    fn conn(n: u64) -> (Arc<Connection>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(16);
        let c = Connection::new(
            ConnectionId(n),
            "127.0.0.1:4000".parse().unwrap(),
            A.parse().unwrap(),
            tx,
        );
        (Arc::new(c), rx)
    }

    async fn send(rig: &Rig, conn: &Arc<Connection>, id: u64, body: Body) {
        let frame = codec::encode(&Envelope::new(MessageId(id), body)).unwrap();
        rig.protocol.on_message(conn, frame).await;
    }

    async fn reply(rx: &mut mpsc::Receiver<Vec<u8>>) -> Envelope {
        let frame = rx.recv().await.unwrap();
        let body = if frame[0] & 0x02 != 0 {
            &frame[9..]
        } else {
            &frame[2..]
        };
        codec::decode(body, 1 << 20).unwrap()
    }

    fn register(inventory: serde_json::Value, version: u64) -> Body {
        Body::Register(Register {
            mercury_id: A.parse().unwrap(),
            agent_version: "0.1.0".into(),
            boot_id: "boot".into(),
            capabilities: Vec::new(),
            inventory,
            inventory_version: version,
            image_id: Some("img-1".into()),
            calls: Vec::new(),
            collected_at: None,
        })
    }

    fn delta(base: u64, version: u64, patch: serde_json::Value) -> Body {
        Body::InventoryDelta(InventoryDelta {
            base,
            version,
            patch: serde_json::from_value(patch).unwrap(),
            collected_at: None,
        })
    }

    #[tokio::test]
    async fn a_peer_whose_every_message_is_refused_is_disconnected() {
        let rig = rig();
        let (c, mut rx) = conn(1);
        for n in 0..MAX_STRIKES - 1 {
            rig.protocol
                .on_message(&c, b"\xc1 not msgpack".to_vec())
                .await;
            assert!(!c.is_closed(), "closed after {} refusals", n + 1);
        }
        // One good message resets the count.
        send(&rig, &c, 1, register(json!({"n": 1}), 1)).await;
        assert!(matches!(reply(&mut rx).await.body, Body::Registered(_)));
        for _ in 0..MAX_STRIKES - 1 {
            send(
                &rig,
                &c,
                2,
                Body::CapabilityCall(qs_proto::CapabilityCall {
                    capability: "x".into(),
                    args: json!({}),
                }),
            )
            .await;
        }
        assert!(!c.is_closed());
        rig.protocol.on_message(&c, b"\xc1".to_vec()).await;
        assert!(c.is_closed());
        assert_eq!(rig.counters.snapshot().peers_disconnected, 1);
    }

    #[tokio::test]
    async fn register_is_stored_before_it_is_acknowledged_then_heartbeats_are_answered() {
        let rig = rig();
        let (c, mut rx) = conn(1);
        send(&rig, &c, 1, Body::Heartbeat(Heartbeat {})).await;
        assert!(matches!(
            reply(&mut rx).await.body,
            Body::Error(ErrorBody {
                code: ErrorCode::NotRegistered,
                ..
            })
        ));
        send(&rig, &c, 2, register(json!({"mem": {"total": 8}}), 1)).await;
        let ack = reply(&mut rx).await;
        assert!(matches!(ack.body, Body::Registered(_)));
        assert_eq!(ack.re, Some(MessageId(2)));
        // Stored, with the controller's agent fields, before the reply left.
        let doc = rig.store.get_inventory(A).await.unwrap().unwrap();
        assert_eq!(doc["mem"]["total"], 8);
        assert_eq!(doc["agent"]["online"], true);
        assert_eq!(doc["agent"]["image_id"], "img-1");
        assert_eq!(doc["agent"]["address"], "127.0.0.1:4000");
        assert_eq!(doc["agent"]["session"], (5u64 << 32) | 1);
        send(&rig, &c, 3, Body::Heartbeat(Heartbeat {})).await;
        assert!(matches!(reply(&mut rx).await.body, Body::Heartbeat(_)));
    }

    #[tokio::test]
    async fn a_delta_against_a_stale_version_is_refused_and_changes_nothing() {
        let rig = rig();
        let (c, mut rx) = conn(1);
        send(&rig, &c, 1, register(json!({"disks": ["sda", "sdb"]}), 4)).await;
        reply(&mut rx).await;
        send(
            &rig,
            &c,
            2,
            delta(3, 5, json!([{"op": "remove", "path": "/disks/1"}])),
        )
        .await;
        let refused = reply(&mut rx).await;
        assert!(matches!(
            refused.body,
            Body::Error(ErrorBody {
                code: ErrorCode::StaleBase,
                ..
            })
        ));
        let doc = rig.store.get_inventory(A).await.unwrap().unwrap();
        assert_eq!(doc["disks"], json!(["sda", "sdb"]));
        // Against the right version it applies, and the next delta builds on it.
        send(
            &rig,
            &c,
            3,
            delta(4, 5, json!([{"op": "remove", "path": "/disks/1"}])),
        )
        .await;
        send(
            &rig,
            &c,
            4,
            delta(
                5,
                6,
                json!([{"op": "add", "path": "/disks/-", "value": "sdc"}]),
            ),
        )
        .await;
        let doc = rig.store.get_inventory(A).await.unwrap().unwrap();
        assert_eq!(doc["disks"], json!(["sda", "sdc"]));
        assert_eq!(rig.counters.snapshot().inventory_deltas, 2);
        // A delta that does not apply asks for the whole inventory too.
        send(
            &rig,
            &c,
            5,
            delta(6, 7, json!([{"op": "remove", "path": "/nothing"}])),
        )
        .await;
        assert!(matches!(
            reply(&mut rx).await.body,
            Body::Error(ErrorBody {
                code: ErrorCode::StaleBase,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_duplicate_register_on_a_new_connection_takes_over_the_session() {
        let rig = rig();
        let (c1, mut rx1) = conn(1);
        let (c2, mut rx2) = conn(2);
        send(&rig, &c1, 1, register(json!({"n": 1}), 1)).await;
        reply(&mut rx1).await;
        send(&rig, &c2, 1, register(json!({"n": 2}), 1)).await;
        assert!(matches!(reply(&mut rx2).await.body, Body::Registered(_)));
        assert!(c1.is_closed(), "the replaced connection is closed");
        assert_eq!(rig.registry.session_count(), 1);
        // The old connection's disconnect does not end the new session.
        rig.protocol.on_disconnect(&c1);
        assert_eq!(rig.registry.session_count(), 1);
        let doc = rig.store.get_inventory(A).await.unwrap().unwrap();
        assert_eq!(doc["n"], 2);
    }

    #[tokio::test]
    async fn a_non_document_inventory_is_the_agents_mistake_and_a_forged_id_is_refused() {
        let rig = rig();
        let (c, mut rx) = conn(1);
        send(&rig, &c, 1, register(json!([1, 2, 3]), 1)).await;
        assert!(matches!(
            reply(&mut rx).await.body,
            Body::Error(ErrorBody {
                code: ErrorCode::BadArguments,
                ..
            })
        ));
        assert_eq!(rig.counters.snapshot().documents_refused, 1);
        assert!(rig.store.get_inventory(A).await.unwrap().is_none());
        let mut other = match register(json!({}), 1) {
            Body::Register(r) => r,
            _ => unreachable!(),
        };
        other.mercury_id = "00bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            .parse()
            .unwrap();
        send(&rig, &c, 2, Body::Register(other)).await;
        assert!(matches!(
            reply(&mut rx).await.body,
            Body::Error(ErrorBody {
                code: ErrorCode::BadArguments,
                ..
            })
        ));
        // A full update without a session asks to register.
        send(
            &rig,
            &c,
            3,
            Body::InventoryUpdate(InventoryUpdate {
                inventory: json!({}),
                version: 2,
                collected_at: None,
            }),
        )
        .await;
        assert!(matches!(
            reply(&mut rx).await.body,
            Body::Error(ErrorBody {
                code: ErrorCode::NotRegistered,
                ..
            })
        ));
    }
}
