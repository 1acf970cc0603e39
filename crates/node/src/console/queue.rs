//! The "needs action" queue and the alarm banner: everything this party owes an answer to
//! and everything the peer owes us, earliest due first, whatever the number of messages.
//!
//! **One source of deadline state.** Both read the store's unanswered index
//! ([`detente_store::Store::unanswered`], kept by the store itself) and judge each deadline
//! from the instant the node's deadline watch counts it from (`created_at` for ours,
//! `stored_at` for the peer's: docs/deadlines.md) with the channel's deadlines. The watch's
//! recorded misses (`overdue` in the API's view) stay the authority; the wall-clock check
//! only lets a page turn red at the due second without waiting for the watch's event. A peer
//! that back-dates `created_at` therefore makes nothing look overdue.

use std::fmt::Write;

use detente_proto::Precedence;
use detente_store::{Direction, Store, UnansweredRow};
use serde_json::Value;

use super::html::esc;
use super::Operator;
use crate::{api, now_ms, Shared};

/// Queue entries shown, at most (the earliest due; the header counts them all).
pub const QUEUE_ROWS_MAX: u32 = 25;
/// Alarm entries shown, at most (the banner says how many more).
pub const ALARM_ROWS_MAX: usize = 10;
/// Characters of a message's text shown in a queue entry.
const SNIPPET_CHARS_MAX: usize = 90;

/// One unanswered message with its deadline judged.
pub struct Entry {
    pub row: UnansweredRow,
    pub precedence: Precedence,
    /// When the answer is due, on this node's wall clock.
    pub due_ms: i64,
    /// When a FLASH of ours must be DELIVERED.
    pub delivery_due_ms: Option<i64>,
}

impl Entry {
    pub fn incoming(&self) -> bool {
        self.row.direction == Direction::In
    }
}

/// What the queue and the banner show.
pub struct Queue {
    /// The earliest due entries, overdue first.
    pub entries: Vec<(Entry, Value)>,
    /// Messages we owe an answer to / the peer owes us, in all.
    pub owed_by_us: u64,
    pub owed_to_us: u64,
    /// The watch's counts of overdue messages (ours to answer, theirs).
    pub overdue_by_us: u64,
    pub overdue_to_us: u64,
}

/// Judge one unanswered row with the channel's deadlines.
pub fn judge(shared: &Shared, row: UnansweredRow) -> Option<Entry> {
    let precedence = Precedence::from_u8(row.precedence)?;
    let d = shared.deadlines(&row.peer);
    let due_ms = row.start_ms + d.acknowledged(precedence).as_millis() as i64;
    let delivery_due_ms = (row.direction == Direction::Out && precedence == Precedence::Flash)
        .then(|| row.start_ms + d.flash_delivered.as_millis() as i64);
    Some(Entry {
        row,
        precedence,
        due_ms,
        delivery_due_ms,
    })
}

/// Whether the message's answer is overdue now: recorded by the watch, or past due.
pub fn overdue(entry: &Entry, m: &Value, now: i64) -> bool {
    m["overdue"] == true || now >= entry.due_ms
}

/// Whether a FLASH of ours missed its delivery deadline and is still not delivered.
pub fn undelivered(entry: &Entry, m: &Value, now: i64) -> bool {
    entry.delivery_due_ms.is_some_and(|due| now >= due) && m["receipts"]["delivered"].is_null()
}

