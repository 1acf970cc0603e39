//! Acknowledgment deadlines and link tests (docs/spec.md §4–§5), as pure rules.
//!
//! Nothing here reads a clock. A message's deadline is counted from its *start* (the sender
//! counts from when it wrote the message, the receiver from when it received it: a receiver
//! cannot be held to a deadline while the message had not reached it). The node measures
//! elapsed time on a monotonic clock while it runs and passes it in; after a restart it
//! recovers the elapsed time from stored wall-clock times with [`elapsed_since`].

use std::time::{Duration, Instant};

use crate::link::LinkState;
use crate::Precedence;

/// Deadlines per precedence: the charter's (the stricter of both parties' values).
pub use crate::charter::Deadlines;

/// Which side of a message this node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sender,
    Receiver,
}

/// The receipt a deadline waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    /// The peer's signed DELIVERED receipt (FLASH only, sender side).
    Delivered,
    /// An ACKNOWLEDGED receipt, or an explicit DECLINED one (a refusal is an answer).
    Answered,
}

impl Need {
    pub fn name(self) -> &'static str {
        match self {
            Need::Delivered => "delivered",
            Need::Answered => "acknowledged",
        }
    }

    /// Stored code (the receipt level numbers: 0 delivered, 2 acknowledged).
    pub fn code(self) -> u8 {
        match self {
            Need::Delivered => 0,
            Need::Answered => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Need> {
        match code {
            0 => Some(Need::Delivered),
            2 => Some(Need::Answered),
            _ => None,
        }
    }
}

/// Body kinds that bind people to a deadline: text (0) and notifications
/// ([`crate::envelope::KIND_NOTIFICATION`], 4). Receipts are never receipted, and link
/// tests are the machine's business (see [`LinkTest`]).
pub fn bears_deadline(kind: u8) -> bool {
    kind == 0 || kind == crate::envelope::KIND_NOTIFICATION
}

/// The deadlines a message carries on one side: `(need, time after its start)`, earliest
/// first. A FLASH must be delivered within `flash_delivered` *and* answered within
/// `flash_acknowledged`; other precedences must be answered within their deadline. The
/// receiver's DELIVERED is its own automatic act, so it only owes the answer.
pub fn obligations(
    kind: u8,
    side: Side,
    precedence: Precedence,
    deadlines: &Deadlines,
) -> Vec<(Need, Duration)> {
    if !bears_deadline(kind) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(2);
    if side == Side::Sender && precedence == Precedence::Flash {
        out.push((Need::Delivered, deadlines.flash_delivered));
    }
    out.push((Need::Answered, deadlines.acknowledged(precedence)));
    out.sort_by_key(|(_, d)| *d);
    out
}

/// Where one deadline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not met yet, and not due yet.
    Pending { due_in: Duration },
    /// Due, and the receipt has not come.
    Overdue { by: Duration },
    /// The receipt came in time.
    Met,
    /// The receipt came, `by` after the deadline.
    Late { by: Duration },
}

impl Verdict {
    pub fn is_overdue(self) -> bool {
        matches!(self, Verdict::Overdue { .. })
    }
}

/// Judge one deadline `due_after` the start, `elapsed` after the start, where `met_after` is
/// when (after the start) the needed receipt arrived, if it has. Reaching the deadline
/// without the receipt is overdue.
pub fn judge(due_after: Duration, elapsed: Duration, met_after: Option<Duration>) -> Verdict {
    match met_after {
        Some(t) if t < due_after => Verdict::Met,
        Some(t) => Verdict::Late { by: t - due_after },
        None if elapsed >= due_after => Verdict::Overdue {
            by: elapsed - due_after,
        },
        None => Verdict::Pending {
            due_in: due_after - elapsed,
        },
    }
}

/// How long ago something started, from wall-clock milliseconds, for recovering a deadline
/// after a restart (the monotonic clock restarts with the process). A start in the future
/// (the clock stepped back) counts as now: a deadline is never fired early by a clock jump,
/// at worst it fires late by the jump.
pub fn elapsed_since(start_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(start_ms)).unwrap_or(0))
}

