//! Export bundles and their offline verifier, and self-contained inclusion proofs.
//!
//! A bundle is one deterministic CBOR array (see docs/transcript-format.md):
//!
//! ```text
//! ["detente-bundle", 1, channel: bstr32, [member key: bstr32, …],
//!  [charter: bstr, …],
//!  [[key: bstr32, [envelope: bstr, …]], …],      ; one per member, seq 1.. in order
//!  [signed checkpoint: bstr, …]]                  ; oldest first
//! ```
//!
//! [`verify`] checks everything a bundle claims, with no node and no network, and returns
//! every problem found, in bundle order, each naming the item (stream and seq, or
//! checkpoint number) and what is wrong.

use std::collections::HashMap;

use coset::cbor::Value;
use rand_core::{CryptoRng, RngCore};

use crate::cbor::Reader;
use crate::checkpoint::{SignedCheckpoint, MEMBERS_MAX};
use crate::envelope::{Body, ChannelId, MessageId, ReceiptTarget, VerifiedEnvelope};
use crate::identity::PartyKey;
use crate::merkle::{self, Hash, MemoryTree};

/// The first item of every bundle.
pub const BUNDLE_MAGIC: &str = "detente-bundle";
/// Bundle format version.
pub const BUNDLE_VERSION: u64 = 1;
/// Largest bundle file, in bytes (4 GiB).
pub const BUNDLE_BYTES_MAX: u64 = 4 << 30;
/// Envelopes in one stream of a bundle at most.
pub const STREAM_ENVELOPES_MAX: usize = 1 << 24;
/// Checkpoints in one bundle at most.
pub const CHECKPOINTS_MAX: usize = 1 << 20;
/// Charters in one bundle at most.
pub const CHARTERS_MAX: usize = 1024;
/// Problems reported at most (the count of further ones is still reported).
pub const PROBLEMS_MAX: usize = 1000;

/// What a bundle that decodes but is not in deterministic CBOR is told.
const NOT_CANONICAL: &str = "not canonical: the bytes are not the deterministic CBOR encoding \
     of the bundle (a trailing byte, an indefinite length or a head that is not the shortest)";

/// The content of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub channel: ChannelId,
    pub members: Vec<PartyKey>,
    /// Charter(s) of the channel as signed by the members, oldest first.
    pub charters: Vec<Vec<u8>>,
    /// Per member, in the order of `members`: every envelope of its stream, `seq` 1 up.
    pub streams: Vec<(PartyKey, Vec<Vec<u8>>)>,
    /// Encoded [`SignedCheckpoint`]s, oldest first.
    pub checkpoints: Vec<Vec<u8>>,
}

fn bytes_list(list: &[Vec<u8>]) -> Value {
    Value::Array(list.iter().map(|b| Value::Bytes(b.clone())).collect())
}

impl Bundle {
    pub fn encode(&self) -> Vec<u8> {
        let value = Value::Array(vec![
            Value::Text(BUNDLE_MAGIC.into()),
            Value::Integer(BUNDLE_VERSION.into()),
            Value::Bytes(self.channel.0.to_vec()),
            Value::Array(
                self.members
                    .iter()
                    .map(|k| Value::Bytes(k.as_bytes().to_vec()))
                    .collect(),
            ),
            bytes_list(&self.charters),
            Value::Array(
                self.streams
                    .iter()
                    .map(|(k, list)| {
                        Value::Array(vec![Value::Bytes(k.as_bytes().to_vec()), bytes_list(list)])
                    })
                    .collect(),
            ),
            bytes_list(&self.checkpoints),
        ]);
        let mut out = Vec::new();
        coset::cbor::ser::into_writer(&value, &mut out).expect("CBOR into a Vec");
        out
    }

