//! Escalation hooks (docs/spec.md §5): a webhook (HTTP POST of a JSON event to `hooks.webhook_url`)
//! and a command (`hooks.command`, run by `sh -c` with the JSON event on standard input).
//!
//! [`Hooks::raise`] never waits: it puts the event in a bounded queue (when full, the oldest
//! event is dropped and counted). A dispatcher runs at most [`CONCURRENCY_MAX`] deliveries at
//! once; each target gets up to [`ATTEMPTS_MAX`] attempts, each bounded by
//! [`ATTEMPT_TIMEOUT`], with capped exponential backoff between them; every attempt is
//! logged and counted in the metrics. A hanging or failing hook therefore delays nothing
//! but other hook deliveries — never message delivery.
//!
//! Only `http://` webhooks are supported (no TLS stack for hooks in this version): point it
//! at a local relay for anything further.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detente_proto::MessageId;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify, Semaphore};

use crate::events::Metrics;

/// Events waiting for delivery, at most; beyond this the oldest is dropped.
pub const QUEUE_MAX: usize = 1024;
/// Deliveries in progress at once, at most.
pub const CONCURRENCY_MAX: usize = 4;
/// Attempts per target and event.
pub const ATTEMPTS_MAX: u32 = 5;
/// Time allowed to one attempt (connect, send, answer; or the command's whole run).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff before the second attempt; doubled each time, capped at [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What an escalation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// A message passed a deadline without the receipt it needed.
    DeadlineMissed {
        peer: String,
        id: MessageId,
        seq: u64,
        direction: &'static str,
        precedence: &'static str,
        topic: String,
        /// `delivered` or `acknowledged`.
        needed: &'static str,
        due_at_ms: i64,
    },
    /// The link to a peer went down (once per outage).
    LinkDown { peer: String },
    /// The link to a peer came back after an outage.
    LinkRestored { peer: String },
    /// A link test was not confirmed in time.
    LinkTestMissed { peer: String, seq: u64 },
    /// A peer signed two different envelopes for the same place in its stream.
    Equivocation { peer: String, detail: String },
}

impl HookEvent {
    pub fn name(&self) -> &'static str {
        match self {
            HookEvent::DeadlineMissed { .. } => "deadline_missed",
            HookEvent::LinkDown { .. } => "link_down",
            HookEvent::LinkRestored { .. } => "link_restored",
            HookEvent::LinkTestMissed { .. } => "link_test_missed",
            HookEvent::Equivocation { .. } => "equivocation",
        }
    }

    /// The JSON document a hook receives.
    pub fn to_json(&self, node: &str, at_ms: i64) -> Value {
        let mut v = match self {
            HookEvent::DeadlineMissed {
                peer,
                id,
                seq,
                direction,
                precedence,
                topic,
                needed,
                due_at_ms,
            } => json!({
                "peer": peer, "id": id.to_hex(), "seq": seq, "direction": direction,
                "precedence": precedence, "topic": topic, "needed": needed,
                "due_at": crate::api::time_text(*due_at_ms),
            }),
            HookEvent::LinkDown { peer } | HookEvent::LinkRestored { peer } => {
                json!({ "peer": peer })
            }
            HookEvent::LinkTestMissed { peer, seq } => json!({ "peer": peer, "seq": seq }),
            HookEvent::Equivocation { peer, detail } => json!({ "peer": peer, "detail": detail }),
        };
        v["event"] = json!(self.name());
        v["node"] = json!(node);
        v["at"] = json!(crate::api::time_text(at_ms));
        v
    }
}

/// Where hooks go (a snapshot of `hooks.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub webhook_url: String,
    pub command: String,
}

/// The hook queue and its dispatcher.
pub struct Hooks {
    queue: Mutex<VecDeque<(Targets, Value)>>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Hooks {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Hooks> {
        Arc::new(Hooks {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Queue an event for the configured targets. Never blocks; with no target configured
    /// it only logs.
    pub fn raise(&self, targets: &Targets, node: &str, event: &HookEvent) {
        let document = event.to_json(node, crate::now_ms() as i64);
        tracing::warn!(event = event.name(), detail = %document, "alarm");
        self.metrics.alarm(event.name());
        if targets.webhook_url.is_empty() && targets.command.is_empty() {
            return;
        }
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        if queue.len() >= QUEUE_MAX {
            queue.pop_front();
            self.metrics.hook_dropped();
            tracing::warn!("hook queue full; dropped the oldest event");
        }
        queue.push_back((targets.clone(), document));
        drop(queue);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<(Targets, Value)> {
        self.queue.lock().ok()?.pop_front()
    }

    /// Deliver queued events until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let http = match reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; hooks disabled");
                return;
            }
        };
        let permits = Arc::new(Semaphore::new(CONCURRENCY_MAX));
        loop {
            while let Some((targets, document)) = self.pop() {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = shutdown.changed() => return,
                };
                let http = http.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let body = document.to_string();
                    if !targets.webhook_url.is_empty() {
                        deliver(&metrics, "webhook", &document, || {
                            post(&http, &targets.webhook_url, &body)
                        })
                        .await;
                    }
                    if !targets.command.is_empty() {
                        deliver(&metrics, "command", &document, || {
                            run_command(&targets.command, &body)
                        })
                        .await;
                    }
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Try one target up to [`ATTEMPTS_MAX`] times.
async fn deliver<F, Fut>(metrics: &Metrics, target: &'static str, document: &Value, attempt: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let event = document["event"].as_str().unwrap_or("");
    let mut backoff = BACKOFF_INITIAL;
    for n in 1..=ATTEMPTS_MAX {
        let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        };
        match result {
            Ok(()) => {
                metrics.hook_attempt(target, true);
                tracing::info!(target, event, attempt = n, "hook delivered");
                return;
            }
            Err(reason) => {
                metrics.hook_attempt(target, false);
                tracing::warn!(target, event, attempt = n, %reason, "hook attempt failed");
            }
        }
        if n < ATTEMPTS_MAX {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    metrics.hook_gave_up(target);
    tracing::error!(
        target,
        event,
        attempts = ATTEMPTS_MAX,
        "hook failed; giving up"
    );
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> Result<(), String> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

async fn run_command(command: &str, body: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is its own business.
        let _ = stdin.write_all(body.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exited with {status}"))
    }
}
