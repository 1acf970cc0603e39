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
    for lang in ["en", "zh-CN"] {
        let _ = detente_node::console::map::svg(&form.shapes(lang), "map", "compose-map");
    }
    let Some(def) = form.format_def() else {
        return;
    };
    let _ = detente_node::notify::build(def, &form.field_inputs(def), "en", 1_767_225_600_000);
});
