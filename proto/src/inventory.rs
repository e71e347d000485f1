//! The typed inventory the inspectors produce.
//!
//! Its JSON form is the inventory document operators query: `mercury_id` at the top level, one
//! key per inspector that ran (absent when it did not), and `errors` for inspectors that failed.
//! Optional fields are left out when unknown, never filled with placeholders.

use serde::{Deserialize, Serialize};

/// A server's inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The server's MercuryId, when one could be derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mercury_id: Option<String>,
    /// Firmware identity (SMBIOS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmi: Option<Dmi>,
    /// Processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Mem>,
    /// Network interfaces, sorted by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    /// PCI devices, sorted by address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<Vec<PciDevice>>,
    /// IPv4 and IPv6 routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Routes>,
    /// Block devices the OS sees (disks, NVMe namespaces), with partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_storage: Option<Vec<BlockDevice>>,
    /// LLDP neighbours heard on each up interface, when the agent listened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lldp: Option<Vec<LldpNeighbor>>,
    /// RAID controllers and software RAID arrays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<Raid>,
    /// The baseboard management controller, or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<Bmc>,
    /// Inspectors that failed, with why.
    #[serde(default)]
    pub errors: Vec<InspectorError>,
}

/// An inspector's failure, recorded instead of aborting the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectorError {
    /// The inspector's name (`dmi`, `cpu` …).
    pub inspector: String,
    /// The error and its causes, joined with ": ".
    pub message: String,
}

/// Where DMI values were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmiSource {
    /// The raw SMBIOS tables (`/sys/firmware/dmi/tables`).
    Smbios,
    /// The kernel's decoded values (`/sys/class/dmi/id`).
    Sysfs,
}

/// SMBIOS identity; keys are the `/sys/class/dmi/id` file names, as Mercury stored them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Dmi {
    /// Where the values came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DmiSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_asset_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_serial: Option<String>,
    /// SMBIOS chassis type number, as the kernel shows it (e.g. "23" for rack mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_sku: Option<String>,
    /// System UUID in Linux's form: lowercase 8-4-4-4-12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sys_vendor: Option<String>,
    /// Memory slots (SMBIOS type 17), installed or empty; raw tables only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_devices: Vec<MemoryDevice>,
    /// Processor sockets (SMBIOS type 4); raw tables only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<Processor>,
    /// The BMC's system interface as the firmware declares it (SMBIOS type 38); raw tables only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi_device: Option<IpmiDevice>,
}

/// How the host talks to its BMC, per SMBIOS type 38.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmiDevice {
    /// `KCS`, `SMIC`, `BT`, `SSIF` or `unknown`.
    pub interface: String,
    /// IPMI specification revision, e.g. `2.0`.
    pub spec_version: String,
    /// Base address of the interface (I/O port or memory address, as `address_space` says).
    pub base_address: u64,
    /// `io` or `memory`.
    pub address_space: String,
    /// I2C target address of the BMC in the 8-bit form IPMI uses (`0x20`); dmidecode prints
    /// the 7-bit form (`0x10`).
    pub i2c_address: u8,
}

/// A memory slot and the module in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDevice {
    /// Slot name on the board, e.g. `DIMM_A1`.
    pub locator: String,
    /// Bank name, when the firmware gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_locator: Option<String>,
    /// Module size in bytes; 0 for an empty slot.
    pub size: u64,
    /// Memory type, e.g. `DDR4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_type: Option<String>,
    /// Rated speed in MT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<u32>,
    /// Configured speed in MT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_speed: Option<u32>,
    /// Module manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Module serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Module part number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_number: Option<String>,
}

