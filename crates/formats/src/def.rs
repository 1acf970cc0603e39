//! Format definitions: the TOML data in `formats/`, parsed and checked once.
//!
//! A definition says which fields a notification of this format has, each field's type and
//! constraints, and the rules across fields. Titles, labels, help and enum labels live in
//! the Fluent files of each locale (`locales/LANG/ID.ftl`), under keys derived from the
//! format id and field key (see [`crate::keys`]), so a language is added by adding files.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::value::{parse_duration, Fixed};

/// Fields one format may define.
pub const FIELDS_PER_FORMAT_MAX: usize = 32;
/// Values one enum may have.
pub const ENUM_VALUES_MAX: usize = 64;

/// The type of a field, with its constraints.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldType {
    /// Free text in the sender's language, with optional courtesy translations.
    Text {
        max_chars: usize,
    },
    Integer {
        min: i64,
        max: i64,
    },
    /// A decimal number in a fixed unit (the unit's label comes from the locale: `unit-ID`).
    Decimal {
        unit: String,
        min: Fixed,
        max: Fixed,
    },
    Enum {
        values: Vec<String>,
    },
    /// A UTC date-time.
    DateTime,
    /// Two UTC date-times, the end after the start.
    Window,
    /// A duration in seconds, with bounds.
    Duration {
        min: u64,
        max: u64,
    },
    GeoPoint,
    GeoArea,
    /// Degrees clockwise from true north, 0 ≤ b < 360.
    Bearing,
    /// The id of another message on the channel.
    MessageRef,
}

impl FieldType {
    /// The short name used in the TOML and in `formats show`.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Text { .. } => "text",
            FieldType::Integer { .. } => "integer",
            FieldType::Decimal { .. } => "decimal",
            FieldType::Enum { .. } => "enum",
            FieldType::DateTime => "datetime",
            FieldType::Window => "window",
            FieldType::Duration { .. } => "duration",
            FieldType::GeoPoint => "geo-point",
            FieldType::GeoArea => "geo-area",
            FieldType::Bearing => "bearing",
            FieldType::MessageRef => "message-ref",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDef {
    pub key: String,
    pub kind: FieldType,
    pub required: bool,
}

/// A rule across fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// Date-time field `second` must be after date-time field `first`.
    Before { first: String, second: String },
    /// Date-time (or window start) `field` must be at least `min_seconds` after the time the
    /// notification is made, unless text field `late_reason` says why it is late.
    LeadTime {
        field: String,
        min_seconds: u64,
        late_reason: String,
    },
    /// `field` is required when enum field `when` has one of `equals`.
    RequiredWhen {
        field: String,
        when: String,
        equals: Vec<String>,
    },
    /// `field` must be absent when enum field `when` has one of `equals`.
    AbsentWhen {
        field: String,
        when: String,
        equals: Vec<String>,
    },
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Before { .. } => "order",
            Rule::LeadTime { .. } => "lead-time",
            Rule::RequiredWhen { .. } => "required-when",
            Rule::AbsentWhen { .. } => "absent-when",
        }
    }
}

/// One format: its id, version, fields and rules, and the SHA-256 of its definition.
#[derive(Clone, Debug)]
pub struct FormatDef {
    pub id: String,
    pub version: u32,
    /// Default precedence name (`flash`, `immediate`, `priority`, `routine`).
    pub precedence: String,
    pub topic: String,
    pub fields: Vec<FieldDef>,
    pub rules: Vec<Rule>,
    /// SHA-256 of the canonical definition bytes (see [`FormatDef::canonical_bytes`]).
    pub digest: [u8; 32],
    canonical: Vec<u8>,
}

impl FormatDef {
    pub fn field(&self, key: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.key == key)
    }

    /// The bytes the digest covers: a domain separator, then the TOML definition and every
    /// locale's Fluent file for this format (sorted by locale), each length-prefixed, with
    /// carriage returns removed so a checkout's line endings cannot change the digest. Two
    /// nodes with the same digest show the same fields with the same words.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }

    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A definition that cannot be used, with what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("format definition {file}: {problem}")]
