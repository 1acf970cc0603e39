//! The printable record's HTML (for [`crate::report`]), made with maud, which escapes every
//! value by construction: nothing from the bundle can become markup.
//!
//! The page is self-contained (its style inline, nothing from another host) and paginates
//! for print: A4, a page number in the footer, a message never split across pages. The
//! record's own words are given in every language of the channel's members (English and
//! Chinese for the built-in locales), side by side.

use detente_formats::Rendered;
use detente_proto::{Precedence, ReceiptLevel};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::report::{languages, Content, Entry, Party, Record};

const STYLE: &str = r#"
@page { size: A4; margin: 16mm 14mm 18mm 14mm;
  @bottom-center { content: counter(page) " / " counter(pages); font: 9pt sans-serif; } }
body { font: 10.5pt/1.45 "Noto Sans", "Noto Sans CJK SC", sans-serif; color: #111; margin: 0 auto; max-width: 190mm; }
h1 { font-size: 17pt; margin: 0 0 4mm; }
h2 { font-size: 13pt; margin: 7mm 0 2mm; border-bottom: 1px solid #444; break-after: avoid; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 1mm 2mm; border-bottom: 1px solid #ccc; }
code, .id { font-family: "DejaVu Sans Mono", monospace; font-size: 8.5pt; overflow-wrap: anywhere; }
.verdict { border: 2px solid #126312; padding: 3mm; margin: 4mm 0; }
.verdict.failed { border: 4px solid #a00; color: #a00; }
.damaged { position: fixed; top: 0; left: 0; right: 0; text-align: center; font-weight: bold;
  color: #a00; border: 3px solid #a00; background: #fff; padding: 1mm; }
.damaged-space { height: 12mm; }
.message { break-inside: avoid; border: 1px solid #999; margin: 3mm 0; padding: 2mm 3mm; }
.message .head { font-weight: bold; }
.lang { margin: 1.5mm 0; padding-left: 2mm; border-left: 3px solid #999; }
.label { color: #444; }
.late { font-weight: bold; }
p, li { overflow-wrap: anywhere; }
"#;

/// The record's own words, per supported locale.
fn word(locale: &str, key: &str) -> &'static str {
    let zh = locale == "zh-CN";
    match (key, zh) {
        ("title", false) => "Channel record",
        ("title", true) => "信道记录",
        ("verified", false) => "Verified offline: every signature, sequence, link and root holds.",
        ("verified", true) => "已离线验证：所有签名、序号、链接和根哈希均一致。",
        ("failed", false) => "FAILED VERIFICATION — this record must not be taken as genuine.",
        ("failed", true) => "验证失败——本记录不得视为真实。",
        ("parties", false) => "Parties",
        ("parties", true) => "各方",
        ("charter", false) => "Charter",
        ("charter", true) => "章程",
        ("messages", false) => "Messages",
        ("messages", true) => "消息",
        ("checkpoints", false) => "Checkpoints",
        ("checkpoints", true) => "检查点",
        ("receipts", false) => "Receipts",
        ("receipts", true) => "回执",
        ("delivered", false) => "Delivered",
        ("delivered", true) => "已送达",
        ("not-delivered", false) => "No DELIVERED receipt in this record",
        ("not-delivered", true) => "本记录中无送达回执",
        ("unanswered", false) => "Not answered in this record",
        ("unanswered", true) => "本记录中未答复",
        ("late", false) => "late by",
        ("late", true) => "逾期",
        ("on-time", false) => "within the deadline",
        ("on-time", true) => "在期限内",
        ("deadline", false) => "acknowledgment deadline",
        ("deadline", true) => "确认期限",
        ("problems", false) => "Problems found",
        ("problems", true) => "发现的问题",
        ("system", false) => "Envelopes of the nodes themselves",
        ("system", true) => "节点自身的信封",
        ("cosigned", false) => "signed by every member",
        ("cosigned", true) => "所有成员均已签署",
        ("not-cosigned", false) => "not signed by every member",
        ("not-cosigned", true) => "未经所有成员签署",
        ("text-in", false) => "Free text, written in",
        ("text-in", true) => "自由文本，原文语言",
        ("translation", false) => "Courtesy translation",
        ("translation", true) => "礼节性译文",
        ("reply-to", false) => "In reply to",
        ("reply-to", true) => "答复",
        _ => "",
    }
}

/// The same words in every language of the record, joined.
fn words(locales: &[String], key: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for l in locales {
        let w = word(l, key);
        if !w.is_empty() && !out.contains(&w) {
            out.push(w);
        }
    }
    out.join(" / ")
}

fn precedence(p: Precedence) -> &'static str {
    match p {
        Precedence::Flash => "FLASH",
        Precedence::Immediate => "IMMEDIATE",
        Precedence::Priority => "PRIORITY",
        Precedence::Routine => "ROUTINE",
    }
}

fn level(l: ReceiptLevel) -> &'static str {
    match l {
        ReceiptLevel::Delivered => "DELIVERED",
        ReceiptLevel::Read => "READ",
        ReceiptLevel::Acknowledged => "ACKNOWLEDGED",
        ReceiptLevel::Declined => "DECLINED",
    }
}

/// A signed time in UTC and in each member's time zone.
fn time(ms: u64, parties: &[Party]) -> String {
    let Ok(t) = jiff::Timestamp::from_millisecond(ms as i64) else {
        return format!("{ms} ms");
    };
    let mut out = t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut zones: Vec<&str> = Vec::new();
    for p in parties {
        if p.tz != "UTC" && !zones.contains(&p.tz.as_str()) {
            zones.push(&p.tz);
        }
    }
    for zone in zones {
        if let Ok(z) = t.in_tz(zone) {
            out.push_str(&format!(" · {} {zone}", z.strftime("%Y-%m-%d %H:%M:%S")));
        }
    }
    out
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn who(parties: &[Party], i: usize) -> String {
    parties.get(i).map_or_else(String::new, |p| {
        if p.name.is_empty() {
            p.key.fingerprint()
        } else {
            format!("{} ({})", p.name, p.key.fingerprint())
        }
    })
}

/// The whole record as one HTML document.
pub fn render(r: &Record) -> String {
    let locales: Vec<String> = languages(&r.parties).into_iter().map(|(l, _)| l).collect();
    let w = |key: &str| words(&locales, key);
    let failed = !r.verdict.ok();
    let markup = html! {
        (DOCTYPE)
        html lang=(locales.first().map_or("en", String::as_str)) {
            head {
                meta charset="utf-8";
                title { @if failed { "FAILED VERIFICATION — " } (w("title")) " " (r.channel_hex) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                @if failed {
                    div.damaged role="alert" { (w("failed")) }
                    div.damaged-space {}
                }
                h1 { (w("title")) }
                p { "channel " code { (r.channel_hex) } }
                (verdict(r, &w))
                (parties(r, &w))
                (charter(r, &w))
                h2 { (w("messages")) " (" (r.entries.len()) ")" }
                @for e in &r.entries { (entry(e, r, &locales, &w)) }
                (checkpoints(r, &w))
                h2 { (w("system")) }
                p { "TEST: " (r.system.0) " · CHARTER: " (r.system.1) " · DELIVERED: " (r.system.2) }
            }
        }
    };
    markup.into_string()
}

fn verdict(r: &Record, w: &dyn Fn(&str) -> String) -> Markup {
    let v = &r.verdict;
    html! {
        @if v.ok() {
            div.verdict { strong { (w("verified")) } br;
                (v.messages) " envelopes · " (v.checkpoints) " checkpoints, "
                (v.cosigned) " " (w("cosigned")) }
        } @else {
            div.verdict.failed {
                strong { (w("failed")) }
                h2 { (w("problems")) " (" (v.problems.len() as u64 + v.problems_dropped) ")" }
                ul {
                    @for p in &v.problems { li { (p.to_string()) } }
                    @for u in &r.unreadable { li { (u) } }
                }
            }
        }
    }
}

fn parties(r: &Record, w: &dyn Fn(&str) -> String) -> Markup {
    html! {
        h2 { (w("parties")) }
        table {
            @for p in &r.parties {
                tr {
                    td { strong { (p.party) } br; (p.name) }
                    td { "fingerprint " strong.id { (p.key.fingerprint()) } br;
                         code { (p.key.to_text()) } }
                    td { (p.lang) br; (p.tz) }
                }
            }
        }
    }
}

fn charter(r: &Record, w: &dyn Fn(&str) -> String) -> Markup {
    html! {
        @for (n, c) in r.charters.iter().enumerate() {
            h2 { (w("charter")) " " (n + 1) " · " code { (hex::encode(c.digest())) } }
            table {
                tr { th { "FLASH delivered" } td { (duration(c.deadlines.flash_delivered.as_millis() as u64)) } }
                @for p in [Precedence::Flash, Precedence::Immediate, Precedence::Priority, Precedence::Routine] {
                    tr { th { (precedence(p)) " " (w("deadline")) }
                         td { (duration(c.deadlines.acknowledged(p).as_millis() as u64)) } }
                }
                tr { th { "link test" } td { (duration(c.link_test_interval.as_millis() as u64)) } }
                tr { th { "formats" } td { @for f in &c.formats { code { (f.id) "@" (f.version) } " " } } }
                @for cp in &c.counterparts { tr { th { "counterparts" } td { (cp.first) " ↔ " (cp.second) } } }
            }
        }
    }
}

fn entry(e: &Entry, r: &Record, locales: &[String], w: &dyn Fn(&str) -> String) -> Markup {
    html! {
        div.message {
            div.head {
                (precedence(e.precedence)) " · " (e.topic) " · " (who(&r.parties, e.sender))
                " · seq " (e.seq)
            }
            div { span.label { "id " } span.id { (e.id.to_hex()) } }
            div { (time(e.created_at_ms, &r.parties)) " · " (e.author) }
            @if let Some(of) = e.in_reply_to { div { (w("reply-to")) " " span.id { (of.to_hex()) } } }
            (content(&e.content, locales, w))
            (receipts(e, r, w))
        }
    }
}

fn content(c: &Content, locales: &[String], w: &dyn Fn(&str) -> String) -> Markup {
    html! {
        @match c {
            Content::Text(t) => {
                div.lang lang=(t.language) {
                    span.label { (w("text-in")) " " (t.language) ": " }
                    p { (t.text) }
                    @for (lang, text) in &t.translations {
                        div lang=(lang) { span.label { (w("translation")) " (" (lang) "): " } (text) }
                    }
                }
            }
            Content::Notification { format, version, renderings } => {
                div { code { (format) "@" (version) } }
                @for (rendered, locale) in renderings.iter().zip(locales) {
                    (notification(rendered, locale))
                }
            }
            Content::Unrenderable { format, why } => {
                div { code { (format) } ": " (why) }
            }
        }
    }
}

fn notification(n: &Rendered, locale: &str) -> Markup {
    html! {
        div.lang lang=(locale) {
            strong { (n.title) }
            table {
                @for f in &n.fields {
                    tr { th { (f.label) } td { (f.value) @for note in &f.notes { br; (note) } } }
                }
            }
        }
    }
}

fn receipts(e: &Entry, r: &Record, w: &dyn Fn(&str) -> String) -> Markup {
    html! {
        div {
            span.label { (w("receipts")) ": " }
            @match e.delivered_at_ms {
                Some(at) => { (w("delivered")) " " (time(at, &r.parties)) }
                None => { (w("not-delivered")) }
            }
            @if let Some(d) = e.deadline {
                " · " (w("deadline")) " " (duration(d.as_millis() as u64))
            }
            ul {
                @for a in &e.answers {
                    li {
                        strong { (level(a.level)) } " " (who(&r.parties, a.by)) " " (time(a.at_ms, &r.parties))
                        @match a.late_ms {
                            Some(late) => { " · " span.late { (w("late")) " " (duration(late)) } }
                            None if matches!(a.level, ReceiptLevel::Acknowledged | ReceiptLevel::Declined) => { " · " (w("on-time")) }
                            None => {}
                        }
                        @if let Some(note) = &a.note { br; "“" (note) "”" }
                    }
                }
                @if !e.answers.iter().any(|a| matches!(a.level, ReceiptLevel::Acknowledged | ReceiptLevel::Declined)) {
                    li { (w("unanswered")) }
                }
            }
        }
    }
}

fn checkpoints(r: &Record, w: &dyn Fn(&str) -> String) -> Markup {
    html! {
        h2 { (w("checkpoints")) " (" (r.checkpoints.len()) ")" }
        @for (n, c) in r.checkpoints.iter().enumerate() {
            div.message {
                div.head { (n + 1) " · " (time(c.time_ms, &r.parties)) " · "
                    @if c.cosigned { (w("cosigned")) } @else { (w("not-cosigned")) } }
                table {
                    @for (party, size, root) in &c.heads {
                        tr { td { (party.map(|i| who(&r.parties, i)).unwrap_or_default()) }
                             td { "size " (size) } td.id { (root) } }
                    }
                }
                div { "signers: " @for s in &c.signers { strong.id { (s) } " " } }
            }
        }
    }
}
