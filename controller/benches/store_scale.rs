//! Store at fleet scale (issue 9): loads N realistic inventories (the fixture hosts, each copy
//! with its own serials, UUID, MACs, disk and DIMM serials, memory size and BIOS version) into
//! a store through the [`Store`] interface, then starts a real `qs serve` on it and measures,
//! over HTTP: an indexed equality query, an indexed array query (`interfaces.address`), a range
//! query with sort and limit 50 (`--index mem.total`), a count, a group-by over every document,
//! and a full-scan filter; the controller's RSS after load and after the queries; bytes on disk
//! per document. Run by `tests/bench/store-scale`; prints figures, asserts only answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qs_controller::store::{Store, StoreOptions, Write};
use serde_json::{json, Value};

const BIOS: [&str; 5] = ["1.2.3", "1.4.0", "2.0.1", "2.1.7", "U30 v2.72"];
const GIB: u64 = 1 << 30;
const MEMORY: [u64; 5] = [64 * GIB, 128 * GIB, 256 * GIB, 512 * GIB, 1024 * GIB];

fn serial(i: usize) -> String {
    format!("QSS{i:09}")
}

fn mac(i: usize, k: usize) -> String {
    let b = (i as u32).to_be_bytes();
    format!(
        "02:5c:{:02x}:{:02x}:{:02x}:{:02x}",
        b[1], b[2], b[3], k as u8
    )
}

fn id(i: usize) -> String {
    format!("bench-{i:09}")
}

