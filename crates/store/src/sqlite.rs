//! The SQLite implementation of [`Store`].
//!
//! One file, WAL journal, `synchronous = FULL`: a commit has reached the disk (the WAL is
//! fsynced) before [`Store::commit`] returns, which is what lets the node acknowledge.
//!
//! Two pools share the file. Writes go through a pool of exactly one connection, so batches
//! are applied one after another and never fight over SQLite's single write lock. Reads go
//! through a small pool of `query_only` connections: in WAL mode a reader sees the last
//! committed state and never waits behind a commit in progress, so listings stay fast while
//! the writer is busy.
//!
//! Commits are built from multi-row statements (`INSERT … VALUES (…), (…)`,
//! `UPDATE … FROM (VALUES …)`), because every statement is a round trip to sqlx's worker
//! thread and a per-row statement would cap the commit rate well below what the node needs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use detente_proto::merkle;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use crate::rows::{
    check_ranges, decode_idempotency, decode_message, describe_message, direction_code, get, hash,
    int, is_unique_violation, placement_code, pow2_chunks, small, uint, IDEMPOTENCY_SELECT,
    INBOX_ROWS_DEFAULT, MESSAGE_SELECT,
};
use crate::{
    CheckpointPage, CheckpointRow, CheckpointSpan, DeadlineCandidate, DeadlineCounts,
    DeliveredRange, Direction, DueGroup, EvidenceRow, GlossaryRow, Hash32, IdempotencyRow,
    InboxQuery, MessageRow, MissRow, OutboxCounts, OutboxRow, ReceiptLevel, ReceiptRow,
    ReceiptTimes, Result, Store, StoreError, StreamRow, TreeNodeRow, WitnessRow, WriteBatch,
    DEADLINE_STATE_IDS_MAX, IDEMPOTENCY_PRUNE_ROWS_MAX, TREE_LEVEL_STORED_MIN,
};

/// How long a connection waits for a lock held by another process (a backup tool, the
/// `sqlite3` shell) before giving up with an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections. Listings are short; a few let the API serve concurrent requests
/// without queueing, and more would only cost file handles and page cache.
const READ_CONNECTIONS_MAX: u32 = 4;

/// Largest number of rows in one multi-row statement. Chunks are powers of two up to this
/// (see [`pow2_chunks`]) so a handful of distinct SQL texts cover every batch size and all
/// stay in the prepared-statement cache.
const CHUNK_ROWS_MAX: usize = 512;

/// Bound parameters per `messages` row, the widest row a commit writes.
const MESSAGE_COLUMNS: usize = 14;

// SQLite refuses statements with more than 32766 parameters; keep a margin.
const _: () = assert!(CHUNK_ROWS_MAX * MESSAGE_COLUMNS < 30_000);

/// WAL pages after which a commit checkpoints by itself (SQLite's default is 1000). Such a
/// checkpoint runs inside the commit that crosses the mark, and that commit (and every
/// answer waiting for it, a FLASH's among them) pays for copying the WAL into the database
/// file. So checkpoints normally run in the background ([`CHECKPOINT_INTERVAL`]) on a
/// connection of their own, and this mark is only the backstop that bounds the WAL if the
/// background checkpointer ever falls behind. 16384 pages is 64 MiB at the default page size.
const WAL_CHECKPOINT_PAGES: u32 = 16_384;

/// How often the background checkpointer copies the WAL into the database file (PASSIVE:
/// it never waits for the writer or a reader, and never blocks either). A WAL filled over
/// this long is a few MiB at the node's highest rates.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);

/// Page cache of the writer connection, in KiB. The id index takes inserts at random
/// places; keeping its interior pages cached saves reads on every commit.
const WRITER_CACHE_KIB: u32 = 8 * 1024;

/// sqlx's embedded SQLite migrations (`migrations/sqlite`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A detente store in one SQLite file. Cloning is cheap and shares the connections.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: SQLite admits one writer at a time, so queueing here is
    /// cheaper and fairer than spinning on `SQLITE_BUSY`.
    pub(crate) writer: SqlitePool,
    /// `query_only` connections for everything that does not write.
    pub(crate) reader: SqlitePool,
    /// One connection for WAL checkpoints, off the commit path.
    checkpointer: SqlitePool,
    /// Dropped with the last clone of the store: the background checkpointer then stops.
    _checkpointing: std::sync::Arc<tokio::sync::watch::Sender<()>>,
}

/// What one WAL checkpoint did, in pages (SQLite's `wal_checkpoint` result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCheckpoint {
    /// The checkpoint could not finish because a writer or reader held the WAL.
    pub busy: bool,
    /// Pages in the WAL.
    pub wal_pages: i64,
    /// Pages of the WAL now copied into the database file.
    pub checkpointed_pages: i64,
}

/// Rows buffered between a reader connection's thread and its query's task.
const READER_ROW_BUFFER: usize = 1024;

impl SqliteStore {
    /// Open (creating if missing) the database at `path` and bring its schema up to date.
    ///
    /// A new file is created with mode 0600 before SQLite touches it: the transcript is
    /// confidential, and SQLite gives the `-wal` and `-shm` files the same mode as the
    /// database. An existing file keeps the mode its operator gave it.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        create_private_file(path)?;

        let base = SqliteConnectOptions::new()
            .filename(path)
            // Created above with the right mode; SQLite must not create it with its own.
            .create_if_missing(false)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // FULL in WAL mode fsyncs the WAL at every commit; NORMAL would not, and a power
            // cut could then lose a batch the node had already acknowledged.
            .synchronous(SqliteSynchronous::Full);

