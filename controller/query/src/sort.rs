//! MongoDB sort documents: several keys, ascending or descending, arrays by their extremes.

use std::cmp::Ordering;

use serde_json::Value;

use super::order::compare;
use super::path::FieldPath;
use super::QueryError;

/// A compiled sort specification.
#[derive(Debug, Clone)]
pub struct Sort(Vec<(FieldPath, bool)>);

impl Sort {
    /// Compiles `{"path": 1 | -1, …}`.
    pub fn parse(doc: &Value) -> Result<Sort, QueryError> {
        let map = doc.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "sort".into(),
            expected: "a document",
        })?;
        map.iter()
            .map(|(path, dir)| {
                let ascending = match dir.as_f64() {
                    Some(1.0) => true,
                    Some(-1.0) => false,
                    _ => return Err(QueryError::BadSort { path: path.clone() }),
                };
                Ok((FieldPath::parse(path), ascending))
            })
            .collect::<Result<_, _>>()
            .map(Sort)
    }

    /// Orders two documents.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (path, ascending) in &self.0 {
            let (ka, kb) = (sort_key(path, a, *ascending), sort_key(path, b, *ascending));
            let o = compare(&ka, &kb);
            let o = if *ascending { o } else { o.reverse() };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

/// The value a document sorts by: missing is null; arrays sort by their smallest element when
/// ascending and their largest when descending.
fn sort_key(path: &FieldPath, doc: &Value, ascending: bool) -> Value {
    let mut candidates: Vec<&Value> = Vec::new();
    for found in path.resolve(doc) {
        match found {
            None => candidates.push(&Value::Null),
            Some(Value::Array(items)) if !items.is_empty() => candidates.extend(items.iter()),
            Some(v) => candidates.push(v),
        }
    }
    let pick = if ascending {
        candidates.into_iter().min_by(|a, b| compare(a, b))
    } else {
        candidates.into_iter().max_by(|a, b| compare(a, b))
    };
    pick.cloned().unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn sorted(spec: Value, docs: Vec<Value>) -> Vec<Value> {
        let s = Sort::parse(&spec).unwrap();
        let mut docs = docs;
        docs.sort_by(|a, b| s.compare(a, b));
        docs
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
    fn bad_direction_names_the_path() {
        let err = Sort::parse(&json!({"mem.total": "up"})).unwrap_err();
        assert!(err.to_string().contains("mem.total"));
    }
}
