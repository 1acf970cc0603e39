//! Console accounts, sessions and the audit log, in the same database as the transcript.
//!
//! These rows are local to the node and never part of the transcript, so they are not
//! [`WriteBatch`](crate::WriteBatch) members: they are written through the store's single
//! write connection (so they queue behind group commits and never contend for SQLite's write
//! lock) by short statements of their own. That also lets `detente user add` write while
//! the node runs, as a second process waiting on the busy timeout (SQLite) or on its own
//! connection (PostgreSQL). Both stores have the same methods with the same behaviour.

use sqlx::{ColumnIndex, Decode, QueryBuilder, Row, Sqlite, Type};

use crate::rows::{decode_message, MESSAGE_SELECT};
use crate::sqlite::WriteTx;
use crate::{
    Direction, MessageRow, PgStore, Result, SqliteStore, StoreError, TimelineQuery,
    UnansweredCount, UnansweredRow,
};

/// Sessions kept per login, at most; creating one more removes the oldest.
pub const SESSIONS_PER_LOGIN_MAX: i64 = 16;
/// Audit rows returned by one listing, at most.
pub const AUDIT_ROWS_MAX: u32 = 10_000;
/// Messages on one timeline page, at most.
pub const TIMELINE_ROWS_MAX: u32 = 500;
/// Unanswered messages returned by one queue query, at most.
pub const UNANSWERED_ROWS_MAX: u32 = 1_000;
/// Search terms used from one query, at most (the rest are ignored).
pub const SEARCH_TERMS_MAX: usize = 8;
/// Characters of one search term used, at most.
pub const SEARCH_TERM_CHARS_MAX: usize = 64;
/// Messages returned by one [`crate::Store::search_pending`], or indexed by one
/// [`crate::Store::put_search`], at most.
pub const SEARCH_BATCH_MAX: u32 = 500;
/// Bytes of one message's searchable words kept, at most.
pub const SEARCH_BODY_BYTES_MAX: usize = 64 * 1024;

/// The terms of a search as [`TimelineQuery::text`] uses them: split at white space, at most
/// [`SEARCH_TERMS_MAX`] of at most [`SEARCH_TERM_CHARS_MAX`] characters each.
pub fn search_terms(query: &str) -> Vec<String> {
    query
        .split_whitespace()
        .take(SEARCH_TERMS_MAX)
        .map(|t| t.chars().take(SEARCH_TERM_CHARS_MAX).collect())
        .collect()
}

/// A `LIKE` pattern that matches `term` anywhere, its wildcards escaped (with `\`).
fn like_anywhere(term: &str) -> String {
    let mut out = String::with_capacity(term.len() + 2);
    out.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// `body` cut to [`SEARCH_BODY_BYTES_MAX`] at a character boundary.
fn capped_body(body: &str) -> &str {
    let mut end = body.len().min(SEARCH_BODY_BYTES_MAX);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

/// The terms [`TimelineQuery::text`] uses, as [`search_terms`] caps them.
fn used_terms(q: &TimelineQuery) -> impl Iterator<Item = String> + '_ {
    q.text
        .iter()
        .filter(|t| !t.is_empty())
        .take(SEARCH_TERMS_MAX)
        .map(|t| t.chars().take(SEARCH_TERM_CHARS_MAX).collect())
}

/// One console account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub login: String,
    /// watch, supervisor, principal, auditor or admin.
    pub role: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub lang: String,
    /// The time zone this operator reads times in (an IANA name); empty: the node's.
    pub tz: String,
    pub created_at_ms: i64,
}

/// One login session; the token itself is only ever in the operator's cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: [u8; 32],
    pub login: String,
    pub csrf: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at_ms: i64,
    pub login: String,
    pub action: String,
    pub detail: String,
    pub source: String,
}

