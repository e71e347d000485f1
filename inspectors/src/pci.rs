//! PCI devices from `/sys/bus/pci/devices`, named from the pci.ids database when installed.

use std::collections::BTreeSet;

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
        let names = crate::pci_ids::lookup(&file, &wanted);
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
