//! The store model of one simulated node: committed batches only, applied atomically with
//! the same rules as the SQLite store (a duplicate message fails the whole batch;
//! receipts, misses and delivered ranges are idempotent; prune deletes outbox rows).
//! Whatever was not committed is simply never here, which is what a crash leaves.

use std::collections::{BTreeMap, BTreeSet};

use detente_core::{DeadlineQuery, Snapshot, StoredEnvelope, StoredStream};
use detente_proto::merkle::{self, Hash, MemoryTree};
use detente_store_types::{
    CheckpointRow, DeadlineCandidate, DeliveredRange, Direction, EvidenceRow, GlossaryRow,
    MessageRow, MissRow, OutboxRow, Placement, ReceiptRow, WitnessRow, WriteBatch,
};

pub type Stream = ([u8; 32], [u8; 32]);

#[derive(Debug, Default, Clone)]
pub struct StoreModel {
    pub messages: BTreeMap<[u8; 32], MessageRow>,
    /// (channel, sender, seq) → id.
    pub by_pos: BTreeMap<(Stream, u64), [u8; 32]>,
    pub outbox: BTreeMap<(String, u64), OutboxRow>,
    pub delivered: Vec<DeliveredRange>,
    pub delivered_set: BTreeSet<(String, u64)>,
    pub receipts: BTreeMap<([u8; 32], u8), ReceiptRow>,
    pub misses: BTreeMap<([u8; 32], u8), MissRow>,
    pub checkpoints: Vec<CheckpointRow>,
    pub witness: BTreeMap<Stream, WitnessRow>,
    pub evidence: Vec<EvidenceRow>,
    /// Glossary terms by (peer, lang_a, term_a, lang_b), replaced as the store does.
    pub glossary: BTreeMap<(String, String, String, String), GlossaryRow>,
    /// Appended envelopes of each stream, as a Merkle tree (the sim's own record).
    pub trees: BTreeMap<Stream, MemoryTree>,
    pub commits: u64,
}

impl StoreModel {
    /// Apply a batch atomically; a duplicate message refuses all of it (as the store does).
    pub fn apply(&mut self, batch: &WriteBatch) -> Result<(), String> {
        // Held rows that do not follow their stream leave first (appended ones never do).
        let discarded: BTreeMap<(Stream, u64), [u8; 32]> = batch
            .discard_held
            .iter()
            .filter_map(|&(channel, sender, seq)| {
                let pos = ((channel, sender), seq);
                let id = *self.by_pos.get(&pos)?;
                (self.messages.get(&id)?.placement == Placement::Held).then_some((pos, id))
            })
            .collect();
        let mut fresh = BTreeSet::new();
        for m in &batch.messages {
            let pos = ((m.channel, m.sender), m.seq);
            let taken = self.by_pos.contains_key(&pos) && !discarded.contains_key(&pos);
            if (self.messages.contains_key(&m.id) && !discarded.values().any(|d| *d == m.id))
                || taken
            {
                return Err(format!("duplicate message seq {} ({})", m.seq, hex(&m.id)));
            }
            if !fresh.insert(pos) {
                return Err(format!("duplicate message seq {} in one batch", m.seq));
            }
        }
        for (pos, id) in &discarded {
            self.by_pos.remove(pos);
            self.messages.remove(id);
        }
        let mut appended: BTreeMap<Stream, Vec<u64>> = BTreeMap::new();
        for m in &batch.messages {
            self.by_pos.insert(((m.channel, m.sender), m.seq), m.id);
            self.messages.insert(m.id, m.clone());
            if m.placement == Placement::Appended {
                appended
                    .entry((m.channel, m.sender))
                    .or_default()
                    .push(m.seq);
            }
        }
        for &(channel, sender, seq) in &batch.promote {
            let id = self.by_pos.get(&((channel, sender), seq)).copied();
            match id.and_then(|id| self.messages.get_mut(&id)) {
                Some(m) if m.placement == Placement::Held => m.placement = Placement::Appended,
                _ => return Err(format!("promote of seq {seq} that is not held")),
            }
            appended.entry((channel, sender)).or_default().push(seq);
        }
        for (stream, mut seqs) in appended {
            seqs.sort_unstable();
            let tree = self.trees.entry(stream).or_default();
            for seq in seqs {
                if seq != tree.size() + 1 {
                    return Err(format!("stream appended out of order at seq {seq}"));
                }
                let id = self.by_pos[&(stream, seq)];
                tree.push(merkle::leaf_hash(&self.messages[&id].bytes));
            }
        }
        self.apply_rest(batch);
        self.commits += 1;
        Ok(())
    }

    fn apply_rest(&mut self, batch: &WriteBatch) {
        for o in &batch.outbox {
            self.outbox.insert((o.peer.clone(), o.seq), o.clone());
        }
        for d in &batch.delivered {
            let new: Vec<u64> = (d.from..=d.to)
                .filter(|s| !self.delivered_set.contains(&(d.peer.clone(), *s)))
                .collect();
            if !new.is_empty() {
                self.delivered.push(d.clone());
                for s in new {
                    self.delivered_set.insert((d.peer.clone(), s));
                }
            }
        }
        for r in &batch.receipts {
            self.receipts
                .entry((r.of, r.level as u8))
                .or_insert_with(|| r.clone());
        }
        for (peer, hwm) in &batch.prune {
            self.outbox.retain(|(p, seq), _| p != peer || seq > hwm);
        }
        for m in &batch.misses {
            self.misses
                .entry((m.id, m.level))
                .or_insert_with(|| m.clone());
        }
        for c in &batch.checkpoints {
            match self
                .checkpoints
                .iter_mut()
                .find(|x| x.body_hash == c.body_hash)
            {
                Some(x) => {
                    x.signed = c.signed.clone();
                    x.cosigned |= c.cosigned;
                }
                None => self.checkpoints.push(c.clone()),
            }
        }
        for w in &batch.witness {
            self.witness.insert((w.channel, w.sender), *w);
        }
        self.evidence.extend(batch.evidence.iter().cloned());
        for g in &batch.glossary {
            let key = (
                g.peer.clone(),
                g.lang_a.clone(),
                g.term_a.clone(),
                g.lang_b.clone(),
            );
            self.glossary.insert(key, g.clone());
        }
    }

