//! Receiving the peer's stream: verify, then append, hold, recognise a replay, or refuse;
//! promote held envelopes when their gap fills; equivocation evidence; receipt effects; one
//! DELIVERED receipt per batch for what it stores.

use detente_proto::stream::{classify, ranges, Disposition, Refusal};
use detente_proto::{
    Body, EnvelopeError, Frame, MessageId, Precedence, Receipt, ReceiptLevel, ReceiptTarget,
    RefuseCode, VerifiedEnvelope,
};
use detente_store_types::{
    DeliveredRange, Direction, EvidenceRow, Placement, EVIDENCE_BROKEN_CHAIN, EVIDENCE_ENVELOPES,
};

use crate::deadlines::{Decision, Group};
use crate::notification::check_notification;
use crate::peer::{receipt_row, row, Held};
use crate::{bugs, Core, Event, Need, PlantedBug, Release, SessionId, STAGED_MESSAGES_MAX};
use detente_proto::deadline::Side;

impl Core {
    /// An envelope frame's payload, decoded and its signature checked against the peer's
    /// key (one by one or in a batch: the same verdicts).
    pub(crate) fn on_envelope(
        &mut self,
        index: usize,
        session: SessionId,
        verified: Result<VerifiedEnvelope, EnvelopeError>,
    ) {
        if let Some(s) = self.peers[index].session.as_mut() {
            s.received += 1;
            s.ack_due = true;
        }
        let verified = match verified {
            Ok(v) => v,
            Err(e) => return self.refuse(index, session, 0, RefuseCode::Invalid, &e.to_string()),
        };
        let seq = verified.envelope().seq;
        if verified.envelope().channel != self.peers[index].channel {
            return self.refuse(index, session, seq, RefuseCode::Invalid, "wrong channel");
        }
        // A notification in a format this node does not hold, or with a value its format
        // refuses, is refused like a bad signature: nothing of it is stored.
        if let Body::Notification(n) = &verified.envelope().body {
            if let Err(e) = check_notification(n, verified.envelope().created_at_ms) {
                let why = format!("seq {seq}: {e}");
                return self.refuse(index, session, 0, RefuseCode::Invalid, &why);
            }
        }
        if self.staging.batch.messages.len() >= STAGED_MESSAGES_MAX {
            return self.refuse(index, session, seq, RefuseCode::Busy, "busy");
        }
        let p = &self.peers[index];
        let disposition = match p.held.get(&seq) {
            Some(h) if h.id == verified.id() => Disposition::Known,
            Some(h) => {
                let first = h.bytes.clone();
                return self.equivocation(index, session, seq, first, &verified);
            }
            None => classify(&p.inb.cursor, verified.envelope(), p.held.len() as u64),
        };
        let disposition = match disposition {
            Disposition::Refuse(Refusal::PrevMismatch)
                if bugs::is(self.bug, PlantedBug::SkipPrevCheck) =>
            {
                Disposition::Append
            }
            d => d,
        };
        match disposition {
            Disposition::Append => self.accept(index, verified, Placement::Appended),
            Disposition::Hold => self.accept(index, verified, Placement::Held),
            Disposition::Known => {
                let ours = self.peers[index].inb.leaf_at(seq);
                let leaf = detente_proto::merkle::leaf_hash(verified.bytes());
                if ours.is_some_and(|ours| ours != leaf) {
                    // Our copy is in the store, not in memory: the driver puts it in
                    // the evidence before committing (`EvidenceRow::first`).
                    self.equivocation(index, session, seq, Vec::new(), &verified);
                }
            }
            Disposition::Refuse(refusal) => {
                let code = match refusal {
                    Refusal::PrevMismatch => RefuseCode::PrevMismatch,
                    Refusal::TooFarAhead { .. } => RefuseCode::TooFarAhead,
                    Refusal::HeldFull { .. } => RefuseCode::HeldFull,
                    _ => RefuseCode::Other,
                };
                self.refuse(index, session, seq, code, &refusal.to_string());
            }
        }
    }

    fn refuse(&mut self, index: usize, session: SessionId, seq: u64, code: RefuseCode, why: &str) {
        let peer = self.peers[index].name.clone();
        self.event(Event::Refused {
            peer,
            what: format!("seq {seq}: {why}"),
        });
        let reason = why.to_string();
        self.frame(session, Frame::Refuse { seq, code, reason });
    }

