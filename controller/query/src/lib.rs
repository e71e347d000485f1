//! MongoDB's query language over inventory documents: find (filter, projection, sort, skip,
//! limit), count, distinct and an aggregation subset, with MongoDB's semantics so the embedded
//! store and a MongoDB backend answer the same requests the same way.
//!
//! Principal types: [`Query`] (a find request), [`Filter`], [`Projection`], [`Sort`],
//! [`Count`], [`Distinct`] and [`Pipeline`] (`$match $project $unwind $group $sort $limit
//! $skip $count`). Each is compiled once from its request document, keeps that validated
//! document (for a backend that hands it to a server), and runs over many documents without
//! re-parsing. Anything outside the supported language is refused with a [`QueryError`] that
//! names it (HTTP 400). [`conformance`] loads the shared conformance cases and runs them
//! against any backend; [`server`] says how a MongoDB backend translates requests.
//!
//! Semantics worth knowing: values compare in BSON type order, numbers exactly across
//! int/long/double; embedded documents are equal only with the same fields in the same order
//! (documents keep their field order: serde_json's `preserve_order`); regexes run on the
//! linear-time `regex` crate, so PCRE lookaround and backreferences are refused rather than
//! run on a backtracking engine whose cost a query could make exponential.
//!
//! ```
//! use qs_query::Query;
//! let q = Query::from_request(&serde_json::json!({"filter": {"mem.total": {"$gte": 1024}}, "limit": 10})).unwrap();
//! let docs = [serde_json::json!({"mercury_id": "a", "mem": {"total": 2048}})];
//! assert_eq!(q.run(docs.iter()).len(), 1);
//! ```

pub mod conformance;
mod distinct;
mod expression;
mod filter;
mod group;
mod order;
mod path;
mod pipeline;
mod projection;
pub mod server;
mod sort;

pub use distinct::Distinct;
pub use filter::{Filter, REGEX_PATTERN_LIMIT};
pub use order::{bson_type, compare as compare_values, equal as values_equal};
pub use pipeline::Pipeline;
pub use projection::{Projection, FIND_KEY};
pub use sort::Sort;

use serde_json::{Map, Value};

/// Why a query was refused; every variant is the caller's mistake (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// An operator this engine does not know or support.
    #[error("unknown or unsupported operator {operator}")]
    UnknownOperator {
        /// The operator as written, e.g. `$where`.
        operator: String,
    },
    /// An operator's operand has the wrong shape.
    #[error("{operator} expects {expected}")]
    BadOperand {
        /// The operator (or part of the request).
        operator: String,
        /// What it expects.
        expected: &'static str,
    },
    /// A `$regex` pattern does not compile.
    #[error("invalid regular expression {pattern:?}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: regex::Error,
    },
    /// A `$options` flag other than i, m, s, x.
    #[error("unsupported $regex option {option:?} (use i, m, s or x)")]
    BadRegexOption {
        /// The flag.
        option: char,
    },
    /// A projection entry that cannot be used.
    #[error("projection of {path:?}: {reason}")]
    BadProjection {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A sort direction other than 1 or -1.
    #[error("sort direction of {path:?} must be 1 or -1")]
    BadSort {
        /// The path.
        path: String,
    },
    /// A key of the request body this API does not have.
    #[error("unknown request field {field:?} (expected {expected})")]
    UnknownField {
        /// The key.
        field: String,
        /// The keys this request takes.
        expected: String,
    },
    /// A regex using a construct only a backtracking engine runs.
    #[error("regular expression {pattern:?} uses {construct}, which is not supported (patterns run in linear time)")]
    UnsupportedRegex {
        /// The pattern (first 200 characters).
        pattern: String,
        /// The construct, e.g. "lookahead (?=…)".
        construct: &'static str,
    },
    /// A regex pattern longer than the limit.
    #[error("regular expression of {length} bytes is longer than the limit of {limit}")]
    RegexTooLong {
        /// The pattern's length in bytes.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// A `$type` operand that is no BSON type name or code.
    #[error("$type {value} is not a BSON type alias or numeric code")]
    BadType {
        /// The operand as written.
        value: String,
    },
    /// Two projected paths where one contains the other.
    #[error("projection path collision at {path:?}")]
    PathCollision {
        /// The later of the two paths.
        path: String,
    },
    /// A pipeline stage this engine does not know or support.
    #[error("unknown or unsupported pipeline stage {stage}")]
    UnknownStage {
        /// The stage as written, e.g. `$lookup`.
        stage: String,
    },
}

/// The object of a request body, refusing keys it does not take.
pub(crate) fn request_fields<'a>(
    body: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, QueryError> {
    let map = body.as_object().ok_or_else(|| QueryError::BadOperand {
        operator: "request".into(),
        expected: "a JSON object",
    })?;
    if let Some(field) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(QueryError::UnknownField {
            field: field.clone(),
            expected: allowed.join(", "),
        });
    }
    Ok(map)
}

/// A complete query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Which documents.
    pub filter: Filter,
    /// Which fields of them.
    pub projection: Option<Projection>,
    /// In what order.
    pub sort: Option<Sort>,
    /// At most this many (0 or none: no limit).
    pub limit: Option<u64>,
    /// After skipping this many.
    pub skip: Option<u64>,
}

fn count(field: &str, v: &Value) -> Result<Option<u64>, QueryError> {
    match v {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or_else(|| QueryError::BadOperand {
            operator: field.to_owned(),
            expected: "a non-negative whole number",
        }),
    }
}

