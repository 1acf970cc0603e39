//! Stream acceptance properties: a simulated receiver applies `classify` to a random
//! permutation, with duplicates, of a real signed chain (each `prev` the id of the previous
//! signed envelope), holding what is ahead of a gap and promoting it when the gap fills. The
//! appended sequence is exactly 1..N in order, once each; replays of appended envelopes are
//! `Known`; a wrong `prev` is refused; the hold and look-ahead bounds apply. And `ranges`
//! turns any sorted seq list into sorted, disjoint, maximal ranges covering exactly its set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use detente_proto::stream::{classify, ranges, HELD_MAX, SEQ_AHEAD_MAX};
use detente_proto::{
    Body, ChannelId, Disposition, Envelope, MessageId, PartyKey, PartySecret, Precedence, Refusal,
    StreamCursor, VerifiedEnvelope,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const CHAIN_MAX: usize = 300;

/// The sender and channel of the chain (deriving keys is slow enough to do once).
fn parties() -> &'static (PartyKey, ChannelId) {
    static PARTIES: OnceLock<(PartyKey, ChannelId)> = OnceLock::new();
    PARTIES.get_or_init(|| {
        let sender = PartySecret::from_seed([11; 32]).public();
        let other = PartySecret::from_seed([12; 32]).public();
        (sender, ChannelId::for_pair(&sender, &other))
    })
}

fn envelope(seq: u64, prev: MessageId) -> Envelope {
    let (sender, channel) = *parties();
    Envelope {
        channel,
        sender,
        seq,
        prev,
        created_at_ms: 1_700_000_000_000 + seq,
        precedence: Precedence::ALL[(seq % 4) as usize],
        topic: "drill".into(),
        author: "Duty Officer".into(),
        in_reply_to: None,
        body: Body::Test {
            nonce: [seq as u8; 16],
        },
    }
}

/// A real chain of signed envelopes, seq 1..=CHAIN_MAX, signed once for all cases.
fn chain() -> &'static [VerifiedEnvelope] {
    static CHAIN: OnceLock<Vec<VerifiedEnvelope>> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let secret = PartySecret::from_seed([11; 32]);
        let mut prev = MessageId::ZERO;
        (1..=CHAIN_MAX as u64)
            .map(|seq| {
                let v = VerifiedEnvelope::sign(envelope(seq, prev), &secret).unwrap();
                prev = v.id();
                v
            })
            .collect()
    })
}

/// The receiver: appended stream, cursor, and what it holds ahead of a gap.
struct Receiver {
    cursor: StreamCursor,
    appended: Vec<(u64, MessageId)>,
    held: BTreeMap<u64, &'static VerifiedEnvelope>,
}

impl Receiver {
    fn new() -> Self {
        Self {
            cursor: StreamCursor::EMPTY,
            appended: Vec::new(),
            held: BTreeMap::new(),
        }
    }

    fn append(&mut self, v: &VerifiedEnvelope) {
        assert_eq!(v.envelope().seq, self.cursor.next_seq);
        self.appended.push((v.envelope().seq, v.id()));
        self.cursor.advance(v.id());
        assert_eq!(self.cursor.hwm(), v.envelope().seq);
    }

    fn receive(&mut self, v: &'static VerifiedEnvelope) -> Disposition {
        let seq = v.envelope().seq;
        let d = classify(&self.cursor, v.envelope(), self.held.len() as u64);
        match d {
            Disposition::Append => {
                self.append(v);
                // Promote what the gap was holding back, re-classified like any arrival.
                while let Some(next) = self.held.remove(&self.cursor.next_seq) {
                    let again = classify(&self.cursor, next.envelope(), self.held.len() as u64);
                    assert_eq!(
                        again,
                        Disposition::Append,
                        "held {} on promotion",
                        next.envelope().seq
                    );
                    self.append(next);
                }
            }
            Disposition::Hold => {
                assert!(seq > self.cursor.next_seq);
                if let Some(already) = self.held.insert(seq, v) {
                    assert_eq!(already.id(), v.id(), "same seq, same envelope");
                }
            }
            Disposition::Known => {
                assert!(seq < self.cursor.next_seq);
                assert_eq!(
                    self.appended[seq as usize - 1],
                    (seq, v.id()),
                    "a replay is the stored one"
                );
            }
            Disposition::Refuse(r) => panic!("valid chain refused at {seq}: {r:?}"),
        }
        d
    }
}

