//! The writer: the one task that changes the store, by group commit.
//!
//! Commands (send a message, store received envelopes, prune the outbox) queue on a bounded
//! channel. The writer takes everything queued, applies it to one [`WriteBatch`] and commits
//! it in one durable transaction, then answers every command. While a commit is in flight,
//! new commands queue up and form the next batch, so the cost of an fsync is shared by
//! everything that arrived meanwhile.
//!
//! The writer owns the sequence state of every stream (next `seq`, last id, held envelopes),
//! so numbering is gap-free by construction. **Nothing is answered before its commit
//! returned**: a DELIVERED receipt is signed in the same batch as the messages it covers and
//! leaves the node only after that batch is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use detente_proto::stream::{classify, ranges, Disposition};
use detente_proto::{
    Body, ChannelId, Envelope, MessageId, PartyKey, PartySecret, Precedence, Receipt, ReceiptLevel,
    ReceiptTarget, RefuseCode, StreamCursor, VerifiedEnvelope,
};
use detente_store::{
    DeliveredRange, Direction, MessageRow, OutboxRow, Placement, ReceiptRow, Store, StreamRow,
    WriteBatch,
};
use tokio::sync::{mpsc, oneshot};

use crate::events::{Event, Events};
use crate::peers::PeerTable;
use crate::{now_ms, NodeStore};

/// Commands queued for the writer at most (backpressure: senders wait, the API answers busy).
pub const WRITER_QUEUE_MAX: usize = 4096;
/// Commands applied in one group commit at most.
pub const BATCH_COMMANDS_MAX: usize = 1024;

/// A message to write.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub peer: String,
    pub precedence: Precedence,
    pub topic: String,
    pub author: String,
    pub in_reply_to: Option<MessageId>,
    pub body: Body,
}

/// A message written and durable.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: MessageId,
    pub seq: u64,
    pub precedence: Precedence,
}

/// Why a write was refused. Nothing was stored.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("peer {0:?} is not known")]
    UnknownPeer(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the database failed, nothing was stored: {0}")]
    Store(String),
    #[error("the node is shutting down")]
    Stopped,
}

/// What became of a batch of received envelopes.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOutcome {
    /// The contiguous high-water mark of the peer's stream after the commit.
    pub hwm: u64,
    /// Envelopes refused: (seq, code, reason). Nothing of them was stored.
    pub refused: Vec<(u64, RefuseCode, String)>,
    /// Envelopes newly stored (appended or held).
    pub stored: usize,
}

enum Command {
    Send(SendRequest, oneshot::Sender<Result<Sent, WriteError>>),
    Receive {
        peer: String,
        envelopes: Vec<VerifiedEnvelope>,
        reply: oneshot::Sender<Result<ReceiveOutcome, WriteError>>,
    },
    Prune {
        peer: String,
        hwm: u64,
    },
    AddPeer {
        name: String,
        key: PartyKey,
    },
    /// Record deadlines missed (durable when the reply comes).
    Misses(
        Vec<detente_store::MissRow>,
        oneshot::Sender<Result<(), WriteError>>,
    ),
    /// Add (or replace) a glossary term of a channel.
    Glossary(
        detente_store::GlossaryRow,
        oneshot::Sender<Result<(), WriteError>>,
    ),
}

