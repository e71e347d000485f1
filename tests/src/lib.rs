//! Harness for end-to-end tests: starts real `qs serve` and `qs-agent run` processes on
//! loopback, reads the addresses they bound from their first stdout line, and waits on
//! conditions (never on the clock).
//!
//! The binaries come from the same target directory as the test (`cargo build --workspace
//! --bins` first; `tests/run` does), or from `QS_BIN_DIR`.
//!
//! [`fleet`] runs many simulated agents in one process (the real session code); benches read
//! what the controller uses through [`process_usage`].
//!
//! Agents must pin their controller's public key: the harness reads `controller.pub` from the
//! data dir of every controller it starts and passes it to every agent (and simulated fleet)
//! dialling that controller's endpoint ([`server_key`]). [`secure_peer`] drives a session by
//! hand.

pub mod bench_report;
pub mod fleet;
pub mod mongodb;
pub mod process_usage;
pub mod secure_peer;

use std::collections::HashMap;
use std::sync::Mutex;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Children's logs: inherited when `QS_TEST_LOG` is set (to debug a failure), else dropped so
/// test output stays readable.
fn child_stderr() -> Stdio {
    if std::env::var_os("QS_TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Controller public keys by agent endpoint (`tcp://HOST:PORT`), for the agents the harness
/// starts.
static SERVER_KEYS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

fn remember_server_key(endpoint: &str, key: String) {
    let mut keys = SERVER_KEYS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    keys.get_or_insert_with(HashMap::new)
        .insert(endpoint.to_owned(), key);
}

/// The public key (base64) of the controller serving `endpoint`, as read from its data dir.
pub fn server_key(endpoint: &str) -> anyhow::Result<String> {
    SERVER_KEYS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .and_then(|keys| keys.get(endpoint).cloned())
        .ok_or_else(|| anyhow!("no controller key known for {endpoint}: start the controller first, or pin_server_key"))
}

/// For an agent started before its controller: creates the controller's key pair in
/// `data_dir` now (as `qs serve` would at its first start) and pins it for `endpoint`.
pub fn pin_server_key(endpoint: &str, data_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)?;
    let key = qs_noise::keyfile::load_or_create(data_dir)?
        .public()
        .to_string();
    remember_server_key(endpoint, key.clone());
    Ok(key)
}

/// Where `qs` and `qs-agent` are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>; a bench binary such as
    // target/<profile>/boot-storm sits next to them already.
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The repository root (for fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A captured fixture host tree, usable as an agent's `--root`.
pub fn fixture_host(name: &str) -> PathBuf {
    repo_root().join("inspectors/fixtures/hosts").join(name)
}

/// Polls `condition` until it returns `Ok(Some(v))` or `timeout` passes; the error names what
/// never became true and the last reason it gave.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match condition().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition false".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not true within {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn first_line(child: &mut Child, what: &str) -> anyhow::Result<Value> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{what}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .with_context(|| format!("{what} printed nothing within 60s"))??
        .ok_or_else(|| anyhow!("{what} exited before printing its first line"))?;
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    serde_json::from_str(&line).with_context(|| format!("{what} first line is not JSON: {line}"))
}

/// A running `qs serve`.
pub struct Controller {
    child: Child,
    /// The agent endpoint it bound, `tcp://127.0.0.1:PORT`.
    pub agents: String,
    /// The HTTP base URL, `http://127.0.0.1:PORT`.
    pub http: String,
    /// The admin token it wrote into its data dir at first start (`admin.token`).
    pub token: String,
}

/// The `--store` of controllers under test: with `QS_TEST_STORE=mongodb`, each data dir's
/// inventory lives in its own database on a MongoDB-wire server (`QS_TEST_MONGODB_URI`, or
/// tests/mongodb-server started once for this process; failing, never skipping, when it cannot
/// start); unset or `embedded`: the embedded store in the data dir.
pub fn test_store(data_dir: &Path) -> anyhow::Result<Option<String>> {
    use std::hash::{Hash, Hasher};
    match std::env::var("QS_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("embedded") => Ok(None),
        Ok("mongodb") => {
            let uri = test_mongodb_uri()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data_dir.hash(&mut h);
            Ok(Some(format!(
                "{}/qs_e2e_{}_{:016x}",
                uri.trim_end_matches('/'),
                std::process::id(),
                h.finish()
            )))
        }
        Ok(other) => bail!("QS_TEST_STORE={other:?}: expected embedded or mongodb"),
    }
}

/// The URI of the MongoDB-wire server tests use: `QS_TEST_MONGODB_URI`, or tests/mongodb-server
/// started once for this process (and stopped with it); an error, never a skip, without one.
pub fn test_mongodb_uri() -> anyhow::Result<String> {
    static URI: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    URI.get_or_init(|| {
        if let Ok(uri) = std::env::var("QS_TEST_MONGODB_URI") {
            return Ok(uri);
        }
        // The server is started from a thread that lives as long as the server, with a
        // parent-death signal: it stops (and removes its data) when the test process ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let script = repo_root().join("tests/mongodb-server");
            let spawned = std::process::Command::new("setpriv")
                .arg("--pdeathsig=TERM")
                .arg(&script)
                .stdout(Stdio::piped())
                .stderr(child_stderr())
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start {}: {e}", script.display())));
                    return;
                }
            };
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            }
            let _ = tx.send(if line.starts_with("mongodb://") {
                Ok(line.trim().to_owned())
            } else {
                Err(format!("tests/mongodb-server printed {line:?}, not a URI"))
            });
            let _ = child.wait();
        });
        rx.recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| Err("tests/mongodb-server printed no URI within 600 s".into()))
    })
    .clone()
    .map_err(|e| anyhow!("no MongoDB-wire server (tests/run installs secantusdb; or set QS_TEST_MONGODB_URI): {e}"))
}

