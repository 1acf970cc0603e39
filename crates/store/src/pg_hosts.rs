//! Several PostgreSQL servers in one `database_url`, the way libpq takes them:
//! `postgres://user:pw@host1:5432,host2:5432/db?target_session_attrs=read-write`.
//!
//! sqlx connects to one host, so the store does the rest itself: at open it connects to the
//! first listed server that is acceptable (with `read-write`, or its synonym `primary`: not
//! in recovery and not read-only), and while it runs a watcher checks that server once a
//! second. When it is gone or has become a standby, the watcher points both pools at the
//! first acceptable server of the list (`Pool::set_connect_options`); the connections to the
//! old server fail, are dropped, and the next ones go to the new primary. Which server is
//! the primary is decided by PostgreSQL's own machinery (`pg_ctl promote`, Patroni): the
//! store never promotes anything, and with a synchronous standby nothing it committed is lost
//! by the switch (docs/deployment.md).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{ConnectOptions, Connection};

use crate::postgres::redact_url;
use crate::{Result, StoreError};

/// Servers listed in one URL, at most.
pub const HOSTS_MAX: usize = 8;
/// How often the watcher checks the server in use.
pub const FAILOVER_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one check may take to connect and answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers of one URL, each as a single-host URL, and what a server must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    pub urls: Vec<String>,
    /// `target_session_attrs=read-write` (or `primary`): only a writable primary will do.
    pub read_write: bool,
}

impl Hosts {
    /// Split `url`; a URL with one host and no `target_session_attrs` gives one URL, itself.
    pub fn parse(url: &str) -> Result<Hosts> {
        let bad = |why: &str| StoreError::Open(format!("{}: {why}", redact_url(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let mut read_write = false;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("target_session_attrs=") {
                Some("read-write" | "primary") => read_write = true,
                Some("any") => {}
                Some(other) => {
                    return Err(bad(&format!(
                        "target_session_attrs={other} is not supported (use read-write or any)"
                    )))
                }
                None => kept.push(pair),
            }
        }
        let hosts: Vec<&str> = hostlist.split(',').collect();
        if hosts.len() > HOSTS_MAX || hosts.iter().any(|h| h.is_empty()) {
            return Err(bad(&format!(
                "between 1 and {HOSTS_MAX} hosts, separated by commas"
            )));
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let urls = hosts
            .iter()
            .map(|h| format!("{scheme}://{userinfo}{h}{path}{query}"))
            .collect();
        Ok(Hosts { urls, read_write })
    }

    /// Whether there is anything to watch: several servers, or one that must be primary.
    pub fn needs_watching(&self) -> bool {
        self.urls.len() > 1 || self.read_write
    }

    /// Connection options for server `i`.
    pub(crate) fn options(&self, i: usize) -> Result<PgConnectOptions> {
        PgConnectOptions::from_str(&self.urls[i])
            .map_err(|e| StoreError::Open(format!("{}: {e}", redact_url(&self.urls[i]))))
    }

    /// The first acceptable server, trying `prefer` first; with why each other one was not.
    pub(crate) async fn choose(&self, prefer: Option<usize>) -> std::result::Result<usize, String> {
        let mut order: Vec<usize> = prefer.into_iter().collect();
        order.extend((0..self.urls.len()).filter(|i| Some(*i) != prefer));
        let mut why = Vec::new();
        for i in order {
            match self.check(i).await {
                Ok(()) => return Ok(i),
                Err(e) => why.push(format!("{}: {e}", redact_url(&self.urls[i]))),
            }
        }
        Err(why.join("; "))
    }

    /// Whether server `i` answers and, if a primary is needed, is one.
    async fn check(&self, i: usize) -> std::result::Result<(), String> {
        let options = self.options(i).map_err(|e| e.to_string())?;
        let read_write = self.read_write;
        let probe = async move {
            let mut conn: PgConnection = options.connect().await.map_err(|e| e.to_string())?;
            let verdict = if read_write {
                let (recovery, read_only): (bool, String) = sqlx::query_as(
                    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
                )
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                match (recovery, read_only.as_str()) {
                    (true, _) => Err("a standby (in recovery)".to_string()),
                    (_, "on") => Err("read-only".to_string()),
                    _ => Ok(()),
                }
            } else {
                Ok(())
            };
            let _ = conn.close().await;
            verdict
        };
        tokio::time::timeout(CHECK_TIMEOUT, probe)
            .await
            .map_err(|_| format!("no answer within {CHECK_TIMEOUT:?}"))?
    }
}

/// Keep `writer` and `reader` on an acceptable server of `hosts`, starting from `current`,
/// until the writer pool is closed. `adjust` gives the pools' own settings to options.
pub(crate) fn watch(
    hosts: Hosts,
    mut current: usize,
    writer: PgPool,
    reader: PgPool,
    adjust: fn(PgConnectOptions) -> (PgConnectOptions, PgConnectOptions),
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FAILOVER_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if writer.is_closed() {
                return;
            }
            if hosts.check(current).await.is_ok() {
                continue;
            }
            let Ok(next) = hosts.choose(None).await else {
                // None acceptable yet (the standby not promoted): commits fail with 503 and
                // the next tick looks again.
                continue;
            };
            if next == current {
                continue;
            }
            let Ok(options) = hosts.options(next) else {
                continue;
            };
            let (w, r) = adjust(options);
            writer.set_connect_options(w);
            reader.set_connect_options(r);
            tracing::warn!(
                from = %redact_url(&hosts.urls[current]),
                to = %redact_url(&hosts.urls[next]),
                "database: the server in use is gone or no longer primary; switched"
            );
            current = next;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_splits_into_single_host_urls() {
        let h = Hosts::parse(
            "postgres://u:p@10.0.0.1:5432,10.0.0.2:5433/db?sslmode=disable&target_session_attrs=read-write",
        )
        .unwrap();
        assert!(h.read_write && h.needs_watching());
        assert_eq!(
            h.urls,
            vec![
                "postgres://u:p@10.0.0.1:5432/db?sslmode=disable",
                "postgres://u:p@10.0.0.2:5433/db?sslmode=disable"
            ]
        );
        let one = Hosts::parse("postgres://u:p@h:1/db").unwrap();
        assert_eq!(one.urls, vec!["postgres://u:p@h:1/db"]);
        assert!(!one.needs_watching());
        assert!(
            Hosts::parse("postgres://u:p@h:1/db?target_session_attrs=any")
                .is_ok_and(|h| !h.read_write)
        );
    }

    #[test]
    fn bad_host_lists_are_refused_with_the_password_hidden() {
        for url in [
            "postgres://u:secret@a,,b/db",
            "postgres://u:secret@a/db?target_session_attrs=standby",
            "postgres://u:secret@a,b,c,d,e,f,g,h,i/db",
        ] {
            let e = Hosts::parse(url).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
