//! The search can fail: each planted defect is caught within 1,000 seeds.

use detente_core::PLANTED_BUGS_COMPILED;
use detente_sim::{replay_command, run, PlantedBug};

const SEEDS_MAX: u64 = 1_000;

fn first_caught(bug: PlantedBug) -> Option<(u64, String)> {
    (0..SEEDS_MAX).find_map(|seed| run(seed, Some(bug), false).failure.map(|f| (seed, f)))
}

#[test]
fn every_planted_bug_is_caught_within_a_thousand_seeds() {
    assert!(
        std::hint::black_box(PLANTED_BUGS_COMPILED),
        "the tests build detente-core with planted-bugs"
    );
    let mut missed = Vec::new();
    for bug in PlantedBug::ALL {
        match first_caught(bug) {
            Some((seed, failure)) => println!(
                "{}: caught at seed {seed}: {failure}\n  replay: {}",
                bug.name(),
                replay_command(seed, Some(bug))
            ),
            None => missed.push(bug.name()),
        }
    }
    assert!(
        missed.is_empty(),
        "not caught within {SEEDS_MAX} seeds: {missed:?}"
    );
}