    /// Structural decoding (no signature checked): the container must be well-formed, within
    /// every limit, and exactly its own deterministic encoding (no trailing byte, no
    /// indefinite length, only shortest heads), so that one bundle has one byte form.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, String> {
        let bundle = Self::decode_lenient(bytes)?;
        // Re-encode and compare, as for envelopes and checkpoints: whatever CBOR the decoder
        // tolerated (a trailing byte, an indefinite or over-long head) gives other bytes.
        if bundle.encode() != bytes {
            return Err(NOT_CANONICAL.into());
        }
        Ok(bundle)
    }

    /// The container read as CBOR, without the check that its bytes are canonical.
    fn decode_lenient(bytes: &[u8]) -> Result<Bundle, String> {
        if bytes.len() as u64 > BUNDLE_BYTES_MAX {
            return Err(format!(
                "the file is {} bytes; the limit is {BUNDLE_BYTES_MAX}",
                bytes.len()
            ));
        }
        let value: Value = coset::cbor::de::from_reader(bytes)
            .map_err(|e| format!("not a bundle (truncated or not CBOR): {e}"))?;
        let Value::Array(items) = value else {
            return Err("not a bundle: the top level is not an array".into());
        };
        if items.len() != 7 {
            return Err(format!("not a bundle: {} items, expected 7", items.len()));
        }
        let mut items = items.into_iter();
        let mut next = || items.next().expect("length checked");
        if next() != Value::Text(BUNDLE_MAGIC.into()) {
            return Err("not a bundle: the first item is not \"detente-bundle\"".into());
        }
        match next() {
            Value::Integer(v) if u64::try_from(v) == Ok(BUNDLE_VERSION) => {}
            _ => return Err("bundle version is not 1".into()),
        }
        let channel = ChannelId(hash32(next(), "channel")?);
        let members = list(next(), MEMBERS_MAX, "members")?
            .into_iter()
            .map(|v| key(v, "member"))
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() {
            return Err("the bundle names no members".into());
        }
        let charters = byte_list(next(), CHARTERS_MAX, "charters")?;
        let mut streams = Vec::new();
        for s in list(next(), MEMBERS_MAX, "streams")? {
            let mut pair = list(s, 2, "stream")?.into_iter();
            let (Some(k), Some(envs), None) = (pair.next(), pair.next(), pair.next()) else {
                return Err("a stream is not [key, envelopes]".into());
            };
            streams.push((
                key(k, "stream key")?,
                byte_list(envs, STREAM_ENVELOPES_MAX, "stream")?,
            ));
        }
        let checkpoints = byte_list(next(), CHECKPOINTS_MAX, "checkpoints")?;
        Ok(Bundle {
            channel,
            members,
            charters,
            streams,
            checkpoints,
        })
    }
}

fn list(v: Value, max: usize, what: &str) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(items) if items.len() <= max => Ok(items),
        Value::Array(items) => Err(format!("{what}: {} items; the limit is {max}", items.len())),
        _ => Err(format!("{what} is not an array")),
    }
}

fn byte_list(v: Value, max: usize, what: &str) -> Result<Vec<Vec<u8>>, String> {
    list(v, max, what)?
        .into_iter()
        .map(|b| match b {
            Value::Bytes(b) => Ok(b),
            _ => Err(format!("{what}: an item is not a byte string")),
        })
        .collect()
}

fn hash32(v: Value, what: &str) -> Result<[u8; 32], String> {
    match v {
        Value::Bytes(b) => b.try_into().map_err(|_| format!("{what} is not 32 bytes")),
        _ => Err(format!("{what} is not a byte string")),
    }
}

fn key(v: Value, what: &str) -> Result<PartyKey, String> {
    PartyKey::from_bytes(hash32(v, what)?).map_err(|_| format!("{what} is not an Ed25519 key"))
}

/// A bundle as [`verify`] reads it: the items borrowed from the file, not copied.
#[derive(Debug, PartialEq, Eq)]
struct View<'a> {
    channel: ChannelId,
    members: Vec<PartyKey>,
    charters: Vec<&'a [u8]>,
    streams: Vec<(PartyKey, Vec<&'a [u8]>)>,
    checkpoints: Vec<&'a [u8]>,
}

impl<'a> View<'a> {
    fn of(bundle: &'a Bundle) -> Self {
        let slices = |list: &'a [Vec<u8>]| list.iter().map(Vec::as_slice).collect();
        View {
            channel: bundle.channel,
            members: bundle.members.clone(),
            charters: slices(&bundle.charters),
            streams: bundle
                .streams
                .iter()
                .map(|(k, list)| (*k, slices(list)))
                .collect(),
            checkpoints: slices(&bundle.checkpoints),
        }
    }

