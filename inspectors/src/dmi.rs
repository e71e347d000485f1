//! SMBIOS identity: from the raw tables via smbios-lib, else from the kernel's `dmi/id` files.
//!
//! Both sources give the same keys (the `/sys/class/dmi/id` file names) and the same values;
//! the system UUID is formatted as Linux formats it, so the MercuryId does not depend on which
//! source a machine offers.

use qs_proto::inventory::{Dmi, DmiSource, IpmiDevice, MemoryDevice, Processor};
use smbioslib::{
    CoreCount, CoreCount2, MemorySize, MemorySizeExtended, MemorySpeed, ProcessorSpeed,
    SMBiosBaseboardInformation, SMBiosData, SMBiosEntryPoint32, SMBiosEntryPoint64,
    SMBiosInformation, SMBiosIpmiDeviceInformation, SMBiosMemoryDevice, SMBiosProcessorInformation,
    SMBiosStruct, SMBiosSystemChassisInformation, SMBiosSystemInformation, SMBiosVersion,
    SystemUuidData, ThreadCount, ThreadCount2,
};

use crate::{SysRoot, SysRootError};

const TABLES: &str = "sys/firmware/dmi/tables";
const DMI_ID: &str = "sys/class/dmi/id";

/// Why DMI could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum DmiError {
    /// Neither raw tables nor `dmi/id` exist (no SMBIOS on this machine).
    #[error("no SMBIOS under {}: neither {TABLES} nor {DMI_ID} exists", .root.display())]
    NoSource {
        /// The root inspected.
        root: std::path::PathBuf,
    },
    /// The raw tables could not be read.
    #[error("cannot read the SMBIOS tables")]
    Read(#[from] SysRootError),
    /// The entry point is neither a 32-bit nor a 64-bit SMBIOS entry point.
    #[error("SMBIOS entry point is not recognised")]
    BadEntryPoint(#[source] std::io::Error),
}

/// Reads SMBIOS identity, preferring the raw tables.
pub fn inspect(root: &SysRoot) -> Result<Dmi, DmiError> {
    if root.exists(&format!("{TABLES}/DMI")) {
        let entry = root.read_bytes(&format!("{TABLES}/smbios_entry_point"))?;
        let table = root.read_bytes(&format!("{TABLES}/DMI"))?;
        return from_tables(entry, table);
    }
    if root.exists(DMI_ID) {
        return Ok(from_sysfs(root));
    }
    Err(DmiError::NoSource {
        root: root.path(""),
    })
}

fn from_sysfs(root: &SysRoot) -> Dmi {
    // Serial and UUID files are root-only; unreadable ones are simply absent.
    let read = |key: &str| {
        root.read_trimmed(&format!("{DMI_ID}/{key}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    Dmi {
        source: Some(DmiSource::Sysfs),
        bios_date: read("bios_date"),
        bios_release: read("bios_release"),
        bios_vendor: read("bios_vendor"),
        bios_version: read("bios_version"),
        board_asset_tag: read("board_asset_tag"),
        board_name: read("board_name"),
        board_serial: read("board_serial"),
        board_vendor: read("board_vendor"),
        board_version: read("board_version"),
        chassis_asset_tag: read("chassis_asset_tag"),
        chassis_serial: read("chassis_serial"),
        chassis_type: read("chassis_type"),
        chassis_vendor: read("chassis_vendor"),
        chassis_version: read("chassis_version"),
        product_family: read("product_family"),
        product_name: read("product_name"),
        product_serial: read("product_serial"),
        product_sku: read("product_sku"),
        product_uuid: read("product_uuid").map(|u| u.to_ascii_lowercase()),
        product_version: read("product_version"),
        sys_vendor: read("sys_vendor"),
        // The kernel's files say nothing about slots or sockets.
        memory_devices: Vec::new(),
        processors: Vec::new(),
        ipmi_device: None,
    }
}

fn version_of(entry: Vec<u8>) -> Result<SMBiosVersion, DmiError> {
    if entry.starts_with(b"_SM3_") {
        let ep = SMBiosEntryPoint64::try_from(entry).map_err(DmiError::BadEntryPoint)?;
        return Ok(SMBiosVersion {
            major: ep.major_version(),
            minor: ep.minor_version(),
            revision: ep.docrev(),
        });
    }
    let ep = SMBiosEntryPoint32::try_from(entry).map_err(DmiError::BadEntryPoint)?;
    Ok(SMBiosVersion {
        major: ep.major_version(),
        minor: ep.minor_version(),
        revision: 0,
    })
}

/// Decodes raw SMBIOS tables (entry point + structure table, as sysfs exposes them).
pub fn from_tables(entry: Vec<u8>, table: Vec<u8>) -> Result<Dmi, DmiError> {
    let version = version_of(entry)?;
    let data = SMBiosData::from_vec_and_version(table, Some(version));
    // SMBIOS strings are padded by some firmware; the kernel's files are compared trimmed.
    let text = |s: smbioslib::SMBiosString| {
        s.to_utf8_lossy()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut dmi = Dmi {
        source: Some(DmiSource::Smbios),
        ..Dmi::default()
    };
    if let Some(bios) = data.first::<SMBiosInformation<'_>>() {
        dmi.bios_vendor = text(bios.vendor());
        dmi.bios_version = text(bios.version());
        dmi.bios_date = text(bios.release_date());
        if let (Some(major), Some(minor)) = (
            bios.system_bios_major_release(),
            bios.system_bios_minor_release(),
        ) {
            // The kernel omits the release when the firmware marks it unsupported (0xff).
            if major != 0xff && minor != 0xff {
                dmi.bios_release = Some(format!("{major}.{minor}"));
            }
        }
    }
    if let Some(system) = data.first::<SMBiosSystemInformation<'_>>() {
        dmi.sys_vendor = text(system.manufacturer());
        dmi.product_name = text(system.product_name());
        dmi.product_version = text(system.version());
        dmi.product_serial = text(system.serial_number());
        dmi.product_sku = text(system.sku_number());
        dmi.product_family = text(system.family());
        if let Some(SystemUuidData::Uuid(uuid)) = system.uuid() {
            dmi.product_uuid = linux_uuid(&uuid.raw, version);
        }
    }
    if let Some(board) = data.first::<SMBiosBaseboardInformation<'_>>() {
        dmi.board_vendor = text(board.manufacturer());
        dmi.board_name = text(board.product());
        dmi.board_version = text(board.version());
        dmi.board_serial = text(board.serial_number());
        dmi.board_asset_tag = text(board.asset_tag());
    }
    dmi.memory_devices = data
        .defined_struct_iter::<SMBiosMemoryDevice<'_>>()
        .map(|d| MemoryDevice {
            locator: text(d.device_locator()).unwrap_or_default(),
            bank_locator: text(d.bank_locator()),
            size: memory_size(&d),
            memory_type: d
                .memory_type()
                .and_then(|t| memory_type_name(t.raw))
                .map(str::to_owned),
            speed: d.speed().and_then(mts),
            configured_speed: d.configured_memory_speed().and_then(mts),
            manufacturer: text(d.manufacturer()),
            serial: text(d.serial_number()),
            part_number: text(d.part_number()),
        })
        .collect();
    dmi.processors = data
        .defined_struct_iter::<SMBiosProcessorInformation<'_>>()
        .map(|p| Processor {
            socket: text(p.socket_designation()).unwrap_or_default(),
            manufacturer: text(p.processor_manufacturer()),
            version: text(p.processor_version()),
            max_speed: p.max_speed().and_then(mhz),
            current_speed: p.current_speed().and_then(mhz),
            cores: match p.core_count() {
                Some(CoreCount::Count(n)) => Some(u32::from(n)),
                Some(CoreCount::SeeCoreCount2) => p.core_count_2().and_then(|c| match c {
                    CoreCount2::Count(n) => Some(u32::from(n)),
                    _ => None,
                }),
                _ => None,
            },
            threads: match p.thread_count() {
                Some(ThreadCount::Count(n)) => Some(u32::from(n)),
                Some(ThreadCount::SeeThreadCount2) => p.thread_count_2().and_then(|c| match c {
                    ThreadCount2::Count(n) => Some(u32::from(n)),
                    _ => None,
                }),
                _ => None,
            },
        })
        .collect();
    if let Some(chassis) = data.first::<SMBiosSystemChassisInformation<'_>>() {
        dmi.chassis_vendor = text(chassis.manufacturer());
        dmi.chassis_version = text(chassis.version());
        dmi.chassis_serial = text(chassis.serial_number());
        dmi.chassis_asset_tag = text(chassis.asset_tag_number());
        // The kernel shows the type without the lock bit.
        dmi.chassis_type = chassis.chassis_type().map(|t| (t.raw & 0x7f).to_string());
    }
    dmi.ipmi_device = data
        .first::<SMBiosIpmiDeviceInformation<'_>>()
        .and_then(|d| ipmi_device(&d));
    Ok(dmi)
}

