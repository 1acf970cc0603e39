//! One active node process per party on a shared PostgreSQL database (issue 13 item 3).
//!
//! A party may run a second `detente serve` (on a second machine) against the same
//! database. Before it starts anything else, a node on PostgreSQL takes the store's lease
//! ([`take`]); while another process holds it, it stands by — it says so once, listens on
//! nothing, and tries again every [`STANDBY_POLL_INTERVAL`]. The peer lists both processes'
//! addresses and reaches whichever listens.
//!
//! The active renews the lease every [`RENEW_INTERVAL`] ([`keep`]). It stops serving (every
//! task is shut down and the store commits nothing more) when the lease is lost: a renewal
//! or a commit found another epoch, or no renewal succeeded for [`LEASE_TTL_MS`] by its own
//! monotonic clock, after which the standby may already have taken over. Safety does not
//! depend on that timing: every commit checks the epoch in its own transaction (see
//! `detente_store::lease`). A standby takes over at most `LEASE_TTL_MS` +
//! `STANDBY_POLL_INTERVAL` after the active's last renewal: within 5 s of its death.
//!
//! SQLite has no lease: one file, one process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use detente_store::{Acquired, StoreError};
use tokio::sync::watch;

use crate::config::NodeDir;
use crate::NodeStore;

/// How long a lease lasts after each renewal, in milliseconds (the server's clock).
pub const LEASE_TTL_MS: i64 = 4_000;

/// How often the active renews: a few renewals may fail before the lease runs out.
pub const RENEW_INTERVAL: Duration = Duration::from_millis(1_000);

/// How often a standby tries to take the lease.
pub const STANDBY_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// While waiting for the lease, one log line per this many failed attempts.
const ERRORS_PER_LOG_LINE: u64 = 120;

/// Shortest wait for one renewal.
const MIN_WAIT: Duration = Duration::from_millis(100);

/// The lease this process holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub holder: String,
    pub epoch: i64,
}

/// Who this process is in the lease: the host and the node directory, so that the same
/// directory started again takes its own lease back at once (raising the epoch, which
/// fences any earlier process of it that is somehow still alive).
pub fn holder(dir: &NodeDir) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let path = std::fs::canonicalize(&dir.path).unwrap_or_else(|_| dir.path.clone());
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}:{}", path.display())
}

/// Take the lease of a PostgreSQL store, standing by while another process holds it; `None`
/// for SQLite. (A database that cannot be reached at start has already failed the store's
/// opening, with the URL named.)
pub async fn take(store: &NodeStore, holder: &str) -> Result<Option<Held>, StoreError> {
    let Some(pg) = store.postgres() else {
        return Ok(None);
    };
    let mut said_standby = false;
    let mut errors: u64 = 0;
    loop {
        match pg.lease_acquire(holder, LEASE_TTL_MS).await {
            Ok(Acquired::Held { epoch }) => {
                if said_standby {
                    tracing::warn!(epoch, "taking over: this process now holds the lease");
                }
                return Ok(Some(Held {
                    holder: holder.to_owned(),
                    epoch,
                }));
            }
            Ok(Acquired::Busy {
                holder: other,
                until,
            }) if !said_standby => {
                said_standby = true;
                tracing::warn!(
                    "standby: another process of this party ({other}) holds the lease until \
                     {until}; this one takes over if it stops renewing"
                );
            }
            Ok(Acquired::Busy { .. }) => {}
            // The store opened a moment ago, so the database was there: an error now (the
            // server restarting, a take-over waiting for an old active's lock) is waited out.
            Err(e) => {
                if errors.is_multiple_of(ERRORS_PER_LOG_LINE) {
                    tracing::warn!(error = %e, "cannot take the lease yet; retrying");
                }
                errors += 1;
            }
        }
        tokio::time::sleep(STANDBY_POLL_INTERVAL).await;
    }
}

/// Renew `held` until the node shuts down or the lease is lost; on loss, say why in `lost`
/// and shut the node down (`stop`), so that it serves nothing more.
pub async fn keep(
    store: Arc<NodeStore>,
    held: Held,
    stop: watch::Sender<bool>,
    lost: watch::Sender<Option<String>>,
) {
    let Some(pg) = store.postgres() else {
        return;
    };
    let mut shutdown = stop.subscribe();
    let ttl = Duration::from_millis(LEASE_TTL_MS as u64);
    let mut valid_until = Instant::now() + ttl;
    let why = loop {
        tokio::select! {
            _ = tokio::time::sleep(RENEW_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        if pg.lease_lost() {
            break "a commit found that another process of this party took the lease over"
                .to_owned();
        }
        let sent = Instant::now();
        // A renewal that hangs (a cut network drops packets silently) must not outlast the
        // lease it is trying to keep.
        let left = valid_until.saturating_duration_since(sent).max(MIN_WAIT);
        let renewed =
            tokio::time::timeout(left, pg.lease_renew(&held.holder, held.epoch, LEASE_TTL_MS))
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("the renewal timed out".into())));
        match renewed {
            Ok(true) => valid_until = sent + ttl,
            Ok(false) => break "another process of this party took the lease over".to_owned(),
            Err(e) if Instant::now() >= valid_until => {
                break format!(
                    "the lease could not be renewed for {LEASE_TTL_MS} ms ({e}); another \
                     process of this party may have taken over"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the lease; retrying"),
        }
    };
    tracing::error!(
        epoch = held.epoch,
        "lost the lease: {why}; this process stops serving"
    );
    let _ = lost.send(Some(why));
    let _ = stop.send(true);
    // Commit nothing more (the store refuses from here on), and let a standby in at once if
    // the database still lists us.
    let _ = pg.lease_release(&held.holder, held.epoch).await;
}
