//! The pages that show the node's state and records rather than messages: link health, the
//! transcript's checks, the counterparts directory and the audit log (and its CSV download).
//!
//! Each page is two steps: a handler gathers a typed view model (plain structs of text and
//! numbers, read from the store and the peer table), and a maud template renders it, escaping
//! every value by construction. The templates read nothing but their view model, so what a
//! page can show is what its struct holds.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use detente_proto::{ChannelId, MessageId};
use detente_store::console::{AuditRow, AUDIT_ROWS_MAX};
use detente_store::{InboxQuery, Store};
use maud::{html, Markup};
use serde::Deserialize;

use super::html::{live_page, url_value};
use super::pages::{
    both_times, html, language_name, refuse, time_markup, tr, tr_with, tz_label, VERIFY_TAIL_MAX,
};
use super::{audit, Operator, Source};
use crate::service;
use crate::{now_ms, Shared};

type Shr = State<Arc<Shared>>;

/// A table's column headings, from their text keys.
fn heads(t: &dyn Fn(&str) -> String, keys: &[&str]) -> Markup {
    html! { thead { tr { @for k in keys { th scope="col" { (t(k)) } } } } }
}

// ---------------------------------------------------------------- link health

/// One peer's row on the link page.
struct LinkRow {
    name: String,
    /// `up`, `degraded` or `down`.
    state: &'static str,
    rtt: Option<String>,
    /// The peer's clock against ours, in words, and whether it is beyond the warning.
    clock: Option<(String, bool)>,
    last_heard_ms: Option<i64>,
    last_test_ms: Option<i64>,
    pending_out: u64,
    pending_flash: u64,
    held_in: usize,
    address: Option<String>,
    last_error: Option<String>,
}

async fn link_rows(shared: &Shared, op: &Operator) -> Vec<LinkRow> {
    let me = shared.secret.public();
    let mut rows = Vec::new();
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
        let held_in = shared
            .store
            .held(channel.0, *entry.key.as_bytes(), 10_000)
            .await
            .map_or(0, |h| h.len());
        rows.push(LinkRow {
            state: s.state.name(),
            rtt: s
                .rtt_ms
                .map(|r| tr_with(shared, op, "link-rtt-value", &[("ms", format!("{r:.1}"))])),
            clock: s.view.as_ref().and_then(|v| {
                let c = v.clock_offset()?;
                Some(if v.clock_skewed().is_none() {
                    let ms = c.offset_ms.unsigned_abs() + c.error_ms.unwrap_or(0);
                    (
                        tr_with(shared, op, "link-clock-in-step", &[("ms", ms.to_string())]),
                        false,
                    )
                } else {
                    let keys = ("link-clock-behind", "link-clock-ahead");
                    (super::status::clock_words(shared, op, c, keys), true)
                })
            }),
            last_heard_ms: s
                .last_heard
                .map(|i| now_ms() as i64 - i.elapsed().as_millis() as i64),
            last_test_ms: last_test_ms(shared, &entry.name).await,
            pending_out: counts.pending,
            pending_flash: counts.pending_flash,
            held_in,
            address: s.address.clone(),
            last_error: s.last_error.clone(),
            name: entry.name.clone(),
        });
    }
    rows
}

