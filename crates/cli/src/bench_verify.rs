//! `detente bench --verify`: offline verification speed of an export bundle. Builds a bundle
//! of two streams (1 KiB ROUTINE texts, a checkpoint signed by both every 1,000 messages)
//! in memory, then times `detente verify`'s check of it several times and reports the median
//! in messages per second. No node, no network, no disk.

use std::time::Instant;

use detente_proto::bundle::{self, Bundle};
use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint, StreamHead};
use detente_proto::merkle::{leaf_hash, MemoryTree};
use detente_proto::{
    Body, ChannelId, Envelope, MessageId, PartySecret, Precedence, TextBody, VerifiedEnvelope,
};
use serde_json::json;

use crate::{Failure, Outcome};

const RUNS: usize = 5;
const CHECKPOINT_EVERY: usize = 1000;
const T0: u64 = 1_767_225_600_000;

/// The benchmarks' message: a signed ROUTINE text of about 1 KiB, the `n`-th written.
pub fn report(
    channel: ChannelId,
    secret: &PartySecret,
    seq: u64,
    prev: MessageId,
    n: u64,
) -> VerifiedEnvelope {
    let e = Envelope {
        channel,
        sender: secret.public(),
        seq,
        prev,
        created_at_ms: T0 + n,
        precedence: Precedence::Routine,
        topic: "general".into(),
        author: "Duty Officer".into(),
        in_reply_to: None,
        body: Body::Text(TextBody {
            language: "en".into(),
            text: format!("report {n} {}", "x".repeat(1000)),
            translations: Vec::new(),
        }),
    };
    VerifiedEnvelope::sign(e, secret).expect("a valid envelope")
}

/// Build a bundle of `messages` envelopes, split evenly between two parties.
pub fn build(messages: u64) -> Vec<u8> {
    let secrets = [
        PartySecret::from_seed([7; 32]),
        PartySecret::from_seed([8; 32]),
    ];
    let channel = ChannelId::for_pair(&secrets[0].public(), &secrets[1].public());
    let mut members: Vec<_> = secrets.iter().map(|s| s.public()).collect();
    members.sort();
    let order: Vec<usize> = members
        .iter()
        .map(|k| secrets.iter().position(|s| s.public() == *k).unwrap_or(0))
        .collect();
    let mut streams: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
    let mut trees = [MemoryTree::new(), MemoryTree::new()];
    let mut last = [MessageId::ZERO; 2];
    let mut checkpoints = Vec::new();
    for i in 0..messages as usize {
        let m = i % 2;
        let secret = &secrets[order[m]];
        let v = report(
            channel,
            secret,
            streams[m].len() as u64 + 1,
            last[m],
            i as u64,
        );
        last[m] = v.id();
        trees[m].push(leaf_hash(v.bytes()));
        streams[m].push(v.bytes().to_vec());
        if (i + 1) % CHECKPOINT_EVERY == 0 || i + 1 == messages as usize {
            let heads = (0..2)
                .map(|k| StreamHead {
                    key: members[k],
                    size: trees[k].size(),
                    root: trees[k].root(),
                })
                .collect();
            let c = Checkpoint::new(channel, T0 + i as u64, heads).expect("a valid checkpoint");
            let mut s = SignedCheckpoint::sign(c, &secrets[0]).expect("member");
            s.add_signature(&secrets[1]).expect("member");
            checkpoints.push(s.encode());
        }
    }
    Bundle {
        channel,
        members: members.clone(),
        charters: Vec::new(),
        streams: members.into_iter().zip(streams).collect(),
        checkpoints,
    }
    .encode()
}

pub fn run(messages: u64, as_json: bool) -> Outcome {
    if messages == 0 || messages > 2_000_000 {
        return Err(Failure::usage("--messages must be between 1 and 2000000"));
    }
    eprintln!("building a bundle of {messages} messages…");
    let building = crate::progress::Progress::spinner(format!("building {messages} messages"));
    let bytes = build(messages);
    drop(building);
    let mut rates = Vec::new();
    let runs = crate::progress::Progress::bar(RUNS as u64, "verifying");
    for _ in 0..RUNS {
        let start = Instant::now();
        let report = bundle::verify(&bytes);
        let seconds = start.elapsed().as_secs_f64();
        if !report.ok() || report.messages != messages {
            return Err(Failure::new("the benchmark bundle did not verify"));
        }
        rates.push(messages as f64 / seconds);
        runs.inc(1);
    }
    drop(runs);
    rates.sort_by(f64::total_cmp);
    let median = rates[RUNS / 2];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if as_json {
        println!(
            "{}",
            json!({
                "verify_msgs_per_s": median.round(),
                "runs": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
                "messages": messages,
                "bundle_bytes": bytes.len(),
                "cores": cores,
            })
        );
    } else {
        println!(
            "verify: {messages} messages ({} MB) in a bundle, median of {RUNS} runs: {:.0} msg/s on {cores} cores",
            bytes.len() / 1_000_000,
            median
        );
    }
    Ok(())
}