/// Decodes SMBIOS type 38 the way dmidecode does, so the two can be compared.
fn ipmi_device(d: &SMBiosIpmiDeviceInformation<'_>) -> Option<IpmiDevice> {
    let interface = match d.interface_type()?.raw {
        1 => "KCS",
        2 => "SMIC",
        3 => "BT",
        4 => "SSIF",
        _ => "unknown",
    };
    let revision = d.ipmi_specification_revision()?;
    let raw = d.base_address()?;
    // Bit 0 of the address only says "I/O space"; the real low bit is in the modifier byte.
    let low_bit = d
        .parts()
        .get_field_byte(0x10)
        .map_or(0, |m| u64::from((m >> 4) & 1));
    Some(IpmiDevice {
        interface: interface.to_owned(),
        spec_version: format!("{}.{}", revision >> 4, revision & 0x0f),
        base_address: (raw & !1) | low_bit,
        address_space: if raw & 1 == 1 { "io" } else { "memory" }.to_owned(),
        i2c_address: d.i2c_target_address()?,
    })
}

fn memory_size(d: &SMBiosMemoryDevice<'_>) -> u64 {
    const MIB: u64 = 1 << 20;
    match d.size() {
        Some(MemorySize::Kilobytes(k)) => u64::from(k) * 1024,
        Some(MemorySize::Megabytes(m)) => u64::from(m) * MIB,
        Some(MemorySize::SeeExtendedSize) => match d.extended_size() {
            Some(MemorySizeExtended::Megabytes(m)) => u64::from(m) * MIB,
            _ => 0,
        },
        _ => 0,
    }
}

