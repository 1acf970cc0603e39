//! detente's node as a state machine with no I/O (after `quinn-proto`).
//!
//! A [`Core`] holds every decision a node makes about its channels: numbering and signing
//! its own envelopes, accepting, holding and promoting received ones, DELIVERED receipts,
//! receipt effects, `Ack`s and outbox pruning, checkpoints and the witness rule,
//! equivocation evidence, deadline verdicts, charter agreement, link supervision and
//! precedence scheduling. It reads no clock, socket, file or OS random generator: the
//! driver passes the monotonic and the wall-clock time into every call, seeds its random
//! generator, moves frames, and commits the batches it hands out.
//!
//! Driving it: [`Core::handle`] with an [`Input`], then drain [`Core::poll_commit`],
//! [`Core::poll_transmit`], [`Core::poll_event`] and ask [`Core::poll_timeout`] when to call
//! again with [`Input::Tick`].
//!
//! **Durability is structural**: whatever depends on a batch being durable (an `Ack`
//! frame, the frames carrying our envelopes, a DELIVERED receipt, a checkpoint, the answer
//! to an operator's ticket, a deadline verdict, an alarm) is attached to that batch and only
//! released by [`Input::Committed`] for it. Batches are committed one at a time, in order.
//! A failed commit is retried after a pause, while new operator work is answered
//! [`CommandError::Busy`]; nothing is released until the retry succeeds.

#![forbid(unsafe_code)]

mod bugs;
mod checkpoints;
mod deadlines;
mod glossary;
mod linktest;
mod notification;
mod peer;
mod receive;
mod recover;
mod session;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::{
    BelowFloor, Body, Deadlines, Floors, Frame, LinkConfig, MessageId, PartyKey, PartySecret,
    Precedence, ReceiptLevel,
};
use detente_store_types::{
    Direction, GlossaryRow, IdempotencyRow, SentRecord, WriteBatch, IDEMPOTENCY_KEY_TTL_MS,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use bugs::{PlantedBug, PLANTED_BUGS_COMPILED};
pub use checkpoints::CHECKPOINTS_KEPT_MAX;
pub use deadlines::{
    DeadlineQuery, Decision, DEADLINES_WATCHED_DEFAULT, DEADLINE_LOOKUPS_MAX, DEADLINE_ROWS_MAX,
};
pub use detente_proto::Need;
pub use glossary::{check as check_glossary_term, GLOSSARY_TERMS_MAX, GLOSSARY_TERM_BYTES_MAX};
pub use linktest::LINK_TEST_TOPIC;
pub use notification::{check_notification, NotificationError};
pub use recover::{RecoverError, Snapshot, StoredEnvelope, StoredStream, CHARTERS_KEPT};

use peer::Peer;

/// An operator's request, answered by an [`Event::Answer`] with the same ticket.
pub type Ticket = u64;
/// A session (one TLS connection) as the driver numbers them.
pub type SessionId = u64;
/// A batch handed out by [`Core::poll_commit`].
pub type BatchId = u64;

/// Envelopes staged for the next batch beyond which operator work is answered busy and
/// received envelopes are refused busy (the sender resends them on the next session).
pub const STAGED_MESSAGES_MAX: usize = 4_096;
/// Envelope frames sent on a session and not yet counted by the peer's `Ack` (flow control;
/// a FLASH may pass it). It is also what a FLASH can find ahead of it in the pipes and the
/// peer's input queue, which are first in, first out: 256 frames of 1 KiB are ~50 ms at the
/// receiving node's commit rate, while 2,048 were measured at 640–1,075 ms behind a 50,000
/// backlog (`detente bench`); a commit of the peer acknowledges far fewer than 256.
pub const SESSION_IN_FLIGHT_MAX: u64 = 256;
/// Control frames (Hello, Ack, Pong, Refuse, Terms, checkpoints) queued for all sessions.
pub const CONTROL_FRAMES_MAX: usize = 8_192;
/// Events waiting for the driver.
pub const EVENTS_MAX: usize = 65_536;
/// Wait before retrying a failed commit.
pub const COMMIT_RETRY_MS: u64 = 200;
/// Peers (channels) one node holds at most, pinned at start or at run time.
pub const PEERS_MAX: usize = 256;
/// Messages in one [`Command::SendBatch`] at most (the API's batch limit).
pub const SEND_BATCH_MESSAGES_MAX: usize = 1_000;
/// Signed envelope bytes of one [`Command::SendBatch`] at most (the API's request body is
/// 4 MiB at most; its texts signed are well below this).
pub const SEND_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One peer of this node: a channel of two members (this node and the peer).
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub name: String,
    pub key: PartyKey,
    /// How many addresses the peer has (the driver knows them; the core picks the index).
    pub addresses: usize,
}

