//! The `qs` command line: `qs serve` and the operator commands, one module per verb group.

mod agents;
mod client;
mod hosts;
mod inventory;
mod table;

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
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the controller.
    Serve(serve::ServeArgs),
    /// Agents and their state.
    #[command(subcommand)]
    Agents(agents::Cmd),
    /// Inventory documents.
    #[command(subcommand)]
    Inventory(inventory::Cmd),
    /// Hosts: what each boots when it PXE-boots.
    #[command(subcommand)]
    Hosts(hosts::Cmd),
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve(args) => serve::run(args.validate()?).await,
        Cmd::Agents(cmd) => agents::run(cmd, client::ApiClient::new(cli.url)?).await,
        Cmd::Inventory(cmd) => inventory::run(cmd, client::ApiClient::new(cli.url)?).await,
        Cmd::Hosts(cmd) => hosts::run(cmd, client::ApiClient::new(cli.url)?).await,
    }
}
