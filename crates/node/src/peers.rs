//! The table of pinned peers shared by the listener, the links, the writer and the API:
//! who they are, and what their links look like right now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use detente_proto::{LinkState, LinkSupervisor, PartyKey, Precedence};
use tokio::sync::Notify;

/// What the API shows about one link.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub state: LinkState,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    pub last_heard: Option<Instant>,
    /// Address of the current or last session.
    pub address: Option<String>,
    pub sessions: u64,
    pub last_error: Option<String>,
    /// Why nothing is sent to this peer any more, if so: it claimed to hold more of our
    /// stream than we ever wrote (our store was replaced or lost). Cleared only by a restart
    /// on the right store.
    pub sending_stopped: Option<String>,
    /// The supervisor as last published, to compute the state at any moment (a link that
    /// goes quiet turns `down` without any event).
    pub view: Option<LinkSupervisor>,
}

impl LinkStatus {
    /// The link state now (thresholds in `detente_proto::link`: `down` after three
    /// heartbeats without hearing anything, `degraded` after two or with a slow round trip).
    pub fn current_state(&self, now: Instant) -> LinkState {
        self.view.as_ref().map_or(self.state, |v| v.state(now))
    }

    /// Publish `view` as this link's supervisor. The moment the peer's clock is first
    /// found beyond the warning threshold (or back within it), one log line says so.
    pub fn set_view(&mut self, peer: &str, view: &LinkSupervisor) {
        let was = self.view.as_ref().and_then(LinkSupervisor::clock_skewed);
        match (was, view.clock_skewed()) {
            (None, Some(c)) => tracing::warn!(
                %peer,
                offset_ms = c.offset_ms,
                error_ms = c.error_ms,
                "the peer's clock is {} ours; deadlines are measured on this node's own clock, but times the peer signs are off by as much",
                offset_words(c.offset_ms),
            ),
            (Some(_), None) if view.clock_offset().is_some() => {
                tracing::info!(%peer, "the peer's clock agrees with ours again")
            }
            _ => {}
        }
        self.view = Some(view.clone());
    }
}

impl Default for LinkStatus {
    fn default() -> Self {
        Self {
            state: LinkState::Down,
            connected: false,
            rtt_ms: None,
            last_heard: None,
            address: None,
            sessions: 0,
            last_error: None,
            sending_stopped: None,
            view: None,
        }
    }
}

/// How far a clock is from ours, in words for the log and `status`: "3 h 2 min behind",
/// "4.1 s ahead of", "in step with" (under 100 ms).
pub fn offset_words(offset_ms: i64) -> String {
    let size = offset_ms.unsigned_abs();
    let side = if offset_ms < 0 { "behind" } else { "ahead of" };
    let amount = match size {
        0..=99 => return "in step with".into(),
        100..=59_999 => format!("{:.1} s", size as f64 / 1000.0),
        60_000..=3_599_999 => {
            let seconds = (size + 500) / 1000;
            format!("{} min {} s", seconds / 60, seconds % 60)
        }
        3_600_000..=172_799_999 => {
            let minutes = (size + 30_000) / 60_000;
            format!("{} h {} min", minutes / 60, minutes % 60)
        }
        _ => format!("{} days", (size + 43_200_000) / 86_400_000),
    };
    format!("{amount} {side}")
}

/// What `status` shows about one peer's alarms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAlarms {
    /// The link is down after having been up (alarm raised, not yet cleared).
    pub link_down: bool,
    /// The last link test was not confirmed in time.
    pub test_missed: bool,
    /// When the last link test was confirmed (wall clock ms).
    pub last_test_ms: Option<i64>,
    /// Our messages past a deadline without the receipt they need.
    pub overdue_out: u64,
    /// The peer's messages we have not answered in time.
    pub overdue_in: u64,
    /// The peer's messages not answered yet (in time or not).
    pub unanswered_in: u64,
}

/// One pinned peer.
pub struct PeerEntry {
    pub name: String,
    pub key: PartyKey,
    pub addrs: Vec<String>,
    pub status: RwLock<LinkStatus>,
    /// Alarms on this peer, kept by the deadline watch task.
    pub alarms: RwLock<PeerAlarms>,
    /// Bit `p` set: envelopes of precedence `p` were written for this peer.
    written: AtomicU8,
    pub wake: Notify,
    /// A signed checkpoint waiting to go to the peer (the latest wins; checkpoints are
    /// cumulative, so an older one not yet sent is superseded).
    checkpoint_out: std::sync::Mutex<Option<Vec<u8>>>,
    /// The peer's claim to hold more of our stream than we wrote was checked (once per
    /// run; [`detente_proto::claim`]).
    pub claim_checked: AtomicBool,
}

