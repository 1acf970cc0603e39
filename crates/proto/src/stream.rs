//! Receiving a sender's stream: where a verified envelope goes.
//!
//! Each sender's stream in a channel is accepted in `seq` order with no gaps and no
//! duplicates. An envelope that overtook lower-precedence traffic (a FLASH behind a backlog)
//! is *held*: durable and shown at once, appended when the gap before it fills. Bounds stop a
//! peer from making us hold unbounded data or from jumping far ahead.

use crate::envelope::{Envelope, MessageId};

/// Most envelopes of one stream held ahead of a gap.
pub const HELD_MAX: u64 = 10_000;

/// Furthest ahead of the next expected `seq` an envelope may be (a FLASH behind a backlog of
/// up to this many queued messages still gets through).
pub const SEQ_AHEAD_MAX: u64 = 1 << 24;

/// The contiguous state of a stream: everything below `next_seq` is appended, and
/// `last_id` is the id of `next_seq - 1` (zeros for an empty stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    pub next_seq: u64,
    pub last_id: MessageId,
}

impl StreamCursor {
    pub const EMPTY: StreamCursor = StreamCursor {
        next_seq: 1,
        last_id: MessageId::ZERO,
    };

    /// The highest `seq` held contiguously (0 for none).
    pub fn hwm(&self) -> u64 {
        self.next_seq - 1
    }

    /// Advance past an appended envelope.
    pub fn advance(&mut self, id: MessageId) {
        self.next_seq += 1;
        self.last_id = id;
    }
}

/// Where a verified envelope goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Next in sequence with the right `prev`: append it.
    Append,
    /// Ahead of a gap and within bounds: hold it (store durably, show, append later).
    Hold,
    /// At or below what we hold: compare with the stored one (same id: a harmless replay;
    /// different id: equivocation).
    Known,
    /// Refused; nothing is stored.
    Refuse(Refusal),
}

/// Why a verified envelope is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("prev does not match the previous envelope of the stream")]
    PrevMismatch,
    #[error("seq {seq} is more than {max} ahead of the next expected ({next})")]
    TooFarAhead { seq: u64, next: u64, max: u64 },
    #[error("{held} envelopes already wait ahead of a gap")]
    HeldFull { held: u64 },
}

/// Decide where `envelope` goes given the stream's cursor and how many are held.
pub fn classify(cursor: &StreamCursor, envelope: &Envelope, held: u64) -> Disposition {
    let seq = envelope.seq;
    if seq < cursor.next_seq {
        return Disposition::Known;
    }
    if seq == cursor.next_seq {
        if envelope.prev != cursor.last_id {
            return Disposition::Refuse(Refusal::PrevMismatch);
        }
        return Disposition::Append;
    }
    if seq - cursor.next_seq > SEQ_AHEAD_MAX {
        return Disposition::Refuse(Refusal::TooFarAhead {
            seq,
            next: cursor.next_seq,
            max: SEQ_AHEAD_MAX,
        });
    }
    if held >= HELD_MAX {
        return Disposition::Refuse(Refusal::HeldFull { held });
    }
    Disposition::Hold
}

/// Merge sorted `seq` numbers into inclusive ranges, as a DELIVERED receipt carries them.
pub fn ranges(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &seq in sorted {
        match out.last_mut() {
            Some((_, to)) if to.checked_add(1) == Some(seq) => *to = seq,
            Some((_, to)) if *to >= seq => {}
            _ => out.push((seq, seq)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Body, ChannelId, Precedence};
    use crate::identity::PartySecret;

    fn env(seq: u64, prev: MessageId) -> Envelope {
        let k = PartySecret::from_seed([1; 32]).public();
        Envelope {
            channel: ChannelId([0; 32]),
            sender: k,
            seq,
            prev,
            created_at_ms: 0,
            precedence: Precedence::Flash,
            topic: "general".into(),
            author: String::new(),
            in_reply_to: None,
            body: Body::Test { nonce: [0; 16] },
        }
    }

    #[test]
    fn classification() {
        let mut c = StreamCursor::EMPTY;
        assert_eq!(
            classify(&c, &env(1, MessageId::ZERO), 0),
            Disposition::Append
        );
        assert_eq!(
            classify(&c, &env(1, MessageId([1; 32])), 0),
            Disposition::Refuse(Refusal::PrevMismatch)
        );
        c.advance(MessageId([5; 32]));
        assert_eq!(
            classify(&c, &env(1, MessageId::ZERO), 0),
            Disposition::Known
        );
        assert_eq!(
            classify(&c, &env(9, MessageId([3; 32])), 0),
            Disposition::Hold
        );
        assert!(matches!(
            classify(&c, &env(9, MessageId([3; 32])), HELD_MAX),
            Disposition::Refuse(Refusal::HeldFull { .. })
        ));
        assert!(matches!(
            classify(&c, &env(3 + SEQ_AHEAD_MAX, MessageId([3; 32])), 0),
            Disposition::Refuse(Refusal::TooFarAhead { .. })
        ));
    }

    #[test]
    fn range_merging() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 7), (9, 10)]);
        assert_eq!(ranges(&[]), vec![]);
        assert_eq!(ranges(&[4, 4, 5]), vec![(4, 5)]);
    }
}
