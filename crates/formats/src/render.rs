//! Rendering with Fluent: a notification (or a format's description) in the reader's
//! language, every time in UTC and in the reader's time zone (jiff's bundled database, so
//! every node shows the same local times whatever the host has installed).

use std::sync::OnceLock;

use fluent_bundle::{FluentArgs, FluentBundle, FluentResource};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

use crate::def::{FieldType, FormatDef, Rule};
use crate::validate::{Notification, Value};
use crate::value::{canonical_duration, duration_parts, Fixed, GeoArea, GeoPoint};
use crate::{locale_sources, LOCALES};

/// Terms in one glossary.
pub const GLOSSARY_ENTRIES_MAX: usize = 1000;
/// Bytes in one glossary term.
pub const GLOSSARY_TERM_BYTES_MAX: usize = 200;

/// Who reads: their language (a BCP 47 tag; unsupported ones fall back to English) and
/// time zone (an IANA name; an unknown one falls back to UTC).
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    pub lang: &'a str,
    pub tz: &'a str,
}

/// An agreed pair of terms in two languages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GlossaryEntry {
    pub lang_a: String,
    pub term_a: String,
    pub lang_b: String,
    pub term_b: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedField {
    pub key: String,
    pub label: String,
    pub value: String,
    /// True for free text, which keeps the sender's language.
    pub free_text: bool,
    /// Courtesy translations and glossary equivalents, in the reader's language.
    pub notes: Vec<String>,
}

/// A notification as one reader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// The locale used.
    pub lang: String,
    pub title: String,
    pub fields: Vec<RenderedField>,
}

impl Rendered {
    /// Plain text: the title, then one `label: value` line per field, notes indented.
    pub fn text(&self) -> String {
        let mut out = self.title.clone();
        for f in &self.fields {
            out.push_str(&format!("\n  {}: {}", f.label, f.value));
            for note in &f.notes {
                out.push_str(&format!("\n    {note}"));
            }
        }
        out
    }
}

/// A time zone's name in `lang` ("北京时间", "Eastern Time") for the zones the locales
/// name (`tz-…` in `locales/LANG/common.ftl`, the one table the console uses too); `None`
/// for the others, which callers show by their IANA id or abbreviation.
pub fn zone_name(lang: &str, iana: &str) -> Option<String> {
    Localizer::new(lang).zone_name(iana)
}

/// [`zone_name`] for many zones at once, in order (one set of locale data for all: a list
/// of every zone costs one lookup each, not one locale load each).
pub fn zone_names<'a>(lang: &str, zones: impl IntoIterator<Item = &'a str>) -> Vec<Option<String>> {
    let localizer = Localizer::new(lang);
    zones.into_iter().map(|z| localizer.zone_name(z)).collect()
}

/// Bytes in a reader's time-zone name from outside (the longest IANA name,
/// `America/Argentina/ComodRivadavia`, has 32).
pub const ZONE_NAME_BYTES_MAX: usize = 64;

/// Why a reader's time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// Longer than [`ZONE_NAME_BYTES_MAX`].
    #[error("a time-zone name of {0} bytes (at most {ZONE_NAME_BYTES_MAX})")]
    TooLong(usize),
    /// Not a zone of the IANA database this build carries.
    #[error("unknown time zone {0:?}")]
    Unknown(String),
}

/// `name` as a reader's zone: an IANA name (`America/New_York`, `UTC`) that the bundled
/// database holds, checked before it reaches any rendering (which would quietly fall back
/// to UTC and show a reader the wrong local times).
pub fn check_zone(name: &str) -> Result<TimeZone, ZoneError> {
    if name.len() > ZONE_NAME_BYTES_MAX {
        return Err(ZoneError::TooLong(name.len()));
    }
    TimeZone::get(name).map_err(|_| ZoneError::Unknown(name.to_string()))
}

/// The supported locale closest to `lang`: exact, then same primary language, then English.
pub fn locale_for(lang: &str) -> &'static str {
    if let Some(l) = LOCALES.iter().find(|l| l.eq_ignore_ascii_case(lang)) {
        return l;
    }
    let primary = lang.split(['-', '_']).next().unwrap_or("");
    LOCALES
        .iter()
        .find(|l| l.split('-').next() == Some(primary))
        .unwrap_or(&LOCALES[0])
}

fn resources() -> &'static Vec<Vec<FluentResource>> {
    static RESOURCES: OnceLock<Vec<Vec<FluentResource>>> = OnceLock::new();
    RESOURCES.get_or_init(|| {
        (0..LOCALES.len())
            .map(|i| {
                locale_sources(i)
                    .into_iter()
                    .map(|s| {
                        FluentResource::try_new(s.to_string())
                            .expect("built-in locales are checked by the tests")
                    })
                    .collect()
            })
            .collect()
    })
}

