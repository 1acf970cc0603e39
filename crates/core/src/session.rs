//! Sessions: Hello/Terms on open, link supervision (heartbeats, silence, redial), the
//! frames a peer sends, and the precedence-scheduled pump of our durable outbox.

use detente_proto::claim::{Answer, Claim, ClaimCheck};
use detente_proto::frame::{FrameError, LINK_VERSION};
use detente_proto::sched::Outgoing;
use detente_proto::{
    Frame, Precedence, RefuseCode, Scheduler, VerifiedEnvelope, FETCHES_QUEUED_MAX,
};

use crate::{Core, Event, SessionId, SESSION_IN_FLIGHT_MAX};

/// A dial the driver has not answered after this long counts as failed.
pub const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One established session with a peer.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: SessionId,
    /// Built when the peer's `Hello` arrives (it says where to start).
    pub sched: Option<Scheduler>,
    /// Envelope frames we sent, and the peer's count of them from its last `Ack`.
    pub sent: u64,
    pub acked: u64,
    /// Envelope frames the peer sent that we processed.
    pub received: u64,
    /// An `Ack` is owed with the next batch.
    pub ack_due: bool,
    /// This node dialed it (else the peer did).
    pub dialed_by_us: bool,
    /// A `Fetch` of the peer's is being answered by the driver ([`Event::Fetch`]).
    pub fetching: bool,
    /// `Fetch`es that arrived meanwhile, answered one after the other (at most
    /// [`detente_proto::FETCHES_QUEUED_MAX`]).
    pub fetches: std::collections::VecDeque<Fetch>,
    /// Our `Fetch` checking the peer's claim to hold more of our stream than we wrote,
    /// waiting for its answer.
    pub claim: Option<ClaimCheck>,
}

/// A peer's `Fetch`, as asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fetch {
    pub sender: [u8; 32],
    pub after: u64,
    pub limit: u16,
}

impl Core {
    /// Our wall clock as the frames carry it (milliseconds since the Unix epoch; a clock
    /// before 1970 reads as 0, "not said").
    fn wall(&self) -> u64 {
        self.wall_ms.max(0) as u64
    }

