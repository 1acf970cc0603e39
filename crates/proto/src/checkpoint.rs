//! Checkpoints: "in channel C at time T, member K's stream had S envelopes with root R", for
//! every member, signed by each member that has verified every stream up to those sizes.
//!
//! Body (deterministic CBOR, RFC 8949 §4.2, an array so no key order can differ):
//! `[version = 1, channel: bstr32, time_ms: uint, [[key: bstr32, size: uint, root: bstr32], …]]`
//! with members in ascending byte order of their keys, no key twice, 1 to
//! [`MEMBERS_MAX`] members.
//!
//! A signature is Ed25519 (verified under the rule of [`crate::sig`]) over `"detente checkpoint v1\0" ‖ body bytes`;
//! the label keeps a checkpoint signature from ever being valid as anything else.
//! A [`SignedCheckpoint`] is `[body: bstr, [[key: bstr32, signature: bstr64], …]]`,
//! signatures in ascending key order, each by a member, no key twice. Signed by every member
//! it is **co-signed**: all members agree on every byte said up to those sizes.

use coset::cbor::Value;
use ed25519_dalek::Signer;

use crate::envelope::ChannelId;
use crate::identity::{PartyKey, PartySecret};
use crate::merkle::{Hash, TREE_SIZE_MAX};
use crate::sig;

/// Checkpoint format version.
pub const CHECKPOINT_VERSION: u64 = 1;
/// Members of one channel at most.
pub const MEMBERS_MAX: usize = 8;
/// Largest encoded signed checkpoint, in bytes.
pub const SIGNED_CHECKPOINT_BYTES_MAX: usize = 2048;
/// Domain separation label of the signing input.
pub const SIGNING_LABEL: &[u8] = b"detente checkpoint v1\0";

/// One member's stream at the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    pub key: PartyKey,
    /// Envelopes in the stream (the highest `seq`).
    pub size: u64,
    /// RFC 9162 root of the stream's first `size` envelopes.
    pub root: Hash,
}

/// What a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub channel: ChannelId,
    /// Signer's clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Ascending by key.
    pub members: Vec<StreamHead>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("checkpoint is {0} bytes; the limit is {SIGNED_CHECKPOINT_BYTES_MAX}")]
    TooLarge(usize),
    #[error("checkpoint is not well-formed: {0}")]
    Malformed(String),
    #[error("checkpoint encoding is not canonical")]
    NotCanonical,
    #[error("checkpoint version {0} is not supported")]
    UnsupportedVersion(u64),
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    #[error("{0} is not a member of the checkpoint")]
    NotMember(String),
}

type Result<T> = std::result::Result<T, CheckpointError>;

fn uint(v: u64) -> Value {
    Value::Integer(v.into())
}

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    coset::cbor::ser::into_writer(value, &mut out).expect("CBOR into a Vec");
    out
}

fn malformed(what: &str) -> CheckpointError {
    CheckpointError::Malformed(what.to_string())
}

fn array(v: Value, len: Option<usize>, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) if len.is_none_or(|n| items.len() == n) => Ok(items),
        _ => Err(malformed(what)),
    }
}

fn as_u64(v: Value, what: &str) -> Result<u64> {
    match v {
        Value::Integer(i) => u64::try_from(i).map_err(|_| malformed(what)),
        _ => Err(malformed(what)),
    }
}

fn as_bytes<const N: usize>(v: Value, what: &str) -> Result<[u8; N]> {
    match v {
        Value::Bytes(b) => b.try_into().map_err(|_| malformed(what)),
        _ => Err(malformed(what)),
    }
}

fn as_key(v: Value) -> Result<PartyKey> {
    PartyKey::from_bytes(as_bytes(v, "member key")?)
        .map_err(|_| malformed("member key is not a valid Ed25519 key"))
}

fn parse_value(bytes: &[u8]) -> Result<Value> {
    if bytes.len() > SIGNED_CHECKPOINT_BYTES_MAX {
        return Err(CheckpointError::TooLarge(bytes.len()));
    }
    coset::cbor::de::from_reader(bytes).map_err(|e| CheckpointError::Malformed(e.to_string()))
}

