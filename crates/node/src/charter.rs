//! Channel charters at run time (docs/spec.md §2).
//!
//! On every session each side sends its [`Terms`] in a `Terms` frame after `Hello`. The node
//! computes the charter the two terms make ([`Charter::agree`]); when its own latest charter
//! envelope for that peer names a different charter, it signs the new one into its stream
//! (an IMMEDIATE charter envelope, delivered like any message). The peer does the same, so
//! the charter is **agreed** once both streams carry charters with the same digest. Until the
//! first agreement the node runs on its own configuration.
//!
//! **Floors** (issue 12 item 9): a charter whose deadlines or link-test interval fall below
//! this node's floors (`floors.*` in `node.toml`, [`crate::config::NodeConfig::floors`]) is
//! not signed. The refused terms are kept per peer ([`PeerCharter::refused`]), shown in
//! `status` and the console, and raised as one `charter_refused` alarm per distinct set
//! ([`record_refusal`]); the channel keeps its last agreed charter, or this node's own
//! configuration before any.
//!
//! State is rebuilt from the store (a partial index over charter envelopes) at start and
//! whenever a charter envelope is stored, so it survives restarts and needs no table of its
//! own: the signed envelopes are the record.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use detente_proto::envelope::KIND_CHARTER;
use detente_proto::{BelowFloor, Body, Charter, Member, MessageId, Precedence, Terms};
use detente_store::{Direction, Store};
use tokio::sync::broadcast::error::RecvError;

use crate::events::Event;
use crate::hooks::HookEvent;
use crate::writer::SendRequest;
use crate::Shared;

/// Charter envelopes per peer and direction read back, at most (the newest are kept).
pub const CHARTERS_READ_MAX: u32 = 256;

/// What this node knows of one peer's channel charter.
#[derive(Debug, Clone, Default)]
pub struct PeerCharter {
    /// The latest charter this node signed for the channel, and its envelope id.
    pub ours: Option<(Arc<Charter>, MessageId)>,
    /// The latest charter the peer signed, and its envelope id.
    pub theirs: Option<(Arc<Charter>, MessageId)>,
    /// The latest charter both sides signed.
    pub agreed: Option<Arc<Charter>>,
    /// How many distinct charters both sides have signed (the agreed one is number `version`).
    pub version: u32,
    /// The peer's terms from the current or last session.
    pub peer_terms: Option<Terms>,
    /// The terms of the charter the peer's latest terms make that fall below our floors
    /// (empty: nothing refused). That charter was not signed.
    pub refused: Vec<BelowFloor>,
    /// Which sets of refused terms (by name) were already raised as alarms: bit `m` for the
    /// set whose term indices make the 6-bit mask `m`. Bounded by construction (64 sets),
    /// so a peer that varies its asks cannot make an alarm per session for ever.
    pub alarmed: u64,
}

impl PeerCharter {
    /// Whether both sides' latest charters are the same: nothing waits to be agreed.
    pub fn settled(&self) -> bool {
        match (&self.ours, &self.theirs) {
            (Some((a, _)), Some((b, _))) => a.digest() == b.digest(),
            _ => false,
        }
    }
}

/// Charter state of every peer.
#[derive(Default)]
pub struct Charters {
    peers: Mutex<HashMap<String, PeerCharter>>,
    /// Serializes negotiation, so that two sessions never sign the same charter twice.
    negotiate: tokio::sync::Mutex<()>,
}

