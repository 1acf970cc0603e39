//! Envelope properties: random valid envelopes sign and decode back exactly (envelope, bytes,
//! id); the wire form matches an independent, hand-written encoder of the layout of docs/wire-format.md §3; a
//! wrong expected sender, any truncation, any bit flip, random garbage and oversized input
//! are typed errors, never panics; `decode_batch` agrees with `decode`; and correctly
//! *signed* but non-canonical or non-conforming encodings (wide integer heads, indefinite
//! lengths, bignums, maps, extra header fields, other algorithms, fields out of bounds) are
//! refused on receipt.

use detente_proto::envelope::{limits, message_id};
use detente_proto::{
    Body, ChannelId, Envelope, EnvelopeError, FieldValue, MessageId, NotificationBody, PartyKey,
    PartySecret, Precedence, Receipt, ReceiptLevel, ReceiptTarget, TextBody, VerifiedEnvelope,
};
use detente_proto::{Charter, Deadlines, FormatRef, Member, Terms};
use ed25519_dalek::Signer;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use std::time::Duration;

// ---- an independent encoder of the wire form --------------------------------------------

/// A minimal CBOR writer. Every head is counted; `widen` makes head number `n` use a wider
/// argument than the minimal one (width index into the wider widths still available), which
/// is what a non-canonical encoder would emit.
#[derive(Default)]
struct Enc {
    out: Vec<u8>,
    heads: usize,
    widen: Option<(usize, usize)>,
    /// Heads that can be widened, with how many wider widths each has.
    widenable: Vec<(usize, usize)>,
}

impl Enc {
    fn widening(head: usize, choice: usize) -> Self {
        Self {
            widen: Some((head, choice)),
            ..Self::default()
        }
    }

