//! `detente bench --compare`: what this machine can do, measured in the same run as the
//! end-to-end figures, so that figures from different machines and days can be compared as
//! ratios rather than as raw numbers.
//!
//! Four baselines, each the median of [`ROUNDS`] rounds bounded in count and time:
//! - the raw `fdatasync` rate of 1 KiB appends to one file on the disk that holds the node
//!   directories (what one durable commit costs at the least);
//! - SQLite's commit rate in the node's own mode (WAL, `synchronous = FULL`) at 1 row and at
//!   128 rows of 1 KiB per commit (what group commit buys);
//! - one core signing 1 KiB envelopes (the benchmarks' report, [`crate::bench_verify::report`];
//!   encoding included, as the node does it);
//! - one core batch-verifying them (decoding included, as the receive path does it).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use detente_proto::{ChannelId, MessageId, PartySecret, VerifiedEnvelope};
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use crate::Failure;

/// Rounds of each measurement; the median is reported.
const ROUNDS: usize = 3;
/// One round stops after this long, or after its operation count, whichever comes first.
const ROUND_TIME: Duration = Duration::from_millis(700);
const FSYNC_OPS_MAX: usize = 20_000;
const SQLITE_COMMITS_MAX: usize = 5_000;
const CRYPTO_MESSAGES: usize = 2_048;
const RECORD_BYTES: usize = 1024;
/// Rows per commit in the group-commit measurement.
pub const GROUP_ROWS: usize = 128;

/// The machine's figures, in operations (messages or rows) per second.
#[derive(Debug, Clone, Copy)]
pub struct Baselines {
    pub fdatasync_per_s: f64,
    pub sqlite_rows_per_s_1: f64,
    pub sqlite_rows_per_s_128: f64,
    pub sign_per_s: f64,
    pub batch_verify_per_s: f64,
}

/// Measure every baseline; `dir` is where the node directories live (its disk is measured).
pub async fn measure(dir: &Path) -> Result<Baselines, Failure> {
    let fdatasync_per_s = median(ROUNDS, || fdatasync_rate(dir))?;
    let mut sqlite_1 = Vec::new();
    let mut sqlite_128 = Vec::new();
    for round in 0..ROUNDS {
        sqlite_1.push(sqlite_rate(dir, round, 1).await?);
        sqlite_128.push(sqlite_rate(dir, round, GROUP_ROWS).await?);
    }
    let (sign_per_s, batch_verify_per_s) = crypto_rates();
    Ok(Baselines {
        fdatasync_per_s,
        sqlite_rows_per_s_1: middle(sqlite_1),
        sqlite_rows_per_s_128: middle(sqlite_128),
        sign_per_s,
        batch_verify_per_s,
    })
}

impl Baselines {
    /// The baselines, and the end-to-end throughput as a fraction of each.
    pub fn to_json(&self, end_to_end_msgs_per_s: f64) -> Value {
        let ratio = |base: f64| {
            if base > 0.0 {
                (end_to_end_msgs_per_s / base * 1000.0).round() / 1000.0
            } else {
                f64::NAN
            }
        };
        json!({
            "fdatasync_per_s": self.fdatasync_per_s.round(),
            "sqlite_rows_per_s_1_per_commit": self.sqlite_rows_per_s_1.round(),
            "sqlite_rows_per_s_128_per_commit": self.sqlite_rows_per_s_128.round(),
            "sign_per_s_one_core": self.sign_per_s.round(),
            "batch_verify_per_s_one_core": self.batch_verify_per_s.round(),
            "ratio": {
                "to_fdatasync": ratio(self.fdatasync_per_s),
                "to_sqlite_1_per_commit": ratio(self.sqlite_rows_per_s_1),
                "to_sqlite_128_per_commit": ratio(self.sqlite_rows_per_s_128),
                "to_sign": ratio(self.sign_per_s),
                "to_batch_verify": ratio(self.batch_verify_per_s),
            },
        })
    }
}

fn median(rounds: usize, mut f: impl FnMut() -> Result<f64, Failure>) -> Result<f64, Failure> {
    let mut values = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        values.push(f()?);
    }
    Ok(middle(values))
}

fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// 1 KiB appends to a fresh file in `dir`, each followed by `fdatasync`.
fn fdatasync_rate(dir: &Path) -> Result<f64, Failure> {
    let io = |e: std::io::Error| Failure::new(format!("fdatasync baseline in {dir:?}: {e}"));
    let file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut f = file.as_file();
    let record = [0x5au8; RECORD_BYTES];
    let start = Instant::now();
    let mut ops = 0;
    while ops < FSYNC_OPS_MAX && start.elapsed() < ROUND_TIME {
        f.write_all(&record).map_err(io)?;
        f.sync_data().map_err(io)?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Rows of 1 KiB per second committed to a fresh SQLite file in the node's mode, `rows` per
/// transaction.
async fn sqlite_rate(dir: &Path, round: usize, rows: usize) -> Result<f64, Failure> {
    let sql = |e: sqlx::Error| Failure::new(format!("SQLite baseline: {e}"));
    let temp = tempfile::Builder::new()
        .prefix("detente-bench-sqlite-")
        .tempdir_in(dir)
        .map_err(|e| Failure::new(format!("cannot make a directory in {dir:?}: {e}")))?;
    let path = temp.path().join(format!("baseline-{round}-{rows}.db"));
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await
        .map_err(sql)?;
    sqlx::query("CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .execute(&mut conn)
        .await
        .map_err(sql)?;
    let body = vec![0xa5u8; RECORD_BYTES];
    let start = Instant::now();
    let mut commits = 0;
    while commits < SQLITE_COMMITS_MAX && start.elapsed() < ROUND_TIME {
        let mut tx = conn.begin().await.map_err(sql)?;
        for _ in 0..rows {
            sqlx::query("INSERT INTO rows (body) VALUES (?)")
                .bind(&body[..])
                .execute(&mut *tx)
                .await
                .map_err(sql)?;
        }
        tx.commit().await.map_err(sql)?;
        commits += 1;
    }
    let rate = (commits * rows) as f64 / start.elapsed().as_secs_f64();
    conn.close().await.map_err(sql)?;
    Ok(rate)
}

/// Envelopes signed and batch-verified per second on this thread (one core).
fn crypto_rates() -> (f64, f64) {
    let secret = PartySecret::from_seed([3; 32]);
    let peer = PartySecret::from_seed([4; 32]).public();
    let channel = ChannelId::for_pair(&secret.public(), &peer);
    let mut sign = Vec::with_capacity(ROUNDS);
    let mut verify = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut prev = MessageId([0; 32]);
        let mut signed = Vec::with_capacity(CRYPTO_MESSAGES);
        for n in 0..CRYPTO_MESSAGES as u64 {
            let v = crate::bench_verify::report(channel, &secret, n + 1, prev, n);
            prev = v.id();
            signed.push(v.bytes().to_vec());
        }
        sign.push(CRYPTO_MESSAGES as f64 / start.elapsed().as_secs_f64());
        let frames: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
        let start = Instant::now();
        let results = VerifiedEnvelope::decode_batch(&frames, &secret.public());
        let rate = CRYPTO_MESSAGES as f64 / start.elapsed().as_secs_f64();
        assert!(
            results.iter().all(Result::is_ok),
            "our own signatures verify"
        );
        verify.push(rate);
    }
    (middle(sign), middle(verify))
}

/// The human-readable lines printed under the end-to-end table.
pub fn print(b: &Baselines, end_to_end_msgs_per_s: f64) {
    let line = |what: &str, base: f64| {
        println!(
            "  {what:<44}{:>10} /s   end to end = {:.3} ×",
            base.round(),
            end_to_end_msgs_per_s / base
        );
    };
    println!("this machine, same run (medians of {ROUNDS} rounds):");
    line("raw fdatasync of 1 KiB appends", b.fdatasync_per_s);
    line("SQLite rows, 1 per commit", b.sqlite_rows_per_s_1);
    line(
        &format!("SQLite rows, {GROUP_ROWS} per commit"),
        b.sqlite_rows_per_s_128,
    );
    line("sign 1 KiB envelopes, one core", b.sign_per_s);
    line(
        "batch-verify 1 KiB envelopes, one core",
        b.batch_verify_per_s,
    );
}
