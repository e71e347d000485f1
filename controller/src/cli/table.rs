//! Plain-text tables and value rendering for human-readable output.

use serde_json::Value;

/// Renders rows under headers, columns padded to their widest cell.
pub fn render(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers);
    for row in rows {
        line(row);
    }
    out
}

/// A value as one table cell: strings bare, missing as `-`, others as compact JSON.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.iter().all(|v| !v.is_object() && !v.is_array()) => items
            .iter()
            .map(|v| cell(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Follows a dotted path as queries do: through objects, by index into arrays, and into every
/// element of an array of objects (`os_storage.name` is every disk's name).
pub fn lookup<'a>(doc: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![doc];
    for key in path.split('.') {
        current = current
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match v {
                    Value::Object(map) => map.get(key).into_iter().collect(),
                    Value::Array(items) => match key.parse::<usize>() {
                        Ok(i) => items.get(i).into_iter().collect(),
                        Err(_) => items.iter().filter_map(|item| item.get(key)).collect(),
                    },
                    _ => Vec::new(),
                }
            })
            .collect();
    }
    current
}

/// The values at a path as one cell.
pub fn cell_at(doc: &Value, path: &str) -> String {
    match lookup(doc, path).as_slice() {
        [] => cell(None),
        [one] => cell(Some(one)),
        many => many
            .iter()
            .map(|v| cell(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Every leaf of a document as `(path, value)` pairs, keys in sorted order.
pub fn flatten(doc: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}.{i}"), v, out);
                }
            }
            leaf => out.push((prefix.to_owned(), cell(Some(leaf)))),
        }
    }
    let mut out = Vec::new();
    walk("", doc, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pads_columns_and_trims_line_ends() {
        let t = render(
            &["A".into(), "LONGER".into()],
            &[vec!["wide cell".into(), "x".into()]],
        );
        assert_eq!(t, "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn flattens_nested_documents() {
        // Documents keep their fields' order (as MongoDB does), and so does the flattening.
        let doc = json!({"a": {"b": 1}, "f": ["p", "q"], "l": [{"n": "x"}]});
        assert_eq!(
            flatten(&doc),
            vec![
                ("a.b".into(), "1".into()),
                ("f".into(), "p,q".into()),
                ("l.0.n".into(), "x".into())
            ]
        );
        assert_eq!(lookup(&doc, "l.0.n"), vec![&json!("x")]);
        let disks = json!({"os_storage": [{"name": "sda"}, {"name": "vda"}]});
        assert_eq!(cell_at(&disks, "os_storage.name"), "sda,vda");
        assert_eq!(cell_at(&disks, "os_storage.size"), "-");
    }
}
