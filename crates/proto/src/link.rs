//! The per-peer link supervisor: heartbeats, round-trip time, link state and reconnection
//! with capped exponential backoff, jitter and address failover.
//!
//! Sans I/O: the driver tells it what happened (`on_*`, with `now`) and asks what to do
//! (`poll_ping`, `poll_timeout`, `should_close`, `next_attempt`). Jitter comes in as a number
//! in [0, 1) from the caller's random generator, so tests are deterministic.

use std::time::{Duration, Instant};

/// Tunables of a link. Defaults follow docs/spec.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Time between heartbeats (default 2 s, docs/spec.md §4).
    pub heartbeat: Duration,
    /// First reconnection delay after every address failed.
    pub backoff_initial: Duration,
    /// Cap of the reconnection delay.
    pub backoff_max: Duration,
    /// A round-trip time above this makes the link `degraded`.
    pub degraded_rtt: Duration,
    /// The peer's clock further from ours than this (beyond what the round trip leaves
    /// uncertain) is a warning in status, the log and the console.
    pub skew_warn: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            degraded_rtt: Duration::from_secs(1),
            skew_warn: Duration::from_secs(2),
        }
    }
}

impl LinkConfig {
    /// How long one write to the peer may take, at most: the silence after which a session
    /// ends anyway (three heartbeats). A peer that stops reading, or a black-holed path,
    /// cannot hold a session longer than a silent peer could (issue 12, item 6).
    pub fn write_timeout(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// How a duty officer should read the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connected, heard within two heartbeats, round trip under the degraded threshold.
    Up,
    /// Connected but slow or quiet (nothing heard for two heartbeats, or a slow round trip),
    /// or reconnecting after a drop less than three heartbeats ago.
    Degraded,
    /// Nothing heard for three heartbeats, or never connected.
    Down,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Degraded => "degraded",
            LinkState::Down => "down",
        }
    }
}

/// How far the peer's wall clock is from ours, as last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// The peer's clock minus ours, in milliseconds (negative: the peer's is behind).
    pub offset_ms: i64,
    /// How far off the estimate may be: half the round trip it was measured over, or
    /// `None` when it comes from a Hello alone (its transit time is unknown).
    pub error_ms: Option<u64>,
}

impl ClockOffset {
    /// The offset that is certain: its size less the uncertainty, never below zero.
    pub fn certain_ms(&self) -> u64 {
        self.offset_ms
            .unsigned_abs()
            .saturating_sub(self.error_ms.unwrap_or(0))
    }
}

/// Clock readings further apart than this (about 100 years) are taken as this far.
const OFFSET_MS_MAX: i128 = 100 * 366 * 86_400_000;

fn offset(peer_ms: u64, ours_ms: u64, plus_ms: u64) -> i64 {
    (i128::from(peer_ms) - i128::from(ours_ms) + i128::from(plus_ms))
        .clamp(-OFFSET_MS_MAX, OFFSET_MS_MAX) as i64
}

/// The supervisor of one peer link.
#[derive(Debug, Clone)]
pub struct LinkSupervisor {
    config: LinkConfig,
    address_count: usize,
    /// Index of the address to try next.
    address: usize,
    connected: bool,
    last_heard: Option<Instant>,
    rtt: Option<Duration>,
    clock: Option<ClockOffset>,
    ping_outstanding: Option<(u64, Instant)>,
    next_ping: Option<Instant>,
    nonce: u64,
    /// Consecutive rounds in which every address failed.
    failed_rounds: u32,
    next_attempt: Option<Instant>,
}