        let writer_options = base
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string())
            // A multi-row INSERT keeps a statement journal (so a failing row undoes only
            // its statement) of every index page it touches; in a temporary file that is a
            // kernel write per page, in memory a copy. Measured 15-20% more commits/s.
            .pragma("temp_store", "MEMORY");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // Keep the writer open for the store's whole life: it holds the WAL open, and
            // reopening costs a WAL recovery scan.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // A local file does not go stale like a socket; the ping would cost a round
            // trip per commit.
            .test_before_acquire(false)
            .connect_with(writer_options)
            .await
            .map_err(|e| open_error(path, &e))?;

        crate::migrate(&MIGRATOR, &writer)
            .await
            .map_err(|e| match e {
                StoreError::Open(m) => open_error(path, &m),
                other => other,
            })?;

        // Readers do not set journal_mode: WAL is persistent in the file (set above), and
        // asking for it again would need a lock.
        let reader_options = base
            .clone()
            .pragma("query_only", "ON")
            // The rows a query sends back to its task at a time. sqlx's default, 50, wakes
            // the task every 50 rows: a start reading every stored envelope (the core's
            // snapshot) spent more time in those wake-ups than in SQLite. Bounded in bytes
            // by the page sizes the callers ask for (at most a few MiB).
            .row_buffer_size(READER_ROW_BUFFER);
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS_MAX)
            .test_before_acquire(false)
            .connect_with(reader_options)
            .await
            .map_err(|e| open_error(path, &e))?;

        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(base)
            .await
            .map_err(|e| open_error(path, &e))?;
        let (stop, stopped) = tokio::sync::watch::channel(());
        tokio::spawn(checkpoint_in_background(checkpointer.clone(), stopped));

        Ok(SqliteStore {
            writer,
            reader,
            checkpointer,
            _checkpointing: std::sync::Arc::new(stop),
        })
    }

    /// Copy the WAL into the database file now, without waiting for the writer or readers
    /// (PASSIVE). The background checkpointer calls this every [`CHECKPOINT_INTERVAL`].
    pub async fn checkpoint_wal(&self) -> Result<WalCheckpoint> {
        wal_checkpoint(&self.checkpointer).await
    }

    /// A consistent copy of the whole database in the new file `out` (`detente backup`):
    /// SQLite's `VACUUM INTO`, which reads one snapshot while commits go on. The file is
    /// created owner-only first (the transcript is confidential) and must not exist.
    pub async fn backup_into(&self, out: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", out.display())))?;
        let target = out
            .to_str()
            .ok_or_else(|| StoreError::Open(format!("{}: not UTF-8", out.display())))?;
        let done = sqlx::query("VACUUM INTO ?1")
            .bind(target)
            .execute(&self.writer)
            .await;
        if let Err(e) = done {
            let _ = std::fs::remove_file(out);
            return Err(e.into());
        }
        std::fs::File::open(out)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Database(format!("cannot sync {}: {e}", out.display())))
    }

    /// Close every connection, waiting for work in progress. A commit that already
    /// returned is durable whether or not this is called; closing lets SQLite checkpoint
    /// and remove the WAL. Calls made after this fail with [`StoreError::Database`].
    pub async fn close(&self) {
        self.checkpointer.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn commit_batch(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Refuse out-of-range numbers before taking the write lock, so a bad batch costs
        // nothing and the statement builders below can convert without failing.
        check_ranges(&batch)?;

        let mut tx = WriteTx::begin(&self.writer).await?;
        let applied = apply_batch(&mut tx, &batch).await;
        tx.finish(applied).await
    }
}

/// Every step of a batch, in order, on the transaction's connection.
async fn apply_batch(conn: &mut SqliteConnection, batch: &WriteBatch) -> Result<()> {
    discard_held(conn, &batch.discard_held).await?;
    insert_messages(conn, &batch.messages).await?;
    promote(conn, &batch.promote).await?;
    insert_outbox(conn, &batch.outbox).await?;
    upsert_streams(conn, &batch.streams).await?;
    mark_delivered(conn, &batch.delivered).await?;
    insert_receipts(conn, &batch.receipts).await?;
    prune(conn, &batch.prune).await?;
    insert_misses(conn, &batch.misses).await?;
    upsert_glossary(conn, &batch.glossary).await?;
    insert_tree_nodes(conn, &batch.tree_nodes).await?;
    upsert_checkpoints(conn, &batch.checkpoints).await?;
    upsert_witness(conn, &batch.witness).await?;
    insert_evidence(conn, &batch.evidence).await?;
    upsert_idempotency(conn, &batch.idempotency).await?;
    if let Some(before) = batch.idempotency_expired_before_ms {
        prune_idempotency(conn, before).await?;
    }
    Ok(())
}

/// A write transaction on the writer connection that always ends cleanly.
///
/// sqlx's own `Transaction` counts its nesting depth itself. When a `COMMIT` fails with
/// `SQLITE_FULL`, SQLite may already have rolled the transaction back; sqlx's `ROLLBACK` then
/// fails ("no transaction is active"), its depth stays at 1, and every later `BEGIN` on the
/// one writer connection fails with "begin_with at non-zero transaction depth" until the
/// process restarts. Here the transaction is plain SQL: after any failure it is rolled back
/// (an already rolled back one is fine), and if that fails too, or the future is dropped
/// half-way, the connection is closed instead of returned, so the pool opens a fresh one
/// (closing a SQLite connection rolls back what it had open).
pub(crate) struct WriteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl WriteTx {
    /// `BEGIN IMMEDIATE` on the writer: the write lock is taken up front, since a deferred
    /// transaction that upgrades later can fail with `SQLITE_BUSY` half-way if another
    /// process (a backup, the shell) wrote in between.
    pub(crate) async fn begin(pool: &SqlitePool) -> Result<WriteTx> {
        let mut conn = pool.acquire().await.map_err(db_error)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(WriteTx { conn, open: true })
    }

    /// Commit if `applied` is Ok, roll back otherwise; returns the first failure.
    pub(crate) async fn finish<T>(mut self, applied: Result<T>) -> Result<T> {
        let value = match applied {
            Ok(v) => v,
            Err(e) => {
                self.rollback().await;
                return Err(e);
            }
        };
        match sqlx::query("COMMIT").execute(&mut *self.conn).await {
            Ok(_) => {
                self.open = false;
                Ok(value)
            }
            Err(e) => {
                self.rollback().await;
                Err(db_error(e))
            }
        }
    }

    /// Commit (for callers that return early with `?` and let a drop undo the rest).
    pub(crate) async fn commit(self) -> Result<()> {
        self.finish(Ok(())).await
    }

