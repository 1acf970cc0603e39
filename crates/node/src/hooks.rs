//! Escalation hooks (docs/spec.md §5): a webhook (HTTP POST of a JSON event to `hooks.webhook_url`)
//! and a command (`hooks.command`, run by `sh -c` with the JSON event on standard input).
//!
//! [`Hooks::raise`] never waits: it puts the event in a bounded queue, by rank (see
//! [`HookEvent::rank`]); the dispatcher takes the highest rank first, oldest first within a
//! rank. When the queue is full the oldest event of the lowest rank present is dropped and
//! counted — never one that outranks the newcomer (then the newcomer is dropped), so a flood
//! of ROUTINE deadline alarms (a hostile peer can make everything overdue) cannot push out a
//! FLASH or link escalation. A dispatcher runs at most [`CONCURRENCY_MAX`] deliveries at
//! once; each target gets up to [`ATTEMPTS_MAX`] attempts, each bounded by
//! [`ATTEMPT_TIMEOUT`], with capped exponential backoff between them; every attempt is
//! logged and counted in the metrics. A hanging or failing hook therefore delays nothing
//! but other hook deliveries — never message delivery.
//!
//! Only `http://` webhooks are supported (no TLS stack for hooks in this version): point it
//! at a local relay for anything further.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detente_proto::{MessageId, Precedence};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify, Semaphore};

use crate::events::Metrics;

/// Events waiting for delivery, at most; beyond this the oldest of the lowest rank is dropped.
pub const QUEUE_MAX: usize = 1024;
/// Bytes of queued events (JSON bodies and their targets), at most, with the same rule.
pub const QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Ranks of [`HookEvent::rank`]: 0 (least) to `RANKS - 1` (FLASH and link alarms).
const RANKS: usize = 4;
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
    /// The peer's charter terms ask for deadlines (or a link-test interval) below this
    /// node's floors; the node did not sign that charter. Raised once per distinct set of
    /// terms, not once per session.
    CharterRefused {
        peer: String,
        below: Vec<detente_proto::BelowFloor>,
    },
}

impl HookEvent {
    pub fn name(&self) -> &'static str {
        match self {
            HookEvent::DeadlineMissed { .. } => "deadline_missed",
            HookEvent::LinkDown { .. } => "link_down",
            HookEvent::LinkRestored { .. } => "link_restored",
            HookEvent::LinkTestMissed { .. } => "link_test_missed",
            HookEvent::Equivocation { .. } => "equivocation",
            HookEvent::CharterRefused { .. } => "charter_refused",
        }
    }

    /// How much the event matters when the queue is full: a deadline alarm by its message's
    /// precedence (ROUTINE 0 … FLASH 3); link and equivocation alarms at the top, with
    /// `link_restored` beside its `link_down` so that the pair is not split by a flood.
    pub fn rank(&self) -> u8 {
        match self {
            HookEvent::DeadlineMissed { precedence, .. } => match Precedence::parse(precedence) {
                // An unknown name is kept on the safe side.
                Some(p) => (RANKS - 1 - p.index()) as u8,
                None => (RANKS - 1) as u8,
            },
            HookEvent::LinkDown { .. }
            | HookEvent::LinkRestored { .. }
            | HookEvent::LinkTestMissed { .. }
            | HookEvent::Equivocation { .. }
            | HookEvent::CharterRefused { .. } => (RANKS - 1) as u8,
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
                "due_at": crate::time_text(*due_at_ms),
            }),
            HookEvent::LinkDown { peer } | HookEvent::LinkRestored { peer } => {
                json!({ "peer": peer })
            }
            HookEvent::LinkTestMissed { peer, seq } => json!({ "peer": peer, "seq": seq }),
            HookEvent::Equivocation { peer, detail } => json!({ "peer": peer, "detail": detail }),
            HookEvent::CharterRefused { peer, below } => json!({
                "peer": peer,
                "refused": below_json(below),
            }),
        };
        v["event"] = json!(self.name());
        v["node"] = json!(node);
        v["at"] = json!(crate::time_text(at_ms));
        v
    }
}

/// Where hooks go (a snapshot of `hooks.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub webhook_url: String,
    pub command: String,
}