/// What a core is made of. The secret is given as its seed, so that a config can be cloned
/// by the driver for a restart.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    /// The title this node signs its own envelopes with (receipts, charters, link tests).
    pub author: String,
    pub secret_seed: [u8; 32],
    pub peers: Vec<PeerConfig>,
    /// This party's deadlines (its terms); the channel runs on the stricter of both once a
    /// charter is agreed.
    pub deadlines: Deadlines,
    pub link_test_interval: Duration,
    /// The shortest deadlines and link-test interval this party agrees to (each capped by
    /// its own terms): a charter below them is not signed ([`Event::CharterRefused`]).
    pub floors: Floors,
    pub link: LinkConfig,
    /// How often the member with the smaller key proposes a checkpoint when something new
    /// is covered.
    pub checkpoint_interval: Duration,
    /// Also propose one as soon as this many envelopes are appended to a channel since our
    /// last signature (0: by interval only).
    pub checkpoint_every: u64,
    /// Seed of the core's random generator (ping nonces, redial jitter, and the
    /// coefficients of batch signature verification, which the peer must not be able to
    /// predict: the node draws it from the operating system's generator).
    pub random_seed: [u8; 32],
    /// Messages whose deadlines are watched in memory at most (the nearest due; the rest
    /// are read back from the store: [`DeadlineQuery`]).
    pub deadlines_watched_max: usize,
    /// What this party says about itself in its charter terms.
    pub profile: Profile,
    /// A planted defect (only with the `planted-bugs` feature; ignored otherwise).
    pub bug: Option<PlantedBug>,
}

/// What this party offers in its charter terms besides deadlines: who it is, where it is
/// reached, its language and time zone, the notification formats it holds, and its
/// counterparts. Empty fields are offered as: the party named like the node, one
/// placeholder address, English, UTC.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub party: String,
    /// `host:port` where peers reach this node.
    pub addresses: Vec<String>,
    pub lang: String,
    pub tz: String,
    pub formats: Vec<detente_proto::FormatRef>,
    /// (our position, their position) pairs, as this party sees them.
    pub counterparts: Vec<(String, String)>,
}

/// A text or notification an operator writes: a [`Command::Send`], or one message of a
/// [`Command::SendBatch`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub peer: String,
    pub precedence: Precedence,
    /// What the message is about, as the envelope carries it (bounded by proto).
    pub topic: String,
    /// The writer's title as shown to the other side ("Duty Officer").
    pub author: String,
    pub body: Body,
    pub in_reply_to: Option<MessageId>,
}

impl Outgoing {
    /// The peer, what the envelope is signed with, and the body.
    fn into_parts(self) -> (String, Sent, Body) {
        let sent = Sent {
            precedence: self.precedence,
            topic: self.topic,
            author: self.author,
            in_reply_to: self.in_reply_to,
        };
        (self.peer, sent, self.body)
    }
}

/// An operator command.
#[derive(Debug, Clone)]
pub enum Command {
    /// Write a text or notification to its peer.
    Send(Outgoing),
    /// Write several texts or notifications **all or nothing**: every one is checked and
    /// signed before any is staged, and all are staged into one batch, so one commit makes
    /// them durable together (or none, if it never happens). With `idempotency` (its `sent`
    /// left empty), the request's key and this answer are stored in the same batch.
    /// Answered `SentBatch`, in the order given.
    SendBatch {
        messages: Vec<Outgoing>,
        idempotency: Option<IdempotencyRow>,
    },
    /// Answer a received message: READ, ACKNOWLEDGED or DECLINED.
    Answer {
        peer: String,
        of: MessageId,
        level: ReceiptLevel,
        note: Option<String>,
    },
    /// Propose a checkpoint of the channel with `peer` now.
    Checkpoint { peer: String },
    /// New deadlines for this party's terms (a new charter follows once the peers agree).
    SetDeadlines { deadlines: Deadlines },
    /// Add (or replace) an agreed pair of terms in the glossary of the channel with
    /// `row.peer`. Answered `Done` once durable.
    Glossary { row: GlossaryRow },
    /// Pin a new peer while the node runs (its key and how many addresses it has). Answered
    /// `Done` at once in effect: nothing about a new peer is stored until it speaks.
    AddPeer { peer: PeerConfig },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Sent {
        id: MessageId,
        seq: u64,
    },
    /// A [`Command::SendBatch`]'s messages, in the order given.
    SentBatch {
        sent: Vec<(MessageId, u64)>,
    },
    Checkpoint {
        body_hash: [u8; 32],
    },
    Done,
}

