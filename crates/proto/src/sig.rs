//! Ed25519 signature verification: detente's one rule (docs/wire-format.md §5.4), for single
//! signatures and for batches, used on every path that checks a signature (the node's
//! receive path, the signer's self-check, checkpoints, charters, bundles and proofs).
//!
//! # The rule
//!
//! A signature `R ‖ S` (32 + 32 bytes) over message `M` by public key `A` verifies iff
//!
//! 1. `S` is canonical: `S < ℓ`;
//! 2. `R` is a canonical point encoding (`y < p`, and the encoding is exactly what compressing
//!    the decoded point gives back), decodes to a point, and that point is not of small order;
//! 3. `A` likewise (checked once, when a [`PartyKey`] is parsed);
//! 4. with `k = SHA-512(R ‖ A ‖ M) mod ℓ`, the **cofactored** equation
//!    `[8]([S]B − R − [k]A) = 𝒪` holds.
//!
//! # Why cofactored
//!
//! Batch verification checks one random linear combination of many equations. With the
//! cofactorless equation (`[S]B = R + [k]A`, what ed25519-dalek's `verify_strict` checks), a
//! batch cannot give the same answer as single verification: a signature whose `R` carries a
//! torsion component fails the single check but passes a random combination about half of the
//! time, because the torsion parts of several such items can cancel. Multiplying by the cofactor
//! 8 removes every torsion component, so the single and the batch equations accept exactly the
//! same signatures (the batch errs only with probability at most 2^-128 per batch, over its
//! random coefficients). That is what lets the receive path and the offline verifier use batch
//! verification and still agree with every other verifier on every envelope.
//!
//! # Why forgery resistance is unchanged
//!
//! The cofactored equation accepts, beyond what the cofactorless one accepts, only signatures
//! that are valid up to a torsion point (a small-order component in `R` or in `A`). Ed25519's
//! security proofs hold for the cofactored equation as well (it is the equation of RFC 8032
//! §5.1.7 and of ZIP-215), so forging any signature that verifies is as hard as before. A
//! torsion-`R` signature is made like an ordinary one, `S = r + k·a` with `k` hashed over the
//! shifted `R`, which needs the secret scalar `a`: only the key holder can make one, and the
//! key holder can sign anything anyway. Small-order `R` and `A` are refused outright, and
//! non-canonical encodings are refused so that one signature has one encoding (message ids
//! hash the signed bytes). Verifiers that check only the cofactorless equation refuse some
//! signatures this rule accepts; they do not conform to §5.4.
//!
//! This module does no I/O itself: the batch functions take the random generator for their
//! coefficients, so tests can make them deterministic.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};

use crate::identity::PartyKey;

/// Signatures checked in one multiscalar multiplication at most. Longer batches are split;
/// this bounds the memory of one check and the work of finding the bad items of a failed one.
pub const BATCH_SIGNATURES_MAX: usize = 128;

/// Bytes of one random batch coefficient (128 bits: a bad item passes with probability at most
/// 2^-128).
const COEFFICIENT_BYTES: usize = 16;

/// Why a signature does not verify. Each variant names the condition of the rule that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Condition 1: the `S` half is not below the group order ℓ.
    #[error("S is not canonical (not below the group order)")]
    NonCanonicalS,
    /// Condition 2: the `R` half is not the canonical encoding of its point.
    #[error("R is not a canonical point encoding")]
    NonCanonicalR,
    /// Condition 2: the `R` half is not the encoding of any curve point.
    #[error("R is not a curve point")]
    InvalidR,
    /// Condition 2: `R` is a point of small order.
    #[error("R is a point of small order")]
    SmallOrderR,
    /// Condition 3: the public key is not a usable key (see [`crate::KeyError`]).
    #[error("the public key is not a valid Ed25519 key")]
    InvalidKey,
    /// Condition 4: the cofactored equation does not hold.
    #[error("the signature equation does not hold")]
    Equation,
}

/// What is wrong with a point encoding, for `R` and for public keys alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointError {
    NonCanonical,
    NotAPoint,
    SmallOrder,
}

/// Decode a point under the rule's conditions 2 and 3: canonical encoding, on the curve, not of
/// small order.
pub(crate) fn decode_point(bytes: &[u8; 32]) -> Result<EdwardsPoint, PointError> {
    if !y_is_canonical(bytes) {
        return Err(PointError::NonCanonical);
    }
    let point = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(PointError::NotAPoint)?;
    if point.is_small_order() {
        // With y < p, the only other non-canonical encodings have x = 0 and the sign bit set;
        // x = 0 means y = ±1, both of small order, so only this rare path needs the exact
        // (and slower) round-trip test to name the right reason.
        if point.compress().0 != *bytes {
            return Err(PointError::NonCanonical);
        }
        return Err(PointError::SmallOrder);
    }
    Ok(point)
}

/// Whether the y coordinate (the low 255 bits, little-endian) is below p = 2^255 − 19.
fn y_is_canonical(bytes: &[u8; 32]) -> bool {
    let high_all_ones = bytes[31] & 0x7f == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff);
    !(high_all_ones && bytes[0] >= 0xed)
}

