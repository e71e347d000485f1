//! The controller's side of the agent protocol: what each message from an agent does.
//!
//! The transport hands each message here in arrival order for its connection. Heartbeats and
//! replies touch memory only; inventory changes go through [`Ingest`] and this connection
//! waits for their commit (so a register is stored before it is acknowledged and before the
//! agent's next message is read), while every other connection goes on. Every frame is decoded
//! with the size limit; one that does not decode is counted, logged, and answered with an
//! error whenever its message id could be read.

use std::sync::Arc;
use std::time::Duration;

use qs_proto::codec::{self, DecodeError};
use qs_proto::{
    Body, Envelope, ErrorBody, ErrorCode, Heartbeat, InventoryDelta, MessageId, Register,
    Registered,
};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::dispatcher::{Dispatcher, Reply};
use super::ingest::{Change, Ingest, IngestError};
use super::registry::{encode_record, AgentRecord, Registry};
use super::transport::{Connection, Handler};

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
        }
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

    async fn handle(&self, conn: &Arc<Connection>, env: Envelope) {
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
            }
            Body::InventoryUpdate(update) => {
                if self.registry.inventory_version(conn).is_none() {
                    self.refuse_unregistered(conn, env.id).await;
                    return;
                }
                let change = Change::Replace {
                    inventory: update.inventory,
                };
                if self.ingest(conn, env.id, change).await {
                    self.registry.set_inventory_version(conn, update.version);
                    self.registry.seen(conn);
                    Counters::bump(&self.counters.inventory_updates);
                    info!(mercury_id = %conn.identity(), version = update.version, "inventory updated");
                }
            }
            Body::InventoryDelta(delta) => self.on_delta(conn, env.id, delta).await,
            Body::CallProgress(progress) => {
                self.registry.seen(conn);
                self.dispatcher
                    .on_progress(conn.identity(), env.re, progress);
            }
            Body::CallResult(result) => {
                self.registry.seen(conn);
                self.dispatcher
                    .on_reply(conn.identity(), env.re, Reply::Outcome(result.outcome));
            }
            Body::Error(error) => {
                warn!(mercury_id = %conn.identity(), re = ?env.re, code = ?error.code, message = %error.message, "agent reported an error");
                self.dispatcher
                    .on_reply(conn.identity(), env.re, Reply::Refused(error));
            }
            Body::Registered(_) | Body::CapabilityCall(_) => {
                Counters::bump(&self.counters.refused);
                self.reply_error(
                    conn,
                    env.id,
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not sent to the controller", env.body.kind()),
                )
                .await;
            }
        }
    }

    async fn on_register(&self, conn: &Arc<Connection>, msg_id: MessageId, register: Register) {
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
            return;
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
                return;
            }
        };
        let change = Change::Register {
            inventory: register.inventory,
            agent,
        };
        // The store first, then memory: a session exists only once its record is stored.
        if !self.ingest(conn, msg_id, change).await {
            return;
        }
        self.registry
            .start_session(conn, record, register.inventory_version);
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
    }

    /// Applies an inventory delta if it was made against the version stored for this session;
    /// otherwise asks for the whole inventory.
    async fn on_delta(&self, conn: &Arc<Connection>, msg_id: MessageId, delta: InventoryDelta) {
        let Some(have) = self.registry.inventory_version(conn) else {
            self.refuse_unregistered(conn, msg_id).await;
            return;
        };
        if have != delta.base {
            Counters::bump(&self.counters.refused);
            let message = format!(
                "controller holds inventory version {have}, the delta is against {}",
                delta.base
            );
            self.reply_error(conn, msg_id, ErrorCode::StaleBase, message)
                .await;
            return;
        }
        let operations = delta.patch.0.len();
        if self
            .ingest(conn, msg_id, Change::Patch { patch: delta.patch })
            .await
        {
            self.registry.set_inventory_version(conn, delta.version);
            self.registry.seen(conn);
            Counters::bump(&self.counters.inventory_deltas);
            info!(mercury_id = %conn.identity(), version = delta.version, operations, "inventory delta applied");
        }
    }

    /// Submits a change and answers a refusal; true when it was stored.
    async fn ingest(&self, conn: &Arc<Connection>, msg_id: MessageId, change: Change) -> bool {
        let is_patch = matches!(change, Change::Patch { .. });
        match self.ingest.submit(conn.identity(), change).await {
            Ok(_) => true,
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
                false
            }
            Err(error) => {
                self.internal_error(conn, msg_id, qs_proto::ErrorReport::from_error(&error))
                    .await;
                false
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

    async fn reply_error(&self, conn: &Connection, re: MessageId, code: ErrorCode, message: String) {
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
                return;
            }
        };
        drop(payload);
        Counters::bump(&self.counters.messages);
        self.handle(conn, env).await;
    }

    fn on_multipart(&self, conn: &Arc<Connection>) {
        Counters::bump(&self.counters.malformed_frames);
        warn!(peer = %conn.peer(), mercury_id = %conn.identity(), "message with more than one frame dropped");
    }

    fn on_disconnect(&self, conn: &Arc<Connection>) {
        self.dispatcher.on_disconnect(conn);
        self.registry.end_session(&conn.id(), conn.identity());
    }
}
