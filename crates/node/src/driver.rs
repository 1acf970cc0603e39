//! The driver: one tokio task that owns one [`detente_core::Core`] and does its I/O
//! (issue 11, phase 2). [`crate::Node::start`] runs it when the node's engine is `core`
//! ([`crate::engine`]); the writer, link, deadline and charter tasks run the node otherwise,
//! until the core does everything they do.
//!
//! Inputs arrive on one bounded channel ([`DriverHandle`]): operator commands (each with
//! its reply), sessions opened and closed, dials that failed, frames read from a session.
//! After each wake-up the driver drains the core:
//! - `poll_commit` → [`Store::commit`] on a future the loop polls; its result goes back as
//!   `Committed` / `CommitFailed`. One batch is in flight at a time, and everything that
//!   arrived meanwhile is staged in the core and forms the next batch (group commit).
//! - `poll_query` → a deadline query ([`Store::deadline_due`], [`Store::deadline_state`])
//!   in the same slot, before the next commit; its rows go back as `DeadlineRows` (the
//!   core reads the deadlines beyond its memory from the store this way).
//! - `poll_transmit` → the session's writer channel (bounded; a session whose peer stops
//!   reading is closed rather than let it stall the core).
//! - `poll_event` → the reply waiting for a ticket, a dial through the [`Dialer`], a session
//!   closed, everything else on a broadcast channel (lossy for a slow listener, never
//!   blocking).
//! - `poll_timeout` → the sleep.
//!
//! **A store that keeps failing** (a full disk, a lost database): the core retries a failed
//! commit after a pause and holds what waits on it. After
//! [`COMMIT_FAILURES_BEFORE_RELOAD`] failures in a row the driver gives that work up
//! instead of holding it without end: every waiting command is answered with the store's
//! error (none of it was stored), the sessions are closed, and a fresh core is rebuilt from
//! what the store holds ([`Reload`]), retried every [`RELOAD_RETRY`] while the store cannot
//! be read. Meanwhile every command is answered with that error at once. So an operator
//! gets a 503 within a second, and the node resumes by itself once the store works.
//!
//! Session tasks ([`run_session`]) only move length-prefixed, byte-bounded frames between a
//! byte stream (TLS in the node, an in-memory pipe in tests) and the driver.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fetch::FetchAsked;
use detente_core::{
    Answer, BatchId, Command, CommandError, Core, DeadlineQuery, Event, Input, SessionId, Ticket,
};
use detente_proto::frame::FRAME_BYTES_MAX;
use detente_proto::Frame;
use detente_store::{Store, StoreError};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Inputs queued for the driver at most (senders wait: backpressure).
pub const DRIVER_INPUTS_MAX: usize = 4096;
/// Inputs handed to the core between two drains at most (so a flood of frames cannot
/// starve commits and timers).
pub const DRIVER_INPUTS_PER_WAKE_MAX: usize = 1024;
/// Frames queued for one session's writer at most; beyond, the session is closed.
pub const SESSION_FRAMES_MAX: usize = 4096;
/// Events kept for slow listeners of [`Driver::events`].
pub const DRIVER_EVENTS_BACKLOG_MAX: usize = 4096;
/// How long one frame's write may take before the session is ended (the peer stopped
/// reading, or the path is black-holed).
pub const SESSION_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session whose peer stopped sending may still write what is queued for it.
const SESSION_FLUSH: Duration = Duration::from_secs(1);
/// Frames handed to the driver in one input at most: what had already arrived after the
/// first (the core checks the envelopes among them in one signature batch).
pub const FRAMES_PER_INPUT_MAX: usize = 128;
/// Bytes of frames in one input at most (one frame alone may be larger), and of frames written to
/// the connection in one write (one TLS record holds up to 16 KiB: many small frames share
/// one instead of a record and a write each).
pub const FRAMES_BATCH_BYTES: usize = 64 * 1024;
/// The read buffer of a session: frames that arrived together are taken from it at once.
const SESSION_READ_BUFFER: usize = 64 * 1024;
/// When the core asks for no timer, look again after this long.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Failed commits in a row after which the waiting work is given up and the core rebuilt
/// from the store (the core pauses [`detente_core::COMMIT_RETRY_MS`] between attempts).
pub const COMMIT_FAILURES_BEFORE_RELOAD: u32 = 3;
/// How often a rebuild from a store that cannot be read is tried again.
pub const RELOAD_RETRY: Duration = Duration::from_secs(1);
/// Inputs of frames held back at most while the batch holding an urgent envelope is open
/// (see [`Driver::on_frames`]); beyond, the driver reads no more inputs until it is sealed.
pub const DEFERRED_INPUTS_MAX: usize = 64;
/// A command while the store is failing tries it at once, at most this often.
const RELOAD_EAGER_SPACING: Duration = Duration::from_millis(10);

