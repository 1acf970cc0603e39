//! Link frames: what two nodes say to each other inside a TLS connection.
//!
//! Each frame is a 4-byte big-endian length, then a 1-byte type, then the body. The length
//! counts type and body and is capped at [`FRAME_BYTES_MAX`], so a reader allocates at most
//! that much for one frame; a larger length is refused before anything is read.

use crate::envelope::limits::ENVELOPE_BYTES_MAX;

/// Version of the link protocol, exchanged in `Hello`. Version 2 (2026-12) added the
/// sender's wall clock to `Hello`, `Ping` and `Pong`, so that each side can show the skew
/// between the two clocks (issue 12, item 11).
pub const LINK_VERSION: u16 = 2;

/// Largest frame (type and body), in bytes.
pub const FRAME_BYTES_MAX: usize = ENVELOPE_BYTES_MAX + 64;

/// Longest reason text in a `Refuse` frame.
pub const REASON_BYTES_MAX: usize = 512;

/// A link frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame each way. `hwm` is the highest `seq` of the other side's stream that this
    /// side holds durably with nothing missing below it (0: none); the other side resends
    /// everything above it that it has no DELIVERED receipt for. `wall_ms` is the sender's
    /// wall clock when it wrote the frame (milliseconds since the Unix epoch; 0 in a
    /// version-1 Hello, which is read only to name its version in the refusal).
    Hello {
        version: u16,
        hwm: u64,
        wall_ms: u64,
    },
    /// One signed envelope, exactly as signed.
    Envelope(Vec<u8>),
    /// Transport acknowledgment: this side now holds the other's stream up to `hwm`,
    /// contiguously and durably, and has processed `received` envelope frames in this
    /// session. Unsigned; it lets the sender drop receipts (which are never themselves
    /// receipted) from its outbox, and bounds what is in flight (flow control).
    Ack {
        hwm: u64,
        received: u64,
    },
    /// Heartbeat; the other side answers `Pong` with the same nonce at once. Each carries
    /// its sender's wall clock (milliseconds since the Unix epoch): a Pong's, read against
    /// the round trip, tells how far the two clocks are apart.
    Ping {
        nonce: u64,
        wall_ms: u64,
    },
    Pong {
        nonce: u64,
        wall_ms: u64,
    },
    /// This side refused the envelope `seq` (0: an envelope too malformed to have a
    /// trustworthy `seq`, or — with code `Protocol` — the session, which is then closed) and
    /// says why; it stored nothing of it.
    Refuse {
        seq: u64,
        code: RefuseCode,
        reason: String,
    },
    /// An encoded `SignedCheckpoint` (docs/transcript-format.md). A side that has not signed
    /// it yet checks it against its own record, signs, and sends it back with both
    /// signatures; one it has already signed is only stored, so the exchange ends there.
    /// Checkpoints are frames, not envelopes, so exchanging one does not itself grow a stream.
    Checkpoint(Vec<u8>),
    /// This side's charter terms ([`crate::charter::Terms`], canonical CBOR), sent after
    /// `Hello`. Unsigned: the terms bind nobody until each side signs the charter they make
    /// in a charter envelope of its own stream.
    Terms(Vec<u8>),
    /// Ask for the appended envelopes of one stream of this channel (`sender`: either
    /// member's key) with `seq > after`, at most `limit` of them: how a node whose store
    /// was restored from an older backup gets back what the other side holds, its own
    /// envelopes among them. The other side answers with [`Frame::Fetched`] frames in `seq`
    /// order, then one [`Frame::FetchEnd`]. Read-only for the side that answers; the side
    /// that asked verifies every envelope itself (it trusts nothing it is given).
    Fetch {
        sender: [u8; 32],
        after: u64,
        limit: u16,
    },
    /// One envelope answering a `Fetch`, exactly as stored (and as signed).
    Fetched(Vec<u8>),
    /// The end of the answer to a `Fetch` of `sender`'s stream: the envelopes up to `upto`
    /// were sent (`upto` equals the `Fetch`'s `after` when none were), and this side holds
    /// that stream appended up to `head`. Fewer than `limit` may have been sent, within
    /// [`FETCH_ANSWER_BYTES_MAX`]; the asking side fetches again after `upto` until it
    /// reaches `head`.
    FetchEnd {
        sender: [u8; 32],
        upto: u64,
        head: u64,
    },
}