    async fn rollback(&mut self) {
        match sqlx::query("ROLLBACK").execute(&mut *self.conn).await {
            Ok(_) => self.open = false,
            // SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR, …).
            Err(e) if e.to_string().contains("no transaction is active") => self.open = false,
            // Still open: the drop closes the connection rather than return it.
            Err(_) => {}
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// A database error with a clear word for the one an operator can fix: a full disk.
fn db_error(e: sqlx::Error) -> StoreError {
    let full = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "13");
    if full {
        StoreError::Database(format!(
            "the disk is full (SQLITE_FULL): {e}; free space on the node's disk, \
             the node resumes by itself"
        ))
    } else {
        StoreError::from(e)
    }
}

async fn wal_checkpoint(pool: &SqlitePool) -> Result<WalCheckpoint> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    Ok(WalCheckpoint {
        busy: row.try_get::<i64, _>(0)? != 0,
        wal_pages: row.try_get(1)?,
        checkpointed_pages: row.try_get(2)?,
    })
}

/// Checkpoint the WAL every [`CHECKPOINT_INTERVAL`] until the store is dropped or closed, so
/// that no commit waits for a checkpoint (the writer's automatic one is only a backstop).
async fn checkpoint_in_background(pool: SqlitePool, mut stopped: tokio::sync::watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            _ = stopped.changed() => break,
        }
        if pool.is_closed() {
            break;
        }
        // A failed or busy checkpoint is harmless: the next round copies the same pages, and
        // the writer's automatic checkpoint bounds the WAL meanwhile.
        let _ = wal_checkpoint(&pool).await;
    }
    pool.close().await;
}

