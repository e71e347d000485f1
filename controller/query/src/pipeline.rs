//! Aggregation pipelines: `$match $project $unwind $group $sort $limit $skip $count`.
//!
//! A [`Pipeline`] keeps the validated stage documents ([`Pipeline::stages`]) so a MongoDB
//! backend hands them to its server unchanged, and runs them itself for the embedded store.
//! Any other stage is refused by name.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::filter::Filter;
use crate::group::Group;
use crate::projection::Projection;
use crate::sort::Sort;
use crate::QueryError;

/// A compiled pipeline, with the stage documents it was compiled from.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Stage>,
    documents: Vec<Value>,
}

#[derive(Debug, Clone)]
enum Stage {
    Match(Filter),
    Project(Projection),
    Unwind(Unwind),
    Group(Group),
    Sort(Sort),
    Limit(usize),
    Skip(usize),
    Count(String),
}

#[derive(Debug, Clone)]
struct Unwind {
    path: Vec<String>,
    preserve: bool,
    index_field: Option<Vec<String>>,
}

fn positive_count(stage: &str, v: &Value, allow_zero: bool) -> Result<usize, QueryError> {
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    match n {
        Some(n) if allow_zero || n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(QueryError::BadOperand {
            operator: stage.to_owned(),
            expected: if allow_zero {
                "a non-negative whole number"
            } else {
                "a positive whole number"
            },
        }),
    }
}

fn unwind_path(v: &Value) -> Result<Vec<String>, QueryError> {
    let bad = || QueryError::BadOperand {
        operator: "$unwind".into(),
        expected: "a field path of the form \"$a.b\"",
    };
    let path = v
        .as_str()
        .and_then(|s| s.strip_prefix('$'))
        .ok_or_else(bad)?;
    if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
        return Err(bad());
    }
    Ok(path.split('.').map(str::to_owned).collect())
}

fn parse_unwind(v: &Value) -> Result<Unwind, QueryError> {
    if v.is_string() {
        return Ok(Unwind {
            path: unwind_path(v)?,
            preserve: false,
            index_field: None,
        });
    }
    let map = v.as_object().ok_or_else(|| QueryError::BadOperand {
        operator: "$unwind".into(),
        expected: "a field path or {path, preserveNullAndEmptyArrays, includeArrayIndex}",
    })?;
    let mut unwind = Unwind {
        path: unwind_path(map.get("path").unwrap_or(&Value::Null))?,
        preserve: false,
        index_field: None,
    };
    for (k, v) in map {
        match k.as_str() {
            "path" => {}
            "preserveNullAndEmptyArrays" => {
                unwind.preserve = v.as_bool().ok_or_else(|| QueryError::BadOperand {
                    operator: "$unwind preserveNullAndEmptyArrays".into(),
                    expected: "a boolean",
                })?;
            }
            "includeArrayIndex" => {
                let name = v
                    .as_str()
                    .filter(|s| {
                        !s.is_empty()
                            && !s.starts_with('$')
                            && !s.split('.').any(|p| p.is_empty() || p.starts_with('$'))
                    })
                    .ok_or_else(|| QueryError::BadOperand {
                        operator: "$unwind includeArrayIndex".into(),
                        expected: "a field name without a leading '$'",
                    })?;
                unwind.index_field = Some(name.split('.').map(str::to_owned).collect());
            }
            other => {
                return Err(QueryError::UnknownOperator {
                    operator: format!("$unwind option {other}"),
                })
            }
        }
    }
    Ok(unwind)
}

