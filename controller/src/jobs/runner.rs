//! One task's control flow, from queued to a final state: wait for the host, take its
//! exclusive lock when the capability needs it, record the dispatch (durably first for a
//! destructive capability, so it is never sent twice), send, then wait for the result, a
//! refusal, the deadline, a cancel, or the agent's word after a disconnection.

use std::sync::Arc;
use std::time::Duration;

use qs_proto::{CallOutcome, CallResult, ErrorBody, ErrorCode, MercuryId, MessageId};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::engine::{now, Jobs, Signal};
use super::model::{TaskRecord, TaskState, Work};

/// How one call of a task ended.
#[derive(Debug)]
pub(super) enum CallEnd {
    /// The agent's result.
    Result(CallResult),
    /// The agent refused the call.
    Refused(ErrorBody),
    /// No result before the deadline (the agent was told to stop).
    TimedOut(String),
    /// The agent went away and nothing says what became of the call.
    Lost(String),
    /// An operator cancelled it.
    Cancelled(String),
    /// It was never sent (the dispatch could not be recorded).
    NotSent(String),
}

/// What one call needs.
pub(super) struct CallSpec {
    pub capability: String,
    pub args: Value,
    pub call_id: u64,
    pub timeout: Duration,
    pub exclusive: bool,
    pub destructive: bool,
    /// The call was dispatched by an earlier controller process: wait for the agent's report.
    pub resume: bool,
}

/// Runs a task to its end and retires it.
pub(super) async fn run(jobs: Arc<Jobs>, task_id: String, mut rx: mpsc::UnboundedReceiver<Signal>) {
    let task = jobs
        .active()
        .tasks
        .get(&task_id)
        .map(|t| (t.record.clone(), t.secret_args.clone()));
    if let Some((record, secret_args)) = task {
        match record.work.clone() {
            Work::Capability(_)
                if record.secret_args
                    && secret_args.is_none()
                    && record.state == TaskState::Queued =>
            {
                let at = now();
                jobs.update(&task_id, |t| {
                    t.record.enter(
                        TaskState::Failed,
                        "its secret arguments are never stored, so it cannot be sent after a controller restart: create the job again",
                        &at,
                    );
                });
            }
            Work::Capability(capability) => {
                let spec = CallSpec {
                    capability,
                    args: secret_args.unwrap_or_else(|| record.args.clone()),
                    call_id: record.call_id,
                    timeout: Duration::from_secs(record.timeout_s),
                    exclusive: record.exclusive,
                    destructive: record.destructive,
                    resume: record.state > TaskState::Queued,
                };
                let end = call(&jobs, &task_id, &record, &mut rx, spec).await;
                let (state, reason, output, error) = judge(end);
                let at = now();
                jobs.update(&task_id, |t| {
                    t.record.output = output;
                    t.record.error = error;
                    t.record.enter(state, reason, &at);
                });
            }
            Work::Plan(_) => super::plan_run::run(&jobs, &task_id, &record, &mut rx).await,
        }
        jobs.flush_log(&task_id, true);
    }
    jobs.retire(&task_id);
}

/// The task's final state, reason, output and error for how its call ended.
pub(super) fn judge(end: CallEnd) -> (TaskState, String, Option<Value>, Option<Value>) {
    match end {
        CallEnd::Result(CallResult { outcome, output }) => match outcome {
            CallOutcome::Succeeded(value) => {
                (TaskState::Succeeded, String::new(), Some(value), None)
            }
            CallOutcome::Failed(report) => (
                TaskState::Failed,
                report.to_string(),
                output,
                serde_json::to_value(&report).ok(),
            ),
            CallOutcome::TimedOut(report) => (
                TaskState::TimedOut,
                report.to_string(),
                output,
                serde_json::to_value(&report).ok(),
            ),
            CallOutcome::Cancelled(report) => (
                TaskState::Cancelled,
                report.to_string(),
                output,
                serde_json::to_value(&report).ok(),
            ),
        },
        CallEnd::Refused(e) => {
            let reason = format!("the agent refused the call ({:?}): {}", e.code, e.message);
            (
                TaskState::Failed,
                reason.clone(),
                None,
                Some(json!({"message": reason})),
            )
        }
        CallEnd::TimedOut(reason) => (TaskState::TimedOut, reason, None, None),
        CallEnd::Lost(reason) => (TaskState::Lost, reason, None, None),
        CallEnd::Cancelled(reason) => (TaskState::Cancelled, reason, None, None),
        CallEnd::NotSent(reason) => (
            TaskState::Failed,
            reason.clone(),
            None,
            Some(json!({"message": reason})),
        ),
    }
}

fn set_reason(jobs: &Jobs, task_id: &str, reason: &str) {
    jobs.update(task_id, |t| {
        if t.record.state_reason != reason {
            t.record.state_reason = reason.to_owned();
        }
    });
}

