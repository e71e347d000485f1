//! Plans: ordered steps, each a capability with arguments, an optional condition on earlier
//! steps, optional recovery steps and an optional timeout.
//!
//! ```yaml
//! name: bios-update
//! description: Flash the BIOS when the host runs an old one
//! steps:
//!   - name: check
//!     capability: run
//!     args: {command: [fwupdate, --check, "{{ inventory.dmi.product_serial }}"]}
//!   - name: flash
//!     capability: run
//!     when: steps.check.output.exit_code == 1
//!     timeout: 20m
//!     args: {shell: "flash --image {{ assets.bios_image }}"}
//!     on_failure:
//!       - name: rollback
//!         capability: run
//!         args: {command: [flash, --rollback]}
//! ```
//!
//! Step names are unique in the whole plan (recovery steps included) and are identifiers
//! (`[A-Za-z_][A-Za-z0-9_]*`) so `steps.<name>` reads them. A step's `when` and templates may
//! read the steps before it and their recovery steps; a recovery step may also read the step it
//! recovers and the recovery steps before it. Unknown fields are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedSequenceNode};
use marked_yaml::{Node, Span};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::template::{self, Condition, CONTEXT_ROOTS};
use crate::yaml::{self, Located};

/// A validated plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Its name as written in the file.
    pub name: String,
    /// What it does, for `qs plans list`.
    #[serde(default)]
    pub description: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// One step of a plan (or of a step's recovery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Unique in the plan; `steps.<name>` in later conditions and templates.
    pub name: String,
    /// The capability it calls.
    pub capability: String,
    /// Arguments; strings may be templates, rendered per host ([`crate::render_args`]).
    #[serde(default = "empty_object")]
    pub args: Value,
    /// Runs only when this is true for the host ([`Condition::evaluate`]); always without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Recovery steps, run in order when this step fails (never nested further).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<Step>,
    /// Longest this step may run; without it, the capability's default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "timeout_text"
    )]
    pub timeout: Option<Duration>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl Plan {
    /// Every step, recovery steps right after the step they recover.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .flat_map(|step| std::iter::once(step).chain(step.on_failure.iter()))
    }

    /// A step (or recovery step) by name.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.all_steps().find(|step| step.name == name)
    }

    /// The capabilities the plan may call, each once, sorted.
    pub fn capabilities(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.all_steps().map(|s| s.capability.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Timeouts as humantime text (`"20m"`), as plan files write them.
mod timeout_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Why a plan file is refused: the file, the line and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("{}: cannot read the plan", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid plan.
    #[error("{}:{line}: {reason}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Why.
        reason: String,
    },
}

impl PlanError {
    fn invalid(file: &Path, located: Located) -> PlanError {
        PlanError::Invalid {
            file: file.to_owned(),
            line: located.at.line,
            column: located.at.column,
            reason: located.reason,
        }
    }
}

/// Reads and validates one plan file.
pub fn validate_file(path: &Path) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse_plan(&text, path)
}

/// Validates a plan's text; `file` only names it in errors.
pub fn parse_plan(text: &str, file: &Path) -> Result<Plan, PlanError> {
    parse(text).map_err(|located| PlanError::invalid(file, located))
}

const PLAN_FIELDS: [&str; 3] = ["name", "description", "steps"];
const STEP_FIELDS: [&str; 6] = [
    "name",
    "capability",
    "args",
    "when",
    "on_failure",
    "timeout",
];

fn parse(text: &str) -> Result<Plan, Located> {
    let top = yaml::parse_mapping(text)?;
    check_fields(&top, &PLAN_FIELDS, "a plan")?;
    let name = required_string(&top, "name", "the plan")?;
    let description = optional_string(&top, "description")?.unwrap_or_default();
    let steps_node = top
        .get_node("steps")
        .ok_or_else(|| Located::at(top.span(), "a plan needs `steps` (a list of steps)"))?;
    let steps_seq = sequence(steps_node, "`steps`")?;
    if steps_seq.is_empty() {
        return Err(Located::at(steps_node.span(), "`steps` is empty"));
    }
    let mut names = Names {
        lines: BTreeMap::new(),
        declared: declared_names(steps_seq),
    };
    let mut steps = Vec::with_capacity(steps_seq.len());
    for node in steps_seq.iter() {
        // A main step sees the main steps before it and their recovery steps.
        let visible = names.all();
        let (mut step, recovery) = parse_step(node, &mut names, &visible, false)?;
        let mut recovery_visible = names.all();
        for node in recovery
            .map(|r| r.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let (recovery_step, _) = parse_step(node, &mut names, &recovery_visible, true)?;
            recovery_visible.insert(recovery_step.name.clone());
            step.on_failure.push(recovery_step);
        }
        steps.push(step);
    }
    Ok(Plan {
        name,
        description,
        steps,
    })
}

