//! Everything about agents: the guarded ZeroMQ endpoint, the protocol, and agent state.

pub mod counters;
pub mod frame_guard;
pub mod link;
pub mod registry;
