-- Migration 17's check runs with `enable_seqscan = off`, as migration 15's functions do.
-- PL/pgSQL keeps a statement's plan for the session; a plan made while `events` was small (a
-- new database, no statistics yet) could join the inserted rows to a sequential scan of the
-- whole log, kept by that pooled connection as the log grew: every append would then read the
-- whole table. Off, the predecessor of each inserted event is found by the
-- (stream_id, stream_version) unique index (the transition table itself, which has no index,
-- is still scanned).
ALTER FUNCTION events_keep_stream_order() SET enable_seqscan = off;
