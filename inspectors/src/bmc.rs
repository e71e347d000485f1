//! The baseboard management controller, through the host's IPMI device and `ipmitool`.
//!
//! Finding the device is quick and part of every inspection ([`presence`]); asking the BMC is
//! slow (a KCS interface answers a few commands a second, `user list` takes one round trip
//! per slot), so [`add_details`] runs with the other slow facts and never delays the rest.
//! Each `ipmitool` parser is tested on real output.

use qs_proto::inventory::{Bmc, BmcFirmware, BmcLan, BmcUser, InspectorError};

use crate::SysRoot;

const IPMI_CLASS: &str = "sys/class/ipmi";
/// A healthy BMC answers each of these commands within seconds; a wedged one would otherwise
/// hold the slow facts (SMART health among them) for ipmitool's own minutes of retries.
const IPMITOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the host has an IPMI device, and which; the reason when it has none.
pub fn presence(root: &SysRoot) -> Bmc {
    // ipmi_devintf creates one class entry (and /dev node) per BMC interface.
    let mut devices: Vec<String> = root
        .read_dir(IPMI_CLASS)
        .unwrap_or_default()
        .into_iter()
        .filter(|name| name.starts_with("ipmi"))
        .collect();
    devices.sort();
    match devices.first() {
        Some(name) => Bmc {
            present: true,
            device: Some(format!("/dev/{name}")),
            ..Bmc::default()
        },
        None => Bmc {
            present: false,
            reason: Some(format!(
                "no IPMI device: /{IPMI_CLASS} lists none (no BMC, or the ipmi_si and \
                 ipmi_devintf modules are not loaded)"
            )),
            ..Bmc::default()
        },
    }
}

/// Asks the BMC for its firmware, LAN configuration and users. What one command cannot tell
/// (a BMC without LAN, or a simulator without user commands) is recorded in `errors` and the
/// rest is still reported.
pub fn add_details(root: &SysRoot, bmc: &mut Bmc, errors: &mut Vec<InspectorError>) {
    if !bmc.present {
        return;
    }
    // Ok(None): ipmitool is not installed; Err: the BMC did not answer this command.
    let mut ask = |args: &[&str]| -> Result<Option<String>, ()> {
        root.run_within("ipmitool", args, IPMITOOL_TIMEOUT)
            .map_err(|error| {
                let message = format!("ipmitool {}: {}", args.join(" "), crate::chain(&error));
                tracing::warn!(error = %message, "BMC command failed");
                errors.push(InspectorError {
                    inspector: "bmc".to_owned(),
                    message,
                });
            })
    };
    match ask(&["mc", "info"]) {
        Ok(Some(out)) => bmc.firmware = Some(parse_mc_info(&out)),
        Ok(None) => {
            bmc.reason = Some("ipmitool is not installed".to_owned());
            return;
        }
        Err(()) => {}
    }
    bmc.lan = ask(&["lan", "print"])
        .ok()
        .flatten()
        .map(|out| parse_lan_print(&out));
    bmc.users = ask(&["user", "list"])
        .ok()
        .flatten()
        .map(|out| parse_user_list(&out));
}

