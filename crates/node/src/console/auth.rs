//! Console accounts: roles and what each may do, argon2id passwords, sessions, CSRF tokens
//! and the login rate limiter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

pub use crate::operators::{same_secret, token_hash, Role, ROLES};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

/// Longest password accepted (argon2 accepts more; nobody types more).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Shortest password accepted by `user add`.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest login name.
pub const LOGIN_BYTES_MAX: usize = 64;
/// How long a session lasts: one night shift and some.
pub const SESSION_MS: i64 = 14 * 3600 * 1000;
/// Login attempts per login name from one source address, and per source address, within
/// the window. There is no limit per login name alone: a stranger guessing the duty
/// officer's password from elsewhere must not lock the duty officer out (OWASP ASVS V2.2).
pub const LOGIN_FAILURES_PER_LOGIN_MAX: u32 = 5;
pub const LOGIN_FAILURES_PER_SOURCE_MAX: u32 = 20;
/// The window of the login rate limiter.
pub const LOGIN_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Memory the rate limiter may use, at most (its entries are of bounded size: a login name
/// is at most [`LOGIN_BYTES_MAX`]).
pub const LIMITER_BYTES_MAX: usize = 2 * 1024 * 1024;
/// What one limiter entry costs, at most: the key (an address and a login name), the
/// counters, and the map's own overhead, rounded up.
pub const LIMITER_ENTRY_BYTES_MAX: usize = 16 + LOGIN_BYTES_MAX + 24 + 96;
/// Entries the rate limiter remembers, at most.
pub const LIMITER_KEYS_MAX: usize = LIMITER_BYTES_MAX / LIMITER_ENTRY_BYTES_MAX;
const _: () = assert!(LIMITER_KEYS_MAX * LIMITER_ENTRY_BYTES_MAX <= LIMITER_BYTES_MAX);
/// Largest login form body (a name, a password, a token).
pub const LOGIN_BODY_BYTES_MAX: usize = 4096;
/// Password checks (argon2id, 19 MiB each) running at once, at most.
pub const PASSWORD_CHECKS_RUNNING_MAX: usize = 2;
/// Password checks waiting for a turn, at most; one more is answered 503.
pub const PASSWORD_CHECKS_WAITING_MAX: usize = 8;
/// Failed logins from one address between two audit rows (the rows in between are counted
/// in the next one, not written one by one).
pub const LOGIN_FAILURES_PER_AUDIT_ROW: u32 = 5;

/// A login name is 1–64 characters of letters, digits, `.`, `_`, `-`.
pub fn valid_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= LOGIN_BYTES_MAX
        && login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    #[error("the password must have at least {PASSWORD_CHARS_MIN} characters")]
    TooShort,
    #[error("the password is longer than {PASSWORD_BYTES_MAX} bytes")]
    TooLong,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// argon2id with the crate's defaults (OWASP's minimum: 19 MiB, 2 passes, 1 lane), in PHC
/// string form with a random 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < PASSWORD_CHARS_MIN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(PasswordError::TooLong);
    }
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC string (parameters come from the string).
pub fn verify_password(password: &str, stored: &str) -> bool {
    if password.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// A fresh random token: 32 bytes as 64 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Counts login attempts per (source address, login name) and per source address in a
/// fixed window, in bounded memory. An attempt is checked and recorded under one lock
/// ([`LoginLimiter::begin`]), so parallel guesses cannot all pass the check before any of
/// them is counted; a successful login gives its attempt back. Time is passed in, so tests
/// control it.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    entries: Mutex<HashMap<LimiterKey, Window>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimiterKey {
    Source(IpAddr),
    /// The login name is capped at [`LOGIN_BYTES_MAX`] before it gets here.
    Pair(IpAddr, String),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    attempts: u32,
    /// The "throttled" audit row of this window was written.
    throttle_audited: bool,
}

/// What the limiter decided about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Go on and check the password; `source_attempts` counts this one.
    Allowed { source_attempts: u32 },
    /// Too many attempts; `first` is true for the first refusal of this window (audit it).
    Throttled { first: bool },
}

