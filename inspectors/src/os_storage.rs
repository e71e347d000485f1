//! Block devices from `/sys/block`: disks and NVMe namespaces, their partitions and holders.
//!
//! Virtual devices (loop, ram, zram, device-mapper, md) are left out: md arrays are the `raid`
//! inspector's, and the others say nothing about the hardware.

use qs_proto::inventory::{BlockDevice, Partition};

use crate::{SysRoot, SysRootError};

const BLOCK: &str = "sys/block";
/// sysfs counts sizes in 512-byte sectors whatever the device's sector size.
const SECTOR: u64 = 512;

/// Why block devices could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `/sys/block` could not be listed.
    #[error("cannot list block devices")]
    List(#[source] SysRootError),
}

/// Reads every physical block device, sorted by name.
pub fn inspect(root: &SysRoot) -> Result<Vec<BlockDevice>, StorageError> {
    let mut devices = Vec::new();
    for name in root.read_dir(BLOCK).map_err(StorageError::List)? {
        let dir = format!("{BLOCK}/{name}");
        let Ok(real) = root.canonical(&dir) else {
            continue;
        };
        if real.to_string_lossy().contains("/devices/virtual/") {
            continue;
        }
        devices.push(inspect_one(root, &name, &dir, &real.to_string_lossy()));
    }
    Ok(devices)
}

/// Adds SMART health to each device. It is slow (smartctl takes a moment per drive, longer
/// for a sick one), so it is its own pass that callers run after the quick inventory.
pub fn add_smart(root: &SysRoot, devices: &mut [BlockDevice]) {
    // Ask every drive at once.
    let names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
    let health: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = names.iter().map(|n| s.spawn(|| smart(root, n))).collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    for (device, smart) in devices.iter_mut().zip(health) {
        device.smart = smart;
    }
}

/// A drive's health, when smartctl is installed and can read the drive.
fn smart(root: &SysRoot, name: &str) -> Option<qs_proto::inventory::Smart> {
    let device = format!("/dev/{name}");
    match root.run("smartctl", &["-j", "-a", &device]) {
        Ok(Some(json)) => match crate::smart::parse(&json) {
            Ok(smart) => Some(smart),
            Err(error) => {
                tracing::warn!(device, error = %error, "unusable smartctl output");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::debug!(device, error = %error, "smartctl could not read the drive");
            None
        }
    }
}

fn number<T: std::str::FromStr>(root: &SysRoot, path: &str) -> Option<T> {
    root.read_trimmed(path).ok()?.parse().ok()
}

fn text(root: &SysRoot, path: &str) -> Option<String> {
    root.read_trimmed(path)
        .ok()
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|v| !v.is_empty())
}

fn holders(root: &SysRoot, dir: &str) -> Vec<String> {
    root.read_dir(&format!("{dir}/holders")).unwrap_or_default()
}

/// The attachment, read from the device's place in the device tree.
pub fn transport(device_path: &str) -> Option<&'static str> {
    let p = device_path;
    if p.contains("/nvme/") || p.contains("/nvme-subsystem/") {
        Some("nvme")
    } else if p.contains("/usb") {
        Some("usb")
    } else if p.contains("/virtio") {
        Some("virtio")
    } else if p.contains("/ata") {
        Some("sata")
    } else if p.contains("/end_device-") || p.contains("/sas_") {
        Some("sas")
    } else if p.contains("/mmc_host/") {
        Some("mmc")
    } else if p.contains("/host") && p.contains("/target") {
        Some("scsi")
    } else {
        None
    }
}

/// SCSI VPD page 0x80: four header bytes, then the serial as ASCII.
fn vpd_serial(page: &[u8]) -> Option<String> {
    let len = usize::from(*page.get(3)?);
    let serial = page.get(4..4 + len)?;
    let text = String::from_utf8_lossy(serial).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn inspect_one(root: &SysRoot, name: &str, dir: &str, real: &str) -> BlockDevice {
    let serial = text(root, &format!("{dir}/device/serial"))
        .or_else(|| text(root, &format!("{dir}/serial")))
        .or_else(|| {
            root.read_bytes(&format!("{dir}/device/vpd_pg80"))
                .ok()
                .and_then(|p| vpd_serial(&p))
        });
    let mut partitions: Vec<Partition> = root
        .read_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry.starts_with(name))
        .filter_map(|entry| {
            let pdir = format!("{dir}/{entry}");
            let index: u32 = number(root, &format!("{pdir}/partition"))?;
            Some(Partition {
                number: index,
                start: number::<u64>(root, &format!("{pdir}/start"))?.saturating_mul(SECTOR),
                size: number::<u64>(root, &format!("{pdir}/size"))?.saturating_mul(SECTOR),
                holders: holders(root, &pdir),
                name: entry,
            })
        })
        .collect();
    partitions.sort_by_key(|p| p.number);
    BlockDevice {
        name: name.to_owned(),
        size: number::<u64>(root, &format!("{dir}/size"))
            .unwrap_or(0)
            .saturating_mul(SECTOR),
        logical_sector_size: number(root, &format!("{dir}/queue/logical_block_size")),
        physical_sector_size: number(root, &format!("{dir}/queue/physical_block_size")),
        rotational: number::<u8>(root, &format!("{dir}/queue/rotational")).map(|r| r == 1),
        removable: number::<u8>(root, &format!("{dir}/removable")) == Some(1),
        model: text(root, &format!("{dir}/device/model")),
        serial,
        wwn: text(root, &format!("{dir}/wwid"))
            .or_else(|| text(root, &format!("{dir}/device/wwid"))),
        transport: transport(real).map(str::to_owned),
        partitions,
        holders: holders(root, dir),
        smart: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_from_the_device_path() {
        let cases = [
            ("sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda", Some("sata")),
            ("sys/devices/pci0000:00/0000:00:02.0/nvme/nvme0/nvme0n1", Some("nvme")),
            ("sys/devices/pci0000:00/0000:00:06.0/virtio3/block/vda", Some("virtio")),
            ("sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb", Some("usb")),
            ("sys/devices/virtual/block/loop0", None),
        ];
        for (path, want) in cases {
            assert_eq!(transport(path), want, "{path}");
        }
    }

    #[test]
    fn serial_from_vpd_page_80() {
        let mut page = vec![0, 0x80, 0, 9];
        page.extend_from_slice(b"QS-SATA-0");
        assert_eq!(vpd_serial(&page).as_deref(), Some("QS-SATA-0"));
        assert_eq!(vpd_serial(&[0, 0x80, 0, 200]), None);
        assert_eq!(vpd_serial(&[]), None);
    }
}
