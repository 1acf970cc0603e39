//! The channel charter (docs/spec.md §2): what the members of a channel have agreed on.
//!
//! Each party contributes its [`Terms`] — who it is, where it listens, its language and time
//! zone, the notification formats it holds, the acknowledgment deadlines and link-test
//! cadence it wants, the counterpart positions it knows. Two parties' terms make one
//! [`Charter`] by a fixed rule ([`Charter::agree`]): members in key order, the formats both
//! hold with the same definition digest, the stricter (shorter) of each deadline, the shorter
//! link-test interval, and the union of the counterpart pairs. Both nodes compute the same
//! charter from the same two terms, each signs it in a charter envelope of its own stream,
//! and the charter is **agreed** once both streams carry a charter with the same digest.
//!
//! Encoding: deterministic CBOR arrays, like the envelope payload; decoding refuses anything
//! that does not re-encode to the same bytes, anything out of order, and anything over a
//! bound in [`limits`].

use std::time::Duration;

use coset::cbor::Value;
use sha2::{Digest, Sha256};

use crate::envelope::Precedence;
use crate::identity::PartyKey;

/// Bounds on every charter field.
pub mod limits {
    /// Members of one channel (docs/spec.md §10: channels of 60 parties).
    pub const MEMBERS_MAX: usize = 64;
    /// Addresses per member.
    pub const ADDRESSES_MAX: usize = 8;
    pub const ADDRESS_BYTES_MAX: usize = 255;
    pub const NAME_BYTES_MAX: usize = 64;
    pub const PARTY_BYTES_MAX: usize = 256;
    pub const LANG_BYTES_MAX: usize = 35;
    pub const TZ_BYTES_MAX: usize = 64;
    /// Notification formats listed in one charter.
    pub const FORMATS_MAX: usize = 128;
    pub const FORMAT_ID_BYTES_MAX: usize = 64;
    /// Counterpart pairs in one charter.
    pub const COUNTERPARTS_MAX: usize = 128;
    pub const POSITION_BYTES_MAX: usize = 128;
    /// Largest encoded terms or charter, in bytes (well inside one envelope).
    pub const ENCODED_BYTES_MAX: usize = 48 * 1024;
    /// Shortest deadline or link-test interval a charter may carry.
    pub const DURATION_MIN_MS: u64 = 1_000;
    /// Longest deadline or link-test interval a charter may carry (30 days).
    pub const DURATION_MAX_MS: u64 = 30 * 24 * 3600 * 1000;
}

/// Version of the charter encoding.
pub const CHARTER_VERSION: u64 = 1;

/// Why terms or a charter were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CharterError {
    #[error("charter is not well-formed: {0}")]
    Malformed(String),
    #[error("charter encoding is not canonical")]
    NotCanonical,
    #[error("charter version {0} is not supported (this node speaks version 1)")]
    UnsupportedVersion(u64),
    #[error("{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("both terms come from the same party")]
    SameParty,
}

type Result<T> = std::result::Result<T, CharterError>;

/// Acknowledgment deadlines per precedence (docs/spec.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A FLASH must be DELIVERED within this.
    pub flash_delivered: Duration,
    pub flash_acknowledged: Duration,
    pub immediate_acknowledged: Duration,
    pub priority_acknowledged: Duration,
    pub routine_acknowledged: Duration,
}

impl Default for Deadlines {
    /// docs/spec.md §5: FLASH delivered 10 s and acknowledged 10 min; IMMEDIATE 30 min; PRIORITY
    /// 3 h; ROUTINE 24 h.
    fn default() -> Self {
        Self {
            flash_delivered: Duration::from_secs(10),
            flash_acknowledged: Duration::from_secs(600),
            immediate_acknowledged: Duration::from_secs(1800),
            priority_acknowledged: Duration::from_secs(3 * 3600),
            routine_acknowledged: Duration::from_secs(24 * 3600),
        }
    }
}

