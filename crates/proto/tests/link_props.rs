//! Link supervisor properties with injected time (one base `Instant` plus offsets; nothing
//! waits or reads a clock): backoff after failed rounds stays within
//! [min(initial, max)/2, max], follows initial × 2^(round-1) capped at max with equal
//! jitter, and is non-decreasing for a fixed jitter; failover tries addresses 0..n-1 in
//! order before backing off; the state is Down after three silent heartbeats and Up right
//! after a fast pong; `poll_ping` emits exactly when a heartbeat is due and never twice in
//! one interval over a simulated hour of random events; the peer's clock offset, measured
//! from a pong, is within half the round trip of the truth wherever in the round trip the
//! peer stamped it.

use std::time::{Duration, Instant};

use detente_proto::{LinkConfig, LinkState, LinkSupervisor};
use proptest::collection::vec;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Configs with backoff_initial <= backoff_max (the documented meaning of a cap).
fn arb_config() -> impl Strategy<Value = LinkConfig> {
    (100u64..10_000, 1u64..10_000, 0u64..3_600_000, 1u64..5_000).prop_map(
        |(heartbeat, initial, extra, degraded)| LinkConfig {
            heartbeat: ms(heartbeat),
            backoff_initial: ms(initial),
            backoff_max: ms(initial + extra),
            degraded_rtt: ms(degraded),
            skew_warn: ms(2_000),
        },
    )
}

/// Jitter as callers pass it: usually in [0, 1), sometimes out of range or not a number.
fn arb_jitter() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 0.0f64..1.0,
        1 => prop::sample::select(vec![0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
    ]
}

/// The uncapped-then-capped base delay after `round` failed rounds (round >= 1).
fn base_delay(config: &LinkConfig, round: u32) -> Duration {
    let exponent = (round - 1).min(20);
    config
        .backoff_initial
        .saturating_mul(1 << exponent)
        .min(config.backoff_max)
}

