//! Ed25519 arithmetic shared by the signature tests: making the edge-case signatures that a
//! normal signer never makes (torsion R, small-order R, S + ℓ) needs the secret scalar.

use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

/// The group order ℓ, little-endian.
const ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The secret scalar of a seed, the way Ed25519 derives it: the first half of SHA-512(seed),
/// clamped.
pub fn secret_scalar(seed: &[u8; 32]) -> Scalar {
    let digest = Sha512::digest(seed);
    let mut a: [u8; 32] = digest[..32].try_into().unwrap();
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    Scalar::from_bytes_mod_order(a)
}

/// `k = SHA-512(R ‖ A ‖ M) mod ℓ`.
pub fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(key);
    h.update(message);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// S + ℓ: the same scalar, not canonical (it still fits 32 bytes: S < ℓ < 2^253).
pub fn plus_order(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(ORDER[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}