/// Step names seen so far, with the line each was defined on, and every name the file
/// declares (to tell a later step from a typo).
struct Names {
    lines: BTreeMap<String, usize>,
    declared: std::collections::BTreeSet<String>,
}

fn declared_names(steps: &MarkedSequenceNode) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for step in steps.iter().filter_map(Node::as_mapping) {
        names.extend(step.get_scalar("name").map(|n| n.as_str().to_owned()));
        for recovery in step
            .get_sequence("on_failure")
            .into_iter()
            .flat_map(|seq| seq.iter())
            .filter_map(Node::as_mapping)
        {
            names.extend(recovery.get_scalar("name").map(|n| n.as_str().to_owned()));
        }
    }
    names
}

impl Names {
    fn all(&self) -> std::collections::BTreeSet<String> {
        self.lines.keys().cloned().collect()
    }
}

/// One step; its `on_failure` list is returned unparsed so the caller can give it the right
/// visibility.
fn parse_step<'a>(
    node: &'a Node,
    names: &mut Names,
    visible: &std::collections::BTreeSet<String>,
    recovery: bool,
) -> Result<(Step, Option<&'a MarkedSequenceNode>), Located> {
    let Node::Mapping(map) = node else {
        return Err(Located::at(
            node.span(),
            "a step must be a mapping with `name` and `capability`",
        ));
    };
    check_fields(map, &STEP_FIELDS, "a step")?;
    let name = required_string(map, "name", "a step")?;
    let name_span = map.get_node("name").map_or_else(|| map.span(), Node::span);
    if !is_identifier(&name) {
        return Err(Located::at(
            name_span,
            format!("step name `{name}` must be letters, digits and `_`, not starting with a digit (it is read as steps.{name})"),
        ));
    }
    let line = yaml::position(name_span).line;
    if let Some(first) = names.lines.get(&name) {
        return Err(Located::at(
            name_span,
            format!("duplicate step name `{name}` (first at line {first})"),
        ));
    }
    let capability = required_string(map, "capability", &format!("step `{name}`"))?;
    let args = match map.get_node("args") {
        None => empty_object(),
        Some(Node::Mapping(args)) => {
            let mut check = |text: &str, at: &str, span: &Span| {
                let reads = template::check_template(text, at)
                    .map_err(|e| Located::at(span, format!("step `{name}`: {e}")))?;
                check_reads(&reads, &name, at, visible, &names.declared, span)
            };
            Value::Object(yaml::mapping_to_json(args, "args", &mut check)?)
        }
        Some(other) => {
            return Err(Located::at(
                other.span(),
                format!("step `{name}`: `args` must be a mapping"),
            ))
        }
    };
    let when = match map.get_node("when") {
        None => None,
        Some(node) => {
            let text = scalar_text(node, &format!("step `{name}`: `when`"))?;
            let condition = Condition::compile(text)
                .map_err(|e| Located::at(node.span(), format!("step `{name}`: {e}")))?;
            check_reads(
                &condition.reads(),
                &name,
                "when",
                visible,
                &names.declared,
                node.span(),
            )?;
            Some(condition)
        }
    };
    let timeout = match map.get_node("timeout") {
        None => None,
        Some(node) => {
            let text = scalar_text(node, &format!("step `{name}`: `timeout`"))?;
            let timeout = humantime::parse_duration(text).map_err(|e| {
                Located::at(
                    node.span(),
                    format!("step `{name}`: bad timeout `{text}`: {e} (write e.g. 90s, 20m, 2h)"),
                )
            })?;
            if timeout.is_zero() {
                return Err(Located::at(
                    node.span(),
                    format!("step `{name}`: timeout must be longer than zero"),
                ));
            }
            Some(timeout)
        }
    };
    let on_failure = match map.get_node("on_failure") {
        None => None,
        Some(_) if recovery => {
            return Err(Located::at(
                key_span(map, "on_failure"),
                format!("recovery step `{name}` cannot have `on_failure` of its own"),
            ));
        }
        Some(node) => Some(sequence(node, &format!("step `{name}`: `on_failure`"))?),
    };
    names.lines.insert(name.clone(), line);
    Ok((
        Step {
            name,
            capability,
            args,
            when,
            on_failure: Vec::new(),
            timeout,
        },
        on_failure,
    ))
}

