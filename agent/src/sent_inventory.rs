//! The inventory the controller holds for this agent, and how to bring it up to date.
//!
//! Each inventory sent gets the next version number. After a re-inspection the agent sends
//! only the difference against the version the controller has (an RFC 6902 patch from
//! [`qs_proto::delta`], whose lists are aligned so a lost disk is one `remove`) when that
//! encodes smaller than the whole document, and nothing at all when nothing changed.

use qs_proto::{Body, InventoryDelta, InventoryUpdate};
use serde_json::Value;

/// The last inventory sent, its version and when it was collected.
#[derive(Debug, Clone)]
pub struct SentInventory {
    doc: Value,
    version: u64,
    collected_at: String,
}

impl SentInventory {
    /// The inventory sent at registration, version 1, collected now.
    pub fn new(doc: Value) -> Self {
        Self {
            doc,
            version: 1,
            collected_at: crate::calls::now_rfc3339(),
        }
    }

    /// The document and version the controller has (what `register` sends).
    pub fn current(&self) -> (&Value, u64) {
        (&self.doc, self.version)
    }

    /// When the current document was collected (RFC 3339, this machine's clock).
    pub fn collected_at(&self) -> &str {
        &self.collected_at
    }

    /// The message that brings the controller from the sent inventory to `doc` (collected
    /// just now), if it changed.
    pub fn update_to(&mut self, doc: Value) -> Option<Body> {
        let patch = qs_proto::delta::diff(&self.doc, &doc);
        if patch.0.is_empty() {
            return None;
        }
        let base = self.version;
        self.version += 1;
        self.collected_at = crate::calls::now_rfc3339();
        let delta = InventoryDelta {
            base,
            version: self.version,
            patch,
            collected_at: Some(self.collected_at.clone()),
        };
        let delta_size = rmp_size(&delta);
        let full_size = rmp_size(&doc);
        self.doc = doc;
        if delta_size < full_size {
            Some(Body::InventoryDelta(delta))
        } else {
            Some(self.full())
        }
    }

    /// The whole current inventory under a new version (when the controller lost track).
    pub fn resend(&mut self) -> Body {
        self.version += 1;
        self.full()
    }

    fn full(&self) -> Body {
        Body::InventoryUpdate(InventoryUpdate {
            inventory: self.doc.clone(),
            version: self.version,
            collected_at: Some(self.collected_at.clone()),
        })
    }
}

fn rmp_size<T: serde::Serialize>(value: &T) -> usize {
    rmp_serde::to_vec_named(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn disks(n: usize) -> Value {
        let disks: Vec<Value> = (0..n).map(|i| json!({"name": format!("sd{i}"), "size": 1u64 << 40, "serial": format!("S{i:08}")})).collect();
        json!({"mercury_id": "x", "os_storage": disks, "cpu": {"flags": vec!["sse"; 50]}})
    }

    #[test]
    fn a_lost_disk_travels_as_a_small_delta_that_reproduces_the_document() {
        let mut sent = SentInventory::new(disks(8));
        let Some(Body::InventoryDelta(delta)) = sent.update_to(disks(7)) else {
            panic!("expected a delta");
        };
        assert_eq!((delta.base, delta.version), (1, 2));
        let collected = delta.collected_at.as_deref().unwrap();
        assert_eq!(collected, sent.collected_at());
        assert!(humantime::parse_rfc3339(collected).is_ok(), "{collected}");
        let mut doc = disks(8);
        json_patch::patch(&mut doc, &delta.patch).unwrap();
        assert_eq!(doc, disks(7));
        assert_eq!(sent.current(), (&disks(7), 2));
    }

    #[test]
    fn no_change_sends_nothing_and_a_rewrite_sends_everything() {
        let mut sent = SentInventory::new(disks(2));
        assert!(sent.update_to(disks(2)).is_none());
        let Some(Body::InventoryUpdate(update)) = sent.update_to(json!({"a": 1})) else {
            panic!("a total rewrite is smaller whole");
        };
        assert_eq!(update.version, 2);
        let Body::InventoryUpdate(again) = sent.resend() else {
            panic!()
        };
        assert_eq!((again.version, again.inventory), (3, json!({"a": 1})));
        assert_eq!(again.collected_at.as_deref(), Some(sent.collected_at()));
    }
}
