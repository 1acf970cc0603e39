//! Checkpoints from a peer: bodies and signed (co-signed) checkpoints.
#![no_main]
use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::decode(data) {
        assert_eq!(
            c.encode(),
            data,
            "a decoded checkpoint re-encodes to its bytes"
        );
    }
    if let Ok(s) = SignedCheckpoint::decode(data) {
        let _ = SignedCheckpoint::decode(&s.encode()).expect("encoded checkpoint decodes");
    }
});
