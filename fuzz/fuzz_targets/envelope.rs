//! Envelopes as a peer sends them: strict decoding with signature verification (single and
//! batch must agree), and the unverified parse the offline tools use.
#![no_main]
use detente_proto::{envelope, PartySecret, VerifiedEnvelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The sender of the committed test vectors' first stream (testdata/envelope-v1.json).
    let key = PartySecret::from_seed([1; 32]).public();
    let single = VerifiedEnvelope::decode(data, Some(&key));
    let batch = VerifiedEnvelope::decode_batch(&[data, data], &key);
    assert_eq!(batch[0], single, "batch and single verification agree");
    let _ = VerifiedEnvelope::decode(data, None);
    if let Ok(e) = envelope::parse_unverified(data) {
        let _ = e.body.kind();
    }
});
