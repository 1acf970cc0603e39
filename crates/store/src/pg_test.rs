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

use sqlx::Connection;

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
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {URL_VAR}: {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = conn.close().await;
    Some(with_database(&admin, &name))
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            super::with_database("postgres://u:p@127.0.0.1:5/postgres", "x"),
            "postgres://u:p@127.0.0.1:5/x"
        );
        assert_eq!(
            super::with_database("postgres://h:5?sslmode=disable", "y"),
            "postgres://h:5/y?sslmode=disable"
        );
    }
}
