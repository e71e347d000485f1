//! The calls this agent process runs, across reconnects.
//!
//! A [`CallTable`] holds every running call (with the signal that cancels it) and the recently
//! finished ones (the last 256, at most an hour old). Every `Register` reports them, so a
//! controller that restarted or lost the connection learns what ran while it was away; a result
//! that finished while no session was registered is also sent as soon as one is. A call id is
//! remembered much longer than it is reported (the last 65,536): one this process ran or is
//! running is refused as `duplicate_call`, never run twice.
//!
//! [`run_call`] serves one admitted call off the session loop: `received` and the exclusive
//! lock when the call needs it, `running`, the capability on a blocking thread with its
//! progress and output forwarded (output coalesced into chunks of at most 64 KiB, about ten a
//! second per stream), then the result. Messages go to whichever session is registered at the
//! time; while none is, progress and output are dropped (the result waits in the table).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use qs_capabilities::{CallContext, CancelSignal, CapabilityError};
use qs_proto::{
    check_args, Body, CallFinished, CallOutcome, CallOutput, CallProgress, CallRecord, CallResult,
    CallStage, CapabilityCall, ErrorBody, ErrorCode, ErrorReport, MessageId, OutputStream,
};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::session::Agent;

/// Finished calls reported in `Register`.
const KEEP_FINISHED: usize = 256;
/// Finished calls older than this are no longer reported.
const KEEP_FOR: Duration = Duration::from_secs(3600);
/// Call ids remembered to refuse duplicates.
const REMEMBER_IDS: usize = 65_536;
/// Encoded bytes of finished results kept (and so reported in `Register`, which must stay far
/// below the 16 MiB frame limit): beyond it, the oldest results are slimmed (delivered ones
/// first), their long strings cut to their start and end.
const KEEP_BYTES: usize = 8 * 1024 * 1024;
/// A string longer than this in a slimmed result keeps its first and last bytes only.
const SLIM_STRING: usize = 4096;
/// Largest output chunk sent.
pub const CHUNK: usize = 64 * 1024;
/// How often buffered output is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The time now as RFC 3339 (UTC, milliseconds), as the protocol carries times.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Why a call id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Duplicate {
    /// The call with this id is still running.
    #[error("call {0} is already running")]
    Running(MessageId),
    /// This process already ran a call with this id.
    #[error("call {0} already ran in this agent process; it is never run twice")]
    Ran(MessageId),
}

/// What a `CancelCall` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The call was running; it is told to stop.
    Signalled,
    /// The call already finished.
    Finished,
    /// No call with this id ran here (recently).
    Unknown,
}

/// A running call's handle: its cancel signal, and a wake-up for async waits.
#[derive(Clone)]
pub struct Ticket {
    /// The call's id.
    pub id: MessageId,
    signal: CancelSignal,
    wake: Arc<Notify>,
}

impl Ticket {
    /// The signal the capability watches.
    pub fn signal(&self) -> CancelSignal {
        self.signal.clone()
    }

    /// Completes when the call is cancelled.
    pub async fn cancelled(&self) {
        while !self.signal.is_cancelled() {
            self.wake.notified().await;
        }
    }

    fn cancel(&self) {
        self.signal.cancel();
        self.wake.notify_one();
    }
}

struct Running {
    capability: String,
    started_at: String,
    ticket: Ticket,
}

struct Finished {
    id: MessageId,
    capability: String,
    started_at: String,
    finished_at: String,
    at: Instant,
    result: CallResult,
    /// Handed to a registered session (so no need to send it again when one registers).
    sent: bool,
    /// The result's encoded size.
    size: usize,
    /// Whether long strings of the result were cut to keep the table small.
    slimmed: bool,
}

#[derive(Default)]
struct Inner {
    running: HashMap<MessageId, Running>,
    finished: VecDeque<Finished>,
    seen: HashSet<MessageId>,
    seen_order: VecDeque<MessageId>,
    /// Sum of the finished results' sizes.
    kept_bytes: usize,
}

/// Running and recently finished calls of this agent process.
pub struct CallTable {
    inner: Mutex<Inner>,
    keep: usize,
    keep_for: Duration,
    remember: usize,
    keep_bytes: usize,
}

impl Default for CallTable {
    fn default() -> Self {
        Self::new()
    }
}