impl LinkSupervisor {
    /// A supervisor for a peer with `address_count` addresses (at least one), ready to dial
    /// at once.
    pub fn new(config: LinkConfig, address_count: usize, now: Instant) -> Self {
        Self {
            config,
            address_count: address_count.max(1),
            address: 0,
            connected: false,
            last_heard: None,
            rtt: None,
            clock: None,
            ping_outstanding: None,
            next_ping: None,
            nonce: 0,
            failed_rounds: 0,
            next_attempt: Some(now),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Which address to dial now (index into the peer's list, primary first).
    pub fn address_index(&self) -> usize {
        self.address
    }

    /// When to dial next; `None` while connected.
    pub fn next_attempt(&self) -> Option<Instant> {
        if self.connected {
            None
        } else {
            self.next_attempt
        }
    }

    /// A session is established (either side dialed).
    pub fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        self.failed_rounds = 0;
        self.address = 0;
        self.last_heard = Some(now);
        self.ping_outstanding = None;
        self.next_ping = Some(now);
        self.next_attempt = None;
    }

    /// Any frame arrived from the peer.
    pub fn on_heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// The peer's Hello said its wall clock was `peer_wall_ms` (0: not said); ours reads
    /// `wall_ms` now. A first, rough estimate of the offset (the Hello's transit time is
    /// unknown); the first Pong replaces it.
    pub fn on_hello_clock(&mut self, peer_wall_ms: u64, wall_ms: u64) {
        if peer_wall_ms != 0 {
            self.clock = Some(ClockOffset {
                offset_ms: offset(peer_wall_ms, wall_ms, 0),
                error_ms: None,
            });
        }
    }

    /// A pong arrived, stamped `peer_wall_ms` by the peer; our wall clock reads `wall_ms`.
    /// A pong for a ping we did not send (or an old one) is ignored. The peer stamped it
    /// somewhere within the round trip, measured on the monotonic clock, so the offset is
    /// known within half of it (a wall-clock step during the round trip aside).
    pub fn on_pong(&mut self, now: Instant, nonce: u64, peer_wall_ms: u64, wall_ms: u64) {
        self.on_heard(now);
        if let Some((outstanding, sent_at)) = self.ping_outstanding {
            if outstanding == nonce {
                let rtt = now.saturating_duration_since(sent_at);
                self.rtt = Some(rtt);
                self.ping_outstanding = None;
                if peer_wall_ms != 0 {
                    let rtt_ms = rtt.as_millis().min(u128::from(u64::MAX / 2)) as u64;
                    self.clock = Some(ClockOffset {
                        offset_ms: offset(peer_wall_ms, wall_ms, rtt_ms / 2),
                        error_ms: Some(rtt_ms.div_ceil(2)),
                    });
                }
            }
        }
    }

    /// How far the peer's clock is from ours, as last measured (kept after the session
    /// ends: it is the last thing known).
    pub fn clock_offset(&self) -> Option<ClockOffset> {
        self.clock
    }

    /// The offset, if it is certainly beyond [`LinkConfig::skew_warn`].
    pub fn clock_skewed(&self) -> Option<ClockOffset> {
        self.clock
            .filter(|c| u128::from(c.certain_ms()) > self.config.skew_warn.as_millis())
    }

    /// The session ended. Redial after a short jittered delay (the peer may just have
    /// restarted).
    pub fn on_disconnected(&mut self, now: Instant, jitter: f64) {
        self.connected = false;
        self.ping_outstanding = None;
        self.next_ping = None;
        self.address = 0;
        self.next_attempt = Some(now + self.jittered(self.config.backoff_initial, jitter));
    }

    /// Dialing the current address failed. Try the next address at once; when every
    /// address has failed, wait a capped exponential backoff with jitter and start over at
    /// the primary.
    pub fn on_dial_failed(&mut self, now: Instant, jitter: f64) {
        self.address += 1;
        if self.address < self.address_count {
            self.next_attempt = Some(now);
            return;
        }
        self.address = 0;
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        self.next_attempt = Some(now + self.backoff(jitter));
    }

    /// The delay after `failed_rounds` rounds: initial × 2^(rounds-1), capped, with "equal
    /// jitter" (half fixed, half random) so that two nodes do not redial in lockstep.
    fn backoff(&self, jitter: f64) -> Duration {
        let exponent = self.failed_rounds.saturating_sub(1).min(20);
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << exponent)
            .min(self.config.backoff_max);
        self.jittered(base, jitter)
    }

    fn jittered(&self, base: Duration, jitter: f64) -> Duration {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        base / 2 + base.mul_f64(jitter / 2.0)
    }

    /// A heartbeat to send now, if one is due. Only one ping is outstanding at a time; a ping
    /// unanswered for a whole interval is replaced (its RTT is then unknown, the quiet time
    /// shows in the state).
    pub fn poll_ping(&mut self, now: Instant) -> Option<u64> {
        let due = self.next_ping?;
        if !self.connected || now < due {
            return None;
        }
        self.nonce = self.nonce.wrapping_add(1);
        self.ping_outstanding = Some((self.nonce, now));
        self.next_ping = Some(now + self.config.heartbeat);
        Some(self.nonce)
    }

    /// The connection has been silent for three heartbeats: the driver should close it and
    /// redial, because TCP alone may take minutes to notice a dead path.
    pub fn should_close(&self, now: Instant) -> bool {
        self.connected && self.quiet_for(now) >= self.config.heartbeat * 3
    }

    fn quiet_for(&self, now: Instant) -> Duration {
        self.last_heard
            .map_or(Duration::MAX, |heard| now.saturating_duration_since(heard))
    }

    /// The link state now.
    pub fn state(&self, now: Instant) -> LinkState {
        let quiet = self.quiet_for(now);
        let heartbeat = self.config.heartbeat;
        if quiet >= heartbeat * 3 {
            return LinkState::Down;
        }
        if !self.connected || quiet >= heartbeat * 2 {
            return LinkState::Degraded;
        }
        match self.rtt {
            Some(rtt) if rtt > self.config.degraded_rtt => LinkState::Degraded,
            _ => LinkState::Up,
        }
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The next instant at which something is due (a ping, a redial, a silence check).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.connected {
            let close_at = self.last_heard.map(|h| h + self.config.heartbeat * 3);
            [self.next_ping, close_at].into_iter().flatten().min()
        } else {
            self.next_attempt
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LinkConfig {
        LinkConfig {
            heartbeat: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            degraded_rtt: Duration::from_secs(1),
            skew_warn: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_peers_clock_is_measured_within_half_the_round_trip() {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config(), 1, t0);
        link.on_connected(t0);
        assert_eq!(link.clock_offset(), None);
        // The peer's clock is 3 h behind ours; its Hello took a little while.
        let ours = 1_767_225_600_000u64;
        let behind = 3 * 3_600_000;
        link.on_hello_clock(ours - behind, ours + 4);
        let hello = link.clock_offset().unwrap();
        assert_eq!(
            (hello.offset_ms, hello.error_ms),
            (-(behind as i64) - 4, None)
        );
        assert!(link.clock_skewed().is_some());
        // A ping with a 40 ms round trip, stamped by the peer 10 ms after we sent it.
        let nonce = link.poll_ping(t0).unwrap();
        link.on_pong(
            t0 + Duration::from_millis(40),
            nonce,
            ours - behind + 10,
            ours + 40,
        );
        let c = link.clock_offset().unwrap();
        assert_eq!(c.error_ms, Some(20));
        assert!((c.offset_ms + behind as i64).abs() <= 20, "{c:?}");
        assert!(link.clock_skewed().is_some());
        // Clocks within the threshold are no warning, and a peer that does not say its
        // clock (0) changes nothing.
        let nonce = link.poll_ping(t0 + Duration::from_secs(2)).unwrap();
        link.on_pong(
            t0 + Duration::from_millis(2010),
            nonce,
            ours + 1_500,
            ours + 2010,
        );
        assert_eq!(link.clock_skewed(), None);
        assert!(link.clock_offset().unwrap().offset_ms.abs() < 2_000);
        let nonce = link.poll_ping(t0 + Duration::from_secs(4)).unwrap();
        link.on_pong(t0 + Duration::from_millis(4010), nonce, 0, ours + 4010);
        assert!(link.clock_offset().unwrap().offset_ms.abs() < 2_000);
        // A lying peer's extreme stamps are clamped, never an overflow.
        let nonce = link.poll_ping(t0 + Duration::from_secs(6)).unwrap();
        link.on_pong(t0 + Duration::from_millis(6010), nonce, u64::MAX, 1);
        assert_eq!(link.clock_offset().unwrap().offset_ms, OFFSET_MS_MAX as i64);
    }

    #[test]
    fn heartbeat_and_states() {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config(), 1, t0);
        assert_eq!(link.state(t0), LinkState::Down);
        link.on_connected(t0);
        let nonce = link.poll_ping(t0).unwrap();
        assert_eq!(link.poll_ping(t0), None, "one ping per interval");
        link.on_pong(t0 + Duration::from_millis(3), nonce, 0, 0);
        assert_eq!(link.rtt(), Some(Duration::from_millis(3)));
        assert_eq!(link.state(t0 + Duration::from_millis(3)), LinkState::Up);
        let heard = t0 + Duration::from_millis(3);
        assert_eq!(
            link.state(heard + Duration::from_secs(4)),
            LinkState::Degraded
        );
        assert!(!link.should_close(heard + Duration::from_secs(5)));
        assert_eq!(link.state(heard + Duration::from_secs(6)), LinkState::Down);
        assert!(link.should_close(heard + Duration::from_secs(6)));
        assert!(link.poll_ping(t0 + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn slow_round_trip_is_degraded_and_stale_pong_ignored() {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config(), 1, t0);
        link.on_connected(t0);
        let nonce = link.poll_ping(t0).unwrap();
        link.on_pong(t0 + Duration::from_millis(5), nonce + 7, 0, 0);
        assert_eq!(link.rtt(), None);
        link.on_pong(t0 + Duration::from_millis(1500), nonce, 0, 0);
        assert_eq!(
            link.state(t0 + Duration::from_millis(1500)),
            LinkState::Degraded
        );
    }

    #[test]
    fn failover_then_capped_backoff() {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config(), 3, t0);
        assert_eq!(link.address_index(), 0);
        link.on_dial_failed(t0, 0.0);
        assert_eq!((link.address_index(), link.next_attempt()), (1, Some(t0)));
        link.on_dial_failed(t0, 0.0);
        assert_eq!(link.address_index(), 2);
        link.on_dial_failed(t0, 0.0);
        assert_eq!(link.address_index(), 0, "back to the primary");
        assert_eq!(link.next_attempt(), Some(t0 + Duration::from_millis(50)));
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            for _ in 0..3 {
                link.on_dial_failed(t0, 1.0);
            }
            let delay = link.next_attempt().unwrap() - t0;
            assert!(delay >= last && delay <= Duration::from_secs(10));
            last = delay;
        }
        assert_eq!(last, Duration::from_secs(10));
        link.on_connected(t0);
        assert_eq!(link.next_attempt(), None);
        link.on_disconnected(t0, 0.5);
        assert_eq!(link.next_attempt(), Some(t0 + Duration::from_millis(75)));
    }
}
