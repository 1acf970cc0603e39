//! Link tests: every test interval of the channel (the agreed charter's, the shorter of
//! both parties'; our own before one is agreed) a signed TEST envelope goes to the peer at
//! FLASH precedence, and its DELIVERED receipt must come back within the FLASH delivery
//! deadline, or the test is missed: one [`Event::LinkTestMissed`] per miss, until a later
//! test is confirmed. The cadence is proto's [`LinkTest`]; TESTs bear no deadline of
//! their own.

use std::time::Duration;

use detente_proto::{Body, LinkTest, Precedence};
use rand::Rng;

use crate::{Core, Event, Sent};

/// The topic link tests carry (as the node has always written them).
pub const LINK_TEST_TOPIC: &str = "link-test";

/// One peer's link-test state and the interval it was built for.
#[derive(Debug, Clone)]
pub(crate) struct Tests {
    pub cadence: LinkTest,
    pub interval: Duration,
    pub bound: Duration,
}

impl Core {
    /// The link-test interval and bound of the channel with peer `index` now.
    fn test_terms(&self, index: usize) -> (Duration, Duration) {
        let p = &self.peers[index];
        let interval = p
            .agreed
            .as_ref()
            .map_or(self.link_test_interval, |c| c.link_test_interval);
        (interval, p.deadlines(&self.deadlines).flash_delivered)
    }

    /// Send a test when one is due; report a miss once.
    pub(crate) fn tick_link_test(&mut self, index: usize) {
        let now = self.now;
        let (interval, bound) = self.test_terms(index);
        let tests = &mut self.peers[index].tests;
        let fresh = tests
            .as_ref()
            .is_none_or(|t| t.interval != interval || t.bound != bound);
        if fresh {
            // New terms: the cadence starts again (the first test one interval from now).
            *tests = Some(Tests {
                cadence: LinkTest::new(interval, bound, now),
                interval,
                bound,
            });
        }
        let due = tests.as_mut().is_some_and(|t| t.cadence.poll_send(now));
        let stopped = self.peers[index].sending_stopped.is_some();
        if due && !stopped && !self.busy() {
            let nonce: [u8; 16] = self.rng.gen();
            let sent = Sent {
                precedence: Precedence::Flash,
                topic: LINK_TEST_TOPIC.into(),
                author: self.author.clone(),
                in_reply_to: None,
            };
            if let Ok((_, seq)) = self.stage_send(index, sent, Body::Test { nonce }) {
                if let Some(t) = self.peers[index].tests.as_mut() {
                    t.cadence.on_sent(seq, now);
                }
            }
        }
        let p = &mut self.peers[index];
        if p.tests.as_mut().is_some_and(|t| t.cadence.poll_missed(now)) {
            let peer = p.name.clone();
            self.event(Event::LinkTestMissed { peer });
        }
    }

    /// The peer confirmed our envelopes `from..=to`: the test among them, if any, passed.
    pub(crate) fn link_test_delivered(&mut self, index: usize, from: u64, to: u64) {
        let now = self.now;
        let passed = self.peers[index]
            .tests
            .as_mut()
            .and_then(|t| t.cadence.on_delivered(from, to, now));
        if let Some(rtt) = passed {
            let peer = self.peers[index].name.clone();
            let rtt_ms = rtt.as_millis() as u64;
            self.release_event(Event::LinkTestPassed { peer, rtt_ms });
        }
    }

    /// Whether the last link test with `peer` was missed (until a later one passes).
    pub fn link_test_missed(&self, peer: &str) -> bool {
        self.peer_index(peer).is_some_and(|i| {
            self.peers[i]
                .tests
                .as_ref()
                .is_some_and(|t| t.cadence.is_missed())
        })
    }
}
