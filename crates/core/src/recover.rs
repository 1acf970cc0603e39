//! Starting from the store alone: [`Snapshot`] is what the committed rows say, and
//! [`Core::recover`] rebuilds every stream, tree, hold, outbox, witness and open deadline
//! from it, checking that each stream is gap-free and hash-linked before trusting it.

use std::collections::BTreeSet;
use std::time::Instant;

use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::deadline::Side;
use detente_proto::envelope::parse_unverified_from;
use detente_proto::{Body, Envelope, MessageId, PartyKey, Precedence};
use detente_store_types::{
    CheckpointRow, DeliveredRange, Direction, GlossaryRow, MessageRow, MissRow, OutboxRow,
    Placement, ReceiptRow, WitnessRow, WriteBatch,
};

use crate::checkpoints::CHECKPOINTS_KEPT_MAX;
use crate::deadlines::Group;
use crate::peer::{Held, OutEntry, Peer};
use crate::{bugs, Config, Core, PlantedBug};

/// The committed rows a core recovers from (a store's current content).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every stored envelope, with its current placement.
    pub messages: Vec<MessageRow>,
    /// Outbox rows not yet pruned.
    pub outbox: Vec<OutboxRow>,
    pub delivered: Vec<DeliveredRange>,
    pub receipts: Vec<ReceiptRow>,
    pub misses: Vec<MissRow>,
    /// In storage order.
    pub checkpoints: Vec<CheckpointRow>,
    pub witness: Vec<WitnessRow>,
    /// Glossary terms (only their keys matter: the count per channel is bounded).
    pub glossary: Vec<GlossaryRow>,
    /// Ids of appended rows whose bytes the loader could not vouch for (they fail
    /// verification; the node raises an alarm naming each). Their place in the stream is
    /// kept, from the row's id and columns, so that the stream goes on; their bytes are not
    /// read (no charter, no link check through them).
    pub tampered: BTreeSet<[u8; 32]>,
}

/// The store's rows do not make a consistent record. Remedy: restore the database from a
/// backup; the node refuses to run on a record it cannot vouch for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    #[error("stream of {peer} ({direction}) is corrupt at seq {seq}: {what}")]
    Stream {
        peer: String,
        direction: &'static str,
        seq: u64,
        what: String,
    },
}

struct Parsed<'a> {
    row: &'a MessageRow,
    /// `None` for a row listed in [`Snapshot::tampered`].
    envelope: Option<Envelope>,
}

impl Parsed<'_> {
    fn seq(&self) -> u64 {
        self.envelope.as_ref().map_or(self.row.seq, |e| e.seq)
    }

    fn kind(&self) -> u8 {
        self.envelope
            .as_ref()
            .map_or(self.row.kind, |e| e.body.kind())
    }

    fn precedence(&self) -> Precedence {
        match &self.envelope {
            Some(e) => e.precedence,
            None => Precedence::from_u8(self.row.precedence).unwrap_or(Precedence::Routine),
        }
    }
}

impl Core {
    /// A core that continues from committed rows. `now` and `wall_ms` are the clocks at
    /// start (deadlines counted before the restart are recovered from stored wall-clock
    /// times; a clock that stepped back only makes them fire late).
    pub fn recover(
        config: Config,
        snapshot: Snapshot,
        now: Instant,
        wall_ms: i64,
    ) -> Result<Core, RecoverError> {
        let mut core = Core::empty(&config, now, wall_ms);
        for index in 0..core.peers.len() {
            core.recover_peer(index, &snapshot)?;
        }
        for row in &snapshot.glossary {
            core.glossary.insert(row);
        }
        Ok(core)
    }

