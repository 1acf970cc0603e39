//! The console's pages and the forms they post. Every handler takes an [`Operator`] (no
//! session: to the login page) and checks the operator's role itself before acting.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use detente_proto::{MessageId, Precedence, ReceiptLevel};
use detente_store::Store;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth;
use super::html::{csrf_input, live_page, page, url_value};
use super::messages::{self, MessageView};
use super::{audit, cookie, set_cookie, Operator, Source, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::service::{self, SendBody};
use crate::{now_ms, Shared};

/// Messages on one timeline page (older ones are on the next pages).
pub const TIMELINE_PAGE_ROWS: u32 = 50;
/// Answers shown under one message, at most.
const THREAD_REPLIES_MAX: u32 = 100;
/// Longest topic (or peer name) accepted as a timeline filter; a longer one is ignored.
const FILTER_TOPIC_BYTES_MAX: usize = 256;
/// Longest search accepted; a longer one is ignored.
const FILTER_SEARCH_BYTES_MAX: usize = 512;
/// Envelopes per stream checked on the transcript page (the newest).
pub const VERIFY_TAIL_MAX: u64 = 200;
/// Longest topic accepted from the compose form.
pub const TOPIC_CHARS_MAX: usize = 64;
/// Longest free text accepted from the compose form.
pub const TEXT_CHARS_MAX: usize = 16_000;
/// Longest receipt note.
pub const NOTE_CHARS_MAX: usize = 2_000;

type Shr = State<Arc<Shared>>;

pub(super) fn tr(shared: &Shared, op: &Operator, key: &str) -> String {
    shared.console.i18n.text(&op.lang, key)
}

pub(super) fn tr_with(
    shared: &Shared,
    op: &Operator,
    key: &str,
    args: &[(&str, String)],
) -> String {
    shared.console.i18n.text_with(&op.lang, key, args)
}

pub(super) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A page-level refusal in the operator's language.
pub(super) fn refuse(shared: &Shared, op: &Operator, status: StatusCode, key: &str) -> Response {
    let title = tr(shared, op, "refused-title");
    let main = html! { p.error role="alert" { (tr(shared, op, key)) } };
    html(status, page(shared, Some(op), &title, main))
}

fn bad_csrf(shared: &Shared, op: &Operator) -> Response {
    refuse(shared, op, StatusCode::FORBIDDEN, "csrf-refused")
}

// ---------------------------------------------------------------- login and logout

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

fn login_form(shared: &Shared, lang: &str, csrf: &str, error: Option<&str>, login: &str) -> String {
    let t = |k: &str| shared.console.i18n.text(lang, k);
    let described = error.map(|_| "login-error");
    let main = html! {
        @if let Some(e) = error { p.error #login-error role="alert" { (e) } }
        form.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            p {
                label for="login" { (t("login-name")) }
                input #login name="login" autocomplete="username" required value=(login)
                    aria-describedby=[described];
            }
            p {
                label for="password" { (t("password")) }
                input #password name="password" type="password" autocomplete="current-password"
                    required aria-describedby=[described];
            }
            p { button type="submit" #login-submit { (t("login-submit")) } }
        }
        (super::oidc::login_link(shared, lang))
    };
    page(shared, None, &t("login-title"), main)
}

pub async fn login_page(State(shared): Shr, headers: HeaderMap) -> Response {
    if super::session_operator(&shared, &headers).await.is_some() {
        return Redirect::to("/console").into_response();
    }
    let csrf = auth::random_token();
    let lang = super::html::node_lang(&shared);
    let body = login_form(&shared, &lang, &csrf, None, "");
    let mut response = html(StatusCode::OK, body);
    if let Ok(v) = set_cookie(&shared, LOGIN_CSRF_COOKIE, &csrf, 3600).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// A PHC string to verify against when the login does not exist, so that an unknown login
/// costs the same time as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| auth::hash_password("not a password of anyone").unwrap_or_default())
}

/// The login name as the audit log records it: capped, and only if it could be a login.
fn audit_name(login: &str) -> String {
    if auth::valid_login(login) {
        login.to_string()
    } else {
        format!("(not a login name, {} bytes)", login.len())
    }
}

fn login_refused(
    shared: &Shared,
    lang: &str,
    csrf: &str,
    status: StatusCode,
    key: &str,
    login: &str,
) -> Response {
    let shown = if auth::valid_login(login) { login } else { "" };
    let text = shared.console.i18n.text(lang, key);
    let mut r = html(status, login_form(shared, lang, csrf, Some(&text), shown));
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        let after = if status == StatusCode::TOO_MANY_REQUESTS {
            "60"
        } else {
            "1"
        };
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static(after));
    }
    r
}

pub async fn login(
    State(shared): Shr,
    Source(source): Source,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = super::html::node_lang(&shared);
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !auth::same_secret(&form.csrf, expected) {
        let t = shared.console.i18n.text(&lang, "csrf-refused");
        return html(
            StatusCode::FORBIDDEN,
            login_form(&shared, &lang, expected, Some(&t), ""),
        );
    }
    let login = form.login.trim();
    let now = now_ms();
    // Checked and recorded at once: parallel guesses each use up an attempt.
    let source_attempts = match shared.console.limiter.begin(login, source, now) {
        auth::Attempt::Allowed { source_attempts } => source_attempts,
        auth::Attempt::Throttled { first } => {
            if first {
                audit(&shared, &audit_name(login), "login-throttled", "", source).await;
            }
            let status = StatusCode::TOO_MANY_REQUESTS;
            return login_refused(&shared, &lang, expected, status, "login-throttled", login);
        }
    };
    let user = if auth::valid_login(login) {
        shared.store.user(login).await.ok().flatten()
    } else {
        None
    };
    let stored = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |u| u.password_hash.clone());
    let password = form.password;
    let checked = shared
        .console
        .passwords
        .run(move || auth::verify_password(&password, &stored))
        .await;
    let Ok(matches) = checked else {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return login_refused(&shared, &lang, expected, status, "login-busy", login);
    };
    let Some(user) = user.filter(|_| matches) else {
        // One audit row for the first failure from this address in the window and one
        // per LOGIN_FAILURES_PER_AUDIT_ROW after it, each saying how many there were.
        if source_attempts % auth::LOGIN_FAILURES_PER_AUDIT_ROW == 1 {
            let detail = format!("{source_attempts} attempts from this address in the window");
            audit(&shared, &audit_name(login), "login-failed", &detail, source).await;
        }
        let status = StatusCode::UNAUTHORIZED;
        return login_refused(&shared, &lang, expected, status, "login-failed", login);
    };
    shared.console.limiter.succeeded(login, source);
    start_session(&shared, &lang, expected, user, source, now).await
}

