//! MongoDB filter documents, compiled once and matched against many documents.
//!
//! Each operator is tested against every value its path reaches (see [`crate::path`]); a
//! negated operator (`$ne`, `$nin`, `$not`, `$exists: false`) is the negation of its positive
//! form over the whole path, as in MongoDB, which is why `{"a": {"$ne": 1}}` rejects `[1, 2]`.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use crate::order::{bracket, bson_type, compare, equal, Num};
use crate::path::{FieldPath, LeafArrays};
use crate::QueryError;

/// Largest compiled regex accepted, so a hostile pattern cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest pattern accepted, in bytes.
pub const REGEX_PATTERN_LIMIT: usize = 16 * 1024;

/// A compiled filter, with the document it was compiled from.
#[derive(Debug, Clone)]
pub struct Filter {
    expr: Expr,
    document: Value,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Nor(Vec<Expr>),
    Field(FieldPath, Vec<Cond>),
}

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    fn accepts(self, o: Ordering) -> bool {
        match self {
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Gte => o != Ordering::Less,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Lte => o != Ordering::Greater,
        }
    }
}

/// A value to equal, or a regex (JSON's spelling of a BSON regex is `{"$regex", "$options"}`).
#[derive(Debug, Clone)]
enum Item {
    Value(Value),
    Regex(Regex),
}

/// The BSON types `$type` can name; JSON documents only ever hold some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeSet {
    Code(i32),
    Number,
}

#[derive(Debug, Clone)]
enum Cond {
    Eq(Value),
    Ne(Value),
    Cmp(CmpOp, Value),
    In(Vec<Item>),
    Nin(Vec<Item>),
    Exists(bool),
    Regex(Regex),
    Size(usize),
    All(Vec<Item>),
    AllElemMatch(Vec<Cond>),
    ElemMatchDocument(Box<Expr>),
    ElemMatchValue(Vec<Cond>),
    Not(Vec<Cond>),
    Type(Vec<TypeSet>),
    Mod { divisor: i64, remainder: i64 },
}

