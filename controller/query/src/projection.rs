//! MongoDB projections: include or exclude dotted paths.
//!
//! `mercury_id` plays the part of MongoDB's `_id`: kept by an inclusion projection unless
//! excluded explicitly.

use serde_json::{Map, Value};

use super::path::FieldPath;
use super::QueryError;

/// The document key that inclusion projections keep unless told otherwise.
const KEY: &str = "mercury_id";

/// A compiled projection.
#[derive(Debug, Clone)]
pub struct Projection {
    include: bool,
    paths: Vec<FieldPath>,
    keep_key: bool,
}

fn flag(path: &str, v: &Value) -> Result<bool, QueryError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        _ => Err(QueryError::BadProjection {
            path: path.to_owned(),
            reason: "values must be 1/0 or true/false (expressions are not supported)",
        }),
    }
}

impl Projection {
    /// Compiles a projection document.
    pub fn parse(doc: &Value) -> Result<Projection, QueryError> {
        let map = doc.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "projection".into(),
            expected: "a document",
        })?;
        let mut include: Option<bool> = None;
        let mut keep_key = true;
        let mut paths = Vec::new();
        for (path, v) in map {
            if path.starts_with('$') || path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(QueryError::BadProjection {
                    path: path.clone(),
                    reason: "not a field path",
                });
            }
            let on = flag(path, v)?;
            if path == KEY {
                keep_key = on;
                continue;
            }
            match include {
                Some(mode) if mode != on => {
                    return Err(QueryError::BadProjection {
                        path: path.clone(),
                        reason: "cannot mix inclusion and exclusion",
                    })
                }
                _ => include = Some(on),
            }
            paths.push(FieldPath::parse(path));
        }
        match include {
            Some(include) => Ok(Projection {
                include,
                paths,
                keep_key,
            }),
            // Only mercury_id named: `{mercury_id: 1}` keeps just it, `{mercury_id: 0}` drops it.
            None => Ok(Projection {
                include: keep_key,
                paths: Vec::new(),
                keep_key,
            }),
        }
    }

    /// The projected copy of `doc`.
    pub fn apply(&self, doc: &Value) -> Value {
        let Value::Object(map) = doc else {
            return doc.clone();
        };
        let mut out = if self.include {
            let mut out = Map::new();
            for path in &self.paths {
                include_path(map, &path.0, &mut out);
            }
            out
        } else {
            let mut out = map.clone();
            for path in &self.paths {
                exclude_path(&mut out, &path.0);
            }
            out
        };
        match (self.keep_key, map.get(KEY)) {
            (true, Some(key)) => {
                out.insert(KEY.into(), key.clone());
            }
            (false, _) => {
                out.remove(KEY);
            }
            _ => {}
        }
        Value::Object(out)
    }
}

fn include_path(src: &Map<String, Value>, parts: &[String], out: &mut Map<String, Value>) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    let Some(value) = src.get(head) else { return };
    if rest.is_empty() {
        out.insert(head.clone(), value.clone());
        return;
    }
    match value {
        Value::Object(child) => {
            let mut sub = match out.remove(head) {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            include_path(child, rest, &mut sub);
            if !sub.is_empty() {
                out.insert(head.clone(), Value::Object(sub));
            }
        }
        Value::Array(items) => {
            let previous = match out.remove(head) {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            let projected: Vec<Value> = items
                .iter()
                .filter_map(Value::as_object)
                .enumerate()
                .map(|(i, item)| {
                    let mut sub = match previous.get(i) {
                        Some(Value::Object(m)) => m.clone(),
                        _ => Map::new(),
                    };
                    include_path(item, rest, &mut sub);
                    Value::Object(sub)
                })
                .collect();
            out.insert(head.clone(), Value::Array(projected));
        }
        _ => {}
    }
}

fn exclude_path(map: &mut Map<String, Value>, parts: &[String]) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.remove(head);
        return;
    }
    match map.get_mut(head) {
        Some(Value::Object(child)) => exclude_path(child, rest),
        Some(Value::Array(items)) => {
            for item in items.iter_mut() {
                if let Value::Object(child) = item {
                    exclude_path(child, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn p(proj: Value, doc: Value) -> Value {
        Projection::parse(&proj).unwrap().apply(&doc)
    }

    fn doc() -> Value {
        json!({"mercury_id": "01", "mem": {"total": 1, "free": 2}, "interfaces": [{"name": "a", "mtu": 1}, {"name": "b"}, 7], "cpu": {"model": "x"}})
    }

    #[test]
    fn inclusion_keeps_paths_and_the_key() {
        assert_eq!(
            p(json!({"mem.total": 1}), doc()),
            json!({"mercury_id": "01", "mem": {"total": 1}})
        );
        assert_eq!(
            p(json!({"interfaces.name": 1, "mercury_id": 0}), doc()),
            json!({"interfaces": [{"name": "a"}, {"name": "b"}]})
        );
        assert_eq!(
            p(json!({"interfaces.name": 1, "interfaces.mtu": 1}), doc()),
            json!({"mercury_id": "01", "interfaces": [{"name": "a", "mtu": 1}, {"name": "b"}]})
        );
        assert_eq!(p(json!({"nope": 1}), doc()), json!({"mercury_id": "01"}));
        assert_eq!(
            p(json!({"mercury_id": 1}), doc()),
            json!({"mercury_id": "01"})
        );
    }

    #[test]
    fn exclusion_removes_paths() {
        assert_eq!(
            p(
                json!({"mem.free": 0, "interfaces": 0, "mercury_id": 0}),
                doc()
            ),
            json!({"mem": {"total": 1}, "cpu": {"model": "x"}})
        );
        assert_eq!(
            p(json!({"interfaces.mtu": false}), doc())["interfaces"][0],
            json!({"name": "a"})
        );
    }

    #[test]
    fn mixing_and_expressions_are_refused() {
        assert!(Projection::parse(&json!({"a": 1, "b": 0})).is_err());
        assert!(Projection::parse(&json!({"a": {"$slice": 1}})).is_err());
        assert!(Projection::parse(&json!({"$a": 1})).is_err());
        assert!(Projection::parse(&json!({"a..b": 1})).is_err());
    }
}
