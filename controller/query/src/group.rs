//! The `$group` stage: documents grouped by the value of an `_id` expression, with
//! accumulators `$sum $avg $min $max $push $addToSet $first $last`.
//!
//! Groups are keyed by MongoDB equality (numbers by value, documents in field order), a missing
//! key groups with null. Sums stay integers while every input is one and the total fits 64
//! bits, and become doubles otherwise; `$avg` is always a double (null for no numbers).
//! Non-numeric inputs, arrays included, are ignored by `$sum` and `$avg`; `$min`/`$max` ignore
//! null and missing; `$push`/`$addToSet` skip missing values; `$first`/`$last` give null for
//! missing.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Number, Value};

use crate::expression::Expression;
use crate::order::{canonical_key, compare, Num};
use crate::QueryError;

/// A compiled `$group` specification.
#[derive(Debug, Clone)]
pub struct Group {
    key: Expression,
    fields: Vec<(String, Accumulator, Expression)>,
}

#[derive(Debug, Clone, Copy)]
enum Accumulator {
    Sum,
    Avg,
    Min,
    Max,
    Push,
    AddToSet,
    First,
    Last,
}

/// An exact-as-possible running sum: integers exactly, doubles with Neumaier compensation.
#[derive(Debug, Default, Clone)]
struct Sum {
    ints: i128,
    float: f64,
    compensation: f64,
    any_float: bool,
    count: u64,
}

impl Sum {
    fn add(&mut self, v: &Value) {
        let Value::Number(n) = v else { return };
        self.count += 1;
        match Num::of(n) {
            Num::Int(i) => self.ints = self.ints.saturating_add(i),
            Num::Float(f) => {
                self.any_float = true;
                let t = self.float + f;
                self.compensation += if self.float.abs() >= f.abs() {
                    (self.float - t) + f
                } else {
                    (f - t) + self.float
                };
                self.float = t;
            }
        }
    }

    fn total_f64(&self) -> f64 {
        self.ints as f64 + (self.float + self.compensation)
    }

    fn result(&self) -> Value {
        if !self.any_float {
            if let Ok(i) = i64::try_from(self.ints) {
                return Value::from(i);
            }
        }
        float(self.total_f64())
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[derive(Debug)]
enum State {
    Sum(Sum),
    Avg(Sum),
    Min(Option<Value>),
    Max(Option<Value>),
    Push(Vec<Value>),
    Set(Vec<Value>, HashSet<Vec<u8>>),
    First(Option<Value>),
    Last(Value),
}

impl Group {
    /// Compiles the document of a `$group` stage.
    pub fn parse(spec: &Value) -> Result<Group, QueryError> {
        let map = spec.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "$group".into(),
            expected: "a document",
        })?;
        let key = map.get("_id").ok_or_else(|| QueryError::BadOperand {
            operator: "$group".into(),
            expected: "an _id (the grouping expression; null for one group)",
        })?;
        let key = Expression::parse(key, "$group _id")?;
        let mut fields = Vec::new();
        for (name, v) in map {
            if name == "_id" {
                continue;
            }
            if name.contains('.') || name.starts_with('$') {
                return Err(QueryError::BadOperand {
                    operator: "$group".into(),
                    expected: "output field names without '.' or a leading '$'",
                });
            }
            let acc =
                v.as_object()
                    .filter(|m| m.len() == 1)
                    .ok_or_else(|| QueryError::BadOperand {
                        operator: "$group".into(),
                        expected: "each output field to be {accumulator: expression}",
                    })?;
            let Some((op, arg)) = acc.iter().next() else {
                continue;
            };
            let accumulator = match op.as_str() {
                "$sum" => Accumulator::Sum,
                "$avg" => Accumulator::Avg,
                "$min" => Accumulator::Min,
                "$max" => Accumulator::Max,
                "$push" => Accumulator::Push,
                "$addToSet" => Accumulator::AddToSet,
                "$first" => Accumulator::First,
                "$last" => Accumulator::Last,
                other => {
                    return Err(QueryError::UnknownOperator {
                        operator: other.to_owned(),
                    })
                }
            };
            fields.push((name.clone(), accumulator, Expression::parse(arg, op)?));
        }
        Ok(Group { key, fields })
    }

