//! The rows and the group-commit batch of detente's storage interface.
//!
//! These are database rows, not protocol types. They live apart from `detente-store` (the
//! `Store` trait and its database implementations) so that the sans-IO core
//! (`detente-core`) can build batches and recover from rows without depending on any
//! database driver or async runtime.

#![forbid(unsafe_code)]

/// A SHA-256 value as stored (message id, stream hash, channel id).
pub type Hash32 = [u8; 32];

/// Which way a message went, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written by this node's party.
    Out,
    /// Received from a peer.
    In,
}

/// Whether a received message is in the transcript yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Appended to its sender's stream in `seq` order: every lower `seq` is present.
    Appended,
    /// Verified and durable, but ahead of a gap (it overtook lower-precedence traffic on the
    /// wire). It is shown at once and appended when the gap fills.
    Held,
}

/// Receipt levels as stored. The numbers are part of the schema; never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReceiptLevel {
    Delivered = 0,
    Read = 1,
    Acknowledged = 2,
    Declined = 3,
}

impl ReceiptLevel {
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            0 => Some(Self::Delivered),
            1 => Some(Self::Read),
            2 => Some(Self::Acknowledged),
            3 => Some(Self::Declined),
            _ => None,
        }
    }
}

/// One envelope as stored, with the fields the node indexes and lists by. `bytes` is the
/// exact signed encoding; everything else can be re-derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub id: Hash32,
    pub channel: Hash32,
    /// Sender party public key.
    pub sender: Hash32,
    pub seq: u64,
    /// Local name of the peer this channel is with.
    pub peer: String,
    pub direction: Direction,
    /// 0 FLASH, 1 IMMEDIATE, 2 PRIORITY, 3 ROUTINE.
    pub precedence: u8,
    pub topic: String,
    /// Body kind: 0 text, 1 receipt, 2 test, 3 notification.
    pub kind: u8,
    /// Sender's clock, milliseconds since the Unix epoch, UTC.
    pub created_at_ms: i64,
    /// This node's clock when it was stored (for outgoing: when it was written).
    pub stored_at_ms: i64,
    pub in_reply_to: Option<Hash32>,
    pub placement: Placement,
    pub bytes: Vec<u8>,
}

/// The contiguous state of one sender's stream in one channel: the next `seq` expected and
/// the hash (message id) of the last appended envelope (zeros when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRow {
    pub channel: Hash32,
    pub sender: Hash32,
    pub next_seq: u64,
    pub last_id: Hash32,
}

/// A row of the outbox: one of this node's envelopes that the peer has not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub peer: String,
    pub seq: u64,
    pub precedence: u8,
    /// Receipts are not themselves receipted: they leave the outbox when the peer's
    /// contiguous high-water mark passes them.
    pub is_receipt: bool,
}

/// A receipt's effect on a message it refers to: "message `of` reached `level` at `at_ms`,
/// proven by envelope `receipt_id`". `at_ms` is on this node's clock: when it signed its own
/// receipt, or stored the peer's (the time the peer signed stays in the envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    pub of: Hash32,
    pub level: ReceiptLevel,
    pub at_ms: i64,
    pub receipt_id: Hash32,
    pub note: Option<String>,
}

/// "The peer holds our envelopes `from..=to` durably", from a signed DELIVERED receipt
/// stored here at `at_ms` on our clock (never the time the peer signed: a peer's clock
/// hours off must not move a deadline's verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredRange {
    pub peer: String,
    pub from: u64,
    pub to: u64,
    pub at_ms: i64,
}

/// Complete subtrees below this level are not stored: `detente_store::Store::tree_nodes` recomputes them
/// from the (at most 8) appended envelopes they cover. An append then writes a subtree row for
/// one message in 8 on average (1/16 + 1/32 + … of them) instead of two per message, and a
/// proof reads at most 15 envelopes more (`detente bench --append` measures the difference).
pub const TREE_LEVEL_STORED_MIN: u8 = 4;

