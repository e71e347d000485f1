//! The conformance suite: one set of cases (data set + request + MongoDB's answer), kept as
//! JSON files in `controller/query/conformance/`, run against any [`Backend`]: this engine
//! ([`EngineBackend`]), a MongoDB-wire server, or the controller's store.
//!
//! A case file is `{"datasets": {name: [documents]}, "cases": [case, …]}`. A case names its
//! data set (`"data"`), one request (`"find"`, `"count"`, `"distinct"` or `"aggregate"`, each
//! the body the HTTP API takes) and its expected answer: `"expect_ids"` (find: the matching
//! documents, whole, by `mercury_id`), `"expect"` (the exact answer), or `"error"` (a refusal
//! whose message contains that text). Optional: `"secantusdb"` (why the test server answers
//! otherwise than MongoDB; the expectation stays MongoDB's), `"ours_only"` (a refusal by design
//! of our backends where MongoDB itself would answer: not asked of a plain server),
//! `"unordered_fields"` (result fields whose arrays are compared as sets, e.g. `$addToSet`).
//!
//! Answers compare exactly: field order, and integer versus double. Result order counts where
//! MongoDB defines it: a find with a sort, a pipeline with a `$sort` after its last `$group`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::order::equal;
use crate::{Count, Distinct, Pipeline, Query, FIND_KEY};

/// Why a case file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The file or one of its cases does not have the expected shape.
    #[error("{path}: {what}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the case.
        what: String,
    },
}

/// A request of a case, as the HTTP API's body for it.
#[derive(Debug, Clone)]
pub enum Operation {
    /// `POST /inventory/query`: `{filter, projection, sort, limit, skip}`.
    Find(Value),
    /// `POST /inventory/count`: `{filter}`.
    Count(Value),
    /// `POST /inventory/distinct`: `{path, filter}`.
    Distinct(Value),
    /// `POST /inventory/aggregate`: `{pipeline}`.
    Aggregate(Value),
}

impl Operation {
    /// The operation's name.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Find(_) => "find",
            Operation::Count(_) => "count",
            Operation::Distinct(_) => "distinct",
            Operation::Aggregate(_) => "aggregate",
        }
    }

    /// The request body.
    pub fn body(&self) -> &Value {
        match self {
            Operation::Find(b)
            | Operation::Count(b)
            | Operation::Distinct(b)
            | Operation::Aggregate(b) => b,
        }
    }
}

/// What a case expects.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// Find: exactly these documents, whole, by `mercury_id`.
    Ids(Vec<String>),
    /// This exact answer (documents, a count, distinct values).
    Answer(Value),
    /// A refusal whose message contains this text.
    Error(String),
}

/// One case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique within its file.
    pub name: String,
    /// The data set's name in its file.
    pub dataset: String,
    /// The request.
    pub operation: Operation,
    /// MongoDB's answer.
    pub expect: Expectation,
    /// Why secantusdb answers otherwise, if it does.
    pub secantusdb: Option<String>,
    /// Why our backends refuse what MongoDB answers, if they do.
    pub ours_only: Option<String>,
    /// Top-level result fields whose arrays compare as sets.
    pub unordered_fields: Vec<String>,
}

/// A case file, loaded.
#[derive(Debug, Clone)]
pub struct CaseFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its data sets by name.
    pub datasets: BTreeMap<String, Vec<Value>>,
    /// Its cases.
    pub cases: Vec<Case>,
}

impl CaseFile {
    /// A name for a data set unique across files (`file-stem.dataset`).
    pub fn dataset_id(&self, dataset: &str) -> String {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{stem}.{dataset}")
    }
}