impl CallTable {
    /// A table reporting the last 256 finished calls of the last hour.
    pub fn new() -> Self {
        Self::with_limits(KEEP_FINISHED, KEEP_FOR, REMEMBER_IDS)
    }

    /// A table reporting at most `keep` finished calls, none older than `keep_for`, and
    /// refusing the last `remember` ids (at least `keep`).
    pub fn with_limits(keep: usize, keep_for: Duration, remember: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            keep,
            keep_for,
            remember: remember.max(keep),
            keep_bytes: KEEP_BYTES,
        }
    }

    /// Keeps at most `bytes` of encoded results before slimming the oldest.
    pub fn with_byte_budget(mut self, bytes: usize) -> Self {
        self.keep_bytes = bytes;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent; a panic elsewhere does not corrupt them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits call `id` of `capability`, or refuses an id seen before.
    pub fn admit(&self, id: MessageId, capability: &str) -> Result<Ticket, Duplicate> {
        let mut inner = self.lock();
        if inner.running.contains_key(&id) {
            return Err(Duplicate::Running(id));
        }
        if !inner.seen.insert(id) {
            return Err(Duplicate::Ran(id));
        }
        inner.seen_order.push_back(id);
        while inner.seen_order.len() > self.remember {
            if let Some(old) = inner.seen_order.pop_front() {
                inner.seen.remove(&old);
            }
        }
        let ticket = Ticket {
            id,
            signal: CancelSignal::new(),
            wake: Arc::new(Notify::new()),
        };
        inner.running.insert(
            id,
            Running {
                capability: capability.to_owned(),
                started_at: now_rfc3339(),
                ticket: ticket.clone(),
            },
        );
        Ok(ticket)
    }

    /// Whether call `id` may be admitted (not running, not run before).
    pub fn check(&self, id: MessageId) -> Result<(), Duplicate> {
        let inner = self.lock();
        if inner.running.contains_key(&id) {
            Err(Duplicate::Running(id))
        } else if inner.seen.contains(&id) {
            Err(Duplicate::Ran(id))
        } else {
            Ok(())
        }
    }

    /// The result of finished call `id`, while it is reported.
    pub fn result(&self, id: MessageId) -> Option<CallResult> {
        let inner = self.lock();
        let finished = inner.finished.iter().find(|f| f.id == id);
        finished.map(|f| f.result.clone())
    }

    /// Tells running call `id` to stop.
    pub fn cancel(&self, id: MessageId) -> Cancel {
        let inner = self.lock();
        if let Some(running) = inner.running.get(&id) {
            running.ticket.cancel();
            Cancel::Signalled
        } else if inner.finished.iter().any(|f| f.id == id) {
            Cancel::Finished
        } else {
            Cancel::Unknown
        }
    }

    /// Records how call `id` ended; `sent`: the result was handed to a registered session.
    pub fn finish(&self, id: MessageId, result: CallResult, sent: bool) {
        let mut inner = self.lock();
        let Some(running) = inner.running.remove(&id) else {
            return;
        };
        let size = encoded_len(&result);
        inner.kept_bytes += size;
        inner.finished.push_back(Finished {
            id,
            capability: running.capability,
            started_at: running.started_at,
            finished_at: now_rfc3339(),
            at: Instant::now(),
            result,
            sent,
            size,
            slimmed: false,
        });
        self.prune(&mut inner);
        self.shrink(&mut inner);
    }

    /// Slims the oldest results, delivered ones first, until they fit the byte budget.
    fn shrink(&self, inner: &mut Inner) {
        while inner.kept_bytes > self.keep_bytes {
            let next = inner
                .finished
                .iter()
                .position(|f| !f.slimmed && f.sent)
                .or_else(|| inner.finished.iter().position(|f| !f.slimmed));
            let Some(at) = next else {
                break;
            };
            let Some(f) = inner.finished.get_mut(at) else {
                break;
            };
            slim(&mut f.result);
            f.slimmed = true;
            let size = encoded_len(&f.result);
            inner.kept_bytes = inner.kept_bytes - f.size + size;
            f.size = size;
        }
    }

    /// Marks call `id`'s result as handed to a registered session.
    pub fn mark_sent(&self, id: MessageId) {
        if let Some(f) = self.lock().finished.iter_mut().find(|f| f.id == id) {
            f.sent = true;
        }
    }

    /// Results not handed to a registered session yet (finished while none was), marked sent.
    pub fn take_unsent(&self) -> Vec<(MessageId, CallResult)> {
        let mut inner = self.lock();
        self.prune(&mut inner);
        inner
            .finished
            .iter_mut()
            .filter(|f| !f.sent)
            .map(|f| {
                f.sent = true;
                (f.id, f.result.clone())
            })
            .collect()
    }

    fn prune(&self, inner: &mut Inner) {
        while inner.finished.len() > self.keep
            || inner
                .finished
                .front()
                .is_some_and(|f| f.at.elapsed() >= self.keep_for)
        {
            if let Some(f) = inner.finished.pop_front() {
                inner.kept_bytes -= f.size;
            }
        }
    }

    /// What `Register` reports: running calls, then finished ones, oldest first.
    pub fn records(&self) -> Vec<CallRecord> {
        let mut inner = self.lock();
        self.prune(&mut inner);
        let mut running: Vec<CallRecord> = inner
            .running
            .iter()
            .map(|(id, r)| CallRecord {
                id: *id,
                capability: r.capability.clone(),
                started_at: r.started_at.clone(),
                finished: None,
            })
            .collect();
        running.sort_by_key(|r| r.id);
        running.extend(inner.finished.iter().map(|f| CallRecord {
            id: f.id,
            capability: f.capability.clone(),
            started_at: f.started_at.clone(),
            finished: Some(CallFinished {
                result: f.result.clone(),
                finished_at: f.finished_at.clone(),
            }),
        }));
        running
    }

    /// How many calls are running.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }
}

