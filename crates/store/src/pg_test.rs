//! Test support: a fresh PostgreSQL database per test, on the server `scripts/pg-start`
//! runs for the test suite. Not for production use; public so that the node's and the
//! command line's tests share it.
//!
//! The server's URL comes from `DETENTE_TEST_PG_URL` (an administrative connection, to
//! the `postgres` database). Each call creates a database with a unique name, so tests run
//! in parallel without seeing each other's rows. Without the variable a test is skipped
//! with a line saying so, except under CI (`CI` set) or with `DETENTE_REQUIRE_PG` set,
//! where it fails: `scripts/test` always starts a server, so a missing one is a broken run,
//! not a pass.
//!
//! A test database is named after the process that made it (`t_<tag>_<pid>_…`). Test
//! processes end without a chance to drop theirs, so the first call in each process drops
//! every test database whose process is gone ([`drop_stale`]): a long-lived server (one
//! started by hand for `DETENTE_TEST_PG_URL`) keeps only the databases of tests running now.

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that carries the test server's URL.
pub const URL_VAR: &str = "DETENTE_TEST_PG_URL";

static COUNTER: AtomicU64 = AtomicU64::new(0);
static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Test databases dropped per sweep at most (the rest go at the next process's sweep).
pub const STALE_DROPS_MAX: usize = 256;

/// The URL of a new, empty database for test `tag`, or `None` (after printing why) when
/// no test server is configured and none is required.
///
/// # Panics
/// When a server is required but not configured, or cannot be reached: a test must not
/// pass without the database it is about.
pub async fn fresh_database(tag: &str) -> Option<String> {
    let Ok(admin) = std::env::var(URL_VAR) else {
        let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
            || std::env::var_os("DETENTE_REQUIRE_PG").is_some();
        assert!(
            !required,
            "{URL_VAR} is not set: run the tests through scripts/test, which starts PostgreSQL"
        );
        // Written to the process's stderr directly, not through `eprintln!`, which the test
        // harness captures and hides for a passing test.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {tag}: no PostgreSQL ({URL_VAR} unset; scripts/test starts one)"
        );
        return None;
    };
    SWEPT
        .get_or_init(|| async {
            if let Err(e) = drop_stale(&admin, process_alive).await {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "old test databases not dropped: {e}");
            }
        })
        .await;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let clean: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!("t_{clean}_{}_{n}_{nanos}", std::process::id());
    match crate::postgres::create_database(&admin, &name).await {
        Ok(url) => Some(url),
        Err(e) => panic!("cannot create test database {name} on {URL_VAR}: {e}"),
    }
}

/// The process that made test database `name`, from its name (`t_<tag>_<pid>_<n>_<nanos>`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("t_")?;
    let mut parts = rest.rsplitn(4, '_');
    let (_nanos, _n, pid) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    pid.parse().ok()
}

/// Whether process `pid` runs on this machine (Linux: its `/proc` entry).
fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Drop the test databases on the server at `admin` whose process `alive` says is gone, at
/// most [`STALE_DROPS_MAX`]; returns how many were dropped.
pub async fn drop_stale(admin: &str, alive: impl Fn(u32) -> bool) -> crate::Result<usize> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut conn)
            .await?;
    let _ = conn.close().await;
    let mut dropped = 0;
    for name in names {
        if dropped == STALE_DROPS_MAX {
            break;
        }
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) {
            crate::postgres::drop_database(admin, &name).await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn the_owner_is_read_from_the_name() {
        assert_eq!(owner_pid("t_ha_cut_4242_3_123456789"), Some(4242));
        assert_eq!(owner_pid("t_delivery_17_0_5"), Some(17));
        assert_eq!(owner_pid("t_x_17_0"), None);
        assert_eq!(owner_pid("detente"), None);
        assert_eq!(owner_pid("t_x_notapid_0_5"), None);
    }
}