fn parse_stage(doc: &Value) -> Result<Stage, QueryError> {
    let map = doc
        .as_object()
        .filter(|m| m.len() == 1)
        .ok_or_else(|| QueryError::BadOperand {
            operator: "pipeline".into(),
            expected: "stages that are documents with exactly one field",
        })?;
    let Some((name, spec)) = map.iter().next() else {
        return Err(QueryError::BadOperand {
            operator: "pipeline".into(),
            expected: "stages that are documents with exactly one field",
        });
    };
    Ok(match name.as_str() {
        "$match" => Stage::Match(Filter::parse(spec)?),
        "$project" => Stage::Project(Projection::parse_stage(spec)?),
        "$unwind" => Stage::Unwind(parse_unwind(spec)?),
        "$group" => Stage::Group(Group::parse(spec)?),
        "$sort" => {
            let sort = Sort::parse(spec)?;
            if sort.is_empty() {
                return Err(QueryError::BadOperand {
                    operator: "$sort".into(),
                    expected: "at least one sort key",
                });
            }
            Stage::Sort(sort)
        }
        "$limit" => Stage::Limit(positive_count("$limit", spec, false)?),
        "$skip" => Stage::Skip(positive_count("$skip", spec, true)?),
        "$count" => {
            let name = spec
                .as_str()
                .filter(|s| !s.is_empty() && !s.starts_with('$') && !s.contains('.'))
                .ok_or_else(|| QueryError::BadOperand {
                    operator: "$count".into(),
                    expected: "a non-empty field name without '.' or a leading '$'",
                })?;
            Stage::Count(name.to_owned())
        }
        other => {
            return Err(QueryError::UnknownStage {
                stage: other.to_owned(),
            })
        }
    })
}

impl Pipeline {
    /// Compiles a pipeline: an array of stage documents.
    pub fn parse(stages: &Value) -> Result<Pipeline, QueryError> {
        let list = stages.as_array().ok_or_else(|| QueryError::BadOperand {
            operator: "pipeline".into(),
            expected: "an array of stages",
        })?;
        Ok(Pipeline {
            stages: list.iter().map(parse_stage).collect::<Result<_, _>>()?,
            documents: list.clone(),
        })
    }

    /// Parses the HTTP body `{"pipeline": [...]}`.
    pub fn from_request(body: &Value) -> Result<Pipeline, QueryError> {
        let map = crate::request_fields(body, &["pipeline"])?;
        Pipeline::parse(map.get("pipeline").unwrap_or(&Value::Array(Vec::new())))
    }

    /// The validated stage documents, as a backend hands them to a server.
    pub fn stages(&self) -> &[Value] {
        &self.documents
    }

    /// Runs the pipeline over documents in their given order.
    pub fn run<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> Vec<Value> {
        let mut current: Vec<Cow<'a, Value>> = docs.map(Cow::Borrowed).collect();
        for stage in &self.stages {
            current = match stage {
                Stage::Match(filter) => current.into_iter().filter(|d| filter.matches(d)).collect(),
                Stage::Project(p) => current.iter().map(|d| Cow::Owned(p.apply(d))).collect(),
                Stage::Unwind(u) => current
                    .iter()
                    .flat_map(|d| unwind(u, d))
                    .map(Cow::Owned)
                    .collect(),
                Stage::Group(g) => g
                    .run(current.iter().map(|d| d.as_ref()))
                    .into_iter()
                    .map(Cow::Owned)
                    .collect(),
                Stage::Sort(s) => s.sort(current),
                Stage::Limit(n) => {
                    current.truncate(*n);
                    current
                }
                Stage::Skip(n) => current.into_iter().skip(*n).collect(),
                Stage::Count(name) => {
                    if current.is_empty() {
                        Vec::new()
                    } else {
                        let mut out = Map::new();
                        out.insert(name.clone(), Value::from(current.len() as u64));
                        vec![Cow::Owned(Value::Object(out))]
                    }
                }
            };
        }
        current.into_iter().map(Cow::into_owned).collect()
    }
}

/// `Document::getNestedField`: through documents only; an array on the way is "missing".
fn nested<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(doc, |v, part| v.as_object().and_then(|m| m.get(part)))
}

/// Sets (or adds at the end) a dotted field, creating documents on the way.
fn set_nested(doc: &mut Value, path: &[String], value: Value) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(map) = doc else { return };
    if rest.is_empty() {
        map.insert(head.clone(), value);
        return;
    }
    let child = map
        .entry(head.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    set_nested(child, rest, value);
}

fn remove_nested(doc: &mut Value, path: &[String]) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let Value::Object(map) = doc else { return };
    if rest.is_empty() {
        map.shift_remove(head);
    } else if let Some(child) = map.get_mut(head) {
        remove_nested(child, rest);
    }
}

