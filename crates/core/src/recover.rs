//! Starting from the store alone: [`Snapshot`] is what the committed rows say, and
//! [`Core::recover`] rebuilds every stream, tree, hold, outbox, witness and open deadline
//! from it, checking that each stream is gap-free and hash-linked before trusting it.
//!
//! A stream arrives as [`StoredEnvelope`]s: each envelope's place, columns, Merkle leaf and
//! signed `prev`, without its bytes except where the core keeps them (our envelopes still to
//! send, the latest charters). So what recovery holds follows the index of the transcript
//! (about 140 bytes an envelope), not its bytes, and no envelope is parsed twice.

use std::collections::BTreeSet;
use std::time::Instant;

use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::deadline::Side;
use detente_proto::envelope::{parse_unverified_from, KIND_CHARTER};
use detente_proto::merkle::{self, Hash};
use detente_proto::{Body, Charter, MessageId, PartyKey, Precedence};
use detente_store_types::{
    CheckpointRow, DeliveredRange, GlossaryRow, MessageRow, MissRow, OutboxRow, ReceiptRow,
    WitnessRow, WriteBatch,
};

use crate::checkpoints::CHECKPOINTS_KEPT_MAX;
use crate::deadlines::Group;
use crate::peer::{Held, OutEntry, Peer};
use crate::{bugs, Config, Core, PlantedBug};

/// How many of a stream's latest charters a loader keeps the bytes of
/// ([`StoredEnvelope::bytes`]): the core takes the latest one it can vouch for.
pub const CHARTERS_KEPT: usize = 8;

/// The committed rows a core recovers from (a store's current content).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every appended stream, one entry per `(channel, sender)`.
    pub streams: Vec<StoredStream>,
    /// Envelopes held ahead of a gap (bounded by the hold), whole.
    pub held: Vec<MessageRow>,
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
}

impl Snapshot {
    /// The number of appended envelopes, every stream.
    pub fn envelopes(&self) -> usize {
        self.streams.iter().map(|s| s.envelopes.len()).sum()
    }

    fn stream(&self, channel: [u8; 32], sender: &PartyKey) -> &[StoredEnvelope] {
        self.streams
            .iter()
            .find(|s| s.channel == channel && &s.sender == sender.as_bytes())
            .map_or(&[], |s| s.envelopes.as_slice())
    }
}

/// One sender's appended stream in one channel, in `seq` order.
#[derive(Debug, Clone, Default)]
pub struct StoredStream {
    pub channel: [u8; 32],
    pub sender: [u8; 32],
    pub envelopes: Vec<StoredEnvelope>,
}

/// One appended envelope as recovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The message id: the hash of the genuine bytes (for an altered row, the id its
    /// successor signs, or its stored id).
    pub id: [u8; 32],
    pub seq: u64,
    pub kind: u8,
    pub precedence: u8,
    /// The Merkle leaf of the stored bytes ([`merkle::leaf_hash`]).
    pub leaf: Hash,
    /// The id this envelope signs as its `prev`; `None` for a row its loader could not vouch
    /// for (it fails verification): its place is kept, its bytes are not read, and no
    /// checkpoint is signed over the stream.
    pub prev: Option<[u8; 32]>,
    /// The stored bytes, kept only where the core needs them: our envelopes still in the
    /// outbox, and a stream's latest [`CHARTERS_KEPT`] charters.
    pub bytes: Option<Vec<u8>>,
}

impl StoredEnvelope {
    /// From a stored row, parsed without verification (a row that does not parse is not
    /// vouched for); its bytes kept when `keep_bytes`.
    pub fn from_row(row: &MessageRow, keep_bytes: bool) -> StoredEnvelope {
        let sender = PartyKey::from_bytes(row.sender).ok();
        let parsed = sender.and_then(|k| parse_unverified_from(&row.bytes, &k).ok());
        StoredEnvelope {
            id: row.id,
            seq: parsed.as_ref().map_or(row.seq, |e| e.seq),
            kind: parsed.as_ref().map_or(row.kind, |e| e.body.kind()),
            precedence: parsed
                .as_ref()
                .map_or(row.precedence, |e| e.precedence as u8),
            leaf: merkle::leaf_hash(&row.bytes),
            prev: parsed.as_ref().map(|e| e.prev.0),
            bytes: keep_bytes.then(|| row.bytes.clone()),
        }
    }

