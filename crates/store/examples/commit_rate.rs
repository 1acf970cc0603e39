//! Measures how many messages per second [`Store::commit`] makes durable, on SQLite or, given
//! an administrative PostgreSQL URL, on a fresh PostgreSQL database (dropped afterwards).
//!
//! Each batch looks like the node's group commits under load: outgoing 1 KiB messages
//! with their outbox rows and the stream state they advance. Ids are pseudo-random, like
//! SHA-256 values, so the id index takes inserts all over the tree as it does in real use.
//!
//! Run with `cargo run --release -p detente-store --example commit_rate [messages]
//! [postgres://…]`; the SQLite database goes to a temporary directory (set TMPDIR to measure
//! another disk). Batches of 1 show the fixed cost of a commit (for PostgreSQL, a round trip
//! per statement: BEGIN, the three inserts, COMMIT), batches of 100 and 500 the node's group
//! commits under load. The round trip of a bare `SELECT 1` is printed for comparison.

use std::time::Instant;

use detente_store::{
    AnyStore, Direction, Hash32, MessageRow, OutboxRow, Placement, Store, StreamRow, WriteBatch,
};

/// Bytes of each envelope.
const MESSAGE_BYTES: usize = 1024;

/// Messages committed per batch size when no count is given.
const MESSAGES_DEFAULT: u64 = 100_000;

/// Fills a hash-sized value from a counter (splitmix64), so ids spread like real hashes.
fn pseudo_hash(mut x: u64) -> Hash32 {
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

fn batch(channel: Hash32, sender: Hash32, first_seq: u64, size: u64) -> WriteBatch {
    let mut b = WriteBatch::default();
    for seq in first_seq..first_seq + size {
        b.messages.push(MessageRow {
            id: pseudo_hash(seq),
            channel,
            sender,
            seq,
            peer: "beijing".into(),
            direction: Direction::Out,
            precedence: 3,
            topic: "load".into(),
            kind: 0,
            created_at_ms: 1_700_000_000_000 + i64::try_from(seq).unwrap_or(0),
            stored_at_ms: 1_700_000_000_000,
            in_reply_to: None,
            placement: Placement::Appended,
            bytes: vec![0xa5; MESSAGE_BYTES],
        });
        b.outbox.push(OutboxRow {
            peer: "beijing".into(),
            seq,
            precedence: 3,
            is_receipt: false,
        });
    }
    b.streams.push(StreamRow {
        channel,
        sender,
        next_seq: first_seq + size,
        last_id: pseudo_hash(first_seq + size - 1),
    });
    b
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => MESSAGES_DEFAULT,
    };
    let admin = std::env::args().nth(2);
    if let Some(admin) = &admin {
        round_trip(admin).await?;
    }
    for (i, size) in [1u64, 100, 500].into_iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let name = format!("commit_rate_{}_{size}", std::process::id());
        let url = match &admin {
            Some(admin) => detente_store::postgres::create_database(admin, &name).await?,
            None => format!("sqlite:{}", dir.path().join("rate.db").display()),
        };
        let store = AnyStore::open(&url, dir.path()).await?;
        // A distinct stream per run, so runs do not share warm pages.
        let channel = pseudo_hash(1_000_000 + i as u64);
        let sender = pseudo_hash(2_000_000 + i as u64);
        // Single-message commits are slow: a tenth of the messages is enough to time them.
        let count = if size == 1 { total / 10 } else { total };
        let batches = count.div_ceil(size).max(1);
        let started = Instant::now();
        for n in 0..batches {
            store
                .commit(batch(channel, sender, 1 + n * size, size))
                .await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rows = batches * size;
        println!(
            "{} batch {size:>3}: {rows} messages of {MESSAGE_BYTES} B in {seconds:.2} s = {:.0} messages/s ({:.2} ms per commit)",
            store.kind(),
            rows as f64 / seconds,
            seconds * 1000.0 / batches as f64
        );
        store.close().await;
        if let Some(admin) = &admin {
            detente_store::postgres::drop_database(admin, &name).await?;
        }
    }
    Ok(())
}

/// Print the median round trip of `SELECT 1` to the server (what each statement of a
/// commit costs before the server does any work).
async fn round_trip(admin: &str) -> Result<(), Box<dyn std::error::Error>> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    let mut times = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "postgres round trip (SELECT 1) median {:.0} µs",
        times[times.len() / 2]
    );
    conn.close().await?;
    Ok(())
}
