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
use std::time::Duration;

use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint, StreamHead};
use detente_proto::merkle::{self, Frontier, Hash};

use detente_proto::stream::{classify, ranges, Disposition};
use detente_proto::{
    Body, ChannelId, Envelope, MessageId, PartyKey, PartySecret, Precedence, Receipt, ReceiptLevel,
    ReceiptTarget, RefuseCode, StreamCursor, VerifiedEnvelope,
};
use detente_store::{
    CheckpointRow, DeliveredRange, Direction, EvidenceRow, IdempotencyRow, MessageRow, OutboxRow,
    Placement, ReceiptRow, SentRecord, Store, StreamRow, TreeNodeRow, WriteBatch,
    EVIDENCE_BROKEN_CHAIN, EVIDENCE_CHECKPOINTS, EVIDENCE_ENVELOPES, IDEMPOTENCY_KEY_TTL_MS,
};
use tokio::sync::{mpsc, oneshot};

use crate::events::{Event, Events};
use crate::peers::PeerTable;
use crate::{now_ms, NodeStore};

/// Commands queued for the writer at most (backpressure: senders wait, the API answers busy).
pub const WRITER_QUEUE_MAX: usize = 4096;
/// Commands applied in one group commit at most.
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Our messages one group commit gathers before it stops taking commands (a batch of sends
/// is never split, so a commit holds at most this plus one batch less one).
pub const BATCH_SENDS_MAX: usize = 4096;
/// Messages and signed bytes of one batch of sends: the core's limits, so both engines
/// refuse the same batches.
pub use detente_core::{SEND_BATCH_BYTES_MAX, SEND_BATCH_MESSAGES_MAX};

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
    /// Several messages, all or nothing, in one commit (see [`WriterHandle::send_batch`]).
    SendBatch {
        requests: Vec<SendRequest>,
        idempotency: Option<IdempotencyRow>,
        reply: oneshot::Sender<Result<Vec<Sent>, WriteError>>,
    },
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
    /// Sign a checkpoint of the channel with `peer` as it stands now.
    Checkpoint {
        peer: String,
        reply: oneshot::Sender<Result<SignedCheckpoint, WriteError>>,
    },
    /// A checkpoint the peer sent (its signatures already verified).
    PeerCheckpoint {
        peer: String,
        signed: SignedCheckpoint,
        reply: oneshot::Sender<Result<Option<SignedCheckpoint>, WriteError>>,
    },
}

/// When the writer signs checkpoints on its own (`transcript.*`).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// After this many envelopes appended to the channel's streams (0: never by count).
    pub every: u64,
    /// After this long without any command while something is unsigned (zero: never).
    pub quiet: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every: 1000,
            quiet: Duration::from_secs(5),
        }
    }
}

impl Command {
    /// Our messages the command writes (what bounds a group commit's size).
    fn messages(&self) -> usize {
        match self {
            Command::Send(..) => 1,
            Command::SendBatch { requests, .. } => requests.len(),
            _ => 0,
        }
    }
}

/// A handle to queue commands for the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    /// A handle to no writer: every command answers [`WriteError::Stopped`] (what the
    /// writer-only calls get while the core runs the channels).
    pub fn stopped() -> WriterHandle {
        WriterHandle {
            tx: mpsc::channel(1).0,
        }
    }

    pub async fn send(&self, request: SendRequest) -> Result<Sent, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Send(request, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Write many messages **all or nothing**: every one is signed before any is staged,
    /// all are staged into the same group commit, and the answer comes once that commit is
    /// durable (their `seq` follow the order given). With `idempotency` (its `sent` left
    /// empty), the request's key and this answer are stored in the same transaction.
    pub async fn send_batch(
        &self,
        requests: Vec<SendRequest>,
        idempotency: Option<IdempotencyRow>,
    ) -> Result<Vec<Sent>, WriteError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::SendBatch {
            requests,
            idempotency,
            reply,
        };
        self.tx
            .send(command)
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
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

    /// Sign and store a checkpoint of the channel with `peer` now, and queue it for the peer.
    pub async fn checkpoint(&self, peer: &str) -> Result<SignedCheckpoint, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Checkpoint {
                peer: peer.to_string(),
                reply,
            })
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

    /// Handle a checkpoint the peer sent. `Some` is our co-signed copy to send back.
    pub async fn peer_checkpoint(
        &self,
        peer: &str,
        signed: SignedCheckpoint,
    ) -> Result<Option<SignedCheckpoint>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::PeerCheckpoint {
                peer: peer.to_string(),
                signed,
                reply,
            })
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
    /// The peer's stream to this node.
    inbound: StreamCursor,
    /// Held envelopes of the peer's stream: seq -> (id, prev, Merkle leaf hash).
    held: BTreeMap<u64, (MessageId, MessageId, Hash)>,
    /// Merkle frontiers of both streams (sizes equal the cursors' high-water marks).
    out_tree: Frontier,
    in_tree: Frontier,
    /// Envelopes appended to either stream since this node last signed a checkpoint.
    unsigned: u64,
    /// How much of our stream the peer has told us it holds durably (its high-water mark):
    /// a checkpoint we propose names no more of our stream than this, so the peer can always
    /// check and co-sign it.
    confirmed: u64,
    /// This node proposes the channel's automatic checkpoints (the member with the smaller
    /// key does; the other co-signs). One proposer means proposals never cross.
    proposer: bool,
}