impl Controller {
    /// Starts `qs serve` on free loopback ports with `data_dir` and extra flags.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(data_dir, "tcp://127.0.0.1:0", "127.0.0.1:0", extra).await
    }

    /// Starts `qs serve` on the given endpoints (to restart on the same ports).
    pub async fn start_on(
        data_dir: &Path,
        agents: &str,
        http: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        // A test that names its store keeps it.
        let store = match extra.contains(&"--store") {
            true => None,
            false => test_store(data_dir)?,
        };
        // Tests admit every agent unless they test enrollment (tests/tests/security.rs).
        let enroll = match extra.contains(&"--enroll") {
            true => None,
            false => Some(["--enroll", "open"]),
        };
        let mut child = Command::new(binary("qs")?)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--agents", agents, "--http", http])
            .args(store.iter().flat_map(|url| ["--store", url.as_str()]))
            .args(enroll.iter().flatten())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(child_stderr())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start qs serve")?;
        let line = first_line(&mut child, "qs serve").await?;
        let field = |k: &str| {
            line.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("qs serve first line lacks {k}: {line}"))
        };
        let agents = field("agents")?;
        let key = qs_noise::keyfile::read_public(data_dir)
            .context("the controller wrote no controller.pub")?
            .to_string();
        if key != field("server_key")? {
            bail!("controller.pub differs from the key qs serve announced");
        }
        remember_server_key(&agents, key);
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .context("the controller wrote no admin.token")?
            .trim()
            .to_owned();
        Ok(Self {
            agents,
            http: field("http")?,
            token,
            child,
        })
    }

    /// The agent endpoint's `HOST:PORT`.
    pub fn agents_addr(&self) -> &str {
        self.agents.trim_start_matches("tcp://")
    }

    /// The HTTP `HOST:PORT`.
    pub fn http_addr(&self) -> &str {
        self.http.trim_start_matches("http://")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill qs serve")
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// An HTTP client that sends the admin token.
    pub fn client(&self) -> reqwest::Client {
        self.client_with(&self.token)
    }

    /// An HTTP client that sends `token` (any string) as its bearer token.
    pub fn client_with(&self, token: &str) -> reqwest::Client {
        let headers = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map(|v| reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, v)]))
            .unwrap_or_default();
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap_or_default()
    }

    /// GET a path under the base URL (with the admin token), returning status and JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .client()
            .get(format!("{}{path}", self.http))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// POST JSON to a path under the base URL, returning status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .client()
            .post(format!("{}{path}", self.http))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// Runs the `qs` CLI against this controller; returns (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(binary("qs")?)
            .args(args)
            .env("QS_URL", &self.http)
            .env("QS_TOKEN", &self.token)
            .output()
            .await
            .context("cannot run qs")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The agents list from the API.
    pub async fn agents(&self) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.get("/api/v1/agents").await?;
        if status != 200 {
            bail!("GET /api/v1/agents: {status} {body}");
        }
        body.as_array()
            .cloned()
            .ok_or_else(|| anyhow!("agents is not a list"))
    }

    /// Whether the agent with this id is listed online.
    pub async fn is_online(&self, id: &str) -> anyhow::Result<bool> {
        Ok(self.agents().await?.iter().any(|a| {
            a.get("mercury_id").and_then(Value::as_str) == Some(id)
                && a.get("online").and_then(Value::as_bool) == Some(true)
        }))
    }

    /// Waits until every agent in `ids` is listed online.
    pub async fn wait_online(&self, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
        for id in ids {
            wait_until(&format!("agent {id} online"), timeout, || async {
                Ok(self.is_online(id).await?.then_some(()))
            })
            .await?;
        }
        Ok(())
    }
}

