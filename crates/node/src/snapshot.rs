//! What the core starts from: a [`Snapshot`] read from the node's store, through the
//! `Store` trait's ordinary reads (so SQLite and PostgreSQL load alike).
//!
//! Both streams of every channel are read in pages and kept as the core's index of them
//! ([`StoredEnvelope`]: place, columns, Merkle leaf, signed `prev`), the bytes dropped as each
//! page is read except for our envelopes still in the outbox and the latest charters; held
//! envelopes, checkpoints, witness state and glossary keys per channel. So a start reads
//! the transcript once and holds about 140 bytes per envelope, not the envelopes. Open
//! deadlines are not loaded: the core reads them back from the store itself, nearest due
//! first, as many as it watches (`detente_core::DeadlineQuery`).
//!
//! **Nothing unverified is trusted**. The last envelope of every stream and every held
//! envelope must verify under its sender's key. Below the head, a stream is checked by its
//! hash chain, walking back from the head: each genuine envelope signs its `prev`, the id
//! of the one before, so a row whose bytes do not hash to the id its successor signs is
//! altered; below an altered row the walk starts again from a signature check.
//!
//! An altered row does not stop the node (a hotline must stay up): it is named in
//! [`Loaded::tampered`] (the node raises an alarm for each), keeps its place in the stream
//! under the id its successor signs (or its stored id, where nothing signs it), and the
//! core is told not to trust it (its [`StoredEnvelope::prev`] is `None`). Display and export verify
//! every envelope they read, so its altered text is never shown as genuine. A held
//! envelope that fails is left out (the peer sends it again). Only a row that cannot be
//! placed at all is a [`LoadError::Tampered`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use detente_core::{
    Snapshot, StoredEnvelope, StoredStream, CHARTERS_KEPT, CHECKPOINTS_KEPT_MAX, GLOSSARY_TERMS_MAX,
};
use detente_proto::envelope::{message_id, parse_unverified_from, KIND_CHARTER, KIND_RECEIPT};
use detente_proto::merkle::leaf_hash;
use detente_proto::{ChannelId, PartyKey, Precedence, VerifiedEnvelope};
use detente_store::{
    CheckpointPage, Direction, MessageRow, OutboxRow, Placement, Store, StoreError,
};

/// Envelopes read per query when loading a stream.
pub const STREAM_PAGE_ENVELOPES: u32 = 4096;
/// Outbox rows read per query.
pub const OUTBOX_PAGE_ROWS: u32 = 4096;

/// What [`load`] read: the snapshot, and the stored rows that fail verification.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub tampered: Vec<TamperedRow>,
}

/// A stored envelope that fails verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TamperedRow {
    pub peer: String,
    /// "ours" or "theirs".
    pub direction: &'static str,
    pub seq: u64,
    pub what: String,
}

/// Why no snapshot could be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored envelope fails verification and cannot even be placed in its stream (its
    /// row is gone). Remedy: restore the database from a backup.
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
) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded {
        snapshot: Snapshot::default(),
        tampered: Vec::new(),
    };
    for peer in peers {
        load_peer(store, me, peer, &mut loaded).await?;
    }
    Ok(loaded)
}