/// Fluent messages of one locale.
pub(crate) struct Localizer {
    locale: &'static str,
    bundle: FluentBundle<&'static FluentResource>,
}

impl Localizer {
    pub(crate) fn new(lang: &str) -> Localizer {
        let locale = locale_for(lang);
        let index = LOCALES.iter().position(|l| *l == locale).unwrap_or(0);
        let langid = locale.parse().expect("shipped locale names are valid");
        let mut bundle = FluentBundle::new(vec![langid]);
        bundle.set_use_isolating(false);
        for resource in &resources()[index] {
            bundle
                .add_resource(resource)
                .expect("built-in locales have no duplicate keys (checked by the tests)");
        }
        Localizer { locale, bundle }
    }

    pub(crate) fn has(&self, id: &str) -> bool {
        self.bundle.has_message(id)
    }

    /// The message `id` with `args`; a missing message shows its id (the tests make sure
    /// none is missing for the built-in formats).
    pub(crate) fn msg(&self, id: &str, args: &[(&str, String)]) -> String {
        let Some(pattern) = self.bundle.get_message(id).and_then(|m| m.value()) else {
            return id.to_string();
        };
        let mut fluent_args = FluentArgs::new();
        for (name, value) in args {
            fluent_args.set(*name, value.clone());
        }
        let mut errors = Vec::new();
        self.bundle
            .format_pattern(pattern, Some(&fluent_args), &mut errors)
            .into_owned()
    }

    fn language_name(&self, tag: &str) -> String {
        let id = format!("language-{tag}");
        if self.has(&id) {
            self.msg(&id, &[])
        } else {
            tag.to_string()
        }
    }

    fn datetime(&self, ts: Timestamp, tz: &TimeZone) -> String {
        let z = ts.to_zoned(tz.clone());
        self.msg(
            "datetime",
            &[
                ("year", z.year().to_string()),
                ("month", format!("{:02}", z.month())),
                ("day", format!("{:02}", z.day())),
                ("hour", format!("{:02}", z.hour())),
                ("minute", format!("{:02}", z.minute())),
            ],
        )
    }

    fn time(&self, ts: Timestamp, zone: &str) -> String {
        let tz = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
        self.msg(
            "time-both",
            &[
                ("utc", self.datetime(ts, &TimeZone::UTC)),
                ("local", self.datetime(ts, &tz)),
                (
                    "zone",
                    self.zone_name(zone).unwrap_or_else(|| zone.to_string()),
                ),
            ],
        )
    }

    /// The zone's name in this locale (`tz-` and the IANA id with `/` as `-`), if it has one.
    fn zone_name(&self, iana: &str) -> Option<String> {
        let id = format!("tz-{}", iana.replace('/', "-"));
        self.has(&id).then(|| self.msg(&id, &[]))
    }

    fn point(&self, p: &GeoPoint) -> String {
        let abs = |f: Fixed| Fixed(f.0.abs()).canonical();
        let ns = if p.lat.0 < 0 {
            "geo-south"
        } else {
            "geo-north"
        };
        let ew = if p.lon.0 < 0 { "geo-west" } else { "geo-east" };
        self.msg(
            "geo-point",
            &[
                ("lat", abs(p.lat)),
                ("lon", abs(p.lon)),
                ("ns", self.msg(ns, &[])),
                ("ew", self.msg(ew, &[])),
            ],
        )
    }

    fn duration(&self, seconds: u64) -> String {
        let parts = duration_parts(seconds);
        let names = ["duration-d", "duration-h", "duration-m", "duration-s"];
        let shown: Vec<String> = parts
            .iter()
            .zip(names)
            .filter(|(n, _)| **n > 0)
            .map(|(n, id)| self.msg(id, &[("n", n.to_string())]))
            .collect();
        if shown.is_empty() {
            self.msg("duration-s", &[("n", "0".into())])
        } else {
            shown.join(" ")
        }
    }
}

