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
    // The count may land just after the hang-up on a loaded machine.
    wait_until("the refusal counted", WAIT, || async {
        Ok((counter(&controller, "unauthenticated").await > before).then_some(()))
    })
    .await
    .unwrap();

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
    // The count may land just after the hang-up on a loaded machine.
    wait_until("the refusal counted", WAIT, || async {
        Ok((counter(&controller, "unauthenticated").await > before).then_some(()))
    })
    .await
    .unwrap();
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
    // The count may land just after the hang-up on a loaded machine.
    wait_until("the refusal counted", WAIT, || async {
        Ok((counter(&controller, "unauthenticated").await > before).then_some(()))
    })
    .await
    .unwrap();
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
    // `qs agents show` tells the operator: how many, who last, when (written just after
    // the refusal).
    let shown = wait_until("the conflict recorded", WAIT, || async {
        let shown = cli_json(&controller, &["agents", "show", &id]).await;
        Ok((shown["identity_conflicts"]["count"] == 1).then_some(shown))
    })
    .await
    .unwrap();
    let conflicts = &shown["identity_conflicts"];
    assert!(conflicts["last_address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(conflicts["last_at"].is_string(), "{shown}");
}

/// The decoded reply to what a secure peer sent, or None when nothing came within `wait`
/// (a refused agent gets nothing).
async fn reply_within(peer: &mut SecurePeer, wait: Duration) -> Option<Envelope> {
    match tokio::time::timeout(wait, peer.recv()).await {
        Ok(Ok(bytes)) => Some(codec::decode(&bytes, 16 << 20).unwrap()),
        _ => None,
    }
}

fn is_registered(reply: &Option<Envelope>) -> bool {
    matches!(
        reply,
        Some(Envelope {
            body: Body::Registered(_),
            ..
        })
    )
}

async fn enrollment_counter(controller: &Controller, name: &str) -> u64 {
    let (_, status) = controller.get("/api/v1/enrollment").await.unwrap();
    status["counters"][name].as_u64().unwrap_or(0)
}

async fn cli_json(controller: &Controller, args: &[&str]) -> Value {
    let (ok, out, err) = controller.cli(args).await.unwrap();
    assert!(ok, "qs {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("qs {args:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_approve_an_agent_waits_until_an_admin_approves_the_key_it_presented() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--enroll", "approve"])
        .await
        .unwrap();
    let id = peer_id(21);
    let mut peer = SecurePeer::connect(&controller.agents, &id).await.unwrap();
    peer.send(&register(&id, json!({"who": "new"})))
        .await
        .unwrap();
    let reply = reply_within(&mut peer, WAIT).await.unwrap();
    assert!(
        matches!(
            &reply.body,
            Body::Error(qs_proto::ErrorBody { code: qs_proto::ErrorCode::EnrollmentPending, message })
                if message.contains("qs agents approve")
        ),
        "{reply:?}"
    );
    // Nothing of a pending agent is stored as inventory.
    let (status, _) = controller
        .get(&format!("/api/v1/inventory/{id}"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let pending = cli_json(&controller, &["agents", "pending", "--json"]).await;
    assert_eq!(pending[0]["mercury_id"], id.as_str(), "{pending}");
    assert!(pending[0]["pending"]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        pending[0]["pending"]["key"],
        peer.public_key().to_string().as_str()
    );
    // Approving is an admin's business.
    let (ok, operator, _) = controller
        .cli(&["tokens", "create", "--role", "operator"])
        .await
        .unwrap();
    assert!(ok);
    let approve = format!("/api/v1/agents/{id}/approve");
    assert_eq!(
        status_as(&controller, operator.trim(), "POST", &approve).await,
        403
    );
    let (ok, _, err) = controller.cli(&["agents", "approve", &id]).await.unwrap();
    assert!(ok, "{err}");
    assert!(cli_json(&controller, &["agents", "pending", "--json"])
        .await
        .as_array()
        .unwrap()
        .is_empty());
    // The approved key registers; the record says how it was admitted.
    peer.send(&register(&id, json!({"who": "new"})))
        .await
        .unwrap();
    assert!(is_registered(&reply_within(&mut peer, WAIT).await));
    let shown = cli_json(&controller, &["agents", "show", &id]).await;
    assert_eq!(
        shown["enrollment"]["admitted"]["via"], "approval",
        "{shown}"
    );
    assert_eq!(shown["agent"]["online"], true, "{shown}");

    // A real agent waits too, says why, and registers by itself once approved.
    let agent = qs_tests::Agent::start(&controller.agents, &fixture_host(FIXTURE_HOSTS[0]))
        .await
        .unwrap();
    let mercury_id = agent.mercury_id.clone();
    wait_until("the agent is pending", WAIT, || async {
        let pending = cli_json(&controller, &["agents", "pending", "--json"]).await;
        Ok(pending
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["mercury_id"] == mercury_id.as_str())
            .then_some(()))
    })
    .await
    .unwrap();
    assert!(!controller.is_online(&mercury_id).await.unwrap());
    let (ok, _, err) = controller
        .cli(&["agents", "approve", &mercury_id])
        .await
        .unwrap();
    assert!(ok, "{err}");
    wait_until("the approved agent registered", WAIT, || async {
        Ok(controller.is_online(&mercury_id).await?.then_some(()))
    })
    .await
    .unwrap();
    assert!(enrollment_counter(&controller, "pending").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_allowlist_only_listed_ids_and_valid_boot_tokens_are_admitted() {
    let data = tempfile::tempdir().unwrap();
    let boot = tempfile::tempdir().unwrap();
    std::fs::write(boot.path().join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(boot.path().join("initramfs.img"), b"initramfs").unwrap();
    let boot_dir = boot.path().to_str().unwrap();
    let controller = Controller::start(
        data.path(),
        &["--enroll", "allowlist", "--boot-dir", boot_dir],
    )
    .await
    .unwrap();
    let server_key: PublicKey = qs_tests::server_key(&controller.agents)
        .unwrap()
        .parse()
        .unwrap();
    let mac_inventory = |mac: &str| json!({"interfaces": [{"name": "eth0", "address": mac}]});

    // Unlisted: nothing back, cut off, counted.
    let stranger = peer_id(31);
    let mut peer = SecurePeer::connect(&controller.agents, &stranger)
        .await
        .unwrap();
    peer.send(&register(&stranger, json!({}))).await.unwrap();
    assert!(reply_within(&mut peer, Duration::from_secs(1))
        .await
        .is_none());
    assert_eq!(enrollment_counter(&controller, "refused").await, 1);
    assert!(cli_json(&controller, &["agents", "pending", "--json"])
        .await
        .as_array()
        .unwrap()
        .is_empty());

    // Listed in advance (arguments, or a file): admitted with any key.
    let listed = peer_id(32);
    let file = data.path().join("allow.txt");
    std::fs::write(&file, format!("# rack 12\n{listed}\n\n")).unwrap();
    let (ok, _, err) = controller
        .cli(&["agents", "allow", "--file", file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let mut peer = SecurePeer::connect(&controller.agents, &listed)
        .await
        .unwrap();
    peer.send(&register(&listed, json!({}))).await.unwrap();
    assert!(is_registered(&reply_within(&mut peer, WAIT).await));
    let (ok, out, _) = controller.cli(&["agents", "allowlist"]).await.unwrap();
    assert!(ok && out.contains(&listed), "{out}");

    // /boot/ipxe puts a fresh token bound to the MAC that asked on the kernel command line.
    let script = reqwest::get(format!(
        "{}/boot/ipxe?mac=52-54-00-ab-cd-ef&uuid=&serial=",
        controller.http
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("qs.token="))
        .unwrap_or_else(|| panic!("no qs.token= in {script}"))
        .to_owned();
    assert!(token.starts_with("qsb_"), "{script}");
    // What the status page keeps of the script hides it.
    let (_, status) = controller.get("/api/v1/boot").await.unwrap();
    assert!(!status.to_string().contains(&token));
    assert!(
        status.to_string().contains("qs.token=<redacted>"),
        "{status}"
    );

    // The token on another machine (another MAC): refused, and not used up.
    let booted = peer_id(33);
    let mut wrong = SecurePeer::connect_with_token(
        &controller.agents,
        &booted,
        &server_key,
        KeyPair::generate().unwrap(),
        &token,
    )
    .await
    .unwrap();
    wrong
        .send(&register(&booted, mac_inventory("52:54:00:00:00:99")))
        .await
        .unwrap();
    assert!(reply_within(&mut wrong, Duration::from_secs(1))
        .await
        .is_none());
    // On the machine that asked: admitted, once; the agent's key is bound.
    let key = KeyPair::generate().unwrap();
    let bound = key.public().to_string();
    let mut right =
        SecurePeer::connect_with_token(&controller.agents, &booted, &server_key, key, &token)
            .await
            .unwrap();
    right
        .send(&register(&booted, mac_inventory("52:54:00:ab:cd:ef")))
        .await
        .unwrap();
    assert!(is_registered(&reply_within(&mut right, WAIT).await));
    let shown = cli_json(&controller, &["agents", "show", &booted]).await;
    assert_eq!(
        shown["enrollment"]["admitted"]["via"], "boot_token",
        "{shown}"
    );
    assert_eq!(shown["enrollment"]["admitted"]["key"], bound.as_str());
    drop(right);
    let again = peer_id(34);
    let mut replay = SecurePeer::connect_with_token(
        &controller.agents,
        &again,
        &server_key,
        KeyPair::generate().unwrap(),
        &token,
    )
    .await
    .unwrap();
    replay
        .send(&register(&again, mac_inventory("52:54:00:ab:cd:ef")))
        .await
        .unwrap();
    assert!(reply_within(&mut replay, Duration::from_secs(1))
        .await
        .is_none());
    assert_eq!(
        enrollment_counter(&controller, "boot_tokens_consumed").await,
        1
    );
    assert_eq!(
        enrollment_counter(&controller, "boot_tokens_refused").await,
        2
    );

    // For hosts not booted by us: `qs tokens boot create --uuid`, used by a real agent.
    let fixture = fixture_host("qemu-q35");
    let (ok, inventory, err) =
        qs_tests::agent_cli(&["inspect", "--root", fixture.to_str().unwrap()])
            .await
            .unwrap();
    assert!(ok, "{err}");
    let inventory: Value = serde_json::from_str(&inventory).unwrap();
    let uuid = inventory["dmi"]["product_uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, secret, err) = controller
        .cli(&[
            "tokens",
            "boot",
            "create",
            "--uuid",
            &uuid,
            "--expires",
            "10m",
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    let listed_tokens = cli_json(&controller, &["tokens", "boot", "list", "--json"]).await;
    assert!(!listed_tokens.to_string().contains(&secret));
    assert!(!listed_tokens.to_string().contains("hash"));
    let mut agent = tokio::process::Command::new(bin_dir().join("qs-agent"))
        .args([
            "run",
            "--controller",
            &controller.agents,
            "--reply-timeout",
            "3s",
            "--root",
        ])
        .arg(&fixture)
        .env("QS_SERVER_KEY", server_key.to_string())
        .env("QS_TOKEN", &secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = tokio::io::BufReader::new(agent.stdout.take().unwrap());
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
        .await
        .unwrap();
    let mercury_id = serde_json::from_str::<Value>(&line).unwrap()["mercury_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until("the agent with a boot token registered", WAIT, || async {
        Ok(controller.is_online(&mercury_id).await?.then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_token_sees_and_acts_only_on_its_hosts() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &[]).await.unwrap();
    let (ours, theirs) = (peer_id(41), peer_id(42));
    let mut peers = Vec::new();
    for (id, rack) in [(&ours, "r1"), (&theirs, "r2")] {
        let mut peer = SecurePeer::connect(&controller.agents, id).await.unwrap();
        peer.send(&register(
            id,
            json!({"location": {"rack": rack}, "mem": {"total": 8}}),
        ))
        .await
        .unwrap();
        assert!(is_registered(&reply_within(&mut peer, WAIT).await));
        peers.push(peer);
    }
    let (ok, token, err) = controller
        .cli(&[
            "tokens",
            "create",
            "--role",
            "operator",
            "--segment",
            r#"{"location.rack": "r1"}"#,
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let token = token.trim();
    let client = controller.client_with(token);
    let post = |path: &str, body: Value| {
        let request = client
            .post(format!("{}{path}", controller.http))
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let get = |path: &str| {
        let request = client.get(format!("{}{path}", controller.http));
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, docs) = post("/api/v1/inventory/query", json!({"filter": {}})).await;
    assert_eq!(s, 200);
    assert_eq!(docs.as_array().unwrap().len(), 1, "{docs}");
    assert_eq!(docs[0]["mercury_id"], ours.as_str());
    // Even a filter naming the other host finds nothing.
    let (_, docs) = post(
        "/api/v1/inventory/query",
        json!({"filter": {"mercury_id": theirs}}),
    )
    .await;
    assert!(docs.as_array().unwrap().is_empty(), "{docs}");
    let (_, count) = post(
        "/api/v1/inventory/count",
        json!({"filter": {"mem.total": 8}}),
    )
    .await;
    assert_eq!(count["count"], 1);
    let (_, values) = post(
        "/api/v1/inventory/distinct",
        json!({"path": "location.rack"}),
    )
    .await;
    assert_eq!(values["values"], json!(["r1"]));
    let (_, groups) = post(
        "/api/v1/inventory/aggregate",
        json!({"pipeline": [{"$group": {"_id": "$location.rack", "n": {"$sum": 1}}}]}),
    )
    .await;
    assert_eq!(groups, json!([{"_id": "r1", "n": 1}]));
    let (_, agents) = get("/api/v1/agents").await;
    let ids: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["mercury_id"].as_str())
        .collect();
    assert_eq!(ids, vec![ours.as_str()]);
    assert_eq!(get(&format!("/api/v1/inventory/{ours}")).await.0, 200);
    assert_eq!(get(&format!("/api/v1/inventory/{theirs}")).await.0, 404);
    assert_eq!(
        get(&format!("/api/v1/inventory/{theirs}/history")).await.0,
        404
    );
    assert_eq!(get(&format!("/api/v1/agents/{theirs}")).await.0, 404);
    assert_eq!(
        status_as(
            &controller,
            token,
            "POST",
            &format!("/api/v1/agents/{theirs}/calls")
        )
        .await,
        404
    );
    assert_eq!(
        status_as(
            &controller,
            token,
            "PUT",
            &format!("/api/v1/hosts/{theirs}/boot")
        )
        .await,
        404
    );
    assert_eq!(
        status_as(
            &controller,
            token,
            "PUT",
            &format!("/api/v1/hosts/{ours}/boot")
        )
        .await,
        200
    );
    // Routes that do not honour segments refuse the token.
    assert_eq!(get("/api/v1/dispatcher").await.0, 403);
    assert_eq!(get("/api/v1/agents/pending").await.0, 403);
    // The unrestricted admin still sees both; the audit says who, from where.
    let (_, all) = controller.get("/api/v1/agents").await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let audit = std::fs::read_to_string(data.path().join("audit.log")).unwrap();
    let token_id = token.split('_').nth(1).unwrap();
    assert!(
        audit.lines().any(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            r["token"] == token_id
                && r["path"] == format!("/api/v1/hosts/{ours}/boot").as_str()
                && r["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.1:"))
                && r["segment"] == json!({"location.rack": "r1"})
        }),
        "{audit}"
    );
}

/// Reads the first stdout line of a child as JSON.
async fn first_json_line(child: &mut tokio::process::Child) -> Value {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
    )
    .await
    .unwrap()
    .unwrap();
    // Keep the pipe open (and drained) so the child never blocks on stdout.
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
    });
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_a_run_appears_in_its_logs_audit_store_or_api_answers() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let boot = tempfile::tempdir().unwrap();
    std::fs::write(boot.path().join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(boot.path().join("initramfs.img"), b"initramfs").unwrap();
    let controller_log = logs.path().join("controller.log");
    let agent_log = logs.path().join("agent.log");
    // Debug logs: the most a run ever writes.
    let mut serve = tokio::process::Command::new(bin_dir().join("qs"))
        .args(["-v", "serve", "--data-dir"])
        .arg(data.path())
        .args(["--agents", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--enroll", "allowlist", "--boot-dir"])
        .arg(boot.path())
        .args(
            qs_tests::test_store(data.path())
                .unwrap()
                .iter()
                .flat_map(|u| ["--store".to_owned(), u.clone()]),
        )
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&controller_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let first = first_json_line(&mut serve).await;
    let http = first["http"].as_str().unwrap().to_owned();
    let agents = first["agents"].as_str().unwrap().to_owned();
    let server_key = first["server_key"].as_str().unwrap().to_owned();
    let admin = std::fs::read_to_string(data.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let controller_secret = std::fs::read_to_string(data.path().join("controller.key"))
        .unwrap()
        .trim()
        .to_owned();
    let qs = |args: Vec<String>| {
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            let out = tokio::process::Command::new(bin_dir().join("qs"))
                .args(&args)
                .env("QS_URL", &http)
                .env("QS_TOKEN", &admin)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "qs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let arg = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut answers = String::new();

    // Tokens of every kind.
    let (operator, e) = qs(arg(&[
        "tokens", "create", "--role", "operator", "--note", "ops",
    ]))
    .await;
    answers.push_str(&e);
    let operator = operator.trim().to_owned();
    let (segment, e) = qs(arg(&[
        "tokens",
        "create",
        "--role",
        "viewer",
        "--segment",
        r#"{"dmi.sys_vendor": "QEMU"}"#,
    ]))
    .await;
    answers.push_str(&e);
    let segment = segment.trim().to_owned();
    let fixture = fixture_host("qemu-q35");
    let (ok, inventory, err) =
        qs_tests::agent_cli(&["inspect", "--root", fixture.to_str().unwrap()])
            .await
            .unwrap();
    assert!(ok, "{err}");
    let inventory: Value = serde_json::from_str(&inventory).unwrap();
    let mac = inventory["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["address"].as_str().filter(|a| *a != "00:00:00:00:00:00"))
        .unwrap()
        .to_owned();
    let (boot_token, e) = qs(arg(&["tokens", "boot", "create", "--mac", &mac])).await;
    answers.push_str(&e);
    let boot_token = boot_token.trim().to_owned();
    // One a boot script minted (the script is how it is meant to travel: not an artefact).
    let script = reqwest::get(format!(
        "{http}/boot/ipxe?mac=52-54-00-0a-0b-0c&uuid=&serial="
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let script_token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("qs.token="))
        .unwrap()
        .to_owned();

    // A real agent enrolled by its boot token.
    let mut agent = tokio::process::Command::new(bin_dir().join("qs-agent"))
        .args([
            "-v",
            "run",
            "--controller",
            &agents,
            "--reply-timeout",
            "3s",
            "--root",
        ])
        .arg(&fixture)
        .env("QS_SERVER_KEY", &server_key)
        .env("QS_TOKEN", &boot_token)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id = first_json_line(&mut agent).await["mercury_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let api = |path: String| {
        let request = client.get(format!("{http}{path}")).bearer_auth(&admin);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    wait_until("the agent registered", WAIT, || async {
        Ok(api("/api/v1/agents".into())
            .await
            .contains("\"online\":true")
            .then_some(()))
    })
    .await
    .unwrap();

    // A BMC password passed as a call argument, to a capability that refuses it and to one
    // that does not exist.
    let password = "Bmc-Pa55word-4c1d9e";
    for capability in ["inspect", "no-such-capability"] {
        let r = client
            .post(format!("{http}/api/v1/agents/{id}/calls"))
            .bearer_auth(&operator)
            .json(&json!({"capability": capability, "args": {"only": ["cpu"], "bmc_password": password}, "timeout": 30}))
            .send()
            .await
            .unwrap();
        answers.push_str(&r.text().await.unwrap());
    }
    for path in [
        "/api/v1/agents".to_owned(),
        format!("/api/v1/agents/{id}"),
        format!("/api/v1/inventory/{id}"),
        format!("/api/v1/inventory/{id}/history"),
        "/api/v1/tokens".into(),
        "/api/v1/tokens/boot".into(),
        "/api/v1/boot".into(),
        "/api/v1/enrollment".into(),
        "/api/v1/counters".into(),
        "/api/v1/dispatcher".into(),
        "/api/v1/gate".into(),
    ] {
        answers.push_str(&api(path).await);
    }
    for args in [
        arg(&["tokens", "list"]),
        arg(&["tokens", "boot", "list", "--json"]),
        arg(&["agents", "list"]),
        arg(&["agents", "show", &id]),
    ] {
        let (out, err) = qs(args).await;
        answers.push_str(&out);
        answers.push_str(&err);
    }
    // The segment token at work, and a token revoked.
    let r = client
        .post(format!("{http}/api/v1/inventory/query"))
        .bearer_auth(&segment)
        .json(&json!({"filter": {}}))
        .send()
        .await
        .unwrap();
    answers.push_str(&r.text().await.unwrap());
    let operator_id = operator.split('_').nth(1).unwrap().to_owned();
    let (out, _) = qs(arg(&["tokens", "revoke", &operator_id])).await;
    answers.push_str(&out);

    // Stop both, so every log line and store page is written.
    for child in [&mut agent, &mut serve] {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    }

    let secrets = [
        ("admin token", admin.as_str()),
        ("operator token", operator.as_str()),
        ("segment token", segment.as_str()),
        ("boot token", boot_token.as_str()),
        ("boot script token", script_token.as_str()),
        ("controller secret key", controller_secret.as_str()),
        ("BMC password", password),
    ];
    let mut artefacts: Vec<(String, Vec<u8>)> = vec![
        ("API and CLI answers".into(), answers.into_bytes()),
        (
            "controller log".into(),
            std::fs::read(&controller_log).unwrap(),
        ),
        ("agent log".into(), std::fs::read(&agent_log).unwrap()),
    ];
    for file in walk(data.path()) {
        // The two files whose whole purpose is to hold a secret, owner-only.
        if file.ends_with("admin.token") || file.ends_with("controller.key") {
            continue;
        }
        artefacts.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    assert!(artefacts.iter().any(|(n, _)| n.ends_with("audit.log")));
    let controller_log_text = String::from_utf8_lossy(&artefacts[1].1).into_owned();
    assert!(
        controller_log_text.contains("boot token consumed"),
        "the run did not enroll by token"
    );
    for (name, bytes) in &artefacts {
        for (what, secret) in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{what} found in {name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_calls_a_destructive_capability() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &[]).await.unwrap();
    let id = peer_id(51);
    let mut peer = SecurePeer::connect(&controller.agents, &id).await.unwrap();
    let capabilities = serde_json::from_value(json!([
        {"name": "erase", "doc": "wipes every disk", "destructive": true},
        {"name": "look", "doc": "reads"},
    ]))
    .unwrap();
    let body = Body::Register(Register {
        capabilities,
        ..match codec::decode(&register(&id, json!({})), 1 << 20)
            .unwrap()
            .body
        {
            Body::Register(r) => r,
            _ => unreachable!(),
        }
    });
    peer.send(&codec::encode(&Envelope::new(MessageId(1), body)).unwrap())
        .await
        .unwrap();
    assert!(is_registered(&reply_within(&mut peer, WAIT).await));
    let (ok, operator, _) = controller
        .cli(&["tokens", "create", "--role", "operator"])
        .await
        .unwrap();
    assert!(ok);
    let call = |token: String, capability: &'static str| {
        let request = controller
            .client_with(&token)
            .post(format!("{}/api/v1/agents/{id}/calls", controller.http))
            .json(&json!({"capability": capability, "timeout": 0.5}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call(operator.trim().to_owned(), "erase").await, 403);
    // Not destructive: the operator's call goes out (this peer never answers: a timeout).
    assert_eq!(call(operator.trim().to_owned(), "look").await, 504);
    assert_eq!(call(controller.token.clone(), "erase").await, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_sharing_a_mongodb_share_tokens_and_enrollment() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = format!(
        "{}/qs_shared_security_{}",
        qs_tests::test_mongodb_uri().unwrap().trim_end_matches('/'),
        std::process::id()
    );
    let shared = ["--store", url.as_str(), "--enroll", "approve"];
    let a = Controller::start(a_dir.path(), &shared).await.unwrap();
    // The second controller finds tokens in the store and makes no admin token of its own:
    // the operator brings the one they have.
    std::fs::copy(
        a_dir.path().join("admin.token"),
        b_dir.path().join("admin.token"),
    )
    .unwrap();
    let b = Controller::start(b_dir.path(), &shared).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(b_dir.path().join("admin.token")).unwrap(),
        std::fs::read_to_string(a_dir.path().join("admin.token")).unwrap()
    );

    // A token made on one works on the other, and its revocation reaches it.
    let (ok, viewer, err) = a
        .cli(&["tokens", "create", "--role", "viewer"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let viewer = viewer.trim();
    assert_eq!(status_as(&b, viewer, "GET", "/api/v1/agents").await, 200);
    let (ok, _, err) = a
        .cli(&["tokens", "revoke", viewer.split('_').nth(1).unwrap()])
        .await
        .unwrap();
    assert!(ok, "{err}");
    wait_until(
        "the revocation reached the other controller",
        WAIT,
        || async {
            Ok((status_as(&b, viewer, "GET", "/api/v1/agents").await == 401).then_some(()))
        },
    )
    .await
    .unwrap();

    // An agent pending on one is approved on the other.
    let id = peer_id(61);
    let mut peer = SecurePeer::connect(&b.agents, &id).await.unwrap();
    peer.send(&register(&id, json!({}))).await.unwrap();
    assert!(matches!(
        reply_within(&mut peer, WAIT).await.map(|r| r.body),
        Some(Body::Error(qs_proto::ErrorBody {
            code: qs_proto::ErrorCode::EnrollmentPending,
            ..
        }))
    ));
    let pending = cli_json(&a, &["agents", "pending", "--json"]).await;
    assert_eq!(pending[0]["mercury_id"], id.as_str(), "{pending}");
    let (ok, _, err) = a.cli(&["agents", "approve", &id]).await.unwrap();
    assert!(ok, "{err}");
    peer.send(&register(&id, json!({}))).await.unwrap();
    assert!(is_registered(&reply_within(&mut peer, WAIT).await));
}
