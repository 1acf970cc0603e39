//! Tests of what only the SQLite store has: its file (created private, WAL mode), refusing
//! a file that is not a database, and reporting a row damaged behind its back. Everything
//! both stores do is in `conformance.rs`.

mod common;
use common::newest_migration;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use detente_store::{
    Direction, Hash32, MessageRow, OutboxRow, Placement, SqliteStore, Store, StoreError, WriteBatch,
};

const CHANNEL_A: Hash32 = [0xa0; 32];
const ME: Hash32 = [0x01; 32];
const ALICE: Hash32 = [0x02; 32];

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: SqliteStore,
}

async fn open_temp() -> Db {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("detente.db");
    let store = SqliteStore::open(&path).await.expect("open");
    Db {
        _dir: dir,
        path,
        store,
    }
}

fn msg(direction: Direction, seq: u64) -> MessageRow {
    let (sender, tag) = match direction {
        Direction::Out => (ME, 0x10),
        Direction::In => (ALICE, 0x11),
    };
    let mut id = [tag; 32];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    MessageRow {
        id,
        channel: CHANNEL_A,
        sender,
        seq,
        peer: "alice".into(),
        direction,
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

fn send(batch: &mut WriteBatch, seq: u64) {
    batch.messages.push(msg(Direction::Out, seq));
    batch.outbox.push(OutboxRow {
        peer: "alice".into(),
        seq,
        precedence: 0,
        is_receipt: false,
    });
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn a_new_file_is_private() {
    let db = open_temp().await;
    assert_eq!(mode(&db.path), 0o600);
    // The WAL inherits the database's mode.
    let mut batch = WriteBatch::default();
    send(&mut batch, 0);
    db.store.commit(batch).await.unwrap();
    let wal = db.path.with_extension("db-wal");
    assert!(wal.exists(), "WAL mode is on");
    assert_eq!(mode(&wal), 0o600);
    db.store.close().await;
}

#[tokio::test]
async fn opening_something_that_is_not_a_database_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");

    let missing_dir = dir.path().join("no/such/dir/x.db");
    let err = SqliteStore::open(&missing_dir).await.unwrap_err();
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");
}

#[tokio::test]
async fn a_malformed_row_is_reported_as_corrupt() {
    use sqlx::Connection;

    let db = open_temp().await;
    let good = msg(Direction::In, 0);
    db.store
        .commit(WriteBatch {
            messages: vec![good.clone()],
            ..WriteBatch::default()
        })
        .await
        .unwrap();

    // Damage the row behind the store's back; the schema's CHECKs would refuse it, so
    // switch them off for this connection.
    let url = format!("sqlite://{}", db.path.display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET channel = x'0102', direction = 1 WHERE id = ?")
        .bind(good.id.as_slice())
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    let err = db.store.message(good.id).await.unwrap_err();
    match err {
        StoreError::Corrupt { table, what } => {
            assert_eq!(table, "messages");
            assert!(what.contains("channel"), "{what}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_schema_from_a_newer_detente_is_refused_with_the_version_needed() {
    use sqlx::Connection;

    let db = open_temp().await;
    db.store.close().await;
    let url = format!("sqlite://{}", db.path.display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();
    let err = SqliteStore::open(&db.path).await.unwrap_err();
    match &err {
        StoreError::SchemaTooNew { found, known } => {
            assert_eq!((*found, *known), (99, newest_migration("sqlite")))
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("migration 99"), "{err}");
}
