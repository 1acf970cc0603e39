//! A node on PostgreSQL whose database goes away while it runs, and comes back.
//!
//! The node runs in-process against a database of its own on the test server (see
//! `detente_store::pg_test`). The test sends a message through the HTTP API, then takes the
//! database away the way a crash or failover does — the server ends every session and
//! refuses new ones — and checks that the API answers 503 with `Retry-After` and that nothing
//! of the refused message was stored. When the database accepts connections again the node
//! resumes by itself: the next send is stored with the next `seq`, with no restart.

use detente_node::config::{InitOptions, NodeDir, PeerConfig};
use detente_node::Node;
use detente_proto::PartySecret;
use detente_store::Store;
use serde_json::json;
use sqlx::Connection;

/// Attempts after the database returns: each connection the server dropped may fail one
/// call before the pool replaces it (one writer, four readers).
const RESUME_ATTEMPTS_MAX: usize = 10;

async fn start_node(tmp: &tempfile::TempDir, url: &str) -> Node {
    let dir = NodeDir::new(tmp.path().join("node"));
    let options = InitOptions {
        name: "pg".into(),
        party: "On PostgreSQL".into(),
        lang: "en".into(),
        tz: "UTC".into(),
        peer_listen: "127.0.0.1:0".into(),
        console_listen: "127.0.0.1:0".into(),
    };
    dir.init(&options, [0x61; 32], [0x62; 32]).expect("init");
    dir.add_peer(PeerConfig {
        name: "far".into(),
        key: PartySecret::from_seed([0x63; 32]).public().to_text(),
        // Nothing listens there; the messages wait in the outbox.
        addrs: vec!["127.0.0.1:9".into()],
        next_step: String::new(),
    })
    .expect("pin");
    let mut config = dir.load().expect("load");
    config.set("database_url", url).expect("database_url");
    config.set("link.backoff_initial", "10m").unwrap();
    config.set("link.backoff_max", "1h").unwrap();
    config.set("transcript.checkpoint_quiet", "off").unwrap();
    dir.save(&config).expect("save");
    Node::start(dir).await.expect("start on PostgreSQL")
}

async fn send(node: &Node, text: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/messages",
            node.shared.console_addr
        ))
        .bearer_auth(&node.shared.token)
        .json(&json!({"to": "far", "text": text, "precedence": "flash"}))
        .send()
        .await
        .expect("the API answers")
}

/// Allow or refuse new sessions on database `name`, ending the current ones when refusing.
async fn set_available(name: &str, available: bool) {
    let admin_url = std::env::var(detente_store::pg_test::URL_VAR).expect("test server");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin");
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {available}"
    ))
    .execute(&mut admin)
    .await
    .expect("alter database");
    if !available {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .execute(&mut admin)
            .await
            .expect("terminate sessions");
    }
    admin.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_while_the_database_is_away_and_the_node_resumes() {
    let Some(url) = detente_store::pg_test::fresh_database("outage").await else {
        return;
    };
    let name = url.rsplit('/').next().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(&tmp, &url).await;
    assert_eq!(send(&node, "before").await.status(), 201);

    set_available(&name, false).await;
    let refused = send(&node, "during").await;
    assert_eq!(refused.status(), 503);
    assert!(
        refused.headers().contains_key("retry-after"),
        "{:?}",
        refused.headers()
    );
    let listing = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/messages",
            node.shared.console_addr
        ))
        .bearer_auth(&node.shared.token)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 503);

    set_available(&name, true).await;
    let mut statuses = Vec::new();
    for _ in 0..RESUME_ATTEMPTS_MAX {
        let status = send(&node, "after").await.status();
        statuses.push(status);
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{statuses:?}");
    }
    assert_eq!(
        statuses.last().copied(),
        Some(reqwest::StatusCode::CREATED),
        "{statuses:?}"
    );

    // Exactly the two accepted messages, numbered 1 and 2: the refused one left nothing.
    let store = &node.shared.store;
    let mut count = None;
    for _ in 0..RESUME_ATTEMPTS_MAX {
        if let Ok(n) = store.message_count().await {
            count = Some(n);
            break;
        }
    }
    assert_eq!(count, Some(2));
    let me = node.shared.secret.public();
    let streams = store.streams().await.unwrap();
    let ours = streams
        .iter()
        .find(|s| s.sender == *me.as_bytes())
        .expect("our stream");
    assert_eq!(ours.next_seq, 3);
    node.stop().await;
}
