//! Device hotplug: the kernel's uevents for network and block devices, so a disk or NIC that
//! appears or disappears is re-inspected without anyone asking.

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// Whether a uevent (NUL-separated `ACTION@DEVPATH`, then `KEY=VALUE` fields) is a network or
/// block device being added, removed or changed.
pub fn is_hardware_change(event: &[u8]) -> bool {
    let mut fields = event.split(|b| *b == 0);
    let Some(header) = fields.next() else {
        return false;
    };
    let action_ok = [&b"add@"[..], b"remove@", b"change@", b"move@"]
        .iter()
        .any(|a| header.starts_with(a));
    action_ok && fields.any(|f| f == b"SUBSYSTEM=net" || f == b"SUBSYSTEM=block")
}

/// Counts hardware uevents on a background thread; the receiver sees the count change.
/// Returns None when the kernel refuses the socket (not Linux, no permission).
pub fn watch() -> Option<watch::Receiver<u64>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .and_then(|fd| bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP)).map(|()| fd));
    let fd = match fd {
        Ok(fd) => fd,
        Err(error) => {
            warn!(error = %error, "cannot listen for device hotplug events");
            return None;
        }
    };
    let (tx, rx) = watch::channel(0u64);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => {
                    let event = &buf[..n];
                    if is_hardware_change(event) {
                        let header = event.split(|b| *b == 0).next().unwrap_or_default();
                        debug!(event = %String::from_utf8_lossy(header), "hotplug");
                        tx.send_modify(|count| *count += 1);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(error) => {
                    warn!(error = %error, "hotplug listening stopped");
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_net_and_block_add_remove_change() {
        let event = |s: &str| s.replace('|', "\0").into_bytes();
        assert!(is_hardware_change(&event(
            "add@/devices/virtual/net/veth0|ACTION=add|SUBSYSTEM=net|INTERFACE=veth0"
        )));
        assert!(is_hardware_change(&event("remove@/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda|ACTION=remove|SUBSYSTEM=block")));
        assert!(!is_hardware_change(&event(
            "add@/devices/virtual/misc/tun|ACTION=add|SUBSYSTEM=misc"
        )));
        assert!(!is_hardware_change(&event(
            "bind@/devices/pci0000:00/0000:00:03.0|SUBSYSTEM=net"
        )));
        assert!(!is_hardware_change(b""));
    }
}
