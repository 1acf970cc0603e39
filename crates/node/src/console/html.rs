//! Server-rendered HTML: the page layout every console page shares, a maud template. Every
//! console page is a maud template, which escapes every value by construction: nothing from
//! outside (messages, peers, logins) can become markup. Query values in links go through
//! [`url_value`].

use std::fmt::Write;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::auth::Role;
use super::Operator;
use crate::Shared;

/// Escape text for a URL query value.
pub fn url_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What the live regions hold when a page is first sent (the script refreshes them after).
#[derive(Default)]
pub struct Regions {
    pub status: String,
    pub alarm: String,
    pub queue: String,
}

/// A complete page for a signed-in operator, its live regions (status light, alarms, the
/// "needs action" queue) filled in already, so they show before (and without) the script.
pub async fn live_page(shared: &Shared, op: &Operator, title: &str, main: Markup) -> String {
    let q = super::queue::load(shared, op).await;
    let regions = Regions {
        status: super::status::status_html(shared, op),
        alarm: super::queue::alarm_html(shared, op, &q),
        queue: super::queue::queue_html(shared, op, &q),
    };
    page_with(shared, Some(op), None, title, main, &regions)
}

/// A complete page: head, navigation, the alarm banner, and `main`; the live regions are
/// left for the script to fill.
pub fn page(shared: &Shared, op: Option<&Operator>, title: &str, main: Markup) -> String {
    page_with(shared, op, None, title, main, &Regions::default())
}

/// A page for someone not signed in, in `lang` (the language their browser asks for).
pub fn page_in(shared: &Shared, lang: &str, title: &str, main: Markup) -> String {
    page_with(shared, None, Some(lang), title, main, &Regions::default())
}

/// What the layout shows around every page: the view model of [`page_with`].
struct Layout<'a> {
    lang: String,
    node: String,
    title: &'a str,
    /// The units the script writes countdowns in, in the page's language.
    units: String,
    status_refresh_ms: u64,
}

fn page_with(
    shared: &Shared,
    op: Option<&Operator>,
    lang: Option<&str>,
    title: &str,
    main: Markup,
    regions: &Regions,
) -> String {
    let lang = match (op, lang) {
        (Some(o), _) => o.lang.clone(),
        (None, Some(l)) => l.to_string(),
        (None, None) => node_lang(shared),
    };
    let layout = Layout {
        node: shared
            .config
            .read()
            .map(|c| c.name.clone())
            .unwrap_or_default(),
        title,
        units: super::pages::duration_units(shared, &lang).join("|"),
        status_refresh_ms: super::status::refresh_ms(shared),
        lang,
    };
    let t = |k: &str| shared.console.i18n.text(&layout.lang, k);
    let markup = html! {
        (DOCTYPE)
        html lang=(layout.lang) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (layout.title) " — " (layout.node) " — detente" }
                link rel="stylesheet" href="/console/assets/app.css";
                script src="/console/assets/app.js" defer {}
                @if let Some(op) = op { meta name="csrf-token" content=(op.csrf); }
            }
            body data-duration-units=(layout.units) class=[op.filter(|o| o.compact).map(|_| "compact")] {
                a.skip href="#main" { (t("skip-to-content")) }
                header {
                    p.node { (t("node-label")) " " span.node-name { (layout.node) } }
                    @if let Some(op) = op {
                        (nav(op, &t))
                        // Shown (by the style sheet) while the page's live connection is down.
                        p.offline-note role="status" { "⟳ " (t("reconnecting")) }
                    }
                }
                @if op.is_some() {
                    // The status light, refreshed every heartbeat (a dead link turns it down
                    // without any event), then the alarm banner: refreshed live on every
                    // page, sounds on a new alarm.
                    section #status .status-region data-live="/console/live/status"
                        data-refresh-ms=(layout.status_refresh_ms) aria-label=(t("status-label")) {
                        (PreEscaped(&regions.status))
                    }
                    section #alarm .alarm-region data-live="/console/live/alarm"
                        aria-live="assertive" aria-label=(t("alarm-region")) {
                        (PreEscaped(&regions.alarm))
                    }
                    audio #alarm-sound src="/console/assets/alarm.wav" preload="auto" {}
                    p #sound-blocked .sound-blocked hidden {
                        (t("sound-blocked")) " "
                        button type="button" #enable-sound { (t("sound-enable")) }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (layout.title) }
                    @if op.is_some() {
                        // What needs an answer, on every page, earliest due first.
                        section #queue .queue-region data-live="/console/live/queue"
                            aria-label=(t("queue-title")) {
                            (PreEscaped(&regions.queue))
                        }
                    }
                    (main)
                }
            }
        }
    };
    markup.into_string()
}

fn nav(op: &Operator, t: &dyn Fn(&str) -> String) -> Markup {
    let mut links = vec![("/console", "nav-timeline")];
    if op.role.can_compose() {
        links.push(("/console/compose", "nav-compose"));
    }
    links.extend([
        ("/console/link", "nav-link"),
        ("/console/transcript", "nav-transcript"),
        ("/console/counterparts", "nav-counterparts"),
    ]);
    if op.role.can_read_audit() {
        links.push(("/console/audit", "nav-audit"));
    }
    if op.role == Role::Admin {
        links.push(("/console/users", "nav-users"));
    }
    html! {
        nav aria-label=(t("nav-label")) {
            ul { @for (href, key) in links { li { a href=(href) { (t(key)) } } } }
        }
        div.account {
            span {
                (t("signed-in-as")) " " strong translate="no" { (op.login) }
                " (" (t(&format!("role-{}", op.role.name()))) ")"
            }
            form.inline method="post" action="/console/lang" {
                (csrf_input(op))
                label for="lang-select" { (t("language")) } " "
                select #lang-select name="lang" {
                    @for (code, name) in super::i18n::LANGUAGES {
                        option value=(code) selected[*code == op.lang] { (name) }
                    }
                }
                " " button type="submit" { (t("language-change")) }
            }
            form.inline method="post" action="/logout" {
                (csrf_input(op))
                button type="submit" #logout { (t("logout")) }
            }
        }
    }
}

/// A conversation for printing: the node, who printed it and when, and `main`; no
/// navigation, live regions, forms or script.
pub fn print_page(
    shared: &Shared,
    op: &Operator,
    title: &str,
    main: Markup,
    printed: &str,
) -> String {
    let t = |k: &str| shared.console.i18n.text(&op.lang, k);
    let node = shared
        .config
        .read()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let markup = html! {
        (DOCTYPE)
        html lang=(op.lang) {
            head {
                meta charset="utf-8";
                title { (title) " — " (node) " — detente" }
                link rel="stylesheet" href="/console/assets/app.css";
            }
            body.print-view {
                header {
                    p.node { (t("node-label")) " " span.node-name { (node) } }
                    p.printed { (printed) }
                }
                main #main { h1 { (title) } (main) }
            }
        }
    };
    markup.into_string()
}

/// The hidden CSRF field every form carries.
pub fn csrf_input(op: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(op.csrf); }
}

/// The node's configured interface language.
pub fn node_lang(shared: &Shared) -> String {
    shared
        .config
        .read()
        .map(|c| c.lang.clone())
        .unwrap_or_else(|_| "en".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_url_values() {
        assert_eq!(url_value("a b/é"), "a%20b%2F%C3%A9");
    }
}
