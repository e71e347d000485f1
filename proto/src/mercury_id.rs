//! MercuryId: the identity of a physical server for its whole life.
//!
//! Exact rules: `shared/specs/mercury-id.md`. A MercuryId is a 2-character source prefix and the
//! lowercase hex SHA-1 of the source string. It is recomputed on every boot from firmware and
//! NIC values, never stored on the server, and never invented when nothing usable exists.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// A validated MercuryId: `00`–`03` followed by 40 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MercuryId(String);

/// Why a string is not a MercuryId.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a MercuryId (expected 00-03 followed by 40 lowercase hex digits)")]
pub struct InvalidMercuryId {
    /// The rejected text (truncated to 64 characters).
    pub value: String,
}

impl MercuryId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rule that produced this id, read from its prefix.
    pub fn rule(&self) -> IdRule {
        match &self.0[..2] {
            "01" => IdRule::ProductUuid,
            "02" => IdRule::ChassisAssetSerial,
            "03" => IdRule::BoardAssetSerial,
            _ => IdRule::MacAddresses,
        }
    }

    fn from_source(rule: IdRule, source: &str) -> Self {
        let digest = Sha1::digest(source.as_bytes());
        Self(format!("{}{}", rule.prefix(), hex::encode(digest)))
    }
}

impl FromStr for MercuryId {
    type Err = InvalidMercuryId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Bytes, not string slices: a peer's text may put a multi-byte character anywhere.
        let b = s.as_bytes();
        let valid = b.len() == 42
            && matches!(&b[..2], b"00" | b"01" | b"02" | b"03")
            && b[2..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidMercuryId {
                value: s.chars().take(64).collect(),
            })
        }
    }
}

impl TryFrom<String> for MercuryId {
    type Error = InvalidMercuryId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MercuryId> for String {
    fn from(id: MercuryId) -> String {
        id.0
    }
}

impl fmt::Display for MercuryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which rule of the spec produced an id; the numeric prefix is part of the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdRule {
    /// `01`: the SMBIOS system UUID.
    ProductUuid,
    /// `02`: chassis asset tag + chassis serial.
    ChassisAssetSerial,
    /// `03`: board asset tag + board serial.
    BoardAssetSerial,
    /// `00`: MAC addresses of the onboard (else all physical) interfaces.
    MacAddresses,
}

impl IdRule {
    /// The two-character prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            IdRule::ProductUuid => "01",
            IdRule::ChassisAssetSerial => "02",
            IdRule::BoardAssetSerial => "03",
            IdRule::MacAddresses => "00",
        }
    }
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdRule::ProductUuid => "01 product uuid",
            IdRule::ChassisAssetSerial => "02 chassis asset tag + chassis serial",
            IdRule::BoardAssetSerial => "03 board asset tag + board serial",
            IdRule::MacAddresses => "00 mac addresses",
        })
    }
}

/// The firmware and NIC values a MercuryId can come from, as the inspectors read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSources {
    /// SMBIOS system UUID as Linux shows it (`/sys/class/dmi/id/product_uuid`).
    pub product_uuid: Option<String>,
    /// Chassis asset tag.
    pub chassis_asset_tag: Option<String>,
    /// Chassis serial number.
    pub chassis_serial: Option<String>,
    /// Baseboard asset tag.
    pub board_asset_tag: Option<String>,
    /// Baseboard serial number.
    pub board_serial: Option<String>,
    /// Every network interface the kernel shows.
    pub nics: Vec<NicSource>,
}

/// One network interface's identity-relevant facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicSource {
    /// Interface name, for explanations only.
    pub name: String,
    /// Current MAC address.
    pub mac: String,
    /// Permanent MAC, when the current one was changed (bond slaves).
    pub permanent_mac: Option<String>,
    /// PCI address of the device or of its nearest PCI ancestor.
    pub pci_address: Option<String>,
    /// `dev_port` from sysfs.
    pub dev_port: Option<u32>,
    /// Has a `device` link in sysfs.
    pub physical: bool,
    /// Physical, and the firmware labels it onboard (`acpi_index` or `index`).
    pub onboard: bool,
}

