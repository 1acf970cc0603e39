-- detente store (PostgreSQL): the replies to a message, for the console's message view, as
-- SQLite's migration 0011.
CREATE INDEX console_replies ON messages (in_reply_to, created_at_ms)
    WHERE in_reply_to IS NOT NULL;
