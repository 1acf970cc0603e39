//! The state of one channel (this node and one peer): both streams, the outbox, held
//! envelopes, the link, the session, the charter; and writing our own envelopes.

use std::collections::BTreeMap;
use std::time::Instant;

use detente_proto::charter::{Member, Terms};
use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::merkle::{self, Frontier, Hash, MemoryTree};
use detente_proto::{
    Body, ChannelId, Charter, Envelope, LinkConfig, LinkSupervisor, MessageId, PartyKey,
    Precedence, Receipt, ReceiptLevel, ReceiptTarget, StreamCursor, VerifiedEnvelope,
};
use detente_store_types::{
    Direction, MessageRow, OutboxRow, Placement, ReceiptRow, StreamRow, TreeNodeRow, WriteBatch,
};

use crate::deadlines::Group;
use crate::session::Session;
use crate::{Answer, CommandError, Core, Event, Need, PeerConfig};
use detente_proto::deadline::Side;

/// One sender's stream as this node holds it (appended envelopes only).
#[derive(Debug, Clone, Default)]
pub(crate) struct Stream {
    pub cursor: StreamCursorDefault,
    pub tree: MemoryTree,
    pub frontier: FrontierDefault,
    /// Envelope bytes by `seq`, kept only while they may be sent again: for our own stream
    /// (`keeps_bytes`), until the peer confirms it holds them; never for the peer's stream,
    /// whose envelopes are known by their leaves. So memory follows the outbox, not the
    /// transcript.
    pub bytes: BTreeMap<u64, Vec<u8>>,
    pub keeps_bytes: bool,
}

/// `StreamCursor` with an empty default.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamCursorDefault(pub StreamCursor);

impl Default for StreamCursorDefault {
    fn default() -> Self {
        Self(StreamCursor::EMPTY)
    }
}

impl std::ops::Deref for StreamCursorDefault {
    type Target = StreamCursor;
    fn deref(&self) -> &StreamCursor {
        &self.0
    }
}

/// `Frontier` with an empty default.
#[derive(Debug, Clone)]
pub(crate) struct FrontierDefault(pub Frontier);

impl Default for FrontierDefault {
    fn default() -> Self {
        Self(Frontier::EMPTY)
    }
}

impl Stream {
    /// Append an envelope; stage the subtrees it completes.
    pub fn append(
        &mut self,
        batch: &mut WriteBatch,
        channel: ChannelId,
        sender: &PartyKey,
        id: MessageId,
        bytes: Vec<u8>,
    ) {
        let leaf = merkle::leaf_hash(&bytes);
        self.append_leaf(batch, channel, sender, id, leaf, Some(bytes));
    }

    /// Append an envelope known by its Merkle leaf (its bytes, when given, are kept as
    /// `append` keeps them).
    pub fn append_leaf(
        &mut self,
        batch: &mut WriteBatch,
        channel: ChannelId,
        sender: &PartyKey,
        id: MessageId,
        leaf: Hash,
        bytes: Option<Vec<u8>>,
    ) {
        self.tree.push(leaf);
        let mut created = Vec::with_capacity(2);
        self.frontier.0.push(leaf, &mut created);
        batch
            .tree_nodes
            .extend(created.into_iter().map(|(level, index, hash)| TreeNodeRow {
                channel: channel.0,
                sender: *sender.as_bytes(),
                level,
                index,
                hash,
            }));
        self.cursor.0.advance(id);
        if let Some(bytes) = bytes.filter(|_| self.keeps_bytes) {
            self.bytes.insert(self.tree.size(), bytes);
        }
    }

    /// Let go of the bytes up to `seq` (the peer holds them).
    pub fn forget_through(&mut self, seq: u64) {
        self.bytes = self.bytes.split_off(&(seq.saturating_add(1)));
    }

    /// The Merkle leaf of envelope `seq` (the hash of its bytes).
    pub fn leaf_at(&self, seq: u64) -> Option<Hash> {
        self.tree.node(0, seq.checked_sub(1)?)
    }

    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The root of the first `size` envelopes.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.tree.root_at(size).ok()
    }

    pub fn bytes_at(&self, seq: u64) -> Option<&[u8]> {
        self.bytes.get(&seq).map(Vec::as_slice)
    }
}