impl Query {
    /// Parses the HTTP body `{filter, projection, sort, limit, skip}` (all optional).
    pub fn from_request(body: &Value) -> Result<Query, QueryError> {
        let map = request_fields(body, &["filter", "projection", "sort", "limit", "skip"])?;
        let present = |k: &str| map.get(k).filter(|v| !v.is_null());
        Ok(Query {
            filter: Filter::parse(present("filter").unwrap_or(&Value::Object(Map::new())))?,
            projection: present("projection").map(Projection::parse).transpose()?,
            sort: present("sort").map(Sort::parse).transpose()?,
            limit: map
                .get("limit")
                .map(|v| count("limit", v))
                .transpose()?
                .flatten(),
            skip: map
                .get("skip")
                .map(|v| count("skip", v))
                .transpose()?
                .flatten(),
        })
    }

    /// The validated filter document.
    pub fn filter_document(&self) -> &Value {
        self.filter.document()
    }

    /// The validated projection document, if any.
    pub fn projection_document(&self) -> Option<&Value> {
        self.projection.as_ref().map(Projection::document)
    }

    /// The validated sort document, if any.
    pub fn sort_document(&self) -> Option<&Value> {
        self.sort.as_ref().map(Sort::document)
    }

    /// Filters, sorts, skips, limits and projects, in that order, as MongoDB does.
    pub fn run<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> Vec<Value> {
        let mut selected: Vec<&Value> = docs.filter(|d| self.filter.matches(d)).collect();
        if let Some(sort) = &self.sort {
            selected = sort.sort(selected);
        }
        let skip = usize::try_from(self.skip.unwrap_or(0)).unwrap_or(usize::MAX);
        let limit = match self.limit {
            None | Some(0) => usize::MAX,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        selected
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|d| match &self.projection {
                Some(p) => p.apply(d),
                None => d.clone(),
            })
            .collect()
    }
}

/// A compiled count request: how many documents a filter matches.
#[derive(Debug, Clone)]
pub struct Count {
    /// Which documents.
    pub filter: Filter,
}

impl Count {
    /// Parses the HTTP body `{"filter": {...}}` (filter optional).
    pub fn from_request(body: &Value) -> Result<Count, QueryError> {
        let map = request_fields(body, &["filter"])?;
        let empty = Value::Object(Map::new());
        Ok(Count {
            filter: Filter::parse(map.get("filter").filter(|f| !f.is_null()).unwrap_or(&empty))?,
        })
    }

    /// How many of `docs` match.
    pub fn run<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> u64 {
        self.filter.count(docs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_filter_sort_skip_limit_projection() {
        let docs: Vec<Value> = (0..5)
            .map(|i| json!({"mercury_id": format!("id{i}"), "n": i, "x": "y"}))
            .collect();
        let q = Query::from_request(&json!({"filter": {"n": {"$gte": 1}}, "sort": {"n": -1}, "skip": 1, "limit": 2, "projection": {"n": 1}})).unwrap();
        assert_eq!(
            q.run(docs.iter()),
            vec![
                json!({"mercury_id": "id3", "n": 3}),
                json!({"mercury_id": "id2", "n": 2})
            ]
        );
        assert_eq!(
            Query::from_request(&json!({"limit": 0}))
                .unwrap()
                .run(docs.iter())
                .len(),
            5
        );
    }

    #[test]
    fn refuses_bad_requests() {
        for body in [
            json!([]),
            json!({"filtre": {}}),
            json!({"limit": -1}),
            json!({"skip": "2"}),
            json!({"sort": {"a": 2}}),
        ] {
            assert!(Query::from_request(&body).is_err(), "{body}");
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(|n| json!(n)),
            Just(json!(1.5)),
            prop::sample::select(vec![
                "$a", "$a.b", "a", "a.b", "a.0", "$$ROOT", "x", "", "$sum", "$first",
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "_id",
                        "a",
                        "b",
                        "a.b",
                        "0",
                        "$match",
                        "$project",
                        "$unwind",
                        "$group",
                        "$sort",
                        "$limit",
                        "$skip",
                        "$count",
                        "$sum",
                        "$avg",
                        "$min",
                        "$max",
                        "$push",
                        "$addToSet",
                        "$first",
                        "$last",
                        "$literal",
                        "path",
                        "preserveNullAndEmptyArrays",
                        "includeArrayIndex",
                        "$gt",
                        "$in",
                        "$elemMatch",
                        "$exists",
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]
        #[test]
        fn arbitrary_requests_over_arbitrary_documents_never_panic(
            stages in proptest::collection::vec(arb_json(), 0..4),
            spec in arb_json(),
            docs in proptest::collection::vec(arb_json(), 0..4),
        ) {
            if let Ok(p) = Pipeline::parse(&Value::Array(stages)) {
                let _ = p.run(docs.iter());
            }
            let body = json!({"filter": {"a": {"$exists": true}}, "projection": spec.clone(), "sort": spec.clone()});
            if let Ok(q) = Query::from_request(&body) {
                let _ = q.run(docs.iter());
            }
            if let Ok(d) = Distinct::new("a.0", &json!({})) {
                let _ = d.run(docs.iter());
            }
            if let Ok(p) = Projection::parse_stage(&spec) {
                for d in &docs {
                    let _ = p.apply(d);
                }
            }
        }
    }
}
