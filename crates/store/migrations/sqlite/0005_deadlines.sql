-- detente store: deadlines missed (issue 6).
--
-- "Message `id` missed its `level` deadline (0 delivered, 2 acknowledged), due at
-- `due_at_ms`, noticed at `missed_at_ms`" (both on this node's wall clock, for display; the
-- decision was taken on the monotonic clock). One row per (id, level); the first wins. Kept
-- so that a restart neither forgets an alarm nor raises it (and its hooks) a second time.
CREATE TABLE deadline_misses (
    id           BLOB    NOT NULL CHECK (length(id) = 32),
    level        INTEGER NOT NULL CHECK (level IN (0, 2)),
    due_at_ms    INTEGER NOT NULL,
    missed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (id, level)
) STRICT, WITHOUT ROWID;
