//! Writing a bundle piece by piece, for exports too long to hold in memory.
//!
//! [`BundleWriter`] produces exactly the bytes of [`Bundle::encode`](crate::bundle::Bundle::encode)
//! (the deterministic CBOR of docs/transcript-format.md), but is told each list's length
//! before its items and takes the items one at a time, so a node can stream a channel of
//! any length from its store with memory bounded by one page. It checks the order and the
//! counts it was promised: a writer that would produce something other than a bundle
//! returns an error instead.

use crate::bundle::{BUNDLE_MAGIC, BUNDLE_VERSION};
use crate::envelope::ChannelId;
use crate::identity::PartyKey;

/// A wrong call order or count (a bug in the caller, or a store that changed under it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bundle writer: {0}")]
pub struct WriteOrderError(&'static str);

/// Where the writer is in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Stream heads or envelopes; `streams_left` streams still to start after this one.
    Streams {
        streams_left: usize,
    },
    /// Checkpoints, after every stream.
    Checkpoints,
    Done,
}

/// Appends a bundle's bytes to a buffer the caller drains (see the module documentation).
#[derive(Debug)]
pub struct BundleWriter {
    part: Part,
    /// Items promised for the list being written and not written yet.
    items_left: u64,
    /// Whether a stream is open (its head written).
    in_stream: bool,
}

/// The shortest CBOR head of major type `major` with argument `n`.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

impl BundleWriter {
    /// Starts a bundle: the container head, channel, members and charters, and the head of
    /// the list of `streams` streams (one per member, in the order of `members`).
    pub fn start(
        out: &mut Vec<u8>,
        channel: &ChannelId,
        members: &[PartyKey],
        charters: &[Vec<u8>],
        streams: usize,
    ) -> BundleWriter {
        head(out, 4, 7);
        head(out, 3, BUNDLE_MAGIC.len() as u64);
        out.extend_from_slice(BUNDLE_MAGIC.as_bytes());
        head(out, 0, BUNDLE_VERSION);
        bytes(out, &channel.0);
        head(out, 4, members.len() as u64);
        for m in members {
            bytes(out, m.as_bytes());
        }
        head(out, 4, charters.len() as u64);
        for c in charters {
            bytes(out, c);
        }
        head(out, 4, streams as u64);
        BundleWriter {
            part: Part::Streams {
                streams_left: streams,
            },
            items_left: 0,
            in_stream: false,
        }
    }

    /// Starts the stream of `key`, which will have `envelopes` envelopes.
    pub fn stream(
        &mut self,
        out: &mut Vec<u8>,
        key: &PartyKey,
        envelopes: u64,
    ) -> Result<(), WriteOrderError> {
        let Part::Streams { streams_left } = &mut self.part else {
            return Err(WriteOrderError("a stream after the checkpoints"));
        };
        if self.items_left != 0 {
            return Err(WriteOrderError("a stream before the last one's envelopes"));
        }
        if *streams_left == 0 {
            return Err(WriteOrderError("more streams than announced"));
        }
        *streams_left -= 1;
        self.in_stream = true;
        self.items_left = envelopes;
        head(out, 4, 2);
        bytes(out, key.as_bytes());
        head(out, 4, envelopes);
        Ok(())
    }

    /// One envelope of the open stream, or one checkpoint.
    pub fn item(&mut self, out: &mut Vec<u8>, item: &[u8]) -> Result<(), WriteOrderError> {
        let open = match self.part {
            Part::Streams { .. } => self.in_stream,
            Part::Checkpoints => true,
            Part::Done => false,
        };
        if !open || self.items_left == 0 {
            return Err(WriteOrderError("more items than announced"));
        }
        self.items_left -= 1;
        bytes(out, item);
        if self.items_left == 0 && self.part == Part::Checkpoints {
            self.part = Part::Done;
        }
        Ok(())
    }

    /// Starts the list of `checkpoints` checkpoints, after every stream.
    pub fn checkpoints(
        &mut self,
        out: &mut Vec<u8>,
        checkpoints: u64,
    ) -> Result<(), WriteOrderError> {
        match self.part {
            Part::Streams { streams_left: 0 } if self.items_left == 0 => {}
            _ => {
                return Err(WriteOrderError(
                    "checkpoints before every stream is written",
                ))
            }
        }
        head(out, 4, checkpoints);
        self.items_left = checkpoints;
        self.part = if checkpoints == 0 {
            Part::Done
        } else {
            Part::Checkpoints
        };
        Ok(())
    }

    /// Whether everything announced has been written: the bytes are a whole bundle.
    pub fn is_done(&self) -> bool {
        self.part == Part::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Bundle;

    fn key(n: u8) -> PartyKey {
        crate::identity::PartySecret::from_seed([n; 32]).public()
    }

    fn written(b: &Bundle) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = BundleWriter::start(&mut out, &b.channel, &b.members, &b.charters, 2);
        for (k, list) in &b.streams {
            w.stream(&mut out, k, list.len() as u64).unwrap();
            for e in list {
                w.item(&mut out, e).unwrap();
            }
        }
        w.checkpoints(&mut out, b.checkpoints.len() as u64).unwrap();
        for c in &b.checkpoints {
            w.item(&mut out, c).unwrap();
        }
        assert!(w.is_done());
        out
    }

    /// Every head width (counts and lengths across 23/24, 255/256, 65535/65536) gives the
    /// same bytes as the `Value` encoder behind `Bundle::encode`.
    #[test]
    fn the_same_bytes_as_the_whole_bundle_encoder() {
        let members = vec![key(1), key(2)];
        for (count, len) in [
            (0, 0),
            (23, 23),
            (24, 24),
            (255, 255),
            (256, 256),
            (3, 65_536),
        ] {
            let list: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; len]).collect();
            let b = Bundle {
                channel: ChannelId::for_pair(&members[0], &members[1]),
                members: members.clone(),
                charters: vec![vec![7; len]],
                streams: vec![(members[0], list.clone()), (members[1], Vec::new())],
                checkpoints: list,
            };
            assert_eq!(written(&b), b.encode(), "{count} items of {len} bytes");
        }
    }

    #[test]
    fn a_wrong_order_or_count_is_refused() {
        let members = vec![key(1), key(2)];
        let channel = ChannelId::for_pair(&members[0], &members[1]);
        let mut out = Vec::new();
        let mut w = BundleWriter::start(&mut out, &channel, &members, &[], 2);
        assert!(w.item(&mut out, b"x").is_err(), "an item before a stream");
        assert!(
            w.checkpoints(&mut out, 0).is_err(),
            "checkpoints before the streams"
        );
        w.stream(&mut out, &members[0], 1).unwrap();
        assert!(
            w.stream(&mut out, &members[1], 0).is_err(),
            "a stream left short"
        );
        w.item(&mut out, b"x").unwrap();
        assert!(
            w.item(&mut out, b"y").is_err(),
            "one envelope more than announced"
        );
        w.stream(&mut out, &members[1], 0).unwrap();
        assert!(
            w.stream(&mut out, &members[1], 0).is_err(),
            "a third stream"
        );
        w.checkpoints(&mut out, 1).unwrap();
        assert!(!w.is_done());
        w.item(&mut out, b"c").unwrap();
        assert!(w.is_done());
        assert!(w.item(&mut out, b"d").is_err(), "after the end");
        assert!(Bundle::decode(&out).is_ok());
    }
}