/// A processor socket as the firmware describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processor {
    /// Socket name, e.g. `CPU1`.
    pub socket: String,
    /// Manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Model string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Maximum speed in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_speed: Option<u32>,
    /// Current speed in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_speed: Option<u32>,
    /// Cores in this socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Threads in this socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// Processors, from `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Model name of the first processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Vendor id (`GenuineIntel`, `AuthenticAMD` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Populated sockets.
    pub sockets: u32,
    /// Physical cores across all sockets.
    pub cores: u32,
    /// Logical processors.
    pub threads: u32,
    /// Feature flags of the first processor, sorted.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Highest frequency the kernel may run the first CPU at, in MHz (cpufreq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mhz: Option<u32>,
    /// Lowest frequency, in MHz (cpufreq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_mhz: Option<u32>,
    /// The first CPU's caches, by level and type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<CpuCache>,
    /// NUMA nodes and their CPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa_nodes: Vec<CpuNumaNode>,
}

/// One cache as the first CPU sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCache {
    /// 1, 2, 3 …
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    #[serde(rename = "type")]
    pub cache_type: String,
    /// Size in bytes.
    pub size: u64,
    /// CPUs sharing it (kernel list syntax, e.g. `0-15`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_cpus: Option<String>,
}

/// A NUMA node's CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuNumaNode {
    /// Node number.
    pub id: u32,
    /// Its CPUs (kernel list syntax, e.g. `0-15,32-47`).
    pub cpus: String,
}

/// Memory, from `/proc/meminfo`; sizes in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mem {
    /// Memory the kernel manages (MemTotal).
    pub total: u64,
    /// Swap configured (SwapTotal).
    #[serde(default)]
    pub swap_total: u64,
    /// Memory per NUMA node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa_nodes: Vec<MemNumaNode>,
    /// Huge pages reserved (HugePages_Total), of `hugepage_size` bytes each.
    #[serde(default)]
    pub hugepages: u64,
    /// Default huge page size in bytes (Hugepagesize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Installed memory modules, from the `dmi` inspector's SMBIOS memory devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimms: Vec<MemoryDevice>,
}

/// One network interface, from `/sys/class/net`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Kernel name.
    pub name: String,
    /// Current MAC address, as sysfs names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Permanent MAC when it differs from the current one (bond slaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent_address: Option<String>,
    /// MTU in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// RFC 2863 operational state (`up`, `down` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operstate: Option<String>,
    /// Whether the link has carrier, when the kernel can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
    /// Link speed in Mb/s, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<u32>,
    /// Kernel driver bound to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// PCI address of the device or of its nearest PCI ancestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// Port number on a multi-port device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_port: Option<u32>,
    /// Backed by a device (not lo, bridges, bonds, VLANs, veth, tun) with a non-zero MAC.
    pub physical: bool,
    /// Physical and labelled onboard by the firmware (`acpi_index` or `index`).
    pub onboard: bool,
    /// IP addresses with prefix length, e.g. `10.0.0.5/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Kernel device type of a virtual interface (`bond`, `bridge`, `vlan` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The bond or bridge this interface is enslaved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Bonding settings, for a bond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<Bond>,
    /// VLAN settings, for a VLAN interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vlan>,
    /// NIC firmware version (`ethtool -i`), when ethtool is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Offloads switched on (`ethtool -k`), sorted, when ethtool is installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offloads: Vec<String>,
}

/// A bond's mode and members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bond {
    /// Bonding mode, e.g. `802.3ad`, `active-backup`.
    pub mode: String,
    /// Member interfaces.
    #[serde(default)]
    pub slaves: Vec<String>,
}

/// A VLAN interface's tag and parent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vlan {
    /// 802.1Q VLAN id.
    pub id: u16,
    /// The interface it is stacked on.
    pub parent: String,
}

/// RAID: hardware controllers (storcli, ssacli) and Linux software RAID (md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Raid {
    /// Hardware RAID controllers, in the order their tools list them.
    #[serde(default)]
    pub controllers: Vec<RaidController>,
    /// Software RAID arrays from `/proc/mdstat`, sorted by name.
    #[serde(default)]
    pub md: Vec<MdArray>,
}

/// A hardware RAID controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaidController {
    /// The tool that reported it: `storcli` or `ssacli`.
    pub tool: String,
    /// The tool's controller id (storcli number, ssacli slot).
    pub id: String,
    /// Controller model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Controller serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Controller status as the tool words it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Logical drives (virtual drives).
    #[serde(default)]
    pub logical_drives: Vec<LogicalDrive>,
    /// Physical drives behind the controller.
    #[serde(default)]
    pub physical_drives: Vec<PhysicalDrive>,
}

