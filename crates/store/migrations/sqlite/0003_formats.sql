-- detente store, SQLite schema: structured notifications.
--
-- Notifications are stored in `messages` like every envelope, with kind 4 (the envelope
-- body kind; the comment in 0001 predates it). This migration adds the channel glossary:
-- bilingual terms the operators of a channel agreed, which rendering marks in free text.

CREATE TABLE glossary (
    peer        TEXT    NOT NULL,
    lang_a      TEXT    NOT NULL CHECK (length(lang_a) BETWEEN 1 AND 35),
    term_a      TEXT    NOT NULL CHECK (length(term_a) BETWEEN 1 AND 200),
    lang_b      TEXT    NOT NULL CHECK (length(lang_b) BETWEEN 1 AND 35),
    term_b      TEXT    NOT NULL CHECK (length(term_b) BETWEEN 1 AND 200),
    added_at_ms INTEGER NOT NULL,
    -- One agreed equivalent per term and language pair; adding it again replaces it.
    PRIMARY KEY (peer, lang_a, term_a, lang_b)
) STRICT;