    /// The common case without copying: a bundle in deterministic CBOR (definite lengths,
    /// shortest heads, no tags, no trailing bytes), with every item of the right type and
    /// within its limit. `None` for anything else; [`Bundle::decode`] then decides, with its
    /// own words for what is wrong.
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() as u64 > BUNDLE_BYTES_MAX {
            return None;
        }
        let mut r = Reader::new(bytes);
        if r.array(7)? != 7 || r.text()? != BUNDLE_MAGIC.as_bytes() || r.uint()? != BUNDLE_VERSION {
            return None;
        }
        let channel = ChannelId(r.bytes()?.try_into().ok()?);
        let members = (0..r.array(MEMBERS_MAX)?)
            .map(|_| r.key())
            .collect::<Option<Vec<_>>>()?;
        if members.is_empty() {
            return None;
        }
        let charters = r.byte_list(CHARTERS_MAX)?;
        let streams = (0..r.array(MEMBERS_MAX)?)
            .map(|_| {
                if r.array(2)? != 2 {
                    return None;
                }
                Some((r.key()?, r.byte_list(STREAM_ENVELOPES_MAX)?))
            })
            .collect::<Option<Vec<_>>>()?;
        let checkpoints = r.byte_list(CHECKPOINTS_MAX)?;
        let view = View {
            channel,
            members,
            charters,
            streams,
            checkpoints,
        };
        // The reader takes any head width, but it has read every byte and each item's
        // content has a fixed length: the file is as long as the canonical encoding exactly
        // when every head is the shortest.
        (r.at_end() && view.canonical_bytes() == bytes.len() as u64).then_some(view)
    }

    /// The length of this view's deterministic encoding.
    fn canonical_bytes(&self) -> u64 {
        let bstr = |len: usize| head_bytes(len) + len as u64;
        let list = |items: &[&[u8]]| {
            head_bytes(items.len()) + items.iter().map(|b| bstr(b.len())).sum::<u64>()
        };
        head_bytes(7)
            + bstr(BUNDLE_MAGIC.len())
            + head_bytes(BUNDLE_VERSION as usize)
            + bstr(32)
            + head_bytes(self.members.len())
            + self.members.len() as u64 * bstr(32)
            + list(&self.charters)
            + head_bytes(self.streams.len())
            + self
                .streams
                .iter()
                .map(|(_, envelopes)| head_bytes(2) + bstr(32) + list(envelopes))
                .sum::<u64>()
            + list(&self.checkpoints)
    }
}

/// Bytes of the shortest CBOR head whose argument is `n` (RFC 8949 §4.2.1).
fn head_bytes(n: usize) -> u64 {
    match n as u64 {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// One thing wrong with a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The stream's member key (`ed25519:<hex>`), when the problem is in a stream.
    pub stream: Option<String>,
    /// The position (`seq`) in that stream.
    pub seq: Option<u64>,
    /// Which item: "bundle", "envelope", "receipt", "checkpoint 3", "charter 1".
    pub item: String,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.stream, self.seq) {
            (Some(s), Some(seq)) => write!(f, "stream {s} seq {seq}: {}: {}", self.item, self.what),
            (Some(s), None) => write!(f, "stream {s}: {}: {}", self.item, self.what),
            _ => write!(f, "{}: {}", self.item, self.what),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Envelopes in the bundle.
    pub messages: u64,
    /// Checkpoints in the bundle.
    pub checkpoints: u64,
    /// Of those, signed by every member.
    pub cosigned: u64,
    /// Stream sizes covered by the last checkpoint signed by every member, by member key.
    pub latest_cosigned: Option<Vec<(String, u64)>>,
    pub problems: Vec<Problem>,
    /// Problems found beyond [`PROBLEMS_MAX`].
    pub problems_dropped: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn push(&mut self, p: Problem) {
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(p);
        } else {
            self.problems_dropped += 1;
        }
    }

    fn bundle(&mut self, what: impl Into<String>) {
        self.push(Problem {
            stream: None,
            seq: None,
            item: "bundle".into(),
            what: what.into(),
        });
    }
}

