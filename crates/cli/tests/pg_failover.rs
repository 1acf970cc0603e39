//! The database's own availability (issue 13, item 4): a PostgreSQL primary with a
//! synchronous streaming standby (`scripts/pg-replica`, started by this test), a node on a
//! multi-host URL (`host1,host2/…?target_session_attrs=read-write`) exchanging messages with
//! a peer on SQLite. The primary is killed (SIGKILL) mid-traffic and the standby promoted
//! with `pg_ctl promote`: the node answers 503 while it has no primary, moves to the
//! promoted server by itself, and afterwards every message it acknowledged is there, once,
//! in order, with valid signatures, and the peer holds the same stream.
//!
//! Timing only shapes the traffic; no assertion depends on how fast anything ran.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::{wait_link_up, wait_outbox_empty, ProcNode};
use detente_node::config::NodeDir;
use detente_proto::{Body, MessageId, VerifiedEnvelope};
use detente_store::{Direction, InboxQuery, Placement, Store};
use serde_json::json;

/// Batches each way before the primary dies and after the standby took over.
const ROUNDS: usize = 6;
const BATCH: usize = 25;
/// Longest wait for the node to accept work again after the promotion.
const RESUME_MAX: Duration = Duration::from_secs(90);

/// The pair of servers; stopped and deleted when dropped.
struct Pair {
    dir: String,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-replica")
}

impl Pair {
    /// Start the pair, or `None` (a skip line) when PostgreSQL is absent and not required.
    fn start() -> Option<Pair> {
        let out = Command::new(script())
            .arg("start")
            .output()
            .expect("run pg-replica");
        if out.status.code() == Some(2) {
            let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
                || std::env::var_os("DETENTE_REQUIRE_PG").is_some();
            assert!(
                !required,
                "no PostgreSQL server binaries: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED pg_failover: no PostgreSQL server binaries (scripts/pg-start installs them)");
            return None;
        }
        assert!(
            out.status.success(),
            "pg-replica start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .to_string()
        };
        Some(Pair {
            dir: value("DETENTE_TEST_PG_PAIR_DIR"),
            url: value("DETENTE_TEST_PG_PAIR_URL"),
        })
    }

