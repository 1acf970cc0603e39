//! End to end with real processes: two `detente serve` nodes over TLS on loopback, 1,000
//! messages each way with mixed precedence, while every connection between them is cut and
//! restored repeatedly (through a proxy the test controls) and one node is killed with
//! SIGKILL and restarted several times. Afterwards each side holds exactly the messages
//! sent, each once, in `seq` order, hash-linked, every signature valid.
//!
//! Timing only shapes the chaos; no assertion depends on how fast anything ran.
//!
//! The test runs twice: both nodes on SQLite, and with bravo — the node that is killed — on
//! PostgreSQL (a database of its own on the test server, see `detente_store::pg_test`), so
//! that the two stores are seen to interoperate and PostgreSQL to lose nothing it
//! acknowledged across SIGKILL.

use std::path::PathBuf;
use std::time::Duration;

use detente::client::Client;
use detente::harness::{check_stream, free_port, wait_outbox_empty, ProcNode, Proxy};
use serde_json::json;

const PER_SIDE: usize = 1000;
const BATCH: usize = 50;

fn precedence(i: usize) -> &'static str {
    match i % 20 {
        0 => "flash",
        1 | 2 => "immediate",
        3..=7 => "priority",
        _ => "routine",
    }
}

/// Send batch number `batch` of `name`'s messages to `to`.
async fn send_batch(client: &Client, name: &str, to: &str, batch: usize) {
    let messages: Vec<_> = (batch * BATCH..(batch + 1) * BATCH)
        .map(|k| json!({"to": to, "precedence": precedence(k), "topic": "general", "text": format!("{name}-{k}")}))
        .collect();
    let answer = client
        .post("/api/v1/messages/batch", &json!({"messages": messages}))
        .await
        .unwrap();
    assert_eq!(answer.as_array().map(|a| a.len()), Some(BATCH));
}

/// Sessions alpha has had with bravo so far.
async fn sessions(client: &Client) -> u64 {
    let status = client.get("/api/v1/status").await.ok().unwrap();
    status["peers"][0]["sessions"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_each_way_through_cuts_and_crashes() {
    deliver_through_cuts_and_crashes(None, "tasks").await;
}

/// The same with both nodes run by the sans-IO core (`engine = "core"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_each_way_through_cuts_and_crashes_with_the_core() {
    deliver_through_cuts_and_crashes(None, "core").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_each_way_with_the_crashing_node_on_postgres() {
    let Some(url) = detente_store::pg_test::fresh_database("delivery").await else {
        return;
    };
    deliver_through_cuts_and_crashes(Some(url), "tasks").await;
}

/// The test itself; bravo keeps its data at `bravo_database` when given; `engine` runs
/// both nodes' channels.
async fn deliver_through_cuts_and_crashes(bravo_database: Option<String>, engine: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut a = ProcNode::init(tmp.path(), "alpha", "Party Alpha", "en", "UTC")
        .ok()
        .unwrap();
    let mut b = ProcNode::init(tmp.path(), "bravo", "Party Bravo", "zh-CN", "Asia/Shanghai")
        .ok()
        .unwrap();
    a.exe = exe.clone();
    b.exe = exe;
    if let Some(url) = &bravo_database {
        b.set("database_url", url).ok().unwrap();
    }
    for node in [&a, &b] {
        node.set("engine", engine).ok().unwrap();
        node.set("link.heartbeat_interval", "200ms").ok().unwrap();
        node.set("link.backoff_initial", "50ms").ok().unwrap();
        node.set("link.backoff_max", "400ms").ok().unwrap();
    }
    let to_b = Proxy::start(b.peer_addr.clone()).await.ok().unwrap();
    let to_a = Proxy::start(a.peer_addr.clone()).await.ok().unwrap();
    // alpha's primary address for bravo is dead: every session goes through failover.
    let dead = format!("127.0.0.1:{}", free_port().ok().unwrap());
    a.pin(&b, vec![dead, to_b.listen.clone()]).ok().unwrap();
    b.pin(&a, vec![to_a.listen.clone()]).ok().unwrap();
    a.start().ok().unwrap();
    b.start().ok().unwrap();
    let ac = a.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();

    // Each round writes two batches each way, then breaks things while they are in flight:
    // every connection is cut and restored, and on odd rounds bravo is killed with SIGKILL
    // and restarted.
    let rounds = PER_SIDE / BATCH / 2;
    let mut bc = b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    for round in 0..rounds {
        for k in 0..2 {
            let batch = round * 2 + k;
            tokio::join!(
                send_batch(&ac, "alpha", "bravo", batch),
                send_batch(&bc, "bravo", "alpha", batch)
            );
        }
        let before = sessions(&ac).await;
        to_a.set_cut(true);
        to_b.set_cut(true);
        tokio::time::sleep(Duration::from_millis(30)).await;
        to_a.set_cut(false);
        to_b.set_cut(false);
        // The cut really broke the session: wait for the next one before going on, so that
        // a restart right after cannot merge two outages into one.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sessions(&ac).await <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no new session after a cut"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if round % 2 == 1 {
            b.kill9();
            b.start().ok().unwrap();
            bc = b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
        }
    }
    let bc = b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    wait_outbox_empty(&ac, "bravo", Duration::from_secs(300))
        .await
        .ok()
        .unwrap();
    wait_outbox_empty(&bc, "alpha", Duration::from_secs(300))
        .await
        .ok()
        .unwrap();
    let status = ac.get("/api/v1/status").await.unwrap();
    let sessions = status["peers"][0]["sessions"].as_u64().unwrap_or(0);
    assert!(
        sessions as usize > rounds,
        "the links were really broken and re-established ({sessions} sessions)"
    );
    a.stop();
    b.stop();

    check_stream(&a, &b, "alpha", "bravo", PER_SIDE).await;
    check_stream(&b, &a, "bravo", "alpha", PER_SIDE).await;
}
