//! The core recovers from a real SQLite store as it recovers from its own state: two cores
//! back to back in memory, every batch committed to a real store file, then a core loaded
//! from each file (`snapshot::load`) must continue exactly where the live one is (the same
//! next envelope, byte for byte; the same open deadlines, checkpoints and held envelopes);
//! and a tampered row is named while its stream goes on.

mod common;
use common::{core_config, peer_keys, NAMES, SEEDS};

use std::time::{Duration, Instant};

use detente_core::{Answer, Command, CommandError, Core, Event, Input, Outgoing};
use detente_node::snapshot::{self, LoadError};
use detente_proto::envelope::parse_unverified;
use detente_proto::{Body, Frame, PartySecret, Precedence, ReceiptLevel, TextBody};
use detente_store::{GlossaryRow, SqliteStore, Store};

const WALL_MS: i64 = 1_800_000_000_000;

struct Pair {
    cores: [Core; 2],
    stores: [SqliteStore; 2],
    _dir: tempfile::TempDir,
    base: Instant,
    now_ms: u64,
    /// Frames in flight, per receiving side.
    wire: [Vec<Vec<u8>>; 2],
    ticket: u64,
}

impl Pair {
    async fn new() -> Pair {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = |name: &str| {
            let path = dir.path().join(format!("{name}.sqlite"));
            async move { SqliteStore::open(&path).await.expect("store") }
        };
        let stores = [open(NAMES[0]).await, open(NAMES[1]).await];
        let base = Instant::now();
        Pair {
            cores: [0, 1].map(|i| Core::new(core_config(i), base, WALL_MS)),
            stores,
            _dir: dir,
            base,
            now_ms: 0,
            wire: [Vec::new(), Vec::new()],
            ticket: 0,
        }
    }

    fn input(&mut self, side: usize, input: Input) {
        let now = self.base + Duration::from_millis(self.now_ms);
        self.cores[side].handle(now, WALL_MS + self.now_ms as i64, input);
    }

    /// Commit what `side` has to commit; take its frames onto the wire.
    async fn drain(&mut self, side: usize) {
        for _ in 0..1_000 {
            let mut moved = false;
            // As the driver does: deadline queries before the next commit.
            let now = self.base + Duration::from_millis(self.now_ms);
            let wall = WALL_MS + self.now_ms as i64;
            moved |= answer_queries(&mut self.cores[side], &self.stores[side], now, wall).await;
            if let Some((batch, rows)) = self.cores[side].poll_commit() {
                self.stores[side].commit(rows).await.expect("commit");
                self.input(side, Input::Committed { batch });
                moved = true;
            }
            while let Some((_, frame)) = self.cores[side].poll_transmit() {
                let mut bytes = Vec::new();
                frame.encode(&mut bytes);
                self.wire[1 - side].push(bytes[4..].to_vec());
                moved = true;
            }
            while self.cores[side].poll_event().is_some() {}
            if !moved {
                return;
            }
        }
        panic!("side {side} did not settle");
    }

    /// Deliver every frame on the wire to `side`, except those `keep` says to hold back.
    async fn deliver(&mut self, side: usize, keep: impl Fn(&[u8]) -> bool) {
        let frames = std::mem::take(&mut self.wire[side]);
        for bytes in frames {
            if keep(&bytes) {
                self.wire[side].push(bytes);
                continue;
            }
            self.input(side, Input::Frame { session: 1, bytes });
        }
        self.drain(side).await;
    }

    async fn settle(&mut self) {
        for _ in 0..100 {
            self.drain(0).await;
            self.drain(1).await;
            if self.wire.iter().all(Vec::is_empty) {
                return;
            }
            self.deliver(0, |_| false).await;
            self.deliver(1, |_| false).await;
        }
        panic!("the pair did not settle");
    }

    fn operate(&mut self, side: usize, command: Command) {
        self.ticket += 1;
        let ticket = self.ticket;
        self.input(side, Input::Operator { ticket, command });
    }

    fn send(&mut self, side: usize, precedence: Precedence, text: &str) {
        self.operate(
            side,
            Command::Send(Outgoing {
                peer: NAMES[1 - side].into(),
                precedence,
                topic: "border".into(),
                author: "Watch Officer".into(),
                body: Body::Text(TextBody {
                    language: "en".into(),
                    text: text.into(),
                    translations: Vec::new(),
                }),
                in_reply_to: None,
            }),
        );
    }

