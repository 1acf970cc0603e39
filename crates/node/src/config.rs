//! A node's directory: `node.toml`, the party key, the API token and the database.
//!
//! The configuration file is the one thing an operator edits (through `detente config set`
//! and `detente peer add`, never by hand if avoidable), so every value is validated when it
//! is read and when it is set, and a bad value leaves the file unchanged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use detente_proto::{PartyKey, PartySecret};
use serde::{Deserialize, Serialize};

/// Names of the files in a node directory.
pub const CONFIG_FILE: &str = "node.toml";
pub const KEY_FILE: &str = "party.key";
pub const TOKEN_FILE: &str = "api.token";
pub const DATABASE_FILE: &str = "detente.db";
/// Written by a running node: its process id and the addresses it actually listens on.
pub const RUN_FILE: &str = "node.run.json";

/// Most peers a node may pin (docs/spec.md §10 targets 100).
pub const PEERS_MAX: usize = 256;
/// Most addresses per peer.
pub const ADDRESSES_MAX: usize = 8;
/// Longest node or peer name.
pub const NAME_BYTES_MAX: usize = 64;

/// Errors reading or changing a node directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// There is no node in the directory. Remedy: `detente init --dir DIR ...`.
    #[error("no node in {0} (no {CONFIG_FILE})")]
    NoNode(PathBuf),
    /// `init` refuses to overwrite an existing node.
    #[error("{0} already holds a node; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A value given to `config set`, `peer add` or `init` is not acceptable.
    #[error("{key}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("unknown configuration key {0:?}")]
    UnknownKey(String),
}

type Result<T> = std::result::Result<T, ConfigError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One pinned peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    /// Text form of the peer's public key (`ed25519:...`).
    pub key: String,
    /// Addresses tried in order: primary first, then backups.
    pub addrs: Vec<String>,
    /// What this node's duty officer does when the link to this peer is down, a link test
    /// is missed or a message to or from it is overdue ("Call the MND duty line, +86 …"):
    /// shown with each such alarm and in the counterparts directory. A local procedure in
    /// the node's language, at most [`NEXT_STEP_BYTES_MAX`] bytes; not part of the charter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_step: String,
}

/// Longest `peers.NAME.next_step`, in bytes.
pub const NEXT_STEP_BYTES_MAX: usize = 500;

impl PeerConfig {
    pub fn party_key(&self) -> Result<PartyKey> {
        PartyKey::from_text(&self.key).map_err(|e| ConfigError::BadValue {
            key: format!("peers.{}.key", self.name),
            reason: e.to_string(),
        })
    }
}

/// Link tunables (`link.*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct LinkSection {
    pub heartbeat_interval: String,
    pub test_interval: String,
    pub backoff_initial: String,
    pub backoff_max: String,
    /// The peer's wall clock further from ours than this is a warning (status, log).
    pub clock_skew_warn: String,
}

impl Default for LinkSection {
    fn default() -> Self {
        Self {
            heartbeat_interval: "2s".into(),
            test_interval: "1h".into(),
            backoff_initial: "200ms".into(),
            backoff_max: "30s".into(),
            clock_skew_warn: "2s".into(),
        }
    }
}

/// Acknowledgment deadlines per precedence (`deadlines.*`, docs/spec.md §5 defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DeadlineSection {
    pub flash_delivered: String,
    pub flash_acknowledged: String,
    pub immediate_acknowledged: String,
    pub priority_acknowledged: String,
    pub routine_acknowledged: String,
    /// Pending messages the deadline watch keeps in memory at most (the nearest due; the
    /// rest wait in the store and are read back in due order). Unset: 200,000
    /// (`deadlines::WATCHED_MAX`). Settable so that a test can run the watch beyond its
    /// limit with a few hundred messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_max: Option<u64>,
}

impl Default for DeadlineSection {
    fn default() -> Self {
        Self {
            flash_delivered: "10s".into(),
            flash_acknowledged: "10m".into(),
            immediate_acknowledged: "30m".into(),
            priority_acknowledged: "3h".into(),
            routine_acknowledged: "24h".into(),
            watched_max: None,
        }
    }
}

/// The shortest deadlines and link-test interval this node agrees to in a charter
/// (`floors.*`, issue 12 item 9). A peer asking for less is not agreed: the node does not
/// sign that charter and says why in `status`. Empty: the default floor
/// ([`detente_proto::Floors::default`]) or this node's own deadline, whichever is shorter;
/// a value set here may not be above this node's own deadline (it would refuse its own
/// terms).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FloorSection {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub flash_delivered: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub flash_acknowledged: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub immediate_acknowledged: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub priority_acknowledged: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub routine_acknowledged: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_test_interval: String,
}

impl FloorSection {
    /// The value set for `floors.KEY` (empty: automatic), if `key` is a floor key.
    fn slot(&mut self, key: &str) -> Option<&mut String> {
        Some(match key {
            "floors.flash_delivered" => &mut self.flash_delivered,
            "floors.flash_acknowledged" => &mut self.flash_acknowledged,
            "floors.immediate_acknowledged" => &mut self.immediate_acknowledged,
            "floors.priority_acknowledged" => &mut self.priority_acknowledged,
            "floors.routine_acknowledged" => &mut self.routine_acknowledged,
            "floors.link_test_interval" => &mut self.link_test_interval,
            _ => return None,
        })
    }
}

