-- A deferred policy transaction (`EventStore::begin_deferred`) reads its records without a lock
-- and writes last: its streams' hold moves from the read to the write.
--
-- A registration lane held each record it read (`lifeline_read_streams_held`, migration 12):
-- the `FOR SHARE` lock gave its transaction an id at its start, and every gap-free reader of
-- the log (the relay, the subscriptions) waited for that transaction's commit, across its
-- reads, its decisions and the client's turn to send `COMMIT`. Now the lane reads the records
-- plainly, notes each one's version, and holds them where it writes:
-- - `lifeline_hold_streams` locks the streams `FOR SHARE` (in stream id order, as before) and
--   answers whether each is still at the version read (a statement of its own after the lock,
--   so its snapshot includes an append the lock waited for). A transaction's first write calls
--   it; false means a record moved since it was read (a correction or a void), and the lane
--   reads again, held.
-- - `lifeline_try_append_new_streams_held` is migration 8's statement with that hold first:
--   refused (nothing written) if a record moved. Run on its own, outside a transaction, it is
--   a lane's whole write and its commit: the lane's transaction id lives for this one
--   statement.
-- A correction or a void of a record so commits either before the hold (and the lane, seeing
-- its record moved, reads again) or after the lane's commit (and the `corrections` policy finds
-- the lane's tasks), as with the held read.
--
-- The statement of migration 8 (as migration 10 left it) is repeated rather than called, as
-- there (a nested PL/pgSQL call costs about 0.1 ms).
--
-- Both functions run with `enable_seqscan = off`: PL/pgSQL keeps a statement's plan for the
-- session, and a plan made while `streams` was small (a new database, no statistics yet)
-- joined the held ids to a sequential scan of the whole table, kept as the table grew. In W3 at
-- 500 births/s that scan, once per lane batch, slowed every append (HTTP 201 p50 +25 ms).
CREATE FUNCTION lifeline_hold_streams(p_ids text[], p_versions bigint[])
RETURNS boolean
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM 1 FROM streams WHERE stream_id = ANY(p_ids) ORDER BY stream_id FOR SHARE;
    RETURN NOT EXISTS (
        SELECT 1 FROM unnest(p_ids, p_versions) AS h(stream_id, version)
        LEFT JOIN streams AS s ON s.stream_id = h.stream_id
        WHERE COALESCE(s.version, 0) <> h.version);
END
$$;

CREATE FUNCTION lifeline_try_append_new_streams_held(
    p_new_ids text[],
    p_new_versions bigint[],
    p_new_hashes bytea[],
    p_stream_ids text[],
    p_versions bigint[],
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions int[],
    p_payloads json[],
    p_metadata json[],
    p_recorded_at timestamptz[],
    p_hashes bytea[],
    p_held_ids text[],
    p_held_versions bigint[],
    OUT o_ids uuid[],
    OUT o_positions bigint[],
    OUT o_refused boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    o_refused := false;
    PERFORM 1 FROM streams WHERE stream_id = ANY(p_held_ids) ORDER BY stream_id FOR SHARE;
    IF EXISTS (
        SELECT 1 FROM unnest(p_held_ids, p_held_versions) AS h(stream_id, version)
        LEFT JOIN streams AS s ON s.stream_id = h.stream_id
        WHERE COALESCE(s.version, 0) <> h.version) THEN
        o_refused := true;
        RETURN;
    END IF;
    BEGIN
        WITH created AS (
                 INSERT INTO streams (stream_id, version, last_hash)
                 SELECT * FROM unnest(p_new_ids, p_new_versions, p_new_hashes)
                 ON CONFLICT (stream_id) DO NOTHING RETURNING 1),
             inserted AS (
                 INSERT INTO events (stream_id, stream_version, event_id, event_type,
                                     schema_version, payload, metadata, recorded_at, event_hash)
                 SELECT e.stream_id, e.stream_version, e.event_id, e.event_type,
                        e.schema_version, e.payload, e.metadata, e.recorded_at, e.event_hash
                 FROM unnest(p_stream_ids, p_versions, p_event_ids, p_event_types,
                             p_schema_versions, p_payloads, p_metadata, p_recorded_at, p_hashes)
                      WITH ORDINALITY AS e(stream_id, stream_version, event_id, event_type,
                                           schema_version, payload, metadata, recorded_at,
                                           event_hash, ord)
                 ORDER BY e.ord
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id, global_position)
        SELECT i.ids, i.positions INTO o_ids, o_positions
        FROM (SELECT count(*) AS n FROM created) AS c,
             (SELECT count(*) AS n, array_agg(event_id) AS ids,
                     array_agg(global_position) AS positions FROM inserted) AS i
        WHERE lifeline_grouped_append_check(
                  c.n = cardinality(p_new_ids) AND i.n = cardinality(p_event_ids));
    EXCEPTION
        WHEN unique_violation OR SQLSTATE 'LLG01' THEN
            o_ids := NULL;
            o_positions := NULL;
            o_refused := true;
    END;
END
$$;
