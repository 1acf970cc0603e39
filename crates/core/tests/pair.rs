//! Two cores wired back to back in memory (after quinn-proto's `Pair`): virtual time, an
//! instant commit, frames moved by hand. Deterministic scenarios the simulation also
//! explores at random, pinned down here so that a regression names itself.

use std::time::{Duration, Instant};

use detente_core::{Answer, Command, Config, Core, Event, Input, Outgoing, PeerConfig};
use detente_proto::envelope::parse_unverified;
use detente_proto::{Body, Deadlines, Frame, LinkConfig, PartySecret, Precedence, TextBody};

struct Pair {
    cores: [Core; 2],
    names: [&'static str; 2],
    base: Instant,
    now_ms: u64,
    session: Option<u64>,
    /// Envelope frames each side sent: (precedence, seq).
    sent: [Vec<(Precedence, u64)>; 2],
    /// The last envelope each side sent: (seq, id).
    last: [Option<(u64, detente_proto::MessageId)>; 2],
    answers: Vec<(usize, u64, Answer)>,
    /// Charters each side sent, in order.
    charters: [Vec<detente_proto::Charter>; 2],
    /// `CharterRefused` events of each side: the refused term names.
    refusals: [Vec<Vec<&'static str>>; 2],
}

fn config(i: usize, seeds: [[u8; 32]; 2], names: [&str; 2]) -> Config {
    let other = 1 - i;
    Config {
        name: names[i].into(),
        author: "Duty Officer".into(),
        secret_seed: seeds[i],
        peers: vec![PeerConfig {
            name: names[other].into(),
            key: PartySecret::from_seed(seeds[other]).public(),
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

impl Pair {
    fn new() -> Pair {
        let seeds = [[1; 32], [2; 32]];
        let names = ["washington", "beijing"];
        let base = Instant::now();
        let cores = [0, 1].map(|i| Core::new(config(i, seeds, names), base, 0));
        Pair {
            cores,
            names,
            base,
            now_ms: 0,
            session: None,
            sent: [Vec::new(), Vec::new()],
            last: [None, None],
            answers: Vec::new(),
            charters: [Vec::new(), Vec::new()],
            refusals: [Vec::new(), Vec::new()],
        }
    }

    fn input(&mut self, side: usize, input: Input) {
        let now = self.base + Duration::from_millis(self.now_ms);
        self.cores[side].handle(now, 1_800_000_000_000 + self.now_ms as i64, input);
    }

    /// Drain both cores until nothing moves: commit every batch at once, deliver frames.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for side in 0..2 {
                while let Some((batch, _rows)) = self.cores[side].poll_commit() {
                    self.input(side, Input::Committed { batch });
                    moved = true;
                }
                while let Some((session, frame)) = self.cores[side].poll_transmit() {
                    moved = true;
                    if Some(session) != self.session {
                        continue;
                    }
                    if let Frame::Envelope(bytes) = &frame {
                        let e = parse_unverified(bytes).expect("our envelopes parse");
                        self.sent[side].push((e.precedence, e.seq));
                        if let Body::Charter(c) = &e.body {
                            self.charters[side].push(c.clone());
                        }
                        let id = detente_proto::envelope::message_id(bytes);
                        self.last[side] = Some((e.seq, id));
                    }
                    let mut bytes = Vec::new();
                    frame.encode(&mut bytes);
                    self.input(
                        1 - side,
                        Input::Frame {
                            session,
                            bytes: bytes[4..].to_vec(),
                        },
                    );
                }
                while let Some(event) = self.cores[side].poll_event() {
                    moved = true;
                    if let Event::CharterRefused { below, .. } = &event {
                        self.refusals[side].push(below.iter().map(|b| b.term).collect());
                    }
                    if let Event::Answer {
                        ticket,
                        result: Ok(a),
                    } = event
                    {
                        self.answers.push((side, ticket, a));
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pair did not settle");
    }

    /// The next event of `side` other than a dial (both members dial while no session is
    /// up; this pair connects them itself).
    fn event(&mut self, side: usize) -> Option<Event> {
        std::iter::from_fn(|| self.cores[side].poll_event())
            .find(|e| !matches!(e, Event::Dial { .. }))
    }

    fn connect(&mut self, session: u64) {
        self.session = Some(session);
        for side in 0..2 {
            let peer = self.names[1 - side].to_string();
            let dialed_by_us = side == 0;
            self.input(
                side,
                Input::SessionOpened {
                    peer,
                    session,
                    dialed_by_us,
                },
            );
        }
        self.settle();
    }

    fn send(&mut self, side: usize, ticket: u64, precedence: Precedence) {
        let command = Command::Send(Outgoing {
            peer: self.names[1 - side].into(),
            precedence,
            topic: "general".into(),
            author: "Duty Officer".into(),
            body: Body::Text(TextBody {
                language: "en".into(),
                text: format!("message {ticket}"),
                translations: Vec::new(),
            }),
            in_reply_to: None,
        });
        self.input(side, Input::Operator { ticket, command });
    }
}

#[test]
fn an_answer_waits_for_its_commit() {
    let mut pair = Pair::new();
    pair.send(0, 1, Precedence::Routine);
    let (batch, rows) = pair.cores[0].poll_commit().expect("a batch to commit");
    assert_eq!(rows.messages.len(), 1);
    assert!(pair.event(0).is_none(), "nothing shown before the commit");
    pair.input(
        0,
        Input::CommitFailed {
            batch,
            error: "disk".into(),
        },
    );
    assert!(pair.event(0).is_none(), "a failed commit releases nothing");
    pair.send(0, 2, Precedence::Routine);
    let busy = pair.event(0);
    assert!(
        matches!(
            busy,
            Some(Event::Answer {
                ticket: 2,
                result: Err(_)
            })
        ),
        "new work is refused while the commit fails: {busy:?}"
    );
    pair.now_ms += 1_000;
    pair.input(0, Input::Tick);
    let (again, _) = pair.cores[0].poll_commit().expect("the batch is retried");
    assert_eq!(again, batch);
    pair.input(0, Input::Committed { batch });
    let answered = std::iter::from_fn(|| pair.event(0)).any(|e| {
        matches!(
            e,
            Event::Answer {
                ticket: 1,
                result: Ok(Answer::Sent { seq: 1, .. })
            }
        )
    });
    assert!(answered);
}

#[test]
fn a_flash_behind_a_backlog_goes_first_and_every_envelope_is_appended() {
    let mut pair = Pair::new();
    for ticket in 1..=20 {
        pair.send(0, ticket, Precedence::Routine);
    }
    pair.send(0, 21, Precedence::Flash);
    pair.settle();
    pair.connect(7);
    let first = pair.sent[0].first().copied();
    assert_eq!(
        first,
        Some((Precedence::Flash, 21)),
        "sent: {:?}",
        pair.sent[0]
    );
    // Each of the 21 once (the charter and DELIVERED receipts follow them in the stream).
    let mut seqs: Vec<u64> = pair.sent[0].iter().map(|(_, seq)| *seq).collect();
    seqs.sort_unstable();
    let texts: Vec<u64> = seqs.iter().copied().filter(|s| *s <= 21).collect();
    assert_eq!(texts, (1..=21).collect::<Vec<u64>>());
    seqs.dedup();
    assert_eq!(seqs.len(), pair.sent[0].len(), "nothing sent twice");
    // Everything arrived once; washington's outbox drained (DELIVERED and Ack came back).
    pair.input(
        0,
        Input::Operator {
            ticket: 99,
            command: Command::Checkpoint {
                peer: "beijing".into(),
            },
        },
    );
    pair.settle();
    // The FLASH was held at beijing ahead of the gap; a co-signed checkpoint naming
    // washington's stream at 21 or more proves beijing appended all of it, in order.
    let washington = PartySecret::from_seed([1; 32]).public();
    let covered = pair.cores[1].checkpoints("washington").iter().any(|c| {
        c.cosigned()
            && c.checkpoint()
                .head(&washington)
                .is_some_and(|h| h.size >= 21)
    });
    assert!(
        covered,
        "beijing co-signed a checkpoint covering washington's 21"
    );
}

/// A peer pinned while the node runs gets a channel at once; a second pin of the same name
/// or key is refused, so a pin never replaces another silently.
#[test]
fn a_peer_pinned_at_run_time_can_be_written_to() {
    let mut pair = Pair::new();
    let stranger = PartySecret::from_seed([9; 32]).public();
    let pin = |ticket, name: &str, key| Input::Operator {
        ticket,
        command: Command::AddPeer {
            peer: PeerConfig {
                name: name.into(),
                key,
                addresses: 1,
            },
        },
    };
    pair.input(0, pin(1, "moscow", stranger));
    pair.input(
        0,
        pin(2, "moscow", PartySecret::from_seed([8; 32]).public()),
    );
    pair.input(0, pin(3, "again", stranger));
    let send = Command::Send(Outgoing {
        peer: "moscow".into(),
        precedence: Precedence::Flash,
        topic: "border".into(),
        author: "Duty Officer".into(),
        body: Body::Text(TextBody {
            language: "en".into(),
            text: "hello".into(),
            translations: Vec::new(),
        }),
        in_reply_to: None,
    });
    pair.input(
        0,
        Input::Operator {
            ticket: 4,
            command: send,
        },
    );
    let (batch, rows) = pair.cores[0].poll_commit().expect("a batch");
    assert_eq!(rows.messages.len(), 1);
    assert_eq!(rows.messages[0].peer, "moscow");
    assert_eq!(rows.messages[0].topic, "border");
    pair.input(0, Input::Committed { batch });
    let answers: Vec<(u64, bool)> = std::iter::from_fn(|| pair.event(0))
        .filter_map(|e| match e {
            Event::Answer { ticket, result } => Some((ticket, result.is_ok())),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![(1, true), (2, false), (3, false), (4, true)]);
}

/// An envelope of the pair's peer (beijing) to washington, signed by its key.
fn beijing_envelope(
    seq: u64,
    prev: detente_proto::MessageId,
    body: Body,
) -> detente_proto::VerifiedEnvelope {
    let secret = PartySecret::from_seed([2; 32]);
    let channel = detente_proto::ChannelId::for_pair(
        &PartySecret::from_seed([1; 32]).public(),
        &secret.public(),
    );
    let envelope = detente_proto::Envelope {
        channel,
        sender: secret.public(),
        seq,
        prev,
        created_at_ms: 1_800_000_000_000,
        precedence: Precedence::Routine,
        topic: "general".into(),
        author: "Duty Officer".into(),
        in_reply_to: None,
        body,
    };
    detente_proto::VerifiedEnvelope::sign(envelope, &secret).expect("signs")
}

/// An envelope frame as a session reads it (type byte and body, no length prefix).
fn envelope_frame(envelope: Vec<u8>) -> Vec<u8> {
    let mut bytes = Vec::new();
    Frame::Envelope(envelope).encode(&mut bytes);
    bytes.split_off(4)
}

/// A notification as the peer might write it: the built-in "text" format whose one field
/// is `body`, here under `key`.
fn text_notification(key: &str) -> Body {
    Body::Notification(detente_proto::NotificationBody {
        format: "text".into(),
        version: 1,
        fields: vec![(
            key.into(),
            detente_proto::FieldValue::Text(TextBody {
                language: "en".into(),
                text: "situation unchanged".into(),
                translations: Vec::new(),
            }),
        )],
    })
}

#[test]
fn a_notification_its_format_refuses_is_neither_sent_nor_stored() {
    let mut pair = Pair::new();
    pair.connect(1);
    // Our operator's: refused before anything is signed.
    let command = Command::Send(Outgoing {
        peer: "beijing".into(),
        precedence: Precedence::Routine,
        topic: "general".into(),
        author: "Duty Officer".into(),
        body: text_notification("no-such-field"),
        in_reply_to: None,
    });
    pair.input(0, Input::Operator { ticket: 1, command });
    let mut refused_command = false;
    while let Some((batch, _)) = pair.cores[0].poll_commit() {
        pair.input(0, Input::Committed { batch });
    }
    while let Some(event) = pair.event(0) {
        if let Event::Answer { ticket: 1, result } = event {
            refused_command = matches!(result, Err(detente_core::CommandError::Invalid(_)));
        }
    }
    assert!(refused_command, "the command is refused as invalid");
    let before = pair.sent[0].len();
    pair.settle();
    assert_eq!(pair.sent[0].len(), before, "nothing was sent");
    // The peer's, signed by its key: refused like a bad signature, nothing stored.
    let (seq, prev) = pair.last[1].expect("the peer wrote its charter");
    let seq = seq + 1;
    for (key, stored) in [("no-such-field", false), ("body", true)] {
        let signed = beijing_envelope(seq, prev, text_notification(key));
        let bytes = envelope_frame(signed.bytes().to_vec());
        pair.input(0, Input::Frame { session: 1, bytes });
        let mut events = Vec::new();
        while let Some((batch, _)) = pair.cores[0].poll_commit() {
            pair.input(0, Input::Committed { batch });
        }
        while let Some(event) = pair.event(0) {
            events.push(event);
        }
        let was_stored = events
            .iter()
            .any(|e| matches!(e, Event::Stored { seq: s, .. } if *s == seq));
        let was_refused = events.iter().any(|e| matches!(e, Event::Refused { .. }));
        assert_eq!(
            (was_stored, was_refused),
            (stored, !stored),
            "{key}: {events:?}"
        );
    }
}

fn outgoing(peer: &str, k: usize, topic: &str) -> detente_core::Outgoing {
    detente_core::Outgoing {
        peer: peer.into(),
        precedence: Precedence::Routine,
        topic: topic.into(),
        author: "Duty Officer".into(),
        body: Body::Text(TextBody {
            language: "en".into(),
            text: format!("batch {k}"),
            translations: Vec::new(),
        }),
        in_reply_to: None,
    }
}

/// A batch of sends is checked and signed whole before anything is staged: one refused
/// message refuses it all and changes nothing; a good one is staged into a single commit
/// with its idempotency record, answered only once that commit is durable.
#[test]
fn a_batch_of_sends_is_one_commit_or_nothing() {
    let mut pair = Pair::new();
    let peer = pair.names[1];
    let mut messages: Vec<_> = (0..10).map(|k| outgoing(peer, k, "general")).collect();
    messages[7] = outgoing(peer, 7, "Not A Topic");
    let command = Command::SendBatch {
        messages,
        idempotency: None,
    };
    pair.input(0, Input::Operator { ticket: 1, command });
    // The refusal waits for a commit like every answer; that commit carries no message.
    if let Some((batch, rows)) = pair.cores[0].poll_commit() {
        assert!(
            rows.messages.is_empty() && rows.outbox.is_empty(),
            "nothing staged"
        );
        pair.input(0, Input::Committed { batch });
    }
    let refused = pair.event(0);
    assert!(
        matches!(
            refused,
            Some(Event::Answer {
                ticket: 1,
                result: Err(_)
            })
        ),
        "{refused:?}"
    );

    let messages: Vec<_> = (0..1000).map(|k| outgoing(peer, k, "general")).collect();
    let record = detente_store_types::IdempotencyRow {
        scope: "api-token".into(),
        key: "k".into(),
        fingerprint: [7; 32],
        created_at_ms: 1_800_000_000_000,
        sent: Vec::new(),
    };
    let command = Command::SendBatch {
        messages,
        idempotency: Some(record),
    };
    pair.input(0, Input::Operator { ticket: 2, command });
    let (batch, rows) = pair.cores[0].poll_commit().expect("one batch");
    assert_eq!(rows.messages.len(), 1000, "all in one commit");
    let seqs: Vec<u64> = rows.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "numbered from 1: the refused batch used no seq"
    );
    let stored = &rows.idempotency[0];
    assert_eq!(stored.sent.len(), 1000);
    assert!(stored
        .sent
        .iter()
        .zip(&rows.messages)
        .all(|(r, m)| r.id == m.id && r.seq == m.seq));
    let cut = 1_800_000_000_000 - detente_store_types::IDEMPOTENCY_KEY_TTL_MS;
    assert_eq!(rows.idempotency_expired_before_ms, Some(cut));
    assert!(
        std::iter::from_fn(|| pair.event(0)).all(|e| !matches!(e, Event::Answer { .. })),
        "no answer before the commit"
    );
    pair.input(0, Input::Committed { batch });
    let answer = std::iter::from_fn(|| pair.event(0)).find_map(|e| match e {
        Event::Answer {
            ticket: 2,
            result: Ok(Answer::SentBatch { sent }),
        } => Some(sent),
        _ => None,
    });
    let sent = answer.expect("answered after the commit");
    assert_eq!(sent.len(), 1000);
    assert!(sent
        .iter()
        .zip(&stored.sent)
        .all(|((id, seq), r)| id.0 == r.id && *seq == r.seq));
}

/// Issue 12 item 9: one side asks a 1 s FLASH acknowledgment; the other, whose floor is
/// 1 min, signs no such charter and reports the term once; the first charter stays the one
/// both signed. When the ask is withdrawn, the refusal clears and nothing new is needed.
#[test]
fn a_charter_below_our_floors_is_not_signed_and_the_agreed_one_stays() {
    let mut pair = Pair::new();
    pair.connect(1);
    assert_eq!(
        pair.charters[0].len(),
        1,
        "the first charter, within the floors"
    );
    assert_eq!(pair.charters[0], pair.charters[1]);
    let first = pair.charters[0][0].clone();

    let eager = Deadlines {
        flash_acknowledged: Duration::from_secs(1),
        ..Deadlines::default()
    };
    let command = Command::SetDeadlines { deadlines: eager };
    pair.input(1, Input::Operator { ticket: 1, command });
    pair.settle();
    // Its own floors are capped by its own ask: beijing signs its new charter ...
    assert_eq!(pair.charters[1].len(), 2);
    assert_eq!(
        pair.charters[1][1].deadlines.flash_acknowledged,
        Duration::from_secs(1)
    );
    // ... washington does not, and says which term once, however often it is asked.
    assert_eq!(pair.charters[0].len(), 1, "signed below its floor");
    assert_eq!(pair.refusals[0], vec![vec!["deadlines.flash_acknowledged"]]);
    pair.connect(2);
    assert_eq!(pair.charters[0].len(), 1);
    assert_eq!(pair.refusals[0].len(), 1, "reported once per distinct set");
    assert!(pair.refusals[1].is_empty());

    // Withdrawn: the refusal clears; the first charter is what both sides' terms make.
    let command = Command::SetDeadlines {
        deadlines: Deadlines::default(),
    };
    pair.input(1, Input::Operator { ticket: 2, command });
    pair.settle();
    assert_eq!(pair.refusals[0].last(), Some(&Vec::new()));
    assert_eq!(pair.charters[0].len(), 1);
    assert_eq!(pair.charters[1].last(), Some(&first));
}

#[test]
fn frames_read_together_are_decided_one_by_one_with_one_signature_batch() {
    let mut pair = Pair::new();
    pair.connect(1);
    let (last, mut prev) = pair.last[1].expect("the peer wrote its charter");
    let mut frames = Vec::new();
    for k in 1..=4u64 {
        let body = Body::Text(TextBody {
            language: "en".into(),
            text: format!("together {k}"),
            translations: Vec::new(),
        });
        let signed = beijing_envelope(last + k, prev, body);
        prev = signed.id();
        let mut bytes = signed.bytes().to_vec();
        if k == 3 {
            // One bit of the signature (the envelope's last bytes).
            *bytes.last_mut().expect("bytes") ^= 1;
        }
        frames.push(envelope_frame(bytes));
    }
    pair.input(0, Input::Frames { session: 1, frames });
    while let Some((batch, _)) = pair.cores[0].poll_commit() {
        pair.input(0, Input::Committed { batch });
    }
    let events: Vec<Event> = std::iter::from_fn(|| pair.event(0)).collect();
    let stored: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stored {
                seq,
                direction: detente_store_types::Direction::In,
                ..
            } => Some(*seq - last),
            _ => None,
        })
        .collect();
    // 1 and 2 appended; 3 refused for its signature; 4 (after the gap 3 left) is held,
    // which is also a store.
    assert_eq!(stored, vec![1, 2, 4], "{events:?}");
    let refused: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Refused { what, .. } => Some(what),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert!(refused[0].contains("signature"), "{refused:?}");
}
