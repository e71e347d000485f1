//! A simulated fleet: many agents in one process, each running the real agent session code
//! ([`qs_agent::session::serve_controller`]) on its own ZeroMQ DEALER socket, with an inventory
//! from a captured fixture host made distinct (serials, UUID, MACs) so each has its own
//! MercuryId. What each session does is recorded through a [`SessionObserver`]: when it was
//! registered, how often, heartbeat echo times, sessions lost.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use qs_agent::session::{self, SessionConfig, SessionEnd, SessionObserver};
use qs_capabilities::Registry;
use qs_inspectors::SysRoot;
use qs_proto::inventory::Inventory;
use qs_proto::MercuryId;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{fixture_host, repo_root};

/// One simulated server: who it is, what it registers with, which fixture it came from.
#[derive(Debug, Clone)]
pub struct SimulatedServer {
    /// Its MercuryId, derived from its inventory as a real agent would.
    pub id: MercuryId,
    /// The inventory it registers with.
    pub inventory: Value,
    /// The captured host it was made from (its `inspect` capability reads that tree).
    pub host: String,
}

/// The captured hosts under inspectors/fixtures/hosts, inspected once (quick facts, as at
/// registration).
pub fn fixture_inventories() -> anyhow::Result<Vec<(String, Inventory)>> {
    let dir = repo_root().join("inspectors/fixtures/hosts");
    let mut hosts: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    hosts.sort();
    if hosts.is_empty() {
        anyhow::bail!("no fixture hosts under {}", dir.display());
    }
    Ok(hosts
        .into_iter()
        .map(|host| {
            let inventory =
                qs_agent::identity::inspect_quickly(&SysRoot::new(fixture_host(&host)), None);
            (host, inventory)
        })
        .collect())
}

/// `n` servers made from the fixture hosts in turn, server `i` with its own product UUID,
/// serials and MAC addresses (locally administered, `02:` + `tag` + `i`), so every MercuryId
/// differs. `tag` keeps fleets of different runs apart.
pub fn simulated_servers(n: usize, tag: u8) -> anyhow::Result<Vec<SimulatedServer>> {
    let bases = fixture_inventories()?;
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        let (host, base) = &bases[i % bases.len()];
        let mut inventory = base.clone();
        let serial = format!("QSBENCH{tag:02x}{i:08}");
        let dmi = inventory.dmi.get_or_insert_with(Default::default);
        dmi.product_uuid = Some(format!("51535349-4d00-4{tag:03x}-8000-{i:012x}"));
        dmi.product_serial = Some(serial.clone());
        dmi.chassis_serial = Some(serial.clone());
        dmi.board_serial = Some(serial);
        let n_bytes = (i as u32).to_be_bytes();
        for (k, nic) in inventory.interfaces.iter_mut().flatten().enumerate() {
            let mac = format!(
                "02:{tag:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                n_bytes[1], n_bytes[2], n_bytes[3], k as u8
            );
            if nic.address.is_some() {
                nic.address = Some(mac.clone());
            }
            if nic.permanent_address.is_some() {
                nic.permanent_address = Some(mac);
            }
        }
        let id = qs_agent::identity::derive(&inventory)
            .map_err(|no_id| anyhow!("simulated server {i} from {host} has no MercuryId: {no_id}"))?
            .id;
        inventory.mercury_id = Some(id.to_string());
        servers.push(SimulatedServer {
            id,
            inventory: serde_json::to_value(&inventory)?,
            host: host.clone(),
        });
    }
    Ok(servers)
}

/// What one simulated agent's sessions did.
#[derive(Debug, Default)]
pub struct AgentRecord {
    /// When the fleet started dialling for it.
    started: OnceLock<Instant>,
    /// When its first registration was acknowledged.
    registered_at: OnceLock<Instant>,
    /// Registrations acknowledged, over all its sessions.
    registrations: AtomicU32,
    /// Sessions that ended, for whatever reason.
    sessions_lost: AtomicU32,
    /// Sessions that ended before the controller acknowledged a registration.
    unregistered_sessions: AtomicU32,
    /// Why its last session ended.
    last_loss: Mutex<Option<String>>,
    /// Every heartbeat echo: when it arrived and how long it took.
    echoes: Arc<Mutex<Vec<(Instant, Duration)>>>,
    /// When each heartbeat was sent, over the whole fleet.
    heartbeats: Arc<Mutex<Vec<Instant>>>,
}

impl AgentRecord {
    /// When its first registration was acknowledged.
    pub fn registered_at(&self) -> Option<Instant> {
        self.registered_at.get().copied()
    }

    /// When the fleet started dialling for it.
    pub fn started(&self) -> Option<Instant> {
        self.started.get().copied()
    }

    /// Registrations acknowledged over all its sessions (more than one: it registered twice).
    pub fn registrations(&self) -> u32 {
        self.registrations.load(Ordering::Relaxed)
    }

