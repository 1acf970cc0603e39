-- Charter envelopes (body kind 6) are few among millions of messages; a partial index finds
-- each peer's in both directions without walking the listing indexes.
CREATE INDEX messages_charters ON messages (peer, direction, seq) WHERE kind = 6;
