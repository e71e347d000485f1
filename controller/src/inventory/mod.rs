//! Inventory documents: one per server, keyed by MercuryId, queried with MongoDB filters.

pub mod query;
