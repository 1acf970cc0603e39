//! What the core starts from: a [`Snapshot`] read from the node's store, through the
//! `Store` trait's ordinary reads (so SQLite and PostgreSQL load alike).
//!
//! Both streams of every channel are read whole (the core holds them in memory), in pages;
//! held envelopes, the undelivered outbox, checkpoints, witness state and glossary keys per
//! channel; open deadlines from the store's deadline candidates (the newest
//! [`DEADLINE_CANDIDATES_MAX`], as the deadline watch tracks them).
//!
//! **Nothing unverified is trusted**: every row's id is recomputed from its bytes (so the
//! core's hash-link check is over real hashes, not over stored ids), the last envelope of
//! every stream and every held envelope must verify under its sender's key, and a row
//! that fails is a [`LoadError::Tampered`] naming it. Verifying the head suffices for the
//! rest of a stream: each envelope signs its `prev`, the id of the one before.

use detente_core::{Snapshot, GLOSSARY_TERMS_MAX};
use detente_proto::envelope::{message_id, parse_unverified};
use detente_proto::{ChannelId, PartyKey, Precedence, VerifiedEnvelope};
use detente_store::{
    DeliveredRange, Direction, MessageRow, MissRow, OutboxRow, Placement, ReceiptLevel, ReceiptRow,
    Store, StoreError,
};

/// Envelopes read per query when loading a stream.
pub const STREAM_PAGE_ENVELOPES: u32 = 4096;
/// Outbox rows read per query.
pub const OUTBOX_PAGE_ROWS: u32 = 4096;
/// Messages whose deadlines are recovered, at most (the newest; as the deadline watch).
pub const DEADLINE_CANDIDATES_MAX: u32 = crate::deadlines::TRACKED_MAX as u32;

/// Why no snapshot could be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored envelope does not verify, or is not an envelope at all. Remedy: restore the
    /// database from a backup; the node does not run on a record it cannot vouch for.
    #[error("the stored envelope seq {seq} of {peer} ({direction}) is tampered with: {what}")]
    Tampered {
        peer: String,
        direction: &'static str,
        seq: u64,
        what: String,
    },
}

/// One pinned peer, as the loader needs it.
#[derive(Debug, Clone)]
pub struct PeerKey {
    pub name: String,
    pub key: PartyKey,
}

/// Read everything the core recovers from for this node (`me`) and its `peers`.
pub async fn load(
    store: &impl Store,
    me: &PartyKey,
    peers: &[PeerKey],
) -> Result<Snapshot, LoadError> {
    let mut snapshot = Snapshot::default();
    for peer in peers {
        load_peer(store, me, peer, &mut snapshot).await?;
    }
    load_deadlines(store, peers, &mut snapshot).await?;
    Ok(snapshot)
}

async fn load_peer(
    store: &impl Store,
    me: &PartyKey,
    peer: &PeerKey,
    snapshot: &mut Snapshot,
) -> Result<(), LoadError> {
    let channel = ChannelId::for_pair(me, &peer.key);
    let ours = load_stream(store, channel, me, peer, Direction::Out).await?;
    let theirs = load_stream(store, channel, &peer.key, peer, Direction::In).await?;
    let held = store
        .held(
            channel.0,
            *peer.key.as_bytes(),
            detente_proto::stream::HELD_MAX as u32,
        )
        .await?;
    for mut row in held {
        row = checked(
            peer,
            Direction::In,
            Placement::Held,
            row.stored_at_ms,
            &row.bytes,
            true,
        )?;
        snapshot.messages.push(row);
    }
    load_outbox(store, peer, &ours, snapshot).await?;
    snapshot.messages.extend(ours);
    snapshot.messages.extend(theirs);
    snapshot
        .checkpoints
        .extend(store.checkpoints(channel.0).await?);
    snapshot.witness.extend(store.witness(channel.0).await?);
    let glossary = store
        .glossary(&peer.name, GLOSSARY_TERMS_MAX as u32)
        .await?;
    snapshot.glossary.extend(glossary);
    Ok(())
}

/// One sender's appended stream, in `seq` order; its last envelope verified.
async fn load_stream(
    store: &impl Store,
    channel: ChannelId,
    sender: &PartyKey,
    peer: &PeerKey,
    direction: Direction,
) -> Result<Vec<MessageRow>, LoadError> {
    let mut rows: Vec<MessageRow> = Vec::new();
    loop {
        let after = rows.last().map_or(0, |r| r.seq);
        let page = store
            .stream_envelopes(channel.0, *sender.as_bytes(), after, STREAM_PAGE_ENVELOPES)
            .await?;
        let full = page.len() == STREAM_PAGE_ENVELOPES as usize;
        for (seq, bytes) in page {
            // Rows come back in `seq` order; a store that breaks that is caught by the
            // core's gap check, never trusted.
            let row = checked(peer, direction, Placement::Appended, 0, &bytes, false)?;
            if row.seq != seq {
                return Err(tampered(peer, direction, seq, "its seq is not the row's"));
            }
            rows.push(row);
        }
        if !full {
            break;
        }
    }
    if let Some(last) = rows.last() {
        verify(peer, direction, last.seq, &last.bytes, sender)?;
    }
    Ok(rows)
}

