//! Link frames as a peer sends them: type byte and body (`Frame::decode`), and the length
//! prefix (`Frame::check_len`). Whatever decodes must re-encode to the same bytes (a
//! version-1 Hello to version 2's form).
#![no_main]
use detente_proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = Frame::check_len(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
    }
    if let Ok(frame) = Frame::decode(data) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        let mut expected = data.to_vec();
        if let Frame::Refuse { code, .. } = &frame {
            // Refusal codes this version does not know are read as `Other` (255), so that a
            // newer peer's refusal is still shown; everything else round-trips exactly.
            expected[9] = *code as u8;
        }
        if matches!(frame, Frame::Hello { .. }) && data.len() == 11 {
            // A version-1 Hello (no wall clock) is read so that its version can be named in
            // the refusal; it re-encodes in version 2's form, with a zero wall clock.
            expected.extend_from_slice(&[0; 8]);
        }
        assert_eq!(
            &out[4..],
            &expected[..],
            "a decoded frame re-encodes to its bytes"
        );
    }
});
