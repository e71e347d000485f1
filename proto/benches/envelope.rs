//! Envelope encode+decode throughput for realistic full inventories.
//!
//! `cargo bench -p qs-proto --bench envelope` prints, for each captured inventory in
//! `proto/benches/fixtures/`, the frame size and register-envelope round trips per second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use qs_proto::{codec, Body, Envelope, MessageId, Register};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("bench fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    println!(
        "{:<40} {:>10} {:>14} {:>12}",
        "inventory", "frame B", "round trips/s", "MB/s"
    );
    for path in files {
        let inventory: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let env = Envelope::new(
            MessageId(1),
            Body::Register(Register {
                mercury_id: "013c16030373937262a32e831ff18c941b6481ded8"
                    .parse()
                    .unwrap(),
                agent_version: "0.1.0".into(),
                boot_id: "5e0c1c8e-6a1d-4f53-8d2b-2f3c6a0e9f11".into(),
                capabilities: vec![],
                inventory,
                inventory_version: 1,
                image_id: None,
                calls: Vec::new(),
                collected_at: None,
            }),
        );
        let frame = codec::encode(&env).unwrap();
        // Warm up, then run for about two seconds.
        for _ in 0..100 {
            black_box(
                codec::decode(
                    &codec::encode(black_box(&env)).unwrap(),
                    codec::DEFAULT_MAX_FRAME,
                )
                .unwrap(),
            );
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            for _ in 0..100 {
                let bytes = codec::encode(black_box(&env)).unwrap();
                black_box(codec::decode(&bytes, codec::DEFAULT_MAX_FRAME).unwrap());
            }
            n += 100;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        println!(
            "{:<40} {:>10} {:>14.0} {:>12.1}",
            path.file_name().unwrap().to_string_lossy(),
            frame.len(),
            rate,
            rate * frame.len() as f64 / 1e6
        );
        if let Body::Register(register) = &env.body {
            delta_after_losing_a_disk(&path, &register.inventory);
        }
    }
}

/// Issue 4's size figure: a full inventory frame against the delta after one disk disappears.
fn delta_after_losing_a_disk(path: &std::path::Path, inventory: &serde_json::Value) {
    let Some(disks) = inventory
        .get("os_storage")
        .and_then(|d| d.as_array())
        .filter(|d| !d.is_empty())
    else {
        return;
    };
    let mut after = inventory.clone();
    after["os_storage"] = serde_json::Value::Array(disks[1..].to_vec());
    let full = Envelope::new(
        MessageId(2),
        Body::InventoryUpdate(qs_proto::InventoryUpdate {
            inventory: after.clone(),
            version: 2,
            collected_at: None,
        }),
    );
    let delta = Envelope::new(
        MessageId(2),
        Body::InventoryDelta(qs_proto::InventoryDelta {
            base: 1,
            version: 2,
            patch: qs_proto::delta::diff(inventory, &after),
            collected_at: None,
        }),
    );
    println!(
        "{:<40} full update {} B, delta after losing {} {} B",
        path.file_name().unwrap().to_string_lossy(),
        codec::encode(&full).unwrap().len(),
        disks[0]["name"].as_str().unwrap_or("a disk"),
        codec::encode(&delta).unwrap().len()
    );
}
