//! The built-in catalogue: every definition loads, every locale has every word it needs,
//! validation names the field and rule, and a launch reads entirely in Chinese.

use std::collections::BTreeMap;

use detente_formats::render::{has_message, message_ids, required_keys};
use detente_formats::{builtin, describe, FieldError, FieldType, Raw, Reader, LOCALES};
use jiff::Timestamp;

fn now() -> Timestamp {
    "2026-11-29T00:00:00Z".parse().unwrap()
}

fn typed(pairs: &[(&str, &str)]) -> BTreeMap<String, Raw> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Raw::Typed(v.to_string())))
        .collect()
}

fn launch_fields() -> BTreeMap<String, Raw> {
    let mut f = typed(&[
        ("window_start", "2026-12-01T10:00:00Z"),
        ("window_end", "2026-12-01T14:00:00Z"),
        ("launch_area", "circle:40.5,-100.2,25"),
        ("impact_area", "polygon:10,170;12,172;9,174"),
        ("count", "2"),
        ("category", "icbm"),
    ]);
    f.insert(
        "remarks".into(),
        Raw::Text {
            lang: "en".into(),
            text: "Routine test of the ICBM force.".into(),
            translations: vec![],
        },
    );
    f
}

#[test]
fn every_built_in_format_is_there() {
    let ids: Vec<&str> = builtin().formats().iter().map(|f| f.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "launch",
            "space-launch",
            "cyber-incident",
            "encounter",
            "exercise",
            "nuclear-incident",
            "dialogue-request",
            "dialogue-reply",
            "text"
        ]
    );
    let launch = builtin().get("launch", 1).unwrap();
    let keys: Vec<&str> = launch.fields.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "window_start",
            "window_end",
            "launch_area",
            "impact_area",
            "count",
            "category",
            "remarks",
            "late_reason"
        ]
    );
    assert_eq!(
        launch.field("count").unwrap().kind,
        FieldType::Integer { min: 1, max: 100 }
    );
    // Digests are distinct and stable across calls.
    let held = detente_formats::builtin_held();
    let digests: std::collections::BTreeSet<_> = held.iter().map(|h| h.digest).collect();
    assert_eq!(digests.len(), held.len());
}

#[test]
fn every_key_of_every_format_exists_in_every_locale() {
    for def in builtin().formats() {
        for key in required_keys(def) {
            for lang in LOCALES {
                assert!(has_message(lang, &key), "{lang} lacks {key}");
            }
        }
        for f in &def.fields {
            if let FieldType::Enum { values } = &f.kind {
                for v in values {
                    for lang in LOCALES {
                        assert!(has_message(lang, &format!("{}-{}-{v}", def.id, f.key)));
                    }
                }
            }
        }
    }
    // And the locales define the same messages, so nothing shows up in one language only.
    let mut en = message_ids("en");
    let mut zh = message_ids("zh-CN");
    en.sort();
    zh.sort();
    assert_eq!(en, zh);
    assert!(en.len() > 200, "only {} messages", en.len());
}

/// Runs of Latin letters in `text` that are not on the allowed list of names and codes.
fn english_words(text: &str, allowed: &[&str]) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphabetic() && c != '/' && c != '_')
        .filter(|w| w.chars().any(|c| c.is_ascii_alphabetic()))
        .filter(|w| !allowed.contains(w))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_launch_reads_entirely_in_chinese() {
    let def = builtin().get("launch", 1).unwrap();
    let n = def.validate(&launch_fields(), now()).unwrap();
    let zh = n.render(
        def,
        Reader {
            lang: "zh-CN",
            tz: "Asia/Shanghai",
        },
        &[],
    );
    let allowed = ["UTC", "ICBM", "Asia/Shanghai"];
    for f in zh.fields.iter().filter(|f| !f.free_text) {
        let left = english_words(&format!("{} {}", f.label, f.value), &allowed);
        assert!(left.is_empty(), "English left in {:?}: {left:?}", f);
    }
    assert!(english_words(&zh.title, &allowed).is_empty());
    let text = zh.text();
    assert!(text.contains("弹道导弹发射通报"), "{text}");
    // The window in UTC and in Beijing time (UTC+8), the zone named as a reader names it.
    assert!(
        text.contains("2026年12月01日 10:00 UTC（北京时间 2026年12月01日 18:00）"),
        "{text}"
    );
    assert!(text.contains("洲际弹道导弹（ICBM）"), "{text}");
    assert!(
        text.contains("以北纬40.5°，西经100.2°为中心、半径25公里的圆形区域"),
        "{text}"
    );
    // Free text keeps its language, marked as such.
    assert!(
        text.contains("Routine test of the ICBM force. [原文为英文]"),
        "{text}"
    );
    let en = n.render(
        def,
        Reader {
            lang: "en",
            tz: "America/New_York",
        },
        &[],
    );
    let text = en.text();
    assert!(
        text.contains("2026-12-01 10:00 UTC (2026-12-01 05:00 Eastern Time)"),
        "{text}"
    );
    assert!(
        text.contains("Intercontinental ballistic missile (ICBM)"),
        "{text}"
    );
}

