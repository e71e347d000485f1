//! Processors from `/proc/cpuinfo`.

use std::collections::BTreeSet;

use qs_proto::inventory::{Cpu, CpuCache, CpuNumaNode};

use crate::{SysRoot, SysRootError};

/// Why processors could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// `/proc/cpuinfo` could not be read.
    #[error("cannot read processor information")]
    Read(#[from] SysRootError),
    /// No `processor` entries.
    #[error("/proc/cpuinfo lists no processors")]
    Empty,
}

/// Reads processor facts.
pub fn inspect(root: &SysRoot) -> Result<Cpu, CpuError> {
    let mut cpu = parse_cpuinfo(&root.read_to_string("proc/cpuinfo")?)?;
    let khz_to_mhz = |file: &str| {
        root.read_trimmed(&format!("{CPU0}/cpufreq/{file}"))
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .map(|khz| khz / 1000)
    };
    // Virtual machines often have no cpufreq: the frequencies are then unknown, not zero.
    cpu.max_mhz = khz_to_mhz("cpuinfo_max_freq");
    cpu.min_mhz = khz_to_mhz("cpuinfo_min_freq");
    for index in root.read_dir(&format!("{CPU0}/cache")).unwrap_or_default() {
        if !index.starts_with("index") {
            continue;
        }
        let dir = format!("{CPU0}/cache/{index}");
        let read = |f: &str| root.read_trimmed(&format!("{dir}/{f}")).ok();
        let (Some(level), Some(cache_type), Some(size)) = (
            read("level").and_then(|l| l.parse().ok()),
            read("type"),
            read("size").and_then(|s| parse_size(&s)),
        ) else {
            continue;
        };
        cpu.caches.push(CpuCache {
            level,
            cache_type,
            size,
            shared_cpus: read("shared_cpu_list"),
        });
    }
    for node in root.read_dir(NODES).unwrap_or_default() {
        let Some(id) = node.strip_prefix("node").and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(cpus) = root.read_trimmed(&format!("{NODES}/{node}/cpulist")) {
            cpu.numa_nodes.push(CpuNumaNode { id, cpus });
        }
    }
    cpu.numa_nodes.sort_by_key(|n| n.id);
    Ok(cpu)
}

const CPU0: &str = "sys/devices/system/cpu/cpu0";
const NODES: &str = "sys/devices/system/node";

/// Cache sizes as sysfs writes them: `32K`, `1024K`, `32M`.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    })
}

/// Parses `/proc/cpuinfo` (x86 and arm64 layouts: one block per logical processor).
pub fn parse_cpuinfo(text: &str) -> Result<Cpu, CpuError> {
    let mut threads = 0u32;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut cpu = Cpu::default();
    for block in text.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        if field("processor").is_none() {
            continue;
        }
        threads += 1;
        let socket = field("physical id").unwrap_or_else(|| "0".into());
        // Without core ids (some VMs, arm64) each logical processor is its own core.
        let core = field("core id").unwrap_or_else(|| format!("thread-{threads}"));
        cores.insert((socket.clone(), core));
        sockets.insert(socket);
        if threads == 1 {
            cpu.model = field("model name").or_else(|| field("Processor"));
            cpu.vendor = field("vendor_id").or_else(|| field("CPU implementer"));
            let flags = field("flags")
                .or_else(|| field("Features"))
                .unwrap_or_default();
            let flags: BTreeSet<&str> = flags.split_whitespace().collect();
            cpu.flags = flags.into_iter().map(str::to_owned).collect();
        }
    }
    if threads == 0 {
        return Err(CpuError::Empty);
    }
    cpu.threads = threads;
    cpu.sockets = u32::try_from(sockets.len()).unwrap_or(u32::MAX);
    cpu.cores = u32::try_from(cores.len()).unwrap_or(u32::MAX);
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TWO_SOCKETS_HT: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6130\nphysical id\t: 0\ncore id\t\t: 0\nflags\t\t: sse avx2 sse\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 2\nphysical id\t: 1\ncore id\t\t: 0\n\nprocessor\t: 3\nphysical id\t: 1\ncore id\t\t: 1\n";

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_size("32K"), Some(32 << 10));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn counts_sockets_cores_threads() {
        let cpu = parse_cpuinfo(TWO_SOCKETS_HT).unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (2, 3, 4));
        assert_eq!(cpu.flags, vec!["avx2", "sse"]);
        assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
        assert!(parse_cpuinfo("").is_err());
    }
}
