//! The API's JSON bodies: a send (`POST /api/v1/messages`), and its structured fields built
//! as the API builds them.
#![no_main]
use detente_node::service::SendBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<SendBody>(data) else {
        return;
    };
    if let Some(format) = &body.format {
        if let Ok(def) = detente_node::notify::format(format, body.format_version) {
            let lang = body.lang.as_deref().unwrap_or("en");
            let _ = detente_node::notify::build(def, &body.fields, lang, 1_767_225_600_000);
        }
    }
    if let Some(text) = &body.text {
        let _ = detente_proto::Precedence::parse(body.precedence.as_deref().unwrap_or("routine"));
        let _ = text.len();
    }
});