/// Fail every address of one round at `now`, checking failover order; returns the delay
/// before the next attempt.
fn fail_round(link: &mut LinkSupervisor, addresses: usize, now: Instant, jitter: f64) -> Duration {
    for next in 1..addresses {
        link.on_dial_failed(now, jitter);
        assert_eq!(
            link.address_index(),
            next,
            "failover goes to the next address"
        );
        assert_eq!(link.next_attempt(), Some(now), "failover dials at once");
        assert_eq!(link.poll_timeout(), Some(now));
    }
    link.on_dial_failed(now, jitter);
    assert_eq!(
        link.address_index(),
        0,
        "after the last address, back to the primary"
    );
    let at = link.next_attempt().expect("a redial is scheduled");
    assert_eq!(link.poll_timeout(), Some(at));
    at - now
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn backoff_is_bounded_and_follows_the_schedule(
        config in arb_config(),
        addresses in 1usize..6,
        jitters in vec(arb_jitter(), 1..40),
        late in vec(0u64..5_000, 40),
    ) {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config, addresses, t0);
        prop_assert_eq!(link.next_attempt(), Some(t0), "dial at once");
        prop_assert_eq!(link.address_index(), 0);
        prop_assert_eq!(link.state(t0), LinkState::Down, "never connected");
        let mut now = t0;
        for (i, jitter) in jitters.iter().enumerate() {
            let round = i as u32 + 1;
            let delay = fail_round(&mut link, addresses, now, *jitter);
            prop_assert!(delay <= config.backoff_max, "round {}: {:?}", round, delay);
            prop_assert!(delay >= config.backoff_initial / 2, "round {}: {:?}", round, delay);
            let base = base_delay(&config, round);
            prop_assert!(delay >= base / 2 && delay <= base, "round {}: {:?} vs base {:?}", round, delay, base);
            // The driver dials when due, or a little later.
            now = link.next_attempt().unwrap() + ms(late[i]);
            prop_assert_eq!(link.state(now), LinkState::Down);
            prop_assert!(!link.is_connected());
        }
    }

    #[test]
    fn backoff_is_non_decreasing_for_a_fixed_jitter(
        config in arb_config(),
        addresses in 1usize..4,
        jitter in 0.0f64..=1.0,
    ) {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config, addresses, t0);
        let mut last = Duration::ZERO;
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..40 {
            let delay = fail_round(&mut link, addresses, now, jitter);
            prop_assert!(delay >= last, "{:?} after {:?}", delay, last);
            last = delay;
            delays.push(delay);
            now += delay;
        }
        // After 40 rounds the delay has reached its plateau: the jittered cap. (The doubling
        // stops at 2^20 x initial, so with max > 2^20 x initial that is the plateau.)
        let plateau = base_delay(&config, 40);
        let capped = plateau / 2 + plateau.mul_f64(jitter / 2.0);
        prop_assert_eq!(last, capped);
        let first_capped = delays.iter().position(|d| *d == capped).unwrap();
        prop_assert!(delays[first_capped..].iter().all(|d| *d == capped));
    }

    /// A session resets the schedule: after a drop, redial after [initial/2, initial]; the
    /// next failed round starts from the initial delay again.
    #[test]
    fn a_session_resets_backoff(
        config in arb_config(),
        addresses in 1usize..4,
        rounds in 1usize..30,
        jitter in 0.0f64..1.0,
    ) {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config, addresses, t0);
        let mut now = t0;
        for _ in 0..rounds {
            now += fail_round(&mut link, addresses, now, jitter);
        }
        link.on_dial_failed(now, jitter);
        link.on_connected(now);
        prop_assert!(link.is_connected());
        prop_assert_eq!(link.next_attempt(), None);
        prop_assert_eq!(link.address_index(), 0);
        let later = now + config.heartbeat / 2;
        link.on_disconnected(later, jitter);
        prop_assert!(!link.is_connected());
        prop_assert_eq!(link.address_index(), 0);
        let redial = link.next_attempt().unwrap() - later;
        prop_assert!(redial >= config.backoff_initial / 2 && redial <= config.backoff_initial);
        prop_assert_eq!(link.state(later), LinkState::Degraded, "just dropped");
        prop_assert_eq!(link.state(now + config.heartbeat * 3), LinkState::Down);
        let delay = fail_round(&mut link, addresses, later, jitter);
        prop_assert!(delay <= config.backoff_initial.min(config.backoff_max));
    }

    #[test]
    fn silence_is_down_and_a_fast_pong_is_up(
        config in arb_config(),
        rtt_share in 0.0f64..=1.0,
        silent in 0u64..30_000,
        first_rtt in 0u64..5_000,
    ) {
        let hb = config.heartbeat;
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(config, 1, t0);
        link.on_connected(t0);
        prop_assert_eq!(link.state(t0), LinkState::Up);
        let nonce = link.poll_ping(t0).expect("first ping at once");
        let heard = t0 + ms(first_rtt);
        link.on_pong(heard, nonce, 0, 0);
        prop_assert_eq!(link.rtt(), Some(ms(first_rtt)));
        prop_assert_eq!(link.last_heard(), Some(heard));

        // Silence: Up (if the round trip was fast) below two heartbeats, Degraded below
        // three, then Down, when the driver must close.
        let quiet = ms(silent);
        let now = heard + quiet;
        let expected = if quiet >= hb * 3 {
            LinkState::Down
        } else if quiet >= hb * 2 || ms(first_rtt) > config.degraded_rtt {
            LinkState::Degraded
        } else {
            LinkState::Up
        };
        prop_assert_eq!(link.state(now), expected);
        prop_assert_eq!(link.should_close(now), quiet >= hb * 3);
        prop_assert_eq!(link.state(heard + hb * 3), LinkState::Down);
        prop_assert!(link.should_close(heard + hb * 3));

        // A fresh ping answered quickly: Up at once, whatever came before.
        let then = heard + hb * 3;
        let nonce = link.poll_ping(then).expect("a heartbeat is due");
        prop_assert_eq!(link.poll_ping(then), None);
        let rtt = config.degraded_rtt.mul_f64(rtt_share);
        link.on_pong(then + rtt, nonce, 0, 0);
        prop_assert_eq!(link.rtt(), Some(rtt));
        prop_assert_eq!(link.state(then + rtt), LinkState::Up);
        prop_assert!(!link.should_close(then + rtt));
        // A slow one makes it Degraded; a pong for another nonce changes no rtt.
        let at = then + hb;
        let nonce = link.poll_ping(at).unwrap();
        link.on_pong(at + ms(1), nonce.wrapping_add(1), 0, 0);
        prop_assert_eq!(link.rtt(), Some(rtt));
        let slow = config.degraded_rtt + ms(1);
        link.on_pong(at + slow, nonce, 0, 0);
        prop_assert_eq!(link.state(at + slow), LinkState::Degraded);
    }
}

