//! The WAL is checkpointed off the commit path: the store's own checkpointer copies every
//! committed page into the database file without waiting for the writer, and what it copied
//! is still there after reopening.

use detente_store::{Direction, MessageRow, Placement, SqliteStore, Store, WriteBatch};

fn message(seq: u64) -> MessageRow {
    let mut id = [0x42; 32];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    MessageRow {
        id,
        channel: [0xa0; 32],
        sender: [0x01; 32],
        seq,
        peer: "alice".into(),
        direction: Direction::Out,
        precedence: 3,
        topic: "general".into(),
        kind: 0,
        created_at_ms: 1_000 + seq as i64,
        stored_at_ms: 1_005 + seq as i64,
        in_reply_to: None,
        placement: Placement::Appended,
        bytes: vec![0x5a; 1024],
    }
}

#[tokio::test]
async fn the_checkpointer_copies_every_committed_page_without_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("detente.db");
    let store = SqliteStore::open(&path).await.expect("open");
    for batch in 0..20u64 {
        let messages = (1..=64).map(|i| message(batch * 64 + i)).collect();
        let batch = WriteBatch {
            messages,
            ..WriteBatch::default()
        };
        store.commit(batch).await.expect("commit");
    }
    let done = store.checkpoint_wal().await.expect("checkpoint");
    assert!(!done.busy, "nothing holds the WAL: {done:?}");
    assert!(
        done.wal_pages > 0,
        "the commits went to the WAL (the writer did not checkpoint them itself): {done:?}"
    );
    assert_eq!(done.checkpointed_pages, done.wal_pages, "{done:?}");
    store.close().await;

    let reopened = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(reopened.message_count().await.expect("count"), 20 * 64);
    reopened.close().await;
}