/// Every `floors.*` key with the term it bounds, in charter order.
pub const FLOOR_KEYS: [(&str, &str); 6] = [
    ("floors.flash_delivered", "deadlines.flash_delivered"),
    ("floors.flash_acknowledged", "deadlines.flash_acknowledged"),
    (
        "floors.immediate_acknowledged",
        "deadlines.immediate_acknowledged",
    ),
    (
        "floors.priority_acknowledged",
        "deadlines.priority_acknowledged",
    ),
    (
        "floors.routine_acknowledged",
        "deadlines.routine_acknowledged",
    ),
    ("floors.link_test_interval", "link.test_interval"),
];

/// When checkpoints are signed on their own (`transcript.*`); changes take effect at the
/// next start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TranscriptSection {
    /// Sign a checkpoint after this many envelopes appended to a channel (0: never by count).
    pub checkpoint_every: String,
    /// Sign a checkpoint after this long with nothing to do while something is unsigned
    /// (`off`: never by time).
    pub checkpoint_quiet: String,
}

impl Default for TranscriptSection {
    fn default() -> Self {
        Self {
            checkpoint_every: "1000".into(),
            checkpoint_quiet: "5s".into(),
        }
    }
}

/// The console and API (`console.*`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ConsoleSection {
    /// Serve the console and API on an address other than loopback although they have no
    /// TLS (passwords and session cookies then cross the network in clear). Off by default;
    /// the node refuses such an address without it and warns with it.
    pub insecure_public_bind: bool,
}

/// Escalation hooks (`hooks.*`); used by the deadline work.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HookSection {
    pub webhook_url: String,
    pub command: String,
}

/// `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    /// Short name of this node ("washington").
    pub name: String,
    /// Full name of the party ("United States Department of Defense").
    pub party: String,
    /// Language of this node's operators (en, zh-CN).
    pub lang: String,
    /// Time zone of this node's operators (IANA name).
    pub tz: String,
    /// The operator's title shown to the other side by default.
    #[serde(default = "default_author")]
    pub author: String,
    /// Where the peer port (TLS) listens.
    pub peer_listen: String,
    /// Where the console and API listen (loopback unless configured otherwise).
    pub console_listen: String,
    /// Empty: the SQLite file in the node directory.
    #[serde(default)]
    pub database_url: String,
    #[serde(default)]
    pub link: LinkSection,
    #[serde(default)]
    pub deadlines: DeadlineSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub floors: FloorSection,
    #[serde(default)]
    pub hooks: HookSection,
    #[serde(default)]
    pub transcript: TranscriptSection,
    #[serde(default)]
    pub console: ConsoleSection,
    #[serde(default)]
    pub oidc: OidcSection,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Counterpart positions this party offers for the charter's directory.
    #[serde(default)]
    pub counterparts: Vec<CounterpartConfig>,
    /// What runs the channels: `tasks` (empty: the writer, link, deadline and charter
    /// tasks) or `core` (the sans-IO core behind one driver task; being brought to parity,
    /// see ARCHITECTURE.md).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
}

/// A pair of positions: ours and the peer's ("Secretary of Defense" ↔ "Minister of National
/// Defense"). Listed in every channel's charter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterpartConfig {
    pub ours: String,
    pub theirs: String,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_author() -> String {
    "Duty Officer".into()
}

/// A node directory on disk.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub path: PathBuf,
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub name: String,
    pub party: String,
    pub lang: String,
    pub tz: String,
    pub peer_listen: String,
    pub console_listen: String,
}

