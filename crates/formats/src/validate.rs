//! Validation: raw field values in, a typed [`Notification`] out, or a [`FieldError`] that
//! names the field and the rule it broke.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::def::{FieldType, FormatDef, Rule};
use crate::value::{
    canonical_datetime, canonical_duration, parse_datetime, parse_duration, Fixed, GeoArea,
    GeoPoint,
};

/// Fields in one notification.
pub const FIELDS_MAX: usize = 32;
/// Bytes in a field key.
pub const KEY_BYTES_MAX: usize = 32;
/// Bytes in one typed value's text (a 64-vertex polygon fits).
pub const VALUE_BYTES_MAX: usize = 4096;
/// Bytes in one free text (and in each courtesy translation).
pub const TEXT_BYTES_MAX: usize = 8192;
/// Courtesy translations on one free-text field.
pub const TRANSLATIONS_MAX: usize = 4;
/// Bytes in a language tag.
pub const LANGUAGE_BYTES_MAX: usize = 35;

/// A field value as it travels: typed values as their canonical text, free text with its
/// language and any courtesy translations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raw {
    Typed(String),
    Text {
        lang: String,
        text: String,
        /// `(language, text)`, sorted by language, each language once.
        translations: Vec<(String, String)>,
    },
}

/// A checked value of one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text {
        lang: String,
        text: String,
        translations: Vec<(String, String)>,
    },
    Integer(i64),
    Decimal(Fixed),
    Enum(String),
    DateTime(Timestamp),
    Window(Timestamp, Timestamp),
    Duration(u64),
    GeoPoint(GeoPoint),
    GeoArea(GeoArea),
    Bearing(Fixed),
    MessageRef([u8; 32]),
}

impl Value {
    /// The value as it travels.
    pub fn to_raw(&self) -> Raw {
        let typed = match self {
            Value::Text {
                lang,
                text,
                translations,
            } => {
                return Raw::Text {
                    lang: lang.clone(),
                    text: text.clone(),
                    translations: translations.clone(),
                }
            }
            Value::Integer(i) => i.to_string(),
            Value::Decimal(d) | Value::Bearing(d) => d.canonical(),
            Value::Enum(v) => v.clone(),
            Value::DateTime(t) => canonical_datetime(*t),
            Value::Window(a, b) => format!("{}/{}", canonical_datetime(*a), canonical_datetime(*b)),
            Value::Duration(s) => canonical_duration(*s),
            Value::GeoPoint(p) => p.canonical(),
            Value::GeoArea(a) => a.canonical(),
            Value::MessageRef(id) => hex::encode(id),
        };
        Raw::Typed(typed)
    }

    /// The instant a date-time field names, or a window's start.
    pub fn start_time(&self) -> Option<Timestamp> {
        match self {
            Value::DateTime(t) | Value::Window(t, _) => Some(*t),
            _ => None,
        }
    }

    fn end_time(&self) -> Option<Timestamp> {
        match self {
            Value::DateTime(t) | Value::Window(_, t) => Some(*t),
            _ => None,
        }
    }
}

/// A notification whose every field passed its type, constraints and the format's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub format: String,
    pub version: u32,
    pub values: BTreeMap<String, Value>,
}

impl Notification {
    /// The fields as they travel, sorted by key.
    pub fn to_raw(&self) -> BTreeMap<String, Raw> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_raw()))
            .collect()
    }
}

/// Why a notification was refused. Every variant names the field (where there is one) and
/// the rule, so the operator knows what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The format id and version are not in this node's catalogue.
    #[error("format {id} version {version} is not held by this node")]
    UnknownFormat { id: String, version: u32 },
    /// A key the format does not define.
    #[error("field {key:?} is not a field of format {format}")]
    UnknownField { format: String, key: String },
    #[error("field {key:?} is required (rule: required)")]
    Missing { key: String },
    /// The value does not parse as the field's type or breaks its constraint.
    #[error("field {key:?}: expected {expected} (rule: {rule})")]
    Invalid {
        key: String,
        rule: &'static str,
        expected: String,
    },
    /// A cross-field rule failed.
    #[error("field {key:?}: {explanation} (rule: {rule})")]
    Rule {
        key: String,
        rule: &'static str,
        explanation: String,
    },
    /// Too many fields, or a key, value or translation over its limit.
    #[error("field {key:?}: {explanation} (rule: limit)")]
    Limit { key: String, explanation: String },
}

impl FieldError {
    /// The field the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            FieldError::UnknownFormat { .. } => None,
            FieldError::UnknownField { key, .. }
            | FieldError::Missing { key }
            | FieldError::Invalid { key, .. }
            | FieldError::Rule { key, .. }
            | FieldError::Limit { key, .. } => Some(key),
        }
    }
}

fn invalid(key: &str, rule: &'static str, expected: impl Into<String>) -> FieldError {
    FieldError::Invalid {
        key: key.to_string(),
        rule,
        expected: expected.into(),
    }
}