async fn start_session(
    shared: &Shared,
    lang: &str,
    expected: &str,
    user: detente_store::console::UserRow,
    source: std::net::IpAddr,
    now: u64,
) -> Response {
    let token = auth::random_token();
    let session = detente_store::console::SessionRow {
        token_hash: auth::token_hash(&token),
        login: user.login.clone(),
        csrf: auth::random_token(),
        created_at_ms: now as i64,
        expires_at_ms: now as i64 + auth::SESSION_MS,
    };
    if let Err(e) = shared.store.create_session(&session).await {
        tracing::error!(error = %e, "cannot store a session");
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return login_refused(
            shared,
            lang,
            expected,
            status,
            "store-unavailable",
            &user.login,
        );
    }
    audit(shared, &user.login, "login", &user.role, source).await;
    let mut response = Redirect::to("/console").into_response();
    let h = response.headers_mut();
    let max_age = auth::SESSION_MS / 1000;
    for value in [
        set_cookie(shared, SESSION_COOKIE, &token, max_age),
        set_cookie(shared, LOGIN_CSRF_COOKIE, "", 0),
    ] {
        if let Ok(v) = value.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    let _ = shared.store.delete_session(op.token_hash).await;
    // The session's open event streams end now, not at their next check.
    shared.console.streams.end_session(op.token_hash);
    audit(&shared, &op.login, "logout", "", source).await;
    // A session signed in through the provider ends there too (console/oidc.rs).
    let mut response = match shared.console.oidc.take_logout(op.token_hash) {
        Some(url) => super::oidc::logout_page(&shared, &op.lang, &url),
        None => Redirect::to("/login").into_response(),
    };
    if let Ok(v) = set_cookie(&shared, SESSION_COOKIE, "", 0).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
pub struct LangForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    lang: String,
}

pub async fn set_lang(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(form): Form<LangForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    if !super::i18n::supported(&form.lang) {
        return refuse(&shared, &op, StatusCode::BAD_REQUEST, "language-unknown");
    }
    if shared
        .store
        .set_user_lang(&op.login, &form.lang)
        .await
        .is_err()
    {
        return refuse(
            &shared,
            &op,
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
        );
    }
    audit(&shared, &op.login, "language", &form.lang, source).await;
    Redirect::to("/console").into_response()
}

// ---------------------------------------------------------------- messages as shown

/// A time zone's name in the operator's language ("北京时间", "Eastern Time"), from the
/// formats crate's table (the one notifications and the command line use too); its
/// abbreviation otherwise.
pub(super) fn tz_label(lang: &str, tz_name: &str, abbreviation: &str) -> String {
    detente_formats::zone_name(lang, tz_name).unwrap_or_else(|| abbreviation.to_string())
}

/// A language's name in the operator's language ("英语" for `en`); the tag otherwise.
pub fn language_name(shared: &Shared, lang: &str, tag: &str) -> String {
    let key = format!("language-name-{tag}");
    let name = shared.console.i18n.text(lang, &key);
    if name == key {
        tag.to_string()
    } else {
        name
    }
}

/// "2026-11-29 03:10:00 UTC · 2026-11-29 11:10:00 北京时间" in the operator's time zone
/// (the node's unless they chose another), named in the operator's language.
pub(super) fn both_times(shared: &Shared, op: &Operator, ms: i64) -> String {
    let lang = op.lang.as_str();
    let tz_name = operator_tz(shared, op);
    let Ok(ts) = jiff::Timestamp::from_millisecond(ms) else {
        return ms.to_string();
    };
    let utc = ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    match jiff::tz::TimeZone::get(&tz_name) {
        Ok(tz) if tz_name != "UTC" => {
            let zoned = ts.to_zoned(tz);
            let local = zoned.strftime("%Y-%m-%d %H:%M:%S").to_string();
            let abbreviation = zoned.strftime("%Z").to_string();
            let zone = tz_label(lang, &tz_name, &abbreviation);
            format!("{utc} · {local} {zone}")
        }
        _ => utc,
    }
}

/// A time as both clocks show it, in a `<time>` element that carries its ISO value.
pub(super) fn time_markup(shared: &Shared, op: &Operator, ms: i64) -> Markup {
    html! { time datetime=(crate::time_text(ms)) { (both_times(shared, op, ms)) } }
}

/// "1h 02m 03s".
pub fn duration_text(ms: i64) -> String {
    duration_with(ms, ["h", "m", "s"])
}

/// The units of durations in `lang` ("h m s", "小时 分 秒"), as the page's script uses them too.
pub fn duration_units(shared: &Shared, lang: &str) -> [String; 3] {
    ["unit-h", "unit-m", "unit-s"].map(|k| shared.console.i18n.text(lang, k))
}

/// A duration in the operator's language: "1h 02m 03s", "1小时 02分 03秒".
pub fn duration_words(shared: &Shared, lang: &str, ms: i64) -> String {
    let [h, m, s] = duration_units(shared, lang);
    duration_with(ms, [h.as_str(), m.as_str(), s.as_str()])
}

fn duration_with(ms: i64, [uh, um, us]: [&str; 3]) -> String {
    let s = ms.max(0) / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}{uh} {m:02}{um} {s:02}{us}")
    } else if m > 0 {
        format!("{m}{um} {s:02}{us}")
    } else {
        format!("{s}{us}")
    }
}

// ---------------------------------------------------------------- timeline

/// The timeline's filters and page cursor, from the query string.
#[derive(Deserialize, Default, Clone)]
pub struct TimelineFilter {
    #[serde(default)]
    peer: String,
    #[serde(default)]
    precedence: String,
    #[serde(default)]
    direction: String,
    /// `yes`, `no` or empty.
    #[serde(default)]
    answered: String,
    #[serde(default)]
    topic: String,
    /// Words to search for (each must be found).
    #[serde(default)]
    q: String,
    /// `CREATED.SENDERHEX.SEQ` of the last row of the previous page.
    #[serde(default)]
    before: String,
}

impl TimelineFilter {
    fn query(&self) -> detente_store::TimelineQuery {
        let text = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
        detente_store::TimelineQuery {
            peer: text(&self.peer).filter(|p| p.len() <= FILTER_TOPIC_BYTES_MAX),
            direction: match self.direction.as_str() {
                "in" => Some(detente_store::Direction::In),
                "out" => Some(detente_store::Direction::Out),
                _ => None,
            },
            precedence: Precedence::parse(&self.precedence).map(|p| p as u8),
            topic: text(&self.topic).filter(|t| t.len() <= FILTER_TOPIC_BYTES_MAX),
            answered: match self.answered.as_str() {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            },
            before: parse_cursor(&self.before),
            text: self
                .search()
                .map_or_else(Vec::new, detente_store::console::search_terms),
            limit: TIMELINE_PAGE_ROWS,
        }
    }

    /// The search, if there is one (a longer one is ignored).
    fn search(&self) -> Option<&str> {
        Some(self.q.trim()).filter(|q| !q.is_empty() && q.len() <= FILTER_SEARCH_BYTES_MAX)
    }

