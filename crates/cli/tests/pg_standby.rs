//! The database's own availability (issue 13 item 4): a node on a PostgreSQL primary with a
//! synchronous streaming standby, both started by `scripts/pg-start --standby` for this
//! test alone. The node's `database_url` lists both servers with
//! `target_session_attrs=read-write`. Messages are sent through the API; the primary is
//! killed (`pg_ctl stop -m immediate`, a crash) and the standby promoted (`pg_ctl promote`);
//! the node's store finds the new primary by itself (no restart) and accepts messages again,
//! and every message it had acknowledged (answered 201) is on the promoted server, in a
//! gap-free stream.
//!
//! Runs only where the other PostgreSQL tests run (`DETENTE_TEST_PG_URL` set, or required
//! by `DETENTE_REQUIRE_PG`/CI); it does not use that server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::ProcNode;
use detente_node::config::{NodeDir, PeerConfig};
use detente_proto::PartySecret;
use detente_store::{PgStore, Store};
use serde_json::json;

/// Messages acknowledged before the crash, and after it.
const BEFORE: usize = 40;
const AFTER: usize = 20;
/// Bound on the whole failover, from the crash to the next acknowledged message.
const FAILOVER_MAX: Duration = Duration::from_secs(60);

/// The primary and its standby, stopped (and deleted) when dropped.
struct Pair {
    env: HashMap<String, String>,
}

impl Pair {
    fn start() -> Pair {
        let script = scripts().join("pg-start");
        let out = Command::new(script).arg("--standby").output().unwrap();
        assert!(
            out.status.success(),
            "pg-start --standby: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        Pair { env }
    }

    fn var(&self, name: &str) -> &str {
        self.env.get(name).map(String::as_str).unwrap_or_default()
    }

    /// `pg_ctl ARGS` on cluster `cluster` (data or standby), as the clusters' owner.
    fn pg_ctl(&self, cluster: &str, args: &[&str]) {
        let mut command: Vec<String> = self
            .var("DETENTE_TEST_PG_AS_OWNER")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        command.push(format!("{}/pg_ctl", self.var("DETENTE_TEST_PG_BIN")));
        command.push("-D".into());
        command.push(format!("{}/{cluster}", self.var("DETENTE_TEST_PG_DIR")));
        command.extend(args.iter().map(|a| a.to_string()));
        let status = Command::new(&command[0])
            .args(&command[1..])
            .status()
            .unwrap();
        assert!(status.success(), "{command:?}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("pg-stop"))
            .arg(self.var("DETENTE_TEST_PG_DIR"))
            .status();
    }
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// Send one FLASH; its id if the node acknowledged it.
async fn send(client: &Client, k: usize) -> Option<String> {
    let body = json!({"to": "far", "text": format!("m-{k}"), "precedence": "flash"});
    let answer = client.post("/api/v1/messages", &body).await.ok()?;
    answer["id"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_primary_dies_and_the_standby_is_promoted() {
    if std::env::var_os(detente_store::pg_test::URL_VAR).is_none() {
        // Skips with a line, or fails where PostgreSQL is required.
        assert!(detente_store::pg_test::fresh_database("standby")
            .await
            .is_none());
        return;
    }
    let pair = Pair::start();
    let primary = pair.var("DETENTE_TEST_PG_URL").to_owned();
    let standby_port = pair.var("DETENTE_TEST_PG_STANDBY_PORT").to_owned();
    // postgres://detente:PW@127.0.0.1:P1/postgres → both hosts, writes wanted.
    let (head, db) = primary.rsplit_once('/').unwrap();
    let both = format!("{head},127.0.0.1:{standby_port}/{db}?target_session_attrs=read-write");

    let tmp = tempfile::tempdir().unwrap();
    let mut node = ProcNode::init(tmp.path(), "alpha", "Party Alpha", "en", "UTC")
        .ok()
        .unwrap();
    node.exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    NodeDir::new(&node.dir)
        .add_peer(PeerConfig {
            name: "far".into(),
            key: PartySecret::from_seed([0x63; 32]).public().to_text(),
            // Nothing listens there; the messages wait in the outbox.
            addrs: vec!["127.0.0.1:9".into()],
            next_step: String::new(),
        })
        .unwrap();
    node.set("database_url", &both).ok().unwrap();
    node.set("link.backoff_initial", "10m").ok().unwrap();
    node.start().ok().unwrap();
    let client = node.wait_ready(Duration::from_secs(60)).await.ok().unwrap();

    let mut acknowledged = Vec::new();
    for k in 0..BEFORE {
        acknowledged.push(
            send(&client, k)
                .await
                .expect("acknowledged before the crash"),
        );
    }
    pair.pg_ctl("data", &["-m", "immediate", "-w", "stop"]);
    pair.pg_ctl("standby", &["-w", "promote"]);
    let crashed = Instant::now();
    let mut k = BEFORE;
    let mut after = 0;
    while after < AFTER {
        assert!(
            crashed.elapsed() < FAILOVER_MAX,
            "the node did not resume on the promoted standby within {FAILOVER_MAX:?}"
        );
        // The node may be restarting its API (a lost lease); read the run file anew.
        let Ok(client) = node.client() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match send(&client, k).await {
            Some(id) => {
                acknowledged.push(id);
                after += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        k += 1;
    }
    eprintln!("resumed {:?} after the crash", crashed.elapsed());
    node.stop();
    // The store followed the primary itself; the node was not restarted to find it.
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(
        log.contains("the database primary moved; connecting to it"),
        "{log}"
    );

    let promoted = format!("{}:{standby_port}/{db}", head.rsplit_once(':').unwrap().0);
    let store = PgStore::open(&promoted).await.unwrap();
    for id in &acknowledged {
        let raw: [u8; 32] = hex::decode(id).unwrap().try_into().unwrap();
        assert!(
            store.message(raw).await.unwrap().is_some(),
            "acknowledged message {id} is missing on the promoted standby"
        );
    }
    let me = NodeDir::new(&node.dir).secret().unwrap().public();
    let ours = store
        .streams()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.sender == *me.as_bytes())
        .unwrap();
    for seq in 1..ours.next_seq {
        let channel = ours.channel;
        assert!(
            store
                .message_at(channel, *me.as_bytes(), seq)
                .await
                .unwrap()
                .is_some(),
            "seq {seq} missing: the stream has a gap"
        );
    }
    assert!(ours.next_seq as usize > acknowledged.len());
    store.close().await;
}
