//! LLDP neighbours: listen on every up interface for a bounded time and decode what the switch
//! announces (chassis, port, names, VLAN, MTU, management address).
//!
//! Listening needs the live machine and raw sockets (root); decoding ([`parse_frame`]) is pure
//! and tested on real captures from switches.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use qs_proto::inventory::LldpNeighbor;

use crate::{SysRoot, SysRootError};

const ETHERTYPE_LLDP: u16 = 0x88cc;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Why LLDP could not be listened to.
#[derive(Debug, thiserror::Error)]
pub enum LldpError {
    /// Listening needs the running machine, not a captured tree.
    #[error("LLDP listening needs the live machine (root is a captured tree)")]
    NotLive,
    /// The interface list could not be read.
    #[error("cannot list interfaces to listen on")]
    Interfaces(#[source] SysRootError),
    /// A raw socket could not be opened on an interface.
    #[error("cannot listen on {interface}")]
    Socket {
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn tlvs(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let header = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
        let (kind, len) = ((header >> 9) as u8, usize::from(header & 0x1ff));
        let value = data.get(2..2 + len)?;
        data = &data[2 + len..];
        (kind != 0).then_some((kind, value))
    })
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\0')
        .trim()
        .to_owned()
}

fn address(bytes: &[u8]) -> Option<String> {
    let (family, addr) = bytes.split_first()?;
    match (family, addr.len()) {
        (1, 4) => Some(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()),
        (2, 16) => <[u8; 16]>::try_from(addr)
            .ok()
            .map(|a| Ipv6Addr::from(a).to_string()),
        _ => None,
    }
}

/// An id TLV (chassis or port): subtype byte, then a MAC, an address, or text.
fn id(value: &[u8], mac_subtype: u8, address_subtype: u8) -> Option<String> {
    let (subtype, rest) = value.split_first()?;
    Some(if *subtype == mac_subtype && rest.len() == 6 {
        mac(rest)
    } else if *subtype == address_subtype {
        address(rest).unwrap_or_else(|| text(rest))
    } else {
        text(rest)
    })
}

/// Decodes one Ethernet frame; `Ok(None)` when it is not LLDP or lacks the mandatory TLVs.
pub fn parse_frame(interface: &str, frame: &[u8]) -> Option<LldpNeighbor> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut payload = frame.get(14..)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]);
        payload = payload.get(4..)?;
    }
    if ethertype != ETHERTYPE_LLDP {
        return None;
    }
    let mut n = LldpNeighbor {
        interface: interface.to_owned(),
        ..LldpNeighbor::default()
    };
    for (kind, value) in tlvs(payload) {
        match kind {
            1 => n.chassis_id = id(value, 4, 5)?,
            2 => n.port_id = id(value, 3, 4)?,
            4 => n.port_description = Some(text(value)),
            5 => n.system_name = Some(text(value)),
            6 => n.system_description = Some(text(value)),
            8 => {
                // Address string length (subtype byte included), then subtype and address.
                let len = usize::from(*value.first()?);
                if n.management_address.is_none() {
                    n.management_address = value.get(1..1 + len).and_then(address);
                }
            }
            127 if value.len() >= 4 => match (&value[..3], value[3]) {
                ([0x00, 0x80, 0xc2], 1) => {
                    n.vlan = value
                        .get(4..6)
                        .map(|v| u16::from_be_bytes([v[0], v[1]]))
                        .filter(|v| *v != 0);
                }
                ([0x00, 0x12, 0x0f], 4) => {
                    n.mtu = value.get(4..6).map(|v| u16::from_be_bytes([v[0], v[1]]));
                }
                _ => {}
            },
            _ => {}
        }
    }
    (!n.chassis_id.is_empty() && !n.port_id.is_empty()).then_some(n)
}

/// The interfaces LLDP is listened for on: every up one but loopback, sorted.
pub fn up_interfaces(root: &SysRoot) -> Result<Vec<String>, LldpError> {
    Ok(root
        .read_dir("sys/class/net")
        .map_err(LldpError::Interfaces)?
        .into_iter()
        .filter(|n| n != "lo")
        .filter(|n| {
            root.read_trimmed(&format!("sys/class/net/{n}/operstate"))
                .is_ok_and(|s| s == "up")
        })
        .collect())
}

/// Listens on every up, non-loopback interface for `window` and returns the last neighbour
/// heard on each, sorted by interface.
pub fn listen(root: &SysRoot, window: Duration) -> Result<Vec<LldpNeighbor>, LldpError> {
    if !root.is_live() {
        return Err(LldpError::NotLive);
    }
    listen_on(&up_interfaces(root)?, window)
}