/// Read the queue: per peer and precedence the earliest-starting unanswered messages (within
/// one precedence of one channel, earliest start is earliest due), merged by due time.
pub async fn load(shared: &Shared, op: &Operator) -> Queue {
    let mut all = Vec::new();
    for entry in shared.table.all() {
        for p in Precedence::ALL {
            let rows = shared
                .store
                .unanswered(&entry.name, p as u8, QUEUE_ROWS_MAX)
                .await
                .unwrap_or_default();
            all.extend(rows.into_iter().filter_map(|r| judge(shared, r)));
        }
    }
    all.sort_by_key(|e| (e.due_ms, e.precedence as u8));
    // The earliest due, and every unanswered FLASH whatever its rank: the banner must show
    // each one, and it reads this list.
    let mut rank = 0;
    all.retain(|e| {
        rank += 1;
        rank <= QUEUE_ROWS_MAX || e.precedence == Precedence::Flash
    });
    let mut entries = Vec::with_capacity(all.len());
    for e in all {
        let Ok(Some(row)) = shared.store.message(e.row.id).await else {
            continue;
        };
        if let Ok(m) = api::message_json(shared, &row, Some(&op.lang)).await {
            entries.push((e, m));
        }
    }
    let now = now_ms() as i64;
    // Overdue first (recorded misses included), then by due time.
    entries.sort_by_key(|(e, m)| (!overdue(e, m, now), e.due_ms));
    let (mut owed_by_us, mut owed_to_us) = (0, 0);
    for c in shared.store.unanswered_counts().await.unwrap_or_default() {
        match c.direction {
            Direction::In => owed_by_us += c.count,
            Direction::Out => owed_to_us += c.count,
        }
    }
    let (mut overdue_by_us, mut overdue_to_us) = (0, 0);
    for entry in shared.table.all() {
        if let Ok(a) = entry.alarms.read() {
            overdue_by_us += a.overdue_in;
            overdue_to_us += a.overdue_out;
        }
    }
    Queue {
        entries,
        owed_by_us,
        owed_to_us,
        overdue_by_us,
        overdue_to_us,
    }
}

fn tr(shared: &Shared, op: &Operator, key: &str) -> String {
    shared.console.i18n.text(&op.lang, key)
}

fn tr_with(shared: &Shared, op: &Operator, key: &str, args: &[(&str, String)]) -> String {
    shared.console.i18n.text_with(&op.lang, key, args)
}

/// The text of a message, shortened for one line.
pub fn snippet(m: &Value) -> String {
    let text = m["text"]
        .as_str()
        .or_else(|| m["rendered"].as_str())
        .unwrap_or("");
    let mut out: String = text.chars().take(SNIPPET_CHARS_MAX).collect();
    if text.chars().count() > SNIPPET_CHARS_MAX {
        out.push('…');
    }
    out
}

/// ` lang="…"` for a message's own text when it is in a language of its own (a text
/// message; a notification is rendered in the operator's language).
pub fn lang_attr(m: &Value) -> String {
    m["language"]
        .as_str()
        .map_or_else(String::new, |l| format!(" lang=\"{}\"", esc(l)))
}

/// A live countdown to `due` ("due in 4m 10s" / "overdue by 12s"), ticked by the script.
pub fn countdown_span(shared: &Shared, op: &Operator, due: i64, now: i64) -> String {
    let text = if now >= due {
        tr_with(
            shared,
            op,
            "overdue-by",
            &[(
                "time",
                super::pages::duration_words(shared, &op.lang, now - due),
            )],
        )
    } else {
        tr_with(
            shared,
            op,
            "due-in",
            &[(
                "time",
                super::pages::duration_words(shared, &op.lang, due - now),
            )],
        )
    };
    // `data-passed`: the deadline had passed when this was rendered, so the script does not
    // ask the server again about it.
    let passed = if now >= due {
        " data-passed=\"yes\""
    } else {
        ""
    };
    format!(
        "<span class=\"countdown\" data-deadline=\"{due}\"{passed} data-due-in=\"{}\" data-overdue-by=\"{}\">{}</span>",
        esc(&tr_with(shared, op, "due-in", &[("time", "{}".into())])),
        esc(&tr_with(shared, op, "overdue-by", &[("time", "{}".into())])),
        esc(&text)
    )
}

fn precedence_label(shared: &Shared, op: &Operator, p: Precedence) -> String {
    let n = p.name();
    format!(
        "<span class=\"prec prec-{n}\">{}</span>",
        esc(&tr(shared, op, &format!("prec-{n}")))
    )
}

