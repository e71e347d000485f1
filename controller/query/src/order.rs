//! MongoDB's comparison order, mapped onto JSON values.
//!
//! MongoDB compares values of different types by type bracket (null < numbers < strings <
//! objects < arrays < booleans, leaving out BSON types JSON cannot hold), and within a bracket by
//! value: numbers numerically whatever their representation, strings bytewise, objects field by
//! field, arrays element by element.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// The type bracket of a value in MongoDB's order.
pub fn bracket(v: &Value) -> u8 {
    match v {
        Value::Null => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Object(_) => 4,
        Value::Array(_) => 5,
        Value::Bool(_) => 8,
    }
}

fn as_integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Numbers compare by value: 1, 1.0 and 1u64 are equal.
pub fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    if let (Some(x), Some(y)) = (as_integer(a), as_integer(b)) {
        return x.cmp(&y);
    }
    let (x, y) = (
        a.as_f64().unwrap_or(f64::NAN),
        b.as_f64().unwrap_or(f64::NAN),
    );
    x.partial_cmp(&y).unwrap_or(Ordering::Equal)
}

/// Total order over JSON values, as MongoDB sorts and compares them.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    let by_bracket = bracket(a).cmp(&bracket(b));
    if by_bracket != Ordering::Equal {
        return by_bracket;
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = compare(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((kp, vp), (kq, vq)) in x.iter().zip(y) {
                let o = bracket(vp)
                    .cmp(&bracket(vq))
                    .then_with(|| kp.as_bytes().cmp(kq.as_bytes()))
                    .then_with(|| compare(vp, vq));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

/// Equality as MongoDB's `$eq` sees it (numbers by value, documents and arrays deeply).
pub fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets_order_types() {
        let ordered = [
            json!(null),
            json!(-5),
            json!(2.5),
            json!("a"),
            json!({"a": 1}),
            json!([1]),
            json!(false),
            json!(true),
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(&w[0], &w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(equal(&json!(1), &json!(1.0)));
        assert!(equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert_eq!(compare(&json!(-1), &json!(u64::MAX)), Ordering::Less);
        assert_eq!(compare(&json!(2), &json!(1.5)), Ordering::Greater);
    }
}