impl Filter {
    /// Compiles a filter document; `{}` matches everything.
    pub fn parse(doc: &Value) -> Result<Filter, QueryError> {
        let map = doc.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "filter".into(),
            expected: "a document",
        })?;
        Ok(Filter {
            expr: parse_document(map)?,
            document: doc.clone(),
        })
    }

    /// The validated filter document, as a backend hands it to a server.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Value) -> bool {
        eval(&self.expr, doc)
    }

    /// How many of `docs` match.
    pub fn count<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> u64 {
        docs.filter(|d| self.matches(d)).count() as u64
    }

    /// The top-level fields the filter reads: a document cut down to these fields (each kept
    /// whole) matches exactly when the whole document does, so a store can decode only them.
    pub fn top_level_fields(&self) -> BTreeSet<String> {
        self.paths()
            .into_iter()
            .map(|p| p.split('.').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The dotted paths the filter tests (`$elemMatch` conditions read inside the value at
    /// their path): a document keeping everything along each path, and each path's value
    /// whole, matches exactly when the whole document does.
    pub fn paths(&self) -> BTreeSet<String> {
        fn visit(e: &Expr, out: &mut BTreeSet<String>) {
            match e {
                Expr::And(parts) | Expr::Or(parts) | Expr::Nor(parts) => {
                    parts.iter().for_each(|p| visit(p, out))
                }
                Expr::Field(path, _) => {
                    out.insert(path.0.join("."));
                }
            }
        }
        let mut out = BTreeSet::new();
        visit(&self.expr, &mut out);
        out
    }
}

/// Top-level operators MongoDB has and this engine refuses (named in the error).
fn parse_document(map: &Map<String, Value>) -> Result<Expr, QueryError> {
    let mut parts = Vec::with_capacity(map.len());
    for (key, value) in map {
        match key.as_str() {
            "$and" => parts.push(Expr::And(parse_clauses("$and", value)?)),
            "$or" => parts.push(Expr::Or(parse_clauses("$or", value)?)),
            "$nor" => parts.push(Expr::Nor(parse_clauses("$nor", value)?)),
            // A note for the server's logs; it never changes which documents match.
            "$comment" => {}
            op if op.starts_with('$') => {
                return Err(QueryError::UnknownOperator {
                    operator: op.to_owned(),
                })
            }
            field => parts.push(Expr::Field(
                FieldPath::parse(field),
                parse_condition(value)?,
            )),
        }
    }
    Ok(if parts.len() == 1 {
        parts.pop().unwrap_or(Expr::And(Vec::new()))
    } else {
        Expr::And(parts)
    })
}

fn parse_clauses(op: &str, value: &Value) -> Result<Vec<Expr>, QueryError> {
    let bad = || QueryError::BadOperand {
        operator: op.to_owned(),
        expected: "a non-empty array of documents",
    };
    let items = value.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
    items
        .iter()
        .map(|item| item.as_object().ok_or_else(bad).and_then(parse_document))
        .collect()
}

/// An object whose first key is an operator: all its keys must then be operators.
fn operator_doc(value: &Value) -> Option<&Map<String, Value>> {
    value
        .as_object()
        .filter(|m| m.keys().next().is_some_and(|k| k.starts_with('$')))
}

/// A field's condition: an operator document, or a value to equal.
fn parse_condition(value: &Value) -> Result<Vec<Cond>, QueryError> {
    match operator_doc(value) {
        Some(ops) => parse_operators(ops),
        None => Ok(vec![Cond::Eq(value.clone())]),
    }
}

/// Compiles a pattern with the linear-time `regex` engine, refusing what it cannot run.
pub(crate) fn regex(pattern: &str, options: &str) -> Result<Regex, QueryError> {
    if pattern.len() > REGEX_PATTERN_LIMIT {
        return Err(QueryError::RegexTooLong {
            length: pattern.len(),
            limit: REGEX_PATTERN_LIMIT,
        });
    }
    let mut builder = RegexBuilder::new(pattern);
    builder.size_limit(REGEX_SIZE_LIMIT);
    for flag in options.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            other => return Err(QueryError::BadRegexOption { option: other }),
        };
    }
    builder.build().map_err(|source| {
        let shown: String = pattern.chars().take(200).collect();
        match backtracking_construct(pattern) {
            Some(construct) => QueryError::UnsupportedRegex {
                pattern: shown,
                construct,
            },
            None => QueryError::BadRegex {
                pattern: shown,
                source,
            },
        }
    })
}

/// The PCRE construct that needs a backtracking engine, if the pattern uses one.
fn backtracking_construct(pattern: &str) -> Option<&'static str> {
    for (text, name) in [
        ("(?<=", "lookbehind (?<=…)"),
        ("(?<!", "negative lookbehind (?<!…)"),
        ("(?=", "lookahead (?=…)"),
        ("(?!", "negative lookahead (?!…)"),
        ("\\k<", "named backreference \\k<…>"),
        ("(?>", "atomic group (?>…)"),
    ] {
        if pattern.contains(text) {
            return Some(name);
        }
    }
    let bytes = pattern.as_bytes();
    let backreference = bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w[0] == b'\\' && (b'1'..=b'9').contains(&w[1]) && !escaped(bytes, i));
    backreference.then_some("backreference \\N")
}

/// Whether the byte at `i` is itself escaped by an odd run of backslashes before it.
fn escaped(bytes: &[u8], i: usize) -> bool {
    bytes[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
}

fn operand_array<'a>(op: &str, v: &'a Value) -> Result<&'a Vec<Value>, QueryError> {
    v.as_array().ok_or_else(|| QueryError::BadOperand {
        operator: op.to_owned(),
        expected: "an array",
    })
}

/// A `{"$regex": p, "$options": o}` object standing for a regex value.
fn regex_value(item: &Value) -> Option<Result<Regex, QueryError>> {
    let map = item.as_object()?;
    let pattern = map.get("$regex")?.as_str()?;
    let options = match map.get("$options") {
        None => "",
        Some(Value::String(o)) => o.as_str(),
        Some(_) => return None,
    };
    if map.keys().any(|k| k != "$regex" && k != "$options") {
        return None;
    }
    Some(regex(pattern, options))
}

