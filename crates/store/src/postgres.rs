//! The PostgreSQL implementation of [`Store`], for parties that run a database server (SPEC
//! §10): the same behaviour as [`SqliteStore`](crate::SqliteStore) in every respect, checked
//! by the same conformance tests (`tests/conformance.rs`).
//!
//! A commit is one transaction on the writer's single connection; it returns only after
//! PostgreSQL has made it durable (`synchronous_commit` at least `on`, checked when the
//! store opens), so the node acknowledges nothing that a crash of either machine could
//! lose. With a synchronous standby configured, `on` also waits for the standby's flush.
//!
//! Reads go through a small pool of connections that are read-only at the server
//! (`default_transaction_read_only`); each listing is one statement and so one snapshot.
//!
//! The connection is plain TCP (no TLS feature is compiled in): run the database on the same
//! machine or a private network. A lost connection is [`StoreError::Unavailable`]: the
//! batch was not applied, and the next call reconnects by itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use detente_proto::merkle;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::QueryBuilder;

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

/// Read connections: as for SQLite, enough for concurrent API requests.
const READ_CONNECTIONS_MAX: u32 = 4;

/// How long a call waits for a connection (including connecting) before it fails with
/// [`StoreError::Unavailable`]. Short, so that an API request answers 503 promptly while the
/// database is away instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server keeps a session that stopped in the middle of a transaction, in
/// milliseconds: it holds the lease row's share lock, which a take-over waits for.
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 3_000;

/// How long a lease statement waits for a row lock, in milliseconds.
const LEASE_LOCK_TIMEOUT_MS: u64 = 2_000;

/// Largest number of rows in one multi-row statement; chunks are powers of two up to this,
/// as in the SQLite store, so every statement text stays prepared on its connection.
const CHUNK_ROWS_MAX: usize = 512;

/// Bound parameters per `messages` row, the widest row a commit writes.
const MESSAGE_COLUMNS: usize = 14;

// PostgreSQL's protocol numbers parameters with 16 bits.
const _: () = assert!(CHUNK_ROWS_MAX * MESSAGE_COLUMNS < 65_535);

/// Prepared statements kept per connection: the commit's chunked texts (a few per table)
/// and the queries, with room to spare.
const STATEMENT_CACHE_MAX: usize = 256;