fn user<R>(row: &R) -> Result<UserRow>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(UserRow {
        login: row.try_get("login")?,
        role: row.try_get("role")?,
        password_hash: row.try_get("password_hash")?,
        lang: row.try_get("lang")?,
        tz: row.try_get("tz")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

impl SqliteStore {
    /// Create an account, or replace the role and password of an existing one (its
    /// sessions end). Returns true when the account is new.
    pub async fn put_user(&self, row: &UserRow) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let existed: Option<String> = sqlx::query_scalar("SELECT login FROM users WHERE login = ?")
            .bind(&row.login)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO users (login, role, password_hash, lang, tz, created_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (login) DO UPDATE SET \
             role = excluded.role, password_hash = excluded.password_hash",
        )
        .bind(&row.login)
        .bind(&row.role)
        .bind(&row.password_hash)
        .bind(&row.lang)
        .bind(&row.tz)
        .bind(row.created_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE login = ?")
            .bind(&row.login)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(existed.is_none())
    }

    pub async fn user(&self, login: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query("SELECT * FROM users WHERE login = ?")
            .bind(login)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(user).transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY login")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(user).collect()
    }

    pub async fn set_user_lang(&self, login: &str, lang: &str) -> Result<()> {
        sqlx::query("UPDATE users SET lang = ? WHERE login = ?")
            .bind(lang)
            .bind(login)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Set the time zone `login` reads times in (empty: the node's).
    pub async fn set_user_tz(&self, login: &str, tz: &str) -> Result<()> {
        sqlx::query("UPDATE users SET tz = ? WHERE login = ?")
            .bind(tz)
            .bind(login)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Store a new session, dropping expired ones and the oldest of this login's beyond
    /// [`SESSIONS_PER_LOGIN_MAX`].
    pub async fn create_session(&self, row: &SessionRow) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at_ms <= ?")
            .bind(row.created_at_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, login, csrf, created_at_ms, expires_at_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(row.token_hash.as_slice())
        .bind(&row.login)
        .bind(&row.csrf)
        .bind(row.created_at_ms)
        .bind(row.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM sessions WHERE login = ? AND token_hash NOT IN \
             (SELECT token_hash FROM sessions WHERE login = ? \
              ORDER BY created_at_ms DESC LIMIT ?)",
        )
        .bind(&row.login)
        .bind(&row.login)
        .bind(SESSIONS_PER_LOGIN_MAX)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session with this token hash at `now_ms`, and its account.
    pub async fn session(
        &self,
        token_hash: [u8; 32],
        now_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>> {
        let row = sqlx::query(
            "SELECT s.token_hash, s.csrf, s.created_at_ms AS s_created, s.expires_at_ms, u.* \
             FROM sessions s JOIN users u ON u.login = s.login \
             WHERE s.token_hash = ? AND s.expires_at_ms > ?",
        )
        .bind(token_hash.as_slice())
        .bind(now_ms)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.try_get("token_hash")?;
        let token_hash = hash.try_into().map_err(|_| StoreError::Corrupt {
            table: "sessions",
            what: "token_hash is not 32 bytes".into(),
        })?;
        let account = user(&row)?;
        Ok(Some((
            SessionRow {
                token_hash,
                login: account.login.clone(),
                csrf: row.try_get("csrf")?,
                created_at_ms: row.try_get("s_created")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
            },
            account,
        )))
    }

    pub async fn delete_session(&self, token_hash: [u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(token_hash.as_slice())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn append_audit(&self, row: &AuditRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at_ms, login, action, detail, source) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(row.at_ms)
        .bind(&row.login)
        .bind(&row.action)
        .bind(&row.detail)
        .bind(&row.source)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The newest audit rows, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT at_ms, login, action, detail, source FROM audit ORDER BY id DESC LIMIT ?",
        )
        .bind(limit.min(AUDIT_ROWS_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    at_ms: r.try_get("at_ms")?,
                    login: r.try_get("login")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                    source: r.try_get("source")?,
                })
            })
            .collect()
    }

    /// See [`crate::Store::unanswered`]: served by `console_unanswered_due` (migration 0010),
    /// so it reads `limit` index entries however long the channel is.
    pub(crate) async fn console_unanswered(
        &self,
        peer: &str,
        precedence: u8,
        limit: u32,
    ) -> Result<Vec<UnansweredRow>> {
        let rows = sqlx::query(
            "SELECT id, peer, direction, precedence, start_ms FROM console_unanswered \
             INDEXED BY console_unanswered_due \
             WHERE peer = ? AND precedence = ? ORDER BY start_ms, id LIMIT ?",
        )
        .bind(peer)
        .bind(i64::from(precedence))
        .bind(i64::from(limit.min(UNANSWERED_ROWS_MAX)))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(unanswered_row).collect()
    }

    /// See [`crate::Store::unanswered_counts`].
    pub(crate) async fn console_unanswered_counts(&self) -> Result<Vec<UnansweredCount>> {
        let rows = sqlx::query(
            "SELECT peer, direction, precedence, count(*) AS n FROM console_unanswered \
             GROUP BY peer, direction, precedence ORDER BY peer, direction, precedence",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(unanswered_count).collect()
    }
}

impl SqliteStore {
    /// See [`crate::Store::timeline`]. Walks `messages_by_time` backwards from the cursor, as
    /// [`crate::Store::inbox`] does; filters narrow what is kept, not where the walk starts.
    pub(crate) async fn console_timeline(&self, q: TimelineQuery) -> Result<Vec<MessageRow>> {
        let mut qb = QueryBuilder::<Sqlite>::new(MESSAGE_SELECT);
        qb.push(" INDEXED BY messages_by_time WHERE kind IN (0, 4)");
        for term in used_terms(&q) {
            // Three characters or more: the trigram index; fewer: a scan of the words.
            if term.chars().count() >= 3 {
                qb.push(
                    " AND id IN (SELECT id FROM console_search WHERE rowid IN \
                     (SELECT rowid FROM console_search_fts WHERE console_search_fts MATCH ",
                )
                .push_bind(format!("\"{}\"", term.replace('"', "\"\"")))
                .push("))");
            } else {
                qb.push(" AND id IN (SELECT id FROM console_search WHERE body LIKE ")
                    .push_bind(like_anywhere(&term))
                    .push(" ESCAPE '\\')");
            }
        }
        push_timeline(&mut qb, &q);
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_message).collect()
    }
}

impl SqliteStore {
    /// See [`crate::Store::search_pending`].
    pub(crate) async fn console_search_pending(&self, limit: u32) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} INDEXED BY messages_by_time WHERE kind IN (0, 4) \
             AND id NOT IN (SELECT id FROM console_search) \
             ORDER BY created_at_ms DESC, sender DESC, seq DESC LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::from(limit.clamp(1, SEARCH_BATCH_MAX)))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_message).collect()
    }

    /// See [`crate::Store::put_search`].
    pub(crate) async fn console_put_search(
        &self,
        rows: Vec<(crate::Hash32, String)>,
    ) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        for (id, body) in rows.iter().take(SEARCH_BATCH_MAX as usize) {
            sqlx::query(
                "INSERT INTO console_search (id, body) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.as_slice())
            .bind(capped_body(body))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl SqliteStore {
    /// See [`crate::Store::replies`]; served by `console_replies` (migration 0011).
    pub(crate) async fn console_replies(
        &self,
        of: crate::Hash32,
        limit: u32,
    ) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} INDEXED BY console_replies WHERE in_reply_to = ? AND kind IN (0, 4) \
             ORDER BY created_at_ms, sender, seq LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(of.as_slice())
            .bind(i64::from(limit.clamp(1, TIMELINE_ROWS_MAX)))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_message).collect()
    }
}

/// The timeline's filters, cursor, order and limit after `… WHERE kind IN (0, 4)`: the same
/// SQL for both stores (each puts its own index hint before it).
fn push_timeline<'a, DB>(qb: &mut QueryBuilder<'a, DB>, q: &TimelineQuery)
where
    DB: sqlx::Database,
    String: sqlx::Encode<'a, DB> + Type<DB>,
    i64: sqlx::Encode<'a, DB> + Type<DB>,
    Vec<u8>: sqlx::Encode<'a, DB> + Type<DB>,
{
    if let Some(peer) = &q.peer {
        qb.push(" AND peer = ").push_bind(peer.clone());
    }
    if let Some(d) = q.direction {
        qb.push(" AND direction = ")
            .push_bind(i64::from(d == Direction::In));
    }
    if let Some(p) = q.precedence {
        qb.push(" AND precedence = ").push_bind(i64::from(p));
    }
    if let Some(topic) = &q.topic {
        qb.push(" AND topic = ").push_bind(topic.clone());
    }
    match q.answered {
        Some(false) => {
            qb.push(" AND id IN (SELECT id FROM console_unanswered)");
        }
        Some(true) => {
            qb.push(" AND id NOT IN (SELECT id FROM console_unanswered)");
        }
        None => {}
    }
    if let Some((created, sender, seq)) = q.before {
        // Row-value comparison: strictly after the cursor in the listing's order.
        qb.push(" AND (created_at_ms, sender, seq) < (")
            .push_bind(created)
            .push(", ")
            .push_bind(sender.to_vec())
            .push(", ")
            .push_bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .push(")");
    }
    qb.push(" ORDER BY created_at_ms DESC, sender DESC, seq DESC LIMIT ")
        .push_bind(i64::from(q.limit.clamp(1, TIMELINE_ROWS_MAX)));
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        table: "console_unanswered",
        what: what.into(),
    }
}

