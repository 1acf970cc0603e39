//! The invariants, and the hostile member's lies.
//!
//! Safety, checked as each step happens (on what a commit adds, on each frame sent, on each
//! event shown): an answered send is durable; an `Ack` or `Hello` never claims more than is
//! durable; every stored envelope verifies; every stream is gap-free and hash-linked, and an
//! honest sender's stream is byte-identical at every member; a DELIVERED receipt covers only
//! envelopes durable at its signer; nothing is sent before it is durable; a checkpoint is
//! signed only over our own record and never over a smaller tree (the witness rule);
//! evidence and alarms only ever name the hostile member, each backed by a lie it told; a
//! deadline is decided at most once; a FLASH waiting on an up session goes before lower
//! precedence; an honest member never signs a charter with a term below its floors, and
//! refuses only the hostile member's terms.
//!
//! Liveness, after healing: every honest stream complete at every honest member with nothing
//! held or pending; every deadline decided exactly once; a checkpoint co-signed by both
//! members covering both streams whole; an alarm for the hostile member's last lie.

use std::collections::{BTreeMap, BTreeSet};

use detente_core::{Answer, Command, Event, Outgoing};
use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::stream::SEQ_AHEAD_MAX;
use detente_proto::{
    Body, ChannelId, Frame, PartyKey, Precedence, ReceiptLevel, ReceiptTarget, TextBody,
    VerifiedEnvelope,
};
use detente_store_types::{
    Direction, GlossaryRow, Placement, WriteBatch, EVIDENCE_BROKEN_CHAIN, EVIDENCE_ENVELOPES,
};
use rand::Rng;

use crate::store::Stream;
use crate::world::{Node, World};

#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// Batches handed to the store model and not yet completed.
    pub pending: BTreeMap<(usize, u64), WriteBatch>,
    verified: BTreeSet<[u8; 32]>,
    /// (node, channel, stream key) → largest size the node signed.
    signed_max: BTreeMap<(usize, [u8; 32], [u8; 32]), u64>,
    signed_bodies: BTreeSet<(usize, [u8; 32])>,
    /// (session, sender) → seqs sent.
    sent: BTreeMap<(u64, usize), BTreeSet<u64>>,
    /// (session, node) → the hwm that node announced in its Hello.
    hello: BTreeMap<(u64, usize), u64>,
    /// (from, to) → highest hwm `from` announced to `to`.
    acked: BTreeMap<(usize, usize), u64>,
    /// (signer, peer) → seqs of the peer's stream the signer confirmed DELIVERED.
    delivered: BTreeSet<(usize, usize, u64)>,
    /// (hostile, target, seq) for which the hostile member signed a second envelope.
    forged: BTreeSet<(usize, usize, u64)>,
    forged_checkpoints: BTreeSet<Vec<u8>>,
    decisions: BTreeMap<(usize, [u8; 32], u8), u32>,
    alarms: BTreeSet<(usize, String)>,
    expected_alarms: BTreeSet<usize>,
    /// (sender, receiver, seq): envelope frames ever sent (a prune may cover only these).
    sent_to: BTreeSet<(usize, usize, u64)>,
    /// (node, peer) → the highest hwm already checked for a prune.
    pruned: BTreeMap<(usize, usize), u64>,
    /// (node, peer): the node stopped sending to the peer until it restarts.
    stopped: BTreeSet<(usize, usize)>,
    /// (node, peer) → link tests the node wrote to the peer.
    tests: BTreeMap<(usize, usize), u64>,
    /// node → times its core started.
    starts: BTreeMap<usize, u64>,
}

impl Checker {
    /// `node` restarted: a stop of sending lasts only until then.
    pub(crate) fn on_restart(&mut self, node: usize) {
        self.stopped.retain(|&(n, _)| n != node);
        *self.starts.entry(node).or_default() += 1;
    }
}

/// A prune drops only outbox rows the peer could hold: every one was sent to it.
fn check_prunes(w: &mut World, node: usize, batch: &WriteBatch) {
    // The hostile member also injects its envelopes past its core (forgeries, replays), so
    // its peers may rightly hold what its core never sent: only honest members are judged.
    if w.nodes[node].hostile {
        return;
    }
    for (name, hwm) in &batch.prune {
        let Some(peer) = index_of(w, name) else {
            return w.fail(format!("n{node} pruned the outbox of unknown peer {name}"));
        };
        let from = w.checker.pruned.get(&(node, peer)).copied().unwrap_or(0) + 1;
        let unsent = (from..=*hwm).find(|&seq| !w.checker.sent_to.contains(&(node, peer, seq)));
        if let Some(seq) = unsent {
            return w.fail(format!(
                "n{node} pruned seq {seq} for n{peer} up to {hwm} though it never sent it"
            ));
        }
        let max = w.checker.pruned.entry((node, peer)).or_default();
        *max = (*max).max(*hwm);
    }
}

fn index_of(w: &World, name: &str) -> Option<usize> {
    w.nodes.iter().position(|n| n.name == name)
}

fn channel(w: &World, a: usize, b: usize) -> [u8; 32] {
    let (ka, kb) = (w.nodes[a].secret.public(), w.nodes[b].secret.public());
    ChannelId::for_pair(&ka, &kb).0
}

