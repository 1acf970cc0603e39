//! Node events for live listings and waiting clients (`send --wait`, `inbox --follow`).
//!
//! A broadcast channel with a bounded backlog: a slow listener loses old events (it is told
//! it lagged and re-reads the store), and never slows the writer.

use detente_proto::{MessageId, Precedence, ReceiptLevel};
use detente_store::Direction;
use tokio::sync::broadcast;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events kept for slow listeners.
pub const EVENTS_BACKLOG_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub enum Event {
    /// A message became durable (written here or received).
    Stored {
        peer: String,
        id: MessageId,
        seq: u64,
        direction: Direction,
        precedence: Precedence,
        kind: u8,
        /// When its deadlines start, as stored (wall clock ms): `created_at_ms` for ours,
        /// `stored_at_ms` for received ones — the key the deadline watch reads back by.
        start_ms: i64,
    },
    /// The peer confirmed our envelopes `from..=to` durable (a signed DELIVERED receipt).
    Delivered { peer: String, from: u64, to: u64 },
    /// A READ / ACKNOWLEDGED / DECLINED receipt for one of our messages, or (published by
    /// the API) one this node sent for a received message.
    Receipt { of: MessageId, level: ReceiptLevel },
    /// A message passed its deadline without the receipt it needed (`needed`: delivered or
    /// acknowledged). Recorded durably before this is published.
    Overdue {
        peer: String,
        id: MessageId,
        needed: &'static str,
    },
    /// Equivocation evidence was stored; the channel with `peer` is flagged.
    Alarm { peer: String, detail: String },
    /// A held envelope of the peer's, stored earlier, was taken out of the messages: it did
    /// not follow the envelope that filled the gap before it (kept as broken-chain evidence).
    /// It owes no deadline and is no longer counted unanswered or overdue.
    Discarded { peer: String, id: MessageId },
}

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(EVENTS_BACKLOG_MAX).0,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The node's counters (every published event is counted here, so none is lost to a
    /// lagging listener).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn publish(&self, event: Event) {
        self.metrics.count(&event);
        // No listener is fine.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Counters and gauges kept by the node itself, for `/metrics`. Gauges that come from the
/// store or the links (outbox depth, link state) are read when `/metrics` is asked.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages stored, by [direction 0 out / 1 in][precedence][kind, see KIND_NAMES].
    messages: [[[AtomicU64; 5]; 4]; 2],
    /// Our envelopes confirmed by the peer's signed DELIVERED receipts.
    delivered: AtomicU64,
    /// Receipts (READ / ACKNOWLEDGED / DECLINED) recorded.
    receipts: AtomicU64,
    /// Deadlines missed, by needed receipt (0 delivered, 1 acknowledged).
    overdue: [AtomicU64; 2],
    /// Envelopes from peers whose signature or encoding did not verify.
    verification_failures: AtomicU64,
    /// Hook attempts by [target 0 webhook / 1 command][0 failed / 1 ok].
    hook_attempts: [[AtomicU64; 2]; 2],
    /// Hook deliveries given up after every attempt, by target.
    hook_failures: [AtomicU64; 2],
    /// Events dropped because the hook queue was full.
    hook_dropped: AtomicU64,
    /// Alarms raised, by event name.
    alarms: Mutex<BTreeMap<&'static str, u64>>,
    /// When the latest transcript checkpoint was made (wall clock ms), if any.
    checkpoint_at_ms: Mutex<Option<i64>>,
    /// Pending messages the deadline watch holds in memory now, and the most at once.
    deadlines_watched: [AtomicU64; 2],
}

/// Kinds counted apart; every other kind (the charter, ...) counts as `other`.
pub const KIND_NAMES: [&str; 5] = ["text", "receipt", "test", "notification", "other"];

fn target_index(target: &str) -> usize {
    usize::from(target != "webhook")
}