/// What the driver does at a random moment of the simulated hour.
#[derive(Debug, Clone, Copy)]
enum Event {
    Poll,
    Heard,
    PongLatest,
    PongOther,
    Drop,
    Connect,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn one_ping_per_interval_over_an_hour(config in arb_config(), seed in any::<u64>()) {
        let hb = config.heartbeat;
        let mut rng = StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(3600);
        let mut link = LinkSupervisor::new(config, 2, t0);
        let mut now = t0;
        let mut connected = false;
        // Model: when the next ping is due, the last nonce, when the session started.
        let mut due: Option<Instant> = None;
        let mut last_ping: Option<(u64, Instant)> = None;
        let mut pings_in_session = 0u64;
        let mut session_start = t0;
        let mut nonces = std::collections::BTreeSet::new();
        while now < end {
            now += Duration::from_micros(rng.gen_range(1..=hb.as_micros() as u64 * 2));
            let event = match rng.gen_range(0..1000) {
                0..=499 => Event::Poll,
                500..=699 => Event::Heard,
                700..=899 => Event::PongLatest,
                900..=989 => Event::PongOther,
                990..=994 => Event::Drop,
                _ => Event::Connect,
            };
            match event {
                Event::Poll => {
                    let got = link.poll_ping(now);
                    let expect = connected && due.is_some_and(|d| now >= d);
                    prop_assert_eq!(got.is_some(), expect, "ping due at {:?}", due.map(|d| d - t0));
                    if let Some(nonce) = got {
                        prop_assert!(nonces.insert(nonce), "nonce {} reused", nonce);
                        if let Some((_, at)) = last_ping {
                            if at >= session_start {
                                prop_assert!(now - at >= hb, "two pings within one interval");
                            }
                        }
                        last_ping = Some((nonce, now));
                        due = Some(now + hb);
                        pings_in_session += 1;
                        let allowed = (now - session_start).as_micros() / hb.as_micros() + 1;
                        prop_assert!(u128::from(pings_in_session) <= allowed);
                    }
                }
                Event::Heard => link.on_heard(now),
                Event::PongLatest => {
                    if let Some((nonce, _)) = last_ping {
                        link.on_pong(now, nonce, 0, 0);
                    }
                }
                Event::PongOther => link.on_pong(now, rng.gen(), rng.gen(), rng.gen()),
                Event::Drop if connected => {
                    link.on_disconnected(now, rng.gen());
                    connected = false;
                    due = None;
                }
                Event::Connect if !connected => {
                    link.on_connected(now);
                    connected = true;
                    due = Some(now);
                    session_start = now;
                    pings_in_session = 0;
                }
                _ => {}
            }
            prop_assert_eq!(link.is_connected(), connected);
            if connected {
                // The next wake-up is the next ping or the silence deadline, whichever first.
                let close_at = link.last_heard().unwrap() + hb * 3;
                prop_assert_eq!(link.poll_timeout(), Some(due.unwrap().min(close_at)));
                prop_assert_eq!(link.next_attempt(), None);
            } else {
                prop_assert_eq!(link.poll_timeout(), link.next_attempt());
            }
        }
    }
}

#[test]
fn jitter_out_of_range_is_clamped() {
    let config = LinkConfig::default();
    let t0 = Instant::now();
    for (jitter, expected) in [
        (0.0, ms(100)),
        (1.0, ms(200)),
        (-3.0, ms(100)),
        (7.0, ms(200)),
        (f64::NAN, ms(150)),
        (f64::INFINITY, ms(150)),
    ] {
        let mut link = LinkSupervisor::new(config, 1, t0);
        link.on_dial_failed(t0, jitter);
        assert_eq!(link.next_attempt(), Some(t0 + expected), "jitter {jitter}");
    }
}

proptest! {
    #[test]
    fn the_clock_offset_is_within_half_the_round_trip(
        truth in -10_000_000_000i64..10_000_000_000,
        rtt_ms in 0u64..5_000,
        stamp_share in 0.0f64..=1.0,
        wall0 in 1_000_000_000_000u64..2_000_000_000_000,
    ) {
        let t0 = Instant::now();
        let mut link = LinkSupervisor::new(LinkConfig::default(), 1, t0);
        link.on_connected(t0);
        let nonce = link.poll_ping(t0).unwrap();
        // The peer stamps its pong when our clock reads somewhere in [wall0, wall0 + rtt].
        let ours_at_stamp = wall0 + (rtt_ms as f64 * stamp_share) as u64;
        let peer_stamp = (ours_at_stamp as i64 + truth) as u64;
        link.on_pong(t0 + ms(rtt_ms), nonce, peer_stamp, wall0 + rtt_ms);
        let c = link.clock_offset().expect("measured");
        prop_assert_eq!(c.error_ms, Some(rtt_ms.div_ceil(2)));
        prop_assert!((c.offset_ms - truth).unsigned_abs() <= rtt_ms.div_ceil(2), "{:?} vs {}", c, truth);
        let warn = LinkConfig::default().skew_warn.as_millis() as u64;
        if truth.unsigned_abs() > warn + rtt_ms + 1 {
            prop_assert!(link.clock_skewed().is_some());
        }
        if truth.unsigned_abs() <= warn {
            prop_assert!(link.clock_skewed().is_none());
        }
    }
}
