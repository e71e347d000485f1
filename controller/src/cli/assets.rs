//! `qs assets …`: per-host asset sets that templates read as `assets.*`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value};

use super::client::ApiClient;

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
    /// Import a YAML file keyed by MercuryId or serial number (each key's set is replaced).
    Import {
        /// The asset file.
        file: PathBuf,
    },
    /// The asset set that applies to a host, by MercuryId or serial number.
    Show {
        /// MercuryId or serial number.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // Checked here so a mistake names the file and line, not an HTTP body.
            let sets = qs_plans::parse_assets(&text)
                .map_err(|e| anyhow::anyhow!("{}:{}: {}", file.display(), e.line, e.reason))?;
            let body: Map<String, Value> = sets.into_iter().collect();
            let answer: Value = api.post("assets", &Value::Object(body)).await?;
            println!(
                "imported {} asset sets from {}",
                answer["imported"].as_u64().unwrap_or_default(),
                file.display()
            );
            Ok(())
        }
        Cmd::Show { id, json } => {
            let set: Value = api.get(&format!("assets/{}", path_segment(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&set)?);
                return Ok(());
            }
            let key = set["key"].as_str().unwrap_or_default();
            match set["host"].as_str() {
                Some(host) if host != key => println!("host {host}: asset set under {key}"),
                Some(host) => println!("host {host}: asset set under its MercuryId"),
                None => println!("asset set under {key} (no known host)"),
            }
            if let Some(at) = set["imported_at"].as_str() {
                println!("imported {at}");
            }
            println!("{}", serde_json::to_string_pretty(&set["assets"])?);
            Ok(())
        }
    }
}

/// A text as one URL path segment (serials may hold `?`, `#`, `%` …).
pub(super) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