fn link_table(shared: &Shared, op: &Operator, rows: &[LinkRow]) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let when = |ms: Option<i64>| match ms {
        Some(ms) => time_markup(shared, op, ms),
        None => html! { (t("never")) },
    };
    html! {
        table.links {
            caption { (t("link-caption")) }
            (heads(&t, &["link-peer", "link-state", "link-rtt", "link-clock", "link-last-heard", "link-last-test",
                         "link-backlog-out", "link-backlog-in", "link-address", "link-last-error"]))
            tbody {
                @for r in rows {
                    tr class={ "link-" (r.state) } data-peer=(r.name) {
                        th scope="row" { (r.name) }
                        td.state {
                            span aria-hidden="true" {
                                @match r.state { "up" => "●", "degraded" => "◐", _ => "○" }
                            }
                            " " (t(&format!("link-state-{}", r.state)))
                        }
                        td { (r.rtt.as_deref().unwrap_or("—")) }
                        @match &r.clock {
                            Some((words, true)) => td.clock-skew { span aria-hidden="true" { "⚠ " } (words) },
                            Some((words, false)) => td { (words) },
                            None => td { "—" },
                        }
                        td { (when(r.last_heard_ms)) }
                        td { (when(r.last_test_ms)) }
                        td {
                            (r.pending_out)
                            @if r.pending_flash > 0 { " (" (r.pending_flash) " " (t("prec-flash")) ")" }
                        }
                        td { (r.held_in) }
                        td translate="no" { (r.address.as_deref().unwrap_or("—")) }
                        td { (r.last_error.as_deref().unwrap_or("—")) }
                    }
                }
            }
        }
        p.hint { (t("link-backlog-hint")) }
    }
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
    let rows = link_rows(&shared, &op).await;
    let main = html! {
        div #live data-live="/console/live/link" data-refresh-s="2" aria-live="off" {
            (link_table(&shared, &op, &rows))
        }
    };
    let title = tr(&shared, &op, "nav-link");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

pub async fn link_live(State(shared): Shr, op: Operator) -> Response {
    let rows = link_rows(&shared, &op).await;
    html(
        StatusCode::OK,
        link_table(&shared, &op, &rows).into_string(),
    )
}

// ---------------------------------------------------------------- transcript

/// The result of checking the newest envelopes of one stream.
struct StreamCheck {
    sender: String,
    size: u64,
    head: String,
    checked: u64,
    problem: Option<String>,
}

/// One channel as the transcript page shows it.
struct ChannelView {
    peer: String,
    channel_hex: String,
    /// The agreed charter's version and digest, if there is one.
    charter: Option<(u32, String)>,
    /// The agreed charter's deadlines and link-test interval, in words.
    charter_terms: Option<String>,
    /// Why the peer's latest terms are not agreed (terms below our floors).
    refusals: Vec<String>,
    /// The latest co-signed checkpoint: its time and each member's stream size.
    checkpoint: Option<(i64, Vec<(String, u64)>)>,
    streams: Vec<StreamCheck>,
}

/// Check the newest [`VERIFY_TAIL_MAX`] envelopes of a stream: each signature against the
/// sender's pinned key, each `prev` against the id of the envelope before it, no gap.
async fn check_stream(
    shared: &Shared,
    channel: ChannelId,
    name: String,
    sender: detente_proto::PartyKey,
) -> StreamCheck {
    let mut c = StreamCheck {
        sender: name,
        size: 0,
        head: String::new(),
        checked: 0,
        problem: None,
    };
    let streams = shared.store.streams().await.unwrap_or_default();
    let Some(state) = streams
        .iter()
        .find(|s| s.channel == channel.0 && s.sender == *sender.as_bytes())
    else {
        return c;
    };
    c.size = state.next_seq.saturating_sub(1);
    c.head = hex::encode(state.last_id);
    let first = c.size.saturating_sub(VERIFY_TAIL_MAX - 1).max(1);
    let mut expected_next: Option<MessageId> = None;
    for seq in (first..=c.size).rev() {
        let row = match shared
            .store
            .message_at(channel.0, *sender.as_bytes(), seq)
            .await
        {
            Ok(Some(r)) => r,
            _ => {
                c.problem = Some(format!("seq {seq}: missing"));
                break;
            }
        };
        let verified = match detente_proto::VerifiedEnvelope::decode(&row.bytes, Some(&sender)) {
            Ok(v) => v,
            Err(e) => {
                c.problem = Some(format!("seq {seq}: {e}"));
                break;
            }
        };
        if let Some(prev_of_next) = expected_next {
            if verified.id() != prev_of_next {
                c.problem = Some(format!("seq {}: prev does not match seq {seq}", seq + 1));
                break;
            }
        } else if verified.id().0 != state.last_id {
            c.problem = Some(format!("seq {seq}: not the stream head"));
            break;
        }
        expected_next = Some(verified.envelope().prev);
        c.checked += 1;
    }
    c
}