/// Envelopes in one unit of parallel work: one signature batch.
const VERIFY_CHUNK_ENVELOPES: usize = crate::sig::BATCH_SIGNATURES_MAX;

/// Verifier threads at most.
const VERIFY_THREADS_MAX: usize = 64;

/// What the verifier keeps of one envelope: its leaf hash and id, and, if it verified, the
/// fields the checks after verification look at (not the whole envelope: a bundle can hold
/// millions).
struct Checked {
    leaf: Hash,
    id: MessageId,
    fields: Result<Fields, String>,
}

struct Fields {
    channel: ChannelId,
    seq: u64,
    prev: MessageId,
    receipt: Option<ReceiptTarget>,
}

/// Decode, verify and hash every envelope of every stream on every core: the same per-item
/// results as the node's receive path (batch verification under the one signature rule,
/// [`crate::sig`]), in stream order. Work is handed out in chunks of one signature batch, so
/// the cores stay busy to the end whatever the stream sizes.
fn check_streams<G, F>(streams: &[(PartyKey, Vec<&[u8]>)], rng_for_chunk: &F) -> Vec<Vec<Checked>>
where
    G: RngCore + CryptoRng,
    F: Fn(usize) -> G + Sync,
{
    let units: Vec<(usize, usize)> = streams
        .iter()
        .enumerate()
        .flat_map(|(s, (_, envelopes))| {
            (0..envelopes.len())
                .step_by(VERIFY_CHUNK_ENVELOPES)
                .map(move |start| (s, start))
        })
        .collect();
    let check_unit = |i: usize| -> Vec<Checked> {
        let (s, start) = units[i];
        let (sender, envelopes) = &streams[s];
        let end = (start + VERIFY_CHUNK_ENVELOPES).min(envelopes.len());
        let frames = &envelopes[start..end];
        let results = crate::envelope::verify_frames(frames, sender, &mut rng_for_chunk(i));
        frames
            .iter()
            .zip(results)
            .map(|(bytes, result)| Checked {
                leaf: merkle::leaf_hash(bytes),
                id: crate::envelope::message_id(bytes),
                fields: result
                    .map(|e| Fields {
                        channel: e.channel,
                        seq: e.seq,
                        prev: e.prev,
                        receipt: match e.body {
                            Body::Receipt(r) => Some(r.target),
                            _ => None,
                        },
                    })
                    .map_err(|e| e.to_string()),
            })
            .collect()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, VERIFY_THREADS_MAX)
        .min(units.len().max(1));
    let mut done: Vec<Option<Vec<Checked>>> = Vec::new();
    done.resize_with(units.len(), || None);
    if threads == 1 {
        for (i, slot) in done.iter_mut().enumerate() {
            *slot = Some(check_unit(i));
        }
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let finished: Vec<Vec<(usize, Vec<Checked>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= units.len() {
                                break;
                            }
                            mine.push((i, check_unit(i)));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("verifier thread does not panic"))
                .collect()
        });
        for (i, checked) in finished.into_iter().flatten() {
            done[i] = Some(checked);
        }
    }
    let mut out: Vec<Vec<Checked>> = streams
        .iter()
        .map(|(_, e)| Vec::with_capacity(e.len()))
        .collect();
    for ((s, _), checked) in units.iter().zip(done) {
        out[*s].extend(checked.expect("every unit is checked"));
    }
    out
}

/// Verify a bundle: every envelope's signature, gap-free `seq`, `prev` links, the channel,
/// receipts pointing at messages in the bundle, every checkpoint's signatures, its roots
/// against the streams, and consistency between successive checkpoints. The coefficients of
/// batch signature verification come from the operating system's CSPRNG.
pub fn verify(bytes: &[u8]) -> Report {
    verify_with_rng(bytes, |_| rand_core::OsRng)
}