/// An envelope held ahead of a gap.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub id: MessageId,
    pub prev: MessageId,
    pub bytes: Vec<u8>,
}

/// One of our envelopes the peer has not confirmed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutEntry {
    pub precedence: Precedence,
    pub is_receipt: bool,
}

/// What we know of a message by id: its `seq` and body kind.
pub(crate) type Index = BTreeMap<MessageId, (u64, u8, Precedence)>;

pub(crate) struct Peer {
    pub name: String,
    pub key: PartyKey,
    pub channel: ChannelId,
    pub out: Stream,
    pub inb: Stream,
    /// Our envelopes up to this `seq` are durable (and may be sent).
    pub out_durable: u64,
    /// The peer's stream as far as it is durable here (what `Hello` announces).
    pub inb_durable: StreamCursor,
    /// Why our stored record of this channel cannot be vouched for (a row that fails
    /// verification, found at recovery): then no checkpoint is signed over it, and a
    /// peer's checkpoint that disagrees with it is no evidence against the peer.
    pub damaged: Option<String>,
    pub held: BTreeMap<u64, Held>,
    pub outbox: BTreeMap<u64, OutEntry>,
    /// The peer holds our stream up to here (its `Ack`s and `Hello`).
    pub confirmed: u64,
    pub out_index: Index,
    pub in_index: Index,
    /// Our FLASH texts and notifications the peer has not yet said DELIVERED for, by seq
    /// (what a DELIVERED range meets, found without a walk over every message).
    pub flash_undelivered: BTreeMap<u64, MessageId>,
    /// The largest tree of each stream (by sender key) this node signed in a checkpoint.
    pub witness: BTreeMap<[u8; 32], (u64, Hash)>,
    pub checkpoints: Vec<SignedCheckpoint>,
    pub link: LinkSupervisor,
    /// A dial is outstanding; given up (as failed) at this instant if unanswered.
    pub dialing: Option<Instant>,
    /// This node has the smaller key: the sessions it dials win a crossing.
    pub dials: bool,
    pub session: Option<Session>,
    /// Staged in the current batch.
    pub touched: bool,
    /// Non-receipt envelopes stored in the current batch: they get one DELIVERED receipt.
    pub delivered_pending: Vec<u64>,
    pub receipt_precedence: Precedence,
    pub peer_terms: Option<Terms>,
    pub our_charter: Option<[u8; 32]>,
    pub their_charter: Option<[u8; 32]>,
    pub agreed: Option<Charter>,
    /// The terms below our floors of the charter the peer's latest terms make (empty:
    /// none); reported by [`Event::CharterRefused`] when it changes.
    pub refused: Vec<detente_proto::BelowFloor>,
    /// Envelopes appended since our last checkpoint signature.
    pub unsigned: u64,
    /// Why nothing more is sent to this peer (it claimed more of our stream than we hold).
    pub sending_stopped: Option<String>,
    /// The peer's claim to hold more of our stream than we wrote was checked (once per run).
    pub claim_judged: bool,
    /// Link tests (built on the first tick, rebuilt when the channel's terms change).
    pub tests: Option<crate::linktest::Tests>,
}

impl Peer {
    pub fn new(config: &PeerConfig, me: &PartyKey, link: LinkConfig, now: Instant) -> Peer {
        Peer {
            name: config.name.clone(),
            key: config.key,
            channel: ChannelId::for_pair(me, &config.key),
            out: Stream {
                keeps_bytes: true,
                ..Stream::default()
            },
            inb: Stream::default(),
            out_durable: 0,
            inb_durable: StreamCursor::EMPTY,
            damaged: None,
            held: BTreeMap::new(),
            outbox: BTreeMap::new(),
            confirmed: 0,
            out_index: BTreeMap::new(),
            in_index: BTreeMap::new(),
            flash_undelivered: BTreeMap::new(),
            witness: BTreeMap::new(),
            checkpoints: Vec::new(),
            link: LinkSupervisor::new(link, config.addresses, now),
            dialing: None,
            dials: me.as_bytes() < config.key.as_bytes(),
            session: None,
            touched: false,
            delivered_pending: Vec::new(),
            receipt_precedence: Precedence::Routine,
            peer_terms: None,
            our_charter: None,
            their_charter: None,
            agreed: None,
            refused: Vec::new(),
            unsigned: 0,
            sending_stopped: None,
            claim_judged: false,
            tests: None,
        }
    }