    /// Groups documents; groups come out in the order their first document came in.
    pub fn run<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> Vec<Value> {
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut groups: Vec<(Value, Vec<State>)> = Vec::new();
        let mut buf = Vec::new();
        for doc in docs {
            let key = self.key.eval(doc).unwrap_or(Value::Null);
            buf.clear();
            canonical_key(&key, &mut buf);
            let slot = match index.get(&buf) {
                Some(i) => *i,
                None => {
                    index.insert(buf.clone(), groups.len());
                    groups.push((key, self.fields.iter().map(|f| initial(f.1)).collect()));
                    groups.len() - 1
                }
            };
            let (_, states) = &mut groups[slot];
            for ((_, _, expr), state) in self.fields.iter().zip(states.iter_mut()) {
                accumulate(state, expr.eval(doc), &mut buf);
            }
        }
        groups
            .into_iter()
            .map(|(key, states)| {
                let mut out = Map::new();
                out.insert("_id".into(), key);
                for ((name, _, _), state) in self.fields.iter().zip(states) {
                    out.insert(name.clone(), finish(state));
                }
                Value::Object(out)
            })
            .collect()
    }
}

fn initial(acc: Accumulator) -> State {
    match acc {
        Accumulator::Sum => State::Sum(Sum::default()),
        Accumulator::Avg => State::Avg(Sum::default()),
        Accumulator::Min => State::Min(None),
        Accumulator::Max => State::Max(None),
        Accumulator::Push => State::Push(Vec::new()),
        Accumulator::AddToSet => State::Set(Vec::new(), HashSet::new()),
        Accumulator::First => State::First(None),
        Accumulator::Last => State::Last(Value::Null),
    }
}

/// Keeps `v` if it is further than `best` in the direction `want`; null and missing never count.
fn keep_extreme(best: &mut Option<Value>, v: Option<Value>, want: Ordering) {
    if let Some(v) = v.filter(|v| !v.is_null()) {
        if best.as_ref().is_none_or(|b| compare(&v, b) == want) {
            *best = Some(v);
        }
    }
}

fn accumulate(state: &mut State, v: Option<Value>, buf: &mut Vec<u8>) {
    match state {
        State::Sum(sum) | State::Avg(sum) => {
            if let Some(v) = &v {
                sum.add(v);
            }
        }
        State::Min(best) => keep_extreme(best, v, Ordering::Less),
        State::Max(best) => keep_extreme(best, v, Ordering::Greater),
        State::Push(items) => items.extend(v),
        State::Set(items, seen) => {
            if let Some(v) = v {
                let mut key = std::mem::take(buf);
                key.clear();
                canonical_key(&v, &mut key);
                if seen.insert(key.clone()) {
                    items.push(v);
                }
                *buf = key;
            }
        }
        State::First(first) => {
            if first.is_none() {
                *first = Some(v.unwrap_or(Value::Null));
            }
        }
        State::Last(last) => *last = v.unwrap_or(Value::Null),
    }
}

fn finish(state: State) -> Value {
    match state {
        State::Sum(sum) => sum.result(),
        State::Avg(sum) if sum.count == 0 => Value::Null,
        State::Avg(sum) => {
            // Integers are divided exactly before becoming a double.
            if !sum.any_float {
                float(sum.ints as f64 / sum.count as f64)
            } else {
                float(sum.total_f64() / sum.count as f64)
            }
        }
        State::Min(v) | State::Max(v) => v.unwrap_or(Value::Null),
        State::Push(items) | State::Set(items, _) => Value::Array(items),
        State::First(v) => v.unwrap_or(Value::Null),
        State::Last(v) => v,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn g(spec: Value, docs: Vec<Value>) -> Vec<Value> {
        Group::parse(&spec).unwrap().run(docs.iter())
    }

    #[test]
    fn groups_by_value_with_missing_as_null() {
        let docs = vec![
            json!({"v": 1, "n": 2}),
            json!({"v": 1.0, "n": 3.5}),
            json!({"n": "x"}),
            json!({"v": null, "n": 4}),
        ];
        assert_eq!(
            g(
                json!({"_id": "$v", "total": {"$sum": "$n"}, "count": {"$sum": 1}, "avg": {"$avg": "$n"}}),
                docs
            ),
            vec![
                json!({"_id": 1, "total": 5.5, "count": 2, "avg": 2.75}),
                json!({"_id": null, "total": 4, "count": 2, "avg": 4.0}),
            ]
        );
    }
}
