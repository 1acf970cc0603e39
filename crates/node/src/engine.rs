//! What runs the node's channels. Two engines while the migration of issue 11 lasts:
//!
//! - **tasks** (the default): the [`crate::writer`], one [`crate::link`] task per peer, the
//!   [`crate::deadlines`] watch and the [`crate::charter`] watch, talking over channels;
//! - **core** (`engine = "core"` in `node.toml`): the sans-IO [`detente_core::Core`],
//!   recovered from the store by [`crate::snapshot`] and run by one [`crate::driver`] task.
//!   Sessions are TLS connections whose frames [`driver::run_session`] moves; everything
//!   the core decides reaches the rest of the node as events ([`pump`]).
//!
//! [`Engine`] is the one handle the service layer uses for commands, whichever engine runs.
//! Once the core engine passes every test the tasks do, the tasks are retired and this
//! module shrinks to the core's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use detente_core::{Answer, Command, CommandError, Core, Decision, Event as CoreEvent, Outgoing};
use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::{Body, ChannelId, PartyKey, PartySecret, Precedence, Receipt, ReceiptTarget};
use detente_store::{CheckpointPage, GlossaryRow, IdempotencyRow, Store};
use tokio::sync::broadcast;

use crate::config::NodeConfig;
use crate::driver::{self, DriverError, DriverHandle, DriverInput};
use crate::events::Event;
use crate::hooks::HookEvent;
use crate::peers::PeerTable;
use crate::snapshot::TamperedRow;
use crate::writer::{SendRequest, Sent, WriteError, WriterHandle};
use crate::{NodeStore, Shared};

/// Checkpoints read to find the one a checkpoint command just stored (the newest).
const CHECKPOINT_LOOKUP_ROWS: u32 = 4;
/// Deadline misses waiting to be escalated (each is read back from the store first);
/// beyond, the oldest wait in the driver's event backlog.
const MISSES_QUEUED_MAX: usize = 1024;

/// The handle commands go through, whichever engine runs the channels.
#[derive(Clone)]
pub enum Engine {
    Tasks(WriterHandle),
    Core(Arc<CoreEngine>),
}

/// The core engine's handles.
pub struct CoreEngine {
    pub driver: DriverHandle,
    pub store: Arc<NodeStore>,
    pub me: PartyKey,
    /// A handle to no writer, for [`Engine::writer`].
    pub none: WriterHandle,
}

