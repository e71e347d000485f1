//! Routes and default gateways from `/proc/net/route` and `/proc/net/ipv6_route`.

use std::net::{Ipv4Addr, Ipv6Addr};

use qs_proto::inventory::{Route, Routes};

use crate::{SysRoot, SysRootError};

/// Why routes could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The IPv4 table could not be read.
    #[error("cannot read the IPv4 routing table")]
    Read(#[source] SysRootError),
}

/// Reads both routing tables (IPv6 only when the kernel has it).
pub fn inspect(root: &SysRoot) -> Result<Routes, RoutesError> {
    let v4 = root
        .read_to_string("proc/net/route")
        .map_err(RoutesError::Read)?;
    let v6 = root
        .read_to_string("proc/net/ipv6_route")
        .unwrap_or_default();
    Ok(parse(&v4, &v6))
}

/// Parses both tables.
pub fn parse(v4: &str, v6: &str) -> Routes {
    let mut routes: Vec<Route> = v4.lines().skip(1).filter_map(parse_v4).collect();
    routes.extend(v6.lines().filter_map(parse_v6));
    let default = |v6: bool| {
        routes
            .iter()
            .filter(|r| r.destination == if v6 { "::/0" } else { "0.0.0.0/0" })
            .filter_map(|r| r.gateway.clone().map(|g| (r.metric, g)))
            .min()
            .map(|(_, g)| g)
    };
    Routes {
        default_gateway: default(false),
        default_gateway6: default(true),
        routes,
    }
}

/// `/proc/net/route` writes addresses as host-order (little-endian) hex.
fn v4_addr(hex: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(hex, 16)
        .ok()
        .map(|n| Ipv4Addr::from(n.swap_bytes()))
}

fn parse_v4(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (iface, dest, gateway, flags, metric, mask) = (
        f.first()?,
        f.get(1)?,
        f.get(2)?,
        f.get(3)?,
        f.get(6)?,
        f.get(7)?,
    );
    let flags = u16::from_str_radix(flags, 16).ok()?;
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    if flags & RTF_UP == 0 {
        return None;
    }
    let prefix = u32::from(v4_addr(mask)?).count_ones();
    Some(Route {
        destination: format!("{}/{prefix}", v4_addr(dest)?),
        gateway: (flags & RTF_GATEWAY != 0)
            .then(|| v4_addr(gateway).map(|g| g.to_string()))
            .flatten(),
        interface: (*iface).to_owned(),
        metric: metric.parse().ok()?,
    })
}

fn v6_addr(hex: &str) -> Option<Ipv6Addr> {
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// `dest plen src plen gateway metric refcnt use flags iface`.
fn parse_v6(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let flags = u32::from_str_radix(f[8], 16).ok()?;
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    // The local and loopback entries of the kernel's table say nothing about the network.
    if flags & RTF_UP == 0 || f[9] == "lo" {
        return None;
    }
    let gateway = v6_addr(f[4])?;
    Some(Route {
        destination: format!("{}/{}", v6_addr(f[0])?, u8::from_str_radix(f[1], 16).ok()?),
        gateway: (flags & RTF_GATEWAY != 0 && !gateway.is_unspecified())
            .then(|| gateway.to_string()),
        interface: f[9].to_owned(),
        metric: u32::from_str_radix(f[5], 16).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    const V6: &str = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n";

    #[test]
    fn parses_both_tables_and_finds_the_gateways() {
        let r = parse(V4, V6);
        assert_eq!(r.default_gateway.as_deref(), Some("192.0.2.1"));
        assert_eq!(r.default_gateway6.as_deref(), Some("fd00::1"));
        let dests: Vec<&str> = r.routes.iter().map(|r| r.destination.as_str()).collect();
        assert_eq!(
            dests,
            vec!["0.0.0.0/0", "192.0.2.0/24", "fd00::/64", "::/0"]
        );
        assert_eq!(r.routes[3].metric, 1024);
        assert!(parse("garbage", "more garbage").routes.is_empty());
    }
}
