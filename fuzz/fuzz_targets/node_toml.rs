//! `node.toml` as an operator (or a careless edit) leaves it: parse, then validate.
#![no_main]
use detente_node::config::NodeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<NodeConfig>(text) {
        if config.validate().is_ok() {
            let _ = config.link_config();
            let _ = config.checkpoint_policy();
        }
    }
});