fn key_of(w: &World, node: usize) -> PartyKey {
    w.nodes[node].secret.public()
}

/// After node `node` committed `batch` (already applied to its store model).
pub(crate) fn on_commit(w: &mut World, node: usize, batch: &WriteBatch) {
    let me = *key_of(w, node).as_bytes();
    let mut appended: Vec<(Stream, u64)> = Vec::new();
    for m in &batch.messages {
        let Some(from) = index_of(w, &m.peer) else {
            return w.fail(format!(
                "n{node} stored a message of unknown peer {}",
                m.peer
            ));
        };
        let sender = if m.direction == Direction::Out {
            node
        } else {
            from
        };
        // Our own envelopes were verified by the core right after signing; every received
        // one is verified here, once per id, at the first member that stores it.
        if m.direction == Direction::In && w.checker.verified.insert(m.id) {
            let key = key_of(w, sender);
            let Ok(v) = VerifiedEnvelope::decode(&m.bytes, Some(&key)) else {
                return w.fail(format!("n{node} stored an envelope that does not verify"));
            };
            if let Body::Notification(n) = &v.envelope().body {
                if let Err(e) = detente_core::check_notification(n, v.envelope().created_at_ms) {
                    return w.fail(format!(
                        "n{node} stored a notification its format refuses: {e}"
                    ));
                }
            }
        }
        if m.direction == Direction::Out && m.kind == 2 {
            *w.checker.tests.entry((node, from)).or_default() += 1;
        }
        if m.direction == Direction::Out && m.kind == detente_proto::envelope::KIND_CHARTER {
            check_charter_floors(w, node, &m.bytes);
        }
        if m.direction == Direction::Out {
            if m.sender != me {
                return w.fail(format!(
                    "n{node} stored an outgoing envelope of another key"
                ));
            }
            check_delivered_receipt(w, node, from, &m.bytes);
        }
        if m.placement == Placement::Appended {
            appended.push(((m.channel, m.sender), m.seq));
        }
    }
    for &(c, s, seq) in &batch.promote {
        appended.push(((c, s), seq));
    }
    for (stream, seq) in appended {
        check_linked(w, node, stream, seq);
    }
    check_checkpoints(w, node, batch);
    check_prunes(w, node, batch);
    // The hostile member's own core may rightly accuse an honest member that recorded a
    // forged envelope: only what honest members record is judged.
    if !w.nodes[node].hostile {
        check_evidence(w, node, batch);
    }
}

/// A charter an honest `node` signs has no term below its floors (capped by its own asks).
fn check_charter_floors(w: &mut World, node: usize, bytes: &[u8]) {
    let n = &w.nodes[node];
    if n.hostile {
        return;
    }
    let Some(Body::Charter(charter)) = World::parse(bytes).map(|e| e.body) else {
        return;
    };
    let floors = detente_proto::Floors {
        deadlines: n.config.floors.deadlines.stricter(&n.config.deadlines),
        link_test_interval: n
            .config
            .floors
            .link_test_interval
            .min(n.config.link_test_interval),
    };
    if let Err(below) = charter.check_floors(&floors) {
        let what: Vec<String> = below.iter().map(ToString::to_string).collect();
        w.fail(format!(
            "n{node} signed a charter below its floors: {}",
            what.join("; ")
        ));
    }
}

/// A DELIVERED receipt `node` signs covers only envelopes durable at `node`.
fn check_delivered_receipt(w: &mut World, node: usize, peer: usize, bytes: &[u8]) {
    let Some(e) = World::parse(bytes) else {
        return;
    };
    let Body::Receipt(r) = &e.body else {
        return;
    };
    let (ReceiptLevel::Delivered, ReceiptTarget::Ranges(list)) = (r.level, &r.target) else {
        return;
    };
    let stream = (channel(w, node, peer), *key_of(w, peer).as_bytes());
    for &(from, to) in list {
        for seq in from..=to {
            if w.nodes[node].store.at(stream, seq).is_none() {
                return w.fail(format!(
                    "n{node} signed DELIVERED for seq {seq} of n{peer}, which it does not hold"
                ));
            }
            w.checker.delivered.insert((node, peer, seq));
        }
    }
}

/// An appended envelope follows the previous one of its stream, and an honest sender's
/// stream is the same at every member.
fn check_linked(w: &mut World, node: usize, stream: Stream, seq: u64) {
    let store = &w.nodes[node].store;
    let Some(row) = store.at(stream, seq) else {
        return w.fail(format!("n{node}: appended seq {seq} missing"));
    };
    let Some(e) = World::parse(&row.bytes) else {
        return w.fail(format!("n{node}: a stored envelope does not parse"));
    };
    let prev = if seq == 1 {
        Some([0; 32])
    } else {
        store.at(stream, seq - 1).map(|m| m.id)
    };
    if prev != Some(e.prev.0) {
        return w.fail(format!(
            "n{node}: seq {seq} of stream {} appended without its predecessor (prev mismatch or gap)",
            crate::store::hex(&stream.1)
        ));
    }
    let id = row.id;
    let Some(sender) = (0..w.nodes.len()).find(|&i| *key_of(w, i).as_bytes() == stream.1) else {
        return;
    };
    if sender != node && !w.nodes[sender].hostile {
        let theirs = w.nodes[sender].store.at(stream, seq).map(|m| m.id);
        if theirs != Some(id) {
            w.fail(format!(
                "n{node} holds seq {seq} of n{sender}'s stream, which n{sender} never committed as such"
            ));
        }
    }
}