    /// Sessions that ended.
    pub fn sessions_lost(&self) -> u32 {
        self.sessions_lost.load(Ordering::Relaxed)
    }

    /// Sessions that ended before any registration was acknowledged (a registration timeout,
    /// a refused or dropped connection).
    pub fn unregistered_sessions(&self) -> u32 {
        self.unregistered_sessions.load(Ordering::Relaxed)
    }

    /// Why its last session ended, if one did.
    pub fn last_loss(&self) -> Option<String> {
        self.last_loss.lock().ok().and_then(|l| l.clone())
    }
}

impl SessionObserver for AgentRecord {
    fn registered(&self, _nth: u32) {
        let _ = self.registered_at.set(Instant::now());
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    fn heartbeat_sent(&self) {
        if let Ok(mut sent) = self.heartbeats.lock() {
            sent.push(Instant::now());
        }
    }

    fn heartbeat_echoed(&self, rtt: Duration) {
        if let Ok(mut echoes) = self.echoes.lock() {
            echoes.push((Instant::now(), rtt));
        }
    }

    fn session_ended(&self, end: &SessionEnd) {
        self.sessions_lost.fetch_add(1, Ordering::Relaxed);
        if end.registrations == 0 {
            self.unregistered_sessions.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut last) = self.last_loss.lock() {
            *last = Some(end.reason.clone());
        }
    }
}

/// A running simulated fleet.
pub struct Fleet {
    records: Vec<Arc<AgentRecord>>,
    echoes: Arc<Mutex<Vec<(Instant, Duration)>>>,
    heartbeats: Arc<Mutex<Vec<Instant>>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// When the first agent started dialling.
    pub started: Instant,
}

impl Fleet {
    /// Starts one agent per server against `endpoint`, agent `i` dialling at `spread * i / n`
    /// after the start (all at once when `spread` is zero).
    pub fn start(
        endpoint: &str,
        servers: Vec<SimulatedServer>,
        spread: Duration,
        reply_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_with(endpoint, servers, spread, reply_timeout, |server| {
            Registry::standard(SysRoot::new(fixture_host(&server.host)))
        })
    }

    /// [`Fleet::start`] with the capabilities `registry` gives each server.
    pub fn start_with(
        endpoint: &str,
        servers: Vec<SimulatedServer>,
        spread: Duration,
        reply_timeout: Duration,
        registry: impl Fn(&SimulatedServer) -> Registry,
    ) -> anyhow::Result<Self> {
        let config = SessionConfig::new(
            endpoint,
            crate::server_key(endpoint)?.parse()?,
            qs_proto::codec::DEFAULT_MAX_FRAME,
            reply_timeout,
        )?;
        let echoes = Arc::new(Mutex::new(Vec::new()));
        let heartbeats = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut records = Vec::with_capacity(servers.len());
        let n = servers.len().max(1) as u32;
        let started = Instant::now();
        for (i, server) in servers.into_iter().enumerate() {
            let record = Arc::new(AgentRecord {
                echoes: echoes.clone(),
                heartbeats: heartbeats.clone(),
                ..AgentRecord::default()
            });
            records.push(record.clone());
            let capabilities = registry(&server);
            let agent = qs_agent::session::Agent::new(
                server.id,
                server.inventory,
                capabilities,
                format!("simulated-{i}"),
            )?
            .with_observer(record.clone());
            let config = config.clone();
            let stop = stop.clone();
            let at = tokio::time::Instant::from_std(started) + spread * (i as u32) / n;
            tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(at) => {}
                }
                let _ = record.started.set(Instant::now());
                session::serve_controller(Arc::new(agent), &config, stop.cancelled_owned()).await;
            });
        }
        Ok(Self {
            records,
            echoes,
            heartbeats,
            stop,
            tasks,
            started,
        })
    }

    /// Each agent's record, in server order.
    pub fn records(&self) -> &[Arc<AgentRecord>] {
        &self.records
    }

    /// How many agents have had a registration acknowledged.
    pub fn registered(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.registered_at().is_some())
            .count()
    }

    /// Every heartbeat echo so far: when it arrived and its round-trip time.
    pub fn echoes(&self) -> Vec<(Instant, Duration)> {
        self.echoes.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// When each heartbeat so far was sent.
    pub fn heartbeats_sent(&self) -> Vec<Instant> {
        self.heartbeats
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Closes every session (the sockets drop) and waits for the agents' tasks to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Raises this process's open-file limit to at least `wanted` (children inherit it): the hard
/// limit too when allowed (root), else the soft limit up to the hard one. Returns the soft
/// limit now in force.
pub fn raise_open_file_limit(wanted: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-file limit")?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    let soft = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).context("cannot raise the open-file limit")?;
    Ok(soft)
}
