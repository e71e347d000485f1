//! A JSON document as template values, converted only where a template looks.
//!
//! Converting a whole inventory (tens of kilobytes, thousands of nodes) into template values
//! for every host costs more than rendering the few fields a template reads; a job over
//! 10,000 hosts renders 10,000 contexts. [`LazyJson`] shares the document behind an `Arc` and
//! hands out a scalar, or a view of a subtree, at each lookup.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::Value;

/// One step from a node to a child.
#[derive(Debug, Clone)]
enum Segment {
    Key(Arc<str>),
    Index(usize),
}

/// A node of a shared JSON document, seen by templates as a map, a list or a value.
#[derive(Debug)]
pub struct LazyJson {
    root: Arc<Value>,
    path: Vec<Segment>,
}

impl LazyJson {
    /// The whole document as a template value.
    pub fn root(root: Arc<Value>) -> minijinja::Value {
        to_template(&root, &root, Vec::new())
    }

    fn node(&self) -> &Value {
        let mut node = &*self.root;
        for segment in &self.path {
            node = match (segment, node) {
                (Segment::Key(k), Value::Object(map)) => map.get(&**k).unwrap_or(&Value::Null),
                (Segment::Index(i), Value::Array(items)) => items.get(*i).unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        node
    }

    fn child(&self, value: &Value, segment: Segment) -> minijinja::Value {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend(self.path.iter().cloned());
        path.push(segment);
        to_template(value, &self.root, path)
    }
}

/// A scalar directly; a container as a view at `path`.
fn to_template(value: &Value, root: &Arc<Value>, path: Vec<Segment>) -> minijinja::Value {
    match value {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                minijinja::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                minijinja::Value::from(u)
            } else {
                minijinja::Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(_) | Value::Object(_) => minijinja::Value::from_object(LazyJson {
            root: root.clone(),
            path,
        }),
    }
}

impl Object for LazyJson {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match self.node() {
            Value::Object(map) => {
                let key = key.as_str()?;
                let (k, v) = map.get_key_value(key)?;
                Some(self.child(v, Segment::Key(Arc::from(k.as_str()))))
            }
            Value::Array(items) => {
                let index = i64::try_from(key.clone()).ok()?;
                // Negative indexes count from the end, as in Python and minijinja's lists.
                let index = if index < 0 {
                    items.len().checked_sub(index.unsigned_abs() as usize)?
                } else {
                    usize::try_from(index).ok()?
                };
                Some(self.child(items.get(index)?, Segment::Index(index)))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Value::Object(map) => Enumerator::Values(
                map.keys()
                    .map(|k| minijinja::Value::from(k.as_str()))
                    .collect(),
            ),
            Value::Array(items) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Value::Object(map) => Some(map.len()),
            Value::Array(items) => Some(items.len()),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_see_the_same_values_as_a_full_conversion() {
        let doc = json!({
            "inventory": {
                "dmi": {"product_serial": "SN1", "vendor": "HPE"},
                "disks": [{"name": "sda", "size": 480}, {"name": "sdb", "size": 960}],
                "big": 18446744073709551615_u64, "neg": -3, "ratio": 0.5, "none": null, "yes": true,
            },
        });
        let env = minijinja::Environment::new();
        let lazy = LazyJson::root(Arc::new(doc.clone()));
        let full = minijinja::Value::from(minijinja::value::Serde(&doc));
        for expr in [
            "inventory.dmi.product_serial",
            "inventory.disks | map(attribute='name') | join(',')",
            "inventory.disks | selectattr('size', 'gt', 500) | list | length",
            "inventory.disks[-1].name",
            "inventory.disks[0]['size'] + 1",
            "inventory.dmi | list",
            "inventory.dmi | items | list",
            "inventory.big",
            "inventory.neg * 2",
            "inventory.ratio",
            "inventory.none is none",
            "inventory.yes and inventory.disks",
            "'vendor' in inventory.dmi",
            "inventory.disks | length",
            "inventory.dmi.nothing is defined",
            "inventory.disks",
        ] {
            let e = env.compile_expression(expr).unwrap();
            let (a, b) = (e.eval(&lazy).unwrap(), e.eval(&full).unwrap());
            assert_eq!(
                serde_json::to_value(&a).unwrap(),
                serde_json::to_value(&b).unwrap(),
                "{expr}"
            );
            assert_eq!(a.to_string(), b.to_string(), "{expr}");
        }
    }
}
