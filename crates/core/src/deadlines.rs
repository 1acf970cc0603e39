//! Deadline tracking on the monotonic clock: each obligation of a message (docs/spec.md §5, the
//! rules of `detente_proto::deadline`) is decided exactly once, met or missed, and the
//! decision is released only with the batch that records it.
//!
//! **Bounded memory, every message decided** (issue 12 item 8). At most
//! [`Config::deadlines_watched_max`](crate::Config) messages are watched in memory: the
//! nearest due. The rest wait in the store, and the core asks the driver for them
//! ([`DeadlineQuery`], answered by [`crate::Input::DeadlineRows`]):
//!
//! - The pending messages of one *group* (a peer, a direction, a precedence) share one
//!   deadline per need, so the store hands them out in start order from a `(start, id)`
//!   cursor (`Store::deadline_due`). Every pending message of a group at or before its
//!   cursor is watched or decided; after it, they may wait in the store (the group is
//!   *spilled*). A message written or received while memory is full evicts the watched
//!   message due last if it is due sooner (the evicted one's group cursor steps back before
//!   it), else its own group spills. A spilled group is read again when memory is half
//!   empty or when the earliest deadline waiting in it is due.
//! - An answer to a message not watched, of a spilled group, is decided from the store's
//!   view of it before the answer is stored (`Store::deadline_state`): met if it came in
//!   time, missed if late, nothing if that deadline was decided already.
//! - The store's view lags the core by the batch being staged. So a query runs only when no
//!   batch is in flight, nothing is sealed while it runs, and rows of messages whose
//!   deadlines changed since the last sealed batch are not taken (their group is read again
//!   after the next commit).
//!
//! After a restart nothing is watched: every group with texts or notifications is spilled
//! from its start, and read back from the store, nearest due first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use detente_proto::deadline::{obligations, Side};
use detente_proto::{Deadlines, MessageId, Need, Precedence};
use detente_store_types::{DeadlineCandidate, Direction, DueGroup};

use crate::{Core, COMMIT_RETRY_MS};

/// Messages watched in memory at most unless configured otherwise (each costs about 400
/// bytes: its entry, its one or two queue entries and its eviction-order entry).
pub const DEADLINES_WATCHED_DEFAULT: usize = 200_000;
/// Rows asked for per group query.
pub const DEADLINE_ROWS_MAX: u32 = 1024;
/// Answers to unwatched messages waiting for a store lookup at most (each ~72 bytes); an
/// answer beyond them gets no met or missed decision.
pub const DEADLINE_LOOKUPS_MAX: usize = 65_536;

/// How a deadline was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The receipt came in time.
    Met,
    /// The deadline passed without it.
    Missed,
}

/// A question to the store about deadlines, answered by [`crate::Input::DeadlineRows`] with
/// the rows it returns (or the store's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineQuery {
    /// `Store::deadline_due(group, after, limit)`.
    Due {
        group: DueGroup,
        after: Option<(i64, [u8; 32])>,
        limit: u32,
    },
    /// `Store::deadline_state(ids)`.
    State { ids: Vec<[u8; 32]> },
}

/// A deadline group: the messages of one peer, direction and precedence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Group {
    pub peer: String,
    pub out: bool,
    pub precedence: u8,
}

impl Group {
    pub fn new(peer: &str, side: Side, precedence: Precedence) -> Group {
        Group {
            peer: peer.to_string(),
            out: side == Side::Sender,
            precedence: precedence as u8,
        }
    }

    fn side(&self) -> Side {
        if self.out {
            Side::Sender
        } else {
            Side::Receiver
        }
    }

    fn due_group(&self) -> DueGroup {
        DueGroup {
            peer: self.peer.clone(),
            direction: if self.out {
                Direction::Out
            } else {
                Direction::In
            },
            precedence: self.precedence,
        }
    }
}

/// A store cursor: `(start_ms, id)`, the order of `Store::deadline_due`.
type Key = (i64, [u8; 32]);