/// Envelopes one `Fetch` asks for at most (a larger `limit` is answered as this).
pub const FETCH_ENVELOPES_MAX: u16 = 256;

/// `Fetch`es of one session a side keeps waiting while it answers another (answered one
/// after the other, in order); a `Fetch` beyond them is refused busy.
pub const FETCHES_QUEUED_MAX: usize = 4;

/// Envelope bytes one answer to a `Fetch` carries at most (the envelope that crosses the
/// bound is the last one sent).
pub const FETCH_ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// Why a side refused, as a number the other side can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseCode {
    /// The envelope did not decode or verify.
    Invalid = 1,
    /// `seq` is too far ahead of what this side holds.
    TooFarAhead = 2,
    /// Too many envelopes already wait ahead of a gap; send in `seq` order for now.
    HeldFull = 3,
    /// `prev` does not match the previous envelope.
    PrevMismatch = 4,
    /// A different envelope already holds this `seq` (equivocation).
    Conflict = 5,
    /// The protocol was not followed (bad frame, wrong version).
    Protocol = 6,
    /// This side is overloaded; retry later.
    Busy = 7,
    Other = 255,
}

impl RefuseCode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Invalid,
            2 => Self::TooFarAhead,
            3 => Self::HeldFull,
            4 => Self::PrevMismatch,
            5 => Self::Conflict,
            6 => Self::Protocol,
            7 => Self::Busy,
            _ => Self::Other,
        }
    }
}

/// A frame that cannot be read. The connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame type {kind} has a body of {len} bytes, which is not valid")]
    BadLength { kind: u8, len: usize },
    #[error("refusal reason is not UTF-8")]
    BadText,
}

const HELLO: u8 = 0;
/// The type byte of an `Envelope` frame (a driver may sort frames by it before decoding).
pub const ENVELOPE: u8 = 1;
const ACK: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const REFUSE: u8 = 5;
/// Types 6 to 15 are left for frames of the transcript work.
const CHECKPOINT: u8 = 6;
const FETCH: u8 = 7;
const FETCHED: u8 = 8;
const FETCH_END: u8 = 9;
const TERMS: u8 = 16;

