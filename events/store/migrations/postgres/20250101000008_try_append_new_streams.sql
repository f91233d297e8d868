-- The writing statement of lifeline_append_new_streams (migration 7), answering a refusal
-- instead of raising it, so that it can run inside a larger transaction (a policy's appends)
-- without a savepoint around it. lifeline_store's `batch` module calls it only there; a
-- statement that is its own transaction (group commit) still calls migration 7's function.
--
-- When the log is not as the group planned (one of its streams or event ids stored meanwhile:
-- the check's LLG01, or a unique key), migration 7's function raises, which aborts the
-- caller's transaction: inside one, each call needed SAVEPOINT ... RELEASE around it, two more
-- round trips per append. Here the statement runs in a PL/pgSQL exception block, a
-- subtransaction inside the server: on those two errors its writes (and its queued wake-up)
-- are undone and o_refused is true; any other error raises as before. All or nothing, as before.
--
-- The statement is migration 7's, repeated rather than called: a nested PL/pgSQL call cost
-- about 0.1 ms per append (pg_stat_statements, W1). Migrations do not change once applied, so
-- the two copies cannot drift apart silently: a change to one is a new migration for both.
CREATE FUNCTION lifeline_try_append_new_streams(
    p_new_ids text[],
    p_new_versions bigint[],
    p_new_hashes bytea[],
    p_stream_ids text[],
    p_versions bigint[],
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions int[],
    p_payloads jsonb[],
    p_metadata jsonb[],
    p_recorded_at timestamptz[],
    p_hashes bytea[],
    OUT o_ids uuid[],
    OUT o_positions bigint[],
    OUT o_refused boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    o_refused := false;
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