/// A rule that did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The rule tried.
    pub rule: IdRule,
    /// Why its values were unusable.
    pub reason: String,
}

/// A derived MercuryId with the evidence for it, for `qs-agent id --explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Derivation {
    /// The id.
    pub id: MercuryId,
    /// The rule that applied.
    pub rule: IdRule,
    /// The exact string that was hashed.
    pub source: String,
    /// Earlier rules that did not apply.
    pub rejected: Vec<Rejection>,
}

/// No rule applied: the server has no usable identity yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no MercuryId: {}", .rejected.iter().map(|r| format!("rule {}: {}", r.rule, r.reason)).collect::<Vec<_>>().join("; "))]
pub struct NoMercuryId {
    /// Every rule tried, with its reason.
    pub rejected: Vec<Rejection>,
}

/// UUIDs that firmware writes when it has none.
const PLACEHOLDER_UUIDS: &[&str] = &["03000200-0400-0500-0006-000700080009"];

/// Asset tag and serial values that firmware writes when it has none.
const PLACEHOLDER_VALUES: &[&str] = &[
    "",
    "to be filled by o.e.m.",
    "default string",
    "not specified",
    "not available",
    "none",
    "n/a",
    "unknown",
    "system serial number",
    "chassis serial number",
    "base board serial number",
    "asset tag",
    "no asset tag",
    "no asset information",
    "0",
    "0123456789",
];

/// Applies the rules in order and returns the first that yields an id.
pub fn derive(sources: &IdSources) -> Result<Derivation, NoMercuryId> {
    let mut rejected = Vec::new();
    let attempts: [(IdRule, Result<String, String>); 4] = [
        (
            IdRule::ProductUuid,
            uuid_source(sources.product_uuid.as_deref()),
        ),
        (
            IdRule::ChassisAssetSerial,
            pair_source(
                "chassis",
                sources.chassis_asset_tag.as_deref(),
                sources.chassis_serial.as_deref(),
            ),
        ),
        (
            IdRule::BoardAssetSerial,
            pair_source(
                "board",
                sources.board_asset_tag.as_deref(),
                sources.board_serial.as_deref(),
            ),
        ),
        (IdRule::MacAddresses, mac_source(&sources.nics)),
    ];
    for (rule, attempt) in attempts {
        match attempt {
            Ok(source) => {
                return Ok(Derivation {
                    id: MercuryId::from_source(rule, &source),
                    rule,
                    source,
                    rejected,
                })
            }
            Err(reason) => rejected.push(Rejection { rule, reason }),
        }
    }
    Err(NoMercuryId { rejected })
}

fn uuid_source(uuid: Option<&str>) -> Result<String, String> {
    let Some(raw) = uuid else {
        return Err("no product uuid".into());
    };
    let uuid = raw.trim().to_ascii_lowercase();
    let shaped = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !shaped {
        return Err(format!(
            "product uuid {raw:?} is not in 8-4-4-4-12 hex form"
        ));
    }
    let digits: String = uuid.chars().filter(|c| *c != '-').collect();
    if digits.bytes().all(|b| b == b'0')
        || digits.bytes().all(|b| b == b'f')
        || PLACEHOLDER_UUIDS.contains(&uuid.as_str())
    {
        return Err(format!("product uuid {raw:?} is a placeholder"));
    }
    Ok(uuid)
}

/// Whether a serial, asset tag or similar value is one firmware writes when it has none (a
/// known placeholder, or one character repeated), so it cannot tell servers apart.
pub fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    let lower = value.to_lowercase();
    if PLACEHOLDER_VALUES.contains(&lower.as_str()) {
        return true;
    }
    let mut chars = value.chars();
    match chars.next() {
        Some(first) => chars.all(|c| c == first),
        None => true,
    }
}

