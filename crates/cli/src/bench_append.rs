//! `detente bench --append`: what growing the Merkle streams costs the writer. The same
//! signed 1 KiB ROUTINE envelopes are committed to a real SQLite file in the writer's batches
//! (message, outbox and stream rows), once without and once with the transcript's work (leaf
//! hash, frontier update, complete-subtree rows, in the same batch — `writer::grow`, the code
//! the node runs). The difference per message is the append cost; it is compared with the
//! time per message of the foundation's end-to-end benchmark (issue 3's budget: under 5 %).
//! Rounds alternate between the two ways, each on a fresh file; the cost is the median of
//! the paired differences.

use std::time::Instant;

use detente_node::writer::{grow, row};
use detente_proto::merkle::{leaf_hash, Frontier};
use detente_proto::{ChannelId, MessageId, PartySecret, Precedence, VerifiedEnvelope};
use detente_store::{Direction, OutboxRow, Placement, SqliteStore, Store, StreamRow, WriteBatch};
use serde_json::json;

use crate::bench_verify::report;
use crate::{Failure, Outcome};

const ROUNDS: usize = 7;
/// Envelopes per commit: the writer's group commits under the end-to-end benchmark's load.
const BATCH: usize = 128;
/// The foundation's end-to-end throughput (README, `detente bench`, two runs: 3,341 and
/// 3,548 msg/s): the budget is taken against the lower one.
const FOUNDATION_MSGS_PER_S: f64 = 3341.0;

fn envelopes(count: usize, secret: &PartySecret, channel: ChannelId) -> Vec<VerifiedEnvelope> {
    let mut prev = MessageId::ZERO;
    (0..count as u64)
        .map(|i| {
            let v = report(channel, secret, i + 1, prev, i);
            prev = v.id();
            v
        })
        .collect()
}

/// Commit every envelope in batches; microseconds per message.
async fn round(
    list: &[VerifiedEnvelope],
    channel: ChannelId,
    merkle: bool,
) -> Result<f64, Failure> {
    let dir = tempfile::Builder::new()
        .prefix("detente-bench-append-")
        .tempdir()
        .map_err(|e| Failure::new(format!("cannot make a temporary directory: {e}")))?;
    let store = SqliteStore::open(&dir.path().join("detente.db"))
        .await
        .map_err(|e| Failure::new(format!("cannot open the store: {e}")))?;
    let sender = list[0].envelope().sender;
    let mut tree = Frontier::default();
    let started = Instant::now();
    for chunk in list.chunks(BATCH) {
        let mut batch = WriteBatch::default();
        for v in chunk {
            if merkle {
                grow(
                    &mut batch,
                    &mut tree,
                    channel,
                    &sender,
                    leaf_hash(v.bytes()),
                );
            }
            batch.outbox.push(OutboxRow {
                peer: "bench".into(),
                seq: v.envelope().seq,
                precedence: Precedence::Routine as u8,
                is_receipt: false,
            });
            batch
                .messages
                .push(row("bench", v, Direction::Out, Placement::Appended));
        }
        let last = chunk.last().expect("chunks are not empty");
        batch.streams.push(StreamRow {
            channel: channel.0,
            sender: *sender.as_bytes(),
            next_seq: last.envelope().seq + 1,
            last_id: last.id().0,
        });
        store
            .commit(batch)
            .await
            .map_err(|e| Failure::new(format!("commit failed: {e}")))?;
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / list.len() as f64;
    drop(store);
    Ok(us)
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(messages: u64, as_json: bool) -> Outcome {
    if !(BATCH as u64..=1_000_000).contains(&messages) {
        return Err(Failure::usage(format!(
            "--messages must be between {BATCH} and 1000000"
        )));
    }
    let secret = PartySecret::from_seed([7; 32]);
    let peer = PartySecret::from_seed([8; 32]).public();
    let channel = ChannelId::for_pair(&secret.public(), &peer);
    let list = envelopes(messages as usize, &secret, channel);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.push(round(&list, channel, false).await?);
        with.push(round(&list, channel, true).await?);
    }
    let (base, grown) = (median(without.clone()), median(with.clone()));
    // Each round pairs the two ways back to back; the median of the paired differences
    // follows the machine's load less than the difference of the medians.
    let cost = median(with.iter().zip(&without).map(|(w, o)| w - o).collect());
    // Every message is appended twice end to end: to the sender's copy of its stream and to
    // the receiver's.
    let per_message_us = 1e6 / FOUNDATION_MSGS_PER_S;
    let share = 2.0 * cost / per_message_us * 100.0;
    if as_json {
        println!(
            "{}",
            json!({
                "messages": messages,
                "batch": BATCH,
                "commit_us_per_msg": (base * 100.0).round() / 100.0,
                "commit_with_merkle_us_per_msg": (grown * 100.0).round() / 100.0,
                "append_cost_us_per_msg": (cost * 100.0).round() / 100.0,
                "foundation_us_per_msg": (per_message_us * 100.0).round() / 100.0,
                "append_share_of_foundation_pct": (share * 100.0).round() / 100.0,
                "runs_without": without.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
                "runs_with": with.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "append: {messages} × 1 KiB envelopes committed in batches of {BATCH}, medians of {ROUNDS} paired rounds"
        );
        println!("  without the Merkle stream: {base:.1} µs per message");
        println!("  with it (leaf hash, frontier, subtree rows): {grown:.1} µs per message");
        println!(
            "  append cost {cost:.1} µs per message, twice per message end to end: {share:.2} % of the foundation's {per_message_us:.0} µs per message (budget 5 %)"
        );
    }
    Ok(())
}
