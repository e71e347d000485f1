//! How an agent describes the capabilities it offers.

use serde::{Deserialize, Serialize};

/// One capability an agent offers, as announced at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityInfo {
    /// The name calls use, e.g. `inspect`.
    pub name: String,
    /// One line saying what it does.
    pub doc: String,
    /// The arguments it accepts.
    #[serde(default)]
    pub args: Vec<ArgInfo>,
    /// Whether it takes the agent's exclusive lock (no other exclusive call runs meanwhile).
    #[serde(default)]
    pub exclusive: bool,
}

/// One argument of a capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgInfo {
    /// Argument name, a key of the call's `args` map.
    pub name: String,
    /// Expected JSON type: `string`, `integer`, `boolean`, `array`, `object`.
    pub kind: String,
    /// Whether the call fails without it.
    #[serde(default)]
    pub required: bool,
    /// One line saying what it means.
    #[serde(default)]
    pub doc: String,
}
