//! Admission of inbound peer connections before they have authenticated.
//!
//! Anyone can open a TCP connection to the peer port, and each one costs a TLS handshake and
//! a slot until it completes or times out. Without limits, 64 idle connections from a
//! stranger used to fill every slot and lock the real peer out (issue 12, item 5), and an
//! unpinned node redialing seven times a second cost a handshake and a WARN line each time
//! (item 7). The gate decides, for each accepted connection and before any TLS:
//!
//! - a source address has at most [`PRE_AUTH_PER_SOURCE_MAX`] connections being
//!   handshaken at once;
//! - strangers share [`PRE_AUTH_STRANGERS_MAX`] slots, and addresses of pinned peers (the IP
//!   literals in their `addrs`) have [`PRE_AUTH_PINNED_MAX`] slots of their own that no
//!   stranger can take;
//! - a source that presented an unpinned key is refused without a handshake for a backoff
//!   that doubles on every refusal ([`REFUSED_BACKOFF_INITIAL`] to [`REFUSED_BACKOFF_MAX`]);
//! - refused keys are counted (at most [`REFUSED_KEYS_MAX`] kept, the least recently seen
//!   forgotten first) for `status` and `/metrics`;
//! - log lines for refused connections are rate-limited: one per [`FLOOD_LOG_INTERVAL`],
//!   saying how many were refused since the last line.
//!
//! Every map here is bounded. Time is passed in, so the rules are tested without clocks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an inbound connection may take from accept to an authenticated TLS session.
pub const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Unauthenticated connections from one source address at once, at most.
pub const PRE_AUTH_PER_SOURCE_MAX: usize = 4;
/// Unauthenticated connections from addresses that are not a pinned peer's, at most.
pub const PRE_AUTH_STRANGERS_MAX: usize = 64;
/// Unauthenticated connections from pinned peers' addresses, at most (their own pool).
pub const PRE_AUTH_PINNED_MAX: usize = 16;
/// Source addresses remembered (open connections, refusal backoff), at most.
pub const SOURCES_TRACKED_MAX: usize = 4096;
/// Distinct refused keys remembered, at most.
pub const REFUSED_KEYS_MAX: usize = 256;
/// First wait imposed on a source after it presented an unpinned key.
pub const REFUSED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait imposed on a source that keeps presenting unpinned keys.
pub const REFUSED_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// At most one log line about refused connections per this interval.
pub const FLOOD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was closed before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already has [`PRE_AUTH_PER_SOURCE_MAX`] handshakes open.
    SourceBusy,
    /// Every slot of its pool is taken.
    Full,
    /// Its source presented an unpinned key recently and is backing off.
    BackingOff,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::SourceBusy => "source_busy",
            Refusal::Full => "full",
            Refusal::BackingOff => "backing_off",
        }
    }

    pub const ALL: [Refusal; 3] = [Refusal::SourceBusy, Refusal::Full, Refusal::BackingOff];
}

/// A key that was refused, as shown by `status` and `/metrics`.
#[derive(Debug, Clone)]
pub struct RefusedKey {
    pub key: [u8; 32],
    pub count: u64,
    /// The source address of the last attempt.
    pub last_address: IpAddr,
    pub last_seen: Instant,
}

#[derive(Debug, Default)]
struct Source {
    open: usize,
    refusals: u32,
    refused_until: Option<Instant>,
    last_seen: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    sources: HashMap<IpAddr, Source>,
    strangers: usize,
    pinned: usize,
    refused_keys: HashMap<[u8; 32], RefusedKey>,
    /// Connections closed before a handshake, by [`Refusal`] (index as in `Refusal::ALL`).
    closed: [u64; 3],
    keys_refused_total: u64,
    log_due: Option<Instant>,
    unlogged: u64,
    log_lines: u64,
}

/// The admission state of one listener.
#[derive(Debug, Default)]
pub struct Gate {
    inner: Mutex<Inner>,
}