/// sqlx's embedded PostgreSQL migrations (`migrations/postgres`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A detente store in a PostgreSQL database. Cloning is cheap and shares the connections.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Exactly one connection, so batches are applied one after another in the order the
    /// writer task hands them over, as with SQLite.
    pub(crate) writer: PgPool,
    pub(crate) reader: PgPool,
    /// One connection for the lease (`lease.rs`), apart from the writer's so that a renewal
    /// never queues behind a commit; connected on first use.
    pub(crate) lease: PgPool,
    /// The epoch this process's commits must hold, once it took the lease.
    pub(crate) fence: std::sync::Arc<crate::lease::Fence>,
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://user:password@host:port/db`) and bring
    /// its schema up to date. Errors name the URL with its password hidden.
    ///
    /// Several hosts (`host1:port,host2:port`, with `target_session_attrs=read-write`) are
    /// taken as libpq takes them: the first acceptable server is used, and a watcher moves
    /// to another when it goes away or stops being the primary (see [`crate::pg_hosts`]).
    pub async fn open(url: &str) -> Result<PgStore> {
        let shown = redact_url(url);
        let (single, hosts) = crate::pg_hosts::split(url)?;
        let mut options = PgConnectOptions::from_str(&single)
            .map_err(|e| StoreError::Open(format!("{shown}: {e}")))?
            .application_name("detente")
            .statement_cache_capacity(STATEMENT_CACHE_MAX);
        let open_error = |e: &dyn std::fmt::Display| StoreError::Open(format!("{shown}: {e}"));
        // Several hosts: use the one that accepts writes (see `pg_hosts`).
        let mut primary = 0;
        if hosts.len() > 1 {
            primary = crate::pg_hosts::find_primary(&options, &hosts)
                .await
                .ok_or_else(|| {
                    open_error(&format!(
                        "none of its {} hosts answers and accepts writes",
                        hosts.len()
                    ))
                })?;
            let (host, port) = &hosts[primary];
            options = options.host(host).port(*port);
        }
        let probe_options = options.clone();

        // A writer that stops in the middle of a transaction (paused, or its network cut)
        // must not keep the lease row locked: the server ends such a session.
        let writer_options = options.clone().options([(
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string(),
        )]);
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Released connections are pinged by the pool anyway; a second ping before each
            // commit would cost another round trip.
            .test_before_acquire(false)
            .connect_with(writer_options)
            .await
            .map_err(|e| open_error(&e))?;
        check_durability(&writer).await.map_err(|e| match e {
            StoreError::Open(m) => StoreError::Open(format!("{shown}: {m}")),
            other => other,
        })?;
        crate::migrate(&MIGRATOR, &writer)
            .await
            .map_err(|e| match e {
                StoreError::Open(m) => StoreError::Open(format!("{shown}: {m}")),
                other => other,
            })?;

        let reader = PgPoolOptions::new()
            .max_connections(READ_CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .options([("default_transaction_read_only", "on")]),
            )
            .await
            .map_err(|e| open_error(&e))?;
        // A take-over waits at most this long for an old active's commit to finish, then
        // tries again on the next round instead of hanging.
        let lease = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.options([
                ("lock_timeout", LEASE_LOCK_TIMEOUT_MS.to_string()),
                (
                    "idle_in_transaction_session_timeout",
                    IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string(),
                ),
            ]));
        if hosts.len() > 1 {
            let pools = vec![writer.clone(), reader.clone(), lease.clone()];
            tokio::spawn(crate::pg_hosts::follow_primary(
                probe_options,
                hosts,
                primary,
                pools,
            ));
        }
        Ok(PgStore {
            writer,
            reader,
            lease,
            fence: Default::default(),
        })
    }

    /// Close every connection, waiting for work in progress. Calls made after this fail.
    pub async fn close(&self) {
        self.lease.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn commit_batch(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        check_ranges(&batch)?;
        let mut tx = self.writer.begin().await?;
        self.check_fence(&mut tx).await?;
        discard_held(&mut tx, &batch.discard_held).await?;
        if let Err(e) = insert_messages(&mut tx, &batch.messages).await {
            // The failed statement aborted the transaction: roll it back, then look for the
            // colliding message in the batch itself and in what is committed.
            let _ = tx.rollback().await;
            if is_unique_violation(&e) {
                let which = self.describe_duplicate(&batch.messages).await;
                return Err(StoreError::Duplicate(format!("{which} ({e})")));
            }
            return Err(e.into());
        }
        let conn: &mut PgConnection = &mut tx;
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
        // Any early return above drops `tx`, which rolls the whole batch back.
        tx.commit().await?;
        Ok(())
    }

    /// Name the message of `messages` that collided, for the error.
    async fn describe_duplicate(&self, messages: &[MessageRow]) -> String {
        let mut ids = HashSet::new();
        let mut positions = HashSet::new();
        let mut outgoing = HashSet::new();
        for m in messages {
            let in_batch = !ids.insert(m.id)
                || !positions.insert((m.channel, m.sender, m.seq))
                || (m.direction == Direction::Out && !outgoing.insert((m.peer.as_str(), m.seq)));
            if in_batch {
                return format!("{} twice in one batch", describe_message(m));
            }
        }
        for m in messages {
            let found = sqlx::query(
                "SELECT 1 FROM messages WHERE id = $1 OR (channel = $2 AND sender = $3 AND seq = $4) \
                 OR ($5 = 0 AND direction = 0 AND peer = $6 AND seq = $4) LIMIT 1",
            )
            .bind(m.id.as_slice())
            .bind(m.channel.as_slice())
            .bind(m.sender.as_slice())
            .bind(int(m.seq))
            .bind(direction_code(m.direction))
            .bind(m.peer.as_str())
            .fetch_optional(&self.reader)
            .await;
            if let Ok(Some(_)) = found {
                return format!("{} already stored", describe_message(m));
            }
        }
        String::from("in batch")
    }
}

