//! The store conformance suite: every test here runs against both stores, a real SQLite
//! file (`sqlite::…`) and a real PostgreSQL database (`postgres::…`, one fresh database per
//! test on the server `scripts/test` starts; see `detente_store::pg_test`). Every row type
//! round-trips, a batch is all-or-nothing, the idempotent parts are idempotent, queries order
//! and filter as the trait documents, and everything survives closing and reopening.
//!
//! A test is written once as `async fn name(db: Db)` and listed in `conformance!` at the
//! end, which instantiates it for each store.

use std::path::Path;

use detente_store::{
    AnyStore, DeadlineCounts, DeliveredRange, Direction, DueGroup, Hash32, IdempotencyRow,
    InboxQuery, MessageRow, MissRow, OutboxCounts, OutboxRow, Placement, ReceiptLevel, ReceiptRow,
    ReceiptTimes, SentRecord, Store, StoreError, StreamRow, WriteBatch, IDEMPOTENCY_PRUNE_ROWS_MAX,
    TREE_LEVEL_STORED_MIN,
};

const CHANNEL_A: Hash32 = [0xa0; 32];
const CHANNEL_B: Hash32 = [0xb0; 32];
/// This node's party.
const ME: Hash32 = [0x01; 32];
/// The parties at the other end of channels A and B.
const ALICE: Hash32 = [0x02; 32];
const BOB: Hash32 = [0x03; 32];

/// One store under test, and how to open it again.
struct Db {
    // Held so a SQLite file's directory outlives the store.
    _dir: Option<tempfile::TempDir>,
    /// `sqlite:PATH` or the PostgreSQL database's URL.
    url: String,
    store: AnyStore,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("detente.db").display());
        let store = AnyStore::open(&url, Path::new("")).await.expect("open");
        Db {
            _dir: Some(dir),
            url,
            store,
        }
    }

    /// `None` when no test server is configured (the test is then skipped, and says so).
    async fn postgres(tag: &str) -> Option<Db> {
        let url = detente_store::pg_test::fresh_database(tag).await?;
        let store = AnyStore::open(&url, Path::new("")).await.expect("open");
        Some(Db {
            _dir: None,
            url,
            store,
        })
    }

    /// A second store on the same database (after closing the first, a reopened one).
    async fn reopen(&self) -> AnyStore {
        AnyStore::open(&self.url, Path::new(""))
            .await
            .expect("reopen")
    }
}

/// A distinct id per (tag, n).
fn id(tag: u8, n: u64) -> Hash32 {
    let mut h = [tag; 32];
    h[..8].copy_from_slice(&n.to_be_bytes());
    h
}

/// Channel, sender and peer name of a message of `direction` with the given peer.
fn stream_of(peer: &str, direction: Direction) -> (Hash32, Hash32) {
    let (channel, them) = match peer {
        "alice" => (CHANNEL_A, ALICE),
        _ => (CHANNEL_B, BOB),
    };
    match direction {
        Direction::Out => (channel, ME),
        Direction::In => (channel, them),
    }
}

fn msg(peer: &str, direction: Direction, seq: u64, created_at_ms: i64) -> MessageRow {
    let (channel, sender) = stream_of(peer, direction);
    let tag = match (peer, direction) {
        ("alice", Direction::Out) => 0x10,
        ("alice", Direction::In) => 0x11,
        (_, Direction::Out) => 0x20,
        (_, Direction::In) => 0x21,
    };
    MessageRow {
        id: id(tag, seq),
        channel,
        sender,
        seq,
        peer: peer.to_owned(),
        direction,
        precedence: 3,
        topic: format!("topic {seq}"),
        kind: 0,
        created_at_ms,
        stored_at_ms: created_at_ms + 5,
        in_reply_to: None,
        placement: Placement::Appended,
        bytes: format!("envelope {peer} {direction:?} {seq}").into_bytes(),
    }
}

fn outbox(peer: &str, seq: u64, precedence: u8) -> OutboxRow {
    OutboxRow {
        peer: peer.to_owned(),
        seq,
        precedence,
        is_receipt: false,
    }
}

/// An outgoing message and its outbox row.
fn send(batch: &mut WriteBatch, peer: &str, seq: u64, precedence: u8) {
    let mut m = msg(peer, Direction::Out, seq, 1_000 + seq as i64);
    m.precedence = precedence;
    batch.messages.push(m);
    batch.outbox.push(outbox(peer, seq, precedence));
}

fn receipt(of: Hash32, level: ReceiptLevel, at_ms: i64, note: Option<&str>) -> ReceiptRow {
    ReceiptRow {
        of,
        level,
        at_ms,
        receipt_id: id(0x99, at_ms as u64),
        note: note.map(str::to_owned),
    }
}

fn delivered(peer: &str, from: u64, to: u64, at_ms: i64) -> DeliveredRange {
    DeliveredRange {
        peer: peer.to_owned(),
        from,
        to,
        at_ms,
    }
}

fn seqs(rows: &[(u64, Vec<u8>)]) -> Vec<u64> {
    rows.iter().map(|(seq, _)| *seq).collect()
}

async fn every_row_type_round_trips(db: Db) {
    let s = &db.store;

    let out = MessageRow {
        precedence: 0,
        kind: 2,
        ..msg("alice", Direction::Out, 1, 1_000)
    };
    let reply = MessageRow {
        in_reply_to: Some(out.id),
        bytes: vec![0u8; 1200],
        ..msg("alice", Direction::In, 1, 2_000)
    };
    let held = MessageRow {
        placement: Placement::Held,
        ..msg("alice", Direction::In, 3, 3_000)
    };
    let out_stream = StreamRow {
        channel: CHANNEL_A,
        sender: ME,
        next_seq: 2,
        last_id: out.id,
    };
    let in_stream = StreamRow {
        channel: CHANNEL_A,
        sender: ALICE,
        next_seq: 2,
        last_id: reply.id,
    };
    let read = receipt(out.id, ReceiptLevel::Read, 2_500, None);
    let ack = receipt(
        out.id,
        ReceiptLevel::Acknowledged,
        2_600,
        Some("understood"),
    );

    let batch = WriteBatch {
        messages: vec![out.clone(), reply.clone(), held.clone()],
        outbox: vec![OutboxRow {
            is_receipt: true,
            ..outbox("alice", 1, 0)
        }],
        streams: vec![out_stream, in_stream],
        receipts: vec![read, ack],
        ..WriteBatch::default()
    };
    s.commit(batch).await.expect("commit");

    assert_eq!(s.message(out.id).await.unwrap(), Some(out.clone()));
    assert_eq!(s.message(reply.id).await.unwrap(), Some(reply.clone()));
    assert_eq!(s.message(id(0x77, 0)).await.unwrap(), None);
    assert_eq!(
        s.message_at(CHANNEL_A, ALICE, 3).await.unwrap(),
        Some(held.clone())
    );
    assert_eq!(s.message_at(CHANNEL_A, ALICE, 2).await.unwrap(), None);
    assert_eq!(
        s.message_at(CHANNEL_A, ALICE, u64::MAX).await.unwrap(),
        None
    );

    let mut streams = s.streams().await.unwrap();
    streams.sort_by_key(|r| r.sender);
    assert_eq!(streams, vec![out_stream, in_stream]);

    assert_eq!(s.held(CHANNEL_A, ALICE, 10).await.unwrap(), vec![held]);
    assert_eq!(
        s.outbox_pending("alice", 0, 0, 10).await.unwrap(),
        vec![(1, out.bytes.clone())]
    );
    assert_eq!(
        s.outbox_pending("alice", 0, 1, 10).await.unwrap(),
        Vec::<(u64, Vec<u8>)>::new(),
        "after is exclusive"
    );
    assert_eq!(
        s.outbox_pending("alice", 0, u64::MAX, 10).await.unwrap(),
        Vec::<(u64, Vec<u8>)>::new()
    );
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts {
            pending: 1,
            pending_flash: 1
        }
    );
    assert_eq!(
        s.receipt_times(out.id).await.unwrap(),
        ReceiptTimes {
            delivered_ms: None,
            read_ms: Some(2_500),
            acknowledged_ms: Some(2_600),
            declined_ms: None,
            note: Some("understood".into()),
        }
    );
    assert_eq!(
        s.receipt_times(reply.id).await.unwrap(),
        ReceiptTimes::default()
    );
    assert_eq!(s.message_count().await.unwrap(), 3);
}