    fn connect(&mut self) {
        for side in 0..2 {
            let peer = NAMES[1 - side].to_string();
            let dialed_by_us = side == 0;
            self.input(
                side,
                Input::SessionOpened {
                    peer,
                    session: 1,
                    dialed_by_us,
                },
            );
        }
    }
}

/// The core loaded from `side`'s store file.
async fn reload(pair: &Pair, side: usize) -> Result<Core, LoadError> {
    let me = PartySecret::from_seed(SEEDS[side]).public();
    let snap = snapshot::load(&pair.stores[side], &me, &peer_keys(side))
        .await?
        .snapshot;
    let now = pair.base + Duration::from_millis(pair.now_ms);
    let wall = WALL_MS + pair.now_ms as i64;
    let mut core = Core::recover(core_config(side), snap, now, wall).expect("recovers");
    // Its open deadlines come from the store, as the driver reads them.
    answer_queries(&mut core, &pair.stores[side], now, wall).await;
    Ok(core)
}

/// Answer the core's deadline queries from `store`, as the driver does, until it asks no
/// more; whether it asked any.
async fn answer_queries(core: &mut Core, store: &SqliteStore, now: Instant, wall: i64) -> bool {
    let mut asked_any = false;
    while let Some((query, asked)) = core.poll_query() {
        asked_any = true;
        let rows = detente_node::driver::deadline_rows(store, asked)
            .await
            .map_err(|e| e.to_string());
        core.handle(now, wall, Input::DeadlineRows { query, rows });
    }
    asked_any
}

/// The batch a core stages for one more text, as the live core and a reloaded one would.
fn next_batch(core: &mut Core, now: Instant, side: usize) -> Vec<Vec<u8>> {
    let command = Command::Send(Outgoing {
        peer: NAMES[1 - side].into(),
        precedence: Precedence::Routine,
        topic: "border".into(),
        author: "Watch Officer".into(),
        body: Body::Text(TextBody {
            language: "en".into(),
            text: "after the restart".into(),
            translations: Vec::new(),
        }),
        in_reply_to: None,
    });
    core.handle(
        now,
        WALL_MS,
        Input::Operator {
            ticket: 999,
            command,
        },
    );
    let (_, batch) = core.poll_commit().expect("a batch");
    batch.messages.into_iter().map(|m| m.bytes).collect()
}

fn is_envelope_seq(bytes: &[u8], seq: u64) -> bool {
    matches!(Frame::decode(bytes), Ok(Frame::Envelope(b)) if parse_unverified(&b).is_ok_and(|e| e.seq == seq))
}

