//! The HTTP client the operator commands use.

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A client for one controller's `/api/v1`.
pub struct ApiClient {
    base: reqwest::Url,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the controller at `base`.
    pub fn new(base: reqwest::Url) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { base, http })
    }

    /// A client for the controller at `base` that sends `token` as its bearer token.
    pub fn with_token(base: reqwest::Url, token: &str) -> anyhow::Result<Self> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token holds characters a header cannot carry")?;
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { base, http })
    }

    /// DELETEs a path under `/api/v1`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = self.url(path)?;
        let response = self
            .http
            .delete(url.clone())
            .send()
            .await
            .with_context(|| format!("cannot reach the controller at {url}"))?;
        decode(response).await
    }

    fn url(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        self.base
            .join(&format!("api/v1/{path}"))
            .with_context(|| format!("bad API URL {} + {path}", self.base))
    }

    /// GETs a path under `/api/v1`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = self.url(path)?;
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .with_context(|| format!("cannot reach the controller at {url}"))?;
        decode(response).await
    }

    /// POSTs JSON to a path under `/api/v1`.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        let url = self.url(path)?;
        let response = self
            .http
            .post(url.clone())
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the controller at {url}"))?;
        decode(response).await
    }

    /// PUTs JSON to a path under `/api/v1`.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        let url = self.url(path)?;
        let response = self
            .http
            .put(url.clone())
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the controller at {url}"))?;
        decode(response).await
    }
}

/// A refusal from the API: its HTTP status and error code, for callers that act on them
/// (downcast the `anyhow::Error`).
#[derive(Debug, thiserror::Error)]
#[error("controller answered {status}: {message}")]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The API's error code (`confirmation_required`, `not_found`, ...).
    pub code: String,
    /// The API's message.
    pub message: String,
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .context("cannot read the controller's reply")?;
    if !status.is_success() {
        let body = serde_json::from_slice::<Value>(&bytes).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|v| v.pointer(&format!("/error/{name}")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        return Err(anyhow::Error::new(ApiFailure {
            status,
            code: field("code").unwrap_or_default(),
            message: field("message")
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        }));
    }
    serde_json::from_slice(&bytes).context("controller reply is not the expected JSON")
}