    fn recover_peer(&mut self, index: usize, snapshot: &Snapshot) -> Result<(), RecoverError> {
        let forget_held = bugs::is(self.bug, PlantedBug::ForgetHeldAtRestart);
        let me = self.me;
        let p = &mut self.peers[index];
        let mine: Vec<&MessageRow> = snapshot
            .messages
            .iter()
            .filter(|m| m.channel == p.channel.0)
            .collect();
        let tampered = &snapshot.tampered;
        let mut out: Vec<Parsed> = parsed(&mine, &me, None, tampered);
        let theirs = Some(Placement::Appended);
        let mut inb: Vec<Parsed> = parsed(&mine, &p.key, theirs, tampered);
        out.sort_by_key(Parsed::seq);
        inb.sort_by_key(Parsed::seq);
        let mut scratch = WriteBatch::default();
        rebuild(p, &out, me, true, &mut scratch)?;
        let key = p.key;
        rebuild(p, &inb, key, false, &mut scratch)?;
        if !forget_held {
            let held = parsed(&mine, &p.key, Some(Placement::Held), tampered);
            for (m, e) in held.iter().filter_map(|m| Some((m, m.envelope.as_ref()?))) {
                let held = Held {
                    id: MessageId(m.row.id),
                    prev: e.prev,
                    bytes: m.row.bytes.clone(),
                };
                p.in_index
                    .insert(held.id, (e.seq, e.body.kind(), e.precedence));
                p.held.insert(e.seq, held);
            }
        }
        p.out_durable = p.out.size();
        p.inb_durable = *p.inb.cursor;
        self.recover_outbox(index, snapshot);
        // Every FLASH not known delivered (the outbox cannot tell: the peer's Ack prunes it
        // before its DELIVERED may have come).
        let p = &mut self.peers[index];
        let delivered = delivered_set(snapshot, &p.name);
        for m in &out {
            let Some(e) = m.envelope.as_ref() else {
                continue;
            };
            if !delivered.contains(&e.seq)
                && e.precedence == Precedence::Flash
                && detente_proto::deadline::bears_deadline(e.body.kind())
            {
                p.flash_undelivered.insert(e.seq, MessageId(m.row.id));
            }
        }
        self.recover_checkpoints(index, snapshot);
        self.recover_charter(index, &out, &inb);
        self.recover_deadlines(index, snapshot);
        Ok(())
    }

    fn recover_outbox(&mut self, index: usize, snapshot: &Snapshot) {
        let p = &mut self.peers[index];
        let delivered = delivered_set(snapshot, &p.name);
        for row in snapshot.outbox.iter().filter(|r| r.peer == p.name) {
            if row.seq == 0 || row.seq > p.out.size() {
                continue;
            }
            if !row.is_receipt && delivered.contains(&row.seq) {
                continue;
            }
            let precedence = Precedence::from_u8(row.precedence).unwrap_or(Precedence::Routine);
            p.outbox.insert(
                row.seq,
                OutEntry {
                    precedence,
                    is_receipt: row.is_receipt,
                },
            );
        }
        // Every envelope of ours below the lowest one still to send was pruned (the peer's
        // hwm reached it) or covered by a DELIVERED receipt: the peer holds that prefix, as
        // it had confirmed before the restart (the witness rule may sign up to it at once).
        let held_by_peer = p.outbox.keys().next().map_or(p.out.size(), |seq| seq - 1);
        p.confirmed = held_by_peer.min(p.out.size());
        // Only what may be sent again stays in memory.
        let outbox = &p.outbox;
        p.out.bytes.retain(|seq, _| outbox.contains_key(seq));
    }

    fn recover_checkpoints(&mut self, index: usize, snapshot: &Snapshot) {
        let p = &mut self.peers[index];
        for w in snapshot.witness.iter().filter(|w| w.channel == p.channel.0) {
            p.witness.insert(w.sender, (w.size, w.root));
        }
        let rows = snapshot
            .checkpoints
            .iter()
            .filter(|c| c.channel == p.channel.0);
        for row in rows {
            let Ok(signed) = SignedCheckpoint::decode(&row.signed) else {
                continue;
            };
            match p.checkpoints.iter_mut().find(|c| c.body() == signed.body()) {
                Some(c) => {
                    c.merge(&signed);
                }
                None => p.checkpoints.push(signed),
            }
        }
        let excess = p.checkpoints.len().saturating_sub(CHECKPOINTS_KEPT_MAX);
        p.checkpoints.drain(..excess);
        let signed: u64 = p.witness.values().map(|w| w.0).sum();
        p.unsigned = (p.out.size() + p.inb.size()).saturating_sub(signed);
    }

