//! The detente node: a thin tokio driver around the protocol core.
//!
//! [`Node::start`] opens the store, starts the [`writer`] (the only task that changes the
//! store, by group commit), one [`link`] task per pinned peer, the TLS peer listener and the
//! HTTP API ([`api`]). Everything that decides — encoding, verification, sequencing rules,
//! link state, scheduling — lives in `detente-proto`. The operator [`console`] shares the
//! HTTP server with the API.

#![forbid(unsafe_code)]

pub mod api;
pub mod charter;
pub mod config;
pub mod console;
pub mod deadlines;
pub mod driver;
pub mod engine;
pub mod events;
pub mod fetch;
pub mod gate;
pub mod hooks;
pub mod http;
pub mod i18n;
pub mod idempotency;
pub mod lease;
pub mod link;
pub mod metrics;
pub mod notify;
pub mod operators;
pub mod peers;
pub mod service;
pub mod snapshot;
pub mod tls;
pub mod transcript;
pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detente_proto::{LinkConfig, PartySecret};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{NodeConfig, NodeDir};
use crate::events::Events;
use crate::link::Connection;
use crate::peers::PeerTable;

/// The store implementation in use: SQLite or PostgreSQL, as `database_url` says.
pub type NodeStore = detente_store::AnyStore;

/// Inbound connections queued per peer, at most.
const INCOMING_QUEUE_MAX: usize = 4;

/// Milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 UTC with exactly three fractional digits, so that times sort as text too.
pub fn time_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| ms.to_string(),
        |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] detente_store::StoreError),
    #[error("cannot listen on {addr}: {source} (is another node running on it?)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Writer(#[from] writer::WriteError),
    #[error("{0}")]
    Core(#[from] engine::CoreStartError),
    /// The store's file is missing while `node.toml` pins peers: most likely the database
    /// was moved or lost, and a fresh one would reuse sequence numbers the peers already
    /// hold. Remedy: put the file back, or start afresh explicitly with `serve --new-store`.
    #[error(
        "the store {path} does not exist, but node.toml pins peers ({peers}): starting on an \
         empty store would reuse sequence numbers the peers already hold. Put the database \
         back, or, to start afresh on purpose, run: detente serve --dir DIR --new-store"
    )]
    NewStore { path: String, peers: String },
    /// The console would listen beyond loopback without TLS. Remedy: listen on 127.0.0.1
    /// (and reach it through an SSH tunnel or a TLS proxy), or accept the risk explicitly.
    #[error(
        "the console and API would listen on {addr}, beyond this machine, without TLS \
         (passwords and session cookies would cross the network in clear). Listen on \
         127.0.0.1 behind a TLS proxy, or accept the risk with: detente config set --dir DIR \
         console.insecure_public_bind true"
    )]
    PublicConsole { addr: String },
    /// `detente restore` marked the store: see the message.
    #[error("{0}")]
    Restored(String),
}

/// The store mark `detente restore` sets (its value is the message the node refuses with).
pub const RESTORED_MARK: &str = "restored";

/// How a node starts ([`Node::start_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Start even when the store's file is missing and peers are pinned (`serve --new-store`).
    pub new_store: bool,
}