#[tokio::test]
async fn a_core_loaded_from_the_store_continues_where_the_live_one_is() {
    let mut pair = Pair::new().await;
    for n in 0..5 {
        pair.send(0, Precedence::Routine, &format!("routine {n}"));
        pair.send(1, Precedence::Priority, &format!("priority {n}"));
    }
    pair.operate(
        0,
        Command::Glossary {
            row: GlossaryRow {
                peer: "beijing".into(),
                lang_a: "en".into(),
                term_a: "ceasefire".into(),
                lang_b: "zh-CN".into(),
                term_b: "停火".into(),
                added_at_ms: 0,
            },
        },
    );
    pair.drain(0).await;
    pair.drain(1).await;
    pair.connect();
    pair.settle().await;
    // Washington acknowledges Beijing's first message; a checkpoint covers both streams.
    let first = pair.stores[0]
        .stream_envelopes(
            detente_proto::ChannelId::for_pair(
                &PartySecret::from_seed(SEEDS[0]).public(),
                &PartySecret::from_seed(SEEDS[1]).public(),
            )
            .0,
            *PartySecret::from_seed(SEEDS[1]).public().as_bytes(),
            0,
            1,
        )
        .await
        .expect("read");
    let of = detente_proto::envelope::message_id(&first[0].1);
    pair.operate(
        0,
        Command::Answer {
            peer: "beijing".into(),
            of,
            level: ReceiptLevel::Acknowledged,
            note: Some("understood".into()),
        },
    );
    pair.operate(
        0,
        Command::Checkpoint {
            peer: "beijing".into(),
        },
    );
    pair.settle().await;
    // A FLASH that overtakes a ROUTINE is held at Beijing while the ROUTINE is kept back.
    pair.send(0, Precedence::Routine, "slow");
    pair.send(0, Precedence::Flash, "fast");
    pair.drain(0).await;
    let slow = {
        let frames = &pair.wire[1];
        frames
            .iter()
            .filter_map(|b| match Frame::decode(b) {
                Ok(Frame::Envelope(e)) => parse_unverified(&e).ok().map(|e| e.seq),
                _ => None,
            })
            .min()
            .expect("two envelopes on the wire")
    };
    pair.deliver(1, |b| is_envelope_seq(b, slow)).await;
    assert!(
        !pair.cores[0].checkpoints("beijing").is_empty(),
        "a checkpoint was made"
    );
    // The loader keeps the bytes of our envelopes still to send and of the latest charters,
    // and of nothing else: the rest of each stream is its index.
    let me = PartySecret::from_seed(SEEDS[0]).public();
    let loaded = snapshot::load(&pair.stores[0], &me, &peer_keys(0))
        .await
        .expect("loads");
    let mut kept: Vec<u64> = loaded
        .snapshot
        .streams
        .iter()
        .filter(|s| s.sender == *me.as_bytes())
        .flat_map(|s| s.envelopes.iter().filter(|e| e.bytes.is_some()))
        .filter(|e| e.kind != detente_proto::envelope::KIND_CHARTER)
        .map(|e| e.seq)
        .collect();
    let mut to_send: Vec<u64> = loaded.snapshot.outbox.iter().map(|o| o.seq).collect();
    kept.sort_unstable();
    to_send.sort_unstable();
    assert!(
        !to_send.is_empty(),
        "the FLASH and the ROUTINE are still to send"
    );
    assert_eq!(kept, to_send);
    let theirs_kept = loaded
        .snapshot
        .streams
        .iter()
        .filter(|s| s.sender != *me.as_bytes())
        .flat_map(|s| &s.envelopes)
        .filter(|e| e.bytes.is_some() && e.kind != detente_proto::envelope::KIND_CHARTER)
        .count();
    assert_eq!(
        theirs_kept, 0,
        "no other bytes of the peer's stream are held"
    );

    for side in 0..2 {
        let mut reloaded = reload(&pair, side).await.expect("loads");
        assert_eq!(
            reloaded.open_deadlines(),
            pair.cores[side].open_deadlines(),
            "side {side}"
        );
        assert_eq!(
            reloaded.checkpoints(NAMES[1 - side]),
            pair.cores[side].checkpoints(NAMES[1 - side]),
            "side {side}"
        );
        let now = pair.base + Duration::from_millis(pair.now_ms);
        let live = next_batch(&mut pair.cores[side], now, side);
        let again = next_batch(&mut reloaded, now, side);
        assert_eq!(
            again, live,
            "side {side}: the same next envelope, byte for byte"
        );
    }
    // The held FLASH is appended at Beijing's reloaded core once the ROUTINE arrives.
    let mut reloaded = reload(&pair, 1).await.expect("loads");
    let now = pair.base + Duration::from_millis(pair.now_ms);
    reloaded.handle(
        now,
        WALL_MS,
        Input::SessionOpened {
            peer: "washington".into(),
            session: 2,
            dialed_by_us: false,
        },
    );
    for bytes in std::mem::take(&mut pair.wire[1]) {
        reloaded.handle(now, WALL_MS, Input::Frame { session: 2, bytes });
    }
    let (_, batch) = reloaded.poll_commit().expect("a batch");
    assert_eq!(batch.promote.len(), 1, "the held FLASH is promoted");
}

/// Flip one bit inside the signature of Washington's copy of Beijing's envelope `seq`.
async fn tamper(pair: &Pair, seq: i64) {
    let path = pair._dir.path().join("washington.sqlite");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    let query = "SELECT bytes FROM messages WHERE direction = 1 AND seq = ?";
    let mut bytes: Vec<u8> = sqlx::query_scalar(query)
        .bind(seq)
        .fetch_one(&pool)
        .await
        .expect("row");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    sqlx::query("UPDATE messages SET bytes = ? WHERE direction = 1 AND seq = ?")
        .bind(bytes)
        .bind(seq)
        .execute(&pool)
        .await
        .expect("update");
    pool.close().await;
}

/// What the core answers an operator's checkpoint of the channel with Beijing now.
fn checkpoint_now(core: &mut Core, now: Instant) -> Result<Answer, CommandError> {
    let command = Command::Checkpoint {
        peer: "beijing".into(),
    };
    core.handle(
        now,
        WALL_MS,
        Input::Operator {
            ticket: 998,
            command,
        },
    );
    while let Some((batch, _)) = core.poll_commit() {
        core.handle(now, WALL_MS, Input::Committed { batch });
    }
    std::iter::from_fn(|| core.poll_event())
        .find_map(|e| match e {
            Event::Answer {
                ticket: 998,
                result,
            } => Some(result),
            _ => None,
        })
        .expect("an answer")
}

