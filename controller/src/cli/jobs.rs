//! `qs jobs …`, `qs tasks …` and `qs capabilities`: fan a capability (or a plan) out to the
//! hosts a query selects, follow it, and read what each task did.

use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{ApiClient, ApiFailure};
use super::table;

#[derive(Debug, Subcommand)]
pub(super) enum JobsCmd {
    /// Create a job: one task per online host the query selects.
    Create {
        /// Filter selecting hosts (a MongoDB query document), e.g. '{"dmi.product_name": "R640"}'.
        #[arg(long)]
        query: String,
        /// The capability each task calls.
        #[arg(long, conflicts_with = "plan", required_unless_present = "plan")]
        capability: Option<String>,
        /// Or the plan each task runs (SET/NAME).
        #[arg(long)]
        plan: Option<String>,
        /// Arguments as a JSON object; strings may be templates ({{ inventory.dmi.product_serial }}).
        #[arg(long, default_value = "{}")]
        args: String,
        /// Per-task deadline, e.g. 90s, 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Show the hosts and each host's rendered arguments; create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go on with a destructive capability without asking.
        #[arg(long)]
        yes: bool,
        /// Print the created job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A job: counts per state, each host's outcome, the slowest hosts.
    Show {
        /// The job id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it ends: a live progress line; exits 0 only if every task succeeded.
    Watch {
        /// The job id.
        id: String,
    },
    /// Cancel what has not finished (running tasks are told to stop).
    Cancel {
        /// The job id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TasksCmd {
    /// One task: its host, state history, output, steps.
    Show {
        /// The task id (JOB.N).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What a task wrote (first and last MiB of each stream).
    Logs {
        /// The task id.
        id: String,
        /// A plan step's log instead of the task's.
        #[arg(long)]
        step: Option<String>,
        /// Keep printing new output until the task ends.
        #[arg(long)]
        follow: bool,
    },
}

pub(super) async fn run_jobs(cmd: JobsCmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        JobsCmd::Create {
            query,
            capability,
            plan,
            args,
            timeout,
            dry_run,
            yes,
            json,
        } => {
            let query: Value = serde_json::from_str(&query).context("--query is not JSON")?;
            let args: Value = serde_json::from_str(&args).context("--args is not JSON")?;
            let mut body = json!({
                "query": query,
                "args": args,
                "dry_run": dry_run,
                "confirm": yes,
            });
            if let Some(c) = capability {
                body["capability"] = json!(c);
            }
            if let Some(p) = plan {
                body["plan"] = json!(p);
            }
            if let Some(t) = timeout {
                body["timeout"] = json!(t.as_secs_f64());
            }
            let created: Value = match api.post("jobs", &body).await {
                Ok(created) => created,
                Err(error) => {
                    let Some(failure) = error.downcast_ref::<ApiFailure>() else {
                        return Err(error);
                    };
                    if failure.code != "confirmation_required" {
                        return Err(error);
                    }
                    if !std::io::stdin().is_terminal() {
                        bail!(
                            "{}; stdin is not a terminal, so pass --yes",
                            failure.message
                        );
                    }
                    eprint!("{}\nType yes to go on: ", failure.message);
                    std::io::stderr().flush().ok();
                    let mut answer = String::new();
                    std::io::stdin().read_line(&mut answer)?;
                    if answer.trim() != "yes" {
                        bail!("not confirmed: nothing was created");
                    }
                    body["confirm"] = json!(true);
                    api.post("jobs", &body).await?
                }
            };
            print_created(&created, json)
        }
        JobsCmd::List { state, json } => {
            let path = match &state {
                Some(s) => format!("jobs?state={s}"),
                None => "jobs".into(),
            };
            let jobs: Vec<Value> = api.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(());
            }
            let headers =
                ["ID", "STATE", "WORK", "TASKS", "DONE", "FAILED", "CREATED"].map(String::from);
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        table::cell(j.get("id")),
                        table::cell(j.get("state")),
                        work(j),
                        table::cell(j.get("tasks")),
                        table::cell(j.pointer("/counts/succeeded")),
                        failed(&j["counts"]).to_string(),
                        table::cell(j.get("created_at")),
                    ]
                })
                .collect();
            print!("{}", table::render(&headers, &rows));
            Ok(())
        }
        JobsCmd::Show { id, json } => {
            let job: Value = api.get(&format!("jobs/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
                return Ok(());
            }
            print_job(&job);
            Ok(())
        }
        JobsCmd::Watch { id } => watch(&api, &id).await,
        JobsCmd::Cancel { id } => {
            let answer: Value = api.post(&format!("jobs/{id}/cancel"), &json!({})).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}

fn work(job: &Value) -> String {
    match (job.pointer("/work/capability"), job.pointer("/work/plan")) {
        (Some(c), _) => table::cell(Some(c)),
        (_, Some(p)) => format!("plan {}", table::cell(Some(p))),
        _ => "-".into(),
    }
}

fn failed(counts: &Value) -> u64 {
    ["failed", "timed_out", "lost", "cancelled"]
        .iter()
        .filter_map(|s| counts.get(*s).and_then(Value::as_u64))
        .sum()
}

fn print_created(created: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        let out = if created["dry_run"] == true {
            created.clone()
        } else {
            let mut job = created["job"].clone();
            job["skipped"] = created["skipped"].clone();
            job
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if created["dry_run"] == true {
        let hosts = created["hosts"].as_array().cloned().unwrap_or_default();
        println!(
            "dry run: {} host(s) would get a task; nothing was created",
            hosts.len()
        );
        let headers = ["HOST", "TIMEOUT_S", "ARGS"].map(String::from);
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    table::cell(h.get("host")),
                    table::cell(h.get("timeout_s")),
                    h["args"].to_string(),
                ]
            })
            .collect();
        print!("{}", table::render(&headers, &rows));
    } else {
        println!(
            "job {} created: {} task(s)",
            table::cell(created.pointer("/job/id")),
            table::cell(created.pointer("/job/tasks"))
        );
    }
    for s in created["skipped"].as_array().into_iter().flatten() {
        println!(
            "skipped {}: {}",
            table::cell(s.get("host")),
            table::cell(s.get("reason"))
        );
    }
    Ok(())
}