    fn head(&mut self, major: u8, v: u64) {
        let index = self.heads;
        self.heads += 1;
        // Argument length in bytes: 0 means "in the initial byte".
        let minimal: usize = match v {
            0..=23 => 0,
            24..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        let wider: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|w| *w > minimal).collect();
        if !wider.is_empty() {
            self.widenable.push((index, wider.len()));
        }
        let width = match self.widen {
            Some((at, choice)) if at == index && !wider.is_empty() => wider[choice % wider.len()],
            _ => minimal,
        };
        let m = major << 5;
        match width {
            0 => self.out.push(m | v as u8),
            1 => self.out.extend_from_slice(&[m | 24, v as u8]),
            2 => {
                self.out.push(m | 25);
                self.out.extend_from_slice(&(v as u16).to_be_bytes());
            }
            4 => {
                self.out.push(m | 26);
                self.out.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                self.out.push(m | 27);
                self.out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    fn uint(&mut self, v: u64) {
        self.head(0, v);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.out.extend_from_slice(b);
    }
    fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn array(&mut self, n: usize) {
        self.head(4, n as u64);
    }
    fn map(&mut self, n: usize) {
        self.head(5, n as u64);
    }
    fn tag(&mut self, t: u64) {
        self.head(6, t);
    }
    fn null(&mut self) {
        self.out.push(0xf6);
    }
    fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
}

/// The payload as docs/wire-format.md §3 lays it out, written without the crate's encoder.
fn encode_payload_into(enc: &mut Enc, e: &Envelope, version: u64) {
    enc.array(11);
    enc.uint(version);
    enc.bytes(&e.channel.0);
    enc.bytes(e.sender.as_bytes());
    enc.uint(e.seq);
    enc.bytes(&e.prev.0);
    enc.uint(e.created_at_ms);
    enc.uint(e.precedence as u64);
    enc.text(&e.topic);
    enc.text(&e.author);
    match &e.in_reply_to {
        Some(id) => enc.bytes(&id.0),
        None => enc.null(),
    }
    match &e.body {
        Body::Text(t) => {
            enc.array(4);
            enc.uint(0);
            enc.text(&t.language);
            enc.text(&t.text);
            enc.array(t.translations.len());
            for (l, s) in &t.translations {
                enc.array(2);
                enc.text(l);
                enc.text(s);
            }
        }
        Body::Receipt(r) => {
            enc.array(4);
            enc.uint(1);
            enc.uint(r.level as u64);
            match &r.target {
                ReceiptTarget::Ranges(ranges) => {
                    enc.array(ranges.len());
                    for (a, b) in ranges {
                        enc.array(2);
                        enc.uint(*a);
                        enc.uint(*b);
                    }
                }
                ReceiptTarget::Message(id) => enc.bytes(&id.0),
            }
            match &r.note {
                Some(n) => enc.text(n),
                None => enc.null(),
            }
        }
        Body::Test { nonce } => {
            enc.array(2);
            enc.uint(2);
            enc.bytes(nonce);
        }
        Body::Notification(n) => {
            enc.array(4);
            enc.uint(4);
            enc.text(&n.format);
            enc.uint(n.version.into());
            enc.array(n.fields.len());
            for (key, value) in &n.fields {
                enc.array(2);
                enc.text(key);
                match value {
                    FieldValue::Typed(text) => enc.text(text),
                    FieldValue::Text(t) => {
                        enc.array(3);
                        enc.text(&t.language);
                        enc.text(&t.text);
                        enc.array(t.translations.len());
                        for (l, s) in &t.translations {
                            enc.array(2);
                            enc.text(l);
                            enc.text(s);
                        }
                    }
                }
            }
        }
        Body::Charter(c) => {
            enc.array(2);
            enc.uint(6);
            enc.array(6);
            enc.uint(1);
            enc.array(c.members.len());
            for m in &c.members {
                enc.array(6);
                enc.bytes(m.key.as_bytes());
                enc.text(&m.name);
                enc.text(&m.party);
                enc.array(m.addresses.len());
                for a in &m.addresses {
                    enc.text(a);
                }
                enc.text(&m.lang);
                enc.text(&m.tz);
            }
            enc.array(c.formats.len());
            for f in &c.formats {
                enc.array(3);
                enc.text(&f.id);
                enc.uint(u64::from(f.version));
                enc.bytes(&f.digest);
            }
            let d = &c.deadlines;
            enc.array(5);
            for v in [
                d.flash_delivered,
                d.flash_acknowledged,
                d.immediate_acknowledged,
                d.priority_acknowledged,
                d.routine_acknowledged,
            ] {
                enc.uint(v.as_millis() as u64);
            }
            enc.uint(c.link_test_interval.as_millis() as u64);
            enc.array(c.counterparts.len());
            for p in &c.counterparts {
                enc.array(2);
                enc.text(&p.first);
                enc.text(&p.second);
            }
        }
    }
}

fn ref_payload(e: &Envelope) -> Vec<u8> {
    let mut enc = Enc::default();
    encode_payload_into(&mut enc, e, 1);
    enc.out
}

/// The exact protected header: `{1: -19}` (alg: Ed25519).
const PROTECTED: [u8; 3] = [0xa1, 0x01, 0x32];

/// COSE Sig_structure for COSE_Sign1 with empty external AAD (RFC 9052 §4.4), canonical.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.array(4);
    enc.text("Signature1");
    enc.bytes(protected);
    enc.bytes(&[]);
    enc.bytes(payload);
    enc.out
}

fn raw_sign(secret: &PartySecret, protected: &[u8], payload: &[u8]) -> [u8; 64] {
    secret
        .signing_key()
        .sign(&sig_structure(protected, payload))
        .to_bytes()
}

/// Parts of a COSE_Sign1 to write by hand.
struct Cose<'a> {
    tagged: bool,
    protected: &'a [u8],
    /// Raw CBOR of the unprotected header map.
    unprotected: &'a [u8],
    /// `None`: a nil (detached) payload.
    payload: Option<&'a [u8]>,
    signature: &'a [u8],
}

fn encode_cose_into(enc: &mut Enc, c: &Cose) {
    if c.tagged {
        enc.tag(18);
    }
    enc.array(4);
    enc.bytes(c.protected);
    enc.raw(c.unprotected);
    match c.payload {
        Some(p) => enc.bytes(p),
        None => enc.null(),
    }
    enc.bytes(c.signature);
}

/// A correctly signed, canonically framed COSE_Sign1 around an arbitrary payload.
fn cose_signed(secret: &PartySecret, payload: &[u8]) -> Vec<u8> {
    let signature = raw_sign(secret, &PROTECTED, payload);
    let mut enc = Enc::default();
    encode_cose_into(
        &mut enc,
        &Cose {
            tagged: true,
            protected: &PROTECTED,
            unprotected: &[0xa0],
            payload: Some(payload),
            signature: &signature,
        },
    );
    enc.out
}

// ---- strategies -------------------------------------------------------------------------

fn arb_precedence() -> impl Strategy<Value = Precedence> {
    prop::sample::select(Precedence::ALL.to_vec())
}

fn arb_language() -> impl Strategy<Value = String> {
    "[a-z]{2,3}(-[A-Za-z0-9]{1,8}){0,2}"
}

/// Any Unicode scalar values (controls included: texts may carry newlines and tabs).
fn arb_any_text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(|cs| cs.into_iter().collect())
}

/// A text that is not blank: a first non-whitespace character, then anything, at most
/// `max_chars` characters in all.
fn arb_text(max_chars: usize) -> impl Strategy<Value = String> {
    (any::<char>(), vec(any::<char>(), 0..max_chars)).prop_map(|(first, rest)| {
        let first = if first.is_whitespace() { 'x' } else { first };
        std::iter::once(first).chain(rest).collect()
    })
}