/// A logical drive of a hardware RAID controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalDrive {
    /// The tool's id (storcli `DG/VD`, ssacli logical drive number).
    pub id: String,
    /// RAID level, e.g. `RAID6`, `RAID1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_level: Option<String>,
    /// Size in bytes (the tools print binary units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// State as the tool words it (`Optl`, `OK`, `Degraded` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Label or name, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Linux block device, when the tool says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A physical drive behind a hardware RAID controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalDrive {
    /// Location: storcli `enclosure:slot`, ssacli `port:box:bay`.
    pub id: String,
    /// Drive model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Drive serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Size in bytes, as the tool reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// State as the tool words it (`Onln`, `OK`, `Failed` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Interface: SATA, SAS, NVMe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Media: HDD or SSD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
}

/// A Linux software RAID array.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MdArray {
    /// Kernel name, e.g. `md0`.
    pub name: String,
    /// `active` or `inactive`.
    pub state: String,
    /// Read-only or auto-read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Personality: raid0, raid1, raid5, raid6, raid10, linear …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Array size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Devices the array should have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_disks: Option<u32>,
    /// Devices working now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_disks: Option<u32>,
    /// True when fewer devices work than the array should have.
    #[serde(default)]
    pub degraded: bool,
    /// Member devices.
    #[serde(default)]
    pub members: Vec<MdMember>,
    /// A resync, recovery, check or reshape in progress (or pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<MdSync>,
}

/// One member device of an md array.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdMember {
    /// Block device name, e.g. `sda1`.
    pub device: String,
    /// Role number in the array.
    pub index: u32,
    /// `active`, `faulty`, `spare`, `write_mostly` or `replacement`.
    pub state: String,
}

/// Background work on an md array.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MdSync {
    /// resync, recovery, check, reshape, repair.
    pub action: String,
    /// Percent done, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f32>,
    /// `DELAYED` or `PENDING` when waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// One PCI function, from `/sys/bus/pci/devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Domain:bus:device.function, e.g. `0000:3b:00.0`.
    pub address: String,
    /// Class code, six hex digits (`020000` is an Ethernet controller).
    pub class: String,
    /// Vendor id, four hex digits.
    pub vendor_id: String,
    /// Device id, four hex digits.
    pub device_id: String,
    /// Subsystem vendor id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_vendor_id: Option<String>,
    /// Subsystem device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_device_id: Option<String>,
    /// Revision, two hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Vendor name from the pci.ids database, when it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Device name from the pci.ids database, when it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Kernel driver bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// NUMA node, when the platform says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// Negotiated PCIe link speed, e.g. `8.0 GT/s PCIe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_speed: Option<String>,
    /// Negotiated PCIe link width (lanes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_width: Option<u32>,
    /// Fastest link speed the device supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_link_speed: Option<String>,
    /// Widest link the device supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_link_width: Option<u32>,
}

/// Routing tables, from `/proc/net/route` and `/proc/net/ipv6_route`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// The IPv4 default gateway, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_gateway: Option<String>,
    /// The IPv6 default gateway, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_gateway6: Option<String>,
    /// Every route the kernel lists (IPv6 includes its local-table entries).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination with prefix length, e.g. `0.0.0.0/0`, `fd00::/64`.
    pub destination: String,
    /// Next hop, when the route has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Outgoing interface.
    pub interface: String,
    /// Route metric.
    pub metric: u32,
}

/// A disk or NVMe namespace, from `/sys/block`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, e.g. `sda`, `nvme0n1`, `vda`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_sector_size: Option<u32>,
    /// Physical sector size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_sector_size: Option<u32>,
    /// Spinning media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// Removable media.
    #[serde(default)]
    pub removable: bool,
    /// Model as the device reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// World wide name (`naa.…`, `eui.…`, `t10.…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// How it is attached: sata, sas, nvme, virtio, usb, scsi, mmc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Partitions, by number.
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Devices built on this one (md arrays, device-mapper), from `holders/`.
    #[serde(default)]
    pub holders: Vec<String>,
    /// Health from `smartctl -j -a`, when smartctl is installed and the device answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<Smart>,
}

