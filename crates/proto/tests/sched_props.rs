//! Scheduler properties, against a simulated outbox (random precedences over seq 1..N,
//! N up to 2000) and a fake store that answers `Refill`s (sometimes late, sometimes failing),
//! with new entries written at random moments (`on_written`): every entry is sent exactly
//! once; while precedence order applies, what is sent has the highest precedence of what is
//! loaded and is the lowest loaded seq of its precedence; within a precedence seqs strictly
//! increase; after `on_held_full` (and after `AHEAD_MAX` out-of-order sends) sending is in
//! global seq order of what is still unsent.

use std::collections::BTreeSet;

use detente_proto::sched::{AHEAD_MAX, WINDOW_MAX};
use detente_proto::{Outgoing, Precedence, Refill, Scheduler};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn out(seq: u64, precedence: Precedence) -> Outgoing {
    Outgoing {
        seq,
        precedence,
        // The bytes say which entry this is, so mix-ups show.
        bytes: seq.to_be_bytes().to_vec(),
    }
}

/// The simulated driver and outbox, and what the scheduler must have done so far.
struct Sim {
    sched: Scheduler,
    /// The whole outbox in seq order; `written` of it exist so far.
    entries: Vec<Outgoing>,
    written: usize,
    /// Refills asked for and not yet answered.
    outstanding: Vec<Refill>,
    /// Handed to the scheduler and not sent (or sent and refused back), per precedence.
    loaded: [BTreeSet<u64>; 4],
    /// Sent and accepted by the (simulated) receiver.
    sent: BTreeSet<u64>,
    /// Index into `entries` below which everything is sent.
    sent_below: usize,
    last_sent: [u64; 4],
    in_order: bool,
    ahead: u64,
    refused: usize,
}

impl Sim {
    fn new(peer_hwm: u64, precedences: &[Precedence], written: usize) -> Self {
        let entries: Vec<Outgoing> = precedences
            .iter()
            .enumerate()
            .map(|(i, p)| out(peer_hwm + 1 + i as u64, *p))
            .collect();
        Self {
            sched: Scheduler::new(peer_hwm),
            entries,
            written,
            outstanding: Vec::new(),
            loaded: Default::default(),
            sent: BTreeSet::new(),
            sent_below: 0,
            last_sent: [peer_hwm; 4],
            in_order: false,
            ahead: 0,
            refused: 0,
        }
    }

    fn write_one(&mut self) {
        if self.written < self.entries.len() {
            let p = self.entries[self.written].precedence;
            self.written += 1;
            self.sched.on_written(p);
        }
    }

    fn poll_refill(&mut self) -> bool {
        match self.sched.poll_refill() {
            Some(r) => {
                assert!(
                    !self
                        .outstanding
                        .iter()
                        .any(|o| o.precedence == r.precedence),
                    "two refills outstanding for {:?}",
                    r.precedence
                );
                assert!(r.limit > 0 && r.limit <= WINDOW_MAX);
                self.outstanding.push(r);
                true
            }
            None => false,
        }
    }

    /// Answer refill `i` from the store as it is now.
    fn answer(&mut self, i: usize) {
        let r = self.outstanding.swap_remove(i);
        let rows: Vec<Outgoing> = self.entries[..self.written]
            .iter()
            .filter(|o| o.precedence == r.precedence && o.seq > r.after)
            .take(r.limit)
            .cloned()
            .collect();
        for row in &rows {
            assert!(
                !self.sent.contains(&row.seq),
                "refill after {} reloads sent {}",
                r.after,
                row.seq
            );
            self.loaded[row.precedence.index()].insert(row.seq);
        }
        self.sched.on_refill(r, rows);
    }

    fn fail(&mut self, i: usize) {
        let r = self.outstanding.swap_remove(i);
        self.sched.on_refill_failed(r);
    }

