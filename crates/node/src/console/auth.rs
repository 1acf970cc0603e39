//! Console accounts: roles and what each may do, argon2id passwords, sessions, CSRF tokens
//! and the login rate limiter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use detente_proto::Precedence;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Longest password accepted (argon2 accepts more; nobody types more).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Shortest password accepted by `user add`.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest login name.
pub const LOGIN_BYTES_MAX: usize = 64;
/// How long a session lasts: one night shift and some.
pub const SESSION_MS: i64 = 14 * 3600 * 1000;
/// Failed logins per login name, and per source address, within the window.
pub const LOGIN_FAILURES_PER_LOGIN_MAX: u32 = 5;
pub const LOGIN_FAILURES_PER_SOURCE_MAX: u32 = 20;
/// The window of the login rate limiter.
pub const LOGIN_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Keys the rate limiter remembers, at most (logins plus addresses).
pub const LIMITER_KEYS_MAX: usize = 10_000;

/// An operator's role (docs/spec.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads, drafts, sends PRIORITY and ROUTINE, marks read.
    Watch,
    /// Also sends FLASH and IMMEDIATE; acknowledges and declines.
    Supervisor,
    /// Acknowledges and declines on the party's behalf; sends at every precedence.
    Principal,
    /// Reads everything, exports, reads the audit log; changes nothing.
    Auditor,
    /// Users and peers; cannot send or answer.
    Admin,
}

pub const ROLES: [Role; 5] = [
    Role::Watch,
    Role::Supervisor,
    Role::Principal,
    Role::Auditor,
    Role::Admin,
];

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        ROLES.into_iter().find(|r| r.name() == text)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Watch => "watch",
            Role::Supervisor => "supervisor",
            Role::Principal => "principal",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn can_send(self, precedence: Precedence) -> bool {
        match self {
            Role::Watch => matches!(precedence, Precedence::Priority | Precedence::Routine),
            Role::Supervisor | Role::Principal => true,
            Role::Auditor | Role::Admin => false,
        }
    }

    /// Any precedence at all.
    pub fn can_compose(self) -> bool {
        self.can_send(Precedence::Routine)
    }

    pub fn can_mark_read(self) -> bool {
        matches!(self, Role::Watch | Role::Supervisor | Role::Principal)
    }

    /// Acknowledge or decline on the party's behalf.
    pub fn can_answer(self) -> bool {
        matches!(self, Role::Supervisor | Role::Principal)
    }

    pub fn can_export(self) -> bool {
        matches!(self, Role::Auditor | Role::Supervisor | Role::Principal)
    }

    pub fn can_read_audit(self) -> bool {
        matches!(self, Role::Auditor | Role::Admin)
    }

    pub fn can_admin(self) -> bool {
        self == Role::Admin
    }

    /// Sign a checkpoint of a channel on the party's behalf.
    pub fn can_checkpoint(self) -> bool {
        matches!(self, Role::Supervisor | Role::Principal)
    }

    /// Add or replace glossary terms of a channel.
    pub fn can_edit_glossary(self) -> bool {
        matches!(self, Role::Supervisor | Role::Principal | Role::Admin)
    }
}

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

/// What the store keeps of a session token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compare secrets without leaking where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Counts failed logins per login name and per source address in a fixed window, in
/// bounded memory. Time is passed in, so tests control it.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    entries: Mutex<HashMap<String, (u64, u32)>>,
}

impl LoginLimiter {
    fn key_login(login: &str) -> String {
        format!("login:{login}")
    }

    fn key_source(source: IpAddr) -> String {
        format!("source:{source}")
    }

    fn count(map: &HashMap<String, (u64, u32)>, key: &str, now_ms: u64) -> u32 {
        match map.get(key) {
            Some((start, n)) if now_ms.saturating_sub(*start) < LOGIN_WINDOW_MS => *n,
            _ => 0,
        }
    }

    /// Whether another attempt is allowed now.
    pub fn allowed(&self, login: &str, source: IpAddr, now_ms: u64) -> bool {
        let Ok(map) = self.entries.lock() else {
            return false;
        };
        Self::count(&map, &Self::key_login(login), now_ms) < LOGIN_FAILURES_PER_LOGIN_MAX
            && Self::count(&map, &Self::key_source(source), now_ms) < LOGIN_FAILURES_PER_SOURCE_MAX
    }

    /// Record a failed attempt.
    pub fn failed(&self, login: &str, source: IpAddr, now_ms: u64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() + 2 > LIMITER_KEYS_MAX {
            map.retain(|_, (start, _)| now_ms.saturating_sub(*start) < LOGIN_WINDOW_MS);
        }
        if map.len() + 2 > LIMITER_KEYS_MAX {
            // Still full of live entries: an attack from many addresses. Forget the oldest
            // tenth at once (amortised over the next inserts) rather than grow; memory
            // stays bounded at the price of forgetting some counts early.
            let mut by_age: Vec<(u64, String)> = map
                .iter()
                .map(|(k, (start, _))| (*start, k.clone()))
                .collect();
            by_age.sort_unstable();
            for (_, key) in by_age.into_iter().take(LIMITER_KEYS_MAX / 10) {
                map.remove(&key);
            }
        }
        for key in [Self::key_login(login), Self::key_source(source)] {
            let entry = map.entry(key).or_insert((now_ms, 0));
            if now_ms.saturating_sub(entry.0) >= LOGIN_WINDOW_MS {
                *entry = (now_ms, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
    }

    /// A successful login clears the login's count (not the address's).
    pub fn succeeded(&self, login: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&Self::key_login(login));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn limiter_blocks_per_login_and_per_source_and_stays_bounded() {
        let l = LoginLimiter::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_PER_LOGIN_MAX {
            assert!(l.allowed("alice", a, 1000));
            l.failed("alice", a, 1000);
        }
        assert!(
            !l.allowed("alice", b, 1000),
            "per login, whatever the address"
        );
        assert!(l.allowed("bob", a, 1000));
        assert!(
            l.allowed("alice", a, 1000 + LOGIN_WINDOW_MS),
            "the window passes"
        );
        for i in 0..LOGIN_FAILURES_PER_SOURCE_MAX {
            l.failed(&format!("u{i}"), b, 2000);
        }
        assert!(
            !l.allowed("carol", b, 2000),
            "per source, whatever the login"
        );
        for i in 0..(LIMITER_KEYS_MAX as u32 * 2) {
            let ip = IpAddr::from(i.to_be_bytes());
            l.failed(&format!("x{i}"), ip, 3000);
        }
        assert!(l.len() <= LIMITER_KEYS_MAX);
    }
}
