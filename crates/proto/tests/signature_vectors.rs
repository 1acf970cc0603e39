//! Fixed test vectors for the signature rule (docs/wire-format.md §5.4) in
//! `testdata/signature-v1.json`: public key, message, signature and the verdict, for a valid
//! signature and for each edge case the rule decides — signer-made torsion components in R
//! and in the key, non-canonical S, small-order and non-canonical R, R not on the curve,
//! small-order and non-canonical keys, wrong key, changed message. Each vector also says what
//! a cofactorless strict verifier (ed25519-dalek's `verify_strict`) answers, to show where
//! such a verifier does not conform. The test checks every verdict singly and in one batch,
//! and that the file is exactly what the generator writes.
//!
//! Regenerate (only after a deliberate change of the rule) with
//! `DETENTE_WRITE_VECTORS=1 cargo test -p detente-proto --test signature_vectors`.

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use detente_proto::sig::{self, Prepared, SignatureError};
use detente_proto::{PartyKey, PartySecret};
use rand::rngs::StdRng;
use rand::SeedableRng;

use common::{challenge, plus_order, secret_scalar};
use serde_json::{json, Value};
use sha2::{Digest, Sha512};

mod common;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/signature-v1.json");

const SEED: [u8; 32] = [1; 32];

fn signature(r: &[u8; 32], s: &Scalar) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(r);
    out[32..].copy_from_slice(s.as_bytes());
    out
}

/// A fixed nonce per vector, derived from its name.
fn nonce(name: &str) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&Sha512::digest(name.as_bytes()).into())
}

/// `S = r + k·a` for R = `[r]B + extra` and key bytes `key` (a shifted key is signed for
/// with the same secret scalar `a`).
fn sign(name: &str, key: &[u8; 32], extra: EdwardsPoint, message: &[u8]) -> [u8; 64] {
    let r = nonce(name);
    let r_bytes = (ED25519_BASEPOINT_POINT * r + extra).compress().0;
    let s = r + challenge(&r_bytes, key, message) * secret_scalar(&SEED);
    signature(&r_bytes, &s)
}

/// R given as bytes, `S = k·a`: the equation holds when R decodes to a small-order point.
fn sign_small_r(r_bytes: [u8; 32], key: &[u8; 32], message: &[u8]) -> [u8; 64] {
    signature(
        &r_bytes,
        &(challenge(&r_bytes, key, message) * secret_scalar(&SEED)),
    )
}

/// y + p for the smallest y ≥ 2 that is on the curve: a non-canonical encoding of a point
/// of large order.
fn non_canonical_large_point() -> [u8; 32] {
    (2u8..19)
        .map(|y| {
            let mut b = [0xffu8; 32];
            b[0] = 0xed + y;
            b[31] = 0x7f;
            b
        })
        .find(|b| {
            CompressedEdwardsY(*b)
                .decompress()
                .is_some_and(|p| !p.is_small_order())
        })
        .expect("some small y is on the curve")
}

/// The first y = 2, 3, … whose encoding is not on the curve.
fn not_on_curve() -> [u8; 32] {
    (2u8..=255)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| CompressedEdwardsY(*b).decompress().is_none())
        .expect("some y is not on the curve")
}

/// (name, key bytes, message, signature, expected error or none).
type Vector = (
    &'static str,
    [u8; 32],
    Vec<u8>,
    [u8; 64],
    Option<SignatureError>,
);

fn vectors() -> Vec<Vector> {
    let key = *PartySecret::from_seed(SEED).public().as_bytes();
    let a = CompressedEdwardsY(key).decompress().unwrap();
    let message = b"detente signature vector".to_vec();
    let m = || message.clone();
    let valid = sign("valid", &key, EdwardsPoint::default(), &message);
    let mut out: Vec<Vector> = vec![
        ("valid", key, m(), valid, None),
        (
            "torsion-r: R + T (T of order 8), S = r + k·a",
            key,
            m(),
            sign("torsion-r", &key, EIGHT_TORSION[1], &message),
            None,
        ),
        (
            "torsion-r-order-2: R + T (T of order 2)",
            key,
            m(),
            sign("torsion-r-order-2", &key, EIGHT_TORSION[4], &message),
            None,
        ),
    ];
    let shifted = (a + EIGHT_TORSION[3]).compress().0;
    out.push((
        "torsion-key: A + T (T of order 8), signed with A's secret",
        shifted,
        m(),
        sign("torsion-key", &shifted, EdwardsPoint::default(), &message),
        None,
    ));
    let mut high_s = valid;
    high_s[32..].copy_from_slice(&plus_order(&valid[32..]));
    out.push((
        "s-not-canonical: S + ℓ",
        key,
        m(),
        high_s,
        Some(SignatureError::NonCanonicalS),
    ));
    let identity = EdwardsPoint::default().compress().0;
    out.push((
        "r-identity: R = identity, S = k·a (the equation holds)",
        key,
        m(),
        sign_small_r(identity, &key, &message),
        Some(SignatureError::SmallOrderR),
    ));
    out.push((
        "r-small-order: R of order 8, S = k·a (the equation holds)",
        key,
        m(),
        sign_small_r(EIGHT_TORSION[1].compress().0, &key, &message),
        Some(SignatureError::SmallOrderR),
    ));
    let mut identity_plus_p = [0xffu8; 32];
    identity_plus_p[0] = 0xee;
    identity_plus_p[31] = 0x7f;
    out.push((
        "r-non-canonical-identity: y = p + 1, S = k·a (the equation holds)",
        key,
        m(),
        sign_small_r(identity_plus_p, &key, &message),
        Some(SignatureError::NonCanonicalR),
    ));
    let mut negative_zero = identity;
    negative_zero[31] |= 0x80;
    out.push((
        "r-negative-zero: the identity with the sign bit set, S = k·a",
        key,
        m(),
        sign_small_r(negative_zero, &key, &message),
        Some(SignatureError::NonCanonicalR),
    ));
    let mut r_large = valid;
    r_large[..32].copy_from_slice(&non_canonical_large_point());
    out.push((
        "r-non-canonical: y + p for a point of large order",
        key,
        m(),
        r_large,
        Some(SignatureError::NonCanonicalR),
    ));
    let mut r_off = valid;
    r_off[..32].copy_from_slice(&not_on_curve());
    out.push((
        "r-not-on-curve",
        key,
        m(),
        r_off,
        Some(SignatureError::InvalidR),
    ));
    let mut small_key_sig = [0u8; 64];
    small_key_sig[..32].copy_from_slice(&identity);
    out.push((
        "key-small-order: A = R = identity, S = 0 (the equation holds for any message)",
        identity,
        m(),
        small_key_sig,
        Some(SignatureError::InvalidKey),
    ));
    out.push((
        "key-non-canonical: y + p for a point of large order",
        non_canonical_large_point(),
        m(),
        valid,
        Some(SignatureError::InvalidKey),
    ));
    let other = *PartySecret::from_seed([2; 32]).public().as_bytes();
    out.push((
        "wrong-key",
        other,
        m(),
        valid,
        Some(SignatureError::Equation),
    ));
    out.push((
        "message-changed",
        key,
        b"detente signature vectoR".to_vec(),
        valid,
        Some(SignatureError::Equation),
    ));
    out
}

