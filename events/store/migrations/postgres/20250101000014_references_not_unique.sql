-- A life event's reference (`LL-` and 10 characters: 50 bits folded out of its id) is no
-- longer UNIQUE in projection_life_events: a plain index serves the citizen's look-up.
--
-- Two ids can fold to one reference: by chance (about 1 in 2,000 for a million records, 1 in
-- 3 past thirty million), or on purpose (a registrar chooses the Idempotency-Key a new
-- record's id derives from, and about 2^25 keys tried offline give two of them one
-- reference). The projection's upsert of the second record then failed on the unique key,
-- the projection retried its batch forever, and the person and life-event projections stopped
-- for every event after it. Now both rows are stored; a look-up by a reference that names more
-- than one record answers that it is ambiguous (`life_event_status_by_reference`).
ALTER TABLE projection_life_events DROP CONSTRAINT IF EXISTS projection_life_events_reference_key;
CREATE INDEX IF NOT EXISTS projection_life_events_reference ON projection_life_events (reference);