impl Frame {
    /// Append the frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                version,
                hwm,
                wall_ms,
            } => {
                out.push(HELLO);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&hwm.to_be_bytes());
                out.extend_from_slice(&wall_ms.to_be_bytes());
            }
            Frame::Envelope(bytes) => {
                out.push(ENVELOPE);
                out.extend_from_slice(bytes);
            }
            Frame::Ack { hwm, received } => {
                out.push(ACK);
                out.extend_from_slice(&hwm.to_be_bytes());
                out.extend_from_slice(&received.to_be_bytes());
            }
            Frame::Ping { nonce, wall_ms } => {
                out.push(PING);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&wall_ms.to_be_bytes());
            }
            Frame::Pong { nonce, wall_ms } => {
                out.push(PONG);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&wall_ms.to_be_bytes());
            }
            Frame::Refuse { seq, code, reason } => {
                out.push(REFUSE);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(*code as u8);
                let mut end = reason.len().min(REASON_BYTES_MAX);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
            Frame::Checkpoint(bytes) => {
                out.push(CHECKPOINT);
                out.extend_from_slice(bytes);
            }
            Frame::Terms(bytes) => {
                out.push(TERMS);
                out.extend_from_slice(bytes);
            }
            Frame::Fetch {
                sender,
                after,
                limit,
            } => {
                out.push(FETCH);
                out.extend_from_slice(sender);
                out.extend_from_slice(&after.to_be_bytes());
                out.extend_from_slice(&limit.to_be_bytes());
            }
            Frame::Fetched(bytes) => {
                out.push(FETCHED);
                out.extend_from_slice(bytes);
            }
            Frame::FetchEnd { sender, upto, head } => {
                out.push(FETCH_END);
                out.extend_from_slice(sender);
                out.extend_from_slice(&upto.to_be_bytes());
                out.extend_from_slice(&head.to_be_bytes());
            }
        }
        let len = out.len() - start - 4;
        assert!(len <= FRAME_BYTES_MAX, "frames we write fit the limit");
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    }

    /// Check a length prefix before reading the frame it announces.
    pub fn check_len(len: u32) -> Result<usize, FrameError> {
        let len = len as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge {
                len,
                max: FRAME_BYTES_MAX,
            });
        }
        Ok(len)
    }

    /// Decode one frame from its type byte and body (the length prefix already removed).
    pub fn decode(frame: &[u8]) -> Result<Frame, FrameError> {
        Self::check_len(u32::try_from(frame.len()).unwrap_or(u32::MAX))?;
        let (&kind, body) = frame.split_first().ok_or(FrameError::Empty)?;
        let fixed = |want: usize| {
            if body.len() == want {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    len: body.len(),
                })
            }
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(b)
        };
        match kind {
            HELLO => {
                // 18 bytes since version 2; a version-1 Hello (10 bytes) still decodes, so
                // that the refusal can name the version the peer speaks.
                if body.len() != 18 && body.len() != 10 {
                    return Err(FrameError::BadLength {
                        kind,
                        len: body.len(),
                    });
                }
                Ok(Frame::Hello {
                    version: u16::from_be_bytes([body[0], body[1]]),
                    hwm: u64_at(2),
                    wall_ms: if body.len() == 18 { u64_at(10) } else { 0 },
                })
            }
            ENVELOPE => {
                if body.is_empty() {
                    return Err(FrameError::BadLength { kind, len: 0 });
                }
                Ok(Frame::Envelope(body.to_vec()))
            }
            ACK => fixed(16).map(|()| Frame::Ack {
                hwm: u64_at(0),
                received: u64_at(8),
            }),
            PING => fixed(16).map(|()| Frame::Ping {
                nonce: u64_at(0),
                wall_ms: u64_at(8),
            }),
            PONG => fixed(16).map(|()| Frame::Pong {
                nonce: u64_at(0),
                wall_ms: u64_at(8),
            }),
            REFUSE => {
                if body.len() < 9 || body.len() > 9 + REASON_BYTES_MAX {
                    return Err(FrameError::BadLength {
                        kind,
                        len: body.len(),
                    });
                }
                let reason = std::str::from_utf8(&body[9..]).map_err(|_| FrameError::BadText)?;
                Ok(Frame::Refuse {
                    seq: u64_at(0),
                    code: RefuseCode::from_u8(body[8]),
                    reason: reason.to_string(),
                })
            }
            CHECKPOINT => {
                if body.is_empty() || body.len() > crate::checkpoint::SIGNED_CHECKPOINT_BYTES_MAX {
                    return Err(FrameError::BadLength {
                        kind,
                        len: body.len(),
                    });
                }
                Ok(Frame::Checkpoint(body.to_vec()))
            }
            TERMS => {
                if body.is_empty() || body.len() > crate::charter::limits::ENCODED_BYTES_MAX {
                    return Err(FrameError::BadLength {
                        kind,
                        len: body.len(),
                    });
                }
                Ok(Frame::Terms(body.to_vec()))
            }
            FETCH => fixed(42).map(|()| {
                let mut sender = [0u8; 32];
                sender.copy_from_slice(&body[..32]);
                Frame::Fetch {
                    sender,
                    after: u64_at(32),
                    limit: u16::from_be_bytes([body[40], body[41]]),
                }
            }),
            FETCHED => {
                if body.is_empty() || body.len() > ENVELOPE_BYTES_MAX {
                    return Err(FrameError::BadLength {
                        kind,
                        len: body.len(),
                    });
                }
                Ok(Frame::Fetched(body.to_vec()))
            }
            FETCH_END => fixed(48).map(|()| {
                let mut sender = [0u8; 32];
                sender.copy_from_slice(&body[..32]);
                Frame::FetchEnd {
                    sender,
                    upto: u64_at(32),
                    head: u64_at(40),
                }
            }),
            other => Err(FrameError::UnknownType(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        let len = u32::from_be_bytes(out[..4].try_into().unwrap());
        assert_eq!(Frame::check_len(len).unwrap(), out.len() - 4);
        assert_eq!(Frame::decode(&out[4..]).unwrap(), f);
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Hello {
            version: LINK_VERSION,
            hwm: 42,
            wall_ms: 1_767_225_600_000,
        });
        round_trip(Frame::Envelope(vec![1, 2, 3]));
        round_trip(Frame::Ack {
            hwm: u64::MAX,
            received: 3,
        });
        round_trip(Frame::Ping {
            nonce: 7,
            wall_ms: 1,
        });
        round_trip(Frame::Pong {
            nonce: 7,
            wall_ms: u64::MAX,
        });
        round_trip(Frame::Checkpoint(vec![0x82, 0x40, 0x80]));
        round_trip(Frame::Refuse {
            seq: 3,
            code: RefuseCode::HeldFull,
            reason: "full".into(),
        });
        round_trip(Frame::Terms(vec![0x80]));
        round_trip(Frame::Fetch {
            sender: [7; 32],
            after: u64::MAX - 1,
            limit: FETCH_ENVELOPES_MAX,
        });
        round_trip(Frame::Fetched(vec![0xa1, 0x00]));
        round_trip(Frame::FetchEnd {
            sender: [9; 32],
            upto: 3,
            head: 12,
        });
    }

    #[test]
    fn a_version_one_hello_decodes_so_that_its_version_can_be_named() {
        let mut v1 = vec![HELLO, 0, 1];
        v1.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(
            Frame::decode(&v1),
            Ok(Frame::Hello {
                version: 1,
                hwm: 42,
                wall_ms: 0
            })
        );
        // A version-1 heartbeat (8 bytes) is a protocol error in version 2.
        let mut ping = vec![PING];
        ping.extend_from_slice(&7u64.to_be_bytes());
        assert!(matches!(
            Frame::decode(&ping),
            Err(FrameError::BadLength { kind: PING, len: 8 })
        ));
        let mut hello = vec![HELLO];
        hello.extend_from_slice(&[0; 14]);
        assert!(matches!(
            Frame::decode(&hello),
            Err(FrameError::BadLength {
                kind: HELLO,
                len: 14
            })
        ));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(Frame::check_len(0), Err(FrameError::Empty));
        assert!(matches!(
            Frame::check_len(u32::MAX),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(Frame::decode(&[10]), Err(FrameError::UnknownType(10)));
        assert!(matches!(
            Frame::decode(&[FETCH, 0, 0]),
            Err(FrameError::BadLength {
                kind: FETCH,
                len: 2
            })
        ));
        assert!(matches!(
            Frame::decode(&[FETCHED]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            Frame::decode(&[FETCH_END; 48]),
            Err(FrameError::BadLength { len: 47, .. })
        ));
        assert!(matches!(
            Frame::decode(&[ACK, 1, 2]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            Frame::decode(&[ENVELOPE]),
            Err(FrameError::BadLength { .. })
        ));
        let mut bad = vec![REFUSE];
        bad.extend_from_slice(&[0; 9]);
        bad.push(0xff);
        assert_eq!(Frame::decode(&bad), Err(FrameError::BadText));
    }
}