    fn lowest_unsent(&mut self) -> Option<u64> {
        while self.sent_below < self.written
            && self.sent.contains(&self.entries[self.sent_below].seq)
        {
            self.sent_below += 1;
        }
        self.entries[..self.written]
            .iter()
            .skip(self.sent_below)
            .map(|o| o.seq)
            .find(|s| !self.sent.contains(s))
    }

    fn loaded_count(&self) -> usize {
        self.loaded.iter().map(|l| l.len()).sum()
    }

    /// Ask for the next envelope and check it. With `refuse`, the receiver refuses it as
    /// "hold full" if it overtook a lower seq.
    fn next(&mut self, refuse: bool) -> Option<u64> {
        let lowest_loaded = self.loaded.iter().filter_map(|l| l.first()).min().copied();
        let best_loaded = Precedence::ALL
            .into_iter()
            .find(|p| !self.loaded[p.index()].is_empty());
        let lowest_unsent = self.lowest_unsent();
        let Some(o) = self.sched.next() else {
            assert!(
                best_loaded.is_none() || self.in_order,
                "nothing sent while {} are loaded",
                self.loaded_count()
            );
            return None;
        };
        assert_eq!(o, out(o.seq, o.precedence), "payload of {}", o.seq);
        assert!(!self.sent.contains(&o.seq), "{} sent twice", o.seq);
        let lane = o.precedence.index();
        let lowest_of_lane = self.loaded[lane].first().copied();
        assert!(self.loaded[lane].remove(&o.seq), "{} was not loaded", o.seq);
        if self.in_order {
            assert_eq!(Some(o.seq), lowest_unsent, "seq order after hold-full");
        } else {
            assert_eq!(Some(o.precedence), best_loaded, "highest precedence first");
            assert_eq!(
                Some(o.seq),
                lowest_of_lane,
                "lowest seq of its precedence first"
            );
        }
        assert!(
            o.seq > self.last_sent[lane],
            "seq order within a precedence"
        );
        let overtook = lowest_loaded.is_some_and(|l| o.seq > l);
        if overtook {
            self.ahead += 1;
        }
        if refuse && Some(o.seq) != lowest_unsent {
            self.loaded[lane].insert(o.seq);
            self.sched.on_held_full(o);
            self.in_order = true;
            self.refused += 1;
            return None;
        }
        self.last_sent[lane] = o.seq;
        self.sent.insert(o.seq);
        Some(o.seq)
    }

    /// Write the rest, answer every refill at once and send until nothing is left.
    fn drain(&mut self) {
        while self.written < self.entries.len() {
            self.write_one();
        }
        for _ in 0..100_000 {
            while !self.outstanding.is_empty() {
                self.answer(0);
            }
            while self.poll_refill() {
                self.answer(0);
            }
            if self.next(false).is_none() && self.outstanding.is_empty() {
                if self.sched.poll_refill().is_none() {
                    break;
                }
                panic!("a refill was due after next() returned None");
            }
        }
        assert_eq!(self.sched.queued(), 0);
        assert_eq!(self.loaded_count(), 0);
        let all: BTreeSet<u64> = self.entries.iter().map(|o| o.seq).collect();
        assert_eq!(self.sent, all, "every outbox entry sent exactly once");
    }
}