/// Why a command was not done. Nothing of it was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No such peer. Remedy: check the name.
    #[error("peer {0:?} is not known")]
    UnknownPeer(String),
    /// The command is not valid (a bound, an unknown message, the witness rule).
    #[error("{0}")]
    Invalid(String),
    /// The store is failing or too much is waiting to be stored. Remedy: retry after the
    /// given pause.
    #[error("busy, retry after {retry_after_ms} ms")]
    Busy { retry_after_ms: u64 },
}

/// Inputs from the driver. (An operator command is the large variant; inputs are moved
/// once, so boxing it would only add an allocation.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Input {
    Operator {
        ticket: Ticket,
        command: Command,
    },
    /// A session with `peer` is established; `dialed_by_us` says which side dialed it (both
    /// dial, and a crossing is settled by the rule of [`Core::on_session_opened`]).
    SessionOpened {
        peer: String,
        session: SessionId,
        dialed_by_us: bool,
    },
    SessionClosed {
        session: SessionId,
    },
    /// Dialing `peer` at the address asked for failed.
    DialFailed {
        peer: String,
    },
    /// One frame (type byte and body; the length prefix removed) read from a session.
    Frame {
        session: SessionId,
        bytes: Vec<u8>,
    },
    /// Frames read from a session one after the other (what arrived together): the same as
    /// one [`Input::Frame`] each, in order, but the envelopes among them are verified in one
    /// batch (about half the cost of one at a time).
    Frames {
        session: SessionId,
        frames: Vec<Vec<u8>>,
    },
    Committed {
        batch: BatchId,
    },
    /// The store's answer to the [`DeadlineQuery`] numbered `query` ([`Core::poll_query`]),
    /// or its error (asked again later).
    DeadlineRows {
        query: u64,
        rows: Result<Vec<detente_store_types::DeadlineCandidate>, String>,
    },
    CommitFailed {
        batch: BatchId,
        error: String,
    },
    /// The driver has sent its whole answer to the [`Event::Fetch`] of `session` (or the
    /// session ended meanwhile): the session's next `Fetch` may be answered.
    FetchAnswered {
        session: SessionId,
    },
    /// The timer asked for by [`Core::poll_timeout`] fired (or any time: it is idempotent).
    Tick,
}

/// Outputs for waiters, the console, hooks and metrics, and requests to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Answer {
        ticket: Ticket,
        result: Result<Answer, CommandError>,
    },
    /// An envelope is durable here.
    Stored {
        peer: String,
        id: MessageId,
        seq: u64,
        direction: Direction,
        precedence: Precedence,
        kind: u8,
    },
    /// The peer confirmed holding our envelopes `from..=to`.
    Delivered { peer: String, from: u64, to: u64 },
    /// A peer's READ / ACKNOWLEDGED / DECLINED of our message is durable here.
    Receipt { of: MessageId, level: ReceiptLevel },
    /// A deadline was decided (recorded before shown).
    Deadline {
        peer: String,
        id: MessageId,
        need: Need,
        decision: Decision,
    },
    /// The peer signed two contradicting things (the evidence is durable), or it claims to
    /// hold more of our stream than our store ever wrote (nothing more is sent to it).
    Alarm { peer: String, detail: String },
    /// A held envelope of the peer's, durable here before, left the messages (it did not
    /// follow the envelope that filled the gap before it; kept as broken-chain evidence):
    /// it owes no deadline and is no longer unanswered.
    Discarded { peer: String, id: MessageId },
    /// Something from the peer was refused; nothing of it was stored.
    Refused { peer: String, what: String },
    /// A link test's DELIVERED receipt did not come back within the FLASH delivery
    /// deadline (reported once per miss, until a later test passes). Nothing is stored.
    LinkTestMissed { peer: String },
    /// A link test's DELIVERED receipt came back in time (durable here), after `rtt_ms`.
    LinkTestPassed { peer: String, rtt_ms: u64 },
    /// Both members signed this charter; it binds from now on.
    CharterAgreed { peer: String, digest: [u8; 32] },
    /// The charter the peer's terms make has terms below our floors (`below` names each),
    /// so it was not signed; the channel keeps its agreed charter (or our own terms).
    /// Emitted when that set changes, with `below` empty once the peer's terms are within
    /// our floors again. Nothing is stored.
    CharterRefused {
        peer: String,
        below: Vec<BelowFloor>,
    },
    /// Dial `peer` at address index `address`; answer with `SessionOpened` or `DialFailed`.
    Dial { peer: String, address: usize },
    /// Close this session (silent too long, protocol violation, replaced).
    CloseSession { session: SessionId },
    /// Answer the peer's `Fetch` on `session`: send the appended envelopes of `sender`'s
    /// stream in `channel` with `after < seq <= through`, read from the store, each in a
    /// `Fetched` frame, lowest first, stopping after the one that crosses
    /// [`detente_proto::FETCH_ANSWER_BYTES_MAX`]; then `FetchEnd { sender, upto, head }`
    /// with the last `seq` sent; then [`Input::FetchAnswered`]. All of them are durable.
    Fetch {
        session: SessionId,
        channel: [u8; 32],
        sender: [u8; 32],
        after: u64,
        through: u64,
        head: u64,
    },
}