/// A signature whose encodings passed conditions 1–3, with its challenge `k` computed: ready
/// for the equation, alone ([`Prepared::verify`]) or in a batch ([`verify_batch`]).
#[derive(Clone, Copy, Debug)]
pub struct Prepared {
    key: PartyKey,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

impl Prepared {
    /// Check the encodings of `signature` and hash the message, given as consecutive parts
    /// (so that callers can sign a structure without copying it into one buffer).
    pub fn new(
        key: &PartyKey,
        signature: &[u8; 64],
        message_parts: &[&[u8]],
    ) -> Result<Self, SignatureError> {
        let (r_bytes, s_bytes) = signature.split_at(32);
        let r_bytes: &[u8; 32] = r_bytes.try_into().expect("32 bytes");
        let s_bytes: [u8; 32] = s_bytes.try_into().expect("32 bytes");
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
            .ok_or(SignatureError::NonCanonicalS)?;
        let r = decode_point(r_bytes).map_err(|e| match e {
            PointError::NonCanonical => SignatureError::NonCanonicalR,
            PointError::NotAPoint => SignatureError::InvalidR,
            PointError::SmallOrder => SignatureError::SmallOrderR,
        })?;
        let mut hasher = Sha512::new();
        hasher.update(r_bytes);
        hasher.update(key.as_bytes());
        for part in message_parts {
            hasher.update(part);
        }
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        Ok(Self { key: *key, r, s, k })
    }

    /// Condition 4 for this signature alone: `[8]([S]B − R − [k]A) = 𝒪`.
    pub fn verify(&self) -> Result<(), SignatureError> {
        let minus_a = -self.key.point();
        let sb_minus_ka =
            EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &minus_a, &self.s);
        if (sb_minus_ka - self.r).mul_by_cofactor().is_identity() {
            Ok(())
        } else {
            Err(SignatureError::Equation)
        }
    }
}

/// Verify one signature under the rule.
pub fn verify(key: &PartyKey, message: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
    Prepared::new(key, signature, &[message])?.verify()
}

/// Verify one signature by raw key bytes: condition 3 is checked here (for test vectors and
/// for keys not yet parsed into a [`PartyKey`]).
pub fn verify_with_key_bytes(
    key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let key = PartyKey::from_bytes(*key).map_err(|_| SignatureError::InvalidKey)?;
    verify(&key, message, signature)
}

/// Condition 4 for many prepared signatures, with the same per-item outcome as
/// [`Prepared::verify`] on each (except with probability at most 2^-128 per batch of
/// [`BATCH_SIGNATURES_MAX`]).
///
/// Each batch is checked with one multiscalar multiplication over independent random 128-bit
/// coefficients `z_i`: `[8](−(Σ z_i S_i)B + Σ z_i R_i + Σ_A (Σ_{i signed by A} z_i k_i) A) = 𝒪`.
/// When a batch fails, every item of it is verified alone, so that exactly the bad ones are
/// refused. (Bisection would need fewer checks when one item of a large batch is bad, but up
/// to twice the work of this when many are; verifying each alone keeps the cost of a batch of
/// bad signatures from a hostile peer at about that of single verification.)
pub fn verify_batch<G: RngCore + CryptoRng>(
    items: &[Prepared],
    rng: &mut G,
) -> Vec<Result<(), SignatureError>> {
    let mut out = Vec::with_capacity(items.len());
    for batch in items.chunks(BATCH_SIGNATURES_MAX) {
        if batch.len() > 1 && batch_equation_holds(batch, rng) {
            out.extend(batch.iter().map(|_| Ok(())));
        } else {
            out.extend(batch.iter().map(Prepared::verify));
        }
    }
    out
}

/// The combined equation of one batch (at most [`BATCH_SIGNATURES_MAX`] items).
fn batch_equation_holds<G: RngCore + CryptoRng>(batch: &[Prepared], rng: &mut G) -> bool {
    assert!(batch.len() <= BATCH_SIGNATURES_MAX);
    let mut random = [0u8; COEFFICIENT_BYTES * BATCH_SIGNATURES_MAX];
    let random = &mut random[..COEFFICIENT_BYTES * batch.len()];
    rng.fill_bytes(random);
    let mut scalars: Vec<Scalar> = Vec::with_capacity(batch.len() + 4);
    let mut points: Vec<EdwardsPoint> = Vec::with_capacity(batch.len() + 4);
    // The A terms, one per distinct key, after the base point and the R terms.
    let mut keys: Vec<(PartyKey, Scalar)> = Vec::new();
    let mut s_sum = Scalar::ZERO;
    scalars.push(Scalar::ZERO); // −Σ z_i S_i, filled in below.
    points.push(ED25519_BASEPOINT_POINT);
    for (item, z_bytes) in batch.iter().zip(random.chunks_exact(COEFFICIENT_BYTES)) {
        let mut wide = [0u8; 32];
        wide[..COEFFICIENT_BYTES].copy_from_slice(z_bytes);
        let z = Scalar::from_bytes_mod_order(wide);
        s_sum += z * item.s;
        scalars.push(z);
        points.push(item.r);
        let zk = z * item.k;
        match keys.iter_mut().find(|(key, _)| *key == item.key) {
            Some((_, sum)) => *sum += zk,
            None => keys.push((item.key, zk)),
        }
    }
    scalars[0] = -s_sum;
    for (key, sum) in keys {
        scalars.push(sum);
        points.push(key.point());
    }
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
        .mul_by_cofactor()
        .is_identity()
}