/// A slot held by a connection being handshaken; released on drop.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    source: IpAddr,
    pinned: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.gate.inner.lock() {
            if self.pinned {
                inner.pinned = inner.pinned.saturating_sub(1);
            } else {
                inner.strangers = inner.strangers.saturating_sub(1);
            }
            if let Some(s) = inner.sources.get_mut(&self.source) {
                s.open = s.open.saturating_sub(1);
            }
        }
    }
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Admit a connection from `source` (`pinned`: the address is a pinned peer's) or say
    /// why not. A refusal is counted; see [`Gate::log_line`] for logging it.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        pinned: bool,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        let mut inner = self.inner.lock().map_err(|_| Refusal::Full)?;
        let verdict = inner.check(source, pinned, now);
        match verdict {
            Ok(()) => {
                if pinned {
                    inner.pinned += 1;
                } else {
                    inner.strangers += 1;
                }
                let s = inner.sources.entry(source).or_default();
                s.open += 1;
                s.last_seen = Some(now);
                Ok(Ticket {
                    gate: self.clone(),
                    source,
                    pinned,
                })
            }
            Err(why) => {
                inner.closed[why as usize] += 1;
                inner.unlogged += 1;
                Err(why)
            }
        }
    }

    /// A connection from `source` presented `key`, which is not pinned: count the key and
    /// make the source back off (unless it is a pinned peer's address).
    pub fn key_refused(&self, source: IpAddr, pinned: bool, key: [u8; 32], now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.keys_refused_total += 1;
        inner.unlogged += 1;
        inner.remember_key(source, key, now);
        if pinned {
            return;
        }
        inner.make_room(now);
        let s = inner.sources.entry(source).or_default();
        s.refusals = s.refusals.saturating_add(1);
        let exponent = (s.refusals - 1).min(16);
        let wait = REFUSED_BACKOFF_INITIAL
            .saturating_mul(1u32 << exponent)
            .min(REFUSED_BACKOFF_MAX);
        s.refused_until = Some(now + wait);
        s.last_seen = Some(now);
    }

    /// A connection from `source` authenticated with a pinned key: forget its refusals.
    pub fn authenticated(&self, source: IpAddr) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(s) = inner.sources.get_mut(&source) {
                s.refusals = 0;
                s.refused_until = None;
            }
        }
    }

    /// Whether to write a log line about refusals now: at most one per
    /// [`FLOOD_LOG_INTERVAL`]; returns how many refusals the line covers.
    pub fn log_line(&self, now: Instant) -> Option<u64> {
        let mut inner = self.inner.lock().ok()?;
        if inner.unlogged == 0 || inner.log_due.is_some_and(|due| now < due) {
            return None;
        }
        inner.log_due = Some(now + FLOOD_LOG_INTERVAL);
        inner.log_lines += 1;
        Some(std::mem::take(&mut inner.unlogged))
    }

    /// Log lines written about refusals so far (each [`Gate::log_line`] that said yes).
    pub fn log_lines(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.log_lines)
    }

    /// Connections closed before a handshake, per reason.
    pub fn closed(&self) -> Vec<(Refusal, u64)> {
        let inner = self.inner.lock();
        Refusal::ALL
            .iter()
            .map(|r| (*r, inner.as_ref().map_or(0, |i| i.closed[*r as usize])))
            .collect()
    }

    /// Handshakes refused for an unpinned key, in total.
    pub fn keys_refused_total(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.keys_refused_total)
    }

    /// The refused keys remembered, most attempts first.
    pub fn refused_keys(&self) -> Vec<RefusedKey> {
        let mut keys: Vec<RefusedKey> = self
            .inner
            .lock()
            .map(|i| i.refused_keys.values().cloned().collect())
            .unwrap_or_default();
        keys.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
        keys
    }
}

impl Inner {
    fn check(&mut self, source: IpAddr, pinned: bool, now: Instant) -> Result<(), Refusal> {
        if let Some(s) = self.sources.get(&source) {
            if !pinned && s.refused_until.is_some_and(|until| now < until) {
                return Err(Refusal::BackingOff);
            }
            let per_source = if pinned {
                PRE_AUTH_PINNED_MAX
            } else {
                PRE_AUTH_PER_SOURCE_MAX
            };
            if s.open >= per_source {
                return Err(Refusal::SourceBusy);
            }
        }
        let full = if pinned {
            self.pinned >= PRE_AUTH_PINNED_MAX
        } else {
            self.strangers >= PRE_AUTH_STRANGERS_MAX
        };
        if full {
            return Err(Refusal::Full);
        }
        if !self.sources.contains_key(&source) {
            self.make_room(now);
            if self.sources.len() >= SOURCES_TRACKED_MAX {
                return Err(Refusal::Full);
            }
        }
        Ok(())
    }

