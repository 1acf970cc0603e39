-- detente store: the time zone an operator reads times in (issue 15, item 5), an IANA name;
-- empty: the node's own.
ALTER TABLE users ADD COLUMN tz TEXT NOT NULL DEFAULT '';