async fn outbox_pending_returns_the_message_bytes(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in 1..=3 {
        send(&mut batch, "alice", seq, 1);
    }
    let expected: Vec<(u64, Vec<u8>)> = batch
        .messages
        .iter()
        .map(|m| (m.seq, m.bytes.clone()))
        .collect();
    s.commit(batch).await.unwrap();
    // Streams start at seq 1, so `after` 0 means "from the start".
    assert_eq!(s.outbox_pending("alice", 1, 0, 10).await.unwrap(), expected);
    assert_eq!(
        s.outbox_pending("alice", 1, 1, 10).await.unwrap(),
        expected[1..].to_vec()
    );
}

async fn empty_batch_is_ok(db: Db) {
    db.store.commit(WriteBatch::default()).await.unwrap();
    assert_eq!(db.store.message_count().await.unwrap(), 0);
}

/// State that a failed batch must leave exactly as it was.
async fn snapshot(s: &AnyStore) -> (u64, Vec<StreamRow>, OutboxCounts, Vec<MessageRow>) {
    (
        s.message_count().await.unwrap(),
        s.streams().await.unwrap(),
        s.outbox_counts("alice").await.unwrap(),
        s.inbox(InboxQuery {
            include_system: true,
            ..InboxQuery::default()
        })
        .await
        .unwrap(),
    )
}

async fn a_duplicate_id_fails_the_whole_batch(db: Db) {
    let s = &db.store;
    let mut first = WriteBatch::default();
    send(&mut first, "alice", 1, 3);
    first.streams.push(StreamRow {
        channel: CHANNEL_A,
        sender: ME,
        next_seq: 2,
        last_id: id(0x10, 1),
    });
    s.commit(first).await.unwrap();
    let before = snapshot(s).await;

    // Second message reuses the first batch's id at a new position.
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 2, 0);
    send(&mut batch, "alice", 3, 0);
    batch.messages[1].id = id(0x10, 1);
    batch.streams.push(StreamRow {
        channel: CHANNEL_A,
        sender: ME,
        next_seq: 4,
        last_id: id(0x10, 3),
    });
    batch
        .receipts
        .push(receipt(id(0x10, 1), ReceiptLevel::Read, 9, None));
    batch.prune.push(("alice".into(), 10));

    let err = s.commit(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
    assert_eq!(snapshot(s).await, before);
    assert_eq!(s.message_at(CHANNEL_A, ME, 2).await.unwrap(), None);
    assert_eq!(
        s.receipt_times(id(0x10, 1)).await.unwrap(),
        ReceiptTimes::default()
    );

    // The store still works after the failure.
    let mut next = WriteBatch::default();
    send(&mut next, "alice", 2, 0);
    s.commit(next).await.unwrap();
    assert_eq!(s.message_count().await.unwrap(), 2);
}

async fn a_duplicate_position_fails_the_whole_batch(db: Db) {
    let s = &db.store;
    let mut first = WriteBatch::default();
    first.messages.push(msg("alice", Direction::In, 5, 100));
    s.commit(first).await.unwrap();
    let before = snapshot(s).await;

    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 0, 3);
    // Same (channel, sender, seq), different id.
    batch.messages.push(MessageRow {
        id: id(0x55, 5),
        ..msg("alice", Direction::In, 5, 100)
    });
    let err = s.commit(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
    assert_eq!(snapshot(s).await, before);
}

async fn a_duplicate_within_one_batch_fails_it(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 0, 3);
    send(&mut batch, "alice", 0, 3);
    let err = s.commit(batch).await.unwrap_err();
    match err {
        StoreError::Duplicate(what) => assert!(what.contains("twice"), "{what}"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(s.message_count().await.unwrap(), 0);
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts::default()
    );
}

