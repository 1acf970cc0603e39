//! The operator console: server-rendered HTML pages on the console address, next to the
//! `/api/v1` JSON API, for duty officers in a browser.
//!
//! - [`auth`]: roles, argon2id passwords, sessions, CSRF tokens, the login rate limiter.
//! - [`handover`]: the shift handover, signed off and acknowledged in the audit log.
//! - [`map`]: the offline world map (Natural Earth coastlines) with a notification's areas
//!   and points, as server-rendered SVG.
//! - [`messages`]: how a message shows (timeline item, its page, the answer and decline
//!   forms): a typed view of the API's JSON, rendered by maud templates.
//! - [`oidc`]: sign-in through the organization's OpenID Connect provider (code flow, PKCE).
//! - [`pages`]: the pages and the forms they post.
//! - [`records`]: link health, the transcript's checks, the counterparts and the audit log:
//!   typed view models rendered by maud templates.
//! - [`users`]: the accounts, for administrators: add, disable, reset a password (audited).
//! - [`queue`]: the "needs action" queue and the alarm banner, from one source of deadline
//!   state.
//! - [`search`]: the full-text search index over texts and notifications, filled when
//!   someone searches.
//! - [`status`]: the status light on every page (link state and since when, link test,
//!   alarms).
//! - [`sse`]: server-sent events that tell open pages to refresh their live regions.
//! - [`i18n`]: the interface text in each operator's language (Fluent).
//!
//! **Everything a page needs ships in the binary** (one script, one style sheet, one alarm
//! sound); the Content-Security-Policy allows nothing else and no inline script or style.
//! **Roles are checked on the server** for every page, form and API call; the page merely
//! hides what a role cannot do.

pub mod auth;
pub mod handover;
pub mod html;
pub use crate::i18n;
pub mod map;
pub mod messages;
pub mod oidc;
pub mod pages;
pub mod queue;
pub mod records;
pub mod search;
pub mod sse;
pub mod status;
pub mod users;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

pub use crate::operators::{
    audit, cookie, session_operator, Operator, Source, CSRF_HEADER, DENSITY_COOKIE, SESSION_COOKIE,
};
use crate::Shared;

/// The cookie that carries the login form's CSRF token (double submit: no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "detente_login_csrf";

/// Per-node console state that is not in the store.
pub struct ConsoleState {
    pub limiter: auth::LoginLimiter,
    /// Password checks running and waiting, bounded.
    pub passwords: auth::PasswordGate,
    pub i18n: i18n::Texts,
    /// Set the `Secure` attribute on cookies (the console is served over TLS).
    pub secure_cookies: bool,
    /// Open event streams, in all and per session.
    pub streams: Arc<sse::Streams>,
    /// OpenID Connect sign-ins in progress.
    pub oidc: oidc::OidcState,
}

impl ConsoleState {
    pub fn new() -> Self {
        Self {
            limiter: auth::LoginLimiter::default(),
            passwords: auth::PasswordGate::default(),
            i18n: i18n::Texts::load(),
            secure_cookies: false,
            streams: Arc::new(sse::Streams::default()),
            oidc: oidc::OidcState::default(),
        }
    }
}

impl Default for ConsoleState {
    fn default() -> Self {
        Self::new()
    }
}

/// The console's routes, merged into the node's HTTP router.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/login",
            get(pages::login_page)
                .post(pages::login)
                .layer(DefaultBodyLimit::max(auth::LOGIN_BODY_BYTES_MAX)),
        )
        .route("/login/oidc", get(oidc::start))
        .route("/login/oidc/callback", get(oidc::callback))
        .route("/logout", post(pages::logout))
        .route("/console", get(pages::timeline))
        .route("/console/live/timeline", get(pages::timeline_live))
        .route("/console/live/alarm", get(pages::alarm_live))
        .route("/console/live/queue", get(pages::queue_live))
        .route("/console/live/status", get(pages::status_live))
        .route("/console/alarm/silence", post(pages::silence))
        .route("/console/live/link", get(records::link_live))
        .route("/console/live/messages/{id}", get(pages::message_live))
        .route("/console/events", get(sse::events))
        .route("/console/messages/{id}", get(pages::message))
        .route("/console/messages/{id}/receipt", post(pages::receipt))
        .route(
            "/console/compose",
            get(pages::compose).post(pages::compose_send),
        )
        .route("/console/compose/map", get(pages::compose_map_live))
        .route("/console/link", get(records::link))
        .route("/console/transcript", get(records::transcript))
        .route("/console/transcript/export", get(records::export))
        .route("/console/counterparts", get(records::counterparts))
        .route("/console/audit", get(records::audit_log))
        .route("/console/audit/export.csv", get(records::audit_csv))
        .route("/console/users", get(users::page).post(users::post))
        .route("/console/lang", post(pages::set_lang))
        .route("/console/tz", post(pages::set_tz))
        .route("/console/density", post(pages::set_density))
        .route("/console/settings", get(pages::settings))
        .route(
            "/console/handover",
            get(handover::page).post(handover::post),
        )
        .route("/console/messages/{id}/print", get(pages::message_print))
        .route("/console/assets/{name}", get(asset))
}

/// Security headers on every answer, pages and API alike.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ALARM_WAV: &[u8] = include_bytes!("assets/alarm.wav");

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (kind, body): (&'static str, &'static [u8]) = match name.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS.as_bytes()),
        "app.css" => ("text/css; charset=utf-8", APP_CSS.as_bytes()),
        "alarm.wav" => ("audio/wav", ALARM_WAV),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A `Set-Cookie` value with the attributes every console cookie carries.
pub fn set_cookie(shared: &Shared, name: &str, value: &str, max_age_s: i64) -> String {
    let secure = if shared.console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}")
}

/// What a page route answers without a live session: to the login page.
pub struct NoSession;

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        Redirect::to("/login").into_response()
    }
}

impl FromRequestParts<Arc<Shared>> for Operator {
    type Rejection = NoSession;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        session_operator(shared, &parts.headers)
            .await
            .ok_or(NoSession)
    }
}
