//! Party identity: the long-term Ed25519 key, its text form and its fingerprint.
//!
//! The fingerprint is what two duty officers read to each other over a telephone before
//! pinning each other's key, so it is short (100 bits, 20 characters in five groups of four)
//! and uses an alphabet without look-alike characters (no 0/O, 1/I/L, U).

use curve25519_dalek::edwards::EdwardsPoint;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::error::KeyError;
use crate::sig::{decode_point, PointError};

/// Prefix of the text form of a public key, as `detente id` prints it and `peer add --key`
/// accepts it.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Crockford's base32 alphabet: digits and letters minus I, L, O, U.
const FINGERPRINT_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A party's public key: 32 bytes of an Ed25519 public key, checked once at parse time against
/// condition 3 of the signature rule (docs/wire-format.md §5.4, [`crate::sig`]): a canonical
/// encoding of a curve point that is not of small order. The decompressed point is kept,
/// because decompressing costs about a quarter of a signature verification and every envelope
/// names its sender.
#[derive(Clone, Copy)]
pub struct PartyKey {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

impl PartialEq for PartyKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PartyKey {}

impl std::hash::Hash for PartyKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for PartyKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PartyKey {
    /// Byte order of the encoded key (the order the channel id and the link tie-break use).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl PartyKey {
    /// Parse raw bytes; refuses bytes that are not a canonical encoding of a curve point, and
    /// points of small order (no signature by such a key can be trusted).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        let point = decode_point(&bytes).map_err(|e| match e {
            PointError::NonCanonical => KeyError::NonCanonical,
            PointError::NotAPoint => KeyError::InvalidPoint,
            PointError::SmallOrder => KeyError::SmallOrder,
        })?;
        Ok(Self { bytes, point })
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The decompressed point, for the signature equations.
    pub(crate) fn point(&self) -> EdwardsPoint {
        self.point
    }

    /// The fingerprint to read aloud, e.g. `7KQF-2M9X-R4TD-8PWA-3JHN`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.bytes)
    }

    /// The text form: `ed25519:` followed by 64 lowercase hex digits.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", hex::encode(self.bytes))
    }

    /// Parse the text form printed by [`PartyKey::to_text`]. Whitespace around it is allowed.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let hex_part = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(KeyError::MissingPrefix)?;
        let raw = hex::decode(hex_part).map_err(|_| KeyError::NotHex)?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| KeyError::WrongLength)?;
        Self::from_bytes(bytes)
    }
}

impl std::fmt::Debug for PartyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartyKey({})", self.fingerprint())
    }
}

impl std::fmt::Display for PartyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// The fingerprint of raw public-key bytes: SHA-256 over a domain-separation label and the
/// key, first 100 bits, Crockford base32, groups of four joined by `-`.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"detente fingerprint v1\0");
    hasher.update(public_key);
    let digest = hasher.finalize();
    // 20 symbols x 5 bits = 100 bits, taken big-endian from the digest.
    let mut out = String::with_capacity(24);
    for i in 0..20 {
        let bit = i * 5;
        let byte = bit / 8;
        let shift = bit % 8;
        let window = (u16::from(digest[byte]) << 8) | u16::from(digest[byte + 1]);
        let index = (window >> (11 - shift)) & 0x1f;
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(FINGERPRINT_ALPHABET[usize::from(index)]));
    }
    out
}

/// This node's party key pair. The secret never leaves this type except as the seed written
/// to the key file.
pub struct PartySecret {
    signing: SigningKey,
    public: PartyKey,
}

impl PartySecret {
    /// Make a key pair from 32 random bytes (the caller supplies the randomness, so that
    /// tests are deterministic).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        // A key derived from a seed is a multiple of the base point (clamping makes the scalar
        // nonzero modulo the group order), so it always passes condition 3.
        let public = PartyKey::from_bytes(signing.verifying_key().to_bytes())
            .expect("a key derived from a seed is a valid key");
        Self { signing, public }
    }

    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public(&self) -> PartyKey {
        self.public
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// PKCS#8 v1 DER of the private key, as TLS libraries load it (RFC 8410 §7).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.seed());
        der
    }
}

impl std::fmt::Debug for PartySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartySecret({})", self.public.fingerprint())
    }
}

/// SubjectPublicKeyInfo DER of an Ed25519 public key (RFC 8410 §4), the "raw public key" of
/// RFC 7250 that the TLS handshake carries.
pub fn spki_der(public_key: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(public_key);
    der
}

/// The public key inside an Ed25519 SubjectPublicKeyInfo, or None if it is anything else.
pub fn key_from_spki_der(der: &[u8]) -> Option<[u8; 32]> {
    let prefix = spki_der(&[0; 32]);
    if der.len() != prefix.len() || der[..12] != prefix[..12] {
        return None;
    }
    der[12..].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_shape() {
        let key = PartySecret::from_seed([7; 32]).public();
        let fp = key.fingerprint();
        assert_eq!(fp.len(), 24);
        assert_eq!(fp.matches('-').count(), 4);
        assert!(fp
            .chars()
            .all(|c| c == '-' || FINGERPRINT_ALPHABET.contains(&(c as u8))));
        assert_ne!(fp, PartySecret::from_seed([8; 32]).public().fingerprint());
    }

    #[test]
    fn text_round_trip_and_errors() {
        let key = PartySecret::from_seed([1; 32]).public();
        assert_eq!(PartyKey::from_text(&key.to_text()).unwrap(), key);
        assert_eq!(PartyKey::from_text("abc"), Err(KeyError::MissingPrefix));
        assert_eq!(PartyKey::from_text("ed25519:zz"), Err(KeyError::NotHex));
        assert_eq!(
            PartyKey::from_text("ed25519:abcd"),
            Err(KeyError::WrongLength)
        );
    }

    #[test]
    fn spki_round_trip() {
        let key = PartySecret::from_seed([3; 32]).public();
        assert_eq!(
            key_from_spki_der(&spki_der(key.as_bytes())),
            Some(*key.as_bytes())
        );
        assert_eq!(key_from_spki_der(&[0; 44]), None);
    }
}
