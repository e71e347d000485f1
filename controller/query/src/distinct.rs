//! `distinct(path, filter)`: the different values a path holds across matching documents.
//!
//! As MongoDB's `distinct` (`extractAllElementsAlongPath`): an array at the end of the path
//! gives its elements (one level), an array on the way gives what the rest of the path finds
//! in each of its elements, a numeric component picks an array's element by position, missing
//! fields give nothing, null is a value. Values are unique by MongoDB equality (1 and 1.0 are
//! one value) and come out in MongoDB's sort order.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::filter::Filter;
use crate::order::{canonical_key, compare};
use crate::QueryError;

/// A compiled distinct request.
#[derive(Debug, Clone)]
pub struct Distinct {
    path: String,
    parts: Vec<String>,
    filter: Filter,
}

impl Distinct {
    /// Compiles a path and a filter.
    pub fn new(path: &str, filter: &Value) -> Result<Distinct, QueryError> {
        if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
            return Err(QueryError::BadOperand {
                operator: "distinct".into(),
                expected: "a dotted field path",
            });
        }
        Ok(Distinct {
            path: path.to_owned(),
            parts: path.split('.').map(str::to_owned).collect(),
            filter: Filter::parse(filter)?,
        })
    }

    /// Parses the HTTP body `{"path": "a.b", "filter": {...}}` (filter optional).
    pub fn from_request(body: &Value) -> Result<Distinct, QueryError> {
        let map = crate::request_fields(body, &["path", "filter"])?;
        let path =
            map.get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| QueryError::BadOperand {
                    operator: "distinct".into(),
                    expected: "a \"path\" string",
                })?;
        let empty = Value::Object(Map::new());
        let filter = map.get("filter").filter(|f| !f.is_null()).unwrap_or(&empty);
        Distinct::new(path, filter)
    }

    /// The path as written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The validated filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The distinct values among `docs`.
    pub fn run<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> Vec<Value> {
        let mut seen = HashSet::new();
        let mut values: Vec<&Value> = Vec::new();
        let mut found = Vec::new();
        for doc in docs.filter(|d| self.filter.matches(d)) {
            found.clear();
            if let Value::Object(map) = doc {
                extract(map, &self.parts, &mut found);
            }
            for v in found.drain(..) {
                let mut key = Vec::new();
                canonical_key(v, &mut key);
                if seen.insert(key) {
                    values.push(v);
                }
            }
        }
        values.sort_by(|a, b| compare(a, b));
        values.into_iter().cloned().collect()
    }
}

fn extract<'a>(map: &'a Map<String, Value>, parts: &[String], out: &mut Vec<&'a Value>) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    let Some(v) = map.get(head) else { return };
    if rest.is_empty() {
        match v {
            Value::Array(items) => out.extend(items.iter()),
            other => out.push(other),
        }
        return;
    }
    match v {
        Value::Object(child) => extract(child, rest, out),
        Value::Array(items) => {
            if rest[0].bytes().all(|b| b.is_ascii_digit()) {
                // The array reads as a document whose fields are "0", "1", … (so "01" finds
                // nothing).
                extract_positional(items, rest, out);
            } else {
                // Nested arrays have only numeric fields, which a non-numeric component never
                // names.
                for item in items {
                    if let Value::Object(child) = item {
                        extract(child, rest, out);
                    }
                }
            }
        }
        _ => {}
    }
}

fn extract_positional<'a>(items: &'a [Value], parts: &[String], out: &mut Vec<&'a Value>) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    let Some(item) = items
        .iter()
        .enumerate()
        .find(|(i, _)| *head == i.to_string())
        .map(|(_, item)| item)
    else {
        return;
    };
    if rest.is_empty() {
        match item {
            Value::Array(inner) => out.extend(inner.iter()),
            other => out.push(other),
        }
        return;
    }
    match item {
        Value::Object(child) => extract(child, rest, out),
        Value::Array(inner) => {
            if rest[0].bytes().all(|b| b.is_ascii_digit()) {
                extract_positional(inner, rest, out);
            } else {
                for e in inner {
                    if let Value::Object(child) = e {
                        extract(child, rest, out);
                    }
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

    fn d(path: &str, docs: Vec<Value>) -> Vec<Value> {
        Distinct::new(path, &json!({})).unwrap().run(docs.iter())
    }

    #[test]
    fn unwinds_one_level_and_dedups_by_value() {
        let docs = vec![
            json!({"a": [1, [2], 1.0]}),
            json!({"a": null}),
            json!({"b": 1}),
            json!({"a": "x"}),
        ];
        assert_eq!(
            d("a", docs),
            vec![json!(null), json!(1), json!("x"), json!([2])]
        );
    }

    #[test]
    fn paths_through_arrays_and_positions() {
        let docs = vec![
            json!({"l": [{"n": "x"}, {"n": ["y", "z"]}, 5]}),
            json!({"l": [7, 8]}),
        ];
        assert_eq!(
            d("l.n", docs.clone()),
            vec![json!("x"), json!("y"), json!("z")]
        );
        assert_eq!(
            d("l.1", docs.clone()),
            vec![json!(8), json!({"n": ["y", "z"]})]
        );
        assert!(d("l.01", docs).is_empty());
    }
}
