//! The iPXE scripts the boot server answers, and the controller address written into them.

/// Kernel command line of the agent image, before `qs.controller=`: the console on the first
/// screen and the first serial port (the last `console=` is where /init writes), and a quiet
/// kernel, since every line costs time on a slow serial console.
pub const KERNEL_ARGS: &str = "console=tty0 console=ttyS0,115200n8 quiet";

/// A Host header that cannot be written into a script or a kernel command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadHost {
    /// No Host header and no `--advertise`.
    #[error("the request has no Host header and no advertised controller address is set")]
    Missing,
    /// Characters outside a host name or address.
    #[error("the Host header {0:?} is not a host name or address")]
    Malformed(String),
}

/// `tcp://HOST:AGENT_PORT` from the HTTP Host header the request came to (`name`, `name:port`,
/// `1.2.3.4:port`, `[v6]:port`): the server reached us there, so it can reach the agent port there.
pub fn controller_from_host(host_header: &str, agent_port: u16) -> Result<String, BadHost> {
    let host = host_header.trim();
    if host.is_empty() {
        return Err(BadHost::Missing);
    }
    let malformed = || BadHost::Malformed(host.to_owned());
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(malformed)?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return Err(malformed());
        }
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(malformed());
        }
        format!("[{inner}]")
    } else {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return Err(malformed()),
            None => host,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(malformed());
        }
        name.to_owned()
    };
    Ok(format!("tcp://{name}:{agent_port}"))
}

/// `qs serve --advertise tcp://HOST:PORT`: checked as a script-safe host and a port.
pub fn parse_advertise(text: &str) -> Result<String, BadHost> {
    let malformed = || BadHost::Malformed(text.to_owned());
    let rest = text.strip_prefix("tcp://").ok_or_else(malformed)?;
    let (_, port) = rest.rsplit_once(':').ok_or_else(malformed)?;
    let port: u16 = port.parse().map_err(|_| malformed())?;
    controller_from_host(rest, port).map_err(|_| malformed())
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.chars().all(|c| c.is_ascii_digit())
}

/// The first answer to a bare `GET /boot/ipxe`: ask again, saying who is asking. A DHCP server
/// can then point every machine at the same URL. The URI is relative to this script's, and
/// holds no `:` (the MAC in `hexhyp` form, the serial URI-encoded): iPXE would take whatever
/// precedes a colon for a URI scheme. The UUID goes in its own text form: older iPXE builds
/// URI-encode a UUID's raw bytes under `:uristring`.
pub fn identify_script() -> String {
    "#!ipxe\n\
     # Quicksilver: say which machine this is, then get its boot script.\n\
     chain --autofree ipxe?mac=${netX/mac:hexhyp}&uuid=${uuid}&serial=${serial:uristring}\n"
        .to_owned()
}