/// The witness rule, seen from outside: a checkpoint `node` signs for the first time names
/// only roots of its own record, and no stream smaller than it signed before.
fn check_checkpoints(w: &mut World, node: usize, batch: &WriteBatch) {
    let me = key_of(w, node);
    for row in &batch.checkpoints {
        let Ok(signed) = SignedCheckpoint::decode(&row.signed) else {
            return w.fail(format!("n{node} stored a checkpoint that does not decode"));
        };
        if !signed.signed_by(&me) || !w.checker.signed_bodies.insert((node, row.body_hash)) {
            continue;
        }
        let c = signed.checkpoint();
        for head in &c.members {
            let stream = (c.channel.0, *head.key.as_bytes());
            if w.nodes[node].store.root_at(stream, head.size) != Some(head.root) {
                return w.fail(format!(
                    "n{node} signed a root its own record does not have"
                ));
            }
            let max = w
                .checker
                .signed_max
                .entry((node, c.channel.0, *head.key.as_bytes()))
                .or_default();
            if head.size < *max {
                let was = *max;
                return w.fail(format!(
                    "n{node} broke the witness rule: signed {} envelopes of a stream after signing {was}",
                    head.size
                ));
            }
            *max = head.size;
        }
    }
}

/// Evidence only ever names the hostile member, for a lie it told.
fn check_evidence(w: &mut World, node: usize, batch: &WriteBatch) {
    for ev in &batch.evidence {
        let Some(peer) = index_of(w, &ev.peer) else {
            return w.fail(format!("n{node} recorded evidence against an unknown peer"));
        };
        if !w.nodes[peer].hostile {
            return w.fail(format!(
                "n{node} recorded evidence against honest n{peer}: {}",
                ev.detail
            ));
        }
        let justified = if ev.kind == EVIDENCE_ENVELOPES {
            let key = key_of(w, peer);
            let a = VerifiedEnvelope::decode(&ev.first, Some(&key));
            let b = VerifiedEnvelope::decode(&ev.second, Some(&key));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    let seq = a.envelope().seq;
                    seq == b.envelope().seq
                        && a.id() != b.id()
                        && w.checker.forged.contains(&(peer, node, seq))
                }
                _ => false,
            }
        } else if ev.kind == EVIDENCE_BROKEN_CHAIN {
            // Its appended envelope at seq - 1 and a held one at seq that does not follow it,
            // one of them forged.
            let key = key_of(w, peer);
            let a = VerifiedEnvelope::decode(&ev.first, Some(&key));
            let b = VerifiedEnvelope::decode(&ev.second, Some(&key));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    let seq = b.envelope().seq;
                    a.envelope().seq + 1 == seq
                        && b.envelope().prev != a.id()
                        && (w.checker.forged.contains(&(peer, node, seq))
                            || w.checker.forged.contains(&(peer, node, seq - 1)))
                }
                _ => false,
            }
        } else {
            // A checkpoint it forged, or an honest proposal of its core contradicting a
            // forged envelope this member recorded (it signed both).
            let hostile = key_of(w, peer);
            let covers_forgery = SignedCheckpoint::decode(&ev.second).is_ok_and(|s| {
                s.checkpoint().head(&hostile).is_some_and(|head| {
                    w.checker
                        .forged
                        .range((peer, node, 1)..=(peer, node, head.size))
                        .next()
                        .is_some()
                })
            });
            w.checker.forged_checkpoints.contains(&ev.second) || covers_forgery
        };
        if !justified {
            return w.fail(format!(
                "n{node} recorded unjustified evidence: {}",
                ev.detail
            ));
        }
    }
}

/// A `Hello` or `Ack` arriving at `node` that claims more of its stream than it holds
/// durably: (sender, claimed hwm).
pub(crate) fn stream_claim(
    w: &World,
    node: usize,
    session: u64,
    bytes: &[u8],
) -> Option<(usize, u64)> {
    let s = w.sessions.get(&session)?;
    let peer = if s.a == node { s.b } else { s.a };
    let hwm = match Frame::decode(bytes).ok()? {
        Frame::Hello { hwm, .. } | Frame::Ack { hwm, .. } => hwm,
        _ => return None,
    };
    let ours = (channel(w, node, peer), *key_of(w, node).as_bytes());
    (hwm > w.nodes[node].store.size(ours)).then_some((peer, hwm))
}

/// Such a claim must stop sending to that peer, with an alarm (never a prune).
pub(crate) fn after_stream_claim(w: &mut World, node: usize, peer: usize, hwm: u64) {
    if w.nodes[node].core.is_some() && !w.checker.stopped.contains(&(node, peer)) {
        w.fail(format!(
            "n{node} took n{peer}'s claim to hold its stream up to seq {hwm} without an alarm"
        ));
    }
}

