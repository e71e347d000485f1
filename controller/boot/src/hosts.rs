//! Which host is asking, and what it should boot.
//!
//! iPXE sends `${mac}`, `${uuid}` and `${serial}`; each is normalised here to the form the
//! inventory uses (lowercase colon MAC, lowercase 8-4-4-4-12 UUID, trimmed serial) and looked up
//! through the controller's [`HostDirectory`]. The UUID is tried in both byte orders: iPXE only
//! swaps the first three fields for SMBIOS 2.6 and newer, as Linux does, and older builds
//! never do.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// What a known host boots when it PXE-boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// The agent image (the default for every host, known or not).
    Agent,
    /// Its own disk: the script hands back to the firmware.
    Local,
}

impl BootMode {
    /// The mode's name, as operators type it and documents store it.
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Agent => "agent",
            BootMode::Local => "local",
        }
    }
}

impl std::str::FromStr for BootMode {
    type Err = UnknownBootMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "agent" => Ok(BootMode::Agent),
            "local" => Ok(BootMode::Local),
            _ => Err(UnknownBootMode(text.to_owned())),
        }
    }
}

/// A boot mode name that is neither `agent` nor `local`.
#[derive(Debug, thiserror::Error)]
#[error("boot mode must be \"agent\" or \"local\", got {0:?}")]
pub struct UnknownBootMode(pub String);

/// One way of finding a host's document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// Any of these SMBIOS UUID spellings (lowercase 8-4-4-4-12) equals `dmi.product_uuid`.
    Uuid(Vec<String>),
    /// A lowercase colon-separated MAC equals an interface's `address` or `permanent_address`.
    Mac(String),
    /// The SMBIOS system serial equals `dmi.product_serial`.
    Serial(String),
}

/// A host the directory knows, with the boot mode an operator set (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHost {
    /// Its MercuryId.
    pub mercury_id: String,
    /// The mode an operator set; `None` boots the agent.
    pub mode: Option<BootMode>,
}

/// A failed directory lookup, with the controller's cause.
#[derive(Debug, thiserror::Error)]
#[error("host lookup failed")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where the boot server finds hosts: the controller implements it over its inventory store.
pub trait HostDirectory: Clone + Send + Sync + 'static {
    /// Every host whose document matches `key`.
    fn find(
        &self,
        key: &HostKey,
    ) -> impl Future<Output = Result<Vec<KnownHost>, LookupError>> + Send;

    /// A fresh one-time enrollment token bound to what this booting machine said about itself,
    /// for the agent script's `qs.token=`; `None` (the default): no token.
    fn enrollment_token(&self, ids: &Identifiers) -> impl Future<Output = Option<String>> + Send {
        let _ = ids;
        async { None }
    }
}

/// What iPXE told us about itself, normalised; values that cannot identify anything are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identifiers {
    /// The booting NIC's MAC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The SMBIOS UUID as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The SMBIOS system serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl Identifiers {
    /// Normalises the raw query values; unusable ones (malformed, placeholders) become `None`.
    pub fn from_raw(mac: Option<&str>, uuid: Option<&str>, serial: Option<&str>) -> Self {
        Self {
            mac: mac.and_then(normalize_mac),
            uuid: uuid.and_then(normalize_uuid),
            serial: serial.and_then(normalize_serial),
        }
    }

    /// Whether iPXE sent nothing usable (it was not asked to: the first request).
    pub fn is_empty(&self) -> bool {
        self.mac.is_none() && self.uuid.is_none() && self.serial.is_none()
    }

    /// The lookups to try, most stable first: UUID, MAC, serial.
    pub fn keys(&self) -> Vec<HostKey> {
        let mut keys = Vec::new();
        if let Some(uuid) = &self.uuid {
            let mut spellings = vec![uuid.clone()];
            if let Some(swapped) = swap_uuid_fields(uuid) {
                if swapped != *uuid {
                    spellings.push(swapped);
                }
            }
            keys.push(HostKey::Uuid(spellings));
        }
        if let Some(mac) = &self.mac {
            keys.push(HostKey::Mac(mac.clone()));
        }
        if let Some(serial) = &self.serial {
            keys.push(HostKey::Serial(serial.clone()));
        }
        keys
    }
}

/// The first key that names exactly one host wins; a key matching several hosts names none
/// (two documents sharing a MAC or serial must not decide for each other).
pub async fn identify<D: HostDirectory>(
    directory: &D,
    ids: &Identifiers,
) -> Result<Option<KnownHost>, LookupError> {
    for key in ids.keys() {
        let mut found = directory.find(&key).await?;
        match found.len() {
            1 => return Ok(found.pop()),
            0 => {}
            n => tracing::warn!(
                ?key,
                hosts = n,
                "boot request matches several hosts; key ignored"
            ),
        }
    }
    Ok(None)
}