impl Notification {
    /// The notification in `reader`'s language and time zone; free text keeps its language,
    /// marked, with courtesy translations and glossary equivalents as notes.
    pub fn render(
        &self,
        def: &FormatDef,
        reader: Reader<'_>,
        glossary: &[GlossaryEntry],
    ) -> Rendered {
        let l = Localizer::new(reader.lang);
        let title = l.msg(
            "notification-header",
            &[("title", l.msg(&format!("{}-title", def.id), &[]))],
        );
        let mut fields = Vec::new();
        for field in &def.fields {
            let Some(value) = self.values.get(&field.key) else {
                continue;
            };
            let label = l.msg(&format!("{}-{}", def.id, field.key), &[]);
            let mut notes = Vec::new();
            let text = match value {
                Value::Text {
                    lang,
                    text,
                    translations,
                } => {
                    let marked = mark_glossary(text, lang, glossary, &l, &mut notes);
                    // Courtesy translations first (the one in the reader's language leading),
                    // then the glossary notes.
                    let mut courtesy: Vec<&(String, String)> = translations.iter().collect();
                    courtesy.sort_by_key(|(t_lang, _)| locale_for(t_lang) != l.locale);
                    for (i, (t_lang, t_text)) in courtesy.into_iter().enumerate() {
                        let note = l.msg(
                            "courtesy-translation",
                            &[
                                ("language", l.language_name(t_lang)),
                                ("text", t_text.clone()),
                            ],
                        );
                        notes.insert(i, note);
                    }
                    let marker =
                        l.msg("free-text-language", &[("language", l.language_name(lang))]);
                    format!("{marked} {marker}")
                }
                other => render_value(&l, def, &field.key, other, reader.tz),
            };
            fields.push(RenderedField {
                key: field.key.clone(),
                label,
                value: text,
                free_text: matches!(value, Value::Text { .. }),
                notes,
            });
        }
        Rendered {
            lang: l.locale.to_string(),
            title,
            fields,
        }
    }
}

fn render_value(l: &Localizer, def: &FormatDef, key: &str, value: &Value, tz: &str) -> String {
    match value {
        Value::Text { text, .. } => text.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Decimal(d) => {
            let unit = match def.field(key).map(|f| &f.kind) {
                Some(FieldType::Decimal { unit, .. }) => l.msg(&format!("unit-{unit}"), &[]),
                _ => String::new(),
            };
            l.msg("decimal", &[("number", d.canonical()), ("unit", unit)])
        }
        Value::Enum(v) => l.msg(&format!("{}-{key}-{v}", def.id), &[]),
        Value::DateTime(t) => l.time(*t, tz),
        Value::Window(a, b) => l.msg(
            "window",
            &[("start", l.time(*a, tz)), ("end", l.time(*b, tz))],
        ),
        Value::Duration(s) => l.duration(*s),
        Value::GeoPoint(p) => l.point(p),
        Value::GeoArea(GeoArea::Circle { center, radius_km }) => l.msg(
            "geo-circle",
            &[
                ("center", l.point(center)),
                ("radius", radius_km.canonical()),
            ],
        ),
        Value::GeoArea(GeoArea::Polygon(points)) => {
            let points: Vec<String> = points.iter().map(|p| l.point(p)).collect();
            l.msg("geo-polygon", &[("points", points.join("; "))])
        }
        Value::Bearing(b) => l.msg("bearing", &[("degrees", b.canonical())]),
        Value::MessageRef(id) => l.msg("message-ref", &[("id", hex::encode(&id[..6]))]),
    }
}

/// Wrap each glossary term found in `text` (written in `lang`) in ⟦ ⟧ and add a note with
/// the agreed equivalent in the other language.
fn mark_glossary(
    text: &str,
    lang: &str,
    glossary: &[GlossaryEntry],
    l: &Localizer,
    notes: &mut Vec<String>,
) -> String {
    let mut marked = text.to_string();
    let same = |a: &str, b: &str| locale_for(a) == locale_for(b);
    for entry in glossary.iter().take(GLOSSARY_ENTRIES_MAX) {
        let (term, equivalent) = if same(&entry.lang_a, lang) {
            (&entry.term_a, &entry.term_b)
        } else if same(&entry.lang_b, lang) {
            (&entry.term_b, &entry.term_a)
        } else {
            continue;
        };
        if term.is_empty()
            || !marked.contains(term.as_str())
            || marked.contains(&format!("⟦{term}⟧"))
        {
            continue;
        }
        marked = marked.replace(term.as_str(), &format!("⟦{term}⟧"));
        notes.push(l.msg(
            "glossary-note",
            &[("term", term.clone()), ("equivalent", equivalent.clone())],
        ));
    }
    marked
}

/// One field of a format, described for an operator.
#[derive(Clone, Debug, Serialize)]
pub struct FieldDescription {
    pub key: String,
    pub label: String,
    pub help: String,
    /// The type's short name (`integer`, `geo-area`, ...).
    #[serde(rename = "type")]
    pub type_name: String,
    /// What to write, in the reader's language.
    pub accepts: String,
    pub required: bool,
    /// Enum values with their labels.
    pub values: Vec<(String, String)>,
}

/// A format described for an operator (`detente formats show`).
#[derive(Clone, Debug, Serialize)]
pub struct FormatDescription {
    pub id: String,
    pub version: u32,
    pub title: String,
    pub precedence: String,
    pub topic: String,
    pub digest: String,
    pub fields: Vec<FieldDescription>,
    pub rules: Vec<String>,
}

