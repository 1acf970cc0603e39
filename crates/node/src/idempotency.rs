//! Idempotency keys of the API's sends (issue 12 item 3), after the IETF httpapi draft "The
//! Idempotency-Key HTTP Header Field".
//!
//! A client that may have to retry a send (its connection broke, the node crashed, no
//! answer came) names the request with an `Idempotency-Key`. The node stores the key, a
//! fingerprint of the request and the answer (ids, seqs, precedences) **in the same
//! transaction as the messages** (`WriteBatch::idempotency`), so after any crash a retry
//! finds either the committed answer, which it gets again (same status and body, plus
//! `Idempotent-Replayed: true`), or nothing, and then sends afresh. Keys are scoped to the
//! caller (the API token or a console login), remembered for 24 hours
//! ([`IDEMPOTENCY_KEY_TTL_MS`]) and bounded in number per caller
//! ([`KEYS_PER_CALLER_MAX`]); expired ones are pruned a bounded number per commit. The same
//! key with a different request is refused (422), and while the first request is still in
//! flight in this process a second one with its key is refused (409).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use detente_store::{IdempotencyRow, SentRecord, Store, IDEMPOTENCY_KEY_TTL_MS};
use sha2::{Digest, Sha256};

use crate::service::Error;
use crate::NodeStore;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer header that says an answer is a replay of the stored one.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Bytes of a key at most (visible ASCII, at least one).
pub const KEY_BYTES_MAX: usize = 64;
/// Keys one caller may have remembered at once (created within the last 24 hours).
pub const KEYS_PER_CALLER_MAX: u32 = 100_000;
/// Requests with a key in flight at once in this process, all callers together.
pub const IN_FLIGHT_MAX: usize = 1_024;

/// The client's key from the request headers: `None` without the header. The value is a
/// structured-field string (`"…"`, as the draft has it) or the bare characters, 1 to
/// [`KEY_BYTES_MAX`] bytes of visible ASCII (no space, quote or backslash).
pub fn key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad_key(
            "the request has more than one Idempotency-Key header",
        ));
    }
    let raw = value.as_bytes();
    let inner = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => raw,
    };
    let visible = |b: &u8| b.is_ascii_graphic() && *b != b'"' && *b != b'\\';
    if inner.is_empty() || inner.len() > KEY_BYTES_MAX || !inner.iter().all(visible) {
        return Err(bad_key(&format!(
            "the Idempotency-Key must be 1 to {KEY_BYTES_MAX} visible ASCII characters \
             (no space, quote or backslash)"
        )));
    }
    Ok(Some(String::from_utf8_lossy(inner).into_owned()))
}

fn bad_key(what: &str) -> Error {
    Error::new(StatusCode::BAD_REQUEST, what.to_string())
        .hint("send a fresh random key per request, e.g. a UUID: Idempotency-Key: \"<uuid>\"")
}

/// The fingerprint of a request: SHA-256 of its route and its body's bytes. A retry must
/// send the same bytes to the same route.
pub fn fingerprint(route: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// The keys whose requests are being handled now, so that a second request with the same
/// key waits for no one and sends nothing (409).
#[derive(Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
}

/// Holds a key as in flight until dropped (the request answered, or its client gone).
pub struct Claim {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
    entry: (String, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&self.entry);
        }
    }
}

impl InFlight {
    /// Claim `key` of `scope` for one request.
    pub fn claim(&self, scope: &str, key: &str) -> Result<Claim, Error> {
        let mut keys = self.keys.lock().map_err(|_| crate::service::internal())?;
        let entry = (scope.to_string(), key.to_string());
        if keys.contains(&entry) {
            return Err(Error::new(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still being handled",
            )
            .hint("wait for its answer, then retry with the same key to get it"));
        }
        if keys.len() >= IN_FLIGHT_MAX {
            return Err(Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{IN_FLIGHT_MAX} requests with an Idempotency-Key are in flight"),
            ));
        }
        keys.insert(entry.clone());
        Ok(Claim {
            keys: self.keys.clone(),
            entry,
        })
    }
}

/// What a request with a key is to do.
#[derive(Debug)]
pub enum Lookup {
    /// Nothing is remembered for the key: send, storing this record (its `sent` empty).
    Fresh(IdempotencyRow),
    /// The same request was committed before: answer with what it stored.
    Replay(Vec<SentRecord>),
}

/// Decide what the request `fingerprint` of `scope` with `key` does, at `now_ms`. Call it
/// while holding the key's [`Claim`].
pub async fn lookup(
    store: &NodeStore,
    scope: &str,
    key: &str,
    fingerprint: [u8; 32],
    now_ms: i64,
) -> Result<Lookup, Error> {
    let since = now_ms.saturating_sub(IDEMPOTENCY_KEY_TTL_MS);
    if let Some(row) = store.idempotency(scope, key).await? {
        if row.created_at_ms >= since {
            if row.fingerprint != fingerprint {
                return Err(Error::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this Idempotency-Key was used for a different request",
                )
                .hint("a retry must send the same body to the same route; use a new key for a new request"));
            }
            return Ok(Lookup::Replay(row.sent));
        }
    }
    let live = store
        .idempotency_count(scope, since, KEYS_PER_CALLER_MAX)
        .await?;
    if live >= u64::from(KEYS_PER_CALLER_MAX) {
        return Err(Error::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{KEYS_PER_CALLER_MAX} Idempotency-Keys of this caller are remembered (24 hours each)"
            ),
        )
        .hint("send without an Idempotency-Key, or retry later"));
    }
    Ok(Lookup::Fresh(IdempotencyRow {
        scope: scope.to_string(),
        key: key.to_string(),
        fingerprint,
        created_at_ms: now_ms,
        sent: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_are_bounded_visible_ascii_quoted_or_bare() {
        assert_eq!(key(&headers(&[])).unwrap(), None);
        assert_eq!(
            key(&headers(&["\"abc-1\""])).unwrap().as_deref(),
            Some("abc-1")
        );
        assert_eq!(key(&headers(&["abc-1"])).unwrap().as_deref(), Some("abc-1"));
        let longest = "k".repeat(KEY_BYTES_MAX);
        assert_eq!(key(&headers(&[&longest])).unwrap(), Some(longest.clone()));
        for bad in [
            "",
            "\"\"",
            "a b",
            "a\\b",
            "\"a\"b\"",
            &format!("{longest}k"),
        ] {
            let e = key(&headers(&[bad])).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let e = key(&headers(&["a", "b"])).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "two headers");
    }

    #[test]
    fn a_key_in_flight_is_refused_until_its_request_ends() {
        let flight = InFlight::default();
        let claim = flight.claim("api-token", "k").unwrap();
        let e = flight.claim("api-token", "k").err().unwrap();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        // Scoped: another caller's key of the same text is another key.
        let _other = flight.claim("login:duty", "k").unwrap();
        drop(claim);
        assert!(flight.claim("api-token", "k").is_ok());
    }

    #[test]
    fn the_fingerprint_covers_the_route_and_the_body() {
        let a = fingerprint("POST /api/v1/messages", b"{}");
        assert_eq!(a, fingerprint("POST /api/v1/messages", b"{}"));
        assert_ne!(a, fingerprint("POST /api/v1/messages/batch", b"{}"));
        assert_ne!(a, fingerprint("POST /api/v1/messages", b"{ }"));
    }
}
