//! [`AnyStore`]: the store a node's `database_url` names, SQLite or PostgreSQL.
//!
//! An enum rather than `dyn Store`: the trait's methods return `impl Future`, which is not
//! object-safe, and a match per call costs nothing next to a database round trip. Every
//! method forwards to the store inside.

use std::path::Path;

use crate::console::{AuditRow, SessionRow, UserRow};
use crate::{
    CheckpointRow, DeadlineCandidate, DeadlineCounts, DueGroup, EvidenceRow, GlossaryRow, Hash32,
    IdempotencyRow, InboxQuery, MessageRow, MissRow, OutboxCounts, PgStore, ReceiptTimes, Result,
    SqliteStore, Store, StoreError, StreamRow, WitnessRow, WriteBatch,
};

/// One of the two stores. Cloning is cheap and shares the connections.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Which database a `database_url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl<'a> {
    /// A SQLite file: `sqlite:PATH`, or the default file when the URL is empty.
    Sqlite(&'a Path),
    /// A PostgreSQL URL (`postgres://…` or `postgresql://…`).
    Postgres(&'a str),
}

impl<'a> StoreUrl<'a> {
    /// Classify `url`; `default_file` is the SQLite file an empty URL means.
    pub fn parse(url: &'a str, default_file: &'a Path) -> Result<StoreUrl<'a>> {
        if url.is_empty() {
            return Ok(StoreUrl::Sqlite(default_file));
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            if !path.is_empty() {
                return Ok(StoreUrl::Sqlite(Path::new(path)));
            }
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url));
        }
        Err(StoreError::Open(format!(
            "database_url {:?}: give sqlite:PATH, postgres://USER:PASSWORD@HOST:PORT/DB, or \
             nothing for the SQLite file in the node directory",
            crate::postgres::redact_url(url)
        )))
    }
}

macro_rules! forward {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::Postgres($store) => $call,
        }
    };
}

impl AnyStore {
    /// Open the store `url` names (see [`StoreUrl::parse`]).
    pub async fn open(url: &str, default_file: &Path) -> Result<AnyStore> {
        Ok(match StoreUrl::parse(url, default_file)? {
            StoreUrl::Sqlite(path) => AnyStore::Sqlite(SqliteStore::open(path).await?),
            StoreUrl::Postgres(url) => AnyStore::Postgres(PgStore::open(url).await?),
        })
    }

