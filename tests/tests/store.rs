//! The inventory store through the real `qs serve`: a full disk degrades it and it recovers by
//! itself (issue 10, item 5), and inventory history is kept, summarised and diffed (issue 9).
//! Agents are simulated fleets running the real agent session code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qs_tests::fleet::{simulated_servers, Fleet};
use qs_tests::{wait_until, Controller};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
/// After a MongoDB replica set restarts it elects itself primary and the driver rediscovers
/// it; registrations refused meanwhile back off (up to 30 s each) before they try again. On a
/// loaded CI machine that took longer than [`WAIT`] once; what the test checks is that they
/// all get in without a controller restart.
const RECOVERY_WAIT: Duration = Duration::from_secs(180);
/// The full-disk test is about the embedded store, whatever `QS_TEST_STORE` says.
const EMBEDDED_FAST: &[&str] = &[
    "--store",
    "embedded",
    "--heartbeat-interval",
    "1s",
    "--heartbeat-timeout",
    "4s",
];

/// A tmpfs of a fixed size mounted on a directory this test made; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `path` with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Smaller writes take the last bytes.
    let byte = [0u8; 1];
    while f.write(&byte).is_ok_and(|n| n == 1) {}
    filler
}

async fn registered_ids(controller: &Controller) -> Vec<String> {
    controller
        .agents()
        .await
        .unwrap()
        .iter()
        .filter_map(|a| a["mercury_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_the_store_and_it_recovers_without_a_restart_losing_nothing() {
    let disk = SmallDisk::mount("6m");
    let data = disk.path().join("data");
    let controller = Controller::start(&data, EMBEDDED_FAST).await.unwrap();

    // Acknowledged before the disk fills.
    let first = simulated_servers(10, 0x51).unwrap();
    let first_ids: Vec<String> = first.iter().map(|s| s.id.to_string()).collect();
    let fleet = Fleet::start(
        &controller.agents,
        first,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .unwrap();
    wait_until("the first agents registered", WAIT, || async {
        Ok((fleet.registered() == first_ids.len()).then_some(()))
    })
    .await
    .unwrap();

    let filler = fill(disk.path());
    // More agents register: their inventories need room the disk no longer has.
    let second = simulated_servers(150, 0x52).unwrap();
    let second_ids: Vec<String> = second.iter().map(|s| s.id.to_string()).collect();
    let late = Fleet::start(
        &controller.agents,
        second,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .unwrap();
    let degraded = wait_until("healthz reports the store degraded", WAIT, || async {
        let (status, health) = controller.get("/healthz").await?;
        Ok((status == 503 && health["store"]["state"] == "degraded").then_some(health))
    })
    .await
    .unwrap();
    let reason = degraded["store"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.to_lowercase().contains("space") || reason.contains("28"),
        "the reason names the full disk: {degraded}"
    );
    // Still serving reads of what was acknowledged while degraded? The API answers (a 503 on a
    // read that needs the store is fine), and /healthz keeps answering.
    let (status, _) = controller.get("/api/v1/agents").await.unwrap();
    assert!(status == 200 || status >= 500, "agents answered {status}");

    // Room again: the store reopens by itself, without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_until("healthz reports the store ok again", WAIT, || async {
        let (status, health) = controller.get("/healthz").await?;
        Ok((status == 200 && health["store"]["state"] == "ok").then_some(()))
    })
    .await
    .unwrap();
    // The agents that were refused register again, and every acknowledged document is there.
    wait_until(
        "the late agents registered once the disk had room",
        WAIT,
        || async {
            let ids = registered_ids(&controller).await;
            let missing = second_ids.iter().filter(|id| !ids.contains(id)).count();
            if missing == 0 {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("{missing} late agents missing"))
            }
        },
    )
    .await
    .unwrap();
    for id in &first_ids {
        let (status, doc) = controller
            .get(&format!("/api/v1/inventory/{id}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{id} lost: {doc}");
        assert!(doc["dmi"].is_object(), "{id}: {doc}");
    }
    late.stop().await;
    fleet.stop().await;
    // And the store opens after a restart with everything acknowledged.
    controller.kill().await.unwrap();
    let controller = Controller::start(&data, EMBEDDED_FAST).await.unwrap();
    let ids = registered_ids(&controller).await;
    for id in first_ids.iter().chain(&second_ids) {
        assert!(ids.contains(id), "{id} missing after the restart");
    }
    controller.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_history_summarises_changes_and_diffs_between_versions() {
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--history", "2"])
        .await
        .unwrap();
    let mut servers = simulated_servers(1, 0x53).unwrap();
    let id = servers[0].id.to_string();
    // Known memory and disks, whatever the fixture host had.
    let total: u64 = 64 << 30;
    servers[0].inventory["mem"] = json!({"total": total});
    servers[0].inventory["os_storage"] = json!([
        {"name": "sda", "size": 480_103_981_056u64},
        {"name": "sdb", "size": 1_920_383_410_176u64}
    ]);
    let register = |servers: Vec<qs_tests::fleet::SimulatedServer>| {
        let fleet = Fleet::start(
            &controller.agents,
            servers,
            Duration::ZERO,
            Duration::from_secs(10),
        )
        .unwrap();
        async move {
            wait_until("registered", WAIT, || async {
                Ok((fleet.registered() == 1).then_some(()))
            })
            .await
            .unwrap();
            fleet.stop().await;
        }
    };
    register(servers.clone()).await;

    // The same server comes back with half its memory and its last disk gone.
    let inventory = &mut servers[0].inventory;
    inventory["mem"]["total"] = json!(total / 2);
    let disks = inventory["os_storage"].as_array_mut().unwrap();
    let gone = disks.pop().unwrap()["name"].as_str().unwrap().to_owned();
    register(servers.clone()).await;

    let (status, history) = controller
        .get(&format!("/api/v1/inventory/{id}/history"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{history}");
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{history}");
    let summary = versions[1]["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("disk {gone} removed")),
        "{summary}"
    );
    assert!(summary.contains("mem.total 64 GiB → 32 GiB"), "{summary}");

    let (status, diff) = controller
        .get(&format!("/api/v1/inventory/{id}/diff"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{diff}");
    let patch = diff["patch"].as_array().unwrap();
    assert!(
        patch
            .iter()
            .any(|op| op["path"] == "/mem/total" && op["value"] == json!(total / 2)),
        "{diff}"
    );
    assert!(patch.iter().any(|op| op["op"] == "remove"), "{diff}");

    let (ok, out, err) = controller
        .cli(&["inventory", "history", &id])
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains(&format!("disk {gone} removed")), "{out}");
    let (ok, out, err) = controller.cli(&["inventory", "diff", &id]).await.unwrap();
    assert!(ok, "{err}");
    let patch: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(patch, diff["patch"]);

    // A third version prunes the first (--history 2).
    servers[0].inventory["mem"]["total"] = json!(total);
    register(servers).await;
    let (_, history) = controller
        .get(&format!("/api/v1/inventory/{id}/history"))
        .await
        .unwrap();
    let seqs: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2, "{history}");
    assert!(seqs[0] > 1, "the first version was pruned: {history}");
    controller.kill().await.unwrap();
}

/// A loopback port nothing listens on now (the kernel's pick, released at once).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

async fn healthz(http: &str) -> anyhow::Result<(u16, Value)> {
    let r = reqwest::get(format!("{http}/healthz")).await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// A MongoDB server away when `qs serve` starts: `/healthz` answers at once (503, the URL
/// without its password) and startup completes when the server comes. The server killed
/// mid-run: `/healthz` says degraded, and when it returns (same port, same data) the store
/// recovers without a restart, agents register again and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_server_away_at_start_or_lost_mid_run_is_reported_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mongo_port = unused_port();

    // Away at start, with a password in the URL: reported, the password never shown.
    let http = format!("127.0.0.1:{}", unused_port());
    let url = format!("mongodb://qs:s3cret@127.0.0.1:{mongo_port}/qs_lost");
    let starting = {
        let (data, http, url) = (dir.path().join("pw"), http.clone(), url.clone());
        tokio::spawn(async move {
            Controller::start_on(&data, "tcp://127.0.0.1:0", &http, &["--store", &url]).await
        })
    };
    let base = format!("http://{http}");
    let health = wait_until("healthz answers while the store is away", WAIT, || async {
        let (status, health) = healthz(&base).await?;
        Ok((status == 503).then_some(health))
    })
    .await
    .unwrap();
    assert_eq!(
        health["store"]["location"],
        json!(format!("mongodb://qs:****@127.0.0.1:{mongo_port}/qs_lost")),
        "{health}"
    );
    assert_eq!(health["store"]["state"], "degraded", "{health}");
    assert!(!health.to_string().contains("s3cret"), "{health}");
    starting.abort();

    // Away at start, then there: startup completes on the same HTTP port.
    let http = format!("127.0.0.1:{}", unused_port());
    let url = format!("mongodb://127.0.0.1:{mongo_port}/qs_lost");
    let data = dir.path().join("data");
    let starting = {
        let (data, http, url) = (data.clone(), http.clone(), url.clone());
        tokio::spawn(async move {
            let extra = ["--store", &url, "--heartbeat-interval", "1s"];
            Controller::start_on(&data, "tcp://127.0.0.1:0", &http, &extra).await
        })
    };
    let base = format!("http://{http}");
    wait_until(
        "healthz answers before the server is there",
        WAIT,
        || async {
            let (status, _) = healthz(&base).await?;
            Ok((status == 503).then_some(()))
        },
    )
    .await
    .unwrap();
    // A replica set: the controller's batches are transactions.
    let mut server =
        qs_tests::mongodb::MongoServer::start(&dir.path().join("mongo"), mongo_port, true)
            .await
            .unwrap();
    let controller = starting.await.unwrap().unwrap();
    assert_eq!(healthz(&base).await.unwrap().0, 200);
    let first = simulated_servers(5, 0x61).unwrap();
    let first_ids: Vec<String> = first.iter().map(|s| s.id.to_string()).collect();
    let fleet = Fleet::start(
        &controller.agents,
        first,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .unwrap();
    wait_until("the first agents registered", WAIT, || async {
        Ok((fleet.registered() == first_ids.len()).then_some(()))
    })
    .await
    .unwrap();

    // Lost mid-run.
    server.kill();
    let degraded = wait_until("healthz reports the lost server", WAIT, || async {
        let (status, health) = healthz(&base).await?;
        Ok((status == 503 && health["store"]["state"] == "degraded").then_some(health))
    })
    .await
    .unwrap();
    assert_eq!(degraded["store"]["location"], json!(url), "{degraded}");

    // Back: recovered without a restart; new agents register, the first ones are all there.
    server.restart().await.unwrap();
    wait_until("healthz reports the store ok again", WAIT, || async {
        let (status, _) = healthz(&base).await?;
        Ok((status == 200).then_some(()))
    })
    .await
    .unwrap();
    let second = simulated_servers(5, 0x62).unwrap();
    let second_ids: Vec<String> = second.iter().map(|s| s.id.to_string()).collect();
    let late = Fleet::start(
        &controller.agents,
        second,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .unwrap();
    wait_until(
        "every agent registered after the server returned",
        RECOVERY_WAIT,
        || async {
            let ids = registered_ids(&controller).await;
            let missing = first_ids
                .iter()
                .chain(&second_ids)
                .filter(|id| !ids.contains(id))
                .count();
            Ok((missing == 0).then_some(()))
        },
    )
    .await
    .unwrap();
    for id in &first_ids {
        let (status, doc) = controller
            .get(&format!("/api/v1/inventory/{id}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{id} lost: {doc}");
        assert!(doc["dmi"].is_object(), "{id}: {doc}");
    }
    late.stop().await;
    fleet.stop().await;
    controller.kill().await.unwrap();
}
