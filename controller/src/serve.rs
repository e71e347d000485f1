//! `qs serve`: the controller process.
//!
//! Binds the agent port ([`Transport`]) and the HTTP API, prints the addresses it got as one
//! JSON line on stdout (so `--agents tcp://127.0.0.1:0` works for tests and scripts), and runs
//! until SIGINT/SIGTERM. The owners of agent state are built here, each once: registry,
//! ingest, dispatcher; the sweep is a background task woken by a timer and by disconnections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agents::counters::Counters;
use crate::agents::dispatcher::Dispatcher;
use crate::agents::ingest::{Ingest, IngestConfig};
use crate::agents::protocol::{AgentProtocol, ProtocolConfig};
use crate::agents::registry::{Registry, RegistryConfig};
use crate::agents::transport::{Transport, TransportConfig};
use crate::http::{self, AppState};
use crate::store::Store;

/// Flags of `qs serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the embedded store keeps its files.
    #[arg(long, env = "QS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Agent endpoint (ZeroMQ over TCP); port 0 picks a free port.
    #[arg(long, default_value = "tcp://0.0.0.0:9002")]
    agents: String,
    /// HTTP API address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9000")]
    http: SocketAddr,
    /// Largest agent message accepted, in bytes; larger ones are dropped unread.
    #[arg(long, default_value_t = qs_proto::codec::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// How often agents send heartbeats.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// An agent silent for this long is shown offline.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// Also start a `qs-agent` on this machine (found next to `qs`), connected to this controller.
    #[arg(long)]
    local_agent: bool,
    /// Which agents are admitted without a boot token: `open` (all), `approve` (pending until
    /// `qs agents approve ID`), `allowlist` (only ids listed with `qs agents allow ID…`).
    #[arg(long, value_enum, env = "QS_ENROLL", default_value_t = crate::agents::enrollment::Policy::Approve)]
    enroll: crate::agents::enrollment::Policy,
    /// Serve the boot image (iPXE script, kernel, initramfs) from this directory on the HTTP
    /// port; default: `images/out` of the workspace `qs` was built in, when it holds a kernel.
    #[arg(long, env = "QS_BOOT_DIR")]
    boot_dir: Option<PathBuf>,
    /// The agent endpoint boot scripts give servers (`tcp://HOST:PORT`); default: the host the
    /// script request came to (its Host header) with the agent port.
    #[arg(long)]
    advertise: Option<String>,
    /// This controller's name in agent records (`agent.controller`); defaults to the host name.
    #[arg(long, env = "QS_CONTROLLER_NAME")]
    name: Option<String>,
    /// Longest deadline a capability call may ask for.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_call_timeout: Duration,
    /// Most agent connections at once.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Most agent connections at once from one address.
    #[arg(long, default_value_t = 1024)]
    max_connections_per_source: usize,
    /// Where inventory lives: `embedded` (redb in --data-dir) or `mongodb://HOST:PORT/DB`.
    #[arg(long, env = "QS_STORE", default_value = "embedded")]
    store: String,
    /// Also index this document path (repeatable), e.g. `--index dmi.board_serial`.
    #[arg(long = "index", value_name = "PATH")]
    index: Vec<String>,
    /// Inventory versions kept per host (older ones are pruned on insert).
    #[arg(long, default_value_t = crate::store::DEFAULT_HISTORY)]
    history: usize,
    /// Longest an inventory query may take before the caller gets 504.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    query_timeout: Duration,
    /// Inventory queries running at once; more wait (up to --query-timeout), then get 503.
    #[arg(long, default_value_t = 4)]
    max_concurrent_queries: usize,
    /// Where plan sets (folders of plan YAML files) live; default `config/` in the data dir.
    #[arg(long, env = "QS_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// How long finished jobs, their tasks and logs are kept.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    job_retention: Duration,
    /// Deadline of a task whose job and capability name none.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    task_timeout: Duration,
}

/// Validated settings of the controller.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Embedded store directory.
    pub data_dir: PathBuf,
    /// Agent TCP listen address.
    pub agents: SocketAddr,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Largest agent message.
    pub max_frame: usize,
    /// Agents' heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Offline after this much silence.
    pub heartbeat_timeout: Duration,
    /// Start a local agent.
    pub local_agent: bool,
    /// Enrollment policy (`--enroll`).
    pub enroll: crate::agents::enrollment::Policy,
    /// Where the boot image is served from; `None`: no boot serving.
    pub boot_dir: Option<PathBuf>,
    /// The agent endpoint written into boot scripts instead of the Host header's host.
    pub advertise: Option<String>,
    /// This controller's name.
    pub name: String,
    /// Longest capability call deadline.
    pub max_call_timeout: Duration,
    /// Most agent connections.
    pub max_connections: usize,
    /// Most agent connections per source address.
    pub max_connections_per_source: usize,
    /// Bounds on inventory queries.
    pub queries: crate::http::QueryLimits,
    /// Which store (`--store`).
    pub store: crate::store::StoreLocation,
    /// Indexes and history depth (`--index`, `--history`).
    pub store_options: crate::store::StoreOptions,
    /// Plan sets (`--config-dir`).
    pub config_dir: PathBuf,
    /// `--job-retention`.
    pub job_retention: Duration,
    /// `--task-timeout`.
    pub task_timeout: Duration,
}

