//! Properties of local floors on charter terms (issue 12 item 9): whatever the peer asks,
//! a charter that passes our floors carries no term below them, a refusal names exactly the
//! terms below, and the charter our own terms make with an equal or laxer peer always passes.

use std::time::Duration;

use detente_proto::charter::LINK_TEST_TERM;
use detente_proto::{Charter, Deadlines, Floors, Member, PartySecret, Terms};
use proptest::prelude::*;

fn terms(seed: u8, d: [u64; 6]) -> Terms {
    Terms {
        member: Member {
            key: PartySecret::from_seed([seed; 32]).public(),
            name: format!("n{seed}"),
            party: "P".into(),
            addresses: vec![],
            lang: "en".into(),
            tz: "UTC".into(),
        },
        formats: vec![],
        deadlines: Deadlines {
            flash_delivered: Duration::from_secs(d[0]),
            flash_acknowledged: Duration::from_secs(d[1]),
            immediate_acknowledged: Duration::from_secs(d[2]),
            priority_acknowledged: Duration::from_secs(d[3]),
            routine_acknowledged: Duration::from_secs(d[4]),
        },
        link_test_interval: Duration::from_secs(d[5]),
        counterparts: vec![],
    }
}

fn floors(d: [u64; 6]) -> Floors {
    let t = terms(9, d);
    Floors {
        deadlines: t.deadlines,
        link_test_interval: t.link_test_interval,
    }
}

fn arb_secs() -> impl Strategy<Value = [u64; 6]> {
    prop::array::uniform6(1u64..100_000)
}

proptest! {
    #[test]
    fn a_passing_charter_has_nothing_below_and_a_refusal_names_exactly_what_is(
        ours in arb_secs(), theirs in arb_secs(), floor in arb_secs()
    ) {
        let (a, b) = (terms(1, ours), terms(2, theirs));
        let charter = Charter::agree(&a, &b).unwrap();
        let f = floors(floor).capped_by(&a);
        let terms: Vec<(&str, Duration)> = charter
            .deadlines
            .all()
            .into_iter()
            .chain([(LINK_TEST_TERM, charter.link_test_interval)])
            .collect();
        let expected: Vec<&str> = terms
            .iter()
            .zip(f.all())
            .filter(|((_, v), (_, fl))| v < fl)
            .map(|((t, _), _)| *t)
            .collect();
        match charter.check_floors(&f) {
            Ok(()) => prop_assert!(expected.is_empty()),
            Err(below) => {
                let names: Vec<&str> = below.iter().map(|b| b.term).collect();
                prop_assert_eq!(names, expected);
                for b in &below {
                    prop_assert!(b.offered < b.floor);
                    // Our own terms are never the ones below our (capped) floors.
                    let own = a.deadlines.all().into_iter()
                        .chain([(LINK_TEST_TERM, a.link_test_interval)])
                        .find(|(t, _)| *t == b.term).unwrap().1;
                    prop_assert!(own >= b.floor);
                }
            }
        }
    }

    #[test]
    fn a_peer_asking_no_less_than_we_do_is_always_agreed(
        ours in arb_secs(), extra in arb_secs(), floor in arb_secs()
    ) {
        let laxer: Vec<u64> = ours.iter().zip(extra).map(|(o, e)| o + e).collect();
        let a = terms(1, ours);
        let b = terms(2, laxer.try_into().unwrap());
        let charter = Charter::agree(&a, &b).unwrap();
        prop_assert!(charter.check_floors(&floors(floor).capped_by(&a)).is_ok());
    }
}