impl Checkpoint {
    pub fn new(channel: ChannelId, time_ms: u64, mut members: Vec<StreamHead>) -> Result<Self> {
        members.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        let c = Checkpoint {
            channel,
            time_ms,
            members,
        };
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err(malformed("between 1 and 8 members"));
        }
        if !self
            .members
            .windows(2)
            .all(|w| w[0].key.as_bytes() < w[1].key.as_bytes())
        {
            return Err(malformed(
                "members must be in ascending key order, each once",
            ));
        }
        if self.members.iter().any(|m| m.size > TREE_SIZE_MAX) {
            return Err(malformed("stream size beyond 2^48"));
        }
        if self.time_ms > crate::envelope::limits::CREATED_AT_MS_MAX {
            return Err(malformed("time after the year 10889"));
        }
        Ok(())
    }

    /// The canonical body bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_bytes(&Value::Array(vec![
            uint(CHECKPOINT_VERSION),
            Value::Bytes(self.channel.0.to_vec()),
            uint(self.time_ms),
            Value::Array(
                self.members
                    .iter()
                    .map(|m| {
                        Value::Array(vec![
                            Value::Bytes(m.key.as_bytes().to_vec()),
                            uint(m.size),
                            Value::Bytes(m.root.to_vec()),
                        ])
                    })
                    .collect(),
            ),
        ]))
    }

    /// Strict decoding: canonical bytes of a well-formed body only.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut items = array(parse_value(bytes)?, Some(4), "body is an array of 4")?.into_iter();
        let mut next = || items.next().ok_or_else(|| malformed("body is short"));
        let version = as_u64(next()?, "version")?;
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnsupportedVersion(version));
        }
        let channel = ChannelId(as_bytes(next()?, "channel")?);
        let time_ms = as_u64(next()?, "time")?;
        let list = array(next()?, None, "members")?;
        if list.len() > MEMBERS_MAX {
            return Err(malformed("too many members"));
        }
        let mut members = Vec::with_capacity(list.len());
        for m in list {
            let mut f = array(m, Some(3), "member is [key, size, root]")?.into_iter();
            let key = as_key(f.next().ok_or_else(|| malformed("member"))?)?;
            let size = as_u64(f.next().ok_or_else(|| malformed("member"))?, "size")?;
            let root = as_bytes(f.next().ok_or_else(|| malformed("member"))?, "root")?;
            members.push(StreamHead { key, size, root });
        }
        let c = Checkpoint {
            channel,
            time_ms,
            members,
        };
        c.check()?;
        if c.encode() != bytes {
            return Err(CheckpointError::NotCanonical);
        }
        Ok(c)
    }

    /// The bytes a member signs.
    pub fn signing_input(body: &[u8]) -> Vec<u8> {
        let mut input = Vec::with_capacity(SIGNING_LABEL.len() + body.len());
        input.extend_from_slice(SIGNING_LABEL);
        input.extend_from_slice(body);
        input
    }

    pub fn head(&self, key: &PartyKey) -> Option<&StreamHead> {
        self.members.iter().find(|m| &m.key == key)
    }

    /// Whether `later` could follow this one: same channel and members, no stream smaller.
    /// (Whether the roots are consistent needs the trees or a consistency proof.)
    pub fn may_precede(&self, later: &Checkpoint) -> bool {
        self.channel == later.channel
            && self.members.len() == later.members.len()
            && self.members.iter().zip(&later.members).all(|(a, b)| {
                a.key == b.key && a.size <= b.size && (a.size < b.size || a.root == b.root)
            })
    }
}

/// A checkpoint body with the members' signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    body: Vec<u8>,
    /// Ascending by key; every one verified.
    signatures: Vec<(PartyKey, [u8; 64])>,
}

impl SignedCheckpoint {
    /// Sign a checkpoint as one of its members.
    pub fn sign(checkpoint: Checkpoint, secret: &PartySecret) -> Result<Self> {
        let body = checkpoint.encode();
        let mut s = SignedCheckpoint {
            checkpoint,
            body,
            signatures: Vec::new(),
        };
        s.add_signature(secret)?;
        Ok(s)
    }

    /// Add this member's signature (replacing none: signing twice is idempotent).
    pub fn add_signature(&mut self, secret: &PartySecret) -> Result<()> {
        let key = secret.public();
        if self.checkpoint.head(&key).is_none() {
            return Err(CheckpointError::NotMember(key.fingerprint()));
        }
        if self.signed_by(&key) {
            return Ok(());
        }
        let input = Checkpoint::signing_input(&self.body);
        let sig = secret.signing_key().sign(&input).to_bytes();
        // Our own signature is checked under the rule every verifier applies: a bad one is
        // found here, never by a peer or an auditor.
        assert_eq!(
            sig::verify(&key, &input, &sig),
            Ok(()),
            "our own checkpoint signature must verify"
        );
        self.signatures.push((key, sig));
        self.signatures
            .sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(())
    }

