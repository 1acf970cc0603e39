//! A received notification is checked against this node's catalogue of formats before
//! anything of it is stored: the format (id and version) must be held, every value
//! valid and in its canonical text form, the format's rules kept, lead times measured from
//! the envelope's `created_at`. Otherwise the envelope is refused like a bad signature.
//! The node's own sends are checked by the same function before they are signed.

use std::collections::BTreeMap;

use detente_formats::{FieldError, FormatDef, Notification, Raw};
use detente_proto::{FieldValue, NotificationBody};

/// Why a notification is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// The format is not in this node's catalogue (at this version).
    #[error("format {0:?} is not held by this node")]
    UnknownFormat(String),
    /// A field broke its type, a constraint or a rule.
    #[error("invalid notification: {0}")]
    Field(#[from] FieldError),
}

/// Check `body` as received (or as stored), created at `created_at_ms` by its sender.
pub fn check_notification(
    body: &NotificationBody,
    created_at_ms: u64,
) -> Result<(&'static FormatDef, Notification), NotificationError> {
    let def = detente_formats::builtin()
        .get(&body.format, body.version)
        .ok_or_else(|| NotificationError::UnknownFormat(body.format.clone()))?;
    let created = jiff::Timestamp::from_millisecond(created_at_ms as i64)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let notification = def.validate_received(&raw_fields(body), created)?;
    Ok((def, notification))
}

/// The fields as the format's validation reads them.
fn raw_fields(body: &NotificationBody) -> BTreeMap<String, Raw> {
    body.fields
        .iter()
        .map(|(key, value)| {
            let raw = match value {
                FieldValue::Typed(text) => Raw::Typed(text.clone()),
                FieldValue::Text(t) => Raw::Text {
                    lang: t.language.clone(),
                    text: t.text.clone(),
                    translations: t.translations.clone(),
                },
            };
            (key.clone(), raw)
        })
        .collect()
}