/// Refuse a server on which a commit would not be durable when it returns: `fsync` off, or
/// `synchronous_commit` off for this session (`local`, `remote_write`, `on` and
/// `remote_apply` all flush the primary's WAL before the commit returns).
async fn check_durability(pool: &PgPool) -> Result<()> {
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(pool).await?;
    if fsync != "on" {
        return Err(StoreError::Open(
            "the server runs with fsync = off, so a commit is not durable; turn fsync on".into(),
        ));
    }
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await?;
    if sync == "off" {
        return Err(StoreError::Open(
            "synchronous_commit is off for this database or role, so a commit is not durable \
             when it returns; set it to on"
                .into(),
        ));
    }
    Ok(())
}

/// Create database `name` through the administrative connection `admin_url` and return the
/// URL of the new database (for benchmarks and tests, which make a fresh one per run). The
/// name must be a plain identifier: lowercase letters, digits and '_'.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    admin_statement(admin_url, name, "CREATE DATABASE").await?;
    Ok(with_database(admin_url, name))
}

/// Drop database `name` (made by [`create_database`]), ending its sessions.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    admin_statement(admin_url, name, "DROP DATABASE IF EXISTS").await?;
    Ok(())
}

async fn admin_statement(admin_url: &str, name: &str, verb: &str) -> Result<()> {
    use sqlx::Connection;
    let plain = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(StoreError::Open(format!(
            "database name {name:?}: lowercase letters, digits and '_', at most 63"
        )));
    }
    let shown = redact_url(admin_url);
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| StoreError::Open(format!("{shown}: {e}")))?;
    let force = if verb.starts_with("DROP") {
        " WITH (FORCE)"
    } else {
        ""
    };
    // The name was checked above: it cannot close the quotes.
    sqlx::query(&format!("{verb} \"{name}\"{force}"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last '@' of the authority (a password may hold '@').
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    // A password given as a query parameter is hidden too.
    let tail = match tail.find("password=") {
        Some(i) => {
            let start = i + "password=".len();
            let end = tail[start..].find('&').map_or(tail.len(), |e| start + e);
            format!("{}***{}", &tail[..start], &tail[end..])
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Decode a UTF-8 string stored as BYTEA (see the migration's header).
fn text_bytes(bytes: Vec<u8>, table: &'static str, column: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt {
        table,
        what: format!("column {column} is not UTF-8"),
    })
}

impl Store for PgStore {
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

    async fn put_search(&self, rows: Vec<(Hash32, String)>) -> Result<()> {
        self.console_put_search(rows).await
    }

    async fn idempotency(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRow>> {
        let sql = format!("{IDEMPOTENCY_SELECT} WHERE scope = $1 AND key = $2");
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
             WHERE scope = $1 AND created_at_ms >= $2 LIMIT $3) AS live",
        )
        .bind(scope)
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await?;
        uint(&row, "idempotency_keys", "n")
    }

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
        let sql = format!("{MESSAGE_SELECT} WHERE id = $1");
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
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let sql = format!("{MESSAGE_SELECT} WHERE channel = $1 AND sender = $2 AND seq = $3");
        let row = sqlx::query(&sql)
            .bind(channel.as_slice())
            .bind(sender.as_slice())
            .bind(seq)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn held(&self, channel: Hash32, sender: Hash32, limit: u32) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} WHERE channel = $1 AND sender = $2 AND placement = 1 \
             ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(channel.as_slice())
            .bind(sender.as_slice())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_message).collect()
    }

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
        // A scalar subquery rather than a join: it is one probe of the (peer, seq) index per
        // outbox row whatever the planner's statistics say. With a join, a plan made while
        // the tables looked empty (prepared statements keep their generic plan) walked every
        // outgoing message for each outbox row: 5 s per call at 6,000 messages. A missing
        // message comes back as NULL, an error below instead of never being sent.
        let rows = sqlx::query(
            "SELECT o.seq AS seq, (SELECT m.bytes FROM messages AS m \
                 WHERE m.peer = o.peer AND m.direction = 0 AND m.seq = o.seq) AS bytes \
             FROM outbox AS o \
             WHERE o.peer = $1 AND o.precedence = $2 AND NOT o.delivered AND o.seq > $3 \
             ORDER BY o.seq LIMIT $4",
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
        let row = sqlx::query(
            "SELECT COUNT(*) AS pending, COUNT(*) FILTER (WHERE precedence = 0) AS pending_flash \
             FROM outbox WHERE peer = $1 AND NOT delivered",
        )
        .bind(peer)
        .fetch_one(&self.reader)
        .await?;
        Ok(OutboxCounts {
            pending: uint(&row, "outbox", "pending")?,
            pending_flash: uint(&row, "outbox", "pending_flash")?,
        })
    }

    async fn inbox(&self, query: InboxQuery) -> Result<Vec<MessageRow>> {
        let limit = if query.limit == 0 {
            INBOX_ROWS_DEFAULT
        } else {
            query.limit
        };
        let mut qb = QueryBuilder::<Postgres>::new(MESSAGE_SELECT);
        match &query.peer {
            Some(peer) => {
                qb.push(" WHERE peer = ");
                qb.push_bind(peer.as_str());
            }
            None => {
                qb.push(" WHERE TRUE");
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

    async fn receipt_times(&self, of: Hash32) -> Result<ReceiptTimes> {
        let rows = sqlx::query(r#"SELECT level, at_ms, note FROM receipts WHERE "of" = $1"#)
            .bind(of.as_slice())
            .fetch_all(&self.reader)
            .await?;
        let delivered: Option<Option<i64>> =
            sqlx::query_scalar("SELECT delivered_at_ms FROM messages WHERE id = $1")
                .bind(of.as_slice())
                .fetch_optional(&self.reader)
                .await?;
        let mut times = ReceiptTimes {
            delivered_ms: delivered.flatten(),
            ..ReceiptTimes::default()
        };
        let mut declined_note = None;
        for row in &rows {
            let level: i64 = get(row, "receipts", "level")?;
            let at_ms: i64 = get(row, "receipts", "at_ms")?;
            let note: Option<Vec<u8>> = get(row, "receipts", "note")?;
            let note = note
                .map(|b| text_bytes(b, "receipts", "note"))
                .transpose()?;
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
        if times.note.is_none() {
            times.note = declined_note;
        }
        Ok(times)
    }

    async fn glossary(&self, peer: &str, limit: u32) -> Result<Vec<GlossaryRow>> {
        let rows = sqlx::query(
            "SELECT peer, lang_a, term_a, lang_b, term_b, added_at_ms FROM glossary \
             WHERE peer = $1 ORDER BY added_at_ms, lang_a, term_a LIMIT $2",
        )
        .bind(peer)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                const T: &str = "glossary";
                Ok(GlossaryRow {
                    peer: get(row, T, "peer")?,
                    lang_a: get(row, T, "lang_a")?,
                    term_a: get(row, T, "term_a")?,
                    lang_b: get(row, T, "lang_b")?,
                    term_b: get(row, T, "term_b")?,
                    added_at_ms: get(row, T, "added_at_ms")?,
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

    async fn deadline_candidates(&self, limit: u32) -> Result<Vec<DeadlineCandidate>> {
        let rows = sqlx::query(
            r#"SELECT m.id, m.peer, m.seq, m.direction, m.precedence, m.kind, m.created_at_ms,
                      m.stored_at_ms, m.delivered_at_ms IS NOT NULL AS delivered,
                      (SELECT string_agg(d.level::text, ',' ORDER BY d.level)
                         FROM deadline_misses d WHERE d.id = m.id) AS missed
               FROM messages m
               WHERE m.kind IN (0, 4)
                 AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r."of" = m.id AND r.level IN (2, 3))
               ORDER BY m.created_at_ms DESC LIMIT $1"#,
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
            Some((start, id)) => (*start, id.to_vec()),
            None => (i64::MIN, Vec::new()),
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
            let ids: Vec<&[u8]> = chunk.iter().map(|id| id.as_slice()).collect();
            let rows = sqlx::query(
                r#"SELECT m.id, m.peer, m.seq, m.direction, m.precedence, m.kind,
                          m.created_at_ms, m.stored_at_ms,
                          m.delivered_at_ms IS NOT NULL AS delivered,
                          (SELECT string_agg(d.level::text, ',' ORDER BY d.level)
                             FROM deadline_misses d WHERE d.id = m.id) AS missed
                   FROM messages m
                   WHERE m.id = ANY($1) AND m.kind IN (0, 4)
                     AND NOT EXISTS (SELECT 1 FROM receipts r
                                     WHERE r."of" = m.id AND r.level IN (2, 3))"#,
            )
            .bind(ids)
            .fetch_all(&self.reader)
            .await?;
            for row in &rows {
                out.push(decode_candidate(row)?);
            }
        }
        Ok(out)
    }

    async fn deadline_counts(&self) -> Result<Vec<DeadlineCounts>> {
        let rows = sqlx::query(
            r#"SELECT m.peer,
                      COUNT(*) FILTER (WHERE m.direction = 0 AND EXISTS (
                          SELECT 1 FROM deadline_misses d
                          WHERE d.id = m.id AND (d.level = 2 OR m.delivered_at_ms IS NULL)))
                          AS overdue_out,
                      COUNT(*) FILTER (WHERE m.direction = 1 AND EXISTS (
                          SELECT 1 FROM deadline_misses d
                          WHERE d.id = m.id AND (d.level = 2 OR m.delivered_at_ms IS NULL)))
                          AS overdue_in,
                      COUNT(*) FILTER (WHERE m.direction = 1) AS unanswered_in
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
            "SELECT level, due_at_ms, missed_at_ms FROM deadline_misses WHERE id = $1 \
             ORDER BY level",
        )
        .bind(id.as_slice())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                const T: &str = "deadline_misses";
                Ok(MissRow {
                    id,
                    level: small(row, T, "level")?,
                    due_at_ms: get(row, T, "due_at_ms")?,
                    missed_at_ms: get(row, T, "missed_at_ms")?,
                })
            })
            .collect()
    }

    async fn tree_nodes(
        &self,
        channel: Hash32,
        sender: Hash32,
        positions: Vec<(u8, u64)>,
    ) -> Result<Vec<Option<Hash32>>> {
        // One statement per level with its indexes as an array (`idx = ANY`): an index
        // condition on the primary key whatever the planner's statistics (see
        // `outbox_pending`).
        let mut by_level: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
        for (level, index) in &positions {
            if let Ok(index) = i64::try_from(*index) {
                by_level.entry(*level).or_default().push(index);
            }
        }
        let mut found: HashMap<(u8, u64), Hash32> = HashMap::new();
        for (level, indexes) in by_level {
            for chunk in indexes.chunks(CHUNK_ROWS_MAX) {
                let rows = sqlx::query(
                    "SELECT level, idx, hash FROM tree_nodes \
                     WHERE channel = $1 AND sender = $2 AND level = $3 AND idx = ANY($4)",
                )
                .bind(channel.as_slice())
                .bind(sender.as_slice())
                .bind(i64::from(level))
                .bind(chunk)
                .fetch_all(&self.reader)
                .await?;
                for row in rows {
                    let level = small(&row, "tree_nodes", "level")?;
                    let index = uint(&row, "tree_nodes", "idx")?;
                    found.insert((level, index), hash(&row, "tree_nodes", "hash")?);
                }
            }
        }
        let low: HashSet<(u8, u64)> = positions
            .iter()
            .filter(|p| p.0 < TREE_LEVEL_STORED_MIN && !found.contains_key(p))
            .copied()
            .collect();
        for (level, index) in low {
            if let Some(h) = self.low_tree_node(channel, sender, level, index).await? {
                found.insert((level, index), h);
            }
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
            "SELECT seq, bytes FROM messages WHERE channel = $1 AND sender = $2 AND seq > $3 \
             AND placement = 0 ORDER BY seq LIMIT $4",
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
        let rows =
            sqlx::query("SELECT channel, sender, size, root FROM witness WHERE channel = $1")
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
                    detail: text_bytes(get(row, T, "detail")?, T, "detail")?,
                    detected_at_ms: get(row, T, "detected_at_ms")?,
                })
            })
            .collect()
    }

    async fn messages_of_kind(&self, peer: &str, kind: u8, limit: u32) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} WHERE peer = $1 AND direction = $2 AND kind = $3 \
             ORDER BY seq DESC LIMIT $4"
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
}

