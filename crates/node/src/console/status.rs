//! The status light on every page: per peer, the link up / degraded / down and since when
//! (nothing heard since), the last confirmed link test, the peer's clock when it is off
//! beyond `link.clock_skew_warn`, and the standing alarms.
//!
//! The state is computed when the light is read (`LinkStatus::current_state`), so a peer
//! that dies turns the light `down` three heartbeats later without any event; the page asks
//! again every heartbeat (`data-refresh-ms`). A maud template renders a typed view of it.

use std::time::Instant;

use maud::html;

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

/// One peer's light.
struct Light {
    name: String,
    /// `up`, `degraded` or `down`.
    state: &'static str,
    /// Since when nothing was heard, when the link is not up.
    since: Option<String>,
    test: String,
    /// Standing alarms, in words.
    alarms: Vec<String>,
}

fn lights(shared: &Shared, op: &Operator) -> Vec<Light> {
    let now = Instant::now();
    let wall = now_ms() as i64;
    let clock = |ms| super::pages::clock_text(shared, op, ms);
    let mut lights = Vec::new();
    for entry in shared.table.all() {
        let Ok(s) = entry.status.read().map(|s| s.clone()) else {
            continue;
        };
        let alarms = entry.alarms.read().map(|a| a.clone()).unwrap_or_default();
        let state = s.current_state(now).name();
        let heard = s
            .last_heard
            .map(|i| wall - now.saturating_duration_since(i).as_millis() as i64);
        let since = match (state, heard) {
            ("up", _) => None,
            (_, Some(ms)) => Some(tr_with(shared, op, "status-heard", &[("time", clock(ms))])),
            (_, None) => Some(tr(shared, op, "status-never-heard")),
        };
        let test = alarms.last_test_ms.map_or_else(
            || tr(shared, op, "status-test-none"),
            |ms| tr_with(shared, op, "status-test", &[("time", clock(ms))]),
        );
        let mut flags = Vec::new();
        if let Some(c) = s.view.as_ref().and_then(|v| v.clock_skewed()) {
            let keys = ("status-clock-behind", "status-clock-ahead");
            flags.push(clock_words(shared, op, c, keys));
        }
        if alarms.test_missed {
            flags.push(tr(shared, op, "alarm-test-missed"));
        }
        let overdue = alarms.overdue_in + alarms.overdue_out;
        if overdue > 0 {
            let count = overdue.to_string();
            flags.push(tr_with(shared, op, "status-overdue", &[("count", count)]));
        }
        flags.extend(charter_refusals(shared, op, &entry.name));
        lights.push(Light {
            name: entry.name.clone(),
            state,
            since,
            test,
            alarms: flags,
        });
    }
    lights
}

/// How far the peer's clock is from ours, in the operator's language: the text of `behind`
/// or `ahead` (keys taking `$amount`), the amount rounded to the second (an offset 1 ms
/// short of 3 h reads 3h 00m 00s). For the status light and the link page.
pub fn clock_words(
    shared: &Shared,
    op: &Operator,
    c: detente_proto::ClockOffset,
    (behind, ahead): (&str, &str),
) -> String {
    let amount = super::pages::duration_words(shared, &op.lang, c.offset_ms.abs() + 500);
    let key = if c.offset_ms < 0 { behind } else { ahead };
    tr_with(shared, op, key, &[("amount", amount)])
}

/// Why the charter the peer's latest terms make is not agreed: one sentence per term below
/// our floors ("Charter with beijing not agreed: they ask FLASH acknowledged within 1m 00s;
/// our floor is …"), in the operator's language.
pub fn charter_refusals(shared: &Shared, op: &Operator, peer: &str) -> Vec<String> {
    let time = |d: std::time::Duration| {
        super::pages::duration_words(shared, &op.lang, d.as_millis() as i64)
    };
    shared
        .charters
        .get(peer)
        .refused
        .iter()
        .map(|b| {
            let key = match b.term {
                "deadlines.flash_delivered" => "charter-ask-flash-delivered",
                "deadlines.flash_acknowledged" => "charter-ask-flash-acknowledged",
                "deadlines.immediate_acknowledged" => "charter-ask-immediate-acknowledged",
                "deadlines.priority_acknowledged" => "charter-ask-priority-acknowledged",
                "deadlines.routine_acknowledged" => "charter-ask-routine-acknowledged",
                _ => "charter-ask-link-test",
            };
            let ask = tr_with(shared, op, key, &[("time", time(b.offered))]);
            let args = [
                ("peer", peer.to_string()),
                ("ask", ask),
                ("floor", time(b.floor)),
            ];
            tr_with(shared, op, "charter-refused", &args)
        })
        .collect()
}

/// The light as HTML: one item per peer.
pub fn status_html(shared: &Shared, op: &Operator) -> String {
    let lights = lights(shared, op);
    let markup = html! {
        ul.lights aria-label=(tr(shared, op, "status-label")) {
            @for l in &lights {
                li class={ "light link-" (l.state) } data-peer=(l.name) data-state=(l.state) {
                    span.light-sign aria-hidden="true" {
                        @match l.state { "up" => "●", "degraded" => "◐", _ => "○" }
                    }
                    " " strong { (l.name) } " "
                    span.light-state { (tr(shared, op, &format!("link-state-{}", l.state))) }
                    @if let Some(since) = &l.since { " " span.light-since { (since) } }
                    " " span.light-test { "· " (l.test) }
                    @if !l.alarms.is_empty() { " " span.light-alarms { "⚠ " (l.alarms.join(" · ")) } }
                }
            }
        }
    };
    markup.into_string()
}
