//! The watch task: acknowledgment deadlines, link supervision alarms and link tests.
//!
//! **Deadlines** (rules in `detente_proto::deadline`). Every text or notification message
//! owes a receipt by a deadline: the sender counts from when it wrote the message, the
//! receiver from when it received it. While the node runs, time is measured on the
//! monotonic clock (`tokio::time::Instant`): a message written or received now starts now,
//! and the task sleeps until the earliest due time — a wall-clock jump neither fires nor
//! hides a deadline. The monotonic clock restarts with the process, so on start the elapsed
//! time of each pending message is recovered from its stored wall-clock time
//! (`created_at_ms` for ours, `stored_at_ms` for received ones) with
//! [`detente_proto::deadline::elapsed_since`]; a start in the future (clock stepped back)
//! counts as now, so a jump while the node was stopped can delay an alarm but never fire
//! one early. A missed deadline is recorded durably (`deadline_misses`) before anything is
//! shown or any hook runs, so a restart neither forgets an alarm nor raises it twice.
//!
//! **Links.** Every [`LINK_POLL`] the task reads each link's state (docs/spec.md §4 thresholds, see
//! `detente_proto::link`): a link that was up and is now `down` raises one `link_down`
//! alarm per outage; it clears (with a `link_restored` event) when the link is up again.
//!
//! **Link tests.** Every `link.test_interval` a signed TEST envelope goes to each peer at
//! FLASH precedence; its DELIVERED receipt must come back within the FLASH delivery
//! deadline, or a `link_test_missed` alarm is raised (once per miss, cleared by the next
//! confirmed test).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use detente_proto::deadline::{self, Deadlines, LinkTest, Need, Side};
use detente_proto::{Body, LinkState, MessageId, Precedence, ReceiptLevel};
use detente_store::{DeadlineCandidate, Direction, MissRow, Store};
use rand::Rng;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::events::Event;
use crate::hooks::{HookEvent, Targets};
pub use crate::peers::PeerAlarms;
use crate::writer::SendRequest;
use crate::{now_ms, Shared};

/// How often link states are read for alarms. Link-down is defined as nothing heard for
/// three heartbeats; this adds at most this much to noticing it.
pub const LINK_POLL: Duration = Duration::from_millis(200);
/// Messages tracked for deadlines at most (the newest pending ones are loaded on start).
pub const TRACKED_MAX: usize = 200_000;

/// The deadlines that apply on the channel with `peer`: the agreed charter's (the stricter
/// of both parties' values), or this node's own configuration before the first agreement.
pub fn deadlines_for(shared: &Shared, peer: &str) -> Deadlines {
    shared.deadlines(peer)
}

/// The link-test interval with `peer`: the charter's (the shorter of both parties'), or this
/// node's `link.test_interval` before the first agreement.
pub fn test_interval_for(shared: &Shared, peer: &str) -> Duration {
    match shared.charter(peer) {
        Some(c) => c.link_test_interval,
        None => shared
            .config
            .read()
            .map(|c| c.link_test_interval())
            .unwrap_or(Duration::from_secs(3600)),
    }
}

fn targets(shared: &Shared) -> (Targets, String) {
    shared.config.read().map_or_else(
        |_| (Targets::default(), String::new()),
        |c| {
            (
                Targets {
                    webhook_url: c.hooks.webhook_url.clone(),
                    command: c.hooks.command.clone(),
                },
                c.name.clone(),
            )
        },
    )
}

/// Raise an alarm: log, count, and run the hooks. For other parts of the node too (the
/// transcript work raises [`HookEvent::Equivocation`] through this).
pub fn raise(shared: &Shared, event: HookEvent) {
    let (targets, node) = targets(shared);
    shared.hooks.raise(&targets, &node, &event);
}

struct Tracked {
    peer: String,
    seq: u64,
    direction: Direction,
    precedence: Precedence,
    topic: String,
    start: Instant,
    start_ms: i64,
    /// Deadlines not met and not yet missed: (need, due after start).
    open: Vec<(Need, Duration)>,
    /// Deadlines missed whose receipt has not come.
    overdue: BTreeSet<Need>,
}