    /// The filters as a query string (without the cursor), `&`-separated and escaped.
    fn params(&self) -> String {
        [
            ("q", &self.q),
            ("peer", &self.peer),
            ("precedence", &self.precedence),
            ("direction", &self.direction),
            ("answered", &self.answered),
            ("topic", &self.topic),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", url_value(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

fn parse_cursor(text: &str) -> Option<(i64, [u8; 32], u64)> {
    let mut parts = text.splitn(3, '.');
    let created = parts.next()?.parse().ok()?;
    let sender: [u8; 32] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((created, sender, seq))
}

fn select_filter(
    shared: &Shared,
    op: &Operator,
    name: &str,
    chosen: &str,
    options: &[(String, String)],
) -> Markup {
    let id = format!("filter-{name}");
    html! {
        p {
            label for=(id) { (tr(shared, op, &id)) }
            select id=(id) name=(name) {
                option value="" { (tr(shared, op, "filter-all")) }
                @for (value, label) in options {
                    option value=(value) selected[value == chosen] { (label) }
                }
            }
        }
    }
}

fn filter_form(shared: &Shared, op: &Operator, f: &TimelineFilter) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let peers: Vec<(String, String)> = shared
        .table
        .all()
        .iter()
        .map(|e| (e.name.clone(), e.name.clone()))
        .collect();
    let precedences: Vec<(String, String)> = Precedence::ALL
        .iter()
        .map(|p| (p.name().to_string(), t(&format!("prec-{}", p.name()))))
        .collect();
    let directions = [
        ("in".to_string(), t("filter-direction-in")),
        ("out".to_string(), t("filter-direction-out")),
    ];
    let answered = [
        ("no".to_string(), t("state-unanswered")),
        ("yes".to_string(), t("state-answered")),
    ];
    html! {
        form.filters method="get" action="/console" aria-label=(t("filter-label")) {
            p.search {
                label for="filter-q" { (t("filter-search")) }
                input #filter-q type="search" name="q" maxlength=(FILTER_SEARCH_BYTES_MAX) value=(f.q);
            }
            (select_filter(shared, op, "peer", &f.peer, &peers))
            (select_filter(shared, op, "precedence", &f.precedence, &precedences))
            (select_filter(shared, op, "direction", &f.direction, &directions))
            (select_filter(shared, op, "answered", &f.answered, &answered))
            p {
                label for="filter-topic" { (t("filter-topic")) }
                input #filter-topic name="topic" maxlength=(FILTER_TOPIC_BYTES_MAX) value=(f.topic);
            }
            p {
                button type="submit" #filter-apply { (t("filter-apply")) } " "
                a href="/console" { (t("filter-clear")) }
            }
        }
    }
}

/// One page of the timeline, newest first (a night shift reads the top of the page), with a
/// link to the next, older page when there may be one.
async fn timeline_html(shared: &Shared, op: &Operator, f: &TimelineFilter) -> Markup {
    // A search first indexes what arrived since the last one (bounded; see search.rs).
    let complete = f.search().is_none() || super::search::catch_up(shared).await;
    let rows = shared.store.timeline(f.query()).await.unwrap_or_default();
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Ok(v) = service::message_json(shared, row, Some(&op.lang)).await {
            list.push(MessageView::from_json(&v));
        }
    }
    let older = rows
        .last()
        .filter(|_| rows.len() as u32 >= TIMELINE_PAGE_ROWS)
        .map(|last| {
            let cursor = format!(
                "{}.{}.{}",
                last.created_at_ms,
                hex::encode(last.sender),
                last.seq
            );
            let params = f.params();
            let sep = if params.is_empty() { "" } else { "&" };
            format!("/console?{params}{sep}before={}", url_value(&cursor))
        });
    let empty = if f.search().is_some() {
        "search-none"
    } else {
        "timeline-empty"
    };
    html! {
        @if !complete { p.hint #search-incomplete { (tr(shared, op, "search-incomplete")) } }
        @if list.is_empty() {
            p.empty { (tr(shared, op, empty)) }
        } @else {
            ol.timeline aria-label=(tr(shared, op, "timeline-label")) {
                @for m in &list { (messages::item(shared, op, m)) }
            }
            @if let Some(href) = older {
                nav.pager aria-label=(tr(shared, op, "pager-label")) {
                    a #older rel="next" href=(href) { (tr(shared, op, "pager-older")) }
                }
            }
        }
    }
}

pub async fn timeline(
    State(shared): Shr,
    op: Operator,
    Query(f): Query<TimelineFilter>,
) -> Response {
    let inner = timeline_html(&shared, &op, &f).await;
    // Only the newest page follows the channel live; an older page stays where it is.
    let newest = f.before.is_empty();
    let live = newest.then(|| format!("/console/live/timeline?{}", f.params()));
    let main = html! {
        (filter_form(&shared, &op, &f))
        @if !newest {
            p { a #newest href={ "/console?" (f.params()) } { (tr(&shared, &op, "pager-newest")) } }
        }
        div #live data-live=[live] aria-live=[newest.then_some("polite")] { (inner) }
    };
    let title = tr(&shared, &op, "nav-timeline");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

pub async fn timeline_live(
    State(shared): Shr,
    op: Operator,
    Query(f): Query<TimelineFilter>,
) -> Response {
    html(
        StatusCode::OK,
        timeline_html(&shared, &op, &f).await.into_string(),
    )
}

// ---------------------------------------------------------------- queue, alarm, status

pub async fn alarm_live(State(shared): Shr, op: Operator) -> Response {
    let q = super::queue::load(&shared, &op).await;
    html(StatusCode::OK, super::queue::alarm_html(&shared, &op, &q))
}

pub async fn queue_live(State(shared): Shr, op: Operator) -> Response {
    let q = super::queue::load(&shared, &op).await;
    html(StatusCode::OK, super::queue::queue_html(&shared, &op, &q))
}

pub async fn status_live(State(shared): Shr, op: Operator) -> Response {
    html(StatusCode::OK, super::status::status_html(&shared, &op))
}

#[derive(Deserialize)]
pub struct SilenceForm {
    #[serde(default)]
    csrf: String,
    /// Message ids, comma-separated.
    #[serde(default)]
    ids: String,
}

/// FLASH alerts silenced in one request, at most.
const SILENCE_IDS_MAX: usize = 32;

/// Silence the repeating FLASH sound for these alerts (the alerts stay until answered).
/// Recorded in the audit log: who chose not to hear an unanswered FLASH, and when. A script
/// asks with `X-Requested-With: fetch` and gets 204; a plain form goes back to the timeline.
pub async fn silence(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    headers: HeaderMap,
    Form(form): Form<SilenceForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    let ids: Vec<&str> = form.ids.split(',').filter(|i| !i.is_empty()).collect();
    if ids.is_empty()
        || ids.len() > SILENCE_IDS_MAX
        || ids.iter().any(|i| MessageId::from_hex(i).is_none())
    {
        return refuse(&shared, &op, StatusCode::BAD_REQUEST, "message-unknown");
    }
    audit(&shared, &op.login, "silence", &ids.join(" "), source).await;
    if headers
        .get("x-requested-with")
        .is_some_and(|v| v == "fetch")
    {
        return StatusCode::NO_CONTENT.into_response();
    }
    Redirect::to("/console").into_response()
}

/// A short time for the status light and the queue, in the operator's time zone.
pub fn clock_text(shared: &Shared, op: &Operator, ms: i64) -> String {
    both_times(shared, op, ms)
}

// ---------------------------------------------------------------- one message

/// A message on its own page, with what it answers and the answers to it, read by id (never
/// by walking the channel).
async fn message_detail(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let parent = match &m.in_reply_to {
        Some(parent) => find_message(shared, op, parent).await,
        None => None,
    };
    let mut replies = Vec::new();
    if let Some(id) = MessageId::from_hex(&m.id) {
        let rows = shared
            .store
            .replies(id.0, THREAD_REPLIES_MAX)
            .await
            .unwrap_or_default();
        for row in &rows {
            if let Ok(v) = service::message_json(shared, row, Some(&op.lang)).await {
                replies.push(MessageView::from_json(&v));
            }
        }
    }
    messages::detail(shared, op, m, parent.as_ref(), &replies)
}

async fn find_message(shared: &Shared, op: &Operator, id: &str) -> Option<MessageView> {
    let id = MessageId::from_hex(id)?;
    let row = shared.store.message(id.0).await.ok().flatten()?;
    if row.kind == 1 || row.kind == 2 {
        return None;
    }
    let json = service::message_json(shared, &row, Some(&op.lang))
        .await
        .ok()?;
    Some(MessageView::from_json(&json))
}

pub async fn message(State(shared): Shr, op: Operator, Path(id): Path<String>) -> Response {
    let Some(m) = find_message(&shared, &op, &id).await else {
        return refuse(&shared, &op, StatusCode::NOT_FOUND, "message-unknown");
    };
    let detail = message_detail(&shared, &op, &m).await;
    // The answer form stays outside the live region, so that a refresh never wipes a note
    // being typed.
    let main = html! {
        div #live data-live={ "/console/live/messages/" (m.id) } aria-live="polite" { (detail) }
        (messages::answer_form(&shared, &op, &m))
    };
    let title = tr(&shared, &op, "message-title");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

pub async fn message_live(State(shared): Shr, op: Operator, Path(id): Path<String>) -> Response {
    let Some(m) = find_message(&shared, &op, &id).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let detail = message_detail(&shared, &op, &m).await;
    html(StatusCode::OK, detail.into_string())
}

/// The conversation around a message, for printing: what it answers, the message, and the
/// answers to it, with receipts and times, on a page with nothing live and nothing to click.
pub async fn message_print(State(shared): Shr, op: Operator, Path(id): Path<String>) -> Response {
    let Some(m) = find_message(&shared, &op, &id).await else {
        return refuse(&shared, &op, StatusCode::NOT_FOUND, "message-unknown");
    };
    let detail = message_detail(&shared, &op, &m).await;
    let printed = tr_with(
        &shared,
        &op,
        "print-by",
        &[
            ("login", op.login.clone()),
            ("time", both_times(&shared, &op, now_ms() as i64)),
        ],
    );
    let title = tr(&shared, &op, "print-title");
    html(
        StatusCode::OK,
        super::html::print_page(&shared, &op, &title, detail, &printed),
    )
}

/// This browser's alarm settings: the volume, a sound test, desktop notifications (the
/// script keeps them in the browser; a click asks for the notification permission).
pub async fn settings(State(shared): Shr, op: Operator) -> Response {
    let t = |k: &str| tr(&shared, &op, k);
    let main = html! {
        section.settings aria-labelledby="settings-sound" {
            h2 #settings-sound { (t("settings-sound")) }
            p {
                label for="volume" { (t("settings-volume")) } " "
                input #volume type="range" min="0" max="100" step="5";
            }
            p { button type="button" #sound-test { (t("settings-sound-test")) } }
        }
        section.settings aria-labelledby="settings-notify" {
            h2 #settings-notify { (t("settings-notify")) }
            p { (t("settings-notify-intro")) }
            p {
                button type="button" #notify-enable { (t("settings-notify-enable")) } " "
                span #notify-state role="status"
                    data-granted=(t("settings-notify-granted")) data-denied=(t("settings-notify-denied"))
                    data-default=(t("settings-notify-default")) data-unsupported=(t("settings-notify-unsupported")) {}
            }
        }
    };
    let (value, key) = if op.compact {
        ("comfortable", "density-comfortable")
    } else {
        ("compact", "density-compact")
    };
    let main = html! {
        (main)
        section.settings aria-labelledby="settings-display" {
            h2 #settings-display { (t("settings-display")) }
            form method="post" action="/console/density" {
                (csrf_input(&op))
                input type="hidden" name="density" value=(value);
                button type="submit" #density { (t(key)) }
            }
        }
    };
    let main = html! {
        (main)
        (time_zone_settings(&shared, &op))
    };
    let title = t("nav-settings");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

/// The zones an operator may choose: the bundled database's regional names (no legacy
/// aliases such as `US/Eastern` or `Etc/GMT+5`) and UTC, sorted.
fn selectable_zones() -> Vec<String> {
    const REGIONS: &[&str] = &[
        "Africa/",
        "America/",
        "Antarctica/",
        "Arctic/",
        "Asia/",
        "Atlantic/",
        "Australia/",
        "Europe/",
        "Indian/",
        "Pacific/",
    ];
    let mut zones: Vec<String> = jiff::tz::db()
        .available()
        .map(|name| name.as_str().to_string())
        .filter(|name| REGIONS.iter().any(|r| name.starts_with(r)))
        .collect();
    zones.push("UTC".into());
    zones.sort();
    zones.dedup();
    zones
}

/// The time zone this operator reads and picks times in: the node's, or one they choose
/// (kept with their account, so it follows them to any browser).
fn time_zone_settings(shared: &Shared, op: &Operator) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let node = node_tz(shared);
    let node_zone = tz_label(&op.lang, &node, &node);
    let chosen = operator_tz(shared, op);
    let own = !op.tz.is_empty() && chosen == op.tz;
    let zones = selectable_zones();
    let labels = detente_formats::zone_names(&op.lang, zones.iter().map(String::as_str));
    html! {
        section.settings aria-labelledby="settings-time" {
            h2 #settings-time { (t("settings-time")) }
            p { (tr_with(shared, op, "settings-time-intro", &[("zone", tz_label(&op.lang, &chosen, &chosen))])) }
            form method="post" action="/console/tz" {
                (csrf_input(op))
                label for="tz" { (t("settings-time-zone")) } " "
                select #tz name="tz" {
                    option value="" selected[!own] {
                        (tr_with(shared, op, "settings-time-node", &[("zone", node_zone)]))
                    }
                    @for (zone, label) in zones.iter().zip(&labels) {
                        option value=(zone) selected[own && *zone == chosen] translate="no" {
                            (zone) @if let Some(label) = label { " · " (label) }
                        }
                    }
                }
                " "
                button type="submit" #tz-save { (t("settings-time-save")) }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct TzForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tz: String,
}

/// Choose the time zone this operator reads times in (empty: the node's); audited.
pub async fn set_tz(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(form): Form<TzForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    if !form.tz.is_empty() && detente_formats::check_zone(&form.tz).is_err() {
        return refuse(&shared, &op, StatusCode::BAD_REQUEST, "time-zone-unknown");
    }
    if shared.store.set_user_tz(&op.login, &form.tz).await.is_err() {
        return refuse(
            &shared,
            &op,
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
        );
    }
    let detail = if form.tz.is_empty() {
        "node"
    } else {
        form.tz.as_str()
    };
    audit(&shared, &op.login, "time-zone", detail, source).await;
    Redirect::to("/console/settings").into_response()
}

#[derive(Deserialize)]
pub struct DensityForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    density: String,
}

/// Remember this browser's display density (a cookie: a choice of screen, not of person).
pub async fn set_density(
    State(shared): Shr,
    op: Operator,
    Form(form): Form<DensityForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    let value = if form.density == "compact" {
        "compact"
    } else {
        "comfortable"
    };
    let mut response = Redirect::to("/console").into_response();
    let cookie = set_cookie(&shared, super::DENSITY_COOKIE, value, 365 * 24 * 3600);
    if let Ok(v) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// A decline cannot be taken back: ask first, carrying the note typed so far.
async fn decline_confirmation(shared: &Shared, op: &Operator, id: &str, note: &str) -> Response {
    let Some(m) = find_message(shared, op, id).await else {
        return refuse(shared, op, StatusCode::NOT_FOUND, "message-unknown");
    };
    let main = messages::decline_confirmation(shared, op, &m, note);
    let title = tr(shared, op, "decline-confirm-title");
    html(StatusCode::OK, live_page(shared, op, &title, main).await)
}

#[derive(Deserialize)]
pub struct ReceiptForm {
    #[serde(default)]
    csrf: String,
    /// `yes` once the operator confirmed a decline.
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    note: String,
}

pub async fn receipt(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Path(id): Path<String>,
    Form(form): Form<ReceiptForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    let level = match ReceiptLevel::parse(&form.level) {
        Some(ReceiptLevel::Read) if op.role.can_mark_read() => ReceiptLevel::Read,
        Some(l @ (ReceiptLevel::Acknowledged | ReceiptLevel::Declined)) if op.role.can_answer() => {
            l
        }
        Some(ReceiptLevel::Read | ReceiptLevel::Acknowledged | ReceiptLevel::Declined) => {
            audit(
                &shared,
                &op.login,
                "refused",
                &format!("{} {id}", form.level),
                source,
            )
            .await;
            return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-answer");
        }
        _ => return refuse(&shared, &op, StatusCode::BAD_REQUEST, "level-unknown"),
    };
    let Some(message_id) = MessageId::from_hex(&id) else {
        return refuse(&shared, &op, StatusCode::NOT_FOUND, "message-unknown");
    };
    if form.note.chars().count() > NOTE_CHARS_MAX {
        return refuse(
            &shared,
            &op,
            StatusCode::UNPROCESSABLE_ENTITY,
            "note-too-long",
        );
    }
    if level == ReceiptLevel::Declined && form.confirm != "yes" {
        return decline_confirmation(&shared, &op, &id, &form.note).await;
    }
    let note = Some(form.note.trim().to_string()).filter(|n| !n.is_empty());
    match service::answer(&shared, message_id, level, note.clone()).await {
        Ok(_) => {
            let detail = format!("{} {id} {}", level.name(), note.unwrap_or_default());
            audit(&shared, &op.login, "receipt", &detail, source).await;
            Redirect::to(&format!("/console/messages/{id}")).into_response()
        }
        Err(e) => {
            let main = html! { p.error role="alert" { (e.to_string()) } };
            let title = tr(&shared, &op, "refused-title");
            html(e.status(), live_page(&shared, &op, &title, main).await)
        }
    }
}

// ---------------------------------------------------------------- compose

/// The compose form as posted (or as a query, to start from a reply or a format).
#[derive(Default, Clone)]
pub struct ComposeForm {
    csrf: String,
    to: String,
    precedence: String,
    topic: String,
    text: String,
    lang: String,
    reply_to: String,
    /// A notification format id; empty for free text.
    format: String,
    /// The format's fields (`f.KEY` in the form), by key.
    fields: BTreeMap<String, String>,
    /// Times picked in the node's time zone (`fl.KEY`, `fl.KEY.start`, `fl.KEY.end`), by
    /// what follows `fl.`: turned into the UTC fields they stand for before checking.
    local_times: BTreeMap<String, String>,
    /// `map`: show the typed areas and points on the map instead of sending.
    preview: String,
}

/// Fields of one form, at most (a format has far fewer).
const FORM_PAIRS_MAX: usize = 128;

impl ComposeForm {
    /// The form as the browser posted it (`application/x-www-form-urlencoded` pairs), with
    /// the times picked in the node's zone `tz` turned into UTC (what `compose_send` checks;
    /// public for the `console_compose` fuzz target).
    pub fn posted(pairs: Vec<(String, String)>, tz: &str) -> Self {
        let mut form = Self::from_pairs(pairs);
        form.apply_local_times(tz);
        form
    }

    /// The areas and points typed so far, for the map in `lang` (none for free text).
    pub fn shapes(&self, lang: &str) -> Vec<super::map::Shape> {
        match self.format_def() {
            Some(def) => super::map::shapes(&def.id, lang, |k| self.fields.get(k).cloned()),
            None => Vec::new(),
        }
    }

    /// The chosen format's fields as a send takes them: those of `def` typed, trimmed.
    pub fn field_inputs(&self, def: &detente_formats::FormatDef) -> Vec<crate::notify::FieldInput> {
        def.fields
            .iter()
            .filter_map(|field| {
                let value = self.fields.get(&field.key)?.trim();
                (!value.is_empty()).then(|| crate::notify::FieldInput {
                    key: field.key.clone(),
                    value: value.to_string(),
                    translation: None,
                })
            })
            .collect()
    }

    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut form = ComposeForm::default();
        for (k, v) in pairs.into_iter().take(FORM_PAIRS_MAX) {
            match k.as_str() {
                "csrf" => form.csrf = v,
                "to" => form.to = v,
                "precedence" => form.precedence = v,
                "topic" => form.topic = v,
                "text" => form.text = v,
                "lang" => form.lang = v,
                "reply_to" => form.reply_to = v,
                "format" => form.format = v,
                "preview" => form.preview = v,
                _ => {
                    if let Some(key) = k.strip_prefix("f.") {
                        form.fields.insert(key.to_string(), v);
                    } else if let Some(key) = k.strip_prefix("fl.") {
                        form.local_times.insert(key.to_string(), v);
                    }
                }
            }
        }
        form
    }

    /// Fill each empty `datetime` or `window` field from the times picked for it in the
    /// node's time zone `tz`, as UTC. A picked time that does not parse is left out (the
    /// field stays empty and is reported as such).
    fn apply_local_times(&mut self, tz: &str) {
        let Some(def) = self.format_def() else {
            return;
        };
        let Ok(zone) = jiff::tz::TimeZone::get(tz) else {
            return;
        };
        let utc = |local: Option<&String>| -> Option<String> {
            let civil: jiff::civil::DateTime = local?.trim().parse().ok()?;
            let ts = civil.to_zoned(zone.clone()).ok()?.timestamp();
            Some(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        };
        for f in &def.fields {
            let empty = self.fields.get(&f.key).is_none_or(|v| v.trim().is_empty());
            let value = match f.kind.name() {
                "datetime" if empty => utc(self.local_times.get(&f.key)),
                "window" if empty => {
                    let start = utc(self.local_times.get(&format!("{}.start", f.key)));
                    let end = utc(self.local_times.get(&format!("{}.end", f.key)));
                    start.zip(end).map(|(s, e)| format!("{s}/{e}"))
                }
                _ => None,
            };
            if let Some(v) = value {
                self.fields.insert(f.key.clone(), v);
            }
        }
    }

    /// The chosen format, if it is one of the catalogue's.
    pub fn format_def(&self) -> Option<&'static detente_formats::FormatDef> {
        if self.format.is_empty() || self.format == "text" {
            return None;
        }
        detente_formats::builtin().latest(&self.format)
    }
}

/// Errors by field id (`to`, `text`, `f-position`, ...).
type FieldErrors = BTreeMap<String, String>;

/// How one form field stands: its error, if any, and what describes it (its help and its
/// error), for the `aria-` attributes.
struct FieldState<'a> {
    error: Option<&'a str>,
    described: Option<String>,
    error_id: String,
}

fn field_state<'a>(errors: &'a FieldErrors, key: &str, help: Option<&str>) -> FieldState<'a> {
    let error = errors.get(key).map(String::as_str);
    let error_id = format!("err-{key}");
    let ids: Vec<&str> = help
        .into_iter()
        .chain(error.map(|_| error_id.as_str()))
        .collect();
    FieldState {
        described: Some(ids.join(" ")).filter(|d| !d.is_empty()),
        error,
        error_id,
    }
}

impl FieldState<'_> {
    fn invalid(&self) -> Option<&'static str> {
        self.error.map(|_| "true")
    }

    /// The error next to its field, announced when the page shows.
    fn message(&self) -> Markup {
        html! {
            @if let Some(e) = self.error {
                span.field-error id=(self.error_id) role="alert" { (e) }
            }
        }
    }
}

/// The node's time zone (the one its officers read times in unless they choose another).
pub(super) fn node_tz(shared: &Shared) -> String {
    shared
        .config
        .read()
        .map(|c| c.tz.clone())
        .unwrap_or_else(|_| "UTC".into())
}

/// The time zone `op` reads times in and picks them in: the one chosen in the settings,
/// or the node's (also when a chosen name is no longer in the time-zone database).
pub(super) fn operator_tz(shared: &Shared, op: &Operator) -> String {
    if !op.tz.is_empty() && jiff::tz::TimeZone::get(&op.tz).is_ok() {
        op.tz.clone()
    } else {
        node_tz(shared)
    }
}

/// Pickers for a `datetime` or `window` field in the operator's time zone, named in the
/// operator's language; the server turns what is picked into the UTC field. Beside each,
/// an `output` the page's script fills with the picked time as UTC while it is picked
/// (`data-tz` names the zone, which need not be the browser's).
fn local_pickers(shared: &Shared, op: &Operator, key: &str, type_name: &str) -> Markup {
    let tz = operator_tz(shared, op);
    let zone = tz_label(&op.lang, &tz, &tz);
    let parts: &[(&str, &str)] = match type_name {
        "datetime" => &[("", "compose-local-time")],
        "window" => &[
            (".start", "compose-local-start"),
            (".end", "compose-local-end"),
        ],
        _ => &[],
    };
    html! {
        @if !parts.is_empty() && tz != "UTC" {
            span.local-pickers {
                @for (suffix, label) in parts {
                    @let id = format!("fl-{key}{}", suffix.replace('.', "-"));
                    label for=(id) { (tr_with(shared, op, label, &[("zone", zone.clone())])) } " "
                    input type="datetime-local" id=(id) name={ "fl." (key) (suffix) }
                        data-tz=(tz) data-utc-echo={ (id) "-utc" };
                    " "
                    output.utc-echo id={ (id) "-utc" } for=(id) aria-live="polite" {}
                    " "
                }
            }
        }
    }
}

/// The format chooser: a small GET form, so it works without script.
fn format_chooser(
    shared: &Shared,
    op: &Operator,
    form: &ComposeForm,
    errors: &FieldErrors,
) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let formats: Vec<(&str, String)> = detente_formats::builtin()
        .formats()
        .iter()
        .filter(|def| def.id != "text")
        .map(|def| {
            (
                def.id.as_str(),
                detente_formats::describe(def, &op.lang).title,
            )
        })
        .collect();
    html! {
        form.chooser method="get" action="/console/compose" {
            input type="hidden" name="to" value=(form.to);
            input type="hidden" name="reply_to" value=(form.reply_to);
            p {
                label for="format" { (t("compose-format")) }
                select #format name="format" {
                    option value="" { (t("compose-free-text")) }
                    @for (id, title) in &formats {
                        option value=(id) selected[*id == form.format] { (title) }
                    }
                }
                " " button type="submit" #choose-format { (t("compose-format-use")) }
                (field_state(errors, "format", None).message())
            }
        }
    }
}