/// `Key : value` lines; a value-less key followed by indented lines is a list.
fn key_values(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut fields: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) && !line.trim_start().starts_with(':') {
            if let Some(last) = fields.last_mut() {
                let item = line.trim();
                if !item.is_empty() {
                    last.2.push(item.to_owned());
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        // `                        : User     : MD5` continues the line above; nothing we keep.
        if key.is_empty() {
            continue;
        }
        fields.push((key.to_owned(), value.trim().to_owned(), Vec::new()));
    }
    fields
}

/// `Unknown (0x168B)` is ipmitool admitting it does not know the name.
fn known_name(value: &str) -> Option<String> {
    (!value.is_empty() && !value.starts_with("Unknown")).then(|| value.to_owned())
}

/// The number before an optional `(0x…)`: `256 (0x0100)` → 256.
fn leading_number<T: std::str::FromStr>(value: &str) -> Option<T> {
    value.split_whitespace().next()?.parse().ok()
}

/// Parses `ipmitool mc info` (Get Device ID).
pub fn parse_mc_info(text: &str) -> BmcFirmware {
    let mut firmware = BmcFirmware::default();
    for (key, value, list) in key_values(text) {
        match key.as_str() {
            "Device ID" => firmware.device_id = leading_number(&value),
            "Device Revision" => firmware.device_revision = leading_number(&value),
            "Firmware Revision" => firmware.firmware_revision = known_name(&value),
            "IPMI Version" => firmware.ipmi_version = known_name(&value),
            "Manufacturer ID" => firmware.manufacturer_id = leading_number(&value),
            "Manufacturer Name" => firmware.manufacturer_name = known_name(&value),
            "Product ID" => firmware.product_id = leading_number(&value),
            "Product Name" => firmware.product_name = known_name(&value),
            "Additional Device Support" => firmware.additional_device_support = list,
            "Aux Firmware Rev Info" if !list.is_empty() => {
                firmware.aux_firmware_revision = Some(list.join(" "));
            }
            _ => {}
        }
    }
    firmware
}

/// Parses `ipmitool lan print`.
pub fn parse_lan_print(text: &str) -> BmcLan {
    let mut lan = BmcLan::default();
    let address = |value: &str| (!value.is_empty()).then(|| value.to_ascii_lowercase());
    for (key, value, _) in key_values(text) {
        match key.as_str() {
            "IP Address Source" => {
                lan.ip_source = Some(
                    match value.as_str() {
                        "Static Address" => "static",
                        "DHCP Address" => "dhcp",
                        "BIOS Assigned Address" => "bios",
                        _ => "other",
                    }
                    .to_owned(),
                );
            }
            "IP Address" => lan.ip_address = address(&value),
            "Subnet Mask" => lan.subnet_mask = address(&value),
            "MAC Address" => lan.mac_address = address(&value),
            "Default Gateway IP" => lan.default_gateway_ip = address(&value),
            "Default Gateway MAC" => lan.default_gateway_mac = address(&value),
            // "Disabled" when the port does not tag.
            "802.1q VLAN ID" => lan.vlan_id = value.parse().ok(),
            "RMCP+ Cipher Suites" => {
                lan.cipher_suites = value
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect();
            }
            "Auth Type Support" => {
                lan.auth_types = value.split_whitespace().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    lan
}

fn flag(word: &str) -> Option<bool> {
    match word {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Parses `ipmitool user list`; empty slots (no name) are left out.
pub fn parse_user_list(text: &str) -> Vec<BmcUser> {
    text.lines().filter_map(parse_user_line).collect()
}

/// `ID  Name  Callin  Link Auth  IPMI Msg  Channel Priv Limit`: the name may be empty and the
/// privilege may hold spaces (`NO ACCESS`), so the three flags are found from the right.
fn parse_user_line(line: &str) -> Option<BmcUser> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let id: u8 = words.first()?.parse().ok()?;
    // The last run of three flags followed by at least one privilege word.
    let at = (1..words.len().saturating_sub(3))
        .rev()
        .find(|&i| words[i..i + 3].iter().all(|w| flag(w).is_some()))?;
    let name = words[1..at].join(" ");
    if name.is_empty() {
        return None;
    }
    Some(BmcUser {
        id,
        name,
        callin: flag(words[at])?,
        link_auth: flag(words[at + 1])?,
        ipmi_messaging: flag(words[at + 2])?,
        privilege: words[at + 3..].join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/fixtures/ipmitool/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn lan_print_from_a_real_bmc() {
        let lan = parse_lan_print(&fixture("genesis-collector-lan-print.txt"));
        assert_eq!(
            lan,
            BmcLan {
                ip_source: Some("static".into()),
                ip_address: Some("1.2.1.2".into()),
                subnet_mask: Some("255.255.0.0".into()),
                mac_address: Some("0c:ca:ca:03:dc:23".into()),
                default_gateway_ip: Some("1.2.0.1".into()),
                default_gateway_mac: Some("00:09:0f:03:02:0b".into()),
                vlan_id: None,
                cipher_suites: vec![1, 2, 3, 6, 7, 8, 11, 12],
                auth_types: vec!["NONE".into(), "MD2".into(), "MD5".into(), "PASSWORD".into()],
            }
        );
    }

    #[test]
    fn lan_print_without_cipher_suites() {
        let lan = parse_lan_print(&fixture("bmclib-lan-print.txt"));
        assert_eq!(lan.ip_address.as_deref(), Some("192.168.1.211"));
        assert_eq!(lan.mac_address.as_deref(), Some("00:0e:0c:ea:92:a2"));
        assert_eq!(
            lan.default_gateway_mac.as_deref(),
            Some("00:0e:0c:aa:8e:13")
        );
        // "RMCP+ Cipher Suites : None"
        assert!(lan.cipher_suites.is_empty());
        assert_eq!(lan.auth_types, ["NONE", "MD5", "PASSWORD"]);
    }

    #[test]
    fn vlan_ids_are_numbers_when_tagging() {
        let lan = parse_lan_print("802.1q VLAN ID          : 120\n802.1q VLAN Priority    : 0\n");
        assert_eq!(lan.vlan_id, Some(120));
    }

    #[test]
    fn user_list_from_a_real_bmc() {
        let users = parse_user_list(&fixture("supermicro-user-list.txt"));
        assert_eq!(
            users,
            [BmcUser {
                id: 2,
                name: "ADMIN".into(),
                callin: false,
                link_auth: false,
                ipmi_messaging: true,
                privilege: "ADMINISTRATOR".into(),
            }]
        );
    }

    #[test]
    fn user_list_skips_empty_slots_and_keeps_spaced_privileges() {
        // ipmitool's own layout: "%-4d%-17s%-8s%-11s%-11s%s".
        let text = "ID  Name\t     Callin  Link Auth\tIPMI Msg   Channel Priv Limit\n\
                    1                    true    false      false      NO ACCESS\n\
                    2   root             true    true       true       ADMINISTRATOR\n\
                    3   true             true    false      false      Unknown (0x00)\n";
        let users = parse_user_list(text);
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "root");
        assert_eq!(users[1].name, "true", "a name that looks like a flag");
        assert_eq!(users[1].privilege, "Unknown (0x00)");
    }

    #[test]
    fn mc_info_from_qemus_bmc_simulator() {
        let fw = parse_mc_info(&fixture("qemu-ipmi-bmc-sim-mc-info.txt"));
        assert_eq!(
            fw,
            BmcFirmware {
                device_id: Some(32),
                device_revision: Some(3),
                firmware_revision: Some("1.47".into()),
                ipmi_version: Some("2.0".into()),
                manufacturer_id: Some(10876),
                manufacturer_name: None,
                product_id: Some(2330),
                product_name: Some("AOC-2UR6-i4xT+".into()),
                aux_firmware_revision: None,
                additional_device_support: vec![
                    "Sensor Device".into(),
                    "SDR Repository Device".into(),
                    "SEL Device".into()
                ],
            }
        );
    }

    #[test]
    fn mc_info_lists_and_unknown_names() {
        let text = "Device ID                 : 32\nDevice Revision           : 1\n\
                    Firmware Revision         : 1.04\nIPMI Version              : 2.0\n\
                    Manufacturer ID           : 5771\nManufacturer Name         : Unknown (0x168B)\n\
                    Product ID                : 5 (0x0005)\nProduct Name              : Unknown (0x5)\n\
                    Device Available          : yes\nProvides Device SDRs      : yes\n\
                    Additional Device Support :\n    Sensor Device\n    SEL Device\n\
                    Aux Firmware Rev Info     : \n    0x00\n    0x01\n    0xb4\n    0x0a\n";
        let fw = parse_mc_info(text);
        assert_eq!(fw.device_id, Some(32));
        assert_eq!(fw.firmware_revision.as_deref(), Some("1.04"));
        assert_eq!(fw.manufacturer_id, Some(5771));
        assert_eq!(fw.manufacturer_name, None);
        assert_eq!(fw.product_id, Some(5));
        assert_eq!(
            fw.additional_device_support,
            ["Sensor Device", "SEL Device"]
        );
        assert_eq!(
            fw.aux_firmware_revision.as_deref(),
            Some("0x00 0x01 0xb4 0x0a")
        );
    }

    #[test]
    fn no_device_is_absent_with_a_reason() {
        let bmc = presence(&SysRoot::new("/nonexistent-qs-root"));
        assert!(!bmc.present);
        assert!(bmc.reason.is_some_and(|r| r.contains("ipmi_si")));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsers_never_panic(text in "(?s).{0,600}") {
            let _ = parse_mc_info(&text);
            let _ = parse_lan_print(&text);
            let _ = parse_user_list(&text);
        }

        #[test]
        fn spliced_captures_never_panic(at in 0usize..1300, insert in "(?s).{0,40}") {
            for name in ["genesis-collector-lan-print.txt", "supermicro-user-list.txt"] {
                let text = crate::raid::spliced(&fixture(name), at, &insert);
                let _ = parse_lan_print(&text);
                let _ = parse_user_list(&text);
                let _ = parse_mc_info(&text);
            }
        }
    }
}
