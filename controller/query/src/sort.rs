//! MongoDB sort documents: several keys, ascending or descending, arrays by their extremes.
//!
//! A document sorts by the keys its path yields, as an index on that path would hold them: an
//! array yields its elements (its smallest one is used ascending, its largest descending), a
//! missing field yields null, and an empty array yields `undefined`, which sorts before null
//! in both directions' terms (first ascending, last descending).

use std::cmp::Ordering;

use serde_json::Value;

use crate::order::compare;
use crate::path::{index_component, FieldPath};
use crate::QueryError;

/// A compiled sort specification, with the document it was compiled from.
#[derive(Debug, Clone)]
pub struct Sort {
    keys: Vec<(FieldPath, bool)>,
    document: Value,
}

/// One sort key of a document.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    /// What an empty array yields: below null.
    Undefined,
    Null,
    Value(&'a Value),
}

impl Key<'_> {
    fn cmp(&self, other: &Key<'_>) -> Ordering {
        match (self, other) {
            (Key::Undefined, Key::Undefined) => Ordering::Equal,
            (Key::Undefined, _) => Ordering::Less,
            (_, Key::Undefined) => Ordering::Greater,
            (a, b) => compare(a.value(), b.value()),
        }
    }

    fn value(&self) -> &Value {
        match self {
            Key::Value(v) => v,
            _ => &Value::Null,
        }
    }
}

impl Sort {
    /// Compiles `{"path": 1 | -1, …}`.
    pub fn parse(doc: &Value) -> Result<Sort, QueryError> {
        let map = doc.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "sort".into(),
            expected: "a document",
        })?;
        let keys = map
            .iter()
            .map(|(path, dir)| {
                let ascending = match dir.as_f64() {
                    Some(1.0) => true,
                    Some(-1.0) => false,
                    _ => return Err(QueryError::BadSort { path: path.clone() }),
                };
                if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
                    return Err(QueryError::BadSort { path: path.clone() });
                }
                Ok((FieldPath::parse(path), ascending))
            })
            .collect::<Result<_, _>>()?;
        Ok(Sort {
            keys,
            document: doc.clone(),
        })
    }

    /// The validated sort document, as a backend hands it to a server.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Whether the specification names no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Orders two documents.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        self.compare_keys(&self.keys(a), &self.keys(b))
    }

    /// The keys a document sorts by, one per sort path.
    fn keys<'a>(&self, doc: &'a Value) -> Vec<Key<'a>> {
        self.keys
            .iter()
            .map(|(path, ascending)| sort_key(path, doc, *ascending))
            .collect()
    }

    fn compare_keys(&self, a: &[Key<'_>], b: &[Key<'_>]) -> Ordering {
        for (((_, ascending), ka), kb) in self.keys.iter().zip(a).zip(b) {
            let o = ka.cmp(kb);
            let o = if *ascending { o } else { o.reverse() };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    /// Sorts documents; equal documents keep their order. Each document's keys are worked out
    /// once, not at every comparison.
    pub fn sort<T: std::borrow::Borrow<Value>>(&self, docs: Vec<T>) -> Vec<T> {
        let order: Vec<usize> = {
            let keys: Vec<Vec<Key<'_>>> = docs.iter().map(|d| self.keys(d.borrow())).collect();
            let mut order: Vec<usize> = (0..docs.len()).collect();
            order.sort_by(|&a, &b| self.compare_keys(&keys[a], &keys[b]));
            order
        };
        let mut slots: Vec<Option<T>> = docs.into_iter().map(Some).collect();
        order.into_iter().filter_map(|i| slots[i].take()).collect()
    }
}

/// The key a document sorts by for one path and direction.
fn sort_key<'a>(path: &FieldPath, doc: &'a Value, ascending: bool) -> Key<'a> {
    let mut keys = Vec::new();
    collect(doc, &path.0, &mut keys);
    let pick = if ascending {
        keys.into_iter().min_by(|a, b| a.cmp(b))
    } else {
        keys.into_iter().max_by(|a, b| a.cmp(b))
    };
    pick.unwrap_or(Key::Null)
}

/// The index keys a path yields in a value (`BtreeKeyGenerator`'s view).
fn collect<'a>(v: &'a Value, parts: &[String], out: &mut Vec<Key<'a>>) {
    let Some((head, rest)) = parts.split_first() else {
        match v {
            Value::Array(items) if items.is_empty() => out.push(Key::Undefined),
            Value::Array(items) => out.extend(items.iter().map(Key::Value)),
            other => out.push(Key::Value(other)),
        }
        return;
    };
    match v {
        Value::Object(map) => match map.get(head) {
            Some(child) => collect(child, rest, out),
            None => out.push(Key::Null),
        },
        Value::Array(items) => {
            // A positional component that names an element picks it; otherwise the path
            // applies to every element.
            if let Some(item) = items
                .iter()
                .enumerate()
                .find(|(i, _)| index_component(head, *i))
                .map(|(_, item)| item)
            {
                collect(item, rest, out);
                return;
            }
            if items.is_empty() {
                out.push(Key::Undefined);
            }
            for item in items {
                match item {
                    Value::Object(_) => collect(item, parts, out),
                    _ => out.push(Key::Null),
                }
            }
        }
        _ => out.push(Key::Null),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn sorted(spec: Value, docs: Vec<Value>) -> Vec<Value> {
        let s = Sort::parse(&spec).unwrap();
        s.sort(docs)
    }

    #[test]
    fn multi_key_with_missing_first() {
        let docs = vec![
            json!({"a": 2, "b": 1}),
            json!({"b": 5}),
            json!({"a": 1, "b": 2}),
            json!({"a": 2, "b": 0}),
        ];
        assert_eq!(
            sorted(json!({"a": 1, "b": -1}), docs),
            vec![
                json!({"b": 5}),
                json!({"a": 1, "b": 2}),
                json!({"a": 2, "b": 1}),
                json!({"a": 2, "b": 0})
            ]
        );
    }

    #[test]
    fn arrays_sort_by_extremes() {
        let docs = vec![json!({"t": [5, 1]}), json!({"t": [3]}), json!({"t": 2})];
        assert_eq!(
            sorted(json!({"t": 1}), docs.clone()),
            vec![json!({"t": [5, 1]}), json!({"t": 2}), json!({"t": [3]})]
        );
        assert_eq!(
            sorted(json!({"t": -1}), docs),
            vec![json!({"t": [5, 1]}), json!({"t": [3]}), json!({"t": 2})]
        );
    }

    #[test]
    fn empty_arrays_sort_below_null_and_strings() {
        let docs = vec![json!({"t": "a"}), json!({"t": []}), json!({"u": 1})];
        assert_eq!(
            sorted(json!({"t": 1}), docs.clone()),
            vec![json!({"t": []}), json!({"u": 1}), json!({"t": "a"})]
        );
        assert_eq!(
            sorted(json!({"t": -1}), docs),
            vec![json!({"t": "a"}), json!({"u": 1}), json!({"t": []})]
        );
    }

    #[test]
    fn bad_direction_names_the_path() {
        let err = Sort::parse(&json!({"mem.total": "up"})).unwrap_err();
        assert!(err.to_string().contains("mem.total"));
    }
}
