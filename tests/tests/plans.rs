//! Issue 11 (plans and assets) through the real binaries: `qs plans validate` without a
//! controller, `qs plans list|show` against a controller's `--config-dir`, and `qs assets
//! import|show` with sets keyed by MercuryId and by serial number of real agents' inventories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use qs_tests::{bin_dir, repo_root, FixtureServers};
use serde_json::{json, Value};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(60);

fn plan_fixtures() -> PathBuf {
    repo_root().join("controller/plans/fixtures")
}

/// `qs ARGS` with no controller to talk to: (success, stdout, stderr).
async fn qs_local(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_dir().join("qs"))
        .args(args)
        // Nothing listens here: a command that wanted the controller would fail.
        .env("QS_URL", "http://127.0.0.1:9")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test]
async fn plans_validate_locally_with_file_line_and_reason() {
    let good = plan_fixtures().join("plans/firmware/bios-update.yaml");
    let (ok, out, err) = qs_local(&["plans", "validate", good.to_str().unwrap()]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("bios-update.yaml: ok (bios-update, 6 steps)"),
        "{out}"
    );

    let bad = plan_fixtures().join("bad/when-later.yaml");
    let dup = plan_fixtures().join("bad/duplicate-step.yaml");
    let (ok, out, err) = qs_local(&[
        "plans",
        "validate",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        dup.to_str().unwrap(),
    ])
    .await;
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains(&format!(
            "{}:6: step `a` (when) refers to `b`, which is not an earlier step",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:8: duplicate step name `check` (first at line 4)",
            dup.display()
        )),
        "{err}"
    );
    assert!(err.contains("2 of 3 plan files did not validate"), "{err}");

    let (ok, _, err) = qs_local(&["plans", "validate", "/nonexistent/plan.yaml"]).await;
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/plan.yaml: cannot read the plan"),
        "{err}"
    );
}