/// A drive's health as smartctl reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smart {
    /// The drive's overall self-assessment passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Temperature in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<i64>,
    /// Hours powered on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_hours: Option<u64>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// NVMe endurance used, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage_used: Option<u64>,
    /// smartctl's exit status bits (non-zero: something smartctl wants an operator to see).
    #[serde(default)]
    pub exit_status: u64,
}

/// A partition of a block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Kernel name, e.g. `sda1`.
    pub name: String,
    /// Partition number.
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Devices built on this partition.
    #[serde(default)]
    pub holders: Vec<String>,
}

/// What a switch port announced over LLDP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LldpNeighbor {
    /// Our interface that heard it.
    pub interface: String,
    /// The neighbour's chassis id (a MAC address, network address or local name).
    pub chassis_id: String,
    /// The neighbour's port id (interface name, MAC or local id).
    pub port_id: String,
    /// Port description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_description: Option<String>,
    /// System name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_name: Option<String>,
    /// System description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_description: Option<String>,
    /// Port VLAN id (IEEE 802.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Maximum frame size (IEEE 802.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Management address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_address: Option<String>,
}

/// A NUMA node's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemNumaNode {
    /// Node number.
    pub id: u32,
    /// Memory on the node, in bytes.
    pub total: u64,
}

/// The baseboard management controller: present with what `ipmitool` reports, or absent with
/// the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bmc {
    /// Whether the host has an IPMI device to talk to its BMC through.
    pub present: bool,
    /// Why there is no BMC (or why nothing could be learned from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The host's IPMI device, e.g. `/dev/ipmi0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Identity and firmware (`ipmitool mc info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<BmcFirmware>,
    /// LAN configuration of the BMC's own network port (`ipmitool lan print`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<BmcLan>,
    /// Configured users, never their passwords (`ipmitool user list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<BmcUser>>,
}

/// The BMC's identity and firmware, from Get Device ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcFirmware {
    /// Device ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<u8>,
    /// Device revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_revision: Option<u8>,
    /// Firmware revision, e.g. `2.61`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_revision: Option<String>,
    /// IPMI version the BMC implements, e.g. `2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi_version: Option<String>,
    /// IANA enterprise number of the manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer_id: Option<u32>,
    /// Manufacturer name, when ipmitool knows the number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer_name: Option<String>,
    /// Product ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<u32>,
    /// Product name, when ipmitool knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Auxiliary firmware revision bytes, e.g. `0x00 0x01 0xb4 0x0a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_firmware_revision: Option<String>,
    /// Functions the BMC provides (`Sensor Device`, `SEL Device` …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_device_support: Vec<String>,
}

/// The BMC's LAN channel configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcLan {
    /// `static`, `dhcp`, `bios` or `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_source: Option<String>,
    /// IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// IPv4 netmask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_mask: Option<String>,
    /// MAC address of the BMC's port, lowercase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_gateway_ip: Option<String>,
    /// Default gateway's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_gateway_mac: Option<String>,
    /// 802.1q VLAN the port tags with; absent when tagging is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// RMCP+ cipher suites offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<u8>,
    /// Authentication types supported (`MD5`, `PASSWORD` …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_types: Vec<String>,
}

/// A user configured on the BMC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcUser {
    /// User slot.
    pub id: u8,
    /// Login name.
    pub name: String,
    /// Whether the user may be called in (callback restriction off).
    pub callin: bool,
    /// Whether link authentication is enabled.
    pub link_auth: bool,
    /// Whether IPMI messaging is enabled.
    pub ipmi_messaging: bool,
    /// Channel privilege limit, e.g. `ADMINISTRATOR` or `NO ACCESS`.
    pub privilege: String,
}
