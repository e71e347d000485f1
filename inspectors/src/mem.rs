//! Memory totals from `/proc/meminfo`.

use qs_proto::inventory::{Mem, MemNumaNode};

use crate::{SysRoot, SysRootError};

/// Why memory could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// `/proc/meminfo` could not be read.
    #[error("cannot read memory information")]
    Read(#[from] SysRootError),
    /// A required line is missing or malformed.
    #[error("/proc/meminfo has no usable {field} line")]
    Missing {
        /// The field.
        field: &'static str,
    },
}

/// Reads memory totals.
pub fn inspect(root: &SysRoot) -> Result<Mem, MemError> {
    let mut mem = parse_meminfo(&root.read_to_string("proc/meminfo")?)?;
    // Machines without NUMA (or kernels without it) have no node directories: no per-node list.
    for node in root.read_dir(NODES).unwrap_or_default() {
        let Some(id) = node.strip_prefix("node").and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(total) = root
            .read_to_string(&format!("{NODES}/{node}/meminfo"))
            .ok()
            .and_then(|text| meminfo_field(&text, "MemTotal"))
        {
            mem.numa_nodes.push(MemNumaNode { id, total });
        }
    }
    mem.numa_nodes.sort_by_key(|n| n.id);
    Ok(mem)
}

const NODES: &str = "sys/devices/system/node";

/// One `Name: value [kB]` field of a meminfo file, in bytes. Per-node files prefix each line
/// with `Node N`, which is ignored.
fn meminfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key.split_whitespace().last()? != name {
            return None;
        }
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let scale = match parts.next() {
            Some("kB") => 1024,
            None => 1,
            Some(_) => return None,
        };
        value.checked_mul(scale)
    })
}

/// Parses `/proc/meminfo`; sizes are kB there and bytes here.
pub fn parse_meminfo(text: &str) -> Result<Mem, MemError> {
    let field = |name: &str| meminfo_field(text, name);
    Ok(Mem {
        total: field("MemTotal").ok_or(MemError::Missing { field: "MemTotal" })?,
        swap_total: field("SwapTotal").unwrap_or(0),
        numa_nodes: Vec::new(),
        hugepages: field("HugePages_Total").unwrap_or(0),
        hugepage_size: field("Hugepagesize"),
        dimms: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn per_node_lines_and_hugepages() {
        assert_eq!(
            meminfo_field("Node 1 MemTotal:  1024 kB\n", "MemTotal"),
            Some(1 << 20)
        );
        let m = parse_meminfo(
            "MemTotal: 4 kB\nHugePages_Total:      16\nHugepagesize:       2048 kB\n",
        )
        .unwrap();
        assert_eq!((m.hugepages, m.hugepage_size), (16, Some(2 << 20)));
    }

    #[test]
    fn parses_kilobytes_into_bytes() {
        let m = parse_meminfo(
            "MemTotal:       24558412 kB\nMemFree:  1 kB\nSwapTotal:             0 kB\n",
        )
        .unwrap();
        assert_eq!(m.total, 24558412 * 1024);
        assert_eq!(m.swap_total, 0);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 99999999999999999999 kB\n").is_err());
    }
}