/// [`verify`] with the generators of the batch coefficients given: `rng_for_chunk(i)` makes
/// the generator for the `i`-th chunk of envelopes (chunks are checked on several threads).
/// Anything but a test should use a CSPRNG, as the bound says.
pub fn verify_with_rng<G, F>(bytes: &[u8], rng_for_chunk: F) -> Report
where
    G: RngCore + CryptoRng,
    F: Fn(usize) -> G + Sync,
{
    let mut report = Report::default();
    let owned: Bundle;
    let bundle = match View::parse(bytes) {
        Some(view) => view,
        None => match Bundle::decode(bytes) {
            Ok(b) => {
                owned = b;
                View::of(&owned)
            }
            Err(e) => {
                report.bundle(e);
                return report;
            }
        },
    };
    let mut sorted: Vec<[u8; 32]> = bundle.members.iter().map(|k| *k.as_bytes()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != bundle.members.len() {
        report.bundle("a member is listed twice");
    }
    if bundle.streams.len() != bundle.members.len()
        || bundle
            .streams
            .iter()
            .zip(&bundle.members)
            .any(|((k, _), m)| k != m)
    {
        report.bundle("the streams are not exactly one per member, in member order");
    }

    // Envelopes: signatures (in parallel), then order, links and the channel.
    let mut trees: HashMap<PartyKey, MemoryTree> = HashMap::new();
    let mut ids: HashMap<MessageId, (PartyKey, u64)> = HashMap::new();
    let mut receipts: Vec<(PartyKey, u64, ReceiptTarget)> = Vec::new();
    for ((sender, _), checked) in bundle
        .streams
        .iter()
        .zip(check_streams(&bundle.streams, &rng_for_chunk))
    {
        let stream = Some(sender.to_text());
        let mut tree = MemoryTree::new();
        let mut prev = MessageId::ZERO;
        for (i, one) in checked.into_iter().enumerate() {
            let position = i as u64 + 1;
            report.messages += 1;
            tree.push(one.leaf);
            let problem = |what: String| Problem {
                stream: stream.clone(),
                seq: Some(position),
                item: "envelope".into(),
                what,
            };
            let e = match one.fields {
                Ok(fields) => fields,
                Err(e) => {
                    report.push(problem(e));
                    // The chain cannot be followed through an envelope that does not verify.
                    prev = one.id;
                    continue;
                }
            };
            if e.channel != bundle.channel {
                report.push(problem("belongs to another channel".into()));
            }
            if e.seq != position {
                report.push(problem(format!(
                    "gap or reordering: expected seq {position}, found seq {}",
                    e.seq
                )));
            }
            if e.prev != prev {
                report.push(problem(
                    "prev does not name the previous envelope of the stream".into(),
                ));
            }
            if let Some(target) = e.receipt {
                receipts.push((*sender, position, target));
            }
            prev = one.id;
            ids.insert(one.id, (*sender, e.seq));
        }
        trees.insert(*sender, tree);
    }

    // Charters: each one is a charter envelope (kind 6) of one of the streams.
    for (i, charter) in bundle.charters.iter().enumerate() {
        let id = crate::envelope::message_id(charter);
        let is_charter = crate::envelope::parse_unverified(charter)
            .is_ok_and(|e| e.body.kind() == crate::envelope::KIND_CHARTER);
        if !ids.contains_key(&id) || !is_charter {
            report.push(Problem {
                stream: None,
                seq: None,
                item: format!("charter {}", i + 1),
                what: "is not a charter envelope of the streams in this bundle".into(),
            });
        }
    }

    // Receipts must point at messages of another member that are in the bundle.
    for (sender, position, target) in receipts {
        let problem = |what: String| Problem {
            stream: Some(sender.to_text()),
            seq: Some(position),
            item: "receipt".into(),
            what,
        };
        match target {
            ReceiptTarget::Message(of) => match ids.get(&of) {
                Some((author, _)) if *author != sender => {}
                Some(_) => report.push(problem(format!("answers its own sender's message {of}"))),
                None => report.push(problem(format!(
                    "names message {of}, which is not in the bundle"
                ))),
            },
            ReceiptTarget::Ranges(ranges) => {
                let others: Vec<u64> = trees
                    .iter()
                    .filter(|(k, _)| **k != sender)
                    .map(|(_, t)| t.size())
                    .collect();
                let longest = others.iter().copied().max().unwrap_or(0);
                if let Some((from, to)) = ranges.iter().find(|(_, to)| *to > longest) {
                    report.push(problem(format!(
                        "confirms seq {from}..={to}, beyond the {longest} envelopes in the bundle"
                    )));
                }
            }
        }
    }

    // Checkpoints.
    let mut previous: Option<(usize, crate::checkpoint::Checkpoint)> = None;
    for (i, bytes) in bundle.checkpoints.iter().enumerate() {
        let n = i + 1;
        report.checkpoints += 1;
        let item = format!("checkpoint {n}");
        let problem = |stream: Option<String>, what: String| Problem {
            stream,
            seq: None,
            item: item.clone(),
            what,
        };
        let signed = match SignedCheckpoint::decode(bytes) {
            Ok(s) => s,
            Err(e) => {
                report.push(problem(None, e.to_string()));
                continue;
            }
        };
        let c = signed.checkpoint().clone();
        if c.channel != bundle.channel {
            report.push(problem(None, "belongs to another channel".into()));
            continue;
        }
        let mut keys: Vec<[u8; 32]> = c.members.iter().map(|m| *m.key.as_bytes()).collect();
        keys.sort_unstable();
        if keys != sorted {
            report.push(problem(
                None,
                "its members are not the bundle's members".into(),
            ));
            continue;
        }
        // Two checkpoints that cannot both be true, whatever the streams say: a stream that
        // shrank, or two roots for one size.
        if let Some((pn, p)) = &previous {
            for (old, new) in p.members.iter().zip(&c.members) {
                let s = Some(old.key.to_text());
                if new.size < old.size {
                    report.push(problem(
                        s,
                        format!(
                            "inconsistent with checkpoint {pn}: the stream shrank from {} to {} envelopes",
                            old.size, new.size
                        ),
                    ));
                } else if new.size == old.size && new.root != old.root {
                    report.push(problem(
                        s,
                        format!(
                            "inconsistent with checkpoint {pn}: two different roots for {} envelopes",
                            new.size
                        ),
                    ));
                }
            }
        }
        // Each root against the bundle's stream.
        let mut roots_match = true;
        for head in &c.members {
            let s = Some(head.key.to_text());
            // A member without a stream in the bundle (the fuzzer found a bundle whose member
            // list and streams disagree): a problem, not a panic.
            let Some(tree) = trees.get(&head.key) else {
                roots_match = false;
                report.push(problem(
                    s,
                    "names a stream the bundle does not carry".into(),
                ));
                continue;
            };
            if head.size > tree.size() {
                roots_match = false;
                report.push(problem(
                    s,
                    format!(
                        "covers {} envelopes of this stream; the bundle has {}",
                        head.size,
                        tree.size()
                    ),
                ));
                continue;
            }
            let root: Hash = tree.root_at(head.size).unwrap_or_default();
            if root != head.root {
                roots_match = false;
                report.push(problem(
                    s,
                    format!(
                        "root at size {} does not match the stream: signed {}, computed {}",
                        head.size,
                        hex::encode(head.root),
                        hex::encode(root)
                    ),
                ));
            }
        }
        // With both checkpoints' roots on the bundle's trees, the earlier is a prefix of the
        // later; checked with an RFC 9162 consistency proof against both signed roots.
        if let (true, Some((pn, p))) = (roots_match, &previous) {
            for (old, new) in p.members.iter().zip(&c.members) {
                if old.size == 0 || old.size > new.size {
                    continue;
                }
                let Some(tree) = trees.get(&old.key) else {
                    continue;
                };
                let consistent = tree
                    .consistency_proof(old.size, new.size)
                    .is_ok_and(|path| {
                        merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &path)
                    });
                if !consistent {
                    report.push(problem(
                        Some(old.key.to_text()),
                        format!(
                            "inconsistent with checkpoint {pn}: size {} is not a prefix of size {}",
                            old.size, new.size
                        ),
                    ));
                }
            }
        }
        if signed.cosigned() {
            report.cosigned += 1;
            report.latest_cosigned = Some(
                c.members
                    .iter()
                    .map(|m| (m.key.to_text(), m.size))
                    .collect(),
            );
        }
        previous = Some((n, c));
    }
    report
}