impl NodeDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Create a node: the directory (owner-only), a new party key from `seed`, an API token
    /// from `token`, and `node.toml`. Refuses to touch an existing node.
    pub fn init(
        &self,
        options: &InitOptions,
        seed: [u8; 32],
        token: [u8; 32],
    ) -> Result<NodeConfig> {
        if self.file(CONFIG_FILE).exists() || self.file(KEY_FILE).exists() {
            return Err(ConfigError::Exists(self.path.clone()));
        }
        validate_name("name", &options.name)?;
        validate_lang(&options.lang)?;
        validate_tz(&options.tz)?;
        validate_addr("peer_listen", &options.peer_listen)?;
        validate_addr("console_listen", &options.console_listen)?;
        if options.party.trim().is_empty() || options.party.len() > 200 {
            return Err(ConfigError::BadValue {
                key: "party".into(),
                reason: "give the party's full name, up to 200 bytes".into(),
            });
        }
        fs::create_dir_all(&self.path).map_err(io_err(&self.path))?;
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.path))?;
        write_private(&self.file(KEY_FILE), hex::encode(seed).as_bytes())?;
        write_private(&self.file(TOKEN_FILE), hex::encode(token).as_bytes())?;
        // An empty file is an empty SQLite database. Made here, so that a store missing at
        // a later start means it was moved or lost (the node then refuses to start).
        // Never truncate: a database already there is kept as it is.
        let db = self.file(DATABASE_FILE);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&db)
            .map_err(io_err(&db))?;
        let config = NodeConfig {
            name: options.name.clone(),
            party: options.party.clone(),
            lang: options.lang.clone(),
            tz: options.tz.clone(),
            author: default_author(),
            peer_listen: options.peer_listen.clone(),
            console_listen: options.console_listen.clone(),
            database_url: String::new(),
            link: LinkSection::default(),
            deadlines: DeadlineSection::default(),
            floors: FloorSection::default(),
            hooks: HookSection::default(),
            peers: Vec::new(),
            transcript: TranscriptSection::default(),
            console: ConsoleSection::default(),
            oidc: OidcSection::default(),
            counterparts: Vec::new(),
            engine: String::new(),
        };
        self.save(&config)?;
        Ok(config)
    }

    /// Read and validate `node.toml`.
    pub fn load(&self) -> Result<NodeConfig> {
        let path = self.file(CONFIG_FILE);
        if !path.exists() {
            return Err(ConfigError::NoNode(self.path.clone()));
        }
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config.validate().map_err(|e| ConfigError::Invalid {
            path,
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// Write `node.toml` atomically (write a temporary file, then rename over).
    pub fn save(&self, config: &NodeConfig) -> Result<()> {
        config.validate()?;
        let text = toml::to_string_pretty(config).map_err(|e| ConfigError::BadValue {
            key: "node.toml".into(),
            reason: e.to_string(),
        })?;
        let path = self.file(CONFIG_FILE);
        let tmp = self.file("node.toml.tmp");
        write_private(&tmp, text.as_bytes())?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The party key. Refuses a key file readable by others.
    pub fn secret(&self) -> Result<PartySecret> {
        Ok(PartySecret::from_seed(self.secret_seed()?))
    }

    /// The party key's seed, as the core is configured with it.
    pub fn secret_seed(&self) -> Result<[u8; 32]> {
        let path = self.file(KEY_FILE);
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(ConfigError::Invalid {
                path,
                reason: "the key file is readable by others; run: chmod 600 on it".into(),
            });
        }
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|raw| raw.try_into().ok())
            .ok_or_else(|| ConfigError::Invalid {
                path: path.clone(),
                reason: "not a 32-byte hex key".into(),
            })?;
        Ok(seed)
    }

    /// The API token the command line presents.
    pub fn token(&self) -> Result<String> {
        let path = self.file(TOKEN_FILE);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(text.trim().to_string())
    }

    /// Pin a peer (or change its key or addresses). Works whether or not the node runs.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<NodeConfig> {
        let mut config = self.load()?;
        validate_peer(&peer)?;
        if peer.party_key()? == self.secret()?.public() {
            return Err(ConfigError::BadValue {
                key: "key".into(),
                reason: "that is this node's own key".into(),
            });
        }
        if let Some(other) = config
            .peers
            .iter()
            .find(|p| p.name != peer.name && p.key == peer.key)
        {
            return Err(ConfigError::BadValue {
                key: "key".into(),
                reason: format!("already pinned for peer {:?}", other.name),
            });
        }
        match config.peers.iter_mut().find(|p| p.name == peer.name) {
            Some(existing) => *existing = peer,
            None => {
                if config.peers.len() >= PEERS_MAX {
                    return Err(ConfigError::BadValue {
                        key: "peers".into(),
                        reason: format!("at most {PEERS_MAX} peers"),
                    });
                }
                config.peers.push(peer)
            }
        }
        self.save(&config)?;
        Ok(config)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// What `database_url` may be, for error messages.
const DATABASE_URL_FORMS: &str = "empty (the SQLite file in the node directory), sqlite:PATH or \
     postgres://USER:PASSWORD@HOST:PORT/DB";

fn database_url_is_valid(url: &str) -> bool {
    url.is_empty()
        || url.strip_prefix("sqlite:").is_some_and(|p| !p.is_empty())
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
}

impl NodeConfig {
    pub fn validate(&self) -> Result<()> {
        validate_name("name", &self.name)?;
        validate_lang(&self.lang)?;
        validate_tz(&self.tz)?;
        validate_addr("peer_listen", &self.peer_listen)?;
        validate_addr("console_listen", &self.console_listen)?;
        if self.author.is_empty()
            || self.author.len() > detente_proto::envelope::limits::AUTHOR_BYTES_MAX
            || self.author.chars().any(char::is_control)
        {
            return Err(bad(
                "author",
                "between 1 and 96 bytes, no control characters",
            ));
        }
        for key in CONFIG_KEYS {
            if key.starts_with("link.")
                || key.starts_with("deadlines.")
                || (*key == "transcript.checkpoint_quiet"
                    && self.transcript.checkpoint_quiet != "off")
            {
                parse_duration(&self.get(key)?).map_err(|reason| bad(key, &reason))?;
            }
        }
        self.validate_floors()?;
        if !database_url_is_valid(&self.database_url) {
            return Err(bad("database_url", DATABASE_URL_FORMS));
        }
        self.oidc.validate()?;
        if self.peers.len() > PEERS_MAX {
            return Err(bad("peers", "too many peers"));
        }
        for peer in &self.peers {
            validate_peer(peer)?;
        }
        if self.counterparts.len() > detente_proto::charter::limits::COUNTERPARTS_MAX {
            return Err(bad("counterparts", "at most 128 pairs"));
        }
        for c in &self.counterparts {
            for position in [&c.ours, &c.theirs] {
                if position.is_empty()
                    || position.len() > detente_proto::charter::limits::POSITION_BYTES_MAX
                    || position.chars().any(char::is_control)
                {
                    return Err(bad(
                        "counterparts",
                        "each position between 1 and 128 bytes, no control characters",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The link configuration of the protocol core.
    pub fn link_config(&self) -> detente_proto::LinkConfig {
        let d = |s: &str, default: Duration| parse_duration(s).unwrap_or(default);
        detente_proto::LinkConfig {
            heartbeat: d(&self.link.heartbeat_interval, Duration::from_secs(2)),
            backoff_initial: d(&self.link.backoff_initial, Duration::from_millis(200)),
            backoff_max: d(&self.link.backoff_max, Duration::from_secs(30)),
            degraded_rtt: Duration::from_secs(1),
            skew_warn: d(&self.link.clock_skew_warn, Duration::from_secs(2)),
        }
    }

    /// The writer's checkpoint policy.
    pub fn checkpoint_policy(&self) -> crate::writer::CheckpointPolicy {
        let default = crate::writer::CheckpointPolicy::default();
        crate::writer::CheckpointPolicy {
            every: self
                .transcript
                .checkpoint_every
                .parse()
                .unwrap_or(default.every),
            quiet: if self.transcript.checkpoint_quiet == "off" {
                std::time::Duration::ZERO
            } else {
                parse_duration(&self.transcript.checkpoint_quiet).unwrap_or(default.quiet)
            },
        }
    }

    /// The acknowledgment deadlines this party asks for (its contribution to the charter).
    pub fn deadlines(&self) -> detente_proto::Deadlines {
        let base = detente_proto::Deadlines::default();
        let d = |s: &str, default: Duration| parse_duration(s).unwrap_or(default);
        let dl = &self.deadlines;
        detente_proto::Deadlines {
            flash_delivered: d(&dl.flash_delivered, base.flash_delivered),
            flash_acknowledged: d(&dl.flash_acknowledged, base.flash_acknowledged),
            immediate_acknowledged: d(&dl.immediate_acknowledged, base.immediate_acknowledged),
            priority_acknowledged: d(&dl.priority_acknowledged, base.priority_acknowledged),
            routine_acknowledged: d(&dl.routine_acknowledged, base.routine_acknowledged),
        }
    }

    /// Each floor set must parse and be no higher than this node's own ask for that term.
    fn validate_floors(&self) -> Result<()> {
        let mut floors = self.floors.clone();
        for (key, term) in FLOOR_KEYS {
            let value = floors.slot(key).map(|v| v.clone()).unwrap_or_default();
            if value.is_empty() {
                continue;
            }
            let floor = parse_duration(&value).map_err(|r| bad(key, &r))?;
            let own_text = self.get(term)?;
            let own = parse_duration(&own_text).map_err(|r| bad(term, &r))?;
            if floor > own {
                return Err(bad(
                    key,
                    &format!(
                        "{value} is above this node's own {term} ({own_text}): the node would \
                         refuse its own terms; lower the floor or raise {term}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The floors this node holds charters to: each as set, else the default floor or
    /// this node's own ask, whichever is shorter (see [`FloorSection`]).
    pub fn floors(&self) -> detente_proto::Floors {
        let default = detente_proto::Floors::default();
        let mut section = self.floors.clone();
        let mut pick = |key: &str, default: Duration| {
            section
                .slot(key)
                .and_then(|v| parse_duration(v).ok())
                .unwrap_or(default)
        };
        let d = &default.deadlines;
        let set = detente_proto::Floors {
            deadlines: detente_proto::Deadlines {
                flash_delivered: pick("floors.flash_delivered", d.flash_delivered),
                flash_acknowledged: pick("floors.flash_acknowledged", d.flash_acknowledged),
                immediate_acknowledged: pick(
                    "floors.immediate_acknowledged",
                    d.immediate_acknowledged,
                ),
                priority_acknowledged: pick(
                    "floors.priority_acknowledged",
                    d.priority_acknowledged,
                ),
                routine_acknowledged: pick("floors.routine_acknowledged", d.routine_acknowledged),
            },
            link_test_interval: pick("floors.link_test_interval", default.link_test_interval),
        };
        let own = detente_proto::Floors {
            deadlines: self.deadlines(),
            link_test_interval: self.link_test_interval(),
        };
        detente_proto::Floors {
            deadlines: set.deadlines.stricter(&own.deadlines),
            link_test_interval: set.link_test_interval.min(own.link_test_interval),
        }
    }

    /// The link-test cadence this party asks for.
    pub fn link_test_interval(&self) -> Duration {
        parse_duration(&self.link.test_interval).unwrap_or(Duration::from_secs(3600))
    }

    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// What runs the channels: `tasks` or `core` (see [`NodeConfig::engine`]), as
    /// `node.toml` says.
    pub fn engine(&self) -> &str {
        if self.engine.is_empty() {
            "tasks"
        } else {
            &self.engine
        }
    }

    /// Whether the sans-IO core runs the channels: `engine` in `node.toml`, unless the
    /// environment variable [`ENGINE_ENV`] says `tasks` or `core` (to run a whole test
    /// suite, or one node, on the other engine without editing its configuration).
    pub fn runs_core(&self) -> bool {
        match std::env::var(ENGINE_ENV).as_deref() {
            Ok("core") => true,
            Ok("tasks") => false,
            _ => self.engine() == "core",
        }
    }

    /// `config get KEY`.
    pub fn get(&self, key: &str) -> Result<String> {
        Ok(match key {
            "name" => self.name.clone(),
            "party" => self.party.clone(),
            "lang" => self.lang.clone(),
            "tz" => self.tz.clone(),
            "author" => self.author.clone(),
            "peer_listen" => self.peer_listen.clone(),
            "console_listen" => self.console_listen.clone(),
            "database_url" => self.database_url.clone(),
            "link.heartbeat_interval" => self.link.heartbeat_interval.clone(),
            "link.test_interval" => self.link.test_interval.clone(),
            "link.backoff_initial" => self.link.backoff_initial.clone(),
            "link.backoff_max" => self.link.backoff_max.clone(),
            "link.clock_skew_warn" => self.link.clock_skew_warn.clone(),
            "deadlines.flash_delivered" => self.deadlines.flash_delivered.clone(),
            "deadlines.flash_acknowledged" => self.deadlines.flash_acknowledged.clone(),
            "deadlines.immediate_acknowledged" => self.deadlines.immediate_acknowledged.clone(),
            "deadlines.priority_acknowledged" => self.deadlines.priority_acknowledged.clone(),
            "deadlines.routine_acknowledged" => self.deadlines.routine_acknowledged.clone(),
            floor if floor.starts_with("floors.") => return self.floor_text(floor),
            "hooks.webhook_url" => self.hooks.webhook_url.clone(),
            "hooks.command" => self.hooks.command.clone(),
            "transcript.checkpoint_every" => self.transcript.checkpoint_every.clone(),
            "transcript.checkpoint_quiet" => self.transcript.checkpoint_quiet.clone(),
            "console.insecure_public_bind" => self.console.insecure_public_bind.to_string(),
            "engine" => self.engine().to_string(),
            oidc if oidc.starts_with("oidc.") => return self.oidc.get(oidc),
            other => match peer_key(other) {
                Some((name, "next_step")) => self
                    .peers
                    .iter()
                    .find(|p| p.name == name)
                    .map(|p| p.next_step.clone())
                    .ok_or_else(|| ConfigError::UnknownKey(other.to_string()))?,
                _ => return Err(ConfigError::UnknownKey(other.to_string())),
            },
        })
    }

    /// `config get floors.KEY`: the value set, or the floor in force when none is (e.g.
    /// `1m`), so that an operator sees what the node holds peers to.
    fn floor_text(&self, key: &str) -> Result<String> {
        let mut section = self.floors.clone();
        let set = section
            .slot(key)
            .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?
            .clone();
        if !set.is_empty() {
            return Ok(set);
        }
        let index = FLOOR_KEYS.iter().position(|(k, _)| *k == key).unwrap_or(0);
        Ok(duration_text(self.floors().all()[index].1))
    }

    /// `config set KEY VALUE`: validates, then changes this value only. Durations are
    /// normalised (`120s` stays `120s`; `2m` stays `2m`) but must parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let value = value.trim().to_string();
        if let Some((name, "next_step")) = peer_key(key) {
            validate_next_step(name, &value)?;
            let peer = self
                .peers
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
            peer.next_step = value;
            return Ok(());
        }
        let duration = |v: &str| {
            parse_duration(v)
                .map(|_| v.to_string())
                .map_err(|r| bad(key, &r))
        };
        let slot: &mut String = match key {
            "name" => {
                validate_name(key, &value)?;
                &mut self.name
            }
            "party" => &mut self.party,
            "lang" => {
                validate_lang(&value)?;
                &mut self.lang
            }
            "tz" => {
                validate_tz(&value)?;
                &mut self.tz
            }
            "author" => &mut self.author,
            "peer_listen" | "console_listen" => {
                validate_addr(key, &value)?;
                if key == "peer_listen" {
                    &mut self.peer_listen
                } else {
                    &mut self.console_listen
                }
            }
            "database_url" => {
                if !database_url_is_valid(&value) {
                    return Err(bad(key, DATABASE_URL_FORMS));
                }
                &mut self.database_url
            }
            "hooks.webhook_url" => {
                // Hooks carry no TLS stack of their own: an https endpoint is reached through a
                // relay on this machine.
                if !(value.is_empty() || value.starts_with("http://")) {
                    return Err(bad(
                        key,
                        "an http:// URL (https is not supported for hooks; use a local relay), or empty",
                    ));
                }
                &mut self.hooks.webhook_url
            }
            "hooks.command" => &mut self.hooks.command,
            floor if floor.starts_with("floors.") => {
                // Empty goes back to the automatic floor.
                if !value.is_empty() {
                    duration(&value)?;
                }
                self.floors
                    .slot(floor)
                    .ok_or_else(|| ConfigError::UnknownKey(floor.to_string()))?
            }
            "engine" => {
                if !matches!(value.as_str(), "tasks" | "core") {
                    return Err(bad(key, "tasks or core"));
                }
                &mut self.engine
            }
            "console.insecure_public_bind" => {
                self.console.insecure_public_bind = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(key, "true or false")),
                };
                return Ok(());
            }
            "transcript.checkpoint_every" => {
                match value.parse::<u64>() {
                    Ok(n) if n <= 1_000_000 => {}
                    _ => return Err(bad(key, "a number of envelopes from 0 (never) to 1000000")),
                }
                &mut self.transcript.checkpoint_every
            }
            "transcript.checkpoint_quiet" => {
                if value != "off" {
                    let d = parse_duration(&value).map_err(|r| bad(key, &r))?;
                    if d > Duration::from_secs(24 * 3600) {
                        return Err(bad(key, "at most 24h, or off"));
                    }
                }
                &mut self.transcript.checkpoint_quiet
            }
            "link.heartbeat_interval" => {
                let d = parse_duration(&value).map_err(|r| bad(key, &r))?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                    return Err(bad(key, "between 100ms and 10m"));
                }
                &mut self.link.heartbeat_interval
            }
            "link.test_interval" => {
                duration(&value)?;
                &mut self.link.test_interval
            }
            "link.backoff_initial" => {
                duration(&value)?;
                &mut self.link.backoff_initial
            }
            "link.backoff_max" => {
                duration(&value)?;
                &mut self.link.backoff_max
            }
            "link.clock_skew_warn" => {
                let d = parse_duration(&value).map_err(|r| bad(key, &r))?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(24 * 3600) {
                    return Err(bad(key, "between 100ms and 24h"));
                }
                &mut self.link.clock_skew_warn
            }
            "deadlines.flash_delivered" => {
                duration(&value)?;
                &mut self.deadlines.flash_delivered
            }
            "deadlines.flash_acknowledged" => {
                duration(&value)?;
                &mut self.deadlines.flash_acknowledged
            }
            "deadlines.immediate_acknowledged" => {
                duration(&value)?;
                &mut self.deadlines.immediate_acknowledged
            }
            "deadlines.priority_acknowledged" => {
                duration(&value)?;
                &mut self.deadlines.priority_acknowledged
            }
            "deadlines.routine_acknowledged" => {
                duration(&value)?;
                &mut self.deadlines.routine_acknowledged
            }
            oidc if oidc.starts_with("oidc.") => {
                self.oidc.set(oidc, &value)?;
                return self.validate();
            }
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        };
        *slot = value;
        self.validate()
    }
}

/// The environment variable that overrides `engine` (see [`NodeConfig::runs_core`]).
pub const ENGINE_ENV: &str = "DETENTE_ENGINE";

/// Every key `config get` and `config set` know, in display order.
pub const CONFIG_KEYS: &[&str] = &[
    "name",
    "party",
    "lang",
    "tz",
    "author",
    "peer_listen",
    "console_listen",
    "database_url",
    "link.heartbeat_interval",
    "link.test_interval",
    "link.backoff_initial",
    "link.backoff_max",
    "link.clock_skew_warn",
    "deadlines.flash_delivered",
    "deadlines.flash_acknowledged",
    "deadlines.immediate_acknowledged",
    "deadlines.priority_acknowledged",
    "deadlines.routine_acknowledged",
    "floors.flash_delivered",
    "floors.flash_acknowledged",
    "floors.immediate_acknowledged",
    "floors.priority_acknowledged",
    "floors.routine_acknowledged",
    "floors.link_test_interval",
    "hooks.webhook_url",
    "hooks.command",
    "transcript.checkpoint_every",
    "transcript.checkpoint_quiet",
    "console.insecure_public_bind",
    "engine",
    "oidc.issuer",
    "oidc.client_id",
    "oidc.client_secret",
    "oidc.redirect_url",
    "oidc.scopes",
    "oidc.login_claim",
    "oidc.role_claim",
    "oidc.role_map",
    "oidc.ca_file",
];

fn bad(key: &str, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// A duration in the largest unit that writes it whole (`90s`, `1m`, `2h`), as
/// [`parse_duration`] reads it.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parse `250ms`, `3s`, `10m`, `1h`, `2d` (one number, one unit).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write it like 3s, 10m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => return Err(format!("{text:?} has no known unit; use ms, s, m, h or d")),
    };
    if ms == 0 || ms > 365 * 86_400_000 {
        return Err(format!("{text:?} must be between 1ms and 365d"));
    }
    Ok(Duration::from_millis(ms))
}

fn validate_name(key: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(bad(
            key,
            "lowercase letters, digits, '-' and '_', up to 64 characters",
        ));
    }
    Ok(())
}

fn validate_lang(lang: &str) -> Result<()> {
    if !matches!(lang, "en" | "zh-CN") {
        return Err(bad("lang", "en or zh-CN"));
    }
    Ok(())
}

fn validate_tz(tz: &str) -> Result<()> {
    jiff::tz::TimeZone::get(tz).map_err(|_| {
        bad(
            "tz",
            "an IANA time zone such as America/New_York or Asia/Shanghai",
        )
    })?;
    Ok(())
}

fn validate_addr(key: &str, addr: &str) -> Result<()> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(bad(key, "HOST:PORT, e.g. 127.0.0.1:7400"));
    }
    Ok(())
}

fn validate_peer(peer: &PeerConfig) -> Result<()> {
    validate_name("peer name", &peer.name)?;
    peer.party_key()?;
    if peer.addrs.is_empty() || peer.addrs.len() > ADDRESSES_MAX {
        return Err(bad("addr", "between 1 and 8 addresses per peer"));
    }
    for addr in &peer.addrs {
        validate_addr("addr", addr)?;
    }
    validate_next_step(&peer.name, &peer.next_step)
}

/// `peers.NAME.FIELD` as (NAME, FIELD).
fn peer_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("peers.")?.rsplit_once('.')
}

fn validate_next_step(peer: &str, text: &str) -> Result<()> {
    if text.len() > NEXT_STEP_BYTES_MAX || text.chars().any(char::is_control) {
        return Err(bad(
            &format!("peers.{peer}.next_step"),
            "at most 500 bytes, on one line, no control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn floors_default_below_our_own_deadlines_and_a_floor_above_them_is_refused() {
        let text = "name = \"w\"\nparty = \"W\"\nlang = \"en\"\ntz = \"UTC\"\n\
                    peer_listen = \"127.0.0.1:1\"\nconsole_listen = \"127.0.0.1:2\"\n";
        let mut config: NodeConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.floors(), detente_proto::Floors::default());
        assert_eq!(config.get("floors.flash_acknowledged").unwrap(), "1m");
        assert_eq!(config.get("floors.link_test_interval").unwrap(), "1m");
        // Our own shorter deadline lowers the automatic floor to it.
        config.set("deadlines.flash_acknowledged", "20s").unwrap();
        assert_eq!(config.get("floors.flash_acknowledged").unwrap(), "20s");
        // A floor above our own ask is refused, and says why.
        let err = config.set("floors.flash_acknowledged", "30s").unwrap_err();
        assert!(err.to_string().contains("above this node's own"), "{err}");
        config.set("deadlines.flash_acknowledged", "10m").unwrap();
        config.set("floors.flash_acknowledged", "2m").unwrap();
        assert_eq!(
            config.floors().deadlines.flash_acknowledged,
            Duration::from_secs(120)
        );
        assert!(config.set("deadlines.flash_acknowledged", "1m").is_err());
        assert!(config.set("floors.routine_acknowledged", "soon").is_err());
        config.set("floors.flash_acknowledged", "").unwrap();
        assert_eq!(config.get("floors.flash_acknowledged").unwrap(), "1m");
    }

    #[test]
    fn init_load_set_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeDir::new(dir.path().join("w"));
        let options = InitOptions {
            name: "washington".into(),
            party: "United States Department of Defense".into(),
            lang: "en".into(),
            tz: "America/New_York".into(),
            peer_listen: "127.0.0.1:7400".into(),
            console_listen: "127.0.0.1:7401".into(),
        };
        node.init(&options, [1; 32], [2; 32]).unwrap();
        assert!(matches!(
            node.init(&options, [1; 32], [2; 32]),
            Err(ConfigError::Exists(_))
        ));
        let mut config = node.load().unwrap();
        assert_eq!(config.get("deadlines.flash_delivered").unwrap(), "10s");
        config.set("link.heartbeat_interval", "1s").unwrap();
        assert!(config.set("link.heartbeat_interval", "fast").is_err());
        assert!(config.set("lang", "fr").is_err());
        assert!(matches!(
            config.set("nope", "1"),
            Err(ConfigError::UnknownKey(_))
        ));
        node.save(&config).unwrap();
        assert_eq!(node.load().unwrap().link.heartbeat_interval, "1s");
        assert!(!fs::read_to_string(node.file(CONFIG_FILE))
            .unwrap()
            .contains("[floors]"));
        let mode = fs::metadata(node.file(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(node.secret().unwrap().seed(), [1; 32]);

        // A peer's next step: set, read back, kept in the file; bad values refused.
        let mut config = node.load().unwrap();
        config.peers.push(PeerConfig {
            name: "beijing".into(),
            key: PartySecret::from_seed([3; 32]).public().to_text(),
            addrs: vec!["127.0.0.1:7500".into()],
            next_step: String::new(),
        });
        config
            .set("peers.beijing.next_step", "Call the duty line")
            .unwrap();
        assert_eq!(
            config.get("peers.beijing.next_step").unwrap(),
            "Call the duty line"
        );
        assert!(config.set("peers.beijing.next_step", "a\u{7}b").is_err());
        let long = "x".repeat(NEXT_STEP_BYTES_MAX + 1);
        assert!(config.set("peers.beijing.next_step", &long).is_err());
        assert!(matches!(
            config.set("peers.nobody.next_step", "x"),
            Err(ConfigError::UnknownKey(_))
        ));
        assert!(config.get("peers.beijing.address").is_err());
        node.save(&config).unwrap();
        let again = node.load().unwrap();
        assert_eq!(again.peers[0].next_step, "Call the duty line");
    }
}

/// Longest value of an `oidc.*` key, in bytes.
pub const OIDC_VALUE_BYTES_MAX: usize = 2048;
/// Where the provider sends the browser back, on the console's own address.
pub const OIDC_CALLBACK_PATH: &str = "/login/oidc/callback";

/// Operator sign-in through the organization's OpenID Connect provider (`oidc.*`;
/// `console::oidc`). Off while `issuer` is empty: local accounts only (air-gapped sites).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct OidcSection {
    /// The provider's issuer URL (https; http only on loopback, for tests and local proxies).
    pub issuer: String,
    /// This node's client at the provider.
    pub client_id: String,
    /// The client's secret (node.toml is owner-only; `config get` does not show it).
    pub client_secret: String,
    /// The console's callback as the browser reaches it, ending in
    /// [`OIDC_CALLBACK_PATH`] and registered at the provider.
    pub redirect_url: String,
    /// Scopes asked for besides `openid`, space-separated; empty: `profile`.
    pub scopes: String,
    /// The claim giving the operator's login name; empty: `preferred_username`.
    pub login_claim: String,
    /// The claim holding the operator's role or groups (a string or a list); empty: `roles`.
    pub role_claim: String,
    /// `VALUE=ROLE` pairs, comma-separated, from claim values to console roles; empty: the
    /// claim's values are role names themselves.
    pub role_map: String,
    /// A PEM file of certificate authorities to trust for the provider, besides the
    /// system's (an organization's own CA); empty: the system's only.
    pub ca_file: String,
}

impl OidcSection {
    /// Whether operators may sign in through the provider.
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }

    fn get(&self, key: &str) -> Result<String> {
        Ok(match key {
            "oidc.issuer" => self.issuer.clone(),
            "oidc.client_id" => self.client_id.clone(),
            // A secret is not printed on a terminal someone may be looking at.
            "oidc.client_secret" if self.client_secret.is_empty() => String::new(),
            "oidc.client_secret" => "(set; not shown)".into(),
            "oidc.redirect_url" => self.redirect_url.clone(),
            "oidc.scopes" => self.scopes.clone(),
            "oidc.login_claim" => self.login_claim.clone(),
            "oidc.role_claim" => self.role_claim.clone(),
            "oidc.role_map" => self.role_map.clone(),
            "oidc.ca_file" => self.ca_file.clone(),
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        })
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if value.len() > OIDC_VALUE_BYTES_MAX || value.chars().any(char::is_control) {
            return Err(bad(key, "at most 2048 bytes, no control characters"));
        }
        let slot = match key {
            "oidc.issuer" => &mut self.issuer,
            "oidc.client_id" => &mut self.client_id,
            "oidc.client_secret" => &mut self.client_secret,
            "oidc.redirect_url" => &mut self.redirect_url,
            "oidc.scopes" => &mut self.scopes,
            "oidc.login_claim" => &mut self.login_claim,
            "oidc.role_claim" => &mut self.role_claim,
            "oidc.role_map" => &mut self.role_map,
            "oidc.ca_file" => &mut self.ca_file,
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        };
        *slot = value.to_string();
        Ok(())
    }

    /// The pairs of `role_map`, checked for form only (the console checks the role names).
    pub fn role_pairs(&self) -> Result<Vec<(String, String)>> {
        let mut pairs = Vec::new();
        for pair in self
            .role_map
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match pair.rsplit_once('=') {
                Some((value, role)) if !value.trim().is_empty() && !role.trim().is_empty() => {
                    pairs.push((value.trim().to_string(), role.trim().to_string()));
                }
                _ => return Err(bad("oidc.role_map", "VALUE=ROLE pairs separated by commas")),
            }
        }
        Ok(pairs)
    }

    fn validate(&self) -> Result<()> {
        for key in ["oidc.issuer", "oidc.redirect_url", "oidc.role_map"] {
            if self.get(key)?.len() > OIDC_VALUE_BYTES_MAX {
                return Err(bad(key, "at most 2048 bytes"));
            }
        }
        self.role_pairs()?;
        // The node may run from another directory than the one it was configured from.
        if !self.ca_file.is_empty() && !std::path::Path::new(&self.ca_file).is_absolute() {
            return Err(bad("oidc.ca_file", "an absolute path to a PEM file"));
        }
        // Each value on its own: the keys are set one at a time, so completeness (a client
        // id with an issuer) is checked where sign-in starts.
        if self.enabled() && !oidc_url_allowed(&self.issuer) {
            return Err(bad(
                "oidc.issuer",
                "an https:// URL (http:// only on 127.0.0.1 or localhost)",
            ));
        }
        if !self.redirect_url.is_empty()
            && (!oidc_url_allowed(&self.redirect_url)
                || !self.redirect_url.ends_with(OIDC_CALLBACK_PATH))
        {
            return Err(bad(
                "oidc.redirect_url",
                "the console's URL as browsers reach it, ending in /login/oidc/callback",
            ));
        }
        Ok(())
    }
}

/// https anywhere; plain http only to this machine, where nothing crosses a network.
fn oidc_url_allowed(url: &str) -> bool {
    url.starts_with("https://")
        || ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| {
                url.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
            })
}