impl Metrics {
    fn count(&self, event: &Event) {
        match event {
            Event::Stored {
                direction,
                precedence,
                kind,
                ..
            } => {
                let d = usize::from(*direction != Direction::Out);
                // Body kinds: 0 text, 1 receipt, 2 test, 4 notification; the rest (charter)
                // count as other.
                let k = match kind {
                    0..=2 => usize::from(*kind),
                    4 => 3,
                    _ => 4,
                };
                self.messages[d][precedence.index()][k].fetch_add(1, Ordering::Relaxed);
            }
            Event::Delivered { from, to, .. } => {
                self.delivered.fetch_add(
                    to.saturating_sub(*from).saturating_add(1),
                    Ordering::Relaxed,
                );
            }
            Event::Receipt { .. } => {
                self.receipts.fetch_add(1, Ordering::Relaxed);
            }
            Event::Overdue { needed, .. } => {
                let i = usize::from(*needed != "delivered");
                self.overdue[i].fetch_add(1, Ordering::Relaxed);
            }
            // Counted by name when the deadline watch raises it (`alarms`).
            Event::Alarm { .. } | Event::Discarded { .. } => {}
        }
    }

    pub fn verification_failed(&self) {
        self.verification_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hook_attempt(&self, target: &str, ok: bool) {
        self.hook_attempts[target_index(target)][usize::from(ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn hook_gave_up(&self, target: &str) {
        self.hook_failures[target_index(target)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn hook_dropped(&self) {
        self.hook_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn alarm(&self, name: &'static str) {
        if let Ok(mut a) = self.alarms.lock() {
            *a.entry(name).or_insert(0) += 1;
        }
    }

    /// Record when the latest transcript checkpoint was made (for `detente_checkpoint_age`).
    pub fn set_checkpoint(&self, at_ms: i64) {
        if let Ok(mut c) = self.checkpoint_at_ms.lock() {
            *c = Some(at_ms);
        }
    }

    /// Record how many pending messages the deadline watch holds in memory (`now`) and the
    /// most it held at once (`peak`); both stay within `deadlines.watched_max`.
    pub fn set_deadlines_watched(&self, now: usize, peak: usize) {
        self.deadlines_watched[0].store(now as u64, Ordering::Relaxed);
        self.deadlines_watched[1].store(peak as u64, Ordering::Relaxed);
    }

    /// (in memory now, most at once) of the deadline watch.
    pub fn deadlines_watched(&self) -> (u64, u64) {
        (
            self.deadlines_watched[0].load(Ordering::Relaxed),
            self.deadlines_watched[1].load(Ordering::Relaxed),
        )
    }

    pub fn checkpoint_at_ms(&self) -> Option<i64> {
        self.checkpoint_at_ms.lock().ok().and_then(|c| *c)
    }

    /// (direction, precedence, kind, count) for every combination.
    pub fn messages(&self) -> Vec<(&'static str, Precedence, &'static str, u64)> {
        let mut out = Vec::new();
        for (d, dir) in ["out", "in"].into_iter().enumerate() {
            for p in Precedence::ALL {
                for (k, kind) in KIND_NAMES.into_iter().enumerate() {
                    out.push((
                        dir,
                        p,
                        kind,
                        self.messages[d][p.index()][k].load(Ordering::Relaxed),
                    ));
                }
            }
        }
        out
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn receipts(&self) -> u64 {
        self.receipts.load(Ordering::Relaxed)
    }

    /// Deadlines missed: (delivered, acknowledged).
    pub fn overdue_total(&self) -> (u64, u64) {
        (
            self.overdue[0].load(Ordering::Relaxed),
            self.overdue[1].load(Ordering::Relaxed),
        )
    }

    pub fn verification_failures(&self) -> u64 {
        self.verification_failures.load(Ordering::Relaxed)
    }

    /// (target, result, count).
    pub fn hook_attempts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (t, target) in ["webhook", "command"].into_iter().enumerate() {
            for (r, result) in ["failed", "ok"].into_iter().enumerate() {
                out.push((
                    target,
                    result,
                    self.hook_attempts[t][r].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }

    /// (target, deliveries given up).
    pub fn hook_failures(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("webhook", self.hook_failures[0].load(Ordering::Relaxed)),
            ("command", self.hook_failures[1].load(Ordering::Relaxed)),
        ]
    }

    pub fn hook_dropped_total(&self) -> u64 {
        self.hook_dropped.load(Ordering::Relaxed)
    }

    pub fn alarms(&self) -> Vec<(&'static str, u64)> {
        self.alarms
            .lock()
            .map(|a| a.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}
