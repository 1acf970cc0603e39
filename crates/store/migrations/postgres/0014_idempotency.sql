-- detente store (PostgreSQL): idempotency keys of the API's sends (issue 12 item 3); the
-- same table as SQLite's 0014_idempotency.sql. The key, a fingerprint of the request and
-- its answer (`sent`: 41 bytes per message) are stored in the messages' own transaction.
CREATE TABLE idempotency_keys (
    scope         TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    fingerprint   BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    sent          BYTEA NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_ms);
CREATE INDEX idempotency_keys_scope_created ON idempotency_keys (scope, created_at_ms);
