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

use detente_proto::Precedence;
use detente_store::{Direction, Store, UnansweredRow};
use maud::{html, Markup};

use super::messages::MessageView;
use super::Operator;
use crate::{now_ms, service, Shared};

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
    pub entries: Vec<(Entry, MessageView)>,
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
pub fn overdue(entry: &Entry, m: &MessageView, now: i64) -> bool {
    m.overdue || now >= entry.due_ms
}

/// Whether a FLASH of ours missed its delivery deadline and is still not delivered.
pub fn undelivered(entry: &Entry, m: &MessageView, now: i64) -> bool {
    entry.delivery_due_ms.is_some_and(|due| now >= due) && m.receipts.delivered.is_none()
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
        if let Ok(m) = service::message_json(shared, &row, Some(&op.lang)).await {
            entries.push((e, MessageView::from_json(&m)));
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

/// A live countdown to `due` ("due in 4m 10s" / "overdue by 12s"), ticked by the script.
pub fn countdown_span(shared: &Shared, op: &Operator, due: i64, now: i64) -> Markup {
    let passed = now >= due;
    let text = if passed {
        let time = super::pages::duration_words(shared, &op.lang, now - due);
        tr_with(shared, op, "overdue-by", &[("time", time)])
    } else {
        let time = super::pages::duration_words(shared, &op.lang, due - now);
        tr_with(shared, op, "due-in", &[("time", time)])
    };
    let pattern = |k: &str| tr_with(shared, op, k, &[("time", "{}".into())]);
    // `data-passed`: the deadline had passed when this was rendered, so the script does not
    // ask the server again about it.
    html! {
        span.countdown data-deadline=(due) data-passed=[passed.then_some("yes")]
            data-due-in=(pattern("due-in")) data-overdue-by=(pattern("overdue-by")) { (text) }
    }
}

fn precedence_label(shared: &Shared, op: &Operator, p: Precedence) -> Markup {
    super::messages::precedence(shared, op, p.name())
}

/// The queue as HTML: a header with the totals and one line per entry.
pub fn queue_html(shared: &Shared, op: &Operator, q: &Queue) -> String {
    let now = now_ms() as i64;
    let totals = tr_with(
        shared,
        op,
        "queue-totals",
        &[
            ("ours", q.owed_by_us.to_string()),
            ("ours_overdue", q.overdue_by_us.to_string()),
            ("theirs", q.owed_to_us.to_string()),
            ("theirs_overdue", q.overdue_to_us.to_string()),
        ],
    );
    let shown = q.entries.len() as u64;
    let more = (q.owed_by_us + q.owed_to_us).saturating_sub(shown);
    let markup = html! {
        h2 #queue-title { (tr(shared, op, "queue-title")) }
        p.queue-totals {
            (totals) " · "
            // The open items are what a shift hands over.
            a #handover-link href="/console/handover" { (tr(shared, op, "handover-go")) }
        }
        @if q.entries.is_empty() {
            p.empty { (tr(shared, op, "queue-empty")) }
        } @else {
            ol.queue aria-labelledby="queue-title" {
                @for (e, m) in &q.entries { (queue_item(shared, op, e, m, now)) }
            }
            @if more > 0 {
                p.hint {
                    a href="/console?answered=no" {
                        (tr_with(shared, op, "queue-more", &[("count", more.to_string())]))
                    }
                }
            }
        }
    };
    markup.into_string()
}

fn queue_item(shared: &Shared, op: &Operator, e: &Entry, m: &MessageView, now: i64) -> Markup {
    let late = overdue(e, m, now);
    let (owner, sign, side, dir) = if e.incoming() {
        ("queue-ours", "→", "ours", "in")
    } else {
        ("queue-theirs", "←", "theirs", "out")
    };
    let state = if late {
        "queue-overdue"
    } else {
        "queue-pending"
    };
    html! {
        li class={ "q-item" @if late { " overdue" } " " (side) } data-id=(m.id) data-direction=(dir) {
            span.q-state { (tr(shared, op, state)) } " "
            (precedence_label(shared, op, e.precedence)) " "
            span.q-owner {
                span aria-hidden="true" { (sign) } " "
                (tr_with(shared, op, owner, &[("peer", e.row.peer.clone())]))
            } " "
            a href={ "/console/messages/" (m.id) } lang=[&m.language] { (m.snippet(SNIPPET_CHARS_MAX)) } " "
            span.q-topic { (super::pages::topic_markup(shared, &op.lang, &m.topic)) } " "
            (countdown_span(shared, op, e.due_ms, now))
        }
    }
}

/// One banner line: what is wrong, about which message, and where to go.
struct Alarm {
    kind: &'static str,
    key: &'static str,
    id: String,
    what: Markup,
    /// The peer it concerns, whose next step (if this node set one) goes with it.
    peer: Option<String>,
}

/// What this node's officers do next about `peer` (`peers.NAME.next_step`), with the
/// language it is written in (the node's); none when it is not set.
fn next_step(shared: &Shared, peer: &str) -> Option<(String, String)> {
    let c = shared.config.read().ok()?;
    let step = &c.peers.iter().find(|p| p.name == peer)?.next_step;
    (!step.is_empty()).then(|| (step.clone(), c.lang.clone()))
}

fn message_alarm(
    shared: &Shared,
    op: &Operator,
    e: &Entry,
    m: &MessageView,
    now: i64,
) -> Option<Alarm> {
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
    let go = if e.incoming() {
        "alarm-open"
    } else {
        "alarm-view"
    };
    let what = html! {
        (precedence_label(shared, op, e.precedence)) " · "
        (tr(shared, op, "topic")) ": " (super::pages::topic_markup(shared, &op.lang, &m.topic)) " · "
        q.alarm-text lang=[&m.language] { (m.snippet(SNIPPET_CHARS_MAX)) } " "
        a href={ "/console/messages/" (m.id) } { (tr(shared, op, go)) }
    };
    Some(Alarm {
        kind,
        key,
        id: m.id.clone(),
        what,
        // A FLASH just received needs an answer, not a fallback.
        peer: (kind == "missed").then(|| e.row.peer.clone()),
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
                let peer = tr_with(shared, op, "alarm-peer", &[("peer", entry.name.clone())]);
                out.push(Alarm {
                    kind: "link",
                    key,
                    id: format!("{key}-{}", entry.name),
                    what: html! {
                        (peer) " " a href="/console/link" { (tr(shared, op, "alarm-link-view")) }
                    },
                    peer: Some(entry.name.clone()),
                });
            }
        }
    }
    out
}

/// FLASH messages received and not yet acknowledged take the screen: one full-width block
/// each, which stays until someone answers it, with a button to silence the repeating sound
/// (an audited action; the alert itself stays).
fn takeover_html(shared: &Shared, op: &Operator, q: &Queue) -> Markup {
    let flashes: Vec<&(Entry, MessageView)> = q
        .entries
        .iter()
        .filter(|(e, _)| e.incoming() && e.precedence == Precedence::Flash)
        .take(ALARM_ROWS_MAX)
        .collect();
    if flashes.is_empty() {
        return html! {};
    }
    let now = now_ms() as i64;
    let ids: Vec<&str> = flashes.iter().map(|(_, m)| m.id.as_str()).collect();
    let count = flashes.len().to_string();
    html! {
        div.takeover #takeover {
            h2 { (tr_with(shared, op, "takeover-title", &[("count", count)])) }
            ul {
                @for (e, m) in &flashes {
                    li data-flash-id=(m.id) {
                        p.takeover-head {
                            (precedence_label(shared, op, e.precedence)) " "
                            (tr_with(shared, op, "received-from", &[("peer", e.row.peer.clone())]))
                            " · " (super::pages::topic_markup(shared, &op.lang, &m.topic)) " "
                            (countdown_span(shared, op, e.due_ms, now))
                        }
                        p.takeover-text lang=[&m.language] { (m.snippet(SNIPPET_CHARS_MAX)) }
                        p {
                            a.button.takeover-open href={ "/console/messages/" (m.id) } {
                                (tr(shared, op, "alarm-open"))
                            }
                        }
                    }
                }
            }
            form.silence method="post" action="/console/alarm/silence" {
                (super::html::csrf_input(op))
                input type="hidden" name="ids" value=(ids.join(","));
                button type="submit" #silence { (tr(shared, op, "takeover-silence")) } " "
                span.silenced-note hidden { (tr(shared, op, "takeover-silenced")) }
            }
        }
    }
}