fn print_job(job: &Value) {
    println!("job       {}", table::cell(job.get("id")));
    println!("work      {}", work(job));
    println!("state     {}", table::cell(job.get("state")));
    println!("query     {}", job["query"]);
    println!(
        "created   {} by {}",
        table::cell(job.get("created_at")),
        table::cell(job.get("created_by"))
    );
    if let Some(f) = job.get("finished_at").filter(|v| !v.is_null()) {
        println!("finished  {}", table::cell(Some(f)));
    }
    let counts: Vec<String> = job["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "tasks     {} ({})",
        table::cell(job.get("tasks")),
        counts.join(", ")
    );
    for s in job["skipped"].as_array().into_iter().flatten() {
        println!(
            "skipped   {}: {}",
            table::cell(s.get("host")),
            table::cell(s.get("reason"))
        );
    }
    println!();
    let headers = ["TASK", "HOST", "STATE", "SECONDS", "REASON"].map(String::from);
    let row = |t: &Value| {
        vec![
            table::cell(t.get("id")),
            table::cell(t.get("host")),
            table::cell(t.get("state")),
            t["seconds"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.1}")),
            table::cell(t.get("reason")),
        ]
    };
    let rows: Vec<Vec<String>> = job["task_list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    print!("{}", table::render(&headers, &rows));
    let slowest: Vec<Vec<String>> = job["slowest"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    if !slowest.is_empty() {
        println!("\nslowest hosts");
        print!("{}", table::render(&headers, &slowest));
    }
}

/// Polls the job and redraws one progress line; the exit status is the job's outcome.
async fn watch(api: &ApiClient, id: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let job: Value = api.get(&format!("jobs/{id}?tasks=false")).await?;
        let total = job["tasks"].as_u64().unwrap_or(0);
        let c = &job["counts"];
        let n = |s: &str| c.get(s).and_then(Value::as_u64).unwrap_or(0);
        let ok = n("succeeded");
        let bad = failed(c);
        let done = ok + bad;
        let running = n("dispatched") + n("received") + n("running");
        let queued = n("queued");
        let elapsed = started.elapsed().as_secs_f64();
        let eta = if done > 0 && done < total {
            let rate = done as f64 / elapsed.max(0.001);
            format!("ETA {:.0}s", (total - done) as f64 / rate)
        } else {
            "ETA -".into()
        };
        let width = 30usize;
        let filled = if total == 0 {
            width
        } else {
            (done as usize * width) / total as usize
        };
        let line = format!(
            "{id} [{}{}] {done}/{total} done: {ok} succeeded, {bad} failed, {running} running, {queued} queued, {eta}",
            "#".repeat(filled),
            ".".repeat(width - filled),
        );
        if line != last_line {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        let state = job["state"].as_str().unwrap_or("running");
        if state != "running" {
            if tty {
                eprintln!();
            }
            println!("job {id} {state}");
            if state == "succeeded" {
                return Ok(());
            }
            bail!("job {id} {state}: {bad} task(s) did not succeed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn run_tasks(cmd: TasksCmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        TasksCmd::Show { id, json } => {
            let task: Value = api.get(&format!("tasks/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&task)?);
                return Ok(());
            }
            println!("task      {}", table::cell(task.get("id")));
            println!("job       {}", table::cell(task.get("job")));
            println!("host      {}", table::cell(task.get("host")));
            println!(
                "state     {} {}",
                table::cell(task.get("state")),
                table::cell(task.get("state_reason"))
            );
            println!("args      {}", task["args"]);
            for t in task["transitions"].as_array().into_iter().flatten() {
                println!(
                    "  {}  {}  {}",
                    table::cell(t.get("at")),
                    table::cell(t.get("state")),
                    t.get("reason").and_then(Value::as_str).unwrap_or("")
                );
            }
            for s in task["steps"].as_array().into_iter().flatten() {
                let name = match s.get("recovers").and_then(Value::as_str) {
                    Some(of) => format!("{} (recovers {of})", table::cell(s.get("name"))),
                    None => table::cell(s.get("name")),
                };
                println!(
                    "step      {name}: {} {} {}",
                    table::cell(s.get("capability")),
                    table::cell(s.get("state")),
                    s.get("reason").and_then(Value::as_str).unwrap_or("")
                );
            }
            if let Some(o) = task.get("output").filter(|v| !v.is_null()) {
                println!("output    {o}");
            }
            if let Some(e) = task.get("error").filter(|v| !v.is_null()) {
                println!("error     {e}");
            }
            // The end of each log: the task's, or each step's for a plan task.
            let steps: Vec<String> = task["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| match s.get("recovers").and_then(Value::as_str) {
                    Some(of) => format!("{of}.{}", table::cell(s.get("name"))),
                    None => table::cell(s.get("name")),
                })
                .collect();
            let logs: Vec<(String, String)> = if steps.is_empty() {
                vec![("log".into(), format!("tasks/{id}/logs"))]
            } else {
                steps
                    .iter()
                    .map(|s| (format!("log {s}"), format!("tasks/{id}/logs?step={s}")))
                    .collect()
            };
            for (title, path) in logs {
                let log: Value = api.get(&path).await?;
                for stream in ["stdout", "stderr"] {
                    let tail = last_lines(&log[stream], 5);
                    if !tail.is_empty() {
                        println!("{title} ({stream}, last lines):");
                        for line in tail {
                            println!("  | {line}");
                        }
                    }
                }
            }
            Ok(())
        }
        TasksCmd::Logs { id, step, follow } => {
            let path = match &step {
                Some(s) => format!("tasks/{id}/logs?step={s}"),
                None => format!("tasks/{id}/logs"),
            };
            let mut printed = [0u64, 0u64];
            loop {
                let log: Value = api.get(&path).await?;
                for (i, stream) in ["stdout", "stderr"].iter().enumerate() {
                    let text = new_text(&log[*stream], &mut printed[i]);
                    if text.is_empty() {
                        continue;
                    }
                    if i == 0 {
                        print!("{text}");
                        std::io::stdout().flush().ok();
                    } else {
                        eprint!("{text}");
                    }
                }
                if !follow || log["finished"] == true {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The part of a stream not printed yet (`printed` counts stream bytes), saying where bytes
/// were dropped.
fn new_text(stream: &Value, printed: &mut u64) -> String {
    let head = stream["head"].as_str().unwrap_or("");
    let tail = stream["tail"].as_str().unwrap_or("");
    let total = stream["total_bytes"].as_u64().unwrap_or(0);
    if total <= *printed {
        return String::new();
    }
    let mut out = String::new();
    let head_len = head.len() as u64;
    if *printed < head_len {
        out.push_str(&head[floor_char(head, *printed as usize)..]);
        *printed = head_len;
    }
    let tail_start = total - tail.len() as u64;
    if *printed < tail_start {
        out.push_str(&format!(
            "\n[... {} bytes dropped ...]\n",
            tail_start - *printed
        ));
        *printed = tail_start;
    }
    let from = (*printed - tail_start) as usize;
    out.push_str(&tail[floor_char(tail, from)..]);
    *printed = total;
    out
}

/// The last `n` lines a stream kept.
fn last_lines(stream: &Value, n: usize) -> Vec<String> {
    let head = stream["head"].as_str().unwrap_or("");
    let tail = stream["tail"].as_str().unwrap_or("");
    let text = if tail.is_empty() { head } else { tail };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

fn floor_char(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `qs capabilities [ID]`.
pub(super) async fn run_capabilities(
    id: Option<String>,
    json: bool,
    api: ApiClient,
) -> anyhow::Result<()> {
    let caps: Vec<Value> = match &id {
        Some(id) => api.get(&format!("agents/{id}/capabilities")).await?,
        None => api.get("capabilities").await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&caps)?);
        return Ok(());
    }
    let mut headers = vec!["NAME", "DESTRUCTIVE", "EXCLUSIVE", "TIMEOUT_S", "ARGS"];
    if id.is_none() {
        headers.insert(1, "HOSTS");
    }
    let headers: Vec<String> = headers.into_iter().map(String::from).collect();
    let rows: Vec<Vec<String>> = caps
        .iter()
        .map(|c| {
            let args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let mut s = format!(
                        "{}:{}",
                        table::cell(a.get("name")),
                        table::cell(a.get("kind"))
                    );
                    if a["required"] == true {
                        s.push('!');
                    }
                    s
                })
                .collect();
            let mut row = vec![
                table::cell(c.get("name")),
                if c["destructive"] == true {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                if c["exclusive"] == true { "yes" } else { "no" }.into(),
                table::cell(c.get("default_timeout")),
                args.join(" "),
            ];
            if id.is_none() {
                row.insert(1, table::cell(c.get("hosts")));
            }
            row
        })
        .collect();
    print!("{}", table::render(&headers, &rows));
    for c in &caps {
        println!(
            "  {}: {}",
            table::cell(c.get("name")),
            table::cell(c.get("doc"))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_prints_each_byte_once_and_says_what_was_dropped() {
        let mut printed = 0;
        let s1 = json!({"head": "hello ", "tail": "", "total_bytes": 6});
        assert_eq!(new_text(&s1, &mut printed), "hello ");
        assert_eq!(new_text(&s1, &mut printed), "");
        let s2 = json!({"head": "hello ", "tail": "xyz", "total_bytes": 20});
        assert_eq!(
            new_text(&s2, &mut printed),
            "\n[... 11 bytes dropped ...]\nxyz"
        );
        let s3 = json!({"head": "hello ", "tail": "xyz!", "total_bytes": 21});
        assert_eq!(new_text(&s3, &mut printed), "!");
    }
}
