//! Drive health from `smartctl -j -a` (smartmontools' JSON output).

use qs_proto::inventory::Smart;
use serde_json::Value;

/// Why smartctl's output was unusable.
#[derive(Debug, thiserror::Error)]
#[error("smartctl output is not JSON")]
pub struct SmartError(#[source] serde_json::Error);

/// Reads the health summary out of smartctl's JSON; fields a drive does not report are absent.
pub fn parse(json: &str) -> Result<Smart, SmartError> {
    let doc: Value = serde_json::from_str(json).map_err(SmartError)?;
    let firmware = doc
        .get("firmware_version")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Ok(Smart {
        passed: doc.pointer("/smart_status/passed").and_then(Value::as_bool),
        temperature: doc.pointer("/temperature/current").and_then(Value::as_i64),
        power_on_hours: doc.pointer("/power_on_time/hours").and_then(Value::as_u64),
        firmware,
        percentage_used: doc
            .pointer("/nvme_smart_health_information_log/percentage_used")
            .and_then(Value::as_u64),
        exit_status: doc
            .pointer("/smartctl/exit_status")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn capture(name: &str) -> Smart {
        let path = format!(
            "{}/fixtures/shared/smartctl/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn sata_sas_and_nvme_captures() {
        let sata = capture("samsung-860-evo-sata.smartctl-x-j.json");
        assert_eq!(
            (
                sata.passed,
                sata.temperature,
                sata.power_on_hours,
                sata.firmware.as_deref()
            ),
            (Some(true), Some(36), Some(14551), Some("RVT02B6Q"))
        );
        let sas = capture("seagate-st1200mm0088-sas.smartctl-ja.json");
        assert_eq!(
            (sas.passed, sas.temperature, sas.power_on_hours),
            (Some(true), Some(31), Some(5675))
        );
        let nvme = capture("micron-7300-mtfdhbe1t9tdf-nvme.smartctl-json.json");
        assert_eq!(nvme.percentage_used, Some(9));
        let behind_raid = capture("wdc-wd4000fyyx-megaraid0.smartctl-a-j-d-megaraid.json");
        assert_eq!(behind_raid.exit_status, 4);
        // An info-only capture has no health verdict: absent, not "failed".
        assert_eq!(
            capture("kioxia-kcd61lul3t84-nvme.smartctl-info-j.json").passed,
            None
        );
    }

    #[test]
    fn every_capture_parses() {
        let dir = format!("{}/fixtures/shared/smartctl", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(parse(&text).is_ok());
        }
        assert!(parse("not json").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = parse(&text);
        }
    }
}
