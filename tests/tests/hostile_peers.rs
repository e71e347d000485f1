//! Issue 10, case by case, through the real `qs serve`: peers and operators that used to crash,
//! wedge or poison the controller. Each test asserts the controller keeps serving, keeps its
//! agents online, and reopens its store.
//!
//! A hostile peer here speaks the real protocol (a ZeroMQ DEALER and the MessagePack codec)
//! or raw TCP; a well-behaved agent is a real `qs-agent run` on a fixture host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use qs_proto::{
    codec, Body, CapabilityCall, CapabilityInfo, Envelope, ErrorBody, ErrorCode, InventoryDelta,
    MessageId, Register,
};
use qs_tests::secure_peer::SecurePeer;
use qs_tests::{fixture_host, wait_until, Agent, Controller, FIXTURE_HOSTS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);
const FAST: &[&str] = &["--heartbeat-interval", "1s", "--heartbeat-timeout", "4s"];

/// A peer speaking the agent protocol by hand.
struct Peer {
    socket: SecurePeer,
    id: String,
    next: u64,
}

impl Peer {
    async fn connect(controller: &Controller, id: &str) -> Self {
        let socket = SecurePeer::connect(&controller.agents, id).await.unwrap();
        Self {
            socket,
            id: id.to_owned(),
            next: 0,
        }
    }

    async fn send_frame(&mut self, frame: Vec<u8>) {
        self.socket.send(&frame).await.unwrap();
    }

    async fn send(&mut self, body: Body) -> MessageId {
        self.next += 1;
        let id = MessageId(self.next);
        self.send_frame(codec::encode(&Envelope::new(id, body)).unwrap())
            .await;
        id
    }

    async fn recv(&mut self) -> Envelope {
        let message = tokio::time::timeout(WAIT, self.socket.recv())
            .await
            .expect("the controller did not answer")
            .unwrap();
        codec::decode(&message, codec::DEFAULT_MAX_FRAME).unwrap()
    }

    fn register_body(&self, inventory: Value, capabilities: Vec<CapabilityInfo>) -> Body {
        Body::Register(Register {
            mercury_id: self.id.parse().unwrap(),
            agent_version: "0.0.0-test".into(),
            boot_id: "hostile".into(),
            capabilities,
            inventory,
            inventory_version: 1,
            image_id: None,
            calls: Vec::new(),
            collected_at: None,
        })
    }

    async fn register(&mut self, inventory: Value) {
        let body = self.register_body(inventory, Vec::new());
        self.send(body).await;
        let reply = self.recv().await;
        assert!(
            matches!(reply.body, Body::Registered(_)),
            "{:?}",
            reply.body
        );
    }
}

fn peer_id(n: u64) -> String {
    format!("00{n:040x}")
}

fn error_code(env: &Envelope) -> Option<ErrorCode> {
    match &env.body {
        Body::Error(ErrorBody { code, .. }) => Some(*code),
        _ => None,
    }
}

async fn counter(controller: &Controller, name: &str) -> u64 {
    let (_, c) = controller.get("/api/v1/counters").await.unwrap();
    c[name].as_u64().unwrap_or(0)
}

/// The controller's peak resident memory, from /proc.
fn peak_rss_mib(controller: &Controller) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", controller.pid().unwrap())).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

async fn healthy(controller: &Controller) {
    let (status, _) = controller.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
}

