//! Inventory history: what changed between two inventories of a host, kept compactly.
//!
//! Each kept version of a host is one [`HistoryEntry`]: when it was received, a one-line
//! summary of what changed ("disk sdb removed", "mem.total 64 GiB → 32 GiB") and the reverse
//! patch that turns it back into the version before. The current document plus the reverse
//! patches rebuild every kept version ([`versions`]), so twenty versions cost one document and
//! twenty small patches, not twenty copies. [`diff`] and [`describe`] are the library functions
//! the hardware-change events build on.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::document::STAMPS;

/// One kept version of a host's inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the host's history (grows by one per version, never reused).
    pub seq: u64,
    /// When the controller received this version (RFC 3339).
    pub at: String,
    /// What changed from the version before, one line each ("first inventory" for the first).
    pub changes: Vec<String>,
    /// The patch that turns this version into the one before; `None` for the first version.
    pub reverse: Option<json_patch::Patch>,
}

impl HistoryEntry {
    /// The entry recording `new` replacing `old` (`None`: the host's first inventory).
    pub fn record(seq: u64, old: Option<&Value>, new: &Value) -> HistoryEntry {
        HistoryEntry {
            seq,
            at: new
                .get("received_at")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(super::document::now),
            changes: match old {
                Some(old) => describe(old, new),
                None => vec!["first inventory".into()],
            },
            reverse: old.map(|old| diff(new, old)),
        }
    }

    /// The summary as one line.
    pub fn summary(&self) -> String {
        self.changes.join("; ")
    }
}

/// Why a history request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A stored reverse patch does not apply to the version after it.
    #[error("history entry {seq} does not apply: {reason}")]
    Broken {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// No kept version was current at that time.
    #[error("no kept inventory version at {at} (the oldest kept is from {oldest})")]
    NoVersionAt {
        /// The time asked.
        at: String,
        /// The oldest kept version's time.
        oldest: String,
    },
}

/// The RFC 6902 patch that turns `from` into `to` (inventory documents, the controller-owned
/// `agent` and `boot` subdocuments ignored).
pub fn diff(from: &Value, to: &Value) -> json_patch::Patch {
    json_patch::diff(
        &without_controller_fields(from),
        &without_controller_fields(to),
    )
}

fn without_controller_fields(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "agent" && k.as_str() != "boot")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every kept version, oldest first, each with its entry: rebuilt from the current document by
/// applying the reverse patches newest first.
pub fn versions(
    current: &Value,
    entries: &[HistoryEntry],
) -> Result<Vec<(HistoryEntry, Value)>, HistoryError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut doc = without_controller_fields(current);
    for (i, entry) in entries.iter().enumerate().rev() {
        out.push((entry.clone(), doc.clone()));
        if i == 0 {
            break;
        }
        match &entry.reverse {
            Some(patch) => {
                json_patch::patch(&mut doc, patch).map_err(|e| HistoryError::Broken {
                    seq: entry.seq,
                    reason: e.to_string(),
                })?
            }
            None => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// The version current at `at` (RFC 3339; `None`: the newest), from [`versions`].
pub fn version_at<'a>(
    versions: &'a [(HistoryEntry, Value)],
    at: Option<&str>,
) -> Result<&'a (HistoryEntry, Value), HistoryError> {
    let oldest = || {
        versions
            .first()
            .map(|(e, _)| e.at.clone())
            .unwrap_or_else(|| "nothing".into())
    };
    let found = match at {
        None => versions.last(),
        Some(t) => {
            let t = parse_time(t).ok_or_else(|| HistoryError::NoVersionAt {
                at: t.to_owned(),
                oldest: oldest(),
            })?;
            versions
                .iter()
                .rev()
                .find(|(e, _)| parse_time(&e.at).is_some_and(|at| at <= t))
        }
    };
    found.ok_or_else(|| HistoryError::NoVersionAt {
        at: at.unwrap_or("now").to_owned(),
        oldest: oldest(),
    })
}

