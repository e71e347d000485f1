//! MongoDB filter documents, compiled once and matched against many documents.

use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::order::{bracket, compare, equal};
use super::path::FieldPath;
use super::QueryError;

/// Largest compiled regex accepted, so a hostile pattern cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct Filter(Expr);

#[derive(Debug, Clone)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Nor(Vec<Expr>),
    Field(FieldPath, Cond),
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

#[derive(Debug, Clone)]
enum InItem {
    Value(Value),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum Cond {
    Eq(Value),
    Ne(Value),
    Cmp(CmpOp, Value),
    In(Vec<InItem>),
    Nin(Vec<InItem>),
    Exists(bool),
    Regex(Regex),
    Size(usize),
    All(Vec<Value>),
    ElemMatchFilter(Box<Expr>),
    ElemMatchConds(Vec<Cond>),
    Not(Vec<Cond>),
    AllOf(Vec<Cond>),
}

impl Filter {
    /// Compiles a filter document; `{}` matches everything.
    pub fn parse(doc: &Value) -> Result<Filter, QueryError> {
        let map = doc.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "filter".into(),
            expected: "a document",
        })?;
        Ok(Filter(parse_document(map)?))
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Value) -> bool {
        eval(&self.0, doc)
    }
}

fn parse_document(map: &Map<String, Value>) -> Result<Expr, QueryError> {
    let mut parts = Vec::with_capacity(map.len());
    for (key, value) in map {
        parts.push(match key.as_str() {
            "$and" => Expr::And(parse_clauses("$and", value)?),
            "$or" => Expr::Or(parse_clauses("$or", value)?),
            "$nor" => Expr::Nor(parse_clauses("$nor", value)?),
            op if op.starts_with('$') => {
                return Err(QueryError::UnknownOperator {
                    operator: op.to_owned(),
                })
            }
            field => Expr::Field(FieldPath::parse(field), parse_condition(value)?),
        });
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

fn is_operator_doc(value: &Value) -> Option<&Map<String, Value>> {
    value
        .as_object()
        .filter(|m| m.keys().next().is_some_and(|k| k.starts_with('$')))
}

/// A field's condition: an operator document, or a value to equal.
fn parse_condition(value: &Value) -> Result<Cond, QueryError> {
    match is_operator_doc(value) {
        Some(ops) => Ok(Cond::AllOf(parse_operators(ops)?)),
        None => Ok(Cond::Eq(value.clone())),
    }
}

fn regex(pattern: &str, options: &str) -> Result<Regex, QueryError> {
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
    builder.build().map_err(|source| QueryError::BadRegex {
        pattern: pattern.chars().take(200).collect(),
        source,
    })
}

fn operand_array<'a>(op: &str, v: &'a Value) -> Result<&'a Vec<Value>, QueryError> {
    v.as_array().ok_or_else(|| QueryError::BadOperand {
        operator: op.to_owned(),
        expected: "an array",
    })
}

fn in_items(op: &str, v: &Value) -> Result<Vec<InItem>, QueryError> {
    operand_array(op, v)?
        .iter()
        .map(
            |item| match item.as_object().and_then(|m| m.get("$regex")) {
                Some(Value::String(p)) => {
                    let options = item.get("$options").and_then(Value::as_str).unwrap_or("");
                    Ok(InItem::Regex(regex(p, options)?))
                }
                _ => Ok(InItem::Value(item.clone())),
            },
        )
        .collect()
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
            "$in" => Cond::In(in_items(op, v)?),
            "$nin" => Cond::Nin(in_items(op, v)?),
            "$exists" => Cond::Exists(truthy(v)),
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
            "$size" => {
                let n = v
                    .as_u64()
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                    .ok_or_else(|| QueryError::BadOperand {
                        operator: "$size".into(),
                        expected: "a non-negative whole number",
                    })?;
                Cond::Size(usize::try_from(n).unwrap_or(usize::MAX))
            }
            "$all" => Cond::All(operand_array(op, v)?.clone()),
            "$elemMatch" => {
                let spec = v.as_object().ok_or_else(|| QueryError::BadOperand {
                    operator: "$elemMatch".into(),
                    expected: "a document",
                })?;
                match is_operator_doc(v) {
                    Some(ops)
                        if !ops
                            .keys()
                            .any(|k| matches!(k.as_str(), "$and" | "$or" | "$nor")) =>
                    {
                        Cond::ElemMatchConds(parse_operators(ops)?)
                    }
                    _ => Cond::ElemMatchFilter(Box::new(parse_document(spec)?)),
                }
            }
            "$not" => match is_operator_doc(v) {
                Some(inner) => Cond::Not(parse_operators(inner)?),
                None => {
                    return Err(QueryError::BadOperand {
                        operator: "$not".into(),
                        expected: "an operator document such as {\"$regex\": …}",
                    })
                }
            },
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
        Expr::Field(path, cond) => {
            let found = path.resolve(doc);
            holds(cond, &found)
        }
    }
}

