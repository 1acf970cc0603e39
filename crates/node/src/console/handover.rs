//! Shift handover: what the outgoing watch officer hands over (what is open, what is owed
//! both ways, each link and its last link test) with a note, signed off in the audit log,
//! and the incoming officer's acknowledgment, audited too.
//!
//! The audit log is the duty log: a handover is an `handover` row (the note and the
//! counts at that moment), an acknowledgment a `handover-ack` row naming the handover it
//! takes over. Nothing else holds handover state, so the record cannot disagree with itself.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use detente_store::console::{AuditRow, AUDIT_ROWS_MAX};
use maud::{html, Markup};
use serde::Deserialize;

use super::html::{csrf_input, live_page};
use super::pages::{html, refuse, time_markup, tr, tr_with};
use super::{audit, Operator, Source};
use crate::Shared;

type Shr = State<Arc<Shared>>;

/// Longest handover note kept.
pub const HANDOVER_NOTE_CHARS_MAX: usize = 400;

/// Whether this role keeps the watch (and so hands it over).
fn on_watch(op: &Operator) -> bool {
    op.role.can_mark_read()
}

/// One link as handed over.
struct LinkLine {
    peer: String,
    state: &'static str,
    last_test_ms: Option<i64>,
    test_missed: bool,
}

/// What is handed over now.
struct Summary {
    owed_by_us: u64,
    owed_to_us: u64,
    overdue_by_us: u64,
    overdue_to_us: u64,
    links: Vec<LinkLine>,
}

/// The last handover in the duty log, and who acknowledged it (if someone did).
struct LastHandover {
    row: AuditRow,
    acknowledged: Option<AuditRow>,
}

async fn summary(shared: &Shared, op: &Operator) -> Summary {
    let q = super::queue::load(shared, op).await;
    let now = std::time::Instant::now();
    let links = shared
        .table
        .all()
        .iter()
        .map(|e| {
            let alarms = e.alarms.read().map(|a| a.clone()).unwrap_or_default();
            let state = e
                .status
                .read()
                .map_or("down", |s| s.current_state(now).name());
            LinkLine {
                peer: e.name.clone(),
                state,
                last_test_ms: alarms.last_test_ms,
                test_missed: alarms.test_missed,
            }
        })
        .collect();
    Summary {
        owed_by_us: q.owed_by_us,
        owed_to_us: q.owed_to_us,
        overdue_by_us: q.overdue_by_us,
        overdue_to_us: q.overdue_to_us,
        links,
    }
}

/// The newest handover and its acknowledgment, from the newest [`AUDIT_ROWS_MAX`] audit rows.
async fn last_handover(shared: &Shared) -> Option<LastHandover> {
    let rows = shared.store.audit(AUDIT_ROWS_MAX).await.ok()?;
    // Newest first: an acknowledgment of the newest handover comes before it.
    let at = rows.iter().position(|r| r.action == "handover")?;
    let key = at_key(&rows[at]);
    let acknowledged = rows[..at]
        .iter()
        .find(|r| r.action == "handover-ack" && r.detail == key)
        .cloned();
    Some(LastHandover {
        row: rows[at].clone(),
        acknowledged,
    })
}

/// How an acknowledgment names the handover it takes over: its time and who signed it off.
fn at_key(handover: &AuditRow) -> String {
    format!("{} {}", handover.at_ms, handover.login)
}