    /// Store a verified envelope (appended or held) and what it causes.
    fn accept(&mut self, index: usize, verified: VerifiedEnvelope, placement: Placement) {
        let (wall, now) = (self.wall_ms, self.now);
        let p = &mut self.peers[index];
        p.touched = true;
        let e = verified.envelope();
        let (seq, id, kind, precedence) = (e.seq, verified.id(), e.body.kind(), e.precedence);
        let batch = &mut self.staging.batch;
        batch
            .messages
            .push(row(&p.name, &verified, Direction::In, placement, wall));
        p.in_index.insert(id, (seq, kind, precedence));
        let peer = p.name.clone();
        if placement == Placement::Held {
            let held = Held {
                id,
                prev: e.prev,
                bytes: verified.bytes().to_vec(),
            };
            p.held.insert(seq, held);
        } else {
            let (channel, key) = (p.channel, p.key);
            p.inb
                .append(batch, channel, &key, id, verified.bytes().to_vec());
            p.unsigned += 1;
        }
        if !matches!(e.body, Body::Receipt(_)) {
            p.delivered_pending.push(seq);
            p.receipt_precedence = p.receipt_precedence.min(precedence);
        }
        let deadlines = *p.deadlines(&self.deadlines);
        let group = Group::new(&peer, Side::Receiver, precedence);
        self.tracker
            .start(group, id, kind, &deadlines, now, wall, &[]);
        self.release_event(Event::Stored {
            peer,
            id,
            seq,
            direction: Direction::In,
            precedence,
            kind,
        });
        match &verified.envelope().body {
            Body::Receipt(r) => self.receipt_effects(index, &verified, r),
            Body::Charter(c) => {
                self.peers[index].their_charter = Some(c.digest());
                self.check_agreed(index, Some(c.clone()));
            }
            _ => {}
        }
        self.promote_held(index);
    }

    /// Append held envelopes whose gap has filled, checking each one's `prev`.
    fn promote_held(&mut self, index: usize) {
        let p = &mut self.peers[index];
        let batch = &mut self.staging.batch;
        while let Some(next) = p.held.first_key_value().map(|(&s, _)| s) {
            if next != p.inb.cursor.next_seq {
                break;
            }
            if p.held[&next].prev != p.inb.cursor.last_id {
                let held = p.held.remove(&next).expect("present");
                return self.broken_chain(index, next, held);
            }
            let held = p.held.remove(&next).expect("present");
            let (channel, key) = (p.channel, p.key);
            p.inb.append(batch, channel, &key, held.id, held.bytes);
            p.unsigned += 1;
            batch.promote.push((channel.0, *key.as_bytes(), next));
        }
    }

    /// The peer's held envelope at `seq` does not follow its own envelope at `seq - 1`
    /// (issue 12, item 17): both are signed by the peer and cannot both be its stream. The
    /// held one leaves the messages (discarded from the store, or from this batch if it
    /// came in it) and is kept as broken-chain evidence with the appended one (the
    /// committer fills that in, [`WriteBatch::evidence_to_fill`]); the alarm is raised once
    /// it is durable. The seq is open again: the envelope that does follow is appended when
    /// it comes, instead of being refused as a conflict for ever.
    ///
    /// [`WriteBatch::evidence_to_fill`]: detente_store_types::WriteBatch::evidence_to_fill
    fn broken_chain(&mut self, index: usize, seq: u64, held: Held) {
        let p = &mut self.peers[index];
        let batch = &mut self.staging.batch;
        match batch.messages.iter().position(|m| m.id == held.id.0) {
            Some(at) => {
                batch.messages.remove(at);
                p.delivered_pending.retain(|s| *s != seq);
                self.staging.releases.retain(
                    |r| !matches!(r, Release::Event(Event::Stored { id, .. }) if *id == held.id),
                );
            }
            None => {
                batch
                    .discard_held
                    .push((p.channel.0, *p.key.as_bytes(), seq));
                let peer = p.name.clone();
                self.release_event(Event::Discarded { peer, id: held.id });
            }
        }
        // It owes no deadline any more (it was watched since it was received).
        self.tracker.forget(held.id);
        let p = &mut self.peers[index];
        p.in_index.remove(&held.id);
        let detail = format!(
            "the peer's held envelope for seq {seq} does not follow its envelope at seq {}; \
             kept as evidence, not in the transcript",
            seq - 1
        );
        self.evidence(
            index,
            EVIDENCE_BROKEN_CHAIN,
            seq,
            (Vec::new(), held.bytes),
            detail,
        );
    }

    /// Stage two envelopes of the peer's that contradict each other as evidence about `seq`;
    /// the alarm is released once it is durable.
    fn evidence(
        &mut self,
        index: usize,
        kind: u8,
        seq: u64,
        (first, second): (Vec<u8>, Vec<u8>),
        detail: String,
    ) {
        let p = &self.peers[index];
        self.staging.batch.evidence.push(EvidenceRow {
            id: 0,
            channel: p.channel.0,
            peer: p.name.clone(),
            kind,
            seq: Some(seq),
            first,
            second,
            detail: detail.clone(),
            detected_at_ms: self.wall_ms,
        });
        let peer = p.name.clone();
        self.release_event(Event::Alarm { peer, detail });
    }

