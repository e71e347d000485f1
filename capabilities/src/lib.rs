//! The capabilities an agent offers, with their metadata, behind one registry.
//!
//! Principal types: [`Registry`] (name → capability, announced at registration and used to
//! serve calls), [`Capability`] (one operation with its [`CapabilityInfo`]), [`CapabilityError`].
//! An unknown name is an explicit [`CapabilityError::Unknown`], never a panic or a silent no-op.
//!
//! ```no_run
//! use qs_capabilities::Registry;
//! use qs_inspectors::SysRoot;
//! let registry = Registry::standard(SysRoot::live());
//! let inventory = registry.call("inspect", &serde_json::json!({}), &mut |_, _| {}).unwrap();
//! ```

mod inspect;

use std::collections::BTreeMap;

use qs_inspectors::SysRoot;
use qs_proto::CapabilityInfo;
use serde_json::Value;

pub use inspect::Inspect;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// No capability has this name.
    #[error("unknown capability {name:?}")]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// The arguments do not fit the capability.
    #[error("bad arguments for {capability}: {reason}")]
    BadArguments {
        /// The capability called.
        capability: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The capability ran and failed.
    #[error("{capability} failed")]
    Failed {
        /// The capability called.
        capability: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Receives progress of a running call: a message and an optional percentage.
pub type Progress<'a> = dyn FnMut(&str, Option<f32>) + Send + 'a;

/// One operation an agent can perform for the controller.
pub trait Capability: Send + Sync {
    /// Name, documentation, arguments and locking, as announced to the controller.
    fn info(&self) -> CapabilityInfo;
    /// Runs the capability; blocking, so callers run it off the async runtime.
    fn call(&self, args: &Value, progress: &mut Progress<'_>) -> Result<Value, CapabilityError>;
}

/// Every capability this agent offers, by name.
pub struct Registry {
    capabilities: BTreeMap<String, Box<dyn Capability>>,
}

impl Registry {
    /// The capabilities of a standard agent inspecting the machine under `root`.
    pub fn standard(root: SysRoot) -> Self {
        let mut registry = Self {
            capabilities: BTreeMap::new(),
        };
        registry.add(Box::new(Inspect::new(root)));
        registry
    }

    fn add(&mut self, capability: Box<dyn Capability>) {
        self.capabilities.insert(capability.info().name, capability);
    }

    /// Descriptions of every capability, sorted by name.
    pub fn describe(&self) -> Vec<CapabilityInfo> {
        self.capabilities.values().map(|c| c.info()).collect()
    }

    /// Whether the named capability takes the exclusive lock; None if unknown.
    pub fn is_exclusive(&self, name: &str) -> Option<bool> {
        self.capabilities.get(name).map(|c| c.info().exclusive)
    }

    /// Runs the named capability.
    pub fn call(
        &self,
        name: &str,
        args: &Value,
        progress: &mut Progress<'_>,
    ) -> Result<Value, CapabilityError> {
        let capability = self
            .capabilities
            .get(name)
            .ok_or_else(|| CapabilityError::Unknown {
                name: name.chars().take(128).collect(),
            })?;
        capability.call(args, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_capability_is_an_explicit_error() {
        let registry = Registry::standard(SysRoot::new("/nonexistent-root"));
        let err = registry
            .call("frobnicate", &serde_json::json!({}), &mut |_, _| {})
            .err();
        assert!(matches!(err, Some(CapabilityError::Unknown { name }) if name == "frobnicate"));
        assert_eq!(registry.is_exclusive("frobnicate"), None);
    }

    #[test]
    fn describes_inspect() {
        let registry = Registry::standard(SysRoot::new("/nonexistent-root"));
        let names: Vec<String> = registry.describe().into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["inspect".to_string()]);
    }
}
