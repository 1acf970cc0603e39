//! How a message shows on the console: on the timeline, on its own page, in a thread and in
//! the decline confirmation.
//!
//! The API's message JSON is parsed once into a [`MessageView`] (parse, don't validate: a
//! missing or malformed field becomes "absent" here, not at every use), and maud templates
//! render only that view, escaping every value by construction. Everything in a view that
//! came from the peer (text, topic, author, notes, translations) is shown as text, never as
//! markup.

use maud::{html, Markup};
use serde_json::Value;

use super::html::{csrf_input, url_value};
use super::pages::{duration_words, language_name, time_markup, tr, tr_with, NOTE_CHARS_MAX};
use super::Operator;
use crate::{now_ms, Shared};

/// The receipts a message has, each when it was made (absent: not yet).
#[derive(Default)]
pub struct Receipts {
    pub delivered: Option<i64>,
    pub read: Option<i64>,
    pub acknowledged: Option<i64>,
    pub declined: Option<i64>,
    pub note: Option<String>,
}

/// One message as the console shows it.
pub struct MessageView {
    pub id: String,
    /// Received from the peer (else sent by us).
    pub incoming: bool,
    pub peer: String,
    /// `flash`, `immediate`, `priority` or `routine`.
    pub precedence: String,
    /// A text or a notification: something people answer.
    pub answerable: bool,
    pub topic: String,
    pub author: String,
    pub seq: Option<u64>,
    /// The text, or the notification rendered in the operator's language.
    pub text: String,
    /// The language the author wrote in; absent for a notification (rendered here).
    pub language: Option<String>,
    /// Courtesy translations: (language, text).
    pub translations: Vec<(String, String)>,
    pub created_at_ms: Option<i64>,
    pub received_at_ms: Option<i64>,
    pub receipts: Receipts,
    /// The answer came after its deadline, by this much.
    pub late_ms: Option<i64>,
    /// When the acknowledgment is due (as the deadline watch counts).
    pub acknowledge_by_ms: Option<i64>,
    /// The deadline watch recorded a missed deadline for it.
    pub overdue: bool,
    pub in_reply_to: Option<String>,
    /// The notification's format id (`dialogue-request`, ...); absent for a text.
    pub format: Option<String>,
    /// For a `dialogue-request`: each proposed slot's number and start.
    pub slots: Vec<(u8, i64)>,
    /// A notification's typed fields as text (free-text fields left out), by key.
    pub fields: std::collections::BTreeMap<String, String>,
}