/// `aa:bb:cc:dd:ee:ff`, `AA-BB-…` or `aabbccddeeff` → `aa:bb:cc:dd:ee:ff`; all-zero is no MAC.
pub fn normalize_mac(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| !matches!(c, ':' | '-'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if hex.chars().all(|c| c == '0') {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..6).filter_map(|i| hex.get(i * 2..i * 2 + 2)).collect();
    Some(pairs.join(":"))
}

/// Any spelling of a UUID → lowercase 8-4-4-4-12; placeholders (all zeros, all `f`, QEMU's
/// old default) are no UUID, as in the MercuryId rules.
pub fn normalize_uuid(text: &str) -> Option<String> {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    if hex.chars().all(|c| c == '0') || hex.chars().all(|c| c == 'f') {
        return None;
    }
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8)?,
        hex.get(8..12)?,
        hex.get(12..16)?,
        hex.get(16..20)?,
        hex.get(20..32)?
    );
    (uuid != "03000200-0400-0500-0006-000700080009").then_some(uuid)
}

/// The same UUID with its first three fields byte-swapped (the other SMBIOS byte order).
fn swap_uuid_fields(uuid: &str) -> Option<String> {
    let fields: Vec<&str> = uuid.split('-').collect();
    let [a, b, c, d, e] = fields.as_slice() else {
        return None;
    };
    let swap = |field: &str| -> Option<String> {
        let bytes: Vec<&str> = (0..field.len() / 2)
            .map(|i| field.get(i * 2..i * 2 + 2))
            .collect::<Option<_>>()?;
        Some(bytes.into_iter().rev().collect())
    };
    Some(format!("{}-{}-{}-{d}-{e}", swap(a)?, swap(b)?, swap(c)?))
}

/// A serial that can tell hosts apart: trimmed, and not a firmware placeholder by the MercuryId
/// rules.
pub fn normalize_serial(text: &str) -> Option<String> {
    let serial = text.trim();
    (!qs_proto::mercury_id::is_placeholder(serial)).then(|| serial.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn macs_take_the_inventory_form() {
        assert_eq!(
            normalize_mac("52:54:00:12:34:56").as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(
            normalize_mac("52-54-00-AB-CD-EF").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(
            normalize_mac("525400abcdef").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        for bad in [
            "",
            "00:00:00:00:00:00",
            "52:54:00:12:34",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuids_are_lowercase_and_tried_in_both_byte_orders() {
        let ids = Identifiers::from_raw(None, Some("5F2C1A3E-8B4D-4C6A-9E21-0A1B2C3D4E5F"), None);
        assert_eq!(
            ids.keys(),
            vec![HostKey::Uuid(vec![
                "5f2c1a3e-8b4d-4c6a-9e21-0a1b2c3d4e5f".into(),
                "3e1a2c5f-4d8b-6a4c-9e21-0a1b2c3d4e5f".into(),
            ])]
        );
        for placeholder in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "not-a-uuid",
            "",
        ] {
            assert_eq!(normalize_uuid(placeholder), None, "{placeholder}");
        }
    }

    #[test]
    fn placeholder_serials_identify_nobody() {
        assert_eq!(normalize_serial(" QSG-0001 ").as_deref(), Some("QSG-0001"));
        for bad in ["", "   ", "To Be Filled By O.E.M.", "00000000", "N/A", "0"] {
            assert_eq!(normalize_serial(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_go_uuid_then_mac_then_serial() {
        let ids = Identifiers::from_raw(
            Some("52:54:00:12:34:56"),
            Some("5f2c1a3e-8b4d-4c6a-9e21-0a1b2c3d4e5f"),
            Some("QSG-0001"),
        );
        let keys = ids.keys();
        assert!(matches!(keys[0], HostKey::Uuid(_)));
        assert_eq!(keys[1], HostKey::Mac("52:54:00:12:34:56".into()));
        assert_eq!(keys[2], HostKey::Serial("QSG-0001".into()));
        assert!(Identifiers::from_raw(Some(""), Some(""), Some("")).is_empty());
    }

    #[test]
    fn boot_modes_parse_and_print() {
        for mode in [BootMode::Agent, BootMode::Local] {
            assert_eq!(mode.as_str().parse::<BootMode>().unwrap(), mode);
        }
        assert!("disk".parse::<BootMode>().is_err());
    }
}