/// The greatest cursor before `key` that still returns every row with `key`'s start.
fn before(key: Key) -> Option<Key> {
    Some((key.0.saturating_sub(1), [0xff; 32]))
}

#[derive(Debug, Clone)]
struct Tracked {
    group: Group,
    start_ms: i64,
    /// Undecided obligations and when each is due.
    due: Vec<(Need, Instant)>,
    /// The earliest of `due` (the eviction order).
    first: Instant,
}

/// A group whose pending messages after `after` may wait in the store.
#[derive(Debug, Clone)]
struct Spill {
    after: Option<Key>,
    /// Read the group again at this instant even if memory is not half empty (no later
    /// than the earliest deadline known to wait in it).
    due: Instant,
    /// Bumped whenever the group spills again (a query's answer then keeps the lower
    /// cursor).
    generation: u64,
    /// It spilled since the last sealed batch: the message may not be in the store yet, so
    /// no query answered before the next commit can show the group caught up.
    staged: bool,
}

#[derive(Debug)]
enum Outstanding {
    Due {
        group: Group,
        after: Option<Key>,
        limit: u32,
        generation: u64,
    },
    State {
        lookups: Vec<(MessageId, Need, Instant)>,
    },
}

/// Every undecided deadline watched in memory, the same deadlines in due order, and the
/// groups with more in the store. See the module documentation.
#[derive(Debug)]
pub(crate) struct Tracker {
    cap: usize,
    tracked: HashMap<MessageId, Tracked>,
    queue: BTreeSet<(Instant, MessageId, Need)>,
    by_first: BTreeSet<(Instant, MessageId)>,
    spilled: BTreeMap<Group, Spill>,
    /// Messages whose deadline state changed since the last sealed batch: the store does
    /// not show it yet.
    recent: HashSet<MessageId>,
    /// Deadlines decided since the last sealed batch.
    decided_recent: HashSet<(MessageId, Need)>,
    /// Answers to unwatched messages of spilled groups: (message, need, when answered).
    lookups: Vec<(MessageId, Need, Instant)>,
    outstanding: Option<(u64, Outstanding)>,
    next_query: u64,
    /// A group query was answered since the last seal: let a batch go before the next.
    yield_to_commit: bool,
    peak: usize,
    /// The monotonic instant wall-clock offsets are measured from.
    epoch: Instant,
    /// The least and greatest `wall_ms - ms since epoch` seen (clock steps move them).
    offsets: (i64, i64),
}

impl Tracker {
    pub fn new(cap: usize, now: Instant, wall_ms: i64) -> Tracker {
        Tracker {
            epoch: now,
            offsets: (wall_ms, wall_ms),
            cap: cap.max(1),
            tracked: HashMap::new(),
            queue: BTreeSet::new(),
            by_first: BTreeSet::new(),
            spilled: BTreeMap::new(),
            recent: HashSet::new(),
            decided_recent: HashSet::new(),
            lookups: Vec::new(),
            outstanding: None,
            next_query: 1,
            yield_to_commit: false,
            peak: 0,
        }
    }