/// Items of `$in`, `$nin` and `$all`: values or regexes, never other operator objects.
fn items(op: &str, v: &Value) -> Result<Vec<Item>, QueryError> {
    operand_array(op, v)?
        .iter()
        .map(|item| {
            if let Some(r) = regex_value(item) {
                return r.map(Item::Regex);
            }
            if operator_doc(item).is_some() {
                return Err(QueryError::BadOperand {
                    operator: op.to_owned(),
                    expected: "values, not operator documents (cannot nest $ under it)",
                });
            }
            Ok(Item::Value(item.clone()))
        })
        .collect()
}

fn type_set(v: &Value) -> Result<TypeSet, QueryError> {
    let bad = |what: String| QueryError::BadType { value: what };
    match v {
        Value::String(alias) => {
            let code = match alias.as_str() {
                "double" => 1,
                "string" => 2,
                "object" => 3,
                "array" => 4,
                "binData" => 5,
                "undefined" => 6,
                "objectId" => 7,
                "bool" => 8,
                "date" => 9,
                "null" => 10,
                "regex" => 11,
                "dbPointer" => 12,
                "javascript" => 13,
                "symbol" => 14,
                "javascriptWithScope" => 15,
                "int" => 16,
                "timestamp" => 17,
                "long" => 18,
                "decimal" => 19,
                "minKey" => -1,
                "maxKey" => 127,
                "number" => return Ok(TypeSet::Number),
                _ => return Err(bad(format!("{alias:?}"))),
            };
            Ok(TypeSet::Code(code))
        }
        Value::Number(n) => {
            let code = match Num::of(n) {
                Num::Int(i) => i32::try_from(i).ok(),
                Num::Float(f) if f.fract() == 0.0 && f.abs() < 1000.0 => Some(f as i32),
                Num::Float(_) => None,
            };
            match code {
                Some(c @ (-1 | 1..=19 | 127)) => Ok(TypeSet::Code(c)),
                _ => Err(bad(n.to_string())),
            }
        }
        other => Err(bad(other.to_string())),
    }
}

fn parse_mod(v: &Value) -> Result<Cond, QueryError> {
    let bad = |expected| QueryError::BadOperand {
        operator: "$mod".into(),
        expected,
    };
    let parts = v
        .as_array()
        .ok_or_else(|| bad("an array [divisor, remainder]"))?;
    let [divisor, remainder] = parts.as_slice() else {
        return Err(bad("exactly two numbers [divisor, remainder]"));
    };
    let number = |v: &Value| match v {
        Value::Number(n) => Ok(Num::of(n)),
        _ => Err(bad("exactly two numbers [divisor, remainder]")),
    };
    let (divisor, remainder) = (number(divisor)?.to_i64(), number(remainder)?.to_i64());
    if divisor == 0 {
        return Err(bad("a divisor other than 0"));
    }
    Ok(Cond::Mod { divisor, remainder })
}