    /// The final cursor of both streams (one row per stream).
    pub fn stage_streams(&self, batch: &mut WriteBatch, me: &PartyKey) {
        for (sender, c) in [(me, &self.out.cursor), (&self.key, &self.inb.cursor)] {
            batch.streams.push(StreamRow {
                channel: self.channel.0,
                sender: *sender.as_bytes(),
                next_seq: c.next_seq,
                last_id: c.last_id.0,
            });
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = self.link.poll_timeout();
        if let Some(give_up) = self.dialing.filter(|_| !self.link.is_connected()) {
            return Some(give_up);
        }
        link
    }

    /// The deadlines in force: the agreed charter's, else our own terms'.
    pub fn deadlines<'a>(
        &'a self,
        own: &'a detente_proto::Deadlines,
    ) -> &'a detente_proto::Deadlines {
        self.agreed.as_ref().map_or(own, |c| &c.deadlines)
    }
}

/// The stored row of an envelope.
pub(crate) fn row(
    peer: &str,
    v: &VerifiedEnvelope,
    direction: Direction,
    placement: Placement,
    stored_at_ms: i64,
) -> MessageRow {
    let e = v.envelope();
    MessageRow {
        id: v.id().0,
        channel: e.channel.0,
        sender: *e.sender.as_bytes(),
        seq: e.seq,
        peer: peer.to_string(),
        direction,
        precedence: e.precedence as u8,
        topic: e.topic.clone(),
        kind: e.body.kind(),
        created_at_ms: e.created_at_ms as i64,
        stored_at_ms,
        in_reply_to: e.in_reply_to.map(|id| id.0),
        placement,
        bytes: v.bytes().to_vec(),
    }
}

/// The row of a receipt, recorded at `at_ms` on our clock (when we signed ours, when we
/// stored the peer's): deadlines and lateness are judged from our clock, never from a time
/// the peer signs.
pub(crate) fn receipt_row(
    of: MessageId,
    receipt: &Receipt,
    v: &VerifiedEnvelope,
    at_ms: i64,
) -> ReceiptRow {
    ReceiptRow {
        of: of.0,
        level: store_level(receipt.level),
        at_ms,
        receipt_id: v.id().0,
        note: receipt.note.clone(),
    }
}

pub(crate) fn store_level(level: ReceiptLevel) -> detente_store_types::ReceiptLevel {
    match level {
        ReceiptLevel::Delivered => detente_store_types::ReceiptLevel::Delivered,
        ReceiptLevel::Read => detente_store_types::ReceiptLevel::Read,
        ReceiptLevel::Acknowledged => detente_store_types::ReceiptLevel::Acknowledged,
        ReceiptLevel::Declined => detente_store_types::ReceiptLevel::Declined,
    }
}

impl Core {
    /// Number, sign and stage one of our envelopes to peer `index`.
    pub(crate) fn stage_send(
        &mut self,
        index: usize,
        sent: crate::Sent,
        body: Body,
    ) -> Result<(MessageId, u64), CommandError> {
        let p = &self.peers[index];
        let at = (p.out.cursor.next_seq, p.out.cursor.last_id);
        let verified = self.sign_own(index, sent, body, at)?;
        Ok(self.stage_signed(index, verified))
    }

