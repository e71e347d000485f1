//! Job-storm bench: one real `qs serve` and N simulated agents (the real agent session code on
//! real DEALER sockets, in this process, inventories from the fixture hosts) offering a trivial
//! capability (`echo`: returns its arguments). Once every agent is registered and idle, it
//! measures what heartbeats cost the controller; then it creates one job over the whole fleet
//! while `qs jobs watch` follows it, and reports the time from creation to every result
//! stored, how live the watch stayed, and the controller's CPU and memory.
//!
//! Run it with `tests/bench/job-storm` (release build); `--help` lists the knobs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use qs_capabilities::{CallContext, Capability, CapabilityError, Registry};
use qs_proto::{ArgInfo, CapabilityInfo};
use qs_tests::bench_report::{goal, mib, ms, percentile, threads};
use qs_tests::fleet::{self, Fleet};
use qs_tests::process_usage::{busiest_threads, Process};
use qs_tests::{wait_until, Controller};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

/// Job storm against a real controller.
#[derive(Debug, Parser)]
#[command(name = "job-storm")]
struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// The agents start dialling spread evenly over this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    spread: Duration,
    /// The controller's `--heartbeat-interval`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long to measure the idle, registered fleet's heartbeats.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// The controller's store (`--store`): `embedded` or a mongodb:// URL.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Give up waiting for registrations or the job after this long.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

/// The trivial capability the bench fans out: it returns its arguments.
struct Echo;

impl Capability for Echo {
    fn info(&self) -> CapabilityInfo {
        CapabilityInfo {
            name: "echo".into(),
            doc: "Returns its arguments (the job-storm bench's trivial capability)".into(),
            args: vec![ArgInfo {
                name: "value".into(),
                kind: "string".into(),
                required: false,
                doc: "any text".into(),
                default: None,
                choices: None,
            }],
            exclusive: false,
            destructive: false,
            default_timeout: 60,
        }
    }

