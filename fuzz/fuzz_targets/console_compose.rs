//! The console's compose form as a browser posts it (`application/x-www-form-urlencoded`):
//! decoded as axum's `Form` decodes it, the times picked in a zone turned into UTC, the
//! areas and points drawn on the offline map, and the notification built as a send builds it.
#![no_main]
use detente_node::console::pages::ComposeForm;
use libfuzzer_sys::fuzz_target;

/// Zones the console may run in: a fixed one, two with clock changes, and one that is no zone.
const ZONES: [&str; 4] = ["UTC", "America/New_York", "Asia/Shanghai", "Not/AZone"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        return;
    };
    let form = ComposeForm::posted(pairs, ZONES[usize::from(pick) % ZONES.len()]);
    let (format, fields) = form.format_and_fields();
    let Some(def) = detente_formats::builtin().latest(format) else {
        return;
    };
    for lang in ["en", "zh-CN"] {
        let shapes = detente_node::console::map::shapes(&def.id, lang, |k| fields.get(k).cloned());
        let _ = detente_node::console::map::svg(&shapes, "map", "compose-map");
    }
    let inputs: Vec<detente_node::notify::FieldInput> = fields
        .iter()
        .map(|(key, value)| detente_node::notify::FieldInput {
            key: key.clone(),
            value: value.clone(),
            translation: None,
        })
        .collect();
    let _ = detente_node::notify::build(def, &inputs, "en", 1_767_225_600_000);
});