/// Issue 12, item 2, on the core: an altered row used to refuse the start. Now it is named
/// (the head by its signature, a row below by the hash chain) and keeps its place, so the
/// node goes on: our next envelope is the same, byte for byte, as from the intact record.
/// No checkpoint is signed over the damaged record.
#[tokio::test]
async fn a_tampered_row_is_named_and_its_stream_goes_on() {
    let mut pair = Pair::new().await;
    for n in 0..3 {
        pair.send(1, Precedence::Routine, &format!("text {n}"));
    }
    pair.connect();
    pair.settle().await;
    let now = pair.base + Duration::from_millis(pair.now_ms);
    let intact = next_batch(&mut reload(&pair, 0).await.expect("loads"), now, 0);
    let me = PartySecret::from_seed(SEEDS[0]).public();
    let keys = peer_keys(0);
    let load = || snapshot::load(&pair.stores[0], &me, &keys);
    let last = load()
        .await
        .expect("loads")
        .snapshot
        .streams
        .iter()
        .filter(|s| {
            keys.iter()
                .any(|k| k.name == "beijing" && s.sender == *k.key.as_bytes())
        })
        .flat_map(|s| s.envelopes.iter().map(|m| m.seq as i64))
        .max()
        .expect("received");
    for (seq, why) in [
        (last, "signature does not verify"),
        (last - 1, "not those the next envelope signs"),
    ] {
        tamper(&pair, seq).await;
        let loaded = load().await.expect("an altered row does not stop the load");
        let named: Vec<_> = loaded
            .tampered
            .iter()
            .map(|t| (t.peer.as_str(), t.direction, t.seq))
            .collect();
        assert_eq!(named, [("beijing", "theirs", seq as u64)]);
        assert!(
            loaded.tampered[0].what.contains(why),
            "{:?}",
            loaded.tampered
        );
        let wall = WALL_MS + pair.now_ms as i64;
        let mut core = Core::recover(core_config(0), loaded.snapshot, now, wall)
            .expect("the stream goes on past the altered row");
        answer_queries(&mut core, &pair.stores[0], now, wall).await;
        match checkpoint_now(&mut core, now) {
            Err(CommandError::Invalid(why)) => assert!(why.contains("damaged"), "{why}"),
            other => panic!("a checkpoint over a damaged record: {other:?}"),
        }
        assert_eq!(
            next_batch(&mut core, now, 0),
            intact,
            "the same next envelope"
        );
        tamper(&pair, seq).await; // restored
        assert!(load().await.expect("loads").tampered.is_empty());
    }
}

/// Issue 12, item 14, on the core: a start reads the newest checkpoints the core keeps,
/// not the channel's whole list, and the loaded core holds the same ones as the live one.
#[tokio::test]
async fn a_start_reads_only_the_newest_checkpoints() {
    let mut pair = Pair::new().await;
    pair.connect();
    let made = detente_core::CHECKPOINTS_KEPT_MAX + 6;
    for n in 0..made {
        pair.send(0, Precedence::Routine, &format!("routine {n}"));
        pair.settle().await;
        pair.operate(
            0,
            Command::Checkpoint {
                peer: "beijing".into(),
            },
        );
        pair.settle().await;
    }
    let me = PartySecret::from_seed(SEEDS[0]).public();
    let channel =
        detente_proto::ChannelId::for_pair(&me, &PartySecret::from_seed(SEEDS[1]).public());
    let span = pair.stores[0]
        .checkpoint_span(channel.0)
        .await
        .expect("span");
    assert!(
        span.count as usize >= made,
        "{} checkpoints stored, {made} made",
        span.count
    );
    let loaded = snapshot::load(&pair.stores[0], &me, &peer_keys(0))
        .await
        .expect("loads");
    assert_eq!(
        loaded.snapshot.checkpoints.len(),
        detente_core::CHECKPOINTS_KEPT_MAX
    );
    let ids: Vec<i64> = loaded.snapshot.checkpoints.iter().map(|c| c.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert_eq!(
        ids.last().copied(),
        Some(span.last_id),
        "the newest is read"
    );
    let reloaded = reload(&pair, 0).await.expect("loads");
    assert_eq!(
        reloaded.checkpoints("beijing"),
        pair.cores[0].checkpoints("beijing")
    );
}