fn arb_outbox() -> impl Strategy<Value = Vec<Precedence>> {
    // Per-case weights, so some outboxes are nearly all ROUTINE with a few FLASH.
    (any::<[u8; 4]>(), 1usize..=2000, any::<u64>()).prop_map(|(weights, n, seed)| {
        let weights: Vec<u32> = weights.iter().map(|w| u32::from(*w % 16) + 1).collect();
        let total: u32 = weights.iter().sum();
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut pick = rng.gen_range(0..total);
                let mut i = 0;
                while pick >= weights[i] {
                    pick -= weights[i];
                    i += 1;
                }
                Precedence::ALL[i]
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_entry_sent_exactly_once_in_precedence_order(
        precedences in arb_outbox(),
        peer_hwm in prop_oneof![Just(0u64), 0u64..1_000_000],
        written_share in 0usize..=4,
        refuse_per_mille in prop_oneof![Just(0u32), 0u32..20],
        seed in any::<u64>(),
    ) {
        let n = precedences.len();
        let mut sim = Sim::new(peer_hwm, &precedences, n * written_share / 4);
        let mut rng = StdRng::seed_from_u64(seed);
        let steps = 4 * n + 50;
        for _ in 0..steps {
            match rng.gen_range(0..100) {
                0..=19 => sim.write_one(),
                20..=39 => {
                    sim.poll_refill();
                }
                40..=54 if !sim.outstanding.is_empty() => {
                    let i = rng.gen_range(0..sim.outstanding.len());
                    if rng.gen_ratio(1, 10) {
                        sim.fail(i);
                    } else {
                        sim.answer(i);
                    }
                }
                _ => {
                    let refuse = rng.gen_range(0..1000) < refuse_per_mille;
                    sim.next(refuse);
                }
            }
        }
        sim.drain();
    }
}

#[test]
fn hold_full_switches_to_seq_order_for_the_rest_of_the_session() {
    // ROUTINE 1..=300, then FLASH 301..=310, PRIORITY 311..=320.
    let mut precedences = vec![Precedence::Routine; 300];
    precedences.extend([Precedence::Flash; 10]);
    precedences.extend([Precedence::Priority; 10]);
    let mut sim = Sim::new(0, &precedences, precedences.len());
    while sim.poll_refill() {
        sim.answer(0);
    }
    assert_eq!(sim.next(false), Some(301));
    assert_eq!(sim.next(false), Some(302));
    assert_eq!(sim.next(true), None, "303 refused: hold full");
    assert!(sim.in_order);
    let mut order = Vec::new();
    loop {
        while sim.poll_refill() {
            sim.answer(0);
        }
        match sim.next(false) {
            Some(seq) => order.push(seq),
            None => break,
        }
    }
    let expected: Vec<u64> = (1..=300).chain(303..=320).collect();
    assert_eq!(order, expected);
}

#[test]
fn ahead_max_out_of_order_sends_switch_to_seq_order() {
    // One ROUTINE at seq 1, then more FLASH than may overtake it in one session.
    let flash = AHEAD_MAX + 3;
    let mut precedences = vec![Precedence::Routine];
    precedences.extend(std::iter::repeat_n(Precedence::Flash, flash as usize));
    let mut sim = Sim::new(0, &precedences, precedences.len());
    let mut order = Vec::new();
    loop {
        while sim.poll_refill() {
            sim.answer(0);
        }
        if sim.ahead >= AHEAD_MAX {
            sim.in_order = true; // the scheduler must now send in seq order
        }
        match sim.next(false) {
            Some(seq) => order.push(seq),
            None => break,
        }
    }
    assert_eq!(sim.ahead, AHEAD_MAX);
    let expected: Vec<u64> = (2..=AHEAD_MAX + 1)
        .chain([1])
        .chain(AHEAD_MAX + 2..=flash + 1)
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn seq_order_waits_for_an_outstanding_refill() {
    let precedences = [
        Precedence::Routine,
        Precedence::Flash,
        Precedence::Flash,
        Precedence::Routine,
    ];
    let mut sim = Sim::new(0, &precedences, 4);
    // Load FLASH only; ROUTINE's refill stays outstanding.
    while sim.poll_refill() {}
    let flash = sim
        .outstanding
        .iter()
        .position(|r| r.precedence == Precedence::Flash)
        .unwrap();
    sim.answer(flash);
    assert_eq!(sim.next(true), None, "2 overtook 1 and is refused");
    assert_eq!(
        sim.sched.next(),
        None,
        "in seq order, nothing goes while a lower seq may still be loading"
    );
    while !sim.outstanding.is_empty() {
        sim.answer(0);
    }
    assert_eq!(sim.next(false), Some(1));
    assert_eq!(sim.next(false), Some(2));
    sim.drain();
}