/// The envelope fields of a send besides its body, as the operator gave them.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub precedence: Precedence,
    pub topic: String,
    pub author: String,
    pub in_reply_to: Option<MessageId>,
}

impl Sent {
    /// What the node writes on its own (receipts, charters): topic "general", the node's
    /// name as author.
    pub(crate) fn system(
        precedence: Precedence,
        author: &str,
        in_reply_to: Option<MessageId>,
    ) -> Sent {
        Sent {
            precedence,
            topic: "general".into(),
            author: author.to_string(),
            in_reply_to,
        }
    }
}

/// What waits for a batch to be durable.
#[derive(Debug, Clone)]
enum Release {
    Event(Event),
    Frame { session: SessionId, frame: Frame },
}

/// The batch being gathered.
#[derive(Debug, Default)]
struct Staging {
    batch: WriteBatch,
    releases: Vec<Release>,
}

/// The batch handed to the driver.
#[derive(Debug)]
struct InFlight {
    id: BatchId,
    batch: WriteBatch,
    releases: Vec<Release>,
    /// Per peer index: our stream's length and the peer's stream cursor in this batch.
    marks: Vec<(usize, u64, detente_proto::StreamCursor)>,
    /// Handed out and not yet answered.
    outstanding: bool,
    /// Failed; hand it out again at this instant.
    retry_at: Option<Instant>,
}

/// The node's state machine. See the crate documentation.
pub struct Core {
    secret: PartySecret,
    me: PartyKey,
    name: String,
    author: String,
    deadlines: Deadlines,
    link_test_interval: Duration,
    floors: Floors,
    checkpoint_interval: Duration,
    checkpoint_every: u64,
    link: LinkConfig,
    profile: Profile,
    peers: Vec<Peer>,
    /// Glossary terms per peer name, by (lang_a, term_a, lang_b): what a new term would
    /// replace rather than add (the count is bounded).
    glossary: glossary::Terms,
    rng: StdRng,
    staging: Staging,
    in_flight: Option<InFlight>,
    next_batch: BatchId,
    transmit: VecDeque<(SessionId, Frame)>,
    events: VecDeque<Event>,
    tracker: deadlines::Tracker,
    bug: Option<PlantedBug>,
    next_checkpoint: Instant,
    now: Instant,
    wall_ms: i64,
}

impl Core {
    /// A node with empty streams.
    pub fn new(config: Config, now: Instant, wall_ms: i64) -> Core {
        Core::recover(config, Snapshot::default(), now, wall_ms)
            .expect("an empty snapshot always recovers")
    }

    fn empty(config: &Config, now: Instant, wall_ms: i64) -> Core {
        let secret = PartySecret::from_seed(config.secret_seed);
        let me = secret.public();
        let peers = config
            .peers
            .iter()
            .map(|p| Peer::new(p, &me, config.link, now))
            .collect();
        Core {
            secret,
            me,
            name: config.name.clone(),
            author: config.author.clone(),
            deadlines: config.deadlines,
            link_test_interval: config.link_test_interval,
            floors: config.floors,
            checkpoint_interval: config.checkpoint_interval,
            checkpoint_every: config.checkpoint_every,
            link: config.link,
            profile: config.profile.clone(),
            peers,
            glossary: glossary::Terms::default(),
            rng: StdRng::from_seed(config.random_seed),
            staging: Staging::default(),
            in_flight: None,
            next_batch: 1,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            tracker: deadlines::Tracker::new(config.deadlines_watched_max, now, wall_ms),
            bug: bugs::active(config.bug),
            next_checkpoint: now + config.checkpoint_interval,
            now,
            wall_ms,
        }
    }

    /// This node's party key.
    pub fn key(&self) -> PartyKey {
        self.me
    }

    /// The pinned key of peer `name`.
    pub fn peer_key(&self, name: &str) -> Option<PartyKey> {
        self.peers.iter().find(|p| p.name == name).map(|p| p.key)
    }

