//! Serving the boot image to PXE-booting servers, without authentication (firmware cannot send
//! tokens), on the controller's HTTP port.
//!
//! - `GET /boot/ipxe`: an iPXE script. Without identifiers it asks iPXE to come back with
//!   `?mac=${netX/mac}&uuid=${uuid}&serial=${serial}`; with them it looks the host up in the
//!   controller's [`HostDirectory`] and answers either the agent image (kernel, initramfs and
//!   `qs.controller=tcp://HOST:PORT` on the command line) or, for a host an operator marked
//!   [`BootMode::Local`], a script that boots its own disk.
//! - `GET /boot/{file}` (and `HEAD`): a regular file directly inside the boot directory
//!   (`vmlinuz`, `initramfs.img`, `image.json`) with `Content-Length` and range requests.
//! - `GET /api/v1/boot`: the boot directory, its `image.json`, counters and the last requests
//!   with the scripts they got, so operators (and tests) see what a booting host was told.
//!
//! Principal items: [`router`] (an [`axum::Router`] to merge into the controller's HTTP app),
//! [`BootConfig`], the [`HostDirectory`] trait the controller implements over its store.
//!
//! ```no_run
//! # async fn example<D: qs_boot::HostDirectory>(directory: D) {
//! let boot = qs_boot::BootConfig {
//!     dir: "images/out".into(),
//!     agent_port: 9002,
//!     advertise: None,
//!     server_key: None,
//! };
//! let app: axum::Router = qs_boot::router(boot, directory);
//! # }
//! ```

pub mod files;
pub mod hosts;
pub mod script;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use tracing::{info, warn};

pub use files::{default_boot_dir, BootDir, FileRefused};
pub use hosts::{BootMode, HostDirectory, HostKey, Identifiers, KnownHost, LookupError};

/// How many answered script requests `GET /api/v1/boot` keeps.
const KEPT_REQUESTS: usize = 64;

/// What the boot server needs from `qs serve`.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The directory with `vmlinuz`, `initramfs.img` and `image.json`.
    pub dir: PathBuf,
    /// The agent port the controller listens on (written into scripts with the Host header's host).
    pub agent_port: u16,
    /// `tcp://HOST:PORT` to write into scripts instead (`qs serve --advertise`).
    pub advertise: Option<String>,
    /// The controller's public key (base64), written into agent scripts as `qs.server_key=`.
    pub server_key: Option<String>,
}

/// The boot routes over `directory`, ready to merge into the controller's HTTP app.
pub fn router<D: HostDirectory>(config: BootConfig, directory: D) -> Router {
    let state = Arc::new(BootState {
        dir: BootDir::new(config.dir),
        agent_port: config.agent_port,
        advertise: config.advertise,
        server_key: config.server_key,
        directory,
        requests: Mutex::new(VecDeque::new()),
        counters: Counters::default(),
    });
    Router::new()
        .route("/boot/ipxe", get(ipxe::<D>))
        .route("/boot/{file}", get(file::<D>))
        .route("/api/v1/boot", get(status::<D>))
        .with_state(state)
}

struct BootState<D> {
    dir: BootDir,
    agent_port: u16,
    advertise: Option<String>,
    server_key: Option<String>,
    directory: D,
    requests: Mutex<VecDeque<Served>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    scripts: AtomicU64,
    files: AtomicU64,
    refused: AtomicU64,
    lookup_failures: AtomicU64,
}

/// One answered `GET /boot/ipxe`.
#[derive(Debug, Clone, Serialize)]
struct Served {
    at: String,
    #[serde(flatten)]
    ids: Identifiers,
    /// The MercuryId the identifiers led to.
    host: Option<String>,
    /// `identify`, `agent` or `local`.
    answer: &'static str,
    script: String,
}

/// The first value of `name` in iPXE's query (unset settings expand to empty strings).
fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn script_response(script: String) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        script,
    )
        .into_response()
}