fn encoded_len(result: &CallResult) -> usize {
    rmp_serde::to_vec_named(result).map_or(KEEP_BYTES, |bytes| bytes.len())
}

/// Cuts every long string in `value` to its first and last bytes; true if anything was cut.
fn slim_value(value: &mut Value) -> bool {
    match value {
        Value::String(text) if text.len() > SLIM_STRING => {
            let head_end = floor_char_boundary(text, SLIM_STRING / 4);
            let tail_start = ceil_char_boundary(text, text.len() - SLIM_STRING * 3 / 4);
            let omitted = tail_start - head_end;
            *text = format!(
                "{}\n[... {omitted} bytes omitted by the agent ...]\n{}",
                &text[..head_end],
                &text[tail_start..]
            );
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |cut, v| slim_value(v) | cut),
        Value::Object(map) => map.values_mut().fold(false, |cut, v| slim_value(v) | cut),
        _ => false,
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Slims a kept result's output; an object that lost bytes says so (`truncated_by_agent`).
fn slim(result: &mut CallResult) {
    let values = [
        match &mut result.outcome {
            CallOutcome::Succeeded(value) => Some(value),
            _ => None,
        },
        result.output.as_mut(),
    ];
    for value in values.into_iter().flatten() {
        if slim_value(value) {
            if let Value::Object(map) = value {
                map.insert("truncated_by_agent".into(), Value::Bool(true));
            }
        }
    }
}

/// The output of one stream not sent yet: at most [`CHUNK`] bytes, the oldest dropped first
/// (the live view shows the latest; the result keeps the first and last MiB).
#[derive(Default)]
struct StreamBuffer {
    /// Offset in the stream of `pending[0]`.
    offset: u64,
    pending: Vec<u8>,
}

/// Output of a running call waiting to be sent, per stream.
#[derive(Default)]
pub struct OutputBuffer {
    streams: Mutex<[StreamBuffer; 2]>,
}

fn index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

impl OutputBuffer {
    fn lock(&self) -> MutexGuard<'_, [StreamBuffer; 2]> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds bytes the call wrote to `stream`.
    pub fn push(&self, stream: OutputStream, data: &[u8]) {
        let mut streams = self.lock();
        let buf = &mut streams[index(stream)];
        let keep = &data[data.len().saturating_sub(CHUNK)..];
        let skipped = data.len() - keep.len();
        let over = (buf.pending.len() + keep.len()).saturating_sub(CHUNK);
        buf.pending.drain(..over);
        buf.offset += (over + skipped) as u64;
        buf.pending.extend_from_slice(keep);
    }

    /// The pending bytes as chunks (one per stream that has any), emptied.
    pub fn take(&self) -> Vec<CallOutput> {
        let mut streams = self.lock();
        let mut chunks = Vec::new();
        for (i, buf) in streams.iter_mut().enumerate() {
            if buf.pending.is_empty() {
                continue;
            }
            let data = std::mem::take(&mut buf.pending);
            let offset = buf.offset;
            buf.offset += data.len() as u64;
            chunks.push(CallOutput {
                stream: if i == 0 {
                    OutputStream::Stdout
                } else {
                    OutputStream::Stderr
                },
                offset,
                data,
            });
        }
        chunks
    }
}

/// What a capability's end becomes on the wire: the result, and whether the call's arguments
/// were refused (answered with an `Error` too, as before jobs).
fn to_result(
    capability: &str,
    ended: Result<Result<Value, CapabilityError>, tokio::task::JoinError>,
) -> (CallResult, Option<ErrorBody>) {
    let result = |outcome, output| CallResult { outcome, output };
    match ended {
        Ok(Ok(output)) => (result(CallOutcome::Succeeded(output), None), None),
        Ok(Err(CapabilityError::BadArguments { capability, reason })) => {
            let message = format!("bad arguments for {capability}: {reason}");
            let report = ErrorReport {
                message: message.clone(),
                causes: Vec::new(),
            };
            (
                result(CallOutcome::Failed(report), None),
                Some(ErrorBody {
                    code: ErrorCode::BadArguments,
                    message,
                }),
            )
        }
        Ok(Err(CapabilityError::Unsuccessful { message, output })) => {
            let report = ErrorReport {
                message,
                causes: Vec::new(),
            };
            (result(CallOutcome::Failed(report), Some(output)), None)
        }
        Ok(Err(error @ CapabilityError::TimedOut { .. })) => {
            let report = ErrorReport::from_error(&error);
            let output = match error {
                CapabilityError::TimedOut { output, .. } => Some(output),
                _ => None,
            };
            (result(CallOutcome::TimedOut(report), output), None)
        }
        Ok(Err(CapabilityError::Cancelled { output })) => {
            let report = ErrorReport {
                message: "cancelled".into(),
                causes: Vec::new(),
            };
            let output = (!output.is_null()).then_some(output);
            (result(CallOutcome::Cancelled(report), output), None)
        }
        Ok(Err(error)) => (
            result(CallOutcome::Failed(ErrorReport::from_error(&error)), None),
            None,
        ),
        Err(join_error) => (
            result(
                CallOutcome::Failed(ErrorReport {
                    message: format!("{capability} crashed"),
                    causes: vec![join_error.to_string()],
                }),
                None,
            ),
            None,
        ),
    }
}

fn progress(stage: Option<CallStage>, message: &str, percent: Option<f32>) -> Body {
    Body::CallProgress(CallProgress {
        message: message.into(),
        percent,
        stage,
    })
}

/// Takes call `id` from the controller: refused (the `Error` to answer with) when its id was
/// seen before, its capability is unknown or its arguments do not fit; otherwise started on its
/// own task.
pub fn admit(agent: &Arc<Agent>, id: MessageId, call: CapabilityCall) -> Option<ErrorBody> {
    let refuse = |code, message| Some(ErrorBody { code, message });
    if let Err(duplicate) = agent.calls.check(id) {
        warn!(call = %id, capability = %call.capability, "{duplicate}");
        return refuse(ErrorCode::DuplicateCall, duplicate.to_string());
    }
    let Some(info) = agent.capabilities.info(&call.capability) else {
        warn!(capability = %call.capability, "unknown capability called");
        let error = CapabilityError::Unknown {
            name: call.capability.chars().take(128).collect(),
        };
        return refuse(ErrorCode::UnknownCapability, error.to_string());
    };
    let args = match check_args(&info, &call.args) {
        Ok(args) => args,
        Err(error) => {
            return refuse(
                ErrorCode::BadArguments,
                format!("bad arguments for {}: {error}", info.name),
            )
        }
    };
    let ticket = match agent.calls.admit(id, &info.name) {
        Ok(ticket) => ticket,
        Err(duplicate) => return refuse(ErrorCode::DuplicateCall, duplicate.to_string()),
    };
    let exclusive = info.takes_exclusive_lock(&args);
    let call = CapabilityCall {
        capability: info.name,
        args,
    };
    tokio::spawn(run_call(agent.clone(), call, exclusive, ticket));
    None
}

/// Handles a `CancelCall` naming call `re`: what to answer, if anything. A running call is told
/// to stop (its result says how it ended); a finished one's result is sent again (the
/// controller may have missed it); an unknown one is refused as `unknown_call`.
pub fn cancel(agent: &Agent, re: Option<MessageId>) -> Option<Body> {
    let unknown = |message: String| {
        Some(Body::Error(ErrorBody {
            code: ErrorCode::UnknownCall,
            message,
        }))
    };
    let Some(id) = re else {
        return unknown("cancel_call names no call (its `re` is empty)".into());
    };
    match agent.calls.cancel(id) {
        Cancel::Signalled => {
            info!(call = %id, "call cancelled by the controller");
            None
        }
        Cancel::Finished => agent.calls.result(id).map(Body::CallResult),
        Cancel::Unknown => unknown(format!("no call {id} runs on this agent")),
    }
}

/// Serves admitted call `ticket` of `call` (arguments checked, defaults filled in) to its end.
pub async fn run_call(agent: Arc<Agent>, call: CapabilityCall, exclusive: bool, ticket: Ticket) {
    let id = ticket.id;
    // `running` implies `received`: only a call that may wait for the lock says both (a
    // message fewer per call for a fleet-wide job of a non-exclusive capability).
    let _lock = if exclusive {
        agent
            .send_for_call(id, progress(Some(CallStage::Received), "received", None))
            .await;
        tokio::select! {
            guard = agent.exclusive.lock() => Some(guard),
            () = ticket.cancelled() => {
                let (result, _) = to_result(&call.capability, Ok(Err(CapabilityError::Cancelled { output: Value::Null })));
                deliver(&agent, id, result, None).await;
                return;
            }
        }
    } else {
        None
    };
    agent
        .send_for_call(id, progress(Some(CallStage::Running), "running", None))
        .await;
    info!(capability = %call.capability, call = %id, "serving call");
    let output = Arc::new(OutputBuffer::default());
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<(String, Option<f32>)>();
    let runner = {
        let agent = agent.clone();
        let call = call.clone();
        let output = output.clone();
        let ctx = CallContext::new()
            .with_progress(move |message, percent| {
                let _ = progress_tx.send((message.to_owned(), percent));
            })
            .with_output(move |stream, data| output.push(stream, data))
            .with_cancel(ticket.signal());
        tokio::task::spawn_blocking(move || {
            agent.capabilities.call(&call.capability, &call.args, &ctx)
        })
    };
    tokio::pin!(runner);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            Some((message, percent)) = progress_rx.recv() => {
                agent.send_for_call(id, progress(None, &message, percent)).await;
            }
            _ = flush.tick() => {
                for chunk in output.take() {
                    agent.send_for_call(id, Body::CallOutput(chunk)).await;
                }
            }
            joined = &mut runner => break joined,
        }
    };
    for chunk in output.take() {
        agent.send_for_call(id, Body::CallOutput(chunk)).await;
    }
    // A partial inspection (`only`) must not replace the stored full inventory.
    if let Ok(Ok(inventory)) = &ended {
        if call.capability == "inspect" && call.args.get("only").is_none() {
            agent.refresh_after_inspect(inventory).await;
        }
    }
    let (result, refusal) = to_result(&call.capability, ended);
    if let CallOutcome::Failed(report) | CallOutcome::TimedOut(report) = &result.outcome {
        warn!(capability = %call.capability, call = %id, error = %report, "call did not succeed");
    }
    deliver(&agent, id, result, refusal).await;
}

