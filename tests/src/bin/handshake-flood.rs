//! Issue 12 under attack, on loopback: a controller with `--agents` simulated agents registered
//! takes `--rate` unauthenticated connection attempts a second for `--seconds` (each a ZMTP
//! greeting and READY, then a forged Noise handshake message), plus `--idle` connections that
//! never finish a greeting, while capability calls keep going to the real agents. Prints what
//! held: agents registered and sessions lost, calls completed and their slowest time, the
//! controller's counters, and whether the idle connections were closed by the handshake
//! deadline.
//!
//! `cargo run --release -p qs-tests --bin handshake-flood` (debug binaries work, slower).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use qs_tests::fleet::{self, Fleet};
use qs_tests::{wait_until, Controller};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Args {
    /// Real (simulated) agents that must stay registered.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Unauthenticated connection attempts a second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long the flood lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Connections that never finish a greeting.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
}

/// ZMTP greeting and READY of a DEALER named after `n`, then a forged handshake message.
fn forged(n: u64) -> Vec<u8> {
    let identity = format!("00{n:040x}");
    let mut g = qs_tests::secure_peer::zmtp_hello(identity.as_bytes());
    g.extend([0u8, 96]);
    g.extend((0..96u64).map(|i| (i * 31 + n) as u8));
    g
}

async fn counters(controller: &Controller) -> anyhow::Result<Value> {
    let (status, c) = controller.get("/api/v1/counters").await?;
    if status != 200 {
        bail!("counters: {status}");
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    fleet::raise_open_file_limit(65_536)?;
    let data = tempfile::tempdir()?;
    let controller = Controller::start(
        data.path(),
        &[
            "--max-connections-per-source",
            "100000",
            "--heartbeat-interval",
            "2s",
        ],
    )
    .await?;
    let servers = fleet::simulated_servers(args.agents, 0x71)?;
    let ids: Vec<String> = servers.iter().map(|s| s.id.to_string()).collect();
    let fleet = Fleet::start(
        &controller.agents,
        servers,
        Duration::ZERO,
        Duration::from_secs(10),
    )?;
    wait_until(
        "every agent registered",
        Duration::from_secs(120),
        || async { Ok((fleet.registered() == args.agents).then_some(())) },
    )
    .await?;
    println!("{} agents registered", args.agents);

    // Idle connections: TCP only, never a greeting.
    let mut idle = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        idle.push(TcpStream::connect(controller.agents_addr()).await?);
    }
    let idle_opened = Instant::now();

    // Calls to real agents all through the flood.
    let caller = {
        let http = controller.http.clone();
        let client = controller.client();
        let ids = ids.clone();
        let seconds = args.seconds;
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(seconds.into());
            let (mut done, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
            let mut i = 0;
            while Instant::now() < until {
                let id = &ids[i % ids.len()];
                i += 1;
                let t = Instant::now();
                let r = client
                    .post(format!("{http}/api/v1/agents/{id}/calls"))
                    .json(
                        &json!({"capability": "inspect", "args": {"only": ["cpu"]}, "timeout": 30}),
                    )
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => done += 1,
                    _ => failed += 1,
                }
                slowest = slowest.max(t.elapsed());
            }
            (done, failed, slowest)
        })
    };

    // The flood: `rate` attempts a second, each on its own task.
    let addr = controller.agents_addr().to_owned();
    let started = Instant::now();
    let mut attempts = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let mut hung_up = 0u64;
    for n in 0..total {
        ticker.tick().await;
        let addr = addr.clone();
        attempts.spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return false;
            };
            let _ = s.write_all(&forged(n)).await;
            let mut sink = Vec::new();
            // The controller must hang up: it never answers a forged handshake.
            tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink))
                .await
                .is_ok()
                && sink.len() <= 64 + 64
        });
        while attempts.len() > 4096 {
            if let Some(r) = attempts.join_next().await {
                hung_up += u64::from(matches!(r, Ok(true)));
            }
        }
    }
    let flood_time = started.elapsed();
    while let Some(r) = attempts.join_next().await {
        hung_up += u64::from(matches!(r, Ok(true)));
    }
    let (done, failed, slowest) = caller.await.context("the caller panicked")?;

    // Idle connections are closed by the handshake deadline (10 s).
    let mut idle_closed = 0usize;
    for mut s in idle {
        let mut sink = Vec::new();
        if tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink))
            .await
            .is_ok()
        {
            idle_closed += 1;
        }
    }
    let idle_after = idle_opened.elapsed();
    let c = counters(&controller).await?;
    let lost: u32 = fleet.records().iter().map(|r| r.sessions_lost()).sum();
    println!(
        "flood: {total} forged handshakes in {:.1} s, {hung_up} hung up on without a byte beyond greeting and READY",
        flood_time.as_secs_f64()
    );
    println!(
        "agents: {} of {} registered after the flood, {lost} sessions lost",
        fleet.registered(),
        args.agents
    );
    println!(
        "calls during the flood: {done} completed, {failed} failed, slowest {:.0} ms",
        slowest.as_secs_f64() * 1e3
    );
    println!(
        "idle connections: {idle_closed} of {} closed within {:.1} s of opening",
        args.idle,
        idle_after.as_secs_f64()
    );
    println!(
        "controller counters: unauthenticated {}, rejected_connections {}, refused_connections {}",
        c["unauthenticated"], c["rejected_connections"], c["refused_connections"]
    );
    fleet.stop().await;
    controller.kill().await?;
    Ok(())
}
