//! The console's pages and the forms they post. Every handler takes an [`Operator`] (no
//! session: to the login page) and checks the operator's role itself before acting.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use detente_proto::{ChannelId, MessageId, Precedence, ReceiptLevel};
use detente_store::{InboxQuery, Store};
use serde::Deserialize;
use serde_json::Value;

use super::auth::{self, Role};
use super::html::{csrf_field, esc, live_page, page, url_value};
use super::{audit, cookie, set_cookie, Operator, Source, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::api::{self, SendBody};
use crate::{now_ms, Shared};

/// Messages on one timeline page (older ones are on the next pages).
pub const TIMELINE_PAGE_ROWS: u32 = 50;
/// Answers shown under one message, at most.
const THREAD_REPLIES_MAX: u32 = 100;
/// Longest topic (or peer name) accepted as a timeline filter; a longer one is ignored.
const FILTER_TOPIC_BYTES_MAX: usize = 256;
/// Envelopes per stream checked on the transcript page (the newest).
pub const VERIFY_TAIL_MAX: u64 = 200;
/// Longest topic accepted from the compose form.
pub const TOPIC_CHARS_MAX: usize = 64;
/// Longest free text accepted from the compose form.
pub const TEXT_CHARS_MAX: usize = 16_000;
/// Longest receipt note.
pub const NOTE_CHARS_MAX: usize = 2_000;

type Shr = State<Arc<Shared>>;

fn tr(shared: &Shared, op: &Operator, key: &str) -> String {
    shared.console.i18n.text(&op.lang, key)
}

fn tr_with(shared: &Shared, op: &Operator, key: &str, args: &[(&str, String)]) -> String {
    shared.console.i18n.text_with(&op.lang, key, args)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A page-level refusal in the operator's language.
fn refuse(shared: &Shared, op: &Operator, status: StatusCode, key: &str) -> Response {
    let title = tr(shared, op, "refused-title");
    let main = format!(
        "<p class=\"error\" role=\"alert\">{}</p>",
        esc(&tr(shared, op, key))
    );
    html(status, page(shared, Some(op), &title, &main))
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
    let mut main = String::new();
    if let Some(e) = error {
        let _ = write!(
            main,
            "<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>",
            esc(e)
        );
    }
    let described = if error.is_some() {
        " aria-describedby=\"login-error\""
    } else {
        ""
    };
    let _ = write!(
        main,
        "<form method=\"post\" action=\"/login\" class=\"login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label for=\"login\">{l}</label><input id=\"login\" name=\"login\" autocomplete=\"username\" required value=\"{login}\"{described}></p>\
         <p><label for=\"password\">{p}</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required{described}></p>\
         <p><button type=\"submit\" id=\"login-submit\">{s}</button></p></form>",
        csrf = esc(csrf),
        l = esc(&t("login-name")),
        p = esc(&t("password")),
        s = esc(&t("login-submit")),
        login = esc(login),
    );
    let title = t("login-title");
    page(shared, None, &title, &main)
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
    let mut response = Redirect::to("/login").into_response();
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

fn ms_of(text: &Value) -> Option<i64> {
    text.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// A time zone's name in the operator's language ("北京时间", "Eastern Time"), from the
/// console's texts (`tz-` and the zone's id with `/` as `-`); its abbreviation otherwise.
fn tz_label(shared: &Shared, lang: &str, tz_name: &str, abbreviation: &str) -> String {
    let key = format!("tz-{}", tz_name.replace('/', "-"));
    let label = shared.console.i18n.text(lang, &key);
    if label == key {
        abbreviation.to_string()
    } else {
        label
    }
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

/// "2026-11-29 03:10:00 UTC · 2026-11-29 11:10:00 北京时间" in the node's time zone, named
/// in the operator's language.
fn both_times(shared: &Shared, lang: &str, ms: i64) -> String {
    let tz_name = shared
        .config
        .read()
        .map(|c| c.tz.clone())
        .unwrap_or_else(|_| "UTC".into());
    let Ok(ts) = jiff::Timestamp::from_millisecond(ms) else {
        return ms.to_string();
    };
    let utc = ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    match jiff::tz::TimeZone::get(&tz_name) {
        Ok(tz) if tz_name != "UTC" => {
            let zoned = ts.to_zoned(tz);
            let local = zoned.strftime("%Y-%m-%d %H:%M:%S").to_string();
            let abbreviation = zoned.strftime("%Z").to_string();
            let zone = tz_label(shared, lang, &tz_name, &abbreviation);
            format!("{utc} · {local} {zone}")
        }
        _ => utc,
    }
}

fn time_element(shared: &Shared, lang: &str, ms: i64) -> String {
    let iso = api::time_text(ms);
    format!(
        "<time datetime=\"{}\">{}</time>",
        esc(&iso),
        esc(&both_times(shared, lang, ms))
    )
}

/// Whether a message is one people answer (not a charter or another protocol envelope).
fn answerable(m: &Value) -> bool {
    matches!(m["kind"].as_str(), Some("text" | "notification"))
}

/// Whether a message still waits for an acknowledgment (or a refusal).
fn unanswered(m: &Value) -> bool {
    answerable(m) && m["receipts"]["acknowledged"].is_null() && m["receipts"]["declined"].is_null()
}

/// When the acknowledgment of `m` is due, if it still is. The API's `acknowledge_by` counts
/// from where the deadline watch counts (our `stored_at` for a received message, never the
/// peer's `created_at`): one source of deadline state for every view.
fn ack_deadline_ms(m: &Value) -> Option<i64> {
    if !unanswered(m) {
        return None;
    }
    ms_of(&m["deadline"]["acknowledge_by"])
}

fn precedence_label(shared: &Shared, op: &Operator, m: &Value) -> String {
    let p = m["precedence"].as_str().unwrap_or("routine");
    format!(
        "<span class=\"prec prec-{p}\">{}</span>",
        esc(&tr(shared, op, &format!("prec-{p}")))
    )
}

fn receipts_list(shared: &Shared, op: &Operator, m: &Value) -> String {
    let mut out = format!(
        "<ul class=\"receipts\" aria-label=\"{}\">",
        esc(&tr(shared, op, "receipts"))
    );
    for level in ["delivered", "read", "acknowledged", "declined"] {
        let label = tr(shared, op, &format!("receipt-{level}"));
        let value = &m["receipts"][level];
        // Once answered, "read: not yet" says nothing (an answer implies it was read).
        if level == "read" && value.is_null() && !unanswered(m) {
            continue;
        }
        let late =
            matches!(level, "acknowledged" | "declined") && !value.is_null() && m["late"] == true;
        match ms_of(value) {
            Some(ms) if late => {
                let how = tr_with(
                    shared,
                    op,
                    "receipt-late-by",
                    &[(
                        "time",
                        duration_words(shared, &op.lang, m["late_ms"].as_i64().unwrap_or(0)),
                    )],
                );
                let _ = write!(
                    out,
                    "<li class=\"r-{level} done late\" data-level=\"{level}\" data-late-ms=\"{}\"><span class=\"mark\" aria-hidden=\"true\">✓</span> {}: {} <strong class=\"late-mark\">{}</strong></li>",
                    m["late_ms"].as_i64().unwrap_or(0),
                    esc(&label),
                    time_element(shared, &op.lang, ms),
                    esc(&how)
                );
            }
            Some(ms) => {
                let _ = write!(
                    out,
                    "<li class=\"r-{level} done\" data-level=\"{level}\"><span class=\"mark\" aria-hidden=\"true\">✓</span> {}: {}</li>",
                    esc(&label),
                    time_element(shared, &op.lang, ms)
                );
            }
            None if level == "declined" => {}
            None => {
                let _ = write!(
                    out,
                    "<li class=\"r-{level} pending\"><span class=\"mark\" aria-hidden=\"true\">○</span> {}: {}</li>",
                    esc(&label),
                    esc(&tr(shared, op, "receipt-not-yet"))
                );
            }
        }
    }
    if let Some(note) = m["receipts"]["note"].as_str() {
        let _ = write!(
            out,
            "<li class=\"note\">{}: {}</li>",
            esc(&tr(shared, op, "note")),
            esc(note)
        );
    }
    out.push_str("</ul>");
    out
}

/// Answered or not, in words and a sign (never by colour alone).
fn answer_state(shared: &Shared, op: &Operator, m: &Value) -> String {
    if !answerable(m) {
        return String::new();
    }
    let (class, sign, key) = if !m["receipts"]["declined"].is_null() {
        ("declined", "✗", "state-declined")
    } else if !m["receipts"]["acknowledged"].is_null() {
        ("answered", "✓", "state-answered")
    } else {
        ("unanswered", "◇", "state-unanswered")
    };
    format!(
        "<span class=\"answer-state {class}\"><span aria-hidden=\"true\">{sign}</span> {}</span>",
        esc(&tr(shared, op, key))
    )
}

fn countdown(shared: &Shared, op: &Operator, m: &Value) -> String {
    let Some(due) = ack_deadline_ms(m) else {
        return String::new();
    };
    let key = if m["direction"] == "in" {
        "deadline-ours"
    } else {
        "deadline-theirs"
    };
    let now = now_ms() as i64;
    let remaining = if now > due {
        tr_with(
            shared,
            op,
            "overdue-by",
            &[("time", duration_words(shared, &op.lang, now - due))],
        )
    } else {
        tr_with(
            shared,
            op,
            "due-in",
            &[("time", duration_words(shared, &op.lang, due - now))],
        )
    };
    format!(
        "<p class=\"deadline{}\">{}: {} <span class=\"countdown\" data-deadline=\"{due}\"{} \
         data-due-in=\"{}\" data-overdue-by=\"{}\">{}</span></p>",
        if now > due { " overdue" } else { "" },
        esc(&tr(shared, op, key)),
        time_element(shared, &op.lang, due),
        if now > due {
            " data-passed=\"yes\""
        } else {
            ""
        },
        esc(&tr_with(shared, op, "due-in", &[("time", "{}".into())])),
        esc(&tr_with(shared, op, "overdue-by", &[("time", "{}".into())])),
        esc(&remaining)
    )
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

fn message_text(shared: &Shared, op: &Operator, m: &Value, link: bool) -> String {
    let id = m["id"].as_str().unwrap_or_default();
    let text = m["text"]
        .as_str()
        .unwrap_or_else(|| m["rendered"].as_str().unwrap_or(""));
    let lang = m["language"].as_str().unwrap_or("");
    let mut out = String::new();
    let body = if link {
        format!("<a href=\"/console/messages/{id}\">{}</a>", esc(text))
    } else {
        esc(text)
    };
    if lang.is_empty() {
        // A notification: rendered here, in the operator's language, from its fields.
        let _ = write!(
            out,
            "<div class=\"text\"><p class=\"msg-text\" lang=\"{}\">{body}</p>",
            esc(&op.lang)
        );
    } else {
        let _ = write!(
            out,
            "<div class=\"text\"><p class=\"msg-text\" lang=\"{l}\">{body}</p><p class=\"lang-mark\">{}: {}</p>",
            esc(&tr(shared, op, "text-language")),
            esc(&language_name(shared, &op.lang, lang)),
            l = esc(lang)
        );
    }
    if let Some(translations) = m["translations"].as_array() {
        for pair in translations {
            let (Some(tl), Some(tt)) = (pair[0].as_str(), pair[1].as_str()) else {
                continue;
            };
            let _ = write!(
                out,
                "<p class=\"translation\"><span class=\"lang-mark\">{}: {}</span> <span lang=\"{l}\">{}</span></p>",
                esc(&tr(shared, op, "courtesy-translation")),
                esc(&language_name(shared, &op.lang, tl)),
                esc(tt),
                l = esc(tl)
            );
        }
    }
    out.push_str("</div>");
    out
}

fn message_item(shared: &Shared, op: &Operator, m: &Value) -> String {
    let id = m["id"].as_str().unwrap_or_default();
    let dir = m["direction"].as_str().unwrap_or("in");
    let p = m["precedence"].as_str().unwrap_or("routine");
    let who = if dir == "in" {
        tr_with(
            shared,
            op,
            "received-from",
            &[("peer", m["peer"].as_str().unwrap_or("").into())],
        )
    } else {
        tr_with(
            shared,
            op,
            "sent-to",
            &[("peer", m["peer"].as_str().unwrap_or("").into())],
        )
    };
    let state = if unanswered(m) {
        "unanswered"
    } else {
        "answered"
    };
    let mut out = format!(
        "<li class=\"msg dir-{dir} prec-{p} {state}\" id=\"m-{id}\" data-id=\"{id}\"><div class=\"msg-head\">{} {} <span class=\"who\">{}</span> · <span class=\"topic\">{}: <span translate=\"no\">{}</span></span> · <span class=\"author\">{}: <span translate=\"no\">{}</span></span> · <span class=\"seq\">#{}</span></div>",
        precedence_label(shared, op, m),
        answer_state(shared, op, m),
        esc(&who),
        esc(&tr(shared, op, "topic")),
        esc(m["topic"].as_str().unwrap_or("")),
        esc(&tr(shared, op, "author")),
        esc(m["author"].as_str().unwrap_or("")),
        m["seq"]
    );
    out.push_str(&message_text(shared, op, m, true));
    out.push_str("<dl class=\"times\">");
    if let Some(ms) = ms_of(&m["created_at"]) {
        let _ = write!(
            out,
            "<dt>{}</dt><dd>{}</dd>",
            esc(&tr(shared, op, "sent-at")),
            time_element(shared, &op.lang, ms)
        );
    }
    if let Some(ms) = ms_of(&m["received_at"]) {
        let _ = write!(
            out,
            "<dt>{}</dt><dd>{}</dd>",
            esc(&tr(shared, op, "received-at")),
            time_element(shared, &op.lang, ms)
        );
    }
    out.push_str("</dl>");
    out.push_str(&receipts_list(shared, op, m));
    out.push_str(&countdown(shared, op, m));
    out.push_str("</li>");
    out
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
            limit: TIMELINE_PAGE_ROWS,
        }
    }

    /// The filters as a query string (without the cursor), `&`-separated and escaped.
    fn params(&self) -> String {
        [
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
) -> String {
    let mut out = format!(
        "<p><label for=\"filter-{name}\">{}</label><select id=\"filter-{name}\" name=\"{name}\"><option value=\"\">{}</option>",
        esc(&tr(shared, op, &format!("filter-{name}"))),
        esc(&tr(shared, op, "filter-all"))
    );
    for (value, label) in options {
        let sel = if value == chosen { " selected" } else { "" };
        let _ = write!(
            out,
            "<option value=\"{}\"{sel}>{}</option>",
            esc(value),
            esc(label)
        );
    }
    out.push_str("</select></p>");
    out
}

fn filter_form(shared: &Shared, op: &Operator, f: &TimelineFilter) -> String {
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
    format!(
        "<form method=\"get\" action=\"/console\" class=\"filters\" aria-label=\"{}\">{}{}{}{}\
         <p><label for=\"filter-topic\">{}</label><input id=\"filter-topic\" name=\"topic\" maxlength=\"{FILTER_TOPIC_BYTES_MAX}\" value=\"{}\"></p>\
         <p><button type=\"submit\" id=\"filter-apply\">{}</button> <a href=\"/console\">{}</a></p></form>",
        esc(&t("filter-label")),
        select_filter(shared, op, "peer", &f.peer, &peers),
        select_filter(shared, op, "precedence", &f.precedence, &precedences),
        select_filter(shared, op, "direction", &f.direction, &directions),
        select_filter(shared, op, "answered", &f.answered, &answered),
        esc(&t("filter-topic")),
        esc(&f.topic),
        esc(&t("filter-apply")),
        esc(&t("filter-clear")),
    )
}

async fn timeline_html(shared: &Shared, op: &Operator, f: &TimelineFilter) -> String {
    let rows = shared.store.timeline(f.query()).await.unwrap_or_default();
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Ok(v) = api::message_json(shared, row, Some(&op.lang)).await {
            list.push(v);
        }
    }
    if list.is_empty() {
        return format!(
            "<p class=\"empty\">{}</p>",
            esc(&tr(shared, op, "timeline-empty"))
        );
    }
    // Newest first: a night shift reads the top of the page.
    let mut out = format!(
        "<ol class=\"timeline\" aria-label=\"{}\">",
        esc(&tr(shared, op, "timeline-label"))
    );
    for m in &list {
        out.push_str(&message_item(shared, op, m));
    }
    out.push_str("</ol>");
    if let Some(last) = rows
        .last()
        .filter(|_| rows.len() as u32 >= TIMELINE_PAGE_ROWS)
    {
        let cursor = format!(
            "{}.{}.{}",
            last.created_at_ms,
            hex::encode(last.sender),
            last.seq
        );
        let params = f.params();
        let sep = if params.is_empty() { "" } else { "&amp;" };
        let _ = write!(
            out,
            "<nav class=\"pager\" aria-label=\"{}\"><a id=\"older\" rel=\"next\" href=\"/console?{}{sep}before={}\">{}</a></nav>",
            esc(&tr(shared, op, "pager-label")),
            esc(&params),
            url_value(&cursor),
            esc(&tr(shared, op, "pager-older"))
        );
    }
    out
}

pub async fn timeline(
    State(shared): Shr,
    op: Operator,
    Query(f): Query<TimelineFilter>,
) -> Response {
    let inner = timeline_html(&shared, &op, &f).await;
    // Only the newest page follows the channel live; an older page stays where it is.
    let live = if f.before.is_empty() {
        format!(
            " data-live=\"/console/live/timeline?{}\" aria-live=\"polite\"",
            esc(&f.params())
        )
    } else {
        String::new()
    };
    let newest = if f.before.is_empty() {
        String::new()
    } else {
        format!(
            "<p><a id=\"newest\" href=\"/console?{}\">{}</a></p>",
            esc(&f.params()),
            esc(&tr(&shared, &op, "pager-newest"))
        )
    };
    let main = format!(
        "{}{newest}<div id=\"live\"{live}>{inner}</div>",
        filter_form(&shared, &op, &f)
    );
    let title = tr(&shared, &op, "nav-timeline");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
}

pub async fn timeline_live(
    State(shared): Shr,
    op: Operator,
    Query(f): Query<TimelineFilter>,
) -> Response {
    html(StatusCode::OK, timeline_html(&shared, &op, &f).await)
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

/// A short time for the status light and the queue, in the node's time zone.
pub fn clock_text(shared: &Shared, op: &Operator, ms: i64) -> String {
    both_times(shared, &op.lang, ms)
}

// ---------------------------------------------------------------- one message

async fn message_detail(shared: &Shared, op: &Operator, m: &Value) -> String {
    let mut out = format!(
        "<ol class=\"timeline single\">{}</ol>",
        message_item(shared, op, m)
    );
    // The thread: what this answers, and the answers to it, read by id (never by walking
    // the channel).
    if let Some(parent) = m["in_reply_to"].as_str() {
        if let Some(p) = find_message(shared, op, parent).await {
            let _ = write!(
                out,
                "<h2>{}</h2><ol class=\"timeline thread\">{}</ol>",
                esc(&tr(shared, op, "in-reply-to")),
                message_item(shared, op, &p)
            );
        }
    }
    let mut replies = Vec::new();
    if let Some(id) = m["id"].as_str().and_then(MessageId::from_hex) {
        let rows = shared
            .store
            .replies(id.0, THREAD_REPLIES_MAX)
            .await
            .unwrap_or_default();
        for row in &rows {
            if let Ok(v) = api::message_json(shared, row, Some(&op.lang)).await {
                replies.push(v);
            }
        }
    }
    if !replies.is_empty() {
        let _ = write!(
            out,
            "<h2>{}</h2><ol class=\"timeline thread\" id=\"replies\">",
            esc(&tr(shared, op, "replies"))
        );
        for r in &replies {
            out.push_str(&message_item(shared, op, r));
        }
        out.push_str("</ol>");
    }
    out
}

fn answer_form(shared: &Shared, op: &Operator, m: &Value) -> String {
    let id = m["id"].as_str().unwrap_or_default();
    let mut out = String::new();
    if m["direction"] == "in" && answerable(m) && (op.role.can_mark_read() || op.role.can_answer())
    {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/console/messages/{id}/receipt\" class=\"answer\">{}<h2>{}</h2>\
             <p><label for=\"note\">{}</label><textarea id=\"note\" name=\"note\" rows=\"2\" maxlength=\"{NOTE_CHARS_MAX}\"></textarea></p><p>",
            csrf_field(op),
            esc(&tr(shared, op, "answer-title")),
            esc(&tr(shared, op, "note")),
        );
        if op.role.can_mark_read() && m["receipts"]["read"].is_null() {
            let _ = write!(
                out,
                "<button type=\"submit\" name=\"level\" value=\"read\" id=\"mark-read\">{}</button> ",
                esc(&tr(shared, op, "mark-read"))
            );
        }
        if op.role.can_answer() && unanswered(m) {
            let _ = write!(
                out,
                "<button type=\"submit\" name=\"level\" value=\"acknowledged\" id=\"acknowledge\">{}</button> \
                 <button type=\"submit\" name=\"level\" value=\"declined\" id=\"decline\">{}</button>",
                esc(&tr(shared, op, "acknowledge")),
                esc(&tr(shared, op, "decline"))
            );
        }
        out.push_str("</p></form>");
    }
    if op.role.can_compose() {
        let _ = write!(
            out,
            "<p><a class=\"button\" href=\"/console/compose?to={}&amp;reply_to={id}&amp;topic={}\">{}</a></p>",
            url_value(m["peer"].as_str().unwrap_or("")),
            url_value(m["topic"].as_str().unwrap_or("")),
            esc(&tr(shared, op, "reply"))
        );
    }
    out
}

async fn find_message(shared: &Shared, op: &Operator, id: &str) -> Option<Value> {
    let id = MessageId::from_hex(id)?;
    let row = shared.store.message(id.0).await.ok().flatten()?;
    if row.kind == 1 || row.kind == 2 {
        return None;
    }
    api::message_json(shared, &row, Some(&op.lang)).await.ok()
}

pub async fn message(State(shared): Shr, op: Operator, Path(id): Path<String>) -> Response {
    let Some(m) = find_message(&shared, &op, &id).await else {
        return refuse(&shared, &op, StatusCode::NOT_FOUND, "message-unknown");
    };
    let detail = message_detail(&shared, &op, &m).await;
    // The answer form stays outside the live region, so that a refresh never wipes a note
    // being typed.
    let main = format!(
        "<div id=\"live\" data-live=\"/console/live/messages/{}\" aria-live=\"polite\">{detail}</div>{}",
        esc(&id),
        answer_form(&shared, &op, &m)
    );
    let title = tr(&shared, &op, "message-title");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
}

pub async fn message_live(State(shared): Shr, op: Operator, Path(id): Path<String>) -> Response {
    let Some(m) = find_message(&shared, &op, &id).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    html(StatusCode::OK, message_detail(&shared, &op, &m).await)
}

/// A decline cannot be taken back: ask first, carrying the note typed so far.
async fn decline_confirmation(shared: &Shared, op: &Operator, id: &str, note: &str) -> Response {
    let Some(m) = find_message(shared, op, id).await else {
        return refuse(shared, op, StatusCode::NOT_FOUND, "message-unknown");
    };
    let main = format!(
        "<p class=\"confirm-intro\">{}</p><ol class=\"timeline single\">{}</ol>\
         <form method=\"post\" action=\"/console/messages/{id}/receipt\" class=\"confirm\">{}\
         <input type=\"hidden\" name=\"level\" value=\"declined\"><input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <p><label for=\"note\">{}</label><textarea id=\"note\" name=\"note\" rows=\"2\" maxlength=\"{NOTE_CHARS_MAX}\">{}</textarea></p>\
         <p><button type=\"submit\" id=\"decline-confirm\">{}</button> <a class=\"button\" id=\"decline-cancel\" href=\"/console/messages/{id}\">{}</a></p></form>",
        esc(&tr(shared, op, "decline-confirm-intro")),
        message_item(shared, op, &m),
        csrf_field(op),
        esc(&tr(shared, op, "note")),
        esc(note),
        esc(&tr(shared, op, "decline-confirm")),
        esc(&tr(shared, op, "decline-cancel")),
        id = esc(id),
    );
    let title = tr(shared, op, "decline-confirm-title");
    html(StatusCode::OK, live_page(shared, op, &title, &main).await)
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
    match api::answer(&shared, message_id, level, note.clone()).await {
        Ok(_) => {
            let detail = format!("{} {id} {}", level.name(), note.unwrap_or_default());
            audit(&shared, &op.login, "receipt", &detail, source).await;
            Redirect::to(&format!("/console/messages/{id}")).into_response()
        }
        Err(e) => {
            let main = format!(
                "<p class=\"error\" role=\"alert\">{}</p>",
                esc(&e.to_string())
            );
            let title = tr(&shared, &op, "refused-title");
            html(e.status(), live_page(&shared, &op, &title, &main).await)
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
}

/// Fields of one form, at most (a format has far fewer).
const FORM_PAIRS_MAX: usize = 128;

impl ComposeForm {
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
                _ => {
                    if let Some(key) = k.strip_prefix("f.") {
                        form.fields.insert(key.to_string(), v);
                    }
                }
            }
        }
        form
    }

    /// The chosen format, if it is one of the catalogue's.
    fn format_def(&self) -> Option<&'static detente_formats::FormatDef> {
        if self.format.is_empty() || self.format == "text" {
            return None;
        }
        detente_formats::builtin().latest(&self.format)
    }
}

/// Errors by field id (`to`, `text`, `f-position`, ...).
type FieldErrors = BTreeMap<String, String>;

fn field_error(errors: &FieldErrors, key: &str, help: Option<&str>) -> (String, String) {
    let described = |extra: &str| {
        let ids: Vec<&str> = help
            .into_iter()
            .chain(Some(extra).filter(|e| !e.is_empty()))
            .collect();
        if ids.is_empty() {
            String::new()
        } else {
            format!(" aria-describedby=\"{}\"", ids.join(" "))
        }
    };
    match errors.get(key) {
        Some(e) => (
            format!(" aria-invalid=\"true\"{}", described(&format!("err-{key}"))),
            format!(
                "<span class=\"field-error\" id=\"err-{key}\" role=\"alert\">{}</span>",
                esc(e)
            ),
        ),
        None => (described(""), String::new()),
    }
}

/// The format chooser: a small GET form, so it works without script.
fn format_chooser(
    shared: &Shared,
    op: &Operator,
    form: &ComposeForm,
    errors: &FieldErrors,
) -> String {
    let t = |k: &str| tr(shared, op, k);
    let mut out = format!(
        "<form method=\"get\" action=\"/console/compose\" class=\"chooser\">\
         <input type=\"hidden\" name=\"to\" value=\"{}\"><input type=\"hidden\" name=\"reply_to\" value=\"{}\">\
         <p><label for=\"format\">{}</label><select id=\"format\" name=\"format\"><option value=\"\">{}</option>",
        esc(&form.to),
        esc(&form.reply_to),
        esc(&t("compose-format")),
        esc(&t("compose-free-text"))
    );
    for def in detente_formats::builtin().formats() {
        if def.id == "text" {
            continue;
        }
        let d = detente_formats::describe(def, &op.lang);
        let sel = if def.id == form.format {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{}\"{sel}>{}</option>",
            esc(&def.id),
            esc(&d.title)
        );
    }
    let err = errors.get("format").map_or_else(String::new, |e| {
        format!(
            "<span class=\"field-error\" id=\"err-format\" role=\"alert\">{}</span>",
            esc(e)
        )
    });
    let _ = write!(
        out,
        "</select> <button type=\"submit\" id=\"choose-format\">{}</button>{err}</p></form>",
        esc(&t("compose-format-use"))
    );
    out
}

/// The fields of a format, each with its label, help, what it accepts, and its error.
fn format_fields(
    op: &Operator,
    def: &detente_formats::FormatDef,
    form: &ComposeForm,
    errors: &FieldErrors,
) -> String {
    let d = detente_formats::describe(def, &op.lang);
    let mut out = format!(
        "<fieldset class=\"format\"><legend>{}</legend><input type=\"hidden\" name=\"format\" value=\"{}\">",
        esc(&d.title),
        esc(&def.id)
    );
    for f in &d.fields {
        let id = format!("f-{}", f.key);
        let help_id = format!("help-{id}");
        let (attr, err) = field_error(errors, &id, Some(&help_id));
        let value = form.fields.get(&f.key).map_or("", String::as_str);
        let required = if f.required { " required" } else { "" };
        let _ = write!(
            out,
            "<p><label for=\"{id}\">{}{}</label>",
            esc(&f.label),
            if f.required { " *" } else { "" }
        );
        if !f.values.is_empty() {
            let _ = write!(
                out,
                "<select id=\"{id}\" name=\"f.{}\"{attr}{required}><option value=\"\">—</option>",
                esc(&f.key)
            );
            for (v, label) in &f.values {
                let sel = if v == value { " selected" } else { "" };
                let _ = write!(
                    out,
                    "<option value=\"{}\"{sel}>{}</option>",
                    esc(v),
                    esc(label)
                );
            }
            out.push_str("</select>");
        } else if f.type_name == "text" {
            let _ = write!(
                out,
                "<textarea id=\"{id}\" name=\"f.{}\" rows=\"3\"{attr}{required}>{}</textarea>",
                esc(&f.key),
                esc(value)
            );
        } else {
            let _ = write!(
                out,
                "<input id=\"{id}\" name=\"f.{}\" value=\"{}\"{attr}{required}>",
                esc(&f.key),
                esc(value)
            );
        }
        let _ = write!(
            out,
            "<span class=\"hint\" id=\"{help_id}\">{}{}{}</span>{err}</p>",
            esc(&f.help),
            if f.help.is_empty() || !f.values.is_empty() {
                ""
            } else {
                " — "
            },
            // A select shows its choices in the operator's language; the codes would not.
            if f.values.is_empty() {
                esc(&f.accepts)
            } else {
                String::new()
            }
        );
    }
    out.push_str("</fieldset>");
    out
}

fn compose_html(
    shared: &Shared,
    op: &Operator,
    form: &ComposeForm,
    errors: &FieldErrors,
) -> String {
    let t = |k: &str| tr(shared, op, k);
    let def = form.format_def();
    let mut out = String::new();
    if !errors.is_empty() {
        let _ = write!(
            out,
            "<p class=\"error\" role=\"alert\" id=\"compose-errors\">{} {}</p>",
            esc(&t("compose-has-errors")),
            esc(&tr_with(
                shared,
                op,
                "compose-error-count",
                &[("count", errors.len().to_string())]
            ))
        );
    }
    out.push_str(&format_chooser(shared, op, form, errors));
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/console/compose\" class=\"compose\" novalidate>{}",
        csrf_field(op)
    );
    // Peer.
    let (attr, err) = field_error(errors, "to", None);
    let _ = write!(
        out,
        "<p><label for=\"to\">{}</label><select id=\"to\" name=\"to\"{attr}>",
        esc(&t("compose-to"))
    );
    for entry in shared.table.all() {
        let sel = if entry.name == form.to {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{sel}>{}</option>", esc(&entry.name));
    }
    let _ = write!(out, "</select>{err}</p>");
    // Precedence: only those this role may send; a format proposes its own.
    let (attr, err) = field_error(errors, "precedence", None);
    let _ = write!(
        out,
        "<p><label for=\"precedence\">{}</label><select id=\"precedence\" name=\"precedence\"{attr}>",
        esc(&t("compose-precedence"))
    );
    let proposed = def.map(|d| {
        detente_formats::describe(d, "en")
            .precedence
            .to_ascii_lowercase()
    });
    let chosen = if !form.precedence.is_empty() {
        form.precedence.clone()
    } else {
        proposed.unwrap_or_else(|| "routine".into())
    };
    for p in Precedence::ALL {
        if !op.role.can_send(p) {
            continue;
        }
        let sel = if p.name() == chosen { " selected" } else { "" };
        let _ = write!(
            out,
            "<option value=\"{}\"{sel}>{}</option>",
            p.name(),
            esc(&t(&format!("prec-{}", p.name())))
        );
    }
    let _ = write!(out, "</select>{err}</p>");
    let (attr, err) = field_error(errors, "topic", None);
    let topic = match (form.topic.is_empty(), def) {
        (false, _) => form.topic.clone(),
        (true, Some(d)) => detente_formats::describe(d, "en").topic,
        (true, None) => "general".into(),
    };
    let _ = write!(
        out,
        "<p><label for=\"topic\">{}</label><input id=\"topic\" name=\"topic\" maxlength=\"{TOPIC_CHARS_MAX}\" value=\"{}\"{attr}>{err}</p>",
        esc(&t("topic")),
        esc(&topic)
    );
    let (attr, err) = field_error(errors, "lang", None);
    let lang = if form.lang.is_empty() {
        super::html::node_lang(shared)
    } else {
        form.lang.clone()
    };
    let _ = write!(
        out,
        "<p><label for=\"lang\">{}</label><input id=\"lang\" name=\"lang\" value=\"{}\"{attr}>{err}</p>",
        esc(&t("text-language")),
        esc(&lang)
    );
    match def {
        Some(def) => out.push_str(&format_fields(op, def, form, errors)),
        None => {
            let (attr, err) = field_error(errors, "text", None);
            let _ = write!(
                out,
                "<p><label for=\"text\">{}</label><textarea id=\"text\" name=\"text\" rows=\"6\"{attr}>{}</textarea>{err}</p>",
                esc(&t("compose-text")),
                esc(&form.text)
            );
        }
    }
    let (attr, err) = field_error(errors, "reply_to", None);
    let _ = write!(
        out,
        "<input type=\"hidden\" name=\"reply_to\" value=\"{}\"{attr}>{err}",
        esc(&form.reply_to)
    );
    let _ = write!(
        out,
        "<p><button type=\"submit\" id=\"send\">{}</button></p></form>",
        esc(&t("compose-send"))
    );
    out
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
    let main = compose_html(&shared, &op, &form, &FieldErrors::new());
    let title = tr(&shared, &op, "nav-compose");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
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

pub async fn compose_send(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let form = ComposeForm::from_pairs(pairs);
    if !op.csrf_ok(&form.csrf) {
        return bad_csrf(&shared, &op);
    }
    if !op.role.can_compose() {
        audit(&shared, &op.login, "refused", "compose", source).await;
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-send");
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
                def.fields
                    .iter()
                    .filter_map(|field| {
                        let value = form.fields.get(&field.key)?.trim();
                        (!value.is_empty()).then(|| crate::notify::FieldInput {
                            key: field.key.clone(),
                            value: value.to_string(),
                            translation: None,
                        })
                    })
                    .collect(),
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
        match api::send_one(&shared, body).await {
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
        live_page(&shared, &op, &title, &main).await,
    )
}

// ---------------------------------------------------------------- link health

async fn link_html(shared: &Shared, op: &Operator) -> String {
    let t = |k: &str| tr(shared, op, k);
    let mut out = format!(
        "<table class=\"links\"><caption>{}</caption><thead><tr>",
        esc(&t("link-caption"))
    );
    for k in [
        "link-peer",
        "link-state",
        "link-rtt",
        "link-last-heard",
        "link-last-test",
        "link-backlog-out",
        "link-backlog-in",
        "link-address",
        "link-last-error",
    ] {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(&t(k)));
    }
    out.push_str("</tr></thead><tbody>");
    let me = shared.secret.public();
    for entry in shared.table.all() {
        let Ok(s) = entry.status.read().map(|s| s.clone()) else {
            continue;
        };
        let counts = shared
            .store
            .outbox_counts(&entry.name)
            .await
            .unwrap_or_default();
        let channel = ChannelId::for_pair(&me, &entry.key);
        let held = shared
            .store
            .held(channel.0, *entry.key.as_bytes(), 10_000)
            .await
            .map_or(0, |h| h.len());
        let state = s.state.name();
        let sign = match state {
            "up" => "●",
            "degraded" => "◐",
            _ => "○",
        };
        let heard = s
            .last_heard
            .map(|i| now_ms() as i64 - i.elapsed().as_millis() as i64)
            .map_or_else(|| esc(&t("never")), |ms| time_element(shared, &op.lang, ms));
        let last_test = last_test_ms(shared, &entry.name)
            .await
            .map_or_else(|| esc(&t("never")), |ms| time_element(shared, &op.lang, ms));
        let _ = write!(
            out,
            "<tr class=\"link-{state}\" data-peer=\"{name}\"><th scope=\"row\">{name}</th>\
             <td class=\"state\"><span aria-hidden=\"true\">{sign}</span> {state_text}</td>\
             <td>{rtt}</td><td>{heard}</td><td>{last_test}</td><td>{out_n}{flash}</td><td>{held}</td><td translate=\"no\">{addr}</td><td>{err}</td></tr>",
            name = esc(&entry.name),
            state_text = esc(&t(&format!("link-state-{state}"))),
            rtt = s.rtt_ms.map_or_else(
                || "—".to_string(),
                |r| esc(&tr_with(shared, op, "link-rtt-value", &[("ms", format!("{r:.1}"))]))
            ),
            out_n = counts.pending,
            flash = if counts.pending_flash > 0 {
                format!(" ({} {})", counts.pending_flash, esc(&t("prec-flash")))
            } else {
                String::new()
            },
            addr = esc(s.address.as_deref().unwrap_or("—")),
            err = esc(s.last_error.as_deref().unwrap_or("—")),
        );
    }
    out.push_str("</tbody></table>");
    let _ = write!(
        out,
        "<p class=\"hint\">{}</p>",
        esc(&t("link-backlog-hint"))
    );
    out
}

/// When the last link test with this peer was stored (either direction).
async fn last_test_ms(shared: &Shared, peer: &str) -> Option<i64> {
    let rows = shared
        .store
        .inbox(InboxQuery {
            peer: Some(peer.to_string()),
            direction: None,
            include_system: true,
            limit: 500,
        })
        .await
        .ok()?;
    rows.iter()
        .filter(|r| r.kind == 2)
        .map(|r| r.stored_at_ms)
        .max()
}

pub async fn link(State(shared): Shr, op: Operator) -> Response {
    let inner = link_html(&shared, &op).await;
    let main = format!(
        "<div id=\"live\" data-live=\"/console/live/link\" data-refresh-s=\"2\" aria-live=\"off\">{inner}</div>"
    );
    let title = tr(&shared, &op, "nav-link");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
}

pub async fn link_live(State(shared): Shr, op: Operator) -> Response {
    html(StatusCode::OK, link_html(&shared, &op).await)
}

// ---------------------------------------------------------------- transcript

/// The result of checking the newest envelopes of one stream.
struct StreamCheck {
    size: u64,
    head: String,
    checked: u64,
    problem: Option<String>,
}

/// Check the newest [`VERIFY_TAIL_MAX`] envelopes of a stream: each signature against the
/// sender's pinned key, each `prev` against the id of the envelope before it, no gap.
async fn check_stream(
    shared: &Shared,
    channel: ChannelId,
    sender: detente_proto::PartyKey,
) -> StreamCheck {
    let streams = shared.store.streams().await.unwrap_or_default();
    let Some(state) = streams
        .iter()
        .find(|s| s.channel == channel.0 && s.sender == *sender.as_bytes())
    else {
        return StreamCheck {
            size: 0,
            head: String::new(),
            checked: 0,
            problem: None,
        };
    };
    let size = state.next_seq.saturating_sub(1);
    let first = size.saturating_sub(VERIFY_TAIL_MAX - 1).max(1);
    let mut expected_next: Option<MessageId> = None;
    let mut checked = 0;
    let mut problem = None;
    for seq in (first..=size).rev() {
        let row = match shared
            .store
            .message_at(channel.0, *sender.as_bytes(), seq)
            .await
        {
            Ok(Some(r)) => r,
            _ => {
                problem = Some(format!("seq {seq}: missing"));
                break;
            }
        };
        let verified = match detente_proto::VerifiedEnvelope::decode(&row.bytes, Some(&sender)) {
            Ok(v) => v,
            Err(e) => {
                problem = Some(format!("seq {seq}: {e}"));
                break;
            }
        };
        if let Some(prev_of_next) = expected_next {
            if verified.id() != prev_of_next {
                problem = Some(format!("seq {}: prev does not match seq {seq}", seq + 1));
                break;
            }
        } else if verified.id().0 != state.last_id {
            problem = Some(format!("seq {seq}: not the stream head"));
            break;
        }
        expected_next = Some(verified.envelope().prev);
        checked += 1;
    }
    StreamCheck {
        size,
        head: hex::encode(state.last_id),
        checked,
        problem,
    }
}

pub async fn transcript(State(shared): Shr, op: Operator) -> Response {
    let t = |k: &str| tr(&shared, &op, k);
    let me = shared.secret.public();
    let my_name = shared
        .config
        .read()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let mut main = format!("<p>{}</p>", esc(&t("transcript-intro")));
    for entry in shared.table.all() {
        let channel = ChannelId::for_pair(&me, &entry.key);
        let _ = write!(
            main,
            "<section class=\"channel\"><h2>{}</h2><p>{}: <code>{}</code></p>",
            esc(&tr_with(
                &shared,
                &op,
                "transcript-channel",
                &[("peer", entry.name.clone())]
            )),
            esc(&t("channel-id")),
            channel.to_hex()
        );
        let charter = match shared.charter(&entry.name) {
            Some(c) => {
                let version = shared.charters.get(&entry.name).version;
                tr_with(
                    &shared,
                    &op,
                    "charter-agreed",
                    &[
                        ("version", version.to_string()),
                        ("digest", hex::encode(c.digest())),
                    ],
                )
            }
            None => t("charter-none"),
        };
        let checkpoint = latest_cosigned(&shared, channel).await.map_or_else(
            || t("checkpoint-none"),
            |c| {
                let sizes: Vec<String> = c
                    .members
                    .iter()
                    .map(|m| {
                        let who = if m.key == me {
                            my_name.clone()
                        } else {
                            entry.name.clone()
                        };
                        format!("{who} {}", m.size)
                    })
                    .collect();
                tr_with(
                    &shared,
                    &op,
                    "checkpoint-cosigned",
                    &[
                        ("time", both_times(&shared, &op.lang, c.time_ms as i64)),
                        ("sizes", sizes.join(", ")),
                    ],
                )
            },
        );
        let _ = write!(
            main,
            "<h3>{}</h3><p class=\"charter\">{}</p><h3>{}</h3><p class=\"checkpoint\">{}</p>",
            esc(&t("charter-title")),
            // The digest is a code: shown as one.
            match shared.charter(&entry.name) {
                Some(c) => {
                    let digest = hex::encode(c.digest());
                    esc(&charter).replace(&digest, &format!("<code>{digest}</code>"))
                }
                None => esc(&charter),
            },
            esc(&t("checkpoint-title")),
            esc(&checkpoint)
        );
        let _ = write!(
            main,
            "<table><caption>{}</caption><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
            esc(&t("streams-caption")),
            esc(&t("stream-sender")),
            esc(&t("stream-size")),
            esc(&t("stream-head")),
            esc(&t("stream-check"))
        );
        for (name, key) in [(my_name.clone(), me), (entry.name.clone(), entry.key)] {
            let c = check_stream(&shared, channel, key).await;
            let verdict = match &c.problem {
                None => format!(
                    "<span class=\"ok\"><span aria-hidden=\"true\">✓</span> {}</span>",
                    esc(&tr_with(
                        &shared,
                        &op,
                        "stream-ok",
                        &[("count", c.checked.to_string())]
                    ))
                ),
                Some(p) => format!(
                    "<span class=\"bad\"><span aria-hidden=\"true\">✗</span> {}: {}</span>",
                    esc(&t("stream-broken")),
                    esc(p)
                ),
            };
            let _ = write!(
                main,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td><code>{}</code></td><td class=\"verify\">{verdict}</td></tr>",
                esc(&name),
                c.size,
                esc(&c.head)
            );
        }
        main.push_str("</tbody></table>");
        if op.role.can_export() {
            let _ = write!(
                main,
                "<p><a class=\"button\" href=\"/console/transcript/export?peer={}\" download>{}</a></p>",
                url_value(&entry.name),
                esc(&t("export"))
            );
        }
        main.push_str("</section>");
    }
    let title = t("nav-transcript");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
}

#[derive(Deserialize)]
pub struct ExportQuery {
    peer: String,
}

/// The latest checkpoint of `channel` signed by every member, if any.
async fn latest_cosigned(
    shared: &Shared,
    channel: ChannelId,
) -> Option<detente_proto::checkpoint::Checkpoint> {
    let rows = shared.store.checkpoints(channel.0).await.ok()?;
    rows.iter()
        .rev()
        .filter(|r| r.cosigned)
        .find_map(|r| detente_proto::checkpoint::SignedCheckpoint::decode(&r.signed).ok())
        .map(|s| s.checkpoint().clone())
}

/// The channel's export bundle, exactly as `detente export` writes it: `detente verify` checks
/// it offline.
pub async fn export(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Query(q): Query<ExportQuery>,
) -> Response {
    if !op.role.can_export() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-export");
    }
    if shared.table.get(&q.peer).is_none() {
        return refuse(&shared, &op, StatusCode::NOT_FOUND, "error-peer-unknown");
    }
    let body = match api::export_body(&shared, &q.peer).await {
        Ok((body, _)) => body,
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    &shared,
                    Some(&op),
                    &tr(&shared, &op, "nav-transcript"),
                    &format!("<p class=\"bad\">{}</p>", esc(&e.to_string())),
                ),
            )
        }
    };
    audit(&shared, &op.login, "export", &q.peer, source).await;
    let file = format!("attachment; filename=\"detente-{}.bundle\"", q.peer);
    (
        [
            (header::CONTENT_TYPE, "application/cbor".to_string()),
            (header::CONTENT_DISPOSITION, file),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------- counterparts, audit, users

pub async fn counterparts(State(shared): Shr, op: Operator) -> Response {
    let t = |k: &str| tr(&shared, &op, k);
    let Ok(c) = shared.config.read().map(|c| c.clone()) else {
        return refuse(
            &shared,
            &op,
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
        );
    };
    let mut main = format!(
        "<p>{}</p><table><caption>{}</caption><thead><tr>",
        esc(&t("counterparts-intro")),
        esc(&t("counterparts-caption"))
    );
    for k in [
        "cp-node",
        "cp-party",
        "cp-fingerprint",
        "cp-language",
        "cp-tz",
        "cp-addresses",
    ] {
        let _ = write!(main, "<th scope=\"col\">{}</th>", esc(&t(k)));
    }
    main.push_str("</tr></thead><tbody>");
    let row = |main: &mut String,
               name: String,
               party: &str,
               fp: String,
               lang: &str,
               tz: &str,
               addrs: String| {
        let _ = write!(
            main,
            "<tr><th scope=\"row\" translate=\"no\">{}</th><td translate=\"no\">{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td translate=\"no\">{}</td></tr>",
            esc(&name),
            esc(party),
            esc(&fp),
            esc(&language_name(&shared, &op.lang, lang)),
            esc(&tz_label(&shared, &op.lang, tz, tz)),
            esc(&addrs)
        );
    };
    row(
        &mut main,
        format!("{} ({})", c.name, t("cp-this-node")),
        &c.party,
        shared.secret.public().fingerprint(),
        &c.lang,
        &c.tz,
        shared.peer_addr.to_string(),
    );
    let mut pairs = Vec::new();
    let me = shared.secret.public();
    for entry in shared.table.all() {
        match shared.charter(&entry.name) {
            Some(charter) => {
                for m in charter.members.iter().filter(|m| m.key != me) {
                    row(
                        &mut main,
                        entry.name.clone(),
                        &m.party,
                        m.key.fingerprint(),
                        &m.lang,
                        &m.tz,
                        m.addresses.join(", "),
                    );
                }
                // Positions: ours first, whatever the charter's member order.
                let we_are_first = charter.members.first().is_some_and(|m| m.key == me);
                for cp in &charter.counterparts {
                    let (ours, theirs) = if we_are_first {
                        (cp.first.clone(), cp.second.clone())
                    } else {
                        (cp.second.clone(), cp.first.clone())
                    };
                    pairs.push((entry.name.clone(), ours, theirs));
                }
            }
            None => row(
                &mut main,
                entry.name.clone(),
                &t("cp-unknown"),
                entry.key.fingerprint(),
                &t("cp-unknown"),
                &t("cp-unknown"),
                entry.addrs.join(", "),
            ),
        }
    }
    main.push_str("</tbody></table>");
    let _ = write!(
        main,
        "<table id=\"positions\"><caption>{}</caption><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
        esc(&t("positions-caption")),
        esc(&t("positions-ours")),
        esc(&t("positions-theirs")),
        esc(&t("cp-node"))
    );
    if pairs.is_empty() {
        let _ = write!(
            main,
            "<tr><td colspan=\"3\">{} <code>detente counterpart add</code></td></tr>",
            esc(&t("positions-none"))
        );
    }
    for (peer, ours, theirs) in pairs {
        let _ = write!(
            main,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&ours),
            esc(&theirs),
            esc(&peer)
        );
    }
    main.push_str("</tbody></table>");
    let _ = write!(
        main,
        "<p class=\"hint\">{}</p>",
        esc(&t("counterparts-hint"))
    );
    let title = t("nav-counterparts");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
}

pub async fn audit_page(shared: &Shared, op: &Operator) -> Response {
    let t = |k: &str| tr(shared, op, k);
    let rows = shared.store.audit(1000).await.unwrap_or_default();
    let mut main = format!(
        "<table class=\"audit\"><caption>{}</caption><thead><tr>",
        esc(&t("audit-caption"))
    );
    for k in [
        "audit-time",
        "audit-login",
        "audit-action",
        "audit-detail",
        "audit-source",
    ] {
        let _ = write!(main, "<th scope=\"col\">{}</th>", esc(&t(k)));
    }
    main.push_str("</tr></thead><tbody>");
    for r in rows {
        let _ = write!(
            main,
            "<tr><td>{}</td><td translate=\"no\">{}</td><td translate=\"no\">{}</td><td translate=\"no\">{}</td><td translate=\"no\">{}</td></tr>",
            time_element(shared, &op.lang, r.at_ms),
            esc(&r.login),
            esc(&r.action),
            esc(&r.detail),
            esc(&r.source)
        );
    }
    main.push_str("</tbody></table>");
    let title = t("nav-audit");
    html(StatusCode::OK, live_page(shared, op, &title, &main).await)
}

pub async fn audit_log(State(shared): Shr, op: Operator) -> Response {
    if !op.role.can_read_audit() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-audit");
    }
    audit_page(&shared, &op).await
}

pub async fn users(State(shared): Shr, op: Operator) -> Response {
    if op.role != Role::Admin {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-admin");
    }
    let t = |k: &str| tr(&shared, &op, k);
    let rows = shared.store.users().await.unwrap_or_default();
    let mut main = format!(
        "<table><caption>{}</caption><thead><tr>",
        esc(&t("users-caption"))
    );
    for k in ["audit-login", "user-role", "language", "user-created"] {
        let _ = write!(main, "<th scope=\"col\">{}</th>", esc(&t(k)));
    }
    main.push_str("</tr></thead><tbody>");
    for u in rows {
        let _ = write!(
            main,
            "<tr><th scope=\"row\" translate=\"no\">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&u.login),
            esc(&t(&format!("role-{}", u.role))),
            esc(&language_name(&shared, &op.lang, &u.lang)),
            time_element(&shared, &op.lang, u.created_at_ms)
        );
    }
    let _ = write!(
        main,
        "</tbody></table><p class=\"hint\">{} <code>detente user add --dir DIR --name LOGIN --role ROLE</code></p>",
        esc(&t("users-hint"))
    );
    let title = t("nav-users");
    html(StatusCode::OK, live_page(&shared, &op, &title, &main).await)
}