impl Store for SqliteStore {
    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        self.commit_batch(batch).await
    }

    async fn streams(&self) -> Result<Vec<StreamRow>> {
        let rows = sqlx::query(
            "SELECT channel, sender, next_seq, last_id FROM streams ORDER BY channel, sender",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StreamRow {
                    channel: hash(row, "streams", "channel")?,
                    sender: hash(row, "streams", "sender")?,
                    next_seq: uint(row, "streams", "next_seq")?,
                    last_id: hash(row, "streams", "last_id")?,
                })
            })
            .collect()
    }

    async fn message(&self, id: Hash32) -> Result<Option<MessageRow>> {
        let sql = format!("{MESSAGE_SELECT} WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.as_slice())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn message_at(
        &self,
        channel: Hash32,
        sender: Hash32,
        seq: u64,
    ) -> Result<Option<MessageRow>> {
        // Nothing beyond i64::MAX can have been stored.
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let sql = format!("{MESSAGE_SELECT} WHERE channel = ? AND sender = ? AND seq = ?");
        let row = sqlx::query(&sql)
            .bind(channel.as_slice())
            .bind(sender.as_slice())
            .bind(seq)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(decode_message).transpose()
    }

    /// `limit` is taken literally: 0 returns nothing.
    async fn held(&self, channel: Hash32, sender: Hash32, limit: u32) -> Result<Vec<MessageRow>> {
        // The partial index holds only held rows, so this never walks a whole stream.
        let sql = format!(
            "{MESSAGE_SELECT} INDEXED BY messages_held \
             WHERE channel = ? AND sender = ? AND placement = 1 ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(channel.as_slice())
            .bind(sender.as_slice())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_message).collect()
    }

    /// `limit` is taken literally: 0 returns nothing.
    async fn outbox_pending(
        &self,
        peer: &str,
        precedence: u8,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        // INDEXED BY pins the partial index: without statistics the planner prefers the
        // primary key, which also walks delivered rows and other precedences. The LEFT JOIN
        // turns an outbox row without its message into an error instead of silently
        // never sending it.
        let rows = sqlx::query(
            "SELECT o.seq AS seq, m.bytes AS bytes \
             FROM outbox AS o INDEXED BY outbox_pending \
             LEFT JOIN messages AS m ON m.peer = o.peer AND m.direction = 0 AND m.seq = o.seq \
             WHERE o.peer = ? AND o.precedence = ? AND o.delivered = 0 AND o.seq > ? \
             ORDER BY o.seq LIMIT ?",
        )
        .bind(peer)
        .bind(i64::from(precedence))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let seq = uint(row, "outbox", "seq")?;
                let bytes: Option<Vec<u8>> = get(row, "outbox", "bytes")?;
                let bytes = bytes.ok_or_else(|| StoreError::Corrupt {
                    table: "outbox",
                    what: format!("row ({peer:?}, {seq}) has no outgoing message"),
                })?;
                Ok((seq, bytes))
            })
            .collect()
    }

    async fn outbox_counts(&self, peer: &str) -> Result<OutboxCounts> {
        // Counted from the partial index alone (it covers peer and precedence).
        let row = sqlx::query(
            "SELECT COUNT(*) AS pending, COALESCE(SUM(precedence = 0), 0) AS pending_flash \
             FROM outbox INDEXED BY outbox_pending WHERE peer = ? AND delivered = 0",
        )
        .bind(peer)
        .fetch_one(&self.reader)
        .await?;
        Ok(OutboxCounts {
            pending: uint(&row, "outbox", "pending")?,
            pending_flash: uint(&row, "outbox", "pending_flash")?,
        })
    }

    /// `limit` 0 means [`INBOX_ROWS_DEFAULT`].
    async fn inbox(&self, query: InboxQuery) -> Result<Vec<MessageRow>> {
        let limit = if query.limit == 0 {
            INBOX_ROWS_DEFAULT
        } else {
            query.limit
        };
        // Walk the listing index backwards from the newest row and stop after `limit`
        // matches; INDEXED BY keeps the planner from choosing a narrower index (such as the
        // outgoing (peer, seq) one) that would need a sort of the whole result.
        let mut qb = QueryBuilder::<Sqlite>::new(MESSAGE_SELECT);
        match &query.peer {
            Some(peer) => {
                qb.push(" INDEXED BY messages_by_peer_time WHERE peer = ");
                qb.push_bind(peer.as_str());
            }
            None => {
                qb.push(" INDEXED BY messages_by_time WHERE 1");
            }
        }
        if let Some(direction) = query.direction {
            qb.push(" AND direction = ");
            qb.push_bind(direction_code(direction));
        }
        if !query.include_system {
            qb.push(" AND kind IN (0, 4)");
        }
        qb.push(" ORDER BY created_at_ms DESC, sender DESC, seq DESC LIMIT ");
        qb.push_bind(i64::from(limit));

        let rows = qb.build().fetch_all(&self.reader).await?;
        let mut messages = rows
            .iter()
            .map(decode_message)
            .collect::<Result<Vec<_>>>()?;
        // Fetched newest first so LIMIT keeps the newest; shown oldest first.
        messages.reverse();
        Ok(messages)
    }

    async fn deadline_candidates(&self, limit: u32) -> Result<Vec<DeadlineCandidate>> {
        let rows = sqlx::query(
            r#"SELECT m.id, m.peer, m.seq, m.direction, m.precedence, m.kind, m.created_at_ms,
                      m.stored_at_ms, m.delivered_at_ms IS NOT NULL AS delivered,
                      (SELECT group_concat(d.level) FROM deadline_misses d WHERE d.id = m.id)
                          AS missed
               FROM messages m
               WHERE m.kind IN (0, 4)
                 AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r."of" = m.id AND r.level IN (2, 3))
               ORDER BY m.created_at_ms DESC LIMIT ?"#,
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode_candidate).collect()
    }

    async fn deadline_due(
        &self,
        group: &DueGroup,
        after: Option<(i64, Hash32)>,
        limit: u32,
    ) -> Result<Vec<DeadlineCandidate>> {
        // One statement per direction, with the direction written out, so that the
        // partial index of that direction (migration 0015) serves it.
        let sql = match group.direction {
            Direction::Out => DUE_OUT_SQL,
            Direction::In => DUE_IN_SQL,
        };
        let (start, id) = match &after {
            Some((start, id)) => (*start, id.as_slice()),
            None => (i64::MIN, &[][..]),
        };
        let rows = sqlx::query(sql)
            .bind(&group.peer)
            .bind(i64::from(group.precedence))
            .bind(start)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_candidate).collect()
    }

    async fn deadline_state(&self, ids: Vec<Hash32>) -> Result<Vec<DeadlineCandidate>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(DEADLINE_STATE_IDS_MAX) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                r#"SELECT m.id, m.peer, m.seq, m.direction, m.precedence, m.kind,
                          m.created_at_ms, m.stored_at_ms,
                          m.delivered_at_ms IS NOT NULL AS delivered,
                          (SELECT group_concat(d.level) FROM deadline_misses d WHERE d.id = m.id)
                              AS missed
                   FROM messages m
                   WHERE m.id IN ({marks}) AND m.kind IN (0, 4)
                     AND NOT EXISTS (SELECT 1 FROM receipts r
                                     WHERE r."of" = m.id AND r.level IN (2, 3))"#
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_slice());
            }
            let rows = query.fetch_all(&self.reader).await?;
            for row in &rows {
                out.push(decode_candidate(row)?);
            }
        }
        Ok(out)
    }

    async fn deadline_counts(&self) -> Result<Vec<DeadlineCounts>> {
        let rows = sqlx::query(
            r#"SELECT m.peer,
                      SUM(m.direction = 0 AND EXISTS (SELECT 1 FROM deadline_misses d
                          WHERE d.id = m.id AND (d.level = 2 OR m.delivered_at_ms IS NULL)))
                          AS overdue_out,
                      SUM(m.direction = 1 AND EXISTS (SELECT 1 FROM deadline_misses d
                          WHERE d.id = m.id AND (d.level = 2 OR m.delivered_at_ms IS NULL)))
                          AS overdue_in,
                      SUM(m.direction = 1) AS unanswered_in
               FROM messages m
               WHERE m.kind IN (0, 4)
                 AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r."of" = m.id AND r.level IN (2, 3))
               GROUP BY m.peer ORDER BY m.peer"#,
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadlineCounts {
                    peer: get(row, "messages", "peer")?,
                    overdue_out: uint(row, "messages", "overdue_out")?,
                    overdue_in: uint(row, "messages", "overdue_in")?,
                    unanswered_in: uint(row, "messages", "unanswered_in")?,
                })
            })
            .collect()
    }

    async fn misses(&self, id: Hash32) -> Result<Vec<MissRow>> {
        let rows = sqlx::query(
            "SELECT level, due_at_ms, missed_at_ms FROM deadline_misses WHERE id = ? ORDER BY level",
        )
        .bind(id.as_slice())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MissRow {
                    id,
                    level: u8::try_from(get::<_, i64>(row, "deadline_misses", "level")?)
                        .unwrap_or(u8::MAX),
                    due_at_ms: get(row, "deadline_misses", "due_at_ms")?,
                    missed_at_ms: get(row, "deadline_misses", "missed_at_ms")?,
                })
            })
            .collect()
    }

    async fn messages_of_kind(&self, peer: &str, kind: u8, limit: u32) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} WHERE peer = ? AND direction = ? AND kind = ? \
             ORDER BY seq DESC LIMIT ?"
        );
        let mut out = Vec::new();
        for direction in [Direction::Out, Direction::In] {
            let rows = sqlx::query(&sql)
                .bind(peer)
                .bind(direction_code(direction))
                .bind(i64::from(kind))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
            let mut messages = rows
                .iter()
                .map(decode_message)
                .collect::<Result<Vec<_>>>()?;
            messages.reverse();
            out.extend(messages);
        }
        Ok(out)
    }

    async fn receipt_times(&self, of: Hash32) -> Result<ReceiptTimes> {
        let rows = sqlx::query(r#"SELECT level, at_ms, note FROM receipts WHERE "of" = ?"#)
            .bind(of.as_slice())
            .fetch_all(&self.reader)
            .await?;
        let mut times = ReceiptTimes::default();
        // DELIVERED receipts cover ranges; their time is kept on the message itself.
        let delivered: Option<Option<i64>> =
            sqlx::query_scalar("SELECT delivered_at_ms FROM messages WHERE id = ?")
                .bind(of.as_slice())
                .fetch_optional(&self.reader)
                .await?;
        times.delivered_ms = delivered.flatten();
        let mut declined_note = None;
        for row in &rows {
            let level: i64 = get(row, "receipts", "level")?;
            let at_ms: i64 = get(row, "receipts", "at_ms")?;
            let note: Option<String> = get(row, "receipts", "note")?;
            match ReceiptLevel::from_i64(level) {
                Some(ReceiptLevel::Delivered) => {
                    times.delivered_ms = times.delivered_ms.or(Some(at_ms))
                }
                Some(ReceiptLevel::Read) => times.read_ms = Some(at_ms),
                Some(ReceiptLevel::Acknowledged) => {
                    times.acknowledged_ms = Some(at_ms);
                    times.note = note;
                }
                Some(ReceiptLevel::Declined) => {
                    times.declined_ms = Some(at_ms);
                    declined_note = note;
                }
                None => {
                    return Err(StoreError::Corrupt {
                        table: "receipts",
                        what: format!("unknown receipt level {level}"),
                    })
                }
            }
        }
        // The acknowledgement's note wins; the decline's is shown only without one.
        if times.note.is_none() {
            times.note = declined_note;
        }
        Ok(times)
    }

    async fn glossary(&self, peer: &str, limit: u32) -> Result<Vec<GlossaryRow>> {
        let rows = sqlx::query(
            "SELECT peer, lang_a, term_a, lang_b, term_b, added_at_ms FROM glossary \
             WHERE peer = ? ORDER BY added_at_ms, lang_a, term_a LIMIT ?",
        )
        .bind(peer)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let text = |col: &str| {
                    row.try_get::<String, _>(col)
                        .map_err(|e| StoreError::Database(format!("glossary.{col}: {e}")))
                };
                Ok(GlossaryRow {
                    peer: text("peer")?,
                    lang_a: text("lang_a")?,
                    term_a: text("term_a")?,
                    lang_b: text("lang_b")?,
                    term_b: text("term_b")?,
                    added_at_ms: row
                        .try_get("added_at_ms")
                        .map_err(|e| StoreError::Database(format!("glossary.added_at_ms: {e}")))?,
                })
            })
            .collect()
    }

    async fn message_count(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM messages")
            .fetch_one(&self.reader)
            .await?;
        uint(&row, "messages", "n")
    }

    async fn tree_nodes(
        &self,
        channel: Hash32,
        sender: Hash32,
        positions: Vec<(u8, u64)>,
    ) -> Result<Vec<Option<Hash32>>> {
        let mut found: HashMap<(u8, u64), Hash32> = HashMap::new();
        for chunk in pow2_chunks(&positions, CHUNK_ROWS_MAX) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT t.level AS level, t.idx AS idx, t.hash AS hash FROM (",
            );
            qb.push_values(chunk, |mut b, (level, index)| {
                b.push_bind(i64::from(*level))
                    .push_bind(i64::try_from(*index).unwrap_or(i64::MAX));
            });
            qb.push(") AS v JOIN tree_nodes AS t ON t.channel = ");
            qb.push_bind(channel.as_slice());
            qb.push(" AND t.sender = ");
            qb.push_bind(sender.as_slice());
            qb.push(" AND t.level = v.column1 AND t.idx = v.column2");
            for row in qb.build().fetch_all(&self.reader).await? {
                let level = small(&row, "tree_nodes", "level")?;
                let index = uint(&row, "tree_nodes", "idx")?;
                found.insert((level, index), hash(&row, "tree_nodes", "hash")?);
            }
        }
        // Low levels (not stored since TREE_LEVEL_STORED_MIN; a database written before may
        // still hold some): from the envelopes they cover, all of which must be appended.
        let low: HashSet<(u8, u64)> = positions
            .iter()
            .filter(|p| p.0 < TREE_LEVEL_STORED_MIN && !found.contains_key(p))
            .copied()
            .collect();
        for (level, index) in low {
            let width = 1u64 << level;
            let Some(first) = index.checked_mul(width).and_then(|f| f.checked_add(1)) else {
                continue;
            };
            let last = first + (width - 1);
            let (Ok(lo), Ok(hi)) = (i64::try_from(first), i64::try_from(last)) else {
                continue;
            };
            let rows = sqlx::query(
                "SELECT seq, bytes FROM messages WHERE channel = ? AND sender = ? \
                 AND seq BETWEEN ? AND ? AND placement = 0 ORDER BY seq",
            )
            .bind(channel.as_slice())
            .bind(sender.as_slice())
            .bind(lo)
            .bind(hi)
            .fetch_all(&self.reader)
            .await?;
            if rows.len() as u64 != width {
                continue;
            }
            let mut hashes = Vec::with_capacity(rows.len());
            for row in &rows {
                let bytes: Vec<u8> = get(row, "messages", "bytes")?;
                hashes.push(merkle::leaf_hash(&bytes));
            }
            while hashes.len() > 1 {
                hashes = hashes
                    .chunks(2)
                    .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                    .collect();
            }
            found.insert((level, index), hashes[0]);
        }
        Ok(positions.iter().map(|p| found.get(p).copied()).collect())
    }

    async fn stream_envelopes(
        &self,
        channel: Hash32,
        sender: Hash32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT seq, bytes FROM messages WHERE channel = ? AND sender = ? AND seq > ? \
             AND placement = 0 ORDER BY seq LIMIT ?",
        )
        .bind(channel.as_slice())
        .bind(sender.as_slice())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    uint(row, "messages", "seq")?,
                    get(row, "messages", "bytes")?,
                ))
            })
            .collect()
    }

    async fn checkpoints(&self, channel: Hash32) -> Result<Vec<CheckpointRow>> {
        self.checkpoints_impl(channel).await
    }

    async fn checkpoint_page(
        &self,
        channel: Hash32,
        page: CheckpointPage,
    ) -> Result<Vec<CheckpointRow>> {
        self.checkpoint_page_impl(channel, page).await
    }

    async fn checkpoint_span(&self, channel: Hash32) -> Result<CheckpointSpan> {
        self.checkpoint_span_impl(channel).await
    }

    async fn witness(&self, channel: Hash32) -> Result<Vec<WitnessRow>> {
        let rows = sqlx::query("SELECT channel, sender, size, root FROM witness WHERE channel = ?")
            .bind(channel.as_slice())
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                const T: &str = "witness";
                Ok(WitnessRow {
                    channel: hash(row, T, "channel")?,
                    sender: hash(row, T, "sender")?,
                    size: uint(row, T, "size")?,
                    root: hash(row, T, "root")?,
                })
            })
            .collect()
    }

    async fn evidence(&self) -> Result<Vec<EvidenceRow>> {
        let rows = sqlx::query(
            "SELECT id, channel, peer, kind, seq, first, second, detail, detected_at_ms \
             FROM evidence ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                const T: &str = "evidence";
                let seq: Option<i64> = get(row, T, "seq")?;
                Ok(EvidenceRow {
                    id: get(row, T, "id")?,
                    channel: hash(row, T, "channel")?,
                    peer: get(row, T, "peer")?,
                    kind: small(row, T, "kind")?,
                    seq: seq.map(|v| v.max(0) as u64),
                    first: get(row, T, "first")?,
                    second: get(row, T, "second")?,
                    detail: get(row, T, "detail")?,
                    detected_at_ms: get(row, T, "detected_at_ms")?,
                })
            })
            .collect()
    }

    // ---- console queries (issue 15): implemented in `console.rs`.

    async fn unanswered(
        &self,
        peer: &str,
        precedence: u8,
        limit: u32,
    ) -> Result<Vec<crate::UnansweredRow>> {
        self.console_unanswered(peer, precedence, limit).await
    }

    async fn unanswered_counts(&self) -> Result<Vec<crate::UnansweredCount>> {
        self.console_unanswered_counts().await
    }

    async fn timeline(&self, query: crate::TimelineQuery) -> Result<Vec<MessageRow>> {
        self.console_timeline(query).await
    }

    async fn replies(&self, of: Hash32, limit: u32) -> Result<Vec<MessageRow>> {
        self.console_replies(of, limit).await
    }

    async fn search_pending(&self, limit: u32) -> Result<Vec<MessageRow>> {
        self.console_search_pending(limit).await
    }

    async fn idempotency(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRow>> {
        let sql = format!("{IDEMPOTENCY_SELECT} WHERE scope = ? AND key = ?");
        let row = sqlx::query(&sql)
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(decode_idempotency).transpose()
    }

    async fn idempotency_count(&self, scope: &str, since_ms: i64, limit: u32) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM idempotency_keys \
             WHERE scope = ? AND created_at_ms >= ? LIMIT ?)",
        )
        .bind(scope)
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await?;
        uint(&row, "idempotency_keys", "n")
    }

    async fn put_search(&self, rows: Vec<(Hash32, String)>) -> Result<()> {
        self.console_put_search(rows).await
    }
}