    /// Feed one input. `now` is the monotonic clock (never goes back), `wall_ms` the wall
    /// clock in milliseconds since the Unix epoch (may jump either way).
    pub fn handle(&mut self, now: Instant, wall_ms: i64, input: Input) {
        self.now = self.now.max(now);
        self.wall_ms = wall_ms;
        self.tracker.observe(self.now, wall_ms);
        match input {
            Input::Operator { ticket, command } => self.on_command(ticket, command),
            Input::SessionOpened {
                peer,
                session,
                dialed_by_us,
            } => self.on_session_opened(&peer, session, dialed_by_us),
            Input::SessionClosed { session } => self.on_session_closed(session),
            Input::DialFailed { peer } => self.on_dial_failed(&peer),
            Input::Frame { session, bytes } => self.on_frame(session, &bytes),
            Input::Frames { session, frames } => self.on_frames(session, frames),
            Input::Committed { batch } => self.on_committed(batch),
            Input::DeadlineRows { query, rows } => self.on_deadline_rows(query, rows),
            Input::CommitFailed { batch, error } => self.on_commit_failed(batch, &error),
            Input::FetchAnswered { session } => self.on_fetch_answered(session),
            Input::Tick => {}
        }
        self.on_tick();
    }

    /// The next batch to commit, if one is due. At most one is outstanding: answer it with
    /// `Committed` or `CommitFailed` before the next is handed out.
    /// While a [`Core::poll_query`] is due or unanswered, nothing new is sealed.
    pub fn poll_commit(&mut self) -> Option<(BatchId, WriteBatch)> {
        if self.in_flight.is_none() {
            if self.tracker.holds_seal(self.now) {
                return None;
            }
            self.seal();
        }
        let flight = self.in_flight.as_mut()?;
        if flight.outstanding || flight.retry_at.is_some_and(|at| at > self.now) {
            return None;
        }
        flight.outstanding = true;
        flight.retry_at = None;
        Some((flight.id, flight.batch.clone()))
    }

