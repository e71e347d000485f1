//! Processors from `/proc/cpuinfo`.

use std::collections::BTreeSet;

use qs_proto::inventory::Cpu;

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
    parse_cpuinfo(&root.read_to_string("proc/cpuinfo")?)
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
    fn counts_sockets_cores_threads() {
        let cpu = parse_cpuinfo(TWO_SOCKETS_HT).unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (2, 3, 4));
        assert_eq!(cpu.flags, vec!["avx2", "sse"]);
        assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
        assert!(parse_cpuinfo("").is_err());
    }
}
