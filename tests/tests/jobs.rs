//! Jobs end to end: real `qs serve` and `qs-agent run` processes on loopback; the `run`
//! capability executes real commands on this machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use qs_tests::{fixture_host, wait_until, Agent, Controller, FixtureServers};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
/// Short heartbeats so losses and restarts are noticed within seconds.
const FAST: &[&str] = &["--heartbeat-interval", "1s", "--heartbeat-timeout", "4s"];

/// Creates a job through the API; panics with the answer unless it was created.
async fn create(controller: &Controller, body: Value) -> String {
    let (status, answer) = controller.post("/api/v1/jobs", &body).await.unwrap();
    assert_eq!(status, 201, "{answer}");
    answer["job"]["id"].as_str().unwrap().to_owned()
}

/// Waits until a job is no longer running; returns `GET /jobs/{id}`.
async fn finished(controller: &Controller, id: &str) -> Value {
    wait_until(&format!("job {id} finished"), WAIT, || async {
        let (_, job) = controller.get(&format!("/api/v1/jobs/{id}")).await?;
        Ok((job["state"] != "running").then_some(job))
    })
    .await
    .unwrap()
}

/// Waits until `n` tasks of a job run.
async fn running(controller: &Controller, id: &str, n: u64) {
    wait_until(&format!("{n} task(s) of {id} running"), WAIT, || async {
        let (_, job) = controller.get(&format!("/api/v1/jobs/{id}")).await?;
        Ok((job["counts"]["running"] == n).then_some(()))
    })
    .await
    .unwrap();
}

