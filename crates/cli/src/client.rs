//! A client of a running node's HTTP API, as the command line, the demo and the benchmark
//! use it. It finds the node through its directory: the run file a running node writes
//! (actual addresses) and the API token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use detente_node::config::{NodeDir, RUN_FILE};
use serde_json::Value;

/// A failed API call, with the words to show the operator.
#[derive(Debug)]
pub struct ClientError {
    pub error: String,
    pub hint: Option<String>,
    /// HTTP status, when the node answered.
    pub status: Option<u16>,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            hint: None,
            status: None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Client {
    /// A client for the node in `dir`. Fails with a hint when there is no node there.
    pub fn for_dir(dir: &Path) -> Result<Self, ClientError> {
        let node = NodeDir::new(dir);
        let config = node.load().map_err(|e| ClientError {
            error: e.to_string(),
            hint: Some(format!(
                "create one with: detente init --dir {} --name NAME --party \"FULL NAME\"",
                dir.display()
            )),
            status: None,
        })?;
        let token = node.token().map_err(|e| ClientError::new(e.to_string()))?;
        let console = std::fs::read_to_string(node.file(RUN_FILE))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v["console_listen"].as_str().map(str::to_string))
            .unwrap_or(config.console_listen);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(660))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ClientError::new(e.to_string()))?;
        Ok(Self {
            base: format!("http://{console}"),
            token,
            http,
            dir: dir.to_path_buf(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// POST `body` with an `Idempotency-Key` (when given): the answer, and whether the node
    /// gave it as the replay of an earlier request with that key (`Idempotent-Replayed`),
    /// in which case nothing was sent again.
    pub async fn post_idempotent(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<(Value, bool), ClientError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", format!("\"{key}\""));
        }
        let response = self.send(request).await?;
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok((answer, replayed));
        }
        Err(ClientError {
            error: answer["error"]
                .as_str()
                .map_or_else(|| format!("the node answered {status}"), str::to_string),
            hint: answer["hint"].as_str().map(str::to_string),
            status: Some(status.as_u16()),
        })
    }

    /// A binary answer (an export bundle).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let response = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        let status = response.status();
        if status.is_success() {
            return response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| ClientError::new(format!("reading the answer: {e}")));
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(ClientError {
            error: body["error"]
                .as_str()
                .map_or_else(|| format!("the node answered {status}"), str::to_string),
            hint: body["hint"].as_str().map(str::to_string),
            status: Some(status.as_u16()),
        })
    }

    /// A binary answer (an export bundle) written to `file` as it arrives, never held whole
    /// in memory; `on_bytes` is told the running total. Returns the bytes written. The file is
    /// made durable before this returns; an answer cut short is an error.
    pub async fn download(
        &self,
        path: &str,
        file: &std::path::Path,
        mut on_bytes: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        use std::io::Write;
        let mut response = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return Err(ClientError {
                error: body["error"]
                    .as_str()
                    .map_or_else(|| format!("the node answered {status}"), str::to_string),
                hint: body["hint"].as_str().map(str::to_string),
                status: Some(status.as_u16()),
            });
        }
        let io = |e: std::io::Error| ClientError::new(format!("writing {}: {e}", file.display()));
        let mut out = std::fs::File::create(file).map_err(io)?;
        let mut total = 0u64;
        loop {
            let chunk = response.chunk().await.map_err(|e| {
                ClientError::new(format!(
                    "the node stopped sending after {total} bytes ({e}); `detente status` says why"
                ))
            })?;
            let Some(chunk) = chunk else { break };
            out.write_all(&chunk).map_err(io)?;
            total += chunk.len() as u64;
            on_bytes(total);
        }
        out.sync_all().map_err(io)?;
        Ok(total)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        request.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                ClientError {
                    error: format!("the node in {} is not running", self.dir.display()),
                    hint: Some(format!(
                        "start it with: detente serve --dir {}",
                        self.dir.display()
                    )),
                    status: None,
                }
            } else {
                ClientError::new(format!("talking to the node: {e}"))
            }
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                ClientError {
                    error: format!("the node in {} is not running", self.dir.display()),
                    hint: Some(format!(
                        "start it with: detente serve --dir {}",
                        self.dir.display()
                    )),
                    status: None,
                }
            } else {
                ClientError::new(format!("talking to the node: {e}"))
            }
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError {
            error: body["error"]
                .as_str()
                .map_or_else(|| format!("the node answered {status}"), str::to_string),
            hint: body["hint"].as_str().map(str::to_string),
            status: Some(status.as_u16()),
        })
    }

    /// A text document (such as `/metrics`), with the token.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ClientError::new(format!("talking to the node: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::new(format!("reading the answer: {e}")))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(ClientError::new(format!(
                "the node answered {status}: {text}"
            )))
        }
    }

    /// Whether the node answers at all.
    pub async fn healthy(&self) -> bool {
        matches!(self.http.get(format!("{}/healthz", self.base)).send().await, Ok(r) if r.status().is_success())
    }
}
