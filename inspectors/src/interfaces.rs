//! Network interfaces from `/sys/class/net`, with what the MercuryId needs: permanent MACs,
//! PCI addresses (of the device or its nearest PCI ancestor), `dev_port`, and whether the
//! firmware labels the device onboard.

use qs_proto::inventory::{Bond, Interface, Vlan};

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
    // No 8021q module (or no VLANs): no VLAN table.
    let mut vlans = root
        .read_to_string("proc/net/vlan/config")
        .map(|t| parse_vlan_config(&t))
        .unwrap_or_default();
    Ok(names
        .into_iter()
        // The bonding driver adds a control file (`bonding_masters`) beside the interfaces.
        .filter(|name| root.exists(&format!("{NET}/{name}/uevent")))
        .map(|name| {
            let mut iface = inspect_one(root, &name);
            iface.addresses = addresses.remove(&name).unwrap_or_default();
            iface.vlan = vlans.remove(&name);
            if iface.physical {
                add_ethtool_facts(root, &mut iface);
            }
            iface
        })
        .collect())
}

/// Firmware and offloads from ethtool, for physical NICs, when ethtool is installed.
fn add_ethtool_facts(root: &SysRoot, iface: &mut Interface) {
    if let Ok(Some(info)) = root.run("ethtool", &["-i", &iface.name]) {
        iface.firmware = ethtool_fields(&info)
            .find(|(k, _)| *k == "firmware-version")
            .map(|(_, v)| v.to_owned())
            .filter(|v| !v.is_empty() && v != "N/A");
    }
    if let Ok(Some(features)) = root.run("ethtool", &["-k", &iface.name]) {
        iface.offloads = parse_offloads(&features);
    }
}

/// `key: value` lines of ethtool's output, trimmed.
fn ethtool_fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// The features `ethtool -k` reports on (`[fixed]` ones included: they are on).
pub fn parse_offloads(text: &str) -> Vec<String> {
    let mut on: Vec<String> = ethtool_fields(text)
        .filter(|(_, v)| *v == "on" || v.starts_with("on "))
        .map(|(k, _)| k.to_owned())
        .collect();
    on.sort();
    on
}

/// `/proc/net/vlan/config`: two header lines, then `name | id | parent`.
pub fn parse_vlan_config(text: &str) -> std::collections::BTreeMap<String, Vlan> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let mut fields = line.split('|').map(str::trim);
            let (name, id, parent) = (fields.next()?, fields.next()?, fields.next()?);
            Some((
                name.to_owned(),
                Vlan {
                    id: id.parse().ok()?,
                    parent: parent.to_owned(),
                },
            ))
        })
        .collect()
}

/// The kernel's device type from the interface's `uevent` (`DEVTYPE=bond`).
fn kind(root: &SysRoot, dir: &str) -> Option<String> {
    let uevent = root.read_to_string(&format!("{dir}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVTYPE="))
        .map(str::to_owned)
}

fn bond(root: &SysRoot, dir: &str) -> Option<Bond> {
    let mode = root.read_trimmed(&format!("{dir}/bonding/mode")).ok()?;
    let slaves = root
        .read_trimmed(&format!("{dir}/bonding/slaves"))
        .unwrap_or_default();
    Some(Bond {
        // "802.3ad 4": the name, then the number.
        mode: mode
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
        slaves: slaves.split_whitespace().map(str::to_owned).collect(),
    })
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
        kind: kind(root, &dir),
        master: root
            .read_link(&format!("{dir}/master"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned())),
        bond: bond(root, &dir),
        vlan: None,
        firmware: None,
        offloads: Vec::new(),
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
    fn offloads_on() {
        let text = "Features for eth0:\nrx-checksumming: on\ntx-checksumming: off\ntcp-segmentation-offload: on [fixed]\nnetns-local: off [fixed]\n";
        assert_eq!(
            parse_offloads(text),
            vec!["rx-checksumming", "tcp-segmentation-offload"]
        );
    }

    #[test]
    fn vlan_table() {
        let text = "VLAN Dev name    | VLAN ID\nName-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\nbond0.42       | 42  | bond0\n";
        let vlans = parse_vlan_config(text);
        assert_eq!(
            vlans.get("bond0.42"),
            Some(&Vlan {
                id: 42,
                parent: "bond0".into()
            })
        );
        assert!(parse_vlan_config("garbage").is_empty());
    }

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