struct Writer {
    store: Arc<NodeStore>,
    secret: Arc<PartySecret>,
    author: String,
    peers: HashMap<String, PeerStreams>,
    table: Arc<PeerTable>,
    events: Events,
    policy: CheckpointPolicy,
    /// Peers whose stream state could not be reloaded after a failed commit: retried before
    /// every batch; until then their commands answer [`WriteError::Store`] (503), never
    /// "peer not known".
    unloaded: HashMap<String, PartyKey>,
}

/// Start the writer task for the given peers (name, key).
pub async fn start(
    store: Arc<NodeStore>,
    secret: Arc<PartySecret>,
    author: String,
    peers: Vec<(String, PartyKey)>,
    table: Arc<PeerTable>,
    events: Events,
    policy: CheckpointPolicy,
) -> Result<WriterHandle, WriteError> {
    let mut writer = Writer {
        store,
        secret,
        author,
        peers: HashMap::new(),
        table,
        events,
        policy,
        unloaded: HashMap::new(),
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
                held.insert(
                    row.seq,
                    (v.id(), v.envelope().prev, merkle::leaf_hash(v.bytes())),
                );
            }
        }
        let out_tree = self.load_tree(channel, &me, out.hwm()).await?;
        let in_tree = self.load_tree(channel, &key, inbound.hwm()).await?;
        // Every envelope of ours below the lowest one still to send was pruned (the peer's
        // hwm reached it) or covered by a DELIVERED receipt: the peer holds that prefix, as
        // it had confirmed before the restart (the witness rule may sign up to it at once).
        let mut lowest_pending: Option<u64> = None;
        for precedence in Precedence::ALL {
            let first = self
                .store
                .outbox_pending(name, precedence as u8, 0, 1)
                .await
                .map_err(store_err)?;
            if let Some(&(seq, _)) = first.first() {
                lowest_pending = Some(lowest_pending.map_or(seq, |l| l.min(seq)));
            }
        }
        let confirmed = lowest_pending
            .map_or(out.hwm(), |seq| seq.saturating_sub(1))
            .min(out.hwm());
        self.peers.insert(
            name.to_string(),
            PeerStreams {
                key,
                channel,
                out,
                inbound,
                held,
                out_tree,
                in_tree,
                unsigned: 0,
                confirmed,
                proposer: me.as_bytes() < key.as_bytes(),
            },
        );
        Ok(())
    }

    /// The Merkle frontier of a stream of `size` appended envelopes, from the stored complete
    /// subtrees. A stream written before trees were kept (schema 1) is hashed once here and
    /// its subtrees stored.
    async fn load_tree(
        &self,
        channel: ChannelId,
        sender: &PartyKey,
        size: u64,
    ) -> Result<Frontier, WriteError> {
        let positions = Frontier::positions(size);
        let nodes = self
            .store
            .tree_nodes(channel.0, *sender.as_bytes(), positions)
            .await
            .map_err(store_err)?;
        if let Some(nodes) = nodes.into_iter().collect::<Option<Vec<_>>>() {
            if let Some(f) = Frontier::from_parts(size, nodes) {
                return Ok(f);
            }
        }
        tracing::info!(stream = %sender.fingerprint(), size, "building the Merkle tree of a stream stored before trees were kept");
        let mut tree = Frontier::default();
        let mut created = Vec::new();
        let mut after = 0;
        while tree.size() < size {
            let page = self
                .store
                .stream_envelopes(channel.0, *sender.as_bytes(), after, 1024)
                .await
                .map_err(store_err)?;
            let Some(&(last, _)) = page.last() else { break };
            for (_, bytes) in &page {
                tree.push(merkle::leaf_hash(bytes), &mut created);
            }
            after = last;
        }
        if tree.size() != size {
            return Err(WriteError::Store(format!(
                "stream {} has {} appended envelopes, its state says {size}",
                sender.fingerprint(),
                tree.size()
            )));
        }
        let mut rows: Vec<TreeNodeRow> = Vec::new();
        for chunk in created.chunks(4096) {
            let positions = chunk.iter().map(|(l, i, _)| (*l, *i)).collect();
            let present = self
                .store
                .tree_nodes(channel.0, *sender.as_bytes(), positions)
                .await
                .map_err(store_err)?;
            for ((level, index, hash), have) in chunk.iter().zip(present) {
                if have.is_none() {
                    rows.push(TreeNodeRow {
                        channel: channel.0,
                        sender: *sender.as_bytes(),
                        level: *level,
                        index: *index,
                        hash: *hash,
                    });
                }
            }
        }
        let batch = WriteBatch {
            tree_nodes: rows,
            ..WriteBatch::default()
        };
        self.store.commit(batch).await.map_err(store_err)?;
        Ok(tree)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let pending = self.peers.values().any(|p| p.proposer && p.unsigned > 0);
            let first = if pending && !self.policy.quiet.is_zero() {
                match tokio::time::timeout(self.policy.quiet, rx.recv()).await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(_) => {
                        // Quiet: checkpoint every channel with something unsigned.
                        let due: Vec<String> = self
                            .peers
                            .iter()
                            .filter(|(_, p)| p.proposer && p.unsigned > 0)
                            .map(|(n, _)| n.clone())
                            .collect();
                        for peer in due {
                            self.auto_checkpoint(&peer).await;
                        }
                        continue;
                    }
                }
            } else {
                match rx.recv().await {
                    Some(c) => c,
                    None => break,
                }
            };
            let mut messages = first.messages();
            let mut commands = vec![first];
            while commands.len() < BATCH_COMMANDS_MAX && messages < BATCH_SENDS_MAX {
                match rx.try_recv() {
                    Ok(c) => {
                        messages += c.messages();
                        commands.push(c);
                    }
                    Err(_) => break,
                }
            }
            self.apply(commands).await;
            if self.policy.every > 0 {
                let due: Vec<String> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.proposer && p.unsigned >= self.policy.every)
                    .map(|(n, _)| n.clone())
                    .collect();
                for peer in due {
                    self.auto_checkpoint(&peer).await;
                }
            }
        }
    }

    /// Sign a checkpoint on our own and queue it for the peer; failures are logged (the
    /// next trigger tries again).
    async fn auto_checkpoint(&mut self, peer: &str) {
        // Nobody could co-sign it now; proposing when the link is back covers the same
        // envelopes and leaves no unanswered checkpoints behind.
        let up = self.table.get(peer).is_some_and(|entry| {
            entry.status.read().is_ok_and(|s| {
                s.current_state(std::time::Instant::now()) != detente_proto::LinkState::Down
            })
        });
        if !up {
            return;
        }
        // Nothing the peer can check beyond the last one signed (our new envelopes are not
        // confirmed yet): wait for the next trigger rather than sign the same sizes again.
        let proposal = match self.current_checkpoint(peer).await {
            Ok(c) => {
                let signed = self.store.witness(c.channel.0).await.unwrap_or_default();
                let same = c.members.iter().all(|head| {
                    signed
                        .iter()
                        .any(|w| w.sender == *head.key.as_bytes() && w.size == head.size)
                });
                if same {
                    return;
                }
                self.sign_proposal(peer, c).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = proposal {
            tracing::warn!(peer, error = %e, "cannot sign a checkpoint");
            // Do not retry at once in a loop; the next append or quiet period will.
            if let Some(p) = self.peers.get_mut(peer) {
                p.unsigned = 0;
            }
        }
    }

    /// Load the streams of every peer a failed commit left unloaded; those that still fail
    /// stay for the next batch.
    async fn reload_unloaded(&mut self) {
        let names: Vec<(String, PartyKey)> = self.unloaded.drain().collect();
        for (name, key) in names {
            if let Err(e) = self.load_peer(&name, key).await {
                tracing::error!(peer = %name, error = %e, "cannot reload stream state; retrying before the next batch");
                self.unloaded.insert(name, key);
            }
        }
    }

    async fn apply(&mut self, commands: Vec<Command>) {
        if !self.unloaded.is_empty() {
            self.reload_unloaded().await;
        }
        let mut batch = WriteBatch::default();
        let mut staged = Staged::default();
        let mut sends = Vec::new();
        let mut send_batches = Vec::new();
        let mut receives = Vec::new();
        let mut misses = Vec::new();
        let mut glossary_replies = Vec::new();
        // Checkpoint commands read the trees from the store, so they run after this batch
        // is committed.
        let mut deferred = Vec::new();
        for command in commands {
            match command {
                Command::Send(request, reply) => {
                    let result = self.stage_send(&mut batch, &mut staged, request, false);
                    sends.push((result, reply));
                }
                Command::SendBatch {
                    requests,
                    idempotency,
                    reply,
                } => {
                    let result = self.stage_batch(&mut batch, &mut staged, requests, idempotency);
                    send_batches.push((result, reply));
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
                Command::Prune { peer, hwm } => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        let written = p.out.next_seq.saturating_sub(1);
                        if hwm > written {
                            // Never a prune: the outbox rows at or below `hwm` were never
                            // sent to this peer (issue 12, item 1).
                            stream_ahead(&self.table, &self.events, &peer, hwm, written);
                            continue;
                        }
                        p.confirmed = p.confirmed.max(hwm.min(p.out_tree.size()));
                    }
                    batch.prune.push((peer, hwm));
                }
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
                c @ (Command::Checkpoint { .. } | Command::PeerCheckpoint { .. }) => {
                    deferred.push(c)
                }
            }
        }
        self.stage_streams(&mut batch, &staged.touched);
        let carries_batch = carries_send_batch(&batch);
        if carries_batch {
            failpoint("send-batch-before-commit");
        }
        let committed = self.store.commit(batch).await;
        if carries_batch && committed.is_ok() {
            // Durable, and nobody answered yet.
            failpoint("send-batch-after-commit");
        }
        if let Err(e) = &committed {
            tracing::error!(error = %e, "commit failed; nothing of this batch was stored or acknowledged");
            // What was staged changed the in-memory streams; read them back from the store.
            let names: Vec<(String, PartyKey)> =
                self.peers.drain().map(|(n, p)| (n, p.key)).collect();
            self.unloaded.extend(names);
            self.reload_unloaded().await;
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
        for (result, reply) in send_batches {
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
        for command in deferred {
            match command {
                Command::Checkpoint { peer, reply } => {
                    let _ = reply.send(self.sign_checkpoint(&peer).await);
                }
                Command::PeerCheckpoint {
                    peer,
                    signed,
                    reply,
                } => {
                    let _ = reply.send(self.on_peer_checkpoint(&peer, signed).await);
                }
                _ => {}
            }
        }
    }

    /// The checkpoint this node proposes for the channel with `peer`: the peer's stream as
    /// far as we hold it, and ours as far as the peer has confirmed holding it (or as far as
    /// we signed before, which the peer held then) — so the peer can check and co-sign it.
    async fn current_checkpoint(&self, peer: &str) -> Result<Checkpoint, WriteError> {
        let p = self
            .peers
            .get(peer)
            .ok_or_else(|| missing(&self.unloaded, peer))?;
        let me = self.secret.public();
        let signed = self
            .store
            .witness(p.channel.0)
            .await
            .map_err(store_err)?
            .into_iter()
            .find(|w| w.sender == *me.as_bytes())
            .map_or(0, |w| w.size);
        let size = p.confirmed.max(signed).min(p.out_tree.size());
        let root = if size == p.out_tree.size() {
            p.out_tree.root()
        } else {
            crate::transcript::root_at(&self.store, p.channel.0, *me.as_bytes(), size)
                .await
                .map_err(WriteError::Store)?
        };
        Checkpoint::new(
            p.channel,
            now_ms(),
            vec![
                StreamHead {
                    key: me,
                    size,
                    root,
                },
                StreamHead {
                    key: p.key,
                    size: p.in_tree.size(),
                    root: p.in_tree.root(),
                },
            ],
        )
        .map_err(|e| WriteError::Invalid(e.to_string()))
    }

    /// Propose the channel's checkpoint as it stands now (see [`Self::current_checkpoint`]).
    async fn sign_checkpoint(&mut self, peer: &str) -> Result<SignedCheckpoint, WriteError> {
        let checkpoint = self.current_checkpoint(peer).await?;
        self.sign_proposal(peer, checkpoint).await
    }

    /// Sign our proposal `checkpoint` for the channel with `peer` (witness rule first), store
    /// it, then queue it for the peer.
    async fn sign_proposal(
        &mut self,
        peer: &str,
        checkpoint: Checkpoint,
    ) -> Result<SignedCheckpoint, WriteError> {
        let signed = SignedCheckpoint::sign(checkpoint, &self.secret)
            .map_err(|e| WriteError::Invalid(e.to_string()))?;
        self.commit_signed(peer, &signed, None).await?;
        if let Some(p) = self.peers.get_mut(peer) {
            p.unsigned = 0;
        }
        if let Some(entry) = self.table.get(peer) {
            entry.send_checkpoint(signed.encode());
        }
        Ok(signed)
    }

    /// Check the witness rule for `signed` (which carries our signature), then store it with
    /// the new witness state (and any evidence) in one transaction. Nothing signed leaves the
    /// node before this returns.
    async fn commit_signed(
        &self,
        peer: &str,
        signed: &SignedCheckpoint,
        evidence: Option<EvidenceRow>,
    ) -> Result<(), WriteError> {
        let witness = crate::transcript::witness_check(&self.store, signed.checkpoint())
            .await
            .map_err(|e| {
                tracing::debug!(peer, error = %e, "not signing a checkpoint (witness rule)");
                WriteError::Invalid(format!("witness rule: {e}"))
            })?;
        let mut batch = WriteBatch {
            witness,
            ..WriteBatch::default()
        };
        batch.checkpoints.push(checkpoint_row(signed));
        batch.evidence.extend(evidence);
        failpoint("checkpoint-before-commit");
        self.store.commit(batch).await.map_err(store_err)?;
        failpoint("checkpoint-after-commit");
        if signed.cosigned() {
            // For the checkpoint-age gauge of /metrics.
            self.events
                .metrics()
                .set_checkpoint(signed.checkpoint().time_ms as i64);
        }
        Ok(())
    }

    /// A checkpoint from the peer: check it against our record; sign it if we have not,
    /// store it either way. Evidence when the peer signed roots our record contradicts.
    async fn on_peer_checkpoint(
        &mut self,
        peer: &str,
        mut signed: SignedCheckpoint,
    ) -> Result<Option<SignedCheckpoint>, WriteError> {
        let (channel, key, out_size, in_size) = {
            let p = self
                .peers
                .get(peer)
                .ok_or_else(|| missing(&self.unloaded, peer))?;
            (p.channel, p.key, p.out_tree.size(), p.in_tree.size())
        };
        let me = self.secret.public();
        let c = signed.checkpoint().clone();
        let mut members: Vec<PartyKey> = c.members.iter().map(|m| m.key).collect();
        members.sort();
        let mut expected = vec![me, key];
        expected.sort();
        if c.channel != channel || members != expected {
            return Err(WriteError::Invalid(
                "the checkpoint is not of this channel or its members".into(),
            ));
        }
        if !signed.signed_by(&key) {
            return Err(WriteError::Invalid(
                "the peer did not sign its checkpoint".into(),
            ));
        }
        // Compare with our record, stream by stream.
        let mut behind = false;
        for head in &c.members {
            let local = if head.key == me { out_size } else { in_size };
            if head.size > local {
                behind = true;
                continue;
            }
            let ours =
                crate::transcript::root_at(&self.store, channel.0, *head.key.as_bytes(), head.size)
                    .await
                    .map_err(WriteError::Store)?;
            if ours != head.root {
                let detail = format!(
                    "the peer signed root {} for {} envelopes of stream {}; our record has {}",
                    hex::encode(head.root),
                    head.size,
                    head.key.fingerprint(),
                    hex::encode(ours)
                );
                tracing::error!(peer, %detail, "EQUIVOCATION: a checkpoint contradicts the record");
                // The first item: the latest checkpoint the peer signed that agrees with us,
                // among the newest page (bounded, whatever the transcript's length).
                let newest =
                    detente_store::CheckpointPage::newest(detente_store::CHECKPOINT_PAGE_MAX);
                let first = self
                    .store
                    .checkpoint_page(channel.0, newest)
                    .await
                    .map_err(store_err)?
                    .into_iter()
                    .map(|r| r.signed)
                    .find(|b| SignedCheckpoint::decode(b).is_ok_and(|s| s.signed_by(&key)))
                    .unwrap_or_default();
                let evidence = EvidenceRow {
                    id: 0,
                    channel: channel.0,
                    peer: peer.to_string(),
                    kind: EVIDENCE_CHECKPOINTS,
                    seq: None,
                    first,
                    second: signed.encode(),
                    detail: detail.clone(),
                    detected_at_ms: now_ms() as i64,
                };
                let batch = WriteBatch {
                    evidence: vec![evidence],
                    ..WriteBatch::default()
                };
                self.store.commit(batch).await.map_err(store_err)?;
                self.events.publish(Event::Alarm {
                    peer: peer.to_string(),
                    detail: detail.clone(),
                });
                return Err(WriteError::Invalid(detail));
            }
        }
        if behind {
            // We cannot vouch for envelopes we do not hold yet; our own checkpoint will
            // follow once they arrive.
            tracing::debug!(
                peer,
                "a checkpoint covers envelopes not yet here; not signed"
            );
            return Ok(None);
        }
        if signed.signed_by(&me) {
            // Our own checkpoint came back co-signed: store the fuller signature set.
            let batch = WriteBatch {
                checkpoints: vec![checkpoint_row(&signed)],
                ..WriteBatch::default()
            };
            self.store.commit(batch).await.map_err(store_err)?;
            if signed.cosigned() {
                self.events
                    .metrics()
                    .set_checkpoint(signed.checkpoint().time_ms as i64);
            }
            return Ok(None);
        }
        signed
            .add_signature(&self.secret)
            .map_err(|e| WriteError::Invalid(e.to_string()))?;
        self.commit_signed(peer, &signed, None).await?;
        Ok(Some(signed))
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

    /// Sign every message of a batch, then stage them all (see [`WriterHandle::send_batch`]):
    /// the first refusal refuses the whole batch and changes nothing.
    fn stage_batch(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        requests: Vec<SendRequest>,
        idempotency: Option<IdempotencyRow>,
    ) -> Result<Vec<Sent>, WriteError> {
        if requests.len() > SEND_BATCH_MESSAGES_MAX {
            return Err(WriteError::Invalid(format!(
                "at most {SEND_BATCH_MESSAGES_MAX} messages per batch"
            )));
        }
        // Per peer: the next seq and the last id, as the batch advances them.
        let mut heads: HashMap<String, (u64, MessageId)> = HashMap::new();
        let mut signed = Vec::with_capacity(requests.len());
        let mut bytes = 0usize;
        for request in requests {
            let p = self
                .peers
                .get(&request.peer)
                .ok_or_else(|| missing(&self.unloaded, &request.peer))?;
            let peer = request.peer.clone();
            let at = *heads
                .entry(peer.clone())
                .or_insert((p.out.next_seq, p.out.last_id));
            let verified = self.sign_own(request, at)?;
            bytes += verified.bytes().len();
            if bytes > SEND_BATCH_BYTES_MAX {
                return Err(WriteError::Invalid(format!(
                    "the batch is larger than {SEND_BATCH_BYTES_MAX} bytes signed"
                )));
            }
            heads.insert(peer.clone(), (at.0 + 1, verified.id()));
            signed.push((peer, verified));
        }
        let mut sent = Vec::with_capacity(signed.len());
        for (peer, verified) in signed {
            sent.push(self.stage_signed(batch, staged, &peer, verified, false)?);
        }
        if let Some(mut row) = idempotency {
            row.sent = sent
                .iter()
                .map(|s| SentRecord {
                    id: s.id.0,
                    seq: s.seq,
                    precedence: s.precedence as u8,
                })
                .collect();
            let expired_before = row.created_at_ms.saturating_sub(IDEMPOTENCY_KEY_TTL_MS);
            batch.idempotency_expired_before_ms = Some(expired_before);
            batch.idempotency.push(row);
        }
        Ok(sent)
    }

    /// Number, sign and stage one of this node's envelopes.
    fn stage_send(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        request: SendRequest,
        is_receipt: bool,
    ) -> Result<Sent, WriteError> {
        let p = self
            .peers
            .get(&request.peer)
            .ok_or_else(|| missing(&self.unloaded, &request.peer))?;
        let at = (p.out.next_seq, p.out.last_id);
        let peer = request.peer.clone();
        let verified = self.sign_own(request, at)?;
        self.stage_signed(batch, staged, &peer, verified, is_receipt)
    }

    /// Sign one of this node's envelopes at `(seq, prev)` without staging it (a batch signs
    /// all of its envelopes before it stages any, so a refusal changes nothing).
    fn sign_own(
        &self,
        request: SendRequest,
        (seq, prev): (u64, MessageId),
    ) -> Result<VerifiedEnvelope, WriteError> {
        let p = self
            .peers
            .get(&request.peer)
            .ok_or_else(|| missing(&self.unloaded, &request.peer))?;
        // Our wall clock as it is, also after a step back: a frozen maximum would date every
        // message the same for hours and put its deadline where our clock is not. A wrong
        // clock shows as skew against the peer's (status `clock`).
        let created_at_ms = now_ms();
        let envelope = Envelope {
            channel: p.channel,
            sender: self.secret.public(),
            seq,
            prev,
            created_at_ms,
            precedence: request.precedence,
            topic: request.topic,
            author: request.author,
            in_reply_to: request.in_reply_to,
            body: request.body,
        };
        VerifiedEnvelope::sign(envelope, &self.secret)
            .map_err(|e| WriteError::Invalid(e.to_string()))
    }

    /// Stage an envelope [`Self::sign_own`] signed at the next `seq` of `peer`'s stream.
    fn stage_signed(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        peer: &str,
        verified: VerifiedEnvelope,
        is_receipt: bool,
    ) -> Result<Sent, WriteError> {
        let me = self.secret.public();
        // Signed for a peer the writer holds, in this same batch: it is there.
        let p = self
            .peers
            .get_mut(peer)
            .ok_or_else(|| missing(&self.unloaded, peer))?;
        let e = verified.envelope();
        let sent = Sent {
            id: verified.id(),
            seq: e.seq,
            precedence: e.precedence,
        };
        p.out.advance(verified.id());
        p.unsigned += 1;
        grow(
            batch,
            &mut p.out_tree,
            p.channel,
            &me,
            merkle::leaf_hash(verified.bytes()),
        );
        batch.outbox.push(OutboxRow {
            peer: peer.to_string(),
            seq: e.seq,
            precedence: e.precedence as u8,
            is_receipt,
        });
        batch
            .messages
            .push(row(peer, &verified, Direction::Out, Placement::Appended));
        if let Body::Receipt(receipt) = &e.body {
            if let ReceiptTarget::Message(of) = receipt.target {
                // Our own answer to a received message shows on our side at once.
                let at_ms = verified.envelope().created_at_ms as i64;
                batch
                    .receipts
                    .push(receipt_row(of, receipt, &verified, at_ms));
            }
        }
        staged.touched.insert(peer.to_string());
        staged.written.push((peer.to_string(), e.precedence));
        staged.events.push(Event::Stored {
            peer: peer.to_string(),
            id: verified.id(),
            seq: e.seq,
            direction: Direction::Out,
            precedence: e.precedence,
            kind: e.body.kind(),
            start_ms: e.created_at_ms as i64,
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
                return Err(missing(&self.unloaded, peer));
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
                Some((id, _, _)) if *id == verified.id() => Disposition::Known,
                Some(_) => {
                    let channel = p.channel;
                    let key = p.key;
                    let first = self
                        .store
                        .message_at(channel.0, *key.as_bytes(), seq)
                        .await
                        .map_err(store_err)?
                        .map(|m| m.bytes)
                        .unwrap_or_default();
                    equivocation(batch, staged, peer, channel, seq, first, &verified);
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
                    p.unsigned += 1;
                    let (channel, key) = (p.channel, p.key);
                    grow(
                        batch,
                        &mut p.in_tree,
                        channel,
                        &key,
                        merkle::leaf_hash(verified.bytes()),
                    );
                    Placement::Appended
                }
                Disposition::Hold => {
                    p.held.insert(
                        seq,
                        (verified.id(), e.prev, merkle::leaf_hash(verified.bytes())),
                    );
                    Placement::Held
                }
                Disposition::Known => {
                    if let Some(id) = in_batch.get(&seq) {
                        if *id != verified.id() {
                            let first = batch
                                .messages
                                .iter()
                                .find(|m| m.id == id.0)
                                .map(|m| m.bytes.clone())
                                .unwrap_or_default();
                            let channel = p.channel;
                            equivocation(batch, staged, peer, channel, seq, first, &verified);
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
                        if let Some(m) = stored.filter(|m| m.id != verified.id().0) {
                            let channel = p.channel;
                            equivocation(batch, staged, peer, channel, seq, m.bytes, &verified);
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
            for (broken, held_id) in self.promote_held(batch, peer) {
                self.broken_chain(batch, staged, peer, (broken, held_id), &verified)
                    .await?;
                delivered_seqs.retain(|s| *s != broken);
                in_batch.remove(&broken);
            }
            staged.touched.insert(peer.to_string());
            outcome.stored += 1;
            match &e.body {
                Body::Receipt(receipt) => {
                    if self.receipt_names_our_message(peer, receipt).await? {
                        let at_ms = now_ms() as i64;
                        stage_receipt_effects(batch, staged, peer, &verified, receipt, at_ms)
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
            let stored = row(peer, &verified, Direction::In, placement);
            staged.events.push(Event::Stored {
                peer: peer.to_string(),
                id: verified.id(),
                seq,
                direction: Direction::In,
                precedence: e.precedence,
                kind: e.body.kind(),
                start_ms: stored.stored_at_ms,
            });
            batch.messages.push(stored);
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

    /// Append held envelopes whose gap has filled, checking each one's `prev`. A held
    /// envelope that does not follow the stream is taken out of the held set (and so out of
    /// the way of the envelope that does follow); returned as (seq, id) for
    /// [`Writer::broken_chain`].
    fn promote_held(&mut self, batch: &mut WriteBatch, peer: &str) -> Vec<(u64, MessageId)> {
        let Some(p) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        let mut broken = Vec::new();
        while let Some(&(id, prev, leaf)) = p.held.get(&p.inbound.next_seq) {
            if prev != p.inbound.last_id {
                p.held.remove(&p.inbound.next_seq);
                broken.push((p.inbound.next_seq, id));
                break;
            }
            let (channel, key) = (p.channel, p.key);
            grow(batch, &mut p.in_tree, channel, &key, leaf);
            p.unsigned += 1;
            batch
                .promote
                .push((p.channel.0, *p.key.as_bytes(), p.inbound.next_seq));
            p.held.remove(&p.inbound.next_seq);
            p.inbound.advance(id);
        }
        broken
    }

    /// The peer's held envelope at `seq` does not follow its own envelope at `seq - 1`
    /// (issue 12, item 17): both are signed by the peer and cannot both be its stream.
    /// The held one leaves the messages (discarded from the store, or from this batch if it
    /// came in it) and is kept as [`EVIDENCE_BROKEN_CHAIN`] evidence with the appended one;
    /// the alarm is raised and the channel flagged once that is durable. The seq is open
    /// again: the envelope that does follow is appended when it comes, instead of being
    /// refused as a conflict for ever.
    async fn broken_chain(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        peer: &str,
        (seq, held_id): (u64, MessageId),
        current: &VerifiedEnvelope,
    ) -> Result<(), WriteError> {
        let Some(p) = self.peers.get(peer) else {
            return Ok(());
        };
        let (channel, key) = (p.channel, p.key);
        let second = match batch.messages.iter().position(|m| m.id == held_id.0) {
            Some(at) => {
                staged
                    .events
                    .retain(|e| !matches!(e, Event::Stored { id, .. } if *id == held_id));
                batch.messages.remove(at).bytes
            }
            None => {
                batch.discard_held.push((channel.0, *key.as_bytes(), seq));
                // Stored earlier: the deadline watch and the counts let go of it.
                staged.events.push(Event::Discarded {
                    peer: peer.to_string(),
                    id: held_id,
                });
                self.store
                    .message_at(channel.0, *key.as_bytes(), seq)
                    .await
                    .map_err(store_err)?
                    .map(|m| m.bytes)
                    .unwrap_or_default()
            }
        };
        let detail = format!(
            "the peer's held envelope for seq {seq} does not follow its envelope at seq {}; \
             kept as evidence, not in the transcript",
            seq - 1
        );
        tracing::error!(peer, seq, "BROKEN CHAIN: {detail}");
        batch.evidence.push(EvidenceRow {
            id: 0,
            channel: channel.0,
            peer: peer.to_string(),
            kind: EVIDENCE_BROKEN_CHAIN,
            seq: Some(seq),
            // The envelope before it: the one being received now (its row joins the batch
            // after this), else a promoted one, read from the store below.
            first: if current.envelope().seq + 1 == seq {
                current.bytes().to_vec()
            } else {
                Vec::new()
            },
            second,
            detail: detail.clone(),
            detected_at_ms: now_ms() as i64,
        });
        for (i, channel, before) in batch.evidence_to_fill() {
            if let Some(row) = self
                .store
                .message_at(channel, *key.as_bytes(), before)
                .await
                .map_err(store_err)?
            {
                batch.evidence[i].first = row.bytes;
            }
        }
        staged.events.push(Event::Alarm {
            peer: peer.to_string(),
            detail,
        });
        Ok(())
    }
}

/// A receipt from the peer about our stream, stored at `at_ms` on our clock: its effects
/// carry that time, never the one the peer signed (issue 12, item 11: a peer's clock hours
/// off must not make a late answer look punctual, or the reverse).
fn stage_receipt_effects(
    batch: &mut WriteBatch,
    staged: &mut Staged,
    peer: &str,
    verified: &VerifiedEnvelope,
    receipt: &Receipt,
    at_ms: i64,
) {
    match &receipt.target {
        ReceiptTarget::Ranges(list) => {
            for &(from, to) in list {
                batch.delivered.push(DeliveredRange {
                    peer: peer.to_string(),
                    from,
                    to,
                    at_ms,
                });
                staged.events.push(Event::Delivered {
                    peer: peer.to_string(),
                    from,
                    to,
                });
            }
        }
        ReceiptTarget::Message(of) => {
            batch
                .receipts
                .push(receipt_row(*of, receipt, verified, at_ms));
            staged.events.push(Event::Receipt {
                of: *of,
                level: receipt.level,
            });
        }
    }
}

/// The row of a receipt recorded at `at_ms` on our clock.
fn receipt_row(
    of: MessageId,
    receipt: &Receipt,
    verified: &VerifiedEnvelope,
    at_ms: i64,
) -> ReceiptRow {
    ReceiptRow {
        of: of.0,
        level: match receipt.level {
            ReceiptLevel::Delivered => detente_store::ReceiptLevel::Delivered,
            ReceiptLevel::Read => detente_store::ReceiptLevel::Read,
            ReceiptLevel::Acknowledged => detente_store::ReceiptLevel::Acknowledged,
            ReceiptLevel::Declined => detente_store::ReceiptLevel::Declined,
        },
        at_ms,
        receipt_id: verified.id().0,
        note: receipt.note.clone(),
    }
}

/// Append a leaf to a stream's tree and stage the complete subtrees it creates in the same
/// batch as the message. (Public for `detente bench --append`, which times exactly this.)
pub fn grow(
    batch: &mut WriteBatch,
    tree: &mut Frontier,
    channel: ChannelId,
    sender: &PartyKey,
    leaf: Hash,
) {
    let mut created = Vec::with_capacity(2);
    tree.push(leaf, &mut created);
    batch
        .tree_nodes
        .extend(created.into_iter().map(|(level, index, hash)| TreeNodeRow {
            channel: channel.0,
            sender: *sender.as_bytes(),
            level,
            index,
            hash,
        }));
}

fn checkpoint_row(signed: &SignedCheckpoint) -> CheckpointRow {
    let c = signed.checkpoint();
    CheckpointRow {
        id: 0,
        channel: c.channel.0,
        body_hash: merkle_body_hash(signed.body()),
        time_ms: c.time_ms as i64,
        cosigned: signed.cosigned(),
        signed: signed.encode(),
        stored_at_ms: now_ms() as i64,
    }
}

fn merkle_body_hash(body: &[u8]) -> [u8; 32] {
    detente_proto::envelope::message_id(body).0
}

/// Two different envelopes signed by the peer for one seq: keep both as evidence (in this
/// batch), raise the alarm, flag the channel. The second envelope is still refused.
fn equivocation(
    batch: &mut WriteBatch,
    staged: &mut Staged,
    peer: &str,
    channel: ChannelId,
    seq: u64,
    first: Vec<u8>,
    second: &VerifiedEnvelope,
) {
    conflict(peer, seq);
    let detail = format!("the peer signed two different envelopes for seq {seq}");
    batch.evidence.push(EvidenceRow {
        id: 0,
        channel: channel.0,
        peer: peer.to_string(),
        kind: EVIDENCE_ENVELOPES,
        seq: Some(seq),
        first,
        second: second.bytes().to_vec(),
        detail: detail.clone(),
        detected_at_ms: now_ms() as i64,
    });
    staged.events.push(Event::Alarm {
        peer: peer.to_string(),
        detail,
    });
}

/// Test-only crash points: with `DETENTE_FAILPOINT=<name>` in the environment, the process
/// exits at once (as a `kill -9` would) when it reaches that point. Compiled only into debug
/// builds. (The core engine's driver has the same checkpoint points.)
/// Whether a batch carries an operator's batch of sends (two or more of our texts or
/// notifications): where the `send-batch-before-commit` and `send-batch-after-commit`
/// failpoints fire, with either engine.
pub(crate) fn carries_send_batch(batch: &WriteBatch) -> bool {
    let operator = |m: &&MessageRow| {
        m.direction == Direction::Out
            && matches!(m.kind, 0 | detente_proto::envelope::KIND_NOTIFICATION)
    };
    batch.messages.iter().filter(operator).nth(1).is_some()
}

pub(crate) fn failpoint(name: &str) {
    if cfg!(debug_assertions) && std::env::var("DETENTE_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: exiting");
        std::process::exit(86);
    }
}

fn conflict(peer: &str, seq: u64) {
    tracing::error!(
        peer,
        seq,
        "EQUIVOCATION: the peer signed two different envelopes for the same seq; the second is refused"
    );
}

/// The stored row of an envelope. (Public for `detente bench --append`.)
pub fn row(
    peer: &str,
    v: &VerifiedEnvelope,
    direction: Direction,
    placement: Placement,
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
        stored_at_ms: now_ms() as i64,
        in_reply_to: e.in_reply_to.map(|id| id.0),
        placement,
        bytes: v.bytes().to_vec(),
    }
}

/// A peer claims to hold our stream up to `hwm`, beyond the `written` envelopes our store
/// has: the store was replaced or lost, and the peer holds envelopes of ours we no longer
/// know. Stop sending to it (new envelopes would reuse its seqs) and raise the alarm once.
pub fn stream_ahead(table: &PeerTable, events: &Events, peer: &str, hwm: u64, written: u64) {
    let detail = format!(
        "peer {peer} holds our stream up to seq {hwm} but our store has only {written}: \
         this store is not the one the channel ran on (moved, restored from an old backup, \
         or new). Nothing more is sent to {peer}; put the right database back and restart"
    );
    let Some(entry) = table.get(peer) else { return };
    if entry.stop_sending(detail.clone()) {
        tracing::error!(peer, hwm, written, "STREAM AHEAD: {detail}");
        events.publish(Event::Alarm {
            peer: peer.to_string(),
            detail,
        });
    }
}

/// What the check of a peer's claim to hold more of our stream found
/// ([`detente_proto::claim`]): a second alarm, and the reason sending stays stopped.
pub fn claim_verdict(events: &Events, entry: &crate::peers::PeerEntry, detail: String) {
    tracing::error!(peer = %entry.name, "STREAM CLAIM CHECKED: {detail}");
    entry.stopped_because(detail.clone());
    events.publish(Event::Alarm {
        peer: entry.name.clone(),
        detail,
    });
}

/// The error for a command naming a peer the writer does not hold.
fn missing(unloaded: &HashMap<String, PartyKey>, peer: &str) -> WriteError {
    if unloaded.contains_key(peer) {
        WriteError::Store(format!(
            "the stream state of peer {peer:?} is being reloaded after a database failure"
        ))
    } else {
        WriteError::UnknownPeer(peer.to_string())
    }
}

fn store_err(e: detente_store::StoreError) -> WriteError {
    WriteError::Store(e.to_string())
}
