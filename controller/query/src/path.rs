//! Resolving dotted paths the way MongoDB does: through objects, into every element of an
//! array of objects, and by index when a component is a number.

use serde_json::Value;

/// A dotted field path, split once at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    /// Splits `a.b.c`.
    pub fn parse(text: &str) -> Self {
        Self(text.split('.').map(str::to_owned).collect())
    }

    /// Every value the path reaches in `doc` (`None` where a branch is missing).
    pub fn resolve<'a>(&self, doc: &'a Value) -> Vec<Option<&'a Value>> {
        let mut out = Vec::new();
        resolve(doc, &self.0, &mut out);
        out
    }
}

fn resolve<'a>(v: &'a Value, parts: &[String], out: &mut Vec<Option<&'a Value>>) {
    let Some((head, rest)) = parts.split_first() else {
        out.push(Some(v));
        return;
    };
    match v {
        Value::Object(map) => match map.get(head) {
            Some(child) => resolve(child, rest, out),
            None => out.push(None),
        },
        Value::Array(items) => {
            if let Ok(index) = head.parse::<usize>() {
                match items.get(index) {
                    Some(item) => resolve(item, rest, out),
                    None => out.push(None),
                }
                return;
            }
            let before = out.len();
            for item in items.iter().filter(|i| i.is_object()) {
                resolve(item, parts, out);
            }
            if out.len() == before {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn walks_objects_arrays_and_indexes() {
        let doc = json!({"a": {"b": 1}, "l": [{"n": "x"}, {"n": "y"}, {"m": 1}, 5]});
        assert_eq!(FieldPath::parse("a.b").resolve(&doc), vec![Some(&json!(1))]);
        assert_eq!(
            FieldPath::parse("l.n").resolve(&doc),
            vec![Some(&json!("x")), Some(&json!("y")), None]
        );
        assert_eq!(
            FieldPath::parse("l.1.n").resolve(&doc),
            vec![Some(&json!("y"))]
        );
        assert_eq!(FieldPath::parse("l.9").resolve(&doc), vec![None]);
        assert_eq!(FieldPath::parse("a.b.c").resolve(&doc), vec![None]);
    }
}