fn whole_number(op: &str, v: &Value) -> Result<usize, QueryError> {
    let bad = || QueryError::BadOperand {
        operator: op.to_owned(),
        expected: "a non-negative whole number",
    };
    match v {
        Value::Number(n) => match Num::of(n) {
            Num::Int(i) if i >= 0 => Ok(usize::try_from(i).unwrap_or(usize::MAX)),
            Num::Float(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as usize),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Keys that make an `$elemMatch` operand a query on documents rather than on values.
fn is_logical(key: &str) -> bool {
    matches!(
        key,
        "$and" | "$or" | "$nor" | "$where" | "$expr" | "$text" | "$jsonSchema" | "$comment"
    )
}

fn parse_operators(ops: &Map<String, Value>) -> Result<Vec<Cond>, QueryError> {
    let mut conds = Vec::with_capacity(ops.len());
    for (op, v) in ops {
        let cond = match op.as_str() {
            "$eq" => Cond::Eq(v.clone()),
            "$ne" => Cond::Ne(v.clone()),
            "$gt" => Cond::Cmp(CmpOp::Gt, v.clone()),
            "$gte" => Cond::Cmp(CmpOp::Gte, v.clone()),
            "$lt" => Cond::Cmp(CmpOp::Lt, v.clone()),
            "$lte" => Cond::Cmp(CmpOp::Lte, v.clone()),
            "$in" => Cond::In(items(op, v)?),
            "$nin" => Cond::Nin(items(op, v)?),
            "$exists" => Cond::Exists(truthy(v)),
            "$type" => Cond::Type(match v {
                Value::Array(list) => list.iter().map(type_set).collect::<Result<_, _>>()?,
                one => vec![type_set(one)?],
            }),
            "$mod" => parse_mod(v)?,
            "$regex" => {
                let pattern = v.as_str().ok_or_else(|| QueryError::BadOperand {
                    operator: "$regex".into(),
                    expected: "a string",
                })?;
                let options = match ops.get("$options") {
                    None => "",
                    Some(Value::String(o)) => o.as_str(),
                    Some(_) => {
                        return Err(QueryError::BadOperand {
                            operator: "$options".into(),
                            expected: "a string",
                        })
                    }
                };
                Cond::Regex(regex(pattern, options)?)
            }
            "$options" => {
                if !ops.contains_key("$regex") {
                    return Err(QueryError::BadOperand {
                        operator: "$options".into(),
                        expected: "to accompany $regex",
                    });
                }
                continue;
            }
            "$size" => Cond::Size(whole_number("$size", v)?),
            "$all" => {
                let list = operand_array(op, v)?;
                let elem_matches = list
                    .iter()
                    .filter(|i| {
                        i.as_object()
                            .is_some_and(|m| m.keys().next().is_some_and(|k| k == "$elemMatch"))
                    })
                    .count();
                if elem_matches == 0 {
                    Cond::All(items(op, v)?)
                } else if elem_matches == list.len() {
                    let mut all = Vec::with_capacity(list.len());
                    for item in list {
                        let spec = item.as_object().and_then(|m| m.get("$elemMatch"));
                        match (spec, item.as_object().map(Map::len)) {
                            (Some(spec), Some(1)) => all.push(parse_elem_match(spec)?),
                            _ => {
                                return Err(QueryError::BadOperand {
                                    operator: "$all".into(),
                                    expected: "items that are each exactly {$elemMatch: …}",
                                })
                            }
                        }
                    }
                    Cond::AllElemMatch(all)
                } else {
                    return Err(QueryError::BadOperand {
                        operator: "$all".into(),
                        expected: "either all {$elemMatch: …} items or none",
                    });
                }
            }
            "$elemMatch" => parse_elem_match(v)?,
            "$not" => {
                if let Some(r) = regex_value(v) {
                    Cond::Not(vec![Cond::Regex(r?)])
                } else {
                    match operator_doc(v) {
                        Some(inner) => Cond::Not(parse_operators(inner)?),
                        None => {
                            return Err(QueryError::BadOperand {
                                operator: "$not".into(),
                                expected: "a non-empty operator document such as {\"$regex\": …}",
                            })
                        }
                    }
                }
            }
            other => {
                return Err(QueryError::UnknownOperator {
                    operator: other.to_owned(),
                })
            }
        };
        conds.push(cond);
    }
    Ok(conds)
}

fn parse_elem_match(v: &Value) -> Result<Cond, QueryError> {
    let spec = v.as_object().ok_or_else(|| QueryError::BadOperand {
        operator: "$elemMatch".into(),
        expected: "a document",
    })?;
    match spec.keys().next() {
        Some(first) if first.starts_with('$') && !is_logical(first) => {
            Ok(Cond::ElemMatchValue(parse_operators(spec)?))
        }
        _ => Ok(Cond::ElemMatchDocument(Box::new(parse_document(spec)?))),
    }
}

/// `$exists` takes any value; MongoDB reads it as a boolean.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => true,
    }
}

fn eval(expr: &Expr, doc: &Value) -> bool {
    match expr {
        Expr::And(parts) => parts.iter().all(|p| eval(p, doc)),
        Expr::Or(parts) => parts.iter().any(|p| eval(p, doc)),
        Expr::Nor(parts) => !parts.iter().any(|p| eval(p, doc)),
        Expr::Field(path, conds) => conds.iter().all(|c| holds(c, path, doc)),
    }
}

/// Whether a condition holds for a path of a document.
fn holds(cond: &Cond, path: &FieldPath, doc: &Value) -> bool {
    let expand = LeafArrays::Expand;
    match cond {
        Cond::Ne(target) => !path.any(doc, expand, &mut |v| eq_single(target, v)),
        Cond::Nin(items) => !in_list(items, path, doc),
        Cond::Not(conds) => !conds.iter().all(|c| holds(c, path, doc)),
        Cond::Exists(false) => !path.any(doc, expand, &mut |v| v.is_some()),
        Cond::All(items) => {
            !items.is_empty()
                && items
                    .iter()
                    .all(|item| path.any(doc, expand, &mut |v| item_matches(item, v)))
        }
        Cond::AllElemMatch(conds) => conds.iter().all(|c| holds(c, path, doc)),
        Cond::Size(_) | Cond::ElemMatchDocument(_) | Cond::ElemMatchValue(_) => {
            path.any(doc, LeafArrays::Whole, &mut |v| single(cond, v))
        }
        _ => path.any(doc, expand, &mut |v| single(cond, v)),
    }
}

fn in_list(items: &[Item], path: &FieldPath, doc: &Value) -> bool {
    path.any(doc, LeafArrays::Expand, &mut |v| {
        items.iter().any(|item| item_matches(item, v))
    })
}

fn item_matches(item: &Item, v: Option<&Value>) -> bool {
    match item {
        Item::Value(target) => eq_single(target, v),
        Item::Regex(r) => regex_single(r, v),
    }
}

fn eq_single(target: &Value, v: Option<&Value>) -> bool {
    match v {
        None => target.is_null(),
        Some(v) => equal(v, target),
    }
}

fn regex_single(r: &Regex, v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| r.is_match(s))
}

