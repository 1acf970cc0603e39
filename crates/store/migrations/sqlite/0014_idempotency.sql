-- detente store: idempotency keys of the API's sends (issue 12 item 3). A request made with
-- an `Idempotency-Key` stores its key, a fingerprint of the request and its answer (the
-- messages' ids, seqs and precedences, `sent`: 41 bytes each) in the same transaction as
-- the messages, so a retry after a crash finds either both or neither. Keys are scoped to
-- the caller, forgotten after 24 hours (a bounded number per commit, oldest first).
CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    sent          BLOB NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_ms);
CREATE INDEX idempotency_keys_scope_created ON idempotency_keys (scope, created_at_ms);