/// What a session task or an operator hands to the driver.
#[derive(Debug)]
pub enum DriverInput {
    /// Boxed: frames are the common input, and a queued input costs its largest variant.
    Command {
        command: Box<Command>,
        reply: Reply,
    },
    /// A session with `peer` is up; frames for it go to `writer`.
    SessionOpened {
        peer: String,
        session: SessionId,
        writer: mpsc::Sender<Frame>,
        /// This node dialed the connection (else it accepted it).
        dialed_by_us: bool,
    },
    SessionClosed {
        session: SessionId,
    },
    DialFailed {
        peer: String,
    },
    /// Frames read from `session` one after the other (type byte and body each): what had
    /// arrived together, at most [`FRAMES_PER_INPUT_MAX`] and [`FRAMES_BATCH_BYTES`].
    Frames {
        session: SessionId,
        frames: Vec<Vec<u8>>,
    },
    /// The answer to the session's `Fetch` ([`Event::Fetch`]) was sent (or given up).
    FetchAnswered {
        session: SessionId,
    },
}

/// Why a command got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The store failed; nothing of the command was stored. Remedy: the text says what the
    /// store reported (free disk space, restore the database); then retry.
    #[error("{0}; nothing of it was stored, retry")]
    Store(String),
    #[error("the node is shutting down")]
    Stopped,
}

/// Queue inputs for the driver; cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<DriverInput>,
    sessions: Arc<AtomicU64>,
}

impl DriverHandle {
    /// Run an operator command; the answer comes once what it stored is durable.
    pub async fn command(&self, command: Command) -> Result<Answer, DriverError> {
        let (reply, rx) = oneshot::channel();
        let command = Box::new(command);
        self.input(DriverInput::Command { command, reply }).await?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }

    pub async fn input(&self, input: DriverInput) -> Result<(), DriverError> {
        self.tx.send(input).await.map_err(|_| DriverError::Stopped)
    }

