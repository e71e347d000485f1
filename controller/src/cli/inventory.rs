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
    /// Count servers matching a MongoDB filter, e.g. '{"agent.online": true}'.
    Count {
        /// The filter document (JSON); all servers when left out.
        filter: Option<String>,
    },
    /// The different values of a path, e.g. `dmi.bios_version`, among servers matching a filter.
    Distinct {
        /// The dotted path.
        path: String,
        /// The filter document (JSON); all servers when left out.
        filter: Option<String>,
        /// Print exact JSON instead of one value a line.
        #[arg(long)]
        json: bool,
    },
    /// Run an aggregation pipeline ($match $project $unwind $group $sort $limit $skip $count),
    /// e.g. '[{"$group": {"_id": "$dmi.bios_version", "hosts": {"$sum": 1}}}]'.
    Aggregate {
        /// The pipeline (a JSON array of stages).
        pipeline: String,
    },
    /// List a server's kept inventory versions: when, and what changed in a line.
    History {
        /// The server's MercuryId.
        mercury_id: String,
        /// Print exact JSON instead of one version a line.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON patch between two kept versions (default: the last change).
    Diff {
        /// The server's MercuryId.
        mercury_id: String,
        /// The version current at this time (RFC 3339); default: the one before --to.
        #[arg(long)]
        from: Option<String>,
        /// The version current at this time (RFC 3339); default: the newest.
        #[arg(long)]
        to: Option<String>,
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
        Cmd::Count { filter } => count(&api, filter).await,
        Cmd::Distinct { path, filter, json } => distinct(&api, path, filter, json).await,
        Cmd::Aggregate { pipeline } => aggregate(&api, &pipeline).await,
        Cmd::History { mercury_id, json } => history(&api, &mercury_id, json).await,
        Cmd::Diff {
            mercury_id,
            from,
            to,
        } => diff(&api, &mercury_id, from, to).await,
    }
}

/// `qs inventory history`: one kept version a line, oldest first.
async fn history(api: &ApiClient, id: &str, json: bool) -> anyhow::Result<()> {
    let answer: Value = api.get(&format!("inventory/{id}/history")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                v["seq"].to_string(),
                v["at"].as_str().unwrap_or("").to_owned(),
                v["summary"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let headers = ["SEQ", "RECEIVED", "CHANGES"].map(str::to_owned);
    print!("{}", table::render(&headers, &rows));
    Ok(())
}

/// `qs inventory diff`: the RFC 6902 patch between two kept versions.
async fn diff(
    api: &ApiClient,
    id: &str,
    from: Option<String>,
    to: Option<String>,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (key, value) in [("from", from), ("to", to)] {
        if let Some(v) = value {
            query.push(format!("{key}={}", percent_encode(&v)));
        }
    }
    let path = if query.is_empty() {
        format!("inventory/{id}/diff")
    } else {
        format!("inventory/{id}/diff?{}", query.join("&"))
    };
    let answer: Value = api.get(&path).await?;
    println!("{}", serde_json::to_string_pretty(&answer["patch"])?);
    Ok(())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `qs inventory count`: prints the number.
async fn count(api: &ApiClient, filter: Option<String>) -> anyhow::Result<()> {
    let filter = filter.map_or(Ok(json!({})), |f| parse_json("filter", &f))?;
    let answer: Value = api
        .post("inventory/count", &json!({"filter": filter}))
        .await?;
    let n = answer
        .get("count")
        .and_then(Value::as_u64)
        .with_context(|| format!("controller's count reply has no count: {answer}"))?;
    println!("{n}");
    Ok(())
}

/// `qs inventory distinct`: one value a line (strings bare), or the JSON array.
async fn distinct(
    api: &ApiClient,
    path: String,
    filter: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let filter = filter.map_or(Ok(json!({})), |f| parse_json("filter", &f))?;
    let answer: Value = api
        .post(
            "inventory/distinct",
            &json!({"path": path, "filter": filter}),
        )
        .await?;
    let values = answer
        .get("values")
        .and_then(Value::as_array)
        .with_context(|| format!("controller's distinct reply has no values: {answer}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(values)?);
        return Ok(());
    }
    for v in values {
        match v {
            Value::String(s) => println!("{s}"),
            other => println!("{other}"),
        }
    }
    Ok(())
}

/// `qs inventory aggregate`: prints the documents the pipeline produced as JSON.
async fn aggregate(api: &ApiClient, pipeline: &str) -> anyhow::Result<()> {
    let pipeline = parse_json("pipeline", pipeline)?;
    let docs: Vec<Value> = api
        .post("inventory/aggregate", &json!({"pipeline": pipeline}))
        .await?;
    println!("{}", serde_json::to_string_pretty(&docs)?);
    Ok(())
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
