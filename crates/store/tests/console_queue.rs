//! The console's store queries against a real SQLite file: the unanswered index (kept by the
//! store's own triggers) counts deadlines from where the deadline watch counts them, and the
//! timeline pages through a whole channel with filters.

use detente_store::{
    Direction, Hash32, MessageRow, Placement, ReceiptLevel, ReceiptRow, SqliteStore, Store,
    TimelineQuery, WriteBatch,
};

const CHANNEL: Hash32 = [0xa0; 32];
const ME: Hash32 = [0x01; 32];
const PEER: Hash32 = [0x02; 32];

fn id(direction: Direction, seq: u64) -> Hash32 {
    let mut h = [if direction == Direction::In {
        0x11
    } else {
        0x10
    }; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h
}

fn msg(direction: Direction, seq: u64, precedence: u8, created: i64, stored: i64) -> MessageRow {
    MessageRow {
        id: id(direction, seq),
        channel: CHANNEL,
        sender: if direction == Direction::In { PEER } else { ME },
        seq,
        peer: "beijing".into(),
        direction,
        precedence,
        topic: if seq.is_multiple_of(2) { "even" } else { "odd" }.into(),
        kind: 0,
        created_at_ms: created,
        stored_at_ms: stored,
        in_reply_to: None,
        placement: Placement::Appended,
        bytes: format!("envelope {direction:?} {seq}").into_bytes(),
    }
}

fn receipt(of: Hash32, level: ReceiptLevel, n: u8) -> ReceiptRow {
    ReceiptRow {
        of,
        level,
        at_ms: 5_000,
        receipt_id: [n; 32],
        note: None,
    }
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("detente.db"))
        .await
        .unwrap();
    (dir, store)
}

#[tokio::test]
async fn unanswered_counts_from_our_clock_and_leaves_on_an_answer() {
    let (_dir, store) = open().await;
    let mut batch = WriteBatch::default();
    // A peer back-dates its FLASH to 1970: its deadline still counts from when we stored it.
    batch.messages.push(msg(Direction::In, 1, 0, 0, 1_000_000));
    batch
        .messages
        .push(msg(Direction::In, 2, 0, 900_000, 1_000_100));
    batch
        .messages
        .push(msg(Direction::Out, 1, 0, 999_000, 999_001));
    let mut test = msg(Direction::Out, 2, 0, 999_500, 999_501);
    test.kind = 2; // a link test owes no answer
    batch.messages.push(test);
    store.commit(batch).await.unwrap();

    let rows = store.unanswered("beijing", 0, 10).await.unwrap();
    let starts: Vec<(Direction, i64)> = rows.iter().map(|r| (r.direction, r.start_ms)).collect();
    assert_eq!(
        starts,
        vec![
            (Direction::Out, 999_000),
            (Direction::In, 1_000_000),
            (Direction::In, 1_000_100)
        ],
        "ours from created_at, theirs from stored_at, earliest first"
    );
    assert!(store.unanswered("beijing", 3, 10).await.unwrap().is_empty());
    assert!(store.unanswered("nobody", 0, 10).await.unwrap().is_empty());

    // READ is not an answer; ACKNOWLEDGED and DECLINED are.
    let batch = WriteBatch {
        receipts: vec![
            receipt(id(Direction::In, 1), ReceiptLevel::Read, 1),
            receipt(id(Direction::In, 2), ReceiptLevel::Declined, 2),
            receipt(id(Direction::Out, 1), ReceiptLevel::Acknowledged, 3),
        ],
        ..Default::default()
    };
    store.commit(batch).await.unwrap();
    let rows = store.unanswered("beijing", 0, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, id(Direction::In, 1));
    let counts = store.unanswered_counts().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].direction, counts[0].precedence, counts[0].count),
        (Direction::In, 0, 1)
    );
}

#[tokio::test]
async fn the_timeline_pages_through_everything_with_filters() {
    let (_dir, store) = open().await;
    let mut batch = WriteBatch::default();
    for seq in 1..=120u64 {
        let t = 10_000 + seq as i64 * 10;
        let precedence = if seq == 7 { 0 } else { 3 };
        batch
            .messages
            .push(msg(Direction::In, seq, precedence, t, t + 1));
        batch
            .messages
            .push(msg(Direction::Out, seq, 3, t + 5, t + 6));
    }
    batch
        .receipts
        .push(receipt(id(Direction::In, 3), ReceiptLevel::Acknowledged, 9));
    store.commit(batch).await.unwrap();

    // Pages of 50, newest first, with no gap and no repeat.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .timeline(TimelineQuery {
                before,
                limit: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        before = Some((last.created_at_ms, last.sender, last.seq));
        seen.extend(page.into_iter().map(|m| m.created_at_ms));
    }
    assert_eq!(seen.len(), 240);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeat"
    );

    let only = |q: TimelineQuery| {
        let store = &store;
        async move { store.timeline(q).await.unwrap() }
    };
    let flash = only(TimelineQuery {
        precedence: Some(0),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(flash.len(), 1);
    assert_eq!(flash[0].seq, 7);
    let answered = only(TimelineQuery {
        answered: Some(true),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].id, id(Direction::In, 3));
    let unanswered_in = only(TimelineQuery {
        answered: Some(false),
        direction: Some(Direction::In),
        topic: Some("odd".into()),
        limit: 500,
        ..Default::default()
    })
    .await;
    assert_eq!(
        unanswered_in.len(),
        59,
        "60 odd received, one of them answered"
    );
    assert!(unanswered_in
        .iter()
        .all(|m| m.direction == Direction::In && m.seq % 2 == 1 && m.seq != 3));
}

#[tokio::test]
async fn replies_are_found_by_the_message_they_answer() {
    let (_dir, store) = open().await;
    let mut batch = WriteBatch::default();
    let asked = msg(Direction::In, 1, 3, 1_000, 1_001);
    let question = asked.id;
    batch.messages.push(asked);
    for seq in 1..=3u64 {
        let mut answer = msg(
            Direction::Out,
            seq,
            3,
            2_000 + seq as i64,
            2_001 + seq as i64,
        );
        answer.in_reply_to = Some(question);
        batch.messages.push(answer);
    }
    let mut unrelated = msg(Direction::Out, 4, 3, 3_000, 3_001);
    unrelated.in_reply_to = Some([0x77; 32]);
    batch.messages.push(unrelated);
    store.commit(batch).await.unwrap();
    let replies = store.replies(question, 10).await.unwrap();
    let seqs: Vec<u64> = replies.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "oldest first, only the answers");
    assert_eq!(store.replies(question, 2).await.unwrap().len(), 2);
    assert!(store.replies([0x55; 32], 10).await.unwrap().is_empty());
}
