//! Reads of a channel's checkpoints, the same SQL for both stores: the whole list, and
//! bounded pages with their count, so that an export or a proof never loads a channel's
//! whole checkpoint list (issue 12, item 14): memory per request stays bounded by one page
//! however long the transcript grows. Served by the index `checkpoints_by_channel
//! (channel, id)` in both schemas.

use sqlx::{ColumnIndex, Decode, QueryBuilder, Row, Type};

use crate::rows::{get, hash};
use crate::{CheckpointRow, Hash32, PgStore, Result, SqliteStore};

/// Checkpoints returned by one page, at most.
pub const CHECKPOINT_PAGE_MAX: u32 = 1_024;

/// One page of a channel's checkpoints ([`crate::Store::checkpoint_page`]): rows with
/// `after_id < id <= upto_id`, oldest first, or newest first when `newest_first`, at most
/// `limit` (clamped to [`CHECKPOINT_PAGE_MAX`]); only those signed by every member when
/// `cosigned_only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPage {
    pub after_id: i64,
    pub upto_id: i64,
    pub newest_first: bool,
    pub cosigned_only: bool,
    pub limit: u32,
}

impl CheckpointPage {
    /// Everything, oldest first, `limit` at a time.
    pub fn oldest_first(limit: u32) -> CheckpointPage {
        CheckpointPage {
            after_id: 0,
            upto_id: i64::MAX,
            newest_first: false,
            cosigned_only: false,
            limit,
        }
    }

    /// The newest `limit` rows, newest first.
    pub fn newest(limit: u32) -> CheckpointPage {
        CheckpointPage {
            newest_first: true,
            ..CheckpointPage::oldest_first(limit)
        }
    }

    /// The newest `limit` co-signed rows, newest first: what `status`, a session start and
    /// the console need, read without loading the channel's list (issue 12, item 14).
    pub fn newest_cosigned(limit: u32) -> CheckpointPage {
        CheckpointPage {
            cosigned_only: true,
            ..CheckpointPage::newest(limit)
        }
    }
}

/// How many checkpoints a channel holds and the id of the newest (0 when none): what an
/// export fixes before it starts, so that checkpoints stored meanwhile do not change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointSpan {
    pub count: u64,
    pub last_id: i64,
}

const SELECT: &str = "SELECT id, channel, body_hash, time_ms, cosigned, signed, stored_at_ms \
     FROM checkpoints WHERE channel = ";

fn push_page<'a, DB>(qb: &mut QueryBuilder<'a, DB>, channel: Hash32, page: CheckpointPage)
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + Type<DB>,
    Vec<u8>: sqlx::Encode<'a, DB> + Type<DB>,
{
    qb.push_bind(channel.to_vec())
        .push(" AND id > ")
        .push_bind(page.after_id)
        .push(" AND id <= ")
        .push_bind(page.upto_id)
        .push(if page.cosigned_only {
            " AND cosigned"
        } else {
            ""
        })
        .push(if page.newest_first {
            " ORDER BY id DESC LIMIT "
        } else {
            " ORDER BY id LIMIT "
        })
        .push_bind(i64::from(page.limit.clamp(1, CHECKPOINT_PAGE_MAX)));
}

/// A `checkpoints` row, decoded alike from either database (`cosigned` is an integer 0/1
/// in SQLite and a boolean in PostgreSQL; both decode as `bool`).
fn decode_checkpoint<R>(row: &R) -> Result<CheckpointRow>
where
    R: Row,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    const T: &str = "checkpoints";
    Ok(CheckpointRow {
        id: get(row, T, "id")?,
        channel: hash(row, T, "channel")?,
        body_hash: hash(row, T, "body_hash")?,
        time_ms: get(row, T, "time_ms")?,
        cosigned: get(row, T, "cosigned")?,
        signed: get(row, T, "signed")?,
        stored_at_ms: get(row, T, "stored_at_ms")?,
    })
}

const SPAN: &str = "SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS last FROM checkpoints \
     WHERE channel = ";

fn span<R>(row: &R) -> Result<CheckpointSpan>
where
    R: Row,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let count: i64 = get(row, "checkpoints", "n")?;
    Ok(CheckpointSpan {
        count: u64::try_from(count).unwrap_or(0),
        last_id: get(row, "checkpoints", "last")?,
    })
}

impl SqliteStore {
    /// Every checkpoint of `channel`, oldest first ([`crate::Store::checkpoints`]).
    pub(crate) async fn checkpoints_impl(&self, channel: Hash32) -> Result<Vec<CheckpointRow>> {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(SELECT);
        qb.push_bind(channel.to_vec()).push(" ORDER BY id");
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_checkpoint).collect()
    }

    pub(crate) async fn checkpoint_page_impl(
        &self,
        channel: Hash32,
        page: CheckpointPage,
    ) -> Result<Vec<CheckpointRow>> {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(SELECT);
        push_page(&mut qb, channel, page);
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_checkpoint).collect()
    }

    pub(crate) async fn checkpoint_span_impl(&self, channel: Hash32) -> Result<CheckpointSpan> {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(SPAN);
        qb.push_bind(channel.to_vec());
        span(&qb.build().fetch_one(&self.reader).await?)
    }
}

impl PgStore {
    /// Every checkpoint of `channel`, oldest first ([`crate::Store::checkpoints`]).
    pub(crate) async fn checkpoints_impl(&self, channel: Hash32) -> Result<Vec<CheckpointRow>> {
        let mut qb = QueryBuilder::<sqlx::Postgres>::new(SELECT);
        qb.push_bind(channel.to_vec()).push(" ORDER BY id");
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_checkpoint).collect()
    }

    pub(crate) async fn checkpoint_page_impl(
        &self,
        channel: Hash32,
        page: CheckpointPage,
    ) -> Result<Vec<CheckpointRow>> {
        let mut qb = QueryBuilder::<sqlx::Postgres>::new(SELECT);
        push_page(&mut qb, channel, page);
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_checkpoint).collect()
    }

    pub(crate) async fn checkpoint_span_impl(&self, channel: Hash32) -> Result<CheckpointSpan> {
        let mut qb = QueryBuilder::<sqlx::Postgres>::new(SPAN);
        qb.push_bind(channel.to_vec());
        span(&qb.build().fetch_one(&self.reader).await?)
    }
}
