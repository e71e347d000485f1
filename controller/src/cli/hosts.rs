//! `qs hosts …`: what a host does when it PXE-boots.

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::ApiClient;

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
    /// Set what a host boots: `agent` (the Quicksilver image) or `local` (its own disk).
    Boot {
        /// The host's MercuryId.
        mercury_id: String,
        /// `agent` or `local`.
        #[arg(value_parser = ["agent", "local"])]
        mode: String,
    },
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::Boot { mercury_id, mode } => {
            let boot: Value = api
                .put(&format!("hosts/{mercury_id}/boot"), &json!({"mode": mode}))
                .await?;
            let mode = boot.get("mode").and_then(Value::as_str).unwrap_or("?");
            let set_at = boot.get("set_at").and_then(Value::as_str).unwrap_or("?");
            println!("{mercury_id} boots {mode} (set {set_at})");
            Ok(())
        }
    }
}
