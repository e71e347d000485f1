//! The aggregation expressions this engine evaluates: field paths (`"$a.b"`), constants,
//! `{"$literal": v}`, and documents and arrays built of those. Any other operator is refused
//! by name.

use serde_json::{Map, Value};

use crate::QueryError;

/// A compiled aggregation expression.
#[derive(Debug, Clone)]
pub enum Expression {
    /// `"$a.b"`: the value at a path, mapped over arrays of documents.
    Field(Vec<String>),
    /// A constant.
    Literal(Value),
    /// A document whose fields are expressions; fields that come out missing are left out.
    Object(Vec<(String, Expression)>),
    /// An array of expressions; missing elements become null.
    Array(Vec<Expression>),
}

impl Expression {
    /// Compiles an expression; `context` names where it appears, for errors.
    pub fn parse(v: &Value, context: &str) -> Result<Expression, QueryError> {
        match v {
            Value::String(s) if s.starts_with("$$") => Err(QueryError::UnknownOperator {
                operator: format!("{s} (variables are not supported)"),
            }),
            Value::String(s) if s.starts_with('$') => {
                let path = &s[1..];
                if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
                    return Err(QueryError::BadOperand {
                        operator: context.to_owned(),
                        expected: "field paths of the form \"$a.b\"",
                    });
                }
                Ok(Expression::Field(
                    path.split('.').map(str::to_owned).collect(),
                ))
            }
            Value::Array(items) => items
                .iter()
                .map(|i| Expression::parse(i, context))
                .collect::<Result<_, _>>()
                .map(Expression::Array),
            Value::Object(map) => match map.keys().next() {
                Some(k) if k == "$literal" && map.len() == 1 => {
                    Ok(Expression::Literal(map["$literal"].clone()))
                }
                Some(k) if k.starts_with('$') => Err(QueryError::UnknownOperator {
                    operator: k.clone(),
                }),
                _ => map
                    .iter()
                    .map(|(k, v)| {
                        if k.contains('.') || k.starts_with('$') {
                            return Err(QueryError::BadOperand {
                                operator: context.to_owned(),
                                expected: "document field names without '.' or a leading '$'",
                            });
                        }
                        Ok((k.clone(), Expression::parse(v, context)?))
                    })
                    .collect::<Result<_, _>>()
                    .map(Expression::Object),
            },
            other => Ok(Expression::Literal(other.clone())),
        }
    }

    /// The expression's value for a document; `None` is "missing".
    pub fn eval(&self, doc: &Value) -> Option<Value> {
        match self {
            Expression::Field(parts) => field(doc, parts),
            Expression::Literal(v) => Some(v.clone()),
            Expression::Object(fields) => {
                let mut out = Map::new();
                for (k, e) in fields {
                    if let Some(v) = e.eval(doc) {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Value::Object(out))
            }
            Expression::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .map(|e| e.eval(doc).unwrap_or(Value::Null))
                    .collect(),
            )),
        }
    }
}

/// `ExpressionFieldPath::evaluatePath`: through documents; an array maps the rest of the path
/// over its elements that are documents, skipping the others and missing results.
fn field(v: &Value, parts: &[String]) -> Option<Value> {
    let Some((head, rest)) = parts.split_first() else {
        return Some(v.clone());
    };
    let child = v.as_object()?.get(head)?;
    if rest.is_empty() {
        return Some(child.clone());
    }
    match child {
        Value::Object(_) => field(child, rest),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter(|i| i.is_object())
                .filter_map(|i| field(i, rest))
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn e(expr: Value, doc: Value) -> Option<Value> {
        Expression::parse(&expr, "test").unwrap().eval(&doc)
    }

    #[test]
    fn field_paths_map_over_arrays_of_documents() {
        let doc = json!({"a": [{"b": 1}, {"c": 2}, 3, [{"b": 4}], {"b": [5]}], "d": {"e": null}});
        assert_eq!(e(json!("$a.b"), doc.clone()), Some(json!([1, [5]])));
        assert_eq!(e(json!("$d.e"), doc.clone()), Some(json!(null)));
        assert_eq!(e(json!("$d.x"), doc.clone()), None);
        assert_eq!(
            e(json!({"x": "$d.e", "y": "$nope"}), doc.clone()),
            Some(json!({"x": null}))
        );
        assert_eq!(e(json!(["$nope", 1]), doc), Some(json!([null, 1])));
    }

    #[test]
    fn operators_and_variables_are_refused_by_name() {
        for (expr, name) in [
            (json!({"$concat": ["a"]}), "$concat"),
            (json!("$$ROOT"), "$$ROOT"),
        ] {
            let err = Expression::parse(&expr, "$group").unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
