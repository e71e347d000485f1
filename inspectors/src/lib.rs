//! Hardware inspectors: each reads the machine through a [`SysRoot`] and returns typed
//! inventory ([`qs_proto::inventory`]).
//!
//! [`run_all`] runs the inspectors concurrently; one that fails (or panics) is recorded in
//! `errors` and the others still report. Parsing is kept apart from I/O so parsers are tested
//! on real captured text, and whole inspectors on captured trees under `fixtures/hosts/`.
//!
//! ```
//! use qs_inspectors::{run_all, InspectorName, SysRoot};
//! let root = SysRoot::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hosts/dev-vm"));
//! let inventory = run_all(&root, Some(&[InspectorName::Mem]));
//! assert!(inventory.mem.unwrap().total > 0);
//! ```

pub mod bmc;
pub mod cpu;
pub mod dmi;
pub mod interfaces;
pub mod lldp;
pub mod mem;
pub mod os_storage;
pub mod pci;
pub mod pci_ids;
pub mod raid;
pub mod routes;
pub mod smart;
pub mod sysroot;

use std::fmt;
use std::str::FromStr;

use qs_proto::inventory::{InspectorError, Inventory};
use qs_proto::mercury_id::{IdSources, NicSource};

pub use sysroot::{SysRoot, SysRootError};

/// The inspectors, by the names the inventory and `--only` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InspectorName {
    /// SMBIOS identity.
    Dmi,
    /// Processors.
    Cpu,
    /// Memory.
    Mem,
    /// Network interfaces.
    Interfaces,
    /// Block devices.
    OsStorage,
    /// PCI devices.
    Pci,
    /// Routing tables.
    Routes,
    /// RAID controllers and software RAID.
    Raid,
    /// The baseboard management controller.
    Bmc,
}

impl InspectorName {
    /// Every inspector.
    pub const ALL: [InspectorName; 9] = [
        Self::Dmi,
        Self::Cpu,
        Self::Mem,
        Self::Interfaces,
        Self::OsStorage,
        Self::Pci,
        Self::Routes,
        Self::Raid,
        Self::Bmc,
    ];

    /// The name used in the inventory and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dmi => "dmi",
            Self::Cpu => "cpu",
            Self::Mem => "mem",
            Self::Interfaces => "interfaces",
            Self::OsStorage => "os_storage",
            Self::Pci => "pci",
            Self::Routes => "routes",
            Self::Raid => "raid",
            Self::Bmc => "bmc",
        }
    }
}

impl fmt::Display for InspectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an inspector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown inspector {0:?} (known: dmi, cpu, mem, interfaces, os_storage, pci, routes, raid, bmc)"
)]
pub struct UnknownInspector(pub String);

impl FromStr for InspectorName {
    type Err = UnknownInspector;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s.trim())
            .ok_or_else(|| UnknownInspector(s.chars().take(64).collect()))
    }
}

/// The error and its causes as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    qs_proto::ErrorReport::from_error(error).to_string()
}

fn record<T, E: std::error::Error + 'static>(
    name: InspectorName,
    result: std::thread::Result<Result<T, E>>,
    errors: &mut Vec<InspectorError>,
) -> Option<T> {
    let message = match result {
        Ok(Ok(value)) => return Some(value),
        Ok(Err(error)) => chain(&error),
        Err(_) => "inspector panicked".to_owned(),
    };
    tracing::warn!(inspector = %name, error = %message, "inspector failed");
    errors.push(InspectorError {
        inspector: name.to_string(),
        message,
    });
    None
}

type Handle<'scope, T, E> = Option<std::thread::ScopedJoinHandle<'scope, Result<T, E>>>;

/// Starts one inspector on its own thread when it was asked for.
fn start<'scope, T, E, F>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    enabled: bool,
    inspector: F,
) -> Handle<'scope, T, E>
where
    T: Send + 'scope,
    E: Send + 'scope,
    F: FnOnce() -> Result<T, E> + Send + 'scope,
{
    enabled.then(|| scope.spawn(inspector))
}

/// Waits for one inspector; its failure (or panic) becomes an entry of `errors`.
fn finish<T, E: std::error::Error + 'static>(
    name: InspectorName,
    handle: Handle<'_, T, E>,
    errors: &mut Vec<InspectorError>,
) -> Option<T> {
    handle.and_then(|h| record(name, h.join(), errors))
}

