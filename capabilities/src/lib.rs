//! The capabilities an agent offers, with their metadata, behind one registry.
//!
//! Principal types: [`Registry`] (name → capability, announced at registration and used to
//! serve calls), [`Capability`] (one operation with its [`CapabilityInfo`]), [`CallContext`]
//! (what a running call reports through — progress, output — and the signal that stops it),
//! [`CapabilityError`]. An unknown name is an explicit [`CapabilityError::Unknown`], never a
//! panic or a silent no-op.
//!
//! ```no_run
//! use qs_capabilities::{CallContext, Registry};
//! use qs_inspectors::SysRoot;
//! let registry = Registry::standard(SysRoot::live());
//! let inventory = registry.call("inspect", &serde_json::json!({}), &CallContext::new()).unwrap();
//! ```

mod inspect;
mod run;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qs_inspectors::SysRoot;
use qs_proto::{CapabilityInfo, OutputStream};
use serde_json::Value;

pub use inspect::Inspect;
pub use run::Run;

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
    /// The capability ran and its work failed (e.g. a command exited non-zero); `output` says
    /// how, as the call's structured output.
    #[error("{message}")]
    Unsuccessful {
        /// What failed, for the operator.
        message: String,
        /// What the call produced.
        output: Value,
    },
    /// The call ran out of its time and was stopped.
    #[error("timed out after {}s", after.as_secs())]
    TimedOut {
        /// The limit it reached.
        after: Duration,
        /// What the call produced until then.
        output: Value,
    },
    /// The call was stopped by its cancel signal.
    #[error("cancelled")]
    Cancelled {
        /// What the call produced until then (`null` when it never started).
        output: Value,
    },
}

/// Stops a running call: set once (by a `CancelCall`), seen by the capability at its next check.
#[derive(Debug, Clone, Default)]
pub struct CancelSignal(Arc<AtomicBool>);

impl CancelSignal {
    /// A signal not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises it; every clone sees it.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

type ProgressFn = dyn Fn(&str, Option<f32>) + Send + Sync;
type OutputFn = dyn Fn(OutputStream, &[u8]) + Send + Sync;

/// What a running call reports through, and the signal that stops it.
///
/// Reporting never blocks the capability: the receiver decides what to keep (the agent
/// coalesces output into bounded chunks). A capability that runs long checks
/// [`CallContext::is_cancelled`] and ends with [`CapabilityError::Cancelled`] when it is.
pub struct CallContext {
    progress: Box<ProgressFn>,
    output: Box<OutputFn>,
    cancel: CancelSignal,
}

impl Default for CallContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CallContext {
    /// A context that drops progress and output and is never cancelled (CLI, tests).
    pub fn new() -> Self {
        Self {
            progress: Box::new(|_, _| {}),
            output: Box::new(|_, _| {}),
            cancel: CancelSignal::new(),
        }
    }

    /// Sends progress to `f`: a message and an optional percentage.
    pub fn with_progress(mut self, f: impl Fn(&str, Option<f32>) + Send + Sync + 'static) -> Self {
        self.progress = Box::new(f);
        self
    }

    /// Sends output bytes to `f` as they are produced, per stream, in order.
    pub fn with_output(mut self, f: impl Fn(OutputStream, &[u8]) + Send + Sync + 'static) -> Self {
        self.output = Box::new(f);
        self
    }

    /// Stops the call when `signal` is raised.
    pub fn with_cancel(mut self, signal: CancelSignal) -> Self {
        self.cancel = signal;
        self
    }

    /// Reports progress.
    pub fn progress(&self, message: &str, percent: Option<f32>) {
        (self.progress)(message, percent);
    }

    /// Reports bytes written to a stream.
    pub fn output(&self, stream: OutputStream, data: &[u8]) {
        if !data.is_empty() {
            (self.output)(stream, data);
        }
    }

