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

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that carries the test server's URL.
pub const URL_VAR: &str = "DETENTE_TEST_PG_URL";

static COUNTER: AtomicU64 = AtomicU64::new(0);

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