fn refusal(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

async fn ipxe<D: HostDirectory>(
    State(state): State<Arc<BootState<D>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = query else {
        state.counters.refused.fetch_add(1, Ordering::Relaxed);
        warn!(
            query = raw.as_deref().unwrap_or(""),
            "malformed boot query refused"
        );
        return refusal(StatusCode::BAD_REQUEST, "malformed boot query".into());
    };
    let ids = Identifiers::from_raw(
        query_value(&pairs, "mac"),
        query_value(&pairs, "uuid"),
        query_value(&pairs, "serial"),
    );
    let (answer, host, script) = if ids.is_empty() {
        ("identify", None, script::identify_script())
    } else {
        let known = match hosts::identify(&state.directory, &ids).await {
            Ok(known) => known,
            Err(error) => {
                // No answer makes iPXE fail and the firmware try its next boot entry (the disk
                // of a provisioned server), which is safer than guessing.
                state
                    .counters
                    .lookup_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %error_chain(&error), ?ids, "boot host lookup failed");
                return refusal(StatusCode::SERVICE_UNAVAILABLE, "host lookup failed".into());
            }
        };
        let host = known.as_ref().map(|k| k.mercury_id.clone());
        match known {
            Some(KnownHost {
                mercury_id,
                mode: Some(BootMode::Local),
            }) => ("local", host, script::local_script(&mercury_id)),
            _ => {
                let controller = match &state.advertise {
                    Some(advertised) => advertised.clone(),
                    None => {
                        let header = headers
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("");
                        match script::controller_from_host(header, state.agent_port) {
                            Ok(controller) => controller,
                            Err(error) => {
                                state.counters.refused.fetch_add(1, Ordering::Relaxed);
                                warn!(%error, "boot script refused");
                                return refusal(StatusCode::BAD_REQUEST, error.to_string());
                            }
                        }
                    }
                };
                let image = state.dir.build_id();
                let token = state.directory.enrollment_token(&ids).await;
                let script = script::agent_script(
                    &controller,
                    image.as_deref(),
                    host.as_deref(),
                    state.server_key.as_deref(),
                    token.as_deref(),
                );
                ("agent", host, script)
            }
        }
    };
    state.counters.scripts.fetch_add(1, Ordering::Relaxed);
    info!(
        answer,
        query = raw.as_deref().unwrap_or(""),
        host = host.as_deref().unwrap_or("-"),
        mac = ids.mac.as_deref().unwrap_or("-"),
        uuid = ids.uuid.as_deref().unwrap_or("-"),
        serial = ids.serial.as_deref().unwrap_or("-"),
        "boot script served"
    );
    let served = Served {
        at: now_rfc3339(),
        ids,
        host,
        answer,
        // What the machine was told, less its one-time token.
        script: script::redact_token(&script),
    };
    {
        let mut requests = state
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if requests.len() == KEPT_REQUESTS {
            requests.pop_front();
        }
        requests.push_back(served);
    }
    script_response(script)
}

async fn file<D: HostDirectory>(
    State(state): State<Arc<BootState<D>>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let path = match state.dir.file(&name) {
        Ok(path) => path,
        Err(refused) => {
            state.counters.refused.fetch_add(1, Ordering::Relaxed);
            warn!(%refused, "boot file refused");
            return refusal(StatusCode::NOT_FOUND, refused.to_string());
        }
    };
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let response = match ServeFile::new(&path).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    };
    state.counters.files.fetch_add(1, Ordering::Relaxed);
    info!(file = %name, %range, status = response.status().as_u16(), "boot file served");
    response
}