#[derive(Default)]
struct Deadline {
    tracked: HashMap<MessageId, Tracked>,
    /// (due, id, need), earliest first.
    queue: BTreeSet<(Instant, [u8; 32], Need)>,
    /// Our FLASH messages waiting for DELIVERED: (peer, seq) -> id.
    flash_out: BTreeMap<(String, u64), MessageId>,
    /// Per peer, what `status` shows, kept in step with `tracked` on every change (so an
    /// event costs O(1) here, not a walk over every pending message).
    counts: HashMap<String, Counts>,
}

/// Per peer: our overdue messages, the peer's overdue messages, the peer's unanswered ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    overdue_out: u64,
    overdue_in: u64,
    unanswered_in: u64,
}

/// Add (`add`) or remove a tracked message's share of its peer's [`Counts`].
fn tally(counts: &mut HashMap<String, Counts>, t: &Tracked, add: bool) {
    let c = match counts.get_mut(&t.peer) {
        Some(c) => c,
        None => counts.entry(t.peer.clone()).or_default(),
    };
    let step = |v: &mut u64, by: bool| {
        if by {
            *v = if add { *v + 1 } else { v.saturating_sub(1) };
        }
    };
    let overdue = !t.overdue.is_empty();
    match t.direction {
        Direction::Out => step(&mut c.overdue_out, overdue),
        Direction::In => {
            step(&mut c.overdue_in, overdue);
            step(&mut c.unanswered_in, true);
        }
    }
}

impl Deadline {
    /// Start watching `id` under deadlines `d` (the channel's), skipping the needs in
    /// `missed` (already recorded as missed: overdue from the start).
    fn track(&mut self, d: &Deadlines, id: MessageId, t: Tracked, missed: &[u8]) {
        if self.tracked.contains_key(&id) || self.tracked.len() >= TRACKED_MAX {
            return;
        }
        let side = if t.direction == Direction::Out {
            Side::Sender
        } else {
            Side::Receiver
        };
        let mut t = t;
        for (need, after) in deadline::obligations(0, side, t.precedence, d) {
            if missed.contains(&need.code()) {
                t.overdue.insert(need);
            } else {
                t.open.push((need, after));
                self.queue.insert((t.start + after, id.0, need));
            }
            if need == Need::Delivered {
                self.flash_out.insert((t.peer.clone(), t.seq), id);
            }
        }
        if !t.open.is_empty() || !t.overdue.is_empty() {
            tally(&mut self.counts, &t, true);
            self.tracked.insert(id, t);
        }
    }

    /// The receipt `need` came for `id` (Answered also settles Delivered).
    fn settle(&mut self, id: MessageId, need: Need) -> Option<(String, bool)> {
        let t = self.tracked.get_mut(&id)?;
        tally(&mut self.counts, t, false);
        let was_overdue = !t.overdue.is_empty();
        let settles = |n: Need| n == need || need == Need::Answered;
        for (n, after) in t.open.iter().filter(|(n, _)| settles(*n)) {
            self.queue.remove(&(t.start + *after, id.0, *n));
        }
        t.open.retain(|(n, _)| !settles(*n));
        t.overdue.retain(|n| !settles(*n));
        if settles(Need::Delivered) {
            self.flash_out.remove(&(t.peer.clone(), t.seq));
        }
        let peer = t.peer.clone();
        let late = was_overdue && t.overdue.is_empty();
        if t.open.is_empty() && t.overdue.is_empty() {
            self.tracked.remove(&id);
        } else {
            tally(&mut self.counts, t, true);
        }
        Some((peer, late))
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _, _)| *at)
    }

    fn counts(&self, peer: &str) -> Counts {
        self.counts.get(peer).copied().unwrap_or_default()
    }
}

