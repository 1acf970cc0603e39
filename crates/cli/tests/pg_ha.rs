//! Two node processes of one party on one PostgreSQL, one active (issue 13 item 3), as real
//! `detente serve` processes on loopback.
//!
//! Party alpha runs two processes with the same party key against one database (a database
//! of its own on the test server, see `detente_store::pg_test`); bravo (SQLite) lists both
//! alpha addresses. 1,000 messages go each way while alpha's active process is stopped five
//! times: four times with SIGKILL, once with SIGSTOP (a paused process, resumed after the
//! standby took over, must notice that it lost the lease and commit nothing). Each time the
//! standby must take over, and bravo's status show the link up at its address, within 10 s. Afterwards every stream is exact on both sides, and
//! the database's per-epoch commit record shows that no epoch committed after a later one
//! had begun: no commit by a fenced process.
//!
//! A second test cuts the active's database connection instead (a proxy on its path):
//! the standby takes over within 10 s and the cut-off process stops serving, then stands by.
//!
//! Timing only shapes the chaos and bounds the waits; the 10 s take-over bound is the
//! issue's requirement (the lease lasts 4 s).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::{check_stream, wait_outbox_empty, ProcNode, Proxy};
use detente_node::config::KEY_FILE;
use serde_json::json;

const PER_SIDE: usize = 1000;
const BATCH: usize = 50;
/// The standby must serve within this long of the active's death (issue 13 item 3).
const TAKE_OVER_MAX: Duration = Duration::from_secs(10);
const ROUNDS: usize = PER_SIDE / BATCH / 2;

fn node(base: &Path, name: &str, exe: &Path) -> ProcNode {
    std::fs::create_dir_all(base).unwrap();
    let mut n = ProcNode::init(base, name, &format!("Party {name}"), "en", "UTC")
        .ok()
        .unwrap();
    n.exe = exe.to_path_buf();
    for (key, value) in [
        ("link.heartbeat_interval", "200ms"),
        ("link.backoff_initial", "50ms"),
        ("link.backoff_max", "400ms"),
    ] {
        n.set(key, value).ok().unwrap();
    }
    n
}

async fn send_batch(client: &Client, name: &str, to: &str, batch: usize) {
    let messages: Vec<_> = (batch * BATCH..(batch + 1) * BATCH)
        .map(|k| {
            let precedence = if k % 10 == 0 { "flash" } else { "routine" };
            json!({"to": to, "precedence": precedence, "text": format!("{name}-{k}")})
        })
        .collect();
    let answer = client
        .post("/api/v1/messages/batch", &json!({"messages": messages}))
        .await
        .unwrap();
    assert_eq!(answer.as_array().map(|a| a.len()), Some(BATCH));
}

