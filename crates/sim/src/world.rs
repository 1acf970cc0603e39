//! The simulated world: nodes, their store models and clocks, the network, the event
//! queue, the operators, the faults and the hostile member.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use detente_core::{
    Command, Config, Core, Event, Input, Outgoing, PeerConfig, PlantedBug, Profile, SessionId,
};
use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint, StreamHead};
use detente_proto::envelope::parse_unverified;
use detente_proto::{
    Body, Deadlines, FieldValue, Floors, Frame, LinkConfig, MessageId, NotificationBody,
    PartySecret, Precedence, ReceiptLevel, TextBody, VerifiedEnvelope,
};
use detente_store_types::{Direction, GlossaryRow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::Checker;
use crate::store::StoreModel;
use crate::Outcome;

/// Virtual length of the faulty phase.
const RUN_MS: u64 = 40_000;
/// Longest deadline the simulated charters use (all five are drawn below it).
pub const DEADLINE_MS_MAX: u64 = 30_000;
/// Every member's floors: below every honest ask (deadlines are drawn from 2 s, link tests
/// from 5 s), so that honest members always agree, while the hostile member's asks of 1 s
/// are refused (issue 12 item 9).
pub const FLOORS: Floors = Floors {
    deadlines: Deadlines {
        flash_delivered: Duration::from_millis(1_500),
        flash_acknowledged: Duration::from_millis(1_500),
        immediate_acknowledged: Duration::from_millis(1_500),
        priority_acknowledged: Duration::from_millis(1_500),
        routine_acknowledged: Duration::from_millis(1_500),
    },
    link_test_interval: Duration::from_millis(4_000),
};
/// Half-second steps the end of a run waits at most for a quiet moment.
const SETTLE_STEPS_MAX: usize = 40;
/// Steps after which a run is cut short (a bound on any livelock of the world itself).
const STEPS_MAX: u64 = 400_000;
/// Frames a simulated reader takes from its buffer in one input at most.
const FRAMES_TOGETHER_MAX: usize = 16;
/// Wall clock at virtual time zero: 2026-12-01T00:00:00Z.
const EPOCH_MS: i64 = 1_796_083_200_000;
const ADDRESSES: usize = 2;
/// Most members a world may have.
pub const NODES_MAX: usize = 8;

/// Which fault kinds this seed switches on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub crash: bool,
    pub commit_fail: bool,
    pub partition: bool,
    pub session_drop: bool,
    pub stall: bool,
    pub address_down: bool,
    pub clock: bool,
    pub hostile: bool,
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        session: SessionId,
        to: usize,
        bytes: Vec<u8>,
    },
    Opened {
        session: SessionId,
        node: usize,
    },
    Closed {
        session: SessionId,
        node: usize,
    },
    DialFailed {
        node: usize,
        peer: usize,
    },
    CommitDone {
        node: usize,
        generation: u64,
        batch: u64,
        ok: bool,
    },
    /// The store model's answer to a deadline query.
    QueryDone {
        node: usize,
        generation: u64,
        query: u64,
        rows: Result<Vec<detente_store_types::DeadlineCandidate>, String>,
    },
    Timer {
        node: usize,
        generation: u64,
        at: u64,
    },
    Operator {
        node: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Fault,
    Hostile,
}

pub(crate) struct Node {
    pub name: String,
    pub config: Config,
    pub secret: PartySecret,
    pub core: Option<Core>,
    pub store: StoreModel,
    pub hostile: bool,
    pub skew_ms: i64,
    pub generation: u64,
    pub timer: Option<u64>,
    pub tickets: u64,
    /// Tickets of sends and what they were.
    pub asked: BTreeMap<u64, &'static str>,
    /// What an operator's command must lead to, by ticket (checked on its answer).
    pub expect: BTreeMap<u64, crate::check::Expect>,
}

pub(crate) struct Session {
    pub a: usize,
    pub b: usize,
    pub open: bool,
    /// A frame was lost in this direction (to `a`, to `b`): the stream is cut, as TCP's.
    pub broken: [bool; 2],
    pub last: [u64; 2],
    /// Each end (`a`, `b`) was told the session is open. A frame reaching an end before
    /// that waits (a TCP stream delivers nothing before it is accepted); the hostile
    /// member may write on a session before it is told.
    pub told: [bool; 2],
}

/// The world of one seed.
pub struct World {
    pub(crate) seed: u64,
    pub(crate) rng: StdRng,
    pub(crate) now_ms: u64,
    pub(crate) base: Instant,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    order: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) sessions: BTreeMap<SessionId, Session>,
    next_session: SessionId,
    /// blocked[a][b]: frames from a to b are lost.
    blocked: Vec<Vec<bool>>,
    down: BTreeSet<(usize, usize)>,
    stalled: BTreeSet<usize>,
    pub faults: Faults,
    healing: bool,
    pub(crate) checker: Checker,
    pub(crate) counts: BTreeMap<&'static str, u64>,
    pub(crate) trace: Option<Vec<String>>,
    pub(crate) failure: Option<String>,
    steps: u64,
}