/// The fields of a format, each with its label, help, what it accepts, and its error.
fn format_fields(
    shared: &Shared,
    op: &Operator,
    def: &detente_formats::FormatDef,
    form: &ComposeForm,
    errors: &FieldErrors,
) -> Markup {
    let d = detente_formats::describe(def, &op.lang);
    html! {
        fieldset.format {
            legend { (d.title) }
            input type="hidden" name="format" value=(def.id);
            @for f in &d.fields {
                @let id = format!("f-{}", f.key);
                @let help_id = format!("help-{id}");
                @let state = field_state(errors, &id, Some(&help_id));
                @let name = format!("f.{}", f.key);
                @let value = form.fields.get(&f.key).map_or("", String::as_str);
                p {
                    label for=(id) { (f.label) @if f.required { " *" } }
                    @if !f.values.is_empty() {
                        select id=(id) name=(name) aria-invalid=[state.invalid()]
                            aria-describedby=[&state.described] required[f.required] {
                            option value="" { "—" }
                            @for (v, label) in &f.values { option value=(v) selected[v == value] { (label) } }
                        }
                    } @else if f.type_name == "text" {
                        textarea id=(id) name=(name) rows="3" aria-invalid=[state.invalid()]
                            aria-describedby=[&state.described] required[f.required] { (value) }
                    } @else {
                        input id=(id) name=(name) value=(value) aria-invalid=[state.invalid()]
                            aria-describedby=[&state.described] required[f.required]
                            data-geo=[f.type_name.starts_with("geo-").then_some(&f.type_name)];
                        (local_pickers(shared, op, &f.key, &f.type_name))
                    }
                    span.hint id=(help_id) {
                        (f.help)
                        // A select shows its choices in the operator's language; the codes
                        // would not.
                        @if f.values.is_empty() {
                            @if !f.help.is_empty() { " — " }
                            (f.accepts)
                        }
                    }
                    (state.message())
                }
            }
            (map_picker(shared, op, def, &d, form))
        }
    }
}

