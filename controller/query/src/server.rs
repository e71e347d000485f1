//! What a backend sends a MongoDB server so the server answers as this engine does.
//!
//! A MongoDB collection keeps its own `_id` in every document; our documents are keyed by
//! `mercury_id` and show no `_id`. So a `find` projection hides `_id` and gives `mercury_id`
//! the part `_id` plays (kept by inclusions unless excluded), and a pipeline starts by dropping
//! `_id`. Numbers map to BSON as [`crate::bson_type`] says; a `{"$regex": p, "$options": o}`
//! object inside an array (`$in`, `$nin`, `$all`) is JSON's spelling of a BSON regex and must
//! be sent as one. Everything else is sent as it is.

use serde_json::{json, Map, Value};

use crate::FIND_KEY;

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => true,
    }
}

/// The projection document to send for a `find` request's projection (validated or not: a
/// malformed one stays malformed, so the server refuses it too).
pub fn find_projection(projection: Option<&Value>) -> Value {
    let map = match projection {
        None | Some(Value::Null) => return json!({"_id": 0}),
        Some(Value::Object(map)) => map,
        Some(other) => return other.clone(),
    };
    let inclusion = map.iter().any(|(k, v)| k != FIND_KEY && truthy(v))
        || (map.len() == 1 && map.get(FIND_KEY).is_some_and(truthy));
    // Only `_id` may go against a projection's kind: our key is included or left out instead.
    let keep_key = map.get(FIND_KEY).is_none_or(truthy);
    let mut out: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| *k != FIND_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match (inclusion, keep_key) {
        (true, true) => {
            out.insert(FIND_KEY.into(), json!(1));
        }
        (false, false) => {
            out.insert(FIND_KEY.into(), json!(0));
        }
        _ => {}
    }
    out.insert("_id".into(), json!(0));
    Value::Object(out)
}

/// The stages to send for a pipeline: `_id` dropped first, then the pipeline as given.
pub fn pipeline_stages(stages: &[Value]) -> Vec<Value> {
    std::iter::once(json!({"$project": {"_id": 0}}))
        .chain(stages.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_projections_hide_id_and_key_mercury_id() {
        assert_eq!(find_projection(None), json!({"_id": 0}));
        assert_eq!(find_projection(Some(&json!({}))), json!({"_id": 0}));
        assert_eq!(
            find_projection(Some(&json!({"mem.total": 1}))),
            json!({"mem.total": 1, "mercury_id": 1, "_id": 0})
        );
        assert_eq!(
            find_projection(Some(&json!({"name": 1, "mercury_id": 0}))),
            json!({"name": 1, "_id": 0})
        );
        assert_eq!(
            find_projection(Some(&json!({"disks": 0, "mercury_id": 1}))),
            json!({"disks": 0, "_id": 0})
        );
        assert_eq!(
            find_projection(Some(&json!({"mercury_id": 0}))),
            json!({"mercury_id": 0, "_id": 0})
        );
        assert_eq!(
            find_projection(Some(&json!({"mercury_id": 1}))),
            json!({"mercury_id": 1, "_id": 0})
        );
    }
}
