-- detente store: the console's "needs action" queue (issue 15).
--
-- Every text or notification (kind 0 or 4) that has neither an ACKNOWLEDGED nor a DECLINED
-- receipt yet, kept by triggers so that no write path has to know about it. `start_ms` is
-- the instant its deadlines count from, exactly as the node's deadline watch counts them
-- (docs/deadlines.md): `created_at_ms` for ours (our own clock), `stored_at_ms` for the
-- peer's (so a peer that back-dates `created_at` cannot make anything look overdue). The
-- index walks each precedence in due order, so the queue and the alarm banner cost the same
-- however many messages the channel holds.
CREATE TABLE console_unanswered (
    id         BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    peer       TEXT    NOT NULL,
    direction  INTEGER NOT NULL CHECK (direction IN (0, 1)),
    precedence INTEGER NOT NULL CHECK (precedence BETWEEN 0 AND 255),
    start_ms   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX console_unanswered_due ON console_unanswered (peer, precedence, start_ms, id);

INSERT INTO console_unanswered (id, peer, direction, precedence, start_ms)
    SELECT m.id, m.peer, m.direction, m.precedence,
           CASE m.direction WHEN 0 THEN m.created_at_ms ELSE m.stored_at_ms END
    FROM messages m
    WHERE m.kind IN (0, 4)
      AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r."of" = m.id AND r.level IN (2, 3));

CREATE TRIGGER console_unanswered_add AFTER INSERT ON messages
    WHEN NEW.kind IN (0, 4)
     AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r."of" = NEW.id AND r.level IN (2, 3))
BEGIN
    INSERT OR IGNORE INTO console_unanswered (id, peer, direction, precedence, start_ms)
    VALUES (NEW.id, NEW.peer, NEW.direction, NEW.precedence,
            CASE NEW.direction WHEN 0 THEN NEW.created_at_ms ELSE NEW.stored_at_ms END);
END;

CREATE TRIGGER console_unanswered_answered AFTER INSERT ON receipts
    WHEN NEW.level IN (2, 3)
BEGIN
    DELETE FROM console_unanswered WHERE id = NEW."of";
END;