impl PgStore {
    /// A subtree below [`TREE_LEVEL_STORED_MIN`], hashed from the appended envelopes it
    /// covers; `None` while one of them is missing or only held.
    async fn low_tree_node(
        &self,
        channel: Hash32,
        sender: Hash32,
        level: u8,
        index: u64,
    ) -> Result<Option<Hash32>> {
        let width = 1u64 << level;
        let Some(first) = index.checked_mul(width).and_then(|f| f.checked_add(1)) else {
            return Ok(None);
        };
        let last = first + (width - 1);
        let (Ok(lo), Ok(hi)) = (i64::try_from(first), i64::try_from(last)) else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT seq, bytes FROM messages WHERE channel = $1 AND sender = $2 \
             AND seq BETWEEN $3 AND $4 AND placement = 0 ORDER BY seq",
        )
        .bind(channel.as_slice())
        .bind(sender.as_slice())
        .bind(lo)
        .bind(hi)
        .fetch_all(&self.reader)
        .await?;
        if rows.len() as u64 != width {
            return Ok(None);
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
        Ok(hashes.first().copied())
    }
}

/// Pending messages of one deadline group, in due order (see `Store::deadline_due`).
/// `(start, id) > ($3, $4)` is a row comparison, a range on the index.
macro_rules! due_sql {
    ($direction:literal, $start:literal) => {
        concat!(
            "SELECT m.id, m.peer, m.seq, m.direction, m.precedence, m.kind, m.created_at_ms, \
                    m.stored_at_ms, m.delivered_at_ms IS NOT NULL AS delivered, \
                    (SELECT string_agg(d.level::text, ',' ORDER BY d.level) \
                       FROM deadline_misses d WHERE d.id = m.id) AS missed \
             FROM messages m \
             WHERE m.direction = ", $direction, " AND m.kind IN (0, 4) \
               AND m.peer = $1 AND m.precedence = $2 AND (m.", $start, ", m.id) > ($3, $4) \
               AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.\"of\" = m.id AND r.level IN (2, 3)) \
             ORDER BY m.", $start, ", m.id LIMIT $5"
        )
    };
}
const DUE_OUT_SQL: &str = due_sql!("0", "created_at_ms");
const DUE_IN_SQL: &str = due_sql!("1", "stored_at_ms");

