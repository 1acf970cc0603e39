-- detente store (PostgreSQL): the console's full-text search, as SQLite's migration 0013.
-- Each text and notification's words as people see them, written by the console after the
-- envelope's signature is verified. Not transcript data: it can be dropped and rebuilt.
CREATE TABLE console_search (
    id   BYTEA NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    body TEXT  NOT NULL
);

-- Trigrams serve ILIKE '%term%' in any language (Chinese has no spaces between words, so
-- a word-based tsvector would not find a word inside a sentence). pg_trgm is a trusted
-- extension (PostgreSQL 13 and later): the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX console_search_trgm ON console_search USING gin (body gin_trgm_ops);
