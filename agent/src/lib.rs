//! The Quicksilver agent: inspects the server, derives its MercuryId, and serves the controller.
//!
//! - [`identity`]: the MercuryId of the machine under a root, with its explanation;
//! - [`session`]: the connection to the controller — register, heartbeat, serve calls, and
//!   reconnect with [`backoff`] when the controller goes away; [`session::serve_controller`]
//!   also drives simulated agents (benches) through the same code;
//! - [`calls`]: the calls this process runs or ran, reported at every registration and never
//!   run twice;
//! - [`reinspection`]: what the agent learns after registering (slow facts, hotplug, LLDP).
//!
//! The agent ships in the boot image, so it links no HTTP server or database client.

pub mod backoff;
pub mod calls;
pub mod identity;
pub mod kernel_events;
pub mod reinspection;
pub mod sent_inventory;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qs_inspectors::{InspectorName, SysRoot};
use tracing_subscriber::EnvFilter;

/// Quicksilver agent.
#[derive(Debug, Parser)]
#[command(
    name = "qs-agent",
    version,
    about = "Quicksilver agent: inspects this server and serves the controller"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the inventory as JSON.
    Inspect {
        /// Read the machine under this directory instead of `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Run only these inspectors (comma-separated: dmi,cpu,mem,interfaces,os_storage,pci,routes,raid,bmc).
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<InspectorName>>,
        /// Also copy every file the inspectors read into DIR (a fixture tree for tests).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// Also listen this many seconds for LLDP neighbours on every up interface.
        #[arg(long, value_name = "SECONDS")]
        lldp: Option<u64>,
    },
    /// Print this server's MercuryId.
    Id {
        /// Read the machine under this directory instead of `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Say which rule chose the id, from which values, and why earlier rules did not apply.
        #[arg(long)]
        explain: bool,
    },
    /// Connect to the controller and serve it until stopped.
    Run {
        /// The controller's agent endpoint.
        #[arg(long, env = "QS_CONTROLLER")]
        controller: String,
        /// The controller's public key (base64, its `controller.pub`); the agent refuses a
        /// controller that does not hold it.
        #[arg(long, env = "QS_SERVER_KEY")]
        server_key: qs_noise::PublicKey,
        /// One-time enrollment token (`qs.token=` from `/boot/ipxe`, or `qs tokens boot
        /// create`): admits this agent whatever the controller's enrollment policy.
        #[arg(long, env = "QS_TOKEN", hide_env_values = true)]
        boot_token: Option<String>,
        /// Read the machine under this directory instead of `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Largest message accepted from the controller, in bytes.
        #[arg(long, default_value_t = qs_proto::codec::DEFAULT_MAX_FRAME)]
        max_frame: usize,
        /// Give up waiting for a reply (registration, heartbeat echo) after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        reply_timeout: Duration,
        /// Listen this many seconds for LLDP neighbours (repeated every few minutes) and send
        /// them as an inventory update; 0 disables.
        #[arg(long, value_name = "SECONDS", default_value_t = 35)]
        lldp: u64,
    },
}

/// Installs logging to stderr; stdout carries command output only.
pub fn init_tracing(verbosity: u8) {
    let default = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn sysroot(root: PathBuf) -> SysRoot {
    if root == std::path::Path::new("/") {
        SysRoot::live()
    } else {
        SysRoot::new(root)
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Inspect {
            root,
            only,
            record,
            lldp,
        } => {
            let root = match record {
                Some(out) => SysRoot::recording(root, out),
                None => sysroot(root),
            };
            // LLDP listening is slow; the inspectors run meanwhile.
            let listening = lldp.map(|secs| {
                let root = root.clone();
                tokio::task::spawn_blocking(move || {
                    qs_inspectors::lldp::listen(&root, Duration::from_secs(secs))
                })
            });
            let mut inventory =
                tokio::task::spawn_blocking(move || identity::inspect(&root, only.as_deref()))
                    .await
                    .context("inspection panicked")?;
            if let Some(listening) = listening {
                match listening.await.context("LLDP listening panicked")? {
                    Ok(neighbours) => inventory.lldp = Some(neighbours),
                    Err(error) => inventory.errors.push(qs_proto::inventory::InspectorError {
                        inspector: "lldp".into(),
                        message: qs_proto::ErrorReport::from_error(&error).to_string(),
                    }),
                }
            }
            println!("{}", serde_json::to_string_pretty(&inventory)?);
            Ok(())
        }
        Cmd::Id { root, explain } => {
            let root = sysroot(root);
            let inventory =
                tokio::task::spawn_blocking(move || qs_inspectors::run_all(&root, None))
                    .await
                    .context("inspection panicked")?;
            let derivation = qs_proto::mercury_id::derive(&qs_inspectors::id_sources(&inventory))?;
            println!("{}", derivation.id);
            if explain {
                println!("{}", identity::explain(&derivation));
            }
            Ok(())
        }
        Cmd::Run {
            controller,
            server_key,
            boot_token,
            root,
            max_frame,
            reply_timeout,
            lldp,
        } => {
            let config =
                session::SessionConfig::new(&controller, server_key, max_frame, reply_timeout)?;
            let lldp = (lldp > 0).then(|| Duration::from_secs(lldp));
            session::run(config, sysroot(root), lldp, boot_token).await
        }
    }
}
