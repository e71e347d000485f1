//! The Quicksilver controller and operator CLI.
//!
//! Layout, one concept per module:
//! - [`serve`]: `qs serve` — validated configuration and the process that runs everything;
//! - [`agents`]: the agent-facing ZeroMQ endpoint ([`agents::frame_guard`] in front of the
//!   ROUTER socket, [`agents::link`] speaking the protocol), and the registry of agent state;
//! - [`store`]: where inventory documents live (embedded by default);
//! - [`http`]: the operator HTTP API (`/api/v1`);
//! - [`jobs`]: capabilities fanned out to query-selected hosts, tracked task by task;
//! - [`cli`]: the operator commands that talk to that API.
//!
//! The controller never links inspector or capability code: it knows agents only through the
//! protocol in `qs-proto`.

pub mod agents;
pub mod assets;
pub mod cli;
pub mod http;
pub mod jobs;
pub mod security;
pub mod serve;
/// The store lives in its own crate (`controller/store`); `crate::store::...` paths keep working.
pub use qs_store as store;
pub mod telemetry;