impl Deadlines {
    /// Within how long a message of this precedence must be ACKNOWLEDGED (or declined).
    pub fn acknowledged(&self, precedence: Precedence) -> Duration {
        match precedence {
            Precedence::Flash => self.flash_acknowledged,
            Precedence::Immediate => self.immediate_acknowledged,
            Precedence::Priority => self.priority_acknowledged,
            Precedence::Routine => self.routine_acknowledged,
        }
    }

    /// Within how long a message of this precedence must be DELIVERED, where a deadline is
    /// set for that (FLASH only).
    pub fn delivered(&self, precedence: Precedence) -> Option<Duration> {
        (precedence == Precedence::Flash).then_some(self.flash_delivered)
    }

    /// Each deadline the shorter of the two.
    pub fn stricter(&self, other: &Deadlines) -> Deadlines {
        Deadlines {
            flash_delivered: self.flash_delivered.min(other.flash_delivered),
            flash_acknowledged: self.flash_acknowledged.min(other.flash_acknowledged),
            immediate_acknowledged: self
                .immediate_acknowledged
                .min(other.immediate_acknowledged),
            priority_acknowledged: self.priority_acknowledged.min(other.priority_acknowledged),
            routine_acknowledged: self.routine_acknowledged.min(other.routine_acknowledged),
        }
    }

    /// Each deadline by its charter term name (`deadlines.flash_delivered`, ...).
    pub fn all(&self) -> [(&'static str, Duration); 5] {
        [
            ("deadlines.flash_delivered", self.flash_delivered),
            ("deadlines.flash_acknowledged", self.flash_acknowledged),
            (
                "deadlines.immediate_acknowledged",
                self.immediate_acknowledged,
            ),
            (
                "deadlines.priority_acknowledged",
                self.priority_acknowledged,
            ),
            ("deadlines.routine_acknowledged", self.routine_acknowledged),
        ]
    }
}

/// The shortest deadlines and link-test interval this party agrees to (issue 12 item 9).
///
/// [`Charter::agree`] takes the stricter of each term, so without floors a peer could ask
/// for 1 s deadlines and make every message overdue within a second. A charter term below
/// its floor is **not agreed**: the node does not sign that charter
/// ([`Charter::check_floors`] names each term), and the channel keeps the charter it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floors {
    pub deadlines: Deadlines,
    pub link_test_interval: Duration,
}

impl Default for Floors {
    /// A fraction of the spec defaults (docs/spec.md §5): FLASH delivered 5 s (half of
    /// 10 s, which a link with a retransmission still meets), FLASH acknowledged 1 min (a
    /// tenth: an officer has to read the message), IMMEDIATE 5 min, PRIORITY 30 min
    /// (each a sixth), ROUTINE 1 h, a link test at most once a minute.
    fn default() -> Self {
        Self {
            deadlines: Deadlines {
                flash_delivered: Duration::from_secs(5),
                flash_acknowledged: Duration::from_secs(60),
                immediate_acknowledged: Duration::from_secs(300),
                priority_acknowledged: Duration::from_secs(1800),
                routine_acknowledged: Duration::from_secs(3600),
            },
            link_test_interval: Duration::from_secs(60),
        }
    }
}

impl Floors {
    /// No floor at all: every term down to the charter's minimum is agreed.
    pub const NONE: Floors = {
        let min = Duration::from_millis(limits::DURATION_MIN_MS);
        Floors {
            deadlines: Deadlines {
                flash_delivered: min,
                flash_acknowledged: min,
                immediate_acknowledged: min,
                priority_acknowledged: min,
                routine_acknowledged: min,
            },
            link_test_interval: min,
        }
    };

    /// Each floor no higher than what `own` terms offer: a party that asks for a 30 s FLASH
    /// acknowledgment itself has agreed to 30 s, and its own charter must stay possible.
    pub fn capped_by(&self, own: &Terms) -> Floors {
        Floors {
            deadlines: self.deadlines.stricter(&own.deadlines),
            link_test_interval: self.link_test_interval.min(own.link_test_interval),
        }
    }