/// Radius of the circle a click on the map starts in an empty area field, in km.
const PICKED_RADIUS_KM: u32 = 25;

/// The map of the areas and points typed so far (the world before any), for a format with
/// geo fields. With script, a click on it places the chosen field's point (or its circle's
/// centre, or a polygon's next corner) and it redraws as the fields change; without, the
/// button redraws it. The text fields stay the way to type them.
fn map_picker(
    shared: &Shared,
    op: &Operator,
    def: &detente_formats::FormatDef,
    d: &detente_formats::FormatDescription,
    form: &ComposeForm,
) -> Markup {
    let geo: Vec<_> = d
        .fields
        .iter()
        .filter(|f| f.type_name.starts_with("geo-"))
        .collect();
    if geo.is_empty() {
        return html! {};
    }
    let shapes = super::map::shapes(&def.id, &op.lang, |k| form.fields.get(k).cloned());
    let t = |k: &str| tr(shared, op, k);
    html! {
        section.map-preview aria-labelledby="map-preview-title" {
            h2 #map-preview-title { (t("compose-map-preview-title")) }
            p.hint #map-pick-hint hidden { (t("compose-map-hint")) }
            p.map-pick hidden {
                label for="map-target" { (t("compose-map-target")) } " "
                select #map-target aria-describedby="map-pick-hint" {
                    @for f in &geo { option value={ "f-" (f.key) } { (f.label) } }
                }
            }
            div #compose-map-live data-src="/console/compose/map" data-format=(def.id)
                data-radius-km=(PICKED_RADIUS_KM) {
                (super::map::picker(shared, op, &shapes, "compose-map"))
            }
            p {
                button type="submit" name="preview" value="map" #compose-map-preview {
                    (t("compose-map-preview"))
                }
            }
        }
    }
}