    fn recover_charter(&mut self, index: usize, out: &[Parsed], inb: &[Parsed]) {
        let latest = |list: &[Parsed]| {
            list.iter()
                .rev()
                .find_map(|m| match &m.envelope.as_ref()?.body {
                    Body::Charter(c) => Some(c.clone()),
                    _ => None,
                })
        };
        let ours = latest(out);
        let theirs = latest(inb);
        let p = &mut self.peers[index];
        p.our_charter = ours.as_ref().map(|c| c.digest());
        p.their_charter = theirs.as_ref().map(|c| c.digest());
        if p.our_charter.is_some() && p.our_charter == p.their_charter {
            p.agreed = ours;
        }
    }

    /// Nothing is watched after a restart: every group with texts or notifications is read
    /// back from the store, nearest due first (see the deadlines module).
    fn recover_deadlines(&mut self, index: usize, snapshot: &Snapshot) {
        let p = &self.peers[index];
        let mut groups = BTreeSet::new();
        for m in snapshot
            .messages
            .iter()
            .filter(|m| m.channel == p.channel.0)
        {
            if !detente_proto::deadline::bears_deadline(m.kind) {
                continue;
            }
            let side = match m.direction {
                Direction::Out => Side::Sender,
                Direction::In => Side::Receiver,
            };
            let precedence = Precedence::from_u8(m.precedence).unwrap_or(Precedence::Routine);
            groups.insert(Group::new(&p.name, side, precedence));
        }
        for group in groups {
            self.tracker.spill_all(group, self.now);
        }
    }
}

/// The rows of `sender` in `placement`, parsed; a row that does not parse and is not listed
/// as tampered is left out (and so found as a gap).
fn parsed<'a>(
    rows: &[&'a MessageRow],
    sender: &PartyKey,
    placement: Option<Placement>,
    tampered: &BTreeSet<[u8; 32]>,
) -> Vec<Parsed<'a>> {
    rows.iter()
        .filter(|m| &m.sender == sender.as_bytes() && placement.is_none_or(|p| p == m.placement))
        .filter_map(|row| {
            if tampered.contains(&row.id) {
                return Some(Parsed {
                    row,
                    envelope: None,
                });
            }
            let envelope = Some(parse_unverified_from(&row.bytes, sender).ok()?);
            Some(Parsed { row, envelope })
        })
        .collect()
}

/// Re-append a stream in `seq` order, checking it is gap-free and hash-linked.
fn rebuild(
    p: &mut Peer,
    list: &[Parsed],
    sender: PartyKey,
    ours: bool,
    scratch: &mut WriteBatch,
) -> Result<(), RecoverError> {
    let channel = p.channel;
    let direction = if ours { "ours" } else { "theirs" };
    for m in list {
        let stream = if ours { &mut p.out } else { &mut p.inb };
        let seq = m.seq();
        let corrupt = |what: &str| RecoverError::Stream {
            peer: p.name.clone(),
            direction,
            seq,
            what: what.to_string(),
        };
        if seq != stream.cursor.next_seq {
            return Err(corrupt("a gap or a duplicate"));
        }
        if m.envelope
            .as_ref()
            .is_some_and(|e| e.prev != stream.cursor.last_id)
        {
            return Err(corrupt("prev does not match"));
        }
        let id = MessageId(m.row.id);
        stream.append(scratch, channel, &sender, id, m.row.bytes.clone());
        if m.envelope.is_none() && p.damaged.is_none() {
            p.damaged = Some(format!(
                "the stored envelope seq {seq} of the {direction} stream fails verification"
            ));
        }
        let entry = (seq, m.kind(), m.precedence());
        if ours {
            p.out_index.insert(id, entry);
        } else {
            p.in_index.insert(id, entry);
        }
    }
    Ok(())
}

fn delivered_set(snapshot: &Snapshot, peer: &str) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for d in snapshot.delivered.iter().filter(|d| d.peer == peer) {
        // Bounded by our stream: ranges are clamped to it when they arrive.
        set.extend(d.from..=d.to);
    }
    set
}
