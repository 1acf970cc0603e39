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
pub mod checkpoints;
pub mod console;
pub mod copy;
pub mod lease;
pub mod pg_hosts;
#[doc(hidden)]
pub mod pg_test;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::future::Future;

pub use any::{AnyStore, StoreUrl};
pub use checkpoints::{CheckpointPage, CheckpointSpan, CHECKPOINT_PAGE_MAX};
pub use lease::{Acquired, EpochRow};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The rows and the batch are the storage interface, shared with the sans-IO core; they live
/// in `detente-store-types` so that the core can use them without this crate's database
/// dependencies.
pub use detente_store_types::*;

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

/// A text or notification with no ACKNOWLEDGED or DECLINED receipt yet, for the console's
/// "needs action" queue ([`Store::unanswered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnansweredRow {
    pub id: Hash32,
    pub peer: String,
    pub direction: Direction,
    pub precedence: u8,
    /// When its deadlines count from, on this node's clock: `created_at_ms` for ours,
    /// `stored_at_ms` for received ones (as the deadline watch counts them).
    pub start_ms: i64,
}

/// One page of the console's timeline ([`Store::timeline`]): newest first, filtered, after a
/// keyset cursor.
#[derive(Debug, Clone, Default)]
pub struct TimelineQuery {
    pub peer: Option<String>,
    pub direction: Option<Direction>,
    pub precedence: Option<u8>,
    /// Exact topic.
    pub topic: Option<String>,
    /// `Some(false)`: only messages still waiting for an answer; `Some(true)`: only answered.
    pub answered: Option<bool>,
    /// Only messages listed after this one (its `created_at_ms`, `sender`, `seq`), i.e. older.
    pub before: Option<(i64, Hash32, u64)>,
    /// Only messages whose words in the console's search index ([`Store::put_search`])
    /// contain each of these terms, case-insensitively, anywhere (part of a word too). At most
    /// [`console::SEARCH_TERMS_MAX`] terms of [`console::SEARCH_TERM_CHARS_MAX`] characters
    /// are used; the rest are ignored.
    pub text: Vec<String>,
    /// At most this many rows.
    pub limit: u32,
}

/// How many unanswered messages one peer's channel holds, per direction and precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnansweredCount {
    pub peer: String,
    pub direction: Direction,
    pub precedence: u8,
    pub count: u64,
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
    /// Another process of this party took the lease over (issue 13 item 3): this process
    /// held epoch `held`, the database now says `current`. Nothing of the batch was applied,
    /// and this store commits nothing more. Remedy: none needed; the other process is
    /// active, and this one stops serving (restarted, it stands by).
    #[error(
        "this process lost the lease (it held epoch {held}, the database is at {}): another \
         process of this party is active, so this one commits nothing more",
        current.map_or_else(|| "a later one".to_string(), |c| c.to_string())
    )]
    Fenced { held: i64, current: Option<i64> },
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
            // 25006: read-only transaction, i.e. a connection to a server that is (now) a
            // standby; the store moves to the new primary.
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006")
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

    /// The pending messages of one deadline group (pending as in
    /// [`Store::deadline_candidates`]) in due order: by start (`created_at_ms` for ours,
    /// `stored_at_ms` for received ones), then id; only those strictly after `after`
    /// (a `(start, id)` cursor), at most `limit`. Served by a partial index per direction.
    fn deadline_due(
        &self,
        group: &DueGroup,
        after: Option<(i64, Hash32)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadlineCandidate>>> + Send;

    /// Those of `ids` that are pending (as in [`Store::deadline_candidates`]), in no
    /// particular order; an id not returned is answered, not a text or notification, or
    /// not stored. At most [`DEADLINE_STATE_IDS_MAX`] ids per call.
    fn deadline_state(
        &self,
        ids: Vec<Hash32>,
    ) -> impl Future<Output = Result<Vec<DeadlineCandidate>>> + Send;

    /// Per peer, the deadline figures of `status` ([`DeadlineCounts`]), counted in one query
    /// (read on start: the watch keeps them in step with events after that).
    fn deadline_counts(&self) -> impl Future<Output = Result<Vec<DeadlineCounts>>> + Send;

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

    /// One page of a channel's checkpoints (bounded; see [`CheckpointPage`]).
    fn checkpoint_page(
        &self,
        channel: Hash32,
        page: CheckpointPage,
    ) -> impl Future<Output = Result<Vec<CheckpointRow>>> + Send;

    /// How many checkpoints a channel holds, and the newest one's id.
    fn checkpoint_span(
        &self,
        channel: Hash32,
    ) -> impl Future<Output = Result<CheckpointSpan>> + Send;

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

    // ---- console queries (issue 15): added by the console branch, kept together here.

    /// Unanswered messages with `peer` at one precedence, earliest `start_ms` first (so
    /// earliest due first: one precedence has one deadline per channel), at most `limit`.
    fn unanswered(
        &self,
        peer: &str,
        precedence: u8,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<UnansweredRow>>> + Send;

    /// How many messages are unanswered, per peer, direction and precedence.
    fn unanswered_counts(&self) -> impl Future<Output = Result<Vec<UnansweredCount>>> + Send;

    /// Texts and notifications for one page of the console's timeline (see
    /// [`TimelineQuery`]), newest first by `created_at`, each sender's in `seq` order.
    fn timeline(
        &self,
        query: TimelineQuery,
    ) -> impl Future<Output = Result<Vec<MessageRow>>> + Send;

    /// Texts and notifications that answer message `of` (`in_reply_to`), oldest first, at
    /// most `limit`.
    fn replies(
        &self,
        of: Hash32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MessageRow>>> + Send;

    /// Texts and notifications not yet in the console's search index, newest first, at
    /// most `limit` (at most [`console::SEARCH_BATCH_MAX`]).
    fn search_pending(&self, limit: u32) -> impl Future<Output = Result<Vec<MessageRow>>> + Send;

    /// Put messages' searchable words (id, words) in the console's search index, in one
    /// transaction; a message already there keeps the words it has. Words longer than
    /// [`console::SEARCH_BODY_BYTES_MAX`] are cut.
    fn put_search(&self, rows: Vec<(Hash32, String)>) -> impl Future<Output = Result<()>> + Send;

    // ---- idempotency keys (issue 12 item 3).

    /// The record of the request `scope` made with idempotency key `key`, if one is stored
    /// (expired or not: the caller compares `created_at_ms`).
    fn idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRow>>> + Send;

    /// How many idempotency keys of `scope` were created at or after `since_ms`, counted up
    /// to `limit` (bounded work).
    fn idempotency_count(
        &self,
        scope: &str,
        since_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<u64>> + Send;
}
