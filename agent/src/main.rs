//! `qs-agent`: inspects this server and serves the controller.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = qs_agent::Cli::parse();
    qs_agent::init_tracing(cli.verbose);
    match qs_agent::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