/// Sends one call for a task and follows it to its end. A call the agent never got (it came
/// back without it while the task was only dispatched) is sent again with the same id,
/// unless the capability is destructive.
pub(super) async fn call(
    jobs: &Arc<Jobs>,
    task_id: &str,
    record: &TaskRecord,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    mut spec: CallSpec,
) -> CallEnd {
    let Ok(host) = record.host.parse::<MercuryId>() else {
        return CallEnd::NotSent(format!("{} is not a MercuryId", record.host));
    };
    let created = Instant::now();
    loop {
        let end = if spec.resume {
            resume(jobs, task_id, &host, rx, &spec).await
        } else {
            dispatch(jobs, task_id, &host, rx, &spec, created).await
        };
        match end {
            Attempt::Ended(end) => return end,
            Attempt::Resend => {
                info!(
                    task = task_id,
                    "the agent never got the call: sending it again"
                );
                spec.resume = false;
            }
        }
    }
}

enum Attempt {
    Ended(CallEnd),
    Resend,
}

/// A call an earlier process sent: wait for the agent to register and say what became of it.
async fn resume(
    jobs: &Arc<Jobs>,
    task_id: &str,
    host: &MercuryId,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    spec: &CallSpec,
) -> Attempt {
    set_reason(
        jobs,
        task_id,
        "the controller restarted: waiting for the agent to report this call",
    );
    let give_up = Instant::now() + jobs.config.reconnect_wait + spec.timeout;
    loop {
        tokio::select! {
            signal = rx.recv() => match signal {
                None => return Attempt::Ended(CallEnd::Lost("the job engine stopped".into())),
                Some(Signal::Finished(result)) | Some(Signal::Registered { finished: Some(result), .. }) => {
                    return Attempt::Ended(CallEnd::Result(result))
                }
                Some(Signal::Registered { running: true, .. }) => {
                    let at = now();
                    let connection = jobs.registry.connection(host).map(|c| c.id());
                    jobs.update(task_id, |t| {
                        t.connection = connection;
                        if t.record.state == TaskState::Dispatched {
                            t.record.enter(TaskState::Received, "", &at);
                        }
                        t.record.enter(TaskState::Running, "still running on the agent (it said so when it registered again)", &at);
                    });
                    return wait(jobs, task_id, host, rx, spec, true).await;
                }
                Some(Signal::Registered { .. }) => return forgotten(jobs, task_id, spec),
                Some(Signal::Refused(e)) => return Attempt::Ended(CallEnd::Refused(e)),
                Some(Signal::Cancel) => {
                    return Attempt::Ended(CallEnd::Cancelled("cancelled while waiting for the agent to come back".into()))
                }
                Some(Signal::Disconnected) => {}
            },
            _ = tokio::time::sleep_until(give_up) => {
                return Attempt::Ended(CallEnd::Lost("the agent did not come back after the controller restarted".into()))
            }
        }
    }
}

/// The agent registered without the call: it restarted (or never got it).
fn forgotten(jobs: &Jobs, task_id: &str, spec: &CallSpec) -> Attempt {
    let never_received = jobs
        .active()
        .tasks
        .get(task_id)
        .is_some_and(|t| t.record.state == TaskState::Dispatched);
    if never_received && !spec.destructive {
        Attempt::Resend
    } else {
        Attempt::Ended(CallEnd::Lost(
            "the agent came back without this call (it restarted while running it, or never got it)"
                .into(),
        ))
    }
}