impl World {
    /// The world of `seed`: two or three members unless `nodes` forces the number.
    pub fn new(seed: u64, bug: Option<PlantedBug>, trace: bool, nodes: Option<usize>) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let drawn = rng.gen_range(2..=3usize);
        let n = nodes.map_or(drawn, |n| n.clamp(2, NODES_MAX));
        let faults = Faults {
            crash: rng.gen_bool(0.5),
            commit_fail: rng.gen_bool(0.4),
            partition: rng.gen_bool(0.5),
            session_drop: rng.gen_bool(0.4),
            stall: rng.gen_bool(0.3),
            address_down: rng.gen_bool(0.3),
            clock: rng.gen_bool(0.5),
            hostile: n >= 3 && rng.gen_bool(0.6),
        };
        let secrets: Vec<[u8; 32]> = (0..n).map(|_| rng.gen()).collect();
        let keys: Vec<_> = secrets
            .iter()
            .map(|s| PartySecret::from_seed(*s).public())
            .collect();
        let nodes = (0..n)
            .map(|i| {
                let peers = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| PeerConfig {
                        name: format!("n{j}"),
                        key: keys[j],
                        addresses: ADDRESSES,
                    })
                    .collect();
                let config = Config {
                    name: format!("n{i}"),
                    author: format!("Duty Officer n{i}"),
                    secret_seed: secrets[i],
                    peers,
                    deadlines: random_deadlines(&mut rng),
                    link_test_interval: Duration::from_millis(rng.gen_range(5_000..30_000)),
                    floors: FLOORS,
                    link: LinkConfig::default(),
                    checkpoint_interval: Duration::from_millis(rng.gen_range(3_000..15_000)),
                    // Half the nodes also sign after a count of envelopes.
                    checkpoint_every: if rng.gen_bool(0.5) {
                        0
                    } else {
                        rng.gen_range(5..50)
                    },
                    random_seed: rng.gen(),
                    // Half the nodes watch a few messages' deadlines in memory, so that
                    // the rest are read back from the store.
                    deadlines_watched_max: if rng.gen_bool(0.5) {
                        rng.gen_range(1..8)
                    } else {
                        detente_core::DEADLINES_WATCHED_DEFAULT
                    },
                    profile: Profile::default(),
                    bug,
                };
                let hostile = faults.hostile && i == n - 1;
                let skew_ms = if faults.clock {
                    rng.gen_range(-600_000..600_000)
                } else {
                    0
                };
                // The hostile member back-dates everything it writes by a month.
                let skew_ms = if hostile {
                    skew_ms - 30 * 86_400_000
                } else {
                    skew_ms
                };
                Node {
                    name: format!("n{i}"),
                    secret: PartySecret::from_seed(secrets[i]),
                    config,
                    core: None,
                    store: StoreModel::default(),
                    hostile,
                    skew_ms,
                    generation: 0,
                    timer: None,
                    tickets: 0,
                    asked: BTreeMap::new(),
                    expect: BTreeMap::new(),
                }
            })
            .collect();
        World {
            seed,
            rng,
            now_ms: 0,
            base: Instant::now(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            order: 0,
            nodes,
            sessions: BTreeMap::new(),
            next_session: 1,
            blocked: vec![vec![false; n]; n],
            down: BTreeSet::new(),
            stalled: BTreeSet::new(),
            faults,
            healing: false,
            checker: Checker::default(),
            counts: BTreeMap::new(),
            trace: trace.then(Vec::new),
            failure: None,
            steps: 0,
        }
    }

    pub(crate) fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("{:>8} ms  {}", self.now_ms, what()));
        }
    }

    /// The frame `bytes` arriving at `to` on `session`, and sometimes the frames queued right
    /// after it on the same session within a few milliseconds (a reader that was slow to
    /// come back finds them in its buffer together): the core then reads them in one input,
    /// with one signature batch. Only the next events in the queue are taken, so nothing
    /// else overtakes or is overtaken; they only arrive a little earlier.
    fn arrived_together(&mut self, session: u64, to: usize, bytes: Vec<u8>) -> Vec<Vec<u8>> {
        let mut frames = vec![bytes];
        if !self.rng.gen_bool(0.3) {
            return frames;
        }
        let until = self.now_ms + self.rng.gen_range(0..20);
        while frames.len() < FRAMES_TOGETHER_MAX {
            let Some(&Reverse((time, order))) = self.queue.peek() else {
                break;
            };
            let next = matches!(
                self.events.get(&order),
                Some(Ev::Deliver { session: s, to: t, .. }) if *s == session && *t == to
            );
            if time > until || !next {
                break;
            }
            self.queue.pop();
            if let Some(Ev::Deliver { bytes, .. }) = self.events.remove(&order) {
                frames.push(bytes);
            }
        }
        frames
    }

    pub(crate) fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub(crate) fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.note(|| format!("INVARIANT BROKEN: {what}"));
            self.failure = Some(what);
        }
    }

    fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.order += 1;
        self.queue
            .push(Reverse((self.now_ms + delay_ms, self.order)));
        self.events.insert(self.order, ev);
    }

    pub(crate) fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    pub(crate) fn wall(&self, node: usize) -> i64 {
        EPOCH_MS + self.now_ms as i64 + self.nodes[node].skew_ms
    }

    /// The whole run: the faulty phase, then healing and the liveness checks.
    pub fn run(&mut self) {
        for node in 0..self.nodes.len() {
            self.start(node);
            let first = self.rng.gen_range(0..2_000);
            self.at(first, Ev::Operator { node });
        }
        self.at(500, Ev::Fault);
        if self.faults.hostile {
            self.at(1_000, Ev::Hostile);
        }
        self.run_until(RUN_MS);
        if self.failure.is_some() {
            return;
        }
        self.heal();
        self.finish();
    }

    pub(crate) fn run_until(&mut self, end_ms: u64) {
        while self.failure.is_none() && self.steps < STEPS_MAX {
            let Some(&Reverse((time, order))) = self.queue.peek() else {
                break;
            };
            if time > end_ms {
                break;
            }
            self.queue.pop();
            self.now_ms = time;
            let ev = self.events.remove(&order).expect("queued");
            self.steps += 1;
            self.step(ev);
        }
        self.now_ms = self.now_ms.max(end_ms);
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { session, to, bytes } => {
                let (live, told) = self.sessions.get(&session).map_or((false, false), |s| {
                    let end = usize::from(to == s.b);
                    (s.open && !s.broken[end], s.told[end])
                });
                if live && !told {
                    // The end learns of the session with its first frame, as TCP's accept.
                    self.tell_opened(session, to);
                }
                if live {
                    let frames = self.arrived_together(session, to, bytes);
                    let claims: Vec<(usize, u64)> = frames
                        .iter()
                        .filter_map(|b| crate::check::stream_claim(self, to, session, b))
                        .collect();
                    // As the node's driver does: FLASH and IMMEDIATE envelopes read together
                    // with others go to the core first (detente_core::split_urgent).
                    let (urgent, frames) = detente_core::split_urgent(frames, false);
                    if !urgent.is_empty() {
                        if !frames.is_empty() {
                            self.count("urgent_envelopes_taken_first");
                        }
                        self.input(
                            to,
                            Input::Frames {
                                session,
                                frames: urgent,
                            },
                        );
                    }
                    if frames.len() == 1 {
                        let bytes = frames.into_iter().next().unwrap_or_default();
                        self.input(to, Input::Frame { session, bytes });
                    } else if !frames.is_empty() {
                        self.count("frames_read_together");
                        self.input(to, Input::Frames { session, frames });
                    }
                    for (peer, hwm) in claims {
                        crate::check::after_stream_claim(self, to, peer, hwm);
                    }
                }
            }
            Ev::Opened { session, node } => {
                self.tell_opened(session, node);
            }
            Ev::Closed { session, node } => self.input(node, Input::SessionClosed { session }),
            Ev::DialFailed { node, peer } => {
                let peer = self.nodes[peer].name.clone();
                self.input(node, Input::DialFailed { peer });
            }
            Ev::CommitDone {
                node,
                generation,
                batch,
                ok,
            } => self.commit_done(node, generation, batch, ok),
            Ev::QueryDone {
                node,
                generation,
                query,
                rows,
            } => {
                if self.nodes[node].generation == generation {
                    self.input(node, Input::DeadlineRows { query, rows });
                }
            }
            Ev::Timer {
                node,
                generation,
                at,
            } => {
                // Only the timer last asked for fires (earlier requests are superseded).
                if self.nodes[node].generation == generation && self.nodes[node].timer == Some(at) {
                    self.nodes[node].timer = None;
                    self.input(node, Input::Tick);
                }
            }
            Ev::Operator { node } => {
                if !self.healing {
                    self.operator(node);
                    let next = self.rng.gen_range(200..3_000);
                    self.at(next, Ev::Operator { node });
                }
            }
            Ev::Crash { node } => self.crash(node),
            Ev::Restart { node } => self.start(node),
            Ev::Fault => {
                if !self.healing {
                    self.fault();
                    let next = self.rng.gen_range(300..4_000);
                    self.at(next, Ev::Fault);
                }
            }
            Ev::Hostile => {
                if !self.healing {
                    self.hostile_act();
                    let next = self.rng.gen_range(200..2_000);
                    self.at(next, Ev::Hostile);
                }
            }
        }
    }

    /// Start (or restart) a node from its store model alone.
    fn start(&mut self, node: usize) {
        if self.nodes[node].core.is_some() {
            return;
        }
        let (now, wall) = (self.instant(), self.wall(node));
        self.checker.on_restart(node);
        let n = &mut self.nodes[node];
        n.generation += 1;
        n.timer = None;
        match Core::recover(n.config.clone(), n.store.snapshot(), now, wall) {
            Ok(core) => n.core = Some(core),
            Err(e) => return self.fail(format!("n{node}: cannot recover: {e}")),
        }
        self.note(|| format!("n{node} starts"));
        self.drain(node);
    }

    fn crash(&mut self, node: usize) {
        if self.nodes[node].core.take().is_none() {
            return;
        }
        self.count("crashes");
        self.note(|| format!("n{node} CRASHES (uncommitted work lost)"));
        self.nodes[node].generation += 1;
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.open && (s.a == node || s.b == node))
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close_session(id, Some(node));
        }
        let pause = self.rng.gen_range(100..5_000);
        self.at(pause, Ev::Restart { node });
    }

    /// Tell `node` that `session` is open, once.
    fn tell_opened(&mut self, session: SessionId, node: usize) {
        let Some(s) = self.sessions.get_mut(&session).filter(|s| s.open) else {
            return;
        };
        let end = usize::from(node == s.b);
        if s.told[end] {
            return;
        }
        s.told[end] = true;
        let other = if end == 0 { s.b } else { s.a };
        let peer = self.nodes[other].name.clone();
        // `a` dialed the session.
        let dialed_by_us = end == 0;
        self.input(
            node,
            Input::SessionOpened {
                peer,
                session,
                dialed_by_us,
            },
        );
    }

    /// Close a session; tell the ends other than `except` after a delay.
    fn close_session(&mut self, id: SessionId, except: Option<usize>) {
        let Some(s) = self.sessions.get_mut(&id).filter(|s| s.open) else {
            return;
        };
        s.open = false;
        let (a, b) = (s.a, s.b);
        for node in [a, b] {
            if Some(node) != except {
                let d = self.rng.gen_range(1..30);
                self.at(d, Ev::Closed { session: id, node });
            }
        }
    }

    pub(crate) fn input(&mut self, node: usize, input: Input) {
        let (now, wall) = (self.instant(), self.wall(node));
        if self.nodes[node].core.is_none() {
            return;
        }
        if self.trace.is_some() {
            let what = describe_input(&input);
            self.note(|| format!("n{node} <- {what}"));
        }
        let core = self.nodes[node].core.as_mut().expect("checked");
        core.handle(now, wall, input);
        self.drain(node);
    }

    /// Take everything a core has to say, and act on it.
    fn drain(&mut self, node: usize) {
        loop {
            let Some(core) = self.nodes[node].core.as_mut() else {
                return;
            };
            // As the node's driver does: a deadline query goes before the next batch.
            if let Some((query, asked)) = core.poll_query() {
                self.query(node, query, asked);
                continue;
            }
            let core = self.nodes[node].core.as_mut().expect("present");
            if let Some((batch, rows)) = core.poll_commit() {
                self.submit(node, batch, rows);
                continue;
            }
            let core = self.nodes[node].core.as_mut().expect("present");
            if let Some((session, frame)) = core.poll_transmit() {
                self.transmit(node, session, frame);
                continue;
            }
            let core = self.nodes[node].core.as_mut().expect("present");
            if let Some(event) = core.poll_event() {
                self.on_event(node, event);
                continue;
            }
            break;
        }
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        if let Some(at) = core.poll_timeout() {
            let at_ms = at.saturating_duration_since(self.base).as_millis() as u64;
            let at_ms = at_ms.max(self.now_ms + 1);
            if self.nodes[node].timer.is_none_or(|t| t > at_ms) {
                self.nodes[node].timer = Some(at_ms);
                let generation = self.nodes[node].generation;
                let ev = Ev::Timer {
                    node,
                    generation,
                    at: at_ms,
                };
                self.at(at_ms - self.now_ms, ev);
            }
        }
    }

    fn submit(&mut self, node: usize, batch: u64, mut rows: detente_store_types::WriteBatch) {
        // As the node's driver does: our copy of an equivocated envelope, from the store.
        for (i, channel, seq) in rows.evidence_to_fill() {
            let peer = &rows.evidence[i].peer;
            let core = self.nodes[node].core.as_ref();
            let Some(key) = core.and_then(|c| c.peer_key(peer)) else {
                continue;
            };
            let stored = self.nodes[node].store.at((channel, *key.as_bytes()), seq);
            if let Some(m) = stored {
                rows.evidence[i].first = m.bytes.clone();
            }
        }
        crate::check::receipt_times(self, node, &rows);
        let fail = self.faults.commit_fail && !self.healing && self.rng.gen_bool(0.08);
        let latency = self.rng.gen_range(1..20);
        let generation = self.nodes[node].generation;
        if !fail {
            // The store applies it when the commit completes (a crash before loses it).
            self.checker.pending.insert((node, batch), rows);
        } else {
            self.count("commit_failures");
        }
        let ok = !fail;
        self.at(
            latency,
            Ev::CommitDone {
                node,
                generation,
                batch,
                ok,
            },
        );
    }

    /// Answer a deadline query from the store model (which no commit changes meanwhile: the
    /// core seals nothing until the answer came), after a delay; it may fail like a commit.
    fn query(&mut self, node: usize, query: u64, asked: detente_core::DeadlineQuery) {
        self.count("deadline_queries");
        self.note(|| match &asked {
            detente_core::DeadlineQuery::Due { group, after, limit } => format!(
                "n{node} asks deadline query {query}: {} {:?} precedence {} after {:?} limit {limit}",
                group.peer,
                group.direction,
                group.precedence,
                after.map(|(ms, id)| (ms, crate::store::hex(&id)))
            ),
            detente_core::DeadlineQuery::State { ids } => {
                format!("n{node} asks deadline query {query}: state of {} messages", ids.len())
            }
        });
        let fail = self.faults.commit_fail && !self.healing && self.rng.gen_bool(0.05);
        let rows = if fail {
            self.count("deadline_query_failures");
            Err("I/O error (simulated)".to_string())
        } else {
            Ok(self.nodes[node].store.deadline_rows(&asked))
        };
        let latency = self.rng.gen_range(1..10);
        let generation = self.nodes[node].generation;
        self.at(
            latency,
            Ev::QueryDone {
                node,
                generation,
                query,
                rows,
            },
        );
    }

    fn commit_done(&mut self, node: usize, generation: u64, batch: u64, ok: bool) {
        let rows = self.checker.pending.remove(&(node, batch));
        if self.nodes[node].generation != generation {
            return;
        }
        if !ok {
            let error = "I/O error (simulated)".to_string();
            return self.input(node, Input::CommitFailed { batch, error });
        }
        let rows = rows.expect("a successful commit has its rows");
        if let Err(e) = self.nodes[node].store.apply(&rows) {
            return self.fail(format!("n{node}: the store refused a batch: {e}"));
        }
        crate::check::on_commit(self, node, &rows);
        self.input(node, Input::Committed { batch });
    }

    fn transmit(&mut self, node: usize, session: SessionId, frame: Frame) {
        crate::check::on_transmit(self, node, session, &frame);
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        self.send_bytes(node, session, bytes[4..].to_vec());
    }

    /// Put a frame on the wire from `node` on `session`.
    pub(crate) fn send_bytes(&mut self, node: usize, session: SessionId, bytes: Vec<u8>) {
        let Some(s) = self.sessions.get(&session).filter(|s| s.open) else {
            return;
        };
        let to = if s.a == node { s.b } else { s.a };
        let dir = usize::from(to == s.b);
        if s.broken[dir] {
            return;
        }
        if self.blocked[node][to] {
            self.count("frames_lost");
            self.sessions.get_mut(&session).expect("present").broken[dir] = true;
            return;
        }
        let mut delay = self.rng.gen_range(1..40);
        if self.stalled.contains(&to) {
            delay += 1_500;
        }
        let s = self.sessions.get_mut(&session).expect("present");
        let at = (self.now_ms + delay).max(s.last[dir]);
        s.last[dir] = at;
        let d = at - self.now_ms;
        self.at(d, Ev::Deliver { session, to, bytes });
    }

    fn on_event(&mut self, node: usize, event: Event) {
        if let Event::Deadline {
            peer,
            id,
            need,
            decision,
        } = &event
        {
            let id = crate::store::hex(&id.0);
            self.note(|| format!("n{node} decides {need:?} of {id} with {peer}: {decision:?}"));
        }
        crate::check::on_event(self, node, &event);
        match event {
            Event::Dial { peer, address } => self.dial(node, &peer, address),
            Event::CloseSession { session } => self.close_session(session, Some(node)),
            Event::Fetch {
                session,
                channel,
                sender,
                after,
                through,
                head,
            } => self.answer_fetch(node, session, (channel, sender), (after, through), head),
            _ => {}
        }
    }

    /// As the node's driver does (`detente_node::fetch`): the peer's `Fetch` answered from
    /// the store model, within the same bounds, then `FetchAnswered`.
    fn answer_fetch(
        &mut self,
        node: usize,
        session: SessionId,
        stream: crate::store::Stream,
        (after, through): (u64, u64),
        head: u64,
    ) {
        self.count("fetches_answered");
        let mut frames = Vec::new();
        let mut upto = after;
        let mut bytes = 0;
        let last = through.min(after + u64::from(detente_proto::FETCH_ENVELOPES_MAX));
        while upto < last && bytes < detente_proto::FETCH_ANSWER_BYTES_MAX {
            let Some(m) = self.nodes[node].store.at(stream, upto + 1) else {
                break;
            };
            bytes += m.bytes.len();
            frames.push(Frame::Fetched(m.bytes.clone()));
            upto += 1;
        }
        frames.push(Frame::FetchEnd {
            sender: stream.1,
            upto,
            head,
        });
        for frame in frames {
            self.transmit(node, session, frame);
        }
        self.input(node, Input::FetchAnswered { session });
    }

    fn dial(&mut self, node: usize, peer: &str, address: usize) {
        let Some(to) = self.nodes.iter().position(|n| n.name == peer) else {
            return;
        };
        let d = self.rng.gen_range(1..50);
        let reachable = !self.blocked[node][to]
            && !self.blocked[to][node]
            && !self.down.contains(&(to, address))
            && self.nodes[to].core.is_some();
        if !reachable {
            self.count("dials_failed");
            return self.at(d, Ev::DialFailed { node, peer: to });
        }
        let id = self.next_session;
        self.next_session += 1;
        let session = Session {
            a: node,
            b: to,
            open: true,
            broken: [false; 2],
            last: [0; 2],
            told: [false; 2],
        };
        self.sessions.insert(id, session);
        self.at(d, Ev::Opened { session: id, node });
        self.at(
            d,
            Ev::Opened {
                session: id,
                node: to,
            },
        );
    }

    /// An operator at `node` does something.
    fn operator(&mut self, node: usize) {
        if self.nodes[node].core.is_none() {
            return;
        }
        let roll = self.rng.gen_range(0..100);
        let peer = self.random_peer(node);
        let command = match roll {
            0..=44 => self.text(peer.clone()),
            45..=49 => self.batch(peer.clone()),
            50..=59 => Command::Send(Outgoing {
                peer,
                precedence: random_precedence(&mut self.rng),
                topic: "sitrep".into(),
                author: "Watch Officer".into(),
                // The built-in "text" format: one free-text field.
                body: Body::Notification(NotificationBody {
                    format: "text".into(),
                    version: 1,
                    fields: vec![(
                        "body".into(),
                        FieldValue::Text(TextBody {
                            language: "en".into(),
                            text: "situation unchanged".into(),
                            translations: Vec::new(),
                        }),
                    )],
                }),
                in_reply_to: None,
            }),
            60..=79 => match self.answer(node) {
                Some(c) => c,
                None => return,
            },
            80..=87 => Command::Checkpoint { peer },
            88..=91 => Command::SetDeadlines {
                deadlines: random_deadlines(&mut self.rng),
            },
            92..=93 => self.glossary(peer),
            _ => {
                self.count("restarts");
                self.crash(node);
                return;
            }
        };
        if let Command::SetDeadlines { deadlines } = &command {
            // The operator edits the node's configuration: it survives a restart.
            self.nodes[node].config.deadlines = *deadlines;
        }
        self.operate(node, command);
    }

    pub(crate) fn operate(&mut self, node: usize, command: Command) {
        let n = &mut self.nodes[node];
        n.tickets += 1;
        let ticket = n.tickets;
        let kind = match &command {
            Command::Send(_) => "send",
            Command::SendBatch { .. } => "send_batch",
            Command::Answer { .. } => "answer",
            Command::Checkpoint { .. } => "checkpoint",
            Command::SetDeadlines { .. } => "deadlines",
            Command::Glossary { .. } => "glossary",
            Command::AddPeer { .. } => "add_peer",
        };
        n.asked.insert(ticket, kind);
        crate::check::on_operate(n, ticket, &command);
        self.count(kind);
        self.input(node, Input::Operator { ticket, command });
    }

    fn random_peer(&mut self, node: usize) -> String {
        let n = self.nodes.len();
        let mut j = self.rng.gen_range(0..n - 1);
        if j >= node {
            j += 1;
        }
        self.nodes[j].name.clone()
    }

    pub(crate) fn text(&mut self, peer: String) -> Command {
        let precedence = random_precedence(&mut self.rng);
        let words = self.rng.gen_range(1..40);
        Command::Send(Outgoing {
            peer,
            precedence,
            // Topics and titles are the operator's: the envelope must carry them as given.
            topic: format!("topic-{}", words % 3),
            author: if words % 2 == 0 {
                "Duty Officer"
            } else {
                "值班员"
            }
            .into(),
            body: Body::Text(TextBody {
                language: "en".into(),
                text: format!("report {words} {}", "word ".repeat(words)),
                translations: Vec::new(),
            }),
            in_reply_to: None,
        })
    }

    /// A batch of 2 to 6 texts for `peer`, all or nothing, now and then with one the core
    /// must refuse (a topic it does not allow), which refuses the batch.
    fn batch(&mut self, peer: String) -> Command {
        let count = self.rng.gen_range(2..=6);
        let spoiled = self.rng.gen_range(0..10) == 0;
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            // `text` makes a send; anything else would be a bug here, and is left out.
            if let Command::Send(mut message) = self.text(peer.clone()) {
                if spoiled && i == count - 1 {
                    message.topic = "Not A Topic".into();
                }
                messages.push(message);
            }
        }
        Command::SendBatch {
            messages,
            idempotency: None,
        }
    }

    /// A glossary term for the channel with `peer`; half are invalid (the same
    /// language twice, or an empty term) and must be refused.
    fn glossary(&mut self, peer: String) -> Command {
        let n = self.rng.gen_range(0..40u32);
        let (lang_b, term_a) = match n % 4 {
            0 => ("en", format!("term {n}")),
            1 => ("zh-CN", " ".into()),
            _ => ("zh-CN", format!("term {n}")),
        };
        Command::Glossary {
            row: GlossaryRow {
                peer,
                lang_a: "en".into(),
                term_a,
                lang_b: lang_b.into(),
                term_b: format!("术语 {n}"),
                added_at_ms: 0,
            },
        }
    }

    /// Read, acknowledge or decline a received message at random.
    fn answer(&mut self, node: usize) -> Option<Command> {
        let store = &self.nodes[node].store;
        let candidates: Vec<(String, [u8; 32])> = store
            .messages
            .values()
            .filter(|m| m.direction == Direction::In && (m.kind == 0 || m.kind == 4))
            .map(|m| (m.peer.clone(), m.id))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (peer, id) = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let level = match self.rng.gen_range(0..3) {
            0 => ReceiptLevel::Read,
            1 => ReceiptLevel::Acknowledged,
            _ => ReceiptLevel::Declined,
        };
        Some(Command::Answer {
            peer,
            of: MessageId(id),
            level,
            note: None,
        })
    }

    /// One random fault, if this seed has it on.
    fn fault(&mut self) {
        let n = self.nodes.len();
        let a = self.rng.gen_range(0..n);
        let b = (a + self.rng.gen_range(1..n)) % n;
        match self.rng.gen_range(0..7) {
            0 if self.faults.crash => {
                let d = self.rng.gen_range(0..50);
                self.at(d, Ev::Crash { node: a });
            }
            1 if self.faults.partition => {
                let two_way = self.rng.gen_bool(0.5);
                let on = !self.blocked[a][b];
                self.blocked[a][b] = on;
                if two_way {
                    self.blocked[b][a] = on;
                }
                self.count(if two_way {
                    "partitions_two_way"
                } else {
                    "partitions_one_way"
                });
                self.note(|| {
                    format!(
                        "partition n{a}->n{b} {} (two-way {two_way})",
                        if on { "on" } else { "off" }
                    )
                });
            }
            2 if self.faults.session_drop => {
                let open: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.open)
                    .map(|(&i, _)| i)
                    .collect();
                if !open.is_empty() {
                    let id = open[self.rng.gen_range(0..open.len())];
                    self.count("sessions_dropped");
                    self.note(|| format!("session {id} drops"));
                    self.close_session(id, None);
                }
            }
            3 if self.faults.stall && !self.stalled.remove(&a) => {
                // A node that stops reading: its frames arrive late (a second time: it
                // reads again).
                self.stalled.insert(a);
                self.count("stalls");
            }
            4 if self.faults.address_down => {
                let address = self.rng.gen_range(0..ADDRESSES);
                if !self.down.remove(&(a, address)) {
                    self.down.insert((a, address));
                    self.count("addresses_down");
                }
            }
            5 if self.faults.clock => {
                let jump = self.rng.gen_range(-3_600_000..3_600_000i64);
                self.nodes[a].skew_ms += jump;
                self.count(if jump < 0 {
                    "clock_jumps_back"
                } else {
                    "clock_jumps_forward"
                });
                self.note(|| format!("n{a} wall clock jumps {jump} ms"));
            }
            _ => {}
        }
    }

    /// The hostile member (the last node) lies to an honest peer.
    fn hostile_act(&mut self) {
        let h = self.nodes.len() - 1;
        if self.nodes[h].core.is_none() {
            return;
        }
        let target = self.rng.gen_range(0..h);
        let Some(session) = self.session_between(h, target) else {
            return;
        };
        let kind = self.rng.gen_range(0..13);
        if kind == 8 {
            // It reads slowly: everything sent to it arrives late, until it reads again.
            if !self.stalled.remove(&h) {
                self.stalled.insert(h);
                self.count("hostile_slow_reads");
            }
            return;
        }
        if let Some((name, bytes)) = crate::check::hostile_frame(self, h, target, kind) {
            self.count(name);
            self.note(|| format!("n{h} (hostile) sends n{target} {name}"));
            self.send_bytes(h, session, bytes);
        }
    }

    pub(crate) fn session_between(&self, a: usize, b: usize) -> Option<SessionId> {
        self.sessions
            .iter()
            .rev()
            .find(|(_, s)| s.open && ((s.a == a && s.b == b) || (s.a == b && s.b == a)))
            .map(|(&id, _)| id)
    }

    /// Faults off, everything restarted and reconnected; let the world settle.
    fn heal(&mut self) {
        self.healing = true;
        self.note(|| "HEALING: faults off".to_string());
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
        self.down.clear();
        self.stalled.clear();
        for node in 0..self.nodes.len() {
            self.start(node);
        }
        for node in 0..self.nodes.len() {
            for peer in 0..self.nodes.len() {
                if peer != node {
                    let name = self.nodes[peer].name.clone();
                    let c = self.text(name);
                    self.operate(node, c);
                }
            }
        }
        // Reconnect (backoff is at most 30 s), deliver, then let every deadline pass.
        let end = self.now_ms + 60_000 + 2 * DEADLINE_MS_MAX;
        self.run_until(end);
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                if self.nodes[a].hostile || self.nodes[b].hostile {
                    continue;
                }
                let (ka, kb) = (self.key(a), self.key(b));
                let (x, y) = if ka < kb { (a, b) } else { (b, a) };
                let peer = self.nodes[y].name.clone();
                self.operate(x, Command::Checkpoint { peer });
            }
        }
        let end = self.now_ms + 20_000;
        self.run_until(end);
        if self.faults.hostile {
            crate::check::final_equivocation(self);
            let end = self.now_ms + 10_000;
            self.run_until(end);
        }
    }

    pub(crate) fn key(&self, node: usize) -> [u8; 32] {
        *self.nodes[node].secret.public().as_bytes()
    }

    fn finish(&mut self) {
        // Link tests never stop: judge liveness in a quiet moment between two of them
        // (tests are at least 5 s apart; a round trip takes far less).
        for _ in 0..SETTLE_STEPS_MAX {
            if self.failure.is_some() || crate::check::settled(self) {
                break;
            }
            let end = self.now_ms + 500;
            self.run_until(end);
        }
        if self.failure.is_none() {
            crate::check::liveness(self);
        }
    }

    pub fn outcome(&mut self) -> Outcome {
        Outcome {
            seed: self.seed,
            nodes: self.nodes.len(),
            failure: self.failure.clone(),
            counts: self.counts.clone(),
            trace: self.trace.take().unwrap_or_default(),
            steps: self.steps,
        }
    }

    /// Sign `envelope` as node `h` (the hostile member forging).
    pub(crate) fn forge(&self, h: usize, envelope: detente_proto::Envelope) -> Option<Vec<u8>> {
        VerifiedEnvelope::sign(envelope, &self.nodes[h].secret)
            .ok()
            .map(|v| v.bytes().to_vec())
    }

    /// A checkpoint signed by `h` naming `root` for its own stream to `target`.
    pub(crate) fn forge_checkpoint(
        &self,
        h: usize,
        target: usize,
        size: u64,
        root: [u8; 32],
    ) -> Option<Vec<u8>> {
        let me = self.nodes[h].secret.public();
        let them = self.nodes[target].secret.public();
        let channel = detente_proto::ChannelId::for_pair(&me, &them);
        let heads = vec![
            StreamHead {
                key: me,
                size,
                root,
            },
            StreamHead {
                key: them,
                size: 0,
                root: detente_proto::merkle::empty_root(),
            },
        ];
        let c = Checkpoint::new(channel, 1, heads).ok()?;
        SignedCheckpoint::sign(c, &self.nodes[h].secret)
            .ok()
            .map(|s| s.encode())
    }

    pub(crate) fn parse(bytes: &[u8]) -> Option<detente_proto::Envelope> {
        parse_unverified(bytes).ok()
    }

    pub(crate) fn frame_bytes(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(&mut out);
        out[4..].to_vec()
    }
}

