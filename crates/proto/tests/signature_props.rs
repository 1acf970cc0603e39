//! The signature rule (`detente_proto::sig`, docs/wire-format.md §5.4): batches of random
//! signatures of every kind — valid, signer-made torsion-R, bit-flipped messages and
//! signatures, wrong keys, non-canonical S (S + ℓ), non-canonical R encodings, small-order R —
//! in random positions. Batch verification gives each item exactly the single verdict, and
//! each kind gets the verdict the rule says.

use common::{challenge, plus_order, secret_scalar};
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use detente_proto::sig::{self, Prepared, SignatureError, BATCH_SIGNATURES_MAX};
use detente_proto::{PartyKey, PartySecret};
use proptest::collection::vec;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

mod common;

/// A signature by `seed` with nonce point `[r]B + extra` (extra: a torsion point or the
/// identity): `S = r + k·a` with `k` hashed over the shifted R, as only the key holder can.
fn sign_with(seed: &[u8; 32], r: Scalar, extra: EdwardsPoint, message: &[u8]) -> [u8; 64] {
    let key = PartySecret::from_seed(*seed).public();
    let r_bytes = (ED25519_BASEPOINT_POINT * r + extra).compress().0;
    let s = r + challenge(&r_bytes, key.as_bytes(), message) * secret_scalar(seed);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r_bytes);
    out[32..].copy_from_slice(s.as_bytes());
    out
}

/// A signature with the given R bytes whose equation holds when R decodes to a small-order
/// point: `S = k·a`, so `[S]B − [k]A = 𝒪`.
fn sign_with_r_bytes(seed: &[u8; 32], r_bytes: [u8; 32], message: &[u8]) -> [u8; 64] {
    let key = PartySecret::from_seed(*seed).public();
    let s = challenge(&r_bytes, key.as_bytes(), message) * secret_scalar(seed);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r_bytes);
    out[32..].copy_from_slice(s.as_bytes());
    out
}

/// Non-canonical encodings of points: y + p for the small y that are on the curve (both
/// signs), the identity with the sign bit set, and −1 (order 2) with the sign bit set.
fn non_canonical_encodings() -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for y in 0u8..19 {
        for sign in [0u8, 0x80] {
            let mut b = [0xffu8; 32];
            b[0] = 0xed + y;
            b[31] = 0x7f | sign;
            if CompressedEdwardsY(b).decompress().is_some() {
                out.push(b);
            }
        }
    }
    let mut negative_identity = [0u8; 32];
    negative_identity[0] = 1;
    negative_identity[31] = 0x80;
    out.push(negative_identity);
    let mut negative_minus_one = [0xffu8; 32];
    negative_minus_one[0] = 0xec;
    out.push(negative_minus_one);
    assert!(out.len() > 6, "several small y are on the curve");
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    TorsionR,
    FlippedMessage,
    FlippedSignature,
    WrongKey,
    NonCanonicalS,
    NonCanonicalR,
    SmallOrderR,
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Valid),
        2 => Just(Kind::TorsionR),
        1 => Just(Kind::FlippedMessage),
        1 => Just(Kind::FlippedSignature),
        1 => Just(Kind::WrongKey),
        1 => Just(Kind::NonCanonicalS),
        1 => Just(Kind::NonCanonicalR),
        1 => Just(Kind::SmallOrderR),
    ]
}

struct Case {
    kind: Kind,
    key: PartyKey,
    message: Vec<u8>,
    signature: [u8; 64],
}

/// One signature of the given kind. `seed`: the signer (one of three); `pick`: randomness
/// for nonces, torsion points, flipped bits and encodings.
fn make(kind: Kind, seed: [u8; 32], message: Vec<u8>, pick: [u8; 64]) -> Case {
    let key = PartySecret::from_seed(seed).public();
    let r = Scalar::from_bytes_mod_order_wide(&pick);
    let choose = |n: usize| usize::from(pick[0]) % n;
    let torsion = EIGHT_TORSION[1 + choose(7)];
    let mut message = message;
    let (key, signature) = match kind {
        Kind::Valid => (key, sign_with(&seed, r, EdwardsPoint::default(), &message)),
        Kind::TorsionR => (key, sign_with(&seed, r, torsion, &message)),
        Kind::FlippedMessage => {
            let signature = sign_with(&seed, r, EdwardsPoint::default(), &message);
            if message.is_empty() {
                message.push(0);
            } else {
                let bit = usize::from(pick[1]) % (message.len() * 8);
                message[bit / 8] ^= 1 << (bit % 8);
            }
            (key, signature)
        }
        Kind::FlippedSignature => {
            let mut signature = sign_with(&seed, r, EdwardsPoint::default(), &message);
            let bit = usize::from(pick[1]) * 2 + usize::from(pick[2] & 1);
            signature[bit / 8] ^= 1 << (bit % 8);
            (key, signature)
        }
        Kind::WrongKey => {
            let mut other = seed;
            other[0] ^= 0x5a;
            let signature = sign_with(&other, r, EdwardsPoint::default(), &message);
            (key, signature)
        }
        Kind::NonCanonicalS => {
            let mut signature = sign_with(&seed, r, EdwardsPoint::default(), &message);
            let s = plus_order(&signature[32..]);
            signature[32..].copy_from_slice(&s);
            (key, signature)
        }
        Kind::NonCanonicalR => {
            let encodings = non_canonical_encodings();
            let r_bytes = encodings[choose(encodings.len())];
            (key, sign_with_r_bytes(&seed, r_bytes, &message))
        }
        Kind::SmallOrderR => {
            let r_bytes = EIGHT_TORSION[choose(8)].compress().0;
            (key, sign_with_r_bytes(&seed, r_bytes, &message))
        }
    };
    Case {
        kind,
        key,
        message,
        signature,
    }
}

