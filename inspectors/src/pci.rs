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
    if let Some(file) = PCI_IDS.iter().find_map(|p| root.open_reference(p)) {
        let names = parse_pci_ids_from(file, &wanted);
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

/// Names found so far, keyed by (vendor id, device id).
type Names = BTreeMap<(String, String), (String, Option<String>)>;

/// Looks up wanted ids line by line in pci.ids (vendor lines, then their tab-indented devices).
struct PciIdsScanner<'a> {
    wanted: &'a BTreeSet<(String, String)>,
    vendors: BTreeSet<&'a [u8]>,
    current: Option<(String, String)>,
    names: Names,
    done: bool,
}

impl<'a> PciIdsScanner<'a> {
    fn new(wanted: &'a BTreeSet<(String, String)>) -> Self {
        Self {
            wanted,
            vendors: wanted.iter().map(|(v, _)| v.as_bytes()).collect(),
            current: None,
            names: BTreeMap::new(),
            done: false,
        }
    }

    fn line(&mut self, line: &[u8]) {
        let name_of = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        match line.first() {
            Some(b'\t') => {
                let Some((vendor_id, vendor_name)) = &self.current else {
                    return;
                };
                // Devices are one tab deep, `id  name`; subsystems (two tabs) are skipped.
                if line.len() < 8 || line[1] == b'\t' || &line[5..7] != b"  " {
                    return;
                }
                let key = (
                    vendor_id.clone(),
                    String::from_utf8_lossy(&line[1..5]).into_owned(),
                );
                if self.wanted.contains(&key) {
                    self.names
                        .insert(key, (vendor_name.clone(), Some(name_of(&line[7..]))));
                }
            }
            Some(b'#') | None => {}
            // The class list follows the last vendor.
            Some(b'C') if line.get(1) == Some(&b' ') => self.done = true,
            Some(_) => {
                self.current = None;
                if line.len() > 6 && self.vendors.contains(&line[..4]) && &line[4..6] == b"  " {
                    let id = String::from_utf8_lossy(&line[..4]).into_owned();
                    let name = name_of(&line[6..]);
                    for (v, d) in self.wanted.iter().filter(|(v, _)| *v == id) {
                        self.names
                            .entry((v.clone(), d.clone()))
                            .or_insert((name.clone(), None));
                    }
                    self.current = Some((id, name));
                }
            }
        }
    }

    /// Feeds every complete line of `chunk`; returns how many bytes were consumed.
    fn lines(&mut self, chunk: &[u8]) -> usize {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk) {
            if self.done {
                break;
            }
            self.line(&chunk[start..end]);
            start = end + 1;
        }
        start
    }
}

/// Vendor and device names for the wanted (vendor, device) ids from pci.ids text.
pub fn parse_pci_ids(text: &[u8], wanted: &BTreeSet<(String, String)>) -> Names {
    let mut scanner = PciIdsScanner::new(wanted);
    let used = scanner.lines(text);
    if !scanner.done {
        scanner.line(&text[used..]);
    }
    scanner.names
}

/// Like [`parse_pci_ids`], reading the database in small chunks: it is 1.3 MB and a machine
/// needs a handful of names, so it is scanned with SIMD line search through one 64 KiB buffer
/// rather than read whole (which costs more in page faults than in scanning).
fn parse_pci_ids_from(mut file: impl std::io::Read, wanted: &BTreeSet<(String, String)>) -> Names {
    let mut scanner = PciIdsScanner::new(wanted);
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    while !scanner.done {
        let n = match file.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        filled += n;
        let used = scanner.lines(&buf[..filled]);
        if used == 0 && filled == buf.len() {
            // A line longer than the buffer is not pci.ids: stop rather than grow.
            break;
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
    }
    if !scanner.done && filled > 0 {
        scanner.line(&buf[..filled]);
    }
    scanner.names
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
        let names = parse_pci_ids(text.as_bytes(), &wanted);
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
        // Reading in chunks gives the same answer whatever the chunk boundaries.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert_eq!(parse_pci_ids_from(Trickle(text.as_bytes()), &wanted), names);
    }
}