/// The monotonic instant a deadline started, recovered from wall-clock times.
pub fn start_instant(start_ms: i64, now_ms: i64, now: Instant) -> Instant {
    let elapsed = elapsed_since(start_ms, now_ms);
    now.checked_sub(elapsed).unwrap_or(now)
}

/// The one-line reading of a line to a peer, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineVerdict {
    /// The link is down: nothing heard for three heartbeats.
    LinkDown,
    /// The link is up (or degraded) but the last link test was not confirmed in time.
    TestMissed,
    /// Messages from the peer are past their deadline without our answer: we owe it.
    OverdueIn,
    /// The link works, but messages to the peer are overdue: its operators have not answered.
    Unanswered,
    /// The link works but is slow or quiet.
    Degraded,
    /// The link works, but the peer's wall clock is further from ours than the warning
    /// threshold: the times it signs (and ours, if ours is the wrong one) are off.
    ClockSkew,
    AllWell,
}

impl LineVerdict {
    pub fn code(self) -> &'static str {
        match self {
            LineVerdict::LinkDown => "link_down",
            LineVerdict::TestMissed => "link_test_missed",
            LineVerdict::OverdueIn => "overdue_in",
            LineVerdict::Unanswered => "unanswered",
            LineVerdict::Degraded => "degraded",
            LineVerdict::ClockSkew => "clock_skew",
            LineVerdict::AllWell => "all_well",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            LineVerdict::LinkDown => "link down",
            LineVerdict::TestMissed => "link test missed",
            LineVerdict::OverdueIn => {
                "the peer's messages are past their deadline without our answer"
            }
            LineVerdict::Unanswered => "link up but the peer's operators have not answered",
            LineVerdict::Degraded => "link degraded",
            LineVerdict::ClockSkew => "link up, but the peer's clock differs from ours",
            LineVerdict::AllWell => "all well",
        }
    }
}

/// Tell apart a broken line from a silent peer, and from a silent us: `overdue_in` (the
/// peer's messages we have not answered by their deadline) is never "all well" either, and
/// ranks above `overdue_out` because it is the duty officer's own work to do.
pub fn line_verdict(
    state: LinkState,
    overdue_out: u64,
    overdue_in: u64,
    test_missed: bool,
) -> LineVerdict {
    match state {
        LinkState::Down => LineVerdict::LinkDown,
        _ if test_missed => LineVerdict::TestMissed,
        _ if overdue_in > 0 => LineVerdict::OverdueIn,
        _ if overdue_out > 0 => LineVerdict::Unanswered,
        LinkState::Degraded => LineVerdict::Degraded,
        LinkState::Up => LineVerdict::AllWell,
    }
}

/// The link-test cadence of one peer: every `interval` send a signed TEST and expect its
/// DELIVERED receipt within `bound`; a test not confirmed in time is missed (reported once),
/// until a later test is confirmed.
#[derive(Debug, Clone)]
pub struct LinkTest {
    interval: Duration,
    bound: Duration,
    next_send: Instant,
    /// The test in flight: (seq, sent at).
    outstanding: Option<(u64, Instant)>,
    missed: bool,
    reported: bool,
    last_ok: Option<Instant>,
}

