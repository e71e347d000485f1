//! `/api/v1/jobs`, `/api/v1/tasks` and `/api/v1/capabilities`: create, list, show, cancel and
//! watch jobs; show tasks and their logs; list what agents can do.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, parse_id, ApiError, AppState};
use crate::jobs::{JobError, JobRecord, JobRequest, Requester, TaskRecord, TaskState};
use crate::security::caller::Caller;
use crate::security::tokens::Role;
use crate::store::Collection;

fn job_error(error: JobError) -> ApiError {
    let message = error.to_string();
    match error {
        JobError::BadRequest(_) | JobError::Plan(_) => {
            ApiError::bad_request("bad_request", message)
        }
        JobError::NoHosts(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_online_hosts", message)
        }
        JobError::UnknownCapability { .. } => ApiError::bad_request("unknown_capability", message),
        JobError::BadArguments { .. } => ApiError::bad_request("bad_arguments", message),
        JobError::ConfirmationRequired { .. } => {
            ApiError::new(StatusCode::CONFLICT, "confirmation_required", message)
        }
        JobError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
        JobError::Store(e) => ApiError::internal(&e),
    }
}

/// Who creates a job, from the token the gate checked: its name, whether it may run
/// destructive capabilities (admin), and the segment it is restricted to.
fn requester(caller: Option<Extension<Caller>>) -> Requester {
    match caller {
        Some(Extension(caller)) => Requester {
            admin: caller.role >= Role::Admin,
            name: caller.name,
            segment: caller.segment,
        },
        // Behind the gate every request has a caller; without one, nothing destructive.
        None => Requester::default(),
    }
}

/// Whether a caller may see a job: every job for an unrestricted token; only its own for a
/// segment-restricted one (the gate lets those through because these handlers check).
fn visible(caller: &Option<Extension<Caller>>, job: &JobRecord) -> bool {
    match caller {
        Some(Extension(c)) if c.segment.is_some() => job.created_by == c.name,
        _ => true,
    }
}

/// A job the caller may see, or 404.
async fn visible_job(
    state: &AppState,
    caller: &Option<Extension<Caller>>,
    id: &str,
) -> Result<JobRecord, ApiError> {
    let job = load_job(state, id).await?;
    if visible(caller, &job) {
        Ok(job)
    } else {
        Err(ApiError::not_found(format!("no job {id}")))
    }
}

/// `POST /api/v1/jobs`: 201 with the job, or 200 with the hosts of a dry run.
pub async fn create(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: JobRequest = serde_json::from_value(json_body(body)?)
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let requester = requester(caller);
    let created = state
        .jobs
        .create(request, &requester)
        .await
        .map_err(job_error)?;
    let status = if created.dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(serde_json::to_value(&created).unwrap_or(Value::Null)),
    ))
}

/// `?state=S` of `GET /api/v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    limit: Option<u64>,
}

/// A job with live counts when it runs.
fn with_counts(state: &AppState, job: JobRecord) -> Value {
    let (job, counts) = match state.jobs.live_counts(&job.id) {
        Some((live, counts)) => (live, counts),
        None => {
            let counts = job.outcome.clone().unwrap_or(Value::Null);
            (job, counts)
        }
    };
    let mut value = serde_json::to_value(&job).unwrap_or(Value::Null);
    value["counts"] = counts;
    value
}

/// `GET /api/v1/jobs`: newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    UrlQuery(params): UrlQuery<ListParams>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let mut filter = json!({});
    if let Some(Extension(c)) = caller.as_ref().filter(|c| c.segment.is_some()) {
        filter["created_by"] = json!(c.name);
    }
    if let Some(s) = &params.state {
        if !["running", "succeeded", "failed", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("state must be running, succeeded, failed or cancelled, not {s:?}"),
            ));
        }
        filter["state"] = json!(s);
    }
    let query = qs_query::Query::from_request(&json!({
        "filter": filter,
        "sort": {"created_at": -1, "id": -1},
        "limit": params.limit.unwrap_or(200).min(10_000),
    }))
    .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let jobs = state
        .store
        .find_records(Collection::Jobs, &query)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(
        jobs.into_iter()
            .filter_map(|v| serde_json::from_value::<JobRecord>(v).ok())
            .map(|job| with_counts(&state, job))
            .collect(),
    ))
}