    /// A fresh session number (unique for this driver).
    pub fn new_session(&self) -> SessionId {
        self.sessions.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Opens connections when the core asks for them. `dial` must return at once: it spawns
/// the attempt, which ends in [`run_session`] or [`DriverInput::DialFailed`].
pub trait Dialer: Send + 'static {
    fn dial(&self, peer: &str, address: usize, driver: DriverHandle);
}

/// Clocks as the core takes them.
fn wall_ms() -> i64 {
    crate::now_ms() as i64
}

/// What the store slot finished: a commit, or a deadline query (the core asks one only
/// while no batch is in flight, and seals none until it is answered).
enum Done {
    Commit(BatchId, Result<(), StoreError>),
    Query(
        u64,
        Result<Vec<detente_store::DeadlineCandidate>, StoreError>,
    ),
}

type CommitFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Builds a fresh core from what the store holds now (see the module documentation).
pub type Reload =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<Core, String>> + Send>> + Send>;

type Reply = oneshot::Sender<Result<Answer, DriverError>>;

/// Called with the core after every wake-up, to publish what status pages show (link
/// state, round trips). Must be quick and must not block.
pub type Observer = Box<dyn FnMut(&Core) + Send>;

/// The task state. See the module documentation.
pub struct Driver<S: Store, D: Dialer> {
    core: Core,
    store: Arc<S>,
    dialer: D,
    sessions: HashMap<SessionId, mpsc::Sender<Frame>>,
    replies: HashMap<Ticket, Reply>,
    next_ticket: Ticket,
    events: broadcast::Sender<Event>,
    rx: mpsc::Receiver<DriverInput>,
    /// To hand the dialer a handle without keeping the input channel open ourselves.
    weak: mpsc::WeakSender<DriverInput>,
    session_ids: Arc<AtomicU64>,
    commit: Option<CommitFuture>,
    observer: Option<Observer>,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    reload: Option<Reload>,
    /// Failed commits in a row.
    failures: u32,
    /// What the store said last, until a commit succeeds.
    last_failure: Option<String>,
    /// Set while the core was given up and no rebuild has worked yet: when to try again.
    down: Option<Instant>,
    /// When a command last made the driver try the failing store at once.
    last_eager: Option<Instant>,
    /// A FLASH or IMMEDIATE envelope is staged in the open batch: frames that arrive now
    /// wait in `deferred` until that batch is sealed, so that it stays small and commits
    /// fast (the tasks engine's urgent lane does the same with a separate transaction).
    urgent_open: bool,
    /// Inputs of frames held back meanwhile, in the order they came (at most
    /// [`DEFERRED_INPUTS_MAX`]).
    deferred: std::collections::VecDeque<(SessionId, Vec<Vec<u8>>)>,
    /// Sessions with a held-back frame other than an envelope: no later frame of theirs
    /// is taken ahead of it.
    held_control: std::collections::HashSet<SessionId>,
}

/// Start the driver task over `core` (recovered from `store`, see [`crate::snapshot`]).
pub fn start<S: Store, D: Dialer>(
    core: Core,
    store: Arc<S>,
    dialer: D,
) -> (
    DriverHandle,
    broadcast::Sender<Event>,
    tokio::task::JoinHandle<()>,
) {
    start_with(core, store, dialer, DriverOptions::default())
}

/// How a driver runs besides its core, store and dialer.
#[derive(Default)]
pub struct DriverOptions {
    /// Called after every wake-up.
    pub observer: Option<Observer>,
    /// The driver stops when this turns true (finishing the commit in flight), even while
    /// handles to it are still held.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    /// How to rebuild the core when commits keep failing; without one, the core's own retry
    /// holds the waiting work until a commit succeeds.
    pub reload: Option<Reload>,
}

/// [`start`], with [`DriverOptions`].
pub fn start_with<S: Store, D: Dialer>(
    core: Core,
    store: Arc<S>,
    dialer: D,
    options: DriverOptions,
) -> (
    DriverHandle,
    broadcast::Sender<Event>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(DRIVER_INPUTS_MAX);
    let sessions = Arc::new(AtomicU64::new(0));
    let events = broadcast::channel(DRIVER_EVENTS_BACKLOG_MAX).0;
    let driver = Driver {
        core,
        store,
        dialer,
        sessions: HashMap::new(),
        replies: HashMap::new(),
        next_ticket: 0,
        events: events.clone(),
        weak: tx.downgrade(),
        rx,
        session_ids: sessions.clone(),
        commit: None,
        observer: options.observer,
        shutdown: options.shutdown,
        reload: options.reload,
        failures: 0,
        last_failure: None,
        down: None,
        last_eager: None,
        urgent_open: false,
        deferred: std::collections::VecDeque::new(),
        held_control: std::collections::HashSet::new(),
    };
    let task = tokio::spawn(driver.run());
    (DriverHandle { tx, sessions }, events, task)
}

impl<S: Store, D: Dialer> Driver<S, D> {
    async fn run(mut self) {
        loop {
            if self.down.is_none() {
                self.drain();
            }
            if let Some(observe) = self.observer.as_mut() {
                observe(&self.core);
            }
            let wake = match self.down {
                Some(at) => at,
                None => self
                    .core
                    .poll_timeout()
                    .unwrap_or_else(|| Instant::now() + IDLE_WAKE),
            };
            tokio::select! {
                done = next_commit(&mut self.commit), if self.commit.is_some() => {
                    self.commit = None;
                    match done {
                        Done::Commit(batch, Ok(())) => {
                            self.failures = 0;
                            self.last_failure = None;
                            self.handle(Input::Committed { batch });
                        }
                        Done::Commit(batch, Err(e)) => self.on_commit_failed(batch, e).await,
                        Done::Query(query, rows) => {
                            if let Err(e) = &rows {
                                tracing::warn!("deadline query failed: {e}");
                            }
                            let rows = rows.map_err(|e| e.to_string());
                            self.handle(Input::DeadlineRows { query, rows });
                        }
                    }
                }
                input = self.rx.recv(), if self.deferred.len() < DEFERRED_INPUTS_MAX => {
                    let Some(input) = input else { break };
                    if self.down.is_some() && matches!(input, DriverInput::Command { .. }) {
                        self.rebuild_eagerly().await;
                    }
                    self.on_input(input);
                    // Everything already queued joins this wake-up (and so the next batch).
                    for _ in 1..DRIVER_INPUTS_PER_WAKE_MAX {
                        if self.deferred.len() >= DEFERRED_INPUTS_MAX {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(input) => self.on_input(input),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if self.down.is_some() {
                        self.rebuild().await;
                    } else {
                        self.handle(Input::Tick);
                    }
                }
                () = stopped(&mut self.shutdown) => break,
            }
        }
        // Shutting down: a commit in flight is finished, so its answers are not lost.
        if let Some(f) = self.commit.take() {
            if let Done::Commit(batch, Ok(())) = f.await {
                self.handle(Input::Committed { batch });
                self.drain();
            }
        }
    }

    fn handle(&mut self, input: Input) {
        self.core.handle(Instant::now(), wall_ms(), input);
    }

    /// A commit failed: let the core retry it, or, after too many failures in a row, give
    /// up the waiting work and rebuild the core from the store.
    async fn on_commit_failed(&mut self, batch: BatchId, e: StoreError) {
        self.failures += 1;
        let error = e.to_string();
        tracing::warn!(failures = self.failures, "commit failed: {error}");
        self.last_failure = Some(error.clone());
        if self.reload.is_none() || self.failures < COMMIT_FAILURES_BEFORE_RELOAD {
            self.handle(Input::CommitFailed { batch, error });
            return;
        }
        // Nothing the core staged is durable, and the core that staged it is dropped: so
        // every waiting command is truthfully answered "not stored".
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(DriverError::Store(error.clone())));
        }
        // Frames held back for the urgent batch go with the sessions they came on.
        self.urgent_open = false;
        self.deferred.clear();
        self.held_control.clear();
        let sessions: Vec<SessionId> = self.sessions.drain().map(|(s, _)| s).collect();
        for session in sessions {
            // So that the old core's link view (status pages) shows the link down.
            self.handle(Input::SessionClosed { session });
        }
        tracing::error!(
            "{} commits failed in a row; the waiting work was refused and the node \
             rebuilds its state from the store",
            self.failures
        );
        self.down = Some(Instant::now());
        self.rebuild().await;
    }