fn summary_html(shared: &Shared, op: &Operator, s: &Summary) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let totals = tr_with(
        shared,
        op,
        "queue-totals",
        &[
            ("ours", s.owed_by_us.to_string()),
            ("ours_overdue", s.overdue_by_us.to_string()),
            ("theirs", s.owed_to_us.to_string()),
            ("theirs_overdue", s.overdue_to_us.to_string()),
        ],
    );
    html! {
        section.handover-summary aria-labelledby="handover-open" {
            h2 #handover-open { (t("handover-open")) }
            p #handover-totals { (totals) }
            p { a href="/console?answered=no" { (t("handover-open-list")) } }
            table {
                caption { (t("handover-links")) }
                thead { tr {
                    th scope="col" { (t("link-peer")) }
                    th scope="col" { (t("link-state")) }
                    th scope="col" { (t("link-last-test")) }
                } }
                tbody {
                    @for l in &s.links {
                        tr data-peer=(l.peer) {
                            th scope="row" { (l.peer) }
                            td { (t(&format!("link-state-{}", l.state))) }
                            td {
                                @match l.last_test_ms {
                                    Some(ms) => (time_markup(shared, op, ms)),
                                    None => (t("never")),
                                }
                                @if l.test_missed { " " strong { "⚠ " (t("alarm-test-missed")) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn last_html(shared: &Shared, op: &Operator, last: Option<&LastHandover>) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    html! {
        section.handover-last aria-labelledby="handover-last" {
            h2 #handover-last { (t("handover-last")) }
            @match last {
                None => p { (t("handover-none")) },
                Some(h) => {
                    p #handover-by {
                        (tr_with(shared, op, "handover-by", &[("login", h.row.login.clone())])) " "
                        (time_markup(shared, op, h.row.at_ms))
                    }
                    blockquote #handover-note { (h.row.detail) }
                    @match &h.acknowledged {
                        Some(a) => p #handover-acknowledged {
                            "✓ " (tr_with(shared, op, "handover-acknowledged-by", &[("login", a.login.clone())])) " "
                            (time_markup(shared, op, a.at_ms))
                        },
                        None if on_watch(op) && h.row.login != op.login => {
                            form method="post" action="/console/handover" {
                                (csrf_input(op))
                                input type="hidden" name="action" value="acknowledge";
                                input type="hidden" name="of" value=(at_key(&h.row));
                                button type="submit" #handover-acknowledge { (t("handover-acknowledge")) }
                            }
                        },
                        None => p #handover-waiting { (t("handover-waiting")) },
                    }
                }
            }
        }
    }
}

pub async fn page(State(shared): Shr, op: Operator) -> Response {
    let s = summary(&shared, &op).await;
    let last = last_handover(&shared).await;
    let t = |k: &str| tr(&shared, &op, k);
    let main = html! {
        (last_html(&shared, &op, last.as_ref()))
        (summary_html(&shared, &op, &s))
        // Taking the watch includes checking that the alarm can be heard here.
        p.hint { a #settings-link href="/console/settings" { (t("handover-settings")) } }
        @if on_watch(&op) {
            form.handover method="post" action="/console/handover" {
                (csrf_input(&op))
                input type="hidden" name="action" value="hand-over";
                p {
                    label for="handover-note-input" { (t("handover-note")) }
                    textarea #handover-note-input name="note" rows="3" maxlength=(HANDOVER_NOTE_CHARS_MAX) {}
                }
                p { button type="submit" #handover-sign { (t("handover-sign")) } }
            }
        }
    };
    let title = t("nav-handover");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

#[derive(Deserialize)]
pub struct HandoverForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    note: String,
    /// The handover acknowledged, as [`at_key`] names it.
    #[serde(default)]
    of: String,
}

pub async fn post(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(form): Form<HandoverForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "csrf-refused");
    }
    if !on_watch(&op) {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-hand-over");
    }
    match form.action.as_str() {
        "hand-over" => {
            let s = summary(&shared, &op).await;
            let note: String = form
                .note
                .trim()
                .chars()
                .take(HANDOVER_NOTE_CHARS_MAX)
                .collect();
            // The note first (what the incoming officer reads), then the counts as they were.
            let detail = format!(
                "{note} [open: ours {} ({} overdue), theirs {} ({} overdue)]",
                s.owed_by_us, s.overdue_by_us, s.owed_to_us, s.overdue_to_us
            );
            audit(&shared, &op.login, "handover", &detail, source).await;
        }
        "acknowledge" => {
            let Some(last) = last_handover(&shared).await else {
                return refuse(&shared, &op, StatusCode::CONFLICT, "handover-gone");
            };
            // Only the newest handover, once, and not one's own.
            if at_key(&last.row) != form.of
                || last.acknowledged.is_some()
                || last.row.login == op.login
            {
                return refuse(&shared, &op, StatusCode::CONFLICT, "handover-gone");
            }
            audit(&shared, &op.login, "handover-ack", &form.of, source).await;
        }
        _ => return refuse(&shared, &op, StatusCode::BAD_REQUEST, "level-unknown"),
    }
    Redirect::to("/console/handover").into_response()
}
