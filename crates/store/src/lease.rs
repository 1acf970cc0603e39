//! The lease that makes exactly one node process of a party active on a shared PostgreSQL
//! database (issue 13 item 3), and the fencing epoch every commit checks.
//!
//! One row in `lease` names the holder, an epoch raised by every acquisition, and an expiry
//! on the **server's** clock (so the processes' clocks never matter). A process acquires the
//! lease when it is free, expired, or already its own (a restart of the same node
//! directory), renews it while it runs, and releases it on a clean stop.
//!
//! Safety does not rest on the expiry: once a process holds epoch `e`, the store's
//! [`Fence`] makes every [`Store::commit`](crate::Store::commit) read the lease row
//! `FOR SHARE` in the commit's own transaction and refuse ([`StoreError::Fenced`]) when the
//! epoch is no longer `e`. A take-over's `UPDATE` waits for that share lock, so a commit
//! either finished before the take-over or sees the new epoch and is refused: an old active
//! that was paused or cut off never commits after the standby took over. The refusal is
//! sticky: a fenced store refuses every later commit without asking the database.
//!
//! Each commit also counts itself in `lease_epochs` with its position in one global order,
//! so that "no epoch committed after a later one began" can be checked from the database.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use sqlx::postgres::PgConnection;

use crate::{PgStore, Result, StoreError};

/// Longest holder name kept (a host name and a directory); longer ones are cut.
pub const LEASE_HOLDER_BYTES_MAX: usize = 256;

/// Shortest and longest lease a caller may ask for, in milliseconds.
pub const LEASE_TTL_MS_MIN: i64 = 100;
pub const LEASE_TTL_MS_MAX: i64 = 600_000;

/// The epoch a store's commits must still hold (none: no check, as for tools and tests that
/// write without a lease), and whether a commit has already found it lost.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    epoch: AtomicI64,
    lost: AtomicBool,
}

/// What an acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is ours, with this epoch; the store's commits are now fenced by it.
    Held { epoch: i64 },
    /// Another process holds it, until `until` (UTC, RFC 3339, the server's clock).
    Busy { holder: String, until: String },
}

/// One epoch's record, for checks and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRow {
    pub epoch: i64,
    pub holder: String,
    pub commits: i64,
    /// Positions of the epoch's first and last commit in the global commit order.
    pub first_commit: Option<i64>,
    pub last_commit: Option<i64>,
}

impl PgStore {
    /// Take the lease for `holder` for `ttl_ms` if it is free, expired or already
    /// `holder`'s, raising the epoch; on success every later commit of this store checks it.
    pub async fn lease_acquire(&self, holder: &str, ttl_ms: i64) -> Result<Acquired> {
        let holder = clip(holder);
        let ttl_ms = ttl_ms.clamp(LEASE_TTL_MS_MIN, LEASE_TTL_MS_MAX);
        let mut tx = self.lease.begin().await?;
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO lease (id, holder, epoch, expires_at) \
             VALUES (1, $1, 1, clock_timestamp() + $2 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, \
                 epoch = lease.epoch + 1, expires_at = EXCLUDED.expires_at \
             WHERE lease.expires_at < clock_timestamp() OR lease.holder = EXCLUDED.holder \
             RETURNING epoch",
        )
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(epoch) = epoch else {
            let (holder, until): (String, String) = sqlx::query_as(
                "SELECT holder, to_char(expires_at AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM lease WHERE id = 1",
            )
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            return Ok(Acquired::Busy { holder, until });
        };
        sqlx::query(
            "INSERT INTO lease_epochs (epoch, holder, acquired_at) \
             VALUES ($1, $2, clock_timestamp())",
        )
        .bind(epoch)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.fence.lost.store(false, Ordering::SeqCst);
        self.fence.epoch.store(epoch, Ordering::SeqCst);
        Ok(Acquired::Held { epoch })
    }

    /// Extend our lease by `ttl_ms` from now. `Ok(false)`: it is no longer ours (another
    /// process took over); the store is then fenced for good.
    pub async fn lease_renew(&self, holder: &str, epoch: i64, ttl_ms: i64) -> Result<bool> {
        let ttl_ms = ttl_ms.clamp(LEASE_TTL_MS_MIN, LEASE_TTL_MS_MAX);
        let done = sqlx::query(
            "UPDATE lease SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(clip(holder))
        .bind(epoch)
        .bind(ttl_ms)
        .execute(&self.lease)
        .await?;
        let ours = done.rows_affected() == 1;
        if !ours {
            self.fence.lost.store(true, Ordering::SeqCst);
        }
        Ok(ours)
    }

    /// Give the lease up at once (a clean stop), so that a standby need not wait for it to
    /// expire. This store commits nothing more.
    pub async fn lease_release(&self, holder: &str, epoch: i64) -> Result<()> {
        self.fence.lost.store(true, Ordering::SeqCst);
        sqlx::query(
            "UPDATE lease SET expires_at = clock_timestamp() - interval '1 millisecond' \
             WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(clip(holder))
        .bind(epoch)
        .execute(&self.lease)
        .await?;
        Ok(())
    }

    /// Whether a commit or a renewal found that another process took over.
    pub fn lease_lost(&self) -> bool {
        self.fence.lost.load(Ordering::SeqCst)
    }

    /// Every epoch so far, oldest first, at most `limit`.
    pub async fn lease_epochs(&self, limit: u32) -> Result<Vec<EpochRow>> {
        let rows: Vec<EpochTuple> = sqlx::query_as(
            "SELECT epoch, holder, commits, first_commit, last_commit FROM lease_epochs \
             ORDER BY epoch LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(epoch, holder, commits, first_commit, last_commit)| EpochRow {
                    epoch,
                    holder,
                    commits,
                    first_commit,
                    last_commit,
                },
            )
            .collect())
    }

    /// In a commit's transaction, before anything is written: refuse when the store holds an
    /// epoch that is no longer the lease's, and count the commit under its epoch.
    pub(crate) async fn check_fence(&self, conn: &mut PgConnection) -> Result<()> {
        let held = self.fence.epoch.load(Ordering::SeqCst);
        if held == 0 {
            return Ok(());
        }
        if self.fence.lost.load(Ordering::SeqCst) {
            return Err(StoreError::Fenced {
                held,
                current: None,
            });
        }
        // FOR SHARE: a take-over's UPDATE of the row waits until this transaction ends.
        let current: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM lease WHERE id = 1 FOR SHARE")
                .fetch_optional(&mut *conn)
                .await?;
        if current != Some(held) {
            self.fence.lost.store(true, Ordering::SeqCst);
            return Err(StoreError::Fenced { held, current });
        }
        sqlx::query(
            "WITH n AS (SELECT nextval('commit_order') AS v) \
             UPDATE lease_epochs SET commits = commits + 1, \
                 first_commit = COALESCE(first_commit, n.v), last_commit = n.v \
             FROM n WHERE epoch = $1",
        )
        .bind(held)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// An `lease_epochs` row as sqlx decodes it.
type EpochTuple = (i64, String, i64, Option<i64>, Option<i64>);

/// `holder` cut to [`LEASE_HOLDER_BYTES_MAX`] at a character boundary.
fn clip(holder: &str) -> &str {
    if holder.len() <= LEASE_HOLDER_BYTES_MAX {
        return holder;
    }
    let mut end = LEASE_HOLDER_BYTES_MAX;
    while !holder.is_char_boundary(end) {
        end -= 1;
    }
    &holder[..end]
}