    /// Replace the core with one rebuilt from the store; on failure, try again later.
    async fn rebuild(&mut self) {
        let Some(reload) = self.reload.as_mut() else {
            self.down = None;
            return;
        };
        match reload().await {
            Ok(core) => {
                self.core = core;
                self.down = None;
                self.failures = 0;
                tracing::info!("the node's state was rebuilt from the store");
            }
            Err(e) => {
                tracing::warn!("cannot rebuild from the store yet: {e}");
                self.last_failure.get_or_insert(e);
                self.down = Some(Instant::now() + RELOAD_RETRY);
            }
        }
    }

    /// A command came while the store was failing: try the store at once rather than at
    /// the next retry, so that the first command after the database is back succeeds
    /// (not one a second later). At most one try per [`RELOAD_EAGER_SPACING`].
    async fn rebuild_eagerly(&mut self) {
        let now = Instant::now();
        if self
            .last_eager
            .is_some_and(|at| now.duration_since(at) < RELOAD_EAGER_SPACING)
        {
            return;
        }
        self.last_eager = Some(now);
        self.rebuild().await;
    }

    /// What a command is told while the store is failing.
    fn store_failing(&self) -> DriverError {
        let text = self
            .last_failure
            .as_deref()
            .unwrap_or("the store is failing");
        DriverError::Store(text.to_string())
    }