fn expected_ok(kind: Kind) -> bool {
    matches!(kind, Kind::Valid | Kind::TorsionR)
}

fn expected_error(kind: Kind) -> Option<SignatureError> {
    match kind {
        Kind::FlippedMessage | Kind::WrongKey => Some(SignatureError::Equation),
        Kind::NonCanonicalS => Some(SignatureError::NonCanonicalS),
        Kind::NonCanonicalR => Some(SignatureError::NonCanonicalR),
        Kind::SmallOrderR => Some(SignatureError::SmallOrderR),
        // A flipped bit can break any condition.
        Kind::Valid | Kind::TorsionR | Kind::FlippedSignature => None,
    }
}

/// The per-item verdicts of batch verification, for items whose encodings pass.
fn batch_verdicts(cases: &[Case], rng_seed: u64) -> Vec<Result<(), SignatureError>> {
    let prepared: Vec<Result<Prepared, SignatureError>> = cases
        .iter()
        .map(|c| Prepared::new(&c.key, &c.signature, &[&c.message]))
        .collect();
    let ready: Vec<Prepared> = prepared.iter().filter_map(|p| p.ok()).collect();
    let mut verdicts = sig::verify_batch(&ready, &mut StdRng::seed_from_u64(rng_seed)).into_iter();
    prepared
        .into_iter()
        .map(|p| p.and_then(|_| verdicts.next().expect("one verdict per prepared item")))
        .collect()
}

const SEEDS: [[u8; 32]; 3] = [[1; 32], [2; 32], [3; 32]];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn batch_verdicts_are_single_verdicts(
        items in vec(
            (arb_kind(), 0usize..3, vec(any::<u8>(), 0..80), prop::array::uniform32(any::<u8>()),
                prop::array::uniform32(any::<u8>())),
            1..40,
        ),
        rng_seed in any::<u64>(),
    ) {
        let cases: Vec<Case> = items
            .into_iter()
            .map(|(kind, who, message, low, high)| {
                let mut pick = [0u8; 64];
                pick[..32].copy_from_slice(&low);
                pick[32..].copy_from_slice(&high);
                make(kind, SEEDS[who], message, pick)
            })
            .collect();
        let batch = batch_verdicts(&cases, rng_seed);
        for (i, (case, in_batch)) in cases.iter().zip(&batch).enumerate() {
            let single = sig::verify(&case.key, &case.message, &case.signature);
            prop_assert_eq!(in_batch, &single, "item {} ({:?})", i, case.kind);
            prop_assert_eq!(
                single.is_ok(),
                expected_ok(case.kind),
                "item {} ({:?}): {:?}", i, case.kind, single
            );
            if let Some(error) = expected_error(case.kind) {
                prop_assert_eq!(single, Err(error), "item {} ({:?})", i, case.kind);
            }
        }
    }
}

/// A flipped signature bit never verifies (checked apart from the property above, which
/// cannot name the failing condition in advance).
#[test]
fn every_flipped_signature_bit_is_refused() {
    let seed = SEEDS[0];
    let key = PartySecret::from_seed(seed).public();
    let signature = sign_with(&seed, Scalar::from(12345u64), EdwardsPoint::default(), b"m");
    assert_eq!(sig::verify(&key, b"m", &signature), Ok(()));
    for bit in 0..512 {
        let mut s = signature;
        s[bit / 8] ^= 1 << (bit % 8);
        assert!(sig::verify(&key, b"m", &s).is_err(), "bit {bit}");
    }
}

/// Batches longer than one multiscalar multiplication, with one bad item in the second part:
/// only that item is refused.
#[test]
fn long_batches_name_exactly_the_bad_items() {
    let n = BATCH_SIGNATURES_MAX * 2 + 5;
    let cases: Vec<Case> = (0..n)
        .map(|i| {
            let kind = match i {
                7 => Kind::TorsionR,
                i if i == BATCH_SIGNATURES_MAX + 3 => Kind::FlippedMessage,
                _ => Kind::Valid,
            };
            let mut pick = [0u8; 64];
            pick[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            make(
                kind,
                SEEDS[i % 3],
                format!("message {i}").into_bytes(),
                pick,
            )
        })
        .collect();
    let batch = batch_verdicts(&cases, 7);
    for (i, verdict) in batch.iter().enumerate() {
        if i == BATCH_SIGNATURES_MAX + 3 {
            assert_eq!(verdict, &Err(SignatureError::Equation));
        } else {
            assert_eq!(verdict, &Ok(()), "item {i}");
        }
    }
}

/// Keys: small-order and non-canonical encodings are refused when parsed, so no signature by
/// them can verify; a key with a torsion component is a valid key under the rule.
#[test]
fn keys_are_checked_at_parse() {
    for point in EIGHT_TORSION {
        assert!(PartyKey::from_bytes(point.compress().0).is_err());
    }
    for bytes in non_canonical_encodings() {
        assert!(PartyKey::from_bytes(bytes).is_err());
    }
    let honest = PartySecret::from_seed(SEEDS[0]).public();
    let shifted = CompressedEdwardsY(*honest.as_bytes()).decompress().unwrap() + EIGHT_TORSION[1];
    assert!(PartyKey::from_bytes(shifted.compress().0).is_ok());
}
