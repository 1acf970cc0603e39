//! Link frame properties: random frames encode with a correct length prefix and decode back;
//! any frame body that decodes re-encodes to the same bytes (unknown refusal codes aside,
//! which read as `Other`); a stream of frames cut at random points reads back frame by frame;
//! random byte strings into `Frame::decode` are typed errors or frames, never panics; and
//! `check_len` accepts exactly 1..=FRAME_BYTES_MAX.
//!
//! `Ack` values are only ever obtained by decoding and matched with `Frame::Ack { hwm, .. }`,
//! so these tests do not depend on the fields `Ack` carries besides `hwm`.

use detente_proto::frame::{FRAME_BYTES_MAX, REASON_BYTES_MAX};
use detente_proto::{Frame, FrameError, RefuseCode};
use proptest::collection::vec;
use proptest::prelude::*;

// Frame type bytes (docs/wire-format.md §9).
const HELLO: u8 = 0;
const ENVELOPE: u8 = 1;
const ACK: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const REFUSE: u8 = 5;

const CODES: [RefuseCode; 8] = [
    RefuseCode::Invalid,
    RefuseCode::TooFarAhead,
    RefuseCode::HeldFull,
    RefuseCode::PrevMismatch,
    RefuseCode::Conflict,
    RefuseCode::Protocol,
    RefuseCode::Busy,
    RefuseCode::Other,
];

fn encode(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out);
    out
}

/// The one body length `decode` accepts for `Ack`.
fn ack_body_len() -> usize {
    let ok: Vec<usize> = (0..64)
        .filter(|n| {
            let mut b = vec![ACK];
            b.resize(n + 1, 0);
            Frame::decode(&b).is_ok()
        })
        .collect();
    assert_eq!(ok.len(), 1, "Ack has one fixed length: {ok:?}");
    ok[0]
}

fn arb_reason() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect::<String>()),
        1 => vec(any::<char>(), 100..300).prop_map(|c| c.into_iter().collect::<String>()),
    ]
}

/// Frames that can be built directly (every kind but `Ack`).
fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(version, hwm, wall_ms)| {
            Frame::Hello {
                version,
                hwm,
                wall_ms,
            }
        }),
        prop_oneof![
            vec(any::<u8>(), 1..600),
            vec(any::<u8>(), 1..64).prop_map(|b| b.repeat(300)),
        ]
        .prop_map(Frame::Envelope),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, wall_ms)| Frame::Ping { nonce, wall_ms }),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, wall_ms)| Frame::Pong { nonce, wall_ms }),
        (
            any::<u64>(),
            prop::sample::select(CODES.to_vec()),
            arb_reason()
        )
            .prop_map(|(seq, code, reason)| Frame::Refuse { seq, code, reason }),
        vec(any::<u8>(), 1..600).prop_map(Frame::Terms),
    ]
}

