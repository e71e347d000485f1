//! How an agent describes the capabilities it offers, and the argument check both the agent
//! and the controller apply to a call (so they agree on what a call may carry).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One capability an agent offers, as announced at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityInfo {
    /// The name calls use, e.g. `inspect`.
    pub name: String,
    /// One line saying what it does.
    pub doc: String,
    /// The arguments it accepts.
    #[serde(default)]
    pub args: Vec<ArgInfo>,
    /// Whether it takes the agent's exclusive lock (no other exclusive call runs meanwhile).
    #[serde(default)]
    pub exclusive: bool,
    /// Whether it changes the machine (operators confirm before fanning it out).
    #[serde(default)]
    pub destructive: bool,
    /// Seconds a call may take when the caller gives no timeout; 0: the controller's default.
    #[serde(default)]
    pub default_timeout: u64,
}

/// One argument of a capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgInfo {
    /// Argument name, a key of the call's `args` map.
    pub name: String,
    /// Expected JSON type: `string`, `integer`, `number`, `boolean`, `array`, `object`, or
    /// `secret` (a string the controller passes on but never stores, logs or shows).
    pub kind: String,
    /// Whether the call fails without it.
    #[serde(default)]
    pub required: bool,
    /// One line saying what it means.
    #[serde(default)]
    pub doc: String,
    /// The value used when the call does not give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// For strings: the only values allowed.
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
}

/// What stands in for a secret argument's value wherever it is stored or shown.
pub const REDACTED: &str = "********";

