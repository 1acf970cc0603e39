//! Answering a peer's `Fetch` (link frame 7): the appended envelopes of one stream of the
//! channel, read from the store, so that a peer whose store was restored from an older
//! backup gets back what this node holds of both streams, its own envelopes among them.
//!
//! Read-only, bounded ([`FETCH_ENVELOPES_MAX`] envelopes and about
//! [`FETCH_ANSWER_BYTES_MAX`] bytes per answer, one answer at a time per session), and only
//! as far as what is durable here. Which stream may be fetched, and how far, is decided by
//! the engine (the core's `Event::Fetch`, or [`crate::link`]); both send what [`answer`]
//! returns. The asking side trusts none of it: it verifies every envelope against its
//! sender's key and its `prev` chain.

use detente_proto::{Frame, RefuseCode, FETCH_ANSWER_BYTES_MAX, FETCH_ENVELOPES_MAX};
use detente_store::Store;

/// A peer's `Fetch` as the engine decided to answer it.
#[derive(Debug, Clone, Copy)]
pub struct FetchAsked {
    pub channel: [u8; 32],
    pub sender: [u8; 32],
    /// Envelopes with `after < seq <= through` are sent.
    pub after: u64,
    pub through: u64,
    /// How far this node holds the stream (appended, durable), said in `FetchEnd`.
    pub head: u64,
}

impl FetchAsked {
    /// The answer's range for a `Fetch` of `after`/`limit` on a stream held up to `head`.
    pub fn new(channel: [u8; 32], sender: [u8; 32], after: u64, limit: u16, head: u64) -> Self {
        let limit = u64::from(limit.min(FETCH_ENVELOPES_MAX));
        FetchAsked {
            channel,
            sender,
            after,
            through: after.saturating_add(limit).min(head),
            head,
        }
    }
}

/// The frames answering `asked`: one `Fetched` per envelope with `after < seq <= through`,
/// lowest first and contiguous, stopping after the one that crosses
/// [`FETCH_ANSWER_BYTES_MAX`]; then `FetchEnd` with the last `seq` sent. If the store cannot
/// be read, a `Refuse` (busy) instead, and the peer asks again.
pub async fn answer<S: Store>(store: &S, asked: FetchAsked) -> Vec<Frame> {
    let want = asked.through.saturating_sub(asked.after);
    let limit = u32::try_from(want.min(u64::from(FETCH_ENVELOPES_MAX))).unwrap_or(0);
    let rows = if limit == 0 {
        Ok(Vec::new())
    } else {
        store
            .stream_envelopes(asked.channel, asked.sender, asked.after, limit)
            .await
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "a peer's fetch could not be read from the store");
            return vec![Frame::Refuse {
                seq: 0,
                code: RefuseCode::Busy,
                reason: "fetch: the store could not be read; ask again".into(),
            }];
        }
    };
    let mut frames = Vec::with_capacity(rows.len() + 1);
    let mut upto = asked.after;
    let mut bytes = 0usize;
    for (seq, envelope) in rows {
        // Contiguous from `after` only: the asking side appends what it gets in order.
        if seq != upto + 1 || seq > asked.through || bytes >= FETCH_ANSWER_BYTES_MAX {
            break;
        }
        bytes += envelope.len();
        frames.push(Frame::Fetched(envelope));
        upto = seq;
    }
    frames.push(Frame::FetchEnd {
        sender: asked.sender,
        upto,
        head: asked.head,
    });
    frames
}
