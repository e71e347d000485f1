//! PCI devices from `/sys/bus/pci/devices`, named from the pci.ids database when installed.

use std::collections::{BTreeMap, BTreeSet};

use qs_proto::inventory::PciDevice;

use crate::{SysRoot, SysRootError};

const DEVICES: &str = "sys/bus/pci/devices";
/// Where distributions install the PCI ID database.
const PCI_IDS: &[&str] = &["usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids"];

/// Why PCI devices could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The device list could not be read.
    #[error("cannot list PCI devices")]
    List(#[source] SysRootError),
    /// A device lacks its identity files.
    #[error("PCI device {address} has no readable {file}")]
    Identity {
        /// The device.
        address: String,
        /// The missing file.
        file: &'static str,
        /// Why.
        #[source]
        source: SysRootError,
    },
}

/// Reads every PCI function, sorted by address.
pub fn inspect(root: &SysRoot) -> Result<Vec<PciDevice>, PciError> {
    let mut devices = Vec::new();
    for address in root.read_dir(DEVICES).map_err(PciError::List)? {
        devices.push(inspect_one(root, &address)?);
    }
    let wanted: BTreeSet<(String, String)> = devices
        .iter()
        .map(|d| (d.vendor_id.clone(), d.device_id.clone()))
        .collect();
    // The database is reference data, not a fact about the machine: read, never captured.
    if let Some(text) = PCI_IDS.iter().find_map(|p| root.read_reference(p)) {
        let names = parse_pci_ids(&text, &wanted);
        for d in &mut devices {
            if let Some((vendor, device)) = names.get(&(d.vendor_id.clone(), d.device_id.clone())) {
                d.vendor = Some(vendor.clone());
                d.device = device.clone();
            }
        }
    }
    Ok(devices)
}

/// `0x8086` -> `8086`.
fn hex_id(text: &str) -> String {
    text.trim().trim_start_matches("0x").to_ascii_lowercase()
}

fn inspect_one(root: &SysRoot, address: &str) -> Result<PciDevice, PciError> {
    let dir = format!("{DEVICES}/{address}");
    let required = |file: &'static str| {
        root.read_trimmed(&format!("{dir}/{file}"))
            .map(|v| hex_id(&v))
            .map_err(|source| PciError::Identity {
                address: address.to_owned(),
                file,
                source,
            })
    };
    let attr = |file: &str| {
        root.read_trimmed(&format!("{dir}/{file}"))
            .ok()
            .filter(|v| !v.is_empty() && !v.starts_with("Unknown"))
    };
    Ok(PciDevice {
        address: address.to_ascii_lowercase(),
        class: required("class")?,
        vendor_id: required("vendor")?,
        device_id: required("device")?,
        subsystem_vendor_id: attr("subsystem_vendor").map(|v| hex_id(&v)),
        subsystem_device_id: attr("subsystem_device").map(|v| hex_id(&v)),
        revision: attr("revision").map(|v| hex_id(&v)),
        vendor: None,
        device: None,
        driver: root
            .read_link(&format!("{dir}/driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned())),
        // -1 means the platform gives no NUMA affinity.
        numa_node: attr("numa_node").and_then(|v| v.parse::<u32>().ok()),
        link_speed: attr("current_link_speed"),
        link_width: attr("current_link_width")
            .and_then(|v| v.parse().ok())
            .filter(|w| *w > 0),
        max_link_speed: attr("max_link_speed"),
        max_link_width: attr("max_link_width")
            .and_then(|v| v.parse().ok())
            .filter(|w| *w > 0),
    })
}

/// Vendor and device names for the wanted (vendor, device) ids from pci.ids text.
///
/// The database is large (about 1.3 MB) and a machine has a handful of vendors: one pass over
/// the lines, looking only at vendor lines until a wanted vendor's block starts.
pub fn parse_pci_ids(
    text: &str,
    wanted: &BTreeSet<(String, String)>,
) -> BTreeMap<(String, String), (String, Option<String>)> {
    let vendors: BTreeSet<&[u8]> = wanted.iter().map(|(v, _)| v.as_bytes()).collect();
    let mut names = BTreeMap::new();
    let mut current: Option<(&str, String)> = None;
    for line in text.split('\n') {
        let bytes = line.as_bytes();
        match bytes.first() {
            Some(b'\t') => {
                let Some((vendor_id, vendor_name)) = &current else {
                    continue;
                };
                if bytes.get(1) == Some(&b'\t') {
                    continue;
                }
                if let Some((id, name)) = line[1..].split_once("  ") {
                    let key = ((*vendor_id).to_owned(), id.to_owned());
                    if wanted.contains(&key) {
                        names.insert(key, (vendor_name.clone(), Some(name.trim().to_owned())));
                    }
                }
            }
            Some(b'#') | None => {}
            // The class list follows the last vendor.
            Some(b'C') if bytes.get(1) == Some(&b' ') => break,
            Some(_) => {
                current = None;
                if bytes.len() > 6 && vendors.contains(&bytes[..4]) && &bytes[4..6] == b"  " {
                    let id = &line[..4];
                    let name = line[6..].trim().to_owned();
                    for (v, d) in wanted.iter().filter(|(v, _)| v == id) {
                        names
                            .entry((v.clone(), d.clone()))
                            .or_insert((name.clone(), None));
                    }
                    current = Some((id, name));
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_pci_ids() {
        let text = "# comment\n8086  Intel Corporation\n\t1521  I350 Gigabit Network Connection\n\t\t8086 0001  Ethernet Server Adapter I350-T4\n1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\nC 02  Network controller\n";
        let wanted: BTreeSet<(String, String)> =
            [("8086", "1521"), ("1af4", "1041"), ("1af4", "9999")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .into();
        let names = parse_pci_ids(text, &wanted);
        assert_eq!(
            names.get(&("8086".into(), "1521".into())),
            Some(&(
                "Intel Corporation".to_owned(),
                Some("I350 Gigabit Network Connection".to_owned())
            ))
        );
        assert_eq!(
            names.get(&("1af4".into(), "9999".into())),
            Some(&("Red Hat, Inc.".to_owned(), None))
        );
    }
}
