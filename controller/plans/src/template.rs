//! Per-host argument templates and step conditions (minijinja, strict about undefined values).
//!
//! Both see one context per host ([`HostContext`]):
//! `{inventory: <host document>, assets: <asset set or {}>, host: <MercuryId>,
//!   steps: {<step name>: {state, output, error}}}`.
//!
//! Typing rule of [`render_args`]: a string that is exactly one expression, `{{ x }}` (nothing
//! before `{{` or after `}}`), becomes the expression's value with its JSON type kept (a number,
//! a list, an object, a boolean, null); any other string holding `{{`, `{%` or `{#` is rendered
//! as a template and stays a string; strings without template syntax, and every non-string,
//! are kept as they are. Object keys are never templates.
//!
//! Undefined values are strict: printing, comparing or iterating one fails naming its dotted
//! path. Optional values are read with `x | default(v)` or tested with `x is defined`; a lookup
//! below a missing parent (`assets.raid.level` without `assets.raid`) still fails.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use minijinja::{Environment, ErrorKind, Expression, UndefinedBehavior};
use serde_json::{json, Map, Value};

use crate::lazy_json::LazyJson;

/// The names a template or condition may start from; anything else is a typo.
pub const CONTEXT_ROOTS: [&str; 4] = ["inventory", "assets", "host", "steps"];

/// Functions minijinja offers as globals: undeclared names, but not missing values.
const GLOBAL_FUNCTIONS: [&str; 4] = ["range", "dict", "namespace", "debug"];

/// Work one template or condition may do per host: about that many instructions or 64 times
/// as many bytes made (minijinja's fuel). Far above what argument templates need; a loop of a
/// billion iterations, or a gigabyte string, stops here instead of holding a job's creation.
pub const FUEL: u64 = 200_000;

/// One engine for the whole process: strict, so a missing value is an error, never "".
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
});

/// Why a template or condition could not be compiled or rendered. `at` says where: the
/// argument's path (`args.image.url`) or `when`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template or expression does not parse.
    #[error("{at}: template syntax: {reason}")]
    Syntax {
        /// Where the template is.
        at: String,
        /// The parser's words.
        reason: String,
    },
    /// The template needs a value this host's context lacks.
    #[error("{at}: missing value `{key}`")]
    Missing {
        /// Where the template is.
        at: String,
        /// The full dotted path of the missing value, e.g. `inventory.dmi.product_serial`.
        key: String,
    },
    /// Rendering failed for another reason (a filter's error, a type mismatch).
    #[error("{at}: {reason}")]
    Render {
        /// Where the template is.
        at: String,
        /// What went wrong.
        reason: String,
    },
}