    pub(crate) fn session_peer(&self, session: SessionId) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.session.as_ref().is_some_and(|s| s.id == session))
    }

    /// Both members dial. When a session opens while another is up (the two dials crossed,
    /// or one side redialed), both sides keep the same one by one rule: a redial by the
    /// same side replaces its old session; otherwise the session dialed by the member with
    /// the smaller key wins and the other is closed.
    pub(crate) fn on_session_opened(&mut self, peer: &str, session: SessionId, dialed_by_us: bool) {
        let Some(index) = self.peer_index(peer) else {
            self.event(Event::CloseSession { session });
            return;
        };
        let now = self.now;
        let wall = self.wall();
        let p = &mut self.peers[index];
        if dialed_by_us {
            p.dialing = None;
        }
        if let Some(old) = p.session.as_ref() {
            // `dials`: we have the smaller key, so the sessions we dial win.
            let keep_old = old.dialed_by_us != dialed_by_us && dialed_by_us != p.dials;
            if keep_old {
                self.events.push_back(Event::CloseSession { session });
                return;
            }
        }
        if let Some(old) = p.session.take() {
            self.events
                .push_back(Event::CloseSession { session: old.id });
        }
        p.dialing = None;
        p.link.on_connected(now);
        p.session = Some(Session {
            id: session,
            sched: None,
            sent: 0,
            acked: 0,
            received: 0,
            ack_due: false,
            dialed_by_us,
            fetching: false,
            fetches: std::collections::VecDeque::new(),
            claim: None,
        });
        let hello = Frame::Hello {
            version: LINK_VERSION,
            hwm: p.inb_durable.hwm(),
            wall_ms: wall,
        };
        self.frame(session, hello);
        let terms = self.terms().encode();
        self.frame(session, Frame::Terms(terms));
    }

    pub(crate) fn on_session_closed(&mut self, session: SessionId) {
        let Some(index) = self.session_peer(session) else {
            return;
        };
        let jitter = self.jitter();
        let now = self.now;
        let p = &mut self.peers[index];
        p.session = None;
        p.link.on_disconnected(now, jitter);
    }

    pub(crate) fn on_dial_failed(&mut self, peer: &str) {
        let Some(index) = self.peer_index(peer) else {
            return;
        };
        let jitter = self.jitter();
        let now = self.now;
        let p = &mut self.peers[index];
        if p.dialing.is_some() && p.session.is_none() {
            p.dialing = None;
            p.link.on_dial_failed(now, jitter);
        }
    }

    /// Close a session on our side (the driver closes the connection).
    pub(crate) fn close(&mut self, index: usize) {
        if let Some(s) = self.peers[index].session.take() {
            self.event(Event::CloseSession { session: s.id });
            let jitter = self.jitter();
            let now = self.now;
            self.peers[index].link.on_disconnected(now, jitter);
        }
    }

    /// Heartbeats, silence and redials of peer `index`.
    pub(crate) fn tick_link(&mut self, index: usize) {
        let now = self.now;
        let p = &mut self.peers[index];
        if let Some(session) = p.session.as_ref().map(|s| s.id) {
            if p.link.should_close(now) {
                self.close(index);
                return;
            }
            if let Some(nonce) = p.link.poll_ping(now) {
                let wall_ms = self.wall();
                self.frame(session, Frame::Ping { nonce, wall_ms });
            }
            return;
        }
        // Both members dial (a crossing is settled in `on_session_opened`), so neither waits
        // for the other's backoff after an outage.
        if p.dialing.is_some_and(|give_up| now >= give_up) {
            // The driver never answered the dial (the connection died before it was
            // reported open): count it as failed rather than wait forever.
            let name = p.name.clone();
            return self.on_dial_failed(&name);
        }
        if p.dialing.is_some() {
            return;
        }
        if p.link.next_attempt().is_some_and(|at| at <= now) {
            p.dialing = Some(now + DIAL_TIMEOUT);
            let event = Event::Dial {
                peer: p.name.clone(),
                address: p.link.address_index(),
            };
            self.event(event);
        }
    }

    /// One frame read from `session`.
    pub(crate) fn on_frame(&mut self, session: SessionId, bytes: &[u8]) {
        let Some(index) = self.session_peer(session) else {
            return;
        };
        let now = self.now;
        self.peers[index].link.on_heard(now);
        self.on_decoded(index, session, Frame::decode(bytes));
    }

    /// Frames read from `session` together: each decided as [`Self::on_frame`] would, in
    /// order, but the signatures of the envelopes among them are checked in one batch
    /// first (a batch accepts and refuses exactly what one-by-one checks do; the
    /// coefficients come from the core's generator, which the peer cannot predict).
    pub(crate) fn on_frames(&mut self, session: SessionId, frames: Vec<Vec<u8>>) {
        let Some(index) = self.session_peer(session) else {
            return;
        };
        let now = self.now;
        self.peers[index].link.on_heard(now);
        let decoded: Vec<Result<Frame, FrameError>> =
            frames.iter().map(|bytes| Frame::decode(bytes)).collect();
        let payloads: Vec<&[u8]> = decoded
            .iter()
            .filter_map(|frame| match frame {
                Ok(Frame::Envelope(bytes)) => Some(bytes.as_slice()),
                _ => None,
            })
            .collect();
        let key = self.peers[index].key;
        let verified = VerifiedEnvelope::decode_batch_with_rng(&payloads, &key, &mut self.rng);
        let mut verified = verified.into_iter();
        for frame in decoded {
            // A frame before this one may have ended the session (a protocol error): what
            // followed it on that session is not read.
            if self.session_peer(session) != Some(index) {
                return;
            }
            match frame {
                Ok(Frame::Envelope(_)) => {
                    let Some(v) = verified.next() else { return };
                    self.on_envelope(index, session, v);
                }
                frame => self.on_decoded(index, session, frame),
            }
        }
    }

    fn on_decoded(&mut self, index: usize, session: SessionId, frame: Result<Frame, FrameError>) {
        let now = self.now;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return self.protocol_error(index, session, &e.to_string()),
        };
        match frame {
            Frame::Hello {
                version,
                hwm,
                wall_ms,
            } => self.on_hello(index, session, version, hwm, wall_ms),
            Frame::Envelope(bytes) => {
                let key = self.peers[index].key;
                let verified = VerifiedEnvelope::decode(&bytes, Some(&key));
                self.on_envelope(index, session, verified);
            }
            Frame::Ack { hwm, received } => self.on_ack(index, hwm, received),
            Frame::Ping { nonce, .. } => {
                let wall_ms = self.wall();
                self.frame(session, Frame::Pong { nonce, wall_ms })
            }
            Frame::Pong { nonce, wall_ms } => {
                let ours = self.wall();
                self.peers[index].link.on_pong(now, nonce, wall_ms, ours)
            }
            Frame::Refuse { seq, code, reason } => self.on_refuse(index, seq, code, &reason),
            Frame::Checkpoint(bytes) => self.on_peer_checkpoint(index, &bytes),
            Frame::Terms(bytes) => self.on_terms(index, &bytes),
            Frame::Fetch {
                sender,
                after,
                limit,
            } => self.on_fetch(
                index,
                session,
                Fetch {
                    sender,
                    after,
                    limit,
                },
            ),
            Frame::Fetched(bytes) => self.on_fetched(index, session, Answer::Fetched(&bytes)),
            Frame::FetchEnd { sender, .. } => {
                self.on_fetched(index, session, Answer::End { sender })
            }
        }
    }

    /// The peer asks for the appended envelopes of one stream of this channel (its own or
    /// ours: what a node restored from an older backup gets back). Answered from the store
    /// by the driver ([`Event::Fetch`]), one `Fetch` at a time, only as far as what is
    /// durable here; a stream of any other sender is refused.
    fn on_fetch(&mut self, index: usize, session: SessionId, fetch: Fetch) {
        let p = &mut self.peers[index];
        let Some(s) = p.session.as_mut() else { return };
        if s.fetching {
            if s.fetches.len() >= FETCHES_QUEUED_MAX {
                let reason = format!(
                    "fetch: {FETCHES_QUEUED_MAX} are already waiting; wait for each FetchEnd"
                );
                return self.frame(
                    session,
                    Frame::Refuse {
                        seq: 0,
                        code: RefuseCode::Busy,
                        reason,
                    },
                );
            }
            s.fetches.push_back(fetch);
            return;
        }
        let head = if fetch.sender == *self.me.as_bytes() {
            p.out_durable
        } else if fetch.sender == *p.key.as_bytes() {
            p.inb_durable.hwm()
        } else {
            let peer = p.name.clone();
            self.event(Event::Refused {
                peer,
                what: "fetch: a stream that is not of this channel".into(),
            });
            return self.frame(
                session,
                Frame::Refuse {
                    seq: 0,
                    code: RefuseCode::Invalid,
                    reason: "fetch: the sender is not a member of this channel".into(),
                },
            );
        };
        let limit = u64::from(fetch.limit.min(detente_proto::FETCH_ENVELOPES_MAX));
        let through = fetch.after.saturating_add(limit).min(head);
        if through <= fetch.after {
            // Nothing to read: the answer is its end alone.
            return self.frame(
                session,
                Frame::FetchEnd {
                    sender: fetch.sender,
                    upto: fetch.after,
                    head,
                },
            );
        }
        s.fetching = true;
        let channel = p.channel.0;
        self.event(Event::Fetch {
            session,
            channel,
            sender: fetch.sender,
            after: fetch.after,
            through,
            head,
        });
    }

    /// The driver sent its answer to the session's `Fetch` ([`crate::Input::FetchAnswered`]): take
    /// the next one waiting.
    pub(crate) fn on_fetch_answered(&mut self, session: SessionId) {
        let Some(index) = self.session_peer(session) else {
            return;
        };
        let Some(s) = self.peers[index].session.as_mut() else {
            return;
        };
        s.fetching = false;
        if let Some(next) = s.fetches.pop_front() {
            self.on_fetch(index, session, next);
        }
    }

    fn protocol_error(&mut self, index: usize, session: SessionId, why: &str) {
        let peer = self.peers[index].name.clone();
        self.event(Event::Refused {
            peer,
            what: format!("protocol: {why}"),
        });
        self.frame(
            session,
            Frame::Refuse {
                seq: 0,
                code: RefuseCode::Protocol,
                reason: why.to_string(),
            },
        );
        self.close(index);
    }

    fn on_hello(
        &mut self,
        index: usize,
        session: SessionId,
        version: u16,
        hwm: u64,
        peer_wall_ms: u64,
    ) {
        if version != LINK_VERSION {
            let why = format!("peer speaks link version {version}, we speak {LINK_VERSION}");
            return self.protocol_error(index, session, &why);
        }
        let wall = self.wall();
        let p = &mut self.peers[index];
        let second = p.session.as_ref().is_some_and(|s| s.sched.is_some());
        if second {
            return self.protocol_error(index, session, "a second Hello in one session");
        }
        p.link.on_hello_clock(peer_wall_ms, wall);
        let ahead = hwm > p.out_durable;
        if let Some(s) = p.session.as_mut() {
            s.sched = Some(Scheduler::new(hwm.min(p.out_durable)));
        }
        // Our newest checkpoint, if the peer has not co-signed it yet: sent again on every
        // session, so one signed just before a crash or a cut is co-signed after it.
        let pending = p
            .checkpoints
            .last()
            .filter(|c| !c.cosigned() && c.signed_by(&self.me))
            .map(|c| Frame::Checkpoint(c.encode()));
        if let Some(frame) = pending {
            self.frame(session, frame);
        }
        if ahead {
            return self.stream_ahead(index, hwm);
        }
        self.prune(index, hwm);
    }

    /// An answer to the `Fetch` that checks the peer's claim ([`Core::stream_ahead`]): the
    /// verdict is an alarm and the reason sending stays stopped.
    fn on_fetched(&mut self, index: usize, session: SessionId, answer: Answer<'_>) {
        let (me, p) = (self.me, &mut self.peers[index]);
        let channel = p.channel;
        let Some(check) = p.session.as_mut().and_then(|s| s.claim.as_mut()) else {
            return self.protocol_error(index, session, detente_proto::claim::UNASKED);
        };
        let verdict = match check.on_answer(answer, &me, channel) {
            Ok(None) => return,
            Ok(Some(verdict)) => verdict,
            Err(why) => return self.protocol_error(index, session, why),
        };
        let claim = check.claim;
        let s = p.session.as_mut().expect("the check is the session's");
        s.claim = None;
        p.claim_judged = true;
        let peer = p.name.clone();
        let detail = verdict.detail(&peer, &claim);
        p.sending_stopped = Some(detail.clone());
        self.event(Event::Alarm { peer, detail });
    }

    fn on_ack(&mut self, index: usize, hwm: u64, received: u64) {
        let p = &mut self.peers[index];
        if let Some(s) = p.session.as_mut() {
            s.acked = s.acked.max(received.min(s.sent));
        }
        if hwm > p.out_durable {
            return self.stream_ahead(index, hwm);
        }
        self.prune(index, hwm);
    }

    /// The peer claims to hold our stream beyond what our store ever wrote: this store is
    /// not the one the channel ran on (moved, restored from an old backup, new), and the
    /// peer holds envelopes of ours we no longer know. Never a prune (the rows at or below
    /// `hwm` were never sent); nothing more is sent to it (new envelopes would reuse its
    /// seqs); one alarm. It lasts until restart, when the operator has put the right
    /// database back.
    ///
    /// To tell a store that is behind from a peer that lies, the peer is asked once for our
    /// envelope `written + 1` ([`detente_proto::claim`]); its answer is a second alarm.
    fn stream_ahead(&mut self, index: usize, hwm: u64) {
        let me = self.me;
        let p = &mut self.peers[index];
        let (peer, written) = (p.name.clone(), p.out_durable);
        let ask = !p.claim_judged && p.session.as_ref().is_some_and(|s| s.claim.is_none());
        if ask {
            // The id of our envelope `written`: the cursor's when nothing newer is staged.
            let prev = if written == 0 {
                Some(detente_proto::MessageId::ZERO)
            } else if p.out.cursor.next_seq == written + 1 {
                Some(p.out.cursor.last_id)
            } else {
                p.out_index
                    .iter()
                    .find(|(_, &(seq, _, _))| seq == written)
                    .map(|(id, _)| *id)
            };
            let claim = Claim { hwm, written, prev };
            let s = p.session.as_mut().expect("checked above");
            s.claim = Some(ClaimCheck::new(claim));
            let session = s.id;
            self.frame(session, claim.fetch(&me));
        }
        let p = &mut self.peers[index];
        if p.sending_stopped.is_some() {
            return;
        }
        let detail = format!(
            "peer {peer} holds our stream up to seq {hwm} but our store has only {written}: \
             this store is not the one the channel ran on (moved, restored from an old backup, \
             or new), or the peer's claim is false; it was asked to show our envelope seq {}. \
             Nothing more is sent to {peer}; put the right database back and restart",
            written + 1
        );
        p.sending_stopped = Some(detail.clone());
        self.event(Event::Alarm { peer, detail });
    }

    /// The peer holds our stream up to `hwm`: drop the outbox up to it.
    fn prune(&mut self, index: usize, hwm: u64) {
        let p = &mut self.peers[index];
        // A peer that claimed more than we hold is not believed about the rest either: keep
        // every row (the safe side) until the operator has restarted on the right store.
        if hwm <= p.confirmed || p.sending_stopped.is_some() {
            return;
        }
        p.confirmed = hwm;
        p.outbox = p.outbox.split_off(&(hwm + 1));
        p.out.forget_through(hwm);
        self.staging.batch.prune.push((p.name.clone(), hwm));
    }

    fn on_refuse(&mut self, index: usize, seq: u64, code: RefuseCode, reason: &str) {
        let peer = self.peers[index].name.clone();
        self.event(Event::Refused {
            peer,
            what: format!("the peer refused seq {seq} ({code:?}): {reason}"),
        });
        if code == RefuseCode::Busy {
            // It stored nothing: resend from its Hello on a new session.
            self.close(index);
        }
    }

    fn on_terms(&mut self, index: usize, bytes: &[u8]) {
        let terms = match detente_proto::Terms::decode(bytes) {
            Ok(t) if t.member.key == self.peers[index].key => t,
            Ok(_) => {
                let peer = self.peers[index].name.clone();
                let what = "terms name another party".to_string();
                return self.event(Event::Refused { peer, what });
            }
            Err(e) => {
                let peer = self.peers[index].name.clone();
                let what = format!("terms: {e}");
                return self.event(Event::Refused { peer, what });
            }
        };
        self.peers[index].peer_terms = Some(terms);
        self.agree_charter(index);
    }

    /// The next envelope frame for peer `index`, FLASH first, from the durable outbox.
    pub(crate) fn pump(&mut self, index: usize) -> Option<(SessionId, Frame)> {
        let p = &mut self.peers[index];
        if p.sending_stopped.is_some() {
            return None;
        }
        let s = p.session.as_mut()?;
        let sched = s.sched.as_mut()?;
        while let Some(refill) = sched.poll_refill() {
            let from = (refill.after + 1).min(p.out_durable + 1);
            let rows: Vec<Outgoing> = p
                .outbox
                .range(from..p.out_durable + 1)
                .filter(|(_, e)| e.precedence == refill.precedence)
                .take(refill.limit)
                .filter_map(|(&seq, e)| {
                    Some(Outgoing {
                        seq,
                        precedence: e.precedence,
                        bytes: p.out.bytes_at(seq)?.to_vec(),
                    })
                })
                .collect();
            sched.on_refill(refill, rows);
        }
        let window_full = s.sent - s.acked >= SESSION_IN_FLIGHT_MAX;
        if window_full && sched.next_precedence() != Some(Precedence::Flash) {
            return None;
        }
        loop {
            let next = sched.next()?;
            // Confirmed meanwhile (DELIVERED or an Ack): skip it.
            if p.outbox.contains_key(&next.seq) {
                s.sent += 1;
                return Some((s.id, Frame::Envelope(next.bytes)));
            }
        }
    }
}