    /// Whether the call was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// One operation an agent can perform for the controller.
pub trait Capability: Send + Sync {
    /// Name, documentation, arguments and locking, as announced to the controller.
    fn info(&self) -> CapabilityInfo;
    /// Runs the capability; blocking, so callers run it off the async runtime.
    fn call(&self, args: &Value, ctx: &CallContext) -> Result<Value, CapabilityError>;
}

/// Every capability this agent offers, by name.
pub struct Registry {
    capabilities: BTreeMap<String, Box<dyn Capability>>,
}

impl Registry {
    /// The capabilities of a standard agent inspecting the machine under `root`.
    pub fn standard(root: SysRoot) -> Self {
        Self::empty()
            .with(Box::new(Inspect::new(root)))
            .with(Box::new(Run::new()))
    }

    /// No capabilities (simulated agents add their own).
    pub fn empty() -> Self {
        Self {
            capabilities: BTreeMap::new(),
        }
    }

    /// Adds `capability`, replacing one of the same name.
    pub fn with(mut self, capability: Box<dyn Capability>) -> Self {
        self.capabilities.insert(capability.info().name, capability);
        self
    }

    /// Descriptions of every capability, sorted by name.
    pub fn describe(&self) -> Vec<CapabilityInfo> {
        self.capabilities.values().map(|c| c.info()).collect()
    }

    /// Whether the named capability takes the exclusive lock; None if unknown.
    pub fn is_exclusive(&self, name: &str) -> Option<bool> {
        self.capabilities.get(name).map(|c| c.info().exclusive)
    }

    /// The named capability's description; None if unknown.
    pub fn info(&self, name: &str) -> Option<CapabilityInfo> {
        self.capabilities.get(name).map(|c| c.info())
    }

    /// Runs the named capability.
    pub fn call(
        &self,
        name: &str,
        args: &Value,
        ctx: &CallContext,
    ) -> Result<Value, CapabilityError> {
        let capability = self
            .capabilities
            .get(name)
            .ok_or_else(|| CapabilityError::Unknown {
                name: name.chars().take(128).collect(),
            })?;
        capability.call(args, ctx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unknown_capability_is_an_explicit_error() {
        let registry = Registry::standard(SysRoot::new("/nonexistent-root"));
        let err = registry
            .call("frobnicate", &serde_json::json!({}), &CallContext::new())
            .err();
        assert!(matches!(err, Some(CapabilityError::Unknown { name }) if name == "frobnicate"));
        assert_eq!(registry.is_exclusive("frobnicate"), None);
    }

    #[test]
    fn describes_inspect() {
        let registry = Registry::standard(SysRoot::new("/nonexistent-root"));
        let names: Vec<String> = registry.describe().into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["inspect".to_string(), "run".to_string()]);
        let run = registry.info("run").unwrap();
        assert!(run.destructive && !run.exclusive);
        assert_eq!(run.default_timeout, 3600);
        let inspect = registry.info("inspect").unwrap();
        assert!(!inspect.destructive);
        assert_eq!(inspect.default_timeout, 300);
    }

    #[test]
    fn context_reports_and_cancels() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let signal = CancelSignal::new();
        let ctx = {
            let (p, o) = (seen.clone(), seen.clone());
            CallContext::new()
                .with_progress(move |m, _| p.lock().unwrap().push(format!("progress {m}")))
                .with_output(move |s, d| {
                    o.lock()
                        .unwrap()
                        .push(format!("{s:?} {}", String::from_utf8_lossy(d)))
                })
                .with_cancel(signal.clone())
        };
        ctx.progress("half", Some(50.0));
        ctx.output(OutputStream::Stdout, b"hi");
        ctx.output(OutputStream::Stderr, b"");
        assert!(!ctx.is_cancelled());
        signal.clone().cancel();
        assert!(ctx.is_cancelled());
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["progress half".to_string(), "Stdout hi".to_string()]
        );
    }
}
