//! Issue 12 through the real binaries: every agent session is a Noise `IK` session with the
//! controller's pinned key; wrong keys, plain peers, replayed handshakes and tampered bytes get
//! nothing and are counted; envelopes larger than one Noise message travel in chunks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use qs_noise::{Initiator, KeyPair, PublicKey};
use qs_proto::{codec, Body, Envelope, MessageId, Register};
use qs_tests::secure_peer::SecurePeer;
use qs_tests::{bin_dir, fixture_host, wait_until, Controller, FIXTURE_HOSTS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);

async fn counter(controller: &Controller, name: &str) -> u64 {
    let (_, c) = controller.get("/api/v1/counters").await.unwrap();
    c[name].as_u64().unwrap_or(0)
}

fn peer_id(n: u64) -> String {
    format!("00{n:040x}")
}

fn register(id: &str, inventory: Value) -> Vec<u8> {
    codec::encode(&Envelope::new(
        MessageId(1),
        Body::Register(Register {
            mercury_id: id.parse().unwrap(),
            agent_version: "0.0.0-test".into(),
            boot_id: "security".into(),
            capabilities: Vec::new(),
            inventory,
            inventory_version: 1,
            image_id: None,
            calls: Vec::new(),
            collected_at: None,
        }),
    ))
    .unwrap()
}

/// One ZMTP message frame.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 9);
    if body.len() < 256 {
        f.extend([0u8, body.len() as u8]);
    } else {
        f.push(0x02);
        f.extend((body.len() as u64).to_be_bytes());
    }
    f.extend_from_slice(body);
    f
}

