//! Network interfaces from `/sys/class/net`, with what the MercuryId needs: permanent MACs,
//! PCI addresses (of the device or its nearest PCI ancestor), `dev_port`, and whether the
//! firmware labels the device onboard.

use qs_proto::inventory::Interface;

use crate::{SysRoot, SysRootError};

const NET: &str = "sys/class/net";

/// Why interfaces could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InterfacesError {
    /// `/sys/class/net` could not be listed.
    #[error("cannot list network interfaces")]
    List(#[source] SysRootError),
    /// Interface addresses could not be read.
    #[error("cannot read interface addresses")]
    Addresses(#[source] SysRootError),
}

/// Reads every interface, sorted by name.
pub fn inspect(root: &SysRoot) -> Result<Vec<Interface>, InterfacesError> {
    let names = root.read_dir(NET).map_err(InterfacesError::List)?;
    let mut addresses = root.addresses().map_err(InterfacesError::Addresses)?;
    Ok(names
        .into_iter()
        .map(|name| {
            let mut iface = inspect_one(root, &name);
            iface.addresses = addresses.remove(&name).unwrap_or_default();
            iface
        })
        .collect())
}

fn inspect_one(root: &SysRoot, name: &str) -> Interface {
    let dir = format!("{NET}/{name}");
    // Attributes the kernel refuses for this link (speed of a down link: EINVAL) are unknown.
    let attr = |a: &str| {
        root.read_trimmed(&format!("{dir}/{a}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    let address = attr("address").map(|a| a.to_ascii_lowercase());
    let permanent = attr("bonding_slave/perm_hwaddr")
        .map(|a| a.to_ascii_lowercase())
        .filter(|p| Some(p) != address.as_ref());
    let has_device = root.exists(&format!("{dir}/device"));
    let mac_set = address
        .as_deref()
        .is_some_and(|a| a.split(':').any(|octet| octet != "00"));
    let physical = has_device && mac_set;
    let onboard = physical
        && (root.exists(&format!("{dir}/device/acpi_index"))
            || root.exists(&format!("{dir}/device/index")));
    let driver = root
        .read_link(&format!("{dir}/device/driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    let pci_address = if has_device {
        root.canonical(&format!("{dir}/device"))
            .ok()
            .and_then(|path| nearest_pci_address(&path.to_string_lossy()))
    } else {
        None
    };
    Interface {
        name: name.to_owned(),
        address,
        permanent_address: permanent,
        mtu: attr("mtu").and_then(|v| v.parse().ok()),
        operstate: attr("operstate"),
        carrier: attr("carrier").and_then(|v| match v.as_str() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }),
        speed: attr("speed")
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s > 0),
        driver,
        pci_address,
        dev_port: attr("dev_port").and_then(|v| v.parse().ok()),
        physical,
        onboard,
        addresses: Vec::new(),
    }
}

fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b':',
            10 => *c == b'.',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The last PCI address in a device path (the device itself, or its nearest PCI ancestor).
pub fn nearest_pci_address(device_path: &str) -> Option<String> {
    device_path
        .split('/')
        .rfind(|c| is_pci_address(c))
        .map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nearest_pci_ancestor() {
        assert_eq!(
            nearest_pci_address("sys/devices/pci0000:00/0000:00:02.0/0000:01:00.1").as_deref(),
            Some("0000:01:00.1")
        );
        assert_eq!(
            nearest_pci_address("sys/devices/pci0000:00/0000:00:03.0/virtio0").as_deref(),
            Some("0000:00:03.0")
        );
        assert_eq!(nearest_pci_address("sys/devices/virtual/net/lo"), None);
    }
}
