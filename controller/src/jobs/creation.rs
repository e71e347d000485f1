//! Turning a job request into tasks: select hosts with the query, skip (and list) the ones
//! that are not online here, render each host's arguments, check them against the schema the
//! host's agent announced, and refuse the whole job, naming host, argument and reason, before
//! anything is dispatched.

use std::sync::Arc;
use std::time::Duration;

use qs_proto::{check_args, CapabilityInfo, MercuryId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::engine::{now, Jobs};
use super::model::{JobRecord, JobState, Skipped, TaskRecord, TaskState, Transition, Work};
use crate::store::{Collection, StoreError};

/// A job request (`POST /api/v1/jobs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The filter selecting hosts (a MongoDB query document).
    pub query: Value,
    /// The capability each task calls.
    #[serde(default)]
    pub capability: Option<String>,
    /// Or the plan each task runs (`SET/NAME`).
    #[serde(default)]
    pub plan: Option<String>,
    /// Arguments (may hold templates rendered per host).
    #[serde(default)]
    pub args: Value,
    /// Per-task deadline: seconds, or a duration like `10m`.
    #[serde(default)]
    pub timeout: Option<Value>,
    /// Show hosts and rendered arguments; create nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The operator confirmed a destructive capability.
    #[serde(default)]
    pub confirm: bool,
}

/// Who asks, as the API's token gate knows them.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The token's name.
    pub name: String,
    /// Whether the token may run destructive capabilities (role admin).
    pub admin: bool,
    /// The inventory segment the token is restricted to.
    pub segment: Option<Value>,
}

