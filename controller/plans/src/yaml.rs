//! YAML with line numbers (marked-yaml): parsing, positions of nodes, and JSON values typed by
//! YAML 1.2's core schema (plain `12` is a number, quoted `"12"` a string).
//!
//! Anchors, aliases and tags are refused: plan and asset files are plain data.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};
use serde_json::{Map, Number, Value};

/// Where something is in a YAML text (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// A reason tied to a place in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Where.
    pub at: Position,
    /// Why.
    pub reason: String,
}

impl Located {
    /// A reason at a node's start.
    pub fn at(span: &Span, reason: impl Into<String>) -> Located {
        Located {
            at: position(span),
            reason: reason.into(),
        }
    }
}

/// The start of a node.
pub fn position(span: &Span) -> Position {
    span.start().map_or_else(Position::default, |m| Position {
        line: m.line(),
        column: m.column(),
    })
}

/// Parses a document whose top level must be a mapping; duplicate keys are errors.
pub fn parse_mapping(text: &str) -> Result<MarkedMappingNode, Located> {
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
        .toplevel_mapping();
    let node = marked_yaml::parse_yaml_with_options(0, text, options).map_err(load_error)?;
    match node {
        Node::Mapping(map) => Ok(map),
        other => Err(Located::at(other.span(), "the document must be a mapping")),
    }
}

fn load_error(error: LoadError) -> Located {
    let (marker, reason) = match &error {
        LoadError::TopLevelMustBeMapping(m) => (*m, "the document must be a mapping".to_owned()),
        LoadError::TopLevelMustBeSequence(m) => (*m, "the document must be a list".to_owned()),
        LoadError::UnexpectedAnchor(m) => (*m, "anchors and aliases are not supported".to_owned()),
        LoadError::MappingKeyMustBeScalar(m) => (*m, "keys must be plain strings".to_owned()),
        LoadError::UnexpectedTag(m) => (*m, "YAML tags are not supported".to_owned()),
        LoadError::ScanError(m, scan) => (*m, format!("YAML syntax: {}", scan.info())),
        LoadError::DuplicateKey(inner) => {
            let first = position(inner.prev_key.span());
            let again = inner
                .key
                .span()
                .start()
                .copied()
                .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, first.line, first.column));
            (
                again,
                format!(
                    "duplicate key `{}` (first at line {})",
                    inner.key.as_str(),
                    first.line
                ),
            )
        }
    };
    Located {
        at: Position {
            line: marker.line(),
            column: marker.column(),
        },
        reason,
    }
}

/// A node as JSON. `on_string` sees every string scalar with its JSON path and position, so
/// callers can check templates where they are written.
pub fn to_json(
    node: &Node,
    path: &str,
    on_string: &mut dyn FnMut(&str, &str, &Span) -> Result<(), Located>,
) -> Result<Value, Located> {
    match node {
        Node::Scalar(scalar) => {
            let value = scalar_value(scalar);
            if let Value::String(text) = &value {
                on_string(text, path, scalar.span())?;
            }
            Ok(value)
        }
        Node::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| to_json(item, &format!("{path}[{i}]"), on_string))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Node::Mapping(map) => mapping_to_json(map, path, on_string).map(Value::Object),
    }
}

/// A mapping as a JSON object, keys in file order.
pub fn mapping_to_json(
    map: &MarkedMappingNode,
    path: &str,
    on_string: &mut dyn FnMut(&str, &str, &Span) -> Result<(), Located>,
) -> Result<Map<String, Value>, Located> {
    let mut out = Map::with_capacity(map.len());
    for (key, item) in map.iter() {
        let value = to_json(item, &format!("{path}.{}", key.as_str()), on_string)?;
        out.insert(key.as_str().to_owned(), value);
    }
    Ok(out)
}

/// A scalar typed by YAML 1.2's core schema; quoted scalars are always strings. Numbers JSON
/// cannot hold (`.inf`, `.nan`) stay strings.
pub fn scalar_value(scalar: &MarkedScalarNode) -> Value {
    let text = scalar.as_str();
    if !scalar.may_coerce() {
        return Value::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(number) = integer(text) {
        return Value::Number(number);
    }
    let float_like = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if float_like {
        if let Some(number) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(number);
        }
    }
    Value::String(text.to_owned())
}

fn integer(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else if let Some(octal) = digits.strip_prefix("0o") {
        u64::from_str_radix(octal, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u64>().ok()?
    } else {
        return None;
    };
    if negative {
        let signed = 0_i64.checked_sub_unsigned(magnitude)?;
        Some(Number::from(signed))
    } else {
        Some(Number::from(magnitude))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Value {
        let map = parse_mapping(text).unwrap();
        Value::Object(mapping_to_json(&map, "", &mut |_, _, _| Ok(())).unwrap())
    }

    #[test]
    fn scalars_follow_the_core_schema_and_quotes_make_strings() {
        let doc = parse(
            "a: \"12\"\nb: '${x}'\nc: 12\nd: ~\ne:\nf: 1.5\ng: 0x10\nh: yes\ni: -7\nj: 1e3\nk: .inf\nl: True\nm: [1, two]\nn: {p: null}\no: 18446744073709551615\n",
        );
        assert_eq!(
            doc,
            json!({"a": "12", "b": "${x}", "c": 12, "d": null, "e": null, "f": 1.5, "g": 16,
                   "h": "yes", "i": -7, "j": 1000.0, "k": ".inf", "l": true, "m": [1, "two"],
                   "n": {"p": null}, "o": 18446744073709551615_u64})
        );
    }

    #[test]
    fn errors_carry_lines() {
        for (text, line, words) in [
            ("a: 1\nb: [1\n", 3, "YAML syntax"),
            ("- x\n", 1, "must be a mapping"),
            (
                "a: 1\nb:\n  c: 1\n  c: 2\n",
                4,
                "duplicate key `c` (first at line 3)",
            ),
            ("a: &x 1\nb: *x\n", 1, "anchors"),
            ("a: !!str 1\n", 1, "tags"),
        ] {
            let error = parse_mapping(text).unwrap_err();
            assert_eq!(error.at.line, line, "{text:?}: {error:?}");
            assert!(error.reason.contains(words), "{text:?}: {error:?}");
        }
    }

    #[test]
    fn strings_are_seen_with_their_paths_and_lines() {
        let map = parse_mapping("x:\n  - a\n  - {b: \"c\"}\ny: 3\n").unwrap();
        let mut seen = Vec::new();
        mapping_to_json(&map, "args", &mut |text, path, span| {
            seen.push((text.to_owned(), path.to_owned(), position(span).line));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".into(), "args.x[0]".into(), 2),
                ("c".into(), "args.x[1].b".into(), 3)
            ]
        );
    }
}
