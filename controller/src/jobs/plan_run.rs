//! A plan task: its steps in order on one host, each a call of its own (with its own call id,
//! deadline and log), skipped when its `when` is false, and on failure its `on_failure`
//! recovery steps before the task ends as the failed step did. Steps already finished when
//! an earlier controller process stopped are not run again.

use std::sync::Arc;
use std::time::Duration;

use qs_plans::{HostContext, Plan, Step};
use qs_proto::{check_args, MercuryId};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::creation::JobError;
use super::engine::{now, Jobs, Signal};
use super::model::{StepRecord, TaskRecord, TaskState, Work};
use super::runner::{call, judge, CallEnd, CallSpec};

impl Jobs {
    /// The plan `SET/NAME` from the config dir, validated.
    pub(super) fn load_plan(&self, name: &str) -> Result<Plan, JobError> {
        qs_plans::load_plan(&self.config.config_dir, name)
            .map_err(|e| JobError::Plan(e.to_string()))
    }

    /// Makes `call_id` the task's current call, its output going to `log_key`.
    fn switch_call(&self, task_id: &str, call_id: u64, log_key: String) {
        let mut active = self.active();
        active.by_call.insert(call_id, task_id.to_owned());
        if let Some(t) = active.tasks.get_mut(task_id) {
            t.calls.push(call_id);
            t.record.call_id = call_id;
            t.log = super::logs::TaskLog::new();
            t.log_key = log_key;
        }
    }
}

fn step_state(end_state: TaskState) -> &'static str {
    end_state.name()
}

/// Runs a plan task to its end (its final state is written; the caller retires it).
pub(super) async fn run(
    jobs: &Arc<Jobs>,
    task_id: &str,
    record: &TaskRecord,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
) {
    let finish = |state: TaskState, reason: String| {
        let at = now();
        jobs.update(task_id, |t| {
            t.record.enter(state, reason, &at);
        });
    };
    let Work::Plan(name) = &record.work else {
        return;
    };
    let plan = match jobs.load_plan(name) {
        Ok(plan) => plan,
        Err(e) => return finish(TaskState::Failed, e.to_string()),
    };
    let Ok(host) = record.host.parse::<MercuryId>() else {
        return finish(
            TaskState::Failed,
            format!("{} is not a MercuryId", record.host),
        );
    };
    let inventory = match jobs.store.get_inventory(host.as_str()).await {
        Ok(Some(doc)) => doc,
        Ok(None) => Value::Object(serde_json::Map::new()),
        Err(e) => return finish(TaskState::Failed, format!("inventory unavailable: {e}")),
    };
    let assets = match crate::assets::assets_for(&jobs.store, &inventory).await {
        Ok(a) => a,
        Err(e) => return finish(TaskState::Failed, format!("assets unavailable: {e}")),
    };
    let mut context = HostContext::new(host.as_str(), inventory, assets);
    // The job's arguments are visible to every step as `args`.
    let mut steps: Vec<StepRecord> = record.steps.clone();
    for done in &steps {
        if matches!(
            done.state.as_str(),
            "succeeded" | "failed" | "timed_out" | "skipped"
        ) {
            context.record_step(
                &done.name,
                &done.state,
                done.output.clone().unwrap_or(Value::Null),
                done.error.clone().unwrap_or(Value::Null),
            );
        }
    }
    let mut first_call = steps.is_empty().then_some(record.call_id);
    for step in &plan.steps {
        let index = match steps
            .iter()
            .position(|s| s.name == step.name && s.recovers.is_none())
        {
            Some(i) => i,
            None => {
                steps.push(new_step(step, None));
                steps.len() - 1
            }
        };
        if is_finished(&steps[index].state) {
            if steps[index].state == "succeeded" || steps[index].state == "skipped" {
                continue;
            }
            // Failed in an earlier process: its recovery is not run twice.
            let state = TaskState::parse(&steps[index].state).unwrap_or(TaskState::Failed);
            return finish(state, format!("step {} {}", step.name, steps[index].state));
        }
        let (state, reason) = run_step(
            jobs,
            task_id,
            record,
            rx,
            step,
            &mut steps,
            index,
            &mut context,
            first_call.take(),
        )
        .await;
        if state == TaskState::Succeeded {
            continue;
        }
        if matches!(state, TaskState::Cancelled | TaskState::Lost) || step.on_failure.is_empty() {
            return finish(state, format!("step {} {}: {reason}", step.name, state));
        }
        let mut recovered = true;
        for recovery in &step.on_failure {
            steps.push(new_step(recovery, Some(&step.name)));
            let index = steps.len() - 1;
            let (r, _) = run_step(
                jobs,
                task_id,
                record,
                rx,
                recovery,
                &mut steps,
                index,
                &mut context,
                None,
            )
            .await;
            if r != TaskState::Succeeded {
                recovered = false;
                break;
            }
        }
        let outcome = if recovered {
            "recovery succeeded"
        } else {
            "recovery failed"
        };
        return finish(
            state,
            format!("step {} {state}: {reason}; {outcome}", step.name),
        );
    }
    finish(TaskState::Succeeded, String::new());
}