/// A complete Merkle subtree of an appended stream (see `detente_proto::merkle`): it covers
/// leaves `index·2^level .. (index+1)·2^level`; leaf `i` is the envelope with `seq = i + 1`.
/// Rows below [`TREE_LEVEL_STORED_MIN`] given to a commit are not written (they are
/// recomputed when read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeNodeRow {
    pub channel: Hash32,
    pub sender: Hash32,
    pub level: u8,
    pub index: u64,
    pub hash: Hash32,
}

/// A checkpoint signed or received by this node: one row per body, `signed` holding every
/// signature known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Assigned by the store (ascending in storage order); ignored on insert.
    pub id: i64,
    pub channel: Hash32,
    /// SHA-256 of the checkpoint body: the same body stored twice merges signatures.
    pub body_hash: Hash32,
    pub time_ms: i64,
    /// Signed by every member.
    pub cosigned: bool,
    /// The encoded `SignedCheckpoint`.
    pub signed: Vec<u8>,
    pub stored_at_ms: i64,
}

/// The largest tree of one stream this node has signed in a checkpoint (the witness rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessRow {
    pub channel: Hash32,
    pub sender: Hash32,
    pub size: u64,
    pub root: Hash32,
}

/// Evidence kinds. The numbers are part of the schema; never renumber.
pub const EVIDENCE_ENVELOPES: u8 = 0;
pub const EVIDENCE_CHECKPOINTS: u8 = 1;
/// A held envelope of the peer whose `prev` is not the id of the peer's own envelope at the
/// seq before it, found when the gap filled: `first` is the appended envelope at `seq - 1`,
/// `second` the held one at `seq`. Both signed by the peer; they cannot both be its stream.
pub const EVIDENCE_BROKEN_CHAIN: u8 = 2;

/// Two things one party signed that cannot both be true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRow {
    /// Assigned by the store; ignored on insert.
    pub id: i64,
    pub channel: Hash32,
    pub peer: String,
    /// [`EVIDENCE_ENVELOPES`], [`EVIDENCE_CHECKPOINTS`] or [`EVIDENCE_BROKEN_CHAIN`].
    pub kind: u8,
    pub seq: Option<u64>,
    /// The first signed item (envelope or signed checkpoint), exactly as received. Empty in
    /// a batch from the core for two envelopes: the first is our stored copy of the peer's
    /// envelope at `seq`, which the core does not keep in memory; whoever commits the batch
    /// puts it in ([`WriteBatch::evidence_to_fill`]); likewise the appended envelope at
    /// `seq - 1` of a broken chain.
    pub first: Vec<u8>,
    /// The second, contradicting one.
    pub second: Vec<u8>,
    pub detail: String,
    pub detected_at_ms: i64,
}

