//! Checkpoints: proposing one, co-signing the peer's, the witness rule (never sign a
//! smaller tree of a stream than before, nor a root our record contradicts), and evidence
//! when the peer signed roots our record contradicts.

use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint, StreamHead};
use detente_proto::merkle::Hash;
use detente_proto::Frame;
use detente_store_types::{CheckpointRow, EvidenceRow, WitnessRow, EVIDENCE_CHECKPOINTS};

use crate::{bugs, Answer, CommandError, Core, Event, PlantedBug};

/// Signed checkpoints kept in memory per channel (the newest; older ones are in the store).
pub const CHECKPOINTS_KEPT_MAX: usize = 64;

impl Core {
    pub(crate) fn command_checkpoint(&mut self, peer: &str) -> Result<Answer, CommandError> {
        let index = self
            .peer_index(peer)
            .ok_or_else(|| CommandError::UnknownPeer(peer.to_string()))?;
        let signed = self.propose(index)?;
        Ok(Answer::Checkpoint {
            body_hash: body_hash(signed.body()),
        })
    }

    /// The member with the smaller key proposes when something new is covered and the
    /// link is up, so proposals never cross.
    pub(crate) fn auto_checkpoint(&mut self, index: usize) {
        let p = &self.peers[index];
        if p.unsigned == 0
            || p.damaged.is_some()
            || p.session.is_none()
            || self.me.as_bytes() > p.key.as_bytes()
        {
            return;
        }
        let _ = self.propose(index);
    }

    /// Our proposal: the peer's stream as far as we hold it, ours as far as the peer has
    /// confirmed holding it (or as far as we signed before), so the peer can co-sign it.
    fn current(&self, index: usize) -> Result<Checkpoint, CommandError> {
        let p = &self.peers[index];
        let signed = p.witness.get(self.me.as_bytes()).map_or(0, |w| w.0);
        let mut size = p.confirmed.max(signed).min(p.out_durable);
        if bugs::is(self.bug, PlantedBug::SmallerCheckpoint) {
            size = p.confirmed.min(p.out_durable).saturating_sub(1);
        }
        let heads = vec![
            StreamHead {
                key: self.me,
                size,
                root: p.out.root_at(size).expect("size within our stream"),
            },
            StreamHead {
                key: p.key,
                size: p.inb.size(),
                root: p.inb.root_at(p.inb.size()).expect("whole stream"),
            },
        ];
        let time = u64::try_from(self.wall_ms).unwrap_or(0);
        Checkpoint::new(p.channel, time, heads).map_err(|e| CommandError::Invalid(e.to_string()))
    }

    fn propose(&mut self, index: usize) -> Result<SignedCheckpoint, CommandError> {
        let checkpoint = self.current(index)?;
        let signed = SignedCheckpoint::sign(checkpoint, &self.secret)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        self.store_signed(index, &signed)?;
        self.peers[index].unsigned = 0;
        if let Some(session) = self.peers[index].session.as_ref().map(|s| s.id) {
            self.release_frame(session, Frame::Checkpoint(signed.encode()));
        }
        Ok(signed)
    }

    /// The witness rule for a checkpoint we are about to sign: for every stream, no
    /// smaller tree than we signed before, the same root at the same size, and a root our
    /// own record has. Then stage it with the new witness state.
    fn store_signed(
        &mut self,
        index: usize,
        signed: &SignedCheckpoint,
    ) -> Result<(), CommandError> {
        let skip = bugs::is(self.bug, PlantedBug::SmallerCheckpoint);
        let p = &self.peers[index];
        if let Some(why) = &p.damaged {
            return Err(CommandError::Invalid(format!(
                "no checkpoint is signed over a damaged record: {why}; restore the \
                 database from a backup"
            )));
        }
        for head in &signed.checkpoint().members {
            let stream = if head.key == self.me { &p.out } else { &p.inb };
            if stream.root_at(head.size) != Some(head.root) {
                return Err(CommandError::Invalid(format!(
                    "witness rule: our record of stream {} has no root {} at size {}",
                    head.key.fingerprint(),
                    hex(&head.root),
                    head.size
                )));
            }
            if let Some(&(size, root)) = p.witness.get(head.key.as_bytes()) {
                if !skip && (head.size < size || (head.size == size && head.root != root)) {
                    return Err(CommandError::Invalid(format!(
                        "witness rule: we signed {size} envelopes of stream {} before",
                        head.key.fingerprint()
                    )));
                }
            }
        }
        let channel = p.channel;
        let p = &mut self.peers[index];
        for head in &signed.checkpoint().members {
            let grows = p
                .witness
                .get(head.key.as_bytes())
                .is_none_or(|&(size, _)| head.size > size);
            if grows {
                p.witness
                    .insert(*head.key.as_bytes(), (head.size, head.root));
                self.staging.batch.witness.push(WitnessRow {
                    channel: channel.0,
                    sender: *head.key.as_bytes(),
                    size: head.size,
                    root: head.root,
                });
            }
        }
        self.stage_checkpoint(index, signed);
        Ok(())
    }