/// An author title: no control characters, at most 96 bytes of UTF-8.
fn arb_author() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=96).prop_map(|cs| {
        let mut s = String::new();
        for c in cs {
            let c = if c.is_control() { '.' } else { c };
            if s.len() + c.len_utf8() > limits::AUTHOR_BYTES_MAX {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn arb_text_body(precedence: Precedence) -> impl Strategy<Value = Body> {
    let max_chars = if precedence == Precedence::Flash {
        limits::FLASH_TEXT_CHARS_MAX
    } else {
        // Longer than a FLASH may be, so the rule is exercised.
        800
    };
    (
        arb_language(),
        arb_text(max_chars),
        vec(
            (arb_language(), arb_any_text(300)),
            0..=limits::TRANSLATIONS_MAX,
        ),
    )
        .prop_map(|(language, text, translations)| {
            Body::Text(TextBody {
                language,
                text,
                translations,
            })
        })
}

fn arb_note() -> impl Strategy<Value = Option<String>> {
    option::of(arb_any_text(200))
}

fn arb_receipt() -> impl Strategy<Value = Receipt> {
    let delivered = (
        vec((any::<u64>(), any::<u64>()), 1..=limits::RECEIPT_RANGES_MAX),
        arb_note(),
    )
        .prop_map(|(pairs, note)| Receipt {
            level: ReceiptLevel::Delivered,
            target: ReceiptTarget::Ranges(
                pairs
                    .into_iter()
                    .map(|(a, b)| (a.min(b).max(1), a.max(b).max(1)))
                    .collect(),
            ),
            note,
        });
    let about_one = (
        prop::sample::select(vec![
            ReceiptLevel::Read,
            ReceiptLevel::Acknowledged,
            ReceiptLevel::Declined,
        ]),
        any::<[u8; 32]>(),
        arb_note(),
    )
        .prop_map(|(level, id, note)| Receipt {
            level,
            target: ReceiptTarget::Message(MessageId(id)),
            note,
        });
    prop_oneof![delivered, about_one]
}

fn arb_notification() -> impl Strategy<Value = Body> {
    let value = prop_oneof![
        arb_any_text(200)
            .prop_map(|t| FieldValue::Typed(t.chars().filter(|c| !c.is_control()).collect())),
        (
            arb_language(),
            arb_text(300),
            vec(
                (arb_language(), arb_any_text(100)),
                0..=limits::TRANSLATIONS_MAX
            )
        )
            .prop_map(|(language, text, translations)| FieldValue::Text(TextBody {
                language,
                text,
                translations,
            })),
    ];
    (
        "[a-z][a-z0-9-]{0,31}",
        any::<u32>(),
        // Few enough fields that the largest values still fit one envelope.
        prop::collection::btree_map("[a-z_]{1,32}", value, 1..=8),
    )
        .prop_map(|(format, version, fields)| {
            Body::Notification(NotificationBody {
                format,
                version,
                fields: fields.into_iter().collect(),
            })
        })
}

fn arb_body(precedence: Precedence) -> impl Strategy<Value = Body> {
    prop_oneof![
        arb_notification(),
        arb_text_body(precedence),
        arb_receipt().prop_map(Body::Receipt),
        any::<[u8; 16]>().prop_map(|nonce| Body::Test { nonce }),
        arb_charter().prop_map(Body::Charter),
    ]
}

fn arb_terms(seed: [u8; 32]) -> impl Strategy<Value = Terms> {
    let secs = || 1u64..=2_592_000;
    (
        (
            "[a-z]{1,12}",
            "[A-Za-z 部国防]{0,40}",
            vec("[0-9.:]{3,21}", 0..3),
        ),
        vec(("[a-z-]{1,12}", 1u32..4, any::<[u8; 2]>()), 0..4),
        (secs(), secs(), secs(), secs(), secs(), secs()),
        vec(("[A-Za-z 值班员]{0,20}", "[A-Za-z 值班员]{0,20}"), 0..3),
    )
        .prop_map(
            move |((name, party, addresses), formats, d, counterparts)| Terms {
                member: Member {
                    key: PartySecret::from_seed(seed).public(),
                    name,
                    party,
                    addresses,
                    lang: "en".into(),
                    tz: "UTC".into(),
                },
                formats: formats
                    .into_iter()
                    .map(|(id, version, digest)| FormatRef {
                        id,
                        version,
                        // Few distinct digests, so that both parties often hold the same one.
                        digest: [digest[0] % 2; 32],
                    })
                    .collect(),
                deadlines: Deadlines {
                    flash_delivered: Duration::from_secs(d.0),
                    flash_acknowledged: Duration::from_secs(d.1),
                    immediate_acknowledged: Duration::from_secs(d.2),
                    priority_acknowledged: Duration::from_secs(d.3),
                    routine_acknowledged: Duration::from_secs(d.4),
                },
                link_test_interval: Duration::from_secs(d.5),
                counterparts,
            },
        )
}

fn arb_charter() -> impl Strategy<Value = Charter> {
    (arb_terms([7; 32]), arb_terms([8; 32]))
        .prop_map(|(a, b)| Charter::agree(&a, &b).expect("random valid terms agree"))
}

/// A valid envelope and the seed of its sender.
fn arb_envelope() -> impl Strategy<Value = ([u8; 32], Envelope)> {
    arb_precedence().prop_flat_map(|precedence| {
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            prop_oneof![Just(1u64), 2u64..1000, 2u64..=u64::MAX],
            any::<[u8; 32]>(),
            0..=detente_proto::envelope::limits::CREATED_AT_MS_MAX,
            "[a-z0-9-]{1,32}",
            arb_author(),
            option::of(any::<[u8; 32]>()),
            arb_body(precedence),
        )
            .prop_map(
                move |(seed, channel, seq, prev, created_at_ms, topic, author, reply, body)| {
                    let prev = if seq == 1 {
                        MessageId::ZERO
                    } else if prev == [0; 32] {
                        MessageId([1; 32])
                    } else {
                        MessageId(prev)
                    };
                    let envelope = Envelope {
                        channel: ChannelId(channel),
                        sender: PartySecret::from_seed(seed).public(),
                        seq,
                        prev,
                        created_at_ms,
                        precedence,
                        topic,
                        author,
                        in_reply_to: reply.map(MessageId),
                        body,
                    };
                    (seed, envelope)
                },
            )
    })
}

fn other_key(seed: &[u8; 32]) -> PartyKey {
    let mut other = *seed;
    other[0] ^= 0x55;
    PartySecret::from_seed(other).public()
}

fn sign(seed: [u8; 32], e: &Envelope) -> VerifiedEnvelope {
    VerifiedEnvelope::sign(e.clone(), &PartySecret::from_seed(seed)).expect("valid envelope signs")
}

fn decode(bytes: &[u8], key: &PartyKey) -> Result<VerifiedEnvelope, EnvelopeError> {
    VerifiedEnvelope::decode(bytes, Some(key))
}

// ---- properties of valid envelopes ------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn sign_decode_round_trips_exactly((seed, e) in arb_envelope()) {
        let secret = PartySecret::from_seed(seed);
        let v = sign(seed, &e);
        prop_assert_eq!(v.envelope(), &e);
        prop_assert_eq!(v.id(), message_id(v.bytes()));

        let d = decode(v.bytes(), &secret.public()).unwrap();
        prop_assert_eq!(&d, &v);
        prop_assert_eq!(VerifiedEnvelope::decode(v.bytes(), None).unwrap(), v.clone());
        let (envelope, bytes, id) = d.into_parts();
        prop_assert_eq!(&envelope, &e);
        prop_assert_eq!(&bytes[..], v.bytes());
        prop_assert_eq!(id, v.id());

        // The wire form is exactly the documented layout, written independently here, and the
        // signature is plain Ed25519 over the COSE Sig_structure.
        let payload = ref_payload(&e);
        let signature = raw_sign(&secret, &PROTECTED, &payload);
        let mut enc = Enc::default();
        encode_cose_into(&mut enc, &Cose {
            tagged: true,
            protected: &PROTECTED,
            unprotected: &[0xa0],
            payload: Some(&payload),
            signature: &signature,
        });
        prop_assert_eq!(&enc.out[..], v.bytes());
        prop_assert_eq!(
            detente_proto::sig::verify(
                &secret.public(),
                &sig_structure(&PROTECTED, &payload),
                &signature
            ),
            Ok(())
        );
    }

    #[test]
    fn another_expected_sender_is_wrong_sender((seed, e) in arb_envelope()) {
        let v = sign(seed, &e);
        let other = other_key(&seed);
        prop_assert_eq!(
            decode(v.bytes(), &other),
            Err(EnvelopeError::WrongSender {
                expected: other.fingerprint(),
                presented: e.sender.fingerprint(),
            })
        );
        // Signing with a key that is not the envelope's sender is refused too.
        let mut other_seed = seed;
        other_seed[0] ^= 0x55;
        let r = VerifiedEnvelope::sign(e, &PartySecret::from_seed(other_seed));
        prop_assert!(matches!(r, Err(EnvelopeError::WrongSender { .. })), "{:?}", r);
    }

    #[test]
    fn every_truncation_and_extension_is_refused(
        (seed, e) in arb_envelope(),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let v = sign(seed, &e);
        let key = e.sender;
        for n in 0..v.bytes().len() {
            prop_assert!(decode(&v.bytes()[..n], &key).is_err(), "prefix of {} bytes", n);
            prop_assert!(VerifiedEnvelope::decode(&v.bytes()[..n], None).is_err());
        }
        let mut longer = v.bytes().to_vec();
        longer.extend_from_slice(&extra);
        prop_assert!(decode(&longer, &key).is_err());
    }

    #[test]
    fn single_bit_flips_are_refused(
        (seed, e) in arb_envelope(),
        flips in vec(any::<Index>(), 1..24),
    ) {
        let v = sign(seed, &e);
        let bits = v.bytes().len() * 8;
        for flip in flips {
            let bit = flip.index(bits);
            let mut b = v.bytes().to_vec();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&b, &e.sender).is_err(), "bit {} accepted", bit);
            prop_assert!(VerifiedEnvelope::decode(&b, None).is_err(), "bit {} accepted", bit);
        }
    }

    #[test]
    fn random_byte_overwrites_are_refused(
        (seed, e) in arb_envelope(),
        writes in vec((any::<Index>(), any::<u8>()), 1..6),
    ) {
        let v = sign(seed, &e);
        let mut b = v.bytes().to_vec();
        for (at, byte) in writes {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if b != v.bytes() {
            prop_assert!(decode(&b, &e.sender).is_err());
        }
    }

    #[test]
    fn batch_decoding_agrees_with_single_decoding(
        items in vec((arb_envelope(), any::<Option<Index>>()), 1..6),
    ) {
        // All from one sender (the first one's seed), some corrupted by a bit flip.
        let seed = items[0].0 .0;
        let secret = PartySecret::from_seed(seed);
        let mut frames = Vec::new();
        for ((_, mut e), flip) in items {
            e.sender = secret.public();
            let mut bytes = sign(seed, &e).bytes().to_vec();
            if let Some(flip) = flip {
                let bit = flip.index(bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            frames.push(bytes);
        }
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let batch = VerifiedEnvelope::decode_batch(&refs, &secret.public());
        prop_assert_eq!(batch.len(), frames.len());
        for (one, bytes) in batch.iter().zip(&frames) {
            prop_assert_eq!(one, &decode(bytes, &secret.public()));
        }
    }
}

// ---- garbage ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_is_refused_without_panic(bytes in vec(any::<u8>(), 0..2000)) {
        let key = PartySecret::from_seed([1; 32]).public();
        prop_assert!(decode(&bytes, &key).is_err());
        prop_assert!(VerifiedEnvelope::decode(&bytes, None).is_err());
        let batch = VerifiedEnvelope::decode_batch(&[&bytes, &bytes], &key);
        prop_assert!(batch.iter().all(|r| r.is_err()));
    }

    /// Garbage behind a plausible COSE_Sign1 prefix, so it reaches the payload parser.
    #[test]
    fn garbage_behind_a_cose_prefix_is_refused(
        payload in vec(any::<u8>(), 0..600),
        tail in vec(any::<u8>(), 0..80),
    ) {
        let mut b = vec![0xd2, 0x84, 0x43, 0xa1, 0x01, 0x32, 0xa0];
        let mut enc = Enc::default();
        enc.bytes(&payload);
        b.extend_from_slice(&enc.out);
        b.extend_from_slice(&tail);
        prop_assert!(VerifiedEnvelope::decode(&b, None).is_err());
    }

    /// A correctly signed COSE_Sign1 around a random payload is still refused.
    #[test]
    fn signed_garbage_payload_is_refused(payload in vec(any::<u8>(), 0..600)) {
        let secret = PartySecret::from_seed([2; 32]);
        let b = cose_signed(&secret, &payload);
        prop_assert!(VerifiedEnvelope::decode(&b, None).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn oversized_input_is_too_large(extra in 1usize..4096, fill in any::<u8>()) {
        let len = limits::ENVELOPE_BYTES_MAX + extra;
        let key = PartySecret::from_seed([1; 32]).public();
        let expected = Err(EnvelopeError::TooLarge {
            bytes: len,
            max: limits::ENVELOPE_BYTES_MAX,
        });
        prop_assert_eq!(decode(&vec![fill; len], &key), expected.clone());
        // Even a valid envelope with trailing padding: the size is checked first.
        let secret = PartySecret::from_seed([1; 32]);
        let mut b = sign([1; 32], &fixed_envelope(&secret)).bytes().to_vec();
        b.resize(len, fill);
        prop_assert_eq!(decode(&b, &key), expected);
    }
}

// ---- signed but non-canonical or non-conforming -----------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Any one integer/length head of the payload written wider than necessary, correctly
    /// signed, is `NotCanonical`.
    #[test]
    fn wide_payload_heads_are_not_canonical(
        (seed, e) in arb_envelope(),
        which in any::<Index>(),
        width in any::<usize>(),
    ) {
        let secret = PartySecret::from_seed(seed);
        let mut probe = Enc::default();
        encode_payload_into(&mut probe, &e, 1);
        let (head, _) = probe.widenable[which.index(probe.widenable.len())];
        let mut enc = Enc::widening(head, width);
        encode_payload_into(&mut enc, &e, 1);
        prop_assert_ne!(&enc.out, &probe.out);
        let b = cose_signed(&secret, &enc.out);
        prop_assert_eq!(decode(&b, &e.sender), Err(EnvelopeError::NotCanonical));
    }

    /// Any one head of the COSE structure (tag, array, header and payload lengths) written
    /// wider than necessary is `NotCanonical`; the signature is valid, since the
    /// Sig_structure does not depend on how the outer structure is written.
    #[test]
    fn wide_cose_heads_are_not_canonical(
        (seed, e) in arb_envelope(),
        which in any::<Index>(),
        width in any::<usize>(),
    ) {
        let secret = PartySecret::from_seed(seed);
        let payload = ref_payload(&e);
        let signature = raw_sign(&secret, &PROTECTED, &payload);
        let cose = Cose {
            tagged: true,
            protected: &PROTECTED,
            unprotected: &[],
            payload: Some(&payload),
            signature: &signature,
        };
        // The unprotected header is written as an (empty) map head so it can be widened.
        let write = |enc: &mut Enc| {
            enc.tag(18);
            enc.array(4);
            enc.bytes(cose.protected);
            enc.map(0);
            enc.bytes(&payload);
            enc.bytes(&signature);
        };
        let mut probe = Enc::default();
        write(&mut probe);
        let signed = sign(seed, &e);
        prop_assert_eq!(&probe.out[..], signed.bytes());
        let (head, _) = probe.widenable[which.index(probe.widenable.len())];
        let mut enc = Enc::widening(head, width);
        write(&mut enc);
        prop_assert_eq!(decode(&enc.out, &e.sender), Err(EnvelopeError::NotCanonical));
    }
}

fn fixed_envelope(secret: &PartySecret) -> Envelope {
    let other = PartySecret::from_seed([99; 32]).public();
    Envelope {
        channel: ChannelId::for_pair(&secret.public(), &other),
        sender: secret.public(),
        seq: 5,
        prev: MessageId([7; 32]),
        created_at_ms: 1_700_000_000_000,
        precedence: Precedence::Immediate,
        topic: "general".into(),
        author: "Duty Officer".into(),
        in_reply_to: None,
        body: Body::Text(TextBody {
            language: "en".into(),
            text: "hello".into(),
            translations: vec![("fr".into(), "bonjour".into())],
        }),
    }
}

/// Offset of `seq` in the payload: array head, version, two 34-byte byte strings.
const SEQ_OFFSET: usize = 1 + 1 + 34 + 34;

#[test]
fn seq_in_every_wider_width_is_not_canonical() {
    let secret = PartySecret::from_seed([3; 32]);
    let e = fixed_envelope(&secret);
    let payload = ref_payload(&e);
    assert_eq!(payload[SEQ_OFFSET], 0x05, "seq 5 is one byte");
    // Sanity: the unmodified payload is accepted.
    let ok = cose_signed(&secret, &payload);
    assert_eq!(ok, sign([3; 32], &e).bytes());
    for wide in [
        &[0x18, 5][..],
        &[0x19, 0, 5],
        &[0x1a, 0, 0, 0, 5],
        &[0x1b, 0, 0, 0, 0, 0, 0, 0, 5],
    ] {
        let mut p = payload[..SEQ_OFFSET].to_vec();
        p.extend_from_slice(wide);
        p.extend_from_slice(&payload[SEQ_OFFSET + 1..]);
        let b = cose_signed(&secret, &p);
        assert_eq!(
            decode(&b, &secret.public()),
            Err(EnvelopeError::NotCanonical),
            "seq written as {wide:02x?}"
        );
    }
}

/// Replace the `seq` item (one byte in the canonical payload) with other bytes, re-sign.
fn with_seq_item(secret: &PartySecret, e: &Envelope, item: &[u8]) -> Vec<u8> {
    let payload = ref_payload(e);
    assert!(e.seq < 24);
    let mut p = payload[..SEQ_OFFSET].to_vec();
    p.extend_from_slice(item);
    p.extend_from_slice(&payload[SEQ_OFFSET + 1..]);
    cose_signed(secret, &p)
}

#[test]
fn other_non_canonical_payloads_are_refused() {
    let secret = PartySecret::from_seed([3; 32]);
    let key = secret.public();
    let e = fixed_envelope(&secret);
    let payload = ref_payload(&e);

    // seq as a bignum (tag 2, one byte 0x05): the same number, not the canonical form.
    let b = with_seq_item(&secret, &e, &[0xc2, 0x41, 0x05]);
    let r = decode(&b, &key);
    assert!(
        matches!(
            r,
            Err(EnvelopeError::NotCanonical | EnvelopeError::Malformed(_))
        ),
        "bignum seq: {r:?}"
    );
    // seq as a float.
    let b = with_seq_item(&secret, &e, &[0xf9, 0x45, 0x00]); // 5.0 as half float
    assert!(matches!(decode(&b, &key), Err(EnvelopeError::Malformed(_))));

    // Trailing bytes after the payload item.
    for tail in [&[0x00][..], &[0xf6], &[0x05, 0x05]] {
        let mut p = payload.clone();
        p.extend_from_slice(tail);
        let r = decode(&cose_signed(&secret, &p), &key);
        assert!(
            matches!(
                r,
                Err(EnvelopeError::NotCanonical | EnvelopeError::Malformed(_))
            ),
            "tail {tail:02x?}: {r:?}"
        );
    }

    // Indefinite-length payload array: 0x9f ... 0xff.
    let mut p = vec![0x9f];
    p.extend_from_slice(&payload[1..]);
    p.push(0xff);
    assert_eq!(
        decode(&cose_signed(&secret, &p), &key),
        Err(EnvelopeError::NotCanonical)
    );

    // Indefinite-length (chunked) topic "general" = "gen" + "eral".
    let mut enc = Enc::default();
    let mut chunked = e.clone();
    chunked.topic = "\u{0}".into(); // placeholder, replaced below
    encode_payload_into(&mut enc, &chunked, 1);
    let placeholder = [0x61, 0x00];
    let at = enc
        .out
        .windows(2)
        .position(|w| w == placeholder)
        .expect("placeholder topic");
    let mut p = enc.out[..at].to_vec();
    p.extend_from_slice(&[
        0x7f, 0x63, b'g', b'e', b'n', 0x64, b'e', b'r', b'a', b'l', 0xff,
    ]);
    p.extend_from_slice(&enc.out[at + 2..]);
    assert_eq!(
        decode(&cose_signed(&secret, &p), &key),
        Err(EnvelopeError::NotCanonical)
    );

    // The payload as a map {index: item} instead of an array.
    let mut p = vec![0xab];
    let mut rest = &payload[1..];
    for i in 0..11u8 {
        p.push(i);
        let len = item_len(rest);
        p.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    assert!(rest.is_empty());
    assert!(matches!(
        decode(&cose_signed(&secret, &p), &key),
        Err(EnvelopeError::Malformed(_))
    ));

    // An array of 12 items (one extra null), and of 10 (body missing).
    let mut p = payload.clone();
    p[0] = 0x8c;
    p.push(0xf6);
    assert!(matches!(
        decode(&cose_signed(&secret, &p), &key),
        Err(EnvelopeError::Malformed(_))
    ));

    // Version 2.
    let mut enc = Enc::default();
    encode_payload_into(&mut enc, &e, 2);
    assert_eq!(
        decode(&cose_signed(&secret, &enc.out), &key),
        Err(EnvelopeError::UnsupportedVersion(2))
    );
}

/// Length of the first CBOR item of `b` (definite lengths, the subset the payload uses).
fn item_len(b: &[u8]) -> usize {
    let major = b[0] >> 5;
    let info = b[0] & 0x1f;
    let (arg, head) = match info {
        0..=23 => (u64::from(info), 1),
        24 => (u64::from(b[1]), 2),
        25 => (u64::from(u16::from_be_bytes([b[1], b[2]])), 3),
        26 => (
            u64::from(u32::from_be_bytes(b[1..5].try_into().unwrap())),
            5,
        ),
        27 => (u64::from_be_bytes(b[1..9].try_into().unwrap()), 9),
        _ => panic!("indefinite length in a canonical payload"),
    };
    match major {
        0 | 1 | 7 => head,
        2 | 3 => head + arg as usize,
        4 => {
            let mut len = head;
            for _ in 0..arg {
                len += item_len(&b[len..]);
            }
            len
        }
        5 => {
            let mut len = head;
            for _ in 0..arg * 2 {
                len += item_len(&b[len..]);
            }
            len
        }
        _ => head + item_len(&b[head..]),
    }
}

/// A COSE_Sign1 to build by hand: canonical and correctly signed unless a field is changed.
/// With `signature: None` it is signed over whatever protected header and payload it has.
struct Parts {
    tagged: bool,
    protected: Vec<u8>,
    unprotected: Vec<u8>,
    payload: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
}

impl Parts {
    fn new(payload: &[u8]) -> Self {
        Self {
            tagged: true,
            protected: PROTECTED.to_vec(),
            unprotected: vec![0xa0],
            payload: Some(payload.to_vec()),
            signature: None,
        }
    }

    fn build(&self, secret: &PartySecret) -> Vec<u8> {
        let payload = self.payload.as_deref();
        let signature = self.signature.clone().unwrap_or_else(|| {
            raw_sign(secret, &self.protected, payload.unwrap_or_default()).to_vec()
        });
        let mut enc = Enc::default();
        encode_cose_into(
            &mut enc,
            &Cose {
                tagged: self.tagged,
                protected: &self.protected,
                unprotected: &self.unprotected,
                payload,
                signature: &signature,
            },
        );
        enc.out
    }
}

#[test]
fn non_conforming_cose_headers_are_refused() {
    let secret = PartySecret::from_seed([4; 32]);
    let key = secret.public();
    let e = fixed_envelope(&secret);
    let payload = ref_payload(&e);
    let build = |edit: &dyn Fn(&mut Parts)| {
        let mut parts = Parts::new(&payload);
        edit(&mut parts);
        parts.build(&secret)
    };
    assert_eq!(
        build(&|_| {}),
        sign([4; 32], &e).bytes(),
        "the builder writes the canonical form by default"
    );

    for protected in [
        &[0xa1, 0x01, 0x27][..],               // alg: EdDSA (-8)
        &[0xa1, 0x01, 0x26],                   // alg: ES256 (-7)
        &[0xa1, 0x01, 0x38, 0x12],             // -19, but not minimally encoded
        &[0xa2, 0x01, 0x32, 0x04, 0x41, 0x00], // plus a kid
        &[0xa0],                               // empty map
        &[],                                   // zero-length: no protected header at all
    ] {
        let r = decode(&build(&|p| p.protected = protected.to_vec()), &key);
        assert!(
            matches!(
                r,
                Err(EnvelopeError::InvalidField {
                    field: "protected header",
                    ..
                })
            ),
            "protected {protected:02x?}: {r:?}"
        );
    }

    for unprotected in [
        &[0xa1, 0x04, 0x41, 0x00][..], // kid
        &[0xa1, 0x01, 0x32],           // alg, unprotected
        &[0xa1, 0x20, 0x00],           // a private-use label
    ] {
        let r = decode(&build(&|p| p.unprotected = unprotected.to_vec()), &key);
        assert!(
            matches!(
                r,
                Err(EnvelopeError::InvalidField {
                    field: "unprotected header",
                    ..
                })
            ),
            "unprotected {unprotected:02x?}: {r:?}"
        );
    }

    let r = decode(&build(&|p| p.tagged = false), &key);
    assert!(matches!(r, Err(EnvelopeError::Malformed(_))), "{r:?}");
    let r = decode(&build(&|p| p.payload = None), &key);
    assert!(matches!(r, Err(EnvelopeError::Malformed(_))), "{r:?}");

    // Signatures of the wrong length, a well-formed signature by another key, and the
    // right signature with S + L (malleated, non-canonical scalar).
    let good = raw_sign(&secret, &PROTECTED, &payload);
    let forged = raw_sign(&PartySecret::from_seed([5; 32]), &PROTECTED, &payload);
    let mut malleated = good;
    add_group_order(&mut malleated[32..]);
    for sig in [
        Vec::new(),
        good[..63].to_vec(),
        [&good[..], &[0]].concat(),
        vec![0; 64],
        forged.to_vec(),
        malleated.to_vec(),
    ] {
        let r = decode(&build(&|p| p.signature = Some(sig.clone())), &key);
        assert_eq!(r, Err(EnvelopeError::BadSignature), "signature {sig:02x?}");
    }
}

/// Adds the Ed25519 group order L to a little-endian 32-byte scalar.
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (byte, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
}

/// Fields out of bounds are refused when signing *and* when received correctly signed from
/// a sender that does not check them.
#[test]
fn out_of_bounds_fields_are_refused_both_ways() {
    let secret = PartySecret::from_seed([6; 32]);
    let key = secret.public();
    let base = fixed_envelope(&secret);
    let text = |t: &str| {
        Body::Text(TextBody {
            language: "en".into(),
            text: t.into(),
            translations: vec![],
        })
    };
    type Edit = Box<dyn Fn(&mut Envelope)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("seq 0", Box::new(|e| e.seq = 0)),
        ("seq 1 with prev", Box::new(|e| e.seq = 1)),
        (
            "seq 2 without prev",
            Box::new(|e| {
                e.seq = 2;
                e.prev = MessageId::ZERO;
            }),
        ),
        ("empty topic", Box::new(|e| e.topic = String::new())),
        ("upper-case topic", Box::new(|e| e.topic = "General".into())),
        ("topic with space", Box::new(|e| e.topic = "a b".into())),
        ("long topic", Box::new(|e| e.topic = "a".repeat(33))),
        ("long author", Box::new(|e| e.author = "é".repeat(49))),
        (
            "author with newline",
            Box::new(|e| e.author = "Duty\nOfficer".into()),
        ),
        (
            "author with DEL",
            Box::new(|e| e.author = "Duty\u{7f}".into()),
        ),
        ("blank text", Box::new(move |e| e.body = text(" \n\t "))),
        ("empty text", Box::new(move |e| e.body = text(""))),
        (
            "long text",
            Box::new(move |e| e.body = text(&"x".repeat(limits::TEXT_BYTES_MAX + 1))),
        ),
        (
            "long FLASH",
            Box::new(move |e| {
                e.precedence = Precedence::Flash;
                e.body = text(&"é".repeat(limits::FLASH_TEXT_CHARS_MAX + 1));
            }),
        ),
        (
            "bad language",
            Box::new(|e| {
                e.body = Body::Text(TextBody {
                    language: "en_US".into(),
                    text: "hi".into(),
                    translations: vec![],
                })
            }),
        ),
        (
            "empty language",
            Box::new(|e| {
                e.body = Body::Text(TextBody {
                    language: String::new(),
                    text: "hi".into(),
                    translations: vec![],
                })
            }),
        ),
        (
            "five translations",
            Box::new(|e| {
                e.body = Body::Text(TextBody {
                    language: "en".into(),
                    text: "hi".into(),
                    translations: vec![("fr".into(), "salut".into()); 5],
                })
            }),
        ),
        (
            "delivered naming a message",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Delivered,
                    target: ReceiptTarget::Message(MessageId([1; 32])),
                    note: None,
                })
            }),
        ),
        (
            "read naming ranges",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Read,
                    target: ReceiptTarget::Ranges(vec![(1, 2)]),
                    note: None,
                })
            }),
        ),
        (
            "no ranges",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Delivered,
                    target: ReceiptTarget::Ranges(vec![]),
                    note: None,
                })
            }),
        ),
        (
            "65 ranges",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Delivered,
                    target: ReceiptTarget::Ranges(vec![(1, 1); 65]),
                    note: None,
                })
            }),
        ),
        (
            "range from 0",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Delivered,
                    target: ReceiptTarget::Ranges(vec![(0, 3)]),
                    note: None,
                })
            }),
        ),
        (
            "reversed range",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Delivered,
                    target: ReceiptTarget::Ranges(vec![(4, 3)]),
                    note: None,
                })
            }),
        ),
        (
            "long note",
            Box::new(|e| {
                e.body = Body::Receipt(Receipt {
                    level: ReceiptLevel::Read,
                    target: ReceiptTarget::Message(MessageId([1; 32])),
                    note: Some("n".repeat(limits::NOTE_BYTES_MAX + 1)),
                })
            }),
        ),
    ];
    for (name, edit) in cases {
        let mut e = base.clone();
        edit(&mut e);
        let written = VerifiedEnvelope::sign(e.clone(), &secret);
        assert!(written.is_err(), "{name}: signed");
        let received = decode(&cose_signed(&secret, &ref_payload(&e)), &key);
        assert!(received.is_err(), "{name}: accepted on receipt");
        // Same reason both ways, except where the decoder refuses structurally first.
        if !matches!(received, Err(EnvelopeError::Malformed(_))) {
            assert_eq!(received.err(), written.err(), "{name}");
        }
    }
}