/// The compose map alone, redrawn for the fields in the query (the page's script asks for
/// it as they change): the same picker the page shows, as an HTML fragment.
pub async fn compose_map_live(
    State(shared): Shr,
    op: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !op.role.can_compose() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-send");
    }
    let shapes = ComposeForm::from_pairs(q).shapes(&op.lang);
    html(
        StatusCode::OK,
        super::map::picker(&shared, &op, &shapes, "compose-map").into_string(),
    )
}

/// The topics compose offers: `general` and the topic of each format a charter with a peer
/// agrees, sorted, once each; none before any charter is agreed (then the topic is typed).
pub(super) fn charter_topics(shared: &Shared) -> Vec<String> {
    let mut topics = std::collections::BTreeSet::new();
    for entry in shared.table.all() {
        let Some(charter) = shared.charter(&entry.name) else {
            continue;
        };
        topics.insert("general".to_string());
        for f in &charter.formats {
            if let Some(def) = detente_formats::builtin().get(&f.id, f.version) {
                topics.insert(def.topic.clone());
            }
        }
    }
    topics.into_iter().collect()
}

/// A topic's name in the operator's language (`topic-` and the topic); the topic otherwise.
pub fn topic_name(shared: &Shared, lang: &str, topic: &str) -> String {
    let key = format!("topic-{topic}");
    let name = shared.console.i18n.text(lang, &key);
    if name == key {
        topic.to_string()
    } else {
        name
    }
}