/// Every path a condition or template reads starts at a context root, and `steps.<x>` names a
/// step that has run by then.
fn check_reads(
    reads: &std::collections::BTreeSet<String>,
    step: &str,
    at: &str,
    visible: &std::collections::BTreeSet<String>,
    declared: &std::collections::BTreeSet<String>,
    span: &Span,
) -> Result<(), Located> {
    for path in reads {
        if !template::known_root(path) {
            let root = path.split('.').next().unwrap_or_default();
            return Err(Located::at(
                span,
                format!(
                    "step `{step}` ({at}): unknown variable `{root}` (templates read {})",
                    CONTEXT_ROOTS.join(", ")
                ),
            ));
        }
        let mut segments = path.split('.');
        if segments.next() != Some("steps") {
            continue;
        }
        // `steps` alone (a subscript like steps['x']) cannot be checked before it runs.
        let Some(target) = segments.next() else {
            continue;
        };
        if !visible.contains(target) {
            let reason = if target == step {
                format!("step `{step}` ({at}) refers to itself")
            } else if declared.contains(target) {
                format!("step `{step}` ({at}) refers to `{target}`, which is not an earlier step")
            } else {
                format!("step `{step}` ({at}) refers to `{target}`, but the plan has no step of that name")
            };
            return Err(Located::at(span, reason));
        }
    }
    Ok(())
}

