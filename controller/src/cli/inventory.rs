//! `qs inventory …`: read and query inventory documents.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::client::ApiClient;
use super::table;

/// Columns shown by `find` when no projection names them.
const DEFAULT_COLUMNS: &[&str] = &[
    "mercury_id",
    "dmi.sys_vendor",
    "dmi.product_name",
    "cpu.model",
    "mem.total",
    // Where to reach the box when the OS cannot be.
    "bmc.lan.ip_address",
    "agent.online",
];

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
    /// Show one server's inventory document.
    Get {
        /// The server's MercuryId.
        mercury_id: String,
        /// Print exact JSON instead of `path = value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Find servers with a MongoDB filter, e.g. '{"mem.total": {"$gte": 68719476736}}'.
    Find {
        /// The filter document (JSON).
        filter: String,
        /// Projection document (JSON); its fields become the table's columns.
        #[arg(long)]
        projection: Option<String>,
        /// Sort document (JSON), e.g. '{"mem.total": -1}'.
        #[arg(long)]
        sort: Option<String>,
        /// Return at most this many documents.
        #[arg(long)]
        limit: Option<u64>,
        /// Skip this many documents first.
        #[arg(long)]
        skip: Option<u64>,
        /// Print exact JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_json(flag: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON: {text}"))
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::Get { mercury_id, json } => {
            let doc: Value = api.get(&format!("inventory/{mercury_id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                let rows = table::flatten(&doc);
                let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (k, v) in rows {
                    println!("{k:<width$}  {v}");
                }
            }
            Ok(())
        }
        Cmd::Find {
            filter,
            projection,
            sort,
            limit,
            skip,
            json,
        } => {
            let mut body = Map::new();
            body.insert("filter".into(), parse_json("filter", &filter)?);
            let projection = projection
                .map(|p| parse_json("--projection", &p))
                .transpose()?;
            if let Some(p) = &projection {
                body.insert("projection".into(), p.clone());
            }
            if let Some(s) = sort {
                body.insert("sort".into(), parse_json("--sort", &s)?);
            }
            if let Some(l) = limit {
                body.insert("limit".into(), json!(l));
            }
            if let Some(s) = skip {
                body.insert("skip".into(), json!(s));
            }
            let docs: Vec<Value> = api.post("inventory/query", &Value::Object(body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&docs)?);
                return Ok(());
            }
            let columns = columns(projection.as_ref());
            let rows: Vec<Vec<String>> = docs
                .iter()
                .map(|d| columns.iter().map(|c| table::cell_at(d, c)).collect())
                .collect();
            let headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
            print!("{}", table::render(&headers, &rows));
            Ok(())
        }
    }
}

/// The projection's included paths (mercury_id first), or the default columns.
fn columns(projection: Option<&Value>) -> Vec<String> {
    let included: Vec<String> = projection
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter(|(k, v)| {
                    *k != "mercury_id" && v.as_i64().is_some_and(|n| n != 0)
                        || v.as_bool() == Some(true)
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    if included.is_empty() {
        return DEFAULT_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    }
    std::iter::once("mercury_id".to_owned())
        .chain(included)
        .collect()
}
