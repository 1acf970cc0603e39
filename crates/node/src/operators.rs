//! Who is calling: an operator's role and what it may do, the session a browser presents,
//! and the audit log of what operators did. Both presentations use this: the HTTP API
//! ([`crate::api`]) for a console session calling it, the console ([`crate::console`]) for
//! its pages. It imports neither.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use detente_proto::Precedence;
use detente_store::console::AuditRow;
use sha2::{Digest, Sha256};

use crate::{now_ms, Shared};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "detente_session";
/// The cookie that remembers the operator's display density (`compact`) in this browser.
pub const DENSITY_COOKIE: &str = "detente_density";
/// The header a script sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Audit detail text kept, at most.
const AUDIT_DETAIL_CHARS_MAX: usize = 500;

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

/// The value of one cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A logged-in operator, resolved from the session cookie.
#[derive(Debug, Clone)]
pub struct Operator {
    pub login: String,
    pub role: Role,
    pub lang: String,
    pub csrf: String,
    pub token_hash: [u8; 32],
    /// When the session ends (event streams close then).
    pub expires_at_ms: i64,
    /// Show messages compactly (one line of head, less spacing): a browser's choice.
    pub compact: bool,
    /// The time zone this operator chose to read times in (an IANA name); empty: the
    /// node's. A person's choice, kept with the account.
    pub tz: String,
}

impl Operator {
    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_ok(&self, presented: &str) -> bool {
        same_secret(presented, &self.csrf)
    }
}

/// The operator of the session in `headers`, if it is live.
pub async fn session_operator(shared: &Shared, headers: &HeaderMap) -> Option<Operator> {
    let token = cookie(headers, SESSION_COOKIE)?;
    if token.len() != 64 {
        return None;
    }
    let hash = token_hash(token);
    let (session, user) = shared
        .store
        .session(hash, now_ms() as i64)
        .await
        .ok()
        .flatten()?;
    Some(Operator {
        login: user.login,
        role: Role::parse(&user.role)?,
        lang: user.lang,
        csrf: session.csrf,
        token_hash: hash,
        expires_at_ms: session.expires_at_ms,
        compact: cookie(headers, DENSITY_COOKIE) == Some("compact"),
        tz: user.tz,
    })
}

/// Where a request came from (unspecified when the server was not asked to tell).
pub struct Source(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// Record an operator action. A failure to record is logged; the action already happened
/// (it is durable in the transcript), so it is not undone.
pub async fn audit(shared: &Shared, login: &str, action: &str, detail: &str, source: IpAddr) {
    let row = AuditRow {
        at_ms: now_ms() as i64,
        login: login.to_string(),
        action: action.to_string(),
        detail: detail.chars().take(AUDIT_DETAIL_CHARS_MAX).collect(),
        source: source.to_string(),
    };
    if let Err(e) = shared.store.append_audit(&row).await {
        tracing::error!(error = %e, action, login, "cannot write the audit log");
    }
}
