//! Full scans of 100,000 realistic inventories: filters, count, distinct, sort + limit and
//! group-bys, timed and printed (`cargo bench -p qs-query`).
//!
//! The documents are the fixture inventories of proto/benches/fixtures (real `qs-agent
//! inspect` output of the QEMU q35 guest and the development VM) with serials, UUIDs, MACs,
//! disk serials, memory sizes, BIOS versions and liveness varied per host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use qs_query::{Count, Distinct, Pipeline, Query};
use serde_json::{json, Value};

const HOSTS: usize = 100_000;
const RUNS: usize = 5;
const BIOS: [&str; 6] = [
    "QS.1.2.3", "QS.1.2.4", "QS.1.3.0", "2.19.1", "2.21.0", "1.2.5",
];
const GIB: u64 = 1 << 30;

fn templates() -> [Value; 2] {
    let q35 = include_str!("../../../proto/benches/fixtures/qemu-q35.inventory.json");
    let vm = include_str!("../../../proto/benches/fixtures/dev-vm.inventory.json");
    [
        serde_json::from_str(q35).expect("qemu-q35 fixture"),
        serde_json::from_str(vm).expect("dev-vm fixture"),
    ]
}

fn mac(host: usize, port: usize) -> String {
    let b = (host as u32).to_be_bytes();
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        b[1], b[2], b[3], port as u8
    )
}

/// Host `i`: a template with everything that identifies a machine changed.
fn host(templates: &[Value; 2], i: usize) -> Value {
    let mut doc = templates[usize::from(i % 4 == 3)].clone();
    doc["mercury_id"] = json!(format!("01{i:040x}"));
    if let Some(dmi) = doc.get_mut("dmi").and_then(Value::as_object_mut) {
        for field in ["product_serial", "chassis_serial", "board_serial"] {
            dmi.insert(field.into(), json!(format!("SN{i:08}")));
        }
        dmi.insert(
            "product_uuid".into(),
            json!(format!("4c4c4544-{i:08x}-3210-805a-b7c04f4d3232")),
        );
        dmi.insert("bios_version".into(), json!(BIOS[(i * 7919) % BIOS.len()]));
    }
    if let Some(ifs) = doc.get_mut("interfaces").and_then(Value::as_array_mut) {
        for (port, nic) in ifs.iter_mut().enumerate() {
            if nic.get("address").is_some() {
                nic["address"] = json!(mac(i, port));
            }
        }
    }
    if let Some(disks) = doc.get_mut("os_storage").and_then(Value::as_array_mut) {
        for (n, disk) in disks.iter_mut().enumerate() {
            disk["serial"] = json!(format!("DSK{i:08}-{n}"));
            disk["size"] = json!((240 + 240 * ((i + n) % 8) as u64) * GIB);
        }
    }
    doc["mem"]["total"] = json!((16u64 << ((i * 31) % 6)) * GIB);
    doc["agent"] = json!({"online": (i * 7) % 10 >= 2, "version": "0.1.0"});
    doc
}

fn time<T>(label: &str, mut f: impl FnMut() -> T, describe: impl Fn(&T) -> String) {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = black_box(f());
        times.push(start.elapsed());
        last = Some(out);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<58} median {:>8.1} ms  min {:>8.1} ms  ({})",
        ms(times[RUNS / 2]),
        ms(times[0]),
        last.map(|o| describe(&o)).unwrap_or_default()
    );
}

/// This process's resident set size, as the kernel reports it.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let templates = templates();
    let start = Instant::now();
    let docs: Vec<Value> = (0..HOSTS).map(|i| host(&templates, i)).collect();
    let bytes: usize = docs.iter().map(|d| d.to_string().len()).sum();
    println!(
        "{HOSTS} inventories generated in {:.1} s, {:.1} KiB of JSON each on average",
        start.elapsed().as_secs_f64(),
        bytes as f64 / HOSTS as f64 / 1024.0
    );
    println!("resident memory with the documents loaded: {}", rss());
    let found = |v: &Vec<Value>| format!("{} documents", v.len());

    let q = Query::from_request(&json!({"filter": {"dmi.product_serial": "SN00099998"}})).unwrap();
    time(
        "full scan: equality on dmi.product_serial",
        || q.run(docs.iter()),
        found,
    );
    let q =
        Query::from_request(&json!({"filter": {"interfaces.address": mac(77_777, 1)}})).unwrap();
    time(
        "full scan: equality into an array (interfaces.address)",
        || q.run(docs.iter()),
        found,
    );
    let q = Query::from_request(&json!({"filter": {
        "mem.total": {"$gte": 128 * GIB},
        "agent.online": true,
        "interfaces.address": {"$regex": "^52:54:00:0"},
        "os_storage": {"$elemMatch": {"rotational": false, "size": {"$gte": 960 * GIB}}}
    }}))
    .unwrap();
    time(
        "full scan: range + bool + regex + $elemMatch",
        || q.run(docs.iter()),
        found,
    );
    let q = Query::from_request(&json!({
        "filter": {"mem.total": {"$gte": 64 * GIB}},
        "sort": {"mem.total": -1, "mercury_id": 1},
        "limit": 50,
        "projection": {"mem.total": 1, "dmi.product_serial": 1}
    }))
    .unwrap();
    time(
        "full scan: range, sort, limit 50, projection",
        || q.run(docs.iter()),
        found,
    );
    let c = Count::from_request(&json!({"filter": {"agent.online": false}})).unwrap();
    time(
        "count: agent.online false",
        || c.run(docs.iter()),
        |n| format!("{n} hosts"),
    );
    let d = Distinct::from_request(&json!({"path": "dmi.bios_version"})).unwrap();
    time(
        "distinct: dmi.bios_version",
        || d.run(docs.iter()),
        |v| format!("{} values", v.len()),
    );
    let p = Pipeline::from_request(&json!({"pipeline": [
        {"$group": {"_id": "$dmi.bios_version", "hosts": {"$sum": 1}}},
        {"$sort": {"hosts": -1, "_id": 1}}
    ]}))
    .unwrap();
    time(
        "aggregate: hosts per BIOS version ($group over all)",
        || p.run(docs.iter()),
        |v| format!("{} groups", v.len()),
    );
    let p = Pipeline::from_request(&json!({"pipeline": [
        {"$group": {"_id": {"vendor": "$dmi.sys_vendor", "online": "$agent.online"},
                    "mem": {"$avg": "$mem.total"}, "largest": {"$max": "$mem.total"}, "hosts": {"$sum": 1}}}
    ]}))
    .unwrap();
    time(
        "aggregate: $group by document key with $avg/$max",
        || p.run(docs.iter()),
        |v| format!("{} groups", v.len()),
    );
    let p = Pipeline::from_request(&json!({"pipeline": [
        {"$project": {"interfaces.kind": 1}},
        {"$unwind": "$interfaces"},
        {"$group": {"_id": "$interfaces.kind", "ports": {"$sum": 1}}}
    ]}))
    .unwrap();
    time(
        "aggregate: $project, $unwind interfaces, $group",
        || p.run(docs.iter()),
        |v| format!("{} groups", v.len()),
    );
}