/// Case 1: deltas that nest deeper and deeper used to make the store unopenable after a
/// restart, and later crash the controller with a stack overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_deltas_are_refused_and_the_store_reopens() {
    let data = tempfile::tempdir().unwrap();
    // Refused deltas are no sign of life: with FAST's 4 s timeout a slow machine would end the
    // session (the peer sends no heartbeats) before the tenth refusal.
    let patient = ["--heartbeat-interval", "1s", "--heartbeat-timeout", "120s"];
    let mut controller = Controller::start(data.path(), &patient).await.unwrap();
    let mut peer = Peer::connect(&controller, &peer_id(1)).await;
    peer.register(json!({"a": 1})).await;
    // Ten refusals in a row: each answered, then the peer is disconnected for persisting.
    for round in 0..10u64 {
        // Forty levels a delta: past the stored-document limit (32), within what the decoder
        // reads (64), so the refusal is the controller's document check.
        let mut nested = json!(round);
        for _ in 0..40 {
            nested = json!({ "n": nested });
        }
        let delta = Body::InventoryDelta(InventoryDelta {
            base: 1,
            version: 2 + round,
            patch: serde_json::from_value(
                json!([{"op": "add", "path": format!("/x{round}"), "value": nested}]),
            )
            .unwrap(),
            collected_at: None,
        });
        peer.send(delta).await;
        let reply = peer.recv().await;
        assert_eq!(
            error_code(&reply),
            Some(ErrorCode::BadArguments),
            "{reply:?}"
        );
    }
    assert!(controller.is_running());
    assert_eq!(counter(&controller, "documents_refused").await, 10);
    wait_until("the persistent peer disconnected", WAIT, || async {
        Ok((counter(&controller, "peers_disconnected").await == 1).then_some(()))
    })
    .await
    .unwrap();
    let (_, doc) = controller
        .get(&format!("/api/v1/inventory/{}", peer_id(1)))
        .await
        .unwrap();
    assert_eq!(doc["a"], 1);
    assert!(doc.get("x0").is_none());
    let (agents, http) = (controller.agents.clone(), controller.http_addr().to_owned());
    drop(peer);
    controller.kill().await.unwrap();
    let controller = Controller::start_on(data.path(), &agents, &http, FAST)
        .await
        .unwrap();
    healthy(&controller).await;
    let (status, doc) = controller
        .get(&format!("/api/v1/inventory/{}", peer_id(1)))
        .await
        .unwrap();
    assert_eq!((status, doc["a"].clone()), (200, json!(1)));
}

/// Case 2: a 15.5 MB register holding an array of zeros used to cost about 1 GB of memory,
/// still held after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_of_millions_of_zeros_is_refused_without_decoding_it() {
    let data = tempfile::tempdir().unwrap();
    let mut controller = Controller::start(data.path(), FAST).await.unwrap();
    let before = peak_rss_mib(&controller);
    let mut peer = Peer::connect(&controller, &peer_id(2)).await;
    for _ in 0..4 {
        let body = peer.register_body(json!({"zeros": "SPLICE-ZEROS-HERE"}), Vec::new());
        let mut frame = codec::encode(&Envelope::new(MessageId(7), body)).unwrap();
        let mark = {
            let mut m = vec![0xa0 | 17u8];
            m.extend_from_slice(b"SPLICE-ZEROS-HERE");
            m
        };
        let at = frame
            .windows(mark.len())
            .position(|w| w == mark.as_slice())
            .unwrap();
        let n = 15_500_000usize;
        let mut array = vec![0xdd];
        array.extend_from_slice(&(n as u32).to_be_bytes());
        array.resize(5 + n, 0);
        frame.splice(at..at + mark.len(), array);
        peer.send_frame(frame).await;
        let reply = peer.recv().await;
        assert_eq!(reply.re, Some(MessageId(7)));
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "{reply:?}");
    }
    let after = peak_rss_mib(&controller);
    println!(
        "figures: four 15.5 MB registers of zeros: controller peak RSS {before} MiB -> {after} MiB"
    );
    // Four 15.5 MB frames: what was read, never what decoding them would have made.
    assert!(
        after < before + 200,
        "peak RSS grew from {before} MiB to {after} MiB"
    );
    assert!(controller.is_running());
    assert_eq!(counter(&controller, "documents_refused").await, 4);
    // The peer can still register a real inventory on the same connection.
    peer.register(json!({"mem": {"total": 1}})).await;
    healthy(&controller).await;
}