/// State shared by the tasks of a running node.
pub struct Shared {
    pub dir: NodeDir,
    pub config: std::sync::RwLock<NodeConfig>,
    pub secret: Arc<PartySecret>,
    pub store: Arc<NodeStore>,
    /// Commands go through here, whichever engine runs the channels.
    pub engine: engine::Engine,
    pub table: Arc<PeerTable>,
    pub events: Events,
    /// Escalation hooks (raise alarms with [`deadlines::raise`]).
    pub hooks: Arc<hooks::Hooks>,
    pub link_config: LinkConfig,
    pub token: String,
    pub peer_addr: SocketAddr,
    pub console_addr: SocketAddr,
    /// Notification formats this node holds (offered in its charter terms).
    pub formats: std::sync::RwLock<Vec<detente_proto::FormatRef>>,
    /// Charter state per peer.
    pub charters: charter::Charters,
    /// Console state that is not in the store (login limiter, interface texts).
    pub console: console::ConsoleState,
    /// Admission of inbound peer connections before they authenticate.
    pub gate: Arc<gate::Gate>,
    /// Tampered-row alarms already raised (`api::tampered_alarm`).
    pub tampered: Mutex<std::collections::HashSet<String>>,
    /// Idempotency keys of API sends being handled now (a second request gets 409).
    pub idempotency: idempotency::InFlight,
    incoming: Mutex<HashMap<String, mpsc::Sender<Connection>>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// A running node.
pub struct Node {
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The PostgreSQL lease this process holds, released on a clean stop.
    lease: Option<lease::Held>,
    /// Why the lease was lost, once it was (the node has then shut itself down).
    lease_lost: watch::Receiver<Option<String>>,
}

impl Node {
    /// Start the node in `dir`; refuses a missing store while peers are pinned.
    pub async fn start(dir: NodeDir) -> Result<Node, StartError> {
        Self::start_with(dir, StartOptions::default()).await
    }