    /// Merge the signatures of another copy of the same body (each already verified).
    pub fn merge(&mut self, other: &SignedCheckpoint) -> bool {
        if other.body != self.body {
            return false;
        }
        for (key, sig) in &other.signatures {
            if !self.signed_by(key) {
                self.signatures.push((*key, *sig));
            }
        }
        self.signatures
            .sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        true
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn signers(&self) -> impl Iterator<Item = &PartyKey> {
        self.signatures.iter().map(|(k, _)| k)
    }

    pub fn signed_by(&self, key: &PartyKey) -> bool {
        self.signatures.iter().any(|(k, _)| k == key)
    }

    /// Signed by every member.
    pub fn cosigned(&self) -> bool {
        self.checkpoint
            .members
            .iter()
            .all(|m| self.signed_by(&m.key))
    }

    pub fn encode(&self) -> Vec<u8> {
        to_bytes(&Value::Array(vec![
            Value::Bytes(self.body.clone()),
            Value::Array(
                self.signatures
                    .iter()
                    .map(|(k, s)| {
                        Value::Array(vec![
                            Value::Bytes(k.as_bytes().to_vec()),
                            Value::Bytes(s.to_vec()),
                        ])
                    })
                    .collect(),
            ),
        ]))
    }

    /// Strict decoding; every signature is verified (under the rule of [`crate::sig`]) before
    /// this returns.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut items = array(
            parse_value(bytes)?,
            Some(2),
            "signed checkpoint is [body, signatures]",
        )?
        .into_iter();
        let body = match items.next() {
            Some(Value::Bytes(b)) => b,
            _ => return Err(malformed("body is a byte string")),
        };
        let checkpoint = Checkpoint::decode(&body)?;
        let list = array(
            items.next().ok_or_else(|| malformed("signatures"))?,
            None,
            "signatures",
        )?;
        if list.is_empty() || list.len() > checkpoint.members.len() {
            return Err(malformed("between 1 signature and one per member"));
        }
        let input = Checkpoint::signing_input(&body);
        let mut signatures = Vec::with_capacity(list.len());
        for s in list {
            let mut f = array(s, Some(2), "signature is [key, signature]")?.into_iter();
            let key = as_key(f.next().ok_or_else(|| malformed("signature"))?)?;
            let sig: [u8; 64] =
                as_bytes(f.next().ok_or_else(|| malformed("signature"))?, "signature")?;
            if checkpoint.head(&key).is_none() {
                return Err(CheckpointError::NotMember(key.fingerprint()));
            }
            sig::verify(&key, &input, &sig)
                .map_err(|_| CheckpointError::BadSignature(key.fingerprint()))?;
            signatures.push((key, sig));
        }
        if !signatures
            .windows(2)
            .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes())
        {
            return Err(malformed(
                "signatures must be in ascending key order, each once",
            ));
        }
        let s = SignedCheckpoint {
            checkpoint,
            body,
            signatures,
        };
        if s.encode() != bytes {
            return Err(CheckpointError::NotCanonical);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u8) -> PartySecret {
        PartySecret::from_seed([n; 32])
    }

    #[test]
    fn sign_cosign_roundtrip() {
        let (a, b) = (secret(1), secret(2));
        let channel = ChannelId::for_pair(&a.public(), &b.public());
        let c = Checkpoint::new(
            channel,
            1_800_000_000_000,
            vec![
                StreamHead {
                    key: a.public(),
                    size: 3,
                    root: [1; 32],
                },
                StreamHead {
                    key: b.public(),
                    size: 0,
                    root: crate::merkle::empty_root(),
                },
            ],
        )
        .unwrap();
        let mut s = SignedCheckpoint::sign(c.clone(), &a).unwrap();
        assert!(!s.cosigned());
        let back = SignedCheckpoint::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        s.add_signature(&b).unwrap();
        assert!(s.cosigned());
        let back = SignedCheckpoint::decode(&s.encode()).unwrap();
        assert!(back.cosigned());
        assert!(SignedCheckpoint::sign(c, &secret(3)).is_err());
        // Any single flipped bit is refused.
        let bytes = s.encode();
        for i in 0..bytes.len() * 8 {
            let mut t = bytes.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(SignedCheckpoint::decode(&t).is_err(), "bit {i}");
        }
    }
}
