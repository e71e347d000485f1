//! `qs agents …`: list agents, call their capabilities, and enrollment (pending agents,
//! approvals, the allowlist).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::ApiClient;
use super::table;
use crate::agents::registry::AgentSummary;

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
    /// List every agent the controller knows, online or not.
    List {
        /// Print exact JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Call one capability on one agent and print its outcome.
    Call {
        /// The agent's MercuryId.
        mercury_id: String,
        /// Capability name, e.g. `inspect`.
        capability: String,
        /// Arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
    /// One agent: its record, boot mode, enrollment and identity conflicts.
    Show {
        /// The agent's MercuryId.
        mercury_id: String,
    },
    /// Agents waiting for approval (`qs serve --enroll approve`).
    Pending {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Admit a pending agent (the key it presented) (admin).
    Approve {
        /// The agent's MercuryId (`qs agents pending`).
        mercury_id: String,
    },
    /// Admit MercuryIds in advance, whatever key their agent presents (admin): under
    /// `--enroll allowlist` only these are admitted; under `approve` they skip approval.
    Allow {
        /// MercuryIds; with `--file`, more from a file (one a line, `#` comments).
        mercury_ids: Vec<String>,
        /// A file of MercuryIds, one a line.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Remove MercuryIds from the allowlist (admin).
    Disallow {
        /// MercuryIds.
        #[arg(required = true)]
        mercury_ids: Vec<String>,
    },
    /// MercuryIds admitted in advance.
    Allowlist,
}

/// MercuryIds from a file: one a line, blank lines and `#` comments ignored.
fn ids_from_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::List { json } => {
            let agents: Vec<AgentSummary> = api.get("agents").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&agents)?);
                return Ok(());
            }
            let headers =
                ["MERCURY_ID", "ONLINE", "LAST_SEEN", "VERSION", "ADDRESS"].map(String::from);
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    vec![
                        a.mercury_id.to_string(),
                        if a.record.online { "yes" } else { "no" }.into(),
                        a.record
                            .last_seen
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        a.record.version.clone(),
                        a.record.address.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!("{}", table::render(&headers, &rows));
            Ok(())
        }
        Cmd::Call {
            mercury_id,
            capability,
            args,
            timeout,
        } => {
            let args: Value = serde_json::from_str(&args).context("--args is not JSON")?;
            let body = json!({"capability": capability, "args": args, "timeout": timeout});
            let outcome: Value = api
                .post(&format!("agents/{mercury_id}/calls"), &body)
                .await?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            if outcome.get("outcome").and_then(Value::as_str) == Some("failed") {
                anyhow::bail!("{capability} failed on {mercury_id}");
            }
            Ok(())
        }
        Cmd::Show { mercury_id } => {
            let agent: Value = api.get(&format!("agents/{mercury_id}")).await?;
            println!("{}", serde_json::to_string_pretty(&agent)?);
            Ok(())
        }
        Cmd::Pending { json } => {
            let pending: Vec<Value> = api.get("agents/pending").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pending)?);
                return Ok(());
            }
            let headers = [
                "MERCURY_ID",
                "ADDRESS",
                "FIRST_SEEN",
                "LAST_SEEN",
                "ATTEMPTS",
            ]
            .map(String::from);
            let rows: Vec<Vec<String>> = pending
                .iter()
                .map(|p| {
                    let mut row = vec![table::cell(p.get("mercury_id"))];
                    for f in ["address", "first_seen", "last_seen", "attempts"] {
                        row.push(table::cell(p.get("pending").and_then(|x| x.get(f))));
                    }
                    row
                })
                .collect();
            print!("{}", table::render(&headers, &rows));
            Ok(())
        }
        Cmd::Approve { mercury_id } => {
            let _: Value = api
                .post(&format!("agents/{mercury_id}/approve"), &json!({}))
                .await?;
            println!("agent {mercury_id} approved: it is admitted when it registers again");
            Ok(())
        }
        Cmd::Allow { mercury_ids, file } => {
            let mut ids = mercury_ids;
            if let Some(path) = file {
                ids.extend(ids_from_file(&path)?);
            }
            anyhow::ensure!(!ids.is_empty(), "no MercuryId given");
            let _: Value = api.post("agents/allowlist", &json!({"ids": ids})).await?;
            println!("{} MercuryId(s) on the allowlist", ids.len());
            Ok(())
        }
        Cmd::Disallow { mercury_ids } => {
            for id in &mercury_ids {
                let _: Value = api.delete(&format!("agents/allowlist/{id}")).await?;
            }
            println!(
                "{} MercuryId(s) removed from the allowlist",
                mercury_ids.len()
            );
            Ok(())
        }
        Cmd::Allowlist => {
            let listed: Vec<Value> = api.get("agents/allowlist").await?;
            let headers = ["MERCURY_ID", "BY", "AT"].map(String::from);
            let rows: Vec<Vec<String>> = listed
                .iter()
                .map(|a| {
                    vec![
                        table::cell(a.get("mercury_id")),
                        table::cell(a.pointer("/allowed/by")),
                        table::cell(a.pointer("/allowed/at")),
                    ]
                })
                .collect();
            print!("{}", table::render(&headers, &rows));
            Ok(())
        }
    }
}