    fn on_input(&mut self, input: DriverInput) {
        if self.down.is_some() {
            match input {
                DriverInput::Command { reply, .. } => {
                    let _ = reply.send(Err(self.store_failing()));
                }
                // Dropping the writer ends the session: the core that would run it is gone.
                DriverInput::SessionOpened { .. } => {}
                DriverInput::SessionClosed { session } => {
                    self.sessions.remove(&session);
                }
                DriverInput::DialFailed { .. }
                | DriverInput::Frames { .. }
                | DriverInput::FetchAnswered { .. } => {}
            }
            return;
        }
        let input = match input {
            DriverInput::Command { command, reply } => {
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                self.replies.insert(ticket, reply);
                Input::Operator {
                    ticket,
                    command: *command,
                }
            }
            DriverInput::SessionOpened {
                peer,
                session,
                writer,
                dialed_by_us,
            } => {
                self.sessions.insert(session, writer);
                Input::SessionOpened {
                    peer,
                    session,
                    dialed_by_us,
                }
            }
            DriverInput::SessionClosed { session } => {
                self.sessions.remove(&session);
                Input::SessionClosed { session }
            }
            DriverInput::DialFailed { peer } => Input::DialFailed { peer },
            DriverInput::Frames { session, frames } => return self.on_frames(session, frames),
            DriverInput::FetchAnswered { session } => Input::FetchAnswered { session },
        };
        self.handle(input);
    }

    /// Frames read from a session. FLASH and IMMEDIATE envelopes go to the core ahead of
    /// the envelopes that arrived with or after them, and what comes while the batch holding
    /// them is open waits until it is sealed: an urgent envelope is committed (and its
    /// DELIVERED receipt sent) after one small batch, not behind a window of ROUTINE ones.
    /// Only envelopes are overtaken, never another frame of the session (a Hello, an Ack,
    /// terms): stream acceptance does not depend on the order envelopes arrive in (one ahead
    /// of a gap is held, then promoted), and the sender sends urgent ones first anyway.
    fn on_frames(&mut self, session: SessionId, frames: Vec<Vec<u8>>) {
        let (urgent, rest) =
            detente_core::split_urgent(frames, self.held_control.contains(&session));
        if !urgent.is_empty() {
            // One frame alone costs what Input::Frame does: a batch of one is checked alone.
            self.handle(Input::Frames {
                session,
                frames: urgent,
            });
            self.urgent_open = true;
        }
        if rest.is_empty() {
            return;
        }
        if self.urgent_open {
            if rest.iter().any(|f| !detente_core::is_envelope_frame(f)) {
                self.held_control.insert(session);
            }
            self.deferred.push_back((session, rest));
        } else {
            self.handle(Input::Frames {
                session,
                frames: rest,
            });
        }
    }

    /// The batch holding the urgent envelopes was sealed: what waited goes to the core, in
    /// the order it came (and may open another urgent batch).
    fn release_deferred(&mut self) {
        self.urgent_open = false;
        self.held_control.clear();
        let waiting = std::mem::take(&mut self.deferred);
        for (session, frames) in waiting {
            self.on_frames(session, frames);
        }
    }

