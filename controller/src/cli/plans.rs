//! `qs plans …`: the plan sets the controller offers, and local validation of plan files.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

use super::client::ApiClient;
use super::table;

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
    /// Plans under the controller's --config-dir, as SET/NAME, with files that do not validate.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// One plan's steps, conditions, recovery steps and timeouts.
    Show {
        /// The plan, as SET/NAME.
        plan: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check plan files here, without a controller: `FILE:LINE: reason` for each refused one.
    Validate {
        /// Plan files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Whether a command needs the controller (`validate` does not).
pub(super) fn is_local(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Validate { .. })
}

/// `qs plans validate`: runs without an API client.
pub(super) fn validate(cmd: Cmd) -> anyhow::Result<()> {
    let Cmd::Validate { files } = cmd else {
        anyhow::bail!("not a local plans command");
    };
    let mut refused = 0;
    for file in &files {
        match qs_plans::validate_file(file) {
            Ok(plan) => println!(
                "{}: ok ({}, {} steps)",
                file.display(),
                plan.name,
                plan.all_steps().count()
            ),
            Err(error) => {
                refused += 1;
                eprintln!("{}", chain(&error));
            }
        }
    }
    if refused > 0 {
        anyhow::bail!("{refused} of {} plan files did not validate", files.len());
    }
    Ok(())
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::List { json } => {
            let listing: Value = api.get("plans").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = listing["plans"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    ["id", "steps", "description"]
                        .iter()
                        .map(|k| table::cell(p.get(*k)))
                        .collect()
                })
                .collect();
            if rows.is_empty() {
                println!("no plans in {}", table::cell(listing.get("config_dir")));
            } else {
                print!(
                    "{}",
                    table::render(
                        &["PLAN".into(), "STEPS".into(), "DESCRIPTION".into()],
                        &rows
                    )
                );
            }
            for error in listing["errors"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                eprintln!("refused: {}", error.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Cmd::Show { plan, json } => {
            let Some((set, name)) = plan.split_once('/') else {
                anyhow::bail!("plans are named SET/NAME, not {plan:?}");
            };
            let value: Value = api
                .get(&format!(
                    "plans/{}/{}",
                    super::assets::path_segment(set),
                    super::assets::path_segment(name)
                ))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", describe(&value));
            }
            Ok(())
        }
        Cmd::Validate { .. } => validate(cmd),
    }
}

/// A plan as an operator reads it: one block per step, recovery steps indented under it.
fn describe(plan: &Value) -> String {
    let mut out = format!(
        "{} ({})\n",
        table::cell(plan.get("id")),
        table::cell(plan.get("name"))
    );
    if let Some(d) = plan.get("description").and_then(Value::as_str) {
        if !d.is_empty() {
            out.push_str(&format!("  {d}\n"));
        }
    }
    let steps = plan["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        describe_step(&mut out, step, &format!("{}.", i + 1), "  ");
        let recovery = step["on_failure"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, r) in recovery.iter().enumerate() {
            describe_step(&mut out, r, &format!("on failure {}.", j + 1), "      ");
        }
    }
    out
}

fn describe_step(out: &mut String, step: &Value, number: &str, indent: &str) {
    out.push_str(&format!(
        "{indent}{number} {} — {}",
        table::cell(step.get("name")),
        table::cell(step.get("capability"))
    ));
    if let Some(t) = step.get("timeout").and_then(Value::as_str) {
        out.push_str(&format!(" (timeout {t})"));
    }
    out.push('\n');
    if let Some(w) = step.get("when").and_then(Value::as_str) {
        out.push_str(&format!("{indent}   when: {w}\n"));
    }
    if let Some(args) = step
        .get("args")
        .filter(|a| a.as_object().is_some_and(|m| !m.is_empty()))
    {
        out.push_str(&format!("{indent}   args: {args}\n"));
    }
}
