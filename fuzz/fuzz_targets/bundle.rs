//! Export bundles given to `detente verify`: the offline verifier must report, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let report = detente_proto::bundle::verify(data);
    if report.ok() {
        assert!(report.problems.is_empty());
    }
    let _ = detente_proto::bundle::Bundle::decode(data);
});