    /// Forget sources with nothing open and no backoff running, so the map stays bounded.
    fn make_room(&mut self, now: Instant) {
        if self.sources.len() < SOURCES_TRACKED_MAX {
            return;
        }
        self.sources
            .retain(|_, s| s.open > 0 || s.refused_until.is_some_and(|until| now < until));
    }

    fn remember_key(&mut self, source: IpAddr, key: [u8; 32], now: Instant) {
        if !self.refused_keys.contains_key(&key) && self.refused_keys.len() >= REFUSED_KEYS_MAX {
            let oldest = self
                .refused_keys
                .values()
                .min_by_key(|k| k.last_seen)
                .map(|k| k.key);
            if let Some(oldest) = oldest {
                self.refused_keys.remove(&oldest);
            }
        }
        let entry = self.refused_keys.entry(key).or_insert(RefusedKey {
            key,
            count: 0,
            last_address: source,
            last_seen: now,
        });
        entry.count += 1;
        entry.last_address = source;
        entry.last_seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let gate = Gate::new();
        let now = Instant::now();
        let held: Vec<Ticket> = (0..PRE_AUTH_PER_SOURCE_MAX)
            .map(|_| gate.admit(ip(2), false, now).expect("admitted"))
            .collect();
        assert_eq!(
            gate.admit(ip(2), false, now).unwrap_err(),
            Refusal::SourceBusy
        );
        assert!(gate.admit(ip(3), false, now).is_ok());
        drop(held);
        assert!(gate.admit(ip(2), false, now).is_ok(), "released on drop");
    }

    #[test]
    fn strangers_never_take_the_pinned_pool() {
        let gate = Gate::new();
        let now = Instant::now();
        let mut held = Vec::new();
        for i in 0..PRE_AUTH_STRANGERS_MAX {
            let source = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            held.push(gate.admit(source, false, now).expect("admitted"));
        }
        assert_eq!(gate.admit(ip(9), false, now).unwrap_err(), Refusal::Full);
        assert!(
            gate.admit(ip(1), true, now).is_ok(),
            "a pinned address still gets in"
        );
    }

    #[test]
    fn an_unpinned_key_makes_its_source_back_off_doubling() {
        let gate = Gate::new();
        let t0 = Instant::now();
        gate.key_refused(ip(2), false, [7; 32], t0);
        assert_eq!(
            gate.admit(ip(2), false, t0).unwrap_err(),
            Refusal::BackingOff
        );
        let t1 = t0 + REFUSED_BACKOFF_INITIAL;
        assert!(gate.admit(ip(2), false, t1).is_ok());
        gate.key_refused(ip(2), false, [7; 32], t1);
        assert!(gate
            .admit(ip(2), false, t1 + REFUSED_BACKOFF_INITIAL)
            .is_err());
        assert!(gate
            .admit(ip(2), false, t1 + 2 * REFUSED_BACKOFF_INITIAL)
            .is_ok());
        let keys = gate.refused_keys();
        assert_eq!((keys.len(), keys[0].count), (1, 2));
        // A pinned peer's address is never made to wait.
        gate.key_refused(ip(1), true, [8; 32], t0);
        assert!(gate.admit(ip(1), true, t0).is_ok());
    }

    #[test]
    fn log_lines_are_rate_limited_and_count_what_they_cover() {
        let gate = Gate::new();
        let t0 = Instant::now();
        let _held: Vec<Ticket> = (0..PRE_AUTH_PER_SOURCE_MAX)
            .map(|_| gate.admit(ip(2), false, t0).unwrap())
            .collect();
        let mut lines = Vec::new();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 25);
            let _ = gate.admit(ip(2), false, now);
            if let Some(n) = gate.log_line(now) {
                lines.push(n);
            }
        }
        // 25 s of refusals: a line at 0 s, 10 s and 20 s.
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines.iter().sum::<u64>(), 1000 - 199);
    }

    #[test]
    fn memory_stays_bounded() {
        let gate = Gate::new();
        let now = Instant::now();
        for i in 0..(REFUSED_KEYS_MAX as u32 * 2) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let source = IpAddr::from(i.to_be_bytes());
            gate.key_refused(
                source,
                false,
                key,
                now + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(gate.refused_keys().len(), REFUSED_KEYS_MAX);
        let inner = gate.inner.lock().unwrap();
        assert!(inner.sources.len() <= SOURCES_TRACKED_MAX);
    }
}
