//! Properties of the deadline and link-test rules, with injected time.

use std::time::{Duration, Instant};

use detente_proto::deadline::{
    elapsed_since, judge, line_verdict, obligations, start_instant, Deadlines, LineVerdict,
    LinkTest, Need, Side, Verdict,
};
use detente_proto::{LinkState, Precedence};
use proptest::prelude::*;

fn precedence() -> impl Strategy<Value = Precedence> {
    (0u8..4).prop_map(|p| Precedence::from_u8(p).unwrap())
}

fn deadlines() -> impl Strategy<Value = Deadlines> {
    proptest::array::uniform5(1u64..100_000).prop_map(|a| Deadlines {
        flash_delivered: Duration::from_millis(a[0]),
        flash_acknowledged: Duration::from_millis(a[1]),
        immediate_acknowledged: Duration::from_millis(a[2]),
        priority_acknowledged: Duration::from_millis(a[3]),
        routine_acknowledged: Duration::from_millis(a[4]),
    })
}

proptest! {
    /// Exactly one of pending / overdue / met / late, and they agree with the arithmetic.
    #[test]
    fn judge_is_consistent(due in 0u64..1_000_000, elapsed in 0u64..2_000_000, met in proptest::option::of(0u64..2_000_000)) {
        let ms = Duration::from_millis;
        let v = judge(ms(due), ms(elapsed), met.map(ms));
        match (met, v) {
            (Some(t), Verdict::Met) => prop_assert!(t < due),
            (Some(t), Verdict::Late { by }) => prop_assert_eq!(by, ms(t - due)),
            (None, Verdict::Overdue { by }) => prop_assert_eq!(ms(elapsed), ms(due) + by),
            (None, Verdict::Pending { due_in }) => prop_assert_eq!(ms(elapsed) + due_in, ms(due)),
            (m, v) => prop_assert!(false, "met {:?} gave {:?}", m, v),
        }
    }

    /// Overdue is monotonic in time: once overdue without a receipt, it stays overdue.
    #[test]
    fn overdue_stays_overdue(due in 0u64..100_000, a in 0u64..200_000, b in 0u64..200_000) {
        let ms = Duration::from_millis;
        let (early, late) = (a.min(b), a.max(b));
        if judge(ms(due), ms(early), None).is_overdue() {
            prop_assert!(judge(ms(due), ms(late), None).is_overdue());
        }
    }

    /// Every text message and notification is bound to be answered within its precedence's deadline; only a
    /// FLASH on the sender side also owes a delivery deadline; receipts and tests owe nothing.
    #[test]
    fn obligations_follow_the_rules(kind in 0u8..7, p in precedence(), d in deadlines(), sender in any::<bool>()) {
        let side = if sender { Side::Sender } else { Side::Receiver };
        let o = obligations(kind, side, p, &d);
        // Text (0) and notifications (4) bind people; receipts, tests, charters do not.
        if kind != 0 && kind != 4 {
            prop_assert!(o.is_empty());
        } else {
            prop_assert!(o.contains(&(Need::Answered, d.acknowledged(p))));
            let delivered = o.iter().any(|(n, _)| *n == Need::Delivered);
            prop_assert_eq!(delivered, sender && p == Precedence::Flash);
            prop_assert!(o.windows(2).all(|w| w[0].1 <= w[1].1));
        }
    }

    /// The stricter of two parties' deadlines is never looser than either, and symmetric.
    #[test]
    fn stricter_wins(a in deadlines(), b in deadlines(), p in precedence()) {
        let s = a.stricter(&b);
        prop_assert_eq!(s, b.stricter(&a));
        prop_assert!(s.acknowledged(p) <= a.acknowledged(p) && s.acknowledged(p) <= b.acknowledged(p));
        prop_assert_eq!(s.acknowledged(p), a.acknowledged(p).min(b.acknowledged(p)));
        prop_assert_eq!(s.flash_delivered, a.flash_delivered.min(b.flash_delivered));
    }

    /// Recovering a start after a restart never puts it in the future (a clock that stepped
    /// back never fires a deadline early).
    #[test]
    fn recovered_start_is_never_in_the_future(start in -1_000_000i64..1_000_000, now_ms in -1_000_000i64..1_000_000) {
        let now = Instant::now();
        let s = start_instant(start, now_ms, now);
        prop_assert!(s <= now);
        prop_assert_eq!(now - s, elapsed_since(start, now_ms));
    }

    /// A link test: sent on its cadence, reported missed exactly once per miss, cleared by a
    /// confirmed test.
    #[test]
    fn link_test_reports_each_miss_once(interval_ms in 1u64..10_000, bound_ms in 1u64..10_000, confirm in proptest::collection::vec(any::<bool>(), 1..20)) {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut test = LinkTest::new(ms(interval_ms), ms(bound_ms), t0);
        let mut now = t0;
        let mut seq = 0u64;
        prop_assert!(!test.poll_send(now) || interval_ms == 0);
        for ok in confirm {
            now = test.next_wake().max(now);
            // Drive to the next send.
            let mut guard = 0;
            while !test.poll_send(now) {
                now = test.next_wake().max(now + ms(1));
                let _ = test.poll_missed(now);
                guard += 1;
                prop_assert!(guard < 10_000);
            }
            seq += 1;
            test.on_sent(seq, now);
            if ok {
                let rtt = test.on_delivered(seq, seq, now + ms(bound_ms / 2));
                prop_assert!(rtt.is_some());
                prop_assert!(!test.is_missed());
                prop_assert!(!test.poll_missed(now + ms(bound_ms / 2)));
            } else {
                let after = now + ms(bound_ms);
                let first = test.poll_missed(after);
                let second = test.poll_missed(after);
                prop_assert!(test.is_missed());
                prop_assert!(!second, "a miss is reported once");
                let _ = first;
            }
        }
    }
}

#[test]
fn a_down_link_is_not_a_silent_peer() {
    assert_eq!(
        line_verdict(LinkState::Down, 0, 0, false),
        LineVerdict::LinkDown
    );
    assert_eq!(
        line_verdict(LinkState::Up, 3, 0, false),
        LineVerdict::Unanswered
    );
    assert_eq!(
        line_verdict(LinkState::Degraded, 3, 0, false),
        LineVerdict::Unanswered
    );
    assert_eq!(
        line_verdict(LinkState::Up, 0, 0, false),
        LineVerdict::AllWell
    );
}

#[test]
fn late_test_confirmation_clears_the_alarm() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut test = LinkTest::new(s(60), s(5), t0);
    assert!(test.poll_send(t0 + s(60)));
    test.on_sent(7, t0 + s(60));
    assert!(!test.poll_missed(t0 + s(64)));
    assert!(test.poll_missed(t0 + s(65)));
    assert!(!test.poll_missed(t0 + s(66)));
    assert_eq!(test.on_delivered(1, 6, t0 + s(67)), None, "another range");
    assert_eq!(test.on_delivered(5, 9, t0 + s(67)), Some(s(7)));
    assert!(!test.is_missed());
}
