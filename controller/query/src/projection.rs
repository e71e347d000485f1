//! MongoDB projections: include or exclude dotted paths (MongoDB 4.4+ semantics).
//!
//! In `find`, `mercury_id` plays the part of MongoDB's `_id`: kept by an inclusion projection
//! unless excluded explicitly. In an aggregation `$project` the key is `_id` itself. Included
//! fields come out in the document's own order. A path through an array applies to each
//! element that is a document, and of nested arrays (scalars are dropped by an inclusion, kept
//! by an exclusion). A numeric component is a field name, never an array index. An empty
//! `find` projection returns whole documents.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::QueryError;

/// The document key that `find` projections keep unless told otherwise.
pub const FIND_KEY: &str = "mercury_id";

/// A compiled projection, with the document it was compiled from.
#[derive(Debug, Clone)]
pub struct Projection {
    mode: Mode,
    tree: Node,
    document: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Include,
    Exclude,
    Whole,
}

#[derive(Debug, Clone, Default)]
struct Node(BTreeMap<String, Child>);

#[derive(Debug, Clone)]
enum Child {
    Leaf,
    Sub(Node),
}

fn flag(path: &str, v: &Value) -> Result<bool, QueryError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        _ => Err(QueryError::BadProjection {
            path: path.to_owned(),
            reason: "values must be 1/0 or true/false (expressions, $slice, $elemMatch and $meta are not supported)",
        }),
    }
}

impl Node {
    fn insert(&mut self, path: &str) -> Result<(), QueryError> {
        let collision = || QueryError::PathCollision {
            path: path.to_owned(),
        };
        let parts: Vec<&str> = path.split('.').collect();
        let mut node = self;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if last {
                if node.0.contains_key(*part) {
                    return Err(collision());
                }
                node.0.insert((*part).to_owned(), Child::Leaf);
                return Ok(());
            }
            let child = node
                .0
                .entry((*part).to_owned())
                .or_insert_with(|| Child::Sub(Node::default()));
            node = match child {
                Child::Sub(n) => n,
                Child::Leaf => return Err(collision()),
            };
        }
        Ok(())
    }
}

impl Projection {
    /// Compiles a `find` projection; `{}` returns whole documents.
    pub fn parse(doc: &Value) -> Result<Projection, QueryError> {
        Self::compile(doc, FIND_KEY, "projection")
    }

    /// Compiles the document of an aggregation `$project` stage (key `_id`, not empty).
    pub fn parse_stage(doc: &Value) -> Result<Projection, QueryError> {
        let p = Self::compile(doc, "_id", "$project")?;
        if p.mode == Mode::Whole {
            return Err(QueryError::BadOperand {
                operator: "$project".into(),
                expected: "at least one field",
            });
        }
        Ok(p)
    }