/// Before a frame leaves `node` on `session`.
pub(crate) fn on_transmit(w: &mut World, node: usize, session: u64, frame: &Frame) {
    let Some(s) = w.sessions.get(&session) else {
        return;
    };
    let peer = if s.a == node { s.b } else { s.a };
    let theirs = (channel(w, node, peer), *key_of(w, peer).as_bytes());
    match frame {
        Frame::Hello { hwm, .. } | Frame::Ack { hwm, .. } => {
            let held = w.nodes[node].store.size(theirs);
            if *hwm > held {
                return w.fail(format!(
                    "n{node} told n{peer} it holds {hwm} of its envelopes; only {held} are durable"
                ));
            }
            if matches!(frame, Frame::Hello { .. }) {
                w.checker.hello.insert((session, node), *hwm);
            }
            let max = w.checker.acked.entry((node, peer)).or_default();
            *max = (*max).max(*hwm);
        }
        Frame::Envelope(bytes) => check_envelope_sent(w, node, peer, session, bytes),
        Frame::Fetched(bytes) => {
            // Only an appended, durable envelope of one of the channel's two streams.
            let Some(e) = World::parse(bytes) else {
                return w.fail(format!(
                    "n{node} answered a fetch with bytes that do not parse"
                ));
            };
            let stream = (e.channel.0, *e.sender.as_bytes());
            let member = stream == theirs || stream.1 == *key_of(w, node).as_bytes();
            let stored = w.nodes[node].store.at(stream, e.seq);
            if !member || e.channel.0 != theirs.0 || stored.is_none_or(|m| m.bytes != *bytes) {
                w.fail(format!(
                    "n{node} answered n{peer}'s fetch with seq {} that is not what it holds",
                    e.seq
                ));
            }
        }
        Frame::FetchEnd { sender, head, .. } => {
            let stream = (theirs.0, *sender);
            let member = *sender == theirs.1 || *sender == *key_of(w, node).as_bytes();
            let held = w.nodes[node].store.size(stream);
            if !member || *head > held {
                w.fail(format!(
                    "n{node} told n{peer} it holds a fetched stream up to {head}; {held} are durable"
                ));
            }
        }
        _ => {}
    }
}

fn check_envelope_sent(w: &mut World, node: usize, peer: usize, session: u64, bytes: &[u8]) {
    let Some(e) = World::parse(bytes) else {
        return w.fail(format!("n{node} sent an envelope that does not parse"));
    };
    let ours = (e.channel.0, *e.sender.as_bytes());
    let durable = w.nodes[node].store.at(ours, e.seq).map(|m| m.id);
    if durable != Some(detente_proto::envelope::message_id(bytes).0) {
        return w.fail(format!("n{node} sent seq {} before it was durable", e.seq));
    }
    if w.checker.stopped.contains(&(node, peer)) {
        return w.fail(format!(
            "n{node} sent seq {} to n{peer} after it stopped sending to it",
            e.seq
        ));
    }
    w.checker.sent_to.insert((node, peer, e.seq));
    w.checker
        .sent
        .entry((session, node))
        .or_default()
        .insert(e.seq);
    if e.precedence == Precedence::Flash {
        return;
    }
    let hello = w.checker.hello.get(&(session, peer)).copied().unwrap_or(0);
    let acked = w.checker.acked.get(&(peer, node)).copied().unwrap_or(0);
    let name = w.nodes[peer].name.clone();
    let sent = &w.checker.sent[&(session, node)];
    let store = &w.nodes[node].store;
    let waiting = store.pending(&name).into_iter().find(|o| {
        o.precedence == 0
            && o.seq > hello.max(acked)
            && !sent.contains(&o.seq)
            && !w.checker.delivered.contains(&(peer, node, o.seq))
    });
    if let Some(o) = waiting {
        let seq = o.seq;
        w.fail(format!(
            "n{node} sent {} seq {} to n{peer} while FLASH seq {seq} waited",
            e.precedence, e.seq
        ));
    }
}

/// What an operator's command must lead to, checked when it is answered.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// A send: the stored envelope carries the operator's topic and title.
    Sent { topic: String, author: String },
    /// A glossary term: refused when invalid, else durable when answered.
    Glossary { row: GlossaryRow, valid: bool },
}

/// Note what `command` (ticket `ticket` at node `n`) must lead to.
pub(crate) fn on_operate(n: &mut Node, ticket: u64, command: &Command) {
    let expect = match command {
        Command::Send(Outgoing { topic, author, .. }) => Expect::Sent {
            topic: topic.clone(),
            author: author.clone(),
        },
        Command::Glossary { row } => Expect::Glossary {
            row: row.clone(),
            valid: row.lang_a != row.lang_b && !row.term_a.trim().is_empty(),
        },
        _ => return,
    };
    n.expect.insert(ticket, expect);
}