async fn load_peer(
    store: &impl Store,
    me: &PartyKey,
    peer: &PeerKey,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let channel = ChannelId::for_pair(me, &peer.key);
    let stream = StreamOf {
        store,
        channel,
        peer,
    };
    let outbox = outbox_pending(store, peer).await?;
    let to_send: BTreeSet<u64> = outbox.iter().map(|&(seq, _)| seq).collect();
    let ours = stream.load(me, Direction::Out, &to_send, loaded).await?;
    let theirs = stream
        .load(&peer.key, Direction::In, &BTreeSet::new(), loaded)
        .await?;
    let snapshot = &mut loaded.snapshot;
    let held = store
        .held(
            channel.0,
            *peer.key.as_bytes(),
            detente_proto::stream::HELD_MAX as u32,
        )
        .await?;
    for row in held {
        let at = row.stored_at_ms;
        let held = (Placement::Held, at);
        match checked(peer, (Direction::In, &peer.key), held, &row.bytes, true) {
            Ok(row) => snapshot.held.push(row),
            Err(LoadError::Tampered {
                peer,
                direction,
                seq,
                what,
            }) => loaded.tampered.push(TamperedRow {
                peer,
                direction,
                seq,
                what: format!("a held envelope, left out: {what}"),
            }),
            Err(e) => return Err(e),
        }
    }
    for (seq, precedence) in outbox {
        let is_receipt = seq
            .checked_sub(1)
            .and_then(|i| ours.get(usize::try_from(i).ok()?))
            .is_some_and(|m| m.kind == KIND_RECEIPT);
        snapshot.outbox.push(OutboxRow {
            peer: peer.name.clone(),
            seq,
            precedence,
            is_receipt,
        });
    }
    for (sender, envelopes) in [(me, ours), (&peer.key, theirs)] {
        snapshot.streams.push(StoredStream {
            channel: channel.0,
            sender: *sender.as_bytes(),
            envelopes,
        });
    }
    // The newest checkpoints only: what the core keeps; a start costs the same whatever
    // the channel's age (issue 12, item 14).
    let mut newest = store
        .checkpoint_page(
            channel.0,
            CheckpointPage::newest(CHECKPOINTS_KEPT_MAX as u32),
        )
        .await?;
    newest.reverse();
    snapshot.checkpoints.extend(newest);
    snapshot.witness.extend(store.witness(channel.0).await?);
    let glossary = store
        .glossary(&peer.name, GLOSSARY_TERMS_MAX as u32)
        .await?;
    snapshot.glossary.extend(glossary);
    Ok(())
}

/// The channel with one peer, as a stream is loaded from it.
struct StreamOf<'a, S> {
    store: &'a S,
    channel: ChannelId,
    peer: &'a PeerKey,
}