fn is_finished(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "timed_out" | "cancelled" | "lost" | "skipped"
    )
}

fn new_step(step: &Step, recovers: Option<&String>) -> StepRecord {
    StepRecord {
        name: step.name.clone(),
        capability: step.capability.clone(),
        recovers: recovers.cloned(),
        state: "queued".into(),
        reason: String::new(),
        call_id: None,
        started_at: None,
        finished_at: None,
        output: None,
        error: None,
    }
}

fn save_steps(jobs: &Jobs, task_id: &str, steps: &[StepRecord]) {
    let steps = steps.to_vec();
    jobs.update(task_id, |t| t.record.steps = steps);
}

/// Runs one step; returns its end state and reason.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    jobs: &Arc<Jobs>,
    task_id: &str,
    record: &TaskRecord,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    step: &Step,
    steps: &mut [StepRecord],
    index: usize,
    context: &mut HostContext,
    first_call: Option<u64>,
) -> (TaskState, String) {
    let end = |steps: &mut [StepRecord],
               context: &mut HostContext,
               state: &str,
               reason: String,
               output: Option<Value>,
               error: Option<Value>| {
        let s = &mut steps[index];
        s.state = state.to_owned();
        s.reason = reason;
        s.finished_at = Some(now());
        s.output = output.clone();
        s.error = error.clone();
        context.record_step(
            &step.name,
            state,
            output.unwrap_or(Value::Null),
            error.unwrap_or(Value::Null),
        );
        save_steps(jobs, task_id, steps);
    };
    let fail = |steps: &mut [StepRecord], context: &mut HostContext, reason: String| {
        let error = json!({"message": reason});
        end(steps, context, "failed", reason.clone(), None, Some(error));
        (TaskState::Failed, reason)
    };
    if let Some(condition) = &step.when {
        match condition.evaluate(context.as_value()) {
            Ok(true) => {}
            Ok(false) => {
                let reason = format!("when {} is false", condition.source());
                end(steps, context, "skipped", reason, None, None);
                return (TaskState::Succeeded, String::new());
            }
            Err(e) => {
                return fail(steps, context, format!("when: {e}"));
            }
        }
    }
    let args = match qs_plans::render_args(&step.args, context.as_value()) {
        Ok(args) => args,
        Err(e) => {
            return fail(steps, context, e.to_string());
        }
    };
    let info = record
        .host
        .parse::<MercuryId>()
        .ok()
        .and_then(|h| jobs.registry.capabilities(&h))
        .and_then(|caps| caps.into_iter().find(|c| c.name == step.capability));
    let (args, exclusive, destructive, default_timeout) = match &info {
        Some(info) => match check_args(info, &args) {
            Ok(args) => {
                let exclusive = info.takes_exclusive_lock(&args);
                (args, exclusive, info.destructive, info.default_timeout)
            }
            Err(e) => {
                return fail(steps, context, format!("step {}: {e}", step.name));
            }
        },
        // The host is not connected now: the call waits for it; the agent checks arguments.
        None => (args, false, record.destructive, 0),
    };
    let timeout = step
        .timeout
        .or_else(|| (default_timeout > 0).then(|| Duration::from_secs(default_timeout)))
        .unwrap_or(jobs.config.default_timeout);
    let resume = matches!(
        steps[index].state.as_str(),
        "dispatched" | "received" | "running"
    );
    let call_id = match (resume, steps[index].call_id, first_call) {
        (true, Some(id), _) => id,
        (_, _, Some(id)) => id,
        _ => jobs.dispatcher.next_id().0,
    };
    jobs.switch_call(task_id, call_id, steps[index].log_key(task_id));
    {
        let s = &mut steps[index];
        s.call_id = Some(call_id);
        s.state = "running".into();
        s.started_at.get_or_insert_with(now);
    }
    save_steps(jobs, task_id, steps);
    let spec = CallSpec {
        capability: step.capability.clone(),
        args,
        call_id,
        timeout,
        exclusive,
        destructive,
        resume,
    };
    let ended: CallEnd = call(jobs, task_id, record, rx, spec).await;
    jobs.flush_log(task_id, true);
    let (state, reason, output, error) = judge(ended);
    end(
        steps,
        context,
        step_state(state),
        reason.clone(),
        output,
        error,
    );
    (state, reason)
}