    /// Watch a message's obligations counted from `start` (`start_ms` on the wall clock, as
    /// the store orders it), except those already decided.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        group: Group,
        id: MessageId,
        kind: u8,
        deadlines: &Deadlines,
        start: Instant,
        start_ms: i64,
        decided: &[Need],
    ) {
        let precedence = Precedence::from_u8(group.precedence).unwrap_or(Precedence::Routine);
        let due: Vec<(Need, Instant)> = obligations(kind, group.side(), precedence, deadlines)
            .into_iter()
            .filter(|(need, _)| !decided.contains(need))
            .map(|(need, after)| (need, start + after))
            .collect();
        if due.is_empty() || self.tracked.contains_key(&id) {
            return;
        }
        let first = due.iter().map(|(_, at)| *at).min().expect("not empty");
        if self.tracked.len() >= self.cap && !self.evict_for(first) {
            self.spill(group, (start_ms, id.0), first);
            return;
        }
        for &(need, at) in &due {
            self.queue.insert((at, id, need));
        }
        self.by_first.insert((first, id));
        let tracked = Tracked {
            group,
            start_ms,
            due,
            first,
        };
        self.tracked.insert(id, tracked);
        self.peak = self.peak.max(self.tracked.len());
    }

    /// Memory is full: make room by evicting the watched message due last, if it is due
    /// after `first`.
    fn evict_for(&mut self, first: Instant) -> bool {
        let Some(&(last, victim)) = self.by_first.last() else {
            return false;
        };
        if last <= first {
            return false;
        }
        let t = self.untrack(victim).expect("watched");
        self.spill(t.group, (t.start_ms, victim.0), t.first);
        true
    }

    fn untrack(&mut self, id: MessageId) -> Option<Tracked> {
        let t = self.tracked.remove(&id)?;
        for &(need, at) in &t.due {
            self.queue.remove(&(at, id, need));
        }
        self.by_first.remove(&(t.first, id));
        Some(t)
    }

    /// A pending message of `group` waits in the store: read the group again from before it.
    fn spill(&mut self, group: Group, key: Key, first: Instant) {
        let spill = self.spilled.entry(group).or_insert(Spill {
            after: before(key),
            due: first,
            generation: 0,
            staged: true,
        });
        spill.after = spill.after.min(before(key));
        spill.due = spill.due.min(first);
        spill.generation += 1;
        spill.staged = true;
    }

    /// A group with texts or notifications in the store, none watched (after a restart).
    pub fn spill_all(&mut self, group: Group, now: Instant) {
        let spill = self.spilled.entry(group).or_insert(Spill {
            after: None,
            due: now,
            generation: 0,
            staged: false,
        });
        spill.after = None;
        spill.due = now;
        spill.generation += 1;
    }

    /// Note the wall clock against the monotonic one.
    pub fn observe(&mut self, now: Instant, wall_ms: i64) {
        let mono = now.saturating_duration_since(self.epoch).as_millis() as i64;
        let offset = wall_ms.saturating_sub(mono);
        self.offsets = (self.offsets.0.min(offset), self.offsets.1.max(offset));
    }

    /// The monotonic instant a message stored with wall-clock start `start_ms` started.
    /// Its wall-clock offset then is not known, only that it is one this core saw (or, for
    /// a message from before the start, the one at the start): take the latest start it
    /// can have (a clock stepped back delays its deadlines, never fires them early); one in
    /// the future (written after a step forward) takes the earliest. Fixed whenever asked,
    /// so a message read again does not start again.
    fn start_of(&self, start_ms: i64, now: Instant) -> Instant {
        let at = |offset: i64| {
            let ms = start_ms.saturating_sub(offset);
            if ms >= 0 {
                self.epoch.checked_add(Duration::from_millis(ms as u64))
            } else {
                self.epoch
                    .checked_sub(Duration::from_millis(ms.unsigned_abs()))
            }
        };
        match (at(self.offsets.0), at(self.offsets.1)) {
            (Some(late), _) if late <= now => late,
            (_, Some(early)) if early <= now => early,
            // Later than any offset seen allows: written before this core started, with
            // the clock further ahead than now; it counts from the start (as a restart
            // counts a message written "in the future").
            _ => self.epoch.min(now),
        }
    }

    /// One decided need of a watched message leaves it.
    fn take_need(&mut self, id: MessageId, need: Need) -> Option<(String, Instant)> {
        let t = self.tracked.get_mut(&id)?;
        let at = t.due.iter().position(|(n, _)| *n == need)?;
        let (_, due) = t.due.remove(at);
        self.queue.remove(&(due, id, need));
        let peer = t.group.peer.clone();
        if t.due.is_empty() {
            self.untrack(id);
        } else {
            let first = t.due.iter().map(|(_, at)| *at).min().expect("not empty");
            let old = std::mem::replace(&mut t.first, first);
            self.by_first.remove(&(old, id));
            self.by_first.insert((first, id));
        }
        Some((peer, due))
    }

    /// The receipt `need` of message `id` (of `group`) came: decided now if it was still
    /// open — met, or missed if it came at or after the instant due (the timer had not run
    /// yet). A message not watched, of a spilled group, is looked up in the store first.
    pub fn meet(
        &mut self,
        group: &Group,
        id: MessageId,
        need: Need,
        now: Instant,
    ) -> Option<(String, Need, Decision)> {
        self.recent.insert(id);
        let Some((peer, due)) = self.take_need(id, need) else {
            if self.spilled.contains_key(group) && self.lookups.len() < DEADLINE_LOOKUPS_MAX {
                self.lookups.push((id, need, now));
            }
            return None;
        };
        self.decided_recent.insert((id, need));
        let decision = if now < due {
            Decision::Met
        } else {
            Decision::Missed
        };
        Some((peer, need, decision))
    }

    /// Obligations due by `now`: each decided missed, once, earliest first.
    pub fn poll_overdue(&mut self, now: Instant) -> Vec<(String, MessageId, Need)> {
        let mut out = Vec::new();
        while let Some(&(at, id, need)) = self.queue.first() {
            if at > now {
                break;
            }
            let Some((peer, _)) = self.take_need(id, need) else {
                self.queue.pop_first();
                continue;
            };
            self.recent.insert(id);
            self.decided_recent.insert((id, need));
            out.push((peer, id, need));
        }
        out
    }

    /// Stop watching `id` (a held message taken out of the messages): nothing of it is
    /// decided any more.
    pub fn forget(&mut self, id: MessageId) {
        self.recent.insert(id);
        self.untrack(id);
    }

    /// The staged batch was sealed: what changed is on its way to the store.
    pub fn sealed(&mut self) {
        for spill in self.spilled.values_mut() {
            spill.staged = false;
        }
        self.recent.clear();
        self.decided_recent.clear();
        self.yield_to_commit = false;
    }

    /// When to look again: the next deadline watched, or when a spilled group is to be
    /// read (one due already is read once no batch is in flight, not by a timer).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let spilled = self.spilled.values().map(|s| s.due).filter(|at| *at > now);
        let spilled = spilled.min().filter(|_| self.outstanding.is_none());
        self.queue
            .first()
            .map(|(at, _, _)| *at)
            .into_iter()
            .chain(spilled)
            .min()
    }

    /// Undecided obligations watched (for tests and metrics).
    pub fn open(&self) -> usize {
        self.queue.len()
    }

    /// Messages watched now, and at most since the start.
    pub fn watched(&self) -> (usize, usize) {
        (self.tracked.len(), self.peak)
    }

    /// Groups with messages waiting in the store.
    pub fn spilled(&self) -> usize {
        self.spilled.len()
    }

    /// A query is outstanding, or one should go before the next batch is sealed.
    pub fn holds_seal(&self, now: Instant) -> bool {
        self.outstanding.is_some() || !self.lookups.is_empty() || self.due_group(now).is_some()
    }

    /// The spilled group to read now, if any: the one whose waiting deadline is earliest,
    /// when memory is half empty or that deadline is due.
    fn due_group(&self, now: Instant) -> Option<&Group> {
        if self.yield_to_commit {
            return None;
        }
        let room = self.tracked.len() <= self.cap / 2;
        let full = self.tracked.len() >= self.cap;
        let last = self.by_first.last().map(|(at, _)| *at);
        self.spilled
            .iter()
            .filter(|(_, s)| room || (s.due <= now && (!full || last.is_some_and(|l| s.due < l))))
            .min_by_key(|(_, s)| s.due)
            .map(|(g, _)| g)
    }

    /// The next query, if one is due (the caller checks that no batch is in flight).
    pub fn poll_query(&mut self, now: Instant) -> Option<(u64, DeadlineQuery)> {
        if self.outstanding.is_some() {
            return None;
        }
        let id = self.next_query;
        if !self.lookups.is_empty() {
            let n = self
                .lookups
                .len()
                .min(detente_store_types::DEADLINE_STATE_IDS_MAX);
            let lookups: Vec<_> = self.lookups.drain(..n).collect();
            let ids = lookups.iter().map(|(id, _, _)| id.0).collect();
            self.next_query += 1;
            self.outstanding = Some((id, Outstanding::State { lookups }));
            return Some((id, DeadlineQuery::State { ids }));
        }
        let group = self.due_group(now)?.clone();
        let spill = &self.spilled[&group];
        let (after, generation) = (spill.after, spill.generation);
        let limit = DEADLINE_ROWS_MAX.min(u32::try_from(self.cap).unwrap_or(u32::MAX).max(1));
        self.next_query += 1;
        let query = DeadlineQuery::Due {
            group: group.due_group(),
            after,
            limit,
        };
        self.outstanding = Some((
            id,
            Outstanding::Due {
                group,
                after,
                limit,
                generation,
            },
        ));
        Some((id, query))
    }
}