#[test]
fn limits_are_inclusive() {
    let secret = PartySecret::from_seed([7; 32]);
    let mut e = fixed_envelope(&secret);
    e.precedence = Precedence::Flash;
    e.topic = "a".repeat(limits::TOPIC_BYTES_MAX);
    e.author = "é".repeat(limits::AUTHOR_BYTES_MAX / 2);
    e.body = Body::Text(TextBody {
        language: "zh-Hant-CN".into(),
        text: "é".repeat(limits::FLASH_TEXT_CHARS_MAX),
        translations: vec![("en".into(), String::new()); limits::TRANSLATIONS_MAX],
    });
    let v = sign([7; 32], &e);
    assert_eq!(decode(v.bytes(), &secret.public()).unwrap(), v);

    e.precedence = Precedence::Routine;
    e.body = Body::Text(TextBody {
        language: "en".into(),
        text: "x".repeat(limits::TEXT_BYTES_MAX),
        translations: vec![],
    });
    let v = sign([7; 32], &e);
    assert_eq!(decode(v.bytes(), &secret.public()).unwrap(), v);

    // Every field within its own bound, but the whole over the envelope bound.
    e.body = Body::Text(TextBody {
        language: "en".into(),
        text: "x".repeat(limits::TEXT_BYTES_MAX),
        translations: vec![("fr".into(), "y".repeat(limits::TEXT_BYTES_MAX)); 4],
    });
    assert!(matches!(
        VerifiedEnvelope::sign(e, &secret),
        Err(EnvelopeError::TooLarge { .. })
    ));
}