async fn status<D: HostDirectory>(State(state): State<Arc<BootState<D>>>) -> Json<Value> {
    let requests: Vec<Served> = state
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let c = &state.counters;
    Json(json!({
        "dir": state.dir.path(),
        "image": state.dir.image(),
        "counters": {
            "scripts": c.scripts.load(Ordering::Relaxed),
            "files": c.files.load(Ordering::Relaxed),
            "refused": c.refused.load(Ordering::Relaxed),
            "lookup_failures": c.lookup_failures.load(Ordering::Relaxed),
        },
        "requests": requests,
    }))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;

    /// A boot server with no inventory behind it: every host is unknown and boots the agent.
    #[derive(Clone)]
    struct NoInventory;

    impl HostDirectory for NoInventory {
        async fn find(&self, _key: &HostKey) -> Result<Vec<KnownHost>, LookupError> {
            Ok(Vec::new())
        }
    }

    fn app(dir: &std::path::Path) -> Router {
        router(
            BootConfig {
                dir: dir.to_owned(),
                agent_port: 9002,
                advertise: None,
                server_key: None,
            },
            NoInventory,
        )
    }

    async fn get(
        app: &Router,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = Request::builder().uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn files_have_length_and_ranges_and_stay_inside_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let kernel: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        std::fs::write(dir.path().join("vmlinuz"), &kernel).unwrap();
        let app = app(dir.path());

        let (status, headers, body) = get(&app, "/boot/vmlinuz", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], "10000");
        assert_eq!(body, kernel);

        let (status, headers, body) =
            get(&app, "/boot/vmlinuz", &[("range", "bytes=100-199")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(headers[header::CONTENT_LENGTH], "100");
        assert_eq!(headers[header::CONTENT_RANGE], "bytes 100-199/10000");
        assert_eq!(body, kernel[100..200]);

        for uri in [
            "/boot/..%2f..%2fetc%2fpasswd",
            "/boot/%2e%2e",
            "/boot/../etc/passwd",
            "/boot/initramfs.img",
            "/boot/.hidden",
        ] {
            let (status, _, _) = get(&app, uri, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        }
        let (_, _, body) = get(&app, "/api/v1/boot", &[]).await;
        let status: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["counters"]["files"], 2);
        assert!(status["counters"]["refused"].as_u64().unwrap() >= 3);
    }

    #[tokio::test]
    async fn a_bare_request_is_asked_who_it_is_then_gets_the_agent_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("image.json"), br#"{"build_id": "qs-7"}"#).unwrap();
        let app = app(dir.path());
        let (status, headers, body) = get(&app, "/boot/ipxe", &[("host", "10.0.2.2:8080")]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("chain --autofree ipxe?mac="));

        let (status, _, body) = get(
            &app,
            "/boot/ipxe?mac=52:54:00:12:34:56&uuid=&serial=",
            &[("host", "10.0.2.2:8080")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let script = String::from_utf8(body).unwrap();
        assert!(
            script.contains("qs.controller=tcp://10.0.2.2:9002\n"),
            "{script}"
        );
        assert!(
            script.contains("# Quicksilver: boot the agent image qs-7\n"),
            "{script}"
        );

        let (status, _, _) =
            get(&app, "/boot/ipxe?mac=52:54:00:12:34:56", &[("host", "a b")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (_, _, body) = get(&app, "/api/v1/boot", &[]).await;
        let status: Value = serde_json::from_slice(&body).unwrap();
        let requests = status["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0]["answer"], "identify");
        assert_eq!(requests[1]["answer"], "agent");
        assert_eq!(requests[1]["mac"], "52:54:00:12:34:56");
        assert_eq!(status["image"]["build_id"], "qs-7");
    }

    #[tokio::test]
    async fn an_advertised_address_wins_over_the_host_header() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(
            BootConfig {
                dir: dir.path().to_owned(),
                agent_port: 9002,
                advertise: Some("tcp://192.0.2.10:7000".into()),
                server_key: None,
            },
            NoInventory,
        );
        let (_, _, body) = get(&app, "/boot/ipxe?serial=S1", &[("host", "10.0.2.2:8080")]).await;
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("qs.controller=tcp://192.0.2.10:7000\n"));
    }
}