/// The directory of the suite's case files in this source tree.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// Loads every `*.json` file of a directory, in name order; files that cannot be used are
/// returned as errors beside the others.
pub fn load_dir(dir: &Path) -> (Vec<CaseFile>, Vec<LoadError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(source) => {
            return (
                Vec::new(),
                vec![LoadError::Read {
                    path: dir.to_owned(),
                    source,
                }],
            )
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let (mut files, mut errors) = (Vec::new(), Vec::new());
    for path in paths {
        match load_file(&path) {
            Ok(f) => files.push(f),
            Err(e) => errors.push(e),
        }
    }
    (files, errors)
}

/// Loads one case file.
pub fn load_file(path: &Path) -> Result<CaseFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let doc: Value = serde_json::from_str(&text).map_err(|source| LoadError::Json {
        path: path.to_owned(),
        source,
    })?;
    let shape = |what: String| LoadError::Shape {
        path: path.to_owned(),
        what,
    };
    let datasets: BTreeMap<String, Vec<Value>> = doc
        .get("datasets")
        .and_then(Value::as_object)
        .ok_or_else(|| shape("no \"datasets\" object".into()))?
        .iter()
        .map(|(name, docs)| {
            docs.as_array()
                .filter(|a| a.iter().all(Value::is_object))
                .map(|a| (name.clone(), a.clone()))
                .ok_or_else(|| shape(format!("data set {name:?} is not an array of documents")))
        })
        .collect::<Result<_, _>>()?;
    let cases = doc
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no \"cases\" array".into()))?;
    let mut out = Vec::with_capacity(cases.len());
    let mut names = std::collections::HashSet::new();
    for (i, c) in cases.iter().enumerate() {
        let case = parse_case(c, &datasets).map_err(|what| shape(format!("case {i}: {what}")))?;
        if !names.insert(case.name.clone()) {
            return Err(shape(format!("case {i}: duplicate name {:?}", case.name)));
        }
        out.push(case);
    }
    Ok(CaseFile {
        path: path.to_owned(),
        datasets,
        cases: out,
    })
}

fn parse_case(c: &Value, datasets: &BTreeMap<String, Vec<Value>>) -> Result<Case, String> {
    let map = c.as_object().ok_or("not an object")?;
    let name = map
        .get("name")
        .and_then(Value::as_str)
        .ok_or("no \"name\"")?
        .to_owned();
    let with_name = |what: &str| format!("{name:?}: {what}");
    let dataset = map
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| with_name("no \"data\""))?
        .to_owned();
    if !datasets.contains_key(&dataset) {
        return Err(with_name(&format!("unknown data set {dataset:?}")));
    }
    let mut operations = Vec::new();
    for (key, make) in [
        ("find", Operation::Find as fn(Value) -> Operation),
        ("count", Operation::Count),
        ("distinct", Operation::Distinct),
        ("aggregate", Operation::Aggregate),
    ] {
        if let Some(body) = map.get(key) {
            operations.push(make(body.clone()));
        }
    }
    let [operation] = <[Operation; 1]>::try_from(operations)
        .map_err(|_| with_name("needs exactly one of find, count, distinct, aggregate"))?;
    let expect = match (map.get("expect_ids"), map.get("expect"), map.get("error")) {
        (Some(ids), None, None) => Expectation::Ids(
            ids.as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| with_name("expect_ids is not an array of strings"))?,
        ),
        (None, Some(answer), None) => Expectation::Answer(answer.clone()),
        (None, None, Some(Value::String(text))) => Expectation::Error(text.clone()),
        _ => return Err(with_name("needs exactly one of expect_ids, expect, error")),
    };
    if matches!(expect, Expectation::Ids(_)) && !matches!(operation, Operation::Find(_)) {
        return Err(with_name("expect_ids is for find cases"));
    }
    let note = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(with_name(&format!("{key} must be a string (the reason)"))),
        }
    };
    let unordered_fields = match map.get("unordered_fields") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| with_name("unordered_fields is not an array of strings"))?,
    };
    let known = [
        "name",
        "data",
        "find",
        "count",
        "distinct",
        "aggregate",
        "expect_ids",
        "expect",
        "error",
        "secantusdb",
        "ours_only",
        "unordered_fields",
    ];
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(with_name(&format!("unknown key {k:?}")));
    }
    Ok(Case {
        secantusdb: note("secantusdb")?,
        ours_only: note("ours_only")?,
        name,
        dataset,
        operation,
        expect,
        unordered_fields,
    })
}

/// What a backend answered.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The answer: documents (find, aggregate), a number (count), values (distinct).
    Answer(Value),
    /// The request was refused (bad request), with the message.
    Refused(String),
}

/// Something that answers the suite's requests over a data set.
pub trait Backend {
    /// Makes a data set available under `id` (called once per data set, before its cases).
    fn load(&mut self, id: &str, docs: &[Value])
        -> impl Future<Output = Result<(), String>> + Send;

    /// Answers one request over a loaded data set; `Err` is a failure of the backend itself
    /// (not a refusal).
    fn execute(
        &mut self,
        id: &str,
        operation: &Operation,
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// Who is being tested, which decides what marks mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Our engine or one of our store backends: every case counts, refusals by design too.
    Ours,
    /// A plain MongoDB-wire server: `ours_only` cases are not asked, `secantusdb`-marked cases
    /// are asked and reported, but do not fail the run.
    Server,
}

/// One case that did not give the expected answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `file: case`.
    pub case: String,
    /// What was asked, expected and answered.
    pub detail: String,
}