/// One queued delivery: where, the event's name and its JSON body.
struct Queued {
    targets: Targets,
    event: &'static str,
    body: String,
}

impl Queued {
    fn bytes(&self) -> usize {
        self.body.len() + self.targets.webhook_url.len() + self.targets.command.len()
    }
}

/// Events waiting, one FIFO per rank, bounded by [`QUEUE_MAX`] and [`QUEUE_BYTES_MAX`].
#[derive(Default)]
struct Queue {
    by_rank: [VecDeque<Queued>; RANKS],
    len: usize,
    bytes: usize,
    /// Drops since the queue last had room, by event name: logged once when the burst
    /// starts and once, summed, when it ends (a flood must not flood the log too).
    burst: BTreeMap<&'static str, u64>,
}

impl Queue {
    /// Add `q` at `rank`, first dropping as much as the bounds need. Returns the names of
    /// the events dropped (possibly `q`'s own).
    fn push(&mut self, rank: usize, q: Queued) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        if q.bytes() > QUEUE_BYTES_MAX {
            dropped.push(q.event);
            return dropped;
        }
        while self.len >= QUEUE_MAX || self.bytes + q.bytes() > QUEUE_BYTES_MAX {
            // The lowest rank present; never one above the newcomer's. When the queue holds
            // only top-rank events, a new top-rank one still evicts the oldest of them:
            // the bound holds whatever arrives, and the newest alarm is the likelier to be
            // still true.
            let Some(lowest) = (0..RANKS).find(|r| !self.by_rank[*r].is_empty()) else {
                break;
            };
            if lowest > rank {
                dropped.push(q.event);
                return dropped;
            }
            if let Some(old) = self.take(lowest) {
                dropped.push(old.event);
            }
        }
        self.len += 1;
        self.bytes += q.bytes();
        self.by_rank[rank].push_back(q);
        dropped
    }

    fn take(&mut self, rank: usize) -> Option<Queued> {
        let q = self.by_rank[rank].pop_front()?;
        self.len -= 1;
        self.bytes -= q.bytes();
        Some(q)
    }

    /// The next to deliver: highest rank first, oldest first within a rank.
    fn pop(&mut self) -> Option<Queued> {
        (0..RANKS).rev().find_map(|r| self.take(r))
    }
}