impl LoginLimiter {
    fn live(w: &Window, now_ms: u64) -> bool {
        now_ms.saturating_sub(w.start_ms) < LOGIN_WINDOW_MS
    }

    fn count(map: &HashMap<LimiterKey, Window>, key: &LimiterKey, now_ms: u64) -> u32 {
        map.get(key)
            .filter(|w| Self::live(w, now_ms))
            .map_or(0, |w| w.attempts)
    }

    /// Make room for two entries: drop expired ones, then (an attack from very many
    /// addresses) the oldest tenth at once, rather than grow.
    fn make_room(map: &mut HashMap<LimiterKey, Window>, now_ms: u64) {
        if map.len() + 2 <= LIMITER_KEYS_MAX {
            return;
        }
        map.retain(|_, w| Self::live(w, now_ms));
        if map.len() + 2 <= LIMITER_KEYS_MAX {
            return;
        }
        let mut by_age: Vec<(u64, LimiterKey)> =
            map.iter().map(|(k, w)| (w.start_ms, k.clone())).collect();
        by_age.sort_unstable_by_key(|(start, _)| *start);
        for (_, key) in by_age.into_iter().take(LIMITER_KEYS_MAX / 10) {
            map.remove(&key);
        }
    }

    fn pair(login: &str, source: IpAddr) -> LimiterKey {
        let mut end = login.len().min(LOGIN_BYTES_MAX);
        while !login.is_char_boundary(end) {
            end -= 1;
        }
        LimiterKey::Pair(source, login[..end].to_string())
    }

    /// Check and record one attempt at once.
    pub fn begin(&self, login: &str, source: IpAddr, now_ms: u64) -> Attempt {
        let Ok(mut map) = self.entries.lock() else {
            return Attempt::Throttled { first: false };
        };
        let (pair, by_source) = (Self::pair(login, source), LimiterKey::Source(source));
        let over = Self::count(&map, &pair, now_ms) >= LOGIN_FAILURES_PER_LOGIN_MAX
            || Self::count(&map, &by_source, now_ms) >= LOGIN_FAILURES_PER_SOURCE_MAX;
        if over {
            let first = map.get_mut(&by_source).is_some_and(|w| {
                let first = !w.throttle_audited;
                w.throttle_audited = true;
                first
            });
            return Attempt::Throttled { first };
        }
        Self::make_room(&mut map, now_ms);
        let mut source_attempts = 0;
        for key in [pair, by_source] {
            let w = map.entry(key.clone()).or_insert(Window {
                start_ms: now_ms,
                attempts: 0,
                throttle_audited: false,
            });
            if !Self::live(w, now_ms) {
                *w = Window {
                    start_ms: now_ms,
                    attempts: 0,
                    throttle_audited: false,
                };
            }
            w.attempts = w.attempts.saturating_add(1);
            if matches!(key, LimiterKey::Source(_)) {
                source_attempts = w.attempts;
            }
        }
        Attempt::Allowed { source_attempts }
    }

    /// A successful login clears its (source, login) count and gives its attempt back to
    /// the source.
    pub fn succeeded(&self, login: &str, source: IpAddr) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&Self::pair(login, source));
            if let Some(w) = map.get_mut(&LimiterKey::Source(source)) {
                w.attempts = w.attempts.saturating_sub(1);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The password checks' turnstile: at most [`PASSWORD_CHECKS_RUNNING_MAX`] argon2 runs at
/// once (19 MiB each), at most [`PASSWORD_CHECKS_WAITING_MAX`] waiting; beyond that the
/// login is answered "busy" (503 with Retry-After) at once, costing nothing.
#[derive(Debug)]
pub struct PasswordGate {
    running: std::sync::Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    waiting_max: usize,
}

/// The gate is full: answer 503 and let the client retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Default for PasswordGate {
    fn default() -> Self {
        Self::new(PASSWORD_CHECKS_RUNNING_MAX, PASSWORD_CHECKS_WAITING_MAX)
    }
}

