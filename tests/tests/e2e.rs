//! End-to-end: real `qs serve` and `qs-agent run` processes on loopback, fixture hosts as
//! distinct servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use qs_tests::{
    agent_cli, fixture_host, wait_until, Agent, Controller, FixtureServers, ReservedPort,
    FIXTURE_HOSTS,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOSTS: [&str; 3] = FIXTURE_HOSTS;
const WAIT: Duration = Duration::from_secs(60);
/// Short heartbeats so losses and restarts are noticed within seconds.
const FAST: &[&str] = &["--heartbeat-interval", "1s", "--heartbeat-timeout", "4s"];

async fn wait_online(controller: &Controller, ids: &[String]) {
    controller.wait_online(ids, WAIT).await.unwrap();
}

/// The three fixture servers registered with a controller using short heartbeats.
async fn three_servers() -> FixtureServers {
    FixtureServers::start(FAST, WAIT).await.unwrap()
}

/// The MercuryIds of the servers a filter finds, sorted.
async fn servers_matching(controller: &Controller, filter: Value) -> anyhow::Result<Vec<String>> {
    let (status, docs) = controller
        .post("/api/v1/inventory/query", &json!({"filter": filter}))
        .await?;
    anyhow::ensure!(status == 200, "{docs}");
    let mut got: Vec<String> = docs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["mercury_id"].as_str().map(str::to_owned))
        .collect();
    got.sort();
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_fixture_hosts_register_as_the_servers_qs_agent_id_names() {
    let servers = three_servers().await;
    let ids = &servers.ids;
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "fixture hosts must be distinct servers: {ids:?}"
    );
    // Each id matches what `qs-agent id` derives from the same tree.
    for (host, id) in HOSTS.iter().zip(ids) {
        let root = fixture_host(host);
        let (ok, out, err) = agent_cli(&["id", "--root", root.to_str().unwrap()])
            .await
            .unwrap();
        assert!(ok, "{err}");
        assert_eq!(out.trim(), id);
    }
    let (status, body) = servers
        .controller
        .get(&format!("/api/v1/inventory/{}", ids[0]))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["mercury_id"], ids[0]);
    assert_eq!(body["agent"]["online"], true);
    assert!(
        body["agent"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_api_queries_projects_sorts_and_names_bad_requests() {
    let servers = three_servers().await;
    let (controller, ids) = (&servers.controller, &servers.ids);
    // Query, projection, sort.
    let (status, docs) = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"filter": {}, "projection": {"dmi.sys_vendor": 1}, "sort": {"mercury_id": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{docs}");
    let got: Vec<&str> = docs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["mercury_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(got, sorted.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        docs.as_array()
            .unwrap()
            .iter()
            .all(|d| d.get("agent").is_none()),
        "projection keeps only dmi.sys_vendor: {docs}"
    );

    // Any hardware fact finds its server.
    for (filter, expected) in [
        (json!({"dmi.sys_vendor": "LENOVO"}), &ids[1]),
        (
            json!({"dmi.product_name": {"$regex": "^qs-guest$", "$options": "i"}}),
            &ids[2],
        ),
        (
            json!({"interfaces.address": "52:54:00:12:34:58", "cpu.threads": {"$gte": 2}}),
            &ids[2],
        ),
        (
            json!({"interfaces": {"$elemMatch": {"driver": "virtio_net", "mtu": 1400}}}),
            &ids[0],
        ),
        (
            json!({"mem.total": {"$gt": 16u64 << 30}, "agent.online": true}),
            &ids[0],
        ),
    ] {
        let (status, docs) = controller
            .post("/api/v1/inventory/query", &json!({"filter": filter}))
            .await
            .unwrap();
        assert_eq!(status, 200, "{docs}");
        let got: Vec<&str> = docs
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["mercury_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec![expected.as_str()], "{filter}");
    }

    // A bad operator is a 400 naming it; ids are checked.
    let (status, body) = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"filter": {"mem.total": {"$bogus": 1}}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$bogus"),
        "{body}"
    );
    let (status, _) = controller
        .get("/api/v1/inventory/00ffffffffffffffffffffffffffffffffffffffff")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = controller.get("/api/v1/inventory/not-an-id").await.unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_presence_is_known_at_registration_and_its_firmware_comes_with_the_slow_facts() {
    let servers = three_servers().await;
    let (controller, ids) = (&servers.controller, &servers.ids);
    let mut without_bmc = vec![ids[0].clone(), ids[1].clone()];
    without_bmc.sort();
    assert_eq!(
        servers_matching(controller, json!({"bmc.present": false}))
            .await
            .unwrap(),
        without_bmc
    );
    let by_firmware = wait_until(
        "the BMC's firmware reaches the controller",
        WAIT,
        || async {
            let got = servers_matching(
                controller,
                json!({
                    "bmc.firmware.manufacturer_id": 10876,
                    "dmi.ipmi_device.interface": "KCS"
                }),
            )
            .await?;
            Ok((!got.is_empty()).then_some(got))
        },
    )
    .await
    .unwrap();
    assert_eq!(by_firmware, vec![ids[2].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_servers_as_a_table_or_json_and_lists_agents() {
    let servers = three_servers().await;
    let (controller, ids) = (&servers.controller, &servers.ids);
    let (ok, table, err) = controller
        .cli(&["inventory", "find", "{}", "--sort", "{\"mercury_id\": 1}"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(table.starts_with("MERCURY_ID"), "{table}");
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("BMC.LAN.IP_ADDRESS")),
        "{table}"
    );
    for id in ids {
        assert!(table.contains(id.as_str()), "{table}");
    }
    let (ok, out, err) = controller
        .cli(&[
            "inventory",
            "find",
            &json!({"mercury_id": ids[1]}).to_string(),
            "--json",
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let found: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["mercury_id"], ids[1]);
    let (ok, _, err) = controller
        .cli(&["inventory", "find", "{\"$where\": 1}"])
        .await
        .unwrap();
    assert!(!ok && err.contains("$where"), "{err}");
    let (ok, list, err) = controller.cli(&["agents", "list"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        list.lines().filter(|l| l.contains(" yes ")).count(),
        3,
        "{list}"
    );
}

/// Calls reach the agents: `inspect` answers with an inventory; an unknown capability is an
/// explicit error, over HTTP and through the CLI.
async fn calls_are_answered(controller: &Controller, ids: &[String]) {
    let (status, body) = controller
        .post(
            &format!("/api/v1/agents/{}/calls", ids[0]),
            &json!({"capability": "inspect", "args": {"only": ["mem"]}, "timeout": 30}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "succeeded");
    assert!(
        body["output"]["mem"]["total"].as_u64().unwrap() > 0,
        "{body}"
    );
    let (status, body) = controller
        .post(
            &format!("/api/v1/agents/{}/calls", ids[0]),
            &json!({"capability": "frobnicate", "timeout": 30}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_capability");
    let (ok, out, err) = controller
        .cli(&["agents", "call", &ids[1], "inspect", "--timeout", "30"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("\"succeeded\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_with_an_inventory_or_an_explicit_error() {
    let servers = three_servers().await;
    calls_are_answered(&servers.controller, &servers.ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_restarts_with_every_document_and_the_agents_register_again() {
    let FixtureServers {
        data,
        controller,
        agents: _agents,
        ids,
    } = three_servers().await;
    // Kill the controller (no clean shutdown) and restart it on the same data dir and ports.
    let before: Value = controller
        .post("/api/v1/inventory/query", &json!({}))
        .await
        .unwrap()
        .1;
    let (agents_addr, http_addr) = (controller.agents.clone(), controller.http_addr().to_owned());
    controller.kill().await.unwrap();
    let controller = Controller::start_on(data.path(), &agents_addr, &http_addr, &[])
        .await
        .unwrap();
    // Nothing was lost: every document is there before any agent re-registers.
    let after: Value = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"projection": {"agent": 0}}),
        )
        .await
        .unwrap()
        .1;
    assert_eq!(after.as_array().unwrap().len(), 3);
    for (b, a) in before
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
    {
        let mut b = b.clone();
        b.as_object_mut().unwrap().remove("agent");
        assert_eq!(&b, a);
    }
    // The agents find the new controller and register again.
    for id in &ids {
        let old_registered = before
            .as_array()
            .and_then(|d| d.iter().find(|d| d["mercury_id"] == id.as_str()))
            .and_then(|d| d["agent"]["registered"].as_str())
            .unwrap_or_default()
            .to_owned();
        wait_until(&format!("{id} registered again"), WAIT, || async {
            let (_, doc) = controller.get(&format!("/api/v1/inventory/{id}")).await?;
            let registered = doc["agent"]["registered"].as_str().unwrap_or_default();
            let online = doc["agent"]["online"] == true;
            Ok((online && registered > old_registered.as_str()).then_some(()))
        })
        .await
        .unwrap();
    }
    // Calls reach them through the new controller.
    calls_are_answered(&controller, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_is_shown_offline_and_its_document_stays() {
    let FixtureServers {
        data: _data,
        controller,
        mut agents,
        ids: _,
    } = three_servers().await;
    let gone = agents.pop().unwrap();
    let gone_id = gone.mercury_id.clone();
    gone.kill().await.unwrap();
    wait_until("stopped agent offline", WAIT, || async {
        Ok((!controller.is_online(&gone_id).await?).then_some(()))
    })
    .await
    .unwrap();
    let (status, doc) = controller
        .get(&format!("/api/v1/inventory/{gone_id}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(doc["agent"]["online"], false);
    assert_eq!(doc["dmi"]["product_name"], "QS-Guest");
    // The others stay online.
    for agent in &agents {
        assert!(controller.is_online(&agent.mercury_id).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_storm_of_simulated_agents_registers_each_exactly_once() {
    const AGENTS: usize = 200;
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &[]).await.unwrap();
    let servers = qs_tests::fleet::simulated_servers(AGENTS, 0x7e).unwrap();
    let fleet = qs_tests::fleet::Fleet::start(
        &controller.agents,
        servers,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .unwrap();
    wait_until("every simulated agent registered", WAIT, || async {
        let n = fleet.registered();
        if n == AGENTS {
            Ok(Some(()))
        } else {
            Err(anyhow::anyhow!("{n} of {AGENTS} registered"))
        }
    })
    .await
    .unwrap();
    wait_until("the controller lists every agent online", WAIT, || async {
        let agents = controller.agents().await?;
        let online = agents.iter().filter(|a| a["online"] == true).count();
        Ok((online == AGENTS).then_some(()))
    })
    .await
    .unwrap();
    let ids: Vec<String> = controller
        .agents()
        .await
        .unwrap()
        .iter()
        .filter_map(|a| a["mercury_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), AGENTS);
    for (i, record) in fleet.records().iter().enumerate() {
        assert_eq!(
            record.registrations(),
            1,
            "agent {i} registered {} times",
            record.registrations()
        );
        assert_eq!(
            record.sessions_lost(),
            0,
            "agent {i} lost a session: {:?}",
            record.last_loss()
        );
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_frames_are_counted_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut controller = Controller::start(
        data.path(),
        &["--max-frame", "1048576", "--heartbeat-timeout", "20s"],
    )
    .await
    .unwrap();
    let agent = Agent::start(&controller.agents, &fixture_host(HOSTS[0]))
        .await
        .unwrap();
    wait_online(&controller, std::slice::from_ref(&agent.mercury_id)).await;
    let before: Value = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"projection": {"agent": 0}}),
        )
        .await
        .unwrap()
        .1;

    // 1. Raw garbage instead of a ZMTP greeting.
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xffu8; 4096],
        (0..=255u8).cycle().take(70_000).collect(),
    ] {
        let mut s = tokio::net::TcpStream::connect(controller.agents_addr())
            .await
            .unwrap();
        // Writes and the half-close may fail once the controller has hung up: it may reject
        // after the first 64 bytes.
        let _ = s.write_all(&garbage).await;
        // Half-close: the controller now has all this peer will ever send (even shorter than a
        // greeting) and must hang up at once, not after its handshake timeout.
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "the controller kept a garbage connection open for {WAIT:?}"
        );
    }
    // 2. A valid ZMTP handshake, then a frame announcing 1 TiB (it must never be allocated)
    // where the Noise handshake belongs: refused unread, as unauthenticated.
    let mut s = tokio::net::TcpStream::connect(controller.agents_addr())
        .await
        .unwrap();
    let mut hello =
        qs_tests::secure_peer::zmtp_hello(b"00aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    hello.push(0x02);
    hello.extend_from_slice(&(1u64 << 40).to_be_bytes());
    hello.extend_from_slice(&[0u8; 1000]);
    s.write_all(&hello).await.unwrap();
    // Held open until the counters are read: a peer that hangs up at once is rejected during
    // the handshake (the controller's READY finds the socket closed) before its header is read.
    let huge_frame_peer = s;
    // 3. An authenticated peer sending malformed envelopes, a bad version, and an oversize
    // message (sealed, so they reach the decoder).
    let mut dealer = qs_tests::secure_peer::SecurePeer::connect(
        &controller.agents,
        "00bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    )
    .await
    .unwrap();
    dealer.send(b"\xc1\xc1 not msgpack").await.unwrap();
    // {v: 99, id: 1, body: {heartbeat: {}}}
    dealer
        .send(b"\x83\xa1v\x63\xa2id\x01\xa4body\x81\xa9heartbeat\x80")
        .await
        .unwrap();
    dealer.send(&vec![0x90u8; 2 * 1024 * 1024]).await.unwrap();
    // The controller counts each kind.
    wait_until("bad input counted", WAIT, || async {
        let (_, c) = controller.get("/api/v1/counters").await?;
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let all = n("rejected_connections") >= 4
            && n("unauthenticated") >= 1
            && n("oversize_frames") >= 1
            && n("malformed_frames") >= 1
            && n("unsupported_versions") >= 1;
        if all {
            Ok(Some(c))
        } else {
            Err(anyhow::anyhow!("counters so far: {c}"))
        }
    })
    .await
    .unwrap();
    drop(dealer);
    drop(huge_frame_peer);

    // Still alive, still serving, nothing changed.
    assert!(controller.is_running());
    let (status, _) = controller.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let after: Value = controller
        .post(
            "/api/v1/inventory/query",
            &json!({"projection": {"agent": 0}}),
        )
        .await
        .unwrap()
        .1;
    assert_eq!(before, after);
    assert!(controller.is_online(&agent.mercury_id).await.unwrap());
    let (status, body) = controller
        .post(
            &format!("/api/v1/agents/{}/calls", agent.mercury_id),
            &json!({"capability": "inspect", "args": {"only": ["cpu"]}, "timeout": 30}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_when_the_controller_appears_later() {
    let data = tempfile::tempdir().unwrap();
    // The agent dials a port nothing listens on yet (held so no one else takes it) and must
    // keep retrying with backoff until the controller binds it.
    let port = ReservedPort::new().unwrap();
    qs_tests::pin_server_key(&port.endpoint(), data.path()).unwrap();
    let agent = Agent::start(&port.endpoint(), &fixture_host(HOSTS[1]))
        .await
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(port.addr()).await.is_err(),
        "nothing listens on the reserved port yet"
    );
    let controller = Controller::start_on(data.path(), &port.endpoint(), "127.0.0.1:0", &[])
        .await
        .unwrap();
    drop(port);
    wait_online(&controller, std::slice::from_ref(&agent.mercury_id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_disk_reaches_the_controller_as_a_delta_stored_like_a_full_inventory() {
    // A private copy of a captured host, so a disk can disappear from it.
    let host = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", fixture_host("qemu-q35").display()))
        .arg(host.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), FAST).await.unwrap();
    let agent = Agent::start(&controller.agents, host.path()).await.unwrap();
    wait_online(&controller, std::slice::from_ref(&agent.mercury_id)).await;

    // After registering with the quick inventory, the agent sends SMART health as a delta.
    let deltas = wait_until("slow facts sent as a delta", WAIT, || async {
        let (_, counters) = controller.get("/api/v1/counters").await?;
        let (_, doc) = controller
            .get(&format!("/api/v1/inventory/{}", agent.mercury_id))
            .await?;
        let has_smart = doc["os_storage"][0]["smart"]["passed"] == true;
        Ok(has_smart.then(|| counters["inventory_deltas"].as_u64().unwrap_or(0)))
    })
    .await
    .unwrap();
    assert_eq!(deltas, 1);
    std::fs::remove_file(host.path().join("sys/block/nvme0n1")).unwrap();
    let (status, body) = controller
        .post(
            &format!("/api/v1/agents/{}/calls", agent.mercury_id),
            &json!({"capability": "inspect", "timeout": 30}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut expected = body["output"].clone();
    expected["mercury_id"] = json!(agent.mercury_id);
    let disks: Vec<&str> = expected["os_storage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(disks, vec!["sda", "vda"]);

    let stored = wait_until("delta applied", WAIT, || async {
        let (_, counters) = controller.get("/api/v1/counters").await?;
        if counters["inventory_deltas"] != deltas + 1 {
            return Ok(None);
        }
        let (_, doc) = controller
            .get(&format!("/api/v1/inventory/{}", agent.mercury_id))
            .await?;
        Ok(Some(doc))
    })
    .await
    .unwrap();
    let mut stored = stored;
    stored.as_object_mut().unwrap().remove("agent");
    // The controller's stamps and the agent's clock (issue 9) are not the agent's inventory.
    for stamp in ["schema", "received_at", "collected_at"] {
        stored.as_object_mut().unwrap().remove(stamp);
    }
    assert_eq!(stored, expected, "the delta's result equals a full resend");
    let (_, counters) = controller.get("/api/v1/counters").await.unwrap();
    assert_eq!(
        counters["inventory_updates"], 1,
        "only the registration sent everything: {counters}"
    );
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct NetnsPair {
    names: [String; 2],
}

impl NetnsPair {
    fn ip(args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Creates the pair; the error names the `ip` command this machine refused (not root, no
    /// iproute2), and what was created is removed again.
    fn create(tag: &str) -> Result<(Self, [String; 2]), String> {
        let pid = std::process::id();
        let names = [format!("qs-{tag}-a-{pid}"), format!("qs-{tag}-b-{pid}")];
        let links = [format!("qs{tag}a{pid}"), format!("qs{tag}b{pid}")];
        let step = |args: &[&str]| {
            if Self::ip(args) {
                Ok(())
            } else {
                Err(format!("`ip {}` failed", args.join(" ")))
            }
        };
        step(&["netns", "add", &names[0]])?;
        let pair = Self { names };
        step(&["netns", "add", &pair.names[1]])?;
        step(&[
            "link",
            "add",
            &links[0],
            "netns",
            &pair.names[0],
            "type",
            "veth",
            "peer",
            "name",
            &links[1],
            "netns",
            &pair.names[1],
        ])?;
        step(&["-n", &pair.names[0], "link", "set", &links[0], "up"])?;
        step(&["-n", &pair.names[1], "link", "set", &links[1], "up"])?;
        Ok((pair, links))
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for name in &self.names {
            Self::ip(&["netns", "del", name]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lldp_frames_sent_over_a_veth_are_reported_by_the_agent() {
    // A check that cannot run is not a pass: this test needs root and iproute2.
    let (pair, links) = NetnsPair::create("ll")
        .unwrap_or_else(|e| panic!("cannot create the network namespaces this test needs: {e}"));
    // A capture from one switch (with two, the report is whichever spoke last).
    let pcap = qs_tests::repo_root().join("inspectors/fixtures/shared/lldp/cisco-sg200.lldp.pcap");
    let mut sender = tokio::process::Command::new("ip")
        .args(["netns", "exec", &pair.names[1]])
        .arg(qs_tests::bin_dir().join("lldp-replay"))
        .arg(&pcap)
        .args([links[1].as_str(), "8"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent = qs_tests::bin_dir().join("qs-agent");
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &pair.names[0]])
        .arg(&agent)
        .args(["inspect", "--only", "interfaces", "--lldp", "3"])
        .output()
        .await
        .unwrap();
    let _ = sender.kill().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inventory: Value = serde_json::from_slice(&out.stdout).unwrap();
    let neighbours = inventory["lldp"].as_array().unwrap();
    assert_eq!(neighbours.len(), 1, "{inventory}");
    let n = &neighbours[0];
    assert_eq!(n["interface"], links[0].as_str());
    assert_eq!(n["chassis_id"], "00:35:35:35:35:35");
    assert_eq!(n["port_id"], "g1");
    drop(pair);
}

fn run_script(path: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(path)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn hardware_truth_on_this_machine() {
    let agent = qs_tests::bin_dir().join("qs-agent");
    let script = qs_tests::repo_root().join("tests/hardware-truth");
    let (ok, report) = run_script(&script, &["--agent", agent.to_str().unwrap()]);
    assert!(ok, "{report}");
    assert!(report.contains(", 0 disagreements"), "{report}");
    assert!(
        !report.contains("skipped pci") && !report.contains("skipped os_storage"),
        "{report}"
    );
}

#[test]
fn hardware_truth_in_a_qemu_guest_with_known_hardware() {
    let agent = qs_tests::bin_dir().join("qs-agent");
    let script = qs_tests::repo_root().join("images/hardware-truth-check");
    let (ok, report) = run_script(&script, &[agent.to_str().unwrap()]);
    assert!(ok, "{report}");
    // Disks, partitions, NICs with the bond and VLAN, PCI functions, memory, CPU, every
    // SMBIOS string, the BMC's interface (SMBIOS type 38) and its firmware.
    assert!(
        report.contains("111 fields compared, 0 disagreements"),
        "{report}"
    );
    // What images/guest-hardware gave QEMU's BMC simulator.
    assert!(
        report.contains("bmc: /dev/ipmi0 firmware 1.47 manufacturer 10876 product 2330"),
        "{report}"
    );
}

/// A veth pair appears (uevent), then its carrier goes up and down (rtnetlink only): each
/// change reaches the controller's document as a delta.
#[test]
fn a_nic_that_appears_and_its_carrier_changes_reach_the_controller_in_a_qemu_guest() {
    let script = qs_tests::repo_root().join("images/hotplug-check");
    let bins = qs_tests::bin_dir();
    let (ok, report) = run_script(&script, &[bins.to_str().unwrap()]);
    assert!(ok, "{report}");
    assert!(report.contains("hotplug check: passed"), "{report}");
}