/// Where a key is written (the mapping's start if it is absent).
fn key_span<'a>(map: &'a MarkedMappingNode, key: &str) -> &'a Span {
    map.keys()
        .find(|k| k.as_str() == key)
        .map_or_else(|| map.span(), |k| k.span())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_fields(map: &MarkedMappingNode, allowed: &[&str], what: &str) -> Result<(), Located> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(Located::at(
                key.span(),
                format!(
                    "unknown field `{}` in {what} (expected one of: {})",
                    key.as_str(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn scalar_text<'a>(node: &'a Node, what: &str) -> Result<&'a str, Located> {
    match node {
        Node::Scalar(s) if !s.as_str().is_empty() => Ok(s.as_str()),
        other => Err(Located::at(
            other.span(),
            format!("{what} must be a non-empty string"),
        )),
    }
}

fn required_string(map: &MarkedMappingNode, key: &str, owner: &str) -> Result<String, Located> {
    match map.get_node(key) {
        Some(node) => scalar_text(node, &format!("`{key}` of {owner}")).map(str::to_owned),
        None => Err(Located::at(map.span(), format!("{owner} needs `{key}`"))),
    }
}

fn optional_string(map: &MarkedMappingNode, key: &str) -> Result<Option<String>, Located> {
    match map.get_node(key) {
        None => Ok(None),
        Some(Node::Scalar(s)) => Ok(Some(s.as_str().to_owned())),
        Some(other) => Err(Located::at(
            other.span(),
            format!("`{key}` must be a string"),
        )),
    }
}

fn sequence<'a>(node: &'a Node, what: &str) -> Result<&'a MarkedSequenceNode, Located> {
    match node {
        Node::Sequence(seq) => Ok(seq),
        other => Err(Located::at(
            other.span(),
            format!("{what} must be a list of steps"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    #[test]
    fn the_firmware_plan_validates_with_its_recovery_steps() {
        let plan = validate_file(&fixture("plans/firmware/bios-update.yaml")).unwrap();
        assert_eq!(plan.name, "bios-update");
        let names: Vec<&str> = plan.all_steps().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "check",
                "stage",
                "flash",
                "restore_settings",
                "report_failure",
                "verify"
            ]
        );
        let flash = plan.step("flash").unwrap();
        assert_eq!(flash.timeout, Some(Duration::from_secs(20 * 60)));
        assert_eq!(
            flash.when.as_ref().unwrap().source(),
            "steps.check.output.exit_code == 1"
        );
        assert_eq!(flash.on_failure.len(), 2);
        assert_eq!(flash.args["image"], "{{ assets.bios_image }}");
        assert_eq!(plan.capabilities(), ["run"]);
    }

    #[test]
    fn the_raid_plan_keeps_typed_arguments() {
        let plan = validate_file(&fixture("plans/raid/raid10.yaml")).unwrap();
        let create = plan.step("create").unwrap();
        assert_eq!(create.args["level"], json!(10));
        assert_eq!(create.args["strip_kib"], json!(256));
        assert_eq!(create.args["drives"], "{{ assets.raid.drives }}");
        assert_eq!(create.args["label"], "\"quoted\" {{ host }}");
        assert!(plan.step("recreate_degraded").is_some());
    }

    #[test]
    fn plans_round_trip_through_json_for_job_records() {
        let plan = validate_file(&fixture("plans/firmware/bios-update.yaml")).unwrap();
        let value = serde_json::to_value(&plan).unwrap();
        assert_eq!(value["steps"][2]["timeout"], "20m");
        assert_eq!(
            value["steps"][2]["when"],
            "steps.check.output.exit_code == 1"
        );
        let back: Plan = serde_json::from_value(value).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn each_bad_plan_is_refused_with_its_line_and_reason() {
        let dir = fixture("bad");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Each bad fixture says on its first line what it expects: `# expect LINE: words`.
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect "))
                .unwrap();
            let (line, words) = expect.split_once(": ").unwrap();
            let error = validate_file(&path).unwrap_err();
            let PlanError::Invalid {
                file,
                line: got,
                reason,
                ..
            } = &error
            else {
                panic!("{}: {error}", path.display());
            };
            assert_eq!(file, &path);
            assert_eq!(got.to_string(), line, "{error}");
            assert!(reason.contains(words), "{}: {error}", path.display());
            assert!(error
                .to_string()
                .starts_with(&format!("{}:{line}: ", path.display())));
            checked += 1;
        }
        assert!(checked >= 12, "only {checked} bad fixtures");
    }

    #[test]
    fn the_firmware_plan_renders_per_host_and_its_conditions_follow_results() {
        use crate::template::{render_args, HostContext};
        let plan = validate_file(&fixture("plans/firmware/bios-update.yaml")).unwrap();
        let mut host = HostContext::new(
            "h1",
            json!({"dmi": {"product_serial": "CZ2D1234AB", "vendor": "HPE"}}),
            Some(json!({"bios_image": "http://fw/u32.bin", "bios_version": "2.90"})),
        );
        let check = render_args(&plan.steps[0].args, host.as_value()).unwrap();
        assert_eq!(
            check["command"],
            json!([
                "fwupdate",
                "--check",
                "--serial",
                "CZ2D1234AB",
                "--want",
                "2.90"
            ])
        );
        host.record_step("check", "succeeded", json!({"exit_code": 1}), Value::Null);
        let flash = plan.step("flash").unwrap();
        assert!(flash
            .when
            .as_ref()
            .unwrap()
            .evaluate(host.as_value())
            .unwrap());
        let args = render_args(&flash.args, host.as_value()).unwrap();
        assert_eq!(
            args["shell"],
            "fwupdate --flash --image http://fw/u32.bin --keep-settings"
        );
        host.record_step(
            "flash",
            "failed",
            Value::Null,
            json!({"message": "checksum"}),
        );
        host.record_step(
            "restore_settings",
            "failed",
            Value::Null,
            json!({"message": "x"}),
        );
        let report = plan.step("report_failure").unwrap();
        assert!(report
            .when
            .as_ref()
            .unwrap()
            .evaluate(host.as_value())
            .unwrap());
        let verify = plan.step("verify").unwrap();
        assert!(!verify
            .when
            .as_ref()
            .unwrap()
            .evaluate(host.as_value())
            .unwrap());
        // A host without the asset the plan needs is refused naming the key.
        let bare = HostContext::new("h2", json!({"dmi": {"product_serial": "X"}}), None);
        let error = render_args(&plan.steps[0].args, bare.as_value()).unwrap_err();
        assert_eq!(error.missing_key(), Some("assets.bios_version"));
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let error = validate_file(Path::new("/nonexistent/plan.yaml")).unwrap_err();
        assert!(matches!(error, PlanError::Read { .. }));
        assert!(error.to_string().contains("/nonexistent/plan.yaml"));
    }

    #[test]
    fn recovery_steps_see_the_step_they_recover() {
        let text = "name: p\nsteps:\n  - name: a\n    capability: run\n    on_failure:\n      - name: r1\n        capability: run\n        when: steps.a.state == 'failed'\n      - name: r2\n        capability: run\n        args: {why: '{{ steps.r1.output }}'}\n  - name: b\n    capability: run\n    when: steps.r2.state is defined\n";
        let plan = parse_plan(text, Path::new("p.yaml")).unwrap();
        assert_eq!(plan.steps[0].on_failure.len(), 2);
        let later = text.replace("steps.r1.output", "steps.b.output");
        let error = parse_plan(&later, Path::new("p.yaml")).unwrap_err();
        assert!(error.to_string().starts_with("p.yaml:11: "), "{error}");
    }
}