/// An agreed charter's deadlines and link-test interval in the operator's language, so that
/// every new version shows what it changed.
fn charter_terms(shared: &Shared, op: &Operator, c: &detente_proto::Charter) -> String {
    let time = |d: std::time::Duration| {
        super::pages::duration_words(shared, &op.lang, d.as_millis() as i64)
    };
    let d = &c.deadlines;
    let args = [
        ("flash_delivered", time(d.flash_delivered)),
        ("flash_acknowledged", time(d.flash_acknowledged)),
        ("immediate", time(d.immediate_acknowledged)),
        ("priority", time(d.priority_acknowledged)),
        ("routine", time(d.routine_acknowledged)),
        ("link_test", time(c.link_test_interval)),
    ];
    tr_with(shared, op, "charter-in-force", &args)
}

async fn channel_views(shared: &Shared, op: &Operator) -> Vec<ChannelView> {
    let me = shared.secret.public();
    let my_name = shared
        .config
        .read()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let mut views = Vec::new();
    for entry in shared.table.all() {
        let channel = ChannelId::for_pair(&me, &entry.key);
        let agreed = shared.charter(&entry.name);
        let charter = agreed.as_ref().map(|c| {
            let version = shared.charters.get(&entry.name).version;
            (version, hex::encode(c.digest()))
        });
        let charter_terms = agreed.map(|c| charter_terms(shared, op, &c));
        let refusals = super::status::charter_refusals(shared, op, &entry.name);
        let checkpoint = latest_cosigned(shared, channel).await.map(|c| {
            let sizes = c
                .members
                .iter()
                .map(|m| {
                    let who = if m.key == me { &my_name } else { &entry.name };
                    (who.clone(), m.size)
                })
                .collect();
            (c.time_ms as i64, sizes)
        });
        let mut streams = Vec::new();
        for (name, key) in [(my_name.clone(), me), (entry.name.clone(), entry.key)] {
            streams.push(check_stream(shared, channel, name, key).await);
        }
        views.push(ChannelView {
            peer: entry.name.clone(),
            channel_hex: channel.to_hex(),
            charter,
            charter_terms,
            refusals,
            checkpoint,
            streams,
        });
    }
    views
}

fn channel_section(shared: &Shared, op: &Operator, v: &ChannelView) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let checkpoint = match &v.checkpoint {
        None => t("checkpoint-none"),
        Some((time_ms, sizes)) => {
            let sizes: Vec<String> = sizes.iter().map(|(who, n)| format!("{who} {n}")).collect();
            tr_with(
                shared,
                op,
                "checkpoint-cosigned",
                &[
                    ("time", both_times(shared, op, *time_ms)),
                    ("sizes", sizes.join(", ")),
                ],
            )
        }
    };
    html! {
        section.channel {
            h2 { (tr_with(shared, op, "transcript-channel", &[("peer", v.peer.clone())])) }
            p { (t("channel-id")) ": " code { (v.channel_hex) } }
            h3 { (t("charter-title")) }
            p.charter {
                @match &v.charter {
                    // The digest is a code: shown as one, inside the sentence.
                    Some((version, digest)) => {
                        @let text = tr_with(shared, op, "charter-agreed",
                            &[("version", version.to_string()), ("digest", digest.clone())]);
                        @let (before, after) = text.split_once(digest.as_str()).unwrap_or((&text, ""));
                        (before) code { (digest) } (after)
                    }
                    None => (t("charter-none")),
                }
            }
            @if let Some(terms) = &v.charter_terms {
                p.charter-terms { (terms) }
            }
            @for why in &v.refusals {
                p.charter-refused role="status" { span aria-hidden="true" { "⚠ " } (why) }
            }
            h3 { (t("checkpoint-title")) }
            p.checkpoint { (checkpoint) }
            table {
                caption { (t("streams-caption")) }
                (heads(&t, &["stream-sender", "stream-size", "stream-head", "stream-check"]))
                tbody {
                    @for c in &v.streams {
                        tr {
                            th scope="row" { (c.sender) }
                            td { (c.size) }
                            td { code { (c.head) } }
                            td.verify {
                                @match &c.problem {
                                    None => span.ok {
                                        span aria-hidden="true" { "✓" } " "
                                        (tr_with(shared, op, "stream-ok", &[("count", c.checked.to_string())]))
                                    },
                                    Some(p) => span.bad {
                                        span aria-hidden="true" { "✗" } " "
                                        (t("stream-broken")) ": " (p)
                                    },
                                }
                            }
                        }
                    }
                }
            }
            @if op.role.can_export() {
                p {
                    a.button href={ "/console/transcript/export?peer=" (url_value(&v.peer)) } download {
                        (t("export"))
                    }
                }
            }
        }
    }
}

