-- detente store: the console's full-text search (issue 15). Each text and notification's
-- words as people see them (its text, its courtesy translations, a notification rendered in
-- every console language, its topic and author), written by the console after the
-- envelope's signature is verified. Not transcript data: it can be dropped and rebuilt.
CREATE TABLE console_search (
    id   BLOB NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    body TEXT NOT NULL
);

-- Trigrams, not words: Chinese has no spaces between words, and a duty officer searches
-- for part of a word ("launch" in "launches"). Case-insensitive. Terms of one or two
-- characters are matched with LIKE on console_search instead (a trigram needs three).
CREATE VIRTUAL TABLE console_search_fts USING fts5(
    body,
    content = 'console_search',
    content_rowid = 'rowid',
    tokenize = 'trigram'
);

CREATE TRIGGER console_search_index AFTER INSERT ON console_search BEGIN
    INSERT INTO console_search_fts (rowid, body) VALUES (new.rowid, new.body);
END;

CREATE TRIGGER console_search_unindex AFTER DELETE ON console_search BEGIN
    INSERT INTO console_search_fts (console_search_fts, rowid, body)
        VALUES ('delete', old.rowid, old.body);
END;
