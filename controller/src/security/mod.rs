//! Who may do what: operator bearer tokens with roles ([`tokens`]), the HTTP gate that checks
//! them on every API request and writes the audit log ([`gate`]).
//!
//! Agent authentication (the Noise session) lives in the transport; this module is about
//! people and scripts calling the HTTP API.

pub mod caller;
pub mod enrollment_routes;
pub mod gate;
pub mod tokens;