impl ServeArgs {
    /// Checks the flags and turns them into ready values.
    pub fn validate(self) -> anyhow::Result<ServeConfig> {
        let agents = parse_tcp_endpoint(&self.agents)?;
        if self.max_frame < 1024 {
            bail!("--max-frame must be at least 1024 bytes");
        }
        if self.query_timeout.is_zero() {
            bail!("--query-timeout must be positive");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout <= self.heartbeat_interval {
            bail!("--heartbeat-timeout must be longer than a non-zero --heartbeat-interval");
        }
        Ok(ServeConfig {
            store: crate::store::StoreLocation::parse(&self.store)?,
            store_options: crate::store::StoreOptions {
                indexes: self.index,
                history: self.history,
            },
            config_dir: match (self.config_dir, &self.data_dir) {
                (Some(dir), _) => dir,
                (None, Some(data)) => data.join("config"),
                (None, None) => default_data_dir().join("config"),
            },
            job_retention: self.job_retention,
            task_timeout: self.task_timeout,
            data_dir: self.data_dir.unwrap_or_else(default_data_dir),
            agents,
            http: self.http,
            max_frame: self.max_frame,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            local_agent: self.local_agent,
            enroll: self.enroll,
            boot_dir: boot_dir(self.boot_dir)?,
            advertise: (self.advertise.as_deref())
                .map(qs_boot::script::parse_advertise)
                .transpose()
                .context("--advertise must look like tcp://HOST:PORT")?,
            name: self.name.unwrap_or_else(host_name),
            max_call_timeout: self.max_call_timeout,
            max_connections: self.max_connections.max(1),
            max_connections_per_source: self.max_connections_per_source.max(1),
            queries: crate::http::QueryLimits {
                concurrent: self.max_concurrent_queries.max(1),
                timeout: self.query_timeout,
                ..crate::http::QueryLimits::default()
            },
        })
    }
}

fn parse_tcp_endpoint(text: &str) -> anyhow::Result<SocketAddr> {
    let Some(addr) = text.strip_prefix("tcp://") else {
        bail!("--agents must look like tcp://HOST:PORT, got {text:?}");
    };
    addr.parse()
        .with_context(|| format!("--agents {text:?} is not tcp://IP:PORT"))
}

/// The machine's host name, for `agent.controller`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into())
}

/// Raises the open-file limit to its hard maximum: every agent holds a descriptor.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "open-file limit raised"),
            Err(error) => warn!(error = %error, soft, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => info!(limit = soft, "open-file limit"),
        Err(error) => warn!(error = %error, "cannot read the open-file limit"),
    }
}

/// `/var/lib/quicksilver` when writable (root), else `~/.local/share/quicksilver`.
pub fn default_data_dir() -> PathBuf {
    let system = PathBuf::from("/var/lib/quicksilver");
    if std::fs::create_dir_all(&system).is_ok() {
        return system;
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/quicksilver"),
        None => PathBuf::from("quicksilver-data"),
    }
}

fn describe_store(config: &ServeConfig) -> String {
    match &config.store {
        crate::store::StoreLocation::Embedded => config.data_dir.display().to_string(),
        crate::store::StoreLocation::MongoDb(url) => crate::store::mongo::redact(url),
    }
}