    /// What the core recovers from.
    pub fn snapshot(&self) -> Snapshot {
        let mut streams: BTreeMap<([u8; 32], [u8; 32]), Vec<StoredEnvelope>> = BTreeMap::new();
        let mut held = Vec::new();
        for row in self.messages.values() {
            match row.placement {
                Placement::Appended => streams
                    .entry((row.channel, row.sender))
                    .or_default()
                    .push(StoredEnvelope::from_row(row, true)),
                Placement::Held => held.push(row.clone()),
            }
        }
        let streams = streams
            .into_iter()
            .map(|((channel, sender), mut envelopes)| {
                envelopes.sort_by_key(|e| e.seq);
                StoredStream {
                    channel,
                    sender,
                    envelopes,
                }
            })
            .collect();
        Snapshot {
            streams,
            held,
            outbox: self.outbox.values().cloned().collect(),
            delivered: self.delivered.clone(),
            receipts: self.receipts.values().cloned().collect(),
            misses: self.misses.values().cloned().collect(),
            checkpoints: self.checkpoints.clone(),
            witness: self.witness.values().copied().collect(),
            glossary: self.glossary.values().cloned().collect(),
        }
    }

    /// The appended length of a stream.
    pub fn size(&self, stream: Stream) -> u64 {
        self.trees.get(&stream).map_or(0, MemoryTree::size)
    }

    pub fn root_at(&self, stream: Stream, size: u64) -> Option<Hash> {
        match self.trees.get(&stream) {
            Some(t) => t.root_at(size).ok(),
            None if size == 0 => Some(merkle::empty_root()),
            None => None,
        }
    }

    pub fn at(&self, stream: Stream, seq: u64) -> Option<&MessageRow> {
        self.by_pos
            .get(&(stream, seq))
            .and_then(|id| self.messages.get(id))
    }

    /// Outbox rows still waiting: not pruned and (for messages) not delivered.
    pub fn pending(&self, peer: &str) -> Vec<&OutboxRow> {
        self.outbox
            .range((peer.to_string(), 0)..=(peer.to_string(), u64::MAX))
            .map(|(_, o)| o)
            .filter(|o| o.is_receipt || !self.delivered_set.contains(&(peer.to_string(), o.seq)))
            .collect()
    }

    /// What the node's store answers to a deadline query (`Store::deadline_due` and
    /// `Store::deadline_state`): texts and notifications with no ACKNOWLEDGED or DECLINED
    /// receipt, with the levels recorded missed and whether ours was delivered.
    pub fn deadline_rows(&self, query: &DeadlineQuery) -> Vec<DeadlineCandidate> {
        let pending = |m: &&MessageRow| {
            (m.kind == 0 || m.kind == 4)
                && !self.receipts.contains_key(&(m.id, 2))
                && !self.receipts.contains_key(&(m.id, 3))
        };
        let start = |m: &MessageRow| match m.direction {
            Direction::Out => m.created_at_ms,
            Direction::In => m.stored_at_ms,
        };
        let candidate = |m: &MessageRow| DeadlineCandidate {
            id: m.id,
            peer: m.peer.clone(),
            seq: m.seq,
            direction: m.direction,
            precedence: m.precedence,
            kind: m.kind,
            created_at_ms: m.created_at_ms,
            stored_at_ms: m.stored_at_ms,
            missed: [0u8, 2]
                .into_iter()
                .filter(|l| self.misses.contains_key(&(m.id, *l)))
                .collect(),
            delivered: m.direction == Direction::Out
                && self.delivered_set.contains(&(m.peer.clone(), m.seq)),
        };
        match query {
            DeadlineQuery::Due {
                group,
                after,
                limit,
            } => {
                let mut rows: Vec<&MessageRow> = self
                    .messages
                    .values()
                    .filter(pending)
                    .filter(|m| {
                        m.peer == group.peer
                            && m.direction == group.direction
                            && m.precedence == group.precedence
                            && after.is_none_or(|a| (start(m), m.id) > a)
                    })
                    .collect();
                rows.sort_by_key(|m| (start(m), m.id));
                rows.into_iter()
                    .take(*limit as usize)
                    .map(candidate)
                    .collect()
            }
            DeadlineQuery::State { ids } => ids
                .iter()
                .filter_map(|id| self.messages.get(id))
                .filter(pending)
                .map(candidate)
                .collect(),
        }
    }

    /// Messages of `direction` with a peer.
    pub fn with_peer<'a>(
        &'a self,
        peer: &'a str,
        direction: Direction,
    ) -> impl Iterator<Item = &'a MessageRow> + 'a {
        self.messages
            .values()
            .filter(move |m| m.peer == peer && m.direction == direction)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().take(6).map(|x| format!("{x:02x}")).collect()
}
