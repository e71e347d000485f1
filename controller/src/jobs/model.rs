//! What a job and its tasks look like in the store (`jobs` and `tasks` collections) and on
//! the API: one [`JobRecord`] per job, one [`TaskRecord`] per selected host, each task's
//! state machine ([`TaskState`]) with every transition timestamped.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a task is in its life. The order is the order of a normal life; the last five are
/// final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created; waiting to be sent (for its host, or for an exclusive capability to finish).
    Queued,
    /// Sent to the agent.
    Dispatched,
    /// The agent accepted it.
    Received,
    /// The capability runs on the agent.
    Running,
    /// It ended well.
    Succeeded,
    /// It ended badly (non-zero exit, an error, a refusal).
    Failed,
    /// It ran past its deadline and was stopped.
    TimedOut,
    /// An operator cancelled it.
    Cancelled,
    /// Its agent went away and nothing says what became of it.
    Lost,
}

impl TaskState {
    /// Every state, in life order.
    pub const ALL: [TaskState; 9] = [
        TaskState::Queued,
        TaskState::Dispatched,
        TaskState::Received,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::Lost,
    ];

    /// Whether nothing can change the task any more.
    pub fn is_final(self) -> bool {
        self >= TaskState::Succeeded
    }

    /// The wire name (`timed_out`).
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Dispatched => "dispatched",
            TaskState::Received => "received",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::Lost => "lost",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.name() == text)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One change of a task's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: TaskState,
    /// When (RFC 3339, controller clock).
    pub at: String,
    /// Why, for the operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A job's state, derived from its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Some task has not finished.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task finished and at least one did not succeed.
    Failed,
    /// An operator cancelled it; every task finished.
    Cancelled,
}

impl JobState {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A host the query selected but that got no task, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its MercuryId.
    pub host: String,
    /// Why (offline, served by another controller).
    pub reason: String,
}

/// What a job does on each host: one capability, or a plan of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Call one capability.
    Capability(String),
    /// Run a plan (`SET/NAME`).
    Plan(String),
}

impl Work {
    /// `capability NAME` / `plan SET/NAME`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Work::Capability(name) => format!("capability {name}"),
            Work::Plan(name) => format!("plan {name}"),
        }
    }
}

/// One job as stored (`jobs` collection, key = `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `job-EPOCH-N`.
    pub id: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Who created it (the token's name, when the API knows it).
    #[serde(default)]
    pub created_by: String,
    /// The filter that selected the hosts.
    pub query: Value,
    /// What each task does.
    pub work: Work,
    /// The arguments as given (templates unrendered).
    #[serde(default)]
    pub args: Value,
    /// Per-task deadline, seconds.
    pub timeout_s: u64,
    /// Whether the capability (or a step of the plan) changes the host destructively.
    #[serde(default)]
    pub destructive: bool,
    /// Running until every task is final.
    pub state: JobState,
    /// Tasks created (one per online selected host).
    pub tasks: u64,
    /// Selected hosts without a task.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Whether an operator asked to cancel it.
    #[serde(default)]
    pub cancel_requested: bool,
    /// When the last task finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Tasks per final state once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

/// One step of a plan task, as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name in the plan.
    pub name: String,
    /// Its capability.
    pub capability: String,
    /// Whether it is a recovery step (`on_failure`) of the step named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovers: Option<String>,
    /// `queued` until it runs; `skipped` when its `when` was false.
    pub state: String,
    /// Why it is in that state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The call's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<u64>,
    /// When it started and ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The capability's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl StepRecord {
    /// The key of this step's log record in the `task_logs` collection.
    pub fn log_key(&self, task: &str) -> String {
        match &self.recovers {
            Some(of) => format!("{task}/{of}.{}", self.name),
            None => format!("{task}/{}", self.name),
        }
    }
}

/// One task as stored (`tasks` collection, key = `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `JOB.N`.
    pub id: String,
    /// Its job.
    pub job: String,
    /// The host's MercuryId.
    pub host: String,
    /// What it does.
    pub work: Work,
    /// The arguments rendered for this host (for a plan: the job's arguments), secret values
    /// redacted.
    #[serde(default)]
    pub args: Value,
    /// Whether `args` had secret values (kept in memory only, never stored): such a task
    /// cannot be sent after a controller restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret_args: bool,
    /// Its deadline after dispatch, seconds.
    pub timeout_s: u64,
    /// Whether it changes the host destructively (never dispatched twice).
    #[serde(default)]
    pub destructive: bool,
    /// Whether it takes the host's exclusive lock.
    #[serde(default)]
    pub exclusive: bool,
    /// The message id its (current) call carries, fixed at creation so an agent that ran it
    /// can say so after a controller restart.
    pub call_id: u64,
    /// Where it is.
    pub state: TaskState,
    /// Why it is there.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_reason: String,
    /// Every state it entered, in order.
    pub transitions: Vec<Transition>,
    /// The capability's output (for a failed `run`, its exit code and streams too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// The last progress message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    /// A plan task's steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// Results that arrived after the task had finished (recorded, never applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_results: Vec<Value>,
}

impl TaskRecord {
    /// Moves to `state` with a reason, stamping the transition; a final task never moves.
    pub fn enter(&mut self, state: TaskState, reason: impl Into<String>, at: &str) -> bool {
        if self.state.is_final() || (self.state == state && state != TaskState::Queued) {
            return false;
        }
        let reason = reason.into();
        self.state = state;
        self.state_reason.clone_from(&reason);
        self.transitions.push(Transition {
            state,
            at: at.to_owned(),
            reason,
        });
        true
    }

    /// When it entered `state` first, if it did.
    pub fn entered(&self, state: TaskState) -> Option<&str> {
        self.transitions
            .iter()
            .find(|t| t.state == state)
            .map(|t| t.at.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn task() -> TaskRecord {
        TaskRecord {
            id: "job-1-1.0".into(),
            job: "job-1-1".into(),
            host: "h".into(),
            work: Work::Capability("run".into()),
            args: Value::Null,
            secret_args: false,
            timeout_s: 10,
            destructive: false,
            exclusive: false,
            call_id: 1,
            state: TaskState::Queued,
            state_reason: String::new(),
            transitions: vec![],
            output: None,
            error: None,
            progress: None,
            steps: vec![],
            late_results: vec![],
        }
    }

    #[test]
    fn a_final_task_never_moves_again() {
        let mut t = task();
        assert!(t.enter(TaskState::Dispatched, "", "t1"));
        assert!(t.enter(TaskState::Succeeded, "exit 0", "t2"));
        assert!(!t.enter(TaskState::Lost, "agent gone", "t3"));
        assert!(!t.enter(TaskState::Failed, "late", "t4"));
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.transitions.len(), 2);
        assert_eq!(t.entered(TaskState::Succeeded), Some("t2"));
    }

    #[test]
    fn state_names_round_trip_and_order_marks_final_states() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.name()), Some(s));
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, s.name());
        }
        assert!(!TaskState::Running.is_final());
        assert!(TaskState::Lost.is_final());
    }
}
