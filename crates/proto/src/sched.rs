//! Precedence scheduling on the sending side of a link session.
//!
//! FLASH goes before IMMEDIATE before PRIORITY before ROUTINE; within a precedence, `seq`
//! order. The outbox lives on disk; the scheduler keeps only a small window of each
//! precedence in memory and asks the driver to refill it, so a backlog of a million messages
//! costs a few hundred kilobytes here.
//!
//! Sending out of `seq` order makes the receiver hold envelopes ahead of a gap. To keep that
//! bounded, after [`AHEAD_MAX`] out-of-order sends in one session (or when the receiver says
//! its hold is full) the scheduler sends strictly in `seq` order until the session ends.

use std::collections::VecDeque;

use crate::envelope::Precedence;

/// Envelopes kept in memory per precedence.
pub const WINDOW_MAX: usize = 256;

/// Refill a precedence when its window falls below this.
pub const WINDOW_LOW: usize = 64;

/// Out-of-order sends allowed in one session before falling back to `seq` order.
pub const AHEAD_MAX: u64 = 5_000;

/// One envelope waiting to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: u64,
    pub precedence: Precedence,
    pub bytes: Vec<u8>,
}

/// A refill the driver should perform: up to `limit` undelivered outbox envelopes of
/// `precedence` with `seq > after`, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub precedence: Precedence,
    pub after: u64,
    pub limit: usize,
}

#[derive(Debug, Clone)]
struct Lane {
    queue: VecDeque<Outgoing>,
    /// Highest `seq` loaded into this lane (or known sent).
    cursor: u64,
    /// The store had nothing more after `cursor` at the last refill, and nothing new has
    /// been written since.
    exhausted: bool,
    /// A refill is outstanding.
    refilling: bool,
    /// Something was written while the refill was outstanding: the refill's answer may
    /// predate it, so the lane must not be marked exhausted by that answer.
    written_during_refill: bool,
}

/// The send queue of one session.
#[derive(Debug, Clone)]
pub struct Scheduler {
    lanes: [Lane; 4],
    in_order_only: bool,
    ahead_sent: u64,
}

impl Scheduler {
    /// A scheduler for a session where the peer holds our stream up to `peer_hwm`.
    pub fn new(peer_hwm: u64) -> Self {
        let lane = Lane {
            queue: VecDeque::new(),
            cursor: peer_hwm,
            exhausted: false,
            refilling: false,
            written_during_refill: false,
        };
        Self {
            lanes: [lane.clone(), lane.clone(), lane.clone(), lane],
            in_order_only: false,
            ahead_sent: 0,
        }
    }

    /// The next refill the driver should perform, if any (highest precedence first).
    pub fn poll_refill(&mut self) -> Option<Refill> {
        for precedence in Precedence::ALL {
            let lane = &mut self.lanes[precedence.index()];
            if !lane.exhausted && !lane.refilling && lane.queue.len() < WINDOW_LOW {
                lane.refilling = true;
                return Some(Refill {
                    precedence,
                    after: lane.cursor,
                    limit: WINDOW_MAX - lane.queue.len(),
                });
            }
        }
        None
    }

    /// The result of a refill. Envelopes at or below the lane's cursor are ignored (they
    /// were loaded already).
    pub fn on_refill(&mut self, refill: Refill, rows: Vec<Outgoing>) {
        let lane = &mut self.lanes[refill.precedence.index()];
        lane.refilling = false;
        lane.exhausted = rows.len() < refill.limit && !lane.written_during_refill;
        lane.written_during_refill = false;
        for row in rows {
            if row.seq > lane.cursor {
                lane.cursor = row.seq;
                lane.queue.push_back(row);
            }
        }
    }

    /// A refill failed; it will be asked for again.
    pub fn on_refill_failed(&mut self, refill: Refill) {
        let lane = &mut self.lanes[refill.precedence.index()];
        lane.refilling = false;
        lane.written_during_refill = false;
        lane.exhausted = false;
    }

    /// A new envelope of `precedence` was written to the outbox.
    pub fn on_written(&mut self, precedence: Precedence) {
        let lane = &mut self.lanes[precedence.index()];
        lane.exhausted = false;
        if lane.refilling {
            lane.written_during_refill = true;
        }
    }