/// Answers `/healthz` on the HTTP port (503, the store's state and location, password removed)
/// until the store works: a MongoDB server that cannot be reached at start is reported rather
/// than met with silence. Startup goes on, on the same socket, once it answers.
async fn health_until_ready(store: &Store, listener: &std::net::TcpListener) -> anyhow::Result<()> {
    if store.health().await == crate::store::Health::Ok {
        return Ok(());
    }
    let early = listener.try_clone()?;
    early.set_nonblocking(true)?;
    let early = TcpListener::from_std(early)?;
    let watched = store.clone();
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let store = watched.clone();
            async move {
                let mut state = serde_json::to_value(store.health().await).unwrap_or_default();
                state["location"] = serde_json::json!(store.describe());
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"status": "starting", "store": state})),
                )
            }
        }),
    );
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::server::serve(
        early,
        app,
        http::server::ServerLimits::default(),
        stop.clone(),
    ));
    store.wait_until_healthy().await;
    stop.cancel();
    let _ = server.await;
    Ok(())
}

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let store = Store::open_for_serve(
        &config.store,
        &config.data_dir,
        config.store_options.clone(),
    )
    .await
    .with_context(|| format!("cannot open the store ({})", describe_store(&config)))?;
    let http_listener = std::net::TcpListener::bind(config.http)
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    health_until_ready(&store, &http_listener).await?;
    raise_open_file_limit();
    let (tokens, admin_token) =
        crate::security::tokens::TokenStore::open(store.clone(), &config.data_dir)
            .await
            .context("cannot open the operator tokens")?;
    if let Some(path) = &admin_token {
        // Where, never what: the secret stays in the file.
        info!(path = %path.display(), "first start: an admin token was written to {}", path.display());
    }
    let enrollment = Arc::new(crate::agents::enrollment::Enrollment::new(
        config.enroll,
        store.clone(),
    ));
    let enrollment_store = store.clone();
    info!(policy = %config.enroll, "agent enrollment policy");
    let gate = Arc::new(
        crate::security::gate::Gate::open(tokens, store.clone(), &config.data_dir)
            .context("cannot open the audit log")?,
    );
    // Agents pin its public half (`controller.pub`): created once, kept across restarts.
    let server_key = Arc::new(
        qs_noise::keyfile::load_or_create(&config.data_dir)
            .context("cannot load or create the controller's key pair")?,
    );
    let epoch = store
        .next_epoch()
        .await
        .context("cannot advance the controller epoch in the store")?;
    let counters = Arc::new(Counters::default());
    let registry = Arc::new(Registry::new(
        store.clone(),
        RegistryConfig {
            timeout: config.heartbeat_timeout,
            controller: config.name.clone(),
        },
    ));
    registry
        .mark_stale_offline()
        .await
        .context("cannot mark agents of an earlier run offline")?;
    let dispatcher = Arc::new(Dispatcher::new(
        epoch,
        config.max_call_timeout,
        counters.clone(),
    ));
    let shutdown = CancellationToken::new();
    // The ingest worker outlives the transport so queued changes are committed on the way out.
    let ingest_shutdown = CancellationToken::new();
    let (ingest, ingest_worker) = Ingest::start(
        store.clone(),
        IngestConfig::default(),
        counters.clone(),
        ingest_shutdown.clone(),
    );
    let protocol = Arc::new(
        AgentProtocol::new(
            ProtocolConfig {
                max_frame: config.max_frame,
                heartbeat_interval: config.heartbeat_interval,
            },
            counters.clone(),
            registry.clone(),
            ingest,
            dispatcher.clone(),
        )
        .with_enrollment(enrollment.clone()),
    );

    let agent_listener = TcpListener::bind(config.agents)
        .await
        .with_context(|| format!("cannot listen for agents on {}", config.agents))?;
    let agents_addr = agent_listener.local_addr()?;
    let boot = boot_routes(
        &config,
        agents_addr.port(),
        store.clone(),
        server_key.public(),
        enrollment.clone(),
    );
    http_listener.set_nonblocking(true)?;
    let http_listener = TcpListener::from_std(http_listener)?;
    let http_addr = http_listener.local_addr()?;

    let transport = Transport::new(
        agent_listener,
        TransportConfig {
            max_frame: config.max_frame,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: config.heartbeat_timeout,
            max_connections: config.max_connections,
            max_connections_per_source: config.max_connections_per_source,
            key: server_key.clone(),
        },
        counters.clone(),
        protocol,
    );
    let (records, _record_writer) = crate::jobs::writer::RecordWriter::start(store.clone());
    let jobs = crate::jobs::Jobs::new(
        store.clone(),
        registry.clone(),
        dispatcher.clone(),
        records,
        crate::jobs::JobsConfig {
            default_timeout: config.task_timeout,
            retention: config.job_retention,
            grace: Duration::from_secs(10),
            reconnect_wait: config.heartbeat_timeout * 4,
            config_dir: config.config_dir.clone(),
        },
    );
    // Before agents can connect: every task an earlier run left unfinished must be listening
    // when its agent registers and reports what became of it.
    jobs.recover()
        .await
        .context("cannot load the tasks an earlier run left unfinished")?;
    jobs.spawn_retention();
    let app = http::router(AppState {
        store,
        registry: registry.clone(),
        dispatcher,
        counters,
        queries: Arc::new(crate::http::QueryGate::new(config.queries)),
        config_dir: config.config_dir.clone(),
        jobs,
    });
    let app = app.merge(crate::security::enrollment_routes::routes(
        enrollment.clone(),
        enrollment_store,
    ));
    // Every API route behind the token gate; the boot routes stay open (firmware has no token).
    let app = crate::security::gate::protect(app, gate).merge(boot);

    // The first stdout line is for scripts and tests: the addresses actually bound.
    println!(
        "{}",
        serde_json::json!({"agents": format!("tcp://{agents_addr}"), "http": format!("http://{http_addr}"), "server_key": server_key.public().to_string()})
    );
    info!(agents = %agents_addr, http = %http_addr, data_dir = %config.data_dir.display(), epoch, name = %config.name, server_key = %server_key.public(), "controller listening");

    let mut tasks = JoinSet::new();
    tasks.spawn(transport.run(shutdown.clone()));
    tasks.spawn(sweep_loop(
        registry.clone(),
        config.heartbeat_timeout,
        shutdown.clone(),
    ));
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            http::server::serve(
                http_listener,
                app,
                http::server::ServerLimits::default(),
                shutdown,
            )
            .await;
        });
    }
    let _local_agent = if config.local_agent {
        // Enrolled by a one-time token bound to whichever machine uses it: this one.
        let (_, token) = enrollment
            .create_boot_token(
                None,
                None,
                true,
                crate::agents::enrollment::LOCAL_AGENT_TOKEN_TTL,
                "qs serve --local-agent",
            )
            .await
            .context("cannot make the local agent's enrollment token")?;
        Some(spawn_local_agent(agents_addr, server_key.public(), &token)?)
    } else {
        None
    };

    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    // Every connection is closed now: record those sessions offline.
    if let Err(error) = registry.sweep().await {
        warn!(error = %qs_proto::ErrorReport::from_error(&error), "last agent sweep failed");
    }
    ingest_shutdown.cancel();
    let _ = ingest_worker.await;
    Ok(())
}

