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
        }),
    ))
    .unwrap()
}

/// ZMTP greeting and READY of a DEALER named `identity`.
fn zmtp_hello(identity: &[u8]) -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    for (k, v) in [
        (b"Socket-Type".as_slice(), b"DEALER".as_slice()),
        (b"Identity", identity),
    ] {
        body.push(k.len() as u8);
        body.extend_from_slice(k);
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    g.extend([0x04, body.len() as u8]);
    g.extend(body);
    g
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
    let mut bytes = zmtp_hello(peer_id(1).as_bytes());
    bytes.extend(frame(&register(&peer_id(1), json!({"plain": true}))));
    s.write_all(&bytes).await.unwrap();
    hung_up(&mut s).await;
    assert!(counter(&controller, "unauthenticated").await > before);

    // 2. A genuine session, recorded byte for byte, then replayed on a new connection.
    let id = peer_id(2);
    let agent = KeyPair::generate().unwrap();
    let (initiator, first) = Initiator::new(&agent, &server_key).unwrap();
    let mut recorded = zmtp_hello(id.as_bytes());
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
    let mut hello = zmtp_hello(id.as_bytes());
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
