//! Asset sets: per-host values operators import (`qs assets import FILE.yaml`) for templates
//! to read as `assets.*`, as Mercury's `press_static_assets` did.
//!
//! ```yaml
//! 013c16030373937262a32e831ff18c941b6481ded8:   # a MercuryId
//!   bmc: {ip: 10.0.0.5, user: admin}
//! CZ2D1234AB:                                  # or a serial number
//!   rack: 12
//!   bios_image: http://fw.example/dl360/u32-2.90.bin
//! ```

use serde_json::Value;

use crate::yaml::{self, Located};

/// Why an asset file is refused, with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AssetError {
    /// 1-based line.
    pub line: usize,
    /// Why.
    pub reason: String,
}

impl From<Located> for AssetError {
    fn from(located: Located) -> Self {
        AssetError {
            line: located.at.line,
            reason: located.reason,
        }
    }
}

/// The asset sets of a file, in file order: (MercuryId or serial number, its values as a JSON
/// object). Keys are taken as written (a numeric serial stays text); each value must be a
/// mapping; duplicate keys are errors.
pub fn parse_assets(text: &str) -> Result<Vec<(String, Value)>, AssetError> {
    let top = yaml::parse_mapping(text)?;
    let mut sets = Vec::with_capacity(top.len());
    for (key, node) in top.iter() {
        let id = key.as_str();
        if !is_asset_key(id) {
            return Err(Located::at(
                key.span(),
                format!("`{id}` is not a MercuryId or serial number (no spaces or `/`)"),
            )
            .into());
        }
        let marked_yaml::Node::Mapping(map) = node else {
            return Err(Located::at(
                node.span(),
                format!("the assets of `{id}` must be a mapping of names to values"),
            )
            .into());
        };
        let values = yaml::mapping_to_json(map, id, &mut |_, _, _| Ok(()))?;
        sets.push((id.to_owned(), Value::Object(values)));
    }
    Ok(sets)
}

/// Whether a text can name an asset set: non-empty, printable, no spaces or `/` (it travels in
/// URL paths).
pub fn is_asset_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 256 && key.chars().all(|c| c.is_ascii_graphic() && c != '/')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fixture_parses_in_file_order_with_typed_values() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/assets/assets.yaml"
        ))
        .unwrap();
        let sets = parse_assets(&text).unwrap();
        let keys: Vec<&str> = sets.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "013c16030373937262a32e831ff18c941b6481ded8",
                "CZ2D1234AB",
                "4711"
            ]
        );
        assert_eq!(sets[0].1["bmc"]["ip"], "10.0.0.5");
        assert_eq!(sets[1].1["rack"], json!(12));
        assert_eq!(
            sets[1].1["raid"]["drives"],
            json!(["252:0", "252:1", "252:2", "252:3"])
        );
        assert_eq!(sets[2].1["note"], "serial given as a number stays text");
    }

    #[test]
    fn bad_files_say_which_line() {
        for (text, line, words) in [
            (
                "SN1:\n  rack: 1\nSN1:\n  rack: 2\n",
                3,
                "duplicate key `SN1`",
            ),
            ("SN1: 12\n", 1, "must be a mapping"),
            (
                "SN1:\n  a: 1\n\"bad key\":\n  a: 2\n",
                3,
                "not a MercuryId or serial",
            ),
            ("- SN1\n", 1, "must be a mapping"),
            ("SN1:\n  a: [1\n", 3, "YAML syntax"),
        ] {
            let error = parse_assets(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.reason.contains(words), "{text:?}: {error}");
        }
        assert_eq!(parse_assets("").unwrap(), []);
    }
}