/// Whether one value (or a missing field) satisfies a condition: MongoDB's
/// `matchesSingleElement`, also what `$elemMatch` applies to each element in its value form.
fn single(cond: &Cond, v: Option<&Value>) -> bool {
    match cond {
        Cond::Eq(target) => eq_single(target, v),
        Cond::Ne(target) => !eq_single(target, v),
        Cond::Cmp(op, target) => match v {
            None => target.is_null() && matches!(op, CmpOp::Gte | CmpOp::Lte),
            Some(v) => bracket(v) == bracket(target) && op.accepts(compare(v, target)),
        },
        Cond::In(items) => items.iter().any(|i| item_matches(i, v)),
        Cond::Nin(items) => !items.iter().any(|i| item_matches(i, v)),
        Cond::Exists(want) => v.is_some() == *want,
        Cond::Regex(r) => regex_single(r, v),
        Cond::Size(n) => v.and_then(Value::as_array).is_some_and(|a| a.len() == *n),
        Cond::All(items) => !items.is_empty() && items.iter().all(|i| item_matches(i, v)),
        Cond::AllElemMatch(conds) => conds.iter().all(|c| single(c, v)),
        Cond::ElemMatchDocument(expr) => v.and_then(Value::as_array).is_some_and(|items| {
            items.iter().any(|e| match e {
                Value::Object(_) => eval(expr, e),
                // An array element is a document whose fields are "0", "1", …
                Value::Array(inner) => eval(expr, &as_document(inner)),
                _ => false,
            })
        }),
        Cond::ElemMatchValue(conds) => v.and_then(Value::as_array).is_some_and(|items| {
            items
                .iter()
                .any(|e| conds.iter().all(|c| single(c, Some(e))))
        }),
        Cond::Not(conds) => !conds.iter().all(|c| single(c, v)),
        Cond::Type(types) => v.is_some_and(|v| {
            let code = bson_type(v);
            types.iter().any(|t| match t {
                TypeSet::Number => matches!(code, 1 | 16 | 18 | 19),
                TypeSet::Code(c) => *c == code,
            })
        }),
        Cond::Mod { divisor, remainder } => match v {
            Some(Value::Number(n)) => {
                Num::of(n).to_i64().checked_rem(*divisor).unwrap_or(0) == *remainder
            }
            _ => false,
        },
    }
}

