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
            let total = sets.len();
            let mut imported = 0;
            for batch in batches(sets) {
                let count = batch.len();
                let answer: Result<Value, _> = api.post("assets", &Value::Object(batch)).await;
                if let Err(error) = answer {
                    return Err(error.context(format!(
                        "{imported} of {total} asset sets were imported before this failure"
                    )));
                }
                imported += count;
            }
            println!("imported {imported} asset sets from {}", file.display());
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

/// Most JSON bytes one import request carries (the API takes bodies up to 2 MiB); each
/// request is one transaction.
const BATCH_BYTES: usize = 1024 * 1024;

/// The sets split into request bodies of at most [`BATCH_BYTES`] (a larger single set goes
/// alone, for the API to judge).
fn batches(sets: Vec<(String, Value)>) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    let mut current = Map::new();
    let mut bytes = 0;
    for (key, value) in sets {
        let size = key.len() + value.to_string().len() + 8;
        if !current.is_empty() && bytes + size > BATCH_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.insert(key, value);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_imports_go_in_bodies_under_the_limit_in_file_order() {
        let sets: Vec<(String, Value)> = (0..5000)
            .map(|i| {
                (
                    format!("SN{i:05}"),
                    serde_json::json!({"note": "x".repeat(500)}),
                )
            })
            .collect();
        let out = batches(sets);
        assert!(out.len() >= 2, "{}", out.len());
        assert!(out
            .iter()
            .all(|b| Value::Object(b.clone()).to_string().len() <= BATCH_BYTES + 1024));
        let keys: Vec<&String> = out.iter().flat_map(|b| b.keys()).collect();
        assert_eq!(keys.len(), 5000);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(batches(Vec::new()).is_empty());
    }

    #[test]
    fn path_segments_escape_what_urls_reserve() {
        assert_eq!(path_segment("SN-1.a_b~"), "SN-1.a_b~");
        assert_eq!(path_segment("a?b#c%d"), "a%3Fb%23c%25d");
    }
}