impl<S: Store> StreamOf<'_, S> {
    /// One sender's appended stream, in `seq` order, checked back from its verified head
    /// (see the module documentation), the bytes kept for the seqs in `keep` and for
    /// the latest [`CHARTERS_KEPT`] charters; the rows that fail are added to
    /// `loaded.tampered`.
    async fn load(
        &self,
        sender: &PartyKey,
        direction: Direction,
        keep: &BTreeSet<u64>,
        loaded: &mut Loaded,
    ) -> Result<Vec<StoredEnvelope>, LoadError> {
        let mut list: Vec<StoredEnvelope> = Vec::new();
        // Why a row cannot be vouched for by itself (it does not parse, or names another
        // seq or sender), by position: rare, so a map.
        let mut problems: BTreeMap<usize, &'static str> = BTreeMap::new();
        let mut charters: VecDeque<usize> = VecDeque::new();
        let mut head: Option<Vec<u8>> = None;
        loop {
            let after = list.last().map_or(0, |r| r.seq);
            let page = self
                .store
                .stream_envelopes(
                    self.channel.0,
                    *sender.as_bytes(),
                    after,
                    STREAM_PAGE_ENVELOPES,
                )
                .await?;
            let full = page.len() == STREAM_PAGE_ENVELOPES as usize;
            for (seq, bytes) in page {
                let parsed = parse_unverified_from(&bytes, sender);
                let problem = match &parsed {
                    Err(_) => Some("it does not parse"),
                    Ok(e) if e.seq != seq => Some("its seq is not the row's"),
                    Ok(e) if &e.sender != sender => Some("signed by another key"),
                    Ok(_) => None,
                };
                if let Some(what) = problem {
                    problems.insert(list.len(), what);
                }
                let envelope = parsed.ok();
                let kind = envelope.as_ref().map_or(0, |e| e.body.kind());
                if kind == KIND_CHARTER {
                    charters.push_back(list.len());
                    if charters.len() > CHARTERS_KEPT {
                        let oldest = charters.pop_front().unwrap_or_default();
                        if !keep.contains(&list[oldest].seq) {
                            list[oldest].bytes = None;
                        }
                    }
                }
                let kept = keep.contains(&seq) || kind == KIND_CHARTER;
                list.push(StoredEnvelope {
                    id: message_id(&bytes).0,
                    seq,
                    kind,
                    precedence: envelope.as_ref().map_or(0, |e| e.precedence as u8),
                    leaf: leaf_hash(&bytes),
                    prev: envelope.as_ref().map(|e| e.prev.0),
                    bytes: kept.then(|| bytes.clone()),
                });
                head = Some(bytes);
            }
            if !full {
                break;
            }
        }
        // Rows come back in `seq` order; a store that breaks that is caught by the core's
        // gap check, never trusted.
        // The id the later envelope signs as its `prev` (none: check the signature).
        let mut signed_id: Option<[u8; 32]> = None;
        for i in (0..list.len()).rev() {
            let seq = list[i].seq;
            let problem = match (problems.get(&i), signed_id) {
                (Some(what), _) => Some(*what),
                (None, Some(id)) if id == list[i].id => None,
                (None, Some(_)) => Some("its bytes are not those the next envelope signs"),
                (None, None) => {
                    let bytes = match head.take().filter(|_| i + 1 == list.len()) {
                        Some(bytes) => bytes,
                        None => self.bytes_at(sender, direction, seq).await?,
                    };
                    verify(self.peer, direction, seq, &bytes, sender)
                        .err()
                        .map(|_| "its signature does not verify")
                }
            };
            match problem {
                None => signed_id = list[i].prev,
                Some(what) => {
                    let row = self
                        .altered(sender, direction, seq, signed_id, what, loaded)
                        .await?;
                    list[i] = StoredEnvelope {
                        id: row.id,
                        seq,
                        kind: row.kind,
                        precedence: row.precedence,
                        leaf: list[i].leaf,
                        prev: None,
                        bytes: None,
                    };
                    signed_id = None;
                }
            }
        }
        Ok(list)
    }

    /// The stored bytes of one appended envelope (read again, to verify its signature where
    /// the hash chain from the head breaks).
    async fn bytes_at(
        &self,
        sender: &PartyKey,
        direction: Direction,
        seq: u64,
    ) -> Result<Vec<u8>, LoadError> {
        let row = self
            .store
            .message_at(self.channel.0, *sender.as_bytes(), seq)
            .await?
            .ok_or_else(|| tampered(self.peer, direction, seq, "its row is gone"))?;
        Ok(row.bytes)
    }

    /// An altered row keeps its place: its stored columns, under the id the next envelope
    /// signs when there is one.
    async fn altered(
        &self,
        sender: &PartyKey,
        direction: Direction,
        seq: u64,
        signed_id: Option<[u8; 32]>,
        what: &str,
        loaded: &mut Loaded,
    ) -> Result<MessageRow, LoadError> {
        let mut row = self
            .store
            .message_at(self.channel.0, *sender.as_bytes(), seq)
            .await?
            .ok_or_else(|| tampered(self.peer, direction, seq, what))?;
        if let Some(id) = signed_id {
            row.id = id;
        }
        loaded.tampered.push(TamperedRow {
            peer: self.peer.name.clone(),
            direction: side(direction),
            seq,
            what: what.to_string(),
        });
        Ok(row)
    }
}

/// The undelivered outbox of our stream to `peer`, every precedence: `(seq, precedence)`.
async fn outbox_pending(store: &impl Store, peer: &PeerKey) -> Result<Vec<(u64, u8)>, LoadError> {
    let mut rows = Vec::new();
    for precedence in Precedence::ALL {
        let mut after = 0;
        loop {
            let page = store
                .outbox_pending(&peer.name, precedence as u8, after, OUTBOX_PAGE_ROWS)
                .await?;
            let full = page.len() == OUTBOX_PAGE_ROWS as usize;
            for (seq, _) in page {
                after = seq;
                rows.push((seq, precedence as u8));
            }
            if !full {
                break;
            }
        }
    }
    Ok(rows)
}

/// The row of stored `bytes` of a stream of `sender`'s, with the id recomputed from them;
/// verified when `verify_now`.
fn checked(
    peer: &PeerKey,
    (direction, sender): (Direction, &PartyKey),
    (placement, stored_at_ms): (Placement, i64),
    bytes: &[u8],
    verify_now: bool,
) -> Result<MessageRow, LoadError> {
    let e = parse_unverified_from(bytes, sender)
        .map_err(|e| tampered(peer, direction, 0, &e.to_string()))?;
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
        direction: side(direction),
        seq,
        what: what.to_string(),
    }
}

/// Whose stream, in words.
fn side(direction: Direction) -> &'static str {
    match direction {
        Direction::Out => "ours",
        Direction::In => "theirs",
    }
}
