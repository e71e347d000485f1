//! LSI/Broadcom MegaRAID (and Dell PERC, Fujitsu PRAID …) from `storcli64 /call show all J`.
//!
//! Also reads the shorter `/cN show J` output: both carry `VD LIST` and `PD LIST`; the model,
//! serial and firmware sit under `Basics`/`Version` in one and at the top in the other.

use qs_proto::inventory::{LogicalDrive, PhysicalDrive, RaidController};
use serde_json::Value;

use super::size_bytes;

/// Why storcli output could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorcliError {
    /// The output is not JSON.
    #[error("storcli output is not JSON")]
    Parse(#[source] serde_json::Error),
    /// The output is JSON without a `Controllers` list.
    #[error("storcli JSON has no Controllers list")]
    Shape,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty() && s != "-"),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses storcli's JSON. A controller whose command failed is reported with its status and
/// whatever the output still says about it.
pub fn parse(json: &str) -> Result<Vec<RaidController>, StorcliError> {
    let doc: Value = serde_json::from_str(json).map_err(StorcliError::Parse)?;
    let controllers = doc
        .get("Controllers")
        .and_then(Value::as_array)
        .ok_or(StorcliError::Shape)?;
    Ok(controllers.iter().map(controller).collect())
}

fn controller(c: &Value) -> RaidController {
    let status = c.get("Command Status");
    let data = c.get("Response Data").cloned().unwrap_or(Value::Null);
    let basics = data.get("Basics");
    let version = data.get("Version");
    let command_ok =
        status.and_then(|s| s.get("Status")).and_then(Value::as_str) == Some("Success");
    let controller_status = text(data.get("Status").and_then(|s| s.get("Controller Status")));
    let failure = status
        .and_then(|s| s.get("Detailed Status"))
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|d| text(d.get("ErrMsg")));
    RaidController {
        tool: "storcli".into(),
        id: text(status.and_then(|s| s.get("Controller"))).unwrap_or_default(),
        model: text(basics.and_then(|b| b.get("Model"))).or_else(|| text(data.get("Product Name"))),
        serial: text(basics.and_then(|b| b.get("Serial Number")))
            .or_else(|| text(data.get("Serial Number"))),
        firmware: text(version.and_then(|v| v.get("Firmware Version")))
            .or_else(|| text(data.get("FW Version"))),
        status: if command_ok {
            controller_status
        } else {
            failure.map(|f| format!("command failed: {f}"))
        },
        logical_drives: list(&data, "VD LIST")
            .map(|vd| LogicalDrive {
                id: text(vd.get("DG/VD")).unwrap_or_default(),
                raid_level: text(vd.get("TYPE")),
                size: text(vd.get("Size")).and_then(|s| size_bytes(&s)),
                state: text(vd.get("State")),
                name: text(vd.get("Name")),
                device: None,
            })
            .collect(),
        physical_drives: list(&data, "PD LIST")
            .map(|pd| PhysicalDrive {
                id: text(pd.get("EID:Slt")).unwrap_or_default(),
                model: text(pd.get("Model")),
                serial: None,
                size: text(pd.get("Size")).and_then(|s| size_bytes(&s)),
                state: text(pd.get("State")),
                interface: text(pd.get("Intf")),
                media: text(pd.get("Med")),
            })
            .collect(),
    }
}

fn list<'a>(data: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    data.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const FUJITSU: &str = include_str!(
        "../../fixtures/shared/storcli/fujitsu-praid-ep420i.storcli-call-show-all-j.json"
    );
    const INTEL: &str =
        include_str!("../../fixtures/shared/storcli/intel-rs3dc080.storcli-c0-show-j.json");
    const FAILED: &str = include_str!(
        "../../fixtures/shared/storcli/intel-rs3dc080-foreign-cfg-failure.storcli-c0-show-j.json"
    );

    #[test]
    fn call_show_all() {
        let c = parse(FUJITSU).unwrap();
        assert_eq!(c.len(), 1);
        let c = &c[0];
        assert_eq!(c.model.as_deref(), Some("PRAID EP420i"));
        assert_eq!(c.serial.as_deref(), Some("0000000061913681"));
        assert_eq!(c.firmware.as_deref(), Some("4.680.00-8417"));
        assert_eq!(c.status.as_deref(), Some("Optimal"));
        assert_eq!(c.logical_drives.len(), 1);
        let vd = &c.logical_drives[0];
        assert_eq!(
            (
                vd.id.as_str(),
                vd.raid_level.as_deref(),
                vd.state.as_deref()
            ),
            ("0/0", Some("RAID6"), Some("Optl"))
        );
        assert_eq!(vd.size, size_bytes("1.745 TB"));
        assert!(c
            .physical_drives
            .iter()
            .all(|p| p.model.as_deref() == Some("Micron_5200_MTFDDAK960TDC")));
        assert_eq!(c.physical_drives[0].id, "252:0");
    }

    #[test]
    fn controller_show() {
        let c = &parse(INTEL).unwrap()[0];
        assert_eq!(
            c.model.as_deref(),
            Some("Intel(R) RAID Controller RS3DC080")
        );
        assert_eq!(c.firmware.as_deref(), Some("4.650.00-8128"));
        assert_eq!(c.logical_drives[0].name.as_deref(), Some("dummy"));
        assert_eq!(
            c.physical_drives[0].model.as_deref(),
            Some("HUS726040AL5210")
        );
        assert_eq!(c.physical_drives[0].media.as_deref(), Some("HDD"));
    }

    #[test]
    fn failed_command_is_reported_not_dropped() {
        let c = &parse(FAILED).unwrap()[0];
        assert_eq!(
            c.status.as_deref(),
            Some("command failed: Incomplete foreign configuration")
        );
        assert!(parse("not json").is_err());
        assert!(parse("{}").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn reshaped_captures_never_panic(
            key in any::<prop::sample::Index>(),
            field in any::<prop::sample::Index>(),
            replacement in prop_oneof![Just(Value::Null), Just(serde_json::json!(7)), Just(serde_json::json!([1])), Just(serde_json::json!({})), Just(serde_json::json!("x"))],
        ) {
            // Valid JSON of the wrong shape: a section, or one drive's field, replaced.
            let mut doc: Value = serde_json::from_str(FUJITSU).unwrap();
            let data = &mut doc["Controllers"][0]["Response Data"];
            let keys: Vec<String> = data.as_object().unwrap().keys().cloned().collect();
            let k = keys[key.index(keys.len())].clone();
            if let Some(first) = data[&k].as_array_mut().and_then(|a| a.first_mut()).and_then(Value::as_object_mut) {
                let fields: Vec<String> = first.keys().cloned().collect();
                if !fields.is_empty() {
                    first.insert(fields[field.index(fields.len())].clone(), replacement.clone());
                }
            }
            let _ = parse(&doc.to_string());
            doc["Controllers"][0]["Response Data"][&k] = replacement;
            let _ = parse(&doc.to_string());
        }
    }
}