/// A handle to queue commands for the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    pub async fn send(&self, request: SendRequest) -> Result<Sent, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Send(request, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Queue many messages in order (their `seq` follow the order given) and wait for all.
    pub async fn send_many(&self, requests: Vec<SendRequest>) -> Vec<Result<Sent, WriteError>> {
        let mut replies = Vec::with_capacity(requests.len());
        for request in requests {
            let (reply, rx) = oneshot::channel();
            if self.tx.send(Command::Send(request, reply)).await.is_err() {
                break;
            }
            replies.push(rx);
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(rx.await.map_err(|_| WriteError::Stopped).and_then(|r| r));
        }
        out
    }

    pub async fn receive(
        &self,
        peer: &str,
        envelopes: Vec<VerifiedEnvelope>,
    ) -> Result<ReceiveOutcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Receive {
            peer: peer.to_string(),
            envelopes,
            reply,
        };
        self.tx
            .send(command)
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    pub async fn prune(&self, peer: &str, hwm: u64) {
        let _ = self
            .tx
            .send(Command::Prune {
                peer: peer.to_string(),
                hwm,
            })
            .await;
    }

    /// Add a glossary term; durable when this returns.
    pub async fn add_glossary(&self, row: detente_store::GlossaryRow) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Glossary(row, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Record deadlines missed; durable when this returns Ok.
    pub async fn record_misses(&self, rows: Vec<detente_store::MissRow>) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Misses(rows, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    pub async fn add_peer(&self, name: &str, key: PartyKey) {
        let _ = self
            .tx
            .send(Command::AddPeer {
                name: name.to_string(),
                key,
            })
            .await;
    }
}

/// Sequence state of one peer's channel.
#[derive(Debug, Clone)]
struct PeerStreams {
    key: PartyKey,
    channel: ChannelId,
    /// This node's stream to the peer.
    out: StreamCursor,
    out_last_created_ms: u64,
    /// The peer's stream to this node.
    inbound: StreamCursor,
    /// Held envelopes of the peer's stream: seq -> (id, prev).
    held: BTreeMap<u64, (MessageId, MessageId)>,
}

struct Writer {
    store: Arc<NodeStore>,
    secret: Arc<PartySecret>,
    author: String,
    peers: HashMap<String, PeerStreams>,
    table: Arc<PeerTable>,
    events: Events,
}

/// Start the writer task for the given peers (name, key).
pub async fn start(
    store: Arc<NodeStore>,
    secret: Arc<PartySecret>,
    author: String,
    peers: Vec<(String, PartyKey)>,
    table: Arc<PeerTable>,
    events: Events,
) -> Result<WriterHandle, WriteError> {
    let mut writer = Writer {
        store,
        secret,
        author,
        peers: HashMap::new(),
        table,
        events,
    };
    for (name, key) in peers {
        writer.load_peer(&name, key).await?;
    }
    let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
    tokio::spawn(writer.run(rx));
    Ok(WriterHandle { tx })
}

/// Envelopes of this node's streams staged in the current batch, for notifying sessions.
#[derive(Default)]
struct Staged {
    /// Peers whose streams changed in this batch.
    touched: std::collections::HashSet<String>,
    written: Vec<(String, Precedence)>,
    events: Vec<Event>,
}

impl Writer {
    async fn load_peer(&mut self, name: &str, key: PartyKey) -> Result<(), WriteError> {
        let me = self.secret.public();
        let channel = ChannelId::for_pair(&me, &key);
        let streams = self.store.streams().await.map_err(store_err)?;
        let cursor = |sender: &PartyKey| {
            streams
                .iter()
                .find(|s| s.channel == channel.0 && &s.sender == sender.as_bytes())
                .map_or(StreamCursor::EMPTY, |s| StreamCursor {
                    next_seq: s.next_seq,
                    last_id: MessageId(s.last_id),
                })
        };
        let out = cursor(&me);
        let inbound = cursor(&key);
        let mut held = BTreeMap::new();
        let rows = self
            .store
            .held(
                channel.0,
                *key.as_bytes(),
                detente_proto::stream::HELD_MAX as u32,
            )
            .await
            .map_err(store_err)?;
        for row in rows {
            // Held rows were verified before they were stored; the prev is in the bytes.
            if let Ok(v) = VerifiedEnvelope::decode(&row.bytes, Some(&key)) {
                held.insert(row.seq, (v.id(), v.envelope().prev));
            }
        }
        let out_last_created_ms = if out.next_seq > 1 {
            self.store
                .message_at(channel.0, *me.as_bytes(), out.next_seq - 1)
                .await
                .map_err(store_err)?
                .map_or(0, |m| m.created_at_ms.max(0) as u64)
        } else {
            0
        };
        self.peers.insert(
            name.to_string(),
            PeerStreams {
                key,
                channel,
                out,
                out_last_created_ms,
                inbound,
                held,
            },
        );
        Ok(())
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            let mut commands = vec![first];
            while commands.len() < BATCH_COMMANDS_MAX {
                match rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            self.apply(commands).await;
        }
    }

    async fn apply(&mut self, commands: Vec<Command>) {
        let mut batch = WriteBatch::default();
        let mut staged = Staged::default();
        let mut sends = Vec::new();
        let mut receives = Vec::new();
        let mut misses = Vec::new();
        let mut glossary_replies = Vec::new();
        for command in commands {
            match command {
                Command::Send(request, reply) => {
                    let result = self.stage_send(&mut batch, &mut staged, request, false);
                    sends.push((result, reply));
                }
                Command::Receive {
                    peer,
                    envelopes,
                    reply,
                } => {
                    let result = self
                        .stage_receive(&mut batch, &mut staged, &peer, envelopes)
                        .await;
                    receives.push((result, reply));
                }
                Command::Prune { peer, hwm } => batch.prune.push((peer, hwm)),
                Command::Glossary(row, reply) => {
                    batch.glossary.push(row);
                    glossary_replies.push(reply);
                }
                Command::Misses(rows, reply) => {
                    batch.misses.extend(rows);
                    misses.push(reply);
                }
                Command::AddPeer { name, key } => {
                    if let Err(e) = self.load_peer(&name, key).await {
                        tracing::error!(peer = %name, error = %e, "cannot load the new peer's streams");
                    }
                }
            }
        }
        self.stage_streams(&mut batch, &staged.touched);
        let committed = self.store.commit(batch).await;
        if let Err(e) = &committed {
            tracing::error!(error = %e, "commit failed; nothing of this batch was stored or acknowledged");
            let names: Vec<(String, PartyKey)> =
                self.peers.iter().map(|(n, p)| (n.clone(), p.key)).collect();
            self.peers.clear();
            for (name, key) in names {
                if let Err(e) = self.load_peer(&name, key).await {
                    tracing::error!(peer = %name, error = %e, "cannot reload stream state");
                }
            }
        }
        let failure = committed
            .as_ref()
            .err()
            .map(|e| WriteError::Store(e.to_string()));
        for (result, reply) in sends {
            let _ = reply.send(match &failure {
                Some(f) => Err(f.clone()),
                None => result,
            });
        }
        for (result, reply) in receives {
            let _ = reply.send(match &failure {
                Some(f) => Err(f.clone()),
                None => result,
            });
        }
        for reply in glossary_replies {
            let _ = reply.send(failure.clone().map_or(Ok(()), Err));
        }
        for reply in misses {
            let _ = reply.send(match &failure {
                Some(f) => Err(f.clone()),
                None => Ok(()),
            });
        }
        if failure.is_none() {
            for (peer, precedence) in staged.written {
                self.table.notify_written(&peer, precedence);
            }
            for event in staged.events {
                self.events.publish(event);
            }
        }
    }

    /// Record the final cursor of every stream touched (cheap: one row per stream).
    fn stage_streams(&self, batch: &mut WriteBatch, touched: &std::collections::HashSet<String>) {
        let me = self.secret.public();
        for p in touched.iter().filter_map(|name| self.peers.get(name)) {
            batch.streams.push(StreamRow {
                channel: p.channel.0,
                sender: *me.as_bytes(),
                next_seq: p.out.next_seq,
                last_id: p.out.last_id.0,
            });
            batch.streams.push(StreamRow {
                channel: p.channel.0,
                sender: *p.key.as_bytes(),
                next_seq: p.inbound.next_seq,
                last_id: p.inbound.last_id.0,
            });
        }
    }

    /// Number, sign and stage one of this node's envelopes.
    fn stage_send(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        request: SendRequest,
        is_receipt: bool,
    ) -> Result<Sent, WriteError> {
        let me = self.secret.public();
        let p = self
            .peers
            .get_mut(&request.peer)
            .ok_or_else(|| WriteError::UnknownPeer(request.peer.clone()))?;
        // The sender's clock may step back; creation times within a stream never do.
        let created_at_ms = now_ms().max(p.out_last_created_ms);
        let envelope = Envelope {
            channel: p.channel,
            sender: me,
            seq: p.out.next_seq,
            prev: p.out.last_id,
            created_at_ms,
            precedence: request.precedence,
            topic: request.topic,
            author: request.author,
            in_reply_to: request.in_reply_to,
            body: request.body,
        };
        let verified = VerifiedEnvelope::sign(envelope, &self.secret)
            .map_err(|e| WriteError::Invalid(e.to_string()))?;
        let e = verified.envelope();
        let sent = Sent {
            id: verified.id(),
            seq: e.seq,
            precedence: e.precedence,
        };
        p.out.advance(verified.id());
        p.out_last_created_ms = created_at_ms;
        batch.outbox.push(OutboxRow {
            peer: request.peer.clone(),
            seq: e.seq,
            precedence: e.precedence as u8,
            is_receipt,
        });
        batch.messages.push(row(
            &request.peer,
            &verified,
            Direction::Out,
            Placement::Appended,
        ));
        if let Body::Receipt(receipt) = &e.body {
            if let ReceiptTarget::Message(of) = receipt.target {
                // Our own answer to a received message shows on our side at once.
                batch.receipts.push(receipt_row(of, receipt, &verified));
            }
        }
        staged.touched.insert(request.peer.clone());
        staged.written.push((request.peer.clone(), e.precedence));
        staged.events.push(Event::Stored {
            peer: request.peer,
            id: verified.id(),
            seq: e.seq,
            direction: Direction::Out,
            precedence: e.precedence,
            kind: e.body.kind(),
        });
        Ok(sent)
    }

    async fn stage_receive(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        peer: &str,
        envelopes: Vec<VerifiedEnvelope>,
    ) -> Result<ReceiveOutcome, WriteError> {
        let mut outcome = ReceiveOutcome::default();
        let mut delivered_seqs = Vec::new();
        // Envelopes of this batch by seq, not yet in the store: a second, different envelope
        // for the same seq in the same batch is equivocation too.
        let mut in_batch: HashMap<u64, MessageId> = HashMap::new();
        let mut receipt_precedence = Precedence::Routine;
        for verified in envelopes {
            let Some(p) = self.peers.get_mut(peer) else {
                return Err(WriteError::UnknownPeer(peer.to_string()));
            };
            let e = verified.envelope();
            let seq = e.seq;
            if e.channel != p.channel || e.sender != p.key {
                outcome
                    .refused
                    .push((seq, RefuseCode::Invalid, "wrong channel or sender".into()));
                continue;
            }
            let disposition = match p.held.get(&seq) {
                Some((id, _)) if *id == verified.id() => Disposition::Known,
                Some(_) => {
                    conflict(peer, seq);
                    outcome.refused.push((
                        seq,
                        RefuseCode::Conflict,
                        "a different envelope holds this seq".into(),
                    ));
                    continue;
                }
                None => classify(&p.inbound, e, p.held.len() as u64),
            };
            let placement = match disposition {
                Disposition::Append => {
                    p.inbound.advance(verified.id());
                    Placement::Appended
                }
                Disposition::Hold => {
                    p.held.insert(seq, (verified.id(), e.prev));
                    Placement::Held
                }
                Disposition::Known => {
                    if let Some(id) = in_batch.get(&seq) {
                        if *id != verified.id() {
                            conflict(peer, seq);
                            outcome.refused.push((
                                seq,
                                RefuseCode::Conflict,
                                "a different envelope holds this seq".into(),
                            ));
                        }
                    } else if !p.held.contains_key(&seq) {
                        let stored = self
                            .store
                            .message_at(p.channel.0, *p.key.as_bytes(), seq)
                            .await
                            .map_err(store_err)?;
                        if stored.is_some_and(|m| m.id != verified.id().0) {
                            conflict(peer, seq);
                            outcome.refused.push((
                                seq,
                                RefuseCode::Conflict,
                                "a different envelope holds this seq".into(),
                            ));
                        }
                    }
                    continue;
                }
                Disposition::Refuse(refusal) => {
                    let code = match refusal {
                        detente_proto::Refusal::PrevMismatch => RefuseCode::PrevMismatch,
                        detente_proto::Refusal::TooFarAhead { .. } => RefuseCode::TooFarAhead,
                        detente_proto::Refusal::HeldFull { .. } => RefuseCode::HeldFull,
                        _ => RefuseCode::Other,
                    };
                    tracing::warn!(peer, seq, reason = %refusal, "refused an envelope; nothing stored");
                    outcome.refused.push((seq, code, refusal.to_string()));
                    continue;
                }
            };
            in_batch.insert(seq, verified.id());
            self.promote_held(batch, peer);
            staged.touched.insert(peer.to_string());
            outcome.stored += 1;
            match &e.body {
                Body::Receipt(receipt) => {
                    if self.receipt_names_our_message(peer, receipt).await? {
                        stage_receipt_effects(batch, staged, peer, &verified, receipt)
                    } else {
                        // Kept in the transcript (it is what the peer signed), but it
                        // changes nothing: it answers no message of ours.
                        tracing::warn!(
                            peer,
                            seq,
                            "a receipt names no message we sent to this peer; ignored"
                        );
                    }
                }
                _ => {
                    delivered_seqs.push(seq);
                    receipt_precedence = receipt_precedence.min(e.precedence);
                }
            }
            staged.events.push(Event::Stored {
                peer: peer.to_string(),
                id: verified.id(),
                seq,
                direction: Direction::In,
                precedence: e.precedence,
                kind: e.body.kind(),
            });
            batch
                .messages
                .push(row(peer, &verified, Direction::In, placement));
        }
        delivered_seqs.sort_unstable();
        for chunk in
            ranges(&delivered_seqs).chunks(detente_proto::envelope::limits::RECEIPT_RANGES_MAX)
        {
            let request = SendRequest {
                peer: peer.to_string(),
                precedence: receipt_precedence,
                topic: "general".into(),
                author: self.author.clone(),
                in_reply_to: None,
                body: Body::Receipt(Receipt {
                    level: ReceiptLevel::Delivered,
                    target: ReceiptTarget::Ranges(chunk.to_vec()),
                    note: None,
                }),
            };
            self.stage_send(batch, staged, request, true)?;
        }
        outcome.hwm = self.peers.get(peer).map_or(0, |p| p.inbound.hwm());
        Ok(outcome)
    }

    /// Whether a READ / ACKNOWLEDGED / DECLINED receipt from `peer` answers a message this
    /// node sent to that peer. DELIVERED ranges always refer to our stream to the peer.
    async fn receipt_names_our_message(
        &self,
        peer: &str,
        receipt: &Receipt,
    ) -> Result<bool, WriteError> {
        let ReceiptTarget::Message(of) = receipt.target else {
            return Ok(true);
        };
        let row = self.store.message(of.0).await.map_err(store_err)?;
        Ok(row.is_some_and(|m| m.direction == Direction::Out && m.peer == peer && m.kind != 1))
    }

    /// Append held envelopes whose gap has filled, checking each one's `prev`.
    fn promote_held(&mut self, batch: &mut WriteBatch, peer: &str) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        while let Some(&(id, prev)) = p.held.get(&p.inbound.next_seq) {
            if prev != p.inbound.last_id {
                conflict(peer, p.inbound.next_seq);
                break;
            }
            batch
                .promote
                .push((p.channel.0, *p.key.as_bytes(), p.inbound.next_seq));
            p.held.remove(&p.inbound.next_seq);
            p.inbound.advance(id);
        }
    }
}