impl Charters {
    pub fn get(&self, peer: &str) -> PeerCharter {
        self.peers
            .lock()
            .map(|m| m.get(peer).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    fn update(&self, peer: &str, f: impl FnOnce(&mut PeerCharter)) {
        if let Ok(mut m) = self.peers.lock() {
            f(m.entry(peer.to_string()).or_default());
        }
    }
}

impl Shared {
    /// The latest charter signed by both sides of the channel with `peer`; `None` before the
    /// first agreement.
    pub fn charter(&self, peer: &str) -> Option<Arc<Charter>> {
        self.charters.get(peer).agreed
    }

    /// This node's contribution to every charter, from its configuration.
    pub fn local_terms(&self) -> Terms {
        let config = self.config.read().map(|c| c.clone()).unwrap_or_else(|p| {
            // A panicked writer of the configuration left a value; it is still whole.
            p.into_inner().clone()
        });
        let formats = self.formats.read().map(|f| f.clone()).unwrap_or_default();
        terms_of(&config, self.secret.public(), self.peer_addr, formats)
    }

    /// The floors this node holds every charter to, from its configuration (capped by its
    /// own terms where the engines check them).
    pub fn floors(&self) -> detente_proto::Floors {
        self.config
            .read()
            .map(|c| c.floors())
            .unwrap_or_else(|p| p.into_inner().floors())
    }

    /// The deadlines in force with `peer`: the agreed charter's, or this node's own before
    /// the first agreement.
    pub fn deadlines(&self, peer: &str) -> detente_proto::Deadlines {
        match self.charter(peer) {
            Some(c) => c.deadlines,
            None => self
                .config
                .read()
                .map(|c| c.deadlines())
                .unwrap_or_default(),
        }
    }
}

/// The terms a node with `config` offers (durations clamped to what a charter allows).
pub fn terms_of(
    config: &crate::config::NodeConfig,
    key: detente_proto::PartyKey,
    peer_addr: std::net::SocketAddr,
    formats: Vec<detente_proto::FormatRef>,
) -> Terms {
    let clamp = |d: std::time::Duration| {
        let ms = (d.as_millis() as u64).clamp(
            detente_proto::charter::limits::DURATION_MIN_MS,
            detente_proto::charter::limits::DURATION_MAX_MS,
        );
        std::time::Duration::from_millis(ms)
    };
    let d = config.deadlines();
    Terms {
        member: Member {
            key,
            name: config.name.clone(),
            party: config.party.clone(),
            addresses: vec![peer_addr.to_string()],
            lang: config.lang.clone(),
            tz: config.tz.clone(),
        },
        formats,
        deadlines: detente_proto::Deadlines {
            flash_delivered: clamp(d.flash_delivered),
            flash_acknowledged: clamp(d.flash_acknowledged),
            immediate_acknowledged: clamp(d.immediate_acknowledged),
            priority_acknowledged: clamp(d.priority_acknowledged),
            routine_acknowledged: clamp(d.routine_acknowledged),
        },
        link_test_interval: clamp(config.link_test_interval()),
        counterparts: config
            .counterparts
            .iter()
            .map(|c| (c.ours.clone(), c.theirs.clone()))
            .collect(),
    }
}

/// Rebuild one peer's charter state from the store.
pub async fn refresh(shared: &Shared, peer: &str) {
    let rows = match shared
        .store
        .messages_of_kind(peer, KIND_CHARTER, CHARTERS_READ_MAX)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot read charters");
            return;
        }
    };
    let mut ours: Vec<(Arc<Charter>, MessageId)> = Vec::new();
    let mut theirs: Vec<(Arc<Charter>, MessageId)> = Vec::new();
    for row in rows {
        // Every stored envelope was verified before it was stored; parse it back.
        let Ok(envelope) = detente_proto::envelope::parse_unverified(&row.bytes) else {
            continue;
        };
        if let Body::Charter(charter) = envelope.body {
            let entry = (Arc::new(charter), MessageId(row.id));
            match row.direction {
                Direction::Out => ours.push(entry),
                Direction::In => theirs.push(entry),
            }
        }
    }
    let their_digests: HashSet<[u8; 32]> = theirs.iter().map(|(c, _)| c.digest()).collect();
    let mut agreed_digests = HashSet::new();
    let mut agreed = None;
    for (charter, _) in &ours {
        let digest = charter.digest();
        if their_digests.contains(&digest) {
            agreed_digests.insert(digest);
            agreed = Some(charter.clone());
        }
    }
    let was = shared.charter(peer).map(|c| c.digest());
    let now = agreed.as_ref().map(|c| c.digest());
    shared.charters.update(peer, |state| {
        state.ours = ours.last().cloned();
        state.theirs = theirs.last().cloned();
        state.agreed = agreed;
        state.version = agreed_digests.len() as u32;
    });
    if now.is_some() && now != was {
        // Every new version is logged with its number (status and the console show it and
        // its terms), whichever engine made it: the core's CharterAgreed lands here too.
        tracing::info!(
            %peer,
            version = agreed_digests.len(),
            digest = %hex::encode(now.unwrap_or_default()),
            "channel charter agreed by both sides"
        );
    }
}

/// Terms arrived from `peer` in a session: sign the charter they make with ours, unless our
/// latest charter for the channel is already that one.
pub async fn on_terms(shared: Arc<Shared>, peer: String, bytes: Vec<u8>) {
    let terms = match Terms::decode(&bytes) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused the peer's charter terms");
            return;
        }
    };
    let Some(entry) = shared.table.get(&peer) else {
        return;
    };
    if terms.member.key != entry.key {
        tracing::warn!(%peer, "the peer's charter terms name another key; refused");
        return;
    }
    let _guard = shared.charters.negotiate.lock().await;
    shared
        .charters
        .update(&peer, |s| s.peer_terms = Some(terms.clone()));
    let ours = shared.local_terms();
    let charter = match Charter::agree(&ours, &terms) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no charter can be made from both terms");
            return;
        }
    };
    let floors = shared.floors().capped_by(&ours);
    let below = charter.check_floors(&floors).err().unwrap_or_default();
    let refused = !below.is_empty();
    record_refusal(&shared, &peer, below);
    if refused {
        return;
    }
    refresh(&shared, &peer).await;
    let current = shared.charters.get(&peer).ours;
    if current.is_some_and(|(c, _)| c.digest() == charter.digest()) {
        return;
    }
    let author = shared
        .config
        .read()
        .map(|c| c.author.clone())
        .unwrap_or_default();
    let request = SendRequest {
        peer: peer.clone(),
        precedence: Precedence::Immediate,
        topic: "general".into(),
        author,
        in_reply_to: None,
        body: Body::Charter(charter),
    };
    match shared.engine.writer().send(request).await {
        Ok(sent) => {
            tracing::info!(%peer, seq = sent.seq, "signed the channel charter");
            refresh(&shared, &peer).await;
        }
        Err(e) => tracing::warn!(%peer, error = %e, "cannot sign the channel charter"),
    }
}