/// Everything one group commit makes durable, applied in one transaction, in this order.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Held envelopes of the peer that turned out not to follow its stream (their `prev` is
    /// not the id of the envelope appended before them): (channel, sender, seq). Removed
    /// from the messages before anything else, so that the peer's envelope that does follow
    /// can take the seq; their bytes are kept in this batch's [`EVIDENCE_BROKEN_CHAIN`]
    /// evidence. Only rows still held are removed; an appended row never is.
    pub discard_held: Vec<(Hash32, Hash32, u64)>,
    /// New envelopes, outgoing or received (appended or held). A message whose id already
    /// exists is an error: the node checks for duplicates before batching.
    pub messages: Vec<MessageRow>,
    /// Held messages now appended because the gap before them filled: (channel, sender, seq).
    pub promote: Vec<(Hash32, Hash32, u64)>,
    /// New outbox rows (for outgoing envelopes in `messages`).
    pub outbox: Vec<OutboxRow>,
    /// Stream states to insert or replace.
    pub streams: Vec<StreamRow>,
    /// Ranges of this node's envelopes confirmed by a signed DELIVERED receipt. Idempotent:
    /// the first confirmation's time is kept.
    pub delivered: Vec<DeliveredRange>,
    /// Receipt effects to record. Idempotent per (of, level): the first one wins.
    pub receipts: Vec<ReceiptRow>,
    /// Remove outbox rows of `peer` with `seq <= hwm` (the peer holds them durably, in
    /// order). Idempotent.
    pub prune: Vec<(String, u64)>,
    /// Deadlines missed. Idempotent per (id, level): the first one wins.
    pub misses: Vec<MissRow>,
    /// Glossary terms to add (or replace, per peer, term and language pair).
    pub glossary: Vec<GlossaryRow>,
    /// Complete Merkle subtrees created by the appends of this batch.
    pub tree_nodes: Vec<TreeNodeRow>,
    /// Checkpoints to insert, or (same body) whose signatures to replace by a fuller set.
    pub checkpoints: Vec<CheckpointRow>,
    /// Witness states to insert or replace.
    pub witness: Vec<WitnessRow>,
    /// Evidence to record.
    pub evidence: Vec<EvidenceRow>,
    /// Idempotency keys and the answers they give, stored with the messages they answer for
    /// (insert, or replace an expired record of the same scope and key).
    pub idempotency: Vec<IdempotencyRow>,
    /// Also forget at most [`IDEMPOTENCY_PRUNE_ROWS_MAX`] idempotency keys created before
    /// this time (milliseconds since the Unix epoch): bounded work per commit.
    pub idempotency_expired_before_ms: Option<i64>,
}

/// How long an idempotency key is remembered: a retry within 24 hours of the first request
/// gets its answer; after that the key may be pruned and then means a new request.
pub const IDEMPOTENCY_KEY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Idempotency keys one commit forgets at most (the oldest expired first).
pub const IDEMPOTENCY_PRUNE_ROWS_MAX: u32 = 64;

/// One of our envelopes as an idempotent request's answer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentRecord {
    pub id: Hash32,
    pub seq: u64,
    /// 0 FLASH … 3 ROUTINE.
    pub precedence: u8,
}

/// A request made with an `Idempotency-Key` and what it stored, so that a retry with the same
/// key is answered from here instead of sending again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    /// Who made the request (the API token, or a console operator's login), so one
    /// caller's keys never answer another's requests.
    pub scope: String,
    /// The client's key, as sent.
    pub key: String,
    /// SHA-256 of the request (route and body bytes): the same key with another request is
    /// refused, not answered with this one's answer.
    pub fingerprint: Hash32,
    /// When the request was stored (this node's wall clock, ms since the Unix epoch).
    pub created_at_ms: i64,
    /// The messages it stored, in the order of the request.
    pub sent: Vec<SentRecord>,
}

/// Bytes per [`SentRecord`] in [`encode_sent`]: id, seq (big-endian), precedence.
pub const SENT_RECORD_BYTES: usize = 32 + 8 + 1;

/// The stored form of an answer's records (fixed width, so a stored value is checked by its
/// length alone).
pub fn encode_sent(sent: &[SentRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sent.len() * SENT_RECORD_BYTES);
    for r in sent {
        out.extend_from_slice(&r.id);
        out.extend_from_slice(&r.seq.to_be_bytes());
        out.push(r.precedence);
    }
    out
}

/// The records of [`encode_sent`]'s bytes; `None` if the length is not a whole number of
/// records.
pub fn decode_sent(bytes: &[u8]) -> Option<Vec<SentRecord>> {
    if !bytes.len().is_multiple_of(SENT_RECORD_BYTES) {
        return None;
    }
    let records = bytes
        .chunks_exact(SENT_RECORD_BYTES)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&c[..32]);
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&c[32..40]);
            SentRecord {
                id,
                seq: u64::from_be_bytes(seq),
                precedence: c[40],
            }
        })
        .collect();
    Some(records)
}

/// An agreed pair of terms on the channel with `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlossaryRow {
    pub peer: String,
    pub lang_a: String,
    pub term_a: String,
    pub lang_b: String,
    pub term_b: String,
    pub added_at_ms: i64,
}

