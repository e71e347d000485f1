//! The job engine: owns every unfinished task in memory, sends its calls, follows what the
//! agent says of them, and writes every change through the [`RecordWriter`].
//!
//! Each unfinished task has one runner (a tokio task, [`super::runner`]) that drives its
//! control flow: wait for the host, take the host's exclusive lock if the capability needs it,
//! record the dispatch, send, wait for the outcome or the deadline. Messages about a call reach
//! the engine through the dispatcher ([`CallObserver`]): stages, progress and output update the
//! task here; results, refusals, disconnections and registrations are signalled to the
//! runner.
//!
//! Every call id is fixed before the call is sent and stored with the task, so an agent that
//! ran a call while the controller was away can say so when it registers again (its report
//! lists the calls it runs and the ones it finished), and an agent never runs one id twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qs_proto::{CallRecord, CallResult, ErrorBody, MercuryId, MessageId, OutputStream};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::logs::TaskLog;
use super::model::{JobRecord, JobState, TaskRecord, TaskState};
use super::writer::RecordWriter;
use crate::agents::dispatcher::{CallMessage, CallObserver, Dispatcher};
use crate::agents::registry::Registry;
use crate::agents::transport::ConnectionId;
use crate::store::{Collection, Store};

/// Calls finished by this process remembered so a repeated result is recognised.
const FINISHED_KEPT: usize = 200_000;
/// Task events buffered for slow watchers before they are told they lagged.
const EVENTS_BUFFERED: usize = 65_536;

/// How the engine is set up (`qs serve` flags).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Deadline of a task whose capability names none and whose job gave none.
    pub default_timeout: Duration,
    /// How long finished jobs and their tasks are kept (`--job-retention`).
    pub retention: Duration,
    /// Extra time after a deadline for the agent's own timeout report to arrive.
    pub grace: Duration,
    /// How long tasks left in flight by an earlier process wait for their agent to come back.
    pub reconnect_wait: Duration,
    /// Where plan sets live (`--config-dir`).
    pub config_dir: std::path::PathBuf,
}

/// What a runner is told.
#[derive(Debug)]
pub(super) enum Signal {
    /// The result of the task's current call.
    Finished(CallResult),
    /// The agent refused the current call.
    Refused(ErrorBody),
    /// The connection carrying the current call ended.
    Disconnected,
    /// The host registered (again); what it says of the current call.
    Registered {
        /// It is still running it.
        running: bool,
        /// It finished it while we were not listening.
        finished: Option<CallResult>,
    },
    /// An operator cancelled the task.
    Cancel,
}

/// One task transition, as `/jobs/{id}/events` streams it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskEvent {
    /// The job.
    pub job: String,
    /// The task.
    pub task: String,
    /// Its host.
    pub host: String,
    /// The state entered.
    pub state: TaskState,
    /// Why.
    pub reason: String,
    /// When.
    pub at: String,
}

pub(super) struct ActiveTask {
    pub record: TaskRecord,
    pub signal: mpsc::UnboundedSender<Signal>,
    /// Output of the current call (a plan step's, or the task's).
    pub log: TaskLog,
    /// Key of the log record the current call writes (`TASK` or `TASK/STEP`).
    pub log_key: String,
    /// The connection the current call was sent over.
    pub connection: Option<ConnectionId>,
    /// Every call id the task used (a plan task has one per step).
    pub calls: Vec<u64>,
    /// The arguments with their secret values, when the record holds them redacted.
    pub secret_args: Option<Value>,
}

pub(super) struct ActiveJob {
    pub record: JobRecord,
    pub counts: HashMap<TaskState, u64>,
    /// Every task ended; the job is being written as finished.
    pub settling: bool,
}

#[derive(Default)]
pub(super) struct Active {
    pub tasks: HashMap<String, ActiveTask>,
    pub by_call: HashMap<u64, String>,
    /// Unfinished tasks per host, so a registration or disconnection touches only its own.
    pub by_host: HashMap<String, std::collections::HashSet<String>>,
    pub jobs: HashMap<String, ActiveJob>,
    finished_calls: HashMap<u64, String>,
    finished_order: VecDeque<u64>,
}

/// The job engine.
pub struct Jobs {
    pub(super) store: Store,
    pub(super) registry: Arc<Registry>,
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) writer: RecordWriter,
    pub(super) config: JobsConfig,
    pub(super) active: Mutex<Active>,
    job_seq: AtomicU32,
    events: broadcast::Sender<TaskEvent>,
    host_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// This engine, for the tasks it spawns.
    me: std::sync::OnceLock<std::sync::Weak<Jobs>>,
}

