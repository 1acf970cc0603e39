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
//! **Bounded memory, every message decided** (issue 12 item 8). The task holds at most
//! `deadlines.watched_max` pending messages (default [`TRACKED_MAX`]): the nearest due. The
//! rest wait in the store. The messages of one (peer, direction, precedence) group share one
//! deadline per need, so they fall due in start order: the task reads each group from a
//! cursor in (start, id) order ([`Store::deadline_due`]), a page at a time, merges the pages
//! by due time and admits the nearest until memory is full — when memory is half empty, or
//! when the earliest start waiting in the store could fall due. A message written or received
//! while memory is full evicts the latest-due message held (which goes back to the store and
//! its group's cursor steps back before it) if it is due sooner, else it waits in the store
//! in its turn: a FLASH written now is watched at once. The `status` counts do not depend on
//! what is in memory: seeded from the store with one COUNT query, then moved by what happens
//! to a message (stored, missed, answered — an answer to a message not held is looked up in
//! the store).
//!
//! **Links.** Every [`LINK_POLL`] the task reads each link's state (docs/spec.md §4 thresholds, see
//! `detente_proto::link`): a link that was up and is now `down` raises one `link_down`
//! alarm per outage; it clears (with a `link_restored` event) when the link is up again.
//!
//! **Link tests.** Every `link.test_interval` a signed TEST envelope goes to each peer at
//! FLASH precedence; its DELIVERED receipt must come back within the FLASH delivery
//! deadline, or a `link_test_missed` alarm is raised (once per miss, cleared by the next
//! confirmed test).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use detente_proto::deadline::{self, Deadlines, LinkTest, Need, Side};
use detente_proto::{Body, LinkState, MessageId, Precedence, ReceiptLevel};
use detente_store::{DeadlineCandidate, Direction, DueGroup, MissRow, Store};
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
/// Pending messages the watch keeps in memory at most, unless `deadlines.watched_max` says
/// otherwise: the nearest due; the rest wait in the store and are read back in due order.
/// Each costs about 450 bytes: its entry (~230 bytes with the peer's name and its needs),
/// its map slot (~40), one or two queue entries (56 each), its due-order entry (40) and,
/// for our FLASH, a DELIVERED slot (~64). 200,000 ≈ 90 MB at most.
pub const TRACKED_MAX: usize = 200_000;
/// `deadlines.watched_max` is taken no higher than this.
pub const WATCHED_MAX_CEILING: usize = 2_000_000;
/// Rows read from the store per deadline group and refill round.
pub const REFILL_ROWS_MAX: u32 = 1024;
/// Refill rounds per wake-up at most (each reads one page of every group with more).
const REFILL_ROUNDS_MAX: usize = 8;
/// Messages answered while not in memory, remembered so that a repeated receipt does not
/// count twice (32 bytes each).
const ANSWERED_RECENT_MAX: usize = 4096;
/// After a refill that admitted nothing (memory full of nearer deadlines, or a store
/// error), the next one waits this long: a full memory must not make the task spin.
const REFILL_RETRY: Duration = Duration::from_secs(1);

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
    /// Its place in [`Deadline::by_due`], while it may be evicted.
    due_key: Option<i64>,
}

impl Tracked {
    fn group(&self) -> DueGroup {
        DueGroup {
            peer: self.peer.clone(),
            direction: self.direction,
            precedence: self.precedence as u8,
        }
    }

    /// When its next open deadline falls due (wall clock ms), if it has one.
    fn next_due_ms(&self) -> Option<i64> {
        self.open
            .iter()
            .map(|(_, after)| self.start_ms.saturating_add(after.as_millis() as i64))
            .min()
    }
}

/// Where one deadline group stands between memory and the store.
#[derive(Debug, Default)]
struct Group {
    /// Every pending message of the group at or before this `(start, id)` has been read
    /// (it is in memory, or decided); those after it are read from the store.
    cursor: Option<Key>,
    /// The store may hold pending messages of this group after `cursor`.
    more: bool,
    /// The start (wall ms) of the first of them, where known: the watch wakes to read it
    /// before it falls due.
    next_ms: Option<i64>,
}