/// Reads one ZMTP frame: (is a command, body).
async fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, Vec<u8>)> {
    let flags = s.read_u8().await?;
    let len = if flags & 0x02 != 0 {
        s.read_u64().await? as usize
    } else {
        s.read_u8().await? as usize
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok((flags & 0x04 != 0, body))
}

/// Reads the controller's greeting, READY and first message (the handshake reply).
async fn read_reply(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut greeting = [0u8; 64];
    s.read_exact(&mut greeting).await?;
    loop {
        let (command, body) = read_frame(s).await?;
        if !command {
            return Ok(body);
        }
    }
}

/// Waits until the controller hangs up on `s`.
async fn hung_up(s: &mut TcpStream) {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
        .await
        .expect("the controller kept the connection open")
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_controller_with_another_key_and_gets_nothing_from_it() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &[]).await.unwrap();
    let impostor_key = KeyPair::generate().unwrap().public().to_string();
    let mut agent = tokio::process::Command::new(bin_dir().join("qs-agent"))
        .args([
            "run",
            "--controller",
            &controller.agents,
            "--reply-timeout",
            "2s",
        ])
        .args(["--server-key", &impostor_key, "--root"])
        .arg(fixture_host(FIXTURE_HOSTS[0]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the wrong-key handshake counted", WAIT, || async {
        Ok((counter(&controller, "unauthenticated").await >= 2).then_some(()))
    })
    .await
    .unwrap();
    assert!(controller.agents().await.unwrap().is_empty());
    agent.kill().await.unwrap();
    let mut log = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(
        log.contains("does it hold the key given with --server-key"),
        "the agent did not say why: {log}"
    );

    // A key that is not a key is refused before anything is dialled.
    let (ok, _, err) = qs_tests::agent_cli(&[
        "run",
        "--controller",
        &controller.agents,
        "--server-key",
        "bm90IGEga2V5",
    ])
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("server-key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_replayed_and_tampered_sessions_register_nothing() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--heartbeat-timeout", "600s"])
        .await
        .unwrap();
    let server_key: PublicKey = qs_tests::server_key(&controller.agents)
        .unwrap()
        .parse()
        .unwrap();

    // 1. A plain ZeroMQ peer sending a register envelope where the handshake belongs.
    let before = counter(&controller, "unauthenticated").await;
    let mut s = TcpStream::connect(controller.agents_addr()).await.unwrap();
    let mut bytes = qs_tests::secure_peer::zmtp_hello(peer_id(1).as_bytes());
    bytes.extend(frame(&register(&peer_id(1), json!({"plain": true}))));
    s.write_all(&bytes).await.unwrap();
    hung_up(&mut s).await;
    assert!(counter(&controller, "unauthenticated").await > before);

    // 2. A genuine session, recorded byte for byte, then replayed on a new connection.
    let id = peer_id(2);
    let agent = KeyPair::generate().unwrap();
    let (initiator, first) = Initiator::new(&agent, &server_key).unwrap();
    let mut recorded = qs_tests::secure_peer::zmtp_hello(id.as_bytes());
    recorded.extend(frame(&first));
    let mut s = TcpStream::connect(controller.agents_addr()).await.unwrap();
    s.write_all(&recorded).await.unwrap();
    let reply = read_reply(&mut s).await.unwrap();
    let (mut seal, mut open) = initiator.finish(&reply).unwrap().split();
    let sealed_register = frame(&seal.seal(&register(&id, json!({"n": 2}))).unwrap());
    s.write_all(&sealed_register).await.unwrap();
    let (_, answer) = read_frame(&mut s).await.unwrap();
    let answer = codec::decode(&open.open(&answer, 1 << 20).unwrap(), 1 << 20).unwrap();
    assert!(matches!(answer.body, Body::Registered(_)), "{answer:?}");
    drop(s);
    wait_until("the genuine session offline", WAIT, || async {
        Ok((!controller.is_online(&id).await?).then_some(()))
    })
    .await
    .unwrap();
    recorded.extend(sealed_register);
    let before = counter(&controller, "unauthenticated").await;
    let mut s = TcpStream::connect(controller.agents_addr()).await.unwrap();
    s.write_all(&recorded).await.unwrap();
    hung_up(&mut s).await;
    assert!(counter(&controller, "unauthenticated").await > before);
    assert!(
        !controller.is_online(&id).await.unwrap(),
        "a replay went online"
    );

    // 3. A session whose register has one bit flipped.
    let id = peer_id(3);
    let (initiator, first) = Initiator::new(&KeyPair::generate().unwrap(), &server_key).unwrap();
    let mut s = TcpStream::connect(controller.agents_addr()).await.unwrap();
    let mut hello = qs_tests::secure_peer::zmtp_hello(id.as_bytes());
    hello.extend(frame(&first));
    s.write_all(&hello).await.unwrap();
    let reply = read_reply(&mut s).await.unwrap();
    let (mut seal, _) = initiator.finish(&reply).unwrap().split();
    let mut sealed = seal.seal(&register(&id, json!({"n": 3}))).unwrap();
    let middle = sealed.len() / 2;
    sealed[middle] ^= 0x10;
    let before = counter(&controller, "unauthenticated").await;
    s.write_all(&frame(&sealed)).await.unwrap();
    hung_up(&mut s).await;
    assert!(counter(&controller, "unauthenticated").await > before);
    let listed = controller.agents().await.unwrap();
    assert!(
        !listed
            .iter()
            .any(|a| a["mercury_id"] == id.as_str() || a["mercury_id"] == peer_id(1).as_str()),
        "an unauthenticated register was stored: {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_of_megabytes_travels_in_authenticated_chunks() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &[]).await.unwrap();
    let id = peer_id(7);
    let mut peer = SecurePeer::connect(&controller.agents, &id).await.unwrap();
    // About 3 MB: some 50 Noise messages in one envelope.
    let pad: String = (0..3_000_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    peer.send(&register(&id, json!({"pad": pad})))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, peer.recv())
        .await
        .unwrap()
        .unwrap();
    let reply = codec::decode(&reply, 1 << 20).unwrap();
    assert!(matches!(reply.body, Body::Registered(_)), "{reply:?}");
    let (status, docs) = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"filter": {"mercury_id": id}, "projection": {"pad": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{docs}");
    assert_eq!(docs[0]["pad"].as_str().unwrap(), pad);
}

/// Runs `qs` with `args` against `controller` presenting `token`.
async fn cli_as(controller: &Controller, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(bin_dir().join("qs"))
        .args(args)
        .env("QS_URL", &controller.http)
        .env("QS_TOKEN", token)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status_as(controller: &Controller, token: &str, method: &str, path: &str) -> u16 {
    let client = controller.client_with(token);
    let url = format!("{}{path}", controller.http);
    let request = match method {
        "GET" => client.get(url),
        "PUT" => client.put(url).json(&json!({"mode": "local"})),
        "POST" => client
            .post(url)
            .json(&json!({"capability": "inspect", "args": {"only": ["cpu"]}})),
        _ => unreachable!(),
    };
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_need_a_token_with_a_strong_enough_role_and_changes_are_audited() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &[]).await.unwrap();
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(data.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("admin.token"), 0o600);
    assert_eq!(mode("controller.key"), 0o600);
    let id = peer_id(9);

    // Open: the health checks. Everything else: 401 without a valid token.
    for path in ["/healthz", "/api/v1/healthz"] {
        let r = reqwest::get(format!("{}{path}", controller.http))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let r = reqwest::get(format!("{}/api/v1/agents", controller.http))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        status_as(&controller, "qs_nope_nope", "GET", "/api/v1/agents").await,
        401
    );
    let (ok, _, err) = cli_as(&controller, "qs_nope_nope", &["agents", "list"]).await;
    assert!(
        !ok && (err.contains("401") || err.contains("token")),
        "{err}"
    );

    // Roles, made with the CLI and the admin token.
    let make = |role: &'static str| {
        let controller = &controller;
        async move {
            let (ok, out, err) = cli_as(
                controller,
                &controller.token,
                &["tokens", "create", "--role", role],
            )
            .await;
            assert!(ok, "{err}");
            out.trim().to_owned()
        }
    };
    let viewer = make("viewer").await;
    let operator = make("operator").await;
    assert!(viewer.starts_with("qs_") && operator.starts_with("qs_"));
    let boot = format!("/api/v1/hosts/{id}/boot");
    let calls = format!("/api/v1/agents/{id}/calls");
    assert_eq!(
        status_as(&controller, &viewer, "GET", "/api/v1/agents").await,
        200
    );
    assert_eq!(status_as(&controller, &viewer, "PUT", &boot).await, 403);
    assert_eq!(status_as(&controller, &viewer, "POST", &calls).await, 403);
    assert_eq!(
        status_as(&controller, &viewer, "GET", "/api/v1/tokens").await,
        403
    );
    let (ok, _, err) = cli_as(&controller, &viewer, &["agents", "list"]).await;
    assert!(ok, "{err}");
    let operator_boot = status_as(&controller, &operator, "PUT", &boot).await;
    assert!(
        operator_boot != 401 && operator_boot != 403,
        "{operator_boot}"
    );
    assert_eq!(
        status_as(&controller, &operator, "GET", "/api/v1/tokens").await,
        403
    );

    // Listing shows ids and roles, never secrets or hashes; a revoked token is refused.
    let (ok, list, err) = cli_as(
        &controller,
        &controller.token,
        &["tokens", "list", "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let viewer_id = viewer.split('_').nth(1).unwrap();
    for secret in [&viewer, &operator, &controller.token] {
        assert!(!list.to_string().contains(secret.as_str()));
    }
    assert!(!list.to_string().contains("hash"));
    let (ok, _, err) = cli_as(
        &controller,
        &controller.token,
        &["tokens", "revoke", viewer_id],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        status_as(&controller, &viewer, "GET", "/api/v1/agents").await,
        401
    );

    // An expiring token works, then does not.
    let (ok, short, err) = cli_as(
        &controller,
        &controller.token,
        &["tokens", "create", "--role", "viewer", "--expires", "2s"],
    )
    .await;
    assert!(ok, "{err}");
    let short = short.trim().to_owned();
    wait_until("the short token expired", WAIT, || async {
        Ok((status_as(&controller, &short, "GET", "/api/v1/agents").await == 401).then_some(()))
    })
    .await
    .unwrap();

    // Every state-changing request that passed is audited: who, what, when; no secret.
    let audit = std::fs::read_to_string(data.path().join("audit.log")).unwrap();
    let operator_id = operator.split('_').nth(1).unwrap();
    assert!(
        audit.lines().any(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            r["token"] == operator_id
                && r["method"] == "PUT"
                && r["path"] == boot.as_str()
                && r["time"].is_string()
        }),
        "{audit}"
    );
    assert!(
        audit.contains(&format!("/api/v1/tokens/{viewer_id}")),
        "{audit}"
    );

    // No secret in any file of the data dir but the one meant to hold it.
    for entry in walk(data.path()) {
        if entry.ends_with("admin.token") || entry.ends_with("controller.key") {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        for secret in [&viewer, &operator, &short, &controller.token] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a token secret",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_key_claiming_an_online_mercury_id_is_refused_and_counted() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--heartbeat-timeout", "600s"])
        .await
        .unwrap();
    let id = peer_id(11);
    let mut owner = SecurePeer::connect(&controller.agents, &id).await.unwrap();
    owner
        .send(&register(&id, json!({"who": "owner"})))
        .await
        .unwrap();
    let reply = codec::decode(&owner.recv().await.unwrap(), 1 << 20).unwrap();
    assert!(matches!(reply.body, Body::Registered(_)), "{reply:?}");

    let mut thief = SecurePeer::connect(&controller.agents, &id).await.unwrap();
    assert_ne!(thief.public_key(), owner.public_key());
    thief
        .send(&register(&id, json!({"who": "thief"})))
        .await
        .unwrap();
    wait_until("the conflict counted", WAIT, || async {
        Ok((counter(&controller, "identity_conflicts").await == 1).then_some(()))
    })
    .await
    .unwrap();
    // The thief got no answer; the owner's session and document are untouched.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), thief.recv())
            .await
            .is_err()
    );
    assert!(controller.is_online(&id).await.unwrap());
    let (_, doc) = controller
        .get(&format!("/api/v1/inventory/{id}"))
        .await
        .unwrap();
    assert_eq!(doc["who"], "owner", "{doc}");
    owner
        .send(
            &codec::encode(&Envelope::new(
                MessageId(2),
                Body::Heartbeat(qs_proto::Heartbeat {}),
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    let echo = codec::decode(&owner.recv().await.unwrap(), 1 << 20).unwrap();
    assert_eq!(echo.re, Some(MessageId(2)));
}
