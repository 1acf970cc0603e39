//! What both stores share: the checks a batch passes before either database sees it, the
//! chunking of multi-row statements, the numeric codes of the schema and the decoding of
//! rows into the crate's types (generic over sqlx's row type, so a column is decoded and
//! a malformed one reported the same way whichever database it came from).

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Direction, Hash32, MessageRow, Placement, Result, StoreError, WriteBatch};

/// The columns of `messages` in the order [`decode_message`] reads them.
pub(crate) const MESSAGE_SELECT: &str = "SELECT id, channel, sender, seq, peer, direction, \
     precedence, topic, kind, created_at_ms, stored_at_ms, in_reply_to, placement, bytes \
     FROM messages";

/// Rows an inbox listing returns when the query asks for 0.
pub(crate) const INBOX_ROWS_DEFAULT: u32 = 1000;

/// Every `u64` in the batch must fit the databases' signed 64-bit integers (both stores
/// hold integers as i64).
pub(crate) fn check_ranges(batch: &WriteBatch) -> Result<()> {
    let too_big = |what: &str, v: u64| {
        StoreError::Database(format!(
            "{what} {v} is beyond the largest integer the store holds"
        ))
    };
    let limit = i64::MAX as u64;
    for m in &batch.messages {
        if m.seq > limit {
            return Err(too_big("message seq", m.seq));
        }
    }
    for &(_, _, seq) in &batch.promote {
        if seq > limit {
            return Err(too_big("promote seq", seq));
        }
    }
    for &(_, _, seq) in &batch.discard_held {
        if seq > limit {
            return Err(too_big("discard_held seq", seq));
        }
    }
    for o in &batch.outbox {
        if o.seq > limit {
            return Err(too_big("outbox seq", o.seq));
        }
    }
    for s in &batch.streams {
        if s.next_seq > limit {
            return Err(too_big("stream next_seq", s.next_seq));
        }
    }
    for t in &batch.tree_nodes {
        if t.index > limit {
            return Err(too_big("tree node index", t.index));
        }
    }
    for e in &batch.evidence {
        if e.seq.is_some_and(|s| s > limit) {
            return Err(too_big("evidence seq", e.seq.unwrap_or(0)));
        }
    }
    // Delivered ranges are only compared against stored seqs; `int` clamps them.
    // A prune high-water mark beyond the range is not stored, only compared; it is
    // clamped in `prune`, where it still means "everything".
    Ok(())
}

/// A `u64` that [`check_ranges`] has already accepted.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn describe_message(m: &MessageRow) -> String {
    format!(
        "{} (peer {:?}, sender {}…, seq {})",
        hex(&m.id),
        m.peer,
        hex(&m.sender[..4]),
        m.seq
    )
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Split `items` into chunks whose lengths are powers of two no larger than `max` (which
/// should itself be one): 700 rows with max 512 become 512 + 128 + 32 + 16 + 8 + 4. Each
/// length has its own SQL text, so this keeps the set of texts small and every one of them
/// prepared once and cached, instead of a fresh prepare for each batch size.
pub(crate) fn pow2_chunks<T>(mut items: &[T], max: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    while !items.is_empty() {
        let n = items.len().min(max);
        // Largest power of two <= n (n >= 1 here).
        let size = 1usize << (usize::BITS - 1 - n.leading_zeros());
        let (head, tail) = items.split_at(size);
        chunks.push(head);
        items = tail;
    }
    chunks
}

pub(crate) fn direction_code(d: Direction) -> i64 {
    match d {
        Direction::Out => 0,
        Direction::In => 1,
    }
}

pub(crate) fn placement_code(p: Placement) -> i64 {
    match p {
        Placement::Appended => 0,
        Placement::Held => 1,
    }
}

pub(crate) fn corrupt(table: &'static str, what: String) -> StoreError {
    StoreError::Corrupt { table, what }
}

/// Read a column; a value of the wrong type is a corrupt row, not a query failure.
pub(crate) fn get<'r, R, T>(row: &'r R, table: &'static str, column: &str) -> Result<T>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column)
        .map_err(|e| corrupt(table, format!("column {column}: {e}")))
}