/// RFC 3339 now, controller clock.
pub(super) fn now() -> String {
    crate::store::document::now()
}

impl Jobs {
    /// The engine over `store`, sending through `dispatcher`; installs itself as the
    /// dispatcher's call observer.
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        dispatcher: Arc<Dispatcher>,
        writer: RecordWriter,
        config: JobsConfig,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENTS_BUFFERED);
        let jobs = Arc::new(Self {
            store,
            registry,
            dispatcher: dispatcher.clone(),
            writer,
            config,
            active: Mutex::new(Active::default()),
            job_seq: AtomicU32::new(0),
            events,
            host_locks: Mutex::new(HashMap::new()),
            me: std::sync::OnceLock::new(),
        });
        let _ = jobs.me.set(Arc::downgrade(&jobs));
        dispatcher.set_observer(jobs.clone());
        jobs
    }

    pub(super) fn active(&self) -> std::sync::MutexGuard<'_, Active> {
        // Every change under the lock leaves the maps consistent; a poisoned lock still is.
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A job id no earlier controller start on this store made: `job-EPOCH-N`.
    pub(super) fn next_job_id(&self) -> String {
        let n = self.job_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("job-{}-{n}", self.dispatcher.epoch())
    }

    /// Subscribes to task transitions.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// The lock that keeps exclusive capabilities apart on one host.
    pub(super) fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.host_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(host.to_owned())
            .or_default()
            .clone()
    }

    /// Adds a job and its tasks to memory and starts their runners. The records must already
    /// be durable.
    pub(super) fn start(
        self: &Arc<Self>,
        job: JobRecord,
        tasks: Vec<TaskRecord>,
        mut secrets: HashMap<String, Value>,
    ) {
        let mut runners = Vec::with_capacity(tasks.len());
        {
            let mut active = self.active();
            let mut counts: HashMap<TaskState, u64> = HashMap::new();
            for task in tasks {
                *counts.entry(task.state).or_default() += 1;
                let (tx, rx) = mpsc::unbounded_channel();
                active.by_call.insert(task.call_id, task.id.clone());
                active
                    .by_host
                    .entry(task.host.clone())
                    .or_default()
                    .insert(task.id.clone());
                runners.push((task.id.clone(), rx));
                let log_key = task.id.clone();
                let calls = vec![task.call_id];
                let secret_args = secrets.remove(&task.id);
                active.tasks.insert(
                    task.id.clone(),
                    ActiveTask {
                        record: task,
                        signal: tx,
                        log: TaskLog::new(),
                        log_key,
                        connection: None,
                        calls,
                        secret_args,
                    },
                );
            }
            active.jobs.insert(
                job.id.clone(),
                ActiveJob {
                    record: job,
                    counts,
                    settling: false,
                },
            );
        }
        for (task, rx) in runners {
            tokio::spawn(super::runner::run(self.clone(), task, rx));
        }
    }

    /// Applies `change` to an active task's record, writes it, and announces a state change.
    /// Returns what `change` returned, or None when the task is not active.
    pub(super) fn update<R>(
        &self,
        task_id: &str,
        change: impl FnOnce(&mut ActiveTask) -> R,
    ) -> Option<R> {
        let mut active = self.active();
        let task = active.tasks.get_mut(task_id)?;
        let before = task.record.state;
        let transitions = task.record.transitions.len();
        let out = change(task);
        let record = task.record.clone();
        if record.transitions.len() != transitions {
            let job_finished = self.count_transition(&mut active, &record, before);
            drop(active);
            self.announce(&record);
            self.writer.put(
                Collection::Tasks,
                &record.id,
                serde_json::to_value(&record).ok(),
            );
            if let Some(job) = job_finished {
                self.settle(job);
            }
        } else {
            drop(active);
            self.writer.put(
                Collection::Tasks,
                &record.id,
                serde_json::to_value(&record).ok(),
            );
        }
        Some(out)
    }

    /// Moves the per-job counts; when the task's job has no unfinished task left (the first
    /// time), returns the job's id so it can be settled.
    fn count_transition(
        &self,
        active: &mut Active,
        record: &TaskRecord,
        before: TaskState,
    ) -> Option<String> {
        let job = active.jobs.get_mut(&record.job)?;
        if before != record.state {
            if let Some(n) = job.counts.get_mut(&before) {
                *n = n.saturating_sub(1);
            }
            *job.counts.entry(record.state).or_default() += 1;
        }
        let unfinished: u64 = job
            .counts
            .iter()
            .filter(|(s, _)| !s.is_final())
            .map(|(_, n)| n)
            .sum();
        if unfinished > 0 || job.settling {
            return None;
        }
        job.settling = true;
        Some(record.job.clone())
    }

    /// Finishes a job whose tasks all ended, once their records are durable: a job is shown
    /// finished only when every result it counts is stored (a slow store lags memory).
    fn settle(&self, job_id: String) {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        tokio::spawn(async move {
            if let Err(error) = me.writer.durable().await {
                warn!(job = %job_id, error = %error, "task records of a finished job not confirmed stored");
            }
            let finished = {
                let mut active = me.active();
                let Some(job) = active.jobs.get_mut(&job_id) else {
                    return;
                };
                job.record.state = final_state(&job.record, &job.counts);
                job.record.finished_at = Some(now());
                job.record.outcome = Some(counts_value(&job.counts));
                job.record.clone()
            };
            me.writer.put(
                Collection::Jobs,
                &finished.id,
                serde_json::to_value(&finished).ok(),
            );
            if let Err(error) = me.writer.durable().await {
                warn!(job = %job_id, error = %error, "finished job record not confirmed stored");
            }
            me.active().jobs.remove(&job_id);
            info!(job = %finished.id, state = finished.state.name(), "job finished");
        });
    }

    fn announce(&self, record: &TaskRecord) {
        if let Some(t) = record.transitions.last() {
            // No subscriber is fine: events are for watchers, the store is the record.
            let _ = self.events.send(TaskEvent {
                job: record.job.clone(),
                task: record.id.clone(),
                host: record.host.clone(),
                state: t.state,
                reason: t.reason.clone(),
                at: t.at.clone(),
            });
        }
    }

    /// A runner ends: its task leaves memory, its call id is remembered as finished, and its
    /// log is written one last time.
    pub(super) fn retire(&self, task_id: &str) {
        let mut active = self.active();
        let Some(task) = active.tasks.remove(task_id) else {
            return;
        };
        for call in &task.calls {
            active.by_call.remove(call);
        }
        if let Some(tasks) = active.by_host.get_mut(&task.record.host) {
            tasks.remove(task_id);
            if tasks.is_empty() {
                active.by_host.remove(&task.record.host);
            }
        }
        active
            .finished_calls
            .insert(task.record.call_id, task_id.to_owned());
        active.finished_order.push_back(task.record.call_id);
        while active.finished_order.len() > FINISHED_KEPT {
            if let Some(old) = active.finished_order.pop_front() {
                active.finished_calls.remove(&old);
            }
        }
    }

    /// Writes the current call's log record.
    pub(super) fn flush_log(&self, task_id: &str, finished: bool) {
        let out = {
            let active = self.active();
            active
                .tasks
                .get(task_id)
                .map(|t| (t.log_key.clone(), t.log.to_value(finished)))
        };
        if let Some((key, value)) = out {
            self.writer.put(Collection::TaskLogs, &key, Some(value));
        }
    }

    /// Counts per state of an unfinished job, from memory.
    pub fn live_counts(&self, job: &str) -> Option<(JobRecord, Value)> {
        let active = self.active();
        active
            .jobs
            .get(job)
            .map(|j| (j.record.clone(), counts_value(&j.counts)))
    }

    /// Unfinished tasks of a job, from memory.
    pub fn live_tasks(&self, job: &str) -> Vec<TaskRecord> {
        let active = self.active();
        let mut tasks: Vec<TaskRecord> = active
            .tasks
            .values()
            .filter(|t| t.record.job == job)
            .map(|t| t.record.clone())
            .collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        tasks
    }

    /// An unfinished task, from memory, with its live log.
    pub fn live_task(&self, task: &str) -> Option<(TaskRecord, Value)> {
        let active = self.active();
        active
            .tasks
            .get(task)
            .map(|t| (t.record.clone(), t.log.to_value(false)))
    }

    /// The live log of an unfinished task's current call (`TASK` or `TASK/STEP`).
    pub fn live_log(&self, key: &str) -> Option<Value> {
        let task = key.split('/').next().unwrap_or(key);
        let active = self.active();
        active
            .tasks
            .get(task)
            .filter(|t| t.log_key == key)
            .map(|t| t.log.to_value(false))
    }

    /// Cancels every unfinished task of a job; false if the job is not running.
    pub fn cancel(&self, job: &str) -> bool {
        let signals: Vec<mpsc::UnboundedSender<Signal>> = {
            let mut active = self.active();
            let Some(j) = active.jobs.get_mut(job) else {
                return false;
            };
            j.record.cancel_requested = true;
            let record = j.record.clone();
            self.writer
                .put(Collection::Jobs, job, serde_json::to_value(&record).ok());
            active
                .tasks
                .values()
                .filter(|t| t.record.job == job)
                .map(|t| t.signal.clone())
                .collect()
        };
        info!(job, tasks = signals.len(), "job cancelled by an operator");
        for s in signals {
            let _ = s.send(Signal::Cancel);
        }
        true
    }

    fn task_of_call(&self, call: u64, from: &MercuryId) -> Option<(String, bool)> {
        let active = self.active();
        if let Some(task) = active.by_call.get(&call) {
            let t = active.tasks.get(task)?;
            return (t.record.host == from.as_str()).then(|| (task.clone(), false));
        }
        active
            .finished_calls
            .get(&call)
            .map(|task| (task.clone(), true))
    }

    fn signal(&self, task_id: &str, signal: Signal) {
        let active = self.active();
        if let Some(t) = active.tasks.get(task_id) {
            let _ = t.signal.send(signal);
        }
    }

    /// Starts runners for the tasks an earlier controller process left unfinished (after a
    /// restart or `kill -9`): queued ones are sent when their host is here; dispatched ones
    /// wait for their agent to say what became of them.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, crate::store::StoreError> {
        let filter =
            serde_json::json!({"state": {"$in": ["queued", "dispatched", "received", "running"]}});
        let query =
            qs_query::Query::from_request(&serde_json::json!({"filter": filter})).map_err(|e| {
                crate::store::StoreError::Refused {
                    message: e.to_string(),
                }
            })?;
        let tasks = self.store.find_records(Collection::Tasks, &query).await?;
        let mut by_job: HashMap<String, Vec<TaskRecord>> = HashMap::new();
        for value in tasks {
            match serde_json::from_value::<TaskRecord>(value) {
                Ok(task) => by_job.entry(task.job.clone()).or_default().push(task),
                Err(error) => warn!(error = %error, "unreadable task record skipped"),
            }
        }
        let mut recovered = 0;
        for (job_id, tasks) in by_job {
            let Some(job) = self.store.get_record(Collection::Jobs, &job_id).await? else {
                warn!(job = %job_id, "tasks of a job with no record: skipped");
                continue;
            };
            let Ok(job) = serde_json::from_value::<JobRecord>(job) else {
                warn!(job = %job_id, "unreadable job record: its tasks are skipped");
                continue;
            };
            // Counts start from every task of the job, finished ones included.
            let all = self.job_tasks_from_store(&job_id).await?;
            recovered += tasks.len();
            let mut counts: HashMap<TaskState, u64> = HashMap::new();
            for t in &all {
                if t.state.is_final() {
                    *counts.entry(t.state).or_default() += 1;
                }
            }
            self.start(job, tasks, HashMap::new());
            let mut active = self.active();
            if let Some(j) = active.jobs.get_mut(&job_id) {
                for (state, n) in counts {
                    *j.counts.entry(state).or_default() += n;
                }
            }
        }
        self.finish_settled_jobs().await?;
        if recovered > 0 {
            info!(
                tasks = recovered,
                "tasks left unfinished by an earlier run are followed again"
            );
        }
        Ok(recovered)
    }

    /// Jobs stored as running whose tasks all finished (the process stopped between the last
    /// task's record and the job's) get their final state.
    async fn finish_settled_jobs(&self) -> Result<(), crate::store::StoreError> {
        let query =
            qs_query::Query::from_request(&serde_json::json!({"filter": {"state": "running"}}))
                .map_err(|e| crate::store::StoreError::Refused {
                    message: e.to_string(),
                })?;
        for value in self.store.find_records(Collection::Jobs, &query).await? {
            let Ok(mut job) = serde_json::from_value::<JobRecord>(value) else {
                continue;
            };
            if self.active().jobs.contains_key(&job.id) {
                continue;
            }
            let tasks = self.job_tasks_from_store(&job.id).await?;
            let mut counts: HashMap<TaskState, u64> = HashMap::new();
            for t in &tasks {
                *counts.entry(t.state).or_default() += 1;
            }
            if tasks.iter().any(|t| !t.state.is_final()) {
                continue;
            }
            job.state = final_state(&job, &counts);
            job.finished_at = Some(now());
            job.outcome = Some(counts_value(&counts));
            info!(job = %job.id, state = job.state.name(), "job finished while the controller was away");
            self.writer
                .put(Collection::Jobs, &job.id, serde_json::to_value(&job).ok());
        }
        Ok(())
    }

    /// Every task of a job as it is now: the store's records, with memory's for unfinished
    /// tasks (memory is ahead of the store by at most one batch).
    pub async fn job_tasks(&self, job: &str) -> Result<Vec<TaskRecord>, crate::store::StoreError> {
        let mut tasks = self.job_tasks_from_store(job).await?;
        let live: HashMap<String, TaskRecord> = self
            .live_tasks(job)
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        for t in &mut tasks {
            if let Some(l) = live.get(&t.id) {
                t.clone_from(l);
            }
        }
        Ok(tasks)
    }

    /// Every task of a job, from the store.
    pub async fn job_tasks_from_store(
        &self,
        job: &str,
    ) -> Result<Vec<TaskRecord>, crate::store::StoreError> {
        let query = qs_query::Query::from_request(
            &serde_json::json!({"filter": {"job": job}, "sort": {"id": 1}}),
        )
        .map_err(|e| crate::store::StoreError::Refused {
            message: e.to_string(),
        })?;
        Ok(self
            .store
            .find_records(Collection::Tasks, &query)
            .await?
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect())
    }
}