/// "Envelope E is at `seq` in its sender's stream, which checkpoint C covers", with the
/// RFC 9162 inclusion path: everything needed to check it offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub envelope: Vec<u8>,
    /// Encoded [`SignedCheckpoint`].
    pub checkpoint: Vec<u8>,
    /// Leaf index (`seq - 1`) and tree size, as in the checkpoint.
    pub index: u64,
    pub size: u64,
    pub path: Vec<Hash>,
}

/// What an inclusion proof proves, once verified.
#[derive(Debug, Clone)]
pub struct ProvenInclusion {
    pub envelope: VerifiedEnvelope,
    pub checkpoint: SignedCheckpoint,
}

impl InclusionProof {
    /// Verify the envelope's and the checkpoint's signatures and the path.
    pub fn verify(&self) -> Result<ProvenInclusion, String> {
        let envelope =
            VerifiedEnvelope::decode(&self.envelope, None).map_err(|e| format!("envelope: {e}"))?;
        let checkpoint =
            SignedCheckpoint::decode(&self.checkpoint).map_err(|e| format!("checkpoint: {e}"))?;
        let e = envelope.envelope();
        if checkpoint.checkpoint().channel != e.channel {
            return Err("the checkpoint is of another channel".into());
        }
        let head = checkpoint
            .checkpoint()
            .head(&e.sender)
            .ok_or("the envelope's sender is not a member of the checkpoint")?;
        if self.index + 1 != e.seq {
            return Err(format!(
                "index {} does not match the envelope's seq {}",
                self.index, e.seq
            ));
        }
        if self.size != head.size {
            return Err(format!(
                "tree size {} is not the checkpoint's {} for this stream",
                self.size, head.size
            ));
        }
        let leaf = merkle::leaf_hash(&self.envelope);
        if !merkle::verify_inclusion(self.index, self.size, &leaf, &self.path, &head.root) {
            return Err("the inclusion path does not lead to the checkpoint's root".into());
        }
        Ok(ProvenInclusion {
            envelope,
            checkpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Precedence, TextBody};
    use crate::identity::PartySecret;

    fn sample_bundle() -> Bundle {
        let secrets = [
            PartySecret::from_seed([1; 32]),
            PartySecret::from_seed([2; 32]),
        ];
        let mut members: Vec<PartyKey> = secrets.iter().map(|s| s.public()).collect();
        members.sort();
        let channel = ChannelId::for_pair(&members[0], &members[1]);
        let streams = members
            .iter()
            .map(|key| {
                let secret = secrets.iter().find(|s| s.public() == *key).unwrap();
                let mut prev = MessageId::ZERO;
                let envelopes = (1..=3)
                    .map(|seq| {
                        let e = Envelope {
                            channel,
                            sender: *key,
                            seq,
                            prev,
                            created_at_ms: 1_767_225_600_000 + seq,
                            precedence: Precedence::Routine,
                            topic: "general".into(),
                            author: String::new(),
                            in_reply_to: None,
                            body: Body::Text(TextBody {
                                language: "en".into(),
                                text: format!("message {seq}"),
                                translations: Vec::new(),
                            }),
                        };
                        let v = VerifiedEnvelope::sign(e, secret).unwrap();
                        prev = v.id();
                        v.bytes().to_vec()
                    })
                    .collect();
                (*key, envelopes)
            })
            .collect();
        Bundle {
            channel,
            members,
            charters: Vec::new(),
            streams,
            checkpoints: Vec::new(),
        }
    }

    #[test]
    fn the_borrowing_parser_reads_what_decode_reads() {
        let bundle = sample_bundle();
        let bytes = bundle.encode();
        let decoded = Bundle::decode(&bytes).unwrap();
        assert_eq!(View::parse(&bytes), Some(View::of(&decoded)));
        assert!(verify(&bytes).ok());
        // Every truncation falls back to the full decoder and gets its report.
        for n in 0..bytes.len() {
            assert_eq!(View::parse(&bytes[..n]), None, "prefix of {n} bytes");
        }
    }

    /// A CBOR head of major type `major` and argument `n`: the shortest, or with `wide` the
    /// next wider one (the same value in more bytes).
    fn head(major: u8, n: usize, wide: bool) -> Vec<u8> {
        let shortest = match n {
            0..=23 => 0,
            24..=0xff => 1,
            0x100..=0xffff => 2,
            _ => 4,
        };
        let width = match (wide, shortest) {
            (false, w) => w,
            (true, 0) => 1,
            (true, 1) => 2,
            (true, 2) => 4,
            (true, _) => 8,
        };
        let info = match width {
            0 => n as u8,
            1 => 24,
            2 => 25,
            4 => 26,
            _ => 27,
        };
        let mut v = vec![(major << 5) | info];
        v.extend_from_slice(&(n as u64).to_be_bytes()[8 - width..]);
        v
    }

    /// Which item of the container a hand-written encoding widens.
    #[derive(Clone, Copy, PartialEq)]
    enum Wide {
        None,
        Magic,
        Version,
        Envelope,
        Checkpoint,
    }

    /// The bundle's bytes written by hand, with one head widened.
    fn encode_by_hand(b: &Bundle, wide: Wide) -> Vec<u8> {
        let bstr = |out: &mut Vec<u8>, bytes: &[u8], w: bool| {
            out.extend(head(2, bytes.len(), w));
            out.extend_from_slice(bytes);
        };
        let mut out = head(4, 7, false);
        out.extend(head(3, BUNDLE_MAGIC.len(), wide == Wide::Magic));
        out.extend_from_slice(BUNDLE_MAGIC.as_bytes());
        out.extend(head(0, BUNDLE_VERSION as usize, wide == Wide::Version));
        bstr(&mut out, &b.channel.0, false);
        out.extend(head(4, b.members.len(), false));
        for m in &b.members {
            bstr(&mut out, m.as_bytes(), false);
        }
        out.extend(head(4, b.charters.len(), false));
        for c in &b.charters {
            bstr(&mut out, c, false);
        }
        out.extend(head(4, b.streams.len(), false));
        for (s, (key, envelopes)) in b.streams.iter().enumerate() {
            out.extend(head(4, 2, false));
            bstr(&mut out, key.as_bytes(), false);
            out.extend(head(4, envelopes.len(), false));
            for (i, e) in envelopes.iter().enumerate() {
                bstr(&mut out, e, wide == Wide::Envelope && s == 1 && i == 1);
            }
        }
        out.extend(head(4, b.checkpoints.len(), false));
        for c in &b.checkpoints {
            bstr(&mut out, c, wide == Wide::Checkpoint);
        }
        out
    }

    /// The report of a bundle refused as a container: one problem, the bundle's.
    fn refused_as_container(bytes: &[u8]) -> String {
        let report = verify(bytes);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].item, "bundle");
        assert!(Bundle::decode(bytes).is_err());
        report.problems[0].what.clone()
    }