    /// Two different envelopes signed by the peer for one `seq`: both kept as evidence, the
    /// alarm raised once it is durable, the second refused.
    fn equivocation(
        &mut self,
        index: usize,
        session: SessionId,
        seq: u64,
        first: Vec<u8>,
        second: &VerifiedEnvelope,
    ) {
        let detail = format!("the peer signed two different envelopes for seq {seq}");
        let pair = (first, second.bytes().to_vec());
        self.evidence(index, EVIDENCE_ENVELOPES, seq, pair, detail);
        let reason = "a different envelope holds this seq";
        self.refuse(index, session, seq, RefuseCode::Conflict, reason);
    }

    /// A receipt from the peer about our stream.
    fn receipt_effects(&mut self, index: usize, verified: &VerifiedEnvelope, receipt: &Receipt) {
        let now = self.now;
        // When we stored it, on our clock: never the time the peer signed (issue 12, item
        // 11: a peer's clock hours off must not make a late answer look punctual, or the
        // reverse).
        let at_ms = self.wall_ms;
        match &receipt.target {
            ReceiptTarget::Ranges(list) if receipt.level == ReceiptLevel::Delivered => {
                for &(from, to) in list {
                    let p = &mut self.peers[index];
                    // Only envelopes we wrote durably can be held by the peer.
                    let to = to.min(p.out_durable);
                    if from == 0 || from > to {
                        continue;
                    }
                    let peer = p.name.clone();
                    self.staging.batch.delivered.push(DeliveredRange {
                        peer: peer.clone(),
                        from,
                        to,
                        at_ms,
                    });
                    let seqs: Vec<u64> = p.outbox.range(from..=to).map(|(&s, _)| s).collect();
                    let mut met: Vec<MessageId> = Vec::new();
                    for seq in seqs {
                        if !p.outbox[&seq].is_receipt {
                            p.outbox.remove(&seq);
                            p.out.bytes.remove(&seq);
                        }
                    }
                    let delivered: Vec<u64> = p
                        .flash_undelivered
                        .range(from..=to)
                        .map(|(&s, _)| s)
                        .collect();
                    for seq in delivered {
                        met.extend(p.flash_undelivered.remove(&seq));
                    }
                    let group = Group::new(&peer, Side::Sender, Precedence::Flash);
                    for id in met {
                        let met = self.tracker.meet(&group, id, Need::Delivered, now);
                        self.decided(met, id);
                    }
                    self.link_test_delivered(index, from, to);
                    self.release_event(Event::Delivered { peer, from, to });
                }
            }
            ReceiptTarget::Message(of) if receipt.level != ReceiptLevel::Delivered => {
                let p = &self.peers[index];
                let Some(&(_, kind, precedence)) = p.out_index.get(of) else {
                    return;
                };
                let group = Group::new(&p.name, Side::Sender, precedence);
                if kind == 1 {
                    // Kept in the transcript (the peer signed it) but it answers nothing.
                    return;
                }
                self.staging
                    .batch
                    .receipts
                    .push(receipt_row(*of, receipt, verified, at_ms));
                if matches!(
                    receipt.level,
                    ReceiptLevel::Acknowledged | ReceiptLevel::Declined
                ) {
                    let met = self.tracker.meet(&group, *of, Need::Answered, now);
                    self.decided(met, *of);
                }
                self.release_event(Event::Receipt {
                    of: *of,
                    level: receipt.level,
                });
            }
            _ => {}
        }
    }

    pub(crate) fn decided(&mut self, met: Option<(String, Need, Decision)>, id: MessageId) {
        if let Some((peer, need, decision)) = met {
            self.decide(peer, id, need, decision);
        }
    }

    /// Record a deadline decision in the batch (a miss in `misses`) and show it once the
    /// batch is durable.
    pub(crate) fn decide(&mut self, peer: String, id: MessageId, need: Need, decision: Decision) {
        if decision == Decision::Missed {
            self.staging
                .batch
                .misses
                .push(detente_store_types::MissRow {
                    id: id.0,
                    level: need.code(),
                    due_at_ms: self.wall_ms,
                    missed_at_ms: self.wall_ms,
                });
        }
        self.release_event(Event::Deadline {
            peer,
            id,
            need,
            decision,
        });
    }

    /// One DELIVERED receipt covering what this batch stores from peer `index`, at the
    /// highest precedence among them, in the same batch.
    pub(crate) fn stage_delivered(&mut self, index: usize) {
        let p = &mut self.peers[index];
        if p.delivered_pending.is_empty() {
            return;
        }
        let mut seqs = std::mem::take(&mut p.delivered_pending);
        let precedence = std::mem::replace(&mut p.receipt_precedence, Precedence::Routine);
        seqs.sort_unstable();
        let limit = detente_proto::envelope::limits::RECEIPT_RANGES_MAX;
        for chunk in ranges(&seqs).chunks(limit) {
            let body = Body::Receipt(Receipt {
                level: ReceiptLevel::Delivered,
                target: ReceiptTarget::Ranges(chunk.to_vec()),
                note: None,
            });
            // Our own receipt cannot fail its bounds: ranges are chunked to the limit.
            let sent = crate::Sent::system(precedence, &self.author, None);
            let _ = self.stage_send(index, sent, body);
        }
    }
}
