//! The lease and its fencing epoch on PostgreSQL (issue 13 item 3): one active process per
//! party, and a process that lost the lease never commits again. Two stores opened on one
//! database stand for two node processes of one party. Expiry is simulated by moving the
//! lease's `expires_at` into the past, never by waiting.

use detente_store::{
    Acquired, Direction, Hash32, MessageRow, OutboxRow, PgStore, Placement, Store, StoreError,
    WriteBatch,
};
use sqlx::Connection;

const TTL_MS: i64 = 60_000;

fn send(seq: u64) -> WriteBatch {
    let mut id: Hash32 = [0x10; 32];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    WriteBatch {
        messages: vec![MessageRow {
            id,
            channel: [0xa0; 32],
            sender: [0x01; 32],
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
        }],
        outbox: vec![OutboxRow {
            peer: "alice".into(),
            seq,
            precedence: 0,
            is_receipt: false,
        }],
        ..WriteBatch::default()
    }
}

/// Let the current lease run out, as if its holder had stopped renewing long enough.
async fn expire(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("UPDATE lease SET expires_at = clock_timestamp() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn two_processes(tag: &str) -> Option<(String, PgStore, PgStore)> {
    let url = detente_store::pg_test::fresh_database(tag).await?;
    let a = PgStore::open(&url).await.expect("open a");
    let b = PgStore::open(&url).await.expect("open b");
    Some((url, a, b))
}

#[tokio::test]
async fn a_process_that_lost_the_lease_never_commits_again() {
    let Some((url, a, b)) = two_processes("lease_fence").await else {
        return;
    };
    assert_eq!(
        a.lease_acquire("a", TTL_MS).await.unwrap(),
        Acquired::Held { epoch: 1 }
    );
    match b.lease_acquire("b", TTL_MS).await.unwrap() {
        Acquired::Busy { holder, until } => {
            assert_eq!(holder, "a");
            assert!(until.ends_with('Z') && until.len() == 24, "{until}");
        }
        other => panic!("b must stand by, got {other:?}"),
    }
    a.commit(send(1)).await.expect("the active commits");

    // a stops renewing (paused, cut off); once the lease ran out b takes over.
    expire(&url).await;
    assert_eq!(
        b.lease_acquire("b", TTL_MS).await.unwrap(),
        Acquired::Held { epoch: 2 }
    );
    match a.commit(send(2)).await.unwrap_err() {
        StoreError::Fenced { held, current } => assert_eq!((held, current), (1, Some(2))),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(a.lease_lost());
    assert_eq!(b.message_count().await.unwrap(), 1, "nothing of it applied");
    // Sticky: a refuses without asking the database, and its renewal says it lost.
    assert!(matches!(
        a.commit(send(2)).await,
        Err(StoreError::Fenced { held: 1, .. })
    ));
    assert!(!a.lease_renew("a", 1, TTL_MS).await.unwrap());

    b.commit(send(2)).await.expect("the new active commits");
    assert!(b.lease_renew("b", 2, TTL_MS).await.unwrap());
    let epochs = b.lease_epochs(100).await.unwrap();
    let summary: Vec<_> = epochs
        .iter()
        .map(|e| (e.epoch, e.holder.as_str(), e.commits))
        .collect();
    assert_eq!(summary, vec![(1, "a", 1), (2, "b", 1)]);
    assert!(epochs[0].last_commit < epochs[1].first_commit);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_restart_of_the_holder_takes_over_at_once_and_fences_its_old_self() {
    let Some((_url, old, new)) = two_processes("lease_restart").await else {
        return;
    };
    assert_eq!(
        old.lease_acquire("host:/srv/a", TTL_MS).await.unwrap(),
        Acquired::Held { epoch: 1 }
    );
    // The same node directory, started again (the old process may still be alive).
    assert_eq!(
        new.lease_acquire("host:/srv/a", TTL_MS).await.unwrap(),
        Acquired::Held { epoch: 2 }
    );
    assert!(matches!(
        old.commit(send(1)).await,
        Err(StoreError::Fenced {
            held: 1,
            current: Some(2)
        })
    ));
    new.commit(send(1)).await.unwrap();
    old.close().await;
    new.close().await;
}

#[tokio::test]
async fn a_released_lease_is_taken_without_waiting_and_a_store_without_one_is_not_fenced() {
    let Some((_url, a, b)) = two_processes("lease_release").await else {
        return;
    };
    // Tools and the conformance suite commit without a lease: no check.
    b.commit(send(1)).await.unwrap();
    assert_eq!(
        a.lease_acquire("a", TTL_MS).await.unwrap(),
        Acquired::Held { epoch: 1 }
    );
    a.lease_release("a", 1).await.unwrap();
    assert!(matches!(
        a.commit(send(2)).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        b.lease_acquire("b", TTL_MS).await.unwrap(),
        Acquired::Held { epoch: 2 }
    );
    b.commit(send(2)).await.unwrap();
    a.close().await;
    b.close().await;
}
