//! A batch of sends is all or nothing, and a retry with the same `Idempotency-Key` sends
//! nothing twice (issue 12 item 3), with real node processes on real SQLite files.
//!
//! Alpha is made to die (the `DETENTE_FAILPOINT` mechanism, `std::process::exit` at the
//! named point) in the middle of a 1,000-message `POST /api/v1/messages/batch`: once just
//! before the batch's commit, once just after it, both times before the API answered. After
//! each restart the store holds none or all of the batch, and a retry with the same key sends
//! it (nothing was stored) or answers the stored ids again (`Idempotent-Replayed: true`).
//! Bravo ends with every message exactly once, in order. A replayed single send gives the
//! original id; the same key with another body, or on another route, is refused; a malformed
//! key is refused. Both engines: the tasks and the sans-IO core; and once with alpha's store
//! on PostgreSQL (a database of its own on the test server, see `detente_store::pg_test`).

use std::path::PathBuf;
use std::time::Duration;

use detente::client::Client;
use detente::harness::{check_stream, stream_rows, wait_outbox_empty, ProcNode};
use detente_proto::{Body, VerifiedEnvelope};
use detente_store::Direction;
use serde_json::{json, Value};

/// Messages in each of the two crashed batches.
const BATCH: usize = 1000;
/// Texts sent in all: two batches, one single send through the API and one through
/// `detente send`.
const TOTAL: usize = 2 * BATCH + 2;
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_by_a_crash_is_stored_whole_or_not_at_all_and_retried_once() {
    crash_and_retry("tasks", None).await;
}

/// The same with both nodes run by the sans-IO core (`engine = "core"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_by_a_crash_is_stored_whole_or_not_at_all_and_retried_once_with_the_core() {
    crash_and_retry("core", None).await;
}

/// The same with alpha's store on PostgreSQL (skipped without a test server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_by_a_crash_is_retried_once_with_the_crashing_node_on_postgres() {
    let Some(url) = detente_store::pg_test::fresh_database("idempotency").await else {
        return;
    };
    crash_and_retry("tasks", Some(url)).await;
}

/// Start `node`, with `failpoint` set for it alone (never inherited by another node).
fn start(node: &mut ProcNode, failpoint: Option<&str>) {
    let vars: Vec<(&str, &str)> = failpoint
        .map(|f| ("DETENTE_FAILPOINT", f))
        .into_iter()
        .collect();
    node.start_with_env(&vars).ok().unwrap();
}

fn batch(from: usize) -> Value {
    let messages: Vec<Value> = (from..from + BATCH)
        .map(|k| json!({"to": "bravo", "precedence": "routine", "text": format!("alpha-{k}")}))
        .collect();
    json!({ "messages": messages })
}

/// Alpha's texts to bravo as its store lists them: (text, id, seq), in `seq` order.
async fn stored(client: &Client) -> Vec<(String, String, u64)> {
    let list = client
        .get("/api/v1/messages?peer=bravo&direction=out&limit=10000")
        .await
        .ok()
        .unwrap();
    let mut out: Vec<(String, String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = m["text"].as_str().unwrap_or_default().to_string();
            let id = m["id"].as_str().unwrap().to_string();
            (text, id, m["seq"].as_u64().unwrap())
        })
        .collect();
    out.sort_by_key(|(_, _, seq)| *seq);
    out
}