/// Each value reached, and for arrays also each element: what most operators test.
fn each_value<'a>(found: &'a [Option<&'a Value>]) -> impl Iterator<Item = &'a Value> + 'a {
    found.iter().flatten().flat_map(|v| {
        let elements: &[Value] = match v {
            Value::Array(items) => items,
            _ => &[],
        };
        std::iter::once(*v).chain(elements.iter())
    })
}

fn eq_null(found: &[Option<&Value>]) -> bool {
    found.iter().any(Option::is_none) || each_value(found).any(Value::is_null)
}

fn eq(found: &[Option<&Value>], target: &Value) -> bool {
    if target.is_null() {
        return eq_null(found);
    }
    each_value(found).any(|v| equal(v, target))
}

fn in_list(found: &[Option<&Value>], items: &[InItem]) -> bool {
    items.iter().any(|item| match item {
        InItem::Value(v) => eq(found, v),
        InItem::Regex(r) => each_value(found).any(|v| v.as_str().is_some_and(|s| r.is_match(s))),
    })
}

fn holds(cond: &Cond, found: &[Option<&Value>]) -> bool {
    match cond {
        Cond::Eq(v) => eq(found, v),
        Cond::Ne(v) => !eq(found, v),
        Cond::Cmp(op, target) => {
            if target.is_null() {
                return matches!(op, CmpOp::Gte | CmpOp::Lte) && eq_null(found);
            }
            each_value(found)
                .any(|v| bracket(v) == bracket(target) && op.accepts(compare(v, target)))
        }
        Cond::In(items) => in_list(found, items),
        Cond::Nin(items) => !in_list(found, items),
        Cond::Exists(want) => found.iter().any(Option::is_some) == *want,
        Cond::Regex(r) => each_value(found).any(|v| v.as_str().is_some_and(|s| r.is_match(s))),
        Cond::Size(n) => found
            .iter()
            .flatten()
            .any(|v| v.as_array().is_some_and(|a| a.len() == *n)),
        Cond::All(values) => !values.is_empty() && values.iter().all(|v| eq(found, v)),
        Cond::ElemMatchFilter(expr) => found
            .iter()
            .flatten()
            .filter_map(|v| v.as_array())
            .any(|items| items.iter().any(|e| e.is_object() && eval(expr, e))),
        Cond::ElemMatchConds(conds) => {
            found
                .iter()
                .flatten()
                .filter_map(|v| v.as_array())
                .any(|items| {
                    // With operators, each element is tested as a value, not as a field to traverse.
                    items.iter().any(|e| {
                        let single = [Some(e)];
                        conds.iter().all(|c| holds(c, &single))
                    })
                })
        }
        Cond::Not(conds) => !conds.iter().all(|c| holds(c, found)),
        Cond::AllOf(conds) => conds.iter().all(|c| holds(c, found)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
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
        assert!(m(
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
        assert!(m(json!({"cpu.flags": {"$all": ["avx2", "sse"]}}), server()));
        assert!(!m(
            json!({"cpu.flags": {"$all": ["avx512f", "sse"]}}),
            server()
        ));
        assert!(!m(json!({"cpu.flags": {"$all": []}}), server()));
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
    }

    #[test]
    fn errors_name_the_operator() {
        for (filter, name) in [
            (json!({"a": {"$bogus": 1}}), "$bogus"),
            (json!({"$where": "1"}), "$where"),
            (json!({"$expr": {}}), "$expr"),
            (json!({"a": {"$in": 3}}), "$in"),
            (json!({"$or": []}), "$or"),
            (json!({"a": {"$size": -1}}), "$size"),
            (json!({"a": {"$regex": "("}}), "("),
            (json!({"a": {"$not": 5}}), "$not"),
        ] {
            let err = Filter::parse(&filter).unwrap_err().to_string();
            assert!(err.contains(name), "{filter}: {err}");
        }
        assert!(Filter::parse(&json!([])).is_err());
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
                "a",
                "b",
                "a.b",
                "0",
                ".*",
                "("
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
                        "$and",
                        "$or",
                        "$nor",
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
