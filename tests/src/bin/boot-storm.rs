//! Boot-storm bench: one real `qs serve` (embedded store, fresh data dir) and N simulated
//! agents (the real agent session code on real DEALER sockets, in this process) dialling within
//! a few seconds. Prints registrations per second, registrations that timed out or happened
//! twice, heartbeat echo times during the storm and at steady state, the controller's memory
//! per idle connected agent and its CPU time, with what the controller was busy with.
//!
//! Run it with `tests/bench/boot-storm` (release build); `--help` lists the knobs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use qs_tests::bench_report::{goal, mib, ms as fmt, percentile, threads};
use qs_tests::fleet::{self, Fleet};
use qs_tests::process_usage::{busiest_threads, Process};
use qs_tests::{wait_until, Controller};
use serde_json::Value;

/// Boot storm against a real controller.
#[derive(Debug, Parser)]
#[command(name = "boot-storm")]
struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// The agents start dialling spread evenly over this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    spread: Duration,
    /// The controller's `--heartbeat-interval`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// The controller's `--heartbeat-timeout`.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// The agents' reply timeout (registration, heartbeat), as `qs-agent run --reply-timeout`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reply_timeout: Duration,
    /// Give up waiting for every agent to register after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    register_deadline: Duration,
    /// How long to watch the registered, idle fleet (heartbeats, CPU, memory).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Count the controller's fsync/fdatasync calls during the storm with `perf stat`.
    #[arg(long)]
    perf: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents == 0 {
        bail!("--agents must be positive");
    }
    // One socket per agent here; the controller (a child, inheriting the limit) holds a few per
    // connection.
    let wanted = args.agents as u64 * 4 + 4096;
    let limit = fleet::raise_open_file_limit(wanted)?;
    println!(
        "boot storm: {} agents dialling over {:?}, heartbeat {:?}, open-file limit {limit}",
        args.agents, args.spread, args.heartbeat_interval
    );
    if limit < wanted {
        println!(
            "warning: the open-file limit stays at {limit} (hard limit; raising it needs \
             CAP_SYS_RESOURCE), below the {wanted} asked for: a controller holding several \
             descriptors per agent runs out before every agent is connected"
        );
    }

    let made = Instant::now();
    let servers = fleet::simulated_servers(args.agents, 0x5b)?;
    let mut ids: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != servers.len() {
        bail!(
            "simulated servers share MercuryIds: {} distinct of {}",
            ids.len(),
            servers.len()
        );
    }
    println!(
        "inventories: {} distinct servers from the fixture hosts in {:?}",
        servers.len(),
        made.elapsed()
    );

    let data = tempfile::tempdir()?;
    let hb = humantime::format_duration(args.heartbeat_interval).to_string();
    let per_source = (args.agents * 2).to_string();
    let ht = humantime::format_duration(args.heartbeat_timeout).to_string();
    let controller = Controller::start(
        data.path(),
        &[
            "--heartbeat-interval",
            &hb,
            "--heartbeat-timeout",
            &ht,
            // Every simulated agent dials from 127.0.0.1.
            "--max-connections-per-source",
            &per_source,
        ],
    )
    .await?;
    let pid = controller.pid().context("qs serve has no pid")?;
    let qs = Process::new(pid);
    wait_until("controller healthy", Duration::from_secs(30), || async {
        Ok((controller.get("/healthz").await?.0 == 200).then_some(()))
    })
    .await?;
    let rss_before = qs.rss()?;

    // The storm.
    let overflows_before = listen_overflows();
    let cpu_before = qs.cpu()?;
    let threads_before = qs.threads()?;
    let bench = Process::new(std::process::id());
    let bench_cpu_before = bench.cpu()?;
    let perf = if args.perf {
        Some(start_perf(pid)?)
    } else {
        None
    };
    let fleet = Fleet::start(&controller.agents, servers, args.spread, args.reply_timeout)?;
    let mut peak_files = 0;
    let deadline = Instant::now() + args.register_deadline;
    while fleet.registered() < args.agents && Instant::now() < deadline {
        peak_files = peak_files.max(qs.open_files().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_storm = qs.cpu()?.saturating_sub(cpu_before);
    let bench_cpu_storm = bench.cpu()?.saturating_sub(bench_cpu_before);
    let threads_storm = qs.threads()?;
    let fsyncs = match perf {
        Some(perf) => Some(stop_perf(perf).await?),
        None => None,
    };
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a - b);
    let registered = fleet.registered();
    let last_registered = fleet
        .records()
        .iter()
        .filter_map(|r| r.registered_at())
        .max()
        .unwrap_or(fleet.started);
    let storm = last_registered.duration_since(fleet.started);
    let to_register: Vec<Duration> = fleet
        .records()
        .iter()
        .filter_map(|r| Some(r.registered_at()?.duration_since(r.started()?)))
        .collect();
    let storm_echoes: Vec<Duration> = fleet
        .echoes()
        .into_iter()
        .filter(|(at, _)| *at <= last_registered)
        .map(|(_, rtt)| rtt)
        .collect();
    let sent = fleet.heartbeats_sent();
    // Heartbeats sent early enough that their echo was due before the storm ended.
    let storm_sent = sent
        .iter()
        .filter(|at| **at + args.reply_timeout <= last_registered)
        .count();
    let storm_echoed_due = fleet
        .echoes()
        .iter()
        .filter(|(at, rtt)| *at - *rtt + args.reply_timeout <= last_registered)
        .count();
    let twice = fleet
        .records()
        .iter()
        .filter(|r| r.registrations() > 1)
        .count();
    let timed_out = fleet
        .records()
        .iter()
        .filter(|r| r.unregistered_sessions() > 0)
        .count();

    // Steady state: everyone registered and idle, heartbeating.
    let steady_from = Instant::now();
    let cpu_steady_before = qs.cpu()?;
    let threads_steady_before = qs.threads()?;
    let perf = if args.perf {
        Some(start_perf(pid)?)
    } else {
        None
    };
    tokio::time::sleep(args.steady).await;
    let steady_fsyncs = match perf {
        Some(perf) => Some(stop_perf(perf).await?),
        None => None,
    };
    let cpu_steady = qs.cpu()?.saturating_sub(cpu_steady_before);
    let threads_steady = qs.threads()?;
    let steady_sent = fleet
        .heartbeats_sent()
        .iter()
        .filter(|at| **at > steady_from)
        .count();
    let steady_echoes: Vec<Duration> = fleet
        .echoes()
        .into_iter()
        .filter(|(at, _)| *at > steady_from)
        .map(|(_, rtt)| rtt)
        .collect();
    let rss_connected = qs.rss()?;
    let files_connected = qs.open_files()?;
    let online = online_agents(&controller).await?;
    let lost_while_connected: u32 = fleet.records().iter().map(|r| r.sessions_lost()).sum();
    let losses: Vec<String> = fleet
        .records()
        .iter()
        .filter_map(|r| r.last_loss())
        .take(3)
        .collect();

    // Disconnect: sessions gone, documents kept.
    fleet.stop().await;
    let gone = wait_until(
        "every agent shown offline",
        args.heartbeat_timeout * 3 + Duration::from_secs(30),
        || async {
            let (listed, online) = online_agents(&controller).await?;
            Ok((online == 0).then_some(listed))
        },
    )
    .await;
    let rss_after = qs.rss()?;
    let files_after = qs.open_files()?;
    let hwm = qs.status_bytes("VmHWM")?;
    // The allocator keeps what the sessions freed, so the RSS above may not fall after the
    // disconnect. A fresh controller on the same data dir holds the documents and no session
    // ever: connected minus that is an upper bound of the session memory.
    let (agents_addr, http_addr) = (controller.agents.clone(), controller.http_addr().to_owned());
    controller.kill().await?;
    let restarted = Controller::start_on(data.path(), &agents_addr, &http_addr, &[]).await?;
    let listed_after_restart = wait_until(
        "the restarted controller lists the stored agents",
        Duration::from_secs(120),
        || async { Ok(Some(restarted.agents().await?.len())) },
    )
    .await?;
    let rss_restarted = Process::new(restarted.pid().context("qs serve has no pid")?).rss()?;

    let rate = registered as f64 / storm.as_secs_f64().max(1e-9);
    let storm_p99 = percentile(&storm_echoes, 0.99);
    // Per agent that was online when memory was read (all of them when the storm succeeded).
    let connected = online.1.max(1) as f64;
    let per_agent = rss_connected.saturating_sub(rss_after) as f64 / connected;
    println!();
    println!("== registrations");
    println!(
        "registered {registered}/{} in {:.2?} (first dial to last acknowledged): {rate:.0}/s  [goal >= 2000/s: {}]",
        args.agents,
        storm,
        goal(rate >= 2000.0)
    );
    println!(
        "time to register per agent: p50 {} p99 {} max {}",
        fmt(percentile(&to_register, 0.5)),
        fmt(percentile(&to_register, 0.99)),
        fmt(to_register.iter().max().copied())
    );
    println!(
        "timed out (a session ended unregistered): {timed_out}; registered twice: {twice}  [goal 0 and 0: {}]",
        goal(timed_out == 0 && twice == 0 && registered == args.agents)
    );
    println!("sessions lost before the fleet stopped: {lost_while_connected} {losses:?}");
    println!(
        "controller listen queue overflows during the storm: {}",
        overflows.map_or("unknown".into(), |o| o.to_string())
    );
    println!("== heartbeat echo (agent send -> controller reply)");
    println!(
        "during the storm: {} echoes, p50 {} p99 {} max {}  [goal p99 <= 100 ms: {}]",
        storm_echoes.len(),
        fmt(percentile(&storm_echoes, 0.5)),
        fmt(storm_p99),
        fmt(storm_echoes.iter().max().copied()),
        goal(storm_p99.is_some_and(|p| p <= Duration::from_millis(100)))
    );
    println!(
        "during the storm: {} of {storm_sent} heartbeats sent at least a reply timeout before its end were echoed",
        storm_echoed_due
    );
    println!(
        "steady ({:?}): {} heartbeats sent, {} echoes, p50 {} p99 {} max {}",
        args.steady,
        steady_sent,
        steady_echoes.len(),
        fmt(percentile(&steady_echoes, 0.5)),
        fmt(percentile(&steady_echoes, 0.99)),
        fmt(steady_echoes.iter().max().copied())
    );
    println!("== controller memory (RSS)");
    println!(
        "before {} | {} agents registered and idle {} | after they disconnected {} | peak {}",
        mib(rss_before),
        online.1,
        mib(rss_connected),
        mib(rss_after),
        mib(hwm)
    );
    let upper_bound = rss_connected.saturating_sub(rss_restarted) as f64 / connected;
    println!(
        "everything per connected agent (documents included): {:.1} KiB",
        rss_connected.saturating_sub(rss_before) as f64 / connected / 1024.0
    );
    if rss_after < rss_connected {
        println!(
            "per idle connected agent (connected - disconnected): {:.1} KiB  [goal <= 8 KiB: {}]",
            per_agent / 1024.0,
            goal(per_agent <= 8192.0)
        );
    } else {
        println!(
            "per idle connected agent (connected - disconnected): not measurable, the RSS did not \
             fall after the disconnect (the allocator keeps what the sessions freed)"
        );
    }
    println!(
        "fresh controller with the {listed_after_restart} stored documents and no session: {}; \
         per connected agent beyond that: {:.1} KiB (upper bound)  [goal <= 8 KiB: {}]",
        mib(rss_restarted),
        upper_bound / 1024.0,
        goal(upper_bound <= 8192.0)
    );
    match &gone {
        Ok(listed) => println!("after disconnect: {listed} agents listed, none online"),
        Err(error) => println!("after disconnect: {error:#}"),
    }
    println!(
        "open files: peak during the storm {peak_files}, connected {files_connected}, after {files_after}"
    );
    println!("== controller CPU");
    println!(
        "storm: {:.2?} CPU over {:.2?} ({:.0}% of one core), {:.0} µs per registration",
        cpu_storm,
        storm,
        100.0 * cpu_storm.as_secs_f64() / storm.as_secs_f64().max(1e-9),
        cpu_storm.as_secs_f64() * 1e6 / (registered.max(1) as f64)
    );
    println!(
        "storm: this bench process (the simulated agents) used {:.2?} CPU meanwhile",
        bench_cpu_storm
    );
    if let Some((fsync, fdatasync)) = fsyncs {
        println!(
            "storm: {fsync} fsync + {fdatasync} fdatasync calls ({:.2} per registration)",
            (fsync + fdatasync) as f64 / registered.max(1) as f64
        );
    }
    println!(
        "storm: busiest threads {}",
        threads(&busiest_threads(&threads_before, &threads_storm, 5))
    );
    println!(
        "steady: {:.2?} CPU over {:?} ({:.1}% of one core), {:.0} µs per heartbeat",
        cpu_steady,
        args.steady,
        100.0 * cpu_steady.as_secs_f64() / args.steady.as_secs_f64(),
        cpu_steady.as_secs_f64() * 1e6 / (steady_echoes.len().max(1) as f64)
    );
    if let Some((fsync, fdatasync)) = steady_fsyncs {
        println!(
            "steady: {fsync} fsync + {fdatasync} fdatasync calls ({:.2} per heartbeat)",
            (fsync + fdatasync) as f64 / steady_echoes.len().max(1) as f64
        );
    }
    println!(
        "steady: busiest threads {}",
        threads(&busiest_threads(&threads_steady_before, &threads_steady, 5))
    );
    drop(restarted);
    Ok(())
}

/// (agents listed, agents online) from the controller's API.
async fn online_agents(controller: &Controller) -> anyhow::Result<(usize, usize)> {
    let agents = controller.agents().await?;
    let online = agents
        .iter()
        .filter(|a| a.get("online").and_then(Value::as_bool) == Some(true))
        .count();
    Ok((agents.len(), online))
}

/// TcpExt ListenOverflows: connections the kernel dropped because an accept queue was full.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn start_perf(pid: u32) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new("perf")
        .args(["stat", "-x", ",", "-e"])
        .arg("syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync")
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start perf stat")
}

/// Stops `perf stat` (SIGINT makes it print) and returns (fsync, fdatasync) counts.
async fn stop_perf(perf: tokio::process::Child) -> anyhow::Result<(u64, u64)> {
    let pid = perf.id().context("perf stat already ended")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGINT,
    )
    .context("cannot stop perf stat")?;
    let out = perf.wait_with_output().await?;
    let text = String::from_utf8_lossy(&out.stderr);
    let count = |event: &str| -> u64 {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((count("sys_enter_fsync"), count("sys_enter_fdatasync")))
}