    /// "sqlite" or "postgres", for status and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        forward!(self, s => s.close().await)
    }

    /// The PostgreSQL store inside, for what only it has (the lease).
    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            AnyStore::Postgres(s) => Some(s),
            AnyStore::Sqlite(_) => None,
        }
    }

    /// The value of mark `name` (see `store_marks`), if set.
    pub async fn mark(&self, name: &str) -> Result<Option<String>> {
        let sql = match self {
            AnyStore::Sqlite(_) => "SELECT value FROM store_marks WHERE name = ?1",
            AnyStore::Postgres(_) => "SELECT value FROM store_marks WHERE name = $1",
        };
        match self {
            AnyStore::Sqlite(s) => Ok(sqlx::query_scalar(sql)
                .bind(name)
                .fetch_optional(&s.reader)
                .await?),
            AnyStore::Postgres(s) => Ok(sqlx::query_scalar(sql)
                .bind(name)
                .fetch_optional(&s.reader)
                .await?),
        }
    }

    /// Set mark `name` to `value`, or clear it (`None`).
    pub async fn set_mark(&self, name: &str, value: Option<&str>) -> Result<()> {
        let (delete, upsert) = match self {
            AnyStore::Sqlite(_) => (
                "DELETE FROM store_marks WHERE name = ?1",
                "INSERT INTO store_marks (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            ),
            AnyStore::Postgres(_) => (
                "DELETE FROM store_marks WHERE name = $1",
                "INSERT INTO store_marks (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            ),
        };
        match (self, value) {
            (AnyStore::Sqlite(s), Some(v)) => {
                sqlx::query(upsert)
                    .bind(name)
                    .bind(v)
                    .execute(&s.writer)
                    .await?;
            }
            (AnyStore::Sqlite(s), None) => {
                sqlx::query(delete).bind(name).execute(&s.writer).await?;
            }
            (AnyStore::Postgres(s), Some(v)) => {
                sqlx::query(upsert)
                    .bind(name)
                    .bind(v)
                    .execute(&s.writer)
                    .await?;
            }
            (AnyStore::Postgres(s), None) => {
                sqlx::query(delete).bind(name).execute(&s.writer).await?;
            }
        }
        Ok(())
    }

    pub async fn put_user(&self, row: &UserRow) -> Result<bool> {
        forward!(self, s => s.put_user(row).await)
    }

    pub async fn user(&self, login: &str) -> Result<Option<UserRow>> {
        forward!(self, s => s.user(login).await)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        forward!(self, s => s.users().await)
    }

    pub async fn set_user_lang(&self, login: &str, lang: &str) -> Result<()> {
        forward!(self, s => s.set_user_lang(login, lang).await)
    }

    pub async fn set_user_tz(&self, login: &str, tz: &str) -> Result<()> {
        forward!(self, s => s.set_user_tz(login, tz).await)
    }

    pub async fn create_session(&self, row: &SessionRow) -> Result<()> {
        forward!(self, s => s.create_session(row).await)
    }

    pub async fn session(
        &self,
        token_hash: [u8; 32],
        now_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>> {
        forward!(self, s => s.session(token_hash, now_ms).await)
    }

    pub async fn delete_session(&self, token_hash: [u8; 32]) -> Result<()> {
        forward!(self, s => s.delete_session(token_hash).await)
    }

    pub async fn append_audit(&self, row: &AuditRow) -> Result<()> {
        forward!(self, s => s.append_audit(row).await)
    }

    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditRow>> {
        forward!(self, s => s.audit(limit).await)
    }
}

impl Store for AnyStore {
    async fn unanswered(
        &self,
        peer: &str,
        precedence: u8,
        limit: u32,
    ) -> Result<Vec<crate::UnansweredRow>> {
        forward!(self, s => s.unanswered(peer, precedence, limit).await)
    }

    async fn unanswered_counts(&self) -> Result<Vec<crate::UnansweredCount>> {
        forward!(self, s => s.unanswered_counts().await)
    }

    async fn timeline(&self, query: crate::TimelineQuery) -> Result<Vec<MessageRow>> {
        forward!(self, s => s.timeline(query).await)
    }

    async fn replies(&self, of: crate::Hash32, limit: u32) -> Result<Vec<MessageRow>> {
        forward!(self, s => s.replies(of, limit).await)
    }

    async fn search_pending(&self, limit: u32) -> Result<Vec<MessageRow>> {
        forward!(self, s => s.search_pending(limit).await)
    }

    async fn put_search(&self, rows: Vec<(crate::Hash32, String)>) -> Result<()> {
        forward!(self, s => s.put_search(rows).await)
    }

    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        forward!(self, s => s.commit(batch).await)
    }

    async fn streams(&self) -> Result<Vec<StreamRow>> {
        forward!(self, s => s.streams().await)
    }

    async fn message(&self, id: Hash32) -> Result<Option<MessageRow>> {
        forward!(self, s => s.message(id).await)
    }

    async fn message_at(
        &self,
        channel: Hash32,
        sender: Hash32,
        seq: u64,
    ) -> Result<Option<MessageRow>> {
        forward!(self, s => s.message_at(channel, sender, seq).await)
    }

    async fn held(&self, channel: Hash32, sender: Hash32, limit: u32) -> Result<Vec<MessageRow>> {
        forward!(self, s => s.held(channel, sender, limit).await)
    }

    async fn outbox_pending(
        &self,
        peer: &str,
        precedence: u8,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        forward!(self, s => s.outbox_pending(peer, precedence, after, limit).await)
    }

    async fn outbox_counts(&self, peer: &str) -> Result<OutboxCounts> {
        forward!(self, s => s.outbox_counts(peer).await)
    }

    async fn inbox(&self, query: InboxQuery) -> Result<Vec<MessageRow>> {
        forward!(self, s => s.inbox(query).await)
    }

    async fn receipt_times(&self, of: Hash32) -> Result<ReceiptTimes> {
        forward!(self, s => s.receipt_times(of).await)
    }

    async fn glossary(&self, peer: &str, limit: u32) -> Result<Vec<GlossaryRow>> {
        forward!(self, s => s.glossary(peer, limit).await)
    }

    async fn message_count(&self) -> Result<u64> {
        forward!(self, s => s.message_count().await)
    }

    async fn idempotency(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRow>> {
        forward!(self, s => s.idempotency(scope, key).await)
    }

    async fn idempotency_count(&self, scope: &str, since_ms: i64, limit: u32) -> Result<u64> {
        forward!(self, s => s.idempotency_count(scope, since_ms, limit).await)
    }

    async fn deadline_candidates(&self, limit: u32) -> Result<Vec<DeadlineCandidate>> {
        forward!(self, s => s.deadline_candidates(limit).await)
    }

    async fn deadline_due(
        &self,
        group: &DueGroup,
        after: Option<(i64, Hash32)>,
        limit: u32,
    ) -> Result<Vec<DeadlineCandidate>> {
        forward!(self, s => s.deadline_due(group, after, limit).await)
    }

    async fn deadline_state(&self, ids: Vec<Hash32>) -> Result<Vec<DeadlineCandidate>> {
        forward!(self, s => s.deadline_state(ids).await)
    }

    async fn deadline_counts(&self) -> Result<Vec<DeadlineCounts>> {
        forward!(self, s => s.deadline_counts().await)
    }

    async fn misses(&self, id: Hash32) -> Result<Vec<MissRow>> {
        forward!(self, s => s.misses(id).await)
    }

    async fn tree_nodes(
        &self,
        channel: Hash32,
        sender: Hash32,
        positions: Vec<(u8, u64)>,
    ) -> Result<Vec<Option<Hash32>>> {
        forward!(self, s => s.tree_nodes(channel, sender, positions).await)
    }

    async fn stream_envelopes(
        &self,
        channel: Hash32,
        sender: Hash32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        forward!(self, s => s.stream_envelopes(channel, sender, after, limit).await)
    }

    async fn checkpoints(&self, channel: Hash32) -> Result<Vec<CheckpointRow>> {
        forward!(self, s => s.checkpoints(channel).await)
    }

    async fn checkpoint_page(
        &self,
        channel: Hash32,
        page: crate::CheckpointPage,
    ) -> Result<Vec<CheckpointRow>> {
        forward!(self, s => s.checkpoint_page(channel, page).await)
    }

    async fn checkpoint_span(&self, channel: Hash32) -> Result<crate::CheckpointSpan> {
        forward!(self, s => s.checkpoint_span(channel).await)
    }

    async fn witness(&self, channel: Hash32) -> Result<Vec<WitnessRow>> {
        forward!(self, s => s.witness(channel).await)
    }

    async fn evidence(&self) -> Result<Vec<EvidenceRow>> {
        forward!(self, s => s.evidence().await)
    }

    async fn messages_of_kind(&self, peer: &str, kind: u8, limit: u32) -> Result<Vec<MessageRow>> {
        forward!(self, s => s.messages_of_kind(peer, kind, limit).await)
    }
}
