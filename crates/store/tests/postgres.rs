//! Tests of what only the PostgreSQL store has: a server that cannot be reached, a
//! connection the server drops while the store is open, a schema migrated by a newer
//! detente, and a row damaged behind the store's back. Everything both stores do is in
//! `conformance.rs`. Each test makes its own database (see `detente_store::pg_test`).

mod common;
use common::newest_migration;

use detente_store::{
    Direction, Hash32, MessageRow, OutboxRow, PgStore, Placement, Store, StoreError, WriteBatch,
};
use sqlx::Connection;

const CHANNEL_A: Hash32 = [0xa0; 32];
const ME: Hash32 = [0x01; 32];

fn msg(seq: u64) -> MessageRow {
    let mut id = [0x10; 32];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    MessageRow {
        id,
        channel: CHANNEL_A,
        sender: ME,
        seq,
        peer: "alice".into(),
        direction: Direction::Out,
        precedence: 0,
        topic: "t".into(),
        kind: 0,
        created_at_ms: 1,
        stored_at_ms: 2,
        in_reply_to: None,
        placement: Placement::Appended,
        bytes: b"envelope".to_vec(),
    }
}

fn send(seq: u64) -> WriteBatch {
    WriteBatch {
        messages: vec![msg(seq)],
        outbox: vec![OutboxRow {
            peer: "alice".into(),
            seq,
            precedence: 0,
            is_receipt: false,
        }],
        ..WriteBatch::default()
    }
}

/// An administrative connection to the test server, and the database name in `url`.
async fn admin(url: &str) -> (sqlx::PgConnection, String) {
    let admin = std::env::var(detente_store::pg_test::URL_VAR).expect("test server");
    let conn = sqlx::PgConnection::connect(&admin).await.expect("admin");
    let name = url.rsplit('/').next().expect("database name").to_owned();
    (conn, name)
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_its_password_hidden() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let url = "postgres://detente:hunter2@127.0.0.1:1/detente";
    let err = PgStore::open(url).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.contains("detente:***@"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_dropped_connection_fails_one_call_and_the_store_reconnects() {
    let Some(url) = detente_store::pg_test::fresh_database("dropped").await else {
        return;
    };
    let store = PgStore::open(&url).await.expect("open");
    store.commit(send(1)).await.expect("commit");
    assert_eq!(store.message_count().await.unwrap(), 1);

    // The server ends every session of this database, as a restart or a failover would.
    let (mut admin, name) = admin(&url).await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty());

    // The first commit on the dead connection fails as "unavailable", having applied
    // nothing; the store then reconnects by itself.
    let mut failures = 0;
    let mut committed = false;
    for _ in 0..3 {
        match store.commit(send(2)).await {
            Ok(()) => {
                committed = true;
                break;
            }
            Err(StoreError::Unavailable(_)) => failures += 1,
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(committed, "the store did not reconnect");
    assert!(failures <= 1, "{failures} failures");
    // Reads reconnect too (at most one failure per dropped read connection).
    let mut count = None;
    for _ in 0..5 {
        match store.message_count().await {
            Ok(n) => {
                count = Some(n);
                break;
            }
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(count, Some(2));
    store.close().await;
}

#[tokio::test]
async fn a_schema_from_a_newer_detente_is_refused_with_the_version_needed() {
    let Some(url) = detente_store::pg_test::fresh_database("newer").await else {
        return;
    };
    let store = PgStore::open(&url).await.expect("open");
    store.close().await;
    // What a later release's migration 1000 would leave behind.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (1000, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let err = PgStore::open(&url).await.unwrap_err();
    match &err {
        StoreError::SchemaTooNew { found, known } => {
            assert_eq!((*found, *known), (1000, newest_migration("postgres")))
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("migration 1000"), "{err}");
}

#[tokio::test]
async fn a_malformed_row_is_reported_as_corrupt() {
    let Some(url) = detente_store::pg_test::fresh_database("corrupt").await else {
        return;
    };
    let store = PgStore::open(&url).await.expect("open");
    let good = msg(0);
    store.commit(send(0)).await.unwrap();
    // Damage the row behind the store's back; the schema's CHECK would refuse it.
    let mut raw = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE messages DROP CONSTRAINT messages_channel_check")
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET channel = '\\x0102' WHERE id = $1")
        .bind(good.id.as_slice())
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
    match store.message(good.id).await.unwrap_err() {
        StoreError::Corrupt { table, what } => {
            assert_eq!(table, "messages");
            assert!(what.contains("channel"), "{what}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_receipt_note_with_a_nul_is_stored_exactly() {
    // A peer's signed receipt may carry any string; PostgreSQL TEXT refuses NUL, so notes
    // are kept as UTF-8 bytes. Refusing the commit would stall the link on that receipt.
    let Some(url) = detente_store::pg_test::fresh_database("nul").await else {
        return;
    };
    let store = PgStore::open(&url).await.expect("open");
    let of = msg(0).id;
    store
        .commit(WriteBatch {
            receipts: vec![detente_store::ReceiptRow {
                of,
                level: detente_store::ReceiptLevel::Acknowledged,
                at_ms: 5,
                receipt_id: [9; 32],
                note: Some("ok\0then".into()),
            }],
            ..WriteBatch::default()
        })
        .await
        .expect("commit");
    assert_eq!(
        store.receipt_times(of).await.unwrap().note.as_deref(),
        Some("ok\0then")
    );
}

/// Issue 13: test databases were never dropped, so a long-lived test server filled up. The
/// sweep drops those whose process is gone, and keeps those of live processes.
#[tokio::test]
async fn the_databases_of_ended_test_processes_are_dropped() {
    // Made first, so that this process's own sweep has run.
    let Some(url) = detente_store::pg_test::fresh_database("sweep").await else {
        return;
    };
    let Ok(admin_url) = std::env::var(detente_store::pg_test::URL_VAR) else {
        unreachable!("a fresh database came from the server");
    };
    let (gone, living) = ("t_sweep_999999_0_1", "t_sweep_999998_0_1");
    for name in [gone, living] {
        detente_store::postgres::create_database(&admin_url, name)
            .await
            .expect("create");
    }
    let dropped = detente_store::pg_test::drop_stale(&admin_url, |pid| pid != 999_999)
        .await
        .expect("sweep");
    assert!(dropped >= 1);
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin");
    let exists = |name: &'static str| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
    };
    assert!(!exists(gone).fetch_one(&mut admin).await.unwrap());
    assert!(exists(living).fetch_one(&mut admin).await.unwrap());
    detente_store::postgres::drop_database(&admin_url, living)
        .await
        .expect("drop");
    let path = url.split('?').next().unwrap_or_default();
    let ours = path.rsplit('/').next().unwrap_or_default().to_string();
    let still: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(ours)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(still, "this process's own database is kept");
}