/// The undelivered outbox of our stream to `peer`, every precedence.
async fn load_outbox(
    store: &impl Store,
    peer: &PeerKey,
    ours: &[MessageRow],
    snapshot: &mut Snapshot,
) -> Result<(), LoadError> {
    for precedence in Precedence::ALL {
        let mut after = 0;
        loop {
            let page = store
                .outbox_pending(&peer.name, precedence as u8, after, OUTBOX_PAGE_ROWS)
                .await?;
            let full = page.len() == OUTBOX_PAGE_ROWS as usize;
            for (seq, _) in page {
                after = seq;
                let is_receipt = seq
                    .checked_sub(1)
                    .and_then(|i| ours.get(usize::try_from(i).ok()?))
                    .is_some_and(|m| m.kind == 1);
                snapshot.outbox.push(OutboxRow {
                    peer: peer.name.clone(),
                    seq,
                    precedence: precedence as u8,
                    is_receipt,
                });
            }
            if !full {
                break;
            }
        }
    }
    Ok(())
}

/// Open deadlines: the store's candidates carry the times the deadlines count from and the
/// levels already missed; a text or notification that is no candidate was answered
/// (ACKNOWLEDGED or DECLINED), which is all the core needs to know of its receipts.
async fn load_deadlines(
    store: &impl Store,
    peers: &[PeerKey],
    snapshot: &mut Snapshot,
) -> Result<(), LoadError> {
    let candidates = store.deadline_candidates(DEADLINE_CANDIDATES_MAX).await?;
    let mut open = std::collections::HashMap::new();
    for c in candidates {
        if peers.iter().any(|p| p.name == c.peer) {
            open.insert(c.id, c);
        }
    }
    for row in snapshot
        .messages
        .iter_mut()
        .filter(|m| m.kind == 0 || m.kind == 4)
    {
        let Some(c) = open.get(&row.id) else {
            snapshot.receipts.push(ReceiptRow {
                of: row.id,
                level: ReceiptLevel::Acknowledged,
                at_ms: 0,
                receipt_id: [0; 32],
                note: None,
            });
            continue;
        };
        row.stored_at_ms = c.stored_at_ms;
        for &level in &c.missed {
            snapshot.misses.push(MissRow {
                id: c.id,
                level,
                due_at_ms: 0,
                missed_at_ms: 0,
            });
        }
        if row.direction == Direction::Out
            && store.receipt_times(row.id).await?.delivered_ms.is_some()
        {
            snapshot.delivered.push(DeliveredRange {
                peer: row.peer.clone(),
                from: row.seq,
                to: row.seq,
                at_ms: 0,
            });
        }
    }
    Ok(())
}

/// The row of stored `bytes`, with the id recomputed from them; verified when `verify`.
fn checked(
    peer: &PeerKey,
    direction: Direction,
    placement: Placement,
    stored_at_ms: i64,
    bytes: &[u8],
    verify_now: bool,
) -> Result<MessageRow, LoadError> {
    let e = parse_unverified(bytes).map_err(|e| tampered(peer, direction, 0, &e.to_string()))?;
    if verify_now {
        verify(peer, direction, e.seq, bytes, &e.sender)?;
    }
    let expected = match direction {
        Direction::Out => None,
        Direction::In => Some(peer.key),
    };
    if expected.is_some_and(|k| k != e.sender) {
        return Err(tampered(peer, direction, e.seq, "signed by another key"));
    }
    Ok(MessageRow {
        id: message_id(bytes).0,
        channel: e.channel.0,
        sender: *e.sender.as_bytes(),
        seq: e.seq,
        peer: peer.name.clone(),
        direction,
        precedence: e.precedence as u8,
        topic: e.topic.clone(),
        kind: e.body.kind(),
        created_at_ms: e.created_at_ms as i64,
        stored_at_ms: if stored_at_ms == 0 {
            e.created_at_ms as i64
        } else {
            stored_at_ms
        },
        in_reply_to: e.in_reply_to.map(|id| id.0),
        placement,
        bytes: bytes.to_vec(),
    })
}

fn verify(
    peer: &PeerKey,
    direction: Direction,
    seq: u64,
    bytes: &[u8],
    sender: &PartyKey,
) -> Result<(), LoadError> {
    VerifiedEnvelope::decode(bytes, Some(sender))
        .map(|_| ())
        .map_err(|e| tampered(peer, direction, seq, &e.to_string()))
}

fn tampered(peer: &PeerKey, direction: Direction, seq: u64, what: &str) -> LoadError {
    LoadError::Tampered {
        peer: peer.name.clone(),
        direction: match direction {
            Direction::Out => "ours",
            Direction::In => "theirs",
        },
        seq,
        what: what.to_string(),
    }
}
