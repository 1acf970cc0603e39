-- detente store: a third kind of evidence (issue 12 item 17). 2: a held envelope of the peer
-- whose `prev` is not the id of the peer's own envelope at the seq before it, found when
-- the gap filled (`first` is the appended envelope at seq - 1, `second` the held one at
-- seq). SQLite cannot change a CHECK constraint in place, so the table is rebuilt, rows
-- and ids kept.
CREATE TABLE evidence_new (
    id       INTEGER PRIMARY KEY,
    channel  BLOB    NOT NULL CHECK (length(channel) = 32),
    peer     TEXT    NOT NULL,
    -- 0 two envelopes with one (channel, sender, seq); 1 two inconsistent checkpoints;
    -- 2 a held envelope that does not follow the appended one before it.
    kind     INTEGER NOT NULL CHECK (kind IN (0, 1, 2)),
    seq      INTEGER,
    first    BLOB    NOT NULL,
    second   BLOB    NOT NULL,
    detail   TEXT    NOT NULL,
    detected_at_ms INTEGER NOT NULL
) STRICT;
INSERT INTO evidence_new (id, channel, peer, kind, seq, first, second, detail, detected_at_ms)
    SELECT id, channel, peer, kind, seq, first, second, detail, detected_at_ms FROM evidence;
DROP TABLE evidence;
ALTER TABLE evidence_new RENAME TO evidence;
