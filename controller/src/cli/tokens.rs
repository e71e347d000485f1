//! `qs tokens …`: operator bearer tokens (admin only).

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
}

pub(super) async fn run(cmd: Cmd, api: ApiClient) -> anyhow::Result<()> {
    match cmd {
        Cmd::Create {
            role,
            expires,
            note,
        } => {
            let made: Value = api
                .post(
                    "tokens",
                    &json!({"role": role, "expires": expires, "note": note}),
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
            let headers: Vec<String> = ["id", "role", "created", "expires", "revoked", "note"]
                .map(String::from)
                .to_vec();
            let rows: Vec<Vec<String>> = tokens
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| headers.iter().map(|h| table::cell(t.get(h))).collect())
                .collect();
            print!("{}", table::render(&headers, &rows));
            Ok(())
        }
        Cmd::Revoke { id } => {
            let _: Value = api.delete(&format!("tokens/{id}")).await?;
            println!("token {id} revoked");
            Ok(())
        }
    }
}
