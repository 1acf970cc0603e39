-- detente store: the deadline watch reads pending messages per (peer, precedence) group in
-- due order, from a cursor, a bounded number at a time (issue 12 item 8). Without these the
-- read would walk every message of the peer. One partial index per direction, because ours
-- are due from created_at_ms and received ones from stored_at_ms; only texts and
-- notifications (kinds 0 and 4) bear deadlines.
CREATE INDEX messages_due_out ON messages (peer, precedence, created_at_ms, id)
    WHERE direction = 0 AND kind IN (0, 4);
CREATE INDEX messages_due_in ON messages (peer, precedence, stored_at_ms, id)
    WHERE direction = 1 AND kind IN (0, 4);