// ---------------------------------------------------------------------------------------
// Opening

/// Create `path` with mode 0600 if it does not exist, and make its directory entry durable.
fn create_private_file(path: &Path) -> Result<()> {
    use std::fs::OpenOptions;
    use std::io::ErrorKind;
    use std::os::unix::fs::OpenOptionsExt;

    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {
            // A crash right after creation must not lose the file's name: fsync the
            // directory. SQLite does the same for the WAL it creates.
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    StoreError::Open(format!("cannot sync directory {}: {e}", dir.display()))
                })
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Open(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

fn open_error(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Open(format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Commit steps. Each takes the transaction's connection and writes one part of the batch.

async fn insert_messages(conn: &mut SqliteConnection, messages: &[MessageRow]) -> Result<()> {
    for chunk in pow2_chunks(messages, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (id, channel, sender, seq, peer, direction, precedence, \
             topic, kind, created_at_ms, stored_at_ms, in_reply_to, placement, bytes) ",
        );
        qb.push_values(chunk, |mut b, m| {
            b.push_bind(m.id.as_slice())
                .push_bind(m.channel.as_slice())
                .push_bind(m.sender.as_slice())
                .push_bind(int(m.seq))
                .push_bind(m.peer.as_str())
                .push_bind(direction_code(m.direction))
                .push_bind(i64::from(m.precedence))
                .push_bind(m.topic.as_str())
                .push_bind(i64::from(m.kind))
                .push_bind(m.created_at_ms)
                .push_bind(m.stored_at_ms)
                .push_bind(m.in_reply_to.as_ref().map(|h| h.as_slice()))
                .push_bind(placement_code(m.placement))
                .push_bind(m.bytes.as_slice());
        });
        if let Err(e) = qb.build().execute(&mut *conn).await {
            if is_unique_violation(&e) {
                let which = describe_duplicate(conn, chunk).await;
                return Err(StoreError::Duplicate(format!("{which} ({e})")));
            }
            return Err(e.into());
        }
    }
    Ok(())
}

/// Name the message of `chunk` that collided, for the error. Only runs after a failed
/// insert; SQLite rolled back just that statement, so earlier chunks of the batch are
/// visible and a collision with them is found too.
async fn describe_duplicate(conn: &mut SqliteConnection, chunk: &[MessageRow]) -> String {
    let mut ids = HashSet::new();
    let mut positions = HashSet::new();
    let mut outgoing = HashSet::new();
    for m in chunk {
        let in_chunk = !ids.insert(m.id)
            || !positions.insert((m.channel, m.sender, m.seq))
            || (m.direction == Direction::Out && !outgoing.insert((m.peer.as_str(), m.seq)));
        if in_chunk {
            return format!("{} twice in one batch", describe_message(m));
        }
    }
    for m in chunk {
        let found = sqlx::query(
            "SELECT 1 FROM messages WHERE id = ? OR (channel = ? AND sender = ? AND seq = ?) \
             OR (? = 0 AND direction = 0 AND peer = ? AND seq = ?) LIMIT 1",
        )
        .bind(m.id.as_slice())
        .bind(m.channel.as_slice())
        .bind(m.sender.as_slice())
        .bind(int(m.seq))
        .bind(direction_code(m.direction))
        .bind(m.peer.as_str())
        .bind(int(m.seq))
        .fetch_optional(&mut *conn)
        .await;
        if let Ok(Some(_)) = found {
            return format!("{} already stored", describe_message(m));
        }
    }
    String::from("in batch")
}

/// Remove held rows that turned out not to follow their stream, with what the console keeps
/// of them (the queue, the search index); appended rows are never touched.
async fn discard_held(conn: &mut SqliteConnection, keys: &[(Hash32, Hash32, u64)]) -> Result<()> {
    const HELD: &str = "SELECT id FROM messages WHERE channel = ?1 AND sender = ?2 AND seq = ?3 \
                        AND placement = 1";
    for (channel, sender, seq) in keys {
        for statement in [
            format!("DELETE FROM console_unanswered WHERE id IN ({HELD})"),
            format!("DELETE FROM console_search WHERE id IN ({HELD})"),
            "DELETE FROM messages WHERE channel = ?1 AND sender = ?2 AND seq = ?3 \
             AND placement = 1"
                .to_string(),
        ] {
            sqlx::query(&statement)
                .bind(channel.as_slice())
                .bind(sender.as_slice())
                .bind(int(*seq))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn promote(conn: &mut SqliteConnection, keys: &[(Hash32, Hash32, u64)]) -> Result<()> {
    // UPDATE … FROM a VALUES list probes the (channel, sender, seq) index once per key; a
    // row-value `IN (VALUES …)` would scan the whole table instead.
    for chunk in pow2_chunks(keys, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE messages SET placement = 0 FROM (");
        qb.push_values(chunk, |mut b, (channel, sender, seq)| {
            b.push_bind(channel.as_slice())
                .push_bind(sender.as_slice())
                .push_bind(int(*seq));
        });
        qb.push(
            ") AS v WHERE messages.channel = v.column1 AND messages.sender = v.column2 \
             AND messages.seq = v.column3",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_outbox(conn: &mut SqliteConnection, rows: &[OutboxRow]) -> Result<()> {
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb =
            QueryBuilder::<Sqlite>::new("INSERT INTO outbox (peer, seq, precedence, is_receipt) ");
        qb.push_values(chunk, |mut b, o| {
            b.push_bind(o.peer.as_str())
                .push_bind(int(o.seq))
                .push_bind(i64::from(o.precedence))
                .push_bind(o.is_receipt);
        });
        if let Err(e) = qb.build().execute(&mut *conn).await {
            // A second outbox row for the same (peer, seq) means its message was sent
            // twice: the same bug the message check reports.
            if is_unique_violation(&e) {
                return Err(StoreError::Duplicate(format!("outbox row ({e})")));
            }
            return Err(e.into());
        }
    }
    Ok(())
}

async fn upsert_streams(conn: &mut SqliteConnection, rows: &[StreamRow]) -> Result<()> {
    // SQLite applies the VALUES rows in order, so if a batch names a stream twice the later
    // state wins, as it would with one statement per row.
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO streams (channel, sender, next_seq, last_id) ",
        );
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.channel.as_slice())
                .push_bind(s.sender.as_slice())
                .push_bind(int(s.next_seq))
                .push_bind(s.last_id.as_slice());
        });
        qb.push(
            " ON CONFLICT (channel, sender) DO UPDATE \
             SET next_seq = excluded.next_seq, last_id = excluded.last_id",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn mark_delivered(conn: &mut SqliteConnection, ranges: &[DeliveredRange]) -> Result<()> {
    // Rows already delivered or already pruned are simply not matched: idempotent, and the
    // first confirmation's time stays. Both updates walk partial indexes of rows still
    // waiting, so a receipt claiming a huge range costs what is actually outstanding.
    for r in ranges {
        sqlx::query("UPDATE outbox SET delivered = 1 WHERE peer = ? AND seq BETWEEN ? AND ? AND delivered = 0")
            .bind(r.peer.as_str())
            .bind(int(r.from))
            .bind(int(r.to))
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE messages INDEXED BY messages_out_undelivered SET delivered_at_ms = ? \
             WHERE peer = ? AND direction = 0 AND seq BETWEEN ? AND ? AND delivered_at_ms IS NULL",
        )
        .bind(r.at_ms)
        .bind(r.peer.as_str())
        .bind(int(r.from))
        .bind(int(r.to))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_receipts(conn: &mut SqliteConnection, rows: &[ReceiptRow]) -> Result<()> {
    // DO NOTHING on the key only (not INSERT OR IGNORE, which would also swallow CHECK
    // failures): the first receipt per (of, level) wins, including within one batch.
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            r#"INSERT INTO receipts ("of", level, at_ms, receipt_id, note) "#,
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.of.as_slice())
                .push_bind(r.level as i64)
                .push_bind(r.at_ms)
                .push_bind(r.receipt_id.as_slice())
                .push_bind(r.note.as_deref());
        });
        qb.push(r#" ON CONFLICT ("of", level) DO NOTHING"#);
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn upsert_glossary(conn: &mut SqliteConnection, rows: &[GlossaryRow]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO glossary (peer, lang_a, term_a, lang_b, term_b, added_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (peer, lang_a, term_a, lang_b) DO UPDATE SET \
             term_b = excluded.term_b, added_at_ms = excluded.added_at_ms",
        )
        .bind(&r.peer)
        .bind(&r.lang_a)
        .bind(&r.term_a)
        .bind(&r.lang_b)
        .bind(&r.term_b)
        .bind(r.added_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_misses(conn: &mut SqliteConnection, rows: &[MissRow]) -> Result<()> {
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deadline_misses (id, level, due_at_ms, missed_at_ms) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.as_slice())
                .push_bind(i64::from(r.level))
                .push_bind(r.due_at_ms)
                .push_bind(r.missed_at_ms);
        });
        qb.push(" ON CONFLICT (id, level) DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn prune(conn: &mut SqliteConnection, marks: &[(String, u64)]) -> Result<()> {
    // One range delete per peer with its highest mark: a batch carries at most a few
    // peers, and each delete is a primary-key range scan.
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    for (peer, hwm) in marks {
        let entry = highest.entry(peer.as_str()).or_insert(*hwm);
        *entry = (*entry).max(*hwm);
    }
    for (peer, hwm) in highest {
        sqlx::query("DELETE FROM outbox WHERE peer = ? AND seq <= ?")
            .bind(peer)
            .bind(i64::try_from(hwm).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_tree_nodes(conn: &mut SqliteConnection, rows: &[TreeNodeRow]) -> Result<()> {
    // The low levels are recomputed from the envelopes when read (`tree_nodes`).
    let rows: Vec<TreeNodeRow> = rows
        .iter()
        .filter(|t| t.level >= TREE_LEVEL_STORED_MIN)
        .copied()
        .collect();
    for chunk in pow2_chunks(&rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO tree_nodes (channel, sender, level, idx, hash) ",
        );
        qb.push_values(chunk, |mut b, t| {
            b.push_bind(t.channel.as_slice())
                .push_bind(t.sender.as_slice())
                .push_bind(i64::from(t.level))
                .push_bind(int(t.index))
                .push_bind(t.hash.as_slice());
        });
        if let Err(e) = qb.build().execute(&mut *conn).await {
            // A complete subtree never changes: a second one at a position is a bug.
            if is_unique_violation(&e) {
                return Err(StoreError::Duplicate(format!("tree node ({e})")));
            }
            return Err(e.into());
        }
    }
    Ok(())
}

async fn upsert_checkpoints(conn: &mut SqliteConnection, rows: &[CheckpointRow]) -> Result<()> {
    for c in rows {
        // The same body again carries a superset of signatures (the node merges them
        // before storing); a row never loses its co-signed state.
        sqlx::query(
            "INSERT INTO checkpoints (channel, body_hash, time_ms, cosigned, signed, stored_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (body_hash) DO UPDATE \
             SET signed = excluded.signed, cosigned = excluded.cosigned \
             WHERE excluded.cosigned >= checkpoints.cosigned",
        )
        .bind(c.channel.as_slice())
        .bind(c.body_hash.as_slice())
        .bind(c.time_ms)
        .bind(i64::from(c.cosigned))
        .bind(c.signed.as_slice())
        .bind(c.stored_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn upsert_witness(conn: &mut SqliteConnection, rows: &[WitnessRow]) -> Result<()> {
    for w in rows {
        if w.size > i64::MAX as u64 {
            return Err(StoreError::Database(format!(
                "witness size {} too large",
                w.size
            )));
        }
        sqlx::query(
            "INSERT INTO witness (channel, sender, size, root) VALUES (?, ?, ?, ?) \
             ON CONFLICT (channel, sender) DO UPDATE SET size = excluded.size, root = excluded.root",
        )
        .bind(w.channel.as_slice())
        .bind(w.sender.as_slice())
        .bind(int(w.size))
        .bind(w.root.as_slice())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_evidence(conn: &mut SqliteConnection, rows: &[EvidenceRow]) -> Result<()> {
    for e in rows {
        sqlx::query(
            "INSERT INTO evidence (channel, peer, kind, seq, first, second, detail, detected_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.channel.as_slice())
        .bind(e.peer.as_str())
        .bind(i64::from(e.kind))
        .bind(e.seq.map(int))
        .bind(e.first.as_slice())
        .bind(e.second.as_slice())
        .bind(e.detail.as_str())
        .bind(e.detected_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Insert idempotency records, replacing an expired one of the same scope and key (the
/// caller checked that no live one exists).
async fn upsert_idempotency(conn: &mut SqliteConnection, rows: &[IdempotencyRow]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at_ms, sent) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
             created_at_ms = excluded.created_at_ms, sent = excluded.sent",
        )
        .bind(&r.scope)
        .bind(&r.key)
        .bind(r.fingerprint.as_slice())
        .bind(r.created_at_ms)
        .bind(crate::encode_sent(&r.sent))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Forget at most [`IDEMPOTENCY_PRUNE_ROWS_MAX`] keys created before `before_ms`, oldest first.
async fn prune_idempotency(conn: &mut SqliteConnection, before_ms: i64) -> Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys \
         WHERE created_at_ms < ? ORDER BY created_at_ms LIMIT ?)",
    )
    .bind(before_ms)
    .bind(i64::from(IDEMPOTENCY_PRUNE_ROWS_MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Pending messages of one deadline group, in due order (see `Store::deadline_due`).
/// `(start, id) > (?, ?)` is a row-value comparison, a range on the index.
macro_rules! due_sql {
    ($direction:literal, $start:literal) => {
        concat!(
            "SELECT m.id, m.peer, m.seq, m.direction, m.precedence, m.kind, m.created_at_ms, \
                    m.stored_at_ms, m.delivered_at_ms IS NOT NULL AS delivered, \
                    (SELECT group_concat(d.level) FROM deadline_misses d WHERE d.id = m.id) \
                        AS missed \
             FROM messages m \
             WHERE m.direction = ", $direction, " AND m.kind IN (0, 4) \
               AND m.peer = ? AND m.precedence = ? AND (m.", $start, ", m.id) > (?, ?) \
               AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.\"of\" = m.id AND r.level IN (2, 3)) \
             ORDER BY m.", $start, ", m.id LIMIT ?"
        )
    };
}
const DUE_OUT_SQL: &str = due_sql!("0", "created_at_ms");
const DUE_IN_SQL: &str = due_sql!("1", "stored_at_ms");

fn decode_candidate(row: &SqliteRow) -> Result<DeadlineCandidate> {
    let direction: i64 = get(row, "messages", "direction")?;
    let missed: Option<String> = get(row, "messages", "missed")?;
    Ok(DeadlineCandidate {
        id: hash(row, "messages", "id")?,
        peer: get(row, "messages", "peer")?,
        seq: uint(row, "messages", "seq")?,
        direction: if direction == 0 {
            Direction::Out
        } else {
            Direction::In
        },
        precedence: u8::try_from(get::<_, i64>(row, "messages", "precedence")?).unwrap_or(u8::MAX),
        kind: u8::try_from(get::<_, i64>(row, "messages", "kind")?).unwrap_or(u8::MAX),
        created_at_ms: get(row, "messages", "created_at_ms")?,
        stored_at_ms: get(row, "messages", "stored_at_ms")?,
        delivered: get(row, "messages", "delivered")?,
        missed: missed
            .unwrap_or_default()
            .split(',')
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    })
}