/// The answer to ticket `ticket` at `node` against what its command asked for.
fn check_answer(
    w: &mut World,
    node: usize,
    ticket: u64,
    result: &Result<Answer, detente_core::CommandError>,
) {
    let Some(expect) = w.nodes[node].expect.remove(&ticket) else {
        return;
    };
    let store = &w.nodes[node].store;
    match (expect, result) {
        (Expect::Sent { topic, author }, Ok(Answer::Sent { id, seq })) => {
            let Some(row) = store.messages.get(&id.0) else {
                return;
            };
            let carried = World::parse(&row.bytes).map(|e| (e.topic, e.author));
            if row.topic != topic || carried != Some((topic.clone(), author.clone())) {
                w.fail(format!(
                    "n{node} stored seq {seq} without the topic {topic:?} and title {author:?} asked for"
                ));
            }
        }
        (Expect::Glossary { valid: false, .. }, Ok(_)) => {
            w.fail(format!("n{node} accepted an invalid glossary term"));
        }
        (Expect::Glossary { row, valid: true }, Ok(_)) => {
            let key = (
                row.peer.clone(),
                row.lang_a.clone(),
                row.term_a.clone(),
                row.lang_b.clone(),
            );
            if store.glossary.get(&key).map(|r| &r.term_b) != Some(&row.term_b) {
                w.fail(format!(
                    "n{node} answered a glossary term before it was durable"
                ));
            }
        }
        _ => {}
    }
}

/// Each event `node` shows.
pub(crate) fn on_event(w: &mut World, node: usize, event: &Event) {
    if let Event::Answer { ticket, result } = event {
        check_answer(w, node, *ticket, result);
    }
    match event {
        Event::Answer { result, .. } => match result {
            Ok(Answer::Sent { id, seq }) => {
                if !w.nodes[node].store.messages.contains_key(&id.0) {
                    w.fail(format!(
                        "n{node} answered seq {seq} accepted before it was durable"
                    ));
                }
            }
            Ok(Answer::Checkpoint { body_hash }) => {
                let stored = w.nodes[node]
                    .store
                    .checkpoints
                    .iter()
                    .any(|c| &c.body_hash == body_hash);
                if !stored {
                    w.fail(format!(
                        "n{node} answered a checkpoint before it was durable"
                    ));
                }
            }
            Ok(Answer::SentBatch { sent }) => {
                let store = &w.nodes[node].store;
                let durable = sent
                    .iter()
                    .filter(|(id, _)| store.messages.contains_key(&id.0))
                    .count();
                if !sent.windows(2).all(|p| p[1].1 == p[0].1 + 1) {
                    w.fail(format!("n{node} numbered a batch with gaps: {sent:?}"));
                }
                if durable != sent.len() {
                    w.fail(format!(
                        "n{node} answered a batch of {} before all of it was durable",
                        sent.len()
                    ));
                }
            }
            Ok(Answer::Done) => {}
            Err(_) => w.count("commands_refused"),
        },
        Event::Alarm { .. } if w.nodes[node].hostile => {}
        Event::Alarm { peer, detail } => {
            let hostile = index_of(w, peer).is_some_and(|p| w.nodes[p].hostile);
            if !hostile {
                return w.fail(format!(
                    "n{node} raised an alarm about honest {peer}: {detail}"
                ));
            }
            // Only our own key signs our stream and only durable envelopes are sent, so an
            // honest store is never behind what a peer can show of it.
            if detail.contains("this store is behind") {
                return w.fail(format!("n{node} found its own store behind: {detail}"));
            }
            if detail.contains("its claim is false") {
                w.count("claims_found_false");
            }
            w.count("alarms");
            w.checker.alarms.insert((node, peer.clone()));
            if detail.contains("holds our stream") {
                if let Some(p) = index_of(w, peer) {
                    w.checker.stopped.insert((node, p));
                }
            }
        }
        Event::Deadline {
            id, need, decision, ..
        } => {
            let n = w
                .checker
                .decisions
                .entry((node, id.0, need.code()))
                .or_default();
            *n += 1;
            let twice = *n > 1;
            w.count(match decision {
                detente_core::Decision::Met => "deadlines_met",
                detente_core::Decision::Missed => "deadlines_missed",
            });
            if twice {
                w.fail(format!(
                    "n{node} decided the {} deadline of {id} twice",
                    need.name()
                ));
            }
        }
        Event::Refused { .. } => w.count("refusals"),
        Event::CharterAgreed { .. } => w.count("charters_agreed"),
        Event::CharterRefused { peer, below } if !below.is_empty() => {
            w.count("charters_refused");
            if !index_of(w, peer).is_some_and(|i| w.nodes[i].hostile) {
                w.fail(format!(
                    "n{node} refused the charter terms of honest {peer}"
                ));
            }
        }
        Event::Stored { direction, .. } => w.count(match direction {
            Direction::Out => "envelopes_written",
            Direction::In => "envelopes_received",
        }),
        _ => {}
    }
}