/// What [`Deadline::track`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Watched in memory from now.
    Tracked,
    /// Already watched in memory.
    Already,
    /// Nothing left to watch: every deadline is met or already recorded missed.
    Decided,
    /// Memory is full of messages due no later: it stays in the store.
    Full,
}

struct Deadline {
    tracked: HashMap<MessageId, Tracked>,
    /// (due, id, need), earliest first.
    queue: BTreeSet<(Instant, [u8; 32], Need)>,
    /// Our FLASH messages waiting for DELIVERED: (peer, seq) -> id.
    flash_out: BTreeMap<(String, u64), MessageId>,
    /// Tracked messages that may be evicted, by next due (wall ms): the latest goes first
    /// when a nearer one needs the room. A message overdue for DELIVERED and still waiting
    /// for its answer is never evicted (a late DELIVERED must find it to clear `overdue_out`).
    by_due: BTreeSet<(i64, [u8; 32])>,
    /// Per deadline group: what of it is in memory.
    groups: HashMap<DueGroup, Group>,
    /// Messages in memory at most.
    limit: usize,
    /// The most messages held in memory at once since start (a gauge for tests and
    /// `/metrics`).
    peak: usize,
    /// No refill before this (after one that admitted nothing).
    refill_after: Option<Instant>,
    /// Per peer, what `status` shows: seeded from the store, then changed only by what
    /// happens to a message (stored, missed, answered), never by moving it between memory
    /// and the store.
    counts: HashMap<String, Counts>,
    /// Messages answered lately that were not in memory, so that a repeated receipt does
    /// not count twice (first in, first out).
    answered: VecDeque<MessageId>,
}

/// Per peer: our overdue messages, the peer's overdue messages, the peer's unanswered ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    overdue_out: u64,
    overdue_in: u64,
    unanswered_in: u64,
}

/// A place in a group's due order: (start, wall ms; id).
type Key = (i64, [u8; 32]);

/// The `(start, id)` just before `key`, so that "strictly after" it starts at `key`.
fn before(key: Key) -> Key {
    let (mut ms, mut id) = key;
    for b in id.iter_mut().rev() {
        if *b > 0 {
            *b -= 1;
            return (ms, id);
        }
        *b = 0xff;
    }
    ms = ms.saturating_sub(1);
    (ms, id)
}

impl Deadline {
    fn new(limit: usize) -> Deadline {
        Deadline {
            tracked: HashMap::new(),
            queue: BTreeSet::new(),
            flash_out: BTreeMap::new(),
            by_due: BTreeSet::new(),
            groups: HashMap::new(),
            limit: limit.max(1),
            peak: 0,
            refill_after: None,
            counts: HashMap::new(),
            answered: VecDeque::new(),
        }
    }

    fn count(&mut self, peer: &str, direction: Direction, overdue: i64, unanswered: i64) {
        let c = match self.counts.get_mut(peer) {
            Some(c) => c,
            None => self.counts.entry(peer.to_string()).or_default(),
        };
        let step = |v: &mut u64, by: i64| *v = v.saturating_add_signed(by);
        match direction {
            Direction::Out => step(&mut c.overdue_out, overdue),
            Direction::In => {
                step(&mut c.overdue_in, overdue);
                step(&mut c.unanswered_in, unanswered);
            }
        }
    }