/// (id, seq) of each entry of a send's answer.
fn ids(answer: &Value) -> Vec<(String, u64)> {
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Post `body` to alpha, which dies at its failpoint before answering; then restart it
/// without one and return its client.
async fn post_and_die(a: &mut ProcNode, failpoint: &str, body: &Value, key: &str) -> Client {
    a.stop();
    start(a, Some(failpoint));
    let ac = a.wait_ready(WAIT).await.ok().unwrap();
    let answer = ac
        .post_idempotent("/api/v1/messages/batch", body, Some(key))
        .await;
    let e = match answer {
        Ok(a) => panic!("alpha must die before answering: {a:?}"),
        Err(e) => e,
    };
    assert_eq!(e.status, None, "no answer at all: {e}");
    a.kill9();
    start(a, None);
    a.wait_ready(WAIT).await.ok().unwrap()
}

/// The test itself; alpha keeps its data at `alpha_database` when given.
async fn crash_and_retry(engine: &str, alpha_database: Option<String>) {
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
    if let Some(url) = &alpha_database {
        a.set("database_url", url).ok().unwrap();
    }
    for node in [&a, &b] {
        node.set("engine", engine).ok().unwrap();
        node.set("link.heartbeat_interval", "200ms").ok().unwrap();
    }
    ProcNode::pin_pair(&a, &b).ok().unwrap();
    start(&mut b, None);
    let bc = b.wait_ready(WAIT).await.ok().unwrap();

    // 1. Killed before the batch's commit: nothing of it is stored; the retry sends it.
    let first = batch(0);
    let ac = post_and_die(&mut a, "send-batch-before-commit", &first, "batch-1").await;
    assert_eq!(stored(&ac).await.len(), 0, "none of the batch was stored");
    let started = std::time::Instant::now();
    let (answer, replayed) = ac
        .post_idempotent("/api/v1/messages/batch", &first, Some("batch-1"))
        .await
        .ok()
        .unwrap();
    eprintln!(
        "{engine}: the retried batch of {BATCH} stored and answered in {:?}",
        started.elapsed()
    );
    assert!(!replayed, "nothing was committed, so the retry sends");
    let sent = ids(&answer);
    assert_eq!(sent.len(), BATCH);
    let after_first = stored(&ac).await;
    let listed: Vec<(String, u64)> = after_first
        .iter()
        .map(|(_, i, s)| (i.clone(), *s))
        .collect();
    assert_eq!(listed, sent, "the answer names what is stored, in order");
    drop(ac);

    // 2. Killed after the batch's commit, before the answer: all of it is stored; the retry
    //    gets the stored answer and sends nothing.
    let second = batch(BATCH);
    let ac = post_and_die(&mut a, "send-batch-after-commit", &second, "batch-2").await;
    let all = stored(&ac).await;
    assert_eq!(all.len(), 2 * BATCH, "all of the batch was stored");
    let started = std::time::Instant::now();
    let (answer, replayed) = ac
        .post_idempotent("/api/v1/messages/batch", &second, Some("batch-2"))
        .await
        .ok()
        .unwrap();
    eprintln!(
        "{engine}: the replay of {BATCH} answered in {:?}",
        started.elapsed()
    );
    assert!(replayed, "the retry is answered from the store");
    let committed: Vec<(String, u64)> = all[BATCH..]
        .iter()
        .map(|(_, i, s)| (i.clone(), *s))
        .collect();
    assert_eq!(
        ids(&answer),
        committed,
        "the replay names the committed messages"
    );
    assert_eq!(stored(&ac).await.len(), 2 * BATCH, "nothing was sent twice");

    // 3. A replayed single send gives the original id; another body or route under a used
    //    key is refused; so is a malformed key.
    let one = json!({"to": "bravo", "text": format!("alpha-{}", 2 * BATCH)});
    let (first_answer, replayed) = ac
        .post_idempotent("/api/v1/messages", &one, Some("one"))
        .await
        .ok()
        .unwrap();
    assert!(!replayed);
    let (again, replayed) = ac
        .post_idempotent("/api/v1/messages", &one, Some("one"))
        .await
        .ok()
        .unwrap();
    assert!(replayed);
    assert_eq!(again, first_answer, "the same status and body");
    let other = json!({"to": "bravo", "text": "another text"});
    let refused =
        |r: Result<(Value, bool), detente::client::ClientError>| r.err().and_then(|e| e.status);
    let r = ac
        .post_idempotent("/api/v1/messages", &other, Some("one"))
        .await;
    assert_eq!(refused(r), Some(422), "the same key with another body");
    let r = ac
        .post_idempotent("/api/v1/messages", &one, Some("batch-1"))
        .await;
    assert_eq!(refused(r), Some(422), "the same key on another route");
    let long = "k".repeat(65);
    let r = ac
        .post_idempotent("/api/v1/messages", &other, Some(&long))
        .await;
    assert_eq!(refused(r), Some(400), "a key longer than 64 bytes");
    let r = ac
        .post_idempotent("/api/v1/messages", &other, Some("a b"))
        .await;
    assert_eq!(refused(r), Some(400), "a key with a space");

    // `detente send --idempotency-key`: run twice, one message, the same id.
    let send = || {
        let out = std::process::Command::new(&a.exe)
            .args(["send", "--dir"])
            .arg(&a.dir)
            .args([
                "--to",
                "bravo",
                "--idempotency-key",
                "cli-1",
                "--json",
                "--text",
            ])
            .arg(format!("alpha-{}", 2 * BATCH + 1))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let (first_cli, again_cli) = (send(), send());
    assert_eq!(first_cli["id"], again_cli["id"]);
    assert_eq!(
        (&first_cli["replayed"], &again_cli["replayed"]),
        (&Value::Null, &json!(true))
    );
    assert_eq!(
        stored(&ac).await.len(),
        TOTAL,
        "nothing refused or repeated was stored"
    );

    // Bravo ends with each message exactly once, in the order sent.
    wait_outbox_empty(&ac, "bravo", Duration::from_secs(120))
        .await
        .ok()
        .unwrap();
    drop(bc);
    a.stop();
    b.stop();
    check_stream(&a, &b, "alpha", "bravo", TOTAL).await;
    let key = detente_node::config::NodeDir::new(&a.dir)
        .secret()
        .unwrap()
        .public();
    let texts: Vec<String> = stream_rows(&b, "alpha", Direction::In)
        .await
        .into_values()
        .filter_map(|(bytes, _)| {
            let v = VerifiedEnvelope::decode(&bytes, Some(&key)).ok()?;
            match &v.envelope().body {
                Body::Text(t) => Some(t.text.clone()),
                _ => None,
            }
        })
        .collect();
    let expected: Vec<String> = (0..TOTAL).map(|k| format!("alpha-{k}")).collect();
    assert_eq!(texts, expected, "each once, in order");
}