impl TemplateError {
    /// The missing value's dotted path, when that is the reason.
    pub fn missing_key(&self) -> Option<&str> {
        match self {
            TemplateError::Missing { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The context one host's templates and conditions see, built up step by step by the engine.
/// Pass it as `&HostContext` to [`render_args`] and [`Condition::evaluate`]: templates then
/// read the inventory in place instead of a copy per call.
#[derive(Debug, Clone, PartialEq)]
pub struct HostContext {
    value: Arc<Value>,
}

impl HostContext {
    /// A host's context before any step ran; `assets: None` becomes `{}`.
    pub fn new(host: &str, inventory: Value, assets: Option<Value>) -> HostContext {
        HostContext {
            value: Arc::new(json!({
                "inventory": inventory,
                "assets": assets.unwrap_or_else(|| json!({})),
                "host": host,
                "steps": {},
            })),
        }
    }

    /// Records a step's result under `steps.<name>`; later steps' conditions and templates read it.
    pub fn record_step(&mut self, name: &str, state: &str, output: Value, error: Value) {
        // No copy: renders hold the document only while they run.
        let value = Arc::make_mut(&mut self.value);
        if let Some(steps) = value.get_mut("steps").and_then(Value::as_object_mut) {
            steps.insert(
                name.to_owned(),
                json!({"state": state, "output": output, "error": error}),
            );
        }
    }

    /// The context as JSON; passed to [`render_args`] or [`Condition::evaluate`] it is shared,
    /// not copied.
    pub fn as_value(&self) -> &Arc<Value> {
        &self.value
    }
}

/// What templates read: a shared context (`&HostContext`, [`HostContext::as_value`], any
/// `&Arc<Value>`) or a borrowed JSON context (`&Value`, copied once per call).
#[derive(Debug, Clone, Copy)]
pub enum RenderContext<'a> {
    /// A JSON document with the context's shape, copied for the call.
    Json(&'a Value),
    /// A shared JSON document with the context's shape, read in place.
    Shared(&'a Arc<Value>),
}

impl<'a> From<&'a Value> for RenderContext<'a> {
    fn from(value: &'a Value) -> Self {
        RenderContext::Json(value)
    }
}

impl<'a> From<&'a Arc<Value>> for RenderContext<'a> {
    fn from(value: &'a Arc<Value>) -> Self {
        RenderContext::Shared(value)
    }
}

impl<'a> From<&'a HostContext> for RenderContext<'a> {
    fn from(host: &'a HostContext) -> Self {
        RenderContext::Shared(&host.value)
    }
}

impl RenderContext<'_> {
    fn json(&self) -> &Value {
        match self {
            RenderContext::Json(value) => value,
            RenderContext::Shared(value) => value,
        }
    }

    fn template_value(&self) -> minijinja::Value {
        match self {
            RenderContext::Json(value) => LazyJson::root(Arc::new((*value).clone())),
            RenderContext::Shared(value) => LazyJson::root(Arc::clone(value)),
        }
    }
}

/// Renders every template string in `args` (recursively) against `context` (see the module
/// docs for the typing rule). Fails on the first template that cannot be rendered.
pub fn render_args<'a>(
    args: &Value,
    context: impl Into<RenderContext<'a>>,
) -> Result<Value, TemplateError> {
    let context = context.into();
    if !has_template(args) {
        return Ok(args.clone());
    }
    let ctx = context.template_value();
    render_value(args, "args", &ctx, context.json())
}

/// Whether any string in `value` (recursively) holds template syntax.
pub fn has_template(value: &Value) -> bool {
    match value {
        Value::String(text) => is_template(text),
        Value::Array(items) => items.iter().any(has_template),
        Value::Object(map) => map.values().any(has_template),
        _ => false,
    }
}

