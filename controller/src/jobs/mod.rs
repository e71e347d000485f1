//! Jobs: a capability (or a plan of steps) fanned out to the hosts a query selects, one task
//! per online host, every task tracked from `queued` to a final state and kept in the store.
//!
//! One owner per concern:
//! - [`model`]: the stored shapes (job, task, transitions, steps);
//! - [`creation`]: request → checked, rendered tasks (or a dry run);
//! - [`engine`]: unfinished tasks in memory, messages from agents, reconciliation;
//! - [`runner`]: one task's control flow; [`plan_run`]: a plan task's steps;
//! - [`writer`]: batched, coalesced record writes;
//! - [`logs`]: the first and last MiB of each output stream;
//! - [`retention`]: expiry of old jobs.

pub mod creation;
pub mod engine;
pub mod logs;
pub mod model;
mod plan_run;
pub mod retention;
mod runner;
pub mod writer;

pub use creation::{Created, JobError, JobRequest, Requester};
pub use engine::{Jobs, JobsConfig, TaskEvent};
pub use model::{JobRecord, JobState, TaskRecord, TaskState, Work};