    /// Every floor by the charter term it bounds (the names of [`BelowFloor::term`]).
    pub fn all(&self) -> [(&'static str, Duration); 6] {
        let [a, b, c, d, e] = self.deadlines.all();
        [a, b, c, d, e, (LINK_TEST_TERM, self.link_test_interval)]
    }
}

/// The name of the link-test interval as a charter term (and a configuration key).
pub const LINK_TEST_TERM: &str = "link.test_interval";

/// One charter term below this party's floor: what the charter would carry (the peer's
/// ask, since ours is never below our floor) and the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BelowFloor {
    /// `deadlines.flash_acknowledged`, ..., or `link.test_interval`.
    pub term: &'static str,
    pub offered: Duration,
    pub floor: Duration,
}

impl std::fmt::Display for BelowFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} ms is below our floor of {} ms",
            self.term,
            self.offered.as_millis(),
            self.floor.as_millis()
        )
    }
}

/// A notification format a party holds: its id, version and the SHA-256 of its definition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FormatRef {
    pub id: String,
    pub version: u32,
    pub digest: [u8; 32],
}

/// One member of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: PartyKey,
    /// The node's short name ("washington").
    pub name: String,
    /// The party's full name ("United States Department of Defense").
    pub party: String,
    /// Peer addresses, primary first.
    pub addresses: Vec<String>,
    /// Language of its operators (BCP 47, e.g. `en`, `zh-CN`).
    pub lang: String,
    /// Its time zone (IANA, e.g. `Asia/Shanghai`).
    pub tz: String,
}

/// A pair of positions across the two parties ("Secretary of Defense" ↔ "Minister of
/// National Defense"), so that an operator knows whom a request is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Counterpart {
    /// Position at the first member (in charter member order).
    pub first: String,
    /// Position at the second member.
    pub second: String,
}

/// One party's contribution to a charter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub member: Member,
    /// Formats this party holds.
    pub formats: Vec<FormatRef>,
    pub deadlines: Deadlines,
    pub link_test_interval: Duration,
    /// (our position, their position) pairs, as this party sees them.
    pub counterparts: Vec<(String, String)>,
}

/// What the members of a two-party channel agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charter {
    /// Members in the order of their key bytes.
    pub members: Vec<Member>,
    /// Formats every member holds with the same definition, sorted.
    pub formats: Vec<FormatRef>,
    /// The stricter of the members' deadlines.
    pub deadlines: Deadlines,
    /// The shorter of the members' link-test intervals.
    pub link_test_interval: Duration,
    /// Counterpart pairs known to either member, sorted, without duplicates.
    pub counterparts: Vec<Counterpart>,
}

impl Charter {
    /// The charter two parties' terms make. Both sides compute the same value whichever
    /// terms are `a` and which `b`.
    pub fn agree(a: &Terms, b: &Terms) -> Result<Charter> {
        a.check()?;
        b.check()?;
        if a.member.key == b.member.key {
            return Err(CharterError::SameParty);
        }
        let (first, second) = if a.member.key.as_bytes() < b.member.key.as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        let mut formats: Vec<FormatRef> = first
            .formats
            .iter()
            .filter(|f| second.formats.contains(f))
            .cloned()
            .collect();
        formats.sort();
        formats.dedup();
        let mut counterparts: Vec<Counterpart> = first
            .counterparts
            .iter()
            .map(|(ours, theirs)| Counterpart {
                first: ours.clone(),
                second: theirs.clone(),
            })
            .chain(
                second
                    .counterparts
                    .iter()
                    .map(|(ours, theirs)| Counterpart {
                        first: theirs.clone(),
                        second: ours.clone(),
                    }),
            )
            .collect();
        counterparts.sort();
        counterparts.dedup();
        counterparts.truncate(limits::COUNTERPARTS_MAX);
        let charter = Charter {
            members: vec![first.member.clone(), second.member.clone()],
            formats,
            deadlines: first.deadlines.stricter(&second.deadlines),
            link_test_interval: first.link_test_interval.min(second.link_test_interval),
            counterparts,
        };
        charter.check()?;
        Ok(charter)
    }