    fn compile(doc: &Value, key: &str, what: &str) -> Result<Projection, QueryError> {
        let map = doc.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: what.to_owned(),
            expected: "a document",
        })?;
        let mut include: Option<bool> = None;
        let mut keep_key: Option<bool> = None;
        let mut tree = Node::default();
        for (path, v) in map {
            if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
                return Err(QueryError::BadProjection {
                    path: path.clone(),
                    reason: "not a field path (positional $ and operators are not supported)",
                });
            }
            let on = flag(path, v)?;
            if path == key {
                keep_key = Some(on);
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
            tree.insert(path)?;
        }
        let mode = match (include, keep_key) {
            (None, None) => Mode::Whole,
            (Some(true), _) | (None, Some(true)) => Mode::Include,
            (Some(false), _) | (None, Some(false)) => Mode::Exclude,
        };
        match mode {
            Mode::Include if keep_key != Some(false) => tree.insert(key)?,
            Mode::Exclude if keep_key == Some(false) => tree.insert(key)?,
            _ => {}
        }
        Ok(Projection {
            mode,
            tree,
            document: doc.clone(),
        })
    }

    /// The validated projection document, as a backend hands it to a server.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The projected copy of `doc`.
    pub fn apply(&self, doc: &Value) -> Value {
        let Value::Object(map) = doc else {
            return doc.clone();
        };
        match self.mode {
            Mode::Whole => doc.clone(),
            Mode::Include => Value::Object(self.include(map, &self.tree)),
            Mode::Exclude => Value::Object(self.exclude(map, &self.tree)),
        }
    }

    fn include(&self, map: &Map<String, Value>, node: &Node) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in map {
            match node.0.get(k) {
                None => {}
                Some(Child::Leaf) => {
                    out.insert(k.clone(), v.clone());
                }
                Some(Child::Sub(sub)) => {
                    if let Some(projected) = self.include_value(v, sub) {
                        out.insert(k.clone(), projected);
                    }
                }
            }
        }
        out
    }

    /// A value on the way to an included sub-path; `None` when nothing of it stays.
    fn include_value(&self, v: &Value, node: &Node) -> Option<Value> {
        match v {
            Value::Object(map) => Some(Value::Object(self.include(map, node))),
            Value::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .filter_map(|item| match item {
                        Value::Object(map) => Some(Value::Object(self.include(map, node))),
                        Value::Array(_) => self.include_value(item, node),
                        _ => None,
                    })
                    .collect(),
            )),
            _ => None,
        }
    }

    fn exclude(&self, map: &Map<String, Value>, node: &Node) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in map {
            match node.0.get(k) {
                None => {
                    out.insert(k.clone(), v.clone());
                }
                Some(Child::Leaf) => {}
                Some(Child::Sub(sub)) => {
                    out.insert(k.clone(), self.exclude_value(v, sub));
                }
            }
        }
        out
    }

    fn exclude_value(&self, v: &Value, node: &Node) -> Value {
        match v {
            Value::Object(map) => Value::Object(self.exclude(map, node)),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| match item {
                        Value::Object(map) => Value::Object(self.exclude(map, node)),
                        Value::Array(_) => self.exclude_value(item, node),
                        other => other.clone(),
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
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
    fn inclusion_keeps_paths_and_the_key_in_document_order() {
        assert_eq!(
            p(json!({"mem.total": 1}), doc()),
            json!({"mercury_id": "01", "mem": {"total": 1}})
        );
        assert_eq!(
            p(json!({"interfaces.name": 1, "mercury_id": 0}), doc()),
            json!({"interfaces": [{"name": "a"}, {"name": "b"}]})
        );
        assert_eq!(
            p(json!({"cpu": 1, "mem.free": 1}), doc())
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["mercury_id", "mem", "cpu"]
        );
        assert_eq!(p(json!({"nope": 1}), doc()), json!({"mercury_id": "01"}));
        assert_eq!(
            p(json!({"mercury_id": 1}), doc()),
            json!({"mercury_id": "01"})
        );
        // A missing sub-field keeps its enclosing document, empty.
        assert_eq!(
            p(json!({"cpu.cores": 1, "mercury_id": 0}), doc()),
            json!({"cpu": {}})
        );
    }

    #[test]
    fn empty_projection_returns_the_whole_document() {
        assert_eq!(p(json!({}), doc()), doc());
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
            p(json!({"interfaces.mtu": false}), doc())["interfaces"],
            json!([{"name": "a"}, {"name": "b"}, 7])
        );
    }

    #[test]
    fn nested_arrays_are_recursed_into() {
        let d = json!({"a": [[{"b": 1, "c": 2}], {"b": 3}, 4]});
        assert_eq!(
            p(json!({"a.b": 1}), d.clone()),
            json!({"a": [[{"b": 1}], {"b": 3}]})
        );
        assert_eq!(
            Projection::parse_stage(&json!({"a.c": 0}))
                .unwrap()
                .apply(&d),
            json!({"a": [[{"b": 1}], {"b": 3}, 4]})
        );
    }

    #[test]
    fn mixing_collisions_and_expressions_are_refused() {
        assert!(Projection::parse(&json!({"a": 1, "b": 0})).is_err());
        assert!(Projection::parse(&json!({"a": 1, "a.b": 1})).is_err());
        assert!(Projection::parse(&json!({"a.b": 0, "a": 0})).is_err());
        assert!(Projection::parse(&json!({"a": {"$slice": 1}})).is_err());
        assert!(Projection::parse(&json!({"$a": 1})).is_err());
        assert!(Projection::parse(&json!({"a..b": 1})).is_err());
        assert!(Projection::parse_stage(&json!({})).is_err());
        assert!(Projection::parse(&json!({"a.b": 1, "a.c": 1})).is_ok());
    }
}