/// A lie of kind `kind` from the hostile member `h` to `target`, as frame bytes.
pub(crate) fn hostile_frame(
    w: &mut World,
    h: usize,
    target: usize,
    kind: u32,
) -> Option<(&'static str, Vec<u8>)> {
    let stream = (channel(w, h, target), *key_of(w, h).as_bytes());
    let n = w.nodes[h].store.size(stream);
    let pick = |w: &mut World| w.rng.gen_range(1..=n.max(1));
    let old = |w: &World, seq: u64| {
        w.nodes[h]
            .store
            .at(stream, seq)
            .and_then(|m| World::parse(&m.bytes).map(|e| (e, m.bytes.clone())))
    };
    match kind {
        0 if n > 0 => {
            let seq = pick(w);
            let (mut e, _) = old(w, seq)?;
            e.body = forged_text(w.rng.gen());
            w.checker.forged.insert((h, target, seq));
            let bytes = w.forge(h, e)?;
            Some((
                "hostile_equivocations",
                World::frame_bytes(&Frame::Envelope(bytes)),
            ))
        }
        1 if n > 0 => {
            let seq = pick(w);
            let (_, bytes) = old(w, seq)?;
            Some((
                "hostile_replays",
                World::frame_bytes(&Frame::Envelope(bytes)),
            ))
        }
        2 if n > 0 => {
            let (mut e, _) = old(w, n)?;
            e.seq = n + SEQ_AHEAD_MAX + 5;
            e.body = forged_text(1);
            let bytes = w.forge(h, e)?;
            Some((
                "hostile_skips_ahead",
                World::frame_bytes(&Frame::Envelope(bytes)),
            ))
        }
        3 if n > 0 => {
            // The next seq with a prev that is not the stream's: refused, or held until its
            // rival (the member's own next envelope) arrives — then it is evidence.
            let (mut e, _) = old(w, n)?;
            e.seq = n + 1;
            e.prev = detente_proto::MessageId(w.rng.gen());
            e.body = forged_text(2);
            w.checker.forged.insert((h, target, n + 1));
            let bytes = w.forge(h, e)?;
            Some((
                "hostile_wrong_prev",
                World::frame_bytes(&Frame::Envelope(bytes)),
            ))
        }
        4 => {
            let len = w.rng.gen_range(1..64);
            let bytes: Vec<u8> = (0..len).map(|_| w.rng.gen()).collect();
            Some(("hostile_garbage", bytes))
        }
        5 if n > 0 => {
            let seq = pick(w);
            let (_, mut bytes) = old(w, seq)?;
            bytes.push(0);
            Some((
                "hostile_non_canonical",
                World::frame_bytes(&Frame::Envelope(bytes)),
            ))
        }
        6 if n > 0 => {
            let size = pick(w);
            let root = w.rng.gen();
            let signed = w.forge_checkpoint(h, target, size, root)?;
            w.checker.forged_checkpoints.insert(signed.clone());
            Some((
                "hostile_forked_checkpoints",
                World::frame_bytes(&Frame::Checkpoint(signed)),
            ))
        }
        9 => {
            // It claims to hold more of the target's stream than the target ever wrote: an
            // alarm, no prune, nothing more sent to it.
            let theirs = (channel(w, h, target), *key_of(w, target).as_bytes());
            let hwm = w.nodes[target].store.size(theirs) + w.rng.gen_range(1..5);
            Some((
                "hostile_hwm_ahead",
                World::frame_bytes(&Frame::Ack { hwm, received: 0 }),
            ))
        }
        10 if n > 0 => {
            // The next seq, rightly linked and signed, but a notification whose format
            // refuses its field: refused like a bad signature, never stored.
            let (mut e, _) = old(w, n)?;
            e.prev = detente_proto::envelope::message_id(&old(w, n)?.1);
            e.seq = n + 1;
            e.body = Body::Notification(detente_proto::NotificationBody {
                format: "text".into(),
                version: 1,
                fields: vec![(
                    "no-such-field".into(),
                    detente_proto::FieldValue::Typed("forged".into()),
                )],
            });
            let bytes = w.forge(h, e)?;
            Some((
                "hostile_bad_notifications",
                World::frame_bytes(&Frame::Envelope(bytes)),
            ))
        }
        7 => {
            let mut terms = absurd_terms(w, h);
            terms.deadlines.flash_delivered = std::time::Duration::from_millis(1);
            terms.deadlines.routine_acknowledged = std::time::Duration::from_secs(u32::MAX as u64);
            Some((
                "hostile_absurd_terms",
                World::frame_bytes(&Frame::Terms(terms.encode())),
            ))
        }
        12 => {
            // It asks for a stream: the target's, its own, or a stranger's (refused). An
            // honest member answers with what it holds durably, nothing else.
            let sender = match w.rng.gen_range(0..3) {
                0 => *key_of(w, target).as_bytes(),
                1 => *key_of(w, h).as_bytes(),
                _ => w.rng.gen(),
            };
            let after = w.rng.gen_range(0..8);
            let limit = w.rng.gen_range(0..=300);
            Some((
                "hostile_fetches",
                World::frame_bytes(&Frame::Fetch {
                    sender,
                    after,
                    limit,
                }),
            ))
        }
        11 => {
            // Valid terms, but asking for deadlines and link tests of 1 s: below every
            // honest member's floors, so never signed (the stricter value would win).
            let mut terms = absurd_terms(w, h);
            let second = std::time::Duration::from_secs(1);
            terms.deadlines.flash_acknowledged = second;
            if w.rng.gen_bool(0.5) {
                terms.deadlines.flash_delivered = second;
                terms.link_test_interval = second;
            }
            Some((
                "hostile_terms_below_floors",
                World::frame_bytes(&Frame::Terms(terms.encode())),
            ))
        }
        _ => None,
    }
}

fn absurd_terms(w: &World, h: usize) -> detente_proto::Terms {
    detente_proto::Terms {
        member: detente_proto::Member {
            key: key_of(w, h),
            name: w.nodes[h].name.clone(),
            party: "hostile".into(),
            addresses: vec!["hostile.invalid:1".into()],
            lang: "en".into(),
            tz: "UTC".into(),
        },
        formats: Vec::new(),
        deadlines: detente_proto::Deadlines::default(),
        link_test_interval: std::time::Duration::from_secs(60),
        counterparts: Vec::new(),
    }
}

