//! Mutated messages through every agent message handler of the real controller code.
//!
//! Valid envelopes of every kind (register with a real inventory, heartbeat, full update,
//! delta, call progress, result, error, and the controller-bound kinds agents must not send)
//! are mutated — bytes flipped, inserted, cut, frames spliced, inventories replaced by deeply
//! nested or very wide documents — and handed to [`AgentProtocol::on_message`] from many
//! connections at once, with a real embedded store behind it. Nothing may panic, memory must
//! stay bounded, and the store must reopen afterwards with every document it accepted.
//!
//! `cargo bench -p qs-controller --bench protocol_fuzz` runs 1,000,000 messages and prints
//! figures; `cargo test` runs a 2,000-message subset as part of the suite.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qs_controller::agents::counters::Counters;
use qs_controller::agents::dispatcher::Dispatcher;
use qs_controller::agents::ingest::{Ingest, IngestConfig};
use qs_controller::agents::protocol::{AgentProtocol, ProtocolConfig};
use qs_controller::agents::registry::{Registry, RegistryConfig};
use qs_controller::agents::transport::{Connection, ConnectionId, Handler};
use qs_controller::store::Store;
use qs_proto::{
    codec, Body, CallOutcome, CallProgress, CallResult, CapabilityCall, Envelope, ErrorBody,
    ErrorCode, ErrorReport, Heartbeat, InventoryDelta, InventoryUpdate, MercuryId, MessageId,
    Register, Registered,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Connections sending at once.
const CONNECTIONS: u64 = 32;

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixture_inventory() -> anyhow::Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/benches/fixtures/qemu-q35.inventory.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    Ok(serde_json::from_str(&text)?)
}

fn host(n: u64) -> anyhow::Result<MercuryId> {
    Ok(format!("00{n:040x}").parse()?)
}

/// One valid envelope of every kind for `id`.
fn seeds(id: &MercuryId, inventory: &Value) -> Vec<(&'static str, Envelope)> {
    let patch = json_patch::diff(
        inventory,
        &json!({"mercury_id": id.to_string(), "mem": {"total": 1}}),
    );
    let env = |n: u64, body| Envelope::reply(MessageId(n), MessageId(n.wrapping_sub(1)), body);
    vec![
        (
            "register",
            env(
                1,
                Body::Register(Register {
                    mercury_id: id.clone(),
                    agent_version: "0.1.0".into(),
                    boot_id: "boot".into(),
                    capabilities: Vec::new(),
                    inventory: inventory.clone(),
                    inventory_version: 1,
                    image_id: None,
                    calls: Vec::new(),
                    collected_at: None,
                }),
            ),
        ),
        ("heartbeat", env(2, Body::Heartbeat(Heartbeat {}))),
        (
            "update",
            env(
                3,
                Body::InventoryUpdate(InventoryUpdate {
                    inventory: inventory.clone(),
                    version: 2,
                    collected_at: None,
                }),
            ),
        ),
        (
            "delta",
            env(
                4,
                Body::InventoryDelta(InventoryDelta {
                    base: 1,
                    version: 3,
                    patch,
                    collected_at: None,
                }),
            ),
        ),
        (
            "progress",
            env(
                5,
                Body::CallProgress(CallProgress {
                    message: "half".into(),
                    percent: Some(50.0),
                    stage: None,
                }),
            ),
        ),
        (
            "result",
            env(
                6,
                Body::CallResult(CallResult {
                    outcome: CallOutcome::Failed(ErrorReport {
                        message: "boom".into(),
                        causes: vec!["inner".into()],
                    }),
                    output: None,
                }),
            ),
        ),
        (
            "error",
            env(
                7,
                Body::Error(ErrorBody {
                    code: ErrorCode::Internal,
                    message: "x".into(),
                }),
            ),
        ),
        (
            "registered",
            env(
                8,
                Body::Registered(Registered {
                    heartbeat_interval_ms: 1,
                }),
            ),
        ),
        (
            "call",
            env(
                9,
                Body::CapabilityCall(CapabilityCall {
                    capability: "inspect".into(),
                    args: json!({}),
                }),
            ),
        ),
    ]
}

/// Stands in the encoded frame for a huge array spliced in afterwards.
const WIDE_MARK: &str = "wide-array-spliced-here";