/// A delivery order: every seq of 1..=n at least once, some repeated, shuffled.
fn arb_delivery() -> impl Strategy<Value = Vec<u64>> {
    (1..=CHAIN_MAX, vec(any::<Index>(), 0..100)).prop_flat_map(|(n, dups)| {
        let mut order: Vec<u64> = (1..=n as u64).collect();
        order.extend(dups.iter().map(|d| d.index(n) as u64 + 1));
        Just(order).prop_shuffle()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_arrival_order_appends_one_to_n_once(order in arb_delivery()) {
        let n = *order.iter().max().unwrap();
        let chain = chain();
        let mut rx = Receiver::new();
        let mut seen = BTreeSet::new();
        for &seq in &order {
            let v = &chain[seq as usize - 1];
            let appended_before = seq < rx.cursor.next_seq;
            let d = rx.receive(v);
            if appended_before {
                prop_assert_eq!(d, Disposition::Known, "replay of appended {}", seq);
            } else if seen.contains(&seq) {
                prop_assert_eq!(d, Disposition::Hold, "replay of held {}", seq);
            }
            seen.insert(seq);
        }
        prop_assert!(rx.held.is_empty());
        let expected: Vec<(u64, MessageId)> =
            chain[..n as usize].iter().map(|v| (v.envelope().seq, v.id())).collect();
        prop_assert_eq!(&rx.appended, &expected);
        prop_assert_eq!(rx.cursor.hwm(), n);
        prop_assert_eq!(rx.cursor.last_id, chain[n as usize - 1].id());
    }

    /// At any point of a stream, the next seq with a wrong `prev` is refused, and envelopes
    /// at or below the cursor are `Known` whatever they carry (the caller compares ids).
    #[test]
    fn wrong_prev_is_refused(k in 0usize..CHAIN_MAX, wrong in any::<[u8; 32]>()) {
        let chain = chain();
        let mut cursor = StreamCursor::EMPTY;
        for v in &chain[..k] {
            cursor.advance(v.id());
        }
        let seq = k as u64 + 1;
        let right = if k == 0 { MessageId::ZERO } else { chain[k - 1].id() };
        prop_assert_eq!(classify(&cursor, &envelope(seq, right), 0), Disposition::Append);
        let wrong = MessageId(wrong);
        prop_assume!(wrong != right);
        prop_assert_eq!(
            classify(&cursor, &envelope(seq, wrong), 0),
            Disposition::Refuse(Refusal::PrevMismatch)
        );
        for old in 1..seq {
            prop_assert_eq!(classify(&cursor, &envelope(old, wrong), 0), Disposition::Known);
        }
    }

    #[test]
    fn hold_and_look_ahead_bounds(
        next_seq in 1u64..1_000_000_000,
        ahead in 1u64..=SEQ_AHEAD_MAX + 10,
        held in prop_oneof![0u64..HELD_MAX, HELD_MAX..HELD_MAX + 10],
    ) {
        let cursor = StreamCursor { next_seq, last_id: MessageId([3; 32]) };
        let d = classify(&cursor, &envelope(next_seq + ahead, MessageId([4; 32])), held);
        let expected = if ahead > SEQ_AHEAD_MAX {
            Disposition::Refuse(Refusal::TooFarAhead {
                seq: next_seq + ahead,
                next: next_seq,
                max: SEQ_AHEAD_MAX,
            })
        } else if held >= HELD_MAX {
            Disposition::Refuse(Refusal::HeldFull { held })
        } else {
            Disposition::Hold
        };
        prop_assert_eq!(d, expected);
        // The envelope that fills the gap is always appendable, however full the hold.
        prop_assert_eq!(
            classify(&cursor, &envelope(next_seq, MessageId([3; 32])), held),
            Disposition::Append
        );
    }

    #[test]
    fn ranges_are_sorted_disjoint_maximal_and_exact(
        base in prop_oneof![Just(0u64), 1u64..1_000, 0u64..u64::MAX - 10_000],
        offsets in vec(prop_oneof![0u64..64, 0u64..5_000], 0..400),
    ) {
        let mut seqs: Vec<u64> = offsets.iter().map(|o| base + o).collect();
        seqs.sort_unstable();
        let out = ranges(&seqs);
        for &(from, to) in &out {
            prop_assert!(from <= to);
        }
        for pair in out.windows(2) {
            // Sorted, disjoint, and not adjacent (else they would be one range).
            prop_assert!(pair[0].1 + 1 < pair[1].0, "{:?}", pair);
        }
        let covered: BTreeSet<u64> = out.iter().flat_map(|&(a, b)| a..=b).collect();
        let input: BTreeSet<u64> = seqs.iter().copied().collect();
        prop_assert_eq!(covered, input);
    }
}

#[test]
fn ranges_examples() {
    assert_eq!(ranges(&[]), vec![]);
    assert_eq!(ranges(&[5]), vec![(5, 5)]);
    assert_eq!(ranges(&[1, 1, 1, 2, 2, 4]), vec![(1, 2), (4, 4)]);
    assert_eq!(
        ranges(&[u64::MAX - 1, u64::MAX]),
        vec![(u64::MAX - 1, u64::MAX)]
    );
}

#[test]
fn a_full_hold_still_lets_the_gap_fill() {
    // Deliver 2..=N first with the hold bound reached by other envelopes: the ones ahead are
    // refused as HeldFull, but 1 is appended, and the refused ones append when resent.
    let chain = chain();
    let mut rx = Receiver::new();
    let full = HELD_MAX;
    for v in &chain[1..5] {
        assert_eq!(
            classify(&rx.cursor, v.envelope(), full),
            Disposition::Refuse(Refusal::HeldFull { held: full })
        );
    }
    assert_eq!(rx.receive(&chain[0]), Disposition::Append);
    for v in &chain[1..5] {
        assert_eq!(rx.receive(v), Disposition::Append);
    }
    assert_eq!(rx.cursor.hwm(), 5);
}