fn random_precedence(rng: &mut StdRng) -> Precedence {
    match rng.gen_range(0..100) {
        0..=14 => Precedence::Flash,
        15..=34 => Precedence::Immediate,
        35..=59 => Precedence::Priority,
        _ => Precedence::Routine,
    }
}

fn random_deadlines(rng: &mut StdRng) -> Deadlines {
    let mut d = || Duration::from_millis(rng.gen_range(2_000..DEADLINE_MS_MAX));
    Deadlines {
        flash_delivered: d(),
        flash_acknowledged: d(),
        immediate_acknowledged: d(),
        priority_acknowledged: d(),
        routine_acknowledged: d(),
    }
}

fn describe_input(input: &Input) -> String {
    match input {
        Input::Frame { session, bytes } => match Frame::decode(bytes) {
            Ok(Frame::Envelope(b)) => match parse_unverified(&b) {
                Ok(e) => format!(
                    "s{session} envelope seq {} {} {}",
                    e.seq,
                    e.precedence,
                    e.body.kind_name()
                ),
                Err(_) => format!("s{session} envelope (garbage)"),
            },
            Ok(Frame::Checkpoint(_)) => format!("s{session} checkpoint"),
            Ok(Frame::Terms(_)) => format!("s{session} terms"),
            Ok(f) => format!("s{session} {f:?}"),
            Err(e) => format!("s{session} bad frame ({e})"),
        },
        Input::Frames { session, frames } => {
            let each: Vec<String> = frames
                .iter()
                .map(|bytes| {
                    let one = Input::Frame {
                        session: *session,
                        bytes: bytes.clone(),
                    };
                    describe_input(&one)
                })
                .collect();
            format!("{} frames together: {}", frames.len(), each.join("; "))
        }
        Input::Operator { ticket, command } => format!("operator #{ticket} {}", short(command)),
        Input::DeadlineRows { query, rows } => match rows {
            Ok(rows) => {
                let each: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{:?} {} seq {} missed {:?}",
                            r.direction, r.peer, r.seq, r.missed
                        )
                    })
                    .collect();
                format!("deadline rows of query {query}: [{}]", each.join(", "))
            }
            Err(e) => format!("deadline query {query} failed: {e}"),
        },
        other => format!("{other:?}"),
    }
}

fn short(command: &Command) -> String {
    match command {
        Command::Send(Outgoing {
            peer, precedence, ..
        }) => format!("send {precedence} to {peer}"),
        Command::SendBatch { messages, .. } => format!("send a batch of {}", messages.len()),
        Command::Answer { peer, level, .. } => format!("answer {} to {peer}", level.name()),
        Command::Checkpoint { peer } => format!("checkpoint with {peer}"),
        Command::SetDeadlines { .. } => "new deadlines".into(),
        Command::Glossary { row } => format!("glossary term with {}", row.peer),
        Command::AddPeer { peer } => format!("pin {}", peer.name),
    }
}