    /// The next frame to send, and on which session.
    pub fn poll_transmit(&mut self) -> Option<(SessionId, Frame)> {
        if let Some(out) = self.transmit.pop_front() {
            return Some(out);
        }
        for index in 0..self.peers.len() {
            if let Some(out) = self.pump(index) {
                return Some(out);
            }
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Core::handle`] with [`Input::Tick`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at: Vec<Instant> = self.peers.iter().filter_map(|p| p.poll_timeout()).collect();
        at.extend(
            self.peers
                .iter()
                .filter_map(|p| p.tests.as_ref().map(|t| t.cadence.next_wake())),
        );
        at.extend(self.tracker.next_due(self.now));
        at.extend(self.in_flight.as_ref().and_then(|f| f.retry_at));
        at.push(self.next_checkpoint);
        at.into_iter().min()
    }

    /// Deadline obligations watched in memory and not decided yet.
    pub fn open_deadlines(&self) -> usize {
        self.tracker.open()
    }

    /// Messages whose deadlines are watched in memory now, and at most since the start.
    pub fn deadlines_watched(&self) -> (usize, usize) {
        self.tracker.watched()
    }

    /// Deadline groups with messages waiting in the store.
    pub fn deadline_groups_spilled(&self) -> usize {
        self.tracker.spilled()
    }

    /// Envelopes staged and not yet handed out for commit.
    pub fn staged_messages(&self) -> usize {
        self.staging.batch.messages.len()
    }

    fn peer_index(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name == name)
    }

    fn jitter(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }

    fn event(&mut self, event: Event) {
        if self.events.len() < EVENTS_MAX {
            self.events.push_back(event);
        }
    }

    fn frame(&mut self, session: SessionId, frame: Frame) {
        if self.transmit.len() < CONTROL_FRAMES_MAX {
            self.transmit.push_back((session, frame));
        }
    }

    /// Release `event` once the staged batch is durable.
    fn release_event(&mut self, event: Event) {
        self.staging.releases.push(Release::Event(event));
    }

    fn release_frame(&mut self, session: SessionId, frame: Frame) {
        self.staging
            .releases
            .push(Release::Frame { session, frame });
    }

    /// Whether new work must be refused: a commit is failing, or too much waits.
    fn busy(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| f.retry_at.is_some())
            || self.staging.batch.messages.len() >= STAGED_MESSAGES_MAX
    }

    fn on_command(&mut self, ticket: Ticket, command: Command) {
        if self.busy() {
            let result = Err(CommandError::Busy {
                retry_after_ms: COMMIT_RETRY_MS,
            });
            self.event(Event::Answer { ticket, result });
            return;
        }
        let result = match command {
            Command::Send(message) => {
                let (peer, sent, body) = message.into_parts();
                self.command_send(&peer, sent, body)
            }
            Command::SendBatch {
                messages,
                idempotency,
            } => self.command_send_batch(messages, idempotency),
            Command::Answer {
                peer,
                of,
                level,
                note,
            } => self.command_answer(&peer, of, level, note),
            Command::Checkpoint { peer } => self.command_checkpoint(&peer),
            Command::SetDeadlines { deadlines } => self.command_deadlines(deadlines),
            Command::Glossary { row } => self.command_glossary(row),
            Command::AddPeer { peer } => self.command_add_peer(peer),
        };
        let answer = Event::Answer { ticket, result };
        if bugs::is(self.bug, PlantedBug::AnswerBeforeCommit) {
            self.event(answer);
        } else {
            self.release_event(answer);
        }
    }

    fn command_send(&mut self, peer: &str, sent: Sent, body: Body) -> Result<Answer, CommandError> {
        let index = self
            .peer_index(peer)
            .ok_or_else(|| CommandError::UnknownPeer(peer.to_string()))?;
        self.check_operator_body(&body)?;
        let (id, seq) = self.stage_send(index, sent, body)?;
        Ok(Answer::Sent { id, seq })
    }

    /// What the peer would refuse is refused here, before anything is signed.
    fn check_operator_body(&self, body: &Body) -> Result<(), CommandError> {
        if !matches!(body, Body::Text(_) | Body::Notification(_)) {
            return Err(CommandError::Invalid(
                "operators send texts and notifications".into(),
            ));
        }
        if let Body::Notification(n) = body {
            let created = self.wall_ms.max(0) as u64;
            check_notification(n, created).map_err(|e| CommandError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// See [`Command::SendBatch`]: check and sign everything, then stage everything.
    fn command_send_batch(
        &mut self,
        messages: Vec<Outgoing>,
        idempotency: Option<IdempotencyRow>,
    ) -> Result<Answer, CommandError> {
        if messages.len() > SEND_BATCH_MESSAGES_MAX {
            return Err(CommandError::Invalid(format!(
                "at most {SEND_BATCH_MESSAGES_MAX} messages per batch"
            )));
        }
        if self.staging.batch.messages.len() + messages.len() > STAGED_MESSAGES_MAX {
            return Err(CommandError::Busy {
                retry_after_ms: COMMIT_RETRY_MS,
            });
        }
        let signed = self.sign_batch(messages)?;
        let records: Vec<SentRecord> = signed
            .iter()
            .map(|(_, v)| SentRecord {
                id: v.id().0,
                seq: v.envelope().seq,
                precedence: v.envelope().precedence as u8,
            })
            .collect();
        let sent: Vec<(MessageId, u64)> = signed
            .into_iter()
            .map(|(index, verified)| self.stage_signed(index, verified))
            .collect();
        if let Some(mut row) = idempotency {
            row.sent = records;
            let expired_before = row.created_at_ms.saturating_sub(IDEMPOTENCY_KEY_TTL_MS);
            self.staging.batch.idempotency_expired_before_ms = Some(expired_before);
            self.staging.batch.idempotency.push(row);
        }
        Ok(Answer::SentBatch { sent })
    }

    /// Sign every message of a batch at the `seq` it will have, changing nothing: the first
    /// refusal refuses the whole batch.
    fn sign_batch(
        &self,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<(usize, detente_proto::VerifiedEnvelope)>, CommandError> {
        // Per peer index: the next seq and the last id, as the batch advances them.
        let mut heads: std::collections::BTreeMap<usize, (u64, MessageId)> = Default::default();
        let mut signed = Vec::with_capacity(messages.len());
        let mut bytes = 0usize;
        for m in messages {
            let (peer, sent, body) = m.into_parts();
            let index = self
                .peer_index(&peer)
                .ok_or(CommandError::UnknownPeer(peer))?;
            self.check_operator_body(&body)?;
            let cursor = self.peers[index].out.cursor;
            let at = *heads
                .entry(index)
                .or_insert((cursor.next_seq, cursor.last_id));
            let verified = self.sign_own(index, sent, body, at)?;
            bytes += verified.bytes().len();
            if bytes > SEND_BATCH_BYTES_MAX {
                return Err(CommandError::Invalid(format!(
                    "the batch is larger than {SEND_BATCH_BYTES_MAX} bytes signed"
                )));
            }
            heads.insert(index, (at.0 + 1, verified.id()));
            signed.push((index, verified));
        }
        Ok(signed)
    }

    /// Pin a peer at run time: a new channel with empty streams (a peer already known by
    /// name or key is refused, so a pin can never silently replace another).
    fn command_add_peer(&mut self, config: PeerConfig) -> Result<Answer, CommandError> {
        if config.key == self.me {
            return Err(CommandError::Invalid("that is this node's own key".into()));
        }
        if let Some(p) = self
            .peers
            .iter()
            .find(|p| p.name == config.name || p.key == config.key)
        {
            return Err(CommandError::Invalid(format!(
                "peer {:?} is already pinned with that name or key",
                p.name
            )));
        }
        if self.peers.len() >= PEERS_MAX {
            return Err(CommandError::Invalid(format!("at most {PEERS_MAX} peers")));
        }
        let peer = Peer::new(&config, &self.me, self.link, self.now);
        self.peers.push(peer);
        Ok(Answer::Done)
    }

    /// Seal the staged work into the in-flight batch: DELIVERED receipts for what was
    /// received, stream states, and the `Ack`s that wait for it.
    fn seal(&mut self) {
        for index in 0..self.peers.len() {
            self.stage_delivered(index);
        }
        let mut marks = Vec::new();
        for index in 0..self.peers.len() {
            let p = &mut self.peers[index];
            if p.touched {
                p.touched = false;
                p.stage_streams(&mut self.staging.batch, &self.me);
                marks.push((index, p.out.cursor.hwm(), *p.inb.cursor));
            }
            if let Some(s) = p.session.as_mut().filter(|s| s.ack_due) {
                s.ack_due = false;
                let frame = Frame::Ack {
                    hwm: p.inb.cursor.hwm(),
                    received: s.received,
                };
                let session = s.id;
                self.staging
                    .releases
                    .push(Release::Frame { session, frame });
            }
        }
        if self.staging.batch.is_empty() && self.staging.releases.is_empty() {
            return;
        }
        self.tracker.sealed();
        let staging = std::mem::take(&mut self.staging);
        let id = self.next_batch;
        self.next_batch += 1;
        self.in_flight = Some(InFlight {
            id,
            batch: staging.batch,
            releases: staging.releases,
            marks,
            outstanding: false,
            retry_at: None,
        });
    }

    fn on_committed(&mut self, batch: BatchId) {
        let Some(flight) = self.in_flight.take_if(|f| f.id == batch && f.outstanding) else {
            return;
        };
        for (index, out_hwm, cursor) in flight.marks {
            let p = &mut self.peers[index];
            p.out_durable = p.out_durable.max(out_hwm);
            p.inb_durable = cursor;
            if let Some(s) = p.session.as_mut().and_then(|s| s.sched.as_mut()) {
                for precedence in Precedence::ALL {
                    s.on_written(precedence);
                }
            }
        }
        for release in flight.releases {
            match release {
                Release::Event(e) => self.event(e),
                Release::Frame { session, frame } => {
                    if self.session_peer(session).is_some() {
                        self.frame(session, frame);
                    }
                }
            }
        }
    }

    fn on_commit_failed(&mut self, batch: BatchId, _error: &str) {
        if let Some(f) = self.in_flight.as_mut().filter(|f| f.id == batch) {
            f.outstanding = false;
            f.retry_at = Some(self.now + Duration::from_millis(COMMIT_RETRY_MS));
        }
    }

    fn on_tick(&mut self) {
        let now = self.now;
        for index in 0..self.peers.len() {
            self.tick_link(index);
            self.tick_link_test(index);
        }
        for (peer, id, need) in self.tracker.poll_overdue(now) {
            self.decide(peer, id, need, Decision::Missed);
        }
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + self.checkpoint_interval;
            for index in 0..self.peers.len() {
                self.auto_checkpoint(index);
            }
        } else if self.checkpoint_every > 0 {
            for index in 0..self.peers.len() {
                if self.peers[index].unsigned >= self.checkpoint_every {
                    self.auto_checkpoint(index);
                }
            }
        }
    }

    /// Why nothing more is sent to `peer`, if sending was stopped (for status).
    pub fn sending_stopped(&self, peer: &str) -> Option<&str> {
        let index = self.peer_index(peer)?;
        self.peers[index].sending_stopped.as_deref()
    }

    /// The link supervision of the channel with `peer` (state, round trip, last heard),
    /// and whether a session is up, for status pages.
    pub fn link(&self, peer: &str) -> Option<(&detente_proto::LinkSupervisor, bool)> {
        let index = self.peer_index(peer)?;
        let p = &self.peers[index];
        Some((&p.link, p.session.is_some()))
    }

    /// A signed checkpoint this node stored for the channel with `peer` (for tests).
    pub fn checkpoints(&self, peer: &str) -> &[SignedCheckpoint] {
        self.peer_index(peer)
            .map_or(&[], |i| self.peers[i].checkpoints.as_slice())
    }
}

/// Whether a frame (type byte and body) is an `Envelope` frame.
pub fn is_envelope_frame(frame: &[u8]) -> bool {
    frame.first() == Some(&detente_proto::frame::ENVELOPE)
}

/// Of frames read together from one session, the FLASH and IMMEDIATE envelope frames a
/// driver may hand to the core ahead of the others (those before the first frame that is
/// not an envelope; none if `blocked`, when an earlier frame of the session is held back),
/// and the rest in order. Acceptance does not depend on the order envelopes arrive in (one
/// ahead of a gap is held, then promoted); other frames are never overtaken.
pub fn split_urgent(frames: Vec<Vec<u8>>, blocked: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    // How many frames lead before the first that is not an envelope: only those may go.
    let open = if blocked {
        0
    } else {
        frames
            .iter()
            .position(|f| !is_envelope_frame(f))
            .unwrap_or(frames.len())
    };
    let urgent = |f: &Vec<u8>| {
        detente_proto::envelope::peek_precedence(&f[1..])
            .is_some_and(|p| p <= detente_proto::Precedence::Immediate)
    };
    // The common case, nothing urgent: the frames as they came, nothing copied.
    if !frames[..open].iter().any(urgent) {
        return (Vec::new(), frames);
    }
    let mut first = Vec::new();
    let mut rest = Vec::with_capacity(frames.len());
    for (i, frame) in frames.into_iter().enumerate() {
        if i < open && urgent(&frame) {
            first.push(frame);
        } else {
            rest.push(frame);
        }
    }
    (first, rest)
}

#[cfg(test)]
mod urgent_tests {
    fn envelope_frame(precedence: detente_proto::Precedence, seq: u64) -> Vec<u8> {
        let secret = detente_proto::PartySecret::from_seed([5; 32]);
        let other = detente_proto::PartySecret::from_seed([6; 32]).public();
        let envelope = detente_proto::Envelope {
            channel: detente_proto::ChannelId::for_pair(&secret.public(), &other),
            sender: secret.public(),
            seq,
            prev: if seq == 1 {
                detente_proto::MessageId::ZERO
            } else {
                detente_proto::MessageId([seq as u8; 32])
            },
            created_at_ms: 1,
            precedence,
            topic: "t".into(),
            author: "a".into(),
            in_reply_to: None,
            body: detente_proto::Body::Text(detente_proto::TextBody {
                language: "en".into(),
                text: "x".into(),
                translations: Vec::new(),
            }),
        };
        let v = detente_proto::VerifiedEnvelope::sign(envelope, &secret).unwrap();
        let mut out = Vec::new();
        detente_proto::Frame::Envelope(v.bytes().to_vec()).encode(&mut out);
        out[4..].to_vec()
    }

    #[test]
    fn urgent_envelopes_overtake_envelopes_only() {
        use detente_proto::Precedence::{Flash, Immediate, Priority, Routine};
        let ack = {
            let mut out = Vec::new();
            detente_proto::Frame::Ack {
                hwm: 1,
                received: 1,
            }
            .encode(&mut out);
            out[4..].to_vec()
        };
        let (r1, f2, i3, p4, f5) = (
            envelope_frame(Routine, 1),
            envelope_frame(Flash, 2),
            envelope_frame(Immediate, 3),
            envelope_frame(Priority, 4),
            envelope_frame(Flash, 5),
        );
        let frames = vec![
            r1.clone(),
            f2.clone(),
            i3.clone(),
            p4.clone(),
            ack.clone(),
            f5.clone(),
        ];
        let (urgent, rest) = super::split_urgent(frames.clone(), false);
        assert_eq!(urgent, vec![f2.clone(), i3.clone()]);
        // The FLASH after the Ack keeps its place behind it.
        assert_eq!(rest, vec![r1.clone(), p4, ack, f5]);
        // A session with a held-back control frame: nothing overtakes it.
        let (urgent, rest) = super::split_urgent(frames.clone(), true);
        assert!(urgent.is_empty());
        assert_eq!(rest, frames);
        // Bytes that only look like an envelope frame are not urgent.
        let (urgent, _) =
            super::split_urgent(vec![vec![detente_proto::frame::ENVELOPE, 0xff]], false);
        assert!(urgent.is_empty());
    }
}