    /// Put `id` in (or take it out of) `by_due` after its state changed.
    fn reindex(&mut self, id: MessageId) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        if let Some(k) = t.due_key.take() {
            self.by_due.remove(&(k, id.0));
        }
        if t.overdue.is_empty() {
            if let Some(k) = t.next_due_ms() {
                t.due_key = Some(k);
                self.by_due.insert((k, id.0));
            }
        }
    }

    /// Start watching `id` ([`prepare`]d). When memory is full, the latest-due message in
    /// it makes room if `id` falls due before it.
    fn track(&mut self, id: MessageId, t: Tracked) -> Admit {
        if self.tracked.contains_key(&id) {
            return Admit::Already;
        }
        let Some(due) = t.next_due_ms() else {
            return Admit::Decided;
        };
        if self.tracked.len() >= self.limit {
            match self.by_due.last() {
                Some(&(latest, victim)) if latest > due => self.evict(MessageId(victim)),
                _ => return Admit::Full,
            }
        }
        for (need, after) in &t.open {
            self.queue.insert((t.start + *after, id.0, *need));
            if *need == Need::Delivered {
                self.flash_out.insert((t.peer.clone(), t.seq), id);
            }
        }
        self.tracked.insert(id, t);
        self.reindex(id);
        self.peak = self.peak.max(self.tracked.len());
        Admit::Tracked
    }

    /// Take `id` out of memory: it stays in the store and its group reads it back.
    fn evict(&mut self, id: MessageId) {
        let Some(t) = self.forget(id) else {
            return;
        };
        self.left_to_store(&t.group(), (t.start_ms, id.0));
    }

    /// A pending message at `key` of `group` is (now) only in the store.
    fn left_to_store(&mut self, group: &DueGroup, key: Key) {
        let g = match self.groups.get_mut(group) {
            Some(g) => g,
            None => self.groups.entry(group.clone()).or_default(),
        };
        g.more = true;
        g.next_ms = Some(g.next_ms.map_or(key.0, |n| n.min(key.0)));
        if g.cursor.is_some_and(|c| c >= key) {
            g.cursor = Some(before(key));
        }
    }

    /// Drop `id` from memory (queue, FLASH map, due order), returning what was kept.
    fn forget(&mut self, id: MessageId) -> Option<Tracked> {
        let t = self.tracked.remove(&id)?;
        for (n, after) in &t.open {
            self.queue.remove(&(t.start + *after, id.0, *n));
        }
        if let Some(k) = t.due_key {
            self.by_due.remove(&(k, id.0));
        }
        let key = (t.peer.clone(), t.seq);
        if self.flash_out.get(&key) == Some(&id) {
            self.flash_out.remove(&key);
        }
        Some(t)
    }

    /// The receipt `need` came for `id` (Answered also settles Delivered), if `id` is in
    /// memory: its peer, and whether it was late.
    fn settle(&mut self, id: MessageId, need: Need) -> Option<(String, bool)> {
        let t = self.tracked.get_mut(&id)?;
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
        let (peer, direction) = (t.peer.clone(), t.direction);
        let late = was_overdue && t.overdue.is_empty();
        let answered_in = need == Need::Answered && direction == Direction::In;
        let done = t.open.is_empty();
        self.count(&peer, direction, -i64::from(late), -i64::from(answered_in));
        if need == Need::Answered {
            // Its receipt event may still come (or come twice): counted once.
            self.remember_answered(id);
        }
        if done {
            self.forget(id);
        } else {
            self.reindex(id);
        }
        Some((peer, late))
    }

    /// `need` of `id` was recorded missed (`add`), or the record failed and it is open
    /// again (`!add`, due again `after` its start).
    fn mark_missed(&mut self, id: MessageId, need: Need, after: Duration, add: bool) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        let was_overdue = !t.overdue.is_empty();
        if add {
            t.open.retain(|(n, _)| *n != need);
            t.overdue.insert(need);
        } else {
            t.overdue.remove(&need);
            t.open.push((need, after));
        }
        let (peer, direction) = (t.peer.clone(), t.direction);
        let now_overdue = !t.overdue.is_empty();
        if was_overdue != now_overdue {
            self.count(&peer, direction, if now_overdue { 1 } else { -1 }, 0);
        }
        self.reindex(id);
    }

    /// `id` was answered and counted so: a repeated receipt for it changes nothing.
    fn remember_answered(&mut self, id: MessageId) {
        if self.answered.len() >= ANSWERED_RECENT_MAX {
            self.answered.pop_front();
        }
        self.answered.push_back(id);
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _, _)| *at)
    }

    fn counts(&self, peer: &str) -> Counts {
        self.counts.get(peer).copied().unwrap_or_default()
    }

    /// When a message still in the store could fall due first (wall ms): the earliest
    /// start waiting there plus its group's shortest deadline; unknown starts read now.
    fn store_due_ms(&self, shared: &Shared, wall: i64) -> Option<i64> {
        self.groups
            .iter()
            .filter(|(_, g)| g.more)
            .map(|(key, g)| match g.next_ms {
                None => wall,
                Some(ms) => ms.saturating_add(shortest_ms(shared, key)),
            })
            .min()
    }

    /// Whether to read from the store now: memory is half empty or something there falls
    /// due, and no recent attempt came back empty-handed.
    fn wants_refill(&self, shared: &Shared, now: Instant, wall: i64) -> bool {
        if self.refill_after.is_some_and(|at| now < at) {
            return false;
        }
        let Some(due) = self.store_due_ms(shared, wall) else {
            return false;
        };
        self.tracked.len() <= self.limit / 2 || due <= wall
    }
}