/// A document nested up to 120 levels, or one standing for a very wide array (see
/// [`splice_wide`]): what a hostile peer sends.
fn hostile_document(rng: &mut Rng) -> Value {
    // Wide arrays are rarer: each costs its megabyte to make here, not there.
    if rng.below(8) != 0 {
        let mut v = json!(0);
        for _ in 0..rng.below(120) {
            v = if rng.below(2) == 0 {
                json!([v])
            } else {
                json!({ "n": v })
            };
        }
        json!({ "deep": v })
    } else {
        json!({ "wide": WIDE_MARK })
    }
}

/// Replaces the encoded [`WIDE_MARK`] string by an array of `n` zeros: one byte each on the
/// wire, tens once decoded, and cheap to make here.
fn splice_wide(frame: &mut Vec<u8>, n: usize) {
    let mut mark = vec![0xa0 | WIDE_MARK.len() as u8];
    mark.extend_from_slice(WIDE_MARK.as_bytes());
    if let Some(at) = frame.windows(mark.len()).position(|w| w == mark.as_slice()) {
        let mut array = vec![0xdd];
        array.extend_from_slice(&(n as u32).to_be_bytes());
        array.resize(5 + n, 0);
        frame.splice(at..at + mark.len(), array);
    }
}

/// A mutated frame derived from the seeds.
fn mutate(rng: &mut Rng, seeds: &[(&'static str, Vec<u8>)], id: &MercuryId) -> (usize, Vec<u8>) {
    let which = rng.below(seeds.len());
    let mut frame = seeds[which].1.clone();
    match rng.below(8) {
        0 => {}
        1 | 2 => {
            for _ in 0..=rng.below(8) {
                let at = rng.below(frame.len());
                frame[at] = rng.next() as u8;
            }
        }
        3 => {
            let at = rng.below(frame.len());
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            frame.splice(at..at, junk);
        }
        4 => frame.truncate(rng.below(frame.len())),
        5 => {
            let other = &seeds[rng.below(seeds.len())].1;
            let cut = rng.below(frame.len());
            frame.truncate(cut);
            frame.extend_from_slice(&other[rng.below(other.len())..]);
        }
        _ => {
            // Structure-aware: a well-formed message carrying a hostile document.
            let doc = hostile_document(rng);
            let body = match rng.below(3) {
                0 => Body::Register(Register {
                    mercury_id: id.clone(),
                    agent_version: "0.1.0".into(),
                    boot_id: "boot".into(),
                    capabilities: Vec::new(),
                    inventory: doc,
                    inventory_version: 1,
                    image_id: None,
                    calls: Vec::new(),
                    collected_at: None,
                }),
                1 => Body::InventoryUpdate(InventoryUpdate {
                    inventory: doc,
                    version: 9,
                    collected_at: None,
                }),
                _ => Body::InventoryDelta(InventoryDelta {
                    base: 1,
                    version: 2,
                    patch: serde_json::from_value(
                        json!([{"op": "add", "path": "/hostile", "value": doc}]),
                    )
                    .unwrap_or(json_patch::Patch(Vec::new())),
                    collected_at: None,
                }),
            };
            if let Ok(bytes) = codec::encode(&Envelope::new(MessageId(rng.next()), body)) {
                frame = bytes;
                // Around the value limit (250,000): some just under, most over.
                splice_wide(&mut frame, 200_000 + rng.below(1_000_000));
            }
        }
    }
    (which, frame)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn run(messages: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let inventory = fixture_inventory()?;
    let store = Store::open_embedded(dir.path())?;
    let counters = Arc::new(Counters::default());
    let registry = Arc::new(Registry::new(
        store.clone(),
        RegistryConfig {
            timeout: Duration::from_secs(3600),
            controller: "fuzz".into(),
        },
    ));
    let shutdown = CancellationToken::new();
    let (ingest, worker) = Ingest::start(
        store.clone(),
        IngestConfig::default(),
        counters.clone(),
        shutdown.clone(),
    );
    let dispatcher = Arc::new(Dispatcher::new(
        1,
        Duration::from_secs(60),
        counters.clone(),
    ));
    let protocol = Arc::new(AgentProtocol::new(
        ProtocolConfig {
            max_frame: qs_proto::codec::DEFAULT_MAX_FRAME,
            heartbeat_interval: Duration::from_secs(5),
        },
        counters.clone(),
        registry.clone(),
        ingest,
        dispatcher,
    ));
    let per_kind: Arc<Vec<AtomicU64>> = Arc::new((0..9).map(|_| AtomicU64::new(0)).collect());
    let replies = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        // Every fourth connection shares a MercuryId with another: sessions get taken over.
        let id = host(c % (CONNECTIONS * 3 / 4))?;
        let seeds: Vec<(&'static str, Vec<u8>)> = seeds(&id, &inventory)
            .into_iter()
            .map(|(k, e)| codec::encode(&e).map(|b| (k, b)))
            .collect::<Result<_, _>>()?;
        let (protocol, per_kind, replies) = (protocol.clone(), per_kind.clone(), replies.clone());
        let share = messages / CONNECTIONS + u64::from(c < messages % CONNECTIONS);
        senders.spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c + 1));
            let mut conn_no = c * 1_000_000;
            let (mut conn, mut rx) = connect(conn_no, &id);
            for i in 0..share {
                // Now and then the connection drops and the agent comes back on a new one.
                if i % 5_000 == 4_999 {
                    protocol.on_disconnect(&conn);
                    conn_no += 1;
                    (conn, rx) = connect(conn_no, &id);
                }
                let (kind, frame) = mutate(&mut rng, &seeds, &id);
                per_kind[kind].fetch_add(1, Ordering::Relaxed);
                protocol.on_message(&conn, frame).await;
                while rx.try_recv().is_ok() {
                    replies.fetch_add(1, Ordering::Relaxed);
                }
            }
            protocol.on_disconnect(&conn);
        });
    }
    let mut failed = 0;
    while let Some(joined) = senders.join_next().await {
        if let Err(error) = joined {
            failed += 1;
            eprintln!("a connection task failed: {error}");
        }
    }
    let elapsed = started.elapsed();
    registry.sweep().await?;
    shutdown.cancel();
    worker.await?;
    let snapshot = counters.snapshot();
    let kinds = seeds(&host(0)?, &inventory);
    println!(
        "protocol fuzz: {messages} mutated messages from {CONNECTIONS} connections in {elapsed:.2?} ({:.0}/s), {} replies",
        messages as f64 / elapsed.as_secs_f64(),
        replies.load(Ordering::Relaxed)
    );
    let seeded: Vec<String> = kinds
        .iter()
        .zip(per_kind.iter())
        .map(|((k, _), n)| format!("{k} {}", n.load(Ordering::Relaxed)))
        .collect();
    println!("  seeds mutated: {}", seeded.join(", "));
    println!(
        "  decoded {}, malformed {}, bad bodies {}, refused documents {}, unexpected/refused {}, store batches {}, late replies {}",
        snapshot.messages,
        snapshot.malformed_frames,
        snapshot.bad_bodies,
        snapshot.documents_refused,
        snapshot.refused,
        snapshot.ingest_batches,
        snapshot.late_replies
    );
    drop(protocol);
    drop(registry);
    drop(store);
    let reopened = Store::open_embedded(dir.path()).context("the store does not reopen")?;
    let all = qs_query::Query::from_request(&json!({"projection": {"mercury_id": 1}}))?;
    let docs = reopened.find(&all).await?.len();
    let peak = peak_rss_kib();
    println!(
        "  store reopened with {docs} documents; peak RSS {} MiB",
        peak / 1024
    );
    if failed > 0 {
        bail!("{failed} connection tasks panicked");
    }
    // Memory bounded: a leak or an amplification shows as gigabytes, not as this.
    if peak > 2 * 1024 * 1024 {
        bail!("peak RSS {} MiB exceeds 2 GiB", peak / 1024);
    }
    println!("protocol fuzz: {} passed, 0 failed", CONNECTIONS);
    Ok(())
}

fn connect(n: u64, id: &MercuryId) -> (Arc<Connection>, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel(1024);
    let conn = Connection::new(
        ConnectionId(n),
        std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        id.clone(),
        tx,
    );
    (Arc::new(conn), rx)
}

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let messages = if full { 1_000_000 } else { 2_000 };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(messages))
}
