//! Typed errors of the protocol core. Every variant says what went wrong; the link and the
//! command line turn them into log lines and messages for people.

/// A public key in text or bytes that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("a public key starts with \"ed25519:\"")]
    MissingPrefix,
    #[error("the public key is not hexadecimal")]
    NotHex,
    #[error("a public key is 32 bytes (64 hex digits)")]
    WrongLength,
    #[error("the bytes are not a valid Ed25519 public key")]
    InvalidPoint,
    #[error("the public key is not in canonical encoding")]
    NonCanonical,
    #[error("the public key is a point of small order, which is not a usable key")]
    SmallOrder,
}
