//! Who is calling the HTTP API: the gate puts a [`Caller`] into every authenticated request's
//! extensions, so handlers know the token's name, role, inventory segment and address.
//!
//! A segment is a MongoDB filter over inventory documents; a caller restricted to one sees and
//! acts only on the hosts it selects. Handlers that read or act on hosts AND it into their own
//! filters ([`Caller::restrict`]) or check one host ([`Caller::may_act_on`]).

use std::net::SocketAddr;

use serde::Serialize;
use serde_json::{json, Value};

use super::tokens::Role;
use crate::store::{Store, StoreError};

/// The authenticated caller of one HTTP request (an axum request extension).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Caller {
    /// The token's id (safe to log and show).
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// The inventory filter the token is restricted to; `None`: every host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<Value>,
    /// Where the request came from, when the server knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
}

impl Caller {
    /// `filter` ANDed with the caller's segment (unchanged for an unrestricted caller).
    pub fn restrict(&self, filter: Value) -> Value {
        match &self.segment {
            None => filter,
            Some(segment) if is_empty(&filter) => segment.clone(),
            Some(segment) => json!({"$and": [segment, filter]}),
        }
    }

    /// An aggregation pipeline that first keeps the caller's segment only.
    pub fn restrict_pipeline(&self, pipeline: Vec<Value>) -> Vec<Value> {
        match &self.segment {
            None => pipeline,
            Some(segment) => std::iter::once(json!({"$match": segment}))
                .chain(pipeline)
                .collect(),
        }
    }

    /// Whether host `mercury_id` is in the caller's segment (always, when unrestricted; never
    /// for a host without a document when restricted).
    pub async fn may_act_on(&self, store: &Store, mercury_id: &str) -> Result<bool, StoreError> {
        if self.segment.is_none() {
            return Ok(true);
        }
        let filter = self.restrict(json!({"mercury_id": mercury_id}));
        let count = qs_query::Count::from_request(&json!({"filter": filter})).map_err(|e| {
            StoreError::Refused {
                message: e.to_string(),
            }
        })?;
        Ok(store.count(&count).await? > 0)
    }

    /// Who, as the audit log writes it.
    pub fn describe(&self) -> String {
        match self.address {
            Some(address) => format!("{} from {address}", self.name),
            None => self.name.clone(),
        }
    }
}

fn is_empty(filter: &Value) -> bool {
    match filter {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caller(segment: Option<Value>) -> Caller {
        Caller {
            name: "t1".into(),
            role: Role::Operator,
            segment,
            address: None,
        }
    }

    #[test]
    fn segments_are_anded_into_filters_and_pipelines() {
        let open = caller(None);
        assert_eq!(open.restrict(json!({"a": 1})), json!({"a": 1}));
        assert_eq!(
            open.restrict_pipeline(vec![json!({"$count": "n"})]).len(),
            1
        );
        let rack = caller(Some(json!({"location.rack": "r1"})));
        assert_eq!(rack.restrict(json!({})), json!({"location.rack": "r1"}));
        assert_eq!(
            rack.restrict(json!({"a": 1})),
            json!({"$and": [{"location.rack": "r1"}, {"a": 1}]})
        );
        assert_eq!(
            rack.restrict_pipeline(vec![json!({"$count": "n"})]),
            vec![
                json!({"$match": {"location.rack": "r1"}}),
                json!({"$count": "n"})
            ]
        );
    }

    #[tokio::test]
    async fn a_restricted_caller_acts_only_on_hosts_its_segment_selects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let a = "013c16030373937262a32e831ff18c941b6481ded8";
        let b = "013c16030373937262a32e831ff18c941b6481ded9";
        store
            .put_inventory(a, json!({"mercury_id": a, "rack": "r1"}))
            .await
            .unwrap();
        store
            .put_inventory(b, json!({"mercury_id": b, "rack": "r2"}))
            .await
            .unwrap();
        let rack = caller(Some(json!({"rack": "r1"})));
        assert!(rack.may_act_on(&store, a).await.unwrap());
        assert!(!rack.may_act_on(&store, b).await.unwrap());
        assert!(!rack
            .may_act_on(&store, "01ffffffffffffffffffffffffffffffffffffffff")
            .await
            .unwrap());
        assert!(caller(None).may_act_on(&store, b).await.unwrap());
    }
}