fn refused(fields: BTreeMap<String, Raw>) -> FieldError {
    builtin()
        .get("launch", 1)
        .unwrap()
        .validate(&fields, now())
        .unwrap_err()
}

#[test]
fn invalid_launches_name_the_field_and_rule() {
    let mut f = launch_fields();
    f.insert(
        "window_end".into(),
        Raw::Typed("2026-12-01T09:00:00Z".into()),
    );
    let e = refused(f);
    assert_eq!(e.key(), Some("window_end"));
    assert!(e.to_string().contains("rule: order"), "{e}");

    let mut f = launch_fields();
    f.insert("launch_area".into(), Raw::Typed("circle:91,10,5".into()));
    let e = refused(f);
    assert_eq!(e.key(), Some("launch_area"));
    assert!(e.to_string().contains("latitude 91"), "{e}");

    let mut f = launch_fields();
    f.insert("category".into(), Raw::Typed("cruise".into()));
    let e = refused(f);
    assert_eq!(e.key(), Some("category"));
    assert!(e.to_string().contains("rule: enum"), "{e}");

    let mut f = launch_fields();
    f.remove("impact_area");
    assert_eq!(
        refused(f),
        FieldError::Missing {
            key: "impact_area".into()
        }
    );

    let mut f = launch_fields();
    f.insert("count".into(), Raw::Typed("0".into()));
    let e = refused(f);
    assert_eq!(e.key(), Some("count"));
    assert!(e.to_string().contains("from 1 to 100"), "{e}");

    let mut f = launch_fields();
    f.insert(
        "window_start".into(),
        Raw::Typed("2026-11-29T20:00:00Z".into()),
    );
    f.insert(
        "window_end".into(),
        Raw::Typed("2026-11-29T22:00:00Z".into()),
    );
    let e = refused(f.clone());
    assert_eq!(e.key(), Some("window_start"));
    assert!(e.to_string().contains("rule: lead-time"), "{e}");
    // Marked late with a reason, it is accepted.
    f.insert(
        "late_reason".into(),
        Raw::Text {
            lang: "en".into(),
            text: "Weather moved the test forward.".into(),
            translations: vec![],
        },
    );
    builtin()
        .get("launch", 1)
        .unwrap()
        .validate(&f, now())
        .unwrap();

    let mut f = launch_fields();
    f.insert("warheads".into(), Raw::Typed("1".into()));
    assert!(matches!(refused(f), FieldError::UnknownField { .. }));

    let mut f = launch_fields();
    f.insert(
        "count".into(),
        Raw::Text {
            lang: "en".into(),
            text: "2".into(),
            translations: vec![],
        },
    );
    assert_eq!(refused(f).key(), Some("count"));
}

#[test]
fn received_values_must_be_canonical() {
    let def = builtin().get("launch", 1).unwrap();
    let mut f = launch_fields();
    f.insert("count".into(), Raw::Typed("02".into()));
    assert!(def.validate(&f, now()).is_ok());
    let e = def.validate_received(&f, now()).unwrap_err();
    assert_eq!(e.key(), Some("count"));
    let canonical = def.validate(&f, now()).unwrap().to_raw();
    assert!(def.validate_received(&canonical, now()).is_ok());
}

#[test]
fn dialogue_reply_rules() {
    let def = builtin().get("dialogue-reply", 1).unwrap();
    let id = "ab".repeat(32);
    let ok = typed(&[
        ("request", &id),
        ("response", "accept"),
        ("accepted_slot", "2"),
    ]);
    def.validate(&ok, now()).unwrap();
    let missing = typed(&[("request", &id), ("response", "accept")]);
    assert_eq!(
        def.validate(&missing, now()).unwrap_err().key(),
        Some("accepted_slot")
    );
    let stray = typed(&[
        ("request", &id),
        ("response", "decline"),
        ("accepted_slot", "1"),
    ]);
    assert_eq!(
        def.validate(&stray, now()).unwrap_err().key(),
        Some("accepted_slot")
    );
    let counter = typed(&[("request", &id), ("response", "counter-propose")]);
    assert_eq!(
        def.validate(&counter, now()).unwrap_err().key(),
        Some("counter_slot_1")
    );
}

