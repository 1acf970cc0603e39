-- detente store (PostgreSQL): the console's "needs action" queue, as SQLite's migration 0010.
--
-- Every text or notification (kind 0 or 4) without an ACKNOWLEDGED or DECLINED receipt,
-- kept by triggers. `start_ms` is where its deadlines count from, as the deadline watch
-- counts them: `created_at_ms` for ours, `stored_at_ms` for the peer's.
CREATE TABLE console_unanswered (
    id         BYTEA  NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    peer       TEXT   COLLATE "C" NOT NULL,
    direction  BIGINT NOT NULL CHECK (direction IN (0, 1)),
    precedence BIGINT NOT NULL CHECK (precedence BETWEEN 0 AND 255),
    start_ms   BIGINT NOT NULL
);

CREATE INDEX console_unanswered_due ON console_unanswered (peer, precedence, start_ms, id);

INSERT INTO console_unanswered (id, peer, direction, precedence, start_ms)
    SELECT m.id, m.peer, m.direction, m.precedence,
           CASE m.direction WHEN 0 THEN m.created_at_ms ELSE m.stored_at_ms END
    FROM messages m
    WHERE m.kind IN (0, 4)
      AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r."of" = m.id AND r.level IN (2, 3));

CREATE FUNCTION console_unanswered_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IN (0, 4) AND NOT EXISTS
        (SELECT 1 FROM receipts r WHERE r."of" = NEW.id AND r.level IN (2, 3)) THEN
        INSERT INTO console_unanswered (id, peer, direction, precedence, start_ms)
        VALUES (NEW.id, NEW.peer, NEW.direction, NEW.precedence,
                CASE NEW.direction WHEN 0 THEN NEW.created_at_ms ELSE NEW.stored_at_ms END)
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER console_unanswered_add AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION console_unanswered_add();

CREATE FUNCTION console_unanswered_answered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.level IN (2, 3) THEN
        DELETE FROM console_unanswered WHERE id = NEW."of";
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER console_unanswered_answered AFTER INSERT ON receipts
    FOR EACH ROW EXECUTE FUNCTION console_unanswered_answered();