/// Inventory `i`: fixture host `i % hosts` made distinct.
fn inventory(bases: &[Value], i: usize) -> Value {
    let mut v = bases[i % bases.len()].clone();
    let s = serial(i);
    v["mercury_id"] = json!(id(i));
    if !v["dmi"].is_object() {
        v["dmi"] = json!({});
    }
    v["dmi"]["product_serial"] = json!(s);
    v["dmi"]["chassis_serial"] = json!(s);
    v["dmi"]["board_serial"] = json!(format!("B{s}"));
    v["dmi"]["product_uuid"] = json!(format!("51535349-4d00-4000-8000-{i:012x}"));
    v["dmi"]["bios_version"] = json!(BIOS[(i * 7) % BIOS.len()]);
    if let Some(devices) = v["dmi"]["memory_devices"].as_array_mut() {
        for (k, d) in devices.iter_mut().enumerate() {
            d["serial"] = json!(format!("D{i:09}{k:02}"));
        }
    }
    if !v["mem"].is_object() {
        v["mem"] = json!({});
    }
    v["mem"]["total"] = json!(MEMORY[(i * 3) % MEMORY.len()]);
    if let Some(dimms) = v["mem"]["dimms"].as_array_mut() {
        for (k, d) in dimms.iter_mut().enumerate() {
            d["serial"] = json!(format!("D{i:09}{k:02}"));
        }
    }
    match v["interfaces"].as_array_mut() {
        Some(nics) if !nics.is_empty() => {
            for (k, nic) in nics.iter_mut().enumerate() {
                nic["address"] = json!(mac(i, k));
            }
        }
        _ => v["interfaces"] = json!([{"name": "eth0", "address": mac(i, 0)}]),
    }
    if let Some(disks) = v["os_storage"].as_array_mut() {
        for (k, d) in disks.iter_mut().enumerate() {
            d["serial"] = json!(format!("S{i:09}{k:02}"));
            if let Some(size) = d["size"].as_u64() {
                d["size"] = json!(size * (1 + (i % 4) as u64));
            }
        }
    }
    v
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Args {
    docs: usize,
    mongodb_docs: Option<usize>,
    backends: Vec<String>,
    mongodb_uri: Option<String>,
}

fn args() -> Args {
    let mut out = Args {
        docs: 100_000,
        mongodb_docs: None,
        backends: vec!["embedded".into(), "mongodb".into()],
        mongodb_uri: std::env::var("QS_TEST_MONGODB_URI").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--docs" => out.docs = it.next().and_then(|v| v.parse().ok()).expect("--docs N"),
            "--mongodb-docs" => {
                out.mongodb_docs = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--mongodb-docs N"),
                )
            }
            "--backend" => out.backends = vec![it.next().expect("--backend embedded|mongodb")],
            "--mongodb-uri" => out.mongodb_uri = it.next(),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    out
}

/// A MongoDB-wire server: the given URI, or tests/mongodb-server started for the run.
fn mongodb_server(uri: Option<String>) -> (String, Option<std::process::Child>) {
    if let Some(uri) = uri {
        return (uri, None);
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mongodb-server");
    let mut child = Command::new(&script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start tests/mongodb-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("mongodb://"),
        "tests/mongodb-server printed {line:?}"
    );
    (line.trim().to_owned(), Some(child))
}

struct Controller {
    child: std::process::Child,
    http: String,
}

impl Controller {
    fn start(data_dir: &std::path::Path, store: Option<&str>) -> Controller {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qs"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--agents", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--index", "mem.total", "--query-timeout", "300s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(url) = store {
            cmd.args(["--store", url]);
        }
        let mut child = cmd.spawn().expect("cannot start qs serve");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let first: Value = serde_json::from_str(&line).expect("qs serve's first line");
        Controller {
            child,
            http: first["http"].as_str().unwrap().to_owned(),
        }
    }

    fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn timed(
    client: &reqwest::Client,
    url: &str,
    bodies: impl Iterator<Item = Value>,
    check: impl Fn(&Value),
) -> Vec<Duration> {
    let mut times = Vec::new();
    for body in bodies {
        let started = Instant::now();
        let r = client.post(url).json(&body).send().await.unwrap();
        let status = r.status();
        let answer: Value = r.json().await.unwrap();
        times.push(started.elapsed());
        assert!(status.is_success(), "{url} {body}: {status} {answer}");
        check(&answer);
    }
    times.sort();
    times
}

fn line(name: &str, times: &[Duration]) {
    println!(
        "  {name:<44} p50 {:>10}  p99 {:>10}  ({} runs)",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99)),
        times.len()
    );
}

async fn run(backend: &str, n: usize, bases: &[Value], mongodb: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        indexes: vec!["mem.total".into()],
        history: 20,
    };
    let url = mongodb.map(|uri| {
        format!(
            "{}/qs_store_scale_{}",
            uri.trim_end_matches('/'),
            std::process::id()
        )
    });
    let store = match &url {
        None => Store::open_embedded_with(dir.path(), options).unwrap(),
        Some(url) => Store::open_mongodb(url, options).await.unwrap(),
    };
    println!("{backend}: {n} documents");
    let started = Instant::now();
    let mut bytes = 0usize;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut writes = Vec::with_capacity(chunk.len() * 2);
        for &i in chunk {
            let doc = inventory(bases, i);
            bytes += serde_json::to_vec(&doc).unwrap().len();
            writes.push(Write::Inventory {
                id: id(i),
                doc: doc.as_object().unwrap().clone(),
            });
            writes.push(Write::Agent {
                id: id(i),
                agent: json!({"online": false, "session": i, "version": "0.1.0", "controller": "bench"}),
                only_if_session: None,
            });
        }
        store.write_batch(writes).await.unwrap();
    }
    let load = started.elapsed();
    println!(
        "  bulk load                                    {:.1} s ({:.0} documents/s, {} bytes of JSON per document on average)",
        load.as_secs_f64(),
        n as f64 / load.as_secs_f64(),
        bytes / n.max(1)
    );
    drop(store);
    let on_disk = match &url {
        None => std::fs::metadata(dir.path().join("quicksilver.redb"))
            .map(|m| m.len())
            .unwrap_or(0),
        Some(url) => {
            let client = mongodb::Client::with_uri_str(url).await.unwrap();
            let db = client.default_database().unwrap();
            match db.run_command(mongodb::bson::doc! {"dbStats": 1}).await {
                Ok(stats) => ["storageSize", "dataSize"]
                    .iter()
                    .find_map(|k| {
                        stats.get(*k).and_then(|v| match v {
                            mongodb::bson::Bson::Int64(x) => Some(*x as u64),
                            mongodb::bson::Bson::Int32(x) => Some(*x as u64),
                            mongodb::bson::Bson::Double(x) => Some(*x as u64),
                            _ => None,
                        })
                    })
                    .unwrap_or(0),
                Err(e) => {
                    println!("  (dbStats refused: {e})");
                    0
                }
            }
        }
    };
    println!(
        "  bytes on disk per document                   {} (history and indexes included)",
        on_disk / n.max(1) as u64
    );

    let controller = Controller::start(dir.path(), url.as_deref());
    let client = reqwest::Client::new();
    let api = format!("{}/api/v1/inventory", controller.http);
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(300);
    while client
        .get(format!("{}/healthz", controller.http))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "qs serve did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API wants the admin token qs serve wrote into the data dir at its first start.
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    println!(
        "  controller RSS after start on the loaded store  {} MiB",
        controller.status("VmRSS:") >> 20
    );
    let pick = |k: usize| (k * 7919 + 13) % n;
    let eq = timed(
        &client,
        &format!("{api}/query"),
        (0..200).map(|k| json!({"filter": {"dmi.product_serial": serial(pick(k))}})),
        |a| assert_eq!(a.as_array().map(Vec::len), Some(1), "{a}"),
    )
    .await;
    line("indexed equality (dmi.product_serial)", &eq);
    let arr = timed(
        &client,
        &format!("{api}/query"),
        (0..200).map(|k| json!({"filter": {"interfaces.address": mac(pick(k), 0)}, "projection": {"interfaces": 1}})),
        |a| assert_eq!(a.as_array().map(Vec::len), Some(1), "{a}"),
    )
    .await;
    line("indexed array (interfaces.address)", &arr);
    let range = timed(
        &client,
        &format!("{api}/query"),
        (0..20).map(|k| {
            json!({"filter": {"mem.total": {"$gte": MEMORY[k % 5]}}, "sort": {"mem.total": -1, "mercury_id": 1}, "limit": 50, "projection": {"mem.total": 1}})
        }),
        |a| assert_eq!(a.as_array().map(Vec::len), Some(50.min(n)), "{a}"),
    )
    .await;
    line("range + sort + limit 50 (mem.total)", &range);
    let count = timed(
        &client,
        &format!("{api}/count"),
        (0..20).map(|_| json!({"filter": {"agent.online": false}})),
        |a| assert_eq!(a["count"], json!(n), "{a}"),
    )
    .await;
    line("count (agent.online: false, indexed, all match)", &count);
    let group = timed(
        &client,
        &format!("{api}/aggregate"),
        (0..5).map(|_| json!({"pipeline": [{"$group": {"_id": "$dmi.bios_version", "hosts": {"$sum": 1}}}, {"$sort": {"_id": 1}}]})),
        |a| assert_eq!(a.as_array().map(Vec::len), Some(BIOS.len().min(n)), "{a}"),
    )
    .await;
    line("aggregate group-by over all documents", &group);
    let scan = timed(
        &client,
        &format!("{api}/query"),
        (0..5).map(|k| json!({"filter": {"dmi.board_serial": format!("B{}", serial(pick(k)))}})),
        |a| assert_eq!(a.as_array().map(Vec::len), Some(1), "{a}"),
    )
    .await;
    line("full-scan filter (dmi.board_serial, no index)", &scan);
    let scan_count = timed(
        &client,
        &format!("{api}/count"),
        (0..5).map(|_| json!({"filter": {"cpu.flags": "avx2", "mem.total": {"$exists": true}}})),
        |_| {},
    )
    .await;
    line("full-scan count (cpu.flags: avx2)", &scan_count);
    println!(
        "  controller RSS after the queries            {} MiB (peak {} MiB)",
        controller.status("VmRSS:") >> 20,
        controller.status("VmHWM:") >> 20
    );
    drop(controller);
    if let Some(url) = url {
        let client = mongodb::Client::with_uri_str(&url).await.unwrap();
        let _ = client.default_database().unwrap().drop().await;
    }
}

fn main() {
    let args = args();
    let bases: Vec<Value> = qs_tests::fleet::fixture_inventories()
        .expect("fixture hosts")
        .into_iter()
        .map(|(_, inv)| serde_json::to_value(inv).unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for backend in &args.backends {
            match backend.as_str() {
                "embedded" => run("embedded", args.docs, &bases, None).await,
                "mongodb" => {
                    let (uri, child) = mongodb_server(args.mongodb_uri.clone());
                    let n = args.mongodb_docs.unwrap_or(args.docs);
                    run(&format!("mongodb ({uri})"), n, &bases, Some(&uri)).await;
                    if let Some(mut child) = child {
                        let _ = Command::new("kill")
                            .arg("-TERM")
                            .arg(child.id().to_string())
                            .status();
                        let _ = child.wait();
                    }
                }
                other => panic!("unknown backend {other}"),
            }
        }
    });
}