impl Core {
    /// The next question to the store about deadlines: only while no batch is in flight
    /// (so the store shows everything sealed before), and nothing is sealed until its
    /// answer came ([`Core::poll_commit`] waits).
    pub fn poll_query(&mut self) -> Option<(u64, DeadlineQuery)> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.staging.batch.is_empty() && self.staging.releases.is_empty() {
            // Nothing waits to be sealed: no batch to let go first.
            self.tracker.yield_to_commit = false;
        }
        self.tracker.poll_query(self.now)
    }

    pub(crate) fn on_deadline_rows(
        &mut self,
        query: u64,
        rows: Result<Vec<DeadlineCandidate>, String>,
    ) {
        let Some((asked, outstanding)) = self.tracker.outstanding.take() else {
            return;
        };
        if asked != query {
            self.tracker.outstanding = Some((asked, outstanding));
            return;
        }
        let retry = self.now + Duration::from_millis(COMMIT_RETRY_MS);
        match (outstanding, rows) {
            (Outstanding::State { lookups }, Ok(rows)) => self.looked_up(lookups, rows),
            (Outstanding::State { mut lookups }, Err(_)) => {
                // Asked again with the next query.
                lookups.append(&mut self.tracker.lookups);
                self.tracker.lookups = lookups;
            }
            (
                Outstanding::Due {
                    group,
                    after,
                    limit,
                    generation,
                },
                Ok(rows),
            ) => {
                self.tracker.yield_to_commit = true;
                self.admit(group, after, limit, generation, rows);
            }
            (Outstanding::Due { group, .. }, Err(_)) => {
                if let Some(s) = self.tracker.spilled.get_mut(&group) {
                    s.due = s.due.max(retry);
                }
            }
        }
    }

    /// The kind, precedence and deadlines of a message the store says is pending, if the
    /// core knows it as a message of `peer` in that direction.
    fn known(&self, row: &DeadlineCandidate) -> Option<(u8, Precedence, Deadlines)> {
        let index = self.peer_index(&row.peer)?;
        let p = &self.peers[index];
        let list = match row.direction {
            Direction::Out => &p.out_index,
            Direction::In => &p.in_index,
        };
        let &(_, kind, precedence) = list.get(&MessageId(row.id))?;
        Some((kind, precedence, *p.deadlines(&self.deadlines)))
    }

    /// A group query's rows, in store order: watch each pending message until memory is
    /// full of messages due sooner; the group's cursor moves past what was taken.
    fn admit(
        &mut self,
        group: Group,
        asked_after: Option<Key>,
        limit: u32,
        generation: u64,
        rows: Vec<DeadlineCandidate>,
    ) {
        let now = self.now;
        let mut last = asked_after;
        // Why reading stopped before the end of the rows: retry at this instant.
        let mut stopped: Option<Instant> = None;
        let whole_page = rows.len() >= limit as usize;
        for row in rows.into_iter().take(limit as usize) {
            let id = MessageId(row.id);
            let start_ms = row.start_ms();
            let key = (start_ms, row.id);
            let ours = row.direction == Direction::Out;
            if row.peer != group.peer || ours != group.out || row.precedence != group.precedence {
                continue;
            }
            if self.tracker.tracked.contains_key(&id) {
                last = Some(key);
                continue;
            }
            if self.tracker.recent.contains(&id) {
                // The store does not show its latest state yet: read it after the commit.
                stopped = Some(now);
                break;
            }
            let Some((kind, precedence, deadlines)) = self.known(&row) else {
                last = Some(key);
                continue;
            };
            let side = group.side();
            let mut decided: Vec<Need> = row
                .missed
                .iter()
                .filter_map(|&l| Need::from_code(l))
                .collect();
            if row.delivered {
                decided.push(Need::Delivered);
            }
            let start = self.tracker.start_of(start_ms, now);
            let due: Vec<Instant> = obligations(kind, side, precedence, &deadlines)
                .into_iter()
                .filter(|(need, _)| !decided.contains(need))
                .map(|(_, after)| start + after)
                .collect();
            let Some(first) = due.iter().min().copied() else {
                last = Some(key);
                continue;
            };
            if self.tracker.tracked.len() >= self.tracker.cap && !self.tracker.evict_for(first) {
                stopped = Some(first);
                break;
            }
            self.tracker.start(
                group.clone(),
                id,
                kind,
                &deadlines,
                start,
                start_ms,
                &decided,
            );
            last = Some(key);
        }
        let Some(spill) = self.tracker.spilled.get_mut(&group) else {
            return;
        };
        if spill.generation != generation || spill.staged {
            // It spilled again meanwhile, or with a message not stored yet: keep the lower
            // cursor, read it again after the next commit.
            spill.after = spill.after.min(last);
            spill.due = spill.due.min(stopped.unwrap_or(now));
        } else if stopped.is_none() && !whole_page {
            self.tracker.spilled.remove(&group);
        } else {
            spill.after = last;
            spill.due = stopped.unwrap_or(now);
        }
    }

    /// The store's view of answered messages that were not watched, from before their
    /// answers were stored: decide each deadline still open then.
    fn looked_up(
        &mut self,
        lookups: Vec<(MessageId, Need, Instant)>,
        rows: Vec<DeadlineCandidate>,
    ) {
        let rows: HashMap<[u8; 32], DeadlineCandidate> =
            rows.into_iter().map(|r| (r.id, r)).collect();
        for (id, need, at) in lookups {
            let Some(row) = rows.get(&id.0) else {
                continue;
            };
            if self.tracker.decided_recent.contains(&(id, need))
                || self.tracker.tracked.contains_key(&id)
                || row.missed.contains(&need.code())
                || (need == Need::Delivered && row.delivered)
            {
                continue;
            }
            let Some((kind, precedence, deadlines)) = self.known(row) else {
                continue;
            };
            let side = match row.direction {
                Direction::Out => Side::Sender,
                Direction::In => Side::Receiver,
            };
            let Some(after) = obligations(kind, side, precedence, &deadlines)
                .into_iter()
                .find(|(n, _)| *n == need)
                .map(|(_, after)| after)
            else {
                continue;
            };
            let start_ms = row.start_ms();
            let start = self.tracker.start_of(start_ms, self.now);
            let decision = if at < start + after {
                Decision::Met
            } else {
                Decision::Missed
            };
            self.tracker.recent.insert(id);
            self.tracker.decided_recent.insert((id, need));
            self.decide(row.peer.clone(), id, need, decision);
        }
    }
}