/// The start of a `window` field's value (`START/END`, both RFC 3339).
fn window_start_ms(v: &Value) -> Option<i64> {
    let start = v.as_str()?.split('/').next()?;
    start
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn ms_of(text: &Value) -> Option<i64> {
    text.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn text_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

impl MessageView {
    /// The view of the API's JSON for a message ([`crate::service::message_json`]).
    pub fn from_json(m: &Value) -> Self {
        let r = &m["receipts"];
        let translations = m["translations"]
            .as_array()
            .map(|pairs| {
                pairs
                    .iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        MessageView {
            id: text_of(&m["id"]),
            incoming: m["direction"].as_str().unwrap_or("in") == "in",
            peer: text_of(&m["peer"]),
            precedence: m["precedence"].as_str().unwrap_or("routine").to_string(),
            answerable: matches!(m["kind"].as_str(), Some("text" | "notification")),
            topic: text_of(&m["topic"]),
            author: text_of(&m["author"]),
            seq: m["seq"].as_u64(),
            text: m["text"]
                .as_str()
                .or_else(|| m["rendered"].as_str())
                .unwrap_or_default()
                .to_string(),
            language: m["language"]
                .as_str()
                .filter(|l| !l.is_empty())
                .map(str::to_string),
            translations,
            created_at_ms: ms_of(&m["created_at"]),
            received_at_ms: ms_of(&m["received_at"]),
            receipts: Receipts {
                delivered: ms_of(&r["delivered"]),
                read: ms_of(&r["read"]),
                acknowledged: ms_of(&r["acknowledged"]),
                declined: ms_of(&r["declined"]),
                note: r["note"].as_str().map(str::to_string),
            },
            late_ms: (m["late"] == true).then(|| m["late_ms"].as_i64().unwrap_or(0)),
            acknowledge_by_ms: ms_of(&m["deadline"]["acknowledge_by"]),
            overdue: m["overdue"] == true,
            in_reply_to: m["in_reply_to"].as_str().map(str::to_string),
            format: m["format"].as_str().map(str::to_string),
            slots: (1..=3u8)
                .filter_map(|n| Some((n, window_start_ms(&m["fields"][format!("slot_{n}")])?)))
                .collect(),
            fields: m["fields"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Still waiting for an acknowledgment (or a refusal).
    pub fn unanswered(&self) -> bool {
        self.answerable && self.receipts.acknowledged.is_none() && self.receipts.declined.is_none()
    }

    /// The text, shortened to `chars_max` characters for one line.
    pub fn snippet(&self, chars_max: usize) -> String {
        let mut out: String = self.text.chars().take(chars_max).collect();
        if self.text.chars().count() > chars_max {
            out.push('…');
        }
        out
    }

    /// When the acknowledgment is due, if it still is. The API's `acknowledge_by` counts from
    /// where the deadline watch counts (our `stored_at` for a received message, never the
    /// peer's `created_at`): one source of deadline state for every view.
    fn due_ms(&self) -> Option<i64> {
        self.acknowledge_by_ms.filter(|_| self.unanswered())
    }
}

/// The precedence, in words.
pub fn precedence(shared: &Shared, op: &Operator, p: &str) -> Markup {
    html! { span class={ "prec prec-" (p) } { (tr(shared, op, &format!("prec-{p}"))) } }
}

/// Answered or not, in words and a sign (never by colour alone).
fn answer_state(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let (class, sign, key) = if m.receipts.declined.is_some() {
        ("declined", "✗", "state-declined")
    } else if m.receipts.acknowledged.is_some() {
        ("answered", "✓", "state-answered")
    } else {
        ("unanswered", "◇", "state-unanswered")
    };
    html! {
        @if m.answerable {
            span class={ "answer-state " (class) } {
                span aria-hidden="true" { (sign) } " " (tr(shared, op, key))
            }
        }
    }
}

fn receipts(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let r = &m.receipts;
    let levels = [
        ("delivered", r.delivered),
        ("read", r.read),
        ("acknowledged", r.acknowledged),
        ("declined", r.declined),
    ];
    html! {
        ul.receipts aria-label=(tr(shared, op, "receipts")) {
            @for (level, at) in levels {
                @let label = tr(shared, op, &format!("receipt-{level}"));
                @let answer = matches!(level, "acknowledged" | "declined");
                @match (at, m.late_ms.filter(|_| answer)) {
                    (Some(ms), Some(late_ms)) => li class={ "r-" (level) " done late" }
                        data-level=(level) data-late-ms=(late_ms) {
                        span.mark aria-hidden="true" { "✓" } " " (label) ": "
                        (time_markup(shared, op, ms)) " "
                        strong.late-mark {
                            (tr_with(shared, op, "receipt-late-by",
                                &[("time", duration_words(shared, &op.lang, late_ms))]))
                        }
                    },
                    (Some(ms), None) => li class={ "r-" (level) " done" } data-level=(level) {
                        span.mark aria-hidden="true" { "✓" } " " (label) ": "
                        (time_markup(shared, op, ms))
                    },
                    // Not declined says nothing; once answered, "read: not yet" says nothing
                    // either (an answer implies it was read).
                    (None, _) if level == "declined" || (level == "read" && !m.unanswered()) => {},
                    (None, _) => li class={ "r-" (level) " pending" } {
                        span.mark aria-hidden="true" { "○" } " " (label) ": "
                        (tr(shared, op, "receipt-not-yet"))
                    },
                }
            }
            @if let Some(note) = &r.note { li.note { (tr(shared, op, "note")) ": " (note) } }
        }
    }
}

fn countdown(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let Some(due) = m.due_ms() else {
        return html! {};
    };
    let key = if m.incoming {
        "deadline-ours"
    } else {
        "deadline-theirs"
    };
    let now = now_ms() as i64;
    let passed = now > due;
    let remaining = if passed {
        let time = duration_words(shared, &op.lang, now - due);
        tr_with(shared, op, "overdue-by", &[("time", time)])
    } else {
        let time = duration_words(shared, &op.lang, due - now);
        tr_with(shared, op, "due-in", &[("time", time)])
    };
    // The script rewrites the countdown every second from these patterns.
    let pattern = |k: &str| tr_with(shared, op, k, &[("time", "{}".into())]);
    html! {
        p.deadline.overdue[passed] {
            (tr(shared, op, key)) ": " (time_markup(shared, op, due)) " "
            span.countdown data-deadline=(due) data-passed=[passed.then_some("yes")]
                data-due-in=(pattern("due-in")) data-overdue-by=(pattern("overdue-by")) {
                (remaining)
            }
        }
    }
}

fn text(shared: &Shared, op: &Operator, m: &MessageView, link: bool) -> Markup {
    // A notification is rendered here, in the operator's language, from its fields.
    let lang = m.language.as_deref().unwrap_or(&op.lang);
    html! {
        div.text {
            p.msg-text lang=(lang) {
                @if link { a href={ "/console/messages/" (m.id) } { (m.text) } } @else { (m.text) }
            }
            @if let Some(l) = &m.language {
                p.lang-mark { (tr(shared, op, "text-language")) ": " (language_name(shared, &op.lang, l)) }
            }
            @for (tl, tt) in &m.translations {
                p.translation {
                    span.lang-mark {
                        (tr(shared, op, "courtesy-translation")) ": " (language_name(shared, &op.lang, tl))
                    }
                    " " span lang=(tl) { (tt) }
                }
            }
        }
    }
}

/// One message as an item of a timeline (`<li>`), its text linked to its own page.
pub fn item(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let dir = if m.incoming { "in" } else { "out" };
    let state = if m.unanswered() {
        "unanswered"
    } else {
        "answered"
    };
    let who_key = if m.incoming {
        "received-from"
    } else {
        "sent-to"
    };
    let who = tr_with(shared, op, who_key, &[("peer", m.peer.clone())]);
    html! {
        li class={ "msg dir-" (dir) " prec-" (m.precedence) " " (state) } id={ "m-" (m.id) } data-id=(m.id) {
            div.msg-head {
                (precedence(shared, op, &m.precedence)) " " (answer_state(shared, op, m)) " "
                span.who { (who) } " · "
                span.topic { (tr(shared, op, "topic")) ": " (super::pages::topic_markup(shared, &op.lang, &m.topic)) } " · "
                span.author { (tr(shared, op, "author")) ": " span translate="no" { (m.author) } } " · "
                span.seq { "#" @if let Some(seq) = m.seq { (seq) } }
            }
            (text(shared, op, m, true))
            dl.times {
                @if let Some(ms) = m.created_at_ms {
                    dt { (tr(shared, op, "sent-at")) } dd { (time_markup(shared, op, ms)) }
                }
                @if let Some(ms) = m.received_at_ms {
                    dt { (tr(shared, op, "received-at")) } dd { (time_markup(shared, op, ms)) }
                }
            }
            (receipts(shared, op, m))
            (countdown(shared, op, m))
        }
    }
}

/// The answer form under a received message (read, acknowledge, decline, each as the role
/// allows), and the reply button.
pub fn answer_form(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let can_answer =
        m.incoming && m.answerable && (op.role.can_mark_read() || op.role.can_answer());
    let reply = format!(
        "/console/compose?to={}&reply_to={}&topic={}",
        url_value(&m.peer),
        m.id,
        url_value(&m.topic)
    );
    html! {
        @if can_answer {
            form.answer method="post" action={ "/console/messages/" (m.id) "/receipt" } {
                (csrf_input(op))
                h2 { (t("answer-title")) }
                p {
                    label for="note" { (t("note")) }
                    textarea #note name="note" rows="2" maxlength=(NOTE_CHARS_MAX) {}
                }
                p {
                    @if op.role.can_mark_read() && m.receipts.read.is_none() {
                        button type="submit" name="level" value="read" #mark-read { (t("mark-read")) } " "
                    }
                    @if op.role.can_answer() && m.unanswered() {
                        button type="submit" name="level" value="acknowledged" #acknowledge { (t("acknowledge")) } " "
                        button type="submit" name="level" value="declined" #decline { (t("decline")) }
                    }
                }
            }
        }
        p { a.button #print href={ "/console/messages/" (m.id) "/print" } { (t("print")) } }
        @if op.role.can_compose() {
            @if m.incoming && m.format.as_deref() == Some("dialogue-request") {
                (dialogue_replies(shared, op, m))
            }
            p { a.button href=(reply) { (t("reply")) } }
        }
    }
}

/// Replies to a `dialogue-request`, each opening a `dialogue-reply` form with the request
/// and the answer filled in: accept one of the proposed slots, propose others, or decline.
fn dialogue_replies(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let form = |response: &str, slot: Option<u8>| {
        let mut href = format!(
            "/console/compose?to={}&reply_to={id}&format=dialogue-reply&f.request={id}&f.response={response}",
            url_value(&m.peer),
            id = m.id,
        );
        if let Some(n) = slot {
            href.push_str(&format!("&f.accepted_slot={n}"));
        }
        href
    };
    html! {
        ul.dialogue-replies aria-label=(tr(shared, op, "reply-dialogue")) {
            @for (n, start) in &m.slots {
                li {
                    a.button.reply-accept href=(form("accept", Some(*n))) data-slot=(n) {
                        (tr_with(shared, op, "reply-accept-slot", &[
                            ("slot", n.to_string()),
                            ("time", super::pages::clock_text(shared, op, *start)),
                        ]))
                    }
                }
            }
            li { a.button.reply-counter href=(form("counter-propose", None)) { (tr(shared, op, "reply-counter")) } }
            li { a.button.reply-decline href=(form("decline", None)) { (tr(shared, op, "reply-decline-dialogue")) } }
        }
    }
}

/// A decline cannot be taken back: the page that asks first, carrying the note typed so far.
pub fn decline_confirmation(shared: &Shared, op: &Operator, m: &MessageView, note: &str) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    html! {
        p.confirm-intro { (t("decline-confirm-intro")) }
        ol.timeline.single { (item(shared, op, m)) }
        form.confirm method="post" action={ "/console/messages/" (m.id) "/receipt" } {
            (csrf_input(op))
            input type="hidden" name="level" value="declined";
            input type="hidden" name="confirm" value="yes";
            p {
                label for="note" { (t("note")) }
                textarea #note name="note" rows="2" maxlength=(NOTE_CHARS_MAX) { (note) }
            }
            p {
                button type="submit" #decline-confirm { (t("decline-confirm")) } " "
                a.button #decline-cancel href={ "/console/messages/" (m.id) } { (t("decline-cancel")) }
            }
        }
    }
}

/// A message on its own page, with the message it answers and the answers to it.
pub fn detail(
    shared: &Shared,
    op: &Operator,
    m: &MessageView,
    parent: Option<&MessageView>,
    replies: &[MessageView],
) -> Markup {
    html! {
        ol.timeline.single { (item(shared, op, m)) }
        (map(shared, op, m))
        @if let Some(p) = parent {
            h2 { (tr(shared, op, "in-reply-to")) }
            ol.timeline.thread { (item(shared, op, p)) }
        }
        @if !replies.is_empty() {
            h2 { (tr(shared, op, "replies")) }
            ol.timeline.thread #replies { @for r in replies { (item(shared, op, r)) } }
        }
    }
}

/// The notification's areas and points on the offline map, if it has any.
fn map(shared: &Shared, op: &Operator, m: &MessageView) -> Markup {
    let Some(format) = &m.format else {
        return html! {};
    };
    let shapes = super::map::shapes(format, &op.lang, |k| m.fields.get(k).cloned());
    super::map::figure(shared, op, &shapes, "message-map")
}