    #[test]
    fn only_the_canonical_encoding_of_a_bundle_is_accepted() {
        let mut bundle = sample_bundle();
        // Any bytes do for a checkpoint here: the container is checked before what it holds.
        bundle.checkpoints.push(vec![0xa5; 40]);
        let canonical = bundle.encode();
        assert_eq!(encode_by_hand(&bundle, Wide::None), canonical);
        assert!(Bundle::decode(&canonical).is_ok());
        assert!(verify(&canonical)
            .problems
            .iter()
            .all(|p| p.item != "bundle"));

        for wide in [Wide::Magic, Wide::Version, Wide::Envelope, Wide::Checkpoint] {
            let bytes = encode_by_hand(&bundle, wide);
            assert_ne!(bytes, canonical);
            // Read alike by the in-place reader, which must not let it through.
            assert_eq!(View::parse(&bytes), None);
            assert!(refused_as_container(&bytes).starts_with("not canonical"));
        }
        // A non-shortest head on the outer array.
        let mut wide_array = vec![0x98, 7];
        wide_array.extend_from_slice(&canonical[1..]);
        assert!(refused_as_container(&wide_array).starts_with("not canonical"));
        // A trailing byte.
        let mut trailing = canonical.clone();
        trailing.push(0);
        assert!(refused_as_container(&trailing).starts_with("not canonical"));
        // An indefinite-length outer array.
        let mut indefinite = vec![0x9f];
        indefinite.extend_from_slice(&canonical[1..]);
        indefinite.push(0xff);
        assert!(refused_as_container(&indefinite).starts_with("not canonical"));
    }
}