fn candidate(c: &DeadlineCandidate, now: Instant, wall: i64) -> Option<(MessageId, Tracked)> {
    let precedence = Precedence::from_u8(c.precedence)?;
    let start_ms = match c.direction {
        Direction::Out => c.created_at_ms,
        Direction::In => c.stored_at_ms,
    };
    Some((
        MessageId(c.id),
        Tracked {
            peer: c.peer.clone(),
            seq: c.seq,
            direction: c.direction,
            precedence,
            topic: String::new(),
            start: deadline::start_instant(start_ms, wall, now.into_std()).into(),
            start_ms,
            open: Vec::new(),
            overdue: BTreeSet::new(),
        },
    ))
}

/// Load pending messages from the store (on start, and after missing events).
async fn load(shared: &Shared, state: &mut Deadline) {
    let rows = match shared.store.deadline_candidates(TRACKED_MAX as u32).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read pending deadlines");
            return;
        }
    };
    let (now, wall) = (Instant::now(), now_ms() as i64);
    for c in &rows {
        if let Some((id, t)) = candidate(c, now, wall) {
            // A FLASH of ours recorded missed for delivery may have been delivered since.
            let mut missed = c.missed.clone();
            if missed.contains(&Need::Delivered.code()) {
                if let Ok(times) = shared.store.receipt_times(c.id).await {
                    if times.delivered_ms.is_some() {
                        missed.retain(|m| *m != Need::Delivered.code());
                        // Delivered late: settled, not pending.
                        let mut t = t;
                        t.overdue.clear();
                        state.track(&deadlines_for(shared, &t.peer), id, t, &missed);
                        state.settle(id, Need::Delivered);
                        continue;
                    }
                }
            }
            let d = deadlines_for(shared, &t.peer);
            state.track(&d, id, t, &missed);
        }
    }
    if rows.len() >= TRACKED_MAX {
        tracing::warn!(
            limit = TRACKED_MAX,
            "more messages pending than tracked; the oldest are not watched"
        );
    }
}

struct LinkWatch {
    was_up: bool,
    down_alarm: bool,
    test: Option<LinkTest>,
    interval: Duration,
}