/// Why a job was not created.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The query selects no host this controller can reach.
    #[error("{0}")]
    NoHosts(String),
    /// A selected host does not offer the capability.
    #[error("host {host} does not offer capability {capability:?}")]
    UnknownCapability {
        /// The host.
        host: String,
        /// The capability.
        capability: String,
    },
    /// A host's arguments do not fit its capability's schema, or a template failed.
    #[error("host {host}: {reason}")]
    BadArguments {
        /// The host.
        host: String,
        /// Which argument and why.
        reason: String,
    },
    /// A destructive capability was not confirmed.
    #[error("{capability} is destructive and would touch {hosts} host(s): confirm to go on")]
    ConfirmationRequired {
        /// The capability (or plan).
        capability: String,
        /// How many hosts.
        hosts: usize,
    },
    /// The caller's role may not run destructive capabilities.
    #[error("{0} is destructive: it needs an admin token")]
    Forbidden(String),
    /// The plan does not exist or does not validate.
    #[error("{0}")]
    Plan(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What a created (or dry-run) job answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Created {
    /// The job (None for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRecord>,
    /// For a dry run: each host and its rendered arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Value>,
    /// Selected hosts without a task.
    pub skipped: Vec<Skipped>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// One host's task before it is a record.
struct Planned {
    host: String,
    args: Value,
    /// `args` with secret values replaced, when some are secret (stored and shown instead).
    redacted: Option<Value>,
    exclusive: bool,
    timeout_s: u64,
}

impl Planned {
    /// The arguments as they may be stored and shown.
    fn shown_args(&self) -> &Value {
        self.redacted.as_ref().unwrap_or(&self.args)
    }
}

fn parse_timeout(value: &Option<Value>) -> Result<Option<Duration>, JobError> {
    let bad =
        || JobError::BadRequest("timeout must be positive seconds or a duration like 10m".into());
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => humantime::parse_duration(s)
            .ok()
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Whether any string in `args` is a template.
fn has_templates(args: &Value) -> bool {
    mentions(args, "")
}

impl Jobs {
    /// Creates a job (or, for a dry run, shows what it would do).
    pub async fn create(
        self: &Arc<Self>,
        request: JobRequest,
        requester: &Requester,
    ) -> Result<Created, JobError> {
        let work = match (&request.capability, &request.plan) {
            (Some(c), None) if !c.is_empty() => Work::Capability(c.clone()),
            (None, Some(p)) if !p.is_empty() => Work::Plan(p.clone()),
            _ => {
                return Err(JobError::BadRequest(
                    "give exactly one of capability or plan".into(),
                ))
            }
        };
        if !request.query.is_object() {
            return Err(JobError::BadRequest(
                "query must be a filter document, e.g. {\"dmi.product_name\": \"R640\"}".into(),
            ));
        }
        let args = match &request.args {
            Value::Null => Value::Object(Map::new()),
            Value::Object(_) => request.args.clone(),
            _ => return Err(JobError::BadRequest("args must be an object".into())),
        };
        let timeout = parse_timeout(&request.timeout)?;
        if let Some(t) = timeout {
            if t > self.dispatcher.max_timeout() {
                return Err(JobError::BadRequest(format!(
                    "timeout {} exceeds --max-call-timeout",
                    humantime::format_duration(t)
                )));
            }
        }
        let plan = match &work {
            Work::Plan(name) => Some(self.load_plan(name)?),
            Work::Capability(_) => None,
        };
        let filter = match &requester.segment {
            Some(segment) => json!({"$and": [request.query, segment]}),
            None => request.query.clone(),
        };
        let templated = has_templates(&args)
            || plan
                .as_ref()
                .is_some_and(|p| p.all_steps().any(|s| has_templates(&s.args)));
        let reads_assets = mentions(&args, "assets")
            || plan
                .as_ref()
                .is_some_and(|p| p.all_steps().any(|s| mentions(&s.args, "assets")));
        let reads_inventory = mentions(&args, "inventory")
            || plan
                .as_ref()
                .is_some_and(|p| p.all_steps().any(|s| mentions(&s.args, "inventory")));
        let mut find = json!({"filter": filter, "sort": {"mercury_id": 1}});
        // Whole documents only when a template reads them (10,000 inventories are costly to
        // decode); asset sets are found by MercuryId and serials.
        if !reads_inventory {
            find["projection"] = json!({
                "mercury_id": 1, "agent": 1, "dmi.product_serial": 1, "dmi.chassis_serial": 1
            });
        }
        let query = qs_query::Query::from_request(&find)
            .map_err(|e| JobError::BadRequest(format!("bad query: {e}")))?;
        let docs = self.store.find(&query).await?;
        if docs.is_empty() {
            return Err(JobError::NoHosts("the query selects no host".into()));
        }
        // Every selected host's asset set in one pass, when a template reads them.
        let mut assets = if reads_assets {
            let refs: Vec<&Value> = docs.iter().collect();
            crate::assets::assets_for_many(&self.store, &refs).await?
        } else {
            Vec::new()
        }
        .into_iter();
        let mut skipped = Vec::new();
        let mut planned = Vec::new();
        let mut job_args_redacted: Option<Value> = None;
        let mut destructive = false;
        for doc in docs {
            let host_assets = assets.next().flatten();
            let Some(host) = doc
                .get("mercury_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let Ok(id) = host.parse::<MercuryId>() else {
                continue;
            };
            let Some(capabilities) = self
                .registry
                .connection(&id)
                .filter(|c| !c.is_closed())
                .and_then(|_| self.registry.capabilities(&id))
            else {
                skipped.push(Skipped {
                    reason: offline_reason(&doc, self.registry.controller()),
                    host,
                });
                continue;
            };
            let context = templated.then(|| qs_plans::HostContext::new(&host, doc, host_assets));
            let render = |args: &Value| -> Result<Value, JobError> {
                match &context {
                    Some(ctx) if has_templates(args) => qs_plans::render_args(args, ctx.as_value())
                        .map_err(|e| JobError::BadArguments {
                            host: host.clone(),
                            reason: e.to_string(),
                        }),
                    _ => Ok(args.clone()),
                }
            };
            let find_capability = |name: &str| -> Result<&CapabilityInfo, JobError> {
                capabilities.iter().find(|c| c.name == name).ok_or_else(|| {
                    JobError::UnknownCapability {
                        host: host.clone(),
                        capability: name.to_owned(),
                    }
                })
            };
            match &plan {
                None => {
                    let Work::Capability(name) = &work else {
                        return Err(JobError::Plan(format!(
                            "{} was not loaded",
                            work.describe()
                        )));
                    };
                    let info = find_capability(name)?;
                    let mut rendered = render(&args)?;
                    // A capability with its own `timeout` argument is given the task's deadline.
                    if let (Some(t), Some(map)) = (timeout, rendered.as_object_mut()) {
                        if info
                            .args
                            .iter()
                            .any(|a| a.name == "timeout" && a.kind == "integer")
                            && !map.contains_key("timeout")
                        {
                            map.insert("timeout".into(), t.as_secs().max(1).into());
                        }
                    }
                    let checked =
                        check_args(info, &rendered).map_err(|e| JobError::BadArguments {
                            host: host.clone(),
                            reason: e.to_string(),
                        })?;
                    destructive |= info.destructive;
                    let exclusive = info.takes_exclusive_lock(&checked);
                    let timeout_s = timeout
                        .map(|t| t.as_secs().max(1))
                        .or((info.default_timeout > 0).then_some(info.default_timeout))
                        .unwrap_or(self.config.default_timeout.as_secs());
                    if job_args_redacted.is_none() {
                        job_args_redacted = info.redact(&args);
                    }
                    planned.push(Planned {
                        host: host.clone(),
                        redacted: info.redact(&checked),
                        args: checked,
                        exclusive,
                        timeout_s,
                    });
                }
                Some(plan) => {
                    let mut longest = 0;
                    for step in plan.all_steps() {
                        let info = find_capability(&step.capability)?;
                        destructive |= info.destructive;
                        // Step arguments that read earlier steps render when the step runs.
                        if !mentions(&step.args, "steps") {
                            let rendered = render(&step.args)?;
                            check_args(info, &rendered).map_err(|e| JobError::BadArguments {
                                host: host.clone(),
                                reason: format!("step {}: {e}", step.name),
                            })?;
                        }
                        let t = step
                            .timeout
                            .or(timeout)
                            .map(|t| t.as_secs().max(1))
                            .or((info.default_timeout > 0).then_some(info.default_timeout))
                            .unwrap_or(self.config.default_timeout.as_secs());
                        longest = longest.max(t);
                    }
                    planned.push(Planned {
                        host: host.clone(),
                        args: args.clone(),
                        redacted: None,
                        exclusive: false,
                        timeout_s: longest,
                    });
                }
            }
        }
        if planned.is_empty() {
            return Err(JobError::NoHosts(format!(
                "none of the {} selected host(s) is online here ({})",
                skipped.len(),
                skipped
                    .iter()
                    .take(5)
                    .map(|s| format!("{}: {}", s.host, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        if destructive && !request.dry_run {
            if !requester.admin {
                return Err(JobError::Forbidden(work.describe()));
            }
            if !request.confirm {
                return Err(JobError::ConfirmationRequired {
                    capability: work.describe(),
                    hosts: planned.len(),
                });
            }
        }
        if request.dry_run {
            return Ok(Created {
                job: None,
                hosts: planned
                    .iter()
                    .map(|p| json!({"host": p.host, "args": p.shown_args(), "timeout_s": p.timeout_s}))
                    .collect(),
                skipped,
                dry_run: true,
            });
        }
        let created_at = now();
        let job = JobRecord {
            id: self.next_job_id(),
            created_at: created_at.clone(),
            created_by: requester.name.clone(),
            query: request.query,
            work: work.clone(),
            args: job_args_redacted.unwrap_or(args),
            timeout_s: timeout.map_or(0, |t| t.as_secs()),
            destructive,
            state: JobState::Running,
            tasks: planned.len() as u64,
            skipped: skipped.clone(),
            cancel_requested: false,
            finished_at: None,
            outcome: None,
        };
        // Secret argument values stay in memory only; the records hold them redacted.
        let mut secrets = std::collections::HashMap::new();
        let tasks: Vec<TaskRecord> = planned
            .into_iter()
            .enumerate()
            .map(|(i, p)| TaskRecord {
                id: format!("{}.{i}", job.id),
                job: job.id.clone(),
                host: p.host,
                work: work.clone(),
                secret_args: p.redacted.is_some(),
                args: match p.redacted {
                    Some(redacted) => {
                        secrets.insert(format!("{}.{i}", job.id), p.args);
                        redacted
                    }
                    None => p.args,
                },
                timeout_s: p.timeout_s,
                destructive,
                exclusive: p.exclusive,
                call_id: self.dispatcher.next_id().0,
                state: TaskState::Queued,
                state_reason: String::new(),
                transitions: vec![Transition {
                    state: TaskState::Queued,
                    at: created_at.clone(),
                    reason: String::new(),
                }],
                output: None,
                error: None,
                progress: None,
                steps: Vec::new(),
                late_results: Vec::new(),
            })
            .collect();
        // Durable before anything is sent: a restart finds every task it may have dispatched.
        self.writer
            .put(Collection::Jobs, &job.id, serde_json::to_value(&job).ok());
        for t in &tasks {
            self.writer
                .put(Collection::Tasks, &t.id, serde_json::to_value(t).ok());
        }
        self.writer
            .durable()
            .await
            .map_err(|e| JobError::Store(StoreError::Task(e.to_string())))?;
        tracing::info!(job = %job.id, work = %work.describe(), tasks = tasks.len(), skipped = skipped.len(), by = %requester.name, "job created");
        self.start(job.clone(), tasks, secrets);
        Ok(Created {
            job: Some(job),
            hosts: Vec::new(),
            skipped,
            dry_run: false,
        })
    }
}

/// Whether a template in `args` names `word` (a cheap over-approximation of "reads it").
fn mentions(args: &Value, word: &str) -> bool {
    match args {
        Value::String(s) => qs_plans::template::is_template(s) && s.contains(word),
        Value::Array(items) => items.iter().any(|v| mentions(v, word)),
        Value::Object(map) => map.values().any(|v| mentions(v, word)),
        _ => false,
    }
}

/// Why a selected host gets no task.
fn offline_reason(doc: &Value, me: &str) -> String {
    let agent = doc.get("agent");
    let online = agent
        .and_then(|a| a.get("online"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let controller = agent
        .and_then(|a| a.get("controller"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if online && !controller.is_empty() && controller != me {
        return format!("served by controller {controller}");
    }
    match agent
        .and_then(|a| a.get("last_seen"))
        .and_then(Value::as_str)
    {
        Some(seen) => format!("offline (last seen {seen})"),
        None => "offline (never registered)".into(),
    }
}
