//! `qs-agent`: inspects this server and serves the controller.

use std::process::ExitCode;

use clap::Parser;

// One thread is plenty for one connection; blocking work (inspection) has its own pool.
#[tokio::main(flavor = "current_thread")]
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