/// The outcome of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Cases run.
    pub run: usize,
    /// Cases that gave the expected answer.
    pub passed: usize,
    /// Cases that did not, and count.
    pub failures: Vec<Failure>,
    /// Marked cases (server side): name, reason, and whether the server still differs.
    pub marked: Vec<(String, String, bool)>,
    /// Cases not asked, with why.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// A readable summary, every failure in full.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} cases run, {} passed, {} failed, {} marked, {} skipped\n",
            self.run,
            self.passed,
            self.failures.len(),
            self.marked.len(),
            self.skipped.len()
        );
        for f in &self.failures {
            out.push_str(&format!("FAIL {}\n{}\n", f.case, f.detail));
        }
        for (case, reason, differs) in &self.marked {
            let state = if *differs {
                "differs as marked"
            } else {
                "NOW AGREES (remove the mark)"
            };
            out.push_str(&format!("marked {case}: {state}: {reason}\n"));
        }
        out
    }
}

/// Runs every case of the files against a backend.
pub async fn run<B: Backend>(files: &[CaseFile], backend: &mut B, side: Side) -> Report {
    let mut report = Report::default();
    for file in files {
        let file_name = file
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut loaded = std::collections::HashSet::new();
        for case in &file.cases {
            let label = format!("{file_name}: {}", case.name);
            if side == Side::Server {
                if let Some(reason) = &case.ours_only {
                    report.skipped.push((label, reason.clone()));
                    continue;
                }
            }
            let id = file.dataset_id(&case.dataset);
            let docs = file
                .datasets
                .get(&case.dataset)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if loaded.insert(id.clone()) {
                if let Err(e) = backend.load(&id, docs).await {
                    report.run += 1;
                    report.failures.push(Failure {
                        case: label,
                        detail: format!("  loading data set {id} failed: {e}"),
                    });
                    continue;
                }
            }
            report.run += 1;
            let outcome = match backend.execute(&id, &case.operation).await {
                Ok(reply) => check(case, docs, &reply, side),
                Err(e) => Err(format!("backend failed: {e}")),
            };
            match (outcome, side, &case.secantusdb) {
                (Ok(()), Side::Server, Some(reason)) => {
                    report.passed += 1;
                    report.marked.push((label, reason.clone(), false));
                }
                (Ok(()), _, _) => report.passed += 1,
                (Err(_), Side::Server, Some(reason)) => {
                    report.marked.push((label, reason.clone(), true))
                }
                (Err(why), _, _) => report.failures.push(Failure {
                    case: label,
                    detail: format!(
                        "  {} {}\n  {}",
                        case.operation.name(),
                        case.operation.body(),
                        why
                    ),
                }),
            }
        }
    }
    report
}

/// Whether a reply is the expected answer; the error says how it is not.
pub fn check(case: &Case, docs: &[Value], reply: &Reply, side: Side) -> Result<(), String> {
    let answer = match (reply, &case.expect) {
        (Reply::Refused(message), Expectation::Error(text)) => {
            // Servers word their errors their own way; ours must name the problem.
            return if side == Side::Server || message.contains(text.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "refused with {message:?}, expected a refusal naming {text:?}"
                ))
            };
        }
        (Reply::Refused(message), _) => return Err(format!("refused: {message}")),
        (Reply::Answer(a), Expectation::Error(text)) => {
            return Err(format!("answered {a}, expected a refusal naming {text:?}"))
        }
        (Reply::Answer(a), _) => a,
    };
    let expected = match &case.expect {
        Expectation::Ids(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let doc = docs
                    .iter()
                    .find(|d| d.get(FIND_KEY).and_then(Value::as_str) == Some(id.as_str()))
                    .ok_or_else(|| format!("expect_ids names {id:?}, not in the data set"))?;
                out.push(doc.clone());
            }
            Value::Array(out)
        }
        Expectation::Answer(v) => v.clone(),
        Expectation::Error(_) => Value::Null,
    };
    let same = match (&case.operation, &expected, answer) {
        (Operation::Count(_), e, a) => strict_equal(e, a),
        (Operation::Distinct(_), Value::Array(e), Value::Array(a)) => same_set(e, a, |x, y| {
            equal(x, y) && bracket_kind(x) == bracket_kind(y)
        }),
        (op, Value::Array(e), Value::Array(a)) => {
            let fields = &case.unordered_fields;
            let item_eq = |x: &Value, y: &Value| documents_equal(x, y, fields);
            if ordered(op) {
                e.len() == a.len() && e.iter().zip(a).all(|(x, y)| item_eq(x, y))
            } else {
                same_set(e, a, item_eq)
            }
        }
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!("expected {expected}\n  answered {answer}"))
    }
}

