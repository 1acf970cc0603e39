//! Small helpers for server-rendered HTML: escaping, and the page layout every console page
//! shares. Every piece of text from outside (messages, peers, logins) goes through [`esc`].

use std::fmt::Write;

use super::auth::Role;
use super::Operator;
use crate::Shared;

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

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

/// A complete page: head, navigation, the alarm banner, and `main`.
pub fn page(shared: &Shared, op: Option<&Operator>, title: &str, main: &str) -> String {
    let lang = op.map_or_else(|| node_lang(shared), |o| o.lang.clone());
    let t = |k: &str| shared.console.i18n.text(&lang, k);
    let node = shared
        .config
        .read()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let mut out = String::with_capacity(main.len() + 4096);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — {node} — detente</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/app.css\">\
         <script src=\"/console/assets/app.js\" defer></script>",
        lang = esc(&lang),
        title = esc(title),
        node = esc(&node),
    );
    if let Some(op) = op {
        let _ = write!(
            out,
            "<meta name=\"csrf-token\" content=\"{}\">",
            esc(&op.csrf)
        );
    }
    // The units the script writes countdowns in, in the page's language.
    let units = super::pages::duration_units(shared, &lang).join("|");
    let _ = write!(out, "</head><body data-duration-units=\"{}\">", esc(&units));
    let _ = write!(
        out,
        "<a class=\"skip\" href=\"#main\">{}</a><header><p class=\"node\">{} <span class=\"node-name\">{}</span></p>",
        esc(&t("skip-to-content")),
        esc(&t("node-label")),
        esc(&node)
    );
    if let Some(op) = op {
        nav(&mut out, shared, op, &t);
        // Shown (by the style sheet) while the page's live connection is down.
        let _ = write!(
            out,
            "<p class=\"offline-note\" role=\"status\">⟳ {}</p>",
            esc(&t("reconnecting"))
        );
    }
    out.push_str("</header>");
    if op.is_some() {
        // The status light, refreshed every heartbeat (a dead link turns it down without
        // any event), then the alarm banner: refreshed live on every page, sounds on a new
        // alarm.
        let _ = write!(
            out,
            "<section id=\"status\" class=\"status-region\" data-live=\"/console/live/status\" \
             data-refresh-ms=\"{}\" aria-label=\"{}\"></section>",
            super::status::refresh_ms(shared),
            esc(&t("status-label"))
        );
        let _ = write!(
            out,
            "<section id=\"alarm\" class=\"alarm-region\" data-live=\"/console/live/alarm\" \
             aria-live=\"assertive\" aria-label=\"{}\"></section>\
             <audio id=\"alarm-sound\" src=\"/console/assets/alarm.wav\" preload=\"auto\"></audio>\
             <p id=\"sound-blocked\" class=\"sound-blocked\" hidden>{} <button type=\"button\" id=\"enable-sound\">{}</button></p>",
            esc(&t("alarm-region")),
            esc(&t("sound-blocked")),
            esc(&t("sound-enable"))
        );
    }
    let _ = write!(
        out,
        "<main id=\"main\" tabindex=\"-1\"><h1>{}</h1>",
        esc(title)
    );
    if op.is_some() {
        // What needs an answer, on every page, earliest due first.
        let _ = write!(
            out,
            "<section id=\"queue\" class=\"queue-region\" data-live=\"/console/live/queue\" \
             aria-label=\"{}\"></section>",
            esc(&t("queue-title"))
        );
    }
    let _ = write!(out, "{main}</main></body></html>");
    out
}

fn nav(out: &mut String, shared: &Shared, op: &Operator, t: &dyn Fn(&str) -> String) {
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
    let _ = write!(out, "<nav aria-label=\"{}\"><ul>", esc(&t("nav-label")));
    for (href, key) in links {
        let _ = write!(out, "<li><a href=\"{href}\">{}</a></li>", esc(&t(key)));
    }
    out.push_str("</ul></nav>");
    let _ = write!(
        out,
        "<div class=\"account\"><span>{} <strong translate=\"no\">{}</strong> ({})</span>",
        esc(&t("signed-in-as")),
        esc(&op.login),
        esc(&t(&format!("role-{}", op.role.name())))
    );
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/console/lang\" class=\"inline\">{csrf}\
         <label for=\"lang-select\">{label}</label> <select id=\"lang-select\" name=\"lang\">",
        csrf = csrf_field(op),
        label = esc(&t("language"))
    );
    for (code, name) in super::i18n::LANGUAGES {
        let selected = if *code == op.lang { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{code}\"{selected}>{name}</option>");
    }
    let _ = write!(
        out,
        "</select> <button type=\"submit\">{}</button></form>",
        esc(&t("language-change"))
    );
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/logout\" class=\"inline\">{}<button type=\"submit\" id=\"logout\">{}</button></form></div>",
        csrf_field(op),
        esc(&t("logout"))
    );
    let _ = shared;
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(op: &Operator) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&op.csrf)
    )
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
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(url_value("a b/é"), "a%20b%2F%C3%A9");
    }
}