impl PeerEntry {
    /// Stop sending to this peer (see [`LinkStatus::sending_stopped`]). True the first time.
    pub fn stop_sending(&self, reason: String) -> bool {
        match self.status.write() {
            Ok(mut status) if status.sending_stopped.is_none() => {
                status.sending_stopped = Some(reason);
                true
            }
            _ => false,
        }
    }

    /// Sending stays stopped, now for this reason: what the check of the peer's claim found.
    pub fn stopped_because(&self, reason: String) {
        if let Ok(mut status) = self.status.write() {
            status.sending_stopped = Some(reason);
        }
    }

    /// Whether sending to this peer was stopped.
    pub fn sending_stopped(&self) -> bool {
        self.status
            .read()
            .map_or(true, |s| s.sending_stopped.is_some())
    }

    /// Take and clear the precedences written since the last call.
    pub fn take_written(&self) -> Vec<Precedence> {
        let bits = self.written.swap(0, Ordering::AcqRel);
        Precedence::ALL
            .into_iter()
            .filter(|p| bits & (1 << p.index()) != 0)
            .collect()
    }

    /// Queue a signed checkpoint for the peer's link and wake it.
    pub fn send_checkpoint(&self, signed: Vec<u8>) {
        if let Ok(mut slot) = self.checkpoint_out.lock() {
            *slot = Some(signed);
        }
        self.wake.notify_one();
    }

    /// The checkpoint waiting to be sent, if any.
    pub fn take_checkpoint(&self) -> Option<Vec<u8>> {
        self.checkpoint_out.lock().ok().and_then(|mut s| s.take())
    }
}

#[derive(Default)]
pub struct PeerTable {
    peers: RwLock<HashMap<String, Arc<PeerEntry>>>,
}

impl PeerTable {
    pub fn insert(&self, name: &str, key: PartyKey, addrs: Vec<String>) -> Arc<PeerEntry> {
        let entry = Arc::new(PeerEntry {
            name: name.to_string(),
            key,
            addrs,
            status: RwLock::new(LinkStatus::default()),
            alarms: RwLock::new(Default::default()),
            written: AtomicU8::new(0),
            wake: Notify::new(),
            checkpoint_out: std::sync::Mutex::new(None),
            claim_checked: AtomicBool::new(false),
        });
        self.peers
            .write()
            .expect("peer table lock")
            .insert(name.to_string(), entry.clone());
        entry
    }

    pub fn get(&self, name: &str) -> Option<Arc<PeerEntry>> {
        self.peers
            .read()
            .expect("peer table lock")
            .get(name)
            .cloned()
    }

    pub fn by_key(&self, key: &PartyKey) -> Option<Arc<PeerEntry>> {
        self.peers
            .read()
            .expect("peer table lock")
            .values()
            .find(|p| &p.key == key)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<PeerEntry>> {
        let mut all: Vec<_> = self
            .peers
            .read()
            .expect("peer table lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Tell the peer's link that envelopes of `precedence` are waiting.
    pub fn notify_written(&self, name: &str, precedence: Precedence) {
        if let Some(entry) = self.get(name) {
            entry
                .written
                .fetch_or(1 << precedence.index(), Ordering::AcqRel);
            entry.wake.notify_one();
        }
    }
}

impl crate::tls::PinSet for PeerTable {
    fn is_pinned(&self, key: &[u8; 32]) -> bool {
        self.peers
            .read()
            .expect("peer table lock")
            .values()
            .any(|p| p.key.as_bytes() == key)
    }
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerTable({} peers)",
            self.peers.read().map(|p| p.len()).unwrap_or(0)
        )
    }
}

#[cfg(test)]
mod offset_tests {
    use super::offset_words;

    #[test]
    fn offsets_in_words() {
        assert_eq!(offset_words(40), "in step with");
        assert_eq!(offset_words(-4_130), "4.1 s behind");
        assert_eq!(offset_words(150_000), "2 min 30 s ahead of");
        assert_eq!(offset_words(-(3 * 3_600_000 + 120_000)), "3 h 2 min behind");
        assert_eq!(offset_words(-30 * 86_400_000), "30 days behind");
        // Rounded, not cut: a clock 1 ms short of 3 h is 3 h behind.
        assert_eq!(offset_words(-10_799_999), "3 h 0 min behind");
        assert_eq!(offset_words(59_999), "60.0 s ahead of");
    }
}
