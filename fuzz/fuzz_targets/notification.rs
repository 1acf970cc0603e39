//! Notification fields: an operator's inputs (`{"format": ID, "fields": [{key, value,
//! translation}]}`) built against the format, and what is built checked as a received
//! notification is (the two must agree).
#![no_main]
use detente_node::notify::{self, FieldInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Some(format) = value.get("format").and_then(|f| f.as_str()) else {
        return;
    };
    let Some(fields) = value.get("fields").cloned() else {
        return;
    };
    let Ok(inputs) = serde_json::from_value::<Vec<FieldInput>>(fields) else {
        return;
    };
    let Ok(def) = notify::format(format, None) else {
        return;
    };
    // A fixed clock (2026-01-01T00:00:00Z): lead-time rules are judged from it.
    let now_ms = 1_767_225_600_000;
    if let Ok(body) = notify::build(def, &inputs, "en", now_ms) {
        notify::check(&body, now_ms).expect("what build accepts, check accepts");
    }
});