    /// Whether every deadline and the link-test interval of this charter is at or above
    /// `floors`; else each term below its floor, in charter order. A node signs a charter
    /// only when this passes (with its floors [capped](Floors::capped_by) by its own terms).
    pub fn check_floors(&self, floors: &Floors) -> std::result::Result<(), Vec<BelowFloor>> {
        let terms = self
            .deadlines
            .all()
            .into_iter()
            .chain([(LINK_TEST_TERM, self.link_test_interval)]);
        let below: Vec<BelowFloor> = terms
            .zip(floors.all())
            .filter(|((_, offered), (_, floor))| offered < floor)
            .map(|((term, offered), (_, floor))| BelowFloor {
                term,
                offered,
                floor,
            })
            .collect();
        if below.is_empty() {
            Ok(())
        } else {
            Err(below)
        }
    }

    /// The member with this key.
    pub fn member(&self, key: &PartyKey) -> Option<&Member> {
        self.members.iter().find(|m| &m.key == key)
    }

    /// Whether every member holds format `id` at `version`.
    pub fn holds_format(&self, id: &str, version: u32) -> bool {
        self.formats
            .iter()
            .any(|f| f.id == id && f.version == version)
    }

    /// SHA-256 of the canonical encoding: the name both signatures commit to.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Canonical CBOR bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_bytes(&self.to_value())
    }

    /// Decode canonical bytes, refusing anything else.
    pub fn decode(bytes: &[u8]) -> Result<Charter> {
        let value = from_bytes(bytes)?;
        let charter = Charter::from_value(value)?;
        if charter.encode() != bytes {
            return Err(CharterError::NotCanonical);
        }
        Ok(charter)
    }

    /// The CBOR value, as it sits in a charter envelope's body.
    pub fn to_value(&self) -> Value {
        Value::Array(vec![
            uint(CHARTER_VERSION),
            Value::Array(self.members.iter().map(member_value).collect()),
            Value::Array(self.formats.iter().map(format_value).collect()),
            deadlines_value(&self.deadlines),
            uint(self.link_test_interval.as_millis() as u64),
            Value::Array(
                self.counterparts
                    .iter()
                    .map(|c| {
                        Value::Array(vec![
                            Value::Text(c.first.clone()),
                            Value::Text(c.second.clone()),
                        ])
                    })
                    .collect(),
            ),
        ])
    }

    /// Parse and check a CBOR value (the caller checks canonical bytes where it has them).
    pub fn from_value(value: Value) -> Result<Charter> {
        let mut items = Items::new(value, "charter", 6)?;
        let version = items.uint("charter version")?;
        if version != CHARTER_VERSION {
            return Err(CharterError::UnsupportedVersion(version));
        }
        let members = items
            .array("members", limits::MEMBERS_MAX)?
            .into_iter()
            .map(member_from)
            .collect::<Result<Vec<_>>>()?;
        let formats = items
            .array("formats", limits::FORMATS_MAX)?
            .into_iter()
            .map(format_from)
            .collect::<Result<Vec<_>>>()?;
        let deadlines = deadlines_from(items.next()?)?;
        let link_test_interval = Duration::from_millis(items.uint("link_test_interval")?);
        let counterparts = items
            .array("counterparts", limits::COUNTERPARTS_MAX)?
            .into_iter()
            .map(|v| {
                let mut pair = Items::new(v, "counterpart", 2)?;
                Ok(Counterpart {
                    first: pair.text("counterpart")?,
                    second: pair.text("counterpart")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let charter = Charter {
            members,
            formats,
            deadlines,
            link_test_interval,
            counterparts,
        };
        charter.check()?;
        Ok(charter)
    }

    /// Check every bound and ordering rule.
    pub fn check(&self) -> Result<()> {
        if self.members.len() < 2 {
            return Err(invalid("members", "a channel has at least two members"));
        }
        if !self
            .members
            .windows(2)
            .all(|w| w[0].key.as_bytes() < w[1].key.as_bytes())
        {
            return Err(invalid("members", "not in key order, or a key twice"));
        }
        for m in &self.members {
            check_member(m)?;
        }
        check_formats(&self.formats)?;
        if !self.formats.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid("formats", "not sorted, or listed twice"));
        }
        check_deadlines(&self.deadlines)?;
        check_interval(self.link_test_interval)?;
        for c in &self.counterparts {
            check_text("counterpart", &c.first, limits::POSITION_BYTES_MAX)?;
            check_text("counterpart", &c.second, limits::POSITION_BYTES_MAX)?;
        }
        if !self.counterparts.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid("counterparts", "not sorted, or listed twice"));
        }
        if self.encode().len() > limits::ENCODED_BYTES_MAX {
            return Err(invalid("charter", "larger than 48 KiB"));
        }
        Ok(())
    }
}

