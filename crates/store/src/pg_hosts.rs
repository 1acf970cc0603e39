//! Multi-host PostgreSQL URLs, as libpq writes them (issue 13 item 4):
//! `postgres://USER:PASSWORD@HOST1:PORT1,HOST2:PORT2/DB?target_session_attrs=read-write`.
//!
//! sqlx 0.8 parses one host only, so the store does what libpq's `target_session_attrs =
//! read-write` does itself: at open it connects to each host in turn and uses the first
//! that accepts writes (`pg_is_in_recovery()` is false); while it runs, [`follow_primary`]
//! checks that host every [`FOLLOW_INTERVAL`] and, when it is gone or has become a standby,
//! points every pool at the host that now accepts writes (a standby promoted with `pg_ctl
//! promote`, or by Patroni). Connections already open to the old host fail on their next
//! use and are replaced; nothing is retried behind the writer's back: a commit in flight
//! during the switch fails as [`StoreError::Unavailable`] and the node answers 503 until the
//! new primary is found.
//!
//! With a synchronous standby (`synchronous_commit = on`, `synchronous_standby_names`)
//! every commit the node acknowledged is on the standby before the primary answers, so
//! promotion loses nothing acknowledged.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::Connection;

use crate::{Result, StoreError};

/// Most hosts one URL may list.
pub const HOSTS_MAX: usize = 8;

/// How often the store checks that its host still accepts writes.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// How long one probe of a host may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `url` with only its first host, and every `(host, port)` it lists (one for a plain URL).
/// `target_session_attrs` is taken out: the store always wants a host that accepts writes.
pub(crate) fn split(url: &str) -> Result<(String, Vec<(String, u16)>)> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let mut hosts = Vec::new();
    for item in hostlist.split(',') {
        let (host, port) = match item.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse::<u16>().map_err(|_| {
                    StoreError::Open(format!("database_url: bad port in host {item:?}"))
                })?;
                (h.to_owned(), port)
            }
            _ => (item.to_owned(), 5432),
        };
        hosts.push((host, port));
    }
    if hosts.len() > HOSTS_MAX {
        return Err(StoreError::Open(format!(
            "database_url lists {} hosts; at most {HOSTS_MAX}",
            hosts.len()
        )));
    }
    let tail = strip_parameter(tail, "target_session_attrs");
    let first = hostlist.split(',').next().unwrap_or_default();
    Ok((format!("{scheme}://{userinfo}{first}{tail}"), hosts))
}

/// `tail` (path and query) without parameter `name`.
fn strip_parameter(tail: &str, name: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Whether the server behind `options` answers and accepts writes.
async fn writable(options: &PgConnectOptions) -> bool {
    let probe = async {
        let mut conn = PgConnection::connect_with(options).await.ok()?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .ok()?;
        let _ = conn.close().await;
        Some(!in_recovery)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The first of `hosts` that accepts writes, as an index.
pub(crate) async fn find_primary(
    base: &PgConnectOptions,
    hosts: &[(String, u16)],
) -> Option<usize> {
    for (i, (host, port)) in hosts.iter().enumerate() {
        if writable(&base.clone().host(host).port(*port)).await {
            return Some(i);
        }
    }
    None
}

/// Keep `pools` pointed at the host of `hosts` that accepts writes, starting at `current`,
/// until the pools are closed.
pub(crate) async fn follow_primary(
    base: PgConnectOptions,
    hosts: Vec<(String, u16)>,
    mut current: usize,
    pools: Vec<PgPool>,
) {
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        if pools.iter().all(|p| p.is_closed()) {
            return;
        }
        let (host, port) = &hosts[current];
        if writable(&base.clone().host(host).port(*port)).await {
            continue;
        }
        let Some(next) = find_primary(&base, &hosts).await else {
            continue;
        };
        if next == current {
            continue;
        }
        current = next;
        let (host, port) = &hosts[current];
        tracing::warn!(%host, port, "the database primary moved; connecting to it");
        for pool in &pools {
            let options = (*pool.connect_options()).clone().host(host).port(*port);
            pool.set_connect_options(options);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_multi_host_url_is_split_into_its_hosts() {
        let (first, hosts) =
            split("postgres://u:p%40ss@10.0.0.1:5433,db2/x?target_session_attrs=read-write&a=b")
                .unwrap();
        assert_eq!(first, "postgres://u:p%40ss@10.0.0.1:5433/x?a=b");
        assert_eq!(
            hosts,
            vec![("10.0.0.1".to_string(), 5433), ("db2".to_string(), 5432)]
        );
        let (plain, one) = split("postgres://u@h:1/db").unwrap();
        assert_eq!((plain.as_str(), one.len()), ("postgres://u@h:1/db", 1));
        assert!(split("postgres://u@h:x/db").is_err());
    }
}
