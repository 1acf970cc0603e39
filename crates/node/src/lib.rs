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
pub mod events;
pub mod hooks;
pub mod link;
pub mod metrics;
pub mod notify;
pub mod peers;
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
use crate::writer::WriterHandle;

/// The store implementation in use: SQLite or PostgreSQL, as `database_url` says.
pub type NodeStore = detente_store::AnyStore;

/// Inbound connections queued per peer, at most.
const INCOMING_QUEUE_MAX: usize = 4;
/// Unauthenticated connections being handshaken at once, at most.
const HANDSHAKES_MAX: usize = 64;

/// Milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
}

/// State shared by the tasks of a running node.
pub struct Shared {
    pub dir: NodeDir,
    pub config: std::sync::RwLock<NodeConfig>,
    pub secret: Arc<PartySecret>,
    pub store: Arc<NodeStore>,
    pub writer: WriterHandle,
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
    incoming: Mutex<HashMap<String, mpsc::Sender<Connection>>>,
    shutdown: watch::Receiver<bool>,
}

/// A running node.
pub struct Node {
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Start the node in `dir`.
    pub async fn start(dir: NodeDir) -> Result<Node, StartError> {
        let config = dir.load()?;
        let secret = Arc::new(dir.secret()?);
        let token = dir.token()?;
        let store = Arc::new(open_store(&dir, &config).await?);
        let table = Arc::new(PeerTable::default());
        let events = Events::new();
        let mut peers = Vec::new();
        for peer in &config.peers {
            let key = peer.party_key()?;
            table.insert(&peer.name, key, peer.addrs.clone());
            peers.push((peer.name.clone(), key));
        }
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
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            dir,
            link_config: config.link_config(),
            config: std::sync::RwLock::new(config),
            secret,
            store,
            writer,
            table,
            hooks: hooks::Hooks::new(events.metrics().clone()),
            events,
            token,
            peer_addr,
            console_addr,
            formats: std::sync::RwLock::new(notify::held_formats()),
            charters: charter::Charters::default(),
            console: console::ConsoleState::new(),
            incoming: Mutex::new(HashMap::new()),
            shutdown: shutdown_rx,
        });
        let mut node = Node {
            shared: shared.clone(),
            shutdown: shutdown_tx,
            tasks: Vec::new(),
        };
        for entry in shared.table.all() {
            node.tasks.push(start_link(&shared, entry));
        }
        node.tasks.push(tokio::spawn(
            shared.hooks.clone().run(shared.shutdown.clone()),
        ));
        node.tasks
            .push(tokio::spawn(deadlines::run(shared.clone())));
        node.tasks.push(tokio::spawn(charter::watch(
            shared.clone(),
            shared.shutdown.clone(),
        )));
        node.tasks
            .push(tokio::spawn(accept_peers(shared.clone(), peer_listener)));
        node.tasks
            .push(tokio::spawn(api::serve(shared.clone(), console_listener)));
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

    /// Stop every task and close the store. Everything acknowledged is already durable.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.shared.store.close().await;
        let _ = std::fs::remove_file(self.shared.dir.file(config::RUN_FILE));
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
/// password hidden.
pub async fn open_store(dir: &NodeDir, config: &NodeConfig) -> Result<NodeStore, StartError> {
    let default_file = dir.file(config::DATABASE_FILE);
    Ok(NodeStore::open(&config.database_url, &default_file).await?)
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
    shared.writer.add_peer(name, key).await;
    let entry = shared.table.insert(name, key, peer.addrs.clone());
    if let Ok(mut c) = shared.config.write() {
        *c = config;
    }
    // The link stops by itself when the node shuts down.
    drop(start_link(shared, entry));
    Ok(())
}

/// Accept TLS connections from pinned peers and hand each to its peer's link task.
async fn accept_peers(shared: Arc<Shared>, listener: TcpListener) {
    let server_config = match tls::server_config(&shared.secret, shared.table.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the TLS server configuration");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
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
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "too many handshakes in progress; dropping a connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(link::HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    match tls::rejection(&e) {
                        Some(reason) => tracing::warn!(%remote, %reason, "refused a connection"),
                        None => tracing::info!(%remote, error = %e, "TLS handshake failed"),
                    }
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let Some(key) = tls::peer_key(tls.get_ref().1) else {
                return;
            };
            let Some(entry) = shared.table.by_key(&key) else {
                return;
            };
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
        });
    }
}