fn pair_source(what: &str, asset: Option<&str>, serial: Option<&str>) -> Result<String, String> {
    let (Some(asset), Some(serial)) = (asset, serial) else {
        return Err(format!("{what} asset tag or serial missing"));
    };
    for (name, value) in [("asset tag", asset), ("serial", serial)] {
        if is_placeholder(value) {
            return Err(format!("{what} {name} {value:?} is a placeholder"));
        }
    }
    let source = format!("{}{}", asset.trim(), serial.trim());
    if !source.is_ascii() {
        return Err(format!("{what} asset tag or serial is not ASCII"));
    }
    Ok(source)
}

fn normalise_mac(mac: &str) -> Option<String> {
    let mac = mac.trim().to_ascii_lowercase();
    let octets: Vec<&str> = mac.split(':').collect();
    let well_formed = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    (well_formed && octets.iter().any(|o| *o != "00")).then_some(mac)
}

fn mac_source(nics: &[NicSource]) -> Result<String, String> {
    // (pci address or none, dev_port, mac) sorts exactly as the spec orders MACs.
    let mut physical: Vec<(bool, Option<String>, Option<u32>, String)> = nics
        .iter()
        .filter(|n| n.physical)
        .filter_map(|n| {
            let permanent = n.permanent_mac.as_deref().and_then(normalise_mac);
            let mac = permanent.or_else(|| normalise_mac(&n.mac))?;
            Some((
                n.onboard,
                n.pci_address.as_deref().map(str::to_ascii_lowercase),
                n.dev_port,
                mac,
            ))
        })
        .collect();
    if physical.is_empty() {
        return Err("no physical interface with a MAC address".into());
    }
    if physical.iter().any(|n| n.0) {
        physical.retain(|n| n.0);
    }
    physical
        .sort_by(|a, b| (a.1.is_none(), &a.1, a.2, &a.3).cmp(&(b.1.is_none(), &b.1, b.2, &b.3)));
    Ok(physical.into_iter().map(|n| n.3).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn uuid(u: &str) -> IdSources {
        IdSources {
            product_uuid: Some(u.into()),
            ..IdSources::default()
        }
    }

    fn nic(name: &str, mac: &str, pci: Option<&str>, onboard: bool) -> NicSource {
        NicSource {
            name: name.into(),
            mac: mac.into(),
            pci_address: pci.map(Into::into),
            physical: true,
            onboard,
            ..NicSource::default()
        }
    }

    fn id(s: &IdSources) -> String {
        derive(s).unwrap().id.to_string()
    }

    #[test]
    fn vector_uuid_1() {
        assert_eq!(
            id(&uuid("37313930-3631-5443-3531-4e5239393532")),
            "013c16030373937262a32e831ff18c941b6481ded8"
        );
    }

    #[test]
    fn vector_uuid_2() {
        assert_eq!(
            id(&uuid("4c4c4544-0042-3510-8052-b4c04f4e3732")),
            "01d9609b1ca941feccfb49824de65794edaba0c50d"
        );
    }

    #[test]
    fn vector_chassis() {
        let s = IdSources {
            product_uuid: Some("00000000-0000-0000-0000-000000000000".into()),
            chassis_asset_tag: Some("ASSET123".into()),
            chassis_serial: Some("SN456".into()),
            ..IdSources::default()
        };
        assert_eq!(id(&s), "020c8549c5d72e29971ccda2b2b150b63731aca383");
    }

    #[test]
    fn vector_board() {
        let s = IdSources {
            chassis_asset_tag: Some("To Be Filled By O.E.M.".into()),
            chassis_serial: Some("CS1".into()),
            board_asset_tag: Some("BA1".into()),
            board_serial: Some("BS2".into()),
            ..IdSources::default()
        };
        assert_eq!(id(&s), "03e69f2944347e51d9b6f393af45c61e43bccc2d92");
    }

    #[test]
    fn vector_onboard_macs() {
        let s = IdSources {
            nics: vec![
                nic("ens1f0", "a0:36:9f:00:00:01", Some("0000:3b:00.0"), false),
                nic("eno2", "38:63:bb:3f:4b:f5", Some("0000:01:00.1"), true),
                nic("eno1", "38:63:bb:3f:4b:f4", Some("0000:01:00.0"), true),
            ],
            ..IdSources::default()
        };
        assert_eq!(id(&s), "00894b5f77789ec4792c2f4f9a100d614f709434ac");
    }

    #[test]
    fn vector_physical_macs() {
        let mut bridge = nic("br0", "52:54:00:aa:bb:cc", None, false);
        bridge.physical = false;
        let s = IdSources {
            nics: vec![
                nic("ens4", "52:54:00:12:34:57", Some("0000:00:04.0"), false),
                bridge,
                nic("ens3", "52:54:00:12:34:56", Some("0000:00:03.0"), false),
            ],
            ..IdSources::default()
        };
        assert_eq!(id(&s), "00762c6ff2a6565c6d2469ccbf27f4169283774b83");
    }

    #[test]
    fn placeholders_fall_through() {
        for u in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "not-a-uuid",
        ] {
            assert!(derive(&uuid(u)).is_err(), "{u}");
        }
        for v in [
            "  ",
            "Default string",
            "........",
            "FFFFFFFF",
            "0",
            "N/A",
            "0123456789",
        ] {
            assert!(is_placeholder(v), "{v}");
        }
        assert!(!is_placeholder("SN456"));
    }

    #[test]
    fn uppercase_uuid_hashes_as_linux_shows_it() {
        assert_eq!(
            id(&uuid("37313930-3631-5443-3531-4E5239393532")),
            "013c16030373937262a32e831ff18c941b6481ded8"
        );
    }

    #[test]
    fn permanent_mac_wins_for_bond_slaves() {
        let mut slave = nic("eno1", "02:00:00:00:00:01", Some("0000:01:00.0"), true);
        slave.permanent_mac = Some("38:63:bb:3f:4b:f4".into());
        let d = derive(&IdSources {
            nics: vec![slave],
            ..IdSources::default()
        })
        .unwrap();
        assert_eq!(d.source, "38:63:bb:3f:4b:f4");
    }

    #[test]
    fn devices_without_pci_sort_last_then_dev_port() {
        let mut a = nic("a", "00:00:00:00:00:0a", None, false);
        a.dev_port = Some(0);
        let mut b = nic("b", "00:00:00:00:00:0b", Some("0000:00:09.0"), false);
        b.dev_port = Some(1);
        let mut c = nic("c", "00:00:00:00:00:0c", Some("0000:00:09.0"), false);
        c.dev_port = Some(0);
        let d = derive(&IdSources {
            nics: vec![a, b, c],
            ..IdSources::default()
        })
        .unwrap();
        assert_eq!(
            d.source,
            "00:00:00:00:00:0c00:00:00:00:00:0b00:00:00:00:00:0a"
        );
    }

    #[test]
    fn nothing_usable_is_an_error_naming_every_rule() {
        let err = derive(&IdSources::default()).unwrap_err();
        assert_eq!(err.rejected.len(), 4);
        assert!(err.to_string().contains("no physical interface"));
    }

    #[test]
    fn parse_validates() {
        assert!("013c16030373937262a32e831ff18c941b6481ded8"
            .parse::<MercuryId>()
            .is_ok());
        assert!("053c16030373937262a32e831ff18c941b6481ded8"
            .parse::<MercuryId>()
            .is_err());
        assert!("013C16030373937262a32e831ff18c941b6481ded8"
            .parse::<MercuryId>()
            .is_err());
        assert!("01".parse::<MercuryId>().is_err());
        assert!("é".repeat(21).parse::<MercuryId>().is_err());
    }

    #[test]
    fn a_multi_byte_character_in_the_prefix_is_refused_not_a_panic() {
        let text = format!("0\u{80}{}", "a".repeat(39));
        assert_eq!(text.len(), 42);
        assert!(text.parse::<MercuryId>().is_err());
    }
}