/// The queue as HTML: a header with the totals and one line per entry.
pub fn queue_html(shared: &Shared, op: &Operator, q: &Queue) -> String {
    let now = now_ms() as i64;
    let mut out = format!(
        "<h2 id=\"queue-title\">{}</h2><p class=\"queue-totals\">{}</p>",
        esc(&tr(shared, op, "queue-title")),
        esc(&tr_with(
            shared,
            op,
            "queue-totals",
            &[
                ("ours", q.owed_by_us.to_string()),
                ("ours_overdue", q.overdue_by_us.to_string()),
                ("theirs", q.owed_to_us.to_string()),
                ("theirs_overdue", q.overdue_to_us.to_string()),
            ]
        ))
    );
    if q.entries.is_empty() {
        let _ = write!(
            out,
            "<p class=\"empty\">{}</p>",
            esc(&tr(shared, op, "queue-empty"))
        );
        return out;
    }
    out.push_str("<ol class=\"queue\" aria-labelledby=\"queue-title\">");
    for (e, m) in &q.entries {
        let id = m["id"].as_str().unwrap_or_default();
        let late = overdue(e, m, now);
        let (owner, sign) = if e.incoming() {
            ("queue-ours", "→")
        } else {
            ("queue-theirs", "←")
        };
        let _ = write!(
            out,
            "<li class=\"q-item{}{}\" data-id=\"{id}\" data-direction=\"{}\">\
             <span class=\"q-state\">{}</span> {} <span class=\"q-owner\"><span aria-hidden=\"true\">{sign}</span> {}</span> \
             <a href=\"/console/messages/{id}\"{}>{}</a> <span class=\"q-topic\" translate=\"no\">{}</span> {}</li>",
            if late { " overdue" } else { "" },
            if e.incoming() { " ours" } else { " theirs" },
            if e.incoming() { "in" } else { "out" },
            esc(&tr(shared, op, if late { "queue-overdue" } else { "queue-pending" })),
            precedence_label(shared, op, e.precedence),
            esc(&tr_with(shared, op, owner, &[("peer", e.row.peer.clone())])),
            lang_attr(m),
            esc(&snippet(m)),
            esc(m["topic"].as_str().unwrap_or("")),
            countdown_span(shared, op, e.due_ms, now),
        );
    }
    out.push_str("</ol>");
    let shown = q.entries.len() as u64;
    let total = q.owed_by_us + q.owed_to_us;
    if total > shown {
        let _ = write!(
            out,
            "<p class=\"hint\"><a href=\"/console?answered=no\">{}</a></p>",
            esc(&tr_with(
                shared,
                op,
                "queue-more",
                &[("count", (total - shown).to_string())]
            ))
        );
    }
    out
}

/// One banner line: what is wrong, about which message, and where to go.
struct Alarm {
    kind: &'static str,
    key: &'static str,
    id: String,
    html: String,
}

fn message_alarm(shared: &Shared, op: &Operator, e: &Entry, m: &Value, now: i64) -> Option<Alarm> {
    let flash = e.precedence == Precedence::Flash;
    let (kind, key) = if undelivered(e, m, now) {
        ("missed", "alarm-undelivered")
    } else if overdue(e, m, now) {
        let key = if e.incoming() {
            "alarm-missed-ours"
        } else {
            "alarm-missed-theirs"
        };
        ("missed", key)
    } else if e.incoming() && flash {
        ("flash", "alarm-flash")
    } else {
        return None;
    };
    let id = m["id"].as_str().unwrap_or_default().to_string();
    let html = format!(
        "{} · {}: <span translate=\"no\">{}</span> · <q class=\"alarm-text\"{}>{}</q> <a href=\"/console/messages/{id}\">{}</a>",
        precedence_label(shared, op, e.precedence),
        esc(&tr(shared, op, "topic")),
        esc(m["topic"].as_str().unwrap_or("")),
        lang_attr(m),
        esc(&snippet(m)),
        esc(&tr(
            shared,
            op,
            if e.incoming() {
                "alarm-open"
            } else {
                "alarm-view"
            }
        )),
    );
    Some(Alarm {
        kind,
        key,
        id,
        html,
    })
}

/// Link alarms kept by the watch: link down after having been up, link test missed.
fn link_alarms(shared: &Shared, op: &Operator) -> Vec<Alarm> {
    let mut out = Vec::new();
    for entry in shared.table.all() {
        let Ok(a) = entry.alarms.read().map(|a| a.clone()) else {
            continue;
        };
        for (on, key) in [
            (a.link_down, "alarm-link-down"),
            (a.test_missed, "alarm-test-missed"),
        ] {
            if on {
                out.push(Alarm {
                    kind: "link",
                    key,
                    id: format!("{key}-{}", entry.name),
                    html: format!(
                        "{} <a href=\"/console/link\">{}</a>",
                        esc(&tr_with(
                            shared,
                            op,
                            "alarm-peer",
                            &[("peer", entry.name.clone())]
                        )),
                        esc(&tr(shared, op, "alarm-link-view"))
                    ),
                });
            }
        }
    }
    out
}

