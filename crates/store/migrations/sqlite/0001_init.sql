-- detente store, SQLite schema version 1.
--
-- Tables are STRICT so a value of the wrong type is refused at write time instead of
-- surfacing later as a corrupt row. The numeric codes (direction, placement, kind, level,
-- precedence) are part of the on-disk format: never renumber them.

-- Every envelope this node wrote or received, with the fields it lists and indexes by.
-- `bytes` is the exact signed encoding; the other columns can be re-derived from it.
CREATE TABLE messages (
    id            BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    channel       BLOB    NOT NULL CHECK (length(channel) = 32),
    sender        BLOB    NOT NULL CHECK (length(sender) = 32),
    seq           INTEGER NOT NULL CHECK (seq >= 0),
    peer          TEXT    NOT NULL,
    -- 0 out (written by this node's party), 1 in (received).
    direction     INTEGER NOT NULL CHECK (direction IN (0, 1)),
    -- 0 FLASH, 1 IMMEDIATE, 2 PRIORITY, 3 ROUTINE.
    precedence    INTEGER NOT NULL CHECK (precedence BETWEEN 0 AND 255),
    topic         TEXT    NOT NULL,
    -- 0 text, 1 receipt, 2 test, 3 notification.
    kind          INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 255),
    created_at_ms INTEGER NOT NULL,
    stored_at_ms  INTEGER NOT NULL,
    in_reply_to   BLOB    CHECK (in_reply_to IS NULL OR length(in_reply_to) = 32),
    -- 0 appended to its stream, 1 held ahead of a gap.
    placement     INTEGER NOT NULL CHECK (placement IN (0, 1)),
    -- For this node's envelopes: when the peer's signed DELIVERED receipt was created.
    delivered_at_ms INTEGER,
    bytes         BLOB    NOT NULL,
    UNIQUE (channel, sender, seq)
) STRICT;

-- Listings across all peers: newest first by created_at, each sender in seq order.
CREATE INDEX messages_by_time ON messages (created_at_ms, sender, seq);
-- Listings for one peer.
CREATE INDEX messages_by_peer_time ON messages (peer, created_at_ms, sender, seq);
-- Held messages are few; a partial index finds them without walking a whole stream.
CREATE INDEX messages_held ON messages (channel, sender, seq) WHERE placement = 1;
-- The outbox refers to this node's envelopes by (peer, seq). A node has exactly one
-- outgoing stream per peer, so the pair names one message; the index both enforces that
-- and serves the outbox join.
CREATE UNIQUE INDEX messages_out_by_peer_seq ON messages (peer, seq) WHERE direction = 0;
-- Outgoing messages still waiting for a DELIVERED receipt: marking a range delivered walks
-- only these, however wide the range a receipt claims.
CREATE INDEX messages_out_undelivered ON messages (peer, seq)
    WHERE direction = 0 AND delivered_at_ms IS NULL;

-- Contiguous state of each sender's stream in each channel.
CREATE TABLE streams (
    channel  BLOB    NOT NULL CHECK (length(channel) = 32),
    sender   BLOB    NOT NULL CHECK (length(sender) = 32),
    next_seq INTEGER NOT NULL CHECK (next_seq >= 0),
    last_id  BLOB    NOT NULL CHECK (length(last_id) = 32),
    PRIMARY KEY (channel, sender)
) STRICT, WITHOUT ROWID;

-- This node's envelopes the peer has not yet confirmed.
CREATE TABLE outbox (
    peer       TEXT    NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    precedence INTEGER NOT NULL CHECK (precedence BETWEEN 0 AND 255),
    is_receipt INTEGER NOT NULL CHECK (is_receipt IN (0, 1)),
    delivered  INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1)),
    PRIMARY KEY (peer, seq)
) STRICT, WITHOUT ROWID;

-- The sender's queue per precedence; delivered rows wait only for pruning, so they are
-- left out of the index that the send loop and the counts read.
CREATE INDEX outbox_pending ON outbox (peer, precedence, seq) WHERE delivered = 0;

-- Receipt effects: "message `of` reached `level` at `at_ms`, proven by `receipt_id`".
-- One per (of, level); the first recorded wins.
CREATE TABLE receipts (
    of         BLOB    NOT NULL CHECK (length(of) = 32),
    -- 0 delivered, 1 read, 2 acknowledged, 3 declined.
    level      INTEGER NOT NULL CHECK (level BETWEEN 0 AND 3),
    at_ms      INTEGER NOT NULL,
    receipt_id BLOB    NOT NULL CHECK (length(receipt_id) = 32),
    note       TEXT,
    PRIMARY KEY (of, level)
) STRICT, WITHOUT ROWID;