fn unwind(u: &Unwind, doc: &Value) -> Vec<Value> {
    let with_index = |mut d: Value, index: Value| {
        if let Some(field) = &u.index_field {
            set_nested(&mut d, field, index);
        }
        d
    };
    match nested(doc, &u.path) {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut d = doc.clone();
                set_nested(&mut d, &u.path, item.clone());
                with_index(d, Value::from(i as u64))
            })
            .collect(),
        Some(Value::Array(_)) if u.preserve => {
            let mut d = doc.clone();
            remove_nested(&mut d, &u.path);
            vec![with_index(d, Value::Null)]
        }
        None | Some(Value::Null) if u.preserve => vec![with_index(doc.clone(), Value::Null)],
        None | Some(Value::Null) | Some(Value::Array(_)) => Vec::new(),
        // A value that is not an array unwinds to itself.
        Some(_) => vec![with_index(doc.clone(), Value::Null)],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn run(pipeline: Value, docs: Vec<Value>) -> Vec<Value> {
        Pipeline::parse(&pipeline).unwrap().run(docs.iter())
    }

    #[test]
    fn hosts_per_bios_version() {
        let docs = vec![
            json!({"mercury_id": "a", "dmi": {"bios_version": "2.1"}}),
            json!({"mercury_id": "b", "dmi": {"bios_version": "2.3"}}),
            json!({"mercury_id": "c", "dmi": {"bios_version": "2.1"}}),
            json!({"mercury_id": "d"}),
        ];
        assert_eq!(
            run(
                json!([{"$group": {"_id": "$dmi.bios_version", "hosts": {"$sum": 1}}}, {"$sort": {"hosts": -1, "_id": 1}}]),
                docs
            ),
            vec![
                json!({"_id": "2.1", "hosts": 2}),
                json!({"_id": null, "hosts": 1}),
                json!({"_id": "2.3", "hosts": 1}),
            ]
        );
    }

    #[test]
    fn unwind_keeps_or_drops_empty_values() {
        let docs = vec![
            json!({"i": 1, "t": ["x", "y"]}),
            json!({"i": 2, "t": []}),
            json!({"i": 3, "t": null}),
            json!({"i": 4}),
            json!({"i": 5, "t": "z"}),
        ];
        assert_eq!(
            run(json!([{"$unwind": "$t"}]), docs.clone()),
            vec![
                json!({"i": 1, "t": "x"}),
                json!({"i": 1, "t": "y"}),
                json!({"i": 5, "t": "z"})
            ]
        );
        assert_eq!(
            run(
                json!([{"$unwind": {"path": "$t", "preserveNullAndEmptyArrays": true, "includeArrayIndex": "n"}}, {"$match": {"i": {"$gte": 2}}}]),
                docs
            ),
            vec![
                json!({"i": 2, "n": null}),
                json!({"i": 3, "t": null, "n": null}),
                json!({"i": 4, "n": null}),
                json!({"i": 5, "t": "z", "n": null})
            ]
        );
    }

    #[test]
    fn count_limit_skip() {
        let docs: Vec<Value> = (0..5).map(|i| json!({"i": i})).collect();
        assert_eq!(
            run(
                json!([{"$skip": 1}, {"$limit": 3}, {"$count": "n"}]),
                docs.clone()
            ),
            vec![json!({"n": 3})]
        );
        assert!(run(json!([{"$match": {"i": 9}}, {"$count": "n"}]), docs).is_empty());
    }

    #[test]
    fn unknown_stages_and_bad_operands_are_named() {
        for (p, name) in [
            (json!([{"$lookup": {}}]), "$lookup"),
            (json!([{"$limit": 0}]), "$limit"),
            (json!([{"$group": {"n": {"$sum": 1}}}]), "_id"),
            (
                json!([{"$group": {"_id": null, "n": {"$stdDevPop": "$a"}}}]),
                "$stdDevPop",
            ),
            (json!([{"$sort": {}}]), "$sort"),
            (json!([{"$count": "$n"}]), "$count"),
            (json!([{"$match": {}, "$limit": 1}]), "one field"),
            (json!({"$match": {}}), "array"),
        ] {
            let err = Pipeline::parse(&p).unwrap_err().to_string();
            assert!(err.contains(name), "{p}: {err}");
        }
    }
}