/// Case 3: connections that complete the handshake and then say nothing used to live forever
/// (about 400 of them stopped the HTTP API under a 1,024 open-file limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sessions_are_closed_after_the_heartbeat_timeout() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(
        data.path(),
        &["--heartbeat-interval", "1s", "--heartbeat-timeout", "3s"],
    )
    .await
    .unwrap();
    let agent = Agent::start(&controller.agents, &fixture_host(FIXTURE_HOSTS[0]))
        .await
        .unwrap();
    controller
        .wait_online(std::slice::from_ref(&agent.mercury_id), WAIT)
        .await
        .unwrap();
    let mut silent = Vec::new();
    for n in 0..60u64 {
        let mut s = tokio::net::TcpStream::connect(controller.agents_addr())
            .await
            .unwrap();
        // The whole handshake, Noise included: the idle deadline applies to sessions.
        let mut hello = qs_tests::secure_peer::zmtp_hello(peer_id(100 + n).as_bytes());
        let key: qs_noise::PublicKey = qs_tests::server_key(&controller.agents)
            .unwrap()
            .parse()
            .unwrap();
        let (_, first) =
            qs_noise::Initiator::new(&qs_noise::KeyPair::generate().unwrap(), &key).unwrap();
        hello.extend([0u8, first.len() as u8]);
        hello.extend(first);
        s.write_all(&hello).await.unwrap();
        silent.push(s);
    }
    for mut s in silent {
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "a silent session was kept open");
    }
    assert!(counter(&controller, "idle_closed").await >= 60);
    // The real agent, which heartbeats, is still online and served.
    assert!(controller.is_online(&agent.mercury_id).await.unwrap());
    healthy(&controller).await;
}

/// Case 4: regex queries over large documents ran on the runtime's workers with no limit,
/// held /healthz for seconds, and cost a real agent its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_neither_starve_heartbeats_nor_run_unbounded() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(
        data.path(),
        &[
            "--heartbeat-interval",
            "1s",
            "--heartbeat-timeout",
            "4s",
            "--query-timeout",
            "3s",
            "--max-concurrent-queries",
            "2",
        ],
    )
    .await
    .unwrap();
    let agent = Agent::start(&controller.agents, &fixture_host(FIXTURE_HOSTS[1]))
        .await
        .unwrap();
    controller
        .wait_online(std::slice::from_ref(&agent.mercury_id), WAIT)
        .await
        .unwrap();
    // A few large documents: 60,000 strings each.
    let mut peers = Vec::new();
    for n in 0..4u64 {
        let mut peer = Peer::connect(&controller, &peer_id(200 + n)).await;
        let words: Vec<String> = (0..60_000)
            .map(|i| format!("word-{i}-{n}-aaaaaaaa"))
            .collect();
        peer.register(json!({"words": words})).await;
        peers.push(peer);
    }
    let client = controller.client();
    let mut queries = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, url) = (
            client.clone(),
            format!("{}/api/v1/inventory/query", controller.http),
        );
        queries.spawn(async move {
            let filter = json!({"filter": {"words": {"$regex": "(a|b|c|d|e)*z(x|y)*[0-9]{3,9}$"}}});
            let r = client
                .post(url)
                .json(&filter)
                .timeout(WAIT)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        });
    }
    // While they run, /healthz answers and the agent keeps its session.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let asked = std::time::Instant::now();
        let r = client
            .get(format!("{}/healthz", controller.http))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("/healthz did not answer while queries ran");
        slowest = slowest.max(asked.elapsed());
        assert_eq!(r.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "figures: /healthz while 16 regex queries ran: slowest answer {slowest:?}, peak RSS {} MiB",
        peak_rss_mib(&controller)
    );
    let mut statuses = Vec::new();
    while let Some(s) = queries.join_next().await {
        statuses.push(s.unwrap());
    }
    // Each query was answered (200), or refused as busy (503) or over its deadline (504).
    assert!(
        statuses.iter().all(|s| [200, 503, 504].contains(s)),
        "{statuses:?}"
    );
    assert!(controller.is_online(&agent.mercury_id).await.unwrap());
}

/// Case 6: the smaller ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rejections_are_json_and_half_sent_headers_are_cut_off() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), FAST).await.unwrap();
    let (status, body) = controller.get("/api/v1/inventory/%ff").await.unwrap();
    assert_eq!(status, 400);
    assert!(body["error"]["message"].is_string(), "{body}");
    let big = json!({"filter": {"x": "a".repeat(3 * 1024 * 1024)}});
    let (status, body) = controller
        .post("/api/v1/inventory/query", &big)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("body_too_large"))
    );
    let mut slow = tokio::net::TcpStream::connect(controller.http_addr())
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "half-sent headers kept the connection open");
    healthy(&controller).await;
}

