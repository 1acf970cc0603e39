//! Deadlines beyond the watch's memory (issue 12, item 8): a real node (its own SQLite
//! file) whose deadline watch may hold 32 pending messages, with a peer that never answers.
//! Before, the watch stopped tracking at its limit: every later message, FLASH included,
//! got no deadline and no alarm. Now the nearest due are in memory and the rest are read
//! back from the store in due order, so every deadline is decided, each once, and the
//! watch never holds more than its limit.
//!
//! Nothing sleeps to wait: the test reads the node's events with a bounded timeout, and
//! polls the `status` figures with one.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use detente_node::config::{InitOptions, NodeDir, PeerConfig};
use detente_node::events::Event;
use detente_node::writer::SendRequest;
use detente_node::Node;
use detente_proto::{Body, MessageId, PartySecret, Precedence, TextBody};
use detente_store::Store;

/// Pending messages the watch may hold in memory in this test.
const WATCHED: u64 = 32;
/// ROUTINE messages sent to the silent peer before the FLASH.
const ROUTINE: u64 = 200;
/// How long the whole backlog may take to be decided before the test fails.
const WAIT: Duration = Duration::from_secs(60);

fn text(n: u64, precedence: Precedence) -> SendRequest {
    SendRequest {
        peer: "fake".into(),
        precedence,
        topic: "backlog".into(),
        author: "Tester".into(),
        in_reply_to: None,
        body: Body::Text(TextBody {
            language: "en".into(),
            text: format!("report {n}"),
            translations: vec![],
        }),
    }
}

/// A node pinning a peer that is never there, with short deadlines (ROUTINE `routine`)
/// and a small watch.
async fn start(tmp: &tempfile::TempDir, routine: &str) -> Node {
    let dir = init(tmp, routine);
    Node::start(dir).await.expect("start the node")
}

fn init(tmp: &tempfile::TempDir, routine: &str) -> NodeDir {
    let dir = NodeDir::new(tmp.path().join("node"));
    let options = InitOptions {
        name: "target".into(),
        party: "Target".into(),
        lang: "en".into(),
        tz: "UTC".into(),
        peer_listen: "127.0.0.1:0".into(),
        console_listen: "127.0.0.1:0".into(),
    };
    dir.init(&options, [0x11; 32], [0x55; 32]).expect("init");
    dir.add_peer(PeerConfig {
        name: "fake".into(),
        key: PartySecret::from_seed([0x22; 32]).public().to_text(),
        // Nothing listens there: nothing is ever delivered or answered.
        addrs: vec!["127.0.0.1:9".into()],
        next_step: String::new(),
    })
    .expect("pin the fake peer");
    let mut config = dir.load().expect("load node.toml");
    config.set("link.backoff_initial", "10m").unwrap();
    config.set("link.backoff_max", "1h").unwrap();
    config.set("transcript.checkpoint_quiet", "off").unwrap();
    config.set("deadlines.flash_delivered", "1s").unwrap();
    config.set("deadlines.flash_acknowledged", "2s").unwrap();
    config
        .set("deadlines.routine_acknowledged", routine)
        .unwrap();
    config.deadlines.watched_max = Some(WATCHED);
    dir.save(&config).expect("save node.toml");
    dir
}

/// Poll the `status` figure `overdue_out` of the fake peer until it is `want`.
async fn overdue_out_becomes(shared: &detente_node::Shared, want: u64) {
    let entry = shared.table.get("fake").expect("the peer");
    let until = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let overdue = entry.alarms.read().expect("alarms").overdue_out;
        if overdue == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "status counts {overdue} overdue, not {want}"
        );
        tick.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deadline_of_a_backlog_beyond_memory_is_decided_once() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let node = start(&tmp, "2s").await;
    let shared = node.shared.clone();
    let mut events = shared.events.subscribe();

    let mut routine = Vec::new();
    for n in 0..ROUTINE {
        let sent = shared.engine.send(text(n, Precedence::Routine)).await;
        routine.push(sent.expect("send a ROUTINE").id);
    }
    let flash = shared
        .engine
        .send(text(ROUTINE, Precedence::Flash))
        .await
        .expect("send the FLASH")
        .id;

    // Every deadline owed: one answer per ROUTINE, DELIVERED and the answer of the FLASH.
    let mut owed: HashSet<(MessageId, &str)> =
        routine.iter().map(|id| (*id, "acknowledged")).collect();
    owed.insert((flash, "delivered"));
    owed.insert((flash, "acknowledged"));
    let mut seen: HashMap<(MessageId, &str), u32> = HashMap::new();
    let until = tokio::time::Instant::now() + WAIT;
    while !owed.is_empty() {
        let event = tokio::time::timeout_at(until, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{} deadlines never decided", owed.len()))
            .expect("the node's events");
        if let Event::Overdue { id, needed, .. } = event {
            owed.remove(&(id, needed));
            *seen.entry((id, needed)).or_default() += 1;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "each missed once: {seen:?}");
    assert_eq!(seen.len() as u64, ROUTINE + 2);

    // Durably recorded, once per deadline.
    for id in &routine {
        let misses = shared.store.misses(id.0).await.expect("misses");
        assert_eq!(misses.len(), 1, "one miss for each ROUTINE");
    }
    let levels: Vec<u8> = shared
        .store
        .misses(flash.0)
        .await
        .expect("misses")
        .iter()
        .map(|m| m.level)
        .collect();
    assert_eq!(
        levels,
        vec![0, 2],
        "the FLASH missed DELIVERED and its answer"
    );

    // The watch never held more than its limit, and did hold messages.
    let (_, peak) = shared.events.metrics().deadlines_watched();
    assert!(peak <= WATCHED, "held {peak} messages, limit {WATCHED}");
    assert!(peak > 0);

    // `status` counts every overdue message, not only those the watch holds.
    overdue_out_becomes(&shared, ROUTINE + 1).await;
    node.stop().await;
}

/// A backlog beyond memory left pending at a restart is read back from the store and
/// decided, each deadline once, and `status` counts it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_memory_is_decided_after_a_restart() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let node = start(&tmp, "4s").await;
    let mut ids = Vec::new();
    for n in 0..ROUTINE {
        let sent = node.shared.engine.send(text(n, Precedence::Routine)).await;
        ids.push(sent.expect("send a ROUTINE").id);
    }
    node.stop().await;

    let node = Node::start(NodeDir::new(tmp.path().join("node")))
        .await
        .expect("restart the node");
    let shared = node.shared.clone();
    let mut events = shared.events.subscribe();
    // Every one missed once, whichever run decided it (a slow machine may have decided
    // some before the stop).
    let until = tokio::time::Instant::now() + WAIT;
    let mut left: HashSet<MessageId> = HashSet::new();
    for id in &ids {
        if shared.store.misses(id.0).await.expect("misses").is_empty() {
            left.insert(*id);
        }
    }
    while !left.is_empty() {
        let event = tokio::time::timeout_at(until, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{} deadlines never decided after restart", left.len()))
            .expect("the node's events");
        if let Event::Overdue { id, .. } = event {
            left.remove(&id);
        }
    }
    for id in &ids {
        assert_eq!(shared.store.misses(id.0).await.expect("misses").len(), 1);
    }
    let (_, peak) = shared.events.metrics().deadlines_watched();
    assert!(peak <= WATCHED, "held {peak} messages, limit {WATCHED}");
    overdue_out_becomes(&shared, ROUTINE).await;
    node.stop().await;
}