    /// The receiver's hold is full: send in `seq` order for the rest of the session, and put
    /// the refused envelope back.
    pub fn on_held_full(&mut self, refused: Outgoing) {
        self.in_order_only = true;
        let lane = &mut self.lanes[refused.precedence.index()];
        let at = lane.queue.partition_point(|o| o.seq < refused.seq);
        if lane.queue.get(at).map(|o| o.seq) != Some(refused.seq) {
            lane.queue.insert(at, refused);
        }
    }

    /// True when a lane that may hold lower `seq` numbers is still being refilled: the
    /// driver should refill before sending in `seq`-order mode.
    fn waiting_for_refill(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| l.queue.is_empty() && (l.refilling || !l.exhausted))
    }

    /// The envelope to send next, if any.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Outgoing> {
        let lowest_head = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.queue.front().map(|o| (o.seq, i)))
            .min();
        let (lowest_seq, lowest_lane) = lowest_head?;
        let first_lane = self.lanes.iter().position(|l| !l.queue.is_empty())?;
        let chosen = if self.in_order_only || self.ahead_sent >= AHEAD_MAX {
            if self.waiting_for_refill() {
                return None;
            }
            lowest_lane
        } else {
            first_lane
        };
        let out = self.lanes[chosen].queue.pop_front()?;
        if out.seq > lowest_seq {
            self.ahead_sent += 1;
        }
        Some(out)
    }

    /// The precedence of the envelope [`Scheduler::next`] would most likely give (the highest
    /// loaded), so that the driver can let a FLASH past a full flow-control window.
    pub fn next_precedence(&self) -> Option<Precedence> {
        self.lanes
            .iter()
            .find_map(|l| l.queue.front().map(|o| o.precedence))
    }

    /// Envelopes in memory, for tests and status.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(seq: u64, p: Precedence) -> Outgoing {
        Outgoing {
            seq,
            precedence: p,
            bytes: vec![],
        }
    }

    fn drain_refills(s: &mut Scheduler, store: &[Outgoing]) {
        while let Some(r) = s.poll_refill() {
            let rows: Vec<Outgoing> = store
                .iter()
                .filter(|o| o.precedence == r.precedence && o.seq > r.after)
                .take(r.limit)
                .cloned()
                .collect();
            s.on_refill(r, rows);
        }
    }

    #[test]
    fn flash_first_then_seq_order_within_precedence() {
        let mut store: Vec<Outgoing> = (1..=300).map(|s| out(s, Precedence::Routine)).collect();
        store.push(out(301, Precedence::Flash));
        store.push(out(302, Precedence::Priority));
        let mut s = Scheduler::new(0);
        drain_refills(&mut s, &store);
        assert_eq!(s.next().unwrap().seq, 301);
        assert_eq!(s.next().unwrap().seq, 302);
        let mut last = 0;
        let mut sent = 2;
        loop {
            drain_refills(&mut s, &store);
            let Some(o) = s.next() else { break };
            assert!(o.seq > last);
            last = o.seq;
            sent += 1;
        }
        assert_eq!(sent, 302);
    }

    #[test]
    fn new_writes_wake_an_exhausted_lane() {
        let mut s = Scheduler::new(10);
        drain_refills(&mut s, &[]);
        assert_eq!(s.next(), None);
        s.on_written(Precedence::Flash);
        drain_refills(&mut s, &[out(11, Precedence::Flash)]);
        assert_eq!(s.next().unwrap().seq, 11);
    }

    #[test]
    fn a_write_during_a_refill_is_not_lost() {
        let mut s = Scheduler::new(0);
        let refill = s.poll_refill().unwrap();
        assert_eq!(refill.precedence, Precedence::Flash);
        s.on_written(Precedence::Flash);
        // The answer was read before the write.
        s.on_refill(refill, vec![]);
        drain_refills(&mut s, &[out(1, Precedence::Flash)]);
        assert_eq!(s.next().unwrap().seq, 1);
    }

    #[test]
    fn held_full_switches_to_seq_order() {
        let store = vec![
            out(1, Precedence::Routine),
            out(2, Precedence::Flash),
            out(3, Precedence::Flash),
        ];
        let mut s = Scheduler::new(0);
        drain_refills(&mut s, &store);
        let flash = s.next().unwrap();
        assert_eq!(flash.seq, 2);
        s.on_held_full(flash);
        drain_refills(&mut s, &store);
        assert_eq!(s.next().unwrap().seq, 1);
        assert_eq!(s.next().unwrap().seq, 2);
        assert_eq!(s.next().unwrap().seq, 3);
    }
}