    fn precedence(&self) -> Precedence {
        Precedence::from_u8(self.precedence).unwrap_or(Precedence::Routine)
    }
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
        let out = snapshot.stream(p.channel.0, &me);
        let inb = snapshot.stream(p.channel.0, &p.key);
        let mut scratch = WriteBatch::default();
        rebuild(p, out, me, true, &mut scratch)?;
        let key = p.key;
        rebuild(p, inb, key, false, &mut scratch)?;
        if !forget_held {
            let held = snapshot
                .held
                .iter()
                .filter(|m| m.channel == p.channel.0 && m.sender == *key.as_bytes());
            for (m, e) in
                held.filter_map(|m| Some((m, parse_unverified_from(&m.bytes, &key).ok()?)))
            {
                let held = Held {
                    id: MessageId(m.id),
                    prev: e.prev,
                    bytes: m.bytes.clone(),
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
        for m in out.iter().filter(|m| m.prev.is_some()) {
            if !delivered.contains(&m.seq)
                && m.precedence() == Precedence::Flash
                && detente_proto::deadline::bears_deadline(m.kind)
            {
                p.flash_undelivered.insert(m.seq, MessageId(m.id));
            }
        }
        self.recover_checkpoints(index, snapshot);
        self.recover_charter(index, out, inb);
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

    fn recover_charter(&mut self, index: usize, out: &[StoredEnvelope], inb: &[StoredEnvelope]) {
        let p = &mut self.peers[index];
        let ours = latest_charter(out, &self.me);
        let theirs = latest_charter(inb, &p.key);
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
        let sides = [
            (snapshot.stream(p.channel.0, &self.me), Side::Sender),
            (snapshot.stream(p.channel.0, &p.key), Side::Receiver),
        ];
        for (list, side) in sides {
            for m in list {
                if detente_proto::deadline::bears_deadline(m.kind) {
                    groups.insert(Group::new(&p.name, side, m.precedence()));
                }
            }
        }
        for m in snapshot.held.iter().filter(|m| m.channel == p.channel.0) {
            if detente_proto::deadline::bears_deadline(m.kind) {
                let precedence = Precedence::from_u8(m.precedence).unwrap_or(Precedence::Routine);
                groups.insert(Group::new(&p.name, Side::Receiver, precedence));
            }
        }
        for group in groups {
            self.tracker.spill_all(group, self.now);
        }
    }
}

/// The latest charter of a stream that its loader vouched for and kept the bytes of.
fn latest_charter(list: &[StoredEnvelope], sender: &PartyKey) -> Option<Charter> {
    list.iter()
        .rev()
        .filter(|m| m.kind == KIND_CHARTER && m.prev.is_some())
        .find_map(|m| {
            let e = parse_unverified_from(m.bytes.as_deref()?, sender).ok()?;
            match e.body {
                Body::Charter(c) => Some(c),
                _ => None,
            }
        })
}

/// Re-append a stream in `seq` order, checking it is gap-free and hash-linked.
fn rebuild(
    p: &mut Peer,
    list: &[StoredEnvelope],
    sender: PartyKey,
    ours: bool,
    scratch: &mut WriteBatch,
) -> Result<(), RecoverError> {
    let channel = p.channel;
    let direction = if ours { "ours" } else { "theirs" };
    for m in list {
        let stream = if ours { &mut p.out } else { &mut p.inb };
        let seq = m.seq;
        let corrupt = |what: &str| RecoverError::Stream {
            peer: p.name.clone(),
            direction,
            seq,
            what: what.to_string(),
        };
        if seq != stream.cursor.next_seq {
            return Err(corrupt("a gap or a duplicate"));
        }
        if m.prev.is_some_and(|prev| prev != stream.cursor.last_id.0) {
            return Err(corrupt("prev does not match"));
        }
        let id = MessageId(m.id);
        let bytes = if ours { m.bytes.clone() } else { None };
        stream.append_leaf(scratch, channel, &sender, id, m.leaf, bytes);
        if m.prev.is_none() && p.damaged.is_none() {
            p.damaged = Some(format!(
                "the stored envelope seq {seq} of the {direction} stream fails verification"
            ));
        }
        let entry = (seq, m.kind, m.precedence());
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