/// Records the result and sends it (or the refusal) to the registered session, if any.
async fn deliver(agent: &Agent, id: MessageId, result: CallResult, refusal: Option<ErrorBody>) {
    agent.calls.finish(id, result.clone(), false);
    let body = match refusal {
        Some(error) => Body::Error(error),
        None => Body::CallResult(result),
    };
    if agent.send_for_call(id, body).await {
        agent.calls.mark_sent(id);
    }
}

#[cfg(test)]
mod session_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ok(n: u64) -> CallResult {
        CallResult {
            outcome: CallOutcome::Succeeded(Value::from(n)),
            output: None,
        }
    }

    #[test]
    fn a_call_id_is_admitted_once_running_or_finished() {
        let table = CallTable::new();
        let _ticket = table.admit(MessageId(7), "run").unwrap();
        assert_eq!(
            table.admit(MessageId(7), "run").err(),
            Some(Duplicate::Running(MessageId(7)))
        );
        table.finish(MessageId(7), ok(1), true);
        assert_eq!(
            table.admit(MessageId(7), "inspect").err(),
            Some(Duplicate::Ran(MessageId(7)))
        );
        assert!(table.admit(MessageId(8), "run").is_ok());
        assert_eq!(table.running(), 1);
    }

    #[test]
    fn ids_are_refused_long_after_they_stop_being_reported() {
        let table = CallTable::with_limits(2, KEEP_FOR, 5);
        for n in 0..5 {
            table.admit(MessageId(n), "run").unwrap();
            table.finish(MessageId(n), ok(n), true);
        }
        let reported: Vec<u64> = table.records().iter().map(|r| r.id.0).collect();
        assert_eq!(reported, vec![3, 4]);
        assert!(table.admit(MessageId(0), "run").is_err());
        // Beyond `remember` the oldest id is forgotten.
        table.admit(MessageId(5), "run").unwrap();
        assert!(table.admit(MessageId(0), "run").is_ok());
    }

    #[test]
    fn records_list_running_then_finished_with_results() {
        let table = CallTable::new();
        table.admit(MessageId(20), "run").unwrap();
        table.admit(MessageId(10), "run").unwrap();
        table.admit(MessageId(30), "inspect").unwrap();
        table.finish(MessageId(30), ok(3), false);
        let records = table.records();
        let ids: Vec<u64> = records.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![10, 20, 30]);
        assert!(records[0].finished.is_none());
        let finished = records[2].finished.as_ref().unwrap();
        assert_eq!(finished.result, ok(3));
        assert_eq!(records[2].capability, "inspect");
        // Times are RFC 3339 and in order.
        let started = humantime::parse_rfc3339(&records[2].started_at).unwrap();
        let ended = humantime::parse_rfc3339(&finished.finished_at).unwrap();
        assert!(started <= ended);
    }

    #[test]
    fn old_results_age_out_of_the_report() {
        let table = CallTable::with_limits(256, Duration::ZERO, 1000);
        table.admit(MessageId(1), "run").unwrap();
        assert_eq!(table.records().len(), 1, "running calls never age out");
        table.finish(MessageId(1), ok(1), true);
        assert!(table.records().is_empty());
        assert!(table.admit(MessageId(1), "run").is_err());
    }

    #[test]
    fn kept_results_stay_within_the_byte_budget_slimming_delivered_ones_first() {
        let big = |n: u64| CallResult {
            outcome: CallOutcome::Failed(ErrorReport {
                message: format!("command exited with status {n}"),
                causes: Vec::new(),
            }),
            output: Some(serde_json::json!({
                "exit_code": n,
                "stdout": {"head": "é".repeat(6000), "tail": format!("{}END{n}", "x".repeat(9000))},
            })),
        };
        let table = CallTable::new().with_byte_budget(40_000);
        for n in 1..=3 {
            table.admit(MessageId(n), "run").unwrap();
        }
        table.finish(MessageId(1), big(1), false);
        table.finish(MessageId(2), big(2), true);
        table.finish(MessageId(3), big(3), false);
        let records = table.records();
        let output = |i: usize| {
            records[i]
                .finished
                .as_ref()
                .unwrap()
                .result
                .output
                .clone()
                .unwrap()
        };
        // The delivered one went first and kept its shape, start and end.
        let slimmed = output(1);
        assert_eq!(slimmed["truncated_by_agent"], true);
        assert_eq!(slimmed["exit_code"], 2);
        let tail = slimmed["stdout"]["tail"].as_str().unwrap();
        assert!(tail.len() < 5000 && tail.ends_with("END2") && tail.contains("bytes omitted"));
        let head = slimmed["stdout"]["head"].as_str().unwrap();
        assert!(head.starts_with('é') && head.len() < 5000);
        // Then the oldest undelivered one; the newest stays whole.
        assert_eq!(output(0)["truncated_by_agent"], true);
        assert_eq!(output(2), big(3).output.unwrap());
        let encoded: usize = records
            .iter()
            .map(|r| encoded_len(&r.finished.as_ref().unwrap().result))
            .sum();
        assert!(encoded <= 40_000, "{encoded}");
        // Aging out gives the bytes back.
        assert_eq!(table.lock().kept_bytes, encoded);
    }

    #[test]
    fn unsent_results_are_handed_out_once() {
        let table = CallTable::new();
        for n in 1..=3 {
            table.admit(MessageId(n), "run").unwrap();
        }
        table.finish(MessageId(1), ok(1), true);
        table.finish(MessageId(2), ok(2), false);
        table.finish(MessageId(3), ok(3), false);
        table.mark_sent(MessageId(3));
        let unsent: Vec<u64> = table.take_unsent().iter().map(|(id, _)| id.0).collect();
        assert_eq!(unsent, vec![2]);
        assert!(table.take_unsent().is_empty());
    }

    #[tokio::test]
    async fn cancel_signals_a_running_call_and_names_the_others() {
        let table = CallTable::new();
        let ticket = table.admit(MessageId(1), "run").unwrap();
        table.admit(MessageId(2), "run").unwrap();
        table.finish(MessageId(2), ok(2), true);
        assert_eq!(table.cancel(MessageId(3)), Cancel::Unknown);
        assert_eq!(table.cancel(MessageId(2)), Cancel::Finished);
        assert!(!ticket.signal().is_cancelled());
        assert_eq!(table.cancel(MessageId(1)), Cancel::Signalled);
        assert!(ticket.signal().is_cancelled());
        // The async wait completes (the wake-up was stored before anyone waited).
        tokio::time::timeout(Duration::from_secs(1), ticket.cancelled())
            .await
            .unwrap();
    }

    #[test]
    fn output_is_coalesced_in_order_and_bounded_with_offsets() {
        let buf = OutputBuffer::default();
        buf.push(OutputStream::Stdout, b"hello ");
        buf.push(OutputStream::Stderr, b"oops");
        buf.push(OutputStream::Stdout, b"world");
        let chunks = buf.take();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (
                chunks[0].stream,
                chunks[0].offset,
                chunks[0].data.as_slice()
            ),
            (OutputStream::Stdout, 0, &b"hello world"[..])
        );
        assert_eq!(
            (chunks[1].stream, chunks[1].offset),
            (OutputStream::Stderr, 0)
        );
        assert!(buf.take().is_empty());
        // More than a chunk between flushes: the oldest bytes go, offsets stay true.
        buf.push(OutputStream::Stdout, &vec![b'a'; CHUNK]);
        buf.push(OutputStream::Stdout, b"tail");
        buf.push(OutputStream::Stdout, &vec![b'b'; 3 * CHUNK]);
        buf.push(OutputStream::Stdout, b"end");
        let chunks = buf.take();
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        assert_eq!(chunk.data.len(), CHUNK);
        assert!(chunk.data.ends_with(b"bend"));
        let total = 11 + CHUNK + 4 + 3 * CHUNK + 3;
        assert_eq!(chunk.offset as usize + chunk.data.len(), total);
        buf.push(OutputStream::Stdout, b"!");
        assert_eq!(buf.take()[0].offset as usize, total);
    }

    #[test]
    fn each_ending_maps_to_its_outcome_and_output() {
        let output = serde_json::json!({"exit_code": 2});
        let (r, refusal) = to_result(
            "run",
            Ok(Err(CapabilityError::Unsuccessful {
                message: "command exited with status 2".into(),
                output: output.clone(),
            })),
        );
        assert!(refusal.is_none());
        assert!(
            matches!(&r.outcome, CallOutcome::Failed(e) if e.message == "command exited with status 2")
        );
        assert_eq!(r.output, Some(output.clone()));
        let (r, _) = to_result(
            "run",
            Ok(Err(CapabilityError::TimedOut {
                after: Duration::from_secs(5),
                output: output.clone(),
            })),
        );
        assert!(
            matches!(&r.outcome, CallOutcome::TimedOut(e) if e.message == "timed out after 5s")
        );
        assert_eq!(r.output, Some(output.clone()));
        let (r, _) = to_result(
            "run",
            Ok(Err(CapabilityError::Cancelled {
                output: Value::Null,
            })),
        );
        assert!(matches!(r.outcome, CallOutcome::Cancelled(_)));
        assert_eq!(r.output, None);
        let (r, refusal) = to_result(
            "run",
            Ok(Err(CapabilityError::BadArguments {
                capability: "run",
                reason: "give `command` or `shell`, not both".into(),
            })),
        );
        assert!(matches!(r.outcome, CallOutcome::Failed(_)));
        assert_eq!(refusal.map(|e| e.code), Some(ErrorCode::BadArguments));
    }
}