    fn call(&self, args: &Value, _ctx: &CallContext) -> Result<Value, CapabilityError> {
        Ok(args.clone())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents == 0 {
        bail!("--agents must be positive");
    }
    let wanted = args.agents as u64 * 4 + 4096;
    let limit = fleet::raise_open_file_limit(wanted)?;
    println!(
        "job storm: {} agents, heartbeat {:?}, store {}, open-file limit {limit}",
        args.agents, args.heartbeat_interval, args.store
    );
    let servers = fleet::simulated_servers(args.agents, 0x6a)?;
    let data = tempfile::tempdir()?;
    let hb = humantime::format_duration(args.heartbeat_interval).to_string();
    let ht = humantime::format_duration(args.heartbeat_interval * 3).to_string();
    let per_source = (args.agents * 2).to_string();
    let controller = Controller::start(
        data.path(),
        &[
            "--heartbeat-interval",
            &hb,
            "--heartbeat-timeout",
            &ht,
            "--max-connections-per-source",
            &per_source,
            "--store",
            &args.store,
        ],
    )
    .await?;
    let qs = Process::new(controller.pid().context("qs serve has no pid")?);

    let fleet = Fleet::start_with(
        &controller.agents,
        servers,
        args.spread,
        Duration::from_secs(10),
        |_| Registry::empty().with(Box::new(Echo)),
    )?;
    let registering = Instant::now();
    let deadline = registering + args.deadline;
    while fleet.registered() < args.agents && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if fleet.registered() < args.agents {
        bail!(
            "only {} of {} agents registered within {:?}",
            fleet.registered(),
            args.agents,
            args.deadline
        );
    }
    println!(
        "registered {} agents in {:.1?}",
        args.agents,
        registering.elapsed()
    );
    // Let the registration burst's heartbeats settle before measuring.
    tokio::time::sleep(args.heartbeat_interval * 2).await;

    // Heartbeats of the idle fleet.
    let steady_from = Instant::now();
    let cpu_before = qs.cpu()?;
    let threads_before = qs.threads()?;
    tokio::time::sleep(args.steady).await;
    let cpu_steady = qs.cpu()?.saturating_sub(cpu_before);
    let threads_after = qs.threads()?;
    let echoes: Vec<Duration> = fleet
        .echoes()
        .into_iter()
        .filter(|(at, _)| *at > steady_from)
        .map(|(_, rtt)| rtt)
        .collect();
    let share = cpu_steady.as_secs_f64() / args.steady.as_secs_f64();
    let rss_idle = qs.rss()?;

    // One job over the whole fleet, followed by `qs jobs watch`.
    let cpu_job_before = qs.cpu()?;
    let threads_job_before = qs.threads()?;
    let created_at = Instant::now();
    let (status, created) = controller
        .post(
            "/api/v1/jobs",
            &json!({"query": {}, "capability": "echo", "args": {"value": "{{ host }}"}}),
        )
        .await?;
    let create_took = created_at.elapsed();
    if status != 201 {
        bail!("job not created: {status} {created}");
    }
    let id = created["job"]["id"]
        .as_str()
        .context("no job id")?
        .to_owned();
    let tasks = created["job"]["tasks"].as_u64().unwrap_or(0);
    let mut watch = tokio::process::Command::new(qs_tests::bin_dir().join("qs"))
        .args(["--url", &format!("http://{}", controller.http_addr())])
        .args(["--token", &controller.token])
        .args(["jobs", "watch", &id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start qs jobs watch")?;
    let stderr = watch.stderr.take().context("no watch stderr")?;
    let lines = tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        let mut at = Vec::new();
        while let Ok(Some(_)) = reader.next_line().await {
            at.push(Instant::now());
        }
        at
    });
    let done = wait_until("the job finished", args.deadline, || async {
        let (_, job) = controller.get(&format!("/api/v1/jobs/{id}")).await?;
        Ok((job["state"] != "running").then_some(job))
    })
    .await?;
    let all_stored = created_at.elapsed();
    let cpu_job = qs.cpu()?.saturating_sub(cpu_job_before);
    let threads_job = qs.threads()?;
    let watch_status = tokio::time::timeout(Duration::from_secs(30), watch.wait()).await;
    let watch_lines = lines.await.unwrap_or_default();
    let gaps: Vec<Duration> = watch_lines
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    let rss_job = qs.rss()?;
    let succeeded = done["counts"]["succeeded"].as_u64().unwrap_or(0);

    println!();
    println!("== heartbeats of {} idle agents", args.agents);
    println!(
        "{:.2?} controller CPU over {:?}: {:.1}% of one core, {:.0} µs per heartbeat ({} echoes, p50 {} p99 {})  [goal <= 5%: {}]",
        cpu_steady,
        args.steady,
        share * 100.0,
        cpu_steady.as_secs_f64() * 1e6 / echoes.len().max(1) as f64,
        echoes.len(),
        ms(percentile(&echoes, 0.5)),
        ms(percentile(&echoes, 0.99)),
        goal(share <= 0.05)
    );
    println!(
        "busiest threads: {}",
        threads(&busiest_threads(&threads_before, &threads_after, 4))
    );
    println!("== one job over the fleet ({tasks} tasks)");
    println!(
        "created (hosts selected, args rendered and checked, records durable) in {create_took:.2?}"
    );
    println!(
        "creation to all {tasks} results stored: {all_stored:.2?}, {succeeded} succeeded, state {}  [goal <= 5 s: {}]",
        done["state"],
        goal(all_stored <= Duration::from_secs(5) && succeeded == tasks)
    );
    println!(
        "controller CPU during the job: {cpu_job:.2?} ({:.0} µs per task); busiest threads: {}",
        cpu_job.as_secs_f64() * 1e6 / tasks.max(1) as f64,
        threads(&busiest_threads(&threads_job_before, &threads_job, 4))
    );
    println!(
        "qs jobs watch: {} progress lines, largest gap {}, exit {:?}  [stays live: {}]",
        watch_lines.len(),
        ms(gaps.iter().max().copied()),
        watch_status.map(|s| s.map(|s| s.code())),
        goal(gaps.iter().all(|g| *g <= Duration::from_secs(2)) && !watch_lines.is_empty())
    );
    println!(
        "controller RSS: idle fleet {}, after the job {}",
        mib(rss_idle),
        mib(rss_job)
    );
    fleet.stop().await;
    Ok(())
}
