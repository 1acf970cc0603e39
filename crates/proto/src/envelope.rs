//! Envelopes: the signed unit of everything said on a channel.
//!
//! Wire form: a tagged COSE_Sign1 (RFC 9052) whose protected header is exactly
//! `{1: -19}` (alg: Ed25519), whose unprotected header is empty, and whose payload is the
//! deterministic CBOR (RFC 8949 §4.2) of an array — never a map, so that no key order can
//! differ between encoders. The message id is SHA-256 over the whole signed encoding.
//!
//! Decoding is strict: the input must be within [`limits::ENVELOPE_BYTES_MAX`], parse, carry a
//! valid signature by the expected sender, and re-encode to exactly the bytes received.
//! Anything else is a typed [`EnvelopeError`]. Only [`VerifiedEnvelope`] values come out,
//! and only this module can make one, so unverified bytes cannot reach the store.

use coset::cbor::Value;
use coset::{CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ed25519_dalek::Signer;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::cbor;
use crate::identity::{PartyKey, PartySecret};
use crate::sig;

/// Bounds on every field. A value over its bound is refused when written and when received.
pub mod limits {
    /// Largest signed envelope, in bytes.
    pub const ENVELOPE_BYTES_MAX: usize = 64 * 1024;
    /// Largest text body, in bytes of UTF-8.
    pub const TEXT_BYTES_MAX: usize = 16 * 1024;
    /// FLASH traffic is brief by rule: at most this many characters of text. Longer
    /// explanations follow as IMMEDIATE.
    pub const FLASH_TEXT_CHARS_MAX: usize = 500;
    /// Topic names: lowercase ASCII letters, digits and '-'.
    pub const TOPIC_BYTES_MAX: usize = 32;
    /// The author's title as shown to the other side ("Duty Officer").
    pub const AUTHOR_BYTES_MAX: usize = 96;
    /// BCP 47 language tags.
    pub const LANGUAGE_BYTES_MAX: usize = 35;
    /// Courtesy translations carried with a text.
    pub const TRANSLATIONS_MAX: usize = 4;
    /// A note on a receipt.
    pub const NOTE_BYTES_MAX: usize = 2048;
    /// Ranges in one DELIVERED receipt.
    pub const RECEIPT_RANGES_MAX: usize = 64;
    /// Latest creation time, in milliseconds since the Unix epoch (2^48: the year 10889);
    /// keeps every time representable as a signed 64-bit number everywhere it is stored.
    pub const CREATED_AT_MS_MAX: u64 = 1 << 48;
    /// A notification's format id.
    pub const FORMAT_ID_BYTES_MAX: usize = 32;
    /// Fields in one notification.
    pub const NOTIFICATION_FIELDS_MAX: usize = 32;
    /// A notification field's key.
    pub const FIELD_KEY_BYTES_MAX: usize = 32;
    /// A typed field value in its canonical text form (a 64-vertex polygon fits).
    pub const FIELD_VALUE_BYTES_MAX: usize = 4096;
    /// A free-text field value (and each of its courtesy translations).
    pub const FIELD_TEXT_BYTES_MAX: usize = 8192;
}

/// Envelope format version carried in every payload.
pub const ENVELOPE_VERSION: u64 = 1;

/// The protected header, byte for byte: the bstr-wrapped map `{1: -19}`.
const PROTECTED_HEADER: [u8; 3] = [0xa1, 0x01, 0x32];

/// SHA-256 of a signed envelope: the message id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// The id of nothing: the `prev` of the first envelope of a stream.
    pub const ZERO: MessageId = MessageId([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex digits, or a unique prefix is the caller's business.
    pub fn from_hex(text: &str) -> Option<Self> {
        let raw = hex::decode(text.trim()).ok()?;
        Some(Self(raw.try_into().ok()?))
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", &self.to_hex()[..12])
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A channel id. Version 1 has one kind: the id of a pair of parties, [`ChannelId::for_pair`],
/// which both sides derive from their keys alone (so messages can be written before they first
/// meet); agreeing or changing a charter does not change it (docs/wire-format.md §2.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub [u8; 32]);

impl ChannelId {
    /// The channel of two parties: SHA-256 over a label and both keys in ascending byte
    /// order, so both sides derive the same id.
    pub fn for_pair(a: &PartyKey, b: &PartyKey) -> Self {
        let (low, high) = if a.as_bytes() <= b.as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        let mut hasher = Sha256::new();
        hasher.update(b"detente channel v1\0");
        hasher.update(low.as_bytes());
        hasher.update(high.as_bytes());
        Self(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelId({})", &self.to_hex()[..12])
    }
}

/// Military message precedence. Lower number, higher precedence; the numbers are part of the
/// wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precedence {
    Flash = 0,
    Immediate = 1,
    Priority = 2,
    Routine = 3,
}

impl Precedence {
    pub const ALL: [Precedence; 4] = [
        Precedence::Flash,
        Precedence::Immediate,
        Precedence::Priority,
        Precedence::Routine,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Precedence::Flash => "flash",
            Precedence::Immediate => "immediate",
            Precedence::Priority => "priority",
            Precedence::Routine => "routine",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(text.trim()))
    }
}

impl std::fmt::Display for Precedence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name().to_ascii_uppercase())
    }
}

/// Receipt levels. The numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReceiptLevel {
    /// Automatic, sent by the receiving node once the messages are durable.
    Delivered = 0,
    /// An operator opened the message.
    Read = 1,
    /// A principal or supervisor answered on the party's behalf.
    Acknowledged = 2,
    /// An explicit, signed refusal, so that it is never mistaken for a dead line.
    Declined = 3,
}

impl ReceiptLevel {
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Delivered),
            1 => Some(Self::Read),
            2 => Some(Self::Acknowledged),
            3 => Some(Self::Declined),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Acknowledged => "acknowledged",
            Self::Declined => "declined",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Delivered,
            Self::Read,
            Self::Acknowledged,
            Self::Declined,
        ]
        .into_iter()
        .find(|l| l.name() == text.trim())
    }
}

/// A free-text body: the sender's language, the text, and optional courtesy translations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBody {
    pub language: String,
    pub text: String,
    /// (language, text) pairs supplied by the sender.
    pub translations: Vec<(String, String)>,
}

/// What a receipt is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptTarget {
    /// DELIVERED: inclusive `seq` ranges of the other party's stream now durable here.
    Ranges(Vec<(u64, u64)>),
    /// READ / ACKNOWLEDGED / DECLINED: one message of the other party.
    Message(MessageId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub level: ReceiptLevel,
    pub target: ReceiptTarget,
    pub note: Option<String>,
}

