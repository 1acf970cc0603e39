//! The simulation's regular run: at least 1,000 seeds, none may break an invariant.

use std::io::Write;

use detente_sim::{replay_command, run_many};

const SEEDS: u64 = 1_000;

#[test]
fn a_thousand_seeds_keep_every_invariant() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let outcomes = run_many(0, SEEDS, None, threads);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.failure.as_ref().map(|f| {
                format!(
                    "seed {}: {f}\n  replay: {}",
                    o.seed,
                    replay_command(o.seed, None)
                )
            })
        })
        .collect();
    let faults: u64 = outcomes.iter().flat_map(|o| o.counts.values()).sum();
    // Written past the test harness's capture, so that every run shows the count.
    let _ = writeln!(
        std::io::stderr(),
        "detente-sim: simulated {} seeds ({faults} faults and actions injected), {} failed",
        outcomes.len(),
        failures.len()
    );
    assert_eq!(outcomes.len() as u64, SEEDS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
