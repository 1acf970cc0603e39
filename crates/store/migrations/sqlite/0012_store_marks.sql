-- detente store: marks set by offline tools (issue 13 item 5). `restored` says the file was
-- restored from a backup: envelopes this node signed after the backup may exist at its
-- peers, so the node refuses to write until they are recovered (see detente restore).
CREATE TABLE store_marks (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