    fn run(&self, what: &str) {
        let out = Command::new(script())
            .args([what, &self.dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-replica {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop", &self.dir]).output();
    }
}

/// Send one batch of `BATCH` texts `{name}-{n}` from the counter on; the texts the node
/// acknowledged (201), or none when it answered an error.
async fn send_batch(
    client: &Client,
    name: &str,
    to: &str,
    counter: &mut usize,
) -> Result<Vec<String>, u16> {
    let texts: Vec<String> = (0..BATCH)
        .map(|k| format!("{name}-{}", *counter + k))
        .collect();
    *counter += BATCH;
    let messages: Vec<_> = texts
        .iter()
        .map(|t| json!({"to": to, "precedence": "priority", "text": t}))
        .collect();
    match client
        .post("/api/v1/messages/batch", &json!({ "messages": messages }))
        .await
    {
        Ok(answer) => {
            assert_eq!(answer.as_array().map(Vec::len), Some(BATCH));
            Ok(texts)
        }
        Err(e) => Err(e.status.unwrap_or(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_dies_and_the_promoted_standby_has_everything_acknowledged() {
    let Some(pair) = Pair::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut a = ProcNode::init(tmp.path(), "alpha", "Party Alpha", "en", "UTC")
        .ok()
        .unwrap();
    let mut b = ProcNode::init(tmp.path(), "bravo", "Party Bravo", "en", "UTC")
        .ok()
        .unwrap();
    a.exe = exe.clone();
    b.exe = exe;
    a.set("database_url", &pair.url).ok().unwrap();
    for node in [&a, &b] {
        node.set("link.heartbeat_interval", "200ms").ok().unwrap();
        node.set("link.backoff_initial", "50ms").ok().unwrap();
        node.set("link.backoff_max", "400ms").ok().unwrap();
    }
    ProcNode::pin_pair(&a, &b).ok().unwrap();
    a.start().ok().unwrap();
    b.start().ok().unwrap();
    let ac = a.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    let bc = b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    wait_link_up(&ac, "bravo", Duration::from_secs(60))
        .await
        .ok()
        .unwrap();

    let (mut na, mut nb) = (0, 0);
    let mut acked_a = Vec::new();
    let mut acked_b = Vec::new();
    for _ in 0..ROUNDS {
        acked_a.extend(
            send_batch(&ac, "alpha", "bravo", &mut na)
                .await
                .expect("alpha sends"),
        );
        acked_b.extend(
            send_batch(&bc, "bravo", "alpha", &mut nb)
                .await
                .expect("bravo sends"),
        );
    }

    // The primary dies. With no primary, alpha cannot make anything durable: it says so.
    pair.run("kill-primary");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send_batch(&ac, "alpha", "bravo", &mut na).await {
            Err(503) => break,
            Err(other) => panic!("alpha answered {other} without its primary, not 503"),
            // Committed on the dying server before it went (and so flushed on the standby).
            Ok(texts) => acked_a.extend(texts),
        }
        assert!(
            Instant::now() < deadline,
            "alpha never noticed its primary was gone"
        );
    }
    // Bravo goes on writing to alpha meanwhile; alpha stores nothing of it yet.
    acked_b.extend(
        send_batch(&bc, "bravo", "alpha", &mut nb)
            .await
            .expect("bravo sends"),
    );
    pair.run("promote");

    // Alpha moves to the promoted server by itself and takes work again.
    let deadline = Instant::now() + RESUME_MAX;
    loop {
        match send_batch(&ac, "alpha", "bravo", &mut na).await {
            Ok(texts) => {
                acked_a.extend(texts);
                break;
            }
            Err(503) => {}
            Err(other) => panic!("alpha answered {other} while resuming"),
        }
        assert!(
            Instant::now() < deadline,
            "alpha did not resume within {RESUME_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..ROUNDS {
        acked_a.extend(
            send_batch(&ac, "alpha", "bravo", &mut na)
                .await
                .expect("alpha sends"),
        );
        acked_b.extend(
            send_batch(&bc, "bravo", "alpha", &mut nb)
                .await
                .expect("bravo sends"),
        );
    }
    wait_outbox_empty(&ac, "bravo", Duration::from_secs(300))
        .await
        .ok()
        .unwrap();
    wait_outbox_empty(&bc, "alpha", Duration::from_secs(300))
        .await
        .ok()
        .unwrap();
    a.stop();
    b.stop();

    // Alpha's store is now the promoted server (the same URL finds it).
    check_stream(&a, &b, "alpha", "bravo", &acked_a).await;
    check_stream(&b, &a, "bravo", "alpha", &acked_b).await;
}

/// `from`'s stream to `to` on both sides: the same bytes, gap-free, linked, verified, each
/// text at most once, and every acknowledged text present.
async fn check_stream(
    from: &ProcNode,
    to: &ProcNode,
    from_name: &str,
    to_name: &str,
    acked: &[String],
) {
    let key = NodeDir::new(&from.dir).secret().unwrap().public();
    let sent = rows(from, to_name, Direction::Out).await;
    let received = rows(to, from_name, Direction::In).await;
    assert_eq!(
        sent.len(),
        received.len(),
        "{from_name}: both sides hold the whole stream"
    );
    let mut prev = MessageId::ZERO;
    let mut texts = BTreeSet::new();
    for (i, ((seq, bytes, placement), (rseq, rbytes, _))) in sent.iter().zip(&received).enumerate()
    {
        assert_eq!((*seq, *rseq), (i as u64 + 1, i as u64 + 1), "gap-free");
        assert_eq!(*placement, Placement::Appended);
        assert_eq!(bytes, rbytes, "seq {seq}: the same bytes on both sides");
        let v = VerifiedEnvelope::decode(bytes, Some(&key)).expect("every signature verifies");
        assert_eq!(
            v.envelope().prev,
            prev,
            "seq {seq} links to its predecessor"
        );
        prev = v.id();
        if let Body::Text(t) = &v.envelope().body {
            assert!(texts.insert(t.text.clone()), "{} stored twice", t.text);
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|t| !texts.contains(*t)).collect();
    assert!(
        missing.is_empty(),
        "{from_name}: acknowledged and lost: {missing:?}"
    );
    println!(
        "{from_name}: {} acknowledged, {} in the stream",
        acked.len(),
        sent.len()
    );
}

async fn rows(node: &ProcNode, peer: &str, direction: Direction) -> Vec<(u64, Vec<u8>, Placement)> {
    let dir = NodeDir::new(&node.dir);
    let store = detente_node::open_store(&dir, &dir.load().unwrap())
        .await
        .unwrap();
    let rows = store
        .inbox(InboxQuery {
            peer: Some(peer.into()),
            direction: Some(direction),
            include_system: true,
            limit: 100_000,
        })
        .await
        .unwrap();
    store.close().await;
    let mut out: Vec<_> = rows
        .into_iter()
        .map(|r| (r.seq, r.bytes, r.placement))
        .collect();
    out.sort_by_key(|r| r.0);
    out
}