/// A topic as shown: its name in the operator's language, or (a topic without a name, as
/// a peer may send) the topic itself, marked as a name not to translate.
pub fn topic_markup(shared: &Shared, lang: &str, topic: &str) -> Markup {
    let name = topic_name(shared, lang, topic);
    html! {
        @if name == topic {
            span translate="no" data-topic=(topic) { (topic) }
        } @else {
            span data-topic=(topic) { (name) }
        }
    }
}

/// The topic: a select of the charter's topics in the operator's language, or a text box
/// when no charter is agreed yet. A posted topic off the list stays choosable (and is
/// reported next to the field).
fn topic_field(shared: &Shared, op: &Operator, shown: &str, state: &FieldState) -> Markup {
    let topics = charter_topics(shared);
    html! {
        p {
            label for="topic" { (tr(shared, op, "topic")) }
            @if topics.is_empty() {
                input #topic name="topic" maxlength=(TOPIC_CHARS_MAX) value=(shown)
                    aria-invalid=[state.invalid()] aria-describedby=[&state.described];
            } @else {
                select #topic name="topic" aria-invalid=[state.invalid()]
                    aria-describedby=[&state.described] {
                    @for topic in &topics {
                        option value=(topic) selected[topic == shown] {
                            (topic_name(shared, &op.lang, topic))
                        }
                    }
                    @if !topics.iter().any(|t| t == shown) {
                        option value=(shown) selected { (topic_name(shared, &op.lang, shown)) }
                    }
                }
            }
            (state.message())
        }
    }
}

/// What the compose form shows in its fields: the form as posted, or what a format proposes.
struct ComposeDefaults {
    precedence: String,
    topic: String,
    lang: String,
}

fn compose_defaults(shared: &Shared, form: &ComposeForm) -> ComposeDefaults {
    let def = form.format_def();
    let described = def.map(|d| detente_formats::describe(d, "en"));
    let precedence = match (&described, form.precedence.is_empty()) {
        (_, false) => form.precedence.clone(),
        (Some(d), true) => d.precedence.to_ascii_lowercase(),
        (None, true) => "routine".into(),
    };
    let topic = match (described, form.topic.is_empty()) {
        (_, false) => form.topic.clone(),
        (Some(d), true) => d.topic,
        (None, true) => "general".into(),
    };
    let lang = if form.lang.is_empty() {
        super::html::node_lang(shared)
    } else {
        form.lang.clone()
    };
    ComposeDefaults {
        precedence,
        topic,
        lang,
    }
}

fn compose_html(
    shared: &Shared,
    op: &Operator,
    form: &ComposeForm,
    errors: &FieldErrors,
) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let shown = compose_defaults(shared, form);
    let peers: Vec<String> = shared.table.all().iter().map(|e| e.name.clone()).collect();
    // Precedence: only those this role may send; a format proposes its own.
    let precedences: Vec<&str> = Precedence::ALL
        .iter()
        .filter(|p| op.role.can_send(**p))
        .map(|p| p.name())
        .collect();
    let count = errors.len().to_string();
    let [to, prec, topic, lang, text, reply] =
        ["to", "precedence", "topic", "lang", "text", "reply_to"]
            .map(|k| field_state(errors, k, None));
    html! {
        @if !errors.is_empty() {
            p.error role="alert" #compose-errors {
                (t("compose-has-errors")) " "
                (tr_with(shared, op, "compose-error-count", &[("count", count)]))
            }
        }
        (format_chooser(shared, op, form, errors))
        form.compose method="post" action="/console/compose" novalidate {
            (csrf_input(op))
            p {
                label for="to" { (t("compose-to")) }
                select #to name="to" aria-invalid=[to.invalid()] aria-describedby=[&to.described] {
                    @for name in &peers { option selected[*name == form.to] { (name) } }
                }
                (to.message())
            }
            p {
                label for="precedence" { (t("compose-precedence")) }
                select #precedence name="precedence" aria-invalid=[prec.invalid()]
                    aria-describedby=[&prec.described] {
                    @for p in &precedences {
                        option value=(p) selected[*p == shown.precedence] { (t(&format!("prec-{p}"))) }
                    }
                }
                (prec.message())
            }
            (topic_field(shared, op, &shown.topic, &topic))
            p {
                label for="lang" { (t("text-language")) }
                select #lang name="lang" aria-invalid=[lang.invalid()] aria-describedby=[&lang.described] {
                    @for (code, _) in super::i18n::LANGUAGES {
                        option value=(code) selected[*code == shown.lang] {
                            (language_name(shared, &op.lang, code))
                        }
                    }
                    // A language the console does not offer, as posted, stays choosable.
                    @if !super::i18n::supported(&shown.lang) {
                        option value=(shown.lang) selected { (language_name(shared, &op.lang, &shown.lang)) }
                    }
                }
                (lang.message())
            }
            @match form.format_def() {
                Some(def) => (format_fields(shared, op, def, form, errors)),
                None => p {
                    label for="text" { (t("compose-text")) }
                    textarea #text name="text" rows="6" aria-invalid=[text.invalid()]
                        aria-describedby=[&text.described] { (form.text) }
                    (text.message())
                },
            }
            input type="hidden" name="reply_to" value=(form.reply_to)
                aria-invalid=[reply.invalid()] aria-describedby=[&reply.described];
            (reply.message())
            p { button type="submit" #send { (t("compose-send")) } }
        }
    }
}

pub async fn compose(
    State(shared): Shr,
    op: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !op.role.can_compose() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-send");
    }
    let form = ComposeForm::from_pairs(q);
    // What this answers, shown above the form.
    let replying_to = match form.reply_to.as_str() {
        "" => None,
        id => find_message(&shared, &op, id).await,
    };
    let form_html = compose_html(&shared, &op, &form, &FieldErrors::new());
    let main = html! {
        @if let Some(m) = &replying_to {
            section.replying-to aria-labelledby="replying-to-title" {
                h2 #replying-to-title { (tr(&shared, &op, "in-reply-to")) }
                ol.timeline.single { (messages::item(&shared, &op, m)) }
            }
        }
        (form_html)
    };
    let title = tr(&shared, &op, "nav-compose");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

/// Check the fields every message has; the errors name the field they belong to.
fn check_common(shared: &Shared, op: &Operator, form: &ComposeForm) -> FieldErrors {
    let mut errors = FieldErrors::new();
    let mut put = |k: &str, v: String| {
        errors.insert(k.to_string(), v);
    };
    if shared.table.get(&form.to).is_none() {
        put("to", tr(shared, op, "error-peer-unknown"));
    }
    match Precedence::parse(&form.precedence) {
        None => put("precedence", tr(shared, op, "error-precedence-unknown")),
        Some(p) if !op.role.can_send(p) => put(
            "precedence",
            tr_with(
                shared,
                op,
                "error-precedence-role",
                &[("precedence", tr(shared, op, &format!("prec-{}", p.name())))],
            ),
        ),
        Some(_) => {}
    }
    let topic = form.topic.trim();
    let topics = charter_topics(shared);
    if topic.is_empty() || topic.chars().count() > TOPIC_CHARS_MAX {
        put(
            "topic",
            tr_with(
                shared,
                op,
                "error-topic",
                &[("max", TOPIC_CHARS_MAX.to_string())],
            ),
        );
    } else if !topics.is_empty() && !topics.iter().any(|t| t == topic) {
        put("topic", tr(shared, op, "error-topic-charter"));
    }
    let lang = form.lang.trim();
    let lang_ok = !lang.is_empty()
        && lang.len() <= 35
        && lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !lang_ok {
        put("lang", tr(shared, op, "error-lang"));
    }
    if !form.reply_to.is_empty() && MessageId::from_hex(&form.reply_to).is_none() {
        put("reply_to", tr(shared, op, "error-reply-to"));
    }
    errors
}

