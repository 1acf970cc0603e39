//! Structured notifications at the node: building one from an operator's fields (validated
//! before anything is stored), checking one received from a peer (before anything is
//! stored), and showing one in a reader's language.
//!
//! The rules live in `detente-formats`; this module converts between its types and the
//! envelope's `NotificationBody`.

use std::collections::BTreeMap;

use detente_formats::{FieldError, FormatDef, GlossaryEntry, Notification, Raw, Reader};
use detente_proto::{FieldValue, NotificationBody, TextBody};
use serde::Deserialize;
use serde_json::{json, Value};

/// One field as an operator gives it. `translation` set means "this is a courtesy
/// translation of free-text field `key` into that language".
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct FieldInput {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub translation: Option<String>,
}

/// Why a notification cannot be made or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The format is not in this node's catalogue.
    #[error("format {0:?} is not held by this node")]
    UnknownFormat(String),
    /// A field broke its type, a constraint or a rule.
    #[error("invalid notification: {0}")]
    Field(#[from] FieldError),
    /// Several fields broke their types, constraints or rules: every one of them, in the
    /// order the format's validation met them (never empty).
    #[error("invalid notification: {}", join(.0))]
    Fields(Vec<FieldError>),
    /// Two values for one key, or a translation of a field that is not free text.
    #[error("invalid notification: field {key:?}: {problem}")]
    Input { key: String, problem: String },
}

fn millis_to_timestamp(ms: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The format `id` (at `version`, or its latest version).
pub fn format(id: &str, version: Option<u32>) -> Result<&'static FormatDef, NotifyError> {
    let catalogue = detente_formats::builtin();
    match version {
        Some(v) => catalogue.get(id, v),
        None => catalogue.latest(id),
    }
    .ok_or_else(|| NotifyError::UnknownFormat(id.to_string()))
}

