-- detente store: a third kind of evidence (issue 12 item 17). 2: a held envelope of the peer
-- whose `prev` is not the id of the peer's own envelope at the seq before it, found when
-- the gap filled (`first` is the appended envelope at seq - 1, `second` the held one at seq).
ALTER TABLE evidence DROP CONSTRAINT evidence_kind_check;
ALTER TABLE evidence ADD CONSTRAINT evidence_kind_check CHECK (kind IN (0, 1, 2));