#[test]
fn glossary_terms_are_marked_with_their_equivalent() {
    let def = builtin().get("text", 1).unwrap();
    let mut f = BTreeMap::new();
    f.insert(
        "body".into(),
        Raw::Text {
            lang: "en".into(),
            text: "We propose a joint hotline exercise.".into(),
            translations: vec![("zh-CN".into(), "我们提议举行热线联合演练。".into())],
        },
    );
    let n = def.validate(&f, now()).unwrap();
    let glossary = [detente_formats::GlossaryEntry {
        lang_a: "en".into(),
        term_a: "hotline".into(),
        lang_b: "zh-CN".into(),
        term_b: "热线".into(),
    }];
    let zh = n.render(
        def,
        Reader {
            lang: "zh-CN",
            tz: "Asia/Shanghai",
        },
        &glossary,
    );
    let body = &zh.fields[0];
    assert!(body.value.contains("joint ⟦hotline⟧ exercise"), "{body:?}");
    assert_eq!(
        body.notes[0],
        "礼节性译文（中文）：我们提议举行热线联合演练。"
    );
    assert_eq!(body.notes[1], "术语表：“hotline”即“热线”");
}

#[test]
fn every_format_describes_itself_in_both_languages() {
    for def in builtin().formats() {
        for lang in LOCALES {
            let d = describe(def, lang);
            assert_eq!(d.fields.len(), def.fields.len());
            for f in &d.fields {
                assert!(
                    !f.label.starts_with(&def.id),
                    "{lang} {}: {}",
                    def.id,
                    f.label
                );
                assert!(!f.help.is_empty());
            }
            assert_eq!(d.rules.len(), def.rules.len());
        }
    }
}

/// `validate_all` names every problem at once, in `validate`'s order (so its first is
/// `validate`'s error), and leaves the cross-field rules until each field is valid.
#[test]
fn every_problem_is_named_at_once() {
    let def = builtin().latest("launch").unwrap();
    let mut f = launch_fields();
    f.insert("count".into(), Raw::Typed("0".into()));
    f.insert("launch_area".into(), Raw::Typed("circle:91,10,5".into()));
    f.insert("no_such_field".into(), Raw::Typed("x".into()));
    f.remove("impact_area");
    // The window ends before it starts too, but that waits for the fields to be right.
    f.insert(
        "window_end".into(),
        Raw::Typed("2026-12-01T09:00:00Z".into()),
    );
    let errors = def.validate_all(&f, now()).unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key().unwrap()).collect();
    assert_eq!(
        keys,
        ["count", "launch_area", "no_such_field", "impact_area"]
    );
    assert!(matches!(errors[3], FieldError::Missing { .. }));
    assert_eq!(def.validate(&f, now()).unwrap_err(), errors[0]);

    // Each field right, two rules broken: both named.
    let mut f = launch_fields();
    f.insert(
        "window_start".into(),
        Raw::Typed("2026-11-29T02:00:00Z".into()),
    );
    f.insert(
        "window_end".into(),
        Raw::Typed("2026-11-29T01:00:00Z".into()),
    );
    let errors = def.validate_all(&f, now()).unwrap_err();
    assert!(errors.len() >= 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| matches!(e, FieldError::Rule { .. })),
        "{errors:?}"
    );
    assert_eq!(def.validate(&f, now()).unwrap_err(), errors[0]);
    assert!(def.validate_all(&launch_fields(), now()).is_ok());
}

#[test]
fn a_readers_zone_is_an_iana_name_the_database_holds_and_bounded() {
    use detente_formats::{check_zone, ZoneError, ZONE_NAME_BYTES_MAX};
    for name in ["America/New_York", "Asia/Shanghai", "UTC", "Etc/GMT+5"] {
        assert!(check_zone(name).is_ok(), "{name}");
    }
    assert_eq!(
        check_zone("Mars/Olympus_Mons").unwrap_err(),
        ZoneError::Unknown("Mars/Olympus_Mons".into())
    );
    let long = "A".repeat(ZONE_NAME_BYTES_MAX + 1);
    assert_eq!(
        check_zone(&long).unwrap_err(),
        ZoneError::TooLong(ZONE_NAME_BYTES_MAX + 1)
    );
    // The longest name the database has fits.
    assert!(check_zone("America/Argentina/ComodRivadavia").is_ok());
}

/// Zone names in a reader's language, one at a time or many at once, agree; a zone the
/// locales do not name has none.
#[test]
fn zone_names_one_at_a_time_and_at_once_agree() {
    use detente_formats::{zone_name, zone_names};
    let zones = ["Asia/Shanghai", "America/New_York", "Africa/Lusaka", "UTC"];
    for lang in ["en", "zh-CN"] {
        let each: Vec<Option<String>> = zones.iter().map(|z| zone_name(lang, z)).collect();
        assert_eq!(zone_names(lang, zones), each, "{lang}");
    }
    assert_eq!(
        zone_name("zh-CN", "Asia/Shanghai").as_deref(),
        Some("北京时间")
    );
    assert_eq!(zone_names("en", ["Africa/Lusaka"]), vec![None]);
}