async fn dispatch(
    jobs: &Arc<Jobs>,
    task_id: &str,
    host: &MercuryId,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    spec: &CallSpec,
    created: Instant,
) -> Attempt {
    // A host that is not connected yet is waited for, up to the task's deadline.
    let host_deadline = created + spec.timeout;
    let mut said = false;
    let conn = loop {
        if let Some(conn) = jobs.registry.connection(host).filter(|c| !c.is_closed()) {
            break conn;
        }
        if !said {
            set_reason(jobs, task_id, "waiting for the host to connect");
            said = true;
        }
        tokio::select! {
            signal = rx.recv() => match signal {
                None => return Attempt::Ended(CallEnd::Lost("the job engine stopped".into())),
                Some(Signal::Cancel) => return Attempt::Ended(CallEnd::Cancelled("cancelled before it was sent".into())),
                Some(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::time::sleep_until(host_deadline) => {
                return Attempt::Ended(CallEnd::Lost(format!("the host did not connect within {}", humantime::format_duration(spec.timeout))))
            }
        }
    };
    let _exclusive = if spec.exclusive {
        let lock = jobs.host_lock(host.as_str());
        match lock.clone().try_lock_owned() {
            Ok(guard) => Some(guard),
            Err(_) => {
                set_reason(
                    jobs,
                    task_id,
                    "waiting: another exclusive capability runs on this host",
                );
                loop {
                    tokio::select! {
                        guard = lock.clone().lock_owned() => break Some(guard),
                        signal = rx.recv() => match signal {
                            None => return Attempt::Ended(CallEnd::Lost("the job engine stopped".into())),
                            Some(Signal::Cancel) => return Attempt::Ended(CallEnd::Cancelled("cancelled while waiting for the host's exclusive lock".into())),
                            Some(_) => {}
                        },
                    }
                }
            }
        }
    } else {
        None
    };
    // The lock may have taken long: the host may have reconnected meanwhile.
    let conn = jobs
        .registry
        .connection(host)
        .filter(|c| !c.is_closed())
        .unwrap_or(conn);
    let at = now();
    jobs.update(task_id, |t| {
        t.connection = Some(conn.id());
        t.record.call_id = spec.call_id;
        if t.record.state < TaskState::Dispatched {
            t.record.enter(TaskState::Dispatched, "", &at);
        } else {
            t.record.state_reason = format!("{} sent", spec.capability);
        }
    });
    if spec.destructive {
        if let Err(error) = jobs.writer.durable().await {
            return Attempt::Ended(CallEnd::NotSent(format!(
                "the dispatch could not be recorded, so it was not sent: {error}"
            )));
        }
    }
    let connected = match jobs
        .dispatcher
        .send_call(
            &conn,
            MessageId(spec.call_id),
            &spec.capability,
            spec.args.clone(),
        )
        .await
    {
        Ok(()) => true,
        Err(error) => {
            warn!(task = task_id, error = %error, "call not sent: the agent disconnected");
            false
        }
    };
    let attempt = wait(jobs, task_id, host, rx, spec, connected).await;
    drop(_exclusive);
    attempt
}

/// Waits for the end of a sent call.
async fn wait(
    jobs: &Arc<Jobs>,
    task_id: &str,
    host: &MercuryId,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    spec: &CallSpec,
    mut connected: bool,
) -> Attempt {
    let mut deadline = Instant::now() + spec.timeout + jobs.config.grace;
    let mut cancelling = false;
    if !connected {
        set_reason(
            jobs,
            task_id,
            "the agent disconnected; waiting for it to come back",
        );
    }
    loop {
        tokio::select! {
            signal = rx.recv() => match signal {
                None => return Attempt::Ended(CallEnd::Lost("the job engine stopped".into())),
                Some(Signal::Finished(result)) | Some(Signal::Registered { finished: Some(result), .. }) => {
                    return Attempt::Ended(CallEnd::Result(result))
                }
                Some(Signal::Refused(e)) if e.code == ErrorCode::DuplicateCall => {
                    set_reason(jobs, task_id, "the agent already has this call; waiting for its result");
                }
                Some(Signal::Refused(e)) => return Attempt::Ended(CallEnd::Refused(e)),
                Some(Signal::Disconnected) => {
                    connected = false;
                    set_reason(jobs, task_id, "the agent disconnected; waiting for it to come back");
                }
                Some(Signal::Registered { running: true, .. }) => {
                    connected = true;
                    let connection = jobs.registry.connection(host).map(|c| c.id());
                    jobs.update(task_id, |t| {
                        t.connection = connection;
                        t.record.state_reason = "still running on the agent after it reconnected".into();
                    });
                }
                Some(Signal::Registered { .. }) => return forgotten(jobs, task_id, spec),
                Some(Signal::Cancel) => {
                    if cancelling {
                        continue;
                    }
                    cancelling = true;
                    let conn = jobs.registry.connection(host).filter(|_| connected);
                    match conn {
                        Some(conn) if jobs.dispatcher.cancel_call(&conn, MessageId(spec.call_id)).await.is_ok() => {
                            set_reason(jobs, task_id, "cancel requested; waiting for the agent to stop it");
                            deadline = deadline.min(Instant::now() + Duration::from_secs(15));
                        }
                        _ => return Attempt::Ended(CallEnd::Cancelled("cancelled; the agent was not connected to be told".into())),
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                if cancelling {
                    return Attempt::Ended(CallEnd::Cancelled("cancelled; the agent did not confirm in time".into()));
                }
                if connected {
                    if let Some(conn) = jobs.registry.connection(host) {
                        // Stop it on the agent too; whatever it answers later is recorded as late.
                        let _ = jobs.dispatcher.cancel_call(&conn, MessageId(spec.call_id)).await;
                    }
                    return Attempt::Ended(CallEnd::TimedOut(format!(
                        "no result within {}",
                        humantime::format_duration(spec.timeout)
                    )));
                }
                return Attempt::Ended(CallEnd::Lost(
                    "the agent went offline and did not come back before the task's deadline".into(),
                ));
            }
        }
    }
}