/// Boots the agent image from this server's `vmlinuz` and `initramfs.img` (relative URIs, so
/// they come from wherever this script came from), with the controller's address and, when
/// given, its public key (base64: nothing to escape) for the agent to pin and a one-time
/// enrollment token (`qs.token=`; made of `[A-Za-z0-9_-]`, nothing to escape either).
pub fn agent_script(
    controller: &str,
    image_id: Option<&str>,
    host: Option<&str>,
    server_key: Option<&str>,
    token: Option<&str>,
) -> String {
    let mut script = String::from("#!ipxe\n");
    script.push_str(&format!(
        "# Quicksilver: boot the agent image{}{}\n",
        image_id.map(|id| format!(" {id}")).unwrap_or_default(),
        host.map(|h| format!(" on host {h}")).unwrap_or_default(),
    ));
    script.push_str("echo Quicksilver: loading the agent image\n");
    script.push_str(&format!(
        "kernel vmlinuz initrd=initramfs.img {KERNEL_ARGS} qs.controller={controller}{}\n",
        server_key
            .map(|key| format!(" qs.server_key={key}"))
            .unwrap_or_default()
            + &token
                .filter(|t| t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .map(|t| format!(" qs.token={t}"))
                .unwrap_or_default()
    ));
    script.push_str("initrd initramfs.img\n");
    script.push_str("boot\n");
    script
}

/// `script` with the value of its `qs.token=` replaced, for logs and status pages: a token is a
/// secret until it is used.
pub fn redact_token(script: &str) -> String {
    match script.find(" qs.token=") {
        None => script.to_owned(),
        Some(at) => {
            let start = at + " qs.token=".len();
            let end = script[start..]
                .find(|c: char| c.is_whitespace())
                .map_or(script.len(), |n| start + n);
            format!("{}<redacted>{}", &script[..start], &script[end..])
        }
    }
}

/// A provisioned host boots its own disk: `sanboot` the first BIOS disk, and where that is not
/// possible (UEFI, no boot sector) `exit` hands the machine back to the firmware's next boot
/// entry.
pub fn local_script(host: &str) -> String {
    format!(
        "#!ipxe\n\
         # Quicksilver: host {host} boots from its local disk\n\
         echo Quicksilver: booting from the local disk\n\
         sanboot --no-describe --drive 0x80 || exit 0\n"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_controller_is_where_the_request_came_to() {
        assert_eq!(
            controller_from_host("10.0.2.2:8080", 9002).unwrap(),
            "tcp://10.0.2.2:9002"
        );
        assert_eq!(
            controller_from_host("boot.example.net", 9002).unwrap(),
            "tcp://boot.example.net:9002"
        );
        assert_eq!(
            controller_from_host("[fd00::1]:80", 7).unwrap(),
            "tcp://[fd00::1]:7"
        );
        assert_eq!(controller_from_host(" ", 7), Err(BadHost::Missing));
        for bad in [
            "a b",
            "evil\nkernel x",
            "host:port",
            "[fd00::1",
            "[zz]:1",
            ":80",
            "a:1:2",
        ] {
            assert!(controller_from_host(bad, 7).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn advertised_addresses_are_tcp_host_port() {
        assert_eq!(
            parse_advertise("tcp://boot.example.net:9002").unwrap(),
            "tcp://boot.example.net:9002"
        );
        assert_eq!(
            parse_advertise("tcp://[fd00::1]:9002").unwrap(),
            "tcp://[fd00::1]:9002"
        );
        for bad in [
            "boot:9002",
            "tcp://boot",
            "tcp://boot:x",
            "tcp://a b:1",
            "tcp://:1",
        ] {
            assert!(parse_advertise(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_script_chains_kernel_and_initramfs_with_the_controller() {
        let script = agent_script(
            "tcp://10.0.2.2:9002",
            Some("qs-20261201"),
            Some("01abc"),
            None,
            None,
        );
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains(
            "kernel vmlinuz initrd=initramfs.img console=tty0 console=ttyS0,115200n8 quiet qs.controller=tcp://10.0.2.2:9002\n"
        ));
        assert!(script.contains("\ninitrd initramfs.img\nboot\n"));
        assert!(script.contains("qs-20261201 on host 01abc"));
        let with_token = agent_script(
            "tcp://10.0.2.2:9002",
            None,
            None,
            Some("KEY="),
            Some("qsb_0a1b_secret-Part_2"),
        );
        assert!(with_token.contains(" qs.server_key=KEY= qs.token=qsb_0a1b_secret-Part_2\n"));
        let redacted = redact_token(&with_token);
        assert!(!redacted.contains("secret"));
        assert!(redacted.contains(" qs.token=<redacted>\n"));
        // Anything that could break out of the command line is left out.
        assert!(!agent_script("tcp://h:1", None, None, None, Some("a b")).contains("qs.token"));
    }

    #[test]
    fn local_script_sanboots_or_exits() {
        let script = local_script("01abc");
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("sanboot --no-describe --drive 0x80 || exit 0\n"));
        assert!(!script.contains("kernel"));
    }

    #[test]
    fn identify_script_asks_again_with_the_machine_s_identifiers() {
        let script = identify_script();
        let uri = script
            .lines()
            .find_map(|l| l.strip_prefix("chain --autofree "))
            .unwrap();
        assert_eq!(
            uri,
            "ipxe?mac=${netX/mac:hexhyp}&uuid=${uuid}&serial=${serial:uristring}"
        );
        // iPXE takes whatever precedes the first colon for a URI scheme: once expanded, the
        // relative URI must hold none (hexhyp MACs use hyphens, uristring encodes colons).
        let expanded = uri
            .replace("${netX/mac:hexhyp}", "52-54-00-12-34-56")
            .replace("${uuid}", "5f2c1a3e-8b4d-4c6a-9e21-0a1b2c3d4e5f")
            .replace("${serial:uristring}", "QSG-0001");
        assert!(!expanded.contains(':'), "{expanded}");
    }
}