/// "Message `id` missed its deadline for receipt `level` (0 delivered, 2 acknowledged),
/// due at `due_at_ms`, noticed at `missed_at_ms`" (this node's wall clock, for display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissRow {
    pub id: Hash32,
    pub level: u8,
    pub due_at_ms: i64,
    pub missed_at_ms: i64,
}

/// Ids asked about in one `Store::deadline_state` call at most.
pub const DEADLINE_STATE_IDS_MAX: usize = 512;

/// A message that may still owe a receipt by a deadline: text or notification with no
/// acknowledged or declined receipt (whether or not a deadline was already recorded missed:
/// an overdue message stays watched until its answer comes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineCandidate {
    pub id: Hash32,
    pub peer: String,
    pub seq: u64,
    pub direction: Direction,
    pub precedence: u8,
    pub kind: u8,
    pub created_at_ms: i64,
    pub stored_at_ms: i64,
    /// Deadline levels already recorded missed.
    pub missed: Vec<u8>,
    /// For ours: the peer's DELIVERED receipt for it is stored.
    pub delivered: bool,
}

impl DeadlineCandidate {
    /// When its deadlines count from, as `Store::deadline_due` orders them: `created_at_ms`
    /// for ours, `stored_at_ms` for received ones.
    pub fn start_ms(&self) -> i64 {
        match self.direction {
            Direction::Out => self.created_at_ms,
            Direction::In => self.stored_at_ms,
        }
    }
}

/// One deadline group: the pending messages of one `peer`, `direction` and `precedence`
/// share one deadline per need, so they fall due in start order (`created_at_ms` for ours,
/// `stored_at_ms` for received ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DueGroup {
    pub peer: String,
    pub direction: Direction,
    pub precedence: u8,
}

/// Per peer, what `status` counts of deadlines, from the store: our pending messages past a
/// deadline whose receipt has not come, the peer's likewise, and the peer's unanswered ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadlineCounts {
    pub peer: String,
    pub overdue_out: u64,
    pub overdue_in: u64,
    pub unanswered_in: u64,
}

impl WriteBatch {
    /// Fill the empty `first` of envelope evidence (two envelopes, or a broken chain) from
    /// this batch's own received rows, and return the rest, `(index in evidence, channel,
    /// seq)`: those the committer reads from its store (the peer's appended envelope at
    /// `seq`) before committing.
    pub fn evidence_to_fill(&mut self) -> Vec<(usize, Hash32, u64)> {
        let mut left = Vec::new();
        for i in 0..self.evidence.len() {
            let e = &self.evidence[i];
            let Some(seq) = e.seq.filter(|_| e.first.is_empty()) else {
                continue;
            };
            // Two envelopes for one seq: ours at `seq`. A broken chain: the one before it.
            let seq = match e.kind {
                EVIDENCE_ENVELOPES => seq,
                EVIDENCE_BROKEN_CHAIN if seq > 1 => seq - 1,
                _ => continue,
            };
            let channel = e.channel;
            let own = self
                .messages
                .iter()
                .find(|m| m.channel == channel && m.seq == seq && m.direction == Direction::In);
            match own {
                Some(m) => self.evidence[i].first = m.bytes.clone(),
                None => left.push((i, channel, seq)),
            }
        }
        left
    }

    pub fn is_empty(&self) -> bool {
        self.discard_held.is_empty()
            && self.messages.is_empty()
            && self.promote.is_empty()
            && self.outbox.is_empty()
            && self.streams.is_empty()
            && self.delivered.is_empty()
            && self.receipts.is_empty()
            && self.prune.is_empty()
            && self.misses.is_empty()
            && self.glossary.is_empty()
            && self.tree_nodes.is_empty()
            && self.checkpoints.is_empty()
            && self.witness.is_empty()
            && self.evidence.is_empty()
            && self.idempotency.is_empty()
    }
}