/// Runs the chosen inspectors (all when `only` is None) concurrently.
pub fn run_all(root: &SysRoot, only: Option<&[InspectorName]>) -> Inventory {
    use InspectorName as N;
    let wanted = |n: InspectorName| only.is_none_or(|o| o.contains(&n));
    let mut inventory = Inventory::default();
    let mut errors = Vec::new();
    std::thread::scope(|s| {
        let dmi = start(s, wanted(N::Dmi), || dmi::inspect(root));
        let cpu = start(s, wanted(N::Cpu), || cpu::inspect(root));
        let mem = start(s, wanted(N::Mem), || mem::inspect(root));
        let interfaces = start(s, wanted(N::Interfaces), || interfaces::inspect(root));
        let os_storage = start(s, wanted(N::OsStorage), || os_storage::inspect(root));
        let pci = start(s, wanted(N::Pci), || pci::inspect(root));
        let routes = start(s, wanted(N::Routes), || routes::inspect(root));
        let raid = start(s, wanted(N::Raid), || raid::inspect(root));
        inventory.dmi = finish(N::Dmi, dmi, &mut errors);
        inventory.cpu = finish(N::Cpu, cpu, &mut errors);
        inventory.mem = finish(N::Mem, mem, &mut errors);
        inventory.interfaces = finish(N::Interfaces, interfaces, &mut errors);
        inventory.os_storage = finish(N::OsStorage, os_storage, &mut errors);
        inventory.pci = finish(N::Pci, pci, &mut errors);
        inventory.routes = finish(N::Routes, routes, &mut errors);
        inventory.raid = finish(N::Raid, raid, &mut errors);
    });
    // Finding the device is a directory listing; asking the BMC waits for the slow facts.
    if wanted(N::Bmc) {
        inventory.bmc = Some(bmc::presence(root));
    }
    if let (Some(bmc), Some(declared)) = (
        inventory.bmc.as_mut().filter(|b| !b.present),
        inventory.dmi.as_ref().and_then(|d| d.ipmi_device.as_ref()),
    ) {
        // The firmware says there is a BMC: the operator needs to know the driver is missing.
        bmc.reason = Some(format!(
            "SMBIOS declares an IPMI {} interface at {:#x}, but no IPMI device is loaded \
             (modprobe ipmi_si ipmi_devintf)",
            declared.interface, declared.base_address
        ));
    }
    // Installed modules belong with memory too; the firmware is the only one that knows them.
    if let (Some(mem), Some(dmi)) = (inventory.mem.as_mut(), inventory.dmi.as_ref()) {
        mem.dimms = dmi
            .memory_devices
            .iter()
            .filter(|d| d.size > 0)
            .cloned()
            .collect();
    }
    inventory.errors = errors;
    inventory
}

/// Adds what takes long to learn (SMART health, what the BMC says) to an inventory from [`run_all`]; kept
/// apart so the quick facts never wait for it.
pub fn add_slow_facts(root: &SysRoot, inventory: &mut Inventory) {
    std::thread::scope(|s| {
        let bmc = inventory.bmc.as_mut().filter(|b| b.present).map(|bmc| {
            s.spawn(move || {
                let mut errors = Vec::new();
                bmc::add_details(root, bmc, &mut errors);
                errors
            })
        });
        if let Some(devices) = inventory.os_storage.as_mut() {
            os_storage::add_smart(root, devices);
        }
        if let Some(errors) = bmc.and_then(|h| h.join().ok()) {
            inventory.errors.extend(errors);
        }
    });
}

