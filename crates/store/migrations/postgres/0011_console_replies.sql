-- detente store, PostgreSQL: the console's thread view (as SQLite's 0011). A message page
-- shows the answers to the message; this partial index finds them directly.
CREATE INDEX console_replies ON messages (in_reply_to, created_at_ms)
    WHERE in_reply_to IS NOT NULL;