pub(crate) fn hash<R>(row: &R, table: &'static str, column: &str) -> Result<Hash32>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
{
    let bytes: &[u8] = get(row, table, column)?;
    to_hash(bytes, table, column)
}

pub(crate) fn opt_hash<R>(row: &R, table: &'static str, column: &str) -> Result<Option<Hash32>>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> Option<&'r [u8]>: Decode<'r, R::Database> + Type<R::Database>,
{
    let bytes: Option<&[u8]> = get(row, table, column)?;
    bytes.map(|b| to_hash(b, table, column)).transpose()
}

fn to_hash(bytes: &[u8], table: &'static str, column: &str) -> Result<Hash32> {
    Hash32::try_from(bytes).map_err(|_| {
        corrupt(
            table,
            format!("column {column} is {} bytes, expected 32", bytes.len()),
        )
    })
}

pub(crate) fn uint<R>(row: &R, table: &'static str, column: &str) -> Result<u64>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let v: i64 = get(row, table, column)?;
    u64::try_from(v).map_err(|_| corrupt(table, format!("column {column} is negative: {v}")))
}

pub(crate) fn small<R>(row: &R, table: &'static str, column: &str) -> Result<u8>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let v: i64 = get(row, table, column)?;
    u8::try_from(v).map_err(|_| corrupt(table, format!("column {column} out of range: {v}")))
}

/// Decode a row selected with the columns of `MESSAGE_SELECT` (the same in both stores).
pub(crate) fn decode_message<R>(row: &R) -> Result<MessageRow>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<&'r [u8]>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    const T: &str = "messages";
    let direction = match get::<R, i64>(row, T, "direction")? {
        0 => Direction::Out,
        1 => Direction::In,
        v => return Err(corrupt(T, format!("unknown direction {v}"))),
    };
    let placement = match get::<R, i64>(row, T, "placement")? {
        0 => Placement::Appended,
        1 => Placement::Held,
        v => return Err(corrupt(T, format!("unknown placement {v}"))),
    };
    Ok(MessageRow {
        id: hash(row, T, "id")?,
        channel: hash(row, T, "channel")?,
        sender: hash(row, T, "sender")?,
        seq: uint(row, T, "seq")?,
        peer: get(row, T, "peer")?,
        direction,
        precedence: small(row, T, "precedence")?,
        topic: get(row, T, "topic")?,
        kind: small(row, T, "kind")?,
        created_at_ms: get(row, T, "created_at_ms")?,
        stored_at_ms: get(row, T, "stored_at_ms")?,
        in_reply_to: opt_hash(row, T, "in_reply_to")?,
        placement,
        bytes: get(row, T, "bytes")?,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The columns of `idempotency_keys` in the order [`decode_idempotency`] reads them.
pub(crate) const IDEMPOTENCY_SELECT: &str =
    "SELECT scope, key, fingerprint, created_at_ms, sent FROM idempotency_keys";

/// Decode a row selected with the columns of [`IDEMPOTENCY_SELECT`] (the same in both stores).
pub(crate) fn decode_idempotency<R>(row: &R) -> Result<crate::IdempotencyRow>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    const T: &str = "idempotency_keys";
    let sent: &[u8] = get(row, T, "sent")?;
    let sent = crate::decode_sent(sent).ok_or_else(|| {
        corrupt(
            T,
            format!("column sent is {} bytes, not whole records", sent.len()),
        )
    })?;
    Ok(crate::IdempotencyRow {
        scope: get(row, T, "scope")?,
        key: get(row, T, "key")?,
        fingerprint: hash(row, T, "fingerprint")?,
        created_at_ms: get(row, T, "created_at_ms")?,
        sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK_ROWS_MAX: usize = 512;

    #[test]
    pub(crate) fn pow2_chunks_cover_everything_in_order() {
        for n in 0..1500usize {
            let items: Vec<usize> = (0..n).collect();
            let chunks = pow2_chunks(&items, CHUNK_ROWS_MAX);
            let joined: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, items);
            for c in &chunks {
                assert!(c.len().is_power_of_two() && c.len() <= CHUNK_ROWS_MAX);
            }
        }
    }

    #[test]
    fn hex_encodes_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
