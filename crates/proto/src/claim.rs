//! Checking a peer's claim to hold more of our stream than our store ever wrote.
//!
//! A peer's `Hello` or `Ack` that says it holds our stream up to `hwm`, beyond the `written`
//! envelopes our store holds, means one of two things: our store is behind the channel
//! (restored from an old backup, copied before the last sends), or the peer lies. Either way
//! nothing more is sent to it (a new envelope would reuse a seq it holds) and nothing is
//! pruned. To tell the two apart, this side asks for the one envelope that decides it:
//! `Fetch { sender: us, after: written, limit: 1 }`. Only our own key can have signed an
//! envelope of our stream, so if the peer shows our envelope `written + 1`, signed by us, of
//! this channel, chained to our envelope `written`, our store is behind; anything else (no
//! envelope, a forgery, another channel, a broken chain) proves the claim false.
//!
//! No I/O: both engines feed the answer frames in and act on the [`Verdict`].

use crate::envelope::{ChannelId, MessageId, VerifiedEnvelope};
use crate::frame::Frame;
use crate::identity::PartyKey;

/// What the peer claimed, and what our store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The peer says it holds our stream up to here.
    pub hwm: u64,
    /// Our store holds our stream up to here (`< hwm`).
    pub written: u64,
    /// The id of our envelope `written` (zeros when `written` is 0), if the store knows it:
    /// the `prev` our envelope `written + 1` must carry.
    pub prev: Option<MessageId>,
}

impl Claim {
    /// The frame that asks the peer for the deciding envelope.
    pub fn fetch(&self, me: &PartyKey) -> Frame {
        Frame::Fetch {
            sender: *me.as_bytes(),
            after: self.written,
            limit: 1,
        }
    }
}

/// What the peer's answer proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The peer showed our envelope `seq`, signed by us: our store is behind the channel.
    Behind { seq: u64 },
    /// The peer could not back its claim: `why` says how.
    False { why: String },
}

impl Verdict {
    /// The alarm's text for operators.
    pub fn detail(&self, peer: &str, claim: &Claim) -> String {
        let (hwm, written) = (claim.hwm, claim.written);
        match self {
            Verdict::Behind { seq } => format!(
                "peer {peer} showed our envelope seq {seq}, signed with our key: this store is \
                 behind the channel (it holds our stream only up to {written}; the peer holds \
                 it up to {hwm}), as after a restore from an old backup. Nothing more is sent \
                 to {peer}, so that no seq is used twice; put the newest database back and \
                 restart"
            ),
            Verdict::False { why } => format!(
                "peer {peer} claims to hold our stream up to seq {hwm}, beyond the {written} \
                 our store holds, but asked for our envelope seq {}, it {why}: its claim is \
                 false and this store is not behind. Nothing more is sent to {peer} until \
                 restart; keep this store and ask the other party what its node holds",
                written + 1
            ),
        }
    }
}

/// One answer frame to a claim's `Fetch`.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Fetched(&'a [u8]),
    End { sender: [u8; 32] },
}

/// A `Fetch` sent to check a claim, waiting for its answer (`Fetched` at most once, then
/// `FetchEnd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCheck {
    pub claim: Claim,
    /// What the `Fetched` frame showed, if one came.
    shown: Option<Verdict>,
}

impl ClaimCheck {
    pub fn new(claim: Claim) -> ClaimCheck {
        ClaimCheck { claim, shown: None }
    }