fn check_text(shared: &Shared, op: &Operator, form: &ComposeForm, errors: &mut FieldErrors) {
    let text = form.text.trim();
    if text.is_empty() {
        errors.insert("text".into(), tr(shared, op, "error-text-empty"));
    } else if text.chars().count() > TEXT_CHARS_MAX {
        errors.insert(
            "text".into(),
            tr_with(
                shared,
                op,
                "error-text-long",
                &[("max", TEXT_CHARS_MAX.to_string())],
            ),
        );
    }
}

/// A format's error in the operator's language: what the field accepts (from the format's
/// own localized description), never the catalogue's English wording.
fn field_error_text(
    shared: &Shared,
    op: &Operator,
    error: &detente_formats::FieldError,
    accepts: &str,
) -> String {
    use detente_formats::FieldError as E;
    match error {
        E::Missing { .. } => tr(shared, op, "error-field-required"),
        E::Invalid { .. } => tr_with(
            shared,
            op,
            "error-field-invalid",
            &[("accepts", accepts.to_string())],
        ),
        E::Limit { .. } => tr(shared, op, "error-field-limit"),
        E::Rule { rule, .. } => tr_with(
            shared,
            op,
            "error-field-rule",
            &[("rule", tr(shared, op, &format!("rule-{rule}")))],
        ),
        _ => tr(shared, op, "error-format-unknown"),
    }
}

/// Validate the format's fields with the catalogue (the same rules a receiving node
/// applies), reporting every field's error at once, each under its own field; the
/// cross-field rules are checked when every field is valid on its own.
fn check_notification(
    shared: &Shared,
    op: &Operator,
    def: &detente_formats::FormatDef,
    form: &ComposeForm,
    errors: &mut FieldErrors,
) -> Option<()> {
    use detente_formats::Raw;
    if let Some(charter) = shared.charter(&form.to) {
        if !charter
            .formats
            .iter()
            .any(|f| f.id == def.id && f.version == def.version)
        {
            errors.insert("format".into(), tr(shared, op, "error-format-not-agreed"));
        }
    }
    let described = detente_formats::describe(def, &op.lang);
    let accepts = |key: &str| {
        described
            .fields
            .iter()
            .find(|f| f.key == key)
            .map_or_else(String::new, |f| f.accepts.clone())
    };
    let lang = form.lang.trim().to_string();
    let mut raw = BTreeMap::new();
    let before = errors.len();
    for field in &def.fields {
        let value = form
            .fields
            .get(&field.key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty());
        let Some(value) = value else {
            if field.required {
                let e = detente_formats::FieldError::Missing {
                    key: field.key.clone(),
                };
                let text = field_error_text(shared, op, &e, "");
                errors.insert(format!("f-{}", field.key), text);
            }
            continue;
        };
        let value = if field.kind.name() == "text" {
            Raw::Text {
                lang: lang.clone(),
                text: value.to_string(),
                translations: Vec::new(),
            }
        } else {
            Raw::Typed(value.to_string())
        };
        if let Err(e) = detente_formats::validate::parse_value(&field.key, &field.kind, &value) {
            let text = field_error_text(shared, op, &e, &accepts(&field.key));
            errors.insert(format!("f-{}", field.key), text);
        }
        raw.insert(field.key.clone(), value);
    }
    if errors.len() > before {
        return None;
    }
    let now =
        jiff::Timestamp::from_millisecond(now_ms() as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    // The node validates again when it builds the envelope; this pass only puts each
    // error next to its field.
    match def.validate(&raw, now) {
        Ok(_) => Some(()),
        Err(e) => {
            let key = e
                .key()
                .map_or_else(|| "format".to_string(), |k| format!("f-{k}"));
            let text = field_error_text(shared, op, &e, &accepts(e.key().unwrap_or("")));
            errors.insert(key, text);
            None
        }
    }
}

/// The compose form again, with the areas and points typed so far on the map above it;
/// nothing is sent.
async fn compose_map_preview(shared: &Shared, op: &Operator, form: &ComposeForm) -> Response {
    // The form draws its own map (`map_picker`) from the fields it is given.
    let main = compose_html(shared, op, form, &FieldErrors::new());
    let title = tr(shared, op, "nav-compose");
    html(StatusCode::OK, live_page(shared, op, &title, main).await)
}

pub async fn compose_send(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let form = ComposeForm::posted(pairs, &operator_tz(&shared, &op));
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    if !op.role.can_compose() {
        audit(&shared, &op.login, "refused", "compose", source).await;
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-send");
    }
    if form.preview == "map" {
        return compose_map_preview(&shared, &op, &form).await;
    }
    let mut errors = check_common(&shared, &op, &form);
    if errors.contains_key("precedence") && Precedence::parse(&form.precedence).is_some() {
        let detail = format!("send {}", form.precedence);
        audit(&shared, &op.login, "refused", &detail, source).await;
    }
    let content = match form.format_def() {
        None if !form.format.is_empty() && form.format != "text" => {
            errors.insert("format".into(), tr(&shared, &op, "error-format-unknown"));
            None
        }
        None => {
            check_text(&shared, &op, &form, &mut errors);
            Some(None)
        }
        Some(def) => check_notification(&shared, &op, def, &form, &mut errors).map(|()| Some(def)),
    };
    if let (true, Some(def)) = (errors.is_empty(), content) {
        let lang = Some(form.lang.trim().to_string())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| super::html::node_lang(&shared));
        let (text, format, format_version, fields) = match def {
            None => (Some(form.text.trim().to_string()), None, None, Vec::new()),
            // A structured notification: the reader's node renders it in its own language.
            Some(def) => (
                None,
                Some(def.id.clone()),
                Some(def.version),
                form.field_inputs(def),
            ),
        };
        let body = SendBody {
            to: form.to.clone(),
            precedence: Some(form.precedence.clone()),
            // Empty: the format's default topic (or `general` for text).
            topic: Some(form.topic.trim().to_string()).filter(|t| !t.is_empty()),
            text,
            format,
            format_version,
            fields,
            lang: Some(lang),
            translations: Vec::new(),
            reply_to: Some(form.reply_to.clone()).filter(|r| !r.is_empty()),
            author: None,
        };
        match service::send_one(&shared, body).await {
            Ok(sent) => {
                let id = sent.id.to_hex();
                let what = if form.format.is_empty() {
                    "text"
                } else {
                    form.format.as_str()
                };
                let detail = format!("{} {what} to {} {id}", sent.precedence.name(), form.to);
                audit(&shared, &op.login, "send", &detail, source).await;
                return Redirect::to(&format!("/console/messages/{id}")).into_response();
            }
            Err(e) => {
                errors.insert("text".into(), e.to_string());
            }
        }
    }
    let main = compose_html(&shared, &op, &form, &errors);
    let title = tr(&shared, &op, "nav-compose");
    html(
        StatusCode::UNPROCESSABLE_ENTITY,
        live_page(&shared, &op, &title, main).await,
    )
}