    /// Start the node in `dir` with `options`.
    pub async fn start_with(dir: NodeDir, options: StartOptions) -> Result<Node, StartError> {
        let config = dir.load()?;
        let secret = Arc::new(dir.secret()?);
        let token = dir.token()?;
        let default_file = dir.file(config::DATABASE_FILE);
        if let Some(path) = sqlite_path(&config, &default_file)? {
            if !path.exists() && !config.peers.is_empty() && !options.new_store {
                let peers: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
                return Err(StartError::NewStore {
                    path: path.display().to_string(),
                    peers: peers.join(", "),
                });
            }
        }
        let store = Arc::new(NodeStore::open(&config.database_url, &default_file).await?);
        if let Some(why) = store.mark(RESTORED_MARK).await? {
            return Err(StartError::Restored(why));
        }
        // On PostgreSQL, stand by until this process holds the lease: before the writer
        // reads the stream state and before anything listens (issue 13 item 3).
        let lease = lease::take(&store, &lease::holder(&dir)).await?;
        let table = Arc::new(PeerTable::default());
        let events = Events::new();
        let mut peers = Vec::new();
        for peer in &config.peers {
            let key = peer.party_key()?;
            table.insert(&peer.name, key, peer.addrs.clone());
            peers.push((peer.name.clone(), key));
        }
        let writer = if config.runs_core() {
            None
        } else {
            let writer = writer::start(
                store.clone(),
                secret.clone(),
                config.author.clone(),
                peers,
                table.clone(),
                events.clone(),
                config.checkpoint_policy(),
            )
            .await?;
            Some(writer)
        };
        let peer_listener = TcpListener::bind(&config.peer_listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.peer_listen.clone(),
                source,
            })?;
        let console_listener =
            TcpListener::bind(&config.console_listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.console_listen.clone(),
                    source,
                })?;
        let peer_addr = peer_listener
            .local_addr()
            .map_err(|source| StartError::Listen {
                addr: config.peer_listen.clone(),
                source,
            })?;
        let console_addr = console_listener
            .local_addr()
            .map_err(|source| StartError::Listen {
                addr: config.console_listen.clone(),
                source,
            })?;
        if !console_addr.ip().is_loopback() {
            if !config.console.insecure_public_bind {
                return Err(StartError::PublicConsole {
                    addr: console_addr.to_string(),
                });
            }
            tracing::warn!(
                console = %console_addr,
                "the console and API listen beyond loopback without TLS \
                 (console.insecure_public_bind = true): passwords and cookies cross the \
                 network in clear"
            );
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut core_task = None;
        let mut tampered = Vec::new();
        let engine = match writer {
            Some(writer) => engine::Engine::Tasks(writer),
            None => {
                let core = engine::core_config(&config, dir.secret_seed()?, peer_addr, &table);
                let started = engine::start_core(
                    core,
                    store.clone(),
                    secret.clone(),
                    table.clone(),
                    events.metrics().clone(),
                    shutdown_rx.clone(),
                )
                .await?;
                core_task = Some((started.task, started.events.subscribe()));
                tampered = started.tampered;
                engine::Engine::Core(Arc::new(engine::CoreEngine {
                    driver: started.driver,
                    store: store.clone(),
                    me: secret.public(),
                    none: writer::WriterHandle::stopped(),
                }))
            }
        };
        let shared = Arc::new(Shared {
            dir,
            link_config: config.link_config(),
            config: std::sync::RwLock::new(config),
            secret,
            store,
            engine,
            table,
            hooks: hooks::Hooks::new(events.metrics().clone()),
            events,
            token,
            peer_addr,
            console_addr,
            formats: std::sync::RwLock::new(notify::held_formats()),
            charters: charter::Charters::default(),
            console: console::ConsoleState::new(),
            gate: gate::Gate::new(),
            tampered: Mutex::new(std::collections::HashSet::new()),
            idempotency: idempotency::InFlight::default(),
            incoming: Mutex::new(HashMap::new()),
            shutdown: shutdown_rx,
        });
        let (lost_tx, lost_rx) = watch::channel(None);
        let mut node = Node {
            shared: shared.clone(),
            shutdown: shutdown_tx,
            tasks: Vec::new(),
            lease: lease.clone(),
            lease_lost: lost_rx,
        };
        if let Some(held) = lease {
            node.tasks.push(tokio::spawn(lease::keep(
                shared.store.clone(),
                held,
                node.shutdown.clone(),
                lost_tx,
            )));
        }
        node.tasks.push(tokio::spawn(
            shared.hooks.clone().run(shared.shutdown.clone()),
        ));
        match core_task {
            Some((task, events)) => {
                node.tasks.push(task);
                // Awaited at stop (after the core, whose end closes its events): a task
                // still holding a store connection after the store is closed would close
                // it later, and SQLite's last close removes the WAL file by its name.
                node.tasks
                    .push(tokio::spawn(engine::pump(shared.clone(), events)));
                node.tasks
                    .push(tokio::spawn(engine::watch_links(shared.clone())));
                node.tasks
                    .push(tokio::spawn(engine::count_deadlines(shared.clone())));
                for entry in shared.table.all() {
                    charter::refresh(&shared, &entry.name).await;
                }
            }
            None => {
                for entry in shared.table.all() {
                    node.tasks.push(start_link(&shared, entry));
                }
                node.tasks
                    .push(tokio::spawn(deadlines::run(shared.clone())));
                node.tasks.push(tokio::spawn(charter::watch(
                    shared.clone(),
                    shared.shutdown.clone(),
                )));
            }
        }
        node.tasks
            .push(tokio::spawn(accept_peers(shared.clone(), peer_listener)));
        node.tasks
            .push(tokio::spawn(http::serve(shared.clone(), console_listener)));
        check_stream_tails(&shared).await;
        for row in &tampered {
            let detail = format!(
                "{}: {} stream seq {} in the channel with {} ({})",
                transcript::TAMPERED,
                row.direction,
                row.seq,
                row.peer,
                row.what
            );
            transcript::tampered_alarm(&shared, &row.peer, &detail);
        }
        write_run_file(&shared);
        tracing::info!(
            name = %shared.config.read().map(|c| c.name.clone()).unwrap_or_default(),
            fingerprint = %shared.secret.public().fingerprint(),
            peer = %peer_addr,
            console = %console_addr,
            "node started"
        );
        Ok(node)
    }

    /// Stop every task, give the lease up, and close the store. Everything acknowledged is
    /// already durable.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let (Some(held), Some(pg)) = (&self.lease, self.shared.store.postgres()) {
            let _ = pg.lease_release(&held.holder, held.epoch).await;
        }
        self.shared.store.close().await;
        let _ = std::fs::remove_file(self.shared.dir.file(config::RUN_FILE));
    }
}

impl Node {
    /// Resolves with the reason once this process lost its PostgreSQL lease; the node has
    /// then stopped serving, and [`Node::stop`] finishes the job. Never resolves on SQLite.
    pub fn lease_lost(&self) -> watch::Receiver<Option<String>> {
        self.lease_lost.clone()
    }
}