fn stage_receipt_effects(
    batch: &mut WriteBatch,
    staged: &mut Staged,
    peer: &str,
    verified: &VerifiedEnvelope,
    receipt: &Receipt,
) {
    match &receipt.target {
        ReceiptTarget::Ranges(list) => {
            for &(from, to) in list {
                batch.delivered.push(DeliveredRange {
                    peer: peer.to_string(),
                    from,
                    to,
                    at_ms: verified.envelope().created_at_ms as i64,
                });
                staged.events.push(Event::Delivered {
                    peer: peer.to_string(),
                    from,
                    to,
                });
            }
        }
        ReceiptTarget::Message(of) => {
            batch.receipts.push(receipt_row(*of, receipt, verified));
            staged.events.push(Event::Receipt {
                of: *of,
                level: receipt.level,
            });
        }
    }
}

fn receipt_row(of: MessageId, receipt: &Receipt, verified: &VerifiedEnvelope) -> ReceiptRow {
    ReceiptRow {
        of: of.0,
        level: match receipt.level {
            ReceiptLevel::Delivered => detente_store::ReceiptLevel::Delivered,
            ReceiptLevel::Read => detente_store::ReceiptLevel::Read,
            ReceiptLevel::Acknowledged => detente_store::ReceiptLevel::Acknowledged,
            ReceiptLevel::Declined => detente_store::ReceiptLevel::Declined,
        },
        at_ms: verified.envelope().created_at_ms as i64,
        receipt_id: verified.id().0,
        note: receipt.note.clone(),
    }
}

fn conflict(peer: &str, seq: u64) {
    tracing::error!(
        peer,
        seq,
        "EQUIVOCATION: the peer signed two different envelopes for the same seq; the second is refused"
    );
}

fn row(peer: &str, v: &VerifiedEnvelope, direction: Direction, placement: Placement) -> MessageRow {
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
        stored_at_ms: now_ms() as i64,
        in_reply_to: e.in_reply_to.map(|id| id.0),
        placement,
        bytes: v.bytes().to_vec(),
    }
}

fn store_err(e: detente_store::StoreError) -> WriteError {
    WriteError::Store(e.to_string())
}