fn parse_time(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// What changed from `old` to `new`, one line per change, in words an operator reads:
/// items of lists of named things (disks, interfaces, DIMMs, PCI devices) are added, removed or
/// changed by name; sizes are shown in binary units. The controller's stamps are ignored.
pub fn describe(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(&mut out, "", old, new);
    const MOST: usize = 12;
    if out.len() > MOST {
        let more = out.len() - (MOST - 1);
        out.truncate(MOST - 1);
        out.push(format!("and {more} more changes"));
    }
    if out.is_empty() {
        out.push("no change".into());
    }
    out
}

fn compare(out: &mut Vec<String>, path: &str, old: &Value, new: &Value) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                if path.is_empty() && (STAMPS.contains(&k.as_str()) || k == "agent" || k == "boot")
                {
                    continue;
                }
                let p = join(path, k);
                match b.get(k) {
                    Some(vb) => compare(out, &p, va, vb),
                    None => out.push(format!("{p} removed")),
                }
            }
            for (k, vb) in b {
                if path.is_empty() && (STAMPS.contains(&k.as_str()) || k == "agent" || k == "boot")
                {
                    continue;
                }
                if !a.contains_key(k) {
                    out.push(format!("{} added: {}", join(path, k), show(k, vb)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => match (keyed(a), keyed(b)) {
            (Some((key, ka)), Some((_, kb))) if key_of(b).is_some_and(|k2| k2 == key) => {
                let noun = noun(path);
                for (name, item) in &ka {
                    match kb.iter().find(|(n, _)| n == name) {
                        Some((_, other)) => compare(out, &format!("{noun} {name}"), item, other),
                        None => out.push(format!("{noun} {name} removed")),
                    }
                }
                for (name, _) in &kb {
                    if !ka.iter().any(|(n, _)| n == name) {
                        out.push(format!("{noun} {name} added"));
                    }
                }
            }
            _ if a.iter().all(is_scalar) && b.iter().all(is_scalar) => {
                let removed: Vec<String> = a
                    .iter()
                    .filter(|x| !b.contains(x))
                    .map(|x| show("", x))
                    .collect();
                let added: Vec<String> = b
                    .iter()
                    .filter(|x| !a.contains(x))
                    .map(|x| show("", x))
                    .collect();
                if !removed.is_empty() {
                    out.push(format!("{path} lost {}", removed.join(", ")));
                }
                if !added.is_empty() {
                    out.push(format!("{path} gained {}", added.join(", ")));
                }
                if removed.is_empty() && added.is_empty() {
                    out.push(format!("{path} reordered"));
                }
            }
            _ => out.push(format!("{path}: {} items → {} items", a.len(), b.len())),
        },
        _ => {
            let leaf = path.rsplit(['.', ' ']).next().unwrap_or(path);
            out.push(format!("{path} {} → {}", show(leaf, old), show(leaf, new)));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else if path.contains(' ') {
        // Inside a named item ("disk sdb"): "disk sdb size", not "disk sdb.size".
        format!("{path} {key}")
    } else {
        format!("{path}.{key}")
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// The field naming each item of a list of documents, if every item has a distinct string one.
fn key_of(items: &[Value]) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "name", "locator", "socket", "address", "slot", "serial", "id",
    ];
    if items.is_empty() {
        return None;
    }
    NAMES.iter().copied().find(|k| {
        let names: Vec<&str> = items
            .iter()
            .filter_map(|i| i.get(*k).and_then(Value::as_str))
            .collect();
        names.len() == items.len() && {
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            sorted.len() == names.len()
        }
    })
}

#[allow(clippy::type_complexity)]
fn keyed(items: &[Value]) -> Option<(&'static str, Vec<(String, &Value)>)> {
    let key = key_of(items)?;
    Some((
        key,
        items
            .iter()
            .map(|i| {
                (
                    i.get(key).and_then(Value::as_str).unwrap_or("").to_owned(),
                    i,
                )
            })
            .collect(),
    ))
}

/// What one item of a list at `path` is called.
fn noun(path: &str) -> String {
    let last = path.rsplit(['.', ' ']).next().unwrap_or(path);
    match last {
        "os_storage" | "disks" | "physical_disks" => "disk".into(),
        "interfaces" => "interface".into(),
        "dimms" | "memory_devices" => "DIMM".into(),
        "pci" => "PCI device".into(),
        "processors" => "CPU".into(),
        "lldp" => "LLDP neighbour".into(),
        "controllers" => "controller".into(),
        "partitions" => "partition".into(),
        _ => format!("{path} item"),
    }
}

/// A value for a summary line: byte counts in binary units, strings bare, the rest as JSON.
fn show(field: &str, v: &Value) -> String {
    let bytes_field = matches!(
        field,
        "total" | "size" | "swap_total" | "capacity" | "size_bytes"
    );
    match v {
        Value::Number(n) if bytes_field => match n.as_u64() {
            Some(b) => bytes(b),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Object(_) | Value::Array(_) => {
            let text = v.to_string();
            if text.len() > 60 {
                format!("{}…", text.chars().take(60).collect::<String>())
            } else {
                text
            }
        }
        other => other.to_string(),
    }
}

fn bytes(b: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Keeps `entries` to the newest `keep` (oldest first in, oldest first out): the seqs to drop.
pub fn pruned(seqs: &[u64], keep: usize) -> Vec<u64> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let drop = sorted.len().saturating_sub(keep.max(1));
    sorted.truncate(drop);
    sorted
}

/// The inventory of a merged document, as a `Value` (agent and boot removed).
pub fn inventory_value(doc: &Map<String, Value>) -> Value {
    Value::Object(super::inventory_part(doc))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_name_disks_and_show_sizes() {
        let old = json!({"mem": {"total": 68719476736u64}, "os_storage": [{"name": "sda", "size": 1}, {"name": "sdb", "size": 2}], "received_at": "x"});
        let new = json!({"mem": {"total": 34359738368u64}, "os_storage": [{"name": "sda", "size": 1}], "received_at": "y"});
        assert_eq!(
            describe(&old, &new),
            vec!["mem.total 64 GiB → 32 GiB", "disk sdb removed"]
        );
        let changed = json!({"os_storage": [{"name": "sda", "size": 1099511627776u64}]});
        let grown = json!({"os_storage": [{"name": "sda", "size": 2199023255552u64}]});
        assert_eq!(
            describe(&changed, &grown),
            vec!["disk sda size 1 TiB → 2 TiB"]
        );
    }

    #[test]
    fn reverse_patches_rebuild_every_version() {
        let v1 = json!({"a": 1, "received_at": "2026-01-01T00:00:00Z"});
        let v2 = json!({"a": 2, "b": [1], "received_at": "2026-01-02T00:00:00Z"});
        let v3 = json!({"b": [1, 2], "received_at": "2026-01-03T00:00:00Z"});
        let entries = vec![
            HistoryEntry::record(1, None, &v1),
            HistoryEntry::record(2, Some(&v1), &v2),
            HistoryEntry::record(3, Some(&v2), &v3),
        ];
        let all = versions(&v3, &entries).unwrap();
        assert_eq!(
            all.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
            vec![v1.clone(), v2.clone(), v3.clone()]
        );
        let (e, doc) = version_at(&all, Some("2026-01-02T12:00:00Z")).unwrap();
        assert_eq!((e.seq, doc), (2, &v2));
        assert!(version_at(&all, Some("2025-01-01T00:00:00Z")).is_err());
        let mut d = v1.clone();
        json_patch::patch(&mut d, &diff(&v1, &v3)).unwrap();
        assert_eq!(d, v3);
        // Pruned to the last two, the oldest kept still rebuilds.
        let kept = versions(&v3, &entries[1..]).unwrap();
        assert_eq!(kept[0].1, v2);
        assert_eq!(pruned(&[1, 2, 3], 2), vec![1]);
    }
}