/// Run the watch task until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut events = shared.events.subscribe();
    let mut state = Deadline::default();
    load(&shared, &mut state).await;
    let mut links: HashMap<String, LinkWatch> = HashMap::new();
    let mut next_link_poll = Instant::now();
    publish_counts(&shared, &state, &links);
    loop {
        let now = Instant::now();
        let mut wake = next_link_poll;
        if let Some(due) = state.next_due() {
            wake = wake.min(due);
        }
        for w in links.values() {
            if let Some(t) = &w.test {
                wake = wake.min(t.next_wake().into());
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => on_event(&shared, &mut state, &mut links, event).await,
                Err(RecvError::Lagged(_)) => load(&shared, &mut state).await,
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(wake.max(now)) => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        fire_due(&shared, &mut state, now).await;
        if now >= next_link_poll {
            poll_links(&shared, &mut links, now).await;
            next_link_poll = now + LINK_POLL;
        }
        publish_counts(&shared, &state, &links);
    }
}

async fn on_event(
    shared: &Shared,
    state: &mut Deadline,
    links: &mut HashMap<String, LinkWatch>,
    event: Event,
) {
    match event {
        // Equivocation evidence was stored (two envelopes for one seq, or inconsistent
        // checkpoints): escalate.
        Event::Alarm { peer, detail } => {
            raise(shared, HookEvent::Equivocation { peer, detail });
        }
        Event::Stored {
            peer,
            id,
            seq,
            direction,
            precedence,
            kind,
        } if deadline::bears_deadline(kind) => {
            let t = Tracked {
                peer,
                seq,
                direction,
                precedence,
                topic: String::new(),
                start: Instant::now(),
                start_ms: now_ms() as i64,
                open: Vec::new(),
                overdue: BTreeSet::new(),
            };
            let d = deadlines_for(shared, &t.peer);
            state.track(&d, id, t, &[]);
        }
        Event::Delivered { peer, from, to } => {
            let ids: Vec<MessageId> = state
                .flash_out
                .range((peer.clone(), from)..=(peer.clone(), to))
                .map(|(_, id)| *id)
                .collect();
            for id in ids {
                if let Some((peer, true)) = state.settle(id, Need::Delivered) {
                    tracing::info!(%peer, id = %id.to_hex(), "late DELIVERED receipt");
                }
            }
            if let Some(w) = links.get_mut(&peer) {
                if let Some(test) = &mut w.test {
                    if let Some(rtt) = test.on_delivered(from, to, Instant::now().into_std()) {
                        tracing::info!(%peer, rtt_ms = rtt.as_millis() as u64, "link test confirmed");
                        if let Some(entry) = shared.table.get(&peer) {
                            if let Ok(mut a) = entry.alarms.write() {
                                a.last_test_ms = Some(now_ms() as i64);
                            }
                        }
                    }
                }
            }
        }
        Event::Receipt { of, level } => {
            if matches!(level, ReceiptLevel::Acknowledged | ReceiptLevel::Declined) {
                if let Some((peer, true)) = state.settle(of, Need::Answered) {
                    tracing::info!(%peer, id = %of.to_hex(), level = level.name(), "late answer");
                }
            }
        }
        _ => {}
    }
}

/// Mark every deadline due by `now` whose receipt has not come: durably first, then shown
/// and escalated.
async fn fire_due(shared: &Shared, state: &mut Deadline, now: Instant) {
    let mut due = Vec::new();
    while let Some(&(at, id, need)) = state.queue.first() {
        if at > now {
            break;
        }
        state.queue.remove(&(at, id, need));
        due.push((MessageId(id), need));
    }
    if due.is_empty() {
        return;
    }
    let wall = now_ms() as i64;
    let mut rows = Vec::new();
    let mut fired = Vec::new();
    for (id, need) in due {
        // The receipt may have come without an event reaching us (or the event is queued
        // behind this wake-up): the store decides.
        let met = match shared.store.receipt_times(id.0).await {
            Ok(times) => match need {
                Need::Delivered => times.delivered_ms.is_some(),
                Need::Answered => times.acknowledged_ms.is_some() || times.declined_ms.is_some(),
            },
            Err(_) => false,
        };
        if met {
            state.settle(id, need);
            continue;
        }
        let Some(t) = state.tracked.get_mut(&id) else {
            continue;
        };
        let Some(pos) = t.open.iter().position(|(n, _)| *n == need) else {
            continue;
        };
        tally(&mut state.counts, t, false);
        let (_, after) = t.open.remove(pos);
        t.overdue.insert(need);
        tally(&mut state.counts, t, true);
        let due_at_ms = t.start_ms + after.as_millis() as i64;
        rows.push(MissRow {
            id: id.0,
            level: need.code(),
            due_at_ms,
            missed_at_ms: wall,
        });
        fired.push((id, need, after, due_at_ms));
    }
    if rows.is_empty() {
        return;
    }
    if let Err(e) = shared.writer.record_misses(rows).await {
        tracing::error!(error = %e, "cannot record missed deadlines; will retry");
        // Put them back so the next wake-up tries again.
        for (id, need, after, _) in fired {
            if let Some(t) = state.tracked.get_mut(&id) {
                tally(&mut state.counts, t, false);
                t.overdue.remove(&need);
                t.open.push((need, after));
                tally(&mut state.counts, t, true);
                // Try again in a second (a failing store must not make this spin). A
                // settled message's stale queue entry is skipped when it comes up.
                state
                    .queue
                    .insert((Instant::now() + Duration::from_secs(1), id.0, need));
            }
        }
        return;
    }
    for (id, need, _, due_at_ms) in fired {
        let Some(t) = state.tracked.get(&id) else {
            continue;
        };
        let topic = match shared.store.message(id.0).await {
            Ok(Some(row)) => row.topic,
            _ => t.topic.clone(),
        };
        shared.events.publish(Event::Overdue {
            peer: t.peer.clone(),
            id,
            needed: need.name(),
        });
        raise(
            shared,
            HookEvent::DeadlineMissed {
                peer: t.peer.clone(),
                id,
                seq: t.seq,
                direction: if t.direction == Direction::Out {
                    "out"
                } else {
                    "in"
                },
                precedence: t.precedence.name(),
                topic,
                needed: need.name(),
                due_at_ms,
            },
        );
    }
}

async fn poll_links(shared: &Shared, links: &mut HashMap<String, LinkWatch>, now: Instant) {
    for entry in shared.table.all() {
        let interval = test_interval_for(shared, &entry.name);
        let bound = deadlines_for(shared, &entry.name).flash_delivered;
        let w = links
            .entry(entry.name.clone())
            .or_insert_with(|| LinkWatch {
                was_up: false,
                down_alarm: false,
                test: Some(LinkTest::new(interval, bound, now.into_std())),
                interval,
            });
        if w.interval != interval {
            w.test = Some(LinkTest::new(interval, bound, now.into_std()));
            w.interval = interval;
        }
        let state = entry
            .status
            .read()
            .map_or(LinkState::Down, |s| s.current_state(now.into_std()));
        match state {
            LinkState::Up => {
                w.was_up = true;
                if w.down_alarm {
                    w.down_alarm = false;
                    raise(
                        shared,
                        HookEvent::LinkRestored {
                            peer: entry.name.clone(),
                        },
                    );
                }
            }
            LinkState::Down if w.was_up && !w.down_alarm => {
                w.down_alarm = true;
                raise(
                    shared,
                    HookEvent::LinkDown {
                        peer: entry.name.clone(),
                    },
                );
            }
            _ => {}
        }
        if let Some(test) = &mut w.test {
            if test.poll_send(now.into_std()) {
                let author = shared
                    .config
                    .read()
                    .map(|c| c.author.clone())
                    .unwrap_or_default();
                let request = SendRequest {
                    peer: entry.name.clone(),
                    precedence: Precedence::Flash,
                    topic: "link-test".into(),
                    author,
                    in_reply_to: None,
                    body: Body::Test {
                        nonce: rand::thread_rng().gen(),
                    },
                };
                match shared.writer.send(request).await {
                    Ok(sent) => test.on_sent(sent.seq, Instant::now().into_std()),
                    Err(e) => {
                        tracing::warn!(peer = %entry.name, error = %e, "cannot write a link test")
                    }
                }
            }
            if test.poll_missed(Instant::now().into_std()) {
                raise(
                    shared,
                    HookEvent::LinkTestMissed {
                        peer: entry.name.clone(),
                        seq: 0,
                    },
                );
            }
        }
        if let Ok(mut a) = entry.alarms.write() {
            a.link_down = w.down_alarm;
            a.test_missed = w.test.as_ref().is_some_and(|t| t.is_missed());
        }
    }
}

fn publish_counts(shared: &Shared, state: &Deadline, _links: &HashMap<String, LinkWatch>) {
    for entry in shared.table.all() {
        let c = state.counts(&entry.name);
        if let Ok(mut a) = entry.alarms.write() {
            a.overdue_out = c.overdue_out;
            a.overdue_in = c.overdue_in;
            a.unanswered_in = c.unanswered_in;
        }
    }
}

/// Whether a missed deadline of a message is still outstanding, and how late its receipt
/// came: for the API. `misses` are the recorded misses, `met_ms(level)` when the receipt it
/// needed was recorded (wall clock ms).
pub fn lateness(
    misses: &[MissRow],
    delivered_ms: Option<i64>,
    answered_ms: Option<i64>,
) -> (bool, Option<i64>) {
    let mut overdue = false;
    let mut late_ms: Option<i64> = None;
    for m in misses {
        let met = match Need::from_code(m.level) {
            Some(Need::Delivered) => delivered_ms.or(answered_ms),
            Some(Need::Answered) => answered_ms,
            None => continue,
        };
        match met {
            None => overdue = true,
            Some(at) => {
                let late = at.saturating_sub(m.due_at_ms).max(0);
                late_ms = Some(late_ms.map_or(late, |l| l.max(late)));
            }
        }
    }
    (overdue, late_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The counts recomputed from scratch, the way `status` used to walk every message.
    fn recount(state: &Deadline) -> HashMap<String, Counts> {
        let mut out: HashMap<String, Counts> = HashMap::new();
        for t in state.tracked.values() {
            tally(&mut out, t, true);
        }
        out
    }

    fn tracked(peer: u8, seq: u64, out: bool, flash: bool) -> Tracked {
        Tracked {
            peer: format!("p{peer}"),
            seq,
            direction: if out { Direction::Out } else { Direction::In },
            precedence: if flash {
                Precedence::Flash
            } else {
                Precedence::Routine
            },
            topic: String::new(),
            start: Instant::now(),
            start_ms: 0,
            open: Vec::new(),
            overdue: BTreeSet::new(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Track {
            n: u8,
            peer: u8,
            out: bool,
            flash: bool,
            missed: bool,
        },
        Settle {
            n: u8,
            answered: bool,
        },
        Overdue {
            n: u8,
            answered: bool,
        },
        Retry {
            n: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, 0u8..3, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(n, peer, out, flash, missed)| Op::Track {
                    n,
                    peer,
                    out,
                    flash,
                    missed
                }
            ),
            (0u8..24, any::<bool>()).prop_map(|(n, answered)| Op::Settle { n, answered }),
            (0u8..24, any::<bool>()).prop_map(|(n, answered)| Op::Overdue { n, answered }),
            (0u8..24).prop_map(|n| Op::Retry { n }),
        ]
    }

    fn need(answered: bool) -> Need {
        if answered {
            Need::Answered
        } else {
            Need::Delivered
        }
    }

    proptest! {
        /// Whatever happens to the tracked messages (tracked, settled, missed, put back after
        /// a failed write), the per-peer counts kept step by step equal a full recount.
        #[test]
        fn counts_kept_in_step_equal_a_recount(ops in proptest::collection::vec(op(), 1..120)) {
            let d = Deadlines::default();
            let mut state = Deadline::default();
            for op in ops {
                match op {
                    Op::Track { n, peer, out, flash, missed } => {
                        let missed = if missed { vec![Need::Answered.code()] } else { vec![] };
                        state.track(&d, MessageId([n; 32]), tracked(peer, n.into(), out, flash), &missed);
                    }
                    Op::Settle { n, answered } => {
                        state.settle(MessageId([n; 32]), need(answered));
                    }
                    // What fire_due and its retry path do to one message.
                    Op::Overdue { n, answered } => {
                        let need = need(answered);
                        if let Some(t) = state.tracked.get_mut(&MessageId([n; 32])) {
                            if let Some(pos) = t.open.iter().position(|(x, _)| *x == need) {
                                tally(&mut state.counts, t, false);
                                t.open.remove(pos);
                                t.overdue.insert(need);
                                tally(&mut state.counts, t, true);
                            }
                        }
                    }
                    Op::Retry { n } => {
                        if let Some(t) = state.tracked.get_mut(&MessageId([n; 32])) {
                            if let Some(&need) = t.overdue.iter().next() {
                                tally(&mut state.counts, t, false);
                                t.overdue.remove(&need);
                                t.open.push((need, Duration::from_secs(1)));
                                tally(&mut state.counts, t, true);
                            }
                        }
                    }
                }
                let expected = recount(&state);
                for peer in ["p0", "p1", "p2"] {
                    prop_assert_eq!(
                        state.counts(peer),
                        expected.get(peer).copied().unwrap_or_default(),
                        "peer {}", peer
                    );
                }
            }
        }
    }
}