/// At start, the last envelope of every stream must verify and be the stream's recorded
/// head: a row altered in the file since is named in an alarm (and in `status`), not shown
/// later as genuine. The rest of each stream is verified when it is shown or exported.
async fn check_stream_tails(shared: &Arc<Shared>) {
    use detente_store::Store;
    let Ok(streams) = shared.store.streams().await else {
        return;
    };
    let me = shared.secret.public();
    for entry in shared.table.all() {
        let channel = detente_proto::ChannelId::for_pair(&me, &entry.key);
        for sender in [me, entry.key] {
            let Some(state) = streams
                .iter()
                .find(|s| s.channel == channel.0 && &s.sender == sender.as_bytes())
                .filter(|s| s.next_seq > 1)
            else {
                continue;
            };
            let seq = state.next_seq - 1;
            let row = shared
                .store
                .message_at(channel.0, *sender.as_bytes(), seq)
                .await;
            let problem = match row {
                Ok(Some(row)) => {
                    match detente_proto::VerifiedEnvelope::decode(&row.bytes, Some(&sender)) {
                        Ok(v) if v.id().0 == state.last_id && row.id == state.last_id => None,
                        Ok(_) => Some("it is not the stream's recorded head".to_string()),
                        Err(e) => Some(e.to_string()),
                    }
                }
                Ok(None) => Some("the stream's last message is missing".to_string()),
                Err(_) => None,
            };
            if let Some(why) = problem {
                let detail = format!(
                    "{}: stream {} seq {seq} in the channel with {} ({why})",
                    transcript::TAMPERED,
                    sender.fingerprint(),
                    entry.name
                );
                transcript::tampered_alarm(shared, &entry.name, &detail);
            }
        }
    }
}

/// Record where a running node actually listens (ports may have been chosen by the system),
/// so that the command line finds its API.
fn write_run_file(shared: &Shared) {
    let run = serde_json::json!({
        "pid": std::process::id(),
        "peer_listen": shared.peer_addr.to_string(),
        "console_listen": shared.console_addr.to_string(),
    });
    let path = shared.dir.file(config::RUN_FILE);
    if let Err(e) = std::fs::write(&path, run.to_string()) {
        tracing::warn!(error = %e, path = %path.display(), "cannot write the run file");
    }
}

/// Open the store a node directory names: `database_url` in `node.toml` (empty: the SQLite
/// file in the directory; `sqlite:PATH`; `postgres://…`). The node need not be running:
/// SQLite in WAL mode lets a second process write while it runs, and PostgreSQL serves
/// several clients. A database that cannot be reached is an error naming its URL, with the
/// password hidden. A missing SQLite file is created only by `detente init` and `serve
/// --new-store`, never here: an offline command must not leave an empty store behind that a
/// later `serve` would take for the real one.
pub async fn open_store(dir: &NodeDir, config: &NodeConfig) -> Result<NodeStore, StartError> {
    let default_file = dir.file(config::DATABASE_FILE);
    if let Some(path) = sqlite_path(config, &default_file)? {
        if !path.exists() {
            return Err(StartError::Store(detente_store::StoreError::Open(format!(
                "{}: no such file (was the database moved?)",
                path.display()
            ))));
        }
    }
    Ok(NodeStore::open(&config.database_url, &default_file).await?)
}

/// Where the node's SQLite file is, when its store is SQLite.
fn sqlite_path(
    config: &NodeConfig,
    default_file: &std::path::Path,
) -> Result<Option<std::path::PathBuf>, StartError> {
    Ok(
        match detente_store::StoreUrl::parse(&config.database_url, default_file)? {
            detente_store::StoreUrl::Sqlite(path) => Some(path.to_path_buf()),
            detente_store::StoreUrl::Postgres(_) => None,
        },
    )
}

/// Start the link task of a peer and register where its inbound connections go.
fn start_link(shared: &Arc<Shared>, entry: Arc<peers::PeerEntry>) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(INCOMING_QUEUE_MAX);
    if let Ok(mut incoming) = shared.incoming.lock() {
        incoming.insert(entry.name.clone(), tx);
    }
    tokio::spawn(link::run_peer(
        shared.clone(),
        entry,
        rx,
        shared.shutdown.clone(),
    ))
}