fn direction(code: i64) -> Result<Direction> {
    match code {
        0 => Ok(Direction::Out),
        1 => Ok(Direction::In),
        _ => Err(corrupt("direction is not 0 or 1")),
    }
}

fn small(v: i64) -> Result<u8> {
    u8::try_from(v).map_err(|_| corrupt("precedence out of range"))
}

impl PgStore {
    /// Create an account, or replace the role and password of an existing one (its
    /// sessions end). Returns true when the account is new.
    pub async fn put_user(&self, row: &UserRow) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let existed: Option<String> =
            sqlx::query_scalar("SELECT login FROM users WHERE login = $1 FOR UPDATE")
                .bind(&row.login)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO users (login, role, password_hash, lang, tz, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (login) DO UPDATE SET \
             role = excluded.role, password_hash = excluded.password_hash",
        )
        .bind(&row.login)
        .bind(&row.role)
        .bind(&row.password_hash)
        .bind(&row.lang)
        .bind(&row.tz)
        .bind(row.created_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE login = $1")
            .bind(&row.login)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(existed.is_none())
    }

    pub async fn user(&self, login: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query("SELECT * FROM users WHERE login = $1")
            .bind(login)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(user).transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY login")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(user).collect()
    }

    pub async fn set_user_lang(&self, login: &str, lang: &str) -> Result<()> {
        sqlx::query("UPDATE users SET lang = $1 WHERE login = $2")
            .bind(lang)
            .bind(login)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Set the time zone `login` reads times in (empty: the node's).
    pub async fn set_user_tz(&self, login: &str, tz: &str) -> Result<()> {
        sqlx::query("UPDATE users SET tz = $1 WHERE login = $2")
            .bind(tz)
            .bind(login)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Store a new session, dropping expired ones and the oldest of this login's beyond
    /// [`SESSIONS_PER_LOGIN_MAX`].
    pub async fn create_session(&self, row: &SessionRow) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at_ms <= $1")
            .bind(row.created_at_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, login, csrf, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(row.token_hash.as_slice())
        .bind(&row.login)
        .bind(&row.csrf)
        .bind(row.created_at_ms)
        .bind(row.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM sessions WHERE login = $1 AND token_hash NOT IN \
             (SELECT token_hash FROM sessions WHERE login = $1 \
              ORDER BY created_at_ms DESC LIMIT $2)",
        )
        .bind(&row.login)
        .bind(SESSIONS_PER_LOGIN_MAX)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session with this token hash at `now_ms`, and its account.
    pub async fn session(
        &self,
        token_hash: [u8; 32],
        now_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>> {
        let row = sqlx::query(
            "SELECT s.token_hash, s.csrf, s.created_at_ms AS s_created, s.expires_at_ms, u.* \
             FROM sessions s JOIN users u ON u.login = s.login \
             WHERE s.token_hash = $1 AND s.expires_at_ms > $2",
        )
        .bind(token_hash.as_slice())
        .bind(now_ms)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.try_get("token_hash")?;
        let token_hash = hash.try_into().map_err(|_| StoreError::Corrupt {
            table: "sessions",
            what: "token_hash is not 32 bytes".into(),
        })?;
        let account = user(&row)?;
        Ok(Some((
            SessionRow {
                token_hash,
                login: account.login.clone(),
                csrf: row.try_get("csrf")?,
                created_at_ms: row.try_get("s_created")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
            },
            account,
        )))
    }

    pub async fn delete_session(&self, token_hash: [u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash.as_slice())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn append_audit(&self, row: &AuditRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at_ms, login, action, detail, source) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(row.at_ms)
        .bind(&row.login)
        .bind(&row.action)
        .bind(&row.detail)
        .bind(&row.source)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The newest audit rows, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT at_ms, login, action, detail, source FROM audit ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit.min(AUDIT_ROWS_MAX)))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    at_ms: r.try_get("at_ms")?,
                    login: r.try_get("login")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                    source: r.try_get("source")?,
                })
            })
            .collect()
    }
}

