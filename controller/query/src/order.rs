//! MongoDB's comparison order and BSON types, mapped onto JSON values.
//!
//! MongoDB compares values of different types by canonical type (null < numbers < strings <
//! objects < arrays < booleans, leaving out BSON types JSON cannot hold), and within a type by
//! value: numbers exactly whatever their representation (an int64 and a double are never
//! compared through f64, which would be wrong above 2^53), strings bytewise, objects field by
//! field in their stored order, arrays element by element.
//!
//! JSON numbers map to BSON types the way a MongoDB backend stores them: a whole number that
//! fits 32 bits is `int`, another whole number that fits 64 bits is `long`, anything else
//! (fractions, and whole numbers beyond i64 that a backend can only store as doubles) is
//! `double`.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// The canonical type of a value in MongoDB's order (`canonicalizeBSONType`).
pub fn bracket(v: &Value) -> u8 {
    match v {
        Value::Null => 5,
        Value::Number(_) => 10,
        Value::String(_) => 15,
        Value::Object(_) => 20,
        Value::Array(_) => 25,
        Value::Bool(_) => 40,
    }
}

/// A JSON number seen exactly: whole numbers as integers, the rest as doubles.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    /// An integer (i64 or u64 range).
    Int(i128),
    /// A double.
    Float(f64),
}

impl Num {
    /// The exact reading of a serde_json number.
    pub fn of(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Num::Int(i128::from(u))
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    /// The number as MongoDB's `numberLong()` reads it: doubles truncated toward zero,
    /// saturating at the ends of the range, NaN as 0.
    pub fn to_i64(self) -> i64 {
        match self {
            Num::Int(i) => i64::try_from(i).unwrap_or(if i < 0 { i64::MIN } else { i64::MAX }),
            // `as` saturates and maps NaN to 0, which is what MongoDB does.
            Num::Float(f) => f as i64,
        }
    }
}

/// Compares an integer with a double exactly.
fn compare_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        // NaN sorts below every other number in MongoDB.
        return Ordering::Greater;
    }
    // Every integer we hold is within ±2^64, so a double beyond ±2^100 decides by its sign.
    const LIMIT: f64 = 1.0e30;
    if f >= LIMIT {
        return Ordering::Less;
    }
    if f <= -LIMIT {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    // Exact: |whole| < 1e30 < 2^127, and a double's integer part converts without rounding.
    let w = whole as i128;
    match i.cmp(&w) {
        Ordering::Equal => {
            let frac = f - whole;
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

/// Numbers compare by value: 1, 1.0 and 1u64 are equal; 2^53 + 1 is above 2^53 as a double.
pub fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (Num::of(a), Num::of(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
        (Num::Float(x), Num::Float(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        },
    }
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
        // Field by field in stored order: type, then name, then value (BSONObj::woCompare).
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

/// Equality as MongoDB's `$eq` sees it: numbers by value, documents field by field in order,
/// arrays element by element.
pub fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b) == Ordering::Equal
}

/// The BSON type a stored JSON value has (the numeric codes `$type` takes).
pub fn bson_type(v: &Value) -> i32 {
    match v {
        Value::Null => 10,
        Value::Bool(_) => 8,
        Value::String(_) => 2,
        Value::Object(_) => 3,
        Value::Array(_) => 4,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => 16,
            Some(_) => 18,
            None => 1,
        },
    }
}

/// A byte string equal for exactly the values [`equal`] calls equal, for hashing groups and
/// sets (numbers by value, objects in order).
pub fn canonical_key(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(b'n'),
        Value::Bool(b) => out.extend_from_slice(if *b { b"t" } else { b"f" }),
        Value::Number(n) => match Num::of(n) {
            Num::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_le_bytes());
            }
            Num::Float(f) if f.is_nan() => out.push(b'N'),
            Num::Float(f) if f.fract() == 0.0 && f.abs() < 1.0e30 => {
                // A whole double equals the integer of the same value.
                out.push(b'i');
                out.extend_from_slice(&(f as i128).to_le_bytes());
            }
            Num::Float(f) => {
                out.push(b'd');
                out.extend_from_slice(&f.to_le_bytes());
            }
        },
        Value::String(s) => {
            out.push(b's');
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                canonical_key(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (k, item) in map {
                out.extend_from_slice(&(k.len() as u64).to_le_bytes());
                out.extend_from_slice(k.as_bytes());
                canonical_key(item, out);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        assert_eq!(compare(&json!(-2), &json!(-1.5)), Ordering::Less);
    }

    #[test]
    fn int64_and_double_compare_exactly_above_2_pow_53() {
        let two53 = 9_007_199_254_740_992_i64;
        // 2^53 + 1 is not a double; through f64 it would equal 2^53.
        assert_eq!(
            compare(&json!(two53 + 1), &json!(9_007_199_254_740_992.0)),
            Ordering::Greater
        );
        assert!(!equal(&json!(two53 + 1), &json!(9_007_199_254_740_992.0)));
        assert!(equal(&json!(two53), &json!(9_007_199_254_740_992.0)));
        assert_eq!(
            compare(&json!(i64::MAX), &json!(9.223_372_036_854_776e18)),
            Ordering::Less
        );
    }

    #[test]
    fn objects_compare_in_field_order() {
        assert!(!equal(&json!({"a": 1, "b": 2}), &json!({"b": 2, "a": 1})));
        assert!(equal(&json!({"a": 1, "b": 2}), &json!({"a": 1.0, "b": 2})));
    }

    #[test]
    fn canonical_keys_agree_with_equality() {
        let values = [
            json!(1),
            json!(1.0),
            json!(1.5),
            json!("1"),
            json!([1]),
            json!({"a": 1}),
            json!({"a": 1.0}),
            json!(null),
            json!(true),
        ];
        for a in &values {
            for b in &values {
                let (mut ka, mut kb) = (Vec::new(), Vec::new());
                canonical_key(a, &mut ka);
                canonical_key(b, &mut kb);
                assert_eq!(ka == kb, equal(a, b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn bson_types_of_numbers() {
        assert_eq!(bson_type(&json!(5)), 16);
        assert_eq!(bson_type(&json!(5_000_000_000_i64)), 18);
        assert_eq!(bson_type(&json!(5.0)), 1);
        assert_eq!(bson_type(&json!(u64::MAX)), 1);
    }
}