fn mts(speed: MemorySpeed) -> Option<u32> {
    match speed {
        MemorySpeed::MTs(n) => Some(u32::from(n)),
        _ => None,
    }
}

fn mhz(speed: ProcessorSpeed) -> Option<u32> {
    match speed {
        ProcessorSpeed::MHz(n) => Some(u32::from(n)),
        ProcessorSpeed::Unknown => None,
    }
}

/// Memory type names as the SMBIOS specification (and dmidecode) words them.
fn memory_type_name(raw: u8) -> Option<&'static str> {
    Some(match raw {
        0x01 => "Other",
        0x03 => "DRAM",
        0x07 => "RAM",
        0x0f => "SDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1a => "DDR4",
        0x1b => "LPDDR",
        0x1c => "LPDDR2",
        0x1d => "LPDDR3",
        0x1e => "LPDDR4",
        0x1f => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        _ => return None,
    })
}

/// Formats a system UUID as Linux does (drivers/firmware/dmi_scan.c, `dmi_save_uuid`): absent
/// when all 0x00 or all 0xff; first three fields little-endian from SMBIOS 2.6 on.
pub fn linux_uuid(raw: &[u8; 16], version: SMBiosVersion) -> Option<String> {
    if raw.iter().all(|b| *b == 0) || raw.iter().all(|b| *b == 0xff) {
        return None;
    }
    let mut b = *raw;
    if (version.major, version.minor) >= (2, 6) {
        b[..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
    }
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v(major: u8, minor: u8) -> SMBiosVersion {
        SMBiosVersion {
            major,
            minor,
            revision: 0,
        }
    }

    #[test]
    fn uuid_byte_order_follows_the_smbios_version() {
        let raw = [
            0x30, 0x39, 0x31, 0x37, 0x31, 0x36, 0x43, 0x54, 0x35, 0x31, 0x4e, 0x52, 0x39, 0x39,
            0x35, 0x32,
        ];
        assert_eq!(
            linux_uuid(&raw, v(2, 8)).unwrap(),
            "37313930-3631-5443-3531-4e5239393532"
        );
        assert_eq!(
            linux_uuid(&raw, v(2, 5)).unwrap(),
            "30393137-3136-4354-3531-4e5239393532"
        );
        assert_eq!(linux_uuid(&[0; 16], v(3, 0)), None);
        assert_eq!(linux_uuid(&[0xff; 16], v(3, 0)), None);
    }

    #[test]
    fn garbage_entry_points_are_errors() {
        assert!(from_tables(vec![1, 2, 3], vec![]).is_err());
        assert!(from_tables(b"_SM3_".to_vec(), vec![]).is_err());
    }
}
