// Each test binary compiles this module anew and uses only part of it.
#![allow(dead_code)]
//! What several of the node's integration tests start from: a node directory "target"
//! with fixed keys, and optionally one pinned peer "fake" whose only address is dead
//! (nothing dials us, and our redials wait minutes); and the two cores, "washington" and
//! "beijing", that the driver and snapshot tests run.

use std::path::Path;

use std::time::Duration;

use detente_core::Config;
use detente_node::config::{InitOptions, NodeDir, PeerConfig};
use detente_node::snapshot::PeerKey;
use detente_node::Node;
use detente_proto::{Deadlines, LinkConfig, PartySecret};

/// The seed of the pinned peer "fake".
pub const FAKE_SEED: [u8; 32] = [0x22; 32];

/// Initialise `dir` as the node "target"; with `fake_peer`, pin "fake" at a dead address.
pub fn init_target(dir: &Path, fake_peer: bool) -> NodeDir {
    let dir = NodeDir::new(dir.to_path_buf());
    let options = InitOptions {
        name: "target".into(),
        party: "Target".into(),
        lang: "en".into(),
        tz: "UTC".into(),
        peer_listen: "127.0.0.1:0".into(),
        console_listen: "127.0.0.1:0".into(),
    };
    dir.init(&options, [0x11; 32], [0x55; 32])
        .expect("init the node directory");
    if fake_peer {
        dir.add_peer(PeerConfig {
            name: "fake".into(),
            key: PartySecret::from_seed(FAKE_SEED).public().to_text(),
            addrs: vec!["127.0.0.1:9".into()],
            next_step: String::new(),
        })
        .expect("pin the peer");
        let mut config = dir.load().expect("load node.toml");
        config.set("link.backoff_initial", "10m").unwrap();
        config.set("link.backoff_max", "1h").unwrap();
        config.set("transcript.checkpoint_quiet", "off").unwrap();
        dir.save(&config).expect("save node.toml");
    }
    dir
}

/// [`init_target`] and start it.
pub async fn start_target(dir: &Path, fake_peer: bool) -> Node {
    Node::start(init_target(dir, fake_peer))
        .await
        .expect("start the node")
}

/// The two sides of the core-level tests, and their secret seeds.
pub const NAMES: [&str; 2] = ["washington", "beijing"];
pub const SEEDS: [[u8; 32]; 2] = [[1; 32], [2; 32]];

/// Side `i`'s core configuration: the other side as its one peer; link tests and automatic
/// checkpoints an hour apart, so that only what a test does happens.
pub fn core_config(i: usize) -> Config {
    let other = 1 - i;
    Config {
        name: NAMES[i].into(),
        author: "Duty Officer".into(),
        secret_seed: SEEDS[i],
        peers: vec![detente_core::PeerConfig {
            name: NAMES[other].into(),
            key: PartySecret::from_seed(SEEDS[other]).public(),
            addresses: 1,
        }],
        deadlines: Deadlines::default(),
        link_test_interval: Duration::from_secs(3600),
        floors: detente_proto::Floors::default(),
        link: LinkConfig::default(),
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_every: 0,
        random_seed: [i as u8; 32],
        deadlines_watched_max: detente_core::DEADLINES_WATCHED_DEFAULT,
        profile: detente_core::Profile::default(),
        bug: None,
    }
}

/// Side `i`'s peers as the snapshot loader takes them.
pub fn peer_keys(i: usize) -> Vec<PeerKey> {
    vec![PeerKey {
        name: NAMES[1 - i].into(),
        key: PartySecret::from_seed(SEEDS[1 - i]).public(),
    }]
}

/// Copy an SQLite file's WAL into the file itself and empty it (nothing else has it open):
/// a test that alters the file finds the last rows there, not only in the WAL (SQLite copies
/// the WAL at the last close, which a connection dropped late by a task can delay).
pub async fn wal_into_file(db: &std::path::Path) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the store file");
    let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut conn)
        .await
        .expect("checkpoint");
    assert_eq!(busy, 0, "the store file is still in use");
    conn.close().await.expect("close");
}
