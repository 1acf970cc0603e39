//! Deadline tracking on the monotonic clock: each obligation of a message (docs/spec.md §5, the
//! rules of `detente_proto::deadline`) is decided exactly once, met or missed, and the
//! decision is released only with the batch that records it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use detente_proto::deadline::{obligations, Side};
use detente_proto::{Deadlines, MessageId, Need, Precedence};

/// Messages watched at once. Beyond this a new message gets no deadline at all (so memory
/// does not grow): the gap issue 12 item 8 closed on the tasks engine and is still open
/// here (docs/deadlines.md).
pub const TRACKED_MAX: usize = 100_000;

/// How a deadline was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The receipt came in time.
    Met,
    /// The deadline passed without it.
    Missed,
}

#[derive(Debug, Clone)]
struct Tracked {
    peer: String,
    /// Undecided obligations and when each is due.
    due: Vec<(Need, Instant)>,
}

/// Every undecided deadline of this node, and the same deadlines in due order, so that
/// finding what is due costs O(log n) per decision, never a walk over every open message.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    tracked: BTreeMap<MessageId, Tracked>,
    queue: BTreeSet<(Instant, MessageId, Need)>,
}

impl Tracker {
    pub fn start_sent(
        &mut self,
        peer: &str,
        id: MessageId,
        kind: u8,
        precedence: Precedence,
        deadlines: &Deadlines,
        start: Instant,
    ) {
        self.start(
            peer,
            id,
            kind,
            Side::Sender,
            precedence,
            deadlines,
            start,
            &[],
        );
    }

    pub fn start_received(
        &mut self,
        peer: &str,
        id: MessageId,
        kind: u8,
        precedence: Precedence,
        deadlines: &Deadlines,
        start: Instant,
    ) {
        self.start(
            peer,
            id,
            kind,
            Side::Receiver,
            precedence,
            deadlines,
            start,
            &[],
        );
    }

    /// Watch a message's obligations counted from `start`, except those already decided.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        peer: &str,
        id: MessageId,
        kind: u8,
        side: Side,
        precedence: Precedence,
        deadlines: &Deadlines,
        start: Instant,
        decided: &[Need],
    ) {
        let due: Vec<(Need, Instant)> = obligations(kind, side, precedence, deadlines)
            .into_iter()
            .filter(|(need, _)| !decided.contains(need))
            .map(|(need, after)| (need, start + after))
            .collect();
        if due.is_empty() || self.tracked.len() >= TRACKED_MAX || self.tracked.contains_key(&id) {
            return;
        }
        for &(need, at) in &due {
            self.queue.insert((at, id, need));
        }
        let peer = peer.to_string();
        self.tracked.insert(id, Tracked { peer, due });
    }

    /// The receipt `need` of message `id` came: decided now if it was still open — met,
    /// or missed if it came at or after the instant due (the timer had not run yet).
    pub fn meet(
        &mut self,
        id: MessageId,
        need: Need,
        now: Instant,
    ) -> Option<(String, Need, Decision)> {
        let t = self.tracked.get_mut(&id)?;
        let at = t.due.iter().position(|(n, _)| *n == need)?;
        let (_, due) = t.due.remove(at);
        self.queue.remove(&(due, id, need));
        let peer = t.peer.clone();
        if t.due.is_empty() {
            self.tracked.remove(&id);
        }
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
            self.queue.pop_first();
            let Some(t) = self.tracked.get_mut(&id) else {
                continue;
            };
            t.due.retain(|(n, _)| *n != need);
            out.push((t.peer.clone(), id, need));
            if t.due.is_empty() {
                self.tracked.remove(&id);
            }
        }
        out
    }

    /// Stop watching `id` (a held message taken out of the messages): nothing of it is
    /// decided any more.
    pub fn forget(&mut self, id: MessageId) {
        if let Some(t) = self.tracked.remove(&id) {
            for (need, at) in t.due {
                self.queue.remove(&(at, id, need));
            }
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _, _)| *at)
    }

    /// Undecided obligations (for tests and metrics).
    pub fn open(&self) -> usize {
        self.queue.len()
    }
}

/// A deadline length, for recovery: the time since `start_ms` on the wall clock.
pub(crate) fn recovered_start(start_ms: i64, wall_ms: i64, now: Instant) -> Instant {
    let elapsed = detente_proto::deadline::elapsed_since(start_ms, wall_ms);
    now.checked_sub(elapsed).unwrap_or(now)
}