/// One `console_unanswered` row, from either store.
fn unanswered_row<R>(r: &R) -> Result<UnansweredRow>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: Vec<u8> = r.try_get("id")?;
    Ok(UnansweredRow {
        id: id.try_into().map_err(|_| corrupt("id is not 32 bytes"))?,
        peer: r.try_get("peer")?,
        direction: direction(r.try_get("direction")?)?,
        precedence: small(r.try_get("precedence")?)?,
        start_ms: r.try_get("start_ms")?,
    })
}

/// One per-peer count of `console_unanswered`, from either store.
fn unanswered_count<R>(r: &R) -> Result<UnansweredCount>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(UnansweredCount {
        peer: r.try_get("peer")?,
        direction: direction(r.try_get("direction")?)?,
        precedence: small(r.try_get("precedence")?)?,
        count: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
    })
}

impl PgStore {
    /// See [`crate::Store::unanswered`] (PostgreSQL's migration 0010 keeps the same table).
    pub(crate) async fn console_unanswered(
        &self,
        peer: &str,
        precedence: u8,
        limit: u32,
    ) -> Result<Vec<UnansweredRow>> {
        let rows = sqlx::query(
            "SELECT id, peer, direction, precedence, start_ms FROM console_unanswered \
             WHERE peer = $1 AND precedence = $2 ORDER BY start_ms, id LIMIT $3",
        )
        .bind(peer)
        .bind(i64::from(precedence))
        .bind(i64::from(limit.min(UNANSWERED_ROWS_MAX)))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(unanswered_row).collect()
    }

