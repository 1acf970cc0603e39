//! Property test: for random valid field values of every built-in format, a notification
//! is encoded, signed, decoded and checked back to the same values, and renders in both
//! languages with every field shown and no message id left untranslated.

use std::collections::BTreeMap;

use detente_formats::value::{canonical_duration, Fixed};
use detente_formats::{builtin, FieldType, FormatDef, Raw, Reader};
use detente_node::notify;
use detente_proto::{
    Body, ChannelId, Envelope, MessageId, PartySecret, Precedence, VerifiedEnvelope,
};
use proptest::prelude::*;

/// 2026-11-29T00:00:00Z, when the notifications are made.
const NOW_S: i64 = 1_795_910_400;

fn utc(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn micro(range: std::ops::RangeInclusive<i64>) -> impl Strategy<Value = String> {
    range.prop_map(|v| Fixed(v).canonical())
}

fn point() -> impl Strategy<Value = String> {
    (
        micro(-90_000_000..=90_000_000),
        micro(-180_000_000..=180_000_000),
    )
        .prop_map(|(lat, lon)| format!("{lat},{lon}"))
}

fn free_text() -> impl Strategy<Value = Raw> {
    (
        prop::sample::select(vec!["en", "zh-CN"]),
        "[A-Za-z0-9一-龥][A-Za-z0-9 ,.一-龥]{0,40}",
        prop::option::of("[A-Za-z0-9一-龥]{1,20}"),
    )
        .prop_map(|(lang, text, translation)| {
            let other = if lang == "en" { "zh-CN" } else { "en" };
            Raw::Text {
                lang: lang.to_string(),
                text,
                translations: translation
                    .map(|t| vec![(other.to_string(), t)])
                    .unwrap_or_default(),
            }
        })
}

/// A valid value of `kind`; time values are filled in later, in field order.
fn value(kind: &FieldType) -> BoxedStrategy<Raw> {
    let typed = |s: BoxedStrategy<String>| s.prop_map(Raw::Typed).boxed();
    match kind.clone() {
        FieldType::Text { .. } => free_text().boxed(),
        FieldType::Integer { min, max } => typed((min..=max).prop_map(|v| v.to_string()).boxed()),
        FieldType::Decimal { min, max, .. } => typed(micro(min.0..=max.0).boxed()),
        FieldType::Enum { values } => typed(prop::sample::select(values).boxed()),
        FieldType::Duration { min, max } => typed((min..=max).prop_map(canonical_duration).boxed()),
        FieldType::GeoPoint => typed(point().boxed()),
        FieldType::GeoArea => typed(
            prop_oneof![
                (point(), micro(1..=20_000_000_000)).prop_map(|(p, r)| format!("circle:{p},{r}")),
                prop::collection::vec(point(), 3..6)
                    .prop_map(|v| format!("polygon:{}", v.join(";"))),
            ]
            .boxed(),
        ),
        FieldType::Bearing => typed(micro(0..=359_999_999).boxed()),
        FieldType::MessageRef => typed(any::<[u8; 32]>().prop_map(hex::encode).boxed()),
        // Placeholders: replaced by ordered times below.
        _ => Just(Raw::Typed(String::new())).boxed(),
    }
}

/// A format, and values for its required fields and a random subset of the others.
fn notification() -> impl Strategy<Value = (&'static FormatDef, BTreeMap<String, Raw>)> {
    let formats = builtin().formats();
    (0..formats.len()).prop_flat_map(move |i| {
        let def = &formats[i];
        let fields: Vec<BoxedStrategy<Option<Raw>>> = def
            .fields
            .iter()
            .map(|f| {
                if f.required {
                    value(&f.kind).prop_map(Some).boxed()
                } else {
                    prop::option::of(value(&f.kind)).boxed()
                }
            })
            .collect();
        // Ascending times from 25 hours to about a year ahead, for the time fields in order.
        let times = prop::collection::vec(0i64..30_000_000, 8).prop_map(|mut v| {
            v.sort_unstable();
            v.iter()
                .enumerate()
                .map(|(i, s)| NOW_S + 25 * 3600 + s + i as i64)
                .collect::<Vec<_>>()
        });
        (Just(def), fields, times).prop_map(|(def, values, times)| {
            let mut times = times.into_iter();
            let mut out = BTreeMap::new();
            for (f, v) in def.fields.iter().zip(values) {
                let Some(mut v) = v else { continue };
                match f.kind {
                    FieldType::DateTime => v = Raw::Typed(utc(times.next().unwrap())),
                    FieldType::Window => {
                        let (a, b) = (times.next().unwrap(), times.next().unwrap());
                        v = Raw::Typed(format!("{}/{}", utc(a), utc(b)));
                    }
                    _ => {}
                }
                out.insert(f.key.clone(), v);
            }
            (def, out)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn encode_sign_decode_render_round_trips((def, raw) in notification()) {
        let now = jiff::Timestamp::from_second(NOW_S).unwrap();
        // Some random combinations break a cross-field rule (a reply that accepts without
        // naming a slot); those are not valid values.
        let validated = def.validate(&raw, now);
        prop_assume!(validated.is_ok(), "{:?}", validated);
        let n = validated.unwrap();

        let a = PartySecret::from_seed([1; 32]);
        let b = PartySecret::from_seed([2; 32]).public();
        let created_at_ms = NOW_S as u64 * 1000;
        let envelope = Envelope {
            channel: ChannelId::for_pair(&a.public(), &b),
            sender: a.public(),
            seq: 1,
            prev: MessageId::ZERO,
            created_at_ms,
            precedence: Precedence::Immediate,
            topic: def.topic.clone(),
            author: "Duty Officer".into(),
            in_reply_to: None,
            body: Body::Notification(notify::to_body(&n)),
        };
        let signed = VerifiedEnvelope::sign(envelope, &a).unwrap();
        let decoded = VerifiedEnvelope::decode(signed.bytes(), Some(&a.public())).unwrap();
        let Body::Notification(body) = &decoded.envelope().body else {
            panic!("not a notification");
        };
        let (def_back, back) = notify::check(body, created_at_ms).unwrap();
        prop_assert_eq!(&back, &n);
        prop_assert_eq!(def_back.digest, def.digest);

        for (lang, tz) in [("en", "America/New_York"), ("zh-CN", "Asia/Shanghai")] {
            let shown = back.render(def, Reader { lang, tz }, &[]);
            prop_assert_eq!(shown.fields.len(), n.values.len());
            for f in &shown.fields {
                let fluent_id = format!("{}-{}", def.id, f.key);
                prop_assert!(!f.label.is_empty() && f.label != fluent_id);
                prop_assert!(!f.value.contains(&format!("{}-", def.id)), "{}", f.value);
                match &n.values[&f.key] {
                    detente_formats::Value::Text { text, translations, .. } => {
                        prop_assert!(f.value.contains(text.as_str()));
                        for (_, t) in translations {
                            prop_assert!(f.notes.iter().any(|note| note.contains(t.as_str())));
                        }
                    }
                    detente_formats::Value::Integer(i) => {
                        prop_assert!(f.value.contains(&i.to_string()));
                    }
                    detente_formats::Value::DateTime(t) => {
                        let day = t.strftime("%H:%M").to_string();
                        prop_assert!(f.value.contains(&day), "{} lacks {}", f.value, day);
                        // The reader's zone, named in their language.
                        let zone = detente_formats::zone_name(lang, tz).unwrap();
                        prop_assert!(f.value.contains(&zone), "{} lacks {}", f.value, zone);
                    }
                    _ => prop_assert!(!f.value.is_empty()),
                }
            }
        }
    }
}