fn check_language(key: &str, tag: &str) -> Result<(), FieldError> {
    let ok = !tag.is_empty()
        && tag.len() <= LANGUAGE_BYTES_MAX
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            "language",
            "a language tag such as en or zh-CN",
        ))
    }
}

fn check_text(key: &str, text: &str, max_chars: usize) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(invalid(key, "text", "some text"));
    }
    if text.len() > TEXT_BYTES_MAX || text.chars().count() > max_chars {
        return Err(FieldError::Limit {
            key: key.to_string(),
            explanation: format!("at most {max_chars} characters"),
        });
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(key, "text", "text without control characters"));
    }
    Ok(())
}

/// Check one value against its field type.
pub fn parse_value(key: &str, kind: &FieldType, raw: &Raw) -> Result<Value, FieldError> {
    if let FieldType::Text { max_chars } = kind {
        let Raw::Text {
            lang,
            text,
            translations,
        } = raw
        else {
            return Err(invalid(key, "type", "free text with its language"));
        };
        check_language(key, lang)?;
        check_text(key, text, *max_chars)?;
        if translations.len() > TRANSLATIONS_MAX {
            return Err(FieldError::Limit {
                key: key.into(),
                explanation: format!("at most {TRANSLATIONS_MAX} courtesy translations"),
            });
        }
        for (i, (l, t)) in translations.iter().enumerate() {
            check_language(key, l)?;
            check_text(key, t, *max_chars)?;
            if l == lang || (i > 0 && translations[i - 1].0 >= *l) {
                return Err(invalid(
                    key,
                    "translations",
                    "one translation per other language, sorted",
                ));
            }
        }
        return Ok(Value::Text {
            lang: lang.clone(),
            text: text.clone(),
            translations: translations.clone(),
        });
    }
    let Raw::Typed(text) = raw else {
        return Err(invalid(
            key,
            "type",
            format!("a {} value, not free text", kind.name()),
        ));
    };
    if text.len() > VALUE_BYTES_MAX {
        return Err(FieldError::Limit {
            key: key.into(),
            explanation: format!("at most {VALUE_BYTES_MAX} bytes"),
        });
    }
    let text = text.trim();
    let value = match kind {
        FieldType::Text { .. } => unreachable!("handled above"),
        FieldType::Integer { min, max } => {
            let ok = |v: &i64| (*min..=*max).contains(v);
            match text.parse::<i64>() {
                Ok(v) if ok(&v) => Value::Integer(v),
                _ => {
                    return Err(invalid(
                        key,
                        "range",
                        format!("a whole number from {min} to {max}"),
                    ))
                }
            }
        }
        FieldType::Decimal { unit, min, max } => {
            let expected = || {
                format!(
                    "a number from {} to {} {unit}",
                    min.canonical(),
                    max.canonical()
                )
            };
            match Fixed::parse(text) {
                Ok(v) if v >= *min && v <= *max => Value::Decimal(v),
                _ => return Err(invalid(key, "range", expected())),
            }
        }
        FieldType::Enum { values } => {
            if values.iter().any(|v| v == text) {
                Value::Enum(text.to_string())
            } else {
                return Err(invalid(
                    key,
                    "enum",
                    format!("one of {}", values.join(", ")),
                ));
            }
        }
        FieldType::DateTime => {
            Value::DateTime(parse_datetime(text).map_err(|e| invalid(key, "datetime", e))?)
        }
        FieldType::Window => {
            let (a, b) = text
                .split_once('/')
                .ok_or_else(|| invalid(key, "window", "START/END, two RFC 3339 date-times"))?;
            let a = parse_datetime(a.trim()).map_err(|e| invalid(key, "window", e))?;
            let b = parse_datetime(b.trim()).map_err(|e| invalid(key, "window", e))?;
            if b <= a {
                return Err(FieldError::Rule {
                    key: key.into(),
                    rule: "order",
                    explanation: "the end must be after the start".into(),
                });
            }
            Value::Window(a, b)
        }
        FieldType::Duration { min, max } => {
            let v = parse_duration(text).map_err(|e| invalid(key, "duration", e))?;
            if v < *min || v > *max {
                let range = format!(
                    "a duration from {} to {}",
                    canonical_duration(*min),
                    canonical_duration(*max)
                );
                return Err(invalid(key, "range", range));
            }
            Value::Duration(v)
        }
        FieldType::GeoPoint => {
            Value::GeoPoint(GeoPoint::parse(text).map_err(|e| invalid(key, "geo-point", e))?)
        }
        FieldType::GeoArea => {
            Value::GeoArea(GeoArea::parse(text).map_err(|e| invalid(key, "geo-area", e))?)
        }
        FieldType::Bearing => match Fixed::parse(text) {
            Ok(v) if v.0 >= 0 && v < Fixed::from_int(360) => Value::Bearing(v),
            _ => return Err(invalid(key, "range", "degrees from 0 to less than 360")),
        },
        FieldType::MessageRef => {
            let id = hex::decode(text)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            Value::MessageRef(
                id.ok_or_else(|| invalid(key, "message-ref", "a message id (64 hex digits)"))?,
            )
        }
    };
    Ok(value)
}