impl CoreEngine {
    /// Run a command the core answers with `Sent`, for a message of `precedence`.
    async fn sent(&self, command: Command, precedence: Precedence) -> Result<Sent, WriteError> {
        match self.driver.command(command).await.map_err(write_error)? {
            Answer::Sent { id, seq } => Ok(Sent {
                id,
                seq,
                precedence,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

/// An answer to one of the peer's messages, as [`Engine::answer`] takes it.
#[derive(Debug, Clone)]
pub struct AnswerRequest {
    pub peer: String,
    /// The peer's message.
    pub of: detente_proto::MessageId,
    pub level: detente_proto::ReceiptLevel,
    pub note: Option<String>,
    /// The message's precedence and topic, which the receipt carries.
    pub precedence: Precedence,
    pub topic: String,
    /// Our title, as the receipt is signed.
    pub author: String,
}

impl Engine {
    /// The writer, for the link, deadline and charter tasks (they run only with the
    /// tasks engine; with the core every call answers [`WriteError::Stopped`]).
    pub fn writer(&self) -> &WriterHandle {
        match self {
            Engine::Tasks(w) => w,
            Engine::Core(c) => &c.none,
        }
    }

    /// Whether the tasks run the channels.
    pub fn runs_tasks(&self) -> bool {
        matches!(self, Engine::Tasks(_))
    }

    /// Number, sign and store one message; answered once it is durable.
    pub async fn send(&self, request: SendRequest) -> Result<Sent, WriteError> {
        match self {
            Engine::Tasks(w) => w.send(request).await,
            Engine::Core(c) => {
                let precedence = request.precedence;
                c.sent(Command::Send(outgoing(request)), precedence).await
            }
        }
    }

    /// Answer the peer's message: READ, ACKNOWLEDGED or DECLINED. The writer signs it as a
    /// receipt in the message's precedence and topic; the core has its own command, which
    /// checks the message is the peer's and settles its deadline.
    pub async fn answer(&self, answer: AnswerRequest) -> Result<Sent, WriteError> {
        match self {
            Engine::Tasks(w) => {
                let request = SendRequest {
                    peer: answer.peer,
                    precedence: answer.precedence,
                    topic: answer.topic,
                    author: answer.author,
                    in_reply_to: Some(answer.of),
                    body: Body::Receipt(Receipt {
                        level: answer.level,
                        target: ReceiptTarget::Message(answer.of),
                        note: answer.note,
                    }),
                };
                w.send(request).await
            }
            Engine::Core(c) => {
                let command = Command::Answer {
                    peer: answer.peer,
                    of: answer.of,
                    level: answer.level,
                    note: answer.note,
                };
                c.sent(command, answer.precedence).await
            }
        }
    }

    /// Several sends, **all or nothing**: all are checked and signed before any is staged,
    /// and one commit makes them durable together; answered once it has. With
    /// `idempotency` (its `sent` left empty), the request's key and this answer are stored
    /// in the same transaction. Both engines: one writer command, or one core command.
    pub async fn send_batch(
        &self,
        requests: Vec<SendRequest>,
        idempotency: Option<IdempotencyRow>,
    ) -> Result<Vec<Sent>, WriteError> {
        let c = match self {
            Engine::Tasks(w) => return w.send_batch(requests, idempotency).await,
            Engine::Core(c) => c,
        };
        let precedences: Vec<Precedence> = requests.iter().map(|r| r.precedence).collect();
        let messages = requests.into_iter().map(outgoing).collect();
        let command = Command::SendBatch {
            messages,
            idempotency,
        };
        match c.driver.command(command).await.map_err(write_error)? {
            Answer::SentBatch { sent } if sent.len() == precedences.len() => Ok(sent
                .into_iter()
                .zip(precedences)
                .map(|((id, seq), precedence)| Sent {
                    id,
                    seq,
                    precedence,
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Add or replace a glossary term of a channel; answered once durable.
    pub async fn add_glossary(&self, row: GlossaryRow) -> Result<(), WriteError> {
        match self {
            Engine::Tasks(w) => w.add_glossary(row).await,
            Engine::Core(c) => {
                let driver = &c.driver;
                match driver
                    .command(Command::Glossary { row })
                    .await
                    .map_err(write_error)?
                {
                    Answer::Done => Ok(()),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    /// Sign a checkpoint of the channel with `peer` now (and send it for co-signing).
    pub async fn checkpoint(
        &self,
        peer: &str,
        key: &PartyKey,
    ) -> Result<SignedCheckpoint, WriteError> {
        let (driver, store, me) = match self {
            Engine::Tasks(w) => return w.checkpoint(peer).await,
            Engine::Core(c) => (&c.driver, &c.store, &c.me),
        };
        let command = Command::Checkpoint {
            peer: peer.to_string(),
        };
        let body_hash = match driver.command(command).await.map_err(write_error)? {
            Answer::Checkpoint { body_hash } => body_hash,
            other => return Err(unexpected(&other)),
        };
        // Durable by now: read it back as stored.
        let channel = ChannelId::for_pair(me, key);
        let rows = store
            .checkpoint_page(channel.0, CheckpointPage::newest(CHECKPOINT_LOOKUP_ROWS))
            .await
            .map_err(|e| WriteError::Store(e.to_string()))?;
        let row = rows
            .into_iter()
            .find(|r| r.body_hash == body_hash)
            .ok_or_else(|| WriteError::Store("the checkpoint just signed is not stored".into()))?;
        SignedCheckpoint::decode(&row.signed).map_err(|e| WriteError::Store(e.to_string()))
    }

    /// Pin a peer at run time.
    pub async fn add_peer(&self, name: &str, key: PartyKey, addresses: usize) {
        match self {
            Engine::Tasks(w) => w.add_peer(name, key).await,
            Engine::Core(c) => {
                let driver = &c.driver;
                let peer = detente_core::PeerConfig {
                    name: name.to_string(),
                    key,
                    addresses,
                };
                if let Err(e) = driver.command(Command::AddPeer { peer }).await {
                    tracing::warn!(peer = name, error = %e, "cannot pin the peer in the core");
                }
            }
        }
    }
}

/// A send request as the core takes it.
fn outgoing(request: SendRequest) -> Outgoing {
    Outgoing {
        peer: request.peer,
        precedence: request.precedence,
        topic: request.topic,
        author: request.author,
        body: request.body,
        in_reply_to: request.in_reply_to,
    }
}

fn unexpected(answer: &Answer) -> WriteError {
    WriteError::Invalid(format!("unexpected answer from the core: {answer:?}"))
}

fn write_error(e: DriverError) -> WriteError {
    match e {
        DriverError::Command(CommandError::UnknownPeer(peer)) => WriteError::UnknownPeer(peer),
        DriverError::Command(CommandError::Invalid(why)) => WriteError::Invalid(why),
        DriverError::Command(CommandError::Busy { retry_after_ms }) => WriteError::Store(format!(
            "the store is failing or too much is waiting; retry after {retry_after_ms} ms"
        )),
        DriverError::Store(why) => WriteError::Store(why),
        DriverError::Stopped => WriteError::Stopped,
        other => WriteError::Invalid(other.to_string()),
    }
}

/// The core's configuration for a node with `config`, its key's `seed`, the address its
/// peer port listens on, and the peers pinned in `table`.
pub fn core_config(
    config: &NodeConfig,
    seed: [u8; 32],
    peer_addr: std::net::SocketAddr,
    table: &PeerTable,
) -> detente_core::Config {
    let secret = PartySecret::from_seed(seed);
    let terms = crate::charter::terms_of(
        config,
        secret.public(),
        peer_addr,
        crate::notify::held_formats(),
    );
    let policy = config.checkpoint_policy();
    let checkpoint_interval = if policy.quiet.is_zero() {
        Duration::from_secs(24 * 3600)
    } else {
        policy.quiet
    };
    detente_core::Config {
        name: config.name.clone(),
        author: config.author.clone(),
        secret_seed: seed,
        peers: core_peers(table),
        deadlines: terms.deadlines,
        link_test_interval: terms.link_test_interval,
        floors: config.floors(),
        link: config.link_config(),
        checkpoint_interval,
        checkpoint_every: policy.every,
        random_seed: rand::random(),
        deadlines_watched_max: crate::deadlines::watched_max_of(config),
        profile: detente_core::Profile {
            party: terms.member.party,
            addresses: terms.member.addresses,
            lang: terms.member.lang,
            tz: terms.member.tz,
            formats: terms.formats,
            counterparts: terms.counterparts,
        },
        bug: None,
    }
}

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreStartError {
    #[error(transparent)]
    Load(#[from] crate::snapshot::LoadError),
    #[error("the store's content cannot be recovered: {0}")]
    Recover(String),
}

/// Recover the core from the store and start its driver. Link state is published into
/// `table` after every wake-up.
pub async fn start_core(
    config: detente_core::Config,
    store: Arc<NodeStore>,
    secret: Arc<PartySecret>,
    table: Arc<PeerTable>,
    metrics: Arc<crate::events::Metrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<CoreStarted, CoreStartError> {
    let (core, tampered) = recover(&config, &store, secret.public(), &table).await?;
    let reload: driver::Reload = {
        let (store, table, me) = (store.clone(), table.clone(), secret.public());
        Box::new(move || {
            let (config, store, table) = (config.clone(), store.clone(), table.clone());
            Box::pin(async move {
                // The rows that fail were named at start (and their alarms raised).
                let (core, _) = recover(&config, &store, me, &table)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(core)
            })
        })
    };
    let dialer = TlsDialer {
        secret,
        table: table.clone(),
    };
    let observer: driver::Observer = Box::new(move |core: &Core| {
        publish_links(core, &table);
        let (watched, peak) = core.deadlines_watched();
        metrics.set_deadlines_watched(watched, peak);
    });
    let options = driver::DriverOptions {
        observer: Some(observer),
        shutdown: Some(shutdown),
        reload: Some(reload),
    };
    let (driver, events, task) = driver::start_with(core, store, dialer, options);
    Ok(CoreStarted {
        driver,
        events,
        task,
        tampered,
    })
}

/// A running driver, and the stored rows that failed verification as it loaded.
pub struct CoreStarted {
    pub driver: DriverHandle,
    pub events: broadcast::Sender<CoreEvent>,
    pub task: tokio::task::JoinHandle<()>,
    pub tampered: Vec<TamperedRow>,
}

/// A core continuing from what `store` holds, for the peers pinned in `table` now (peers
/// added while the node runs included).
async fn recover(
    config: &detente_core::Config,
    store: &NodeStore,
    me: PartyKey,
    table: &PeerTable,
) -> Result<(Core, Vec<TamperedRow>), CoreStartError> {
    let entries = table.all();
    let peers: Vec<crate::snapshot::PeerKey> = entries
        .iter()
        .map(|e| crate::snapshot::PeerKey {
            name: e.name.clone(),
            key: e.key,
        })
        .collect();
    let began = std::time::Instant::now();
    let loaded = crate::snapshot::load(store, &me, &peers).await?;
    let read_ms = began.elapsed().as_millis();
    let envelopes = loaded.snapshot.envelopes();
    let mut config = config.clone();
    config.peers = core_peers(table);
    config.random_seed = rand::random();
    let now = std::time::Instant::now();
    let core = Core::recover(config, loaded.snapshot, now, crate::now_ms() as i64)
        .map_err(|e| CoreStartError::Recover(e.to_string()))?;
    tracing::info!(
        envelopes,
        read_ms,
        recover_ms = now.elapsed().as_millis(),
        "core recovered from the store"
    );
    Ok((core, loaded.tampered))
}

/// The core's view of the peers pinned in `table`.
fn core_peers(table: &PeerTable) -> Vec<detente_core::PeerConfig> {
    table
        .all()
        .iter()
        .map(|e| detente_core::PeerConfig {
            name: e.name.clone(),
            key: e.key,
            addresses: e.addrs.len(),
        })
        .collect()
}

/// Copy each link's supervision into the peer table (what `status` and the console show).
fn publish_links(core: &Core, table: &PeerTable) {
    for entry in table.all() {
        let Some((link, connected)) = core.link(&entry.name) else {
            continue;
        };
        if let Ok(mut status) = entry.status.write() {
            let now = std::time::Instant::now();
            status.state = link.state(now);
            status.connected = connected;
            status.rtt_ms = link.rtt().map(|d| d.as_secs_f64() * 1000.0);
            status.last_heard = link.last_heard();
            status.set_view(&entry.name, link);
            status.sending_stopped = core.sending_stopped(&entry.name).map(str::to_string);
        }
    }
}

/// Dials peers over TLS with their pinned keys, as the core asks.
struct TlsDialer {
    secret: Arc<PartySecret>,
    table: Arc<PeerTable>,
}

impl driver::Dialer for TlsDialer {
    fn dial(&self, peer: &str, address: usize, driver: DriverHandle) {
        let Some(entry) = self.table.get(peer) else {
            return;
        };
        let secret = self.secret.clone();
        let peer = peer.to_string();
        tokio::spawn(async move {
            let Some(addr) = entry.addrs.get(address).cloned() else {
                let _ = driver.input(DriverInput::DialFailed { peer }).await;
                return;
            };
            match connect(&secret, entry.key, &addr).await {
                Ok(tls) => {
                    if let Ok(mut status) = entry.status.write() {
                        status.address = Some(addr.clone());
                        status.sessions += 1;
                        status.last_error = None;
                    }
                    let (reader, writer) = tokio::io::split(tls);
                    driver::run_session(driver, peer, true, reader, writer).await;
                }
                Err(reason) => {
                    tracing::debug!(%peer, %addr, %reason, "dial failed");
                    if let Ok(mut status) = entry.status.write() {
                        status.last_error = Some(reason);
                    }
                    let _ = driver.input(DriverInput::DialFailed { peer }).await;
                }
            }
        });
    }
}

/// A TCP connection and TLS handshake to `addr`, pinned to `key`, within the handshake
/// timeout.
async fn connect(
    secret: &PartySecret,
    key: PartyKey,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = crate::tls::client_config(secret, key).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(crate::tls::server_name(), tcp)
            .await
            .map_err(|e| match crate::tls::rejection(&e) {
                Some(reason) => reason.to_string(),
                None => format!("TLS with {addr}: {e}"),
            })
    };
    tokio::time::timeout(crate::link::HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{addr}: no TLS session within the handshake timeout"))?
}

/// An authenticated inbound connection from the pinned peer `peer`: its session.
pub fn accept(
    driver: &DriverHandle,
    entry: &crate::peers::PeerEntry,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote: std::net::SocketAddr,
) {
    if let Ok(mut status) = entry.status.write() {
        status.address = Some(remote.to_string());
        status.sessions += 1;
    }
    let (reader, writer) = tokio::io::split(tls);
    tokio::spawn(driver::run_session(
        driver.clone(),
        entry.name.clone(),
        false,
        reader,
        writer,
    ));
}

/// Hand what the core decided to the rest of the node: live events (waiters, the
/// console), hooks, alarms and the charter state. Runs until the driver stops.
pub async fn pump(shared: Arc<Shared>, mut events: broadcast::Receiver<CoreEvent>) {
    let (misses, missed) = tokio::sync::mpsc::channel(MISSES_QUEUED_MAX);
    let escalation = tokio::spawn(escalate_misses(shared.clone(), missed));
    let mut link_tests_missed: HashMap<String, bool> = HashMap::new();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(lost = n, "the node's event pump fell behind the core");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        match event {
            CoreEvent::Stored {
                peer,
                id,
                seq,
                direction,
                precedence,
                kind,
            } => shared.events.publish(Event::Stored {
                peer,
                id,
                seq,
                direction,
                precedence,
                kind,
                // The core runs its own deadlines; nothing reads this on this path.
                start_ms: crate::now_ms() as i64,
            }),
            CoreEvent::Delivered { peer, from, to } => {
                shared.events.publish(Event::Delivered { peer, from, to });
            }
            CoreEvent::Receipt { of, level } => {
                shared.events.publish(Event::Receipt { of, level });
            }
            CoreEvent::Discarded { peer, id } => {
                shared.events.publish(Event::Discarded { peer, id });
            }
            CoreEvent::Alarm { peer, detail } => {
                tracing::error!(%peer, "{detail}");
                shared.events.publish(Event::Alarm {
                    peer: peer.clone(),
                    detail: detail.clone(),
                });
                crate::deadlines::raise(&shared, HookEvent::Equivocation { peer, detail });
            }
            CoreEvent::Refused { peer, what } => {
                shared.events.metrics().verification_failed();
                tracing::warn!(%peer, reason = %what, "refused from the peer; nothing stored");
            }
            CoreEvent::LinkTestPassed { peer, rtt_ms } => {
                tracing::info!(%peer, rtt_ms, "link test confirmed");
                if let Some(entry) = shared.table.get(&peer) {
                    if let Ok(mut a) = entry.alarms.write() {
                        a.last_test_ms = Some(crate::now_ms() as i64);
                        a.test_missed = false;
                    }
                }
            }
            CoreEvent::LinkTestMissed { peer } => {
                link_tests_missed.insert(peer.clone(), true);
                if let Some(entry) = shared.table.get(&peer) {
                    if let Ok(mut a) = entry.alarms.write() {
                        a.test_missed = true;
                    }
                }
                crate::deadlines::raise(&shared, HookEvent::LinkTestMissed { peer, seq: 0 });
            }
            CoreEvent::CharterRefused { peer, below } => {
                crate::charter::record_refusal(&shared, &peer, below);
            }
            CoreEvent::CharterAgreed { peer, .. } => {
                let shared = shared.clone();
                tokio::spawn(async move { crate::charter::refresh(&shared, &peer).await });
            }
            CoreEvent::Deadline {
                peer,
                id,
                need,
                decision: Decision::Missed,
            } => {
                let queued = misses.try_send((peer, id, need));
                if queued.is_err() {
                    tracing::warn!("too many deadline misses waiting to be escalated");
                }
            }
            _ => {}
        }
    }
    // The core ended. Let what is queued be escalated, so that nothing of this node still
    // reads the store once `Node::stop` has closed it.
    drop(misses);
    let _ = escalation.await;
}

/// Show and escalate each missed deadline (recorded durably by the core before it said
/// so), with the message's details read back from the store.
async fn escalate_misses(
    shared: Arc<Shared>,
    mut missed: tokio::sync::mpsc::Receiver<(
        String,
        detente_proto::MessageId,
        detente_proto::Need,
    )>,
) {
    while let Some((peer, id, need)) = missed.recv().await {
        let needed = need.name();
        shared.events.publish(Event::Overdue {
            peer: peer.clone(),
            id,
            needed,
        });
        let Ok(Some(row)) = shared.store.message(id.0).await else {
            continue;
        };
        let precedence = Precedence::from_u8(row.precedence).unwrap_or(Precedence::Routine);
        let due_at_ms = shared
            .store
            .misses(id.0)
            .await
            .ok()
            .and_then(|m| m.into_iter().find(|m| m.level == need.code()))
            .map_or(crate::now_ms() as i64, |m| m.due_at_ms);
        let direction = match row.direction {
            detente_store::Direction::Out => "out",
            detente_store::Direction::In => "in",
        };
        crate::deadlines::raise(
            &shared,
            HookEvent::DeadlineMissed {
                peer,
                id,
                seq: row.seq,
                direction,
                precedence: precedence.name(),
                topic: row.topic,
                needed,
                due_at_ms,
            },
        );
    }
}

/// How often the link watch looks at each link's state (as the tasks' watch does).
const LINK_WATCH_INTERVAL: Duration = crate::deadlines::LINK_POLL;

/// With the core: raise `link_down` once per outage of a link that was up, and
/// `link_restored` when it is back (the state is what [`publish_links`] last copied).
pub async fn watch_links(shared: Arc<Shared>) {
    use detente_proto::LinkState;
    let mut shutdown = shared.shutdown.clone();
    // Per peer: was up at least once, and the down alarm is raised.
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LINK_WATCH_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let now = std::time::Instant::now();
        for entry in shared.table.all() {
            // A link has been up once a session was open, whatever its round trip and
            // however briefly (a slow link is degraded, and its loss still an outage).
            let (state, opened) = entry.status.read().map_or((LinkState::Down, false), |s| {
                (s.current_state(now), s.connected || s.sessions > 0)
            });
            let (was_up, down) = seen.entry(entry.name.clone()).or_default();
            let peer = entry.name.clone();
            if opened {
                *was_up = true;
            }
            match state {
                LinkState::Up => {
                    *was_up = true;
                    if *down {
                        *down = false;
                        crate::deadlines::raise(&shared, HookEvent::LinkRestored { peer });
                    }
                }
                LinkState::Down if *was_up && !*down => {
                    *down = true;
                    crate::deadlines::raise(&shared, HookEvent::LinkDown { peer });
                }
                _ => {}
            }
            if let Ok(mut a) = entry.alarms.write() {
                a.link_down = *down;
            }
        }
    }
}

/// Per peer, what `status` counts: our messages overdue, theirs overdue, theirs unanswered.
#[derive(Default)]
struct Counts {
    /// The peer's texts and notifications not answered yet, by id.
    unanswered: HashMap<detente_proto::MessageId, String>,
    /// Messages past a deadline whose receipt has not come: (peer, theirs).
    overdue: HashMap<detente_proto::MessageId, (String, bool)>,
    per_peer: HashMap<String, crate::peers::PeerAlarms>,
}

impl Counts {
    fn add_unanswered(&mut self, peer: &str, id: detente_proto::MessageId) {
        if self.unanswered.len() < crate::deadlines::TRACKED_MAX
            && self.unanswered.insert(id, peer.to_string()).is_none()
        {
            self.per_peer
                .entry(peer.to_string())
                .or_default()
                .unanswered_in += 1;
        }
    }

    fn add_overdue(&mut self, peer: &str, id: detente_proto::MessageId) {
        let theirs = self.unanswered.contains_key(&id);
        if self.overdue.len() < crate::deadlines::TRACKED_MAX
            && self
                .overdue
                .insert(id, (peer.to_string(), theirs))
                .is_none()
        {
            let c = self.per_peer.entry(peer.to_string()).or_default();
            if theirs {
                c.overdue_in += 1;
            } else {
                c.overdue_out += 1;
            }
        }
    }

    /// An ACKNOWLEDGED or DECLINED receipt for `id`, either way.
    fn answered(&mut self, id: detente_proto::MessageId) {
        if let Some(peer) = self.unanswered.remove(&id) {
            let c = self.per_peer.entry(peer).or_default();
            c.unanswered_in = c.unanswered_in.saturating_sub(1);
        }
        if let Some((peer, theirs)) = self.overdue.remove(&id) {
            let c = self.per_peer.entry(peer).or_default();
            if theirs {
                c.overdue_in = c.overdue_in.saturating_sub(1);
            } else {
                c.overdue_out = c.overdue_out.saturating_sub(1);
            }
        }
    }

    fn publish(&self, shared: &Shared, peer: &str) {
        let (Some(entry), Some(c)) = (shared.table.get(peer), self.per_peer.get(peer)) else {
            return;
        };
        let written = entry.alarms.write();
        if let Ok(mut a) = written {
            a.overdue_out = c.overdue_out;
            a.overdue_in = c.overdue_in;
            a.unanswered_in = c.unanswered_in;
        }
    }
}

/// With the core: keep `status`'s deadline counts per peer — seeded from the store's
/// unanswered messages and recorded misses, then kept in step with the node's events (a
/// message stored, a deadline missed, an answer either way), O(1) per event.
pub async fn count_deadlines(shared: Arc<Shared>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = shared.events.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let mut counts = Counts::default();
    let limit = crate::deadlines::TRACKED_MAX as u32;
    if let Ok(rows) = shared.store.deadline_candidates(limit).await {
        for c in rows {
            let id = detente_proto::MessageId(c.id);
            if c.direction == detente_store::Direction::In {
                counts.add_unanswered(&c.peer, id);
            }
            if !c.missed.is_empty() {
                counts.add_overdue(&c.peer, id);
            }
        }
    }
    for entry in shared.table.all() {
        counts.publish(&shared, &entry.name);
    }
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => return,
        };
        let peer = match event {
            Ok(Event::Stored {
                peer,
                id,
                direction: detente_store::Direction::In,
                kind,
                ..
            }) if detente_proto::deadline::bears_deadline(kind) => {
                counts.add_unanswered(&peer, id);
                peer
            }
            Ok(Event::Overdue { peer, id, .. }) => {
                counts.add_overdue(&peer, id);
                peer
            }
            Ok(Event::Discarded { peer, id }) => {
                counts.answered(id);
                peer
            }
            Ok(Event::Receipt { of, level }) => {
                if !matches!(
                    level,
                    detente_proto::ReceiptLevel::Acknowledged
                        | detente_proto::ReceiptLevel::Declined
                ) {
                    continue;
                }
                let peer = counts
                    .unanswered
                    .get(&of)
                    .cloned()
                    .or_else(|| counts.overdue.get(&of).map(|(p, _)| p.clone()));
                counts.answered(of);
                match peer {
                    Some(p) => p,
                    None => continue,
                }
            }
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "the deadline counts fell behind the node's events"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        counts.publish(&shared, &peer);
    }
}