    /// Take everything the core has to say, and act on it.
    fn drain(&mut self) {
        loop {
            let mut moved = false;
            let mut sealed = false;
            if self.commit.is_none() {
                if let Some((query, asked)) = self.core.poll_query() {
                    let store = self.store.clone();
                    self.commit = Some(Box::pin(async move {
                        Done::Query(query, deadline_rows(&*store, asked).await)
                    }));
                    moved = true;
                }
            }
            if self.commit.is_none() {
                if let Some((batch, mut rows)) = self.core.poll_commit() {
                    let store = self.store.clone();
                    let checkpoints = !rows.checkpoints.is_empty();
                    if checkpoints {
                        crate::writer::failpoint("checkpoint-before-commit");
                    }
                    let sends = crate::writer::carries_send_batch(&rows);
                    if sends {
                        crate::writer::failpoint("send-batch-before-commit");
                    }
                    let fill: Vec<_> = rows
                        .evidence_to_fill()
                        .into_iter()
                        .filter_map(|(i, channel, seq)| {
                            let key = self.core.peer_key(&rows.evidence[i].peer)?;
                            Some((i, channel, *key.as_bytes(), seq))
                        })
                        .collect();
                    self.commit = Some(Box::pin(async move {
                        // Our copy of an equivocated envelope, for the evidence.
                        for (i, channel, sender, seq) in fill {
                            match store.message_at(channel, sender, seq).await {
                                Ok(Some(row)) => rows.evidence[i].first = row.bytes,
                                Ok(None) => {}
                                Err(e) => return Done::Commit(batch, Err(e)),
                            }
                        }
                        let result = store.commit(rows).await;
                        if checkpoints && result.is_ok() {
                            // Stored, and not yet sent to the peer.
                            crate::writer::failpoint("checkpoint-after-commit");
                        }
                        if sends && result.is_ok() {
                            // Durable, and nobody answered yet.
                            crate::writer::failpoint("send-batch-after-commit");
                        }
                        Done::Commit(batch, result)
                    }));
                    moved = true;
                    sealed = true;
                }
            }
            // The urgent batch is sealed, or there is nothing to wait for (what was urgent
            // staged nothing, or nothing is committing and the core holds its seal).
            if self.urgent_open && (sealed || self.commit.is_none()) {
                self.release_deferred();
                moved = true;
            }
            while let Some((session, frame)) = self.core.poll_transmit() {
                moved = true;
                self.transmit(session, frame);
            }
            while let Some(event) = self.core.poll_event() {
                moved = true;
                self.on_event(event);
            }
            if !moved {
                return;
            }
        }
    }

