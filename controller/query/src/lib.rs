//! MongoDB's query language over inventory documents: filter, projection, sort, skip, limit.
//!
//! Queries are parsed once into compiled forms ([`Filter`], [`Projection`], [`Sort`]) and then
//! run over many documents without re-parsing or cloning while matching. Semantics follow
//! MongoDB's, so the embedded store and a MongoDB backend answer the same queries the same way.
//!
//! ```
//! use qs_query::Query;
//! let q = Query::from_request(&serde_json::json!({"filter": {"mem.total": {"$gte": 1024}}, "limit": 10})).unwrap();
//! let docs = [serde_json::json!({"mercury_id": "a", "mem": {"total": 2048}})];
//! assert_eq!(q.run(docs.iter()).len(), 1);
//! ```

mod filter;
mod order;
mod path;
mod projection;
mod sort;

pub use filter::Filter;
pub use projection::Projection;
pub use sort::Sort;

use serde_json::Value;

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
    #[error("unknown query field {field:?} (expected filter, projection, sort, limit, skip)")]
    UnknownField {
        /// The key.
        field: String,
    },
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
        let map = body.as_object().ok_or_else(|| QueryError::BadOperand {
            operator: "query".into(),
            expected: "a JSON object",
        })?;
        if let Some(field) = map.keys().find(|k| {
            !matches!(
                k.as_str(),
                "filter" | "projection" | "sort" | "limit" | "skip"
            )
        }) {
            return Err(QueryError::UnknownField {
                field: field.clone(),
            });
        }
        let present = |k: &str| map.get(k).filter(|v| !v.is_null());
        Ok(Query {
            filter: Filter::parse(present("filter").unwrap_or(&Value::Object(Default::default())))?,
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

    /// Filters, sorts, skips, limits and projects, in that order, as MongoDB does.
    pub fn run<'a>(&self, docs: impl Iterator<Item = &'a Value>) -> Vec<Value> {
        let mut selected: Vec<&Value> = docs.filter(|d| self.filter.matches(d)).collect();
        if let Some(sort) = &self.sort {
            selected.sort_by(|a, b| sort.compare(a, b));
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
}