#[tokio::test]
async fn plans_and_assets_through_a_controller() {
    let config = tempfile::tempdir().unwrap();
    copy_dir(&plan_fixtures().join("plans"), config.path());
    std::fs::create_dir(config.path().join("broken")).unwrap();
    std::fs::copy(
        plan_fixtures().join("bad/bad-timeout.yaml"),
        config.path().join("broken/slow.yaml"),
    )
    .unwrap();
    let servers = FixtureServers::start(&["--config-dir", config.path().to_str().unwrap()], WAIT)
        .await
        .unwrap();
    let c = &servers.controller;

    // Plans: listed by SET/NAME, the refused file named with its line.
    let (ok, out, err) = c.cli(&["plans", "list"]).await.unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("firmware/bios-update"), "{out}");
    assert!(out.contains("raid/raid10"), "{out}");
    assert!(!out.contains("broken/slow"), "{out}");
    assert!(err.contains("slow.yaml:6: step `a`: bad timeout"), "{err}");
    let (status, listing) = c.get("/api/v1/plans").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(listing["plans"][0]["id"], "firmware/bios-update");
    assert_eq!(listing["plans"][0]["steps"], 4);

    let (ok, out, err) = c
        .cli(&["plans", "show", "firmware/bios-update"])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("3. flash — run (timeout 20m)"), "{out}");
    assert!(
        out.contains("when: steps.check.output.exit_code == 1"),
        "{out}"
    );
    assert!(out.contains("on failure 1. restore_settings"), "{out}");
    let (status, plan) = c.get("/api/v1/plans/raid/raid10").await.unwrap();
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["steps"][2]["args"]["level"], 10);
    assert_eq!(
        plan["steps"][2]["on_failure"][0]["name"],
        "recreate_degraded"
    );
    let (status, _) = c.get("/api/v1/plans/raid/raid5").await.unwrap();
    assert_eq!(status, 404);
    let (status, body) = c.get("/api/v1/plans/broken/slow").await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("slow.yaml:6:"));
    let (ok, _, err) = c.cli(&["plans", "show", "raid/raid5"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("no plan `raid/raid5`"), "{err}");

    // Assets: one set under a MercuryId, one under another host's serial, one for no host.
    let with_serial = {
        let mut found = None;
        for id in &servers.ids[1..] {
            let (_, doc) = c.get(&format!("/api/v1/inventory/{id}")).await.unwrap();
            let serial = ["product_serial", "chassis_serial"]
                .into_iter()
                .find_map(|f| {
                    doc["dmi"][f]
                        .as_str()
                        .filter(|s| !qs_proto::mercury_id::is_placeholder(s) && !s.contains(' '))
                        .map(str::to_owned)
                });
            if let Some(serial) = serial {
                found = Some((id.clone(), serial));
                break;
            }
        }
        found.expect("a fixture host with a usable serial number")
    };
    let (serial_host, serial) = with_serial;
    let by_id = &servers.ids[0];
    let file = config.path().join("assets.yaml");
    std::fs::write(
        &file,
        format!(
            "{by_id}:\n  bmc: {{ip: 10.0.0.5}}\n  rack: 7\n\"{serial}\":\n  bios_image: http://fw/a.bin\n  drives: [\"252:0\", \"252:1\"]\nSPARE-0001:\n  note: not racked yet\n"
        ),
    )
    .unwrap();
    let (ok, out, err) = c
        .cli(&["assets", "import", file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported 3 asset sets"), "{out}");

    let (ok, out, err) = c.cli(&["assets", "show", by_id]).await.unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("host {by_id}: asset set under its MercuryId")),
        "{out}"
    );
    assert!(out.contains("\"rack\": 7"), "{out}");
    // The host named by its MercuryId gets the set stored under its serial.
    let (ok, out, err) = c
        .cli(&["assets", "show", &serial_host, "--json"])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["key"], json!(serial));
    assert_eq!(shown["host"], json!(serial_host));
    assert_eq!(shown["assets"]["drives"], json!(["252:0", "252:1"]));
    // And named by its serial, the same.
    let (ok, out, _) = c.cli(&["assets", "show", &serial, "--json"]).await.unwrap();
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["host"], json!(serial_host));
    let (ok, out, _) = c.cli(&["assets", "show", "SPARE-0001"]).await.unwrap();
    assert!(ok);
    assert!(
        out.contains("asset set under SPARE-0001 (no known host)"),
        "{out}"
    );
    let third = &servers.ids[2];
    if third != &serial_host {
        let (ok, _, err) = c.cli(&["assets", "show", third]).await.unwrap();
        assert!(!ok);
        assert!(err.contains("no asset set applies"), "{err}");
    }

    // A fleet-sized file (over the API's 2 MiB body limit) goes in several transactions.
    let fleet = config.path().join("fleet.yaml");
    let text: String = (0..3000)
        .map(|i| {
            format!(
                "RACK-SN{i:05}:\n  note: \"{}\"\n  slot: {i}\n",
                "x".repeat(700)
            )
        })
        .collect();
    std::fs::write(&fleet, text).unwrap();
    let (ok, out, err) = c
        .cli(&["assets", "import", fleet.to_str().unwrap()])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported 3000 asset sets"), "{out}");
    let (status, last) = c.get("/api/v1/assets/RACK-SN02999").await.unwrap();
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["assets"]["slot"], 2999);

    // A bad file is refused before anything is sent, naming file and line.
    let bad = config.path().join("bad-assets.yaml");
    std::fs::write(&bad, "SN1:\n  rack: 1\nSN1:\n  rack: 2\n").unwrap();
    let (ok, _, err) = c
        .cli(&["assets", "import", bad.to_str().unwrap()])
        .await
        .unwrap();
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:3: duplicate key `SN1`", bad.display())),
        "{err}"
    );
    // The API refuses a malformed body and a viewer's import.
    let (status, body) = c.post("/api/v1/assets", &json!({"SN1": 5})).await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, token) = c
        .post("/api/v1/tokens", &json!({"role": "viewer"}))
        .await
        .unwrap();
    assert!(status < 300, "{token}");
    let viewer = c.client_with(token["secret"].as_str().unwrap());
    let refused = viewer
        .post(format!("{}/api/v1/assets", c.http))
        .json(&json!({"SN9": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let read = viewer
        .get(format!("{}/api/v1/assets/SPARE-0001", c.http))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
}
