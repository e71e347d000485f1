//! Memory totals from `/proc/meminfo`.

use qs_proto::inventory::Mem;

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
    parse_meminfo(&root.read_to_string("proc/meminfo")?)
}

/// Parses `/proc/meminfo`; sizes are kB there and bytes here.
pub fn parse_meminfo(text: &str) -> Result<Mem, MemError> {
    let field = |name: &'static str| -> Option<u64> {
        text.lines().find_map(|line| {
            let (key, rest) = line.split_once(':')?;
            if key.trim() != name {
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
    };
    Ok(Mem {
        total: field("MemTotal").ok_or(MemError::Missing { field: "MemTotal" })?,
        swap_total: field("SwapTotal").unwrap_or(0),
        dimms: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
