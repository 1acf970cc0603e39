-- The operator console: accounts, sessions and the audit log of operator actions.
-- None of this is part of the transcript; it is local to this node.

CREATE TABLE users (
    login TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('watch', 'supervisor', 'principal', 'auditor', 'admin')),
    -- argon2id in PHC string form (algorithm, parameters, salt and hash).
    password_hash TEXT NOT NULL,
    -- Interface language of this operator (en, zh-CN).
    lang TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- A session token is never stored: only its SHA-256.
CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,
    login TEXT NOT NULL REFERENCES users (login) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_by_login ON sessions (login, created_at_ms);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    login TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL
) STRICT;