/// One field value of a notification: a typed value in its canonical text form (checked
/// against the format by the formats crate), or free text that carries its language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Typed(String),
    Text(TextBody),
}

/// A structured notification: format id and version, and the fields sorted by key (each key
/// once). The envelope layer checks shape and bounds; the node checks the values against
/// the format definition before storing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationBody {
    pub format: String,
    pub version: u32,
    pub fields: Vec<(String, FieldValue)>,
}

/// The body kinds of this version. Later versions add checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Text(TextBody),
    Receipt(Receipt),
    /// A link test: proves the line and the far node work end to end.
    Test {
        nonce: [u8; 16],
    },
    /// A structured notification (tag 4).
    Notification(NotificationBody),
    /// This party's signature on a channel charter (docs/spec.md §2). The charter is agreed once
    /// every member's stream carries one with the same digest.
    Charter(crate::charter::Charter),
}

/// Body kind number of a receipt.
pub const KIND_RECEIPT: u8 = 1;
/// Body kind number of a notification.
pub const KIND_NOTIFICATION: u8 = 4;
/// Body kind number of a charter (3 and 5 are reserved for checkpoints).
pub const KIND_CHARTER: u8 = 6;

impl Body {
    /// The kind number stored and listed: 0 text, 1 receipt, 2 test, 4 notification,
    /// 6 charter.
    pub fn kind(&self) -> u8 {
        match self {
            Body::Text(_) => 0,
            Body::Receipt(_) => 1,
            Body::Test { .. } => 2,
            Body::Notification(_) => KIND_NOTIFICATION,
            Body::Charter(_) => KIND_CHARTER,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Body::Text(_) => "text",
            Body::Receipt(_) => "receipt",
            Body::Test { .. } => "test",
            Body::Notification(_) => "notification",
            Body::Charter(_) => "charter",
        }
    }
}

/// The content of an envelope (docs/spec.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub channel: ChannelId,
    pub sender: PartyKey,
    /// Gap-free position in the sender's stream in this channel, from 1.
    pub seq: u64,
    /// Id of the sender's previous envelope in this channel; zeros for `seq` 1.
    pub prev: MessageId,
    /// Sender's clock, milliseconds since the Unix epoch, UTC.
    pub created_at_ms: u64,
    pub precedence: Precedence,
    pub topic: String,
    /// The operator's title as shown to the other side.
    pub author: String,
    pub in_reply_to: Option<MessageId>,
    pub body: Body,
}

/// Why an envelope was refused. Each names what is wrong; none is a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("envelope is {bytes} bytes; the limit is {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("envelope is not well-formed: {0}")]
    Malformed(String),
    #[error("envelope encoding is not canonical (it does not re-encode to the same bytes)")]
    NotCanonical,
    #[error("envelope version {0} is not supported (this node speaks version 1)")]
    UnsupportedVersion(u64),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("envelope is signed by {presented}, not by the expected sender {expected}")]
    WrongSender { expected: String, presented: String },
    #[error("{field} is {len} bytes; the limit is {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{count} {field} given; at most {max} are allowed")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("a FLASH text is brief by rule: {chars} characters, the limit is {max}; send the details as a following IMMEDIATE message")]
    FlashTextTooLong { chars: usize, max: usize },
    #[error("{field} is invalid: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
}

type Result<T> = std::result::Result<T, EnvelopeError>;

/// An envelope whose signature has been verified (or that this node just signed), with its
/// exact bytes and id. The only way to make one is [`VerifiedEnvelope::sign`] or
/// [`VerifiedEnvelope::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    envelope: Envelope,
    bytes: Vec<u8>,
    id: MessageId,
}

impl VerifiedEnvelope {
    /// Check the envelope's bounds, encode and sign it, then verify our own signature and
    /// decode our own bytes before handing it out: a bad signature is found here, never by
    /// the other side.
    pub fn sign(envelope: Envelope, secret: &PartySecret) -> Result<Self> {
        if envelope.sender != secret.public() {
            return Err(EnvelopeError::WrongSender {
                expected: secret.public().fingerprint(),
                presented: envelope.sender.fingerprint(),
            });
        }
        check_fields(&envelope)?;
        let payload = encode_payload(&envelope);
        let sign1 = CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(coset::iana::Algorithm::Ed25519)
                    .build(),
            )
            .payload(payload)
            .create_signature(b"", |tbs| {
                secret.signing_key().sign(tbs).to_bytes().to_vec()
            })
            .build();
        let bytes = sign1
            .to_tagged_vec()
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if bytes.len() > limits::ENVELOPE_BYTES_MAX {
            return Err(EnvelopeError::TooLarge {
                bytes: bytes.len(),
                max: limits::ENVELOPE_BYTES_MAX,
            });
        }
        let verified = Self::decode(&bytes, Some(&envelope.sender))?;
        assert_eq!(
            verified.envelope, envelope,
            "signed envelope must decode to itself"
        );
        Ok(verified)
    }

    /// Decode and verify received bytes. With `expected_sender`, an envelope signed by any
    /// other key is refused.
    pub fn decode(bytes: &[u8], expected_sender: Option<&PartyKey>) -> Result<Self> {
        let parsed = Parsed::new(bytes, expected_sender)?;
        parsed.check_sender(expected_sender)?;
        parsed
            .prepare()?
            .verify()
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(Self {
            envelope: parsed.envelope,
            bytes: bytes.to_vec(),
            id: message_id(bytes),
        })
    }

    /// Decode and verify many envelopes from one sender with batch signature verification
    /// (the node's receive path). Each item's result is exactly what [`Self::decode`] gives
    /// for it: the signature rule is cofactored (see [`crate::sig`]), so a batch accepts and
    /// refuses the same signatures as single verification, and a failed batch is resolved
    /// item by item. The batch coefficients come from the operating system's CSPRNG.
    pub fn decode_batch(frames: &[&[u8]], sender: &PartyKey) -> Vec<Result<Self>> {
        Self::decode_batch_with_rng(frames, sender, &mut rand_core::OsRng)
    }

    /// [`Self::decode_batch`] with the generator of the batch coefficients given (tests make
    /// it deterministic; anything else should use a CSPRNG, as the bound says).
    pub fn decode_batch_with_rng<G: RngCore + CryptoRng>(
        frames: &[&[u8]],
        sender: &PartyKey,
        rng: &mut G,
    ) -> Vec<Result<Self>> {
        verify_frames(frames, sender, rng)
            .into_iter()
            .zip(frames)
            .map(|(result, bytes)| {
                result.map(|envelope| Self {
                    envelope,
                    bytes: bytes.to_vec(),
                    id: message_id(bytes),
                })
            })
            .collect()
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn id(&self) -> MessageId {
        self.id
    }

    pub fn into_parts(self) -> (Envelope, Vec<u8>, MessageId) {
        (self.envelope, self.bytes, self.id)
    }
}