impl Terms {
    /// Canonical CBOR bytes (sent in a `Terms` link frame).
    pub fn encode(&self) -> Vec<u8> {
        let mut formats = self.formats.clone();
        formats.sort();
        formats.dedup();
        to_bytes(&Value::Array(vec![
            uint(CHARTER_VERSION),
            member_value(&self.member),
            Value::Array(formats.iter().map(format_value).collect()),
            deadlines_value(&self.deadlines),
            uint(self.link_test_interval.as_millis() as u64),
            Value::Array(
                self.counterparts
                    .iter()
                    .map(|(a, b)| {
                        Value::Array(vec![Value::Text(a.clone()), Value::Text(b.clone())])
                    })
                    .collect(),
            ),
        ]))
    }

    /// Decode and check terms received from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Terms> {
        let mut items = Items::new(from_bytes(bytes)?, "terms", 6)?;
        let version = items.uint("terms version")?;
        if version != CHARTER_VERSION {
            return Err(CharterError::UnsupportedVersion(version));
        }
        let member = member_from(items.next()?)?;
        let formats = items
            .array("formats", limits::FORMATS_MAX)?
            .into_iter()
            .map(format_from)
            .collect::<Result<Vec<_>>>()?;
        let deadlines = deadlines_from(items.next()?)?;
        let link_test_interval = Duration::from_millis(items.uint("link_test_interval")?);
        let counterparts = items
            .array("counterparts", limits::COUNTERPARTS_MAX)?
            .into_iter()
            .map(|v| {
                let mut pair = Items::new(v, "counterpart", 2)?;
                Ok((pair.text("counterpart")?, pair.text("counterpart")?))
            })
            .collect::<Result<Vec<_>>>()?;
        let terms = Terms {
            member,
            formats,
            deadlines,
            link_test_interval,
            counterparts,
        };
        terms.check()?;
        if terms.encode() != bytes {
            return Err(CharterError::NotCanonical);
        }
        Ok(terms)
    }

    /// Check every bound; the node checks its own terms before offering them.
    pub fn check(&self) -> Result<()> {
        check_member(&self.member)?;
        if self.formats.len() > limits::FORMATS_MAX {
            return Err(invalid("formats", "too many"));
        }
        check_formats(&self.formats)?;
        check_deadlines(&self.deadlines)?;
        check_interval(self.link_test_interval)?;
        if self.counterparts.len() > limits::COUNTERPARTS_MAX {
            return Err(invalid("counterparts", "too many"));
        }
        for (a, b) in &self.counterparts {
            check_text("counterpart", a, limits::POSITION_BYTES_MAX)?;
            check_text("counterpart", b, limits::POSITION_BYTES_MAX)?;
        }
        if self.encode().len() > limits::ENCODED_BYTES_MAX {
            return Err(invalid("terms", "larger than 48 KiB"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: &str) -> CharterError {
    CharterError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(CharterError::Invalid {
            field,
            reason: format!("{} bytes; the limit is {max}", value.len()),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_member(m: &Member) -> Result<()> {
    check_text("name", &m.name, limits::NAME_BYTES_MAX)?;
    if m.name.is_empty() {
        return Err(invalid("name", "empty"));
    }
    check_text("party", &m.party, limits::PARTY_BYTES_MAX)?;
    check_text("lang", &m.lang, limits::LANG_BYTES_MAX)?;
    check_text("tz", &m.tz, limits::TZ_BYTES_MAX)?;
    if m.addresses.len() > limits::ADDRESSES_MAX {
        return Err(invalid("addresses", "more than 8"));
    }
    for a in &m.addresses {
        check_text("address", a, limits::ADDRESS_BYTES_MAX)?;
    }
    Ok(())
}

fn check_formats(formats: &[FormatRef]) -> Result<()> {
    for f in formats {
        check_text("format id", &f.id, limits::FORMAT_ID_BYTES_MAX)?;
        if f.id.is_empty() {
            return Err(invalid("format id", "empty"));
        }
    }
    Ok(())
}

fn check_deadlines(d: &Deadlines) -> Result<()> {
    for (field, value) in d.all() {
        check_duration(field, value)?;
    }
    Ok(())
}

fn check_interval(d: Duration) -> Result<()> {
    check_duration(LINK_TEST_TERM, d)
}

fn check_duration(field: &'static str, d: Duration) -> Result<()> {
    let ms = d.as_millis();
    if ms < limits::DURATION_MIN_MS as u128 || ms > limits::DURATION_MAX_MS as u128 {
        return Err(CharterError::Invalid {
            field,
            reason: "must be between 1s and 30 days".into(),
        });
    }
    if ms * 1_000_000 != d.as_nanos() {
        return Err(invalid(field, "must be whole milliseconds"));
    }
    Ok(())
}

fn uint(v: u64) -> Value {
    Value::Integer(v.into())
}

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    // Writing a Value into a Vec cannot fail.
    coset::cbor::ser::into_writer(value, &mut out).expect("CBOR into a Vec");
    out
}

fn from_bytes(bytes: &[u8]) -> Result<Value> {
    if bytes.len() > limits::ENCODED_BYTES_MAX {
        return Err(invalid("charter", "larger than 48 KiB"));
    }
    coset::cbor::de::from_reader(bytes).map_err(|e| CharterError::Malformed(e.to_string()))
}

fn member_value(m: &Member) -> Value {
    Value::Array(vec![
        Value::Bytes(m.key.as_bytes().to_vec()),
        Value::Text(m.name.clone()),
        Value::Text(m.party.clone()),
        Value::Array(m.addresses.iter().cloned().map(Value::Text).collect()),
        Value::Text(m.lang.clone()),
        Value::Text(m.tz.clone()),
    ])
}

fn member_from(value: Value) -> Result<Member> {
    let mut items = Items::new(value, "member", 6)?;
    let key = match items.next()? {
        Value::Bytes(b) => {
            let bytes: [u8; 32] = b
                .try_into()
                .map_err(|_| CharterError::Malformed("member key: expected 32 bytes".into()))?;
            PartyKey::from_bytes(bytes)
                .map_err(|_| CharterError::Malformed("member key: not an Ed25519 key".into()))?
        }
        _ => return Err(CharterError::Malformed("member key: expected bytes".into())),
    };
    let name = items.text("name")?;
    let party = items.text("party")?;
    let addresses = items
        .array("addresses", limits::ADDRESSES_MAX)?
        .into_iter()
        .map(|v| match v {
            Value::Text(s) => Ok(s),
            _ => Err(CharterError::Malformed("address: expected text".into())),
        })
        .collect::<Result<Vec<_>>>()?;
    let lang = items.text("lang")?;
    let tz = items.text("tz")?;
    Ok(Member {
        key,
        name,
        party,
        addresses,
        lang,
        tz,
    })
}

fn format_value(f: &FormatRef) -> Value {
    Value::Array(vec![
        Value::Text(f.id.clone()),
        uint(u64::from(f.version)),
        Value::Bytes(f.digest.to_vec()),
    ])
}

fn format_from(value: Value) -> Result<FormatRef> {
    let mut items = Items::new(value, "format", 3)?;
    let id = items.text("format id")?;
    let version = u32::try_from(items.uint("format version")?)
        .map_err(|_| CharterError::Malformed("format version: too large".into()))?;
    let digest = match items.next()? {
        Value::Bytes(b) => b
            .try_into()
            .map_err(|_| CharterError::Malformed("format digest: expected 32 bytes".into()))?,
        _ => {
            return Err(CharterError::Malformed(
                "format digest: expected bytes".into(),
            ))
        }
    };
    Ok(FormatRef {
        id,
        version,
        digest,
    })
}

fn deadlines_value(d: &Deadlines) -> Value {
    Value::Array(
        d.all()
            .iter()
            .map(|(_, v)| uint(v.as_millis() as u64))
            .collect(),
    )
}

fn deadlines_from(value: Value) -> Result<Deadlines> {
    let mut items = Items::new(value, "deadlines", 5)?;
    let mut next = |field| items.uint(field).map(Duration::from_millis);
    Ok(Deadlines {
        flash_delivered: next("flash_delivered")?,
        flash_acknowledged: next("flash_acknowledged")?,
        immediate_acknowledged: next("immediate_acknowledged")?,
        priority_acknowledged: next("priority_acknowledged")?,
        routine_acknowledged: next("routine_acknowledged")?,
    })
}

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
            _ => Err(CharterError::Malformed(format!(
                "{what}: expected an array of {len}"
            ))),
        }
    }

    fn next(&mut self) -> Result<Value> {
        self.items
            .next()
            .ok_or_else(|| CharterError::Malformed(format!("{} is short", self.what)))
    }

    fn uint(&mut self, field: &str) -> Result<u64> {
        match self.next()? {
            Value::Integer(i) => u64::try_from(i)
                .map_err(|_| CharterError::Malformed(format!("{field}: expected unsigned"))),
            _ => Err(CharterError::Malformed(format!(
                "{field}: expected unsigned"
            ))),
        }
    }

    fn text(&mut self, field: &str) -> Result<String> {
        match self.next()? {
            Value::Text(s) => Ok(s),
            _ => Err(CharterError::Malformed(format!("{field}: expected text"))),
        }
    }

    fn array(&mut self, field: &str, max: usize) -> Result<Vec<Value>> {
        match self.next()? {
            Value::Array(list) if list.len() <= max => Ok(list),
            Value::Array(_) => Err(CharterError::Malformed(format!(
                "{field}: more than {max} items"
            ))),
            _ => Err(CharterError::Malformed(format!("{field}: expected array"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PartySecret;

    pub(crate) fn terms(seed: u8, name: &str) -> Terms {
        Terms {
            member: Member {
                key: PartySecret::from_seed([seed; 32]).public(),
                name: name.into(),
                party: format!("{name} party"),
                addresses: vec!["127.0.0.1:7000".into()],
                lang: "en".into(),
                tz: "UTC".into(),
            },
            formats: vec![FormatRef {
                id: "launch".into(),
                version: 1,
                digest: [seed; 32],
            }],
            deadlines: Deadlines::default(),
            link_test_interval: Duration::from_secs(3600),
            counterparts: vec![("Duty Officer".into(), format!("{name} desk"))],
        }
    }

    #[test]
    fn agreement_is_symmetric_and_strict() {
        let mut a = terms(1, "alpha");
        let mut b = terms(2, "bravo");
        a.deadlines.flash_acknowledged = Duration::from_secs(60);
        b.deadlines.routine_acknowledged = Duration::from_secs(7200);
        b.link_test_interval = Duration::from_secs(5);
        let shared = FormatRef {
            id: "text".into(),
            version: 1,
            digest: [9; 32],
        };
        a.formats.push(shared.clone());
        b.formats.push(shared.clone());
        let ab = Charter::agree(&a, &b).unwrap();
        let ba = Charter::agree(&b, &a).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.digest(), ba.digest());
        assert_eq!(ab.deadlines.flash_acknowledged, Duration::from_secs(60));
        assert_eq!(ab.deadlines.routine_acknowledged, Duration::from_secs(7200));
        assert_eq!(ab.link_test_interval, Duration::from_secs(5));
        // `launch` is held by both but with different definitions: not in the charter.
        assert_eq!(ab.formats, vec![shared]);
        assert!(ab.holds_format("text", 1));
        assert!(!ab.holds_format("launch", 1));
        assert_eq!(ab.counterparts.len(), 2);
        assert_eq!(Charter::decode(&ab.encode()).unwrap(), ab);
    }

    #[test]
    fn a_term_below_a_floor_is_named_and_our_own_offer_always_passes() {
        let ours = terms(1, "alpha");
        let mut theirs = terms(2, "bravo");
        theirs.deadlines.flash_acknowledged = Duration::from_secs(1);
        theirs.link_test_interval = Duration::from_secs(1);
        let floors = Floors::default().capped_by(&ours);
        let charter = Charter::agree(&ours, &theirs).unwrap();
        let below = charter.check_floors(&floors).unwrap_err();
        assert_eq!(
            below,
            vec![
                BelowFloor {
                    term: "deadlines.flash_acknowledged",
                    offered: Duration::from_secs(1),
                    floor: Duration::from_secs(60),
                },
                BelowFloor {
                    term: LINK_TEST_TERM,
                    offered: Duration::from_secs(1),
                    floor: Duration::from_secs(60),
                },
            ]
        );
        assert!(Charter::agree(&ours, &terms(2, "bravo"))
            .unwrap()
            .check_floors(&floors)
            .is_ok());
        assert!(charter.check_floors(&Floors::NONE).is_ok());
        // Our own ask below the default floor lowers that floor to it.
        let mut eager = terms(1, "alpha");
        eager.deadlines.flash_acknowledged = Duration::from_secs(2);
        let capped = Floors::default().capped_by(&eager);
        assert_eq!(capped.deadlines.flash_acknowledged, Duration::from_secs(2));
        assert_eq!(
            capped.deadlines.routine_acknowledged,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn terms_round_trip_and_bounds() {
        let t = terms(3, "charlie");
        assert_eq!(Terms::decode(&t.encode()).unwrap(), t);
        let mut bad = t.clone();
        bad.deadlines.flash_delivered = Duration::from_millis(10);
        assert!(matches!(
            Terms::decode(&bad.encode()),
            Err(CharterError::Invalid { .. })
        ));
        let mut bad = t.clone();
        bad.member.addresses = vec!["x".into(); 9];
        assert!(Terms::decode(&bad.encode()).is_err());
        assert_eq!(Charter::agree(&t, &t).unwrap_err(), CharterError::SameParty);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused_or_different() {
        let charter = Charter::agree(&terms(1, "alpha"), &terms(2, "bravo")).unwrap();
        let bytes = charter.encode();
        for len in 0..bytes.len() {
            assert!(Charter::decode(&bytes[..len]).is_err());
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            if let Ok(c) = Charter::decode(&b) {
                assert_ne!(c.digest(), charter.digest());
            }
        }
    }
}