/// Validate an operator's fields against `def` (lead times measured from `now_ms`) and
/// make the envelope body. Free-text fields are in `lang`.
pub fn build(
    def: &FormatDef,
    inputs: &[FieldInput],
    lang: &str,
    now_ms: u64,
) -> Result<NotificationBody, NotifyError> {
    let mut raw: BTreeMap<String, Raw> = BTreeMap::new();
    let is_text = |key: &str| {
        matches!(
            def.field(key).map(|f| &f.kind),
            Some(detente_formats::FieldType::Text { .. })
        )
    };
    let input_error = |key: &str, problem: &str| NotifyError::Input {
        key: key.to_string(),
        problem: problem.to_string(),
    };
    for input in inputs.iter().filter(|i| i.translation.is_none()) {
        let value = if is_text(&input.key) {
            Raw::Text {
                lang: lang.to_string(),
                text: input.value.clone(),
                translations: Vec::new(),
            }
        } else {
            Raw::Typed(input.value.clone())
        };
        if raw.insert(input.key.clone(), value).is_some() {
            return Err(input_error(&input.key, "given more than once"));
        }
    }
    for input in inputs {
        let Some(language) = &input.translation else {
            continue;
        };
        match raw.get_mut(&input.key) {
            Some(Raw::Text { translations, .. }) => {
                if translations.iter().any(|(l, _)| l == language) {
                    return Err(input_error(&input.key, "two translations in one language"));
                }
                translations.push((language.clone(), input.value.clone()));
                translations.sort();
            }
            _ => {
                return Err(input_error(
                    &input.key,
                    "a courtesy translation needs the free-text field itself too",
                ))
            }
        }
    }
    let notification = def
        .validate_all(&raw, millis_to_timestamp(now_ms))
        .map_err(|mut errors| match errors.len() {
            1 => NotifyError::Field(errors.remove(0)),
            _ => NotifyError::Fields(errors),
        })?;
    Ok(to_body(&notification))
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One invalid field as the operator reads it: the field's key and label, the rule, and
/// what is wrong in the operator's language (the console's words for the same error).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// The field's key (`*` for the notification as a whole).
    pub field: String,
    /// The field's label in the operator's language.
    pub label: String,
    /// `required`, `unknown`, `limit`, the type's rule (`integer`, `time`, …) or the
    /// cross-field rule (`order`, `lead-time`, …).
    pub rule: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Every problem of a refused notification, in `lang`, and the lines to show: a heading
/// naming how many fields are wrong, then one line per field.
pub fn problems(
    def: &FormatDef,
    error: &NotifyError,
    lang: &str,
    texts: &crate::i18n::Texts,
) -> Option<(String, Vec<Problem>)> {
    let errors: &[FieldError] = match error {
        NotifyError::Field(e) => std::slice::from_ref(e),
        NotifyError::Fields(errors) => errors,
        _ => return None,
    };
    let described = detente_formats::describe(def, lang);
    let field = |key: &str| described.fields.iter().find(|f| f.key == key);
    let problems: Vec<Problem> = errors
        .iter()
        .map(|e| {
            let key = e.key().unwrap_or("*").to_string();
            let (rule, message) = match e {
                FieldError::Missing { .. } => (
                    "required".to_string(),
                    texts.text(lang, "error-field-required"),
                ),
                FieldError::Invalid { rule, .. } => {
                    let accepts = field(&key).map_or_else(String::new, |f| f.accepts.clone());
                    let args = [("accepts", accepts)];
                    (
                        rule.to_string(),
                        texts.text_with(lang, "error-field-invalid", &args),
                    )
                }
                FieldError::Limit { .. } => {
                    ("limit".to_string(), texts.text(lang, "error-field-limit"))
                }
                FieldError::Rule { rule, .. } => {
                    let args = [("rule", texts.text(lang, &format!("rule-{rule}")))];
                    (
                        rule.to_string(),
                        texts.text_with(lang, "error-field-rule", &args),
                    )
                }
                _ => (
                    "unknown".to_string(),
                    texts.text(lang, "error-field-unknown"),
                ),
            };
            let label = field(&key).map_or_else(|| key.clone(), |f| f.label.clone());
            Problem {
                field: key,
                label,
                rule,
                message,
            }
        })
        .collect();
    let count = [("count", problems.len().to_string())];
    let mut text = texts.text_with(lang, "error-fields-invalid", &count);
    for p in &problems {
        // The key and rule ids stay as written in `detente formats show`, for scripts.
        text.push_str(&format!(
            "\n  {} [{}: {}] {}",
            p.label, p.field, p.rule, p.message
        ));
    }
    Some((text, problems))
}

/// The envelope body of a validated notification.
pub fn to_body(n: &Notification) -> NotificationBody {
    let fields = n
        .to_raw()
        .into_iter()
        .map(|(key, raw)| {
            let value = match raw {
                Raw::Typed(text) => FieldValue::Typed(text),
                Raw::Text {
                    lang,
                    text,
                    translations,
                } => FieldValue::Text(TextBody {
                    language: lang,
                    text,
                    translations,
                }),
            };
            (key, value)
        })
        .collect();
    NotificationBody {
        format: n.format.clone(),
        version: n.version,
        fields,
    }
}

/// Check a notification as received (or as stored): the format must be held, every value
/// canonical and valid, the rules kept with lead times measured from `created_at_ms`.
pub fn check(
    body: &NotificationBody,
    created_at_ms: u64,
) -> Result<(&'static FormatDef, Notification), NotifyError> {
    detente_core::check_notification(body, created_at_ms).map_err(|e| match e {
        detente_core::NotificationError::UnknownFormat(id) => NotifyError::UnknownFormat(id),
        detente_core::NotificationError::Field(f) => NotifyError::Field(f),
        other => NotifyError::Input {
            key: body.format.clone(),
            problem: other.to_string(),
        },
    })
}

/// Terms in one glossary listing (and used in one rendering), at most.
pub const GLOSSARY_TERMS_MAX: u32 = detente_core::GLOSSARY_TERMS_MAX as u32;

/// The glossary of the channel with `peer`, as rendering uses it.
pub async fn glossary(
    shared: &crate::Shared,
    peer: &str,
) -> Result<Vec<GlossaryEntry>, detente_store::StoreError> {
    use detente_store::Store;
    let rows = shared.store.glossary(peer, GLOSSARY_TERMS_MAX).await?;
    Ok(rows
        .into_iter()
        .map(|r| GlossaryEntry {
            lang_a: r.lang_a,
            term_a: r.term_a,
            lang_b: r.lang_b,
            term_b: r.term_b,
        })
        .collect())
}

/// The formats this node holds, as its charter terms offer them: the built-in catalogue.
pub fn held_formats() -> Vec<detente_proto::FormatRef> {
    detente_formats::builtin_held()
        .into_iter()
        .map(|h| detente_proto::FormatRef {
            id: h.id,
            version: h.version,
            digest: h.digest,
        })
        .collect()
}

/// Refuse a notification in a format the channel with `peer` has not agreed on: the
/// charter both sides signed must list this format with this definition's digest.
pub fn check_peer_holds(shared: &crate::Shared, peer: &str, def: &FormatDef) -> Result<(), String> {
    let Some(charter) = shared.charter(peer) else {
        return Err(format!(
            "no charter is agreed with {peer:?} yet, so no notification format is: formats are agreed when the nodes first meet"
        ));
    };
    let agreed = charter
        .formats
        .iter()
        .any(|f| f.id == def.id && f.version == def.version && f.digest == def.digest);
    if agreed {
        Ok(())
    } else {
        Err(format!(
            "format {} v{} is not held by {peer:?}: the channel's charter does not list it with this definition (digest {})",
            def.id,
            def.version,
            &def.digest_hex()[..16]
        ))
    }
}

/// The fields as JSON: typed values as their text, free text as
/// `{"language", "text", "translations"}`.
pub fn fields_json(body: &NotificationBody) -> Value {
    let mut map = serde_json::Map::new();
    for (key, value) in &body.fields {
        let v = match value {
            FieldValue::Typed(text) => Value::String(text.clone()),
            FieldValue::Text(t) => json!({
                "language": t.language,
                "text": t.text,
                "translations": t.translations,
            }),
        };
        map.insert(key.clone(), v);
    }
    Value::Object(map)
}

/// The notification as `lang`/`tz` reads it, as text. A stored notification that no
/// longer checks (a format since removed) is shown by its raw fields, saying so.
pub fn render(
    body: &NotificationBody,
    created_at_ms: u64,
    lang: &str,
    tz: &str,
    glossary: &[GlossaryEntry],
) -> String {
    match check(body, created_at_ms) {
        Ok((def, n)) => n.render(def, Reader { lang, tz }, glossary).text(),
        Err(e) => format!(
            "{} v{} (not shown: {e}): {}",
            body.format,
            body.version,
            fields_json(body)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(key: &str, value: &str) -> FieldInput {
        FieldInput {
            key: key.into(),
            value: value.into(),
            translation: None,
        }
    }

    #[test]
    fn build_then_check_round_trips() {
        let def = format("launch", None).unwrap();
        let mut inputs = vec![
            input("window_start", "2026-12-01T18:00:00+08:00"),
            input("window_end", "2026-12-01T14:00:00Z"),
            input("launch_area", "circle:40.50,-100.2,25"),
            input("impact_area", "circle:10,170,50"),
            input("count", "2"),
            input("category", "icbm"),
            input("remarks", "Scheduled test."),
        ];
        inputs.push(FieldInput {
            key: "remarks".into(),
            value: "例行试验。".into(),
            translation: Some("zh-CN".into()),
        });
        let now = 1_764_374_400_000; // 2025-11-29
        let body = build(def, &inputs, "en", now).unwrap();
        assert_eq!(
            body.fields[6].1,
            FieldValue::Typed("2026-12-01T10:00:00Z".into())
        );
        let (_, n) = check(&body, now).unwrap();
        assert_eq!(n.values.len(), 7);
        let shown = render(&body, now, "zh-CN", "Asia/Shanghai", &[]);
        assert!(shown.contains("礼节性译文（中文）：例行试验。"), "{shown}");

        inputs.push(input("count", "3"));
        assert!(matches!(
            build(def, &inputs, "en", now),
            Err(NotifyError::Input { .. })
        ));
    }
}
