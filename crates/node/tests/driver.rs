//! Two driver tasks, each owning a core over a real SQLite file, linked by in-memory byte
//! pipes through `driver::run_session` (the same framing code a TLS session uses): every
//! answer comes only once its message is in the store, everything sent arrives, and a
//! driver killed mid-stream and restarted from its store (`snapshot::load`) continues the
//! stream without a gap.

mod common;
use common::{core_config, peer_keys, NAMES, SEEDS};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use detente_core::{Answer, Command, Core, Event, Outgoing};
use detente_node::driver::{self, Dialer, DriverHandle};
use detente_node::snapshot::{self};
use detente_proto::{Body, PartySecret, Precedence, TextBody};
use detente_store::{Direction, SqliteStore, Store};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);
/// Bytes buffered in each direction of an in-memory session.
const PIPE_BYTES: usize = 256 * 1024;

/// The drivers by side, so that a dial from one reaches the other.
type Handles = Arc<Mutex<[Option<DriverHandle>; 2]>>;

/// Dials the other side through an in-memory pipe.
struct Pipe {
    side: usize,
    handles: Handles,
}

impl Dialer for Pipe {
    fn dial(&self, peer: &str, _address: usize, driver: DriverHandle) {
        let other = self.handles.lock().expect("lock")[1 - self.side].clone();
        let peer = peer.to_string();
        let me = NAMES[self.side].to_string();
        tokio::spawn(async move {
            let Some(other) = other else {
                let _ = driver.input(driver::DriverInput::DialFailed { peer }).await;
                return;
            };
            let (a, b) = tokio::io::duplex(PIPE_BYTES);
            let (ar, aw) = tokio::io::split(a);
            let (br, bw) = tokio::io::split(b);
            tokio::spawn(driver::run_session(other, me, false, br, bw));
            driver::run_session(driver, peer, true, ar, aw).await;
        });
    }
}

struct Side {
    store: Arc<SqliteStore>,
    events: broadcast::Sender<Event>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(side: usize, path: &std::path::Path, handles: &Handles) -> Side {
    let store = Arc::new(SqliteStore::open(path).await.expect("store"));
    let me = PartySecret::from_seed(SEEDS[side]).public();
    let snap = snapshot::load(store.as_ref(), &me, &peer_keys(side))
        .await
        .expect("loads")
        .snapshot;
    let wall = detente_node::now_ms() as i64;
    let core = Core::recover(core_config(side), snap, Instant::now(), wall).expect("recovers");
    let dialer = Pipe {
        side,
        handles: handles.clone(),
    };
    let (handle, events, task) = driver::start(core, store.clone(), dialer);
    handles.lock().expect("lock")[side] = Some(handle);
    Side {
        store,
        events,
        task,
    }
}

fn text(n: u64) -> Command {
    Command::Send(Outgoing {
        peer: "beijing".into(),
        precedence: if n.is_multiple_of(10) {
            Precedence::Flash
        } else {
            Precedence::Routine
        },
        topic: "border".into(),
        author: "Watch Officer".into(),
        body: Body::Text(TextBody {
            language: "en".into(),
            text: format!("message {n}"),
            translations: Vec::new(),
        }),
        in_reply_to: None,
    })
}

/// Send `texts` from Washington at once; each answer must find its message durable.
async fn send_all(handles: &Handles, store: &Arc<SqliteStore>, texts: std::ops::Range<u64>) {
    let handle = handles.lock().expect("lock")[0].clone().expect("running");
    let mut set = tokio::task::JoinSet::new();
    for n in texts {
        let (handle, store) = (handle.clone(), store.clone());
        set.spawn(async move {
            let answer = handle.command(text(n)).await.expect("sent");
            let Answer::Sent { id, .. } = answer else {
                panic!("a send answers Sent: {answer:?}");
            };
            let row = store.message(id.0).await.expect("read");
            assert!(row.is_some(), "answered before it was durable");
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("no send panicked");
    }
}

/// Wait until Beijing's store holds `texts` texts from Washington.
async fn wait_received(store: &SqliteStore, events: &broadcast::Sender<Event>, texts: usize) {
    let mut rx = events.subscribe();
    let received = || async {
        let q = detente_store::InboxQuery {
            peer: Some("washington".into()),
            direction: Some(Direction::In),
            include_system: false,
            limit: 10_000,
        };
        store.inbox(q).await.expect("inbox").len()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while received().await < texts {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {texts} arrived",
            received().await
        );
        // Any event may be the last envelope stored; a lagged receiver just looks again.
        let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_deliver_everything_and_one_restarts_from_its_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let paths = NAMES.map(|n| dir.path().join(format!("{n}.sqlite")));
    let handles: Handles = Arc::new(Mutex::new([None, None]));
    let beijing = start(1, &paths[1], &handles).await;
    let washington = start(0, &paths[0], &handles).await;
    send_all(&handles, &washington.store, 0..300).await;
    wait_received(&beijing.store, &beijing.events, 300).await;

    // Kill Washington's driver without a word (its sessions die with it), then start it
    // again from its store alone.
    washington.task.abort();
    let _ = washington.task.await;
    handles.lock().expect("lock")[0] = None;
    // A killed process's database connections die with it, and with them any write lock a
    // commit cut short still held; here the store outlives the task, so close it as the
    // kernel would (otherwise the restarted driver's commits can wait on that lock forever).
    tokio::time::timeout(WAIT, washington.store.close())
        .await
        .expect("the killed side's store closes");
    let washington = start(0, &paths[0], &handles).await;
    send_all(&handles, &washington.store, 300..350).await;
    wait_received(&beijing.store, &beijing.events, 350).await;

    // Beijing's copy of Washington's stream is gap-free and hash-linked (its own core
    // checks that when it loads).
    let me = PartySecret::from_seed(SEEDS[1]).public();
    let snap = snapshot::load(beijing.store.as_ref(), &me, &peer_keys(1))
        .await
        .expect("loads")
        .snapshot;
    Core::recover(core_config(1), snap, Instant::now(), 0).expect("Beijing's record is whole");
    beijing.task.abort();
}