/// Case 6: a call's timeout has an upper bound, and a call whose agent disconnects fails at
/// once instead of after its whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_bounded_and_fail_at_once_when_the_agent_disconnects() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--max-call-timeout", "1h"])
        .await
        .unwrap();
    let id = peer_id(300);
    let mut peer = Peer::connect(&controller, &id).await;
    let slow = CapabilityInfo {
        name: "slow".into(),
        doc: "never answers".into(),
        args: Vec::new(),
        exclusive: false,
        destructive: false,
        default_timeout: 0,
    };
    let body = peer.register_body(json!({}), vec![slow]);
    peer.send(body).await;
    assert!(matches!(peer.recv().await.body, Body::Registered(_)));
    let url = format!("/api/v1/agents/{id}/calls");
    let (status, body) = controller
        .post(&url, &json!({"capability": "slow", "timeout": 7200}))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let call = {
        let (http, url, client) = (controller.http.clone(), url.clone(), controller.client());
        tokio::spawn(async move {
            let r = client
                .post(format!("{http}{url}"))
                .json(&json!({"capability": "slow", "timeout": 3000}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        })
    };
    let request = peer.recv().await;
    assert!(matches!(
        request.body,
        Body::CapabilityCall(CapabilityCall { ref capability, .. }) if capability == "slow"
    ));
    drop(peer);
    let (status, body) = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call waited for its timeout after the agent left")
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("disconnected"));
}

/// Case 6: a register whose inventory is not a document is the agent's mistake, not ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_with_a_non_document_inventory_is_a_caller_error() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), FAST).await.unwrap();
    let mut peer = Peer::connect(&controller, &peer_id(400)).await;
    let body = peer.register_body(json!([1, 2, 3]), Vec::new());
    peer.send(body).await;
    assert_eq!(
        error_code(&peer.recv().await),
        Some(ErrorCode::BadArguments)
    );
    let (status, _) = controller
        .get(&format!("/api/v1/inventory/{}", peer_id(400)))
        .await
        .unwrap();
    assert_eq!(status, 404);
}

/// Case 6: after `kill -9`, agents the dead controller served show offline at once on restart
/// (not `online: true` for a heartbeat timeout), and no document is half-registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_shows_no_stale_online_agents_and_no_half_registrations() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--heartbeat-timeout", "600s"])
        .await
        .unwrap();
    let (agents, http) = (controller.agents.clone(), controller.http_addr().to_owned());
    // Registrations in flight while the controller dies.
    let mut peers = tokio::task::JoinSet::new();
    for n in 0..40u64 {
        let endpoint = controller.agents.clone();
        peers.spawn(async move {
            let id = peer_id(500 + n);
            let Ok(mut socket) = SecurePeer::connect(&endpoint, &id).await else {
                return;
            };
            let body = Body::Register(Register {
                mercury_id: id.parse().unwrap(),
                agent_version: "0.0.0-test".into(),
                boot_id: "b".into(),
                capabilities: Vec::new(),
                inventory: json!({"n": n, "pad": "x".repeat(20_000)}),
                inventory_version: 1,
                image_id: None,
                calls: Vec::new(),
                collected_at: None,
            });
            let frame = codec::encode(&Envelope::new(MessageId(1), body)).unwrap();
            let _ = socket.send(&frame).await;
            let _ = tokio::time::timeout(WAIT, socket.recv()).await;
        });
    }
    wait_until("some registrations stored", WAIT, || async {
        Ok((counter(&controller, "inventory_updates").await >= 5).then_some(()))
    })
    .await
    .unwrap();
    controller.kill().await.unwrap();
    peers.shutdown().await;
    let controller = Controller::start_on(data.path(), &agents, &http, &[])
        .await
        .unwrap();
    let (status, docs) = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"projection": {"agent": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let docs = docs.as_array().unwrap();
    assert!(!docs.is_empty());
    for doc in docs {
        assert!(doc["agent"].is_object(), "half-registered document: {doc}");
        assert_eq!(doc["agent"]["online"], false, "stale online agent: {doc}");
    }
    let listed = controller.agents().await.unwrap();
    assert_eq!(listed.len(), docs.len());
}