/// A group's shortest deadline (ms): its first one to fall due.
fn shortest_ms(shared: &Shared, group: &DueGroup) -> i64 {
    let d = deadlines_for(shared, &group.peer);
    let side = if group.direction == Direction::Out {
        Side::Sender
    } else {
        Side::Receiver
    };
    Precedence::from_u8(group.precedence)
        .map(|p| deadline::obligations(0, side, p, &d))
        .and_then(|o| o.iter().map(|(_, after)| after.as_millis() as i64).min())
        .unwrap_or(0)
}

fn candidate(c: &DeadlineCandidate, now: Instant, wall: i64) -> Option<(MessageId, Tracked)> {
    let precedence = Precedence::from_u8(c.precedence)?;
    let start_ms = start_of(c);
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
            due_key: None,
        },
    ))
}

/// When a stored message's deadlines start: ours from writing, theirs from receiving.
fn start_of(c: &DeadlineCandidate) -> i64 {
    match c.direction {
        Direction::Out => c.created_at_ms,
        Direction::In => c.stored_at_ms,
    }
}

/// Fill `t`'s open and overdue needs under deadlines `d`: `missed` were recorded missed
/// (overdue from the start), `settled` were met (a DELIVERED that came late).
fn prepare(d: &Deadlines, t: &mut Tracked, missed: &[u8], settled: &[u8]) {
    let side = if t.direction == Direction::Out {
        Side::Sender
    } else {
        Side::Receiver
    };
    t.open.clear();
    t.overdue.clear();
    for (need, after) in deadline::obligations(0, side, t.precedence, d) {
        if settled.contains(&need.code()) {
            continue;
        }
        if missed.contains(&need.code()) {
            t.overdue.insert(need);
        } else {
            t.open.push((need, after));
        }
    }
}

/// The needs of `c` already decided: (recorded missed and still owed, met late). A missed
/// DELIVERED that came since is settled: neither open nor overdue.
async fn decided_needs(shared: &Shared, c: &DeadlineCandidate) -> (Vec<u8>, Vec<u8>) {
    let mut missed = c.missed.clone();
    let mut settled = Vec::new();
    if missed.contains(&Need::Delivered.code()) {
        if let Ok(times) = shared.store.receipt_times(c.id).await {
            if times.delivered_ms.is_some() {
                missed.retain(|m| *m != Need::Delivered.code());
                settled.push(Need::Delivered.code());
            }
        }
    }
    (missed, settled)
}

/// The limit of messages in memory, from `deadlines.watched_max`.
fn watched_max(shared: &Shared) -> usize {
    shared
        .config
        .read()
        .ok()
        .map_or(TRACKED_MAX, |c| watched_max_of(&c))
}

/// `deadlines.watched_max` of `config`, or [`TRACKED_MAX`], within 1..=[`WATCHED_MAX_CEILING`]
/// (the core engine takes the same limit).
pub fn watched_max_of(config: &crate::config::NodeConfig) -> usize {
    config
        .deadlines
        .watched_max
        .map_or(TRACKED_MAX, |n| {
            usize::try_from(n).unwrap_or(WATCHED_MAX_CEILING)
        })
        .clamp(1, WATCHED_MAX_CEILING)
}