    /// Sign one of our envelopes to peer `index` at `(seq, prev)` without staging it (a
    /// batch signs all its envelopes before it stages any, so a refusal changes nothing).
    pub(crate) fn sign_own(
        &self,
        index: usize,
        sent: crate::Sent,
        body: Body,
        (seq, prev): (u64, MessageId),
    ) -> Result<VerifiedEnvelope, CommandError> {
        let crate::Sent {
            precedence,
            topic,
            author,
            in_reply_to,
        } = sent;
        // Our wall clock as it is, also after a step back: a frozen maximum would date every
        // message the same for hours and put its deadline where our clock is not. A wrong
        // clock shows as skew against the peer's (LinkSupervisor::clock_offset).
        let created_at_ms = u64::try_from(self.wall_ms).unwrap_or(0);
        let p = &self.peers[index];
        let envelope = Envelope {
            channel: p.channel,
            sender: self.me,
            seq,
            prev,
            created_at_ms,
            precedence,
            topic,
            author,
            in_reply_to,
            body,
        };
        VerifiedEnvelope::sign(envelope, &self.secret)
            .map_err(|e| CommandError::Invalid(e.to_string()))
    }

    /// Stage one of our envelopes signed by [`Core::sign_own`] at the next `seq` of peer
    /// `index`'s stream.
    pub(crate) fn stage_signed(
        &mut self,
        index: usize,
        verified: VerifiedEnvelope,
    ) -> (MessageId, u64) {
        let precedence = verified.envelope().precedence;
        let is_receipt = matches!(verified.envelope().body, Body::Receipt(_));
        let (id, seq) = (verified.id(), verified.envelope().seq);
        let kind = verified.envelope().body.kind();
        let p = &mut self.peers[index];
        p.unsigned += 1;
        p.touched = true;
        let batch = &mut self.staging.batch;
        batch.outbox.push(OutboxRow {
            peer: p.name.clone(),
            seq,
            precedence: precedence as u8,
            is_receipt,
        });
        batch.messages.push(row(
            &p.name,
            &verified,
            Direction::Out,
            Placement::Appended,
            self.wall_ms,
        ));
        if let Body::Receipt(r) = &verified.envelope().body {
            if let ReceiptTarget::Message(of) = r.target {
                // Our own answer shows on our side at once.
                let at_ms = verified.envelope().created_at_ms as i64;
                batch.receipts.push(receipt_row(of, r, &verified, at_ms));
            }
        }
        p.outbox.insert(
            seq,
            OutEntry {
                precedence,
                is_receipt,
            },
        );
        p.out_index.insert(id, (seq, kind, precedence));
        if precedence == Precedence::Flash && detente_proto::deadline::bears_deadline(kind) {
            p.flash_undelivered.insert(seq, id);
        }
        let (channel, peer_name) = (p.channel, p.name.clone());
        p.out
            .append(batch, channel, &self.me, id, verified.bytes().to_vec());
        let deadlines = *p.deadlines(&self.deadlines);
        let group = Group::new(&peer_name, Side::Sender, precedence);
        let start_ms = verified.envelope().created_at_ms as i64;
        self.tracker
            .start(group, id, kind, &deadlines, self.now, start_ms, &[]);
        self.release_event(Event::Stored {
            peer: peer_name,
            id,
            seq,
            direction: Direction::Out,
            precedence,
            kind,
        });
        (id, seq)
    }

    pub(crate) fn command_answer(
        &mut self,
        peer: &str,
        of: MessageId,
        level: ReceiptLevel,
        note: Option<String>,
    ) -> Result<Answer, CommandError> {
        let index = self
            .peer_index(peer)
            .ok_or_else(|| CommandError::UnknownPeer(peer.to_string()))?;
        if level == ReceiptLevel::Delivered {
            return Err(CommandError::Invalid(
                "DELIVERED is the node's own act".into(),
            ));
        }
        let Some(&(_, kind, precedence)) = self.peers[index].in_index.get(&of) else {
            return Err(CommandError::Invalid(format!(
                "no message {of} from {peer}"
            )));
        };
        if kind == 1 {
            return Err(CommandError::Invalid("receipts are not answered".into()));
        }
        let body = Body::Receipt(Receipt {
            level,
            target: ReceiptTarget::Message(of),
            note,
        });
        let sent = crate::Sent::system(precedence, &self.author, Some(of));
        let (id, seq) = self.stage_send(index, sent, body)?;
        if matches!(level, ReceiptLevel::Acknowledged | ReceiptLevel::Declined) {
            let group = Group::new(peer, Side::Receiver, precedence);
            let met = self.tracker.meet(&group, of, Need::Answered, self.now);
            self.decided(met, of);
        }
        Ok(Answer::Sent { id, seq })
    }