/// The values a MercuryId can be derived from, taken from an inventory.
pub fn id_sources(inventory: &Inventory) -> IdSources {
    let dmi = inventory.dmi.clone().unwrap_or_default();
    IdSources {
        product_uuid: dmi.product_uuid,
        chassis_asset_tag: dmi.chassis_asset_tag,
        chassis_serial: dmi.chassis_serial,
        board_asset_tag: dmi.board_asset_tag,
        board_serial: dmi.board_serial,
        nics: inventory
            .interfaces
            .iter()
            .flatten()
            .map(|i| NicSource {
                name: i.name.clone(),
                mac: i.address.clone().unwrap_or_default(),
                permanent_mac: i.permanent_address.clone(),
                pci_address: i.pci_address.clone(),
                dev_port: i.dev_port,
                physical: i.physical,
                onboard: i.onboard,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        let every = [
            "dmi",
            "cpu",
            "mem",
            "interfaces",
            "os_storage",
            "pci",
            "routes",
            "raid",
            "bmc",
        ];
        let all: Vec<&str> = InspectorName::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(all, every, "ALL lists every inspector");
        for n in InspectorName::ALL {
            assert_eq!(n.as_str().parse::<InspectorName>(), Ok(n));
        }
        assert!("gpu".parse::<InspectorName>().is_err());
    }

    fn host(name: &str) -> SysRoot {
        SysRoot::new(format!(
            "{}/fixtures/hosts/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    fn id(root: &SysRoot) -> String {
        let inventory = run_all(root, None);
        qs_proto::mercury_id::derive(&id_sources(&inventory))
            .map(|d| d.id.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn dev_vm_capture() {
        let inv = run_all(&host("dev-vm"), None);
        assert_eq!(inv.mem.as_ref().map(|m| m.total), Some(24_684_084 * 1024));
        let cpu = inv.cpu.unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 2, 2));
        assert_eq!(cpu.vendor.as_deref(), Some("AuthenticAMD"));
        let ifaces = inv.interfaces.unwrap();
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["eth0", "ifb0", "ifb1", "lo"]);
        let eth0 = &ifaces[0];
        assert_eq!(eth0.pci_address.as_deref(), Some("0000:00:03.0"));
        assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
        assert!(eth0.physical && !eth0.onboard);
        assert_eq!(
            eth0.addresses,
            vec!["192.0.2.2/24", "fd00::2/64", "fe80::fc:ff:fe00:1/64"]
        );
        assert!(
            ifaces[1..].iter().all(|i| !i.physical),
            "ifb and lo have no device"
        );
        assert_eq!(cpu.caches.len(), 4);
        assert_eq!(cpu.caches[3].size, 32 << 20);
        let mem = inv.mem.as_ref().unwrap();
        assert_eq!(mem.hugepage_size, Some(2 << 20));
        let routes = inv.routes.unwrap();
        assert_eq!(routes.default_gateway.as_deref(), Some("192.0.2.1"));
        assert_eq!(routes.default_gateway6.as_deref(), Some("fd00::1"));
        assert_eq!(inv.pci.unwrap().len(), 6);
        // No SMBIOS on this VM: recorded as dmi's error, the rest still reported.
        assert_eq!(inv.errors.len(), 1);
        assert_eq!(inv.errors[0].inspector, "dmi");
        assert_eq!(
            id(&host("dev-vm")),
            "002d66f6e2af67690cbddc94f47d596d1a545987cb"
        );
    }

    #[test]
    fn raw_smbios_tables() {
        let dmi = run_all(&host("lenovo-thinkpad-t490"), Some(&[InspectorName::Dmi]))
            .dmi
            .unwrap();
        assert_eq!(dmi.source, Some(qs_proto::inventory::DmiSource::Smbios));
        assert_eq!(dmi.sys_vendor.as_deref(), Some("LENOVO"));
        assert_eq!(dmi.product_family.as_deref(), Some("ThinkPad T490"));
        assert_eq!(
            dmi.product_uuid.as_deref(),
            Some("0677d5cc-25b1-11b2-a85c-c66e0b64b3d5")
        );
        assert_eq!(dmi.chassis_type.as_deref(), Some("10"));
        assert_eq!(dmi.bios_release.as_deref(), Some("1.70"));
        // Memory slots and the processor socket from the same table.
        let dimms: Vec<(&str, u64, Option<&str>, Option<&str>)> = dmi
            .memory_devices
            .iter()
            .map(|d| {
                (
                    d.locator.as_str(),
                    d.size,
                    d.memory_type.as_deref(),
                    d.part_number.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            dimms,
            vec![
                (
                    "ChannelA-DIMM0",
                    8 << 30,
                    Some("DDR4"),
                    Some("M471A1K43BB1-CTD")
                ),
                (
                    "ChannelB-DIMM0",
                    32 << 30,
                    Some("DDR4"),
                    Some("M471A4G43MB1-CTD")
                ),
            ]
        );
        assert_eq!(dmi.memory_devices[1].speed, Some(2667));
        assert_eq!(dmi.memory_devices[1].configured_speed, Some(2400));
        let cpu = &dmi.processors[0];
        assert_eq!(
            cpu.version.as_deref(),
            Some("Intel(R) Core(TM) i7-8565U CPU @ 1.80GHz")
        );
        assert_eq!((cpu.cores, cpu.threads), (Some(4), Some(8)));
        assert_eq!(
            id(&host("lenovo-thinkpad-t490")),
            "0197846478a4254d7bc5ca3ccce4bcb1f4b83ad61d"
        );
    }

    #[test]
    fn a_bmc_the_firmware_declares_without_its_driver_says_so() {
        // The QEMU guest's SMBIOS tables (with their type 38 entry), but no /sys/class/ipmi.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tables = "sys/firmware/dmi/tables";
        std::fs::create_dir_all(dir.path().join(tables)).unwrap_or_else(|e| panic!("{e}"));
        for file in ["DMI", "smbios_entry_point"] {
            let from = host("qemu-q35").path(&format!("{tables}/{file}"));
            std::fs::copy(from, dir.path().join(tables).join(file))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let inv = run_all(
            &SysRoot::new(dir.path()),
            Some(&[InspectorName::Dmi, InspectorName::Bmc]),
        );
        let bmc = inv.bmc.unwrap_or_default();
        assert!(!bmc.present);
        assert_eq!(
            bmc.reason.as_deref(),
            Some(
                "SMBIOS declares an IPMI KCS interface at 0xca2, but no IPMI device is loaded \
                 (modprobe ipmi_si ipmi_devintf)"
            )
        );
    }

    #[test]
    fn qemu_guest_capture_matches_its_known_hardware() {
        // The values set in images/guest-hardware.
        let mut inv = run_all(&host("qemu-q35"), None);
        assert!(
            inv.os_storage.iter().flatten().all(|d| d.smart.is_none()),
            "slow facts wait"
        );
        add_slow_facts(&host("qemu-q35"), &mut inv);
        // QEMU's BMC simulator answers Get Device ID but has no LAN or user commands.
        let errors: Vec<&str> = inv.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            errors,
            [
                "ipmitool lan print: ipmitool failed (exit status: 1): Get Channel Info command \
                 failed: Invalid command; Invalid channel: 0",
                "ipmitool user list: ipmitool failed (exit status: 1): IPMI command failed: \
                 Invalid command",
            ]
        );
        assert!(inv.errors.iter().all(|e| e.inspector == "bmc"));
        let bmc = inv.bmc.clone().unwrap_or_default();
        assert_eq!(bmc.device.as_deref(), Some("/dev/ipmi0"));
        let firmware = bmc.firmware.unwrap_or_default();
        assert_eq!(
            (
                firmware.firmware_revision.as_deref(),
                firmware.manufacturer_id,
                firmware.manufacturer_name.as_deref(),
                firmware.product_id,
            ),
            (
                Some("1.47"),
                Some(10876),
                Some("Super Micro Computer Inc."),
                Some(2330)
            )
        );
        assert_eq!((bmc.lan, bmc.users), (None, None));
        let declared = inv.dmi.as_ref().and_then(|d| d.ipmi_device.clone());
        assert_eq!(
            declared,
            Some(qs_proto::inventory::IpmiDevice {
                interface: "KCS".into(),
                spec_version: "2.0".into(),
                base_address: 0xca2,
                address_space: "io".into(),
                i2c_address: 0x20,
            })
        );
        let cpu = inv.cpu.unwrap();
        assert_eq!(cpu.threads, 2);
        let nics: Vec<(String, String, String)> = inv
            .interfaces
            .clone()
            .unwrap()
            .into_iter()
            .filter(|i| i.physical)
            .map(|i| {
                (
                    // eth1 carries the bond's MAC now; its own survives as the permanent one.
                    i.permanent_address.or(i.address).unwrap_or_default(),
                    i.driver.unwrap_or_default(),
                    i.pci_address.unwrap_or_default(),
                )
            })
            .collect();
        let expected = [
            ("52:54:00:12:34:56", "virtio_net", "0000:00:03.0"),
            ("52:54:00:12:34:57", "virtio_net", "0000:00:04.0"),
            ("52:54:00:12:34:58", "e1000e", "0000:00:05.0"),
        ];
        assert_eq!(
            nics,
            expected
                .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
                .to_vec()
        );
        // The bond and VLAN that images/payloads/network-layout made.
        let ifaces = inv.interfaces.clone().unwrap();
        let bond0 = ifaces.iter().find(|i| i.name == "bond0").unwrap();
        assert_eq!(bond0.kind.as_deref(), Some("bond"));
        let bond = bond0.bond.as_ref().unwrap();
        assert_eq!(bond.mode, "active-backup");
        assert_eq!(bond.slaves, vec!["eth0", "eth1"]);
        let vlan = ifaces.iter().find(|i| i.name == "bond0.42").unwrap();
        let tag = qs_proto::inventory::Vlan {
            id: 42,
            parent: "bond0".into(),
        };
        assert_eq!(vlan.vlan, Some(tag));
        let enslaved: Vec<&str> = ifaces
            .iter()
            .filter(|i| i.master.as_deref() == Some("bond0"))
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(enslaved, vec!["eth0", "eth1"]);
        assert!(!ifaces.iter().any(|i| i.name == "bonding_masters"));
        // ethtool's view: the emulated e1000e has NVM firmware, virtio has none.
        let eth2 = ifaces.iter().find(|i| i.name == "eth2").unwrap();
        assert_eq!(eth2.firmware.as_deref(), Some("2.1-0"));
        assert!(eth2.offloads.iter().any(|o| o == "rx-checksumming"));
        assert_eq!(
            ifaces.iter().find(|i| i.name == "eth0").unwrap().firmware,
            None
        );
        let mem = inv.mem.unwrap();
        assert!(
            mem.total > 900 << 20 && mem.total <= 1 << 30,
            "{}",
            mem.total
        );
        // Two NUMA nodes of half the memory each (a little reserved by the firmware and kernel).
        let cpu_nodes: Vec<(u32, &str)> = cpu
            .numa_nodes
            .iter()
            .map(|n| (n.id, n.cpus.as_str()))
            .collect();
        assert_eq!(cpu_nodes, vec![(0, "0"), (1, "1")]);
        assert_eq!(mem.numa_nodes.len(), 2);
        assert!(mem
            .numa_nodes
            .iter()
            .all(|n| n.total > 400 << 20 && n.total <= 512 << 20));
        assert_eq!(
            mem.numa_nodes.iter().map(|n| n.total).sum::<u64>(),
            mem.total
        );
        assert_eq!(cpu.caches.iter().map(|c| c.level).max(), Some(3));
        // QEMU's one memory device, joined into mem from the SMBIOS tables.
        assert_eq!(mem.dimms.len(), 1);
        assert_eq!(
            (mem.dimms[0].locator.as_str(), mem.dimms[0].size),
            ("DIMM 0", 1 << 30)
        );
        // The disks' controllers: AHCI (SATA), NVMe, virtio-blk, and the e1000e NIC.
        let drivers: Vec<String> = inv
            .pci
            .unwrap()
            .into_iter()
            .filter_map(|d| d.driver)
            .collect();
        for driver in ["ahci", "nvme", "e1000e"] {
            assert!(
                drivers.iter().any(|d| d == driver),
                "{driver} in {drivers:?}"
            );
        }
        // Disks of known sizes and serials, and the layout the capture payload made on them.
        let storage = inv.os_storage.unwrap();
        let disks: Vec<(String, u64, String, String)> = storage
            .iter()
            .map(|d| {
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                (d.name.clone(), d.size, text(&d.serial), text(&d.transport))
            })
            .collect();
        let want = [
            ("nvme0n1", 3u64 << 30, "QS-NVME-1", "nvme"),
            ("sda", 2 << 30, "QS-SATA-0", "sata"),
            ("vda", 1 << 30, "QS-VIRTIO-2", "virtio"),
        ];
        let want: Vec<_> = want
            .into_iter()
            .map(|(n, s, r, t)| (n.to_owned(), s, r.to_owned(), t.to_owned()))
            .collect();
        assert_eq!(disks, want);
        let sda = &storage[1];
        assert_eq!(sda.partitions.len(), 2);
        // QEMU's SATA and NVMe drives answer smartctl; virtio has no SMART.
        let smart = sda.smart.as_ref().unwrap();
        assert_eq!(
            (smart.passed, smart.firmware.as_deref()),
            (Some(true), Some("2.5+"))
        );
        assert_eq!(storage[0].smart.as_ref().unwrap().percentage_used, Some(0));
        assert_eq!(storage[2].smart.as_ref().unwrap().passed, None);
        assert_eq!(sda.partitions[0].size, 512 << 20);
        assert_eq!(sda.partitions[1].holders, vec!["md0"]);
        assert_eq!(storage[2].holders, vec!["md0"]);
        let raid = inv.raid.unwrap();
        assert!(raid.controllers.is_empty());
        let md0 = &raid.md[0];
        assert_eq!(md0.name, "md0");
        assert_eq!(md0.level.as_deref(), Some("raid1"));
        assert!(!md0.degraded);
        let members: Vec<&str> = md0.members.iter().map(|m| m.device.as_str()).collect();
        assert_eq!(members, vec!["sda2", "vda"]);
        let dmi = inv.dmi.unwrap();
        assert_eq!(
            dmi.product_uuid.as_deref(),
            Some("5f2c1a3e-8b4d-4c6a-9e21-0a1b2c3d4e5f")
        );
        assert_eq!(dmi.chassis_asset_tag.as_deref(), Some("QSC-ASSET-1"));
        assert_eq!(
            id(&host("qemu-q35")),
            "01859e2e27de87a1adcaf84bf9c92c2cd4c34c022c"
        );
    }

    #[test]
    fn raw_table_decoding_agrees_with_the_kernel() {
        // Same boot: our smbios-lib decoding vs the kernel's /sys/class/dmi/id.
        let dmi = run_all(&host("qemu-q35"), Some(&[InspectorName::Dmi]))
            .dmi
            .unwrap();
        assert_eq!(dmi.source, Some(qs_proto::inventory::DmiSource::Smbios));
        let ours = serde_json::to_value(&dmi).unwrap();
        let kernel_dir = format!(
            "{}/fixtures/hosts/qemu-q35.kernel-dmi-id",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut compared = 0;
        for entry in std::fs::read_dir(&kernel_dir).unwrap() {
            let entry = entry.unwrap();
            let key = entry.file_name().to_string_lossy().into_owned();
            let kernel = std::fs::read_to_string(entry.path())
                .unwrap()
                .trim()
                .to_owned();
            let mine = ours.get(&key).and_then(|v| v.as_str()).unwrap_or("");
            assert_eq!(mine, kernel, "{key}");
            compared += 1;
        }
        assert_eq!(compared, 21);
    }

    #[test]
    fn sysfs_dmi_files() {
        let dmi = run_all(&host("dell-poweredge-m630"), Some(&[InspectorName::Dmi]))
            .dmi
            .unwrap();
        assert_eq!(dmi.source, Some(qs_proto::inventory::DmiSource::Sysfs));
        assert_eq!(dmi.product_name.as_deref(), Some("PowerEdge M630"));
        assert_eq!(
            dmi.product_uuid.as_deref(),
            Some("4c4c4544-0036-3210-805a-b7c04f4d3632")
        );
        assert_eq!(dmi.chassis_asset_tag, None);
        assert_eq!(
            id(&host("dell-poweredge-m630")),
            "015a154adb1f6345498a90517a0d0080b36d098f01"
        );
    }

    #[test]
    fn a_recording_of_this_machine_inspects_the_same() {
        let out = tempfile::tempdir().unwrap();
        let recorded = run_all(&SysRoot::recording("/", out.path()), None);
        let replayed = run_all(&SysRoot::new(out.path()), None);
        assert_eq!(recorded.dmi, replayed.dmi);
        assert_eq!(recorded.cpu, replayed.cpu);
        assert_eq!(recorded.mem, replayed.mem);
        assert_eq!(recorded.interfaces, replayed.interfaces);
        assert_eq!(recorded.routes, replayed.routes);
        assert_eq!(recorded.os_storage, replayed.os_storage);
        assert_eq!(recorded.raid, replayed.raid);
        // pci.ids is reference data and not captured, so names are left out of the comparison.
        let unnamed = |inv: &Inventory| {
            inv.pci.clone().map(|devices| {
                devices
                    .into_iter()
                    .map(|d| qs_proto::inventory::PciDevice {
                        vendor: None,
                        device: None,
                        ..d
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(unnamed(&recorded), unnamed(&replayed));
        assert_eq!(id_sources(&recorded), id_sources(&replayed));
    }

    #[test]
    fn a_missing_root_records_errors_and_still_returns() {
        let inventory = run_all(&SysRoot::new("/nonexistent-qs-root"), None);
        let failed: Vec<&str> = inventory
            .errors
            .iter()
            .map(|e| e.inspector.as_str())
            .collect();
        assert_eq!(
            failed,
            vec![
                "dmi",
                "cpu",
                "mem",
                "interfaces",
                "os_storage",
                "pci",
                "routes"
            ]
        );
        assert!(inventory
            .errors
            .iter()
            .all(|e| e.message.contains("/nonexistent-qs-root")));
    }
}