fn task_of<'a>(job: &'a Value, host: &str) -> &'a Value {
    job["task_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["host"] == host)
        .unwrap_or_else(|| panic!("no task for {host} in {job}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_the_selected_hosts_and_record_every_task() {
    let servers = FixtureServers::start(FAST, WAIT).await.unwrap();
    let c = &servers.controller;
    let ids = &servers.ids;
    let two = json!({"mercury_id": {"$in": [ids[0], ids[1]]}});

    // Capabilities, with their metadata, for the fleet and for one host.
    let (status, caps) = c.get("/api/v1/capabilities").await.unwrap();
    assert_eq!(status, 200, "{caps}");
    let run = caps
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "run")
        .unwrap();
    assert_eq!(run["destructive"], true);
    assert_eq!(run["hosts"], 3);
    let (ok, out, err) = c.cli(&["capabilities", &ids[2]]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("inspect") && out.contains("run"), "{out}");

    // A dry run renders each host's arguments and creates nothing.
    let (status, dry) = c
        .post(
            "/api/v1/jobs",
            &json!({"query": two, "capability": "run",
                    "args": {"shell": "echo {{ inventory.mercury_id }}"}, "dry_run": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{dry}");
    let hosts = dry["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    for h in hosts {
        assert_eq!(
            h["args"]["shell"],
            format!("echo {}", h["host"].as_str().unwrap())
        );
    }
    let (_, jobs) = c.get("/api/v1/jobs").await.unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        0,
        "a dry run created {jobs}"
    );

    // Refusals name what is wrong, before anything is dispatched.
    for (body, code, words) in [
        (
            json!({"query": two, "capability": "frobnicate"}),
            "unknown_capability",
            "frobnicate",
        ),
        (
            json!({"query": two, "capability": "run", "args": {"shel": "true"}, "confirm": true}),
            "bad_arguments",
            "shel",
        ),
        (
            json!({"query": two, "capability": "run", "args": {"shell": "echo {{ inventory.nothing_here }}"}, "confirm": true}),
            "bad_arguments",
            "inventory.nothing_here",
        ),
        (
            json!({"query": two, "capability": "run", "args": {"shell": "true"}}),
            "confirmation_required",
            "2 host",
        ),
        (
            json!({"query": {"mercury_id": "none"}, "capability": "run", "confirm": true}),
            "no_online_hosts",
            "no host",
        ),
    ] {
        let (status, answer) = c.post("/api/v1/jobs", &body).await.unwrap();
        assert!(status >= 400, "{body} → {status} {answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message} lacks {words}");
    }
    // The CLI refuses a destructive job when it cannot ask (stdin is not a terminal).
    let (ok, _, err) = c
        .cli(&[
            "jobs",
            "create",
            "--query",
            &two.to_string(),
            "--capability",
            "run",
            "--args",
            r#"{"shell": "true"}"#,
        ])
        .await
        .unwrap();
    assert!(!ok && err.contains("--yes"), "{err}");

    // A job over two of the three hosts: output streamed, exit codes kept.
    let (ok, out, err) = c
        .cli(&[
            "jobs",
            "create",
            "--query",
            &two.to_string(),
            "--capability",
            "run",
            "--args",
            r#"{"shell": "echo out-{{ inventory.mercury_id }}; echo err >&2; [ {{ inventory.mercury_id }} = X ]"}"#,
            "--yes",
            "--json",
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tasks"], 2);
    let (watched, _, err) = c.cli(&["jobs", "watch", &id]).await.unwrap();
    assert!(!watched, "watch exits non-zero for a failed job: {err}");
    let job = finished(c, &id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["counts"]["failed"], 2, "{job}");
    let task = task_of(&job, &ids[0]);
    let (_, record) = c
        .get(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(record["output"]["exit_code"], 1, "{record}");
    let states: Vec<&str> = record["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"queued"));
    for state in ["dispatched", "received", "running"] {
        assert!(states.contains(&state), "{states:?}");
    }
    assert_eq!(states.last(), Some(&"failed"));
    let (ok, out, _) = c
        .cli(&["tasks", "logs", task["id"].as_str().unwrap()])
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(out, format!("out-{}\n", ids[0]));
    // Only the selected hosts got a task.
    assert!(job["task_list"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["host"] != ids[2].as_str()));

    // A succeeding job, followed over server-sent events.
    let id = create(
        c,
        json!({"query": {}, "capability": "run", "args": {"command": ["sleep", "1"]}, "confirm": true}),
    )
    .await;
    let mut events = c
        .client()
        .get(format!("http://{}/api/v1/jobs/{id}/events", c.http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut text = String::new();
    let read = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = events.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: end") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the event stream did not end: {text}");
    assert!(text.contains("event: job"), "{text}");
    let mut succeeded = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            let event: Value = serde_json::from_str(data).unwrap();
            if event["state"] == "succeeded" && event.get("task").is_some() {
                succeeded.insert(event["task"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(succeeded.len(), 3, "{text}");
    let (ok, out, _) = c.cli(&["jobs", "watch", &id]).await.unwrap();
    assert!(ok && out.contains("succeeded"), "{out}");
    let (ok, out, _) = c.cli(&["jobs", "list"]).await.unwrap();
    assert!(ok && out.contains(&id), "{out}");
    let (ok, out, _) = c.cli(&["jobs", "show", &id]).await.unwrap();
    assert!(ok && out.contains("succeeded 3"), "{out}");

    // Cancel: queued and running tasks end cancelled and the process is stopped.
    let id = create(
        c,
        json!({"query": {"mercury_id": ids[0]}, "capability": "run",
                "args": {"shell": "sleep 30"}, "confirm": true}),
    )
    .await;
    running(c, &id, 1).await;
    let (ok, _, err) = c.cli(&["jobs", "cancel", &id]).await.unwrap();
    assert!(ok, "{err}");
    let job = finished(c, &id).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["counts"]["cancelled"], 1, "{job}");

    // Exclusive calls on one host wait for each other, and the wait is shown.
    let first = create(
        c,
        json!({"query": {"mercury_id": ids[1]}, "capability": "run",
                "args": {"shell": "sleep 2", "exclusive": true}, "confirm": true}),
    )
    .await;
    let second = create(
        c,
        json!({"query": {"mercury_id": ids[1]}, "capability": "run",
                "args": {"shell": "true", "exclusive": true}, "confirm": true}),
    )
    .await;
    let (_, waiting) = c.get(&format!("/api/v1/jobs/{second}")).await.unwrap();
    let reason = task_of(&waiting, &ids[1])["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("exclusive"), "{waiting}");
    let a = finished(c, &first).await;
    let b = finished(c, &second).await;
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    let first_end = task_of(&a, &ids[1])["finished_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, second_task) = c
        .get(&format!(
            "/api/v1/tasks/{}",
            task_of(&b, &ids[1])["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let second_sent = second_task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "dispatched")
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(second_sent >= first_end, "{second_sent} < {first_end}");

    // A token restricted to a segment reaches only its hosts and sees only its own jobs.
    let (status, made) = c
        .post(
            "/api/v1/tokens",
            &json!({"role": "admin", "segment": {"mercury_id": ids[0]}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{made}");
    let restricted = c.client_with(made["secret"].as_str().unwrap());
    let url = |path: &str| format!("http://{}/api/v1/{path}", c.http_addr());
    let answer: Value = restricted
        .post(url("jobs"))
        .json(&json!({"query": {}, "capability": "run", "args": {"command": ["true"]}, "confirm": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["job"]["tasks"], 1, "{answer}");
    let own = answer["job"]["id"].as_str().unwrap().to_owned();
    let listed: Value = restricted
        .get(url("jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![own.as_str()]);
    let other = restricted
        .get(url(&format!("jobs/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_task_leaves_it_lost_never_succeeded() {
    let data = tempfile::tempdir().unwrap();
    let c = Controller::start(data.path(), FAST).await.unwrap();
    let root = fixture_host("qemu-q35");
    let agent = Agent::start(&c.agents, &root).await.unwrap();
    let host = agent.mercury_id.clone();
    c.wait_online(std::slice::from_ref(&host), WAIT)
        .await
        .unwrap();
    let id = create(
        &c,
        json!({"query": {"mercury_id": host}, "capability": "run",
                "args": {"shell": "sleep 30"}, "confirm": true}),
    )
    .await;
    running(&c, &id, 1).await;
    agent.kill().await.unwrap();
    // The same server boots again: its new agent does not know the call.
    let again = Agent::start(&c.agents, &root).await.unwrap();
    assert_eq!(again.mercury_id, host);
    let job = finished(&c, &id).await;
    assert_eq!(job["counts"]["lost"], 1, "{job}");
    let task = task_of(&job, &host);
    assert!(
        task["reason"]
            .as_str()
            .unwrap()
            .contains("without this call"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_job_accounts_for_every_task_after_restart() {
    let FixtureServers {
        data,
        controller,
        agents: _agents,
        ids,
    } = FixtureServers::start(FAST, WAIT).await.unwrap();
    let marker = data.path().join("runs");
    let id = create(
        &controller,
        json!({"query": {}, "capability": "run", "confirm": true,
                "args": {"shell": format!("echo x >> {}; sleep 4; echo done", marker.display())}}),
    )
    .await;
    running(&controller, &id, 3).await;
    let (agents_addr, http_addr) = (controller.agents.clone(), controller.http_addr().to_owned());
    controller.kill().await.unwrap();
    let controller = Controller::start_on(data.path(), &agents_addr, &http_addr, FAST)
        .await
        .unwrap();
    let job = finished(&controller, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counts"]["succeeded"], 3, "{job}");
    for host in &ids {
        let task = task_of(&job, host);
        let (_, record) = controller
            .get(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(record["output"]["stdout"]["head"], "done\n", "{record}");
    }
    // Each host ran the destructive command once: never dispatched twice.
    let runs = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(runs.lines().count(), 3, "{runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_its_steps_per_host_with_assets_and_recovers_a_failed_step() {
    let servers = FixtureServers::start(FAST, WAIT).await.unwrap();
    let c = &servers.controller;
    let host = servers.ids[2].clone();
    let plans = servers.data.path().join("config/firmware");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(
        plans.join("update.yaml"),
        r#"name: update
description: check, flash (which fails here), roll back
steps:
  - name: check
    capability: run
    args:
      shell: "echo rack {{ assets.rack }} host {{ host }}"
  - name: skipped
    capability: run
    when: steps.check.state != 'succeeded'
    args:
      shell: "echo never"
  - name: flash
    capability: run
    args:
      shell: "echo flashing >&2; exit 4"
    on_failure:
      - name: rollback
        capability: run
        args:
          shell: "echo rolled back after exit {{ steps.flash.output.exit_code }}"
  - name: verify
    capability: run
    args:
      shell: "echo not reached"
"#,
    )
    .unwrap();
    let assets = servers.data.path().join("assets.yaml");
    std::fs::write(&assets, format!("{host}:\n  rack: 7\n")).unwrap();
    let (ok, _, err) = c
        .cli(&["assets", "import", assets.to_str().unwrap()])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let (ok, out, err) = c
        .cli(&[
            "jobs",
            "create",
            "--query",
            &json!({"mercury_id": host}).to_string(),
            "--plan",
            "firmware/update",
            "--yes",
            "--json",
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = finished(c, &id).await;
    assert_eq!(job["state"], "failed", "{job}");
    let task_id = task_of(&job, &host)["id"].as_str().unwrap().to_owned();
    let (_, task) = c.get(&format!("/api/v1/tasks/{task_id}")).await.unwrap();
    let reason = task["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("step flash failed") && reason.contains("recovery succeeded"),
        "{task}"
    );
    let steps: Vec<(&str, &str)> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("check", "succeeded"),
            ("skipped", "skipped"),
            ("flash", "failed"),
            ("rollback", "succeeded"),
        ],
        "{task}"
    );
    let (ok, out, _) = c
        .cli(&["tasks", "logs", &task_id, "--step", "check"])
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(out, format!("rack 7 host {host}\n"));
    let (ok, out, _) = c
        .cli(&["tasks", "logs", &task_id, "--step", "flash.rollback"])
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(out, "rolled back after exit 4\n");
    let (ok, out, _) = c.cli(&["tasks", "show", &task_id]).await.unwrap();
    assert!(ok && out.contains("rollback (recovers flash)"), "{out}");
    assert!(
        out.contains("log flash (stderr, last lines):\n  | flashing"),
        "{out}"
    );
    // A plan that does not exist is refused at creation.
    let (status, answer) = c
        .post(
            "/api/v1/jobs",
            &json!({"query": {}, "plan": "firmware/nope", "confirm": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("firmware/nope"));
}