    pub(crate) fn command_deadlines(
        &mut self,
        deadlines: detente_proto::Deadlines,
    ) -> Result<Answer, CommandError> {
        self.deadlines = deadlines;
        let terms = self.terms();
        terms
            .check()
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        for index in 0..self.peers.len() {
            if let Some(s) = self.peers[index].session.as_ref().map(|s| s.id) {
                self.frame(s, detente_proto::Frame::Terms(terms.encode()));
            }
            self.agree_charter(index);
        }
        Ok(Answer::Done)
    }

    /// Our terms as offered on every session.
    pub(crate) fn terms(&self) -> Terms {
        let p = &self.profile;
        let or = |text: &str, default: &str| {
            if text.is_empty() {
                default.to_string()
            } else {
                text.to_string()
            }
        };
        let addresses = if p.addresses.is_empty() {
            vec![format!("{}.invalid:7443", self.name)]
        } else {
            p.addresses.clone()
        };
        Terms {
            member: Member {
                key: self.me,
                name: self.name.clone(),
                party: or(&p.party, &self.name),
                addresses,
                lang: or(&p.lang, "en"),
                tz: or(&p.tz, "UTC"),
            },
            formats: p.formats.clone(),
            deadlines: self.deadlines,
            link_test_interval: self.link_test_interval,
            counterparts: p.counterparts.clone(),
        }
    }

    /// With the peer's terms known: the charter both make; sign it into our stream when it
    /// differs from the last one we signed and none of its terms is below our floors.
    pub(crate) fn agree_charter(&mut self, index: usize) {
        let Some(theirs) = self.peers[index].peer_terms.clone() else {
            return;
        };
        let ours = self.terms();
        let charter = match Charter::agree(&ours, &theirs) {
            Ok(c) => c,
            Err(e) => {
                let peer = self.peers[index].name.clone();
                self.event(Event::Refused {
                    peer,
                    what: format!("charter terms: {e}"),
                });
                return;
            }
        };
        let below = charter
            .check_floors(&self.floors.capped_by(&ours))
            .err()
            .unwrap_or_default();
        if self.peers[index].refused != below {
            self.peers[index].refused = below.clone();
            let peer = self.peers[index].name.clone();
            self.event(Event::CharterRefused {
                peer,
                below: below.clone(),
            });
        }
        if !below.is_empty() && !self.bug_signs_below_floors() {
            return;
        }
        let digest = charter.digest();
        if self.peers[index].our_charter == Some(digest) {
            return;
        }
        // IMMEDIATE: new terms (deadlines among them) go ahead of routine traffic.
        if self
            .stage_send(
                index,
                crate::Sent::system(Precedence::Immediate, &self.author, None),
                Body::Charter(charter.clone()),
            )
            .is_ok()
        {
            self.peers[index].our_charter = Some(digest);
            self.check_agreed(index, Some(charter));
        }
    }

    /// The planted defect that signs a charter below our floors.
    fn bug_signs_below_floors(&self) -> bool {
        crate::bugs::is(self.bug, crate::PlantedBug::SignBelowFloors)
    }

    /// The charter binds once both streams carry the same digest.
    pub(crate) fn check_agreed(&mut self, index: usize, charter: Option<Charter>) {
        let p = &mut self.peers[index];
        if p.our_charter.is_some() && p.our_charter == p.their_charter {
            if let Some(c) = charter {
                if p.agreed.as_ref().map(|a| a.digest()) != Some(c.digest()) {
                    let event = Event::CharterAgreed {
                        peer: p.name.clone(),
                        digest: c.digest(),
                    };
                    p.agreed = Some(c);
                    self.release_event(event);
                }
            }
        }
    }
}