fn forged_text(n: u64) -> Body {
    Body::Text(TextBody {
        language: "en".into(),
        text: format!("forged {n}"),
        translations: Vec::new(),
    })
}

/// After healing: one last, certain lie to each honest member that holds the hostile
/// member's first envelope; each must end in evidence and an alarm.
pub(crate) fn final_equivocation(w: &mut World) {
    let h = w.nodes.len() - 1;
    for target in 0..h {
        let stream = (channel(w, h, target), *key_of(w, h).as_bytes());
        let Some(first) = w.nodes[target].store.at(stream, 1).map(|m| m.bytes.clone()) else {
            continue;
        };
        let (Some(session), Some(mut e)) = (w.session_between(h, target), World::parse(&first))
        else {
            continue;
        };
        e.body = forged_text(u64::MAX);
        w.checker.forged.insert((h, target, 1));
        let Some(bytes) = w.forge(h, e) else {
            continue;
        };
        w.checker.expected_alarms.insert(target);
        w.count("hostile_equivocations");
        w.send_bytes(h, session, World::frame_bytes(&Frame::Envelope(bytes)));
    }
}

/// The liveness invariants, after healing.
/// Link tests come no faster than the channel's interval (the shorter of both members'),
/// counted over each life of a core (a restart starts the cadence again).
fn check_link_test_rate(w: &mut World) {
    let counts: Vec<((usize, usize), u64)> =
        w.checker.tests.iter().map(|(&k, &v)| (k, v)).collect();
    for ((x, y), written) in counts {
        let interval = w.nodes[x]
            .config
            .link_test_interval
            .min(w.nodes[y].config.link_test_interval)
            .as_millis() as u64;
        let lives = w.checker.starts.get(&x).copied().unwrap_or(1);
        let most = w.now_ms / interval + lives;
        if written > most {
            w.fail(format!(
                "n{x} wrote {written} link tests to n{y} in {} ms (interval {interval} ms, {lives} starts)",
                w.now_ms
            ));
        }
    }
}

/// After healing, no honest member reports a missed link test to another.
fn check_link_tests_pass(w: &mut World, x: usize, y: usize) {
    let name = w.nodes[y].name.clone();
    if w.nodes[x]
        .core
        .as_ref()
        .is_some_and(|c| c.link_test_missed(&name))
    {
        w.fail(format!(
            "after healing n{x} still misses its link tests to n{y}"
        ));
    }
}

pub(crate) fn liveness(w: &mut World) {
    check_link_test_rate(w);
    let n = w.nodes.len();
    for x in 0..n {
        if w.nodes[x].hostile {
            continue;
        }
        check_deadlines_decided(w, x);
        for y in 0..n {
            if y == x || w.nodes[y].hostile {
                continue;
            }
            check_complete(w, x, y);
            check_cosigned(w, x, y);
            check_link_tests_pass(w, x, y);
            check_clock_offset(w, x, y);
        }
    }
    let h = n - 1;
    let expected: Vec<usize> = w.checker.expected_alarms.iter().copied().collect();
    for target in expected {
        let name = w.nodes[h].name.clone();
        if !w.checker.alarms.contains(&(target, name)) {
            w.fail(format!(
                "n{target} raised no alarm for the hostile member's equivocation"
            ));
        }
    }
}

/// Receipt times are this node's own: when it stored the peer's receipt or signed its own,
/// never the time the peer signed. The hostile member back-dates everything by a month, so a
/// time the peer signed would be far behind our clock (the clock jumps of the run are at
/// most an hour each, and a batch is submitted soon after it is staged).
pub(crate) fn receipt_times(w: &mut World, node: usize, rows: &detente_store_types::WriteBatch) {
    const SLACK_MS: i64 = 7 * 86_400_000;
    let wall = w.wall(node);
    let times = rows
        .receipts
        .iter()
        .map(|r| r.at_ms)
        .chain(rows.delivered.iter().map(|d| d.at_ms));
    for at_ms in times {
        if (at_ms - wall).abs() > SLACK_MS {
            return w.fail(format!(
                "n{node} records a receipt at {at_ms} ms while its clock reads {wall} ms: \
                 a time the peer signed, not its own"
            ));
        }
    }
}