    fn transmit(&mut self, session: SessionId, frame: Frame) {
        let Some(writer) = self.sessions.get(&session) else {
            return;
        };
        if writer.try_send(frame).is_err() {
            // The peer stopped reading (or the session ended): close it rather than wait.
            self.sessions.remove(&session);
            self.handle(Input::SessionClosed { session });
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Answer { ticket, result } => {
                if let Some(reply) = self.replies.remove(&ticket) {
                    let result = match result {
                        // Busy because a commit is failing: say what the store said.
                        Err(CommandError::Busy { .. }) if self.last_failure.is_some() => {
                            Err(self.store_failing())
                        }
                        other => other.map_err(DriverError::from),
                    };
                    let _ = reply.send(result);
                }
            }
            Event::Dial { peer, address } => match self.weak.upgrade() {
                Some(tx) => {
                    let handle = DriverHandle {
                        tx,
                        sessions: self.session_ids.clone(),
                    };
                    self.dialer.dial(&peer, address, handle);
                }
                None => self.handle(Input::DialFailed { peer }),
            },
            Event::CloseSession { session } => {
                // Dropping the writer ends the session task's write half, and so the session.
                self.sessions.remove(&session);
            }
            Event::Fetch {
                session,
                channel,
                sender,
                after,
                through,
                head,
            } => {
                let (Some(writer), Some(tx)) =
                    (self.sessions.get(&session).cloned(), self.weak.upgrade())
                else {
                    return self.handle(Input::FetchAnswered { session });
                };
                let store = self.store.clone();
                let asked = FetchAsked {
                    channel,
                    sender,
                    after,
                    through,
                    head,
                };
                // Off the driver's task: a read of up to FETCH_ANSWER_BYTES_MAX, one at a
                // time per session (the core waits for FetchAnswered).
                tokio::spawn(async move {
                    for frame in crate::fetch::answer(&*store, asked).await {
                        if writer.send(frame).await.is_err() {
                            break;
                        }
                    }
                    let _ = tx.send(DriverInput::FetchAnswered { session }).await;
                });
            }
            other => {
                let _ = self.events.send(other);
            }
        }
    }
}

/// The store's answer to a core's deadline query.
pub async fn deadline_rows<S: Store>(
    store: &S,
    asked: DeadlineQuery,
) -> Result<Vec<detente_store::DeadlineCandidate>, StoreError> {
    match asked {
        DeadlineQuery::Due {
            group,
            after,
            limit,
        } => store.deadline_due(&group, after, limit).await,
        DeadlineQuery::State { ids } => store.deadline_state(ids).await,
    }
}

/// Resolves once `shutdown` says so (never without one).
async fn stopped(shutdown: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match shutdown.as_mut() {
        Some(rx) => {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        None => std::future::pending().await,
    }
}

/// The commit in flight, when it finishes.
async fn next_commit(slot: &mut Option<CommitFuture>) -> Done {
    match slot.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Move the whole frames already in `reader`'s buffer to `frames`, without waiting for
/// more, within [`FRAMES_PER_INPUT_MAX`] frames and [`FRAMES_BATCH_BYTES`] in all (so an
/// input holds no more bytes than one frame of the largest size did before: the driver's
/// queue stays bounded in bytes as in count). A frame not whole in
/// the buffer, or a length prefix over the limit, is left for the next read, which waits
/// for it or refuses it.
fn take_buffered<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, frames: &mut Vec<Vec<u8>>) {
    let mut taken: usize = frames.iter().map(Vec::len).sum();
    while frames.len() < FRAMES_PER_INPUT_MAX {
        let buffer = reader.buffer();
        let Some(prefix) = buffer.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
            return;
        };
        let Ok(len) = Frame::check_len(u32::from_be_bytes(prefix)) else {
            return;
        };
        if taken + len > FRAMES_BATCH_BYTES {
            return;
        }
        let Some(bytes) = buffer.get(4..4 + len) else {
            return;
        };
        frames.push(bytes.to_vec());
        taken += len;
        reader.consume(4 + len);
    }
}

/// Move frames between one established byte stream and the driver until either side ends
/// it. Frames are length-prefixed and at most [`FRAME_BYTES_MAX`] bytes: a larger prefix
/// ends the session before anything is allocated for it, with a `Refuse` (protocol) as
/// its last frame. `dialed_by_us`: this node dialed the connection (it settles a crossing).
pub async fn run_session<R, W>(
    driver: DriverHandle,
    peer: String,
    dialed_by_us: bool,
    reader: R,
    mut writer: W,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let session = driver.new_session();
    let (tx, mut rx) = mpsc::channel::<Frame>(SESSION_FRAMES_MAX);
    // Weak: the session ends when the driver lets go of it, whatever the reader holds.
    let last_word = tx.downgrade();
    let opened = DriverInput::SessionOpened {
        peer,
        session,
        writer: tx,
        dialed_by_us,
    };
    if driver.input(opened).await.is_err() {
        return;
    }
    let write = async move {
        let mut out = Vec::new();
        while let Some(frame) = rx.recv().await {
            out.clear();
            frame.encode(&mut out);
            // Whatever else is queued goes in the same write, up to a bound.
            while out.len() < FRAMES_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(frame) => frame.encode(&mut out),
                    Err(_) => break,
                }
            }
            // A peer that stops reading cannot hold the session: a write that does not
            // finish in time ends it (the core redials and resends what is unconfirmed).
            let written = async {
                writer.write_all(&out).await?;
                writer.flush().await
            };
            match tokio::time::timeout(SESSION_WRITE_TIMEOUT, written).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let _ = tokio::time::timeout(SESSION_WRITE_TIMEOUT, writer.shutdown()).await;
    };
    let read_driver = driver.clone();
    let read = async move {
        let mut reader = BufReader::with_capacity(SESSION_READ_BUFFER, reader);
        let mut prefix = [0u8; 4];
        loop {
            if reader.read_exact(&mut prefix).await.is_err() {
                return;
            }
            let len = match Frame::check_len(u32::from_be_bytes(prefix)) {
                Ok(len) => len,
                Err(e) => {
                    let refuse = Frame::Refuse {
                        seq: 0,
                        code: detente_proto::RefuseCode::Protocol,
                        reason: e.to_string(),
                    };
                    if let Some(tx) = last_word.upgrade() {
                        let _ = tx.try_send(refuse);
                    }
                    return;
                }
            };
            debug_assert!(len <= FRAME_BYTES_MAX);
            let mut bytes = vec![0; len];
            if reader.read_exact(&mut bytes).await.is_err() {
                return;
            }
            let mut frames = vec![bytes];
            take_buffered(&mut reader, &mut frames);
            let input = DriverInput::Frames { session, frames };
            if read_driver.input(input).await.is_err() {
                return;
            }
        }
    };
    // Either half ending ends the session. When the reader ends it, what is queued for the
    // peer (a refusal among it) is still written, for a bounded time, once the driver has
    // let go of the session.
    tokio::pin!(write);
    let reader_ended = tokio::select! {
        () = &mut write => false,
        () = read => true,
    };
    let _ = driver.input(DriverInput::SessionClosed { session }).await;
    if reader_ended {
        let _ = tokio::time::timeout(SESSION_FLUSH, write).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend(std::iter::repeat_n(i as u8, len));
        }
        out
    }

    #[tokio::test]
    async fn only_whole_frames_within_the_bounds_are_taken_from_the_buffer() {
        // Three whole frames and the first half of a fourth.
        let mut bytes = framed(&[10, 20, 30, 40]);
        bytes.truncate(bytes.len() - 20);
        let mut reader = BufReader::with_capacity(SESSION_READ_BUFFER, &bytes[..]);
        reader.fill_buf().await.expect("fill");
        let mut frames = Vec::new();
        take_buffered(&mut reader, &mut frames);
        let lens: Vec<usize> = frames.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![10, 20, 30]);
        assert_eq!(frames[2], vec![2u8; 30]);
        assert_eq!(reader.buffer().len(), 4 + 20, "the partial frame is left");

        // The byte bound counts the frame already read: nothing more joins a large one.
        let bytes = framed(&[FRAMES_BATCH_BYTES / 2, 8]);
        let mut reader = BufReader::with_capacity(2 * FRAMES_BATCH_BYTES, &bytes[..]);
        reader.fill_buf().await.expect("fill");
        let mut frames = vec![vec![0u8; FRAMES_BATCH_BYTES / 2]];
        take_buffered(&mut reader, &mut frames);
        assert_eq!(frames.len(), 2, "half the bound and one more frame fit");
        let mut frames = vec![vec![0u8; FRAMES_BATCH_BYTES]];
        take_buffered(&mut reader, &mut frames);
        assert_eq!(frames.len(), 1, "a full input takes nothing more");

        // A length prefix over the limit is left for the next read to refuse.
        let bytes = (u32::MAX).to_be_bytes().to_vec();
        let mut reader = BufReader::new(&bytes[..]);
        reader.fill_buf().await.expect("fill");
        let mut frames = Vec::new();
        take_buffered(&mut reader, &mut frames);
        assert!(frames.is_empty());
        assert_eq!(reader.buffer().len(), 4);
    }
}