/// Captured hosts that yield three distinct MercuryIds (see inspectors/fixtures/SOURCES.md).
pub const FIXTURE_HOSTS: [&str; 3] = ["dev-vm", "lenovo-thinkpad-t490", "qemu-q35"];

/// A controller on a fresh data dir with one `qs-agent run` per fixture host, all online:
/// the setup tests share instead of copying it.
pub struct FixtureServers {
    /// The controller's data dir (removed on drop).
    pub data: tempfile::TempDir,
    /// The controller.
    pub controller: Controller,
    /// One agent per [`FIXTURE_HOSTS`] entry, in that order.
    pub agents: Vec<Agent>,
    /// Their MercuryIds, in the same order.
    pub ids: Vec<String>,
}

impl FixtureServers {
    /// Starts `qs serve` with `extra` flags and the three agents, and waits until all are
    /// online (each wait bounded by `timeout`).
    pub async fn start(extra: &[&str], timeout: Duration) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let controller = Controller::start(data.path(), extra).await?;
        let mut agents = Vec::new();
        for host in FIXTURE_HOSTS {
            agents.push(Agent::start(&controller.agents, &fixture_host(host)).await?);
        }
        let ids: Vec<String> = agents.iter().map(|a| a.mercury_id.clone()).collect();
        controller.wait_online(&ids, timeout).await?;
        Ok(Self {
            data,
            controller,
            agents,
            ids,
        })
    }
}

/// A loopback port held for a controller that starts later: bound (with SO_REUSEADDR) but not
/// listening, so dialling it is refused as if nothing were there and no other process can
/// take it, while `qs serve` (whose listener also sets SO_REUSEADDR) can bind and listen on it.
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ReservedPort {
    /// Binds port 0 on 127.0.0.1 and reads the port the kernel chose.
    pub fn new() -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// The address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ZeroMQ endpoint, `tcp://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

/// A running `qs-agent run`.
pub struct Agent {
    child: Child,
    /// The MercuryId it announced.
    pub mercury_id: String,
}

impl Agent {
    /// Starts an agent inspecting `root`, connected to `controller` (`tcp://…`), pinning the
    /// key of the controller the harness started there.
    pub async fn start(controller: &str, root: &Path) -> anyhow::Result<Self> {
        let key = server_key(controller)?;
        let mut child = Command::new(binary("qs-agent")?)
            .args([
                "run",
                "--controller",
                controller,
                "--server-key",
                &key,
                "--reply-timeout",
                "3s",
                "--root",
            ])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(child_stderr())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start qs-agent")?;
        let line = first_line(&mut child, "qs-agent run").await?;
        let mercury_id = line
            .get("mercury_id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("qs-agent first line lacks mercury_id: {line}"))?
            .to_owned();
        Ok(Self { child, mercury_id })
    }

    /// Kills the agent at once.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill qs-agent")
    }
}

/// Runs `qs-agent` with arguments; returns (success, stdout, stderr).
pub async fn agent_cli(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(binary("qs-agent")?)
        .args(args)
        .output()
        .await
        .context("cannot run qs-agent")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
