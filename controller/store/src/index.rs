//! Secondary indexes of the embedded store: which values a document has at an indexed path,
//! how they are encoded as order-preserving keys, and which filters an index can answer.
//!
//! An index only narrows the candidates: the full filter still runs on every candidate, so an
//! index lookup must return every document that can match (a superset) and nothing else is
//! assumed. Numbers are keyed by their f64 value (int and double of equal value share a key;
//! integers above 2^53 round, which only widens the candidates), strings by their bytes,
//! booleans by themselves; each key ends with the document's MercuryId.

use std::ops::Bound;

use serde_json::{Map, Value};

const NUMBER: u8 = 0x10;
const STRING: u8 = 0x20;
const BOOL: u8 = 0x30;

/// Which stored part of a document a path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The document's key.
    Id,
    /// The inventory.
    Inventory,
    /// The controller's `agent` subdocument.
    Agent,
    /// The controller's `boot` subdocument.
    Boot,
}

/// The part an indexed path reads.
pub fn part_of(path: &str) -> Part {
    match path.split('.').next().unwrap_or("") {
        "mercury_id" if path == "mercury_id" => Part::Id,
        "agent" => Part::Agent,
        "boot" => Part::Boot,
        _ => Part::Inventory,
    }
}

/// The encoded key of one indexable value (numbers, strings, booleans; others are not indexed).
pub fn encode(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Number(n) => {
            let f = n.as_f64()?;
            let f = if f == 0.0 { 0.0 } else { f };
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            let mut out = vec![NUMBER];
            out.extend_from_slice(&ordered.to_be_bytes());
            Some(out)
        }
        Value::String(s) => {
            let mut out = Vec::with_capacity(s.len() + 3);
            out.push(STRING);
            for b in s.bytes() {
                out.push(b);
                if b == 0 {
                    out.push(0xFF);
                }
            }
            out.extend_from_slice(&[0, 1]);
            Some(out)
        }
        Value::Bool(b) => Some(vec![BOOL, u8::from(*b)]),
        _ => None,
    }
}

/// The index key of a value of a document.
pub fn key(value: &[u8], id: &str) -> Vec<u8> {
    let mut k = value.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// The MercuryId at the end of an index key made by [`key`] for `value_len` bytes of value.
pub fn id_of(key: &[u8]) -> Option<String> {
    let start = match *key.first()? {
        NUMBER => 9,
        BOOL => 2,
        STRING => {
            let mut i = 1;
            loop {
                match (key.get(i)?, key.get(i + 1)) {
                    (0, Some(1)) => break i + 2,
                    (0, _) => i += 2,
                    _ => i += 1,
                }
            }
        }
        _ => return None,
    };
    std::str::from_utf8(key.get(start..)?)
        .ok()
        .map(str::to_owned)
}

/// Every indexable value a document part has at `path` (relative to the part), as MongoDB
/// reaches them: through documents, into every element of arrays on the way, numeric
/// components also as array positions, and the elements of an array at the end.
pub fn values_at<'a>(doc: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    walk(doc, path, &mut out);
    out
}

fn walk<'a>(v: &'a Value, path: &[&str], out: &mut Vec<&'a Value>) {
    let Some((head, rest)) = path.split_first() else {
        match v {
            Value::Array(items) => {
                out.extend(items.iter().filter(|i| encode(i).is_some()));
            }
            other if encode(other).is_some() => out.push(other),
            _ => {}
        }
        return;
    };
    match v {
        Value::Object(m) => {
            if let Some(next) = m.get(*head) {
                walk(next, rest, out);
            }
        }
        Value::Array(items) => {
            if let Ok(i) = head.parse::<usize>() {
                if let Some(item) = items.get(i) {
                    walk(item, rest, out);
                }
            }
            for item in items {
                if item.is_object() {
                    walk(item, path, out);
                }
            }
        }
        _ => {}
    }
}

/// The encoded values of a part at an indexed path (deduplicated).
pub fn keys_of(part: Option<&Value>, path: &str) -> Vec<Vec<u8>> {
    let Some(doc) = part else { return Vec::new() };
    let parts: Vec<&str> = path.split('.').collect();
    let rel = match part_of(path) {
        Part::Agent | Part::Boot => &parts[1..],
        Part::Id | Part::Inventory => &parts[..],
    };
    sorted_keys(values_at(doc, rel))
}

/// The encoded values of a record at an indexed path (deduplicated): records have no
/// controller-owned parts, so the path is read from the record's top.
pub fn record_keys(record: Option<&Value>, path: &str) -> Vec<Vec<u8>> {
    let Some(doc) = record else { return Vec::new() };
    let parts: Vec<&str> = path.split('.').collect();
    sorted_keys(values_at(doc, &parts))
}

fn sorted_keys(values: Vec<&Value>) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = values.into_iter().filter_map(encode).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// A range of index keys: lower and upper bound.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A lookup an index answers: key ranges (of encoded values) on one indexed path.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The indexed path.
    pub path: String,
    /// Ranges of index keys; their union holds every candidate.
    pub ranges: Vec<KeyRange>,
    /// Whether every range is one value (an equality or `$in`).
    pub exact: bool,
}