async fn load_job(state: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    if let Some((job, _)) = state.jobs.live_counts(id) {
        return Ok(job);
    }
    let value = state
        .store
        .get_record(Collection::Jobs, id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    serde_json::from_value(value).map_err(|e| ApiError::internal(&e))
}

/// Seconds from one RFC 3339 time to another.
fn seconds_between(from: Option<&str>, to: Option<&str>) -> Option<f64> {
    use time::format_description::well_known::Rfc3339;
    let parse = |s: &str| time::OffsetDateTime::parse(s, &Rfc3339).ok();
    let (a, b) = (parse(from?)?, parse(to?)?);
    Some((b - a).as_seconds_f64())
}

/// One line per task: host, state, reason, how long it ran.
fn task_summary(task: &TaskRecord) -> Value {
    let started = task
        .entered(TaskState::Dispatched)
        .or_else(|| task.entered(TaskState::Queued));
    let ended = task
        .state
        .is_final()
        .then(|| task.transitions.last().map(|t| t.at.as_str()))
        .flatten();
    json!({
        "id": task.id,
        "host": task.host,
        "state": task.state,
        "reason": task.state_reason,
        "started_at": started,
        "finished_at": ended,
        "seconds": seconds_between(started, ended),
    })
}

/// `?tasks=false` of `GET /api/v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
pub struct ShowParams {
    tasks: Option<bool>,
}

/// `GET /api/v1/jobs/{id}`: the job, counts per state, every task's outcome, slowest hosts;
/// with `?tasks=false` the job and its counts only (from memory while it runs: what `qs jobs
/// watch` polls, cheap at any fleet size).
pub async fn show(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    UrlQuery(params): UrlQuery<ShowParams>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &caller, &id).await?;
    if params.tasks == Some(false) {
        return Ok(Json(with_counts(&state, job)));
    }
    let tasks = state
        .jobs
        .job_tasks(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let summaries: Vec<Value> = tasks.iter().map(task_summary).collect();
    let mut slowest: Vec<&Value> = summaries
        .iter()
        .filter(|s| s["seconds"].is_number())
        .collect();
    slowest.sort_by(|a, b| {
        b["seconds"]
            .as_f64()
            .partial_cmp(&a["seconds"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let slowest: Vec<Value> = slowest.into_iter().take(5).cloned().collect();
    let mut counts: BTreeMap<&str, u64> = TaskState::ALL.iter().map(|s| (s.name(), 0)).collect();
    for t in &tasks {
        *counts.entry(t.state.name()).or_default() += 1;
    }
    let mut out = with_counts(&state, job);
    out["counts"] = json!(counts);
    out["task_list"] = json!(summaries);
    out["slowest"] = json!(slowest);
    Ok(Json(out))
}

/// `POST /api/v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &caller, &id).await?;
    if state.jobs.cancel(&id) {
        Ok(Json(json!({"id": id, "cancel_requested": true})))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("job {id} already finished ({})", job.state.name()),
        ))
    }
}

/// `GET /api/v1/jobs/{id}/events`: server-sent events. First the job (`job`, with counts)
/// and each task's current state (`task`), then one `task` event per transition as it
/// happens, `lagged` when this watcher fell behind (re-read the job), and `end` once the job
/// finished. A transition may appear twice around the snapshot; each carries its time.
pub async fn events(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before the snapshot so nothing falls between them.
    let receiver = state.jobs.subscribe();
    let job = visible_job(&state, &caller, &id).await?;
    let tasks = state
        .jobs
        .job_tasks(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut snapshot: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    snapshot.push_back(
        Event::default()
            .event("job")
            .json_data(with_counts(&state, job))
            .unwrap_or_default(),
    );
    for t in &tasks {
        let last = t.transitions.last();
        let event = crate::jobs::TaskEvent {
            job: t.job.clone(),
            task: t.id.clone(),
            host: t.host.clone(),
            state: t.state,
            reason: t.state_reason.clone(),
            at: last.map(|l| l.at.clone()).unwrap_or_default(),
        };
        snapshot.push_back(
            Event::default()
                .event("task")
                .json_data(&event)
                .unwrap_or_default(),
        );
    }
    let jobs = state.jobs.clone();
    let stream = futures::stream::unfold(
        (receiver, snapshot, false),
        move |(mut rx, mut snapshot, done)| {
            let jobs = jobs.clone();
            let id = id.clone();
            async move {
                if let Some(event) = snapshot.pop_front() {
                    return Some((Ok(event), (rx, snapshot, false)));
                }
                if done {
                    return None;
                }
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
                    match next {
                        Ok(Ok(event)) if event.job == id => {
                            let e = Event::default()
                                .event("task")
                                .json_data(&event)
                                .unwrap_or_default();
                            return Some((Ok(e), (rx, snapshot, false)));
                        }
                        Ok(Ok(_)) => continue,
                        Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                            let e = Event::default()
                                .event("lagged")
                                .json_data(json!({"missed": n}))
                                .unwrap_or_default();
                            return Some((Ok(e), (rx, snapshot, false)));
                        }
                        Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                        Err(_) => {}
                    }
                    if jobs.live_counts(&id).is_none() {
                        let e = Event::default()
                            .event("end")
                            .json_data(json!({"job": id}))
                            .unwrap_or_default();
                        return Some((Ok(e), (rx, snapshot, true)));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// 404 unless the caller may see the task's job (a task id is `JOB.N`).
async fn task_visible(
    state: &AppState,
    caller: &Option<Extension<Caller>>,
    task: &str,
) -> Result<(), ApiError> {
    if caller.as_ref().is_some_and(|c| c.segment.is_some()) {
        let job = task.rsplit_once('.').map_or(task, |(job, _)| job);
        visible_job(state, caller, job)
            .await
            .map_err(|_| ApiError::not_found(format!("no task {task}")))?;
    }
    Ok(())
}

/// `GET /api/v1/tasks/{id}`.
pub async fn task(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_visible(&state, &caller, &id).await?;
    if let Some((task, _)) = state.jobs.live_task(&id) {
        return Ok(Json(serde_json::to_value(task).unwrap_or(Value::Null)));
    }
    state
        .store
        .get_record(Collection::Tasks, &id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no task {id}")))
}

/// `?step=NAME` of `GET /api/v1/tasks/{id}/logs`.
#[derive(Debug, Deserialize)]
pub struct LogParams {
    step: Option<String>,
}

/// `GET /api/v1/tasks/{id}/logs`: `{stdout, stderr, finished}` (each stream's head, tail,
/// total and dropped bytes).
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
    UrlQuery(params): UrlQuery<LogParams>,
) -> Result<Json<Value>, ApiError> {
    task_visible(&state, &caller, &id).await?;
    let key = match &params.step {
        Some(step) => format!("{id}/{step}"),
        None => id.clone(),
    };
    if let Some(log) = state.jobs.live_log(&key) {
        return Ok(Json(log));
    }
    if let Some(log) = state
        .store
        .get_record(Collection::TaskLogs, &key)
        .await
        .map_err(|e| ApiError::internal(&e))?
    {
        return Ok(Json(log));
    }
    // A task that never wrote anything has empty logs; an unknown task is a 404.
    let exists = state
        .store
        .get_record(Collection::Tasks, &id)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    match exists {
        Some(task) => Ok(Json(json!({
            "stdout": crate::jobs::logs::StreamText::default(),
            "stderr": crate::jobs::logs::StreamText::default(),
            "finished": task["state"].as_str().and_then(TaskState::parse).is_some_and(TaskState::is_final),
        }))),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}

/// `GET /api/v1/capabilities`: every capability some agent announced, with how many hosts
/// offer it (from the stored agent records, so every controller sharing a store agrees).
pub async fn capabilities(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let pipeline = qs_query::Pipeline::parse(&json!([
        {"$match": {"agent.capabilities.name": {"$exists": true}}},
        {"$unwind": "$agent.capabilities"},
        {"$group": {
            "_id": "$agent.capabilities.name",
            "info": {"$last": "$agent.capabilities"},
            "hosts": {"$sum": 1},
        }},
        {"$sort": {"_id": 1}},
    ]))
    .map_err(|e| ApiError::internal(&e))?;
    let store = state.store.clone();
    let rows = state
        .queries
        .run(async move {
            store
                .aggregate(&pipeline)
                .await
                .map_err(|e| ApiError::internal(&e))
        })
        .await?;
    Ok(Json(Value::Array(
        rows.into_iter()
            .map(|mut row| {
                let hosts = row["hosts"].take();
                let mut info = row["info"].take();
                info["hosts"] = hosts;
                info
            })
            .collect(),
    )))
}

/// `GET /api/v1/agents/{id}/capabilities`: what one host's agent announced.
pub async fn host_capabilities(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    if let Some(caps) = state.registry.capabilities(&id) {
        return Ok(Json(serde_json::to_value(caps).unwrap_or(Value::Null)));
    }
    let doc = state
        .store
        .get_inventory(id.as_str())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no host {id}")))?;
    Ok(Json(doc["agent"]["capabilities"].clone()))
}
