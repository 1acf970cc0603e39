//! The console's interface text in each operator's language, with Fluent. The message files
//! live in `crates/node/locales/console/` and are compiled into the binary.

use std::collections::HashMap;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource};

/// Interface languages: code and the language's own name.
pub const LANGUAGES: &[(&str, &str)] = &[("en", "English"), ("zh-CN", "简体中文")];

const SOURCES: &[(&str, &str)] = &[
    ("en", include_str!("../locales/console/en.ftl")),
    ("zh-CN", include_str!("../locales/console/zh-CN.ftl")),
];

/// All bundles, loaded once at start-up.
pub struct Texts {
    bundles: HashMap<&'static str, FluentBundle<FluentResource>>,
}

/// Longest `Accept-Language` header read; the rest of it is ignored.
pub const ACCEPT_LANGUAGE_BYTES_MAX: usize = 1024;
/// Language ranges of one `Accept-Language` header looked at, at most.
pub const ACCEPT_LANGUAGE_RANGES_MAX: usize = 32;

/// The interface language an `Accept-Language` header (RFC 9110 §12.5.4) asks for: the
/// range of highest weight that names one of [`LANGUAGES`] by its primary subtag (any
/// Chinese is shown as simplified Chinese, the only Chinese here); `None` when it names
/// none of them, so that the caller falls back to the node's language.
pub fn negotiate(header: &str) -> Option<&'static str> {
    let end = (0..=header.len().min(ACCEPT_LANGUAGE_BYTES_MAX))
        .rev()
        .find(|&i| header.is_char_boundary(i))
        .unwrap_or(0);
    let mut best: Option<(u16, &'static str)> = None;
    for range in header[..end].split(',').take(ACCEPT_LANGUAGE_RANGES_MAX) {
        let mut parts = range.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let weight = match parts.find_map(|p| p.trim().strip_prefix("q=")) {
            None => Some(1000),
            Some(q) => q
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))
                .map(|q| (q * 1000.0).round() as u16),
        };
        let (Some(weight), Some(code)) = (weight, interface_language(tag)) else {
            continue;
        };
        // Ties go to the range listed first.
        if weight > 0 && best.is_none_or(|(w, _)| weight > w) {
            best = Some((weight, code));
        }
    }
    best.map(|(_, code)| code)
}

fn interface_language(tag: &str) -> Option<&'static str> {
    let primary = tag.split(['-', '_']).next()?.to_ascii_lowercase();
    match primary.as_str() {
        "en" => Some("en"),
        "zh" => Some("zh-CN"),
        _ => None,
    }
}

/// The language to answer a request in: the one its `Accept-Language` asks for, else the
/// node's.
pub fn request_lang(shared: &crate::Shared, headers: &axum::http::HeaderMap) -> String {
    headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(negotiate)
        .map_or_else(
            || {
                shared
                    .config
                    .read()
                    .map_or_else(|_| "en".to_string(), |c| c.lang.clone())
            },
            str::to_string,
        )
}

/// Whether `code` is an interface language.
pub fn supported(code: &str) -> bool {
    LANGUAGES.iter().any(|(c, _)| *c == code)
}

impl Texts {
    /// Parse the compiled-in message files. They are part of the binary, so a syntax error
    /// in them is a programmer error (and a unit test catches it).
    pub fn load() -> Self {
        let mut bundles = HashMap::new();
        for (code, source) in SOURCES {
            let resource =
                FluentResource::try_new(source.to_string()).unwrap_or_else(|(r, errors)| {
                    tracing::error!(?errors, code, "console message file has errors");
                    r
                });
            let langid = code.parse().unwrap_or_default();
            let mut bundle = FluentBundle::new_concurrent(vec![langid]);
            // Bidi isolation marks would end up inside attributes and test selectors.
            bundle.set_use_isolating(false);
            if let Err(errors) = bundle.add_resource(resource) {
                tracing::error!(?errors, code, "console message file has duplicates");
            }
            bundles.insert(*code, bundle);
        }
        Self { bundles }
    }

    fn bundle(&self, lang: &str) -> Option<&FluentBundle<FluentResource>> {
        self.bundles.get(lang).or_else(|| self.bundles.get("en"))
    }

    /// The text of `key` in `lang` (English when missing there; the key itself when
    /// missing everywhere, so a gap is visible rather than blank).
    pub fn text(&self, lang: &str, key: &str) -> String {
        self.text_with(lang, key, &[])
    }

    pub fn text_with(&self, lang: &str, key: &str, args: &[(&str, String)]) -> String {
        let mut fluent_args = FluentArgs::new();
        for (k, v) in args {
            fluent_args.set(*k, v.clone());
        }
        for bundle in [self.bundle(lang), self.bundles.get("en")]
            .into_iter()
            .flatten()
        {
            if let Some(pattern) = bundle.get_message(key).and_then(|m| m.value()) {
                let mut errors = Vec::new();
                return bundle
                    .format_pattern(pattern, Some(&fluent_args), &mut errors)
                    .into_owned();
            }
        }
        key.to_string()
    }

    /// Message ids of a language, for completeness checks.
    pub fn keys(lang: &str) -> Vec<String> {
        SOURCES
            .iter()
            .filter(|(c, _)| *c == lang)
            .flat_map(|(_, s)| s.lines())
            .filter_map(|l| l.split_once(" ="))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with(' '))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_every_message_and_parses() {
        for (code, source) in SOURCES {
            assert!(
                FluentResource::try_new(source.to_string()).is_ok(),
                "{code} parses"
            );
        }
        let en = Texts::keys("en");
        assert!(en.len() > 50);
        let zh = Texts::keys("zh-CN");
        for k in &en {
            assert!(zh.contains(k), "zh-CN lacks {k}");
        }
        for k in &zh {
            assert!(en.contains(k), "en lacks {k}");
        }
    }

    #[test]
    fn accept_language_picks_the_heaviest_interface_language() {
        assert_eq!(negotiate("zh-CN,zh;q=0.9,en;q=0.8"), Some("zh-CN"));
        assert_eq!(negotiate("fr-FR, en-GB;q=0.5, zh-TW;q=0.7"), Some("zh-CN"));
        assert_eq!(negotiate("en-US,en;q=0.9"), Some("en"));
        assert_eq!(
            negotiate("zh;q=0.5, en;q=0.5"),
            Some("zh-CN"),
            "a tie: first"
        );
        assert_eq!(negotiate("zh;q=0, en;q=0.1"), Some("en"), "q=0: not wanted");
        assert_eq!(negotiate("fr, de;q=0.9, *;q=0.1"), None);
        assert_eq!(
            negotiate("zh;q=banana, en;q=2"),
            None,
            "bad weights are ignored"
        );
        assert_eq!(negotiate(""), None);
        let long = format!("{}zh", "fr,".repeat(ACCEPT_LANGUAGE_BYTES_MAX));
        assert_eq!(negotiate(&long), None, "read only so far");
        assert_eq!(negotiate("é,zh"), Some("zh-CN"));
    }

    #[test]
    fn texts_in_both_languages_with_arguments() {
        let t = Texts::load();
        assert_eq!(t.text("en", "nav-timeline"), "Timeline");
        assert_eq!(t.text("zh-CN", "nav-timeline"), "时间线");
        assert_eq!(t.text("fr", "nav-timeline"), "Timeline");
        assert!(t
            .text_with("en", "overdue-by", &[("time", "5s".into())])
            .contains("5s"));
    }
}