/// FLASH messages received and not yet acknowledged take the screen: one full-width block
/// each, which stays until someone answers it, with a button to silence the repeating sound
/// (an audited action; the alert itself stays).
fn takeover_html(shared: &Shared, op: &Operator, q: &Queue) -> String {
    let flashes: Vec<&(Entry, Value)> = q
        .entries
        .iter()
        .filter(|(e, _)| e.incoming() && e.precedence == Precedence::Flash)
        .take(ALARM_ROWS_MAX)
        .collect();
    if flashes.is_empty() {
        return String::new();
    }
    let now = now_ms() as i64;
    let mut ids = Vec::with_capacity(flashes.len());
    let mut out = format!(
        "<div class=\"takeover\" id=\"takeover\"><h2>{}</h2><ul>",
        esc(&tr_with(
            shared,
            op,
            "takeover-title",
            &[("count", flashes.len().to_string())]
        ))
    );
    for (e, m) in flashes {
        let id = m["id"].as_str().unwrap_or_default();
        ids.push(id.to_string());
        let _ = write!(
            out,
            "<li data-flash-id=\"{id}\"><p class=\"takeover-head\">{} {} · <span translate=\"no\">{}</span> {}</p>\
             <p class=\"takeover-text\"{}>{}</p><p><a class=\"button takeover-open\" href=\"/console/messages/{id}\">{}</a></p></li>",
            precedence_label(shared, op, e.precedence),
            esc(&tr_with(shared, op, "received-from", &[("peer", e.row.peer.clone())])),
            esc(m["topic"].as_str().unwrap_or("")),
            countdown_span(shared, op, e.due_ms, now),
            lang_attr(m),
            esc(&snippet(m)),
            esc(&tr(shared, op, "alarm-open")),
        );
    }
    let _ = write!(
        out,
        "</ul><form method=\"post\" action=\"/console/alarm/silence\" class=\"silence\">{}\
         <input type=\"hidden\" name=\"ids\" value=\"{}\">\
         <button type=\"submit\" id=\"silence\">{}</button> <span class=\"silenced-note\" hidden>{}</span></form></div>",
        super::html::csrf_field(op),
        esc(&ids.join(",")),
        esc(&tr(shared, op, "takeover-silence")),
        esc(&tr(shared, op, "takeover-silenced")),
    );
    out
}

/// The alarm banner, from the same queue as the "needs action" list, after the FLASH
/// takeover.
pub fn alarm_html(shared: &Shared, op: &Operator, q: &Queue) -> String {
    let takeover = takeover_html(shared, op, q);
    let banner = banner_html(shared, op, q);
    format!("{takeover}{banner}")
}

fn banner_html(shared: &Shared, op: &Operator, q: &Queue) -> String {
    let now = now_ms() as i64;
    let mut alarms = link_alarms(shared, op);
    alarms.extend(
        q.entries
            .iter()
            .filter_map(|(e, m)| message_alarm(shared, op, e, m, now)),
    );
    if alarms.is_empty() {
        return String::new();
    }
    let total = alarms.len();
    let mut items = String::new();
    for a in alarms.iter().take(ALARM_ROWS_MAX) {
        let _ = write!(
            items,
            "<li class=\"alarm-item alarm-{kind}\" data-alarm-id=\"{kind}-{id}\"><span class=\"alarm-sign\" aria-hidden=\"true\">⚠</span> \
             <strong>{}</strong> {}</li>",
            esc(&tr(shared, op, a.key)),
            a.html,
            kind = a.kind,
            id = esc(&a.id),
        );
    }
    if total > ALARM_ROWS_MAX {
        let _ = write!(
            items,
            "<li class=\"alarm-more\">{}</li>",
            esc(&tr_with(
                shared,
                op,
                "queue-more",
                &[("count", (total - ALARM_ROWS_MAX).to_string())]
            ))
        );
    }
    format!(
        "<div class=\"alarm\" role=\"alert\"><h2>{}</h2><ul>{items}</ul></div>",
        esc(&tr(shared, op, "alarm-title"))
    )
}