/// The content of an envelope **without checking its signature**: for showing envelopes that
/// were verified before they were stored. It cannot make a [`VerifiedEnvelope`], so nothing
/// parsed this way can be stored or appended.
pub fn parse_unverified(bytes: &[u8]) -> Result<Envelope> {
    Parsed::new(bytes, None).map(|parsed| parsed.envelope)
}

/// [`parse_unverified`] for an envelope that should come from `sender`: the same result
/// (another sender is parsed as such, not refused), but the key the envelope names is not
/// decompressed again when it is `sender`'s. Decompressing a key costs a field square root,
/// more than the rest of a parse: a node that reads every stored envelope at start (the core
/// engine's snapshot) read 56,516 in 2.3-3.0 s, most of it in that.
pub fn parse_unverified_from(bytes: &[u8], sender: &PartyKey) -> Result<Envelope> {
    Parsed::new(bytes, Some(sender)).map(|parsed| parsed.envelope)
}

/// Decode and verify envelopes of one sender, batch-verifying their signatures, without
/// copying their bytes: each result is what [`VerifiedEnvelope::decode`] decides for that
/// item. For the crate's own verifiers (the bundle verifier keeps only a few fields of each).
pub(crate) fn verify_frames<G: RngCore + CryptoRng>(
    frames: &[&[u8]],
    sender: &PartyKey,
    rng: &mut G,
) -> Vec<Result<Envelope>> {
    let mut results: Vec<Result<Envelope>> = Vec::with_capacity(frames.len());
    let mut prepared = Vec::with_capacity(frames.len());
    let mut positions = Vec::with_capacity(frames.len());
    for bytes in frames {
        let checked = Parsed::new(bytes, Some(sender)).and_then(|parsed| {
            parsed.check_sender(Some(sender))?;
            Ok((parsed.prepare()?, parsed.envelope))
        });
        match checked {
            Ok((p, envelope)) => {
                positions.push(results.len());
                prepared.push(p);
                results.push(Ok(envelope));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    for (verdict, at) in sig::verify_batch(&prepared, rng).into_iter().zip(positions) {
        if verdict.is_err() {
            results[at] = Err(EnvelopeError::BadSignature);
        }
    }
    results
}

/// The fixed start of every envelope: tag 18, an array of 4, the protected header bstr
/// `{1: -19}`, the empty unprotected map. The payload bstr follows.
const SIGN1_PREFIX: [u8; 7] = [0xd2, 0x84, 0x43, 0xa1, 0x01, 0x32, 0xa0];

/// The head of the signature bstr (64 bytes), the last item.
const SIGNATURE_HEAD: [u8; 2] = [0x58, 0x40];

/// What is signed is the COSE Sig_structure (RFC 9052 §4.4) `["Signature1", protected,
/// external_aad = h'', payload]`, canonically encoded: these bytes, then the payload bstr
/// exactly as it appears in the envelope.
const SIG_STRUCTURE_PREFIX: [u8; 17] = [
    0x84, 0x6a, b'S', b'i', b'g', b'n', b'a', b't', b'u', b'r', b'e', b'1', 0x43, 0xa1, 0x01, 0x32,
    0x40,
];

/// An envelope that passed every check but the signature, borrowing the received bytes.
struct Parsed<'a> {
    envelope: Envelope,
    /// The payload bstr (head and content), as the Sig_structure embeds it.
    payload_item: &'a [u8],
    signature: &'a [u8; 64],
}

impl<'a> Parsed<'a> {
    /// Bounds, structure, canonical form and fields. `known` is a key the sender is expected
    /// to be: when the payload names it, its already-checked point is reused instead of being
    /// decompressed again.
    ///
    /// A canonical envelope is the fixed prefix, the payload bstr with the shortest length
    /// head, and the 64-byte signature bstr, nothing else; for those bytes only the payload
    /// needs decoding and re-encoding. Any other bytes go through a full COSE decoding, which
    /// refuses them with the same error it always gave.
    fn new(bytes: &'a [u8], known: Option<&PartyKey>) -> Result<Self> {
        if bytes.len() > limits::ENVELOPE_BYTES_MAX {
            return Err(EnvelopeError::TooLarge {
                bytes: bytes.len(),
                max: limits::ENVELOPE_BYTES_MAX,
            });
        }
        let Some(payload_at) = canonical_payload(bytes) else {
            return Err(non_canonical_layout_error(bytes));
        };
        let payload_item = &bytes[SIGN1_PREFIX.len()..bytes.len() - 66];
        let payload = &bytes[payload_at..bytes.len() - 66];
        let envelope = match read_payload(payload, known) {
            Some(envelope) => envelope,
            None => decode_payload(payload, known)?,
        };
        check_fields(&envelope)?;
        if encode_payload(&envelope) != payload {
            return Err(EnvelopeError::NotCanonical);
        }
        let signature = bytes[bytes.len() - 64..].try_into().expect("64 bytes");
        Ok(Self {
            envelope,
            payload_item,
            signature,
        })
    }

    fn check_sender(&self, expected: Option<&PartyKey>) -> Result<()> {
        match expected {
            Some(expected) if &self.envelope.sender != expected => {
                Err(EnvelopeError::WrongSender {
                    expected: expected.fingerprint(),
                    presented: self.envelope.sender.fingerprint(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Conditions 1–3 of the signature rule and the challenge hash, ready for the equation.
    fn prepare(&self) -> Result<sig::Prepared> {
        sig::Prepared::new(
            &self.envelope.sender,
            self.signature,
            &[&SIG_STRUCTURE_PREFIX, self.payload_item],
        )
        .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// Where the payload starts, if `bytes` have the canonical envelope layout.
fn canonical_payload(bytes: &[u8]) -> Option<usize> {
    let at = SIGN1_PREFIX.len();
    if bytes.get(..at)? != SIGN1_PREFIX {
        return None;
    }
    let head = *bytes.get(at)?;
    let (head_len, len, least) = match head {
        0x40..=0x57 => (1, usize::from(head - 0x40), 0),
        0x58 => (2, usize::from(*bytes.get(at + 1)?), 24),
        0x59 => (
            3,
            usize::from(u16::from_be_bytes(
                bytes.get(at + 1..at + 3)?.try_into().ok()?,
            )),
            0x100,
        ),
        0x5a => (
            5,
            usize::try_from(u32::from_be_bytes(
                bytes.get(at + 1..at + 5)?.try_into().ok()?,
            ))
            .ok()?,
            0x1_0000,
        ),
        _ => return None,
    };
    let payload_at = at + head_len;
    let canonical = len >= least
        && payload_at.checked_add(len)?.checked_add(66)? == bytes.len()
        && bytes[bytes.len() - 66..bytes.len() - 64] == SIGNATURE_HEAD;
    canonical.then_some(payload_at)
}

/// The error for bytes without the canonical layout, found the way a full COSE decoding finds
/// it (so that every refusal names the same problem it always did). Such bytes never re-encode
/// to themselves, so the last check always fails.
fn non_canonical_layout_error(bytes: &[u8]) -> EnvelopeError {
    let check = || -> Result<()> {
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if sign1.protected.original_data.as_deref() != Some(&PROTECTED_HEADER[..]) {
            return Err(EnvelopeError::InvalidField {
                field: "protected header",
                reason: "must be exactly {alg: Ed25519}",
            });
        }
        if !sign1.unprotected.is_empty() {
            return Err(EnvelopeError::InvalidField {
                field: "unprotected header",
                reason: "must be empty: nothing unsigned is trusted",
            });
        }
        if sign1.signature.len() != 64 {
            return Err(EnvelopeError::BadSignature);
        }
        let payload = sign1
            .payload
            .as_deref()
            .ok_or(EnvelopeError::Malformed("no payload".into()))?;
        let envelope = decode_payload(payload, None)?;
        check_fields(&envelope)?;
        if encode_payload(&envelope) != payload {
            return Err(EnvelopeError::NotCanonical);
        }
        Err(EnvelopeError::NotCanonical)
    };
    check().expect_err("only bytes without the canonical layout come here")
}

/// The precedence an envelope claims, read from the fixed layout of its first bytes without
/// decoding or verifying anything: a scheduling hint for the receive path (a FLASH is
/// verified and stored ahead of queued ROUTINE traffic). `None` when the bytes do not have
/// the expected shape; the full decode decides everything else.
pub fn peek_precedence(bytes: &[u8]) -> Option<Precedence> {
    let mut at = 0usize;
    let expect = |want: &[u8], at: &mut usize| -> Option<()> {
        let got = bytes.get(*at..*at + want.len())?;
        (got == want).then(|| *at += want.len())
    };
    // Tag 18, array of 4, the protected header bstr, the empty unprotected map.
    expect(&[0xd2, 0x84, 0x43, 0xa1, 0x01, 0x32, 0xa0], &mut at)?;
    // The payload bstr's length head, then the payload array of 11.
    at += match *bytes.get(at)? {
        0x58 => 2,
        0x59 => 3,
        0x5a => 5,
        _ => return None,
    };
    expect(&[0x8b], &mut at)?;
    let skip_uint = |at: &mut usize| -> Option<u64> {
        let head = *bytes.get(*at)?;
        if head >> 5 != 0 {
            return None;
        }
        let (len, value) = match head & 0x1f {
            n @ 0..=23 => (1, u64::from(n)),
            24 => (2, u64::from(*bytes.get(*at + 1)?)),
            25 => (
                3,
                u64::from(u16::from_be_bytes(
                    bytes.get(*at + 1..*at + 3)?.try_into().ok()?,
                )),
            ),
            26 => (
                5,
                u64::from(u32::from_be_bytes(
                    bytes.get(*at + 1..*at + 5)?.try_into().ok()?,
                )),
            ),
            27 => (
                9,
                u64::from_be_bytes(bytes.get(*at + 1..*at + 9)?.try_into().ok()?),
            ),
            _ => return None,
        };
        *at += len;
        Some(value)
    };
    let skip_hash = |at: &mut usize| -> Option<()> {
        (bytes.get(*at..*at + 2)? == [0x58, 0x20]).then_some(())?;
        *at += 34;
        Some(())
    };
    skip_uint(&mut at)?; // version
    skip_hash(&mut at)?; // channel
    skip_hash(&mut at)?; // sender
    skip_uint(&mut at)?; // seq
    skip_hash(&mut at)?; // prev
    skip_uint(&mut at)?; // created_at
    let precedence = skip_uint(&mut at)?;
    Precedence::from_u8(u8::try_from(precedence).ok()?)
}

/// The message id of signed bytes.
pub fn message_id(bytes: &[u8]) -> MessageId {
    MessageId(Sha256::digest(bytes).into())
}

/// Bounds and syntax of every field, the same for writing and for receiving.
fn check_fields(e: &Envelope) -> Result<()> {
    if e.seq == 0 {
        return Err(EnvelopeError::InvalidField {
            field: "seq",
            reason: "starts at 1",
        });
    }
    if (e.seq == 1) != (e.prev == MessageId::ZERO) {
        return Err(EnvelopeError::InvalidField {
            field: "prev",
            reason: "is zero exactly for the first envelope of a stream",
        });
    }
    if e.created_at_ms > limits::CREATED_AT_MS_MAX {
        return Err(EnvelopeError::InvalidField {
            field: "created_at",
            reason: "is after the year 10889",
        });
    }
    check_len("topic", &e.topic, limits::TOPIC_BYTES_MAX)?;
    if e.topic.is_empty()
        || !e
            .topic
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(EnvelopeError::InvalidField {
            field: "topic",
            reason: "lowercase letters, digits and '-' only",
        });
    }
    check_len("author", &e.author, limits::AUTHOR_BYTES_MAX)?;
    check_printable("author", &e.author)?;
    match &e.body {
        Body::Text(text) => check_text(text, e.precedence),
        Body::Receipt(receipt) => check_receipt(receipt),
        Body::Test { .. } => Ok(()),
        Body::Notification(n) => check_notification(n),
        Body::Charter(charter) => charter
            .check()
            .map_err(|e| EnvelopeError::Malformed(format!("charter: {e}"))),
    }
}

fn check_notification(n: &NotificationBody) -> Result<()> {
    check_len("format", &n.format, limits::FORMAT_ID_BYTES_MAX)?;
    if n.format.is_empty()
        || !n
            .format
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(EnvelopeError::InvalidField {
            field: "format",
            reason: "lowercase letters, digits and '-' only",
        });
    }
    if n.fields.is_empty() || n.fields.len() > limits::NOTIFICATION_FIELDS_MAX {
        return Err(EnvelopeError::InvalidField {
            field: "fields",
            reason: "between 1 and 32 fields",
        });
    }
    for (i, (key, value)) in n.fields.iter().enumerate() {
        check_len("field key", key, limits::FIELD_KEY_BYTES_MAX)?;
        if key.is_empty() || (i > 0 && n.fields[i - 1].0 >= *key) {
            return Err(EnvelopeError::InvalidField {
                field: "fields",
                reason: "keys are non-empty, each once, sorted",
            });
        }
        match value {
            FieldValue::Typed(text) => {
                check_len("field value", text, limits::FIELD_VALUE_BYTES_MAX)?;
                check_printable("field value", text)?;
            }
            FieldValue::Text(t) => {
                check_language(&t.language)?;
                check_len("field text", &t.text, limits::FIELD_TEXT_BYTES_MAX)?;
                if t.translations.len() > limits::TRANSLATIONS_MAX {
                    return Err(EnvelopeError::TooMany {
                        field: "translations",
                        count: t.translations.len(),
                        max: limits::TRANSLATIONS_MAX,
                    });
                }
                for (language, translated) in &t.translations {
                    check_language(language)?;
                    check_len(
                        "field translation",
                        translated,
                        limits::FIELD_TEXT_BYTES_MAX,
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn check_text(text: &TextBody, precedence: Precedence) -> Result<()> {
    check_language(&text.language)?;
    check_len("text", &text.text, limits::TEXT_BYTES_MAX)?;
    if text.text.trim().is_empty() {
        return Err(EnvelopeError::InvalidField {
            field: "text",
            reason: "is empty",
        });
    }
    if precedence == Precedence::Flash {
        let chars = text.text.chars().count();
        if chars > limits::FLASH_TEXT_CHARS_MAX {
            return Err(EnvelopeError::FlashTextTooLong {
                chars,
                max: limits::FLASH_TEXT_CHARS_MAX,
            });
        }
    }
    if text.translations.len() > limits::TRANSLATIONS_MAX {
        return Err(EnvelopeError::TooMany {
            field: "translations",
            count: text.translations.len(),
            max: limits::TRANSLATIONS_MAX,
        });
    }
    for (language, translated) in &text.translations {
        check_language(language)?;
        check_len("translation", translated, limits::TEXT_BYTES_MAX)?;
    }
    Ok(())
}

fn check_receipt(receipt: &Receipt) -> Result<()> {
    if let Some(note) = &receipt.note {
        check_len("note", note, limits::NOTE_BYTES_MAX)?;
    }
    match (&receipt.target, receipt.level) {
        (ReceiptTarget::Ranges(ranges), ReceiptLevel::Delivered) => {
            if ranges.is_empty() || ranges.len() > limits::RECEIPT_RANGES_MAX {
                return Err(EnvelopeError::InvalidField {
                    field: "receipt ranges",
                    reason: "between 1 and 64 ranges",
                });
            }
            if ranges.iter().any(|(from, to)| *from == 0 || from > to) {
                return Err(EnvelopeError::InvalidField {
                    field: "receipt ranges",
                    reason: "each range is 1 <= from <= to",
                });
            }
            Ok(())
        }
        (ReceiptTarget::Message(_), level) if level != ReceiptLevel::Delivered => Ok(()),
        _ => Err(EnvelopeError::InvalidField {
            field: "receipt",
            reason: "DELIVERED names ranges; READ, ACKNOWLEDGED and DECLINED name one message",
        }),
    }
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(EnvelopeError::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn check_printable(field: &'static str, value: &str) -> Result<()> {
    if value.chars().any(|c| c.is_control()) {
        return Err(EnvelopeError::InvalidField {
            field,
            reason: "contains control characters",
        });
    }
    Ok(())
}

fn check_language(tag: &str) -> Result<()> {
    check_len("language", tag, limits::LANGUAGE_BYTES_MAX)?;
    let ok = !tag.is_empty()
        && tag.split('-').all(|part| {
            !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if !ok {
        return Err(EnvelopeError::InvalidField {
            field: "language",
            reason: "must be a BCP 47 tag such as en or zh-CN",
        });
    }
    Ok(())
}

// ---- payload encoding -------------------------------------------------------------------

fn uint(v: u64) -> Value {
    Value::Integer(v.into())
}

fn translations_value(translations: &[(String, String)]) -> Value {
    Value::Array(
        translations
            .iter()
            .map(|(l, s)| Value::Array(vec![Value::Text(l.clone()), Value::Text(s.clone())]))
            .collect(),
    )
}

fn encode_payload(e: &Envelope) -> Vec<u8> {
    let body = match &e.body {
        Body::Text(t) => Value::Array(vec![
            uint(0),
            Value::Text(t.language.clone()),
            Value::Text(t.text.clone()),
            translations_value(&t.translations),
        ]),
        Body::Notification(n) => Value::Array(vec![
            uint(4),
            Value::Text(n.format.clone()),
            uint(n.version.into()),
            Value::Array(
                n.fields
                    .iter()
                    .map(|(key, value)| {
                        let value = match value {
                            FieldValue::Typed(text) => Value::Text(text.clone()),
                            FieldValue::Text(t) => Value::Array(vec![
                                Value::Text(t.language.clone()),
                                Value::Text(t.text.clone()),
                                translations_value(&t.translations),
                            ]),
                        };
                        Value::Array(vec![Value::Text(key.clone()), value])
                    })
                    .collect(),
            ),
        ]),
        Body::Receipt(r) => Value::Array(vec![
            uint(1),
            uint(r.level as u64),
            match &r.target {
                ReceiptTarget::Ranges(ranges) => Value::Array(
                    ranges
                        .iter()
                        .map(|(a, b)| Value::Array(vec![uint(*a), uint(*b)]))
                        .collect(),
                ),
                ReceiptTarget::Message(id) => Value::Bytes(id.0.to_vec()),
            },
            r.note.clone().map_or(Value::Null, Value::Text),
        ]),
        Body::Test { nonce } => Value::Array(vec![uint(2), Value::Bytes(nonce.to_vec())]),
        Body::Charter(charter) => {
            Value::Array(vec![uint(u64::from(KIND_CHARTER)), charter.to_value()])
        }
    };
    let value = Value::Array(vec![
        uint(ENVELOPE_VERSION),
        Value::Bytes(e.channel.0.to_vec()),
        Value::Bytes(e.sender.as_bytes().to_vec()),
        uint(e.seq),
        Value::Bytes(e.prev.0.to_vec()),
        uint(e.created_at_ms),
        uint(e.precedence as u64),
        Value::Text(e.topic.clone()),
        Value::Text(e.author.clone()),
        e.in_reply_to
            .map_or(Value::Null, |id| Value::Bytes(id.0.to_vec())),
        body,
    ]);
    let mut out = Vec::with_capacity(256);
    // Writing a Value into a Vec cannot fail.
    coset::cbor::ser::into_writer(&value, &mut out).expect("CBOR into a Vec");
    out
}

// ---- payload reading in place ------------------------------------------------------------

/// The payload of a text, receipt, test or notification envelope, read in place: the same
/// envelope [`decode_payload`] makes of these bytes, without a `Value` tree in between.
/// `None` for anything else (charter bodies, and anything unexpected); [`decode_payload`] then
/// decides, so every error still comes from it.
fn read_payload(payload: &[u8], known: Option<&PartyKey>) -> Option<Envelope> {
    let mut r = cbor::Reader::new(payload);
    r.array_of(11)?;
    if r.uint()? != ENVELOPE_VERSION {
        return None;
    }
    let channel = ChannelId(r.bytes32()?);
    let sender = match (r.bytes32()?, known) {
        (bytes, Some(key)) if bytes == *key.as_bytes() => *key,
        (bytes, _) => PartyKey::from_bytes(bytes).ok()?,
    };
    let seq = r.uint()?;
    let prev = MessageId(r.bytes32()?);
    let created_at_ms = r.uint()?;
    let precedence = u8::try_from(r.uint()?).ok().and_then(Precedence::from_u8)?;
    let topic = r.string_owned()?;
    let author = r.string_owned()?;
    let in_reply_to = match r.null() {
        true => None,
        false => Some(MessageId(r.bytes32()?)),
    };
    let body = read_body(&mut r)?;
    r.at_end().then_some(Envelope {
        channel,
        sender,
        seq,
        prev,
        created_at_ms,
        precedence,
        topic,
        author,
        in_reply_to,
        body,
    })
}

/// A body as [`decode_body`] reads it, for every kind but charters.
fn read_body(r: &mut cbor::Reader) -> Option<Body> {
    let len = r.array(4)?;
    match (r.uint()?, len) {
        (0, 4) => Some(Body::Text(read_text(r)?)),
        (1, 4) => {
            let level = ReceiptLevel::from_u64(r.uint()?)?;
            let target = match r.peek_major()? {
                2 => ReceiptTarget::Message(MessageId(r.bytes32()?)),
                4 => {
                    let n = r.array(limits::RECEIPT_RANGES_MAX)?;
                    let ranges = (0..n)
                        .map(|_| {
                            r.array_of(2)?;
                            Some((r.uint()?, r.uint()?))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    ReceiptTarget::Ranges(ranges)
                }
                _ => return None,
            };
            let note = match r.null() {
                true => None,
                false => Some(r.string_owned()?),
            };
            Some(Body::Receipt(Receipt {
                level,
                target,
                note,
            }))
        }
        (2, 2) => Some(Body::Test {
            nonce: r.bytes()?.try_into().ok()?,
        }),
        (4, 4) => {
            let format = r.string_owned()?;
            let version = u32::try_from(r.uint()?).ok()?;
            let n = r.array(limits::NOTIFICATION_FIELDS_MAX)?;
            let fields = (0..n).map(|_| read_field(r)).collect::<Option<Vec<_>>>()?;
            Some(Body::Notification(NotificationBody {
                format,
                version,
                fields,
            }))
        }
        _ => None,
    }
}

/// Language, text and translations, as [`decode_text`] reads them.
fn read_text(r: &mut cbor::Reader) -> Option<TextBody> {
    let language = r.string_owned()?;
    let text = r.string_owned()?;
    let n = r.array(limits::TRANSLATIONS_MAX)?;
    let translations = (0..n)
        .map(|_| {
            r.array_of(2)?;
            Some((r.string_owned()?, r.string_owned()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TextBody {
        language,
        text,
        translations,
    })
}

/// A notification field, as [`decode_field`] reads it.
fn read_field(r: &mut cbor::Reader) -> Option<(String, FieldValue)> {
    r.array_of(2)?;
    let key = r.string_owned()?;
    let value = match r.peek_major()? {
        3 => FieldValue::Typed(r.string_owned()?),
        4 => {
            r.array_of(3)?;
            FieldValue::Text(read_text(r)?)
        }
        _ => return None,
    };
    Some((key, value))
}

// ---- payload decoding through a Value tree ----------------------------------------------

/// Reads the positional items of a CBOR array with typed errors.
struct Items {
    items: std::vec::IntoIter<Value>,
    what: &'static str,
}

impl Items {
    fn new(value: Value, what: &'static str, len: usize) -> Result<Self> {
        match value {
            Value::Array(items) if items.len() == len => Ok(Self {
                items: items.into_iter(),
                what,
            }),
            Value::Array(items) => Err(EnvelopeError::Malformed(format!(
                "{what} has {} items, expected {len}",
                items.len()
            ))),
            _ => Err(EnvelopeError::Malformed(format!("{what} is not an array"))),
        }
    }

    fn next(&mut self) -> Result<Value> {
        self.items
            .next()
            .ok_or_else(|| EnvelopeError::Malformed(format!("{} is short", self.what)))
    }

    fn uint(&mut self, field: &'static str) -> Result<u64> {
        match self.next()? {
            Value::Integer(i) => u64::try_from(i).map_err(|_| bad(field, "unsigned integer")),
            _ => Err(bad(field, "unsigned integer")),
        }
    }

    fn bytes32(&mut self, field: &'static str) -> Result<[u8; 32]> {
        match self.next()? {
            Value::Bytes(b) => b.try_into().map_err(|_| bad(field, "32 bytes")),
            _ => Err(bad(field, "32 bytes")),
        }
    }

    fn text(&mut self, field: &'static str) -> Result<String> {
        match self.next()? {
            Value::Text(s) => Ok(s),
            _ => Err(bad(field, "text")),
        }
    }

    fn optional_text(&mut self, field: &'static str) -> Result<Option<String>> {
        match self.next()? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            _ => Err(bad(field, "text or null")),
        }
    }
}

fn bad(field: &'static str, expected: &'static str) -> EnvelopeError {
    EnvelopeError::Malformed(format!("{field}: expected {expected}"))
}

/// Decode a payload. `known`: a key the sender is expected to be, whose parsed form is reused
/// when the payload names it.
fn decode_payload(payload: &[u8], known: Option<&PartyKey>) -> Result<Envelope> {
    let value: Value = coset::cbor::de::from_reader(payload)
        .map_err(|e| EnvelopeError::Malformed(format!("payload: {e}")))?;
    let mut items = Items::new(value, "payload", 11)?;
    let version = items.uint("version")?;
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let channel = ChannelId(items.bytes32("channel")?);
    let sender = match (items.bytes32("sender")?, known) {
        (bytes, Some(key)) if bytes == *key.as_bytes() => *key,
        (bytes, _) => {
            PartyKey::from_bytes(bytes).map_err(|_| bad("sender", "a valid Ed25519 public key"))?
        }
    };
    let seq = items.uint("seq")?;
    let prev = MessageId(items.bytes32("prev")?);
    let created_at_ms = items.uint("created_at")?;
    let precedence = u8::try_from(items.uint("precedence")?)
        .ok()
        .and_then(Precedence::from_u8)
        .ok_or_else(|| bad("precedence", "0 to 3"))?;
    let topic = items.text("topic")?;
    let author = items.text("author")?;
    let in_reply_to = match items.next()? {
        Value::Null => None,
        Value::Bytes(b) => Some(MessageId(
            b.try_into().map_err(|_| bad("in_reply_to", "32 bytes"))?,
        )),
        _ => return Err(bad("in_reply_to", "32 bytes or null")),
    };
    let body = decode_body(items.next()?)?;
    Ok(Envelope {
        channel,
        sender,
        seq,
        prev,
        created_at_ms,
        precedence,
        topic,
        author,
        in_reply_to,
        body,
    })
}

fn decode_body(value: Value) -> Result<Body> {
    let kind = match &value {
        Value::Array(items) => match items.first() {
            Some(Value::Integer(i)) => {
                u64::try_from(*i).map_err(|_| bad("body kind", "0, 1, 2, 4 or 6"))?
            }
            _ => return Err(bad("body kind", "0, 1, 2, 4 or 6")),
        },
        _ => return Err(bad("body", "array")),
    };
    match kind {
        0 => {
            let mut items = Items::new(value, "text body", 4)?;
            items.next()?;
            Ok(Body::Text(decode_text(&mut items)?))
        }
        4 => {
            let mut items = Items::new(value, "notification body", 4)?;
            items.next()?;
            let format = items.text("format")?;
            let version = u32::try_from(items.uint("format version")?)
                .map_err(|_| bad("format version", "a 32-bit unsigned integer"))?;
            let fields = match items.next()? {
                Value::Array(list) if list.len() <= limits::NOTIFICATION_FIELDS_MAX => list
                    .into_iter()
                    .map(decode_field)
                    .collect::<Result<Vec<_>>>()?,
                _ => return Err(bad("fields", "an array of at most 32")),
            };
            Ok(Body::Notification(NotificationBody {
                format,
                version,
                fields,
            }))
        }
        1 => {
            let mut items = Items::new(value, "receipt body", 4)?;
            items.next()?;
            let level = ReceiptLevel::from_u64(items.uint("receipt level")?)
                .ok_or_else(|| bad("receipt level", "0 to 3"))?;
            let target = match items.next()? {
                Value::Bytes(b) => ReceiptTarget::Message(MessageId(
                    b.try_into()
                        .map_err(|_| bad("receipt target", "32 bytes"))?,
                )),
                Value::Array(list) if list.len() <= limits::RECEIPT_RANGES_MAX => {
                    ReceiptTarget::Ranges(
                        list.into_iter()
                            .map(|pair| {
                                let mut pair = Items::new(pair, "receipt range", 2)?;
                                Ok((pair.uint("range from")?, pair.uint("range to")?))
                            })
                            .collect::<Result<Vec<_>>>()?,
                    )
                }
                _ => return Err(bad("receipt target", "message id or at most 64 ranges")),
            };
            let note = items.optional_text("note")?;
            Ok(Body::Receipt(Receipt {
                level,
                target,
                note,
            }))
        }
        2 => {
            let mut items = Items::new(value, "test body", 2)?;
            items.next()?;
            match items.next()? {
                Value::Bytes(b) => Ok(Body::Test {
                    nonce: b.try_into().map_err(|_| bad("nonce", "16 bytes"))?,
                }),
                _ => Err(bad("nonce", "16 bytes")),
            }
        }
        6 => {
            let mut items = Items::new(value, "charter body", 2)?;
            items.next()?;
            crate::charter::Charter::from_value(items.next()?)
                .map(Body::Charter)
                .map_err(|e| EnvelopeError::Malformed(format!("charter: {e}")))
        }
        _ => Err(bad("body kind", "0, 1, 2, 4 or 6")),
    }
}

/// Language, text and translations: the tail of a text body and a free-text field value.
fn decode_text(items: &mut Items) -> Result<TextBody> {
    let language = items.text("language")?;
    let text = items.text("text")?;
    let translations = match items.next()? {
        Value::Array(list) if list.len() <= limits::TRANSLATIONS_MAX => list
            .into_iter()
            .map(|pair| {
                let mut pair = Items::new(pair, "translation", 2)?;
                Ok((
                    pair.text("translation language")?,
                    pair.text("translation")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("translations", "an array of at most 4")),
    };
    Ok(TextBody {
        language,
        text,
        translations,
    })
}

fn decode_field(pair: Value) -> Result<(String, FieldValue)> {
    let mut pair = Items::new(pair, "notification field", 2)?;
    let key = pair.text("field key")?;
    let value = match pair.next()? {
        Value::Text(text) => FieldValue::Typed(text),
        free @ Value::Array(_) => {
            let mut items = Items::new(free, "free-text field", 3)?;
            FieldValue::Text(decode_text(&mut items)?)
        }
        _ => return Err(bad("field value", "text or [language, text, translations]")),
    };
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u8) -> PartySecret {
        PartySecret::from_seed([n; 32])
    }

    pub(crate) fn sample(secret: &PartySecret, seq: u64, prev: MessageId) -> Envelope {
        let other = PartySecret::from_seed([99; 32]).public();
        Envelope {
            channel: ChannelId::for_pair(&secret.public(), &other),
            sender: secret.public(),
            seq,
            prev,
            created_at_ms: 1_700_000_000_000 + seq,
            precedence: Precedence::Routine,
            topic: "general".into(),
            author: "Duty Officer".into(),
            in_reply_to: None,
            body: Body::Text(TextBody {
                language: "en".into(),
                text: "hello".into(),
                translations: vec![],
            }),
        }
    }

    #[test]
    fn sign_decode_round_trip() {
        let s = secret(1);
        let v = VerifiedEnvelope::sign(sample(&s, 1, MessageId::ZERO), &s).unwrap();
        let d = VerifiedEnvelope::decode(v.bytes(), Some(&s.public())).unwrap();
        assert_eq!(d, v);
        assert_eq!(d.id(), message_id(v.bytes()));
    }

    #[test]
    fn parsing_from_a_known_sender_gives_what_parsing_alone_gives() {
        let s = secret(1);
        let v = VerifiedEnvelope::sign(sample(&s, 1, MessageId::ZERO), &s).unwrap();
        let alone = parse_unverified(v.bytes()).unwrap();
        assert_eq!(
            parse_unverified_from(v.bytes(), &s.public()).unwrap(),
            alone
        );
        // Another expected sender: the envelope's own is parsed, never swapped in.
        let other = parse_unverified_from(v.bytes(), &secret(2).public()).unwrap();
        assert_eq!(other, alone);
        assert_eq!(other.sender, s.public());
        let mut bad = v.bytes().to_vec();
        bad.truncate(bad.len() / 2);
        assert_eq!(
            parse_unverified_from(&bad, &s.public()).is_err(),
            parse_unverified(&bad).is_err()
        );
    }

    #[test]
    fn wrong_sender_refused() {
        let s = secret(1);
        let v = VerifiedEnvelope::sign(sample(&s, 1, MessageId::ZERO), &s).unwrap();
        let err = VerifiedEnvelope::decode(v.bytes(), Some(&secret(2).public())).unwrap_err();
        assert!(matches!(err, EnvelopeError::WrongSender { .. }));
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let s = secret(1);
        let v = VerifiedEnvelope::sign(sample(&s, 1, MessageId::ZERO), &s).unwrap();
        for i in 0..v.bytes().len() * 8 {
            let mut b = v.bytes().to_vec();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                VerifiedEnvelope::decode(&b, Some(&s.public())).is_err(),
                "bit {i}"
            );
        }
    }

    #[test]
    fn peeked_precedence_matches_the_signed_one() {
        let s = secret(1);
        for p in Precedence::ALL {
            for seq in [1, 30, 300, 70_000, 5_000_000_000] {
                let mut e = sample(
                    &s,
                    seq,
                    if seq == 1 {
                        MessageId::ZERO
                    } else {
                        MessageId([1; 32])
                    },
                );
                e.precedence = p;
                let v = VerifiedEnvelope::sign(e, &s).unwrap();
                assert_eq!(peek_precedence(v.bytes()), Some(p));
                for cut in 0..60 {
                    let _ = peek_precedence(&v.bytes()[..cut]);
                }
            }
        }
        assert_eq!(peek_precedence(b"garbage"), None);
    }

    #[test]
    fn flash_text_is_brief() {
        let s = secret(1);
        let mut e = sample(&s, 1, MessageId::ZERO);
        e.precedence = Precedence::Flash;
        e.body = Body::Text(TextBody {
            language: "en".into(),
            text: "x".repeat(501),
            translations: vec![],
        });
        assert!(matches!(
            VerifiedEnvelope::sign(e, &s),
            Err(EnvelopeError::FlashTextTooLong { .. })
        ));
    }

    #[test]
    fn signed_bytes_are_the_cose_sig_structure() {
        let s = secret(1);
        let v = VerifiedEnvelope::sign(sample(&s, 1, MessageId::ZERO), &s).unwrap();
        let parsed = Parsed::new(v.bytes(), None).unwrap();
        let mut ours = SIG_STRUCTURE_PREFIX.to_vec();
        ours.extend_from_slice(parsed.payload_item);
        let sign1 = CoseSign1::from_tagged_slice(v.bytes()).unwrap();
        assert_eq!(ours, sign1.tbs_data(b""));
        assert_eq!(&parsed.signature[..], &sign1.signature[..]);
    }

    #[test]
    fn reading_in_place_agrees_with_the_value_decoder() {
        let s = secret(1);
        let mut e = sample(&s, 2, MessageId([3; 32]));
        let mut bodies = vec![
            e.body.clone(),
            Body::Receipt(Receipt {
                level: ReceiptLevel::Read,
                target: ReceiptTarget::Message(MessageId([4; 32])),
                note: Some("noted".into()),
            }),
            Body::Receipt(Receipt {
                level: ReceiptLevel::Delivered,
                target: ReceiptTarget::Ranges(vec![(1, 5), (7, 300)]),
                note: None,
            }),
            Body::Test { nonce: [9; 16] },
            Body::Notification(NotificationBody {
                format: "launch".into(),
                version: 70_000,
                fields: vec![
                    ("count".into(), FieldValue::Typed("2".into())),
                    (
                        "remarks".into(),
                        FieldValue::Text(TextBody {
                            language: "en".into(),
                            text: "x".repeat(300),
                            translations: vec![("ru".into(), "да".into())],
                        }),
                    ),
                ],
            }),
        ];
        e.in_reply_to = Some(MessageId([5; 32]));
        for body in bodies.drain(..) {
            e.body = body;
            let payload = encode_payload(&e);
            assert_eq!(read_payload(&payload, None).as_ref(), Some(&e));
            assert_eq!(decode_payload(&payload, None).as_ref(), Ok(&e));
            for n in 0..payload.len() {
                assert_eq!(read_payload(&payload[..n], None), None, "prefix {n}");
            }
            // Whatever a bit flip makes of the payload, reading in place never accepts what
            // the Value decoder refuses, and never reads it differently.
            for bit in 0..payload.len() * 8 {
                let mut flipped = payload.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                if let Some(read) = read_payload(&flipped, None) {
                    assert_eq!(decode_payload(&flipped, None), Ok(read), "bit {bit}");
                }
            }
        }
    }

    #[test]
    fn batch_names_the_bad_one() {
        let s = secret(1);
        let a = VerifiedEnvelope::sign(sample(&s, 1, MessageId::ZERO), &s).unwrap();
        let b = VerifiedEnvelope::sign(sample(&s, 2, a.id()), &s).unwrap();
        let mut bad = b.bytes().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let frames: Vec<&[u8]> = vec![a.bytes(), &bad, b.bytes()];
        let out = VerifiedEnvelope::decode_batch(&frames, &s.public());
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err(EnvelopeError::BadSignature));
        assert!(out[2].is_ok());
    }
}
