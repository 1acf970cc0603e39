-- detente store, schema version 2: the verifiable transcript (docs/transcript-format.md).

-- Every complete Merkle subtree of every appended stream: (level, idx) covers leaves
-- idx·2^level .. (idx+1)·2^level (leaf i is the envelope with seq i + 1). Written in the
-- same transaction as the message that completes it, never changed; proofs read O(log n)
-- rows of it.
CREATE TABLE tree_nodes (
    channel BLOB    NOT NULL CHECK (length(channel) = 32),
    sender  BLOB    NOT NULL CHECK (length(sender) = 32),
    level   INTEGER NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    hash    BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (channel, sender, level, idx)
) STRICT, WITHOUT ROWID;

-- Checkpoints this node signed or received, one row per body; `signed` is the encoded
-- SignedCheckpoint with every signature known so far.
CREATE TABLE checkpoints (
    id        INTEGER PRIMARY KEY,
    channel   BLOB    NOT NULL CHECK (length(channel) = 32),
    body_hash BLOB    NOT NULL UNIQUE CHECK (length(body_hash) = 32),
    time_ms   INTEGER NOT NULL,
    -- 1 when signed by every member.
    cosigned  INTEGER NOT NULL CHECK (cosigned IN (0, 1)),
    signed    BLOB    NOT NULL,
    stored_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX checkpoints_by_channel ON checkpoints (channel, id);

-- The witness rule: the largest tree of each stream this node has signed. A new signature
-- needs sizes at least these and trees that extend them. Updated in the transaction that
-- stores the checkpoint, before the signature leaves the node.
CREATE TABLE witness (
    channel BLOB    NOT NULL CHECK (length(channel) = 32),
    sender  BLOB    NOT NULL CHECK (length(sender) = 32),
    size    INTEGER NOT NULL CHECK (size >= 0),
    root    BLOB    NOT NULL CHECK (length(root) = 32),
    PRIMARY KEY (channel, sender)
) STRICT, WITHOUT ROWID;

-- Evidence of equivocation: two different things validly signed by one party that cannot
-- both be true. The channel is flagged while any row names it.
CREATE TABLE evidence (
    id       INTEGER PRIMARY KEY,
    channel  BLOB    NOT NULL CHECK (length(channel) = 32),
    peer     TEXT    NOT NULL,
    -- 0 two envelopes with one (channel, sender, seq); 1 two inconsistent checkpoints.
    kind     INTEGER NOT NULL CHECK (kind IN (0, 1)),
    seq      INTEGER,
    first    BLOB    NOT NULL,
    second   BLOB    NOT NULL,
    detail   TEXT    NOT NULL,
    detected_at_ms INTEGER NOT NULL
) STRICT;
