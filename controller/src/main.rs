//! `qs`: the Quicksilver controller (`qs serve`) and operator CLI.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = qs_controller::cli::Cli::parse();
    qs_controller::telemetry::init(cli.verbose);
    match qs_controller::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
