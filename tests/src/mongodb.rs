//! A MongoDB-wire server (secantusdb) owned by one test: started on a port and data directory
//! the test chooses, optionally as a one-node replica set (so multi-document transactions work),
//! killed and started again on the same port and data, to test a store server that goes away and
//! comes back. The shared server for the rest of the suite is [`crate::test_mongodb_uri`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::repo_root;

/// The server: prints its port once listening, serves until SIGTERM or SIGKILL.
const SERVE: &str = r#"
import signal, sys, threading, logging
from secantus.server import SecantusDBServer
logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
port, data, rs = int(sys.argv[1]), sys.argv[2], sys.argv[3] or None
server = SecantusDBServer(host="127.0.0.1", port=port, storage_path=data,
                          replica_set_name=rs, enable_test_commands=False)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
server.start()
print(server.port, flush=True)
stop.wait()
server.stop()
"#;

/// One secantusdb process of a test.
pub struct MongoServer {
    child: Option<Child>,
    /// The port it listens on (kept across restarts).
    pub port: u16,
    data: PathBuf,
    replica_set: bool,
}

fn python() -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let status = Command::new(root.join("tests/mongodb-server"))
        .arg("--install")
        .stdout(Stdio::null())
        .status()
        .context("cannot run tests/mongodb-server --install")?;
    if !status.success() {
        bail!("tests/mongodb-server --install failed: {status}");
    }
    let venv = std::env::var_os("QS_MONGODB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/secantusdb-venv"));
    Ok(venv.join("bin/python"))
}

impl MongoServer {
    /// Starts a server keeping its data in `data` (port 0: the kernel picks one); a replica set
    /// named `qs` when `replica_set`.
    pub async fn start(data: &Path, port: u16, replica_set: bool) -> anyhow::Result<MongoServer> {
        let mut server = MongoServer {
            child: None,
            port,
            data: data.to_owned(),
            replica_set,
        };
        server.restart().await?;
        Ok(server)
    }

    /// `mongodb://127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server again on the same port and data (after [`MongoServer::kill`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let python = python()?;
        std::fs::create_dir_all(&self.data)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut child = Command::new("setpriv")
                .arg("--pdeathsig=KILL")
                .arg(&python)
                .args(["-c", SERVE])
                .arg(self.port.to_string())
                .arg(&self.data)
                .arg(if self.replica_set { "qs" } else { "" })
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start secantusdb")?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            }
            if let Ok(port) = line.trim().parse::<u16>() {
                self.port = port;
                self.child = Some(child);
                return Ok(());
            }
            let _ = child.kill();
            let _ = child.wait();
            // The port of a killed server may still be held for a moment.
            if Instant::now() > deadline {
                bail!("secantusdb did not start on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Kills the server at once (SIGKILL): clients see it vanish mid-run.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
    }
}