impl CapabilityInfo {
    /// `args` with the value of every `secret` argument replaced by [`REDACTED`]; None when
    /// no argument given is secret.
    pub fn redact(&self, args: &Value) -> Option<Value> {
        let map = args.as_object()?;
        let secret = |name: &str| {
            self.args
                .iter()
                .any(|a| a.name == name && a.kind == "secret")
        };
        if !map.keys().any(|k| secret(k)) {
            return None;
        }
        let redacted = map
            .iter()
            .map(|(k, v)| {
                let v = if secret(k) {
                    Value::from(REDACTED)
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        Some(Value::Object(redacted))
    }

    /// Whether a call with `args` takes the agent's exclusive lock: the capability always does,
    /// or it declares a boolean `exclusive` argument and the call sets it.
    pub fn takes_exclusive_lock(&self, args: &Value) -> bool {
        self.exclusive
            || (self
                .args
                .iter()
                .any(|a| a.name == "exclusive" && a.kind == "boolean")
                && args.get("exclusive") == Some(&Value::Bool(true)))
    }
}

/// Why a call's arguments do not fit a capability's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {argument}: {reason}")]
pub struct ArgError {
    /// The offending argument's name (empty when the arguments as a whole are wrong).
    pub argument: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ArgError {
    fn new(argument: &str, reason: impl Into<String>) -> Self {
        Self {
            argument: argument.chars().take(128).collect(),
            reason: reason.into(),
        }
    }
}

/// Whether `value` has the JSON type `kind` names; a kind this build does not know (from a
/// newer agent) accepts anything, leaving the check to the capability.
fn has_kind(kind: &str, value: &Value) -> bool {
    match kind {
        "string" | "secret" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

/// Checks `args` against `info`'s schema and returns them with defaults filled in.
///
/// `args` must be an object (`null` counts as `{}`); an argument given as `null` counts as not
/// given. Refused: an argument the schema does not name, a required one missing (without a
/// default), a value of the wrong kind, a string outside the argument's `enum`.
pub fn check_args(info: &CapabilityInfo, args: &Value) -> Result<Value, ArgError> {
    let given = match args {
        Value::Null => Map::new(),
        Value::Object(map) => map.clone(),
        other => {
            return Err(ArgError::new(
                "",
                format!("arguments must be an object, not {}", kind_of(other)),
            ))
        }
    };
    if let Some(unknown) = given
        .keys()
        .find(|key| !info.args.iter().any(|arg| &arg.name == *key))
    {
        return Err(ArgError::new(
            unknown,
            format!("{} takes no such argument", info.name),
        ));
    }
    let mut checked = Map::new();
    for arg in &info.args {
        let value = match given.get(&arg.name) {
            Some(Value::Null) | None => arg.default.clone(),
            Some(value) => Some(value.clone()),
        };
        let Some(value) = value else {
            if arg.required {
                return Err(ArgError::new(&arg.name, "required"));
            }
            continue;
        };
        if !has_kind(&arg.kind, &value) {
            return Err(ArgError::new(
                &arg.name,
                format!("must be of kind {}, not {}", arg.kind, kind_of(&value)),
            ));
        }
        if let (Some(choices), Some(text)) = (&arg.choices, value.as_str()) {
            if !choices.iter().any(|c| c == text) {
                return Err(ArgError::new(
                    &arg.name,
                    format!(
                        "{:?} is not one of {}",
                        text.chars().take(128).collect::<String>(),
                        choices.join(", ")
                    ),
                ));
            }
        }
        checked.insert(arg.name.clone(), value);
    }
    Ok(Value::Object(checked))
}

/// The JSON kind of a value, in the words `ArgInfo::kind` uses.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn arg(name: &str, kind: &str) -> ArgInfo {
        ArgInfo {
            name: name.into(),
            kind: kind.into(),
            required: false,
            doc: String::new(),
            default: None,
            choices: None,
        }
    }

    fn info() -> CapabilityInfo {
        CapabilityInfo {
            name: "flash".into(),
            doc: "flash firmware".into(),
            args: vec![
                ArgInfo {
                    required: true,
                    ..arg("image", "string")
                },
                ArgInfo {
                    default: Some(json!("bios")),
                    choices: Some(vec!["bios".into(), "bmc".into()]),
                    ..arg("target", "string")
                },
                ArgInfo {
                    default: Some(json!(600)),
                    ..arg("timeout", "integer")
                },
                arg("ratio", "number"),
                arg("force", "boolean"),
                arg("command", "array"),
                arg("env", "object"),
            ],
            exclusive: true,
            destructive: true,
            default_timeout: 900,
        }
    }

    #[test]
    fn defaults_are_filled_in_and_given_values_kept() {
        let out = check_args(
            &info(),
            &json!({"image": "a.bin", "ratio": 1, "force": null}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"image": "a.bin", "target": "bios", "timeout": 600, "ratio": 1})
        );
        let out = check_args(
            &info(),
            &json!({"image": "a", "target": "bmc", "timeout": 5, "ratio": 0.5, "force": true,
                    "command": ["ls", "-l"], "env": {"A": "1"}}),
        )
        .unwrap();
        assert_eq!(out["target"], "bmc");
        assert_eq!(out["command"], json!(["ls", "-l"]));
    }

    #[test]
    fn each_mismatch_names_the_argument_and_reason() {
        let cases = [
            (
                json!({"image": "a", "colour": 1}),
                "colour",
                "flash takes no such argument",
            ),
            (json!({}), "image", "required"),
            (json!(null), "image", "required"),
            (
                json!({"image": 3}),
                "image",
                "must be of kind string, not integer",
            ),
            (
                json!({"image": "a", "timeout": 1.5}),
                "timeout",
                "must be of kind integer, not number",
            ),
            (
                json!({"image": "a", "ratio": "x"}),
                "ratio",
                "must be of kind number, not string",
            ),
            (
                json!({"image": "a", "force": "yes"}),
                "force",
                "must be of kind boolean, not string",
            ),
            (
                json!({"image": "a", "command": "ls"}),
                "command",
                "must be of kind array, not string",
            ),
            (
                json!({"image": "a", "env": []}),
                "env",
                "must be of kind object, not array",
            ),
            (
                json!({"image": "a", "target": "disk"}),
                "target",
                "\"disk\" is not one of bios, bmc",
            ),
            (
                json!(["image"]),
                "",
                "arguments must be an object, not array",
            ),
        ];
        for (args, argument, reason) in cases {
            let err = check_args(&info(), &args).unwrap_err();
            assert_eq!(
                (err.argument.as_str(), err.reason.as_str()),
                (argument, reason),
                "{args}"
            );
        }
        let err = check_args(&info(), &json!({})).unwrap_err();
        assert_eq!(err.to_string(), "argument image: required");
    }

    #[test]
    fn exclusivity_comes_from_the_capability_or_a_boolean_argument() {
        let mut info = info();
        assert!(info.takes_exclusive_lock(&json!({})));
        info.exclusive = false;
        assert!(!info.takes_exclusive_lock(&json!({"exclusive": true})));
        info.args.push(arg("exclusive", "boolean"));
        assert!(info.takes_exclusive_lock(&json!({"exclusive": true})));
        assert!(!info.takes_exclusive_lock(&json!({"exclusive": false})));
        assert!(!info.takes_exclusive_lock(&json!({"exclusive": "yes"})));
    }

    #[test]
    fn a_kind_from_a_newer_agent_accepts_anything() {
        let mut info = info();
        info.args.push(arg("when", "duration"));
        let out = check_args(&info, &json!({"image": "a", "when": "5m"})).unwrap();
        assert_eq!(out["when"], "5m");
    }

    #[test]
    fn schema_round_trips_with_enum_named_enum() {
        let info = info();
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["args"][1]["enum"], json!(["bios", "bmc"]));
        assert!(json["args"][0].get("default").is_none());
        assert_eq!(
            serde_json::from_value::<CapabilityInfo>(json).unwrap(),
            info
        );
        // What an older agent announces still decodes.
        let old: CapabilityInfo = serde_json::from_value(
            json!({"name": "inspect", "doc": "d", "args": [{"name": "only", "kind": "array"}]}),
        )
        .unwrap();
        assert!(!old.destructive);
        assert_eq!(old.default_timeout, 0);
        assert_eq!(old.args[0].choices, None);
    }

    #[test]
    fn secret_arguments_are_strings_and_redacted() {
        let mut info = info();
        info.args.push(ArgInfo {
            kind: "secret".into(),
            ..arg("password", "secret")
        });
        let args = json!({"image": "a", "password": "hunter2"});
        assert!(check_args(&info, &args).is_ok());
        assert!(check_args(&info, &json!({"image": "a", "password": 3})).is_err());
        assert_eq!(
            info.redact(&args),
            Some(json!({"image": "a", "password": REDACTED}))
        );
        assert_eq!(info.redact(&json!({"image": "a"})), None);
    }
}