fn bracket_kind(v: &Value) -> u8 {
    crate::order::bracket(v)
}

/// Whether MongoDB defines the order of this request's results.
fn ordered(op: &Operation) -> bool {
    match op {
        Operation::Find(body) => body
            .get("sort")
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty()),
        Operation::Aggregate(body) => {
            let stages = body
                .get("pipeline")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let last_group = stages.iter().rposition(|s| s.get("$group").is_some());
            let last_sort = stages.iter().rposition(|s| s.get("$sort").is_some());
            match (last_sort, last_group) {
                (Some(s), Some(g)) => s > g,
                (Some(_), None) => true,
                _ => false,
            }
        }
        _ => false,
    }
}

fn same_set(e: &[Value], a: &[Value], eq: impl Fn(&Value, &Value) -> bool) -> bool {
    if e.len() != a.len() {
        return false;
    }
    let mut used = vec![false; a.len()];
    e.iter()
        .all(|x| match (0..a.len()).find(|&i| !used[i] && eq(x, &a[i])) {
            Some(i) => {
                used[i] = true;
                true
            }
            None => false,
        })
}

fn documents_equal(x: &Value, y: &Value, unordered: &[String]) -> bool {
    if unordered.is_empty() {
        return strict_equal(x, y);
    }
    match (x, y) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
                    ka == kb
                        && match (va, vb) {
                            (Value::Array(p), Value::Array(q)) if unordered.contains(ka) => {
                                same_set(p, q, strict_equal)
                            }
                            _ => strict_equal(va, vb),
                        }
                })
        }
        _ => strict_equal(x, y),
    }
}

/// Exact equality: object fields in the same order, integers and doubles told apart.
pub fn strict_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.is_f64(), y.is_f64()) {
            (false, false) => x == y,
            (true, true) => x.as_f64() == y.as_f64(),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| strict_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kp, vp), (kq, vq))| kp == kq && strict_equal(vp, vq))
        }
        _ => a == b,
    }
}

/// This engine as a backend: the reference the other backends are held to.
#[derive(Debug, Default)]
pub struct EngineBackend {
    datasets: BTreeMap<String, Vec<Value>>,
}

impl EngineBackend {
    /// Answers a request over documents, as the embedded store does.
    pub fn answer(docs: &[Value], operation: &Operation) -> Reply {
        let result = match operation {
            Operation::Find(body) => {
                Query::from_request(body).map(|q| Value::Array(q.run(docs.iter())))
            }
            Operation::Count(body) => {
                Count::from_request(body).map(|c| Value::from(c.run(docs.iter())))
            }
            Operation::Distinct(body) => {
                Distinct::from_request(body).map(|d| Value::Array(d.run(docs.iter())))
            }
            Operation::Aggregate(body) => {
                Pipeline::from_request(body).map(|p| Value::Array(p.run(docs.iter())))
            }
        };
        match result {
            Ok(v) => Reply::Answer(v),
            Err(e) => Reply::Refused(e.to_string()),
        }
    }
}

impl Backend for EngineBackend {
    async fn load(&mut self, id: &str, docs: &[Value]) -> Result<(), String> {
        self.datasets.insert(id.to_owned(), docs.to_vec());
        Ok(())
    }

    async fn execute(&mut self, id: &str, operation: &Operation) -> Result<Reply, String> {
        let docs = self
            .datasets
            .get(id)
            .ok_or_else(|| format!("data set {id} was not loaded"))?;
        Ok(EngineBackend::answer(docs, operation))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_equality_tells_order_and_number_kinds_apart() {
        assert!(strict_equal(
            &json!({"a": 1, "b": 2}),
            &json!({"a": 1, "b": 2})
        ));
        assert!(!strict_equal(
            &json!({"a": 1, "b": 2}),
            &json!({"b": 2, "a": 1})
        ));
        assert!(!strict_equal(&json!(1), &json!(1.0)));
        assert!(strict_equal(&json!(2.5), &json!(2.5)));
    }

    #[test]
    fn bad_cases_name_the_case() {
        let dir = std::env::temp_dir().join(format!("qs-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.json");
        std::fs::write(
            &path,
            json!({"datasets": {"d": [{}]}, "cases": [{"name": "x", "data": "nope", "count": {}, "expect": 1}]}).to_string(),
        )
        .unwrap();
        let err = load_file(&path).unwrap_err().to_string();
        assert!(err.contains("\"x\"") && err.contains("nope"), "{err}");
        std::fs::write(&path, "{").unwrap();
        let (files, errors) = load_dir(&dir);
        assert!(files.is_empty());
        assert!(errors[0].to_string().contains("bad.json"), "{}", errors[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