/// A finished job's state: cancelled if an operator asked, succeeded if every task did.
fn final_state(job: &JobRecord, counts: &HashMap<TaskState, u64>) -> JobState {
    if job.cancel_requested {
        JobState::Cancelled
    } else if counts.get(&TaskState::Succeeded).copied().unwrap_or(0) == job.tasks {
        JobState::Succeeded
    } else {
        JobState::Failed
    }
}

/// `{"queued": n, ...}` with every state present.
pub(super) fn counts_value(counts: &HashMap<TaskState, u64>) -> Value {
    let mut out = serde_json::Map::new();
    for s in TaskState::ALL {
        out.insert(
            s.name().to_owned(),
            counts.get(&s).copied().unwrap_or(0).into(),
        );
    }
    Value::Object(out)
}

impl CallObserver for Jobs {
    fn on_call_message(
        &self,
        from: &MercuryId,
        connection: ConnectionId,
        re: MessageId,
        message: CallMessage,
    ) -> bool {
        let Some((task_id, finished)) = self.task_of_call(re.0, from) else {
            return false;
        };
        if finished {
            if let CallMessage::Result(result) = message {
                // Recorded on the stored task, never applied a second time.
                warn!(task = %task_id, "a result arrived for a task already finished: recorded, not applied");
                let writer = self.writer.clone();
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Ok(Some(value)) = store.get_record(Collection::Tasks, &task_id).await {
                        if let Ok(mut task) = serde_json::from_value::<TaskRecord>(value) {
                            task.late_results.push(serde_json::json!({
                                "received_at": now(),
                                "result": result,
                            }));
                            writer.put(
                                Collection::Tasks,
                                &task_id,
                                serde_json::to_value(&task).ok(),
                            );
                        }
                    }
                });
            }
            return true;
        }
        match message {
            CallMessage::Result(result) => self.signal(&task_id, Signal::Finished(result)),
            CallMessage::Refused(error) => self.signal(&task_id, Signal::Refused(error)),
            CallMessage::Progress(progress) => {
                let stage = progress.stage;
                let at = now();
                self.update(&task_id, |t| {
                    t.connection = Some(connection);
                    match stage {
                        // A plan task stays `running` from its first step on.
                        Some(qs_proto::CallStage::Received) => {
                            if t.record.state < TaskState::Received {
                                t.record.enter(TaskState::Received, "", &at);
                            }
                        }
                        Some(qs_proto::CallStage::Running) => {
                            if t.record.state < TaskState::Received {
                                t.record.enter(TaskState::Received, "", &at);
                            }
                            if t.record.state < TaskState::Running {
                                t.record.enter(TaskState::Running, "", &at);
                            }
                        }
                        None => {
                            t.record.progress = Some(serde_json::json!({
                                "message": progress.message,
                                "percent": progress.percent,
                                "at": at,
                            }));
                        }
                    }
                });
            }
            CallMessage::Output(output) => {
                if let Some(t) = self.active().tasks.get_mut(&task_id) {
                    match output.stream {
                        OutputStream::Stdout => t.log.stdout.push(output.offset, &output.data),
                        OutputStream::Stderr => t.log.stderr.push(output.offset, &output.data),
                    }
                }
            }
        }
        true
    }

    fn on_registered(&self, agent: &MercuryId, _connection: ConnectionId, calls: &[CallRecord]) {
        let tasks: Vec<(String, u64, mpsc::UnboundedSender<Signal>)> = {
            let active = self.active();
            active
                .by_host
                .get(agent.as_str())
                .into_iter()
                .flatten()
                .filter_map(|id| active.tasks.get(id))
                .map(|t| (t.record.id.clone(), t.record.call_id, t.signal.clone()))
                .collect()
        };
        for (_task, call, signal) in tasks {
            let report = calls.iter().find(|c| c.id.0 == call);
            let _ = signal.send(Signal::Registered {
                running: report.is_some_and(|c| c.finished.is_none()),
                finished: report.and_then(|c| c.finished.as_ref().map(|f| f.result.clone())),
            });
        }
    }

    fn on_disconnected(&self, agent: &MercuryId, connection: ConnectionId) {
        let active = self.active();
        let tasks = active.by_host.get(agent.as_str()).into_iter().flatten();
        for t in tasks.filter_map(|id| active.tasks.get(id)) {
            if t.connection == Some(connection) {
                let _ = t.signal.send(Signal::Disconnected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agents::counters::Counters;
    use crate::agents::registry::{AgentRecord, RegistryConfig};
    use crate::agents::transport::Connection;
    use crate::jobs::creation::{JobRequest, Requester};
    use qs_proto::{codec, ArgInfo, Body, CallOutcome, CapabilityInfo, ErrorCode};
    use time::OffsetDateTime;

    const A: &str = "013c16030373937262a32e831ff18c941b6481ded8";
    const B: &str = "00bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    struct Rig {
        jobs: Arc<Jobs>,
        dispatcher: Arc<Dispatcher>,
        store: Store,
        conn: Arc<Connection>,
        sent: mpsc::Receiver<Vec<u8>>,
        _dir: tempfile::TempDir,
    }

    fn capability(destructive: bool) -> CapabilityInfo {
        CapabilityInfo {
            name: "flash".into(),
            doc: "flash".into(),
            args: vec![
                ArgInfo {
                    name: "image".into(),
                    kind: "string".into(),
                    required: true,
                    doc: String::new(),
                    default: None,
                    choices: None,
                },
                ArgInfo {
                    name: "password".into(),
                    kind: "secret".into(),
                    required: false,
                    doc: String::new(),
                    default: None,
                    choices: None,
                },
            ],
            exclusive: false,
            destructive,
            default_timeout: 60,
        }
    }

    /// A controller's job engine with agent A connected (its frames land in `sent`).
    async fn rig(destructive: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let registry = Arc::new(Registry::new(
            store.clone(),
            RegistryConfig {
                timeout: Duration::from_secs(15),
                controller: "test".into(),
            },
        ));
        let dispatcher = Arc::new(Dispatcher::new(
            7,
            Duration::from_secs(3600),
            Arc::new(Counters::default()),
        ));
        let (writer, _) = RecordWriter::start(store.clone());
        let jobs = Jobs::new(
            store.clone(),
            registry.clone(),
            dispatcher.clone(),
            writer,
            JobsConfig {
                default_timeout: Duration::from_secs(60),
                retention: Duration::from_secs(3600),
                grace: Duration::from_secs(1),
                reconnect_wait: Duration::from_secs(1),
                config_dir: dir.path().join("config"),
            },
        );
        let (tx, sent) = mpsc::channel(64);
        let conn = Arc::new(Connection::new(
            ConnectionId(1),
            "127.0.0.1:1".parse().unwrap(),
            A.parse().unwrap(),
            tx,
        ));
        let now = OffsetDateTime::now_utc();
        let record = AgentRecord {
            online: true,
            last_seen: now,
            registered: now,
            version: "0.1.0".into(),
            boot_id: "b".into(),
            address: None,
            capabilities: vec![capability(destructive)],
            image_id: None,
            session: 1,
            controller: "test".into(),
        };
        store
            .put_inventory(A, serde_json::json!({"mercury_id": A}))
            .await
            .unwrap();
        registry.start_session(&conn, record, 1);
        Rig {
            jobs,
            dispatcher,
            store,
            conn,
            sent,
            _dir: dir,
        }
    }

    async fn create(rig: &Rig) -> String {
        let request: JobRequest = serde_json::from_value(serde_json::json!({
            "query": {}, "capability": "flash", "args": {"image": "a.bin"}, "confirm": true
        }))
        .unwrap();
        let requester = Requester {
            name: "t".into(),
            admin: true,
            segment: None,
        };
        let created = rig.jobs.create(request, &requester).await.unwrap();
        created.job.unwrap().id
    }

    /// The id of the next call the agent received.
    async fn call_id(rig: &mut Rig) -> MessageId {
        let frame = tokio::time::timeout(Duration::from_secs(10), rig.sent.recv())
            .await
            .unwrap()
            .unwrap();
        let body = if frame[0] & 0x02 != 0 {
            &frame[9..]
        } else {
            &frame[2..]
        };
        let env = codec::decode(body, 1 << 20).unwrap();
        assert!(matches!(env.body, Body::CapabilityCall(_)));
        env.id
    }

    fn result(output: serde_json::Value) -> CallResult {
        CallResult {
            outcome: CallOutcome::Succeeded(output),
            output: None,
        }
    }

    async fn task(rig: &Rig, job: &str) -> TaskRecord {
        let tasks = rig.jobs.job_tasks_from_store(job).await.unwrap();
        tasks.into_iter().next().unwrap()
    }

    async fn until_final(rig: &Rig, job: &str) -> TaskRecord {
        for _ in 0..200 {
            if rig.jobs.live_counts(job).is_none() {
                rig.jobs.writer.durable().await.unwrap();
                return task(rig, job).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {job} did not finish");
    }

    #[tokio::test]
    async fn a_forged_result_is_ignored_and_a_repeated_one_recorded_not_applied() {
        let mut rig = rig(false).await;
        let job = create(&rig).await;
        let id = call_id(&mut rig).await;
        // Another agent answering the call does not finish the task.
        rig.dispatcher.on_result(
            &B.parse().unwrap(),
            ConnectionId(9),
            Some(id),
            result(serde_json::json!("forged")),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rig.jobs.live_counts(&job).is_some());
        let a: MercuryId = A.parse().unwrap();
        rig.dispatcher
            .on_result(&a, rig.conn.id(), Some(id), result(serde_json::json!("ok")));
        let done = until_final(&rig, &job).await;
        assert_eq!(done.state, TaskState::Succeeded);
        assert_eq!(done.output, Some(serde_json::json!("ok")));
        // The same result again: recorded on the task, the outcome unchanged.
        rig.dispatcher.on_result(
            &a,
            rig.conn.id(),
            Some(id),
            result(serde_json::json!("again")),
        );
        for _ in 0..100 {
            rig.jobs.writer.durable().await.unwrap();
            if !task(&rig, &job).await.late_results.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = task(&rig, &job).await;
        assert_eq!(after.state, TaskState::Succeeded);
        assert_eq!(after.output, Some(serde_json::json!("ok")));
        assert_eq!(after.late_results.len(), 1);
        let job_record = rig
            .store
            .get_record(Collection::Jobs, &job)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job_record["state"], "succeeded");
    }

    #[tokio::test]
    async fn a_destructive_call_is_durable_before_it_is_sent_and_a_duplicate_refusal_waits() {
        let mut rig = rig(true).await;
        let job = create(&rig).await;
        let id = call_id(&mut rig).await;
        // By the time the frame left, the store already said `dispatched` with this id.
        let stored = task(&rig, &job).await;
        assert_eq!(stored.state, TaskState::Dispatched);
        assert_eq!(stored.call_id, id.0);
        let a: MercuryId = A.parse().unwrap();
        rig.dispatcher.on_refusal(
            &a,
            rig.conn.id(),
            Some(id),
            qs_proto::ErrorBody {
                code: ErrorCode::DuplicateCall,
                message: "already ran".into(),
            },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            rig.jobs.live_counts(&job).is_some(),
            "a duplicate refusal is not an end"
        );
        // The agent registers again and reports it finished the call meanwhile.
        rig.dispatcher.on_registered(
            &a,
            rig.conn.id(),
            &[CallRecord {
                id,
                capability: "flash".into(),
                started_at: "t0".into(),
                finished: Some(qs_proto::CallFinished {
                    result: result(serde_json::json!("flashed")),
                    finished_at: "t1".into(),
                }),
            }],
        );
        let done = until_final(&rig, &job).await;
        assert_eq!(done.state, TaskState::Succeeded);
        assert_eq!(done.output, Some(serde_json::json!("flashed")));
    }

    #[tokio::test]
    async fn an_agent_back_without_the_call_leaves_it_lost() {
        let mut rig = rig(true).await;
        let job = create(&rig).await;
        let id = call_id(&mut rig).await;
        let a: MercuryId = A.parse().unwrap();
        let running = qs_proto::CallProgress {
            message: "running".into(),
            percent: None,
            stage: Some(qs_proto::CallStage::Running),
        };
        rig.dispatcher
            .on_progress(&a, rig.conn.id(), Some(id), running);
        rig.dispatcher.on_disconnect(&rig.conn);
        rig.dispatcher.on_registered(&a, ConnectionId(2), &[]);
        let done = until_final(&rig, &job).await;
        assert_eq!(done.state, TaskState::Lost);
        let states: Vec<TaskState> = done.transitions.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            vec![
                TaskState::Queued,
                TaskState::Dispatched,
                TaskState::Received,
                TaskState::Running,
                TaskState::Lost
            ]
        );
    }

    #[tokio::test]
    async fn finished_jobs_expire_with_their_tasks_and_logs_after_the_retention() {
        let rig = rig(false).await;
        let record = |id: &str, finished: &str| {
            serde_json::json!({
                "id": id, "created_at": finished, "query": {}, "work": {"capability": "flash"},
                "timeout_s": 1, "state": "succeeded", "tasks": 1, "finished_at": finished,
            })
        };
        let task = |job: &str| {
            serde_json::json!({
                "id": format!("{job}.0"), "job": job, "host": A, "work": {"capability": "flash"},
                "timeout_s": 1, "call_id": 1, "state": "succeeded", "transitions": [],
            })
        };
        let mut writes = Vec::new();
        for (job, finished) in [("old", "2020-01-01T00:00:00Z"), ("new", &now())] {
            writes.push(crate::store::Write::Record {
                collection: Collection::Jobs,
                key: job.into(),
                value: Some(record(job, finished)),
            });
            writes.push(crate::store::Write::Record {
                collection: Collection::Tasks,
                key: format!("{job}.0"),
                value: Some(task(job)),
            });
            writes.push(crate::store::Write::Record {
                collection: Collection::TaskLogs,
                key: format!("{job}.0"),
                value: Some(serde_json::json!({"finished": true})),
            });
        }
        rig.store.write_batch(writes).await.unwrap();
        assert_eq!(
            rig.jobs.expire(Duration::from_secs(86_400)).await.unwrap(),
            1
        );
        let get = |c, k: &str| {
            let (store, k) = (rig.store.clone(), k.to_owned());
            async move { store.get_record(c, &k).await.unwrap() }
        };
        assert!(get(Collection::Jobs, "old").await.is_none());
        assert!(get(Collection::Tasks, "old.0").await.is_none());
        assert!(get(Collection::TaskLogs, "old.0").await.is_none());
        assert!(get(Collection::Jobs, "new").await.is_some());
        assert!(get(Collection::Tasks, "new.0").await.is_some());
    }

    #[tokio::test]
    async fn a_job_whose_tasks_all_finished_before_a_crash_is_finished_at_start() {
        let rig = rig(false).await;
        let job = serde_json::json!({
            "id": "j", "created_at": now(), "query": {}, "work": {"capability": "flash"},
            "timeout_s": 1, "state": "running", "tasks": 1,
        });
        let task = serde_json::json!({
            "id": "j.0", "job": "j", "host": A, "work": {"capability": "flash"},
            "timeout_s": 1, "call_id": 1, "state": "failed", "transitions": [],
        });
        rig.store
            .write_batch(vec![
                crate::store::Write::Record {
                    collection: Collection::Jobs,
                    key: "j".into(),
                    value: Some(job),
                },
                crate::store::Write::Record {
                    collection: Collection::Tasks,
                    key: "j.0".into(),
                    value: Some(task),
                },
            ])
            .await
            .unwrap();
        assert_eq!(rig.jobs.recover().await.unwrap(), 0);
        rig.jobs.writer.durable().await.unwrap();
        let job = rig
            .store
            .get_record(Collection::Jobs, "j")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job["state"], "failed");
        assert_eq!(job["outcome"]["failed"], 1);
    }

    #[tokio::test]
    async fn secret_arguments_reach_the_agent_but_never_a_record() {
        let mut rig = rig(false).await;
        let request: JobRequest = serde_json::from_value(serde_json::json!({
            "query": {}, "capability": "flash",
            "args": {"image": "a.bin", "password": "hunter2-secret"}
        }))
        .unwrap();
        let requester = Requester::default();
        let job = rig
            .jobs
            .create(request, &requester)
            .await
            .unwrap()
            .job
            .unwrap();
        assert_eq!(job.args["password"], qs_proto::capability::REDACTED);
        let frame = tokio::time::timeout(Duration::from_secs(10), rig.sent.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(frame.windows(14).any(|w| w == b"hunter2-secret"));
        rig.jobs.writer.durable().await.unwrap();
        for collection in [Collection::Jobs, Collection::Tasks] {
            let query = qs_query::Query::from_request(&serde_json::json!({})).unwrap();
            let records = rig.store.find_records(collection, &query).await.unwrap();
            assert!(!records.is_empty());
            assert!(!serde_json::to_string(&records).unwrap().contains("hunter2"));
        }
        let (live, _) = rig.jobs.live_task(&format!("{}.0", job.id)).unwrap();
        assert_eq!(live.args["password"], qs_proto::capability::REDACTED);
        assert!(live.secret_args);
    }
}
