//! Per-host cost of templates for a job over a fleet: `cargo bench -p qs-plans --bench render`.
//!
//! Each host: a context over a ~20 KB inventory (120 PCI devices, 24 disks, 16 interfaces), a step's arguments rendered, a result
//! recorded and the next step's condition evaluated, through `&HostContext` (shared) and
//! through a borrowed `&Value` (a copy per call). The inventory is built in the caller
//! and moved in, as the job engine does; its own copy and drop are reported apart.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use qs_plans::{render_args, Condition, HostContext};
use serde_json::{json, Value};

fn inventory(i: usize) -> Value {
    let pci: Vec<Value> = (0..120)
        .map(|d| json!({"address": format!("0000:{d:02x}:00.0"), "vendor_id": "8086", "device_id": "1572", "class": "Ethernet controller", "driver": "i40e", "numa_node": d % 2}))
        .collect();
    let disks: Vec<Value> = (0..24)
        .map(|d| json!({"name": format!("sd{d}"), "size": 960_197_124_096_u64, "model": "MZ7LH960HAJR", "serial": format!("S45NNA0M{i:06}{d:02}"), "partitions": [{"name": format!("sd{d}1"), "size": 1_048_576}]}))
        .collect();
    let interfaces: Vec<Value> = (0..16)
        .map(|n| json!({"name": format!("eno{n}"), "address": format!("b8:ce:f6:00:{:02x}:{n:02x}", i % 256), "mtu": 9000, "speed": 25000, "addresses": [format!("10.{}.{}.{n}/24", i / 256 % 256, i % 256)]}))
        .collect();
    json!({
        "mercury_id": format!("01{i:040x}"),
        "dmi": {"product_serial": format!("CZ{i:08}"), "product_name": "ProLiant DL360 Gen10", "sys_vendor": "HPE", "bios_version": "U32 2.80"},
        "cpu": {"model": "Intel(R) Xeon(R) Gold 6248", "sockets": 2, "cores": 40, "threads": 80},
        "mem": {"total": 412_316_860_416_u64},
        "pci": pci, "os_storage": {"disks": disks}, "interfaces": interfaces,
    })
}

fn main() {
    let hosts = 10_000;
    let size = inventory(0).to_string().len();
    let args = json!({
        "command": ["fwupdate", "--serial", "{{ inventory.dmi.product_serial }}", "--want", "{{ assets.bios_version }}"],
        "disks": "{{ inventory.os_storage.disks | map(attribute='name') | list }}",
        "label": "{{ inventory.dmi.sys_vendor | lower }}-{{ assets.rack }}",
    });
    let when = Condition::compile("steps.check.output.exit_code == 1").unwrap();
    for shared in [true, false] {
        let inventories: Vec<Value> = (0..hosts).map(inventory).collect();
        let mut contexts: Vec<HostContext> = inventories
            .into_iter()
            .enumerate()
            .map(|(i, doc)| {
                HostContext::new(
                    &format!("h{i}"),
                    doc,
                    Some(json!({"bios_version": "2.90", "rack": i % 40})),
                )
            })
            .collect();
        let start = Instant::now();
        for ctx in &mut contexts {
            let rendered = if shared {
                render_args(&args, &*ctx).unwrap()
            } else {
                render_args(&args, &**ctx.as_value()).unwrap()
            };
            assert_eq!(rendered["disks"].as_array().map(Vec::len), Some(24));
            ctx.record_step("check", "succeeded", json!({"exit_code": 1}), Value::Null);
            let go = if shared {
                when.evaluate(&*ctx).unwrap()
            } else {
                when.evaluate(&**ctx.as_value()).unwrap()
            };
            assert!(go);
        }
        let elapsed = start.elapsed();
        println!(
            "{hosts} hosts, {size}-byte inventories, {}: {:.2} s, {:.1} µs per host (render 3 templated args + record a step + evaluate a condition)",
            if shared { "&HostContext" } else { "&Value (a copy per call)" },
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / hosts as f64,
        );
    }
}