/// Listens on the named interfaces of this machine for `window`, as [`listen`] does.
pub fn listen_on(names: &[String], window: Duration) -> Result<Vec<LldpNeighbor>, LldpError> {
    let all = pnet_datalink::interfaces();
    // Frames this host sends (its own LLDP daemon) show up on the socket too.
    let own: Vec<[u8; 6]> = all
        .iter()
        .filter_map(|i| i.mac.map(|m| m.octets()))
        .collect();
    let own = &own;
    let interfaces: Vec<pnet_datalink::NetworkInterface> = all
        .into_iter()
        .filter(|i| names.contains(&i.name))
        .collect();
    let results: Vec<Result<Option<LldpNeighbor>, LldpError>> = std::thread::scope(|s| {
        let handles: Vec<_> = interfaces
            .iter()
            .map(|iface| s.spawn(move || listen_one(iface, window, own)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(None)))
            .collect()
    });
    let mut heard = BTreeMap::new();
    for result in results {
        if let Some(n) = result? {
            heard.insert(n.interface.clone(), n);
        }
    }
    Ok(heard.into_values().collect())
}

fn listen_one(
    iface: &pnet_datalink::NetworkInterface,
    window: Duration,
    own: &[[u8; 6]],
) -> Result<Option<LldpNeighbor>, LldpError> {
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(200)),
        ..pnet_datalink::Config::default()
    };
    let socket_error = |source| LldpError::Socket {
        interface: iface.name.clone(),
        source,
    };
    let mut rx = match pnet_datalink::channel(iface, config).map_err(socket_error)? {
        pnet_datalink::Channel::Ethernet(_, rx) => rx,
        _ => return Ok(None),
    };
    let deadline = Instant::now() + window;
    let mut last = None;
    while Instant::now() < deadline {
        match rx.next() {
            Ok(frame) if sent_by_us(frame, own) => {}
            Ok(frame) => {
                if let Some(n) = parse_frame(&iface.name, frame) {
                    last = Some(n);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(socket_error(e)),
        }
    }
    Ok(last)
}

/// Whether a frame's source MAC is one of this host's.
fn sent_by_us(frame: &[u8], own: &[[u8; 6]]) -> bool {
    frame
        .get(6..12)
        .is_some_and(|source| own.iter().any(|mac| mac[..] == *source))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// The Ethernet frames of a classic pcap file.
    pub(crate) fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut reader = pcap_file::pcap::PcapReader::new(bytes).unwrap();
        let mut frames = Vec::new();
        while let Some(packet) = reader.next_packet() {
            frames.push(packet.unwrap().data.into_owned());
        }
        frames
    }

    fn fixture(name: &str) -> Vec<Vec<u8>> {
        let path = format!("{}/fixtures/shared/lldp/{name}", env!("CARGO_MANIFEST_DIR"));
        pcap_frames(&std::fs::read(path).unwrap())
    }

    #[test]
    fn frames_from_this_host_are_not_neighbours() {
        let frame = fixture("cisco-sg200.lldp.pcap").remove(0);
        let switch: [u8; 6] = frame[6..12].try_into().unwrap();
        assert!(sent_by_us(&frame, &[[2, 0, 0, 0, 0, 1], switch]));
        assert!(!sent_by_us(&frame, &[[2, 0, 0, 0, 0, 1]]));
        assert!(!sent_by_us(&frame[..8], &[switch]));
    }

    #[test]
    fn cisco_sg200() {
        let n = parse_frame("eth0", &fixture("cisco-sg200.lldp.pcap")[0]).unwrap();
        assert_eq!(n.interface, "eth0");
        assert_eq!(
            (n.chassis_id.as_str(), n.port_id.as_str()),
            ("00:35:35:35:35:35", "g1")
        );
    }

    #[test]
    fn cisco_c3560_lldp_among_cdp() {
        let frames = fixture("cisco-c3560.lldp-and-cdp.pcap");
        let neighbours: Vec<LldpNeighbor> = frames
            .iter()
            .filter_map(|f| parse_frame("eno1", f))
            .collect();
        assert!(!neighbours.is_empty());
        assert!(neighbours.len() < frames.len(), "CDP frames are not LLDP");
        let n = &neighbours[0];
        assert_eq!(n.chassis_id, "00:19:2f:a7:b2:8d");
        assert_eq!(n.port_id, "Uplink to S1");
        assert_eq!(n.port_description.as_deref(), Some("GigabitEthernet0/13"));
        assert_eq!(n.system_name.as_deref(), Some("S2.cisco.com"));
        assert_eq!(n.vlan, Some(1));
    }

    #[test]
    fn every_capture_decodes() {
        for name in ["mudurl.lldp.pcap", "poe-8023bt.lldp.pcap"] {
            let frames = fixture(name);
            assert!(
                frames.iter().any(|f| parse_frame("x", f).is_some()),
                "{name}"
            );
        }
        // tcpdump's link-aggregation sample carries only an 802.1 TLV: no chassis or port id,
        // so it is not a neighbour announcement.
        assert!(fixture("8021-linkagg.lldp.pcap")
            .iter()
            .all(|f| parse_frame("x", f).is_none()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_frame("x", &frame);
        }

        #[test]
        fn mutated_captures_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut frame = fixture("cisco-sg200.lldp.pcap").remove(0);
            let i = at.index(frame.len());
            frame[i] = byte;
            frame.truncate(cut.index(frame.len() + 1));
            let _ = parse_frame("x", &frame);
        }
    }
}
