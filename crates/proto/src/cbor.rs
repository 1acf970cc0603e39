//! Reading definite-length CBOR items in place, without building a `Value` tree: the fast
//! paths of the bundle reader and the envelope payload decoder. Every method returns `None` on
//! anything unexpected; the callers then fall back to the full decoders, which name what is
//! wrong, so these readers never decide an error message.

use crate::identity::PartyKey;

/// A position in a byte string of CBOR items.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// Whether every byte has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The major type and argument of the next item (no indefinite lengths, no reserved
    /// values).
    fn head(&mut self) -> Option<(u8, u64)> {
        let first = *self.bytes.get(self.at)?;
        let (major, info) = (first >> 5, first & 0x1f);
        let extra = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let argument = match extra {
            0 => u64::from(info),
            n => {
                let raw = self.bytes.get(self.at + 1..self.at + 1 + n)?;
                raw.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b))
            }
        };
        self.at += 1 + extra;
        Some((major, argument))
    }

    pub(crate) fn uint(&mut self) -> Option<u64> {
        match self.head()? {
            (0, v) => Some(v),
            _ => None,
        }
    }

    /// An array's length, at most `max`.
    pub(crate) fn array(&mut self, max: usize) -> Option<usize> {
        match self.head()? {
            // Each item takes at least a byte: a length beyond the rest is refused before
            // anything is allocated for it.
            (4, n) => usize::try_from(n)
                .ok()
                .filter(|n| *n <= max && *n <= self.bytes.len() - self.at),
            _ => None,
        }
    }

    /// An array of exactly `len` items.
    pub(crate) fn array_of(&mut self, len: usize) -> Option<()> {
        (self.array(len)? == len).then_some(())
    }

    fn string(&mut self, major: u8) -> Option<&'a [u8]> {
        match self.head()? {
            (m, n) if m == major => {
                let end = self.at.checked_add(usize::try_from(n).ok()?)?;
                let item = self.bytes.get(self.at..end)?;
                self.at = end;
                Some(item)
            }
            _ => None,
        }
    }

    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        self.string(2)
    }

    pub(crate) fn bytes32(&mut self) -> Option<[u8; 32]> {
        self.bytes()?.try_into().ok()
    }

    /// Raw text-string bytes (not checked to be UTF-8).
    pub(crate) fn text(&mut self) -> Option<&'a [u8]> {
        self.string(3)
    }

    /// A text string as an owned, UTF-8-checked `String`.
    pub(crate) fn string_owned(&mut self) -> Option<String> {
        std::str::from_utf8(self.text()?).ok().map(str::to_owned)
    }

    /// Whether the next item is `null`; consumes it if so.
    pub(crate) fn null(&mut self) -> bool {
        let is_null = self.bytes.get(self.at) == Some(&0xf6);
        if is_null {
            self.at += 1;
        }
        is_null
    }

    /// The major type of the next item, without consuming it.
    pub(crate) fn peek_major(&self) -> Option<u8> {
        self.bytes.get(self.at).map(|b| b >> 5)
    }

    pub(crate) fn key(&mut self) -> Option<PartyKey> {
        PartyKey::from_bytes(self.bytes32()?).ok()
    }

    pub(crate) fn byte_list(&mut self, max: usize) -> Option<Vec<&'a [u8]>> {
        (0..self.array(max)?).map(|_| self.bytes()).collect()
    }
}