async fn a_duplicate_in_a_late_chunk_rolls_back_earlier_chunks(db: Db) {
    let s = &db.store;
    let mut first = WriteBatch::default();
    send(&mut first, "alice", 5_000, 3);
    s.commit(first).await.unwrap();

    // 1300 rows are written as several statements; the collision is in the last one.
    let mut batch = WriteBatch::default();
    for seq in 0..1_300 {
        send(&mut batch, "bob", seq, 3);
    }
    send(&mut batch, "alice", 5_000, 3);
    let err = s.commit(batch).await.unwrap_err();
    match err {
        StoreError::Duplicate(what) => assert!(what.contains("already stored"), "{what}"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(s.message_count().await.unwrap(), 1);
    assert_eq!(
        s.outbox_counts("bob").await.unwrap(),
        OutboxCounts::default()
    );
}

async fn large_batches_are_written_completely(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in 0..1_300 {
        send(&mut batch, "bob", seq, (seq % 4) as u8);
        batch.receipts.push(receipt(
            id(0x20, seq),
            ReceiptLevel::Delivered,
            seq as i64,
            None,
        ));
        batch.delivered.push(delivered("bob", seq * 2, seq * 2, 7));
    }
    s.commit(batch).await.unwrap();
    assert_eq!(s.message_count().await.unwrap(), 1_300);
    // Even seqs were marked delivered; of the odd ones, those with seq % 4 == 1 are
    // precedence 1.
    let pending = s.outbox_pending("bob", 1, 0, 10_000).await.unwrap();
    assert_eq!(pending.len(), 325);
    assert_eq!(
        s.outbox_counts("bob").await.unwrap(),
        OutboxCounts {
            pending: 650,
            pending_flash: 0
        }
    );
    assert_eq!(
        s.receipt_times(id(0x20, 1_299)).await.unwrap().delivered_ms,
        Some(1_299)
    );
}

async fn out_of_range_numbers_are_refused_before_writing(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 0, 3);
    batch.streams.push(StreamRow {
        channel: CHANNEL_A,
        sender: ME,
        next_seq: u64::MAX,
        last_id: [0; 32],
    });
    let err = s.commit(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert_eq!(s.message_count().await.unwrap(), 0);
}

async fn promote_appends_held_messages(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in [3, 1, 2] {
        batch.messages.push(MessageRow {
            placement: Placement::Held,
            ..msg("alice", Direction::In, seq, 100)
        });
    }
    // Another stream's held message must not appear in alice's list.
    batch.messages.push(MessageRow {
        placement: Placement::Held,
        ..msg("bob", Direction::In, 7, 100)
    });
    s.commit(batch).await.unwrap();

    let held: Vec<u64> = s
        .held(CHANNEL_A, ALICE, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(held, vec![1, 2, 3]);
    let first_two: Vec<u64> = s
        .held(CHANNEL_A, ALICE, 2)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(first_two, vec![1, 2]);

    // Promote 1 and 2 (and a position that does not exist, which is ignored), with the
    // gap-filling message 0 in the same batch.
    let batch = WriteBatch {
        messages: vec![msg("alice", Direction::In, 0, 90)],
        promote: vec![
            (CHANNEL_A, ALICE, 1),
            (CHANNEL_A, ALICE, 2),
            (CHANNEL_A, ALICE, 40),
        ],
        streams: vec![StreamRow {
            channel: CHANNEL_A,
            sender: ALICE,
            next_seq: 3,
            last_id: id(0x11, 2),
        }],
        ..WriteBatch::default()
    };
    s.commit(batch).await.unwrap();
    let held: Vec<u64> = s
        .held(CHANNEL_A, ALICE, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(held, vec![3]);
    assert_eq!(
        s.message_at(CHANNEL_A, ALICE, 2)
            .await
            .unwrap()
            .map(|m| m.placement),
        Some(Placement::Appended)
    );
    assert_eq!(s.held(CHANNEL_B, BOB, 10).await.unwrap().len(), 1);
}

/// A held row that does not follow its stream leaves the store with what the console
/// keeps of it, in the same commit as the evidence and the row that takes its seq; an
/// appended row at a discarded position is never touched.
async fn a_discarded_held_row_makes_room_for_the_one_that_follows(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    batch.messages.push(msg("alice", Direction::In, 1, 100));
    batch.messages.push(MessageRow {
        placement: Placement::Held,
        ..msg("alice", Direction::In, 3, 100)
    });
    s.commit(batch).await.unwrap();
    let held_id = s.message_at(CHANNEL_A, ALICE, 3).await.unwrap().unwrap().id;
    let evidence = detente_store::EvidenceRow {
        id: 0,
        channel: CHANNEL_A,
        peer: "alice".into(),
        kind: detente_store::EVIDENCE_BROKEN_CHAIN,
        seq: Some(3),
        first: b"two".to_vec(),
        second: b"held three".to_vec(),
        detail: "seq 3 does not follow seq 2".into(),
        detected_at_ms: 8,
    };
    // The one that follows, at the same seq, with another id.
    let follows = MessageRow {
        id: id(0x77, 3),
        ..msg("alice", Direction::In, 3, 120)
    };
    s.commit(WriteBatch {
        discard_held: vec![(CHANNEL_A, ALICE, 3), (CHANNEL_A, ALICE, 1)],
        messages: vec![msg("alice", Direction::In, 2, 110), follows.clone()],
        evidence: vec![evidence.clone()],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert!(
        s.message(held_id).await.unwrap().is_none(),
        "the held row is gone"
    );
    let at3 = s.message_at(CHANNEL_A, ALICE, 3).await.unwrap().unwrap();
    assert_eq!((at3.id, at3.placement), (follows.id, Placement::Appended));
    assert!(
        s.message_at(CHANNEL_A, ALICE, 1).await.unwrap().is_some(),
        "an appended row is never discarded"
    );
    assert!(s.held(CHANNEL_A, ALICE, 10).await.unwrap().is_empty());
    let stored = s.evidence().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kind, detente_store::EVIDENCE_BROKEN_CHAIN);
    assert_eq!(stored[0].second, evidence.second);
}

async fn streams_are_replaced(db: Db) {
    let s = &db.store;
    let row = |next_seq| StreamRow {
        channel: CHANNEL_A,
        sender: ALICE,
        next_seq,
        last_id: id(0x11, next_seq),
    };
    s.commit(WriteBatch {
        streams: vec![row(1)],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    // The same stream twice in one batch: the later state wins.
    s.commit(WriteBatch {
        streams: vec![row(2), row(3)],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(s.streams().await.unwrap(), vec![row(3)]);
}

async fn delivered_and_prune_are_idempotent(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in 0..6 {
        send(&mut batch, "alice", seq, if seq < 2 { 0 } else { 3 });
        send(&mut batch, "bob", seq, 0);
    }
    s.commit(batch).await.unwrap();
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts {
            pending: 6,
            pending_flash: 2
        }
    );

    let deliver = |at_ms| WriteBatch {
        delivered: vec![
            delivered("alice", 1, 1, at_ms),
            delivered("alice", 4, 4, at_ms),
            delivered("alice", 99, 120, at_ms),
        ],
        ..WriteBatch::default()
    };
    s.commit(deliver(500)).await.unwrap();
    s.commit(deliver(600)).await.unwrap();
    let expected = OutboxCounts {
        pending: 4,
        pending_flash: 1,
    };
    assert_eq!(s.outbox_counts("alice").await.unwrap(), expected);
    // The first confirmation's time is kept; unconfirmed messages have none.
    assert_eq!(
        s.receipt_times(id(0x10, 4)).await.unwrap().delivered_ms,
        Some(500)
    );
    assert_eq!(
        s.receipt_times(id(0x10, 3)).await.unwrap().delivered_ms,
        None
    );
    // Bob's envelopes with the same seqs are not alice's.
    assert_eq!(
        s.receipt_times(id(0x20, 4)).await.unwrap().delivered_ms,
        None
    );
    assert_eq!(
        seqs(&s.outbox_pending("alice", 3, 0, 10).await.unwrap()),
        vec![2, 3, 5]
    );

    let prune = WriteBatch {
        prune: vec![("alice".into(), 2), ("alice".into(), 1)],
        ..WriteBatch::default()
    };
    s.commit(prune.clone()).await.unwrap();
    s.commit(prune).await.unwrap();
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts {
            pending: 2,
            pending_flash: 0
        }
    );
    assert_eq!(
        seqs(&s.outbox_pending("alice", 3, 0, 10).await.unwrap()),
        vec![3, 5]
    );
    // Delivered after pruning: nothing left to mark, still fine.
    s.commit(WriteBatch {
        delivered: vec![delivered("alice", 0, 1, 1)],
        prune: vec![("alice".into(), u64::MAX)],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts::default()
    );
    // Bob's rows were never touched; pruning removes outbox rows, never messages.
    assert_eq!(s.outbox_counts("bob").await.unwrap().pending, 6);
    assert_eq!(s.message_count().await.unwrap(), 12);
}

async fn a_delivered_range_covers_every_seq_in_it(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in 1..=50 {
        send(&mut batch, "alice", seq, 0);
    }
    // An incoming message with a seq in the range is not one of ours.
    batch.messages.push(msg("alice", Direction::In, 10, 5));
    s.commit(batch).await.unwrap();

    s.commit(WriteBatch {
        delivered: vec![delivered("alice", 11, 20, 100)],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(s.outbox_counts("alice").await.unwrap().pending, 40);
    assert_eq!(
        seqs(&s.outbox_pending("alice", 0, 9, 3).await.unwrap()),
        vec![10, 21, 22]
    );
    assert_eq!(
        s.receipt_times(id(0x10, 20)).await.unwrap().delivered_ms,
        Some(100)
    );
    assert_eq!(
        s.receipt_times(id(0x11, 10)).await.unwrap().delivered_ms,
        None
    );

    // A range wider than anything stored (even beyond SQLite's integers) is harmless.
    s.commit(WriteBatch {
        delivered: vec![delivered("alice", 1, u64::MAX, 200)],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts::default()
    );
    assert_eq!(
        s.receipt_times(id(0x10, 20)).await.unwrap().delivered_ms,
        Some(100)
    );
    assert_eq!(
        s.receipt_times(id(0x10, 50)).await.unwrap().delivered_ms,
        Some(200)
    );
}

async fn the_first_receipt_per_level_wins(db: Db) {
    let s = &db.store;
    let of = id(0x10, 0);
    s.commit(WriteBatch {
        receipts: vec![
            receipt(of, ReceiptLevel::Delivered, 10, None),
            receipt(of, ReceiptLevel::Delivered, 11, None),
            receipt(of, ReceiptLevel::Declined, 30, Some("no")),
        ],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.receipt_times(of).await.unwrap(),
        ReceiptTimes {
            delivered_ms: Some(10),
            declined_ms: Some(30),
            note: Some("no".into()),
            ..ReceiptTimes::default()
        }
    );

    s.commit(WriteBatch {
        receipts: vec![
            receipt(of, ReceiptLevel::Delivered, 12, None),
            receipt(of, ReceiptLevel::Read, 20, None),
            receipt(of, ReceiptLevel::Acknowledged, 40, Some("yes")),
            receipt(of, ReceiptLevel::Declined, 41, Some("changed my mind")),
        ],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.receipt_times(of).await.unwrap(),
        ReceiptTimes {
            delivered_ms: Some(10),
            read_ms: Some(20),
            acknowledged_ms: Some(40),
            declined_ms: Some(30),
            // The acknowledgement's note is preferred over the decline's.
            note: Some("yes".into()),
        }
    );
}

async fn delivered_receipts_only_record(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 0, 0);
    s.commit(batch).await.unwrap();
    s.commit(WriteBatch {
        receipts: vec![receipt(id(0x10, 0), ReceiptLevel::Delivered, 5, None)],
        ..WriteBatch::default()
    })
    .await
    .unwrap();
    // Recording the receipt does not by itself touch the outbox; `delivered` does that.
    assert_eq!(s.outbox_counts("alice").await.unwrap().pending, 1);
}

async fn inbox_orders_limits_and_filters(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    // Inserted out of order; ties on created_at are broken by sender, then seq.
    batch.messages.push(msg("alice", Direction::In, 1, 200));
    batch.messages.push(msg("alice", Direction::In, 0, 200));
    batch.messages.push(msg("alice", Direction::Out, 0, 200));
    batch.messages.push(msg("bob", Direction::In, 0, 100));
    batch.messages.push(msg("bob", Direction::Out, 0, 300));
    batch.messages.push(MessageRow {
        kind: 1,
        ..msg("alice", Direction::Out, 1, 250)
    });
    // A link test and a charter (system envelopes, like receipts) and a notification (for
    // people, like texts).
    batch.messages.push(MessageRow {
        kind: 2,
        ..msg("alice", Direction::In, 2, 260)
    });
    batch.messages.push(MessageRow {
        kind: 6,
        ..msg("bob", Direction::Out, 1, 270)
    });
    batch.messages.push(MessageRow {
        kind: 4,
        ..msg("bob", Direction::In, 1, 280)
    });
    s.commit(batch).await.unwrap();

    let list = |q: InboxQuery| async move {
        s.inbox(q)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.peer, m.direction, m.seq))
            .collect::<Vec<_>>()
    };
    use Direction::{In, Out};
    let a = || "alice".to_string();
    let b = || "bob".to_string();

    // ME (0x01) sorts before ALICE (0x02) at the same created_at.
    assert_eq!(
        list(InboxQuery::default()).await,
        vec![
            (b(), In, 0),
            (a(), Out, 0),
            (a(), In, 0),
            (a(), In, 1),
            (b(), In, 1),
            (b(), Out, 0)
        ]
    );
    assert_eq!(
        list(InboxQuery {
            include_system: true,
            ..InboxQuery::default()
        })
        .await,
        vec![
            (b(), In, 0),
            (a(), Out, 0),
            (a(), In, 0),
            (a(), In, 1),
            (a(), Out, 1),
            (a(), In, 2),
            (b(), Out, 1),
            (b(), In, 1),
            (b(), Out, 0)
        ]
    );
    // The newest two, still oldest first.
    assert_eq!(
        list(InboxQuery {
            limit: 2,
            ..InboxQuery::default()
        })
        .await,
        vec![(b(), In, 1), (b(), Out, 0)]
    );
    assert_eq!(
        list(InboxQuery {
            peer: Some(a()),
            ..InboxQuery::default()
        })
        .await,
        vec![(a(), Out, 0), (a(), In, 0), (a(), In, 1)]
    );
    assert_eq!(
        list(InboxQuery {
            peer: Some(a()),
            direction: Some(In),
            limit: 1,
            ..InboxQuery::default()
        })
        .await,
        vec![(a(), In, 1)]
    );
    assert_eq!(
        list(InboxQuery {
            direction: Some(Out),
            include_system: true,
            ..InboxQuery::default()
        })
        .await,
        vec![(a(), Out, 0), (a(), Out, 1), (b(), Out, 1), (b(), Out, 0)]
    );
    assert_eq!(
        list(InboxQuery {
            peer: Some("carol".into()),
            ..InboxQuery::default()
        })
        .await,
        vec![]
    );
}

async fn inbox_limit_zero_means_the_default_of_1000(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in 0..1_005 {
        batch
            .messages
            .push(msg("alice", Direction::In, seq, seq as i64));
    }
    s.commit(batch).await.unwrap();
    let rows = s.inbox(InboxQuery::default()).await.unwrap();
    assert_eq!(rows.len(), 1_000);
    assert_eq!(rows.first().map(|m| m.seq), Some(5));
    assert_eq!(rows.last().map(|m| m.seq), Some(1_004));
}

async fn outbox_pending_orders_and_filters(db: Db) {
    let s = &db.store;
    let mut batch = WriteBatch::default();
    for seq in [4, 1, 7, 2, 9] {
        send(&mut batch, "alice", seq, 0);
    }
    send(&mut batch, "alice", 3, 2);
    send(&mut batch, "bob", 5, 0);
    // A receipt envelope sits in the outbox like any other until pruned.
    batch.messages.push(MessageRow {
        kind: 1,
        ..msg("alice", Direction::Out, 8, 50)
    });
    batch.outbox.push(OutboxRow {
        is_receipt: true,
        ..outbox("alice", 8, 0)
    });
    batch.delivered.push(delivered("alice", 7, 7, 1));
    s.commit(batch).await.unwrap();

    let pending = s.outbox_pending("alice", 0, 0, 100).await.unwrap();
    assert_eq!(seqs(&pending), vec![1, 2, 4, 8, 9]);
    assert_eq!(pending[0].1, b"envelope alice Out 1".to_vec());
    assert_eq!(
        seqs(&s.outbox_pending("alice", 0, 2, 2).await.unwrap()),
        vec![4, 8]
    );
    assert_eq!(
        seqs(&s.outbox_pending("alice", 2, 0, 100).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        seqs(&s.outbox_pending("alice", 1, 0, 100).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&s.outbox_pending("bob", 0, 0, 100).await.unwrap()),
        vec![5]
    );
    assert_eq!(
        seqs(&s.outbox_pending("alice", 0, 0, 0).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts {
            pending: 6,
            pending_flash: 5
        }
    );
    assert_eq!(
        s.outbox_counts("carol").await.unwrap(),
        OutboxCounts::default()
    );
}

async fn everything_survives_close_and_reopen(db: Db) {
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 1, 0);
    send(&mut batch, "alice", 2, 3);
    batch.messages.push(MessageRow {
        placement: Placement::Held,
        in_reply_to: Some(id(0x10, 1)),
        ..msg("alice", Direction::In, 4, 10)
    });
    batch.streams.push(StreamRow {
        channel: CHANNEL_A,
        sender: ME,
        next_seq: 3,
        last_id: id(0x10, 2),
    });
    batch.receipts.push(receipt(
        id(0x10, 1),
        ReceiptLevel::Acknowledged,
        77,
        Some("ok"),
    ));
    let messages = batch.messages.clone();
    db.store.commit(batch).await.unwrap();
    db.store
        .commit(WriteBatch {
            delivered: vec![delivered("alice", 2, 2, 1)],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    db.store.close().await;
    assert!(
        db.store.message_count().await.is_err(),
        "a closed store refuses work"
    );

    let s = db.reopen().await;
    assert_eq!(s.message_count().await.unwrap(), 3);
    for m in &messages {
        assert_eq!(s.message(m.id).await.unwrap().as_ref(), Some(m));
    }
    assert_eq!(s.streams().await.unwrap().len(), 1);
    assert_eq!(s.held(CHANNEL_A, ALICE, 5).await.unwrap().len(), 1);
    assert_eq!(
        s.outbox_counts("alice").await.unwrap(),
        OutboxCounts {
            pending: 1,
            pending_flash: 1
        }
    );
    assert_eq!(
        s.receipt_times(id(0x10, 1)).await.unwrap().acknowledged_ms,
        Some(77)
    );
    // Migrations are not re-applied on an up-to-date file, and the store still writes.
    let mut more = WriteBatch::default();
    send(&mut more, "alice", 3, 0);
    s.commit(more).await.unwrap();
    s.close().await;
}

async fn reads_proceed_while_a_commit_is_in_flight(db: Db) {
    let s = db.store.clone();
    let mut batch = WriteBatch::default();
    for seq in 0..2_000 {
        send(&mut batch, "bob", seq, 3);
    }
    let writer = tokio::spawn(async move { s.commit(batch).await });
    // Whatever the reader sees is a committed state: all of the batch or none of it.
    let n = db.store.message_count().await.unwrap();
    assert!(n == 0 || n == 2_000, "saw {n}");
    writer.await.unwrap().unwrap();
    assert_eq!(db.store.message_count().await.unwrap(), 2_000);
}

// ---------------------------------------------------------------------------------------
// The transcript tables (schema 2).

fn node(level: u8, index: u64) -> detente_store::TreeNodeRow {
    let mut hash = [level; 32];
    hash[..8].copy_from_slice(&index.to_be_bytes());
    detente_store::TreeNodeRow {
        channel: CHANNEL_A,
        sender: ME,
        level,
        index,
        hash,
    }
}

async fn tree_nodes_commit_with_their_message_and_survive_reopening(db: Db) {
    let batch = WriteBatch {
        messages: vec![msg("alice", Direction::Out, 1, 1000)],
        tree_nodes: vec![node(4, 0)],
        ..WriteBatch::default()
    };
    db.store.commit(batch).await.unwrap();
    // A batch whose tree node collides is refused whole: its message is not stored either.
    let bad = WriteBatch {
        messages: vec![msg("alice", Direction::Out, 2, 1001)],
        tree_nodes: vec![node(4, 1), node(4, 0)],
        ..WriteBatch::default()
    };
    assert!(matches!(
        db.store.commit(bad).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(db.store.message_count().await.unwrap(), 1);
    let found = db
        .store
        .tree_nodes(CHANNEL_A, ME, vec![(4, 1), (4, 0), (5, 0)])
        .await
        .unwrap();
    assert_eq!(found, vec![None, Some(node(4, 0).hash), None]);
    // Another stream's nodes are not this one's.
    assert_eq!(
        db.store
            .tree_nodes(CHANNEL_A, ALICE, vec![(4, 0)])
            .await
            .unwrap(),
        vec![None]
    );
    db.store.close().await;
    let store = db.reopen().await;
    assert_eq!(
        store.tree_nodes(CHANNEL_A, ME, vec![(4, 0)]).await.unwrap(),
        vec![Some(node(4, 0).hash)]
    );
    let envelopes = store.stream_envelopes(CHANNEL_A, ME, 0, 10).await.unwrap();
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].0, 1);
}

/// Subtrees below `TREE_LEVEL_STORED_MIN` are not written; reading them hashes the appended
/// envelopes they cover, and gives nothing while one of those is missing or only held.
async fn low_tree_levels_are_recomputed_from_the_appended_envelopes(db: Db) {
    use detente_proto::merkle::{leaf_hash, MemoryTree};
    let mut tree = MemoryTree::new();
    let mut batch = WriteBatch::default();
    for seq in 1..=20 {
        let m = msg("alice", Direction::Out, seq, 1000 + seq as i64);
        tree.push(leaf_hash(&m.bytes));
        batch.messages.push(m);
    }
    // Rows below the stored levels are ignored, even wrong ones.
    batch.tree_nodes = vec![node(0, 0), node(1, 0), node(3, 0)];
    let mut held = msg("alice", Direction::Out, 24, 2000);
    held.placement = Placement::Held;
    batch.messages.push(held);
    db.store.commit(batch).await.unwrap();
    let mut positions = Vec::new();
    for level in 0..TREE_LEVEL_STORED_MIN {
        for index in 0..(24u64 >> level) {
            positions.push((level, index));
        }
    }
    let found = db
        .store
        .tree_nodes(CHANNEL_A, ME, positions.clone())
        .await
        .unwrap();
    for ((level, index), got) in positions.into_iter().zip(found) {
        let complete = (index + 1) << level <= 20;
        let expected = if complete {
            tree.node(level, index)
        } else {
            None
        };
        assert_eq!(got, expected, "level {level} index {index}");
    }
}

async fn checkpoints_merge_signatures_and_witness_and_evidence_persist(db: Db) {
    let row = |signed: &[u8], cosigned: bool| detente_store::CheckpointRow {
        id: 0,
        channel: CHANNEL_A,
        body_hash: [7; 32],
        time_ms: 5,
        cosigned,
        signed: signed.to_vec(),
        stored_at_ms: 6,
    };
    let witness = detente_store::WitnessRow {
        channel: CHANNEL_A,
        sender: ME,
        size: 3,
        root: [9; 32],
    };
    let evidence = detente_store::EvidenceRow {
        id: 0,
        channel: CHANNEL_A,
        peer: "alice".into(),
        kind: detente_store::EVIDENCE_ENVELOPES,
        seq: Some(4),
        first: b"one".to_vec(),
        second: b"two".to_vec(),
        detail: "two envelopes for seq 4".into(),
        detected_at_ms: 8,
    };
    db.store
        .commit(WriteBatch {
            checkpoints: vec![row(b"one signature", false)],
            witness: vec![witness],
            evidence: vec![evidence.clone()],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    // The same body with both signatures replaces the row; a later copy with fewer does not.
    for (signed, cosigned) in [(&b"both"[..], true), (&b"one again"[..], false)] {
        db.store
            .commit(WriteBatch {
                checkpoints: vec![row(signed, cosigned)],
                ..WriteBatch::default()
            })
            .await
            .unwrap();
    }
    db.store.close().await;
    let store = db.reopen().await;
    let rows = store.checkpoints(CHANNEL_A).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].cosigned);
    assert_eq!(rows[0].signed, b"both");
    assert_eq!(store.witness(CHANNEL_A).await.unwrap(), vec![witness]);
    assert!(store.witness(CHANNEL_B).await.unwrap().is_empty());
    let stored = store.evidence().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].first, evidence.first);
    assert_eq!(stored[0].seq, Some(4));
}

async fn checkpoints_are_read_a_bounded_page_at_a_time(db: Db) {
    use detente_store::{CheckpointPage, CheckpointSpan};
    let row = |n: u8, channel| detente_store::CheckpointRow {
        id: 0,
        channel,
        body_hash: [n; 32],
        time_ms: i64::from(n),
        cosigned: n.is_multiple_of(2),
        signed: vec![n; 3],
        stored_at_ms: 6,
    };
    assert_eq!(
        db.store.checkpoint_span(CHANNEL_A).await.unwrap(),
        CheckpointSpan::default()
    );
    for n in 1..=7u8 {
        let mut batch = WriteBatch::default();
        batch.checkpoints.push(row(n, CHANNEL_A));
        batch.checkpoints.push(row(100 + n, CHANNEL_B));
        db.store.commit(batch).await.unwrap();
    }
    let span = db.store.checkpoint_span(CHANNEL_A).await.unwrap();
    assert_eq!(span.count, 7);
    let all = db.store.checkpoints(CHANNEL_A).await.unwrap();
    assert_eq!(span.last_id, all[6].id);
    let times = |rows: &[detente_store::CheckpointRow]| -> Vec<i64> {
        rows.iter().map(|r| r.time_ms).collect()
    };
    // Oldest first, three at a time, each page after the last one's id.
    let mut page = CheckpointPage::oldest_first(3);
    let mut seen = Vec::new();
    loop {
        let rows = db.store.checkpoint_page(CHANNEL_A, page).await.unwrap();
        let Some(last) = rows.last() else { break };
        assert!(rows.len() <= 3);
        page.after_id = last.id;
        seen.extend(times(&rows));
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6, 7], "only channel A, in order");
    // The newest two, newest first, with the boolean decoded alike in both stores.
    let newest = db
        .store
        .checkpoint_page(CHANNEL_A, CheckpointPage::newest(2))
        .await
        .unwrap();
    assert_eq!(times(&newest), vec![7, 6]);
    assert_eq!(
        newest.iter().map(|r| r.cosigned).collect::<Vec<_>>(),
        vec![false, true]
    );
    // Co-signed only, newest first: what status and the console read.
    let cosigned = db
        .store
        .checkpoint_page(CHANNEL_A, CheckpointPage::newest_cosigned(5))
        .await
        .unwrap();
    assert!(cosigned.iter().all(|r| r.cosigned), "{cosigned:?}");
    assert_eq!(
        cosigned.iter().map(|r| r.id).collect::<Vec<_>>(),
        all.iter()
            .rev()
            .filter(|r| r.cosigned)
            .map(|r| r.id)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(!cosigned.is_empty());
    // A span fixed before later rows: `upto_id` leaves them out.
    let fixed = CheckpointPage {
        upto_id: all[1].id,
        ..CheckpointPage::oldest_first(100)
    };
    assert_eq!(
        times(&db.store.checkpoint_page(CHANNEL_A, fixed).await.unwrap()),
        vec![1, 2]
    );
}

async fn messages_of_kind_lists_one_peer_both_directions_newest_kept(db: Db) {
    let mut batch = WriteBatch::default();
    for seq in 1..=6 {
        for (peer, direction) in [
            ("alice", Direction::Out),
            ("alice", Direction::In),
            ("bob", Direction::Out),
        ] {
            let mut m = msg(peer, direction, seq, 1_000 + seq as i64);
            // Every other message is a charter (kind 6).
            m.kind = if seq % 2 == 0 { 6 } else { 0 };
            batch.messages.push(m);
        }
    }
    db.store.commit(batch).await.expect("commit");
    let rows = db
        .store
        .messages_of_kind("alice", 6, 10)
        .await
        .expect("query");
    let got: Vec<(Direction, u64)> = rows.iter().map(|r| (r.direction, r.seq)).collect();
    assert_eq!(
        got,
        vec![
            (Direction::Out, 2),
            (Direction::Out, 4),
            (Direction::Out, 6),
            (Direction::In, 2),
            (Direction::In, 4),
            (Direction::In, 6),
        ]
    );
    assert!(rows.iter().all(|r| r.kind == 6 && r.peer == "alice"));
    // The limit keeps the newest of each direction.
    let newest = db
        .store
        .messages_of_kind("alice", 6, 1)
        .await
        .expect("query");
    let got: Vec<(Direction, u64)> = newest.iter().map(|r| (r.direction, r.seq)).collect();
    assert_eq!(got, vec![(Direction::Out, 6), (Direction::In, 6)]);
    assert!(db
        .store
        .messages_of_kind("carol", 6, 10)
        .await
        .expect("query")
        .is_empty());
}

/// Deadline misses: recorded once per (message, level), kept across reopening, and the
/// candidates for deadlines are exactly the text messages not yet answered (receipts, tests
/// and answered messages owe nothing), with the levels already missed.
async fn deadline_misses_and_candidates(db: Db) {
    let s = &db.store;
    let answered = msg("alice", Direction::Out, 1, 1_000);
    let overdue = msg("alice", Direction::Out, 2, 2_000);
    let pending = msg("alice", Direction::In, 1, 3_000);
    let declined = msg("alice", Direction::In, 2, 3_500);
    let receipt_row = MessageRow {
        kind: 1,
        ..msg("alice", Direction::In, 3, 4_000)
    };
    let test_row = MessageRow {
        kind: 2,
        ..msg("alice", Direction::Out, 3, 5_000)
    };
    let miss = |m: &MessageRow, level: u8, due: i64| MissRow {
        id: m.id,
        level,
        due_at_ms: due,
        missed_at_ms: due + 3,
    };
    s.commit(WriteBatch {
        messages: vec![
            answered.clone(),
            overdue.clone(),
            pending.clone(),
            declined.clone(),
            receipt_row,
            test_row,
        ],
        receipts: vec![
            receipt(answered.id, ReceiptLevel::Acknowledged, 1_500, None),
            receipt(declined.id, ReceiptLevel::Declined, 3_600, Some("no")),
            receipt(pending.id, ReceiptLevel::Read, 3_100, None),
        ],
        misses: vec![miss(&overdue, 0, 2_010), miss(&overdue, 2, 2_600)],
        ..WriteBatch::default()
    })
    .await
    .expect("commit");
    // The first miss per (id, level) wins.
    s.commit(WriteBatch {
        misses: vec![miss(&overdue, 2, 9_999)],
        ..WriteBatch::default()
    })
    .await
    .expect("idempotent");
    assert!(s
        .commit(WriteBatch {
            misses: vec![miss(&overdue, 1, 1)],
            ..WriteBatch::default()
        })
        .await
        .is_err());

    let misses = s.misses(overdue.id).await.unwrap();
    assert_eq!(
        misses,
        vec![miss(&overdue, 0, 2_010), miss(&overdue, 2, 2_600)]
    );
    assert!(s.misses(pending.id).await.unwrap().is_empty());

    let candidates = s.deadline_candidates(100).await.unwrap();
    let ids: Vec<Hash32> = candidates.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![pending.id, overdue.id], "newest first");
    let o = &candidates[1];
    assert_eq!(o.missed, vec![0, 2]);
    assert_eq!(
        (o.direction, o.seq, o.created_at_ms),
        (Direction::Out, 2, 2_000)
    );
    assert!(candidates[0].missed.is_empty());
    assert_eq!(s.deadline_candidates(1).await.unwrap().len(), 1);

    // Reopened, everything is still there.
    s.close().await;
    let again = db.reopen().await;
    assert_eq!(again.misses(overdue.id).await.unwrap().len(), 2);
    assert_eq!(again.deadline_candidates(100).await.unwrap().len(), 2);
}

/// Deadline groups: each (peer, direction, precedence) reads its pending messages in due
/// order — by `created_at_ms` for ours, `stored_at_ms` for received ones, then id — from a
/// cursor, a bounded page at a time; answered messages, receipts and other groups are not
/// in it. And the `status` figures counted from the store match.
async fn deadline_groups_read_in_due_order_from_a_cursor(db: Db) {
    let s = &db.store;
    // Ours: created out of seq order (clock), so due order is not seq order.
    let mut ours: Vec<MessageRow> = [(1, 5_000), (2, 1_000), (3, 3_000), (4, 3_000), (5, 9_000)]
        .into_iter()
        .map(|(seq, at)| msg("alice", Direction::Out, seq, at))
        .collect();
    ours[4].precedence = 0; // another group (FLASH)
                            // Theirs: due from stored_at_ms, whatever the peer claims as created_at.
    let mut theirs: Vec<MessageRow> = (1..=3)
        .map(|seq| msg("alice", Direction::In, seq, 100_000 - seq as i64))
        .collect();
    for (i, m) in theirs.iter_mut().enumerate() {
        m.stored_at_ms = 10 + i as i64;
    }
    let other_peer = msg("bob", Direction::Out, 1, 2_000);
    let answered = msg("alice", Direction::Out, 6, 2_500);
    let mut messages = ours.clone();
    messages.extend(theirs.clone());
    messages.push(other_peer.clone());
    messages.push(answered.clone());
    s.commit(WriteBatch {
        messages,
        receipts: vec![receipt(
            answered.id,
            ReceiptLevel::Acknowledged,
            2_600,
            None,
        )],
        misses: vec![
            MissRow {
                id: ours[1].id,
                level: 2,
                due_at_ms: 1_100,
                missed_at_ms: 1_101,
            },
            MissRow {
                id: theirs[0].id,
                level: 2,
                due_at_ms: 20,
                missed_at_ms: 21,
            },
        ],
        ..WriteBatch::default()
    })
    .await
    .expect("commit");

    let group = DueGroup {
        peer: "alice".into(),
        direction: Direction::Out,
        precedence: 3,
    };
    let mut same_time = [ours[2].id, ours[3].id];
    same_time.sort();
    let want = vec![ours[1].id, same_time[0], same_time[1], ours[0].id];
    let all = s.deadline_due(&group, None, 100).await.unwrap();
    let ids: Vec<Hash32> = all.iter().map(|c| c.id).collect();
    assert_eq!(ids, want, "due order: start, then id; answered left out");
    assert_eq!(all[0].missed, vec![2]);
    // Paged with a cursor, two at a time, the same order with nothing twice.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s.deadline_due(&group, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.created_at_ms, last.id));
        paged.extend(page.iter().map(|c| c.id));
    }
    assert_eq!(paged, want);

    let received = DueGroup {
        direction: Direction::In,
        ..group.clone()
    };
    let ids: Vec<Hash32> = s
        .deadline_due(&received, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        ids,
        vec![theirs[0].id, theirs[1].id, theirs[2].id],
        "by stored_at"
    );
    let after_first = Some((theirs[0].stored_at_ms, theirs[0].id));
    assert_eq!(
        s.deadline_due(&received, after_first, 100)
            .await
            .unwrap()
            .len(),
        2
    );
    let flash = DueGroup {
        precedence: 0,
        ..group.clone()
    };
    assert_eq!(s.deadline_due(&flash, None, 100).await.unwrap().len(), 1);

    // The state of given messages: the pending ones, with what was missed; not the
    // answered one, nor an id never stored.
    let asked = vec![ours[1].id, answered.id, other_peer.id, [0xee; 32]];
    let mut state = s.deadline_state(asked).await.unwrap();
    state.sort_by_key(|c| c.id);
    let mut want_state = vec![ours[1].id, other_peer.id];
    want_state.sort();
    assert_eq!(state.iter().map(|c| c.id).collect::<Vec<_>>(), want_state);
    let ours_1 = state.iter().find(|c| c.id == ours[1].id).unwrap();
    assert_eq!(ours_1.missed, vec![2]);
    assert!(!ours_1.delivered);
    // More ids than one statement takes are asked in parts.
    let many: Vec<Hash32> = (0..1_200u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        })
        .chain([ours[0].id])
        .collect();
    assert_eq!(s.deadline_state(many).await.unwrap().len(), 1);

    let counts = s.deadline_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![
            DeadlineCounts {
                peer: "alice".into(),
                overdue_out: 1,
                overdue_in: 1,
                unanswered_in: 3,
            },
            DeadlineCounts {
                peer: "bob".into(),
                ..DeadlineCounts::default()
            },
        ]
    );
    // Once the peer's DELIVERED receipt for it is stored, the candidate says so.
    s.commit(WriteBatch {
        delivered: vec![delivered("alice", ours[1].seq, ours[1].seq, 3_000)],
        ..WriteBatch::default()
    })
    .await
    .expect("commit");
    let state = s.deadline_state(vec![ours[1].id]).await.unwrap();
    assert!(state[0].delivered);
    let due = s.deadline_due(&group, None, 1).await.unwrap();
    assert_eq!(due[0].id, ours[1].id);
    assert!(due[0].delivered);
}

async fn glossary_terms_are_kept_per_peer_and_replaced_per_term(db: Db) {
    let term = |peer: &str, a: &str, b: &str, at: i64| detente_store::GlossaryRow {
        peer: peer.into(),
        lang_a: "en".into(),
        term_a: a.into(),
        lang_b: "zh-CN".into(),
        term_b: b.into(),
        added_at_ms: at,
    };
    let mut batch = WriteBatch::default();
    batch.glossary.push(term("beijing", "hotline", "热线", 1));
    batch.glossary.push(term("beijing", "launch", "发射", 2));
    batch
        .glossary
        .push(term("moscow", "hotline", "горячая линия", 3));
    db.store.commit(batch).await.expect("commit");
    let mut batch = WriteBatch::default();
    batch
        .glossary
        .push(term("beijing", "hotline", "直通电话", 4));
    db.store.commit(batch).await.expect("commit");
    let rows = db.store.glossary("beijing", 10).await.expect("list");
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.term_a.as_str(), r.term_b.as_str()))
        .collect();
    assert_eq!(got, vec![("launch", "发射"), ("hotline", "直通电话")]);
    assert_eq!(db.store.glossary("beijing", 1).await.unwrap().len(), 1);
    assert_eq!(db.store.glossary("nobody", 10).await.unwrap().len(), 0);
    // A term over the column's bound is refused by the database, and nothing is written.
    let mut batch = WriteBatch::default();
    batch
        .glossary
        .push(term("beijing", &"x".repeat(201), "长", 5));
    assert!(db.store.commit(batch).await.is_err());
    assert_eq!(db.store.glossary("beijing", 10).await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------
// The console's accounts, sessions and audit log (console.rs).

fn account(login: &str, role: &str) -> detente_store::console::UserRow {
    detente_store::console::UserRow {
        login: login.into(),
        role: role.into(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${login}"),
        lang: "en".into(),
        tz: String::new(),
        created_at_ms: 10,
    }
}

fn session(login: &str, n: u8, created_at_ms: i64) -> detente_store::console::SessionRow {
    detente_store::console::SessionRow {
        token_hash: [n; 32],
        login: login.into(),
        csrf: format!("csrf{n}"),
        created_at_ms,
        expires_at_ms: created_at_ms + 1_000,
    }
}

/// Accounts are created, replaced (ending their sessions) and listed by login; a role
/// outside the five is refused.
async fn console_accounts_are_created_replaced_and_listed(db: Db) {
    let s = &db.store;
    assert!(s.put_user(&account("zoe", "watch")).await.unwrap());
    assert!(s.put_user(&account("adam", "admin")).await.unwrap());
    s.create_session(&session("zoe", 1, 100)).await.unwrap();
    assert!(s.session([1; 32], 150).await.unwrap().is_some());
    // Replacing an account keeps its creation time and language, and ends its sessions.
    let mut changed = account("zoe", "supervisor");
    changed.created_at_ms = 99;
    assert!(!s.put_user(&changed).await.unwrap());
    let zoe = s.user("zoe").await.unwrap().expect("zoe");
    assert_eq!((zoe.role.as_str(), zoe.created_at_ms), ("supervisor", 10));
    assert!(s.session([1; 32], 150).await.unwrap().is_none());
    s.set_user_lang("zoe", "zh-CN").await.unwrap();
    assert_eq!(s.user("zoe").await.unwrap().unwrap().lang, "zh-CN");
    // An operator's time zone: kept per account, in the session's account too, and kept
    // when the account is replaced (as its language is).
    s.set_user_tz("zoe", "Asia/Shanghai").await.unwrap();
    assert_eq!(s.user("zoe").await.unwrap().unwrap().tz, "Asia/Shanghai");
    assert!(s.put_user(&account("zoe", "watch")).await.is_ok());
    assert_eq!(s.user("zoe").await.unwrap().unwrap().tz, "Asia/Shanghai");
    s.create_session(&session("zoe", 3, 100)).await.unwrap();
    let (_, user) = s.session([3; 32], 150).await.unwrap().expect("live");
    assert_eq!(user.tz, "Asia/Shanghai");
    assert_eq!(s.user("adam").await.unwrap().unwrap().tz, "", "the node's");
    let logins: Vec<String> = s
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.login)
        .collect();
    assert_eq!(logins, vec!["adam", "zoe"]);
    assert_eq!(s.user("nobody").await.unwrap(), None);
    assert!(s.put_user(&account("eve", "root")).await.is_err());
    assert_eq!(s.users().await.unwrap().len(), 2);
}

/// A session is found only before it expires, ends when deleted or when its account is
/// replaced, and a login keeps at most `SESSIONS_PER_LOGIN_MAX`, the newest.
async fn console_sessions_expire_and_are_bounded_per_login(db: Db) {
    use detente_store::console::SESSIONS_PER_LOGIN_MAX;
    let s = &db.store;
    s.put_user(&account("ann", "watch")).await.unwrap();
    s.create_session(&session("ann", 1, 100)).await.unwrap();
    let (found, user) = s.session([1; 32], 1_099).await.unwrap().expect("live");
    assert_eq!(found, session("ann", 1, 100));
    assert_eq!(user.login, "ann");
    assert!(
        s.session([1; 32], 1_100).await.unwrap().is_none(),
        "expired"
    );
    s.delete_session([1; 32]).await.unwrap();
    assert!(s.session([1; 32], 500).await.unwrap().is_none());
    // A session for an unknown login is refused (foreign key).
    assert!(s.create_session(&session("ghost", 2, 100)).await.is_err());
    let max = u8::try_from(SESSIONS_PER_LOGIN_MAX).unwrap();
    for n in 1..=max + 2 {
        s.create_session(&session("ann", n, 200 + i64::from(n)))
            .await
            .unwrap();
    }
    let now = 250;
    assert!(
        s.session([1; 32], now).await.unwrap().is_none(),
        "oldest dropped"
    );
    assert!(
        s.session([2; 32], now).await.unwrap().is_none(),
        "oldest dropped"
    );
    for n in 3..=max + 2 {
        assert!(
            s.session([n; 32], now).await.unwrap().is_some(),
            "session {n}"
        );
    }
    // Creating a session also drops every expired one.
    s.put_user(&account("bob", "watch")).await.unwrap();
    s.create_session(&session("bob", 200, 5_000)).await.unwrap();
    assert!(s.session([max + 2; 32], 1_000).await.unwrap().is_none());
}

/// The audit log lists the newest rows first, at most the limit asked.
async fn console_audit_lists_newest_first(db: Db) {
    let s = &db.store;
    for n in 0..5 {
        s.append_audit(&detente_store::console::AuditRow {
            at_ms: n,
            login: "ann".into(),
            action: format!("action {n}"),
            detail: "详细".into(),
            source: "127.0.0.1".into(),
        })
        .await
        .unwrap();
    }
    let rows = s.audit(3).await.unwrap();
    let at: Vec<i64> = rows.iter().map(|r| r.at_ms).collect();
    assert_eq!(at, vec![4, 3, 2]);
    assert_eq!(rows[0].detail, "详细");
    assert_eq!(s.audit(100).await.unwrap().len(), 5);
}

/// Instantiate each test for both stores: `sqlite::NAME` and `postgres::NAME`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Db::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = super::Db::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(db).await;
                }
            )*
        }
    };
}

async fn console_replies_are_found_by_the_message_they_answer(db: Db) {
    let question = msg("alice", Direction::In, 1, 1_000);
    let of = question.id;
    let mut batch = WriteBatch::default();
    batch.messages.push(question);
    for seq in 1..=3u64 {
        let mut answer = msg("alice", Direction::Out, seq, 2_000 + seq as i64);
        answer.in_reply_to = Some(of);
        batch.messages.push(answer);
    }
    let mut unrelated = msg("alice", Direction::Out, 4, 3_000);
    unrelated.in_reply_to = Some([0x77; 32]);
    batch.messages.push(unrelated);
    db.store.commit(batch).await.unwrap();
    let seqs: Vec<u64> = db
        .store
        .replies(of, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3], "oldest first, only the answers");
    assert_eq!(db.store.replies(of, 2).await.unwrap().len(), 2);
    assert!(db.store.replies([0x55; 32], 10).await.unwrap().is_empty());
}

async fn console_search_finds_terms_in_both_languages_and_pages(db: Db) {
    let bodies = [
        "Missile LAUNCH notification · 导弹发射通知",
        "Maritime encounter near the strait · 海上相遇",
        "100% certain_ly a test",
        "Routine report",
    ];
    let mut batch = WriteBatch::default();
    for seq in 1..=4u64 {
        batch
            .messages
            .push(msg("alice", Direction::In, seq, 1_000 * seq as i64));
    }
    // A receipt-kind row is never a search candidate.
    let mut receipt = msg("alice", Direction::Out, 9, 9_000);
    receipt.kind = 1;
    batch.messages.push(receipt);
    db.store.commit(batch).await.unwrap();

    // Not indexed yet: every text, newest first; nothing else.
    let pending: Vec<u64> = db
        .store
        .search_pending(10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(pending, vec![4, 3, 2, 1]);
    assert_eq!(db.store.search_pending(2).await.unwrap().len(), 2);
    let rows: Vec<(Hash32, String)> = (1..=4u64)
        .map(|seq| (id(0x11, seq), bodies[seq as usize - 1].to_string()))
        .collect();
    db.store.put_search(rows.clone()).await.unwrap();
    // Indexing again keeps what is there.
    db.store
        .put_search(vec![(id(0x11, 1), "replaced".into())])
        .await
        .unwrap();
    assert!(db.store.search_pending(10).await.unwrap().is_empty());

    let find = |terms: &[&str], before: Option<(i64, Hash32, u64)>, limit: u32| {
        let store = &db.store;
        let q = detente_store::TimelineQuery {
            text: terms.iter().map(|t| t.to_string()).collect(),
            before,
            limit,
            ..Default::default()
        };
        async move {
            store
                .timeline(q)
                .await
                .unwrap()
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(
        find(&["launch"], None, 50).await,
        vec![1],
        "case-insensitive"
    );
    assert_eq!(find(&["aunc"], None, 50).await, vec![1], "part of a word");
    assert_eq!(
        find(&["发射通知"], None, 50).await,
        vec![1],
        "Chinese, three characters or more"
    );
    assert_eq!(
        find(&["导弹"], None, 50).await,
        vec![1],
        "Chinese, two characters"
    );
    assert_eq!(find(&["海"], None, 50).await, vec![2], "one character");
    assert_eq!(
        find(&["missile", "海上"], None, 50).await,
        Vec::<u64>::new(),
        "every term"
    );
    assert_eq!(find(&["encounter", "海上"], None, 50).await, vec![2]);
    assert_eq!(find(&["replaced"], None, 50).await, Vec::<u64>::new());
    // Wildcards are text: "%" and "_" match only themselves.
    assert_eq!(find(&["0%"], None, 50).await, vec![3]);
    assert_eq!(find(&["t_s"], None, 50).await, Vec::<u64>::new());
    assert_eq!(find(&["_e"], None, 50).await, Vec::<u64>::new());
    assert_eq!(find(&["n_ly"], None, 50).await, vec![3]);
    // A quote in a term is text, not FTS syntax.
    assert_eq!(find(&["\"launch"], None, 50).await, Vec::<u64>::new());
    // Paged like the timeline: newest first, from the cursor on.
    assert_eq!(find(&["i"], None, 50).await, vec![4, 3, 2, 1]);
    assert_eq!(find(&["i"], None, 2).await, vec![4, 3]);
    let cursor = Some((3_000, ALICE, 3));
    assert_eq!(find(&["i"], cursor, 2).await, vec![2, 1]);
}

/// An idempotency record commits with its messages or not at all, round-trips, is replaced
/// for the same scope and key, is counted per scope, and is pruned a bounded number at a
/// time, oldest first.
async fn idempotency_keys_commit_with_their_messages_and_expire(db: Db) {
    let s = &db.store;
    let record = |scope: &str, key: &str, at: i64, seqs: &[u64]| IdempotencyRow {
        scope: scope.into(),
        key: key.into(),
        fingerprint: [at as u8; 32],
        created_at_ms: at,
        sent: seqs
            .iter()
            .map(|&seq| SentRecord {
                id: id(0x10, seq),
                seq,
                precedence: 3,
            })
            .collect(),
    };
    // All or nothing: a batch refused for a duplicate message leaves no key either.
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 1, 3);
    send(&mut batch, "alice", 2, 3);
    batch.messages[1].id = batch.messages[0].id;
    batch
        .idempotency
        .push(record("api-token", "k1", 1_000, &[1, 2]));
    assert!(s.commit(batch).await.is_err());
    assert_eq!(s.idempotency("api-token", "k1").await.unwrap(), None);
    assert_eq!(s.message_count().await.unwrap(), 0);

    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 1, 3);
    send(&mut batch, "alice", 2, 3);
    let k1 = record("api-token", "k1", 1_000, &[1, 2]);
    batch.idempotency.push(k1.clone());
    s.commit(batch).await.unwrap();
    assert_eq!(s.idempotency("api-token", "k1").await.unwrap(), Some(k1));
    assert_eq!(s.message_count().await.unwrap(), 2);
    // Scoped: another caller's key of the same text is another record.
    assert_eq!(s.idempotency("operator:duty", "k1").await.unwrap(), None);

    // The same scope and key again replaces the record (an expired one is reused).
    let k1b = record("api-token", "k1", 5_000, &[3]);
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 3, 3);
    batch.idempotency.push(k1b.clone());
    s.commit(batch).await.unwrap();
    assert_eq!(s.idempotency("api-token", "k1").await.unwrap(), Some(k1b));

    // Many keys; counted per scope and from a time on, up to a limit.
    let total = u64::from(IDEMPOTENCY_PRUNE_ROWS_MAX) + 10;
    let mut batch = WriteBatch::default();
    for n in 0..total {
        let at = 10_000 + n as i64;
        batch
            .idempotency
            .push(record("operator:duty", &format!("m{n}"), at, &[]));
    }
    s.commit(batch).await.unwrap();
    let count = |since: i64, limit: u32| s.idempotency_count("operator:duty", since, limit);
    assert_eq!(count(0, 1_000).await.unwrap(), total);
    assert_eq!(count(0, 5).await.unwrap(), 5);
    assert_eq!(count(10_000 + total as i64 - 3, 1_000).await.unwrap(), 3);
    assert_eq!(s.idempotency_count("api-token", 0, 1_000).await.unwrap(), 1);

    // Pruning forgets at most IDEMPOTENCY_PRUNE_ROWS_MAX keys per commit, oldest first, and
    // only those created before the cut.
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 4, 3);
    batch.idempotency_expired_before_ms = Some(i64::MAX);
    s.commit(batch).await.unwrap();
    let left =
        count(0, 1_000).await.unwrap() + s.idempotency_count("api-token", 0, 9).await.unwrap();
    assert_eq!(left, total + 1 - u64::from(IDEMPOTENCY_PRUNE_ROWS_MAX));
    assert_eq!(
        s.idempotency("api-token", "k1").await.unwrap(),
        None,
        "the oldest went first"
    );
    let mut batch = WriteBatch::default();
    send(&mut batch, "alice", 5, 3);
    batch.idempotency_expired_before_ms = Some(10_000 + total as i64 - 2);
    s.commit(batch).await.unwrap();
    assert_eq!(count(0, 1_000).await.unwrap(), 2, "the newest two are kept");
    let newest = format!("m{}", total - 1);
    assert!(s
        .idempotency("operator:duty", &newest)
        .await
        .unwrap()
        .is_some());
    drop(db.reopen().await);
}

