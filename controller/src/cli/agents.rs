//! `qs agents …`: list agents and call their capabilities.

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
    }
}