/// What ed25519-dalek's cofactorless `verify_strict` answers, for comparison.
fn cofactorless_strict(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(key).is_ok_and(|k| {
        k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    })
}

fn generate() -> Value {
    let list: Vec<Value> = vectors()
        .into_iter()
        .map(|(name, key, message, signature, error)| {
            json!({
                "name": name,
                "public_key": hex::encode(key),
                "message": hex::encode(&message),
                "signature": hex::encode(signature),
                "valid": error.is_none(),
                "reason": error.map(|e| e.to_string()),
                "cofactorless_strict_valid": cofactorless_strict(&key, &message, &signature),
            })
        })
        .collect();
    json!({
        "description": "detente Ed25519 signature rule v1 (docs/wire-format.md §5.4: canonical S, canonical R and A not of small order, cofactored equation) test vectors. `valid` is the verdict every conforming verifier, single or batch, MUST give; `cofactorless_strict_valid` is what ed25519-dalek's verify_strict answers, for comparison only. Generated by crates/proto/tests/signature_vectors.rs.",
        "vectors": list,
    })
}

fn load() -> Value {
    let text = std::fs::read_to_string(PATH)
        .unwrap_or_else(|e| panic!("{PATH}: {e}; generate it with DETENTE_WRITE_VECTORS=1"));
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn hex_array<const N: usize>(v: &Value) -> [u8; N] {
    hex::decode(v.as_str().expect("hex string"))
        .expect("hex")
        .try_into()
        .expect("length")
}

#[test]
fn write_vectors_when_asked() {
    if std::env::var_os("DETENTE_WRITE_VECTORS").is_none() {
        return;
    }
    let mut text = serde_json::to_string_pretty(&generate()).unwrap();
    text.push('\n');
    std::fs::write(PATH, text).unwrap();
}

#[test]
fn every_vector_gets_its_verdict_singly_and_in_a_batch() {
    let file = load();
    let list = file["vectors"].as_array().unwrap();
    assert!(list.len() >= 10);
    let mut prepared = Vec::new();
    let mut expected_in_batch = Vec::new();
    for v in list {
        let name = v["name"].as_str().unwrap();
        let key: [u8; 32] = hex_array(&v["public_key"]);
        let message = hex::decode(v["message"].as_str().unwrap()).unwrap();
        let signature: [u8; 64] = hex_array(&v["signature"]);
        let verdict = sig::verify_with_key_bytes(&key, &message, &signature);
        assert_eq!(verdict.is_ok(), v["valid"].as_bool().unwrap(), "{name}");
        assert_eq!(
            verdict.err().map(|e| e.to_string()).as_deref(),
            v["reason"].as_str(),
            "{name}"
        );
        if let Ok(key) = PartyKey::from_bytes(key) {
            if let Ok(p) = Prepared::new(&key, &signature, &[&message]) {
                prepared.push(p);
                expected_in_batch.push(verdict);
            }
        }
    }
    assert!(prepared.len() >= 6);
    for seed in 0..16 {
        let batch = sig::verify_batch(&prepared, &mut StdRng::seed_from_u64(seed));
        assert_eq!(batch, expected_in_batch, "rng seed {seed}");
    }
}

#[test]
fn the_file_is_what_the_generator_writes() {
    assert_eq!(
        load(),
        generate(),
        "testdata/signature-v1.json is stale; regenerate with DETENTE_WRITE_VECTORS=1 if the change is deliberate"
    );
}