    /// See [`crate::Store::unanswered_counts`].
    pub(crate) async fn console_unanswered_counts(&self) -> Result<Vec<UnansweredCount>> {
        let rows = sqlx::query(
            "SELECT peer, direction, precedence, count(*) AS n FROM console_unanswered \
             GROUP BY peer, direction, precedence ORDER BY peer, direction, precedence",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(unanswered_count).collect()
    }

    /// See [`crate::Store::timeline`]; the same walk as SQLite's over `messages_by_time`.
    pub(crate) async fn console_timeline(&self, q: TimelineQuery) -> Result<Vec<MessageRow>> {
        let mut qb = QueryBuilder::<sqlx::Postgres>::new(MESSAGE_SELECT);
        qb.push(" WHERE kind IN (0, 4)");
        for term in used_terms(&q) {
            // Served by the trigram index (console_search_trgm) from three characters on.
            qb.push(" AND id IN (SELECT id FROM console_search WHERE body ILIKE ")
                .push_bind(like_anywhere(&term))
                .push(" ESCAPE '\\')");
        }
        push_timeline(&mut qb, &q);
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_message).collect()
    }

    /// See [`crate::Store::search_pending`].
    pub(crate) async fn console_search_pending(&self, limit: u32) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} WHERE kind IN (0, 4) \
             AND NOT EXISTS (SELECT 1 FROM console_search s WHERE s.id = messages.id) \
             ORDER BY created_at_ms DESC, sender DESC, seq DESC LIMIT $1"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::from(limit.clamp(1, SEARCH_BATCH_MAX)))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_message).collect()
    }

    /// See [`crate::Store::put_search`].
    pub(crate) async fn console_put_search(
        &self,
        rows: Vec<(crate::Hash32, String)>,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (id, body) in rows.iter().take(SEARCH_BATCH_MAX as usize) {
            sqlx::query(
                "INSERT INTO console_search (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.as_slice())
            .bind(capped_body(body))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::Store::replies`]; served by `console_replies` (PostgreSQL's migration 0011).
    pub(crate) async fn console_replies(
        &self,
        of: crate::Hash32,
        limit: u32,
    ) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "{MESSAGE_SELECT} WHERE in_reply_to = $1 AND kind IN (0, 4) \
             ORDER BY created_at_ms, sender, seq LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(of.as_slice())
            .bind(i64::from(limit.clamp(1, TIMELINE_ROWS_MAX)))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_message).collect()
    }
}
