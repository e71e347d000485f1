//! RAID: hardware controllers through their vendors' tools, software RAID through mdstat.
//!
//! Each parser works on one tool's real output ([`storcli`], [`ssacli`], [`mdadm`]) and is
//! tested on captures from real controllers. A machine without any RAID reports empty lists,
//! not an error.

pub mod mdadm;
pub mod ssacli;
pub mod storcli;

use qs_proto::inventory::Raid;

use crate::{SysRoot, SysRootError};

/// Why RAID could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    /// `/proc/mdstat` exists but could not be read.
    #[error("cannot read software RAID state")]
    Mdstat(#[source] SysRootError),
    /// A RAID tool could not be run.
    #[error("cannot run {tool}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Why.
        #[source]
        source: SysRootError,
    },
    /// storcli's output was unusable.
    #[error("storcli output is unusable")]
    Storcli(#[from] storcli::StorcliError),
}

/// Reads software RAID and every hardware controller whose tool is installed.
pub fn inspect(root: &SysRoot) -> Result<Raid, RaidError> {
    let md = if root.exists("proc/mdstat") {
        mdadm::parse_mdstat(
            &root
                .read_to_string("proc/mdstat")
                .map_err(RaidError::Mdstat)?,
        )
    } else {
        // No md driver loaded: no software RAID.
        Vec::new()
    };
    let mut controllers = Vec::new();
    if let Some(out) = root
        .run("storcli64", &["/call", "show", "all", "J"])
        .map_err(|source| RaidError::Tool {
            tool: "storcli64",
            source,
        })?
    {
        controllers.extend(storcli::parse(&out)?);
    }
    if let Some(out) = root
        .run("ssacli", &["ctrl", "all", "show", "config", "detail"])
        .map_err(|source| RaidError::Tool {
            tool: "ssacli",
            source,
        })?
    {
        controllers.extend(ssacli::parse(&out));
    }
    Ok(Raid { controllers, md })
}

fn scaled(text: &str, base: f64) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let number: f64 = parts.next()?.parse().ok()?;
    let power = match parts.next()?.to_ascii_uppercase().as_str() {
        "B" => 0,
        "KB" | "KIB" => 1,
        "MB" | "MIB" => 2,
        "GB" | "GIB" => 3,
        "TB" | "TIB" => 4,
        "PB" | "PIB" => 5,
        _ => return None,
    };
    let bytes = number * base.powi(power);
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then(|| bytes.round() as u64)
}

/// `1.745 TB` in binary units (storcli, ssacli logical drives).
pub fn size_bytes(text: &str) -> Option<u64> {
    scaled(text, 1024.0)
}

/// `900 GB` in decimal units (drives as sold, ssacli physical drives).
pub fn size_bytes_decimal(text: &str) -> Option<u64> {
    scaled(text, 1000.0)
}

/// A capture with `insert` spliced in at (or just before) byte `at`: the mutation the
/// parsers' proptests feed them.
#[cfg(test)]
pub(crate) fn spliced(capture: &str, at: usize, insert: &str) -> String {
    let at = (0..=at.min(capture.len()))
        .rev()
        .find(|i| capture.is_char_boundary(*i))
        .unwrap_or(0);
    let mut text = capture.to_owned();
    text.insert_str(at, insert);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_bytes("1 GB"), Some(1 << 30));
        assert_eq!(size_bytes_decimal("900 GB"), Some(900_000_000_000));
        assert_eq!(size_bytes("893.750 GB"), Some(959_656_755_200));
        assert_eq!(size_bytes("12"), None);
        assert_eq!(size_bytes("-1 GB"), None);
        assert_eq!(size_bytes("1e300 PB"), None);
    }

    #[test]
    fn a_machine_without_raid_reports_empty_lists() {
        let raid = inspect(&SysRoot::new("/nonexistent-qs-root")).ok();
        assert_eq!(raid, Some(Raid::default()));
    }
}
