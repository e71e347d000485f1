//! Resolving dotted paths the way MongoDB's matcher does (`BSONElementIterator`).
//!
//! Through objects by name; into every element of an array that is an object; by position
//! when a component is exactly an element's index (`0`, `12`, never `01`); and at the end of
//! the path, an array yields each of its elements and then itself (unless the operator wants
//! whole arrays only, as `$size` and `$elemMatch` do). Nested arrays met along the way are not
//! looked into unless a positional component names them. A branch that ends in a missing field
//! yields "missing" (what `null` matches); an array whose elements are not objects yields
//! nothing for a path that continues past it.

use serde_json::{Map, Value};

/// A dotted field path, split once at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<String>);

/// Whether an array at the end of a path also yields its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafArrays {
    /// Each element, then the array itself (most operators).
    Expand,
    /// The array itself only (`$size`, `$elemMatch`).
    Whole,
}

impl FieldPath {
    /// Splits `a.b.c`.
    pub fn parse(text: &str) -> Self {
        Self(text.split('.').map(str::to_owned).collect())
    }

    /// Every value the path reaches in `doc`, `None` where a branch ends in a missing field.
    #[cfg(test)]
    pub fn resolve<'a>(&self, doc: &'a Value, leaf: LeafArrays) -> Vec<Option<&'a Value>> {
        let mut out = Vec::new();
        self.any(doc, leaf, &mut |v| {
            out.push(v);
            false
        });
        out
    }

    /// Whether `f` holds for any value the path reaches, in `resolve`'s order, stopping at
    /// the first that does (no allocation: this is what a full scan runs per document).
    pub fn any<'a>(
        &self,
        doc: &'a Value,
        leaf: LeafArrays,
        f: &mut dyn FnMut(Option<&'a Value>) -> bool,
    ) -> bool {
        match doc {
            Value::Object(map) => walk_object(map, &self.0, leaf, f),
            _ => f(None),
        }
    }
}

/// The array index a path component names, if it is written canonically.
pub fn index_component(part: &str, index: usize) -> bool {
    !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'))
        && part.parse::<usize>().ok() == Some(index)
}

fn walk_object<'a>(
    map: &'a Map<String, Value>,
    parts: &[String],
    leaf: LeafArrays,
    f: &mut dyn FnMut(Option<&'a Value>) -> bool,
) -> bool {
    let mut current = map;
    let mut i = 0;
    loop {
        let Some(child) = current.get(&parts[i]) else {
            return f(None);
        };
        let rest = &parts[i + 1..];
        match child {
            Value::Array(items) => return walk_array(child, items, rest, leaf, f),
            _ if rest.is_empty() => return f(Some(child)),
            Value::Object(next) => {
                current = next;
                i += 1;
            }
            _ => return f(None),
        }
    }
}

fn walk_array<'a>(
    array: &'a Value,
    items: &'a [Value],
    rest: &[String],
    leaf: LeafArrays,
    f: &mut dyn FnMut(Option<&'a Value>) -> bool,
) -> bool {
    let Some((next, after)) = rest.split_first() else {
        if leaf == LeafArrays::Expand && items.iter().any(|item| f(Some(item))) {
            return true;
        }
        return f(Some(array));
    };
    for (index, item) in items.iter().enumerate() {
        let positional = index_component(next, index);
        let hit = match item {
            Value::Object(map) => {
                walk_object(map, rest, leaf, f)
                    || (positional
                        && if after.is_empty() {
                            f(Some(item))
                        } else {
                            walk_object(map, after, leaf, f)
                        })
            }
            // A positional hit at the end of the path is the element itself; a nested array
            // is not looked into.
            _ if positional && after.is_empty() => f(Some(item)),
            Value::Array(inner) if positional => walk_array(item, inner, after, leaf, f),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(path: &str, doc: &Value) -> Vec<Option<Value>> {
        FieldPath::parse(path)
            .resolve(doc, LeafArrays::Expand)
            .into_iter()
            .map(|v| v.cloned())
            .collect()
    }

    #[test]
    fn walks_objects_arrays_and_indexes() {
        let doc = json!({"a": {"b": 1}, "l": [{"n": "x"}, {"n": "y"}, {"m": 1}, 5]});
        assert_eq!(r("a.b", &doc), vec![Some(json!(1))]);
        assert_eq!(
            r("l.n", &doc),
            vec![Some(json!("x")), Some(json!("y")), None]
        );
        assert_eq!(r("l.3", &doc), vec![None, None, None, Some(json!(5))]);
        assert_eq!(r("l.9", &doc), vec![None, None, None]);
        assert_eq!(r("a.b.c", &doc), vec![None]);
    }

    #[test]
    fn leaf_arrays_yield_elements_then_themselves() {
        let doc = json!({"a": [1, [2]]});
        assert_eq!(
            r("a", &doc),
            vec![Some(json!(1)), Some(json!([2])), Some(json!([1, [2]]))]
        );
        assert_eq!(
            FieldPath::parse("a").resolve(&doc, LeafArrays::Whole),
            vec![Some(&json!([1, [2]]))]
        );
    }

    #[test]
    fn scalar_arrays_and_empty_arrays_yield_nothing_past_them() {
        assert!(r("a.b", &json!({"a": [1, 2]})).is_empty());
        assert!(r("a.b", &json!({"a": []})).is_empty());
        assert!(r("a.0", &json!({"a": []})).is_empty());
    }

    #[test]
    fn positional_components_are_canonical_and_do_not_expand_nested_arrays() {
        assert!(r("a.01", &json!({"a": [1, 2]})).is_empty());
        assert_eq!(r("a.0", &json!({"a": [[1, 2]]})), vec![Some(json!([1, 2]))]);
        assert_eq!(r("a.0.1", &json!({"a": [[1, 2]]})), vec![Some(json!(2))]);
        assert!(r("a.b", &json!({"a": [[{"b": 1}]]})).is_empty());
    }
}
