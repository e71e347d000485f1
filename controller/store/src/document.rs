//! The shape of a stored inventory document: its `schema` number, the controller's
//! `received_at` stamp, and the one place where documents of older shapes are converted on read.

use serde_json::{Map, Value};

/// The current shape of stored inventories; bump it when the shape changes and convert the
/// older shape in [`upgrade`].
pub const SCHEMA: u64 = 1;

/// Fields the controller stamps on every stored inventory; a change of these alone is not a
/// change of the hardware (no history row).
pub const STAMPS: &[&str] = &["schema", "received_at", "collected_at"];

/// The controller's clock as RFC 3339 (UTC, microseconds).
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Marks an inventory as received now in the current schema (`schema`, `received_at`). An
/// agent-supplied `collected_at` is kept as it came.
pub fn stamp(doc: &mut Map<String, Value>) {
    doc.insert("schema".into(), Value::from(SCHEMA));
    doc.insert("received_at".into(), Value::String(now()));
}

/// Converts a stored document of an older shape to the current one. Documents written before
/// `schema` existed (schema 0) have the same fields as schema 1, so they are left as they are:
/// queries see exactly what was stored.
pub fn upgrade(doc: Value) -> Value {
    let schema = doc.get("schema").and_then(Value::as_u64).unwrap_or(0);
    if !needs_upgrade(schema) {
        return doc;
    }
    // No stored shape needs converting yet: conversions from schema 1 onwards go here.
    doc
}

/// Whether [`upgrade`] converts documents stored with this schema number, so a scan that
/// decodes only some fields decodes such documents whole. Schema 0 has schema 1's fields, and
/// a newer controller's documents are kept as they are rather than guessed at.
pub fn needs_upgrade(schema: u64) -> bool {
    CONVERTED.contains(&schema)
}

/// The stored schemas [`upgrade`] converts (none yet).
const CONVERTED: &[u64] = &[];

/// Whether two inventories differ in more than the controller's stamps.
pub fn changed(old: &Map<String, Value>, new: &Map<String, Value>) -> bool {
    let strip = |m: &Map<String, Value>| -> Vec<(String, Value)> {
        m.iter()
            .filter(|(k, _)| !STAMPS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn stamps_do_not_count_as_changes() {
        let mut a = json!({"mem": {"total": 1}}).as_object().unwrap().clone();
        let mut b = a.clone();
        stamp(&mut a);
        assert!(!changed(&a, &b));
        b.insert("mem".into(), json!({"total": 2}));
        assert!(changed(&a, &b));
        assert_eq!(a["schema"], json!(SCHEMA));
    }
}