/// Record which of the peer's terms are below our floors (empty: none, the charter was
/// within them). A set of terms not refused before is logged and raised as a
/// `charter_refused` alarm; the same terms again (the next session, the peer's restart) are
/// not.
pub fn record_refusal(shared: &Shared, peer: &str, below: Vec<BelowFloor>) {
    let bit = 1u64 << terms_mask(&below);
    let mut new = false;
    shared.charters.update(peer, |s| {
        new = !below.is_empty() && s.alarmed & bit == 0;
        s.alarmed |= bit;
        s.refused = below.clone();
    });
    if !new {
        return;
    }
    let what: Vec<String> = below.iter().map(ToString::to_string).collect();
    tracing::warn!(
        %peer,
        refused = %what.join("; "),
        "the peer's charter terms are below this node's floors; that charter is not signed"
    );
    crate::deadlines::raise(
        shared,
        HookEvent::CharterRefused {
            peer: peer.to_string(),
            below,
        },
    );
}

/// The refused terms by name, as a 6-bit mask of their places in [`Floors::all`].
///
/// [`Floors::all`]: detente_proto::Floors::all
fn terms_mask(below: &[BelowFloor]) -> u32 {
    let names = detente_proto::Floors::NONE.all();
    below
        .iter()
        .filter_map(|b| names.iter().position(|(term, _)| *term == b.term))
        .fold(0, |mask, i| mask | (1 << i))
}

/// Keep charter state current: rebuild a peer's state when a charter envelope is stored,
/// and every peer's when events were missed.
pub async fn watch(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    for entry in shared.table.all() {
        refresh(&shared, &entry.name).await;
    }
    let mut events = shared.events.subscribe();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(Event::Stored { peer, kind, .. }) if kind == KIND_CHARTER => {
                refresh(&shared, &peer).await;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                for entry in shared.table.all() {
                    refresh(&shared, &entry.name).await;
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn duration_text(d: std::time::Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A charter as the API shows it.
pub fn charter_json(charter: &Charter) -> serde_json::Value {
    let d = &charter.deadlines;
    serde_json::json!({
        "digest": hex::encode(charter.digest()),
        "members": charter.members.iter().map(|m| serde_json::json!({
            "name": m.name,
            "party": m.party,
            "public_key": m.key.to_text(),
            "fingerprint": m.key.fingerprint(),
            "addresses": m.addresses,
            "lang": m.lang,
            "tz": m.tz,
        })).collect::<Vec<_>>(),
        "formats": charter.formats.iter().map(|f| serde_json::json!({
            "id": f.id,
            "version": f.version,
            "digest": hex::encode(f.digest),
        })).collect::<Vec<_>>(),
        "deadlines": {
            "flash_delivered": duration_text(d.flash_delivered),
            "flash_acknowledged": duration_text(d.flash_acknowledged),
            "immediate_acknowledged": duration_text(d.immediate_acknowledged),
            "priority_acknowledged": duration_text(d.priority_acknowledged),
            "routine_acknowledged": duration_text(d.routine_acknowledged),
        },
        "link_test_interval": duration_text(charter.link_test_interval),
        "counterparts": charter.counterparts.iter().map(|c| serde_json::json!([c.first, c.second])).collect::<Vec<_>>(),
    })
}

/// A peer's charter state as `status` shows it: `state` is `agreed` (both sides signed the
/// same latest charter), `pending` (a newer charter waits for a signature) or `none`.
pub fn status_json(state: &PeerCharter) -> serde_json::Value {
    let status = match (&state.agreed, state.settled()) {
        (Some(_), true) => "agreed",
        (None, _) if state.ours.is_none() && state.theirs.is_none() => "none",
        _ => "pending",
    };
    serde_json::json!({
        "state": status,
        "version": state.version,
        "digest": state.agreed.as_ref().map(|c| hex::encode(c.digest())),
        "charter": state.agreed.as_ref().map(|c| charter_json(c)),
        "refused": crate::hooks::below_json(&state.refused),
    })
}
