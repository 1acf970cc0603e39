-- detente store (PostgreSQL): the console's thread view, as SQLite's migration 0011. A
-- message page finds the answers to a message by this index instead of reading the channel.
CREATE INDEX console_replies ON messages (in_reply_to, created_at_ms)
    WHERE in_reply_to IS NOT NULL;
