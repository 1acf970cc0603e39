//! The status light on every page: per peer, the link up / degraded / down and since when
//! (nothing heard since), the last confirmed link test, and the standing alarms.
//!
//! The state is computed when the light is read (`LinkStatus::current_state`), so a peer
//! that dies turns the light `down` three heartbeats later without any event; the page asks
//! again every heartbeat (`data-refresh-ms`).

use std::fmt::Write;
use std::time::Instant;

use super::html::esc;
use super::Operator;
use crate::{now_ms, Shared};

/// How often the light is refreshed by the page: one heartbeat, at least this.
pub const REFRESH_MS_MIN: u64 = 250;

/// The page's refresh interval for the light.
pub fn refresh_ms(shared: &Shared) -> u64 {
    shared
        .config
        .read()
        .map(|c| c.link_config().heartbeat.as_millis() as u64)
        .unwrap_or(2000)
        .max(REFRESH_MS_MIN)
}

fn tr(shared: &Shared, op: &Operator, key: &str) -> String {
    shared.console.i18n.text(&op.lang, key)
}

fn tr_with(shared: &Shared, op: &Operator, key: &str, args: &[(&str, String)]) -> String {
    shared.console.i18n.text_with(&op.lang, key, args)
}

/// The light as HTML: one item per peer.
pub fn status_html(shared: &Shared, op: &Operator) -> String {
    let now = Instant::now();
    let wall = now_ms() as i64;
    let mut out = format!(
        "<ul class=\"lights\" aria-label=\"{}\">",
        esc(&tr(shared, op, "status-label"))
    );
    for entry in shared.table.all() {
        let Ok(s) = entry.status.read().map(|s| s.clone()) else {
            continue;
        };
        let alarms = entry.alarms.read().map(|a| a.clone()).unwrap_or_default();
        let state = s.current_state(now).name();
        let sign = match state {
            "up" => "●",
            "degraded" => "◐",
            _ => "○",
        };
        let heard = s
            .last_heard
            .map(|i| wall - now.saturating_duration_since(i).as_millis() as i64);
        let since = match (state, heard) {
            ("up", _) => String::new(),
            (_, Some(ms)) => tr_with(
                shared,
                op,
                "status-heard",
                &[("time", super::pages::clock_text(shared, op, ms))],
            ),
            (_, None) => tr(shared, op, "status-never-heard"),
        };
        let test = alarms.last_test_ms.map_or_else(
            || tr(shared, op, "status-test-none"),
            |ms| {
                tr_with(
                    shared,
                    op,
                    "status-test",
                    &[("time", super::pages::clock_text(shared, op, ms))],
                )
            },
        );
        let mut flags = Vec::new();
        if alarms.test_missed {
            flags.push(tr(shared, op, "alarm-test-missed"));
        }
        let overdue = alarms.overdue_in + alarms.overdue_out;
        if overdue > 0 {
            flags.push(tr_with(
                shared,
                op,
                "status-overdue",
                &[("count", overdue.to_string())],
            ));
        }
        let _ = write!(
            out,
            "<li class=\"light link-{state}\" data-peer=\"{name}\" data-state=\"{state}\">\
             <span class=\"light-sign\" aria-hidden=\"true\">{sign}</span> <strong>{name}</strong> \
             <span class=\"light-state\">{}</span>{} <span class=\"light-test\">· {}</span>{}</li>",
            esc(&tr(shared, op, &format!("link-state-{state}"))),
            if since.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"light-since\">{}</span>", esc(&since))
            },
            esc(&test),
            if flags.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"light-alarms\">⚠ {}</span>",
                    esc(&flags.join(" · "))
                )
            },
            name = esc(&entry.name),
        );
    }
    out.push_str("</ul>");
    out
}
