//! Charter terms (a peer's `Terms` frame) and charters (in a charter envelope). The first
//! byte chooses which: 0 a charter, anything else terms.
#![no_main]
use detente_proto::{Charter, Terms};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if which == 0 {
        if let Ok(c) = Charter::decode(bytes) {
            assert_eq!(
                c.encode(),
                bytes,
                "a decoded charter re-encodes to its bytes"
            );
        }
    } else if let Ok(t) = Terms::decode(bytes) {
        let _ = Terms::decode(&t.encode()).expect("encoded terms decode");
    }
});