conformance!(
    every_row_type_round_trips,
    outbox_pending_returns_the_message_bytes,
    empty_batch_is_ok,
    a_duplicate_id_fails_the_whole_batch,
    a_duplicate_position_fails_the_whole_batch,
    a_duplicate_within_one_batch_fails_it,
    a_duplicate_in_a_late_chunk_rolls_back_earlier_chunks,
    large_batches_are_written_completely,
    out_of_range_numbers_are_refused_before_writing,
    promote_appends_held_messages,
    a_discarded_held_row_makes_room_for_the_one_that_follows,
    streams_are_replaced,
    delivered_and_prune_are_idempotent,
    a_delivered_range_covers_every_seq_in_it,
    the_first_receipt_per_level_wins,
    delivered_receipts_only_record,
    inbox_orders_limits_and_filters,
    inbox_limit_zero_means_the_default_of_1000,
    outbox_pending_orders_and_filters,
    everything_survives_close_and_reopen,
    reads_proceed_while_a_commit_is_in_flight,
    tree_nodes_commit_with_their_message_and_survive_reopening,
    low_tree_levels_are_recomputed_from_the_appended_envelopes,
    checkpoints_merge_signatures_and_witness_and_evidence_persist,
    checkpoints_are_read_a_bounded_page_at_a_time,
    messages_of_kind_lists_one_peer_both_directions_newest_kept,
    deadline_misses_and_candidates,
    deadline_groups_read_in_due_order_from_a_cursor,
    glossary_terms_are_kept_per_peer_and_replaced_per_term,
    console_accounts_are_created_replaced_and_listed,
    console_sessions_expire_and_are_bounded_per_login,
    console_audit_lists_newest_first,
    console_replies_are_found_by_the_message_they_answer,
    console_search_finds_terms_in_both_languages_and_pages,
    idempotency_keys_commit_with_their_messages_and_expire,
);