fn render_value(
    value: &Value,
    at: &str,
    ctx: &minijinja::Value,
    context: &Value,
) -> Result<Value, TemplateError> {
    match value {
        Value::String(text) => render_string(text, at, ctx, context),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| render_value(item, &format!("{at}[{i}]"), ctx, context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, item) in map {
                out.insert(
                    key.clone(),
                    render_value(item, &format!("{at}.{key}"), ctx, context)?,
                );
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// Whether a string holds template syntax at all.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// The expression inside a string that is exactly `{{ expr }}`, if it is one.
fn single_expression(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    (!is_template(inner) && !inner.contains("}}") && !inner.trim().is_empty()).then_some(inner)
}

fn render_string(
    text: &str,
    at: &str,
    ctx: &minijinja::Value,
    context: &Value,
) -> Result<Value, TemplateError> {
    if !is_template(text) {
        return Ok(Value::String(text.to_owned()));
    }
    if let Some(expr) = single_expression(text) {
        let compiled = ENV.compile_expression(expr).map_err(|e| syntax(at, &e))?;
        let result = compiled
            .eval(ctx)
            .map_err(|e| failure(at, &e, &compiled.undeclared_variables(true), context))?;
        if result.is_undefined() {
            return Err(missing(
                at,
                &compiled.undeclared_variables(true),
                context,
                expr.trim(),
            ));
        }
        return serde_json::to_value(&result).map_err(|e| TemplateError::Render {
            at: at.to_owned(),
            reason: e.to_string(),
        });
    }
    let template = ENV.template_from_str(text).map_err(|e| syntax(at, &e))?;
    template
        .render(ctx)
        .map(Value::String)
        .map_err(|e| failure(at, &e, &template.undeclared_variables(true), context))
}

fn syntax(at: &str, error: &minijinja::Error) -> TemplateError {
    TemplateError::Syntax {
        at: at.to_owned(),
        reason: error
            .detail()
            .map_or_else(|| error.kind().to_string(), str::to_owned),
    }
}

fn failure(
    at: &str,
    error: &minijinja::Error,
    undeclared: &std::collections::HashSet<String>,
    context: &Value,
) -> TemplateError {
    if error.kind() != ErrorKind::UndefinedError {
        return TemplateError::Render {
            at: at.to_owned(),
            reason: error.to_string(),
        };
    }
    // minijinja names the undefined expression in its detail (`x.y` is undefined): the fallback
    // for lookups the static analysis cannot follow (subscripts, loop variables).
    let reported = error
        .detail()
        .and_then(|d| d.split('`').nth(1))
        .unwrap_or("an undefined value");
    missing(at, undeclared, context, reported)
}

/// The first (sorted) dotted path the template reads that the context does not hold.
fn missing(
    at: &str,
    undeclared: &std::collections::HashSet<String>,
    context: &Value,
    fallback: &str,
) -> TemplateError {
    let sorted: BTreeSet<&String> = undeclared.iter().collect();
    let key = sorted
        .into_iter()
        .find(|path| {
            let root = path.split('.').next().unwrap_or_default();
            !GLOBAL_FUNCTIONS.contains(&root) && resolve(context, path).is_none()
        })
        .map_or_else(|| fallback.to_owned(), |path| missing_prefix(context, path));
    TemplateError::Missing {
        at: at.to_owned(),
        key,
    }
}

/// `path` cut after its first segment the context lacks: `inventory.dmi.x.y` when `dmi` has
/// no `x` is reported as `inventory.dmi.x`, the key the operator has to supply.
fn missing_prefix(context: &Value, path: &str) -> String {
    let mut current = context;
    let mut taken = Vec::new();
    for segment in path.split('.') {
        taken.push(segment);
        match current.get(segment) {
            Some(next) => current = next,
            _ => break,
        }
    }
    taken.join(".")
}

fn resolve<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(context, |value, segment| value.get(segment))
}

/// A step's `when`: a minijinja expression compiled once (at validation), evaluated per host.
#[derive(Clone)]
pub struct Condition {
    source: String,
    compiled: Arc<Expression<'static, 'static>>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Condition {
    /// Compiles an expression such as `steps.check.output.exit_code == 0`.
    pub fn compile(source: &str) -> Result<Condition, TemplateError> {
        let compiled = ENV
            .compile_expression_owned(source.to_owned())
            .map_err(|e| syntax("when", &e))?;
        Ok(Condition {
            source: source.to_owned(),
            compiled: Arc::new(compiled),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The dotted paths the expression reads from the context (`steps.check.output.exit_code`).
    pub fn reads(&self) -> BTreeSet<String> {
        self.compiled
            .undeclared_variables(true)
            .into_iter()
            .collect()
    }

    /// Whether the step runs for the host whose context this is; a value the condition needs
    /// but the context lacks is an error naming it, never a silent `false`.
    pub fn evaluate<'a>(
        &self,
        context: impl Into<RenderContext<'a>>,
    ) -> Result<bool, TemplateError> {
        let context = context.into();
        let result = self.compiled.eval(context.template_value()).map_err(|e| {
            failure(
                "when",
                &e,
                &self.compiled.undeclared_variables(true),
                context.json(),
            )
        })?;
        if result.is_undefined() {
            let undeclared = self.compiled.undeclared_variables(true);
            return Err(missing(
                "when",
                &undeclared,
                context.json(),
                self.source.trim(),
            ));
        }
        Ok(result.is_true())
    }
}

impl serde::Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Condition::compile(&source).map_err(serde::de::Error::custom)
    }
}

/// Compiles every template string in `args` without rendering it, returning the dotted paths
/// they read; `at` prefixes the paths in errors.
pub fn check_templates(args: &Value, at: &str) -> Result<BTreeSet<String>, TemplateError> {
    let mut reads = BTreeSet::new();
    check_value(args, at, &mut reads)?;
    Ok(reads)
}

fn check_value(value: &Value, at: &str, reads: &mut BTreeSet<String>) -> Result<(), TemplateError> {
    match value {
        Value::String(text) => {
            reads.extend(check_template(text, at)?);
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_value(item, &format!("{at}[{i}]"), reads)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(key, item)| check_value(item, &format!("{at}.{key}"), reads)),
        _ => Ok(()),
    }
}

/// Compiles one string if it is a template, returning the dotted paths it reads (none for a
/// plain string).
pub fn check_template(text: &str, at: &str) -> Result<BTreeSet<String>, TemplateError> {
    if !is_template(text) {
        return Ok(BTreeSet::new());
    }
    let reads = if let Some(expr) = single_expression(text) {
        let compiled = ENV.compile_expression(expr).map_err(|e| syntax(at, &e))?;
        compiled.undeclared_variables(true)
    } else {
        let template = ENV.template_from_str(text).map_err(|e| syntax(at, &e))?;
        template.undeclared_variables(true)
    };
    Ok(reads.into_iter().collect())
}

/// Whether a dotted path a template reads starts from something the context can hold.
pub fn known_root(path: &str) -> bool {
    let root = path.split('.').next().unwrap_or_default();
    CONTEXT_ROOTS.contains(&root) || GLOBAL_FUNCTIONS.contains(&root)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn host() -> HostContext {
        HostContext::new(
            "013c16030373937262a32e831ff18c941b6481ded8",
            json!({
                "dmi": {"product_serial": "SN123", "vendor": "Dell"},
                "disks": [{"name": "sda", "size": 480}, {"name": "sdb", "size": 960}],
                "mem": {"total": 68719476736_u64},
            }),
            Some(json!({"bmc": {"ip": "10.0.0.5"}, "rack": 12})),
        )
    }

    #[test]
    fn strings_render_and_single_expressions_keep_their_type() {
        let ctx = host();
        let args = json!({
            "url": "http://fw/{{ inventory.dmi.vendor | lower }}/{{ inventory.dmi.product_serial }}.bin",
            "rack": "{{ assets.rack }}",
            "disks": "{{ inventory.disks | map(attribute='name') | list }}",
            "big": "{{inventory.mem.total}}",
            "plain": "no template here",
            "nested": [{"ip": "{{ assets.bmc.ip }}"}, 7, true, null],
            "host": "{{ host }}",
            "label": "rack {{ assets.rack }}",
        });
        let out = render_args(&args, ctx.as_value()).unwrap();
        assert_eq!(out["url"], "http://fw/dell/SN123.bin");
        assert_eq!(out["rack"], json!(12));
        assert_eq!(out["disks"], json!(["sda", "sdb"]));
        assert_eq!(out["big"], json!(68719476736_u64));
        assert_eq!(out["plain"], "no template here");
        assert_eq!(out["nested"], json!([{"ip": "10.0.0.5"}, 7, true, null]));
        assert_eq!(out["host"], "013c16030373937262a32e831ff18c941b6481ded8");
        assert_eq!(out["label"], "rack 12");
    }

    #[test]
    fn a_missing_value_names_its_full_path_and_where_it_was_needed() {
        let ctx = HostContext::new("h", json!({"dmi": {"vendor": "HPE"}}), None);
        for (args, at, key) in [
            (
                json!({"serial": "SN-{{ inventory.dmi.product_serial }}"}),
                "args.serial",
                "inventory.dmi.product_serial",
            ),
            (
                json!({"x": ["{{ inventory.dmi.product_serial }}"]}),
                "args.x[0]",
                "inventory.dmi.product_serial",
            ),
            (
                json!({"ip": "{{ assets.bmc.ip }}"}),
                "args.ip",
                "assets.bmc",
            ),
            (
                json!({"n": "{{ inventory.chassis.serial | upper }}"}),
                "args.n",
                "inventory.chassis",
            ),
            (json!({"n": "{{ nothing }}"}), "args.n", "nothing"),
            (
                json!({"t": "{% for d in inventory.disks %}{{ d }}{% endfor %}"}),
                "args.t",
                "inventory.disks",
            ),
        ] {
            let error = render_args(&args, ctx.as_value()).unwrap_err();
            assert_eq!(error.missing_key(), Some(key), "{args}: {error}");
            assert!(error.to_string().starts_with(at), "{error}");
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn syntax_and_type_errors_are_told_apart() {
        let ctx = host();
        let error = render_args(&json!({"a": "{{ inventory.dmi. }}"}), ctx.as_value()).unwrap_err();
        assert!(matches!(error, TemplateError::Syntax { .. }), "{error}");
        let error =
            render_args(&json!({"a": "{{ inventory.disks + 1 }}"}), ctx.as_value()).unwrap_err();
        assert!(matches!(error, TemplateError::Render { .. }), "{error}");
    }

    #[test]
    fn runaway_templates_stop() {
        let ctx = host();
        for template in [
            "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% endfor %}",
            "{{ 'x' * 1000000000 }}",
        ] {
            let error = render_args(&json!({"a": template}), ctx.as_value()).unwrap_err();
            assert!(error.to_string().contains("fuel"), "{error}");
        }
        // Ordinary work over a sizeable inventory stays well within the budget.
        let disks: Vec<Value> = (0..2000)
            .map(|i| json!({"name": format!("sd{i}"), "size": i}))
            .collect();
        let big = HostContext::new("h", json!({"disks": disks}), None);
        let args = json!({"names": "{{ inventory.disks | selectattr('size', 'gt', 1000) | map(attribute='name') | join(',') }}"});
        let out = render_args(&args, big.as_value()).unwrap();
        assert!(out["names"].as_str().unwrap().starts_with("sd1001,sd1002"));
    }

    #[test]
    fn conditions_read_earlier_steps() {
        let mut ctx = host();
        ctx.record_step("check", "succeeded", json!({"exit_code": 0}), Value::Null);
        ctx.record_step("probe", "failed", Value::Null, json!({"message": "boom"}));
        let ok = Condition::compile("steps.check.output.exit_code == 0").unwrap();
        assert!(ok.evaluate(ctx.as_value()).unwrap());
        let failed =
            Condition::compile("steps.probe.state == 'failed' and assets.rack > 10").unwrap();
        assert!(failed.evaluate(ctx.as_value()).unwrap());
        let vendor = Condition::compile("inventory.dmi.vendor in ['HPE', 'Lenovo']").unwrap();
        assert!(!vendor.evaluate(ctx.as_value()).unwrap());
        assert_eq!(
            ok.reads().into_iter().collect::<Vec<_>>(),
            ["steps.check.output.exit_code"]
        );
        let missing = Condition::compile("steps.later.state == 'succeeded'").unwrap();
        assert_eq!(
            missing.evaluate(ctx.as_value()).unwrap_err().missing_key(),
            Some("steps.later")
        );
        let bare = Condition::compile("inventory.nothing").unwrap();
        assert_eq!(
            bare.evaluate(ctx.as_value()).unwrap_err().missing_key(),
            Some("inventory.nothing")
        );
        assert!(matches!(
            Condition::compile("steps.check ==").unwrap_err(),
            TemplateError::Syntax { .. }
        ));
    }

    #[test]
    fn optional_values_use_default_or_is_defined() {
        let mut ctx = host();
        ctx.record_step(
            "create",
            "failed",
            Value::Null,
            json!({"message": "array degraded"}),
        );
        ctx.record_step("probe", "succeeded", json!({}), Value::Null);
        for (source, expected) in [
            ("assets.bmc.wipe | default(false)", false),
            (
                "'degraded' in (steps.create.error.message | default(''))",
                true,
            ),
            (
                "'degraded' in (steps.probe.error.message | default(''))",
                false,
            ),
            ("steps.later is defined", false),
            ("steps.probe.error is none", true),
        ] {
            let condition = Condition::compile(source).unwrap();
            assert_eq!(condition.evaluate(ctx.as_value()), Ok(expected), "{source}");
        }
        let deep = Condition::compile("assets.raid.level is defined").unwrap();
        assert_eq!(
            deep.evaluate(ctx.as_value()).unwrap_err().missing_key(),
            Some("assets.raid")
        );
        let args = json!({"level": "{{ assets.raid_level | default(10) }}"});
        assert_eq!(
            render_args(&args, ctx.as_value()).unwrap(),
            json!({"level": 10})
        );
    }

    #[test]
    fn conditions_round_trip_through_json() {
        let c = Condition::compile("host == 'x'").unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, "\"host == 'x'\"");
        let back: Condition = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Condition>("\"1 +\"").is_err());
    }

    #[test]
    fn template_checks_collect_what_they_read() {
        let reads = check_templates(
            &json!({"a": "{{ steps.check.output.x }}", "b": ["x {{ inventory.dmi.vendor }}"]}),
            "args",
        )
        .unwrap();
        assert!(reads.contains("steps.check.output.x"));
        assert!(reads.contains("inventory.dmi.vendor"));
        assert!(known_root("range"));
        assert!(!known_root("inventroy.dmi"));
        let error = check_templates(&json!({"a": {"b": "{% if %}"}}), "args").unwrap_err();
        assert!(
            error.to_string().starts_with("args.a.b: template syntax"),
            "{error}"
        );
    }
}
