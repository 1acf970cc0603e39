-- detente store (PostgreSQL): one active node process per party (issue 13 item 3), and the
-- restore mark (item 5).
--
-- `lease` holds at most one row: which process is active (`holder`), its fencing `epoch`
-- (raised by every acquisition), and until when, on the database server's clock, so that
-- the processes' clocks never matter. Every commit of an active process reads the row
-- FOR SHARE in its own transaction and refuses to go on when the epoch is no longer its
-- own: a process that was paused or cut off can never commit after another took over.
CREATE TABLE lease (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL CHECK (epoch > 0),
    expires_at TIMESTAMPTZ NOT NULL
);

-- One row per epoch (so per take-over, not per commit: bounded by how often the active
-- changes). `first_commit` and `last_commit` are positions in one global order of commits
-- (`commit_order`), so anyone can check from the database alone that no epoch committed
-- after a later one had begun.
CREATE SEQUENCE commit_order;
CREATE TABLE lease_epochs (
    epoch        BIGINT PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  TIMESTAMPTZ NOT NULL,
    commits      BIGINT NOT NULL DEFAULT 0,
    first_commit BIGINT,
    last_commit  BIGINT
);

-- Marks set by offline tools; `restored` makes the node refuse to write (see detente restore).
CREATE TABLE store_marks (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
