//! Durable storage for a detente node.
//!
//! The node's writer task gathers everything one group commit must make durable into a
//! [`WriteBatch`] and hands it to [`Store::commit`], which applies it in **one transaction**:
//! a message, its outbox row, the stream state it advances and the receipt it triggers are
//! durable together or not at all. That is what keeps exactly-once delivery and the record in
//! agreement after a `kill -9` at any instant.
//!
//! The rows here are database rows, not protocol types: the store never parses or signs an
//! envelope. The node has verified every envelope before it reaches a batch.
//!
//! One trait, one implementation per database: [`sqlite::SqliteStore`] (the embedded
//! default) and [`postgres::PgStore`], held to the same behaviour by one conformance suite
//! (`tests/conformance.rs`). [`AnyStore`] is whichever of the two a node's configuration
//! names.

#![forbid(unsafe_code)]

mod any;
pub mod console;
#[doc(hidden)]
pub mod pg_test;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::future::Future;

pub use any::{AnyStore, StoreUrl};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A SHA-256 value as stored (message id, stream hash, channel id).
pub type Hash32 = [u8; 32];

/// Which way a message went, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// proven by envelope `receipt_id`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    pub of: Hash32,
    pub level: ReceiptLevel,
    pub at_ms: i64,
    pub receipt_id: Hash32,
    pub note: Option<String>,
}

/// "The peer holds our envelopes `from..=to` durably", from a signed DELIVERED receipt
/// created at `at_ms` on the peer's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredRange {
    pub peer: String,
    pub from: u64,
    pub to: u64,
    pub at_ms: i64,
}

/// Complete subtrees below this level are not stored: [`Store::tree_nodes`] recomputes them
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

/// Two things one party signed that cannot both be true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRow {
    /// Assigned by the store; ignored on insert.
    pub id: i64,
    pub channel: Hash32,
    pub peer: String,
    /// [`EVIDENCE_ENVELOPES`] or [`EVIDENCE_CHECKPOINTS`].
    pub kind: u8,
    pub seq: Option<u64>,
    /// The first signed item (envelope or signed checkpoint), exactly as received.
    pub first: Vec<u8>,
    /// The second, contradicting one.
    pub second: Vec<u8>,
    pub detail: String,
    pub detected_at_ms: i64,
}

/// Everything one group commit makes durable, applied in one transaction, in this order.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
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
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
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
    }
}

/// Which messages a listing wants.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    pub peer: Option<String>,
    pub direction: Option<Direction>,
    /// Include the envelopes the nodes exchange among themselves: receipts (kind 1), link
    /// tests (kind 2) and charters (kind 6). Listings for people show only texts (kind 0) and
    /// notifications (kind 4).
    pub include_system: bool,
    /// At most this many rows (the newest ones), in display order.
    pub limit: u32,
}

/// Receipt times of one message, for listings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptTimes {
    pub delivered_ms: Option<i64>,
    pub read_ms: Option<i64>,
    pub acknowledged_ms: Option<i64>,
    pub declined_ms: Option<i64>,
    /// The note of the acknowledged or declined receipt, if any.
    pub note: Option<String>,
}

/// Outbox figures for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Envelopes not yet confirmed by the peer (messages without DELIVERED, receipts above
    /// the peer's high-water mark).
    pub pending: u64,
    /// Of those, how many are FLASH.
    pub pending_flash: u64,
}