pub struct DefinitionError {
    pub file: String,
    pub problem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFormat {
    id: String,
    version: u32,
    precedence: String,
    topic: String,
    fields: Vec<RawField>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    key: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    required: bool,
    min: Option<toml::Value>,
    max: Option<toml::Value>,
    unit: Option<String>,
    values: Option<Vec<String>>,
    max_chars: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    rule: String,
    first: Option<String>,
    second: Option<String>,
    field: Option<String>,
    min: Option<String>,
    late_reason: Option<String>,
    when: Option<String>,
    equals: Option<Vec<String>>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Parse one definition; `locales` are `(locale, Fluent source)` for this format.
pub fn parse(
    file: &str,
    source: &str,
    locales: &[(&str, &str)],
) -> Result<FormatDef, DefinitionError> {
    let err = |problem: String| DefinitionError {
        file: file.to_string(),
        problem,
    };
    let raw: RawFormat = toml::from_str(source).map_err(|e| err(e.to_string()))?;
    if !is_name(&raw.id) {
        return Err(err(format!("id {:?} is not a lowercase name", raw.id)));
    }
    if raw.fields.is_empty() || raw.fields.len() > FIELDS_PER_FORMAT_MAX {
        return Err(err(format!("1 to {FIELDS_PER_FORMAT_MAX} fields")));
    }
    let mut fields: Vec<FieldDef> = Vec::new();
    for f in raw.fields {
        if !is_name(&f.key) || fields.iter().any(|g| g.key == f.key) {
            return Err(err(format!(
                "field key {:?} is not a new lowercase name",
                f.key
            )));
        }
        let kind = field_type(&f).map_err(|p| err(format!("field {}: {p}", f.key)))?;
        fields.push(FieldDef {
            key: f.key,
            kind,
            required: f.required,
        });
    }
    let mut rules = Vec::new();
    for r in raw.rules {
        rules.push(rule(&r, &fields).map_err(|p| err(format!("rule {}: {p}", r.rule)))?);
    }
    let mut canonical = Vec::new();
    canonical.extend_from_slice(b"detente-format-definition-v1\0");
    let mut push = |bytes: &str| {
        let cleaned = bytes.replace('\r', "");
        canonical.extend_from_slice(&(cleaned.len() as u64).to_be_bytes());
        canonical.extend_from_slice(cleaned.as_bytes());
    };
    push(source);
    let mut sorted: Vec<&(&str, &str)> = locales.iter().collect();
    sorted.sort_by_key(|(locale, _)| *locale);
    for (locale, ftl) in sorted {
        push(locale);
        push(ftl);
    }
    let digest: [u8; 32] = Sha256::digest(&canonical).into();
    Ok(FormatDef {
        id: raw.id,
        version: raw.version,
        precedence: raw.precedence,
        topic: raw.topic,
        fields,
        rules,
        digest,
        canonical,
    })
}

fn int_bound(v: &Option<toml::Value>, what: &str) -> Result<i64, String> {
    match v {
        Some(toml::Value::Integer(i)) => Ok(*i),
        _ => Err(format!("needs an integer {what}")),
    }
}

fn text_bound(v: &Option<toml::Value>, what: &str) -> Result<String, String> {
    match v {
        Some(toml::Value::String(s)) => Ok(s.clone()),
        _ => Err(format!("needs {what} as a string")),
    }
}

fn field_type(f: &RawField) -> Result<FieldType, String> {
    let kind = match f.kind.as_str() {
        "text" => FieldType::Text {
            max_chars: f.max_chars.unwrap_or(2000).min(8000),
        },
        "integer" => {
            let (min, max) = (int_bound(&f.min, "min")?, int_bound(&f.max, "max")?);
            if min > max {
                return Err("min above max".into());
            }
            FieldType::Integer { min, max }
        }
        "decimal" => {
            let min = Fixed::parse(&text_bound(&f.min, "min")?)?;
            let max = Fixed::parse(&text_bound(&f.max, "max")?)?;
            let unit = f.unit.clone().ok_or("needs a unit")?;
            if min > max || !is_name(&unit) {
                return Err("min above max, or a bad unit".into());
            }
            FieldType::Decimal { unit, min, max }
        }
        "enum" => {
            let values = f.values.clone().ok_or("needs values")?;
            let distinct = values
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if values.is_empty()
                || values.len() > ENUM_VALUES_MAX
                || distinct != values.len()
                || !values.iter().all(|v| is_name(v) && v != "help")
            {
                return Err("1 to 64 distinct lowercase values (not \"help\")".into());
            }
            FieldType::Enum { values }
        }
        "datetime" => FieldType::DateTime,
        "window" => FieldType::Window,
        "duration" => {
            let min = parse_duration(&text_bound(&f.min, "min")?)?;
            let max = parse_duration(&text_bound(&f.max, "max")?)?;
            if min > max {
                return Err("min above max".into());
            }
            FieldType::Duration { min, max }
        }
        "geo-point" => FieldType::GeoPoint,
        "geo-area" => FieldType::GeoArea,
        "bearing" => FieldType::Bearing,
        "message-ref" => FieldType::MessageRef,
        other => return Err(format!("unknown type {other:?}")),
    };
    Ok(kind)
}

fn rule(r: &RawRule, fields: &[FieldDef]) -> Result<Rule, String> {
    let need = |v: &Option<String>, what: &str| v.clone().ok_or(format!("needs {what}"));
    let field_of = |key: &str| fields.iter().find(|f| f.key == key);
    let is_time = |key: &str| {
        matches!(
            field_of(key).map(|f| &f.kind),
            Some(FieldType::DateTime) | Some(FieldType::Window)
        )
    };
    let rule = match r.rule.as_str() {
        "order" => {
            let (first, second) = (need(&r.first, "first")?, need(&r.second, "second")?);
            if !is_time(&first) || !is_time(&second) {
                return Err("first and second must be date-time fields".into());
            }
            Rule::Before { first, second }
        }
        "lead-time" => {
            let field = need(&r.field, "field")?;
            let late_reason = need(&r.late_reason, "late_reason")?;
            let min_seconds = parse_duration(&need(&r.min, "min")?)?;
            if !is_time(&field) {
                return Err("field must be a date-time or window".into());
            }
            if !matches!(
                field_of(&late_reason).map(|f| &f.kind),
                Some(FieldType::Text { .. })
            ) {
                return Err("late_reason must be a text field".into());
            }
            Rule::LeadTime {
                field,
                min_seconds,
                late_reason,
            }
        }
        "required-when" | "absent-when" => {
            let (field, when) = (need(&r.field, "field")?, need(&r.when, "when")?);
            let equals = r.equals.clone().ok_or("needs equals")?;
            let Some(FieldType::Enum { values }) = field_of(&when).map(|f| &f.kind) else {
                return Err("when must be an enum field".into());
            };
            if field_of(&field).is_none() || !equals.iter().all(|e| values.contains(e)) {
                return Err("unknown field or enum value".into());
            }
            if r.rule == "required-when" {
                Rule::RequiredWhen {
                    field,
                    when,
                    equals,
                }
            } else {
                Rule::AbsentWhen {
                    field,
                    when,
                    equals,
                }
            }
        }
        other => return Err(format!("unknown rule {other:?}")),
    };
    Ok(rule)
}