impl PasswordGate {
    pub fn new(running_max: usize, waiting_max: usize) -> Self {
        Self {
            running: std::sync::Arc::new(tokio::sync::Semaphore::new(running_max)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            waiting_max,
        }
    }

    /// Run `work` (blocking: argon2) on a blocking thread when a turn comes, or refuse.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        use std::sync::atomic::Ordering;
        let permit = match self.running.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.waiting_max {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Busy);
                }
                let p = self.running.clone().acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                p.map_err(|_| Busy)?
            }
        };
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await;
        out.map_err(|_| Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detente_proto::Precedence;

    #[test]
    fn roles_follow_the_spec() {
        assert!(!Role::Watch.can_send(Precedence::Flash));
        assert!(!Role::Watch.can_send(Precedence::Immediate));
        assert!(Role::Watch.can_send(Precedence::Priority));
        assert!(Role::Supervisor.can_send(Precedence::Flash));
        assert!(!Role::Admin.can_compose());
        assert!(!Role::Auditor.can_compose());
        assert!(!Role::Watch.can_answer());
        assert!(Role::Principal.can_answer());
        assert!(Role::Watch.can_mark_read());
        assert!(!Role::Auditor.can_mark_read());
        for r in ROLES {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
    }

    #[test]
    fn limiter_throttles_per_source_not_per_account_and_stays_bounded() {
        let l = LoginLimiter::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for n in 1..=LOGIN_FAILURES_PER_LOGIN_MAX {
            assert_eq!(
                l.begin("alice", a, 1000),
                Attempt::Allowed { source_attempts: n }
            );
        }
        assert_eq!(
            l.begin("alice", a, 1000),
            Attempt::Throttled { first: true }
        );
        assert_eq!(
            l.begin("alice", a, 1000),
            Attempt::Throttled { first: false },
            "one audit row per window"
        );
        assert!(
            matches!(l.begin("alice", b, 1000), Attempt::Allowed { .. }),
            "a stranger elsewhere does not lock alice out"
        );
        assert!(matches!(l.begin("bob", a, 1000), Attempt::Allowed { .. }));
        assert!(
            matches!(
                l.begin("alice", a, 1000 + LOGIN_WINDOW_MS),
                Attempt::Allowed { .. }
            ),
            "the window passes"
        );
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        for i in 0..LOGIN_FAILURES_PER_SOURCE_MAX {
            assert!(matches!(
                l.begin(&format!("u{i}"), c, 2000),
                Attempt::Allowed { .. }
            ));
        }
        assert!(
            matches!(l.begin("carol", c, 2000), Attempt::Throttled { .. }),
            "per source, whatever the login"
        );
        // A success gives its attempt back.
        let d: IpAddr = "127.0.0.4".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_PER_LOGIN_MAX * 2 {
            assert!(matches!(l.begin("dave", d, 3000), Attempt::Allowed { .. }));
            l.succeeded("dave", d);
        }
        let long = "x".repeat(100_000);
        for i in 0..(LIMITER_KEYS_MAX as u32 * 2) {
            let ip = IpAddr::from(i.to_be_bytes());
            l.begin(&long, ip, 4000);
        }
        assert!(l.len() <= LIMITER_KEYS_MAX);
    }

    #[tokio::test]
    async fn the_password_gate_queues_then_refuses() {
        let gate = std::sync::Arc::new(PasswordGate::new(1, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let running = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.run(move || {
                    let _ = started_tx.send(());
                    hold.recv().ok()
                })
                .await
            })
        };
        started.await.unwrap();
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.run(|| 2).await })
        };
        // The second waits; wait until it is counted, then a third is refused at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gate.waiting.load(std::sync::atomic::Ordering::Acquire) == 0 {
            assert!(std::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.run(|| 3).await, Err(Busy));
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(Some(())));
        assert_eq!(waiting.await.unwrap(), Ok(2));
        assert_eq!(gate.run(|| 4).await, Ok(4));
    }
}
