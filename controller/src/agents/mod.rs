//! Everything about agents, one owner per concern:
//! - [`transport`]: the agent port; owns each TCP stream and its ZMTP framing ([`zmtp`]);
//! - [`protocol`]: what each agent message does;
//! - [`ingest`]: the only writer of inventories, batching store commits;
//! - [`dispatcher`]: requests to agents and their replies;
//! - [`registry`]: agent sessions and liveness;
//! - [`enrollment`]: which agents are admitted (policies, approvals, boot tokens);
//! - [`counters`]: what arrived and what was refused.

pub mod counters;
pub mod dispatcher;
pub mod enrollment;
pub mod ingest;
pub mod protocol;
pub mod registry;
pub mod transport;
pub mod zmtp;
