//! Link frames as a peer sends them: type byte and body (`Frame::decode`), and the length
//! prefix (`Frame::check_len`). Whatever decodes must re-encode to the same bytes.
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
        assert_eq!(&out[4..], data, "a decoded frame re-encodes to its bytes");
    }
});