/// (Re)start from the store (on start, and after missing events): counts from one COUNT
/// query, every group to be read from its beginning.
async fn load(shared: &Shared, state: &mut Deadline) {
    let peak = state.peak;
    *state = Deadline::new(watched_max(shared));
    state.peak = peak;
    match shared.store.deadline_counts().await {
        Ok(rows) => {
            for r in rows {
                let c = Counts {
                    overdue_out: r.overdue_out,
                    overdue_in: r.overdue_in,
                    unanswered_in: r.unanswered_in,
                };
                state.counts.insert(r.peer, c);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot count pending deadlines"),
    }
    for entry in shared.table.all() {
        for direction in [Direction::Out, Direction::In] {
            for precedence in 0..=Precedence::Routine as u8 {
                let group = DueGroup {
                    peer: entry.name.clone(),
                    direction,
                    precedence,
                };
                let g = Group {
                    more: true,
                    ..Group::default()
                };
                state.groups.insert(group, g);
            }
        }
    }
}

/// One page of a group read from the store, ready to admit in due order.
struct Page {
    group: DueGroup,
    rows: Vec<DeadlineCandidate>,
    /// Rows admitted or decided, by position.
    taken: Vec<bool>,
}

/// Read pending messages back from the store into memory, nearest due first: a page per
/// group with more, merged by due time, admitted until memory is full of nearer ones.
/// Bounded: [`REFILL_ROUNDS_MAX`] rounds of [`REFILL_ROWS_MAX`] rows per group.
async fn refill(shared: &Shared, state: &mut Deadline) {
    let mut admitted_any = false;
    for _ in 0..REFILL_ROUNDS_MAX {
        let rows_max = REFILL_ROWS_MAX.min(u32::try_from(state.limit).unwrap_or(u32::MAX));
        let groups: Vec<(DueGroup, Option<Key>)> = state
            .groups
            .iter()
            .filter(|(_, g)| g.more)
            .map(|(k, g)| (k.clone(), g.cursor))
            .collect();
        if groups.is_empty() {
            break;
        }
        let mut pages = Vec::with_capacity(groups.len());
        for (group, after) in groups {
            match shared.store.deadline_due(&group, after, rows_max).await {
                Ok(rows) => {
                    let taken = vec![false; rows.len()];
                    pages.push(Page { group, rows, taken });
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read pending deadlines");
                    state.refill_after = Some(Instant::now() + REFILL_RETRY);
                    return;
                }
            }
        }
        let fresh = admit_pages(shared, state, &mut pages, rows_max).await;
        let moved = advance_cursors(state, &pages, rows_max);
        // Progress is a message newly held or a cursor moved on; rows already held or
        // read again behind one that waits are not.
        if fresh == 0 && !moved {
            break;
        }
        admitted_any = true;
    }
    if !admitted_any {
        state.refill_after = Some(Instant::now() + REFILL_RETRY);
    }
}

/// Admit the rows of `pages` in due order, up to the earliest time the first row beyond a
/// full page could fall due (its start is no earlier than that page's last row's; there a
/// group's next page could hold sooner deadlines) — and at least the nearest row, so that
/// every round makes progress. Returns how many messages are newly held.
async fn admit_pages(
    shared: &Shared,
    state: &mut Deadline,
    pages: &mut [Page],
    rows_max: u32,
) -> usize {
    let (now, wall) = (Instant::now(), now_ms() as i64);
    let mut order = Vec::new();
    let mut cutoff = i64::MAX;
    for (pi, page) in pages.iter().enumerate() {
        let d = deadlines_for(shared, &page.group.peer);
        let full = page.rows.len() as u32 >= rows_max;
        for (ri, c) in page.rows.iter().enumerate() {
            let Some((id, t)) = candidate(c, now, wall) else {
                order.push((i64::MIN, pi, ri, None));
                continue;
            };
            let mut t = t;
            let (missed, settled) = decided_needs(shared, c).await;
            prepare(&d, &mut t, &missed, &settled);
            match t.next_due_ms() {
                Some(due) => {
                    if full && ri + 1 == page.rows.len() {
                        let earliest = t.start_ms.saturating_add(shortest_ms(shared, &page.group));
                        cutoff = cutoff.min(earliest);
                    }
                    order.push((due, pi, ri, Some((id, t))));
                }
                None => order.push((i64::MIN, pi, ri, None)),
            }
        }
    }
    order.sort_by_key(|(due, pi, ri, _)| (*due, pages[*pi].rows[*ri].id));
    let mut fresh = 0;
    for (due, pi, ri, prepared) in order {
        if due > cutoff && fresh > 0 {
            break;
        }
        if let Some((id, t)) = prepared {
            match state.track(id, t) {
                Admit::Full => break,
                Admit::Tracked => fresh += 1,
                Admit::Already | Admit::Decided => {}
            }
        }
        pages[pi].taken[ri] = true;
    }
    fresh
}

/// Move each group's cursor past the rows taken from its start, and note what remains.
/// Returns whether any cursor moved on or any group was read to its end.
fn advance_cursors(state: &mut Deadline, pages: &[Page], rows_max: u32) -> bool {
    let mut moved = false;
    for page in pages {
        let k = page.taken.iter().take_while(|t| **t).count();
        let Some(g) = state.groups.get_mut(&page.group) else {
            continue;
        };
        if k > 0 {
            let last = &page.rows[k - 1];
            g.cursor = Some((start_of(last), last.id));
            moved = true;
        }
        let exhausted = k == page.rows.len() && (page.rows.len() as u32) < rows_max;
        moved |= exhausted && g.more;
        g.more = !exhausted;
        // The next row starts no earlier than the last one read.
        g.next_ms = page.rows.get(k).or(page.rows.last()).map(start_of);
    }
    moved
}

struct LinkWatch {
    was_up: bool,
    /// Sessions the link had at the last poll: one opened since means it was up, even if
    /// it went down again between two polls.
    sessions: u64,
    down_alarm: bool,
    test: Option<LinkTest>,
    interval: Duration,
}

/// Run the watch task until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut events = shared.events.subscribe();
    let mut state = Deadline::new(watched_max(&shared));
    load(&shared, &mut state).await;
    refill(&shared, &mut state).await;
    let mut links: HashMap<String, LinkWatch> = HashMap::new();
    let mut next_link_poll = Instant::now();
    publish_counts(&shared, &state, &links);
    loop {
        let now = Instant::now();
        let mut wake = next_link_poll;
        if let Some(due) = state.next_due() {
            wake = wake.min(due);
        }
        if let Some(at) = store_wake(&shared, &state, now) {
            wake = wake.min(at);
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
        if state.wants_refill(&shared, now, now_ms() as i64) {
            refill(&shared, &mut state).await;
            fire_due(&shared, &mut state, Instant::now()).await;
        }
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
            start_ms,
        } if deadline::bears_deadline(kind) => {
            if direction == Direction::In {
                state.count(&peer, direction, 0, 1);
            }
            let mut t = Tracked {
                peer,
                seq,
                direction,
                precedence,
                topic: String::new(),
                start: Instant::now(),
                start_ms,
                open: Vec::new(),
                overdue: BTreeSet::new(),
                due_key: None,
            };
            prepare(&deadlines_for(shared, &t.peer), &mut t, &[], &[]);
            let group = t.group();
            if state.track(id, t) == Admit::Full {
                // Due after everything in memory: read back in its turn.
                state.left_to_store(&group, (start_ms, id.0));
            }
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
        Event::Discarded { peer, id } => discarded(shared, state, &peer, id).await,
        Event::Receipt { of, level } => {
            if matches!(level, ReceiptLevel::Acknowledged | ReceiptLevel::Declined) {
                match state.settle(of, Need::Answered) {
                    Some((peer, true)) => {
                        tracing::info!(%peer, id = %of.to_hex(), level = level.name(), "late answer");
                    }
                    Some(_) => {}
                    None => answered_elsewhere(shared, state, of).await,
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
        let Some(t) = state.tracked.get(&id) else {
            continue;
        };
        let Some(&(_, after)) = t.open.iter().find(|(n, _)| *n == need) else {
            continue;
        };
        let due_at_ms = t.start_ms + after.as_millis() as i64;
        state.mark_missed(id, need, after, true);
        rows.push(MissRow {
            id: id.0,
            level: need.code(),
            due_at_ms,
            missed_at_ms: wall,
        });
        fired.push((id, need, after, due_at_ms));
    }
    let done: Vec<MessageId> = fired.iter().map(|(id, ..)| *id).collect();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = shared.engine.writer().record_misses(rows).await {
        tracing::error!(error = %e, "cannot record missed deadlines; will retry");
        // Put them back so the next wake-up tries again.
        for (id, need, after, _) in fired {
            if state.tracked.contains_key(&id) {
                state.mark_missed(id, need, after, false);
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
    // Decided: nothing left to watch in memory (an overdue message stays counted).
    for id in done {
        if state.tracked.get(&id).is_some_and(|t| t.open.is_empty()) {
            state.forget(id);
        }
    }
}

/// A held message of the peer's was taken out of the messages (broken-chain evidence): it
/// owes nothing any more. Out of memory if it is there, and out of the counts either way
/// (it was counted unanswered when stored, and overdue if a miss was recorded).
async fn discarded(shared: &Shared, state: &mut Deadline, peer: &str, id: MessageId) {
    if state.answered.contains(&id) {
        return;
    }
    let overdue = match state.forget(id) {
        Some(t) => !t.overdue.is_empty(),
        None => !shared
            .store
            .misses(id.0)
            .await
            .unwrap_or_default()
            .is_empty(),
    };
    state.count(peer, Direction::In, -i64::from(overdue), -1);
    state.remember_answered(id);
}

/// An answer came for `id`, which is not in memory (decided, or waiting in the store):
/// take its share out of the counts, from what the store recorded of it.
async fn answered_elsewhere(shared: &Shared, state: &mut Deadline, id: MessageId) {
    if state.answered.contains(&id) {
        return;
    }
    let Ok(Some(row)) = shared.store.message(id.0).await else {
        return;
    };
    if !deadline::bears_deadline(row.kind) {
        return;
    }
    let misses = shared.store.misses(id.0).await.unwrap_or_default();
    let delivered = match shared.store.receipt_times(id.0).await {
        Ok(t) => t.delivered_ms.is_some(),
        Err(_) => false,
    };
    let overdue = misses.iter().any(|m| {
        m.level == Need::Answered.code() || (m.level == Need::Delivered.code() && !delivered)
    });
    let unanswered = row.direction == Direction::In;
    state.count(
        &row.peer,
        row.direction,
        -i64::from(overdue),
        -i64::from(unanswered),
    );
    state.remember_answered(id);
}

/// When to wake to read the store: when something there could fall due (or at once when
/// memory is half empty and the store has more), not before a failed refill's retry.
fn store_wake(shared: &Shared, state: &Deadline, now: Instant) -> Option<Instant> {
    let wall = now_ms() as i64;
    let due_ms = state.store_due_ms(shared, wall)?;
    let mut at = if state.tracked.len() <= state.limit / 2 {
        now
    } else {
        now + Duration::from_millis(u64::try_from(due_ms - wall).unwrap_or(0))
    };
    if let Some(after) = state.refill_after {
        at = at.max(after);
    }
    Some(at)
}

async fn poll_links(shared: &Shared, links: &mut HashMap<String, LinkWatch>, now: Instant) {
    for entry in shared.table.all() {
        let interval = test_interval_for(shared, &entry.name);
        let bound = deadlines_for(shared, &entry.name).flash_delivered;
        let w = links
            .entry(entry.name.clone())
            .or_insert_with(|| LinkWatch {
                was_up: false,
                sessions: 0,
                down_alarm: false,
                test: Some(LinkTest::new(interval, bound, now.into_std())),
                interval,
            });
        if w.interval != interval {
            w.test = Some(LinkTest::new(interval, bound, now.into_std()));
            w.interval = interval;
        }
        let (state, sessions) = entry.status.read().map_or((LinkState::Down, 0), |s| {
            (s.current_state(now.into_std()), s.sessions)
        });
        if sessions > w.sessions {
            w.sessions = sessions;
            w.was_up = true;
        }
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
                match shared.engine.writer().send(request).await {
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
    shared
        .events
        .metrics()
        .set_deadlines_watched(state.tracked.len(), state.peak);
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

    fn tracked(seq: u64, start_ms: i64, out: bool, precedence: Precedence) -> Tracked {
        let mut t = Tracked {
            peer: "p".into(),
            seq,
            direction: if out { Direction::Out } else { Direction::In },
            precedence,
            topic: String::new(),
            start: Instant::now(),
            start_ms,
            open: Vec::new(),
            overdue: BTreeSet::new(),
            due_key: None,
        };
        prepare(&Deadlines::default(), &mut t, &[], &[]);
        t
    }

    fn id(n: u64) -> MessageId {
        let mut id = [0u8; 32];
        id[24..].copy_from_slice(&n.to_be_bytes());
        MessageId(id)
    }

    #[test]
    fn before_is_the_previous_key() {
        assert_eq!(before((5, [0; 32])), (4, [0xff; 32]));
        let mut one = [0; 32];
        one[31] = 1;
        assert_eq!(before((5, one)), (5, [0; 32]));
        let mut carry = [0; 32];
        carry[30] = 1;
        let mut want = [0; 32];
        want[31] = 0xff;
        assert_eq!(before((5, carry)), (5, want));
    }

    /// Memory full of old ROUTINE messages: a newer ROUTINE stays in the store, a FLASH
    /// written now evicts the latest-due ROUTINE, which its group will read back.
    #[test]
    fn a_full_memory_makes_room_for_a_nearer_deadline_only() {
        let mut state = Deadline::new(3);
        for n in 0..3 {
            let t = tracked(n, 1_000 * n as i64, true, Precedence::Routine);
            assert_eq!(state.track(id(n), t), Admit::Tracked);
        }
        let later = tracked(3, 10_000, true, Precedence::Routine);
        assert_eq!(state.track(id(3), later), Admit::Full);
        let flash = tracked(4, 20_000, true, Precedence::Flash);
        assert_eq!(state.track(id(4), flash), Admit::Tracked);
        assert_eq!(state.tracked.len(), 3);
        assert!(
            !state.tracked.contains_key(&id(2)),
            "the latest-due one made room"
        );
        let group = DueGroup {
            peer: "p".into(),
            direction: Direction::Out,
            precedence: Precedence::Routine as u8,
        };
        let g = &state.groups[&group];
        assert!(g.more);
        assert_eq!(g.next_ms, Some(2_000));
        assert_eq!(state.peak, 3);
    }

    /// The counts move with what happens to a message, not with memory: an evicted
    /// message's answer still counts (from the store, see `answered_elsewhere`), and a
    /// miss, a late DELIVERED and an answer of one in memory each count once.
    #[test]
    fn counts_change_with_the_message_not_with_memory() {
        let mut state = Deadline::new(2);
        let theirs = tracked(1, 0, false, Precedence::Routine);
        state.count("p", Direction::In, 0, 1);
        state.track(id(1), theirs);
        let flash = tracked(2, 0, true, Precedence::Flash);
        state.track(id(2), flash);
        state.mark_missed(id(2), Need::Delivered, Duration::ZERO, true);
        assert_eq!(state.counts("p").overdue_out, 1);
        assert!(
            state.tracked[&id(2)].due_key.is_none(),
            "pinned while overdue"
        );
        assert_eq!(
            state.settle(id(2), Need::Delivered),
            Some(("p".into(), true))
        );
        assert_eq!(state.counts("p").overdue_out, 0);
        state.mark_missed(id(1), Need::Answered, Duration::ZERO, true);
        assert_eq!(state.counts("p").overdue_in, 1);
        assert_eq!(
            state.settle(id(1), Need::Answered),
            Some(("p".into(), true))
        );
        assert_eq!(state.counts("p"), Counts::default());
        assert!(!state.tracked.contains_key(&id(1)));
        assert!(
            state.answered.contains(&id(1)),
            "a repeated receipt is not counted again"
        );
    }

    proptest! {
        /// Whatever arrives, memory never holds more than its limit, and what it holds is
        /// due no later than anything it turned away or evicted since (the nearest due).
        #[test]
        fn memory_is_bounded_and_holds_the_nearest(
            arrivals in proptest::collection::vec((0i64..100_000, 0u8..4, any::<bool>()), 1..200),
            limit in 1usize..16,
        ) {
            let mut state = Deadline::new(limit);
            let mut outside: Vec<i64> = Vec::new();
            for (n, (start, p, out)) in arrivals.into_iter().enumerate() {
                let precedence = Precedence::from_u8(p).unwrap();
                let t = tracked(n as u64, start, out, precedence);
                let due = t.next_due_ms().unwrap();
                let before: Vec<(i64, [u8; 32])> = state.by_due.iter().copied().collect();
                match state.track(id(n as u64), t) {
                    Admit::Full => outside.push(due),
                    Admit::Tracked => {
                        for k in before {
                            if !state.by_due.contains(&k) {
                                outside.push(k.0);
                            }
                        }
                    }
                    Admit::Decided | Admit::Already => {}
                }
                prop_assert!(state.tracked.len() <= limit);
                let latest = state.by_due.last().map(|k| k.0).unwrap_or(i64::MIN);
                prop_assert!(outside.iter().all(|d| *d >= latest));
            }
        }
    }
}