/// Describe `def` in `lang`: fields, types, constraints and rules.
pub fn describe(def: &FormatDef, lang: &str) -> FormatDescription {
    let l = Localizer::new(lang);
    let fields = def
        .fields
        .iter()
        .map(|f| {
            let label_id = format!("{}-{}", def.id, f.key);
            let (accepts, values) = accepts(&l, def, &f.key, &f.kind);
            FieldDescription {
                key: f.key.clone(),
                label: l.msg(&label_id, &[]),
                help: l.msg(&format!("{label_id}-help"), &[]),
                type_name: f.kind.name().to_string(),
                accepts,
                required: f.required,
                values,
            }
        })
        .collect();
    let rules = def.rules.iter().map(|r| describe_rule(&l, r)).collect();
    FormatDescription {
        id: def.id.clone(),
        version: def.version,
        title: l.msg(&format!("{}-title", def.id), &[]),
        precedence: def.precedence.clone(),
        topic: def.topic.clone(),
        digest: def.digest_hex(),
        fields,
        rules,
    }
}

fn accepts(
    l: &Localizer,
    def: &FormatDef,
    key: &str,
    kind: &FieldType,
) -> (String, Vec<(String, String)>) {
    let mut values = Vec::new();
    let text = match kind {
        FieldType::Text { max_chars } => l.msg("type-text", &[("max", max_chars.to_string())]),
        FieldType::Integer { min, max } => l.msg(
            "type-integer",
            &[("min", min.to_string()), ("max", max.to_string())],
        ),
        FieldType::Decimal { unit, min, max } => l.msg(
            "type-decimal",
            &[
                ("min", min.canonical()),
                ("max", max.canonical()),
                ("unit", l.msg(&format!("unit-{unit}"), &[])),
            ],
        ),
        FieldType::Enum { values: names } => {
            for v in names {
                values.push((v.clone(), l.msg(&format!("{}-{key}-{v}", def.id), &[])));
            }
            l.msg("type-enum", &[("values", names.join(", "))])
        }
        FieldType::DateTime => l.msg("type-datetime", &[]),
        FieldType::Window => l.msg("type-window", &[]),
        FieldType::Duration { min, max } => l.msg(
            "type-duration",
            &[
                ("min", canonical_duration(*min)),
                ("max", canonical_duration(*max)),
            ],
        ),
        FieldType::GeoPoint => l.msg("type-geo-point", &[]),
        FieldType::GeoArea => l.msg("type-geo-area", &[]),
        FieldType::Bearing => l.msg("type-bearing", &[]),
        FieldType::MessageRef => l.msg("type-message-ref", &[]),
    };
    (text, values)
}

fn describe_rule(l: &Localizer, rule: &Rule) -> String {
    match rule {
        Rule::Before { first, second } => l.msg(
            "rule-order",
            &[("first", first.clone()), ("second", second.clone())],
        ),
        Rule::LeadTime {
            field,
            min_seconds,
            late_reason,
        } => l.msg(
            "rule-lead-time",
            &[
                ("field", field.clone()),
                ("min", canonical_duration(*min_seconds)),
                ("late", late_reason.clone()),
            ],
        ),
        Rule::RequiredWhen {
            field,
            when,
            equals,
        } => l.msg(
            "rule-required-when",
            &[
                ("field", field.clone()),
                ("when", when.clone()),
                ("values", equals.join(", ")),
            ],
        ),
        Rule::AbsentWhen {
            field,
            when,
            equals,
        } => l.msg(
            "rule-absent-when",
            &[
                ("field", field.clone()),
                ("when", when.clone()),
                ("values", equals.join(", ")),
            ],
        ),
    }
}

/// Every Fluent message id a format needs, for the locale completeness tests.
pub fn required_keys(def: &FormatDef) -> Vec<String> {
    let mut keys = vec![format!("{}-title", def.id)];
    for f in &def.fields {
        keys.push(format!("{}-{}", def.id, f.key));
        keys.push(format!("{}-{}-help", def.id, f.key));
        match &f.kind {
            FieldType::Enum { values } => {
                keys.extend(values.iter().map(|v| format!("{}-{}-{v}", def.id, f.key)))
            }
            FieldType::Decimal { unit, .. } => keys.push(format!("unit-{unit}")),
            _ => {}
        }
    }
    keys
}

/// Whether locale `lang` has message `id` (for tests and `formats show`).
pub fn has_message(lang: &str, id: &str) -> bool {
    Localizer::new(lang).has(id)
}

/// Every message id defined in locale `lang`'s shipped files.
pub fn message_ids(lang: &str) -> Vec<String> {
    let index = LOCALES
        .iter()
        .position(|l| *l == locale_for(lang))
        .unwrap_or(0);
    let mut ids = Vec::new();
    for resource in &resources()[index] {
        for entry in resource.entries() {
            if let fluent_syntax::ast::Entry::Message(m) = entry {
                ids.push(m.id.name.to_string());
            }
        }
    }
    ids
}