fn as_document(items: &[Value]) -> Value {
    Value::Object(
        items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn top_level_fields_are_all_a_filter_reads() {
        let f = Filter::parse(&json!({"a.b": 1, "$or": [{"c": {"$elemMatch": {"d.e": 1}}}, {"$nor": [{"f.0": 2}]}], "$comment": "x"})).unwrap();
        let fields: Vec<String> = f.top_level_fields().into_iter().collect();
        assert_eq!(fields, vec!["a", "c", "f"]);
        assert!(Filter::parse(&json!({}))
            .unwrap()
            .top_level_fields()
            .is_empty());
    }
    use proptest::prelude::*;
    use serde_json::json;

    fn m(filter: Value, doc: Value) -> bool {
        Filter::parse(&filter).unwrap().matches(&doc)
    }

    fn server() -> Value {
        json!({
            "mercury_id": "01aa",
            "dmi": {"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R640"},
            "cpu": {"threads": 32, "flags": ["sse", "avx2"]},
            "mem": {"total": 68719476736u64},
            "interfaces": [
                {"name": "eno1", "mtu": 1500, "speed": 25000, "addresses": ["10.0.0.5/24"]},
                {"name": "eno2", "mtu": 9000}
            ],
            "agent": {"online": true}
        })
    }

    #[test]
    fn equality_on_dotted_paths_and_into_arrays() {
        assert!(m(json!({"dmi.sys_vendor": "Dell Inc."}), server()));
        assert!(!m(json!({"dmi.sys_vendor": "HPE"}), server()));
        assert!(m(json!({"interfaces.name": "eno2"}), server()));
        assert!(m(json!({"interfaces.1.name": "eno2"}), server()));
        assert!(!m(json!({"interfaces.0.name": "eno2"}), server()));
        assert!(m(json!({"cpu.flags": "avx2"}), server()));
        assert!(m(json!({"cpu.flags": ["sse", "avx2"]}), server()));
        assert!(!m(json!({"cpu.flags": ["avx2", "sse"]}), server()));
        assert!(m(json!({"mem.total": 68719476736.0}), server()));
        // Embedded documents are equal only with their fields in the same order.
        assert!(m(
            json!({"dmi": {"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R640"}}),
            server()
        ));
        assert!(!m(
            json!({"dmi": {"product_name": "PowerEdge R640", "sys_vendor": "Dell Inc."}}),
            server()
        ));
        assert!(!m(json!({"dmi": {"sys_vendor": "Dell Inc."}}), server()));
    }

    #[test]
    fn null_matches_missing_and_ne_matches_missing() {
        assert!(m(json!({"bmc": null}), server()));
        assert!(m(json!({"interfaces.speed": null}), server()));
        assert!(!m(json!({"dmi.sys_vendor": null}), server()));
        assert!(m(json!({"bmc": {"$ne": 1}}), server()));
        assert!(!m(json!({"interfaces.name": {"$ne": "eno1"}}), server()));
        assert!(m(json!({"interfaces.name": {"$nin": ["eth0"]}}), server()));
        assert!(!m(json!({"interfaces.name": {"$nin": ["eno2"]}}), server()));
        assert!(!m(json!({"a.b": null}), json!({"a": []})));
        assert!(!m(json!({"a.b": null}), json!({"a": [1]})));
        assert!(m(json!({"a.b": {"$exists": false}}), json!({"a": []})));
    }

    #[test]
    fn comparisons_stay_within_a_type_bracket() {
        assert!(m(json!({"mem.total": {"$gte": 68719476736u64}}), server()));
        assert!(m(json!({"mem.total": {"$gt": 1, "$lt": 1e12}}), server()));
        assert!(!m(json!({"mem.total": {"$gt": "a"}}), server()));
        assert!(!m(json!({"dmi.sys_vendor": {"$gt": 5}}), server()));
        assert!(m(
            json!({"dmi.sys_vendor": {"$gt": "Del", "$lt": "Dem"}}),
            server()
        ));
        assert!(m(json!({"interfaces.mtu": {"$gt": 1500}}), server()));
        assert!(!m(json!({"interfaces.mtu": {"$gt": 9000}}), server()));
        assert!(m(json!({"bmc": {"$gte": null}}), server()));
        assert!(!m(json!({"bmc": {"$gt": null}}), server()));
        assert!(!m(
            json!({"n": 9_007_199_254_740_993_i64}),
            json!({"n": 9_007_199_254_740_992.0})
        ));
    }

    #[test]
    fn in_exists_regex_size_all() {
        assert!(m(
            json!({"interfaces.name": {"$in": ["eth0", "eno2"]}}),
            server()
        ));
        assert!(m(
            json!({"interfaces.name": {"$in": [{"$regex": "^eno"}]}}),
            server()
        ));
        assert!(m(json!({"bmc": {"$in": [null]}}), server()));
        assert!(m(
            json!({"dmi": {"$exists": true}, "bmc": {"$exists": false}}),
            server()
        ));
        assert!(m(json!({"interfaces.speed": {"$exists": true}}), server()));
        assert!(m(
            json!({"dmi.product_name": {"$regex": "r6\\d0", "$options": "i"}}),
            server()
        ));
        assert!(!m(
            json!({"dmi.product_name": {"$regex": "r6\\d0"}}),
            server()
        ));
        assert!(m(
            json!({"interfaces.addresses": {"$regex": "^10\\."}}),
            server()
        ));
        assert!(m(json!({"interfaces": {"$size": 2}}), server()));
        assert!(!m(json!({"cpu.flags": {"$size": 1}}), server()));
        assert!(!m(json!({"a": {"$size": 2}}), json!({"a": [[1, 2]]})));
        assert!(m(json!({"cpu.flags": {"$all": ["avx2", "sse"]}}), server()));
        assert!(!m(
            json!({"cpu.flags": {"$all": ["avx512f", "sse"]}}),
            server()
        ));
        assert!(!m(json!({"cpu.flags": {"$all": []}}), server()));
        assert!(m(
            json!({"interfaces": {"$all": [{"$elemMatch": {"mtu": 9000}}, {"$elemMatch": {"speed": 25000}}]}}),
            server()
        ));
    }

    #[test]
    fn type_and_mod() {
        assert!(m(json!({"cpu.threads": {"$type": "int"}}), server()));
        assert!(m(json!({"cpu.threads": {"$type": 16}}), server()));
        assert!(m(json!({"mem.total": {"$type": "long"}}), server()));
        assert!(m(json!({"mem.total": {"$type": "number"}}), server()));
        assert!(!m(json!({"mem.total": {"$type": "double"}}), server()));
        assert!(m(json!({"cpu.flags": {"$type": "array"}}), server()));
        assert!(m(json!({"cpu.flags": {"$type": ["bool", 2]}}), server()));
        assert!(m(json!({"cpu.threads": {"$mod": [5, 2]}}), server()));
        assert!(m(json!({"x": {"$mod": [4, -1]}}), json!({"x": -5.5})));
        assert!(m(json!({"$comment": "why", "cpu.threads": 32}), server()));
    }

    #[test]
    fn logic_not_and_elem_match() {
        assert!(m(
            json!({"$or": [{"dmi.sys_vendor": "HPE"}, {"mem.total": {"$gt": 0}}]}),
            server()
        ));
        assert!(!m(
            json!({"$and": [{"dmi.sys_vendor": "HPE"}, {"mem.total": {"$gt": 0}}]}),
            server()
        ));
        assert!(!m(
            json!({"$nor": [{"dmi.sys_vendor": "Dell Inc."}]}),
            server()
        ));
        assert!(m(
            json!({"dmi.sys_vendor": {"$not": {"$regex": "^HP"}}}),
            server()
        ));
        assert!(!m(
            json!({"dmi.sys_vendor": {"$not": {"$eq": "Dell Inc."}}}),
            server()
        ));
        // Both conditions on the same element, unlike two separate dotted conditions.
        assert!(!m(
            json!({"interfaces": {"$elemMatch": {"name": "eno2", "speed": {"$gte": 25000}}}}),
            server()
        ));
        assert!(m(
            json!({"interfaces.name": "eno2", "interfaces.speed": {"$gte": 25000}}),
            server()
        ));
        assert!(m(
            json!({"interfaces": {"$elemMatch": {"name": "eno1", "speed": {"$gte": 25000}}}}),
            server()
        ));
        assert!(m(
            json!({"cpu.flags": {"$elemMatch": {"$regex": "^av"}}}),
            json!({"cpu": {"flags": ["sse", "avx2"]}})
        ));
        assert!(!m(
            json!({"cpu.threads": {"$elemMatch": {"$gt": 1}}}),
            server()
        ));
        // The value form tests elements as they are: a nested array is not looked into.
        assert!(!m(
            json!({"a": {"$elemMatch": {"$eq": 1}}}),
            json!({"a": [[1]]})
        ));
    }

    #[test]
    fn errors_name_the_operator() {
        for (filter, name) in [
            (json!({"a": {"$bogus": 1}}), "$bogus"),
            (json!({"$where": "1"}), "$where"),
            (json!({"$expr": {}}), "$expr"),
            (json!({"a": {"$in": 3}}), "$in"),
            (json!({"a": {"$in": [{"$gt": 1}]}}), "$in"),
            (json!({"$or": []}), "$or"),
            (json!({"a": {"$size": -1}}), "$size"),
            (json!({"a": {"$regex": "("}}), "("),
            (json!({"a": {"$regex": "a(?=b)"}}), "lookahead"),
            (json!({"a": {"$regex": "(a)\\1"}}), "backreference"),
            (json!({"a": {"$not": 5}}), "$not"),
            (json!({"a": {"$mod": [0, 1]}}), "$mod"),
            (json!({"a": {"$mod": [1]}}), "$mod"),
            (json!({"a": {"$type": "strin"}}), "strin"),
            (json!({"a": {"$type": 42}}), "42"),
            (
                json!({"a": {"$all": [{"$elemMatch": {"b": 1}}, 1]}}),
                "$all",
            ),
        ] {
            let err = Filter::parse(&filter).unwrap_err().to_string();
            assert!(err.contains(name), "{filter}: {err}");
        }
        assert!(Filter::parse(&json!([])).is_err());
        let long = "a".repeat(REGEX_PATTERN_LIMIT + 1);
        assert!(Filter::parse(&json!({"a": {"$regex": long}})).is_err());
        // An escaped backslash before a digit is not a backreference.
        assert!(Filter::parse(&json!({"a": {"$regex": "\\\\1"}})).is_ok());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "$eq",
                "$gt",
                "$in",
                "$regex",
                "$elemMatch",
                "$not",
                "$size",
                "$all",
                "$exists",
                "$type",
                "$mod",
                "a",
                "b",
                "a.b",
                "0",
                ".*",
                "(",
                "number",
                "array"
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "$eq",
                        "$ne",
                        "$gt",
                        "$lte",
                        "$in",
                        "$nin",
                        "$regex",
                        "$options",
                        "$elemMatch",
                        "$not",
                        "$size",
                        "$all",
                        "$exists",
                        "$type",
                        "$mod",
                        "$and",
                        "$or",
                        "$nor",
                        "$comment",
                        "a",
                        "b",
                        "a.b",
                        "b.0",
                        "0"
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_filters_and_documents_never_panic(filter in arb_json(), doc in arb_json()) {
            if let Ok(f) = Filter::parse(&filter) {
                let _ = f.matches(&doc);
            }
        }
    }
}