async fn sweep_loop(registry: Arc<Registry>, timeout: Duration, shutdown: CancellationToken) {
    let period = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            () = registry.woken() => {}
        }
        if let Err(error) = registry.sweep().await {
            warn!(error = %qs_proto::ErrorReport::from_error(&error), "agent sweep failed");
        }
    }
}

fn spawn_local_agent(
    agents: SocketAddr,
    server_key: &qs_noise::PublicKey,
    token: &str,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("cannot find the qs executable")?;
    let agent = exe.with_file_name("qs-agent");
    let endpoint = format!("tcp://127.0.0.1:{}", agents.port());
    info!(agent = %agent.display(), controller = %endpoint, "starting a local agent");
    tokio::process::Command::new(&agent)
        .args(["run", "--controller", &endpoint])
        .env("QS_SERVER_KEY", server_key.to_string())
        .env("QS_TOKEN", token)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))
}

/// `--boot-dir`, or `images/out` beside this build when it holds a kernel; an explicit
/// directory that does not exist is a mistake, said at once.
fn boot_dir(flag: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    match flag {
        Some(dir) if dir.is_dir() => Ok(Some(dir)),
        Some(dir) => bail!("--boot-dir {} is not a directory", dir.display()),
        None => Ok(std::env::current_exe()
            .ok()
            .and_then(|exe| qs_boot::default_boot_dir(&exe))),
    }
}

/// The boot image routes (unauthenticated: firmware cannot send tokens), or none, said at start.
fn boot_routes(
    config: &ServeConfig,
    agent_port: u16,
    store: Store,
    server_key: &qs_noise::PublicKey,
    enrollment: Arc<crate::agents::enrollment::Enrollment>,
) -> axum::Router {
    let Some(dir) = &config.boot_dir else {
        info!("no boot serving: no --boot-dir, and no images/out with a kernel beside this build");
        return axum::Router::new();
    };
    info!(dir = %dir.display(), "serving boot image from {}", dir.display());
    let boot = qs_boot::BootConfig {
        dir: dir.clone(),
        agent_port,
        advertise: config.advertise.clone(),
        server_key: Some(server_key.to_string()),
    };
    let hosts = crate::agents::enrollment::EnrollingHosts::new(
        crate::http::hosts::StoreHosts::new(store),
        enrollment,
    );
    qs_boot::router(boot, hosts)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_endpoint_must_be_tcp_ip_port() {
        assert!(parse_tcp_endpoint("tcp://0.0.0.0:9002").is_ok());
        assert!(parse_tcp_endpoint("0.0.0.0:9002").is_err());
        assert!(parse_tcp_endpoint("tcp://example.com:9002").is_err());
    }
}