    fn stage_checkpoint(&mut self, index: usize, signed: &SignedCheckpoint) {
        let row = checkpoint_row(signed, self.wall_ms);
        self.staging.batch.checkpoints.push(row);
        let kept = &mut self.peers[index].checkpoints;
        match kept.iter_mut().find(|c| c.body() == signed.body()) {
            Some(c) => {
                c.merge(signed);
            }
            None => kept.push(signed.clone()),
        }
        if kept.len() > CHECKPOINTS_KEPT_MAX {
            kept.remove(0);
        }
    }

    /// A checkpoint frame from the peer.
    pub(crate) fn on_peer_checkpoint(&mut self, index: usize, bytes: &[u8]) {
        let peer = self.peers[index].name.clone();
        let refused = |what: String| Event::Refused {
            peer: peer.clone(),
            what,
        };
        let mut signed = match SignedCheckpoint::decode(bytes) {
            Ok(s) => s,
            Err(e) => return self.event(refused(format!("checkpoint: {e}"))),
        };
        let p = &self.peers[index];
        let c = signed.checkpoint().clone();
        let mut members: Vec<[u8; 32]> = c.members.iter().map(|m| *m.key.as_bytes()).collect();
        let mut expected = vec![*self.me.as_bytes(), *p.key.as_bytes()];
        members.sort();
        expected.sort();
        if c.channel != p.channel || members != expected || !signed.signed_by(&p.key) {
            let what = "checkpoint not of this channel or not signed by the peer".into();
            return self.event(refused(what));
        }
        let mut behind = false;
        for head in &c.members {
            let stream = if head.key == self.me { &p.out } else { &p.inb };
            if head.size > stream.size() {
                behind = true;
                continue;
            }
            if stream.root_at(head.size) != Some(head.root) {
                if let Some(why) = p.damaged.clone() {
                    // Our record is what differs, not the peer's signature.
                    let what = format!("checkpoint not co-signed: {why}");
                    return self.event(refused(what));
                }
                return self.checkpoint_evidence(index, &signed, head);
            }
        }
        if behind {
            // We cannot vouch for envelopes not here yet; our own proposal follows later.
            return;
        }
        if signed.signed_by(&self.me) {
            // Our own proposal came back co-signed: keep the fuller signature set.
            return self.stage_checkpoint(index, &signed);
        }
        if signed.add_signature(&self.secret).is_err() {
            return;
        }
        match self.store_signed(index, &signed) {
            Ok(()) => {
                if let Some(session) = self.peers[index].session.as_ref().map(|s| s.id) {
                    self.release_frame(session, Frame::Checkpoint(signed.encode()));
                }
            }
            Err(e) => self.event(refused(e.to_string())),
        }
    }

    /// The peer signed a root our record contradicts: evidence, then the alarm.
    fn checkpoint_evidence(&mut self, index: usize, signed: &SignedCheckpoint, head: &StreamHead) {
        let p = &self.peers[index];
        let detail = format!(
            "the peer signed root {} for {} envelopes of stream {}; our record differs",
            hex(&head.root),
            head.size,
            head.key.fingerprint()
        );
        let first = p
            .checkpoints
            .iter()
            .rev()
            .find(|c| c.signed_by(&p.key))
            .map(SignedCheckpoint::encode)
            .unwrap_or_default();
        self.staging.batch.evidence.push(EvidenceRow {
            id: 0,
            channel: p.channel.0,
            peer: p.name.clone(),
            kind: EVIDENCE_CHECKPOINTS,
            seq: None,
            first,
            second: signed.encode(),
            detail: detail.clone(),
            detected_at_ms: self.wall_ms,
        });
        let peer = p.name.clone();
        self.release_event(Event::Alarm { peer, detail });
    }
}

pub(crate) fn checkpoint_row(signed: &SignedCheckpoint, stored_at_ms: i64) -> CheckpointRow {
    let c = signed.checkpoint();
    CheckpointRow {
        id: 0,
        channel: c.channel.0,
        body_hash: body_hash(signed.body()),
        time_ms: c.time_ms as i64,
        cosigned: signed.cosigned(),
        signed: signed.encode(),
        stored_at_ms,
    }
}

fn body_hash(body: &[u8]) -> [u8; 32] {
    detente_proto::envelope::message_id(body).0
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
