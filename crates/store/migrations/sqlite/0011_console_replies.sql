-- detente store: the console's thread view (issue 12 item 14). A message page shows the
-- answers to the message; this index finds them directly instead of the page reading the
-- newest 10,000 messages of the channel to filter them.
CREATE INDEX console_replies ON messages (in_reply_to, created_at_ms)
    WHERE in_reply_to IS NOT NULL;
