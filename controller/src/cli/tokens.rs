//! `qs tokens …`: operator bearer tokens, and one-time boot tokens that enroll agents (admin
//! only).

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::ApiClient;
use super::table;
use crate::security::tokens::Role;

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
    /// Make a token; its secret is printed once, on stdout.
    Create {
        /// What it may do.
        #[arg(long, value_enum)]
        role: Role,
        /// Restrict it to the hosts this inventory filter (JSON) selects, e.g.
        /// `'{"location.rack": "r12"}'`: it sees and acts on no other host.
        #[arg(long)]
        segment: Option<String>,
        /// How long it is valid (`30d`, `12h`); forever when absent.
        #[arg(long)]
        expires: Option<String>,
        /// Who or what it is for.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Every token (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Refuse a token from now on.
    Revoke {
        /// The token's id (`qs tokens list`).
        id: String,
    },
    /// One-time boot tokens: enroll an agent whatever the enrollment policy.
    #[command(subcommand)]
    Boot(BootCmd),
}

#[derive(Debug, Subcommand)]
pub(super) enum BootCmd {
    /// Make a boot token for a host not PXE-booted by this controller; give it to the agent as
    /// `qs.token=` on the kernel command line, `--boot-token` or `QS_TOKEN`. Printed once.
    Create {
        /// The host's MAC (any interface the agent reports).
        #[arg(long, required_unless_present = "uuid")]
        mac: Option<String>,
        /// The host's SMBIOS UUID.
        #[arg(long)]
        uuid: Option<String>,
        /// How long it is valid (default 24h).
        #[arg(long)]
        expires: Option<String>,
        /// Who or what it is for.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Boot tokens not expired yet, used ones included (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn rows(list: &Value, headers: &[String], cell: impl Fn(&Value, &str) -> String) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| headers.iter().map(|h| cell(t, h)).collect())
        .collect();
    table::render(headers, &rows)
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::Create {
            role,
            segment,
            expires,
            note,
        } => {
            let segment: Option<Value> = segment
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .context("--segment is not JSON")?;
            let made: Value = api
                .post(
                    "tokens",
                    &json!({"role": role, "segment": segment, "expires": expires, "note": note}),
                )
                .await?;
            let id = table::cell(made.pointer("/token/id"));
            eprintln!("token {id} ({role}) created; its secret follows and is not shown again");
            println!("{}", made["secret"].as_str().unwrap_or_default());
            Ok(())
        }
        Cmd::List { json } => {
            let tokens: Value = api.get("tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            let headers: Vec<String> = [
                "id", "role", "segment", "created", "expires", "revoked", "note",
            ]
            .map(String::from)
            .to_vec();
            print!("{}", rows(&tokens, &headers, |t, h| table::cell(t.get(h))));
            Ok(())
        }
        Cmd::Revoke { id } => {
            let _: Value = api.delete(&format!("tokens/{id}")).await?;
            println!("token {id} revoked");
            Ok(())
        }
        Cmd::Boot(BootCmd::Create {
            mac,
            uuid,
            expires,
            note,
        }) => {
            let made: Value = api
                .post(
                    "tokens/boot",
                    &json!({"mac": mac, "uuid": uuid, "expires": expires, "note": note}),
                )
                .await?;
            let id = table::cell(made.pointer("/token/id"));
            let until = table::cell(made.pointer("/token/expires"));
            eprintln!("boot token {id} created (one use, until {until}); its secret follows and is not shown again");
            println!("{}", made["secret"].as_str().unwrap_or_default());
            Ok(())
        }
        Cmd::Boot(BootCmd::List { json }) => {
            let tokens: Value = api.get("tokens/boot").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            let headers: Vec<String> = ["id", "binding", "created", "expires", "used_by", "note"]
                .map(String::from)
                .to_vec();
            print!(
                "{}",
                rows(&tokens, &headers, |t, h| match h {
                    "used_by" => table::cell(t.pointer("/consumed/mercury_id")),
                    _ => table::cell(t.get(h)),
                })
            );
            Ok(())
        }
    }
}
