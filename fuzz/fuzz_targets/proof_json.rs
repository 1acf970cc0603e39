//! Proof documents given to `detente verify` (JSON from `detente proof`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(proof) = detente_node::transcript::proof_from_json(&value) {
        let _ = proof.verify();
    }
});
