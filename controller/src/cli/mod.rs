//! The `qs` command line: `qs serve` and the operator commands, one module per verb group.

mod agents;
mod assets;
mod client;
mod hosts;
mod inventory;
mod jobs;
mod plans;
mod table;
mod tokens;

use clap::{Parser, Subcommand};

use crate::serve;

/// Quicksilver controller and operator CLI.
#[derive(Debug, Parser)]
#[command(
    name = "qs",
    version,
    about = "Quicksilver controller and operator CLI"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Controller API base URL for operator commands.
    #[arg(
        long,
        env = "QS_URL",
        global = true,
        default_value = "http://127.0.0.1:9000"
    )]
    url: reqwest::Url,
    /// Bearer token for operator commands; without it, `admin.token` in the default data dir.
    #[arg(long, env = "QS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the controller.
    Serve(Box<serve::ServeArgs>),
    /// Agents and their state.
    #[command(subcommand)]
    Agents(agents::Cmd),
    /// Inventory documents.
    #[command(subcommand)]
    Inventory(inventory::Cmd),
    /// Plans: steps with conditions and recovery, in plan sets under --config-dir.
    #[command(subcommand)]
    Plans(plans::Cmd),
    /// Per-host asset sets (values templates read as `assets.*`).
    #[command(subcommand)]
    Assets(assets::Cmd),
    /// Hosts: what each boots when it PXE-boots.
    #[command(subcommand)]
    Hosts(hosts::Cmd),
    /// Operator tokens (admin).
    #[command(subcommand)]
    Tokens(tokens::Cmd),
    /// Jobs: a capability or plan fanned out to the hosts a query selects.
    #[command(subcommand)]
    Jobs(jobs::JobsCmd),
    /// Tasks: one host's part of a job.
    #[command(subcommand)]
    Tasks(jobs::TasksCmd),
    /// What agents can do: every capability across the fleet, or one host's.
    Capabilities {
        /// One host's MercuryId.
        mercury_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The API client with the operator's token: `--token`/`QS_TOKEN`, else the admin token the
/// controller on this machine wrote into its default data dir, else none (the API says 401).
fn api(url: reqwest::Url, token: Option<String>) -> anyhow::Result<client::ApiClient> {
    let token = token.or_else(|| {
        let path = serve::default_data_dir().join(crate::security::tokens::ADMIN_TOKEN_FILE);
        std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_owned())
    });
    match token {
        Some(token) if !token.is_empty() => client::ApiClient::with_token(url, &token),
        _ => client::ApiClient::new(url),
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve(args) => serve::run((*args).validate()?).await,
        Cmd::Agents(cmd) => agents::run(cmd, api(cli.url, cli.token)?).await,
        Cmd::Inventory(cmd) => inventory::run(cmd, api(cli.url, cli.token)?).await,
        Cmd::Plans(cmd) if plans::is_local(&cmd) => plans::validate(cmd),
        Cmd::Plans(cmd) => plans::run(cmd, api(cli.url, cli.token)?).await,
        Cmd::Assets(cmd) => assets::run(cmd, api(cli.url, cli.token)?).await,
        Cmd::Hosts(cmd) => hosts::run(cmd, api(cli.url, cli.token)?).await,
        Cmd::Tokens(cmd) => tokens::run(cmd, api(cli.url, cli.token)?).await,
        Cmd::Jobs(cmd) => jobs::run_jobs(cmd, api(cli.url, cli.token)?).await,
        Cmd::Tasks(cmd) => jobs::run_tasks(cmd, api(cli.url, cli.token)?).await,
        Cmd::Capabilities { mercury_id, json } => {
            jobs::run_capabilities(mercury_id, json, api(cli.url, cli.token)?).await
        }
    }
}