fn decode_candidate(row: &PgRow) -> Result<DeadlineCandidate> {
    const T: &str = "messages";
    let direction: i64 = get(row, T, "direction")?;
    let missed: Option<String> = get(row, T, "missed")?;
    Ok(DeadlineCandidate {
        id: hash(row, T, "id")?,
        peer: get(row, T, "peer")?,
        seq: uint(row, T, "seq")?,
        direction: if direction == 0 {
            Direction::Out
        } else {
            Direction::In
        },
        precedence: small(row, T, "precedence")?,
        kind: small(row, T, "kind")?,
        created_at_ms: get(row, T, "created_at_ms")?,
        stored_at_ms: get(row, T, "stored_at_ms")?,
        delivered: get(row, T, "delivered")?,
        missed: missed
            .unwrap_or_default()
            .split(',')
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------
// Commit steps. Each takes the transaction's connection and writes one part of the batch.

async fn insert_messages(
    conn: &mut PgConnection,
    messages: &[MessageRow],
) -> std::result::Result<(), sqlx::Error> {
    for chunk in pow2_chunks(messages, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Postgres>::new(
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
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Remove held rows that turned out not to follow their stream, with what the console keeps
/// of them (the queue, the search index); appended rows are never touched.
async fn discard_held(conn: &mut PgConnection, keys: &[(Hash32, Hash32, u64)]) -> Result<()> {
    const HELD: &str = "SELECT id FROM messages WHERE channel = $1 AND sender = $2 AND seq = $3 \
                        AND placement = 1";
    for (channel, sender, seq) in keys {
        for statement in [
            format!("DELETE FROM console_unanswered WHERE id IN ({HELD})"),
            format!("DELETE FROM console_search WHERE id IN ({HELD})"),
            "DELETE FROM messages WHERE channel = $1 AND sender = $2 AND seq = $3 \
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

async fn promote(conn: &mut PgConnection, keys: &[(Hash32, Hash32, u64)]) -> Result<()> {
    // One statement per stream with its seqs as an array: `seq = ANY($3)` is an index
    // condition on (channel, sender, seq) whatever the statistics, where a join against a
    // VALUES list may be planned as a scan of the whole table.
    let mut by_stream: BTreeMap<(Hash32, Hash32), Vec<i64>> = BTreeMap::new();
    for (channel, sender, seq) in keys {
        by_stream
            .entry((*channel, *sender))
            .or_default()
            .push(int(*seq));
    }
    for ((channel, sender), seqs) in by_stream {
        sqlx::query(
            "UPDATE messages SET placement = 0 \
             WHERE channel = $1 AND sender = $2 AND seq = ANY($3)",
        )
        .bind(channel.as_slice())
        .bind(sender.as_slice())
        .bind(seqs)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_outbox(conn: &mut PgConnection, rows: &[OutboxRow]) -> Result<()> {
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Postgres>::new(
            "INSERT INTO outbox (peer, seq, precedence, is_receipt) ",
        );
        qb.push_values(chunk, |mut b, o| {
            b.push_bind(o.peer.as_str())
                .push_bind(int(o.seq))
                .push_bind(i64::from(o.precedence))
                .push_bind(o.is_receipt);
        });
        if let Err(e) = qb.build().execute(&mut *conn).await {
            if is_unique_violation(&e) {
                return Err(StoreError::Duplicate(format!("outbox row ({e})")));
            }
            return Err(e.into());
        }
    }
    Ok(())
}

async fn upsert_streams(conn: &mut PgConnection, rows: &[StreamRow]) -> Result<()> {
    // PostgreSQL refuses an upsert that touches one row twice in a statement; SQLite applies
    // the rows in order. Keep the last state of each stream, which is what SQLite ends with.
    let mut last: BTreeMap<(Hash32, Hash32), StreamRow> = BTreeMap::new();
    for s in rows {
        last.insert((s.channel, s.sender), *s);
    }
    let rows: Vec<StreamRow> = last.into_values().collect();
    for chunk in pow2_chunks(&rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Postgres>::new(
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

async fn mark_delivered(conn: &mut PgConnection, ranges: &[DeliveredRange]) -> Result<()> {
    // Rows already delivered or pruned are not matched: idempotent, and the first
    // confirmation's time stays. Both updates walk partial indexes of rows still waiting.
    for r in ranges {
        sqlx::query(
            "UPDATE outbox SET delivered = TRUE \
             WHERE peer = $1 AND seq BETWEEN $2 AND $3 AND NOT delivered",
        )
        .bind(r.peer.as_str())
        .bind(int(r.from))
        .bind(int(r.to))
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE messages SET delivered_at_ms = $1 \
             WHERE peer = $2 AND direction = 0 AND seq BETWEEN $3 AND $4 \
             AND delivered_at_ms IS NULL",
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

async fn insert_receipts(conn: &mut PgConnection, rows: &[ReceiptRow]) -> Result<()> {
    // DO NOTHING on the key: the first receipt per (of, level) wins, also within a batch.
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Postgres>::new(
            r#"INSERT INTO receipts ("of", level, at_ms, receipt_id, note) "#,
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.of.as_slice())
                .push_bind(r.level as i64)
                .push_bind(r.at_ms)
                .push_bind(r.receipt_id.as_slice())
                .push_bind(r.note.as_deref().map(str::as_bytes));
        });
        qb.push(r#" ON CONFLICT ("of", level) DO NOTHING"#);
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn upsert_glossary(conn: &mut PgConnection, rows: &[GlossaryRow]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO glossary (peer, lang_a, term_a, lang_b, term_b, added_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
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

async fn insert_misses(conn: &mut PgConnection, rows: &[MissRow]) -> Result<()> {
    for chunk in pow2_chunks(rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Postgres>::new(
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

async fn prune(conn: &mut PgConnection, marks: &[(String, u64)]) -> Result<()> {
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    for (peer, hwm) in marks {
        let entry = highest.entry(peer.as_str()).or_insert(*hwm);
        *entry = (*entry).max(*hwm);
    }
    for (peer, hwm) in highest {
        sqlx::query("DELETE FROM outbox WHERE peer = $1 AND seq <= $2")
            .bind(peer)
            .bind(i64::try_from(hwm).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_tree_nodes(conn: &mut PgConnection, rows: &[TreeNodeRow]) -> Result<()> {
    let rows: Vec<TreeNodeRow> = rows
        .iter()
        .filter(|t| t.level >= TREE_LEVEL_STORED_MIN)
        .copied()
        .collect();
    for chunk in pow2_chunks(&rows, CHUNK_ROWS_MAX) {
        let mut qb = QueryBuilder::<Postgres>::new(
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
            if is_unique_violation(&e) {
                return Err(StoreError::Duplicate(format!("tree node ({e})")));
            }
            return Err(e.into());
        }
    }
    Ok(())
}

async fn upsert_checkpoints(conn: &mut PgConnection, rows: &[CheckpointRow]) -> Result<()> {
    for c in rows {
        // A row never loses its co-signed state (false < true for BOOLEAN).
        sqlx::query(
            "INSERT INTO checkpoints (channel, body_hash, time_ms, cosigned, signed, stored_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (body_hash) DO UPDATE \
             SET signed = excluded.signed, cosigned = excluded.cosigned \
             WHERE excluded.cosigned >= checkpoints.cosigned",
        )
        .bind(c.channel.as_slice())
        .bind(c.body_hash.as_slice())
        .bind(c.time_ms)
        .bind(c.cosigned)
        .bind(c.signed.as_slice())
        .bind(c.stored_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn upsert_witness(conn: &mut PgConnection, rows: &[WitnessRow]) -> Result<()> {
    for w in rows {
        if w.size > i64::MAX as u64 {
            return Err(StoreError::Database(format!(
                "witness size {} too large",
                w.size
            )));
        }
        sqlx::query(
            "INSERT INTO witness (channel, sender, size, root) VALUES ($1, $2, $3, $4) \
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

async fn insert_evidence(conn: &mut PgConnection, rows: &[EvidenceRow]) -> Result<()> {
    for e in rows {
        sqlx::query(
            "INSERT INTO evidence (channel, peer, kind, seq, first, second, detail, detected_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.channel.as_slice())
        .bind(e.peer.as_str())
        .bind(i64::from(e.kind))
        .bind(e.seq.map(int))
        .bind(e.first.as_slice())
        .bind(e.second.as_slice())
        .bind(e.detail.as_bytes())
        .bind(e.detected_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Insert idempotency records, replacing an expired one of the same scope and key (the
/// caller checked that no live one exists).
async fn upsert_idempotency(conn: &mut PgConnection, rows: &[IdempotencyRow]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at_ms, sent) \
             VALUES ($1, $2, $3, $4, $5) \
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
async fn prune_idempotency(conn: &mut PgConnection, before_ms: i64) -> Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE (scope, key) IN (SELECT scope, key \
         FROM idempotency_keys WHERE created_at_ms < $1 ORDER BY created_at_ms LIMIT $2)",
    )
    .bind(before_ms)
    .bind(i64::from(IDEMPOTENCY_PRUNE_ROWS_MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{redact_url, with_database};

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5/postgres", "x"),
            "postgres://u:p@127.0.0.1:5/x"
        );
        assert_eq!(
            with_database("postgres://h:5?sslmode=disable", "y"),
            "postgres://h:5/y?sslmode=disable"
        );
    }

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact_url("postgres://detente:s3cr@t@db.example:5432/detente"),
            "postgres://detente:***@db.example:5432/detente"
        );
        assert_eq!(
            redact_url("postgres://db:5432/x?user=a&password=b&sslmode=disable"),
            "postgres://db:5432/x?user=a&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://a@127.0.0.1/x"),
            "postgres://a@127.0.0.1/x"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
