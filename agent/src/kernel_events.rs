//! What the kernel says changed: device hotplug (uevents for network and block devices) and
//! link state (rtnetlink: carrier up or down, addresses and routes coming and going), so the
//! inventory follows the machine without anyone asking.

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The kernel's uevent multicast group.
const UEVENT_GROUP: u32 = 1;
/// rtnetlink groups: links, IPv4 addresses, IPv4 routes, IPv6 addresses, IPv6 routes.
const ROUTE_GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;
/// RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE.
const ROUTE_MESSAGES: [u16; 6] = [16, 17, 20, 21, 24, 25];
/// Length of a netlink message header.
const NLMSG_HEADER: usize = 16;

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

/// Whether an rtnetlink datagram holds a link, address or route change. Carrier changes
/// arrive as RTM_NEWLINK with no flag in `ifi_change`, so every link message counts.
pub fn is_link_change(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HEADER {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if ROUTE_MESSAGES.contains(&kind) {
            return true;
        }
        // Messages are 4-byte aligned; a length that cannot be right ends the walk.
        let step = len.checked_add(3).map(|l| l & !3);
        match step {
            Some(step) if step >= NLMSG_HEADER && step <= rest.len() => rest = &rest[step..],
            _ => return false,
        }
    }
    false
}

/// Counts device hotplug events on a background thread; the receiver sees the count change.
/// None when the kernel refuses the socket (not Linux, no permission).
pub fn devices() -> Option<watch::Receiver<u64>> {
    listen(
        "device hotplug",
        SockProtocol::NetlinkKObjectUEvent,
        UEVENT_GROUP,
        is_hardware_change,
    )
}

/// Counts link, address and route changes on a background thread, like [`devices`].
pub fn links() -> Option<watch::Receiver<u64>> {
    listen(
        "link",
        SockProtocol::NetlinkRoute,
        ROUTE_GROUPS,
        is_link_change,
    )
}

fn listen(
    what: &'static str,
    protocol: SockProtocol,
    groups: u32,
    relevant: fn(&[u8]) -> bool,
) -> Option<watch::Receiver<u64>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )
    .and_then(|fd| bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map(|()| fd));
    let fd = match fd {
        Ok(fd) => fd,
        Err(error) => {
            warn!(error = %error, "cannot listen for {what} events");
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
                    if relevant(event) {
                        debug!(events = what, bytes = n, "kernel event");
                        tx.send_modify(|count| *count += 1);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                // A burst overflowed the socket buffer: something changed, look again.
                Err(nix::errno::Errno::ENOBUFS) => tx.send_modify(|count| *count += 1),
                Err(error) => {
                    warn!(error = %error, "{what} listening stopped");
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

    fn message(kind: u16, payload: usize) -> Vec<u8> {
        let len = (NLMSG_HEADER + payload) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(((len as usize) + 3) & !3, 0);
        m
    }

    #[test]
    fn link_address_and_route_messages_count() {
        assert!(is_link_change(&message(16, 16)), "RTM_NEWLINK");
        assert!(is_link_change(&message(21, 9)), "RTM_DELADDR");
        // A neighbour entry (RTM_NEWNEIGH) first, then a route in the same datagram.
        let mut both = message(28, 13);
        both.extend(message(24, 12));
        assert!(is_link_change(&both));
        assert!(!is_link_change(&message(28, 13)));
    }

    #[test]
    fn malformed_datagrams_are_not_changes() {
        assert!(!is_link_change(b""));
        assert!(!is_link_change(&[0xff; 15]));
        // A length of zero or one beyond the datagram stops the walk instead of looping.
        let mut zero = message(28, 0);
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(!is_link_change(&zero));
        let mut long = message(28, 0);
        long[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(!is_link_change(&long));
    }
}