/// The hook queue and its dispatcher.
pub struct Hooks {
    queue: Mutex<Queue>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Hooks {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Hooks> {
        Arc::new(Hooks {
            queue: Mutex::new(Queue::default()),
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
        let queued = Queued {
            targets: targets.clone(),
            event: event.name(),
            body: document.to_string(),
        };
        let dropped = queue.push(usize::from(event.rank()), queued);
        if dropped.is_empty() {
            end_burst(&mut queue);
        } else if queue.burst.is_empty() {
            tracing::warn!(
                dropped = ?dropped,
                "hook queue full; dropping the oldest events of the lowest rank (logged once until it has room)"
            );
        }
        for name in dropped {
            self.metrics.hook_dropped();
            *queue.burst.entry(name).or_insert(0) += 1;
        }
        drop(queue);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Queued> {
        let mut queue = self.queue.lock().ok()?;
        let next = queue.pop();
        if queue.len == 0 {
            end_burst(&mut queue);
        }
        next
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
            while let Some(Queued {
                targets,
                event,
                body,
            }) = self.pop()
            {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = shutdown.changed() => return,
                };
                let http = http.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if !targets.webhook_url.is_empty() {
                        deliver(&metrics, "webhook", event, || {
                            post(&http, &targets.webhook_url, &body)
                        })
                        .await;
                    }
                    if !targets.command.is_empty() {
                        deliver(&metrics, "command", event, || {
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

/// Log, once, what a burst of drops cost, and start counting afresh.
fn end_burst(queue: &mut Queue) {
    if !queue.burst.is_empty() {
        let dropped = std::mem::take(&mut queue.burst);
        tracing::warn!(dropped = ?dropped, "hook queue has room again; events dropped meanwhile, by kind");
    }
}

/// Try one target up to [`ATTEMPTS_MAX`] times.
async fn deliver<F, Fut>(metrics: &Metrics, target: &'static str, event: &str, attempt: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
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

/// Charter terms refused below our floors, as hooks and the API (`status`) show them.
pub fn below_json(below: &[detente_proto::BelowFloor]) -> serde_json::Value {
    below
        .iter()
        .map(|b| {
            serde_json::json!({
                "term": b.term,
                "offered_ms": b.offered.as_millis() as u64,
                "floor_ms": b.floor.as_millis() as u64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(precedence: &'static str, seq: u64) -> HookEvent {
        HookEvent::DeadlineMissed {
            peer: "bravo".into(),
            id: MessageId([seq as u8; 32]),
            seq,
            direction: "in",
            precedence,
            topic: "t".into(),
            needed: "acknowledged",
            due_at_ms: 0,
        }
    }

    fn hooks() -> (Arc<Hooks>, Targets) {
        let targets = Targets {
            webhook_url: String::new(),
            command: "true".into(),
        };
        (Hooks::new(Arc::new(Metrics::default())), targets)
    }

    fn drain(h: &Hooks) -> Vec<Value> {
        std::iter::from_fn(|| h.pop())
            .map(|q| serde_json::from_str(&q.body).unwrap())
            .collect()
    }

    /// Issue 12 item 9: a flood of lesser alarms used to push a FLASH escalation out.
    #[test]
    fn a_flood_of_routine_alarms_keeps_the_flash_one() {
        let (h, targets) = hooks();
        for seq in 0..QUEUE_MAX as u64 {
            h.raise(&targets, "alpha", &deadline("routine", seq));
        }
        h.raise(&targets, "alpha", &deadline("flash", 7_777));
        h.raise(
            &targets,
            "alpha",
            &HookEvent::LinkDown {
                peer: "bravo".into(),
            },
        );
        for seq in 0..(2 * QUEUE_MAX) as u64 {
            h.raise(&targets, "alpha", &deadline("routine", seq));
        }
        assert_eq!(h.metrics.hook_dropped_total(), 2 + 2 * QUEUE_MAX as u64);
        let left = drain(&h);
        assert_eq!(left.len(), QUEUE_MAX);
        // Top rank first, in the order raised.
        assert_eq!(left[0]["precedence"], "flash");
        assert_eq!(left[0]["seq"], 7_777);
        assert_eq!(left[1]["event"], "link_down");
        assert!(left[2..].iter().all(|v| v["precedence"] == "routine"));
    }

    #[test]
    fn a_lesser_alarm_never_evicts_a_greater_one() {
        let (h, targets) = hooks();
        for seq in 0..QUEUE_MAX as u64 {
            h.raise(&targets, "alpha", &deadline("immediate", seq));
        }
        h.raise(&targets, "alpha", &deadline("routine", 9_999));
        let left = drain(&h);
        assert_eq!(left.len(), QUEUE_MAX);
        assert!(left.iter().all(|v| v["precedence"] == "immediate"));
        assert_eq!(
            left[0]["seq"], 0,
            "the newcomer was dropped, not the oldest"
        );
    }

    /// Full of top-rank events only, the queue stays bounded: the oldest top-rank one goes.
    #[test]
    fn top_rank_alone_still_evicts_the_oldest() {
        let (h, targets) = hooks();
        for seq in 0..(QUEUE_MAX + 3) as u64 {
            h.raise(&targets, "alpha", &deadline("flash", seq));
        }
        let left = drain(&h);
        assert_eq!(left.len(), QUEUE_MAX);
        assert_eq!(left[0]["seq"], 3);
        assert_eq!(h.metrics.hook_dropped_total(), 3);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let (h, _) = hooks();
        // Targets are the operator's; a long command stands for any large entry.
        let targets = Targets {
            webhook_url: String::new(),
            command: "x".repeat(QUEUE_BYTES_MAX / 8),
        };
        for seq in 0..16 {
            h.raise(&targets, "alpha", &deadline("flash", seq));
        }
        let q = h.queue.lock().unwrap();
        assert!(q.bytes <= QUEUE_BYTES_MAX);
        assert!(q.len < 8);
        drop(q);
        assert_eq!(drain(&h).last().unwrap()["seq"], 15);
    }
}
