//! `detente bench --transcript N`: whether a long channel costs more per message than a short
//! one (issue 14's scale target: a channel of 10,000,000 messages appends, proves and exports
//! at the per-message cost of one of 10,000).
//!
//! Two real SQLite stores are filled with one signed stream each, in the writer's batches
//! (message row, Merkle subtree rows from `writer::grow`, stream row): one of
//! [`SMALL`] envelopes and one of N. On each the bench then times, in the same way:
//! - **append**: [`APPEND`] more envelopes (signed beforehand) in [`ROUNDS`] rounds, median µs
//!   per envelope;
//! - **prove**: [`PROOFS`] inclusion proofs of leaves spread over the stream, read from the
//!   store as the node serves them (`transcript::inclusion_proof`, O(log n) rows), each
//!   checked against the stream's root; median µs;
//! - **export**: the whole channel through the node's streamed export (every envelope read and
//!   verified), median µs per envelope of three exports (one above 1,000,000 messages), and
//!   the most it added to the process's peak resident size.
//!
//! Proofs and exports are timed first, so that both channels have exactly their size.
//!
//! The result is each figure at N beside the one at [`SMALL`], and their ratio.

use std::sync::Arc;
use std::time::Instant;

use detente_node::writer::{grow, row};
use detente_proto::merkle::{leaf_hash, verify_inclusion, Frontier};
use detente_proto::{ChannelId, MessageId, PartyKey, PartySecret, VerifiedEnvelope};
use detente_store::{AnyStore, Direction, Placement, SqliteStore, Store, StreamRow, WriteBatch};
use serde_json::{json, Value};

use crate::bench_append::median;
use crate::bench_verify::report;
use crate::progress::Progress;
use crate::{Failure, Outcome};

/// The short channel every long one is compared with.
pub const SMALL: u64 = 10_000;
/// Longest channel the bench builds.
pub const LARGEST: u64 = 10_000_000;
/// Envelopes appended and timed on each channel, in [`ROUNDS`] rounds (the median counts).
const APPEND: u64 = 10_000;
const ROUNDS: u64 = 5;
/// Inclusion proofs timed on each channel.
const PROOFS: u64 = 1_000;
/// Envelopes per commit while building and appending (the writer's batches under load).
const BATCH: usize = 128;

/// One signed stream in a store, and how far it has grown.
struct Channel {
    store: AnyStore,
    secret: PartySecret,
    peer: PartyKey,
    channel: ChannelId,
    tree: Frontier,
    prev: MessageId,
    /// Keeps the store's directory until the end.
    _dir: tempfile::TempDir,
}

impl Channel {
    async fn new() -> Result<Channel, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("detente-bench-transcript-")
            .tempdir()
            .map_err(|e| Failure::new(format!("cannot make a temporary directory: {e}")))?;
        let store = SqliteStore::open(&dir.path().join("detente.db"))
            .await
            .map_err(|e| Failure::new(format!("cannot open the store: {e}")))?;
        let secret = PartySecret::from_seed([7; 32]);
        let peer = PartySecret::from_seed([8; 32]).public();
        let channel = ChannelId::for_pair(&secret.public(), &peer);
        Ok(Channel {
            store: AnyStore::Sqlite(store),
            secret,
            peer,
            channel,
            tree: Frontier::default(),
            prev: MessageId::ZERO,
            _dir: dir,
        })
    }

    fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The next `count` envelopes, signed (not stored).
    fn sign(&mut self, count: usize) -> Vec<VerifiedEnvelope> {
        let first = self.size() + 1;
        let mut prev = self.prev;
        (0..count as u64)
            .map(|i| {
                let v = report(self.channel, &self.secret, first + i, prev, first + i);
                prev = v.id();
                v
            })
            .collect()
    }

    /// Commit `list` (the envelopes after the stream's end) in the writer's batches.
    async fn commit(&mut self, list: &[VerifiedEnvelope]) -> Result<(), Failure> {
        let sender = self.secret.public();
        for chunk in list.chunks(BATCH) {
            let mut batch = WriteBatch::default();
            for v in chunk {
                grow(
                    &mut batch,
                    &mut self.tree,
                    self.channel,
                    &sender,
                    leaf_hash(v.bytes()),
                );
                batch
                    .messages
                    .push(row("bench", v, Direction::Out, Placement::Appended));
            }
            let last = chunk.last().expect("chunks are not empty");
            self.prev = last.id();
            batch.streams.push(StreamRow {
                channel: self.channel.0,
                sender: *sender.as_bytes(),
                next_seq: last.envelope().seq + 1,
                last_id: last.id().0,
            });
            self.store
                .commit(batch)
                .await
                .map_err(|e| Failure::new(format!("commit failed: {e}")))?;
        }
        Ok(())
    }

    /// Grow the stream to `size` envelopes, signing and committing a batch at a time.
    async fn fill(&mut self, size: u64, progress: &Progress) -> Result<(), Failure> {
        while self.size() < size {
            let n = (size - self.size()).min(BATCH as u64 * 64) as usize;
            let list = self.sign(n);
            self.commit(&list).await?;
            progress.inc(n as u64);
        }
        Ok(())
    }
}

/// What one channel measured.
struct Figures {
    size: u64,
    append_us: f64,
    prove_us: f64,
    export_us: f64,
    export_peak_growth_mib: f64,
}