/// Pin a peer at run time (after `peer add` changed `node.toml`).
pub async fn add_peer(shared: &Arc<Shared>, name: &str) -> Result<(), StartError> {
    let config = shared.dir.load()?;
    let Some(peer) = config.peer(name).cloned() else {
        return Err(StartError::Config(config::ConfigError::BadValue {
            key: "peer".into(),
            reason: format!("{name:?} is not in node.toml"),
        }));
    };
    let key = peer.party_key()?;
    if shared.table.get(name).is_some() {
        // A changed key or address takes effect on restart: a running link keeps its pin.
        return Ok(());
    }
    let entry = shared.table.insert(name, key, peer.addrs.clone());
    shared.engine.add_peer(name, key, peer.addrs.len()).await;
    if let Ok(mut c) = shared.config.write() {
        *c = config;
    }
    if shared.engine.runs_tasks() {
        // The link stops by itself when the node shuts down.
        drop(start_link(shared, entry));
    }
    Ok(())
}

/// Accept TLS connections from pinned peers and hand each to its peer's link task. Before
/// any TLS, the [`gate`] decides whether the connection gets a handshake slot.
async fn accept_peers(shared: Arc<Shared>, listener: TcpListener) {
    let server_config = match tls::server_config(&shared.secret, shared.table.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the TLS server configuration");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let pinned = pinned_address(&shared, remote.ip());
        let ticket = match shared
            .gate
            .admit(remote.ip(), pinned, std::time::Instant::now())
        {
            Ok(t) => t,
            Err(why) => {
                log_refusals(&shared, remote, why.name());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(gate::PRE_AUTH_TIMEOUT, acceptor.accept(tcp)).await;
            drop(ticket);
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    if let Some(tls::TlsError::UnpinnedPeer { presented }) = tls::rejection(&e) {
                        let now = std::time::Instant::now();
                        shared
                            .gate
                            .key_refused(remote.ip(), pinned, *presented, now);
                        log_refusals(&shared, remote, "unpinned key");
                    } else {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            hand_over(&shared, tls, remote);
        });
    }
}

/// Give an authenticated connection to its peer's link task.
fn hand_over(
    shared: &Shared,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote: SocketAddr,
) {
    let Some(key) = tls::peer_key(tls.get_ref().1) else {
        return;
    };
    let Some(entry) = shared.table.by_key(&key) else {
        return;
    };
    shared.gate.authenticated(remote.ip());
    if let engine::Engine::Core(core) = &shared.engine {
        engine::accept(&core.driver, &entry, tls, remote);
        return;
    }
    let sender = shared
        .incoming
        .lock()
        .ok()
        .and_then(|m| m.get(&entry.name).cloned());
    if let Some(sender) = sender {
        let connection = Connection {
            stream: tokio_rustls::TlsStream::Server(tls),
            dialed_by_us: false,
            address: remote.to_string(),
        };
        let _ = sender.try_send(connection);
    }
}

/// Whether `ip` is the address of a pinned peer (an IP literal in its `addrs`).
fn pinned_address(shared: &Shared, ip: std::net::IpAddr) -> bool {
    shared.table.all().iter().any(|entry| {
        entry
            .addrs
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .any(|a| a.ip() == ip)
    })
}

/// One WARN line per [`gate::FLOOD_LOG_INTERVAL`] at most, however many are refused.
fn log_refusals(shared: &Shared, remote: SocketAddr, why: &str) {
    if let Some(count) = shared.gate.log_line(std::time::Instant::now()) {
        tracing::warn!(
            %remote,
            reason = why,
            refused = count,
            "refusing inbound peer connections ({count} since the last such line; \
             see /metrics detente_peer_connections_refused_total and status refused_keys)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::time_text;

    #[test]
    fn times_have_fixed_width_and_sort_as_text() {
        assert_eq!(time_text(1_700_000_000_200), "2023-11-14T22:13:20.200Z");
        assert_eq!(time_text(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert!(time_text(1_700_000_000_200) < time_text(1_700_000_000_210));
    }
}
