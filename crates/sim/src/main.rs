//! `detente-sim --seeds N [--first S] [--nodes N] [--json]`: run N seeds; `--seed S --trace`: replay one
//! with its trace. Exit 1 if any seed broke an invariant.

use std::collections::BTreeMap;
use std::process::ExitCode;

use detente_sim::{replay_command_with, run_many_with, run_with, PlantedBug};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bug = match value("--bug") {
        Some(name) => match PlantedBug::parse(&name) {
            Some(b) => Some(b),
            None => {
                eprintln!("error: unknown planted bug {name:?}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let nodes: Option<usize> = value("--nodes").and_then(|n| n.parse().ok());
    if let Some(seed) = value("--seed") {
        let Ok(seed) = seed.parse::<u64>() else {
            eprintln!("error: --seed takes a number");
            return ExitCode::from(2);
        };
        let outcome = run_with(seed, bug, args.iter().any(|a| a == "--trace"), nodes);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} nodes, {} steps, faults {:?}",
            outcome.nodes, outcome.steps, outcome.counts
        );
        return match outcome.failure {
            Some(f) => {
                println!("FAILED: {f}");
                ExitCode::FAILURE
            }
            None => {
                println!("ok");
                ExitCode::SUCCESS
            }
        };
    }
    let seeds: u64 = value("--seeds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let first: u64 = value("--first").and_then(|s| s.parse().ok()).unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let outcomes = run_many_with(first, seeds, bug, threads, nodes);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for o in &outcomes {
        for (k, v) in &o.counts {
            *counts.entry(k).or_default() += v;
        }
    }
    let failures: Vec<&detente_sim::Outcome> =
        outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if args.iter().any(|a| a == "--json") {
        let json = serde_json::json!({
            "seeds": seeds,
            "first": first,
            "failures": failures.iter().map(|o| serde_json::json!({
                "seed": o.seed,
                "invariant": o.failure,
                "replay": replay_command_with(o.seed, bug, nodes),
            })).collect::<Vec<_>>(),
            "faults": counts,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{json}");
    } else {
        for o in &failures {
            println!(
                "seed {} FAILED: {}\n  replay: {}",
                o.seed,
                o.failure.as_deref().unwrap_or(""),
                replay_command_with(o.seed, bug, nodes)
            );
        }
        println!(
            "{seeds} seeds, {} failures, {:.1} s; faults injected: {counts:?}",
            failures.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