impl LinkTest {
    /// The first test goes `interval` after `now`.
    pub fn new(interval: Duration, bound: Duration, now: Instant) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        Self {
            interval,
            bound,
            next_send: now + interval,
            outstanding: None,
            missed: false,
            reported: false,
            last_ok: None,
        }
    }

    /// Whether a test is due now; if so, the next one is scheduled.
    pub fn poll_send(&mut self, now: Instant) -> bool {
        if now < self.next_send {
            return false;
        }
        self.next_send = now + self.interval;
        true
    }

    /// The test just sent has number `seq` in our stream.
    pub fn on_sent(&mut self, seq: u64, now: Instant) {
        // A test still unconfirmed when the next goes is missed.
        if self.outstanding.is_some() {
            self.missed = true;
        }
        self.outstanding = Some((seq, now));
    }

    /// The peer confirmed our envelopes `from..=to`. Returns the round trip of the test if
    /// it was among them.
    pub fn on_delivered(&mut self, from: u64, to: u64, now: Instant) -> Option<Duration> {
        let (seq, sent) = self.outstanding?;
        if !(from..=to).contains(&seq) {
            return None;
        }
        self.outstanding = None;
        self.missed = false;
        self.reported = false;
        self.last_ok = Some(now);
        Some(now.saturating_duration_since(sent))
    }

    /// Whether a missed test should be reported now (once per miss, until a test passes).
    pub fn poll_missed(&mut self, now: Instant) -> bool {
        if let Some((_, sent)) = self.outstanding {
            if now >= sent + self.bound {
                self.missed = true;
            }
        }
        if self.missed && !self.reported {
            self.reported = true;
            return true;
        }
        false
    }

    pub fn is_missed(&self) -> bool {
        self.missed
    }

    pub fn last_ok(&self) -> Option<Instant> {
        self.last_ok
    }

    /// When to look again.
    pub fn next_wake(&self) -> Instant {
        match self.outstanding {
            Some((_, sent)) if !self.missed => self.next_send.min(sent + self.bound),
            _ => self.next_send,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_has_two_deadlines_on_the_sender_side_only() {
        let d = Deadlines::default();
        let s = obligations(0, Side::Sender, Precedence::Flash, &d);
        assert_eq!(
            s,
            vec![
                (Need::Delivered, Duration::from_secs(10)),
                (Need::Answered, Duration::from_secs(600))
            ]
        );
        let r = obligations(0, Side::Receiver, Precedence::Flash, &d);
        assert_eq!(r, vec![(Need::Answered, Duration::from_secs(600))]);
        assert!(obligations(1, Side::Sender, Precedence::Flash, &d).is_empty());
        assert!(obligations(2, Side::Sender, Precedence::Flash, &d).is_empty());
    }

    #[test]
    fn judging() {
        let s = Duration::from_secs;
        assert_eq!(judge(s(10), s(3), None), Verdict::Pending { due_in: s(7) });
        assert_eq!(judge(s(10), s(10), None), Verdict::Overdue { by: s(0) });
        assert_eq!(judge(s(10), s(30), Some(s(9))), Verdict::Met);
        assert_eq!(
            judge(s(10), s(30), Some(s(25))),
            Verdict::Late { by: s(15) }
        );
    }

    #[test]
    fn clock_jumps_back_never_fire_early() {
        assert_eq!(elapsed_since(2_000, 1_000), Duration::ZERO);
        assert_eq!(elapsed_since(1_000, 3_500), Duration::from_millis(2_500));
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            line_verdict(LinkState::Down, 5, 0, true),
            LineVerdict::LinkDown
        );
        assert_eq!(
            line_verdict(LinkState::Up, 1, 0, false),
            LineVerdict::Unanswered
        );
        assert_eq!(
            line_verdict(LinkState::Up, 0, 0, false),
            LineVerdict::AllWell
        );
        assert_eq!(
            line_verdict(LinkState::Up, 0, 0, true),
            LineVerdict::TestMissed
        );
    }

    /// Issue 12 item 10: `status` said "all well" with 252 received FLASH messages past
    /// their acknowledgment deadline.
    #[test]
    fn overdue_in_is_not_all_well() {
        for state in [LinkState::Up, LinkState::Degraded] {
            assert_eq!(line_verdict(state, 0, 252, false), LineVerdict::OverdueIn);
            // Owing answers outranks waiting for the peer's.
            assert_eq!(line_verdict(state, 3, 1, false), LineVerdict::OverdueIn);
        }
        assert_eq!(
            line_verdict(LinkState::Down, 0, 1, false),
            LineVerdict::LinkDown
        );
        assert_ne!(LineVerdict::OverdueIn.code(), LineVerdict::AllWell.code());
    }
}