impl FormatDef {
    /// Validate raw fields against this format. `now` is when the notification is made (the
    /// sender's clock when sending, the envelope's creation time when receiving): lead-time
    /// rules are measured from it.
    pub fn validate(
        &self,
        fields: &BTreeMap<String, Raw>,
        now: Timestamp,
    ) -> Result<Notification, FieldError> {
        self.validate_all(fields, now)
            .map_err(|mut errors| errors.swap_remove(0))
    }

    /// As [`FormatDef::validate`], but reporting every problem at once (in the order
    /// `validate` meets them, so the first is its error): each field that does not parse,
    /// each unknown field, each required field missing, and, once every field is valid on
    /// its own, each cross-field rule broken. Never an empty list.
    pub fn validate_all(
        &self,
        fields: &BTreeMap<String, Raw>,
        now: Timestamp,
    ) -> Result<Notification, Vec<FieldError>> {
        if fields.len() > FIELDS_MAX {
            return Err(vec![FieldError::Limit {
                key: "*".into(),
                explanation: format!("at most {FIELDS_MAX} fields"),
            }]);
        }
        let mut errors = Vec::new();
        let mut values = BTreeMap::new();
        for (key, raw) in fields {
            if key.len() > KEY_BYTES_MAX {
                errors.push(FieldError::Limit {
                    key: key.chars().take(KEY_BYTES_MAX).collect(),
                    explanation: format!("keys are at most {KEY_BYTES_MAX} bytes"),
                });
                continue;
            }
            let Some(def) = self.field(key) else {
                errors.push(FieldError::UnknownField {
                    format: self.id.clone(),
                    key: key.clone(),
                });
                continue;
            };
            match parse_value(key, &def.kind, raw) {
                Ok(value) => {
                    values.insert(key.clone(), value);
                }
                Err(e) => errors.push(e),
            }
        }
        for def in &self.fields {
            if def.required && !fields.contains_key(&def.key) {
                errors.push(FieldError::Missing {
                    key: def.key.clone(),
                });
            }
        }
        // A rule over a value that is missing or wrong would only repeat that error.
        if errors.is_empty() {
            errors.extend(
                self.rules
                    .iter()
                    .filter_map(|rule| check_rule(rule, &values, now).err()),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Notification {
            format: self.id.clone(),
            version: self.version,
            values,
        })
    }

    /// Validate values received on the wire: as [`FormatDef::validate`], and every typed
    /// value must already be in its canonical text form.
    pub fn validate_received(
        &self,
        fields: &BTreeMap<String, Raw>,
        created_at: Timestamp,
    ) -> Result<Notification, FieldError> {
        let notification = self.validate(fields, created_at)?;
        for (key, raw) in fields {
            if notification.values[key].to_raw() != *raw {
                return Err(invalid(key, "canonical", "the canonical text form"));
            }
        }
        Ok(notification)
    }
}

fn check_rule(
    rule: &Rule,
    values: &BTreeMap<String, Value>,
    now: Timestamp,
) -> Result<(), FieldError> {
    match rule {
        Rule::Before { first, second } => {
            if let (Some(a), Some(b)) = (values.get(first), values.get(second)) {
                if let (Some(a), Some(b)) = (a.end_time(), b.start_time()) {
                    if b <= a {
                        return Err(FieldError::Rule {
                            key: second.clone(),
                            rule: "order",
                            explanation: format!("must be after {first}"),
                        });
                    }
                }
            }
        }
        Rule::LeadTime {
            field,
            min_seconds,
            late_reason,
        } => {
            let Some(start) = values.get(field).and_then(Value::start_time) else {
                return Ok(());
            };
            let lead = start.as_second().saturating_sub(now.as_second());
            if lead < *min_seconds as i64 && !values.contains_key(late_reason) {
                return Err(FieldError::Rule {
                    key: field.clone(),
                    rule: "lead-time",
                    explanation: format!(
                        "must be at least {} after the notification is made; to notify late, give the reason in field {late_reason:?}",
                        canonical_duration(*min_seconds)
                    ),
                });
            }
        }
        Rule::RequiredWhen {
            field,
            when,
            equals,
        } => {
            if let Some(Value::Enum(v)) = values.get(when) {
                if equals.contains(v) && !values.contains_key(field) {
                    return Err(FieldError::Rule {
                        key: field.clone(),
                        rule: "required-when",
                        explanation: format!("is required when {when} is {v}"),
                    });
                }
            }
        }
        Rule::AbsentWhen {
            field,
            when,
            equals,
        } => {
            if let Some(Value::Enum(v)) = values.get(when) {
                if equals.contains(v) && values.contains_key(field) {
                    return Err(FieldError::Rule {
                        key: field.clone(),
                        rule: "absent-when",
                        explanation: format!("must be left out when {when} is {v}"),
                    });
                }
            }
        }
    }
    Ok(())
}