/// What a `Refuse` reason reads back as: at most REASON_BYTES_MAX bytes, cut at a char
/// boundary.
fn truncated(reason: &str) -> String {
    let mut end = reason.len().min(REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// A frame body (type byte first) that is often valid: a known type with a length near the
/// valid ones, or anything.
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![0usize..24, 0usize..600];
    let kind = prop_oneof![0u8..8, Just(16u8)];
    (kind, len).prop_flat_map(|(kind, len)| {
        vec(any::<u8>(), len).prop_map(move |mut body| {
            body.insert(0, kind);
            body
        })
    })
}

/// Reads frames from the front of `buf` as a connection reader would: length prefix,
/// `check_len`, then the frame.
fn read_frames(mut buf: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    while buf.len() >= 4 {
        let len = Frame::check_len(u32::from_be_bytes(buf[..4].try_into().unwrap()))?;
        if buf.len() < 4 + len {
            break;
        }
        frames.push(Frame::decode(&buf[4..4 + len])?);
        buf = &buf[4 + len..];
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(f in arb_frame(), prefix in vec(any::<u8>(), 0..8)) {
        // Encoding appends after whatever the buffer holds.
        let mut out = prefix.clone();
        f.encode(&mut out);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        let wire = &out[prefix.len()..];
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap());
        prop_assert_eq!(Frame::check_len(len), Ok(wire.len() - 4));
        let decoded = Frame::decode(&wire[4..]).unwrap();
        let expected = match f {
            Frame::Refuse { seq, code, reason } => Frame::Refuse {
                seq,
                code,
                reason: truncated(&reason),
            },
            other => other,
        };
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn decoded_frames_re_encode_to_the_same_bytes(body in arb_body()) {
        match Frame::decode(&body) {
            Ok(frame) if body[0] == HELLO && body.len() == 11 => {
                // A version-1 Hello (no wall clock) decodes to wall_ms 0 and re-encodes in
                // version 2's form: the same fields, then eight zero bytes.
                let wire = encode(&frame);
                prop_assert_eq!(&wire[4..15], &body[..]);
                prop_assert_eq!(&wire[15..], &[0u8; 8][..]);
            }
            Ok(frame) => {
                let wire = encode(&frame);
                prop_assert_eq!(
                    u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
                    body.len()
                );
                let unknown_code = matches!(frame, Frame::Refuse { code: RefuseCode::Other, .. })
                    && body[9] != 255;
                if unknown_code {
                    prop_assert_eq!(wire[4 + 9], 255);
                    prop_assert_eq!(&wire[4..4 + 9], &body[..9]);
                    prop_assert_eq!(&wire[4 + 10..], &body[10..]);
                } else {
                    prop_assert_eq!(&wire[4..], &body[..]);
                }
                prop_assert_eq!(Frame::decode(&wire[4..]), Ok(frame));
            }
            Err(e) => {
                // The error names the actual problem.
                let kind = body.first().copied();
                match e {
                    FrameError::Empty => prop_assert!(body.is_empty()),
                    FrameError::UnknownType(t) => {
                        prop_assert_eq!(Some(t), kind);
                        prop_assert!(t > REFUSE);
                    }
                    FrameError::BadLength { kind: k, len } => {
                        prop_assert_eq!(Some(k), kind);
                        prop_assert_eq!(len, body.len() - 1);
                    }
                    FrameError::BadText => prop_assert_eq!(kind, Some(REFUSE)),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }

    #[test]
    fn valid_lengths_per_type(kind in 0u8..=REFUSE, len in 0usize..700, fill in any::<u8>()) {
        let mut body = vec![kind];
        body.resize(len + 1, fill);
        let r = Frame::decode(&body);
        let ok_len = match kind {
            HELLO => len == 18 || len == 10,
            ENVELOPE => len >= 1,
            ACK => len == ack_body_len(),
            PING | PONG => len == 16,
            // Refuse: seq, code, then a reason of at most REASON_BYTES_MAX bytes.
            _ => (9..=9 + REASON_BYTES_MAX).contains(&len),
        };
        if kind == REFUSE && ok_len {
            // The reason is valid UTF-8 iff the fill byte repeated is.
            let reason_ok = std::str::from_utf8(&body[10..]).is_ok();
            prop_assert_eq!(r.is_ok(), reason_ok);
        } else {
            prop_assert_eq!(r.is_ok(), ok_len, "type {} with {} bytes: {:?}", kind, len, r);
        }
        if let Ok(Frame::Ack { hwm, .. }) = r {
            prop_assert_eq!(hwm, u64::from_be_bytes([fill; 8]));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..2000)) {
        let r = Frame::decode(&bytes);
        if bytes.is_empty() {
            prop_assert_eq!(r, Err(FrameError::Empty));
        }
        // Read as a stream of frames too: typed errors or frames, no panic.
        let _ = read_frames(&bytes);
    }

    #[test]
    fn a_stream_of_frames_reads_back(
        frames in vec(arb_frame(), 1..12),
        acks in vec(any::<u64>(), 0..3),
    ) {
        let ack_len = ack_body_len();
        let mut all: Vec<Frame> = frames
            .into_iter()
            .map(|f| match f {
                Frame::Refuse { seq, code, reason } => Frame::Refuse { seq, code, reason: truncated(&reason) },
                other => other,
            })
            .collect();
        for hwm in acks {
            let mut body = vec![ACK];
            body.extend_from_slice(&hwm.to_be_bytes());
            body.resize(ack_len + 1, 0);
            all.push(Frame::decode(&body).unwrap());
        }
        let mut wire = Vec::new();
        for f in &all {
            f.encode(&mut wire);
        }
        prop_assert_eq!(read_frames(&wire), Ok(all.clone()));
        // Any prefix reads as a prefix of the frames.
        for cut in [wire.len() / 3, wire.len() / 2, wire.len() - 1] {
            let part = read_frames(&wire[..cut]).unwrap();
            prop_assert!(part.len() < all.len());
            prop_assert_eq!(&part[..], &all[..part.len()]);
        }
    }

    #[test]
    fn check_len_bounds(len in prop_oneof![
        Just(0u32),
        1u32..=FRAME_BYTES_MAX as u32,
        FRAME_BYTES_MAX as u32 - 2..FRAME_BYTES_MAX as u32 + 2,
        FRAME_BYTES_MAX as u32 + 1..=u32::MAX,
    ]) {
        let expected = match len as usize {
            0 => Err(FrameError::Empty),
            n if n <= FRAME_BYTES_MAX => Ok(n),
            n => Err(FrameError::TooLarge { len: n, max: FRAME_BYTES_MAX }),
        };
        prop_assert_eq!(Frame::check_len(len), expected);
    }
}

#[test]
fn largest_frames() {
    // The largest envelope frame fits exactly; one byte more is refused on reading.
    let f = Frame::Envelope(vec![0xa5; FRAME_BYTES_MAX - 1]);
    let wire = encode(&f);
    assert_eq!(wire.len(), 4 + FRAME_BYTES_MAX);
    assert_eq!(Frame::decode(&wire[4..]), Ok(f));
    let mut over = vec![ENVELOPE];
    over.resize(FRAME_BYTES_MAX + 1, 0);
    assert_eq!(
        Frame::decode(&over),
        Err(FrameError::TooLarge {
            len: FRAME_BYTES_MAX + 1,
            max: FRAME_BYTES_MAX
        })
    );
    // A frame holds the largest envelope.
    const { assert!(FRAME_BYTES_MAX > detente_proto::envelope::limits::ENVELOPE_BYTES_MAX) };
}

#[test]
fn refuse_reasons_cut_at_a_char_boundary() {
    // 511 ASCII bytes then a 4-byte char: the cut falls inside it and backs off to 511.
    let reason = format!("{}\u{1F6A8}tail", "x".repeat(REASON_BYTES_MAX - 1));
    let f = Frame::Refuse {
        seq: 9,
        code: RefuseCode::Conflict,
        reason,
    };
    let wire = encode(&f);
    match Frame::decode(&wire[4..]).unwrap() {
        Frame::Refuse { seq, code, reason } => {
            assert_eq!((seq, code), (9, RefuseCode::Conflict));
            assert_eq!(reason, "x".repeat(REASON_BYTES_MAX - 1));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_known_refuse_code_round_trips_and_unknown_ones_read_as_other() {
    for code in CODES {
        let f = Frame::Refuse {
            seq: 1,
            code,
            reason: String::new(),
        };
        assert_eq!(Frame::decode(&encode(&f)[4..]), Ok(f));
    }
    for byte in [0u8, 8, 100, 254] {
        let mut body = vec![REFUSE];
        body.extend_from_slice(&[0; 8]);
        body.push(byte);
        assert!(matches!(
            Frame::decode(&body),
            Ok(Frame::Refuse {
                code: RefuseCode::Other,
                ..
            })
        ));
    }
}