async fn measure(c: &mut Channel) -> Result<Figures, Failure> {
    let size = c.size();
    let prove_us = prove(c).await?;
    // A whole export per round: three of a channel up to 1,000,000, one of a longer one.
    let exports = if size <= 1_000_000 { ROUNDS.min(3) } else { 1 };
    let mut runs = Vec::new();
    let mut growth: f64 = 0.0;
    for _ in 0..exports {
        let (us, mib) = export(c).await?;
        runs.push(us);
        growth = growth.max(mib);
    }
    let (export_us, export_peak_growth_mib) = (median(runs), growth);
    let mut appends = Vec::new();
    for _ in 0..ROUNDS {
        let more = c.sign((APPEND / ROUNDS) as usize);
        let started = Instant::now();
        c.commit(&more).await?;
        appends.push(started.elapsed().as_secs_f64() * 1e6 * ROUNDS as f64 / APPEND as f64);
    }
    let append_us = median(appends);
    Ok(Figures {
        size,
        append_us,
        prove_us,
        export_us,
        export_peak_growth_mib,
    })
}

/// Median µs of an inclusion proof from the store, each checked against the root.
async fn prove(c: &Channel) -> Result<f64, Failure> {
    let size = c.size();
    let root = c.tree.root();
    let sender = *c.secret.public().as_bytes();
    let mut times = Vec::with_capacity(PROOFS as usize);
    // Leaves spread evenly over the stream, first and last included.
    for k in 0..PROOFS {
        let index = k * (size - 1) / (PROOFS - 1);
        let started = Instant::now();
        let path =
            detente_node::transcript::inclusion_proof(&c.store, c.channel.0, sender, index, size)
                .await
                .map_err(|e| Failure::new(format!("proof of leaf {index}: {e}")))?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
        let envelope = c
            .store
            .stream_envelopes(c.channel.0, sender, index, 1)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let leaf = leaf_hash(&envelope[0].1);
        if !verify_inclusion(index, size, &leaf, &path, &root) {
            return Err(Failure::new(format!(
                "the proof of leaf {index} does not verify"
            )));
        }
    }
    Ok(median(times))
}

/// µs per envelope of a whole streamed export, and the growth of the peak resident size.
async fn export(c: &Channel) -> Result<(f64, f64), Failure> {
    let store = Arc::new(c.store.clone());
    let before = reset_peak();
    let started = Instant::now();
    let plan =
        detente_node::transcript::plan_export(&store, &c.secret.public(), &c.peer, Vec::new())
            .await
            .map_err(Failure::new)?;
    let messages = plan.messages();
    let mut chunks = detente_node::transcript::stream_export(store, plan);
    let mut bytes = 0usize;
    while let Some(chunk) = chunks.recv().await {
        bytes += chunk
            .map_err(|e| Failure::new(format!("export: {e}")))?
            .len();
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / messages as f64;
    if bytes == 0 {
        return Err(Failure::new("the export was empty"));
    }
    let growth = peak_kib()
        .zip(before)
        .map_or(0.0, |(p, b)| p.saturating_sub(b) as f64 / 1024.0);
    Ok((us, growth))
}

/// Reset the peak resident size to the current one (Linux) and return the current one.
fn reset_peak() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    crate::harness::status_kib("self", "VmRSS:")
}

fn peak_kib() -> Option<u64> {
    crate::harness::status_kib("self", "VmHWM:")
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn figures_json(f: &Figures) -> Value {
    json!({
        "messages": f.size,
        "append_us_per_msg": round2(f.append_us),
        "prove_us": round2(f.prove_us),
        "export_us_per_msg": round2(f.export_us),
        "export_peak_growth_mib": round2(f.export_peak_growth_mib),
    })
}

pub async fn run(size: u64, as_json: bool) -> Outcome {
    if !(SMALL..=LARGEST).contains(&size) {
        return Err(Failure::usage(format!(
            "--transcript takes a channel length between {SMALL} and {LARGEST}"
        )));
    }
    let progress = Progress::bar(SMALL + size, "signing and storing the two channels");
    let mut small = Channel::new().await?;
    small.fill(SMALL, &progress).await?;
    let mut large = Channel::new().await?;
    large.fill(size, &progress).await?;
    progress.set_message("measuring");
    let s = measure(&mut small).await?;
    let l = measure(&mut large).await?;
    drop(progress);
    let ratio = |a: f64, b: f64| round2(if b > 0.0 { a / b } else { 0.0 });
    let ratios = json!({
        "append": ratio(l.append_us, s.append_us),
        "prove": ratio(l.prove_us, s.prove_us),
        "export": ratio(l.export_us, s.export_us),
    });
    if as_json {
        println!(
            "{}",
            json!({ "small": figures_json(&s), "large": figures_json(&l), "ratio_large_to_small": ratios })
        );
        return Ok(());
    }
    println!(
        "transcript: one signed stream of 1 KiB envelopes in a real SQLite file, {SMALL} vs {size}"
    );
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "",
        format!("{SMALL}"),
        format!("{size}"),
        "ratio"
    );
    let line = |what: &str, a: f64, b: f64| {
        println!("{what:<34} {a:>14.2} {b:>14.2} {:>8.2}", ratio(b, a));
    };
    line(
        &format!("append {APPEND} more, µs per message"),
        s.append_us,
        l.append_us,
    );
    line(
        &format!("inclusion proof, median of {PROOFS}, µs"),
        s.prove_us,
        l.prove_us,
    );
    line(
        "export (streamed, verified), µs/msg",
        s.export_us,
        l.export_us,
    );
    line(
        "export, peak resident growth, MiB",
        s.export_peak_growth_mib,
        l.export_peak_growth_mib,
    );
    Ok(())
}
