//! Deterministic simulation of detente nodes (after TigerBeetle's VOPR and FoundationDB).
//!
//! One `u64` seed builds a world of N [`detente_core::Core`]s (two or three; the harness
//! takes any N), picks which fault kinds this run switches on (swarm testing), and drives
//! every random choice: operator actions, commit latencies and I/O errors, crashes and
//! restarts from the store model, sessions that open, delay, stall and drop, one-way and
//! two-way partitions, unreachable addresses, clock skew and wall-clock jumps, and a hostile
//! member that lies. Safety invariants are checked after every step, liveness after a
//! final healing phase with the faults off ([`check`]). A failure names its seed; `detente-sim
//! --seed S --trace` replays exactly that run and prints what happened.

#![forbid(unsafe_code)]

pub mod check;
pub mod store;
mod world;

pub use detente_core::PlantedBug;
pub use world::{Faults, World};

use std::collections::BTreeMap;

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub nodes: usize,
    /// The first invariant broken, if any.
    pub failure: Option<String>,
    /// How many times each fault was injected.
    pub counts: BTreeMap<&'static str, u64>,
    /// The readable trace (only when asked for).
    pub trace: Vec<String>,
    pub steps: u64,
}

/// Run one seed. `bug` plants a defect (only in builds with the `planted-bugs` feature of
/// `detente-core`).
pub fn run(seed: u64, bug: Option<PlantedBug>, trace: bool) -> Outcome {
    run_with(seed, bug, trace, None)
}

/// Run one seed with `nodes` members (two or three, drawn from the seed, when `None`).
pub fn run_with(seed: u64, bug: Option<PlantedBug>, trace: bool, nodes: Option<usize>) -> Outcome {
    let result = std::panic::catch_unwind(|| {
        let mut world = World::new(seed, bug, trace, nodes);
        world.run();
        world.outcome()
    });
    match result {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome {
                seed,
                nodes: 0,
                failure: Some(format!("panic: {what}")),
                counts: BTreeMap::new(),
                trace: Vec::new(),
                steps: 0,
            }
        }
    }
}

/// The command that replays `seed` with a trace.
pub fn replay_command(seed: u64, bug: Option<PlantedBug>) -> String {
    replay_command_with(seed, bug, None)
}

/// The replay command for a world with a forced number of members.
pub fn replay_command_with(seed: u64, bug: Option<PlantedBug>, nodes: Option<usize>) -> String {
    let nodes = nodes.map_or(String::new(), |n| format!(" --nodes {n}"));
    match bug {
        None => format!("cargo run -p detente-sim -- --seed {seed} --trace{nodes}"),
        Some(b) => format!(
            "cargo run -p detente-sim --features planted-bugs -- --seed {seed} --trace --bug {}{nodes}",
            b.name()
        ),
    }
}

/// Run `count` seeds from `first` on `threads` threads; outcomes in seed order.
pub fn run_many(first: u64, count: u64, bug: Option<PlantedBug>, threads: usize) -> Vec<Outcome> {
    run_many_with(first, count, bug, threads, None)
}

/// [`run_many`] with `nodes` members in every world.
pub fn run_many_with(
    first: u64,
    count: u64,
    bug: Option<PlantedBug>,
    threads: usize,
    nodes: Option<usize>,
) -> Vec<Outcome> {
    let threads = threads.max(1) as u64;
    let mut all: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (first..first + count)
                        .filter(|s| (s - first) % threads == t)
                        .map(|s| run_with(s, bug, false, nodes))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .expect("a simulation thread panicked outside a run")
            })
            .collect()
    });
    all.sort_by_key(|o| o.seed);
    all
}
