//! `inspect`: run the inspectors now and return the inventory.

use qs_inspectors::{InspectorName, SysRoot};
use qs_proto::{ArgInfo, CapabilityInfo};
use serde_json::Value;

use crate::{CallContext, Capability, CapabilityError};

/// Re-inspects the machine and returns the full inventory document.
pub struct Inspect {
    root: SysRoot,
}

impl Inspect {
    /// Inspects the machine under `root`.
    pub fn new(root: SysRoot) -> Self {
        Self { root }
    }
}

fn parse_only(args: &Value) -> Result<Option<Vec<InspectorName>>, CapabilityError> {
    let bad = |reason: String| CapabilityError::BadArguments {
        capability: "inspect",
        reason,
    };
    let args = match args {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        _ => return Err(bad("arguments must be an object".into())),
    };
    if let Some(unknown) = args.keys().find(|k| *k != "only") {
        return Err(bad(format!("unknown argument {unknown:?}")));
    }
    let Some(only) = args.get("only") else {
        return Ok(None);
    };
    let names = only
        .as_array()
        .ok_or_else(|| bad("`only` must be a list of inspector names".into()))?;
    names
        .iter()
        .map(|n| {
            let text = n
                .as_str()
                .ok_or_else(|| bad("inspector names are strings".into()))?;
            text.parse::<InspectorName>()
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Capability for Inspect {
    fn info(&self) -> CapabilityInfo {
        CapabilityInfo {
            name: "inspect".into(),
            doc: "Run the hardware inspectors now and return the full inventory".into(),
            args: vec![ArgInfo {
                name: "only".into(),
                kind: "array".into(),
                required: false,
                doc: "inspector names to run (default: all)".into(),
                default: None,
                choices: None,
            }],
            exclusive: false,
            destructive: false,
            default_timeout: 300,
        }
    }

    fn call(&self, args: &Value, ctx: &CallContext) -> Result<Value, CapabilityError> {
        let only = parse_only(args)?;
        ctx.progress("inspecting", Some(0.0));
        let mut inventory = qs_inspectors::run_all(&self.root, only.as_deref());
        if ctx.is_cancelled() {
            return Err(CapabilityError::Cancelled {
                output: Value::Null,
            });
        }
        ctx.progress(
            "inspected; asking drives for SMART health and the BMC",
            Some(60.0),
        );
        qs_inspectors::add_slow_facts(&self.root, &mut inventory);
        ctx.progress("inspected", Some(100.0));
        serde_json::to_value(&inventory).map_err(|e| CapabilityError::Failed {
            capability: "inspect",
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_bad_arguments_with_their_names() {
        for args in [
            json!({"onyl": ["cpu"]}),
            json!({"only": "cpu"}),
            json!({"only": ["gpu"]}),
            json!(3),
        ] {
            assert!(
                matches!(parse_only(&args), Err(CapabilityError::BadArguments { .. })),
                "{args}"
            );
        }
        assert!(matches!(parse_only(&json!({})), Ok(None)));
    }
}