/// Storage failures. All are operating errors: the node reports them and stops accepting
/// work rather than acknowledging anything it could not make durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or migrated. Remedy: check the path, permissions
    /// and free space; the message names the cause.
    #[error("cannot open the database: {0}")]
    Open(String),
    /// A query or commit failed (disk full, I/O error, locked database). Nothing of the
    /// batch was applied.
    #[error("database error: {0}")]
    Database(String),
    /// A row in the database does not have the shape this version expects (corruption or
    /// a newer schema). Remedy: restore from backup or upgrade detente.
    #[error("corrupt row in {table}: {what}")]
    Corrupt { table: &'static str, what: String },
    /// The batch would insert a second message with the same (channel, sender, seq) or id.
    /// The node checks for this before batching, so it indicates a bug or a race.
    #[error("duplicate message {0}")]
    Duplicate(String),
    /// The database server cannot be reached (connection refused or lost, server shutting
    /// down). Nothing of the call was applied; the next call reconnects. Remedy: bring the
    /// database back; the node resumes by itself.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database was migrated by a newer detente than this one. Remedy: run a detente
    /// that knows schema version `found` (or restore a backup made by this version).
    #[error(
        "the database schema is at version {found}, newer than this detente knows (up to \
         {known}); run a detente release whose store has migration {found}"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

/// Whether `e` means "no server to talk to" rather than "the server refused this": I/O
/// failures, pool timeouts, and PostgreSQL's connection-exception and shutdown states.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
            // cannot connect now (starting up or in recovery).
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Apply `migrator`'s migrations, refusing a database that a newer detente migrated
/// ([`StoreError::SchemaTooNew`]) instead of running against a schema it does not know.
pub(crate) async fn migrate<'a, A>(migrator: &sqlx::migrate::Migrator, target: A) -> Result<()>
where
    A: sqlx::Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    use sqlx::migrate::MigrateError;
    match migrator.run(target).await {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(found)) => Err(StoreError::SchemaTooNew {
            found,
            known: migrator.iter().map(|m| m.version).max().unwrap_or(0),
        }),
        Err(MigrateError::Execute(e)) if is_unavailable(&e) => {
            Err(StoreError::Unavailable(e.to_string()))
        }
        Err(e) => Err(StoreError::Open(e.to_string())),
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The storage interface of a node. Implementations must make [`Store::commit`] atomic and
/// durable (fsync before returning Ok) — the node acknowledges nothing before it returns.
pub trait Store: Send + Sync + 'static {
    /// Apply a batch in one durable transaction.
    fn commit(&self, batch: WriteBatch) -> impl Future<Output = Result<()>> + Send;

    /// All stream states (this node's streams and the peers' streams).
    fn streams(&self) -> impl Future<Output = Result<Vec<StreamRow>>> + Send;

    /// The message with this id.
    fn message(&self, id: Hash32) -> impl Future<Output = Result<Option<MessageRow>>> + Send;

    /// The message at (channel, sender, seq), appended or held.
    fn message_at(
        &self,
        channel: Hash32,
        sender: Hash32,
        seq: u64,
    ) -> impl Future<Output = Result<Option<MessageRow>>> + Send;

    /// Held messages of one stream, lowest `seq` first, at most `limit`.
    fn held(
        &self,
        channel: Hash32,
        sender: Hash32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MessageRow>>> + Send;

    /// Undelivered outbox envelopes for `peer` with this precedence and `seq > after`,
    /// lowest `seq` first, at most `limit`, with their bytes. Receipt rows are included
    /// until pruned.
    fn outbox_pending(
        &self,
        peer: &str,
        precedence: u8,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(u64, Vec<u8>)>>> + Send;

    /// Outbox figures for `peer`.
    fn outbox_counts(&self, peer: &str) -> impl Future<Output = Result<OutboxCounts>> + Send;

    /// Messages for a listing, oldest first by `created_at`, each sender's in `seq` order.
    fn inbox(&self, query: InboxQuery) -> impl Future<Output = Result<Vec<MessageRow>>> + Send;

    /// Receipt times recorded for a message.
    fn receipt_times(&self, of: Hash32) -> impl Future<Output = Result<ReceiptTimes>> + Send;

    /// Number of messages stored (all directions, all placements).
    /// The glossary of the channel with `peer`, oldest first, at most `limit` terms.
    fn glossary(
        &self,
        peer: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<GlossaryRow>>> + Send;

    fn message_count(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Messages that may still owe a receipt by a deadline (see [`DeadlineCandidate`]), at
    /// most `limit`, the newest first.
    fn deadline_candidates(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadlineCandidate>>> + Send;

    /// Deadlines recorded missed for a message, by level.
    fn misses(&self, id: Hash32) -> impl Future<Output = Result<Vec<MissRow>>> + Send;

    /// Complete Merkle subtrees of one stream at these `(level, index)` positions, in the
    /// order asked (`None` where the tree has not grown past a position). Levels below
    /// [`TREE_LEVEL_STORED_MIN`] are computed from the appended envelopes they cover.
    fn tree_nodes(
        &self,
        channel: Hash32,
        sender: Hash32,
        positions: Vec<(u8, u64)>,
    ) -> impl Future<Output = Result<Vec<Option<Hash32>>>> + Send;

    /// Appended envelopes of one stream with `seq > after`, lowest first, at most `limit`.
    fn stream_envelopes(
        &self,
        channel: Hash32,
        sender: Hash32,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(u64, Vec<u8>)>>> + Send;

    /// Checkpoints of one channel, oldest first.
    fn checkpoints(
        &self,
        channel: Hash32,
    ) -> impl Future<Output = Result<Vec<CheckpointRow>>> + Send;

    /// The witness state of every stream of one channel.
    fn witness(&self, channel: Hash32) -> impl Future<Output = Result<Vec<WitnessRow>>> + Send;

    /// All evidence, oldest first.
    fn evidence(&self) -> impl Future<Output = Result<Vec<EvidenceRow>>> + Send;
    /// Envelopes of body `kind` exchanged with `peer` (both directions), oldest first by
    /// `seq` within each direction, at most `limit` per direction, the newest kept. Served by a partial
    /// index for charters (kind 6).
    fn messages_of_kind(
        &self,
        peer: &str,
        kind: u8,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MessageRow>>> + Send;
}