/// Wait until `text` appears in `node`'s log.
fn wait_log(node: &ProcNode, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let path = node.dir.join("node.log");
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not in {} within {timeout:?}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(node: &ProcNode, name: &str) {
    let pid = node.pid().expect("running").to_string();
    let status = Command::new("kill").arg(name).arg(&pid).status().unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_five_times_and_nothing_is_lost_or_committed_twice() {
    let Some(url) = detente_store::pg_test::fresh_database("ha").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut alpha = [
        node(&tmp.path().join("one"), "alpha", &exe),
        node(&tmp.path().join("two"), "alpha", &exe),
    ];
    let mut b = node(tmp.path(), "bravo", &exe);
    // One party, one key: the second process gets the first one's.
    std::fs::copy(alpha[0].dir.join(KEY_FILE), alpha[1].dir.join(KEY_FILE)).unwrap();
    let addrs: Vec<String> = alpha.iter().map(|a| a.peer_addr.clone()).collect();
    b.pin(&alpha[0], addrs).ok().unwrap();
    for a in &alpha {
        a.set("database_url", &url).ok().unwrap();
        a.pin(&b, vec![b.peer_addr.clone()]).ok().unwrap();
    }
    alpha[0].start().ok().unwrap();
    let mut ac = alpha[0].wait_ready(TAKE_OVER_MAX).await.ok().unwrap();
    alpha[1].start().ok().unwrap();
    wait_log(
        &alpha[1],
        "standby: another process of this party",
        TAKE_OVER_MAX,
    );
    b.start().ok().unwrap();
    let bc = b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();

    let mut active = 0;
    let mut take_overs = Vec::new();
    let mut link_backs = Vec::new();
    let mut paused_link_back = None;
    for round in 0..ROUNDS {
        for k in 0..2 {
            let batch = round * 2 + k;
            tokio::join!(
                send_batch(&ac, "alpha", "bravo", batch),
                send_batch(&bc, "bravo", "alpha", batch)
            );
        }
        if round % 2 == 0 {
            continue;
        }
        // Stop the active while the last batches are in flight.
        let standby = 1 - active;
        let paused = round == 5;
        let sessions_before = sessions(&bc).await;
        let died = Instant::now();
        if paused {
            signal(&alpha[active], "-STOP");
        } else {
            alpha[active].kill9();
        }
        ac = alpha[standby].wait_ready(TAKE_OVER_MAX).await.ok().unwrap();
        take_overs.push(died.elapsed());
        // What the peer's duty officer sees: the link up again, a new session (with the
        // other process: the stopped one serves nothing). After a SIGSTOP the peer's own
        // dial to the frozen process (whose kernel still accepts TCP) hangs until the
        // handshake timeout; the new active's dial must be taken meanwhile (it used to
        // wait out those 10 s), so this case too is held to 10 s.
        let back = link_back(&bc, sessions_before, died).await;
        if paused {
            paused_link_back = Some(back);
        }
        link_backs.push(back);
        if paused {
            // Resumed, it finds the lease gone, stops serving and stands by again.
            signal(&alpha[active], "-CONT");
            wait_log(&alpha[active], "lost the lease", TAKE_OVER_MAX);
            wait_log(&alpha[active], "stands by", TAKE_OVER_MAX);
        } else {
            alpha[active].start().ok().unwrap();
        }
        active = standby;
    }
    assert_eq!(take_overs.len(), 5);
    eprintln!(
        "take-overs: {take_overs:?}; link back up at the peer: {link_backs:?} (the SIGSTOP: \
         {paused_link_back:?})"
    );
    for t in take_overs.iter().chain(&link_backs) {
        assert!(
            *t < TAKE_OVER_MAX,
            "take-overs took {take_overs:?}, links back {link_backs:?}"
        );
    }
    wait_outbox_empty(&ac, "bravo", Duration::from_secs(120))
        .await
        .ok()
        .unwrap();
    wait_outbox_empty(&bc, "alpha", Duration::from_secs(120))
        .await
        .ok()
        .unwrap();
    for a in &mut alpha {
        a.stop();
    }
    b.stop();

    check_stream(&alpha[active], &b, "alpha", "bravo", PER_SIDE).await;
    check_stream(&b, &alpha[active], "bravo", "alpha", PER_SIDE).await;
    check_epochs(&url).await;
}

/// Sessions bravo has had with alpha so far.
async fn sessions(bc: &Client) -> u64 {
    let status = bc.get("/api/v1/status").await.ok().unwrap();
    status["peers"][0]["sessions"].as_u64().unwrap_or(0)
}

/// How long after `died` bravo's status showed its link to alpha up in a session after the
/// first `before`.
async fn link_back(bc: &Client, before: u64, died: Instant) -> Duration {
    let deadline = died + TAKE_OVER_MAX * 2;
    loop {
        let status = bc.get("/api/v1/status").await.ok().unwrap();
        let p = &status["peers"][0];
        let sessions = p["sessions"].as_u64().unwrap_or(0);
        if p["state"] == "up" && p["connected"] == true && sessions > before {
            return died.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the link did not come back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// From the database alone: every take-over raised the epoch, and the epochs' commits do
/// not interleave — no process committed after a later epoch had begun.
async fn check_epochs(url: &str) {
    let store = detente_store::PgStore::open(url).await.unwrap();
    let epochs = store.lease_epochs(1000).await.unwrap();
    store.close().await;
    assert!(epochs.len() >= 6, "{epochs:?}");
    let mut last_seen = 0;
    for e in epochs.iter().filter(|e| e.commits > 0) {
        let (first, last) = (e.first_commit.unwrap(), e.last_commit.unwrap());
        assert!(
            first > last_seen,
            "epoch {} committed at {first}, before an earlier epoch's last commit {last_seen}: \
             {epochs:?}",
            e.epoch
        );
        last_seen = last;
    }
}

/// The active's database connection cut (through a proxy the test controls), the process
/// itself alive: the standby takes over within 10 s, the cut-off process stops serving (its
/// API no longer answers), and once its path to the database returns it stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_off_from_the_database_stops_serving_and_the_standby_takes_over() {
    let Some(url) = detente_store::pg_test::fresh_database("ha_cut").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut alpha = [
        node(&tmp.path().join("one"), "alpha", &exe),
        node(&tmp.path().join("two"), "alpha", &exe),
    ];
    std::fs::copy(alpha[0].dir.join(KEY_FILE), alpha[1].dir.join(KEY_FILE)).unwrap();
    // postgres://USER:PASSWORD@HOST:PORT/DB: the first process reaches it through the proxy.
    let (head, db) = url.rsplit_once('/').unwrap();
    let (credentials, server) = head.rsplit_once('@').unwrap();
    let proxy = Proxy::start(server.to_owned()).await.ok().unwrap();
    let through_proxy = format!("{credentials}@{}/{db}", proxy.listen);
    alpha[0].set("database_url", &through_proxy).ok().unwrap();
    alpha[1].set("database_url", &url).ok().unwrap();
    alpha[0].start().ok().unwrap();
    let first = alpha[0].wait_ready(TAKE_OVER_MAX).await.ok().unwrap();
    alpha[1].start().ok().unwrap();
    wait_log(&alpha[1], "standby: another process", TAKE_OVER_MAX);

    let cut = Instant::now();
    proxy.set_cut(true);
    alpha[1].wait_ready(TAKE_OVER_MAX).await.ok().unwrap();
    let took = cut.elapsed();
    wait_log(&alpha[0], "lost the lease", TAKE_OVER_MAX);
    assert!(!first.healthy().await, "the cut-off process still serves");
    eprintln!("take-over after the cut: {took:?}");
    assert!(took < TAKE_OVER_MAX, "{took:?}");

    proxy.set_cut(false);
    wait_log(
        &alpha[0],
        "standby: another process",
        Duration::from_secs(30),
    );
    let epochs = {
        let store = detente_store::PgStore::open(&url).await.unwrap();
        let e = store.lease_epochs(100).await.unwrap();
        store.close().await;
        e
    };
    assert_eq!(epochs.len(), 2, "{epochs:?}");
    for a in &mut alpha {
        a.stop();
    }
}