pub async fn transcript(State(shared): Shr, op: Operator) -> Response {
    let views = channel_views(&shared, &op).await;
    let main = html! {
        p { (tr(&shared, &op, "transcript-intro")) }
        @for v in &views { (channel_section(&shared, &op, v)) }
    };
    let title = tr(&shared, &op, "nav-transcript");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
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
    let newest = detente_store::CheckpointPage::newest_cosigned(1);
    let rows = shared.store.checkpoint_page(channel.0, newest).await.ok()?;
    rows.iter()
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
    let body = match service::export_body(&shared, &q.peer).await {
        Ok((body, _)) => body,
        Err(e) => {
            let title = tr(&shared, &op, "nav-transcript");
            let main = html! { p.bad { (e.to_string()) } };
            let body = super::html::page(&shared, Some(&op), &title, main);
            return html(StatusCode::SERVICE_UNAVAILABLE, body);
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

// ---------------------------------------------------------------- counterparts

/// One node in the counterparts directory.
struct NodeRow {
    name: String,
    party: String,
    fingerprint: String,
    lang: String,
    tz: String,
    addresses: String,
}

/// One pair of counterpart positions (ours, theirs) on a channel.
struct PositionRow {
    peer: String,
    ours: String,
    theirs: String,
}

fn directory(shared: &Shared, op: &Operator) -> Option<(Vec<NodeRow>, Vec<PositionRow>)> {
    let t = |k: &str| tr(shared, op, k);
    let c = shared.config.read().ok()?.clone();
    let me = shared.secret.public();
    let mut nodes = vec![NodeRow {
        name: format!("{} ({})", c.name, t("cp-this-node")),
        party: c.party.clone(),
        fingerprint: me.fingerprint(),
        lang: language_name(shared, &op.lang, &c.lang),
        tz: tz_label(&op.lang, &c.tz, &c.tz),
        addresses: shared.peer_addr.to_string(),
    }];
    let mut positions = Vec::new();
    for entry in shared.table.all() {
        let Some(charter) = shared.charter(&entry.name) else {
            nodes.push(NodeRow {
                name: entry.name.clone(),
                party: t("cp-unknown"),
                fingerprint: entry.key.fingerprint(),
                lang: t("cp-unknown"),
                tz: t("cp-unknown"),
                addresses: entry.addrs.join(", "),
            });
            continue;
        };
        for m in charter.members.iter().filter(|m| m.key != me) {
            nodes.push(NodeRow {
                name: entry.name.clone(),
                party: m.party.clone(),
                fingerprint: m.key.fingerprint(),
                lang: language_name(shared, &op.lang, &m.lang),
                tz: tz_label(&op.lang, &m.tz, &m.tz),
                addresses: m.addresses.join(", "),
            });
        }
        // Positions: ours first, whatever the charter's member order.
        let we_are_first = charter.members.first().is_some_and(|m| m.key == me);
        for cp in &charter.counterparts {
            let (ours, theirs) = if we_are_first {
                (&cp.first, &cp.second)
            } else {
                (&cp.second, &cp.first)
            };
            positions.push(PositionRow {
                peer: entry.name.clone(),
                ours: ours.clone(),
                theirs: theirs.clone(),
            });
        }
    }
    Some((nodes, positions))
}

fn directory_tables(
    shared: &Shared,
    op: &Operator,
    nodes: &[NodeRow],
    positions: &[PositionRow],
) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    html! {
        p { (t("counterparts-intro")) }
        table {
            caption { (t("counterparts-caption")) }
            (heads(&t, &["cp-node", "cp-party", "cp-fingerprint", "cp-language", "cp-tz", "cp-addresses"]))
            tbody {
                @for n in nodes {
                    tr {
                        th scope="row" translate="no" { (n.name) }
                        td translate="no" { (n.party) }
                        td { code { (n.fingerprint) } }
                        td { (n.lang) }
                        td { (n.tz) }
                        td translate="no" { (n.addresses) }
                    }
                }
            }
        }
        table #positions {
            caption { (t("positions-caption")) }
            (heads(&t, &["positions-ours", "positions-theirs", "cp-node"]))
            tbody {
                @if positions.is_empty() {
                    tr { td colspan="3" { (t("positions-none")) " " code { "detente counterpart add" } } }
                }
                @for p in positions { tr { td { (p.ours) } td { (p.theirs) } td { (p.peer) } } }
            }
        }
        (next_steps_table(shared, op))
        p.hint { (t("counterparts-hint")) }
    }
}

/// What this node's officers do when the link to each peer fails, a link test is missed or
/// a message is overdue (`peers.NAME.next_step`; the alarm banner shows the same text).
fn next_steps_table(shared: &Shared, op: &Operator) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let Ok(c) = shared.config.read().map(|c| c.clone()) else {
        return html! {};
    };
    html! {
        table #next-steps {
            caption { (t("next-steps-caption")) }
            (heads(&t, &["cp-node", "next-steps-step"]))
            tbody {
                @for peer in &c.peers {
                    tr {
                        th scope="row" translate="no" { (peer.name) }
                        @if peer.next_step.is_empty() {
                            td { (t("next-steps-none")) " " code { "detente config set peers." (peer.name) ".next_step TEXT" } }
                        } @else {
                            td lang=(c.lang) { (peer.next_step) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn counterparts(State(shared): Shr, op: Operator) -> Response {
    let Some((nodes, positions)) = directory(&shared, &op) else {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return refuse(&shared, &op, status, "store-unavailable");
    };
    let main = directory_tables(&shared, &op, &nodes, &positions);
    let title = tr(&shared, &op, "nav-counterparts");
    html(StatusCode::OK, live_page(&shared, &op, &title, main).await)
}

// ---------------------------------------------------------------- audit log

/// Audit rows shown on the audit page.
const AUDIT_PAGE_ROWS: usize = 1000;
/// Longest login or action accepted as an audit filter; a longer one is ignored.
const AUDIT_FILTER_BYTES_MAX: usize = 64;

/// The audit log's filters, from the query string: exact login, exact action.
#[derive(Deserialize, Default)]
pub struct AuditFilter {
    #[serde(default)]
    login: String,
    #[serde(default)]
    action: String,
}

impl AuditFilter {
    fn value(v: &str) -> Option<&str> {
        Some(v.trim()).filter(|v| !v.is_empty() && v.len() <= AUDIT_FILTER_BYTES_MAX)
    }

    fn keeps(&self, r: &AuditRow) -> bool {
        Self::value(&self.login).is_none_or(|l| r.login == l)
            && Self::value(&self.action).is_none_or(|a| r.action == a)
    }

    fn params(&self) -> String {
        [("login", &self.login), ("action", &self.action)]
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", url_value(Self::value(v)?))))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// The newest audit rows (at most [`AUDIT_ROWS_MAX`] read) that the filter keeps, at most
/// `limit`.
async fn audit_rows(shared: &Shared, f: &AuditFilter, limit: usize) -> Vec<AuditRow> {
    let rows = shared.store.audit(AUDIT_ROWS_MAX).await.unwrap_or_default();
    rows.into_iter()
        .filter(|r| f.keeps(r))
        .take(limit)
        .collect()
}

async fn audit_page(shared: &Shared, op: &Operator, f: &AuditFilter) -> Response {
    let t = |k: &str| tr(shared, op, k);
    let rows = audit_rows(shared, f, AUDIT_PAGE_ROWS).await;
    let params = f.params();
    let main = html! {
        form.filters method="get" action="/console/audit" aria-label=(t("audit-filter-label")) {
            p {
                label for="audit-login" { (t("audit-login")) }
                input #audit-login name="login" maxlength=(AUDIT_FILTER_BYTES_MAX) value=(f.login);
            }
            p {
                label for="audit-action" { (t("audit-action")) }
                input #audit-action name="action" maxlength=(AUDIT_FILTER_BYTES_MAX) value=(f.action);
            }
            p {
                button type="submit" #audit-apply { (t("filter-apply")) } " "
                a href="/console/audit" { (t("filter-clear")) }
            }
        }
        p { a.button #audit-csv href={ "/console/audit/export.csv?" (params) } download { (t("audit-csv")) } }
        table.audit {
            caption { (t("audit-caption")) }
            (heads(&t, &["audit-time", "audit-login", "audit-action", "audit-detail", "audit-source"]))
            tbody {
                @for r in &rows {
                    tr {
                        td { (time_markup(shared, op, r.at_ms)) }
                        td translate="no" { (r.login) }
                        td translate="no" { (r.action) }
                        td translate="no" { (r.detail) }
                        td translate="no" { (r.source) }
                    }
                }
            }
        }
    };
    let title = t("nav-audit");
    html(StatusCode::OK, live_page(shared, op, &title, main).await)
}

pub async fn audit_log(State(shared): Shr, op: Operator, Query(f): Query<AuditFilter>) -> Response {
    if !op.role.can_read_audit() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-audit");
    }
    audit_page(&shared, &op, &f).await
}

/// A cell as a spreadsheet should show it: text that a spreadsheet would take for a formula
/// (`=`, `+`, `-`, `@`, tab, carriage return first) is kept as text by a leading `'`.
fn csv_cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

/// The audit log as filtered, as CSV (UTC times, RFC 3339), at most [`AUDIT_ROWS_MAX`] rows;
/// the download itself is recorded in the audit log.
pub async fn audit_csv(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Query(f): Query<AuditFilter>,
) -> Response {
    if !op.role.can_read_audit() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-audit");
    }
    let rows = audit_rows(&shared, &f, AUDIT_ROWS_MAX as usize).await;
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut written = out
        .write_record(["time", "login", "action", "detail", "source"])
        .is_ok();
    for r in &rows {
        let time = crate::time_text(r.at_ms);
        let cells = [&time, &r.login, &r.action, &r.detail, &r.source].map(|c| csv_cell(c));
        written &= out.write_record(&cells).is_ok();
    }
    let Some(bytes) = out.into_inner().ok().filter(|_| written) else {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return refuse(&shared, &op, status, "store-unavailable");
    };
    audit(&shared, &op.login, "audit-export", &f.params(), source).await;
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"detente-audit.csv\"",
            ),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_look_like_formulas_stay_text() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("login"), "login");
        assert_eq!(csv_cell("127.0.0.1"), "127.0.0.1");
    }
}