/// After healing (no clock jumps since, heartbeats on a working link), `x` knows how far
/// `y`'s wall clock is from its own within the bound it reports (half the round trip of the
/// Pong it measured it over), and calls it skewed only if it is beyond the threshold.
fn check_clock_offset(w: &mut World, x: usize, y: usize) {
    let peer = w.nodes[y].name.clone();
    let truth = w.nodes[y].skew_ms - w.nodes[x].skew_ms;
    let Some(core) = w.nodes[x].core.as_ref() else {
        return;
    };
    let Some((link, true)) = core.link(&peer) else {
        return;
    };
    let Some(clock) = link.clock_offset() else {
        return w.fail(format!("n{x} never learned n{y}'s clock on a working link"));
    };
    let Some(error) = clock.error_ms else {
        return w.fail(format!(
            "n{x} measured n{y}'s clock from a Hello only: {clock:?}"
        ));
    };
    if (clock.offset_ms - truth).unsigned_abs() > error {
        return w.fail(format!(
            "n{x} says n{y}'s clock is {} ms from its own (within {error}); it is {truth}",
            clock.offset_ms
        ));
    }
    let warn = link.config().skew_warn.as_millis() as u64;
    let skewed = link.clock_skewed().is_some();
    if skewed && truth.unsigned_abs() <= warn {
        w.fail(format!(
            "n{x} warns of n{y}'s clock at {truth} ms, within the threshold {warn} ms"
        ));
    }
    if !skewed && truth.unsigned_abs() > warn + 2 * error {
        w.fail(format!(
            "n{x} does not warn of n{y}'s clock at {truth} ms, beyond the threshold {warn} ms"
        ));
    }
}

/// `y`'s stream is whole at `x`, nothing held, nothing pending at `y`.
fn check_complete(w: &mut World, x: usize, y: usize) {
    let stream = (channel(w, x, y), *key_of(w, y).as_bytes());
    let (at_x, at_y) = (w.nodes[x].store.size(stream), w.nodes[y].store.size(stream));
    if at_x != at_y {
        return w.fail(format!(
            "after healing n{x} holds {at_x} of n{y}'s {at_y} envelopes"
        ));
    }
    let held =
        w.nodes[x].store.messages.values().any(|m| {
            m.sender == stream.1 && m.channel == stream.0 && m.placement == Placement::Held
        });
    if held {
        return w.fail(format!(
            "after healing n{x} still holds envelopes of n{y} ahead of a gap"
        ));
    }
    let name = w.nodes[x].name.clone();
    let pending = w.nodes[y].store.pending(&name).len();
    if pending > 0 {
        w.fail(format!(
            "after healing n{y} still has {pending} outbox rows for n{x}"
        ));
    }
}

/// Whether every honest stream is whole at every honest member with nothing pending: the
/// quiet moment between two link tests that the liveness checks are made in.
pub(crate) fn settled(w: &World) -> bool {
    let n = w.nodes.len();
    (0..n).filter(|&x| !w.nodes[x].hostile).all(|x| {
        (0..n).filter(|&y| y != x && !w.nodes[y].hostile).all(|y| {
            let stream = (channel(w, x, y), *key_of(w, y).as_bytes());
            let name = w.nodes[x].name.clone();
            w.nodes[x].store.size(stream) == w.nodes[y].store.size(stream)
                && w.nodes[y].store.pending(&name).is_empty()
        })
    })
}

/// A checkpoint co-signed by both covers both streams whole.
fn check_cosigned(w: &mut World, x: usize, y: usize) {
    let c = channel(w, x, y);
    // Link tests and their DELIVERED receipts never stop: what they add after the last
    // checkpoint may stay uncovered. Everything else must be covered.
    let sizes: Vec<([u8; 32], u64, u64)> = [x, y]
        .iter()
        .map(|&i| {
            let k = *key_of(w, i).as_bytes();
            let size = w.nodes[x].store.size((c, k));
            let machine = |m: &detente_store_types::MessageRow| {
                m.kind == 2 || (m.kind == 1 && m.in_reply_to.is_none())
            };
            let floor = (1..=size)
                .rev()
                .find(|&seq| {
                    w.nodes[x]
                        .store
                        .at((c, k), seq)
                        .is_some_and(|m| !machine(m))
                })
                .unwrap_or(0);
            (k, floor, size)
        })
        .collect();
    let covers = w.nodes[x].store.checkpoints.iter().any(|row| {
        row.channel == c
            && row.cosigned
            && SignedCheckpoint::decode(&row.signed).is_ok_and(|s| {
                sizes.iter().all(|(k, floor, size)| {
                    s.checkpoint().members.iter().any(|m| {
                        m.key.as_bytes() == k
                            && (*floor..=*size).contains(&m.size)
                            && w.nodes[x].store.root_at((c, *k), m.size) == Some(m.root)
                    })
                })
            })
    });
    if !covers {
        w.fail(format!(
            "after healing no co-signed checkpoint at n{x} covers the channel with n{y} whole"
        ));
    }
}

/// Every deadline of every message at `x` was decided exactly once.
fn check_deadlines_decided(w: &mut World, x: usize) {
    let mut missing = None;
    for m in w.nodes[x].store.messages.values() {
        if m.kind != 0 && m.kind != 4 {
            continue;
        }
        let mut needs = vec![2u8];
        if m.direction == Direction::Out && m.precedence == 0 {
            needs.push(0);
        }
        for need in needs {
            let n = w
                .checker
                .decisions
                .get(&(x, m.id, need))
                .copied()
                .unwrap_or(0);
            if n != 1 {
                missing = Some((
                    m.seq,
                    need,
                    n,
                    format!(
                        "{} ({:?}, {})",
                        m.peer,
                        m.direction,
                        crate::store::hex(&m.id)
                    ),
                ));
            }
        }
    }
    if let Some((seq, need, n, peer)) = missing {
        w.fail(format!(
            "n{x}: the deadline (level {need}) of seq {seq} with {peer} was decided {n} times"
        ));
    }
}