/// The range of keys of documents with exactly this value.
fn equal_range(enc: Vec<u8>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut end = enc.clone();
    end.push(0xFF);
    (Bound::Included(enc), Bound::Excluded(end))
}

/// The lookup answering a filter document through one of `indexed`, if any: an equality, an
/// `$in` of scalars, or a numeric or string range on an indexed path, at the top level or
/// inside a top-level `$and`. Equalities are preferred over ranges.
pub fn plan(filter: &Value, indexed: &[String]) -> Option<Lookup> {
    let mut conditions: Vec<(&String, &Value)> = Vec::new();
    collect(filter.as_object()?, &mut conditions);
    let candidates: Vec<Lookup> = conditions
        .into_iter()
        .filter(|(path, _)| indexed.iter().any(|p| p == *path))
        .filter_map(|(path, cond)| lookup(path, cond))
        .collect();
    let equality = candidates.iter().position(|l| l.exact);
    match equality {
        Some(i) => candidates.into_iter().nth(i),
        None => candidates.into_iter().next(),
    }
}

fn collect<'a>(filter: &'a Map<String, Value>, out: &mut Vec<(&'a String, &'a Value)>) {
    for (k, v) in filter {
        if k == "$and" {
            for clause in v.as_array().into_iter().flatten() {
                if let Some(m) = clause.as_object() {
                    collect(m, out);
                }
            }
        } else if !k.starts_with('$') {
            out.push((k, v));
        }
    }
}

fn lookup(path: &str, cond: &Value) -> Option<Lookup> {
    let mut exact = true;
    let ranges = match cond {
        Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
            if let Some(v) = ops.get("$eq") {
                vec![equal_range(encode(v)?)]
            } else if let Some(Value::Array(items)) = ops.get("$in") {
                let mut ranges = Vec::with_capacity(items.len());
                for item in items {
                    ranges.push(equal_range(encode(item)?));
                }
                ranges
            } else {
                exact = false;
                vec![range(ops)?]
            }
        }
        scalar => vec![equal_range(encode(scalar)?)],
    };
    Some(Lookup {
        path: path.to_owned(),
        ranges,
        exact,
    })
}

/// A `$gt/$gte/$lt/$lte` range of one type (number or string), bounds taken inclusively.
fn range(ops: &Map<String, Value>) -> Option<KeyRange> {
    let mut bracket = None;
    let (mut low, mut high) = (None, None);
    for (op, v) in ops {
        let b = match v {
            Value::Number(_) => NUMBER,
            Value::String(_) => STRING,
            _ => return None,
        };
        if bracket.replace(b).is_some_and(|old| old != b) {
            return None;
        }
        match op.as_str() {
            "$gt" | "$gte" => low = Some(encode(v)?),
            "$lt" | "$lte" => high = Some(encode(v)?),
            _ => return None,
        }
    }
    let bracket = bracket?;
    let start = Bound::Included(low.unwrap_or_else(|| vec![bracket]));
    let end = match high {
        Some(mut h) => {
            h.push(0xFF);
            Bound::Excluded(h)
        }
        None => Bound::Excluded(vec![bracket + 1]),
    };
    Some((start, end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sort_as_values_and_give_back_the_id() {
        let nums = [
            json!(-5.5),
            json!(-1),
            json!(0),
            json!(0.5),
            json!(3),
            json!(1e300),
        ];
        let keys: Vec<Vec<u8>> = nums.iter().map(|n| encode(n).unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(encode(&json!(2)), encode(&json!(2.0)));
        assert!(encode(&json!("a")) < encode(&json!("ab")));
        for v in [json!("x\u{0}y"), json!(7), json!(true)] {
            assert_eq!(
                id_of(&key(&encode(&v).unwrap(), "host-1")).unwrap(),
                "host-1"
            );
        }
    }

    #[test]
    fn values_are_reached_through_arrays() {
        let doc =
            json!({"interfaces": [{"address": "a"}, {"address": "b"}, {"x": 1}], "n": [1, [2]]});
        let found = values_at(&doc, &["interfaces", "address"]);
        assert_eq!(found, vec![&json!("a"), &json!("b")]);
        assert_eq!(values_at(&doc, &["n"]), vec![&json!(1)]);
        assert_eq!(
            values_at(&doc, &["interfaces", "1", "address"]),
            vec![&json!("b")]
        );
    }

    #[test]
    fn plans_equalities_before_ranges() {
        let indexed = vec!["a".to_owned(), "b".to_owned()];
        let l = plan(&json!({"a": {"$gt": 1}, "b": "x"}), &indexed).unwrap();
        assert_eq!(l.path, "b");
        assert!(plan(&json!({"a": null}), &indexed).is_none());
        assert!(plan(&json!({"a": {"$gt": 1, "$lt": "z"}}), &indexed).is_none());
        assert!(plan(&json!({"c": 1}), &indexed).is_none());
        assert_eq!(
            plan(&json!({"$and": [{"a": {"$in": [1, 2]}}]}), &indexed)
                .unwrap()
                .ranges
                .len(),
            2
        );
        assert!(plan(&json!({"a": {"$in": [1, null]}}), &indexed).is_none());
        assert!(plan(&json!({"a": {"$ne": 1}}), &indexed).is_none());
    }
}