/// The alarm banner, from the same queue as the "needs action" list, after the FLASH
/// takeover.
pub fn alarm_html(shared: &Shared, op: &Operator, q: &Queue) -> String {
    let markup = html! {
        (takeover_html(shared, op, q))
        (banner_html(shared, op, q))
    };
    markup.into_string()
}

fn banner_html(shared: &Shared, op: &Operator, q: &Queue) -> Markup {
    let now = now_ms() as i64;
    let mut alarms = link_alarms(shared, op);
    alarms.extend(
        q.entries
            .iter()
            .filter_map(|(e, m)| message_alarm(shared, op, e, m, now)),
    );
    if alarms.is_empty() {
        return html! {};
    }
    let more = alarms.len().saturating_sub(ALARM_ROWS_MAX);
    html! {
        div.alarm role="alert" {
            h2 { (tr(shared, op, "alarm-title")) }
            ul {
                @for a in alarms.iter().take(ALARM_ROWS_MAX) {
                    li class={ "alarm-item alarm-" (a.kind) } data-alarm-id={ (a.kind) "-" (a.id) } {
                        span.alarm-sign aria-hidden="true" { "⚠" } " "
                        strong { (tr(shared, op, a.key)) } " " (a.what)
                        @if let Some((step, lang)) = a.peer.as_deref().and_then(|p| next_step(shared, p)) {
                            " "
                            span.alarm-next {
                                strong { (tr(shared, op, "alarm-next-step")) } " "
                                span lang=(lang) { (step) }
                            }
                        }
                    }
                }
                @if more > 0 {
                    li.alarm-more { (tr_with(shared, op, "queue-more", &[("count", more.to_string())])) }
                }
            }
        }
    }
}