    /// Take one answer frame. `Ok(Some(verdict))` when the answer is complete, `Ok(None)`
    /// while its `FetchEnd` is still to come, `Err` when the peer broke the protocol (more
    /// than the one envelope asked for, or an end for another stream).
    pub fn on_answer(
        &mut self,
        answer: Answer<'_>,
        me: &PartyKey,
        channel: ChannelId,
    ) -> Result<Option<Verdict>, &'static str> {
        match answer {
            Answer::Fetched(bytes) => {
                if self.shown.is_some() {
                    return Err("a second envelope for a Fetch of one");
                }
                self.shown = Some(self.judge(bytes, me, channel));
                Ok(None)
            }
            Answer::End { sender } => {
                if sender != *me.as_bytes() {
                    return Err("a FetchEnd for a stream this side did not ask for");
                }
                Ok(Some(self.shown.take().unwrap_or_else(|| Verdict::False {
                    why: "showed none".into(),
                })))
            }
        }
    }

    fn judge(&self, bytes: &[u8], me: &PartyKey, channel: ChannelId) -> Verdict {
        let seq = self.claim.written + 1;
        let envelope = match VerifiedEnvelope::decode(bytes, Some(me)) {
            Ok(v) => v.envelope().clone(),
            Err(e) => {
                return Verdict::False {
                    why: format!("showed an envelope that is not ours ({e})"),
                }
            }
        };
        let why = if envelope.channel != channel {
            "showed our envelope of another channel".to_string()
        } else if envelope.seq != seq {
            format!("showed our envelope seq {} instead", envelope.seq)
        } else if self.claim.prev.is_some_and(|prev| prev != envelope.prev) {
            format!(
                "showed an envelope seq {seq} not chained to our seq {}",
                seq - 1
            )
        } else {
            return Verdict::Behind { seq };
        };
        Verdict::False { why }
    }
}

/// Why an answer frame with no claim check waiting ends the session.
pub const UNASKED: &str = "an answer to a Fetch this side never sent";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Body, Envelope, Precedence, TextBody};
    use crate::identity::PartySecret;

    fn ours(secret: &PartySecret, channel: ChannelId, seq: u64, prev: MessageId) -> Vec<u8> {
        let envelope = Envelope {
            channel,
            sender: secret.public(),
            seq,
            prev,
            created_at_ms: 1,
            precedence: Precedence::Routine,
            topic: "t".into(),
            author: "a".into(),
            in_reply_to: None,
            body: Body::Text(TextBody {
                language: "en".into(),
                text: "x".into(),
                translations: Vec::new(),
            }),
        };
        VerifiedEnvelope::sign(envelope, secret)
            .unwrap()
            .bytes()
            .to_vec()
    }

    #[test]
    fn only_our_next_envelope_chained_to_our_last_shows_the_store_is_behind() {
        let me = PartySecret::from_seed([1; 32]);
        let other = PartySecret::from_seed([2; 32]);
        let channel = ChannelId::for_pair(&me.public(), &other.public());
        let prev = MessageId([7; 32]);
        let claim = Claim {
            hwm: 9,
            written: 2,
            prev: Some(prev),
        };
        let end = Answer::End {
            sender: *me.public().as_bytes(),
        };
        let judge = |bytes: &[u8]| {
            let mut check = ClaimCheck::new(claim);
            assert_eq!(
                check.on_answer(Answer::Fetched(bytes), &me.public(), channel),
                Ok(None)
            );
            check
                .on_answer(end, &me.public(), channel)
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            judge(&ours(&me, channel, 3, prev)),
            Verdict::Behind { seq: 3 }
        );
        for (bytes, why) in [
            (ours(&other, channel, 3, prev), "not ours"),
            (ours(&me, ChannelId([0; 32]), 3, prev), "another channel"),
            (ours(&me, channel, 4, prev), "seq 4 instead"),
            (ours(&me, channel, 3, MessageId([8; 32])), "not chained"),
        ] {
            match judge(&bytes) {
                Verdict::False { why: w } => assert!(w.contains(why), "{w}"),
                v => panic!("{v:?} for {why}"),
            }
        }
        // No envelope at all: false.
        let mut check = ClaimCheck::new(claim);
        let verdict = check.on_answer(end, &me.public(), channel).unwrap();
        assert!(matches!(verdict, Some(Verdict::False { .. })));
        // Two envelopes for a Fetch of one, or an end of another stream: protocol errors.
        let mut check = ClaimCheck::new(claim);
        let bytes = ours(&me, channel, 3, prev);
        check
            .on_answer(Answer::Fetched(&bytes), &me.public(), channel)
            .unwrap();
        assert!(check
            .on_answer(Answer::Fetched(&bytes), &me.public(), channel)
            .is_err());
        let mut check = ClaimCheck::new(claim);
        let theirs = Answer::End {
            sender: *other.public().as_bytes(),
        };
        assert!(check.on_answer(theirs, &me.public(), channel).is_err());
        let text = Verdict::Behind { seq: 3 }.detail("p", &claim);
        assert!(text.contains("this store is behind"), "{text}");
    }
}
