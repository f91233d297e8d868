-- The writing statement of a grouped append that moves existing streams (an agency's claim or
-- completion, a correction; lifeline_store's `batch` module), as a function planned once per
-- connection.
--
-- Before, that statement ran unprepared: parsed and planned at every call (about a third of
-- its time), because a prepared statement's generic plan, made once per connection while
-- `streams` may be a few pages, joined the moved streams to `streams` by a sequential scan and
-- kept it as the table grew (every task completion scanned the whole table). A generic plan of
-- that join made on an analysed empty table is no better with sequential scans turned off: it
-- walks the whole primary-key index, `streams` outer. So each moved stream is one `UPDATE ..
-- WHERE stream_id = .. AND version = ..`, a primary-key probe whatever the table's size
-- (`enable_seqscan = off` while the function plans, so not even a table planned empty is
-- scanned), and the inserts are the statement of `batch.rs` without its `moved` part. All of
-- it is planned once per connection (`plan_cache_mode = force_generic_plan`). The check is
-- the same: every planned row written, or LLG01 is raised (a unique key raises as well), and
-- the call's writes are undone with the calling statement.
CREATE FUNCTION lifeline_append_moving_streams(
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
    p_moved_ids text[],
    p_moved_from bigint[],
    p_moved_versions bigint[],
    p_moved_hashes bytea[],
    OUT o_ids uuid[],
    OUT o_positions bigint[])
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    v_moved bigint := 0;
    v_rows bigint;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_moved_ids), 0) LOOP
        UPDATE streams SET version = p_moved_versions[i], last_hash = p_moved_hashes[i]
        WHERE stream_id = p_moved_ids[i] AND version = p_moved_from[i];
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_moved := v_moved + v_rows;
    END LOOP;
    WITH created AS (
             INSERT INTO streams (stream_id, version, last_hash)
             SELECT * FROM unnest(p_new_ids, p_new_versions, p_new_hashes)
             ON CONFLICT (stream_id) DO NOTHING RETURNING 1),
         inserted AS (
             INSERT INTO events (stream_id, stream_version, event_id, event_type,
                                 schema_version, payload, metadata, recorded_at, event_hash)
             SELECT e.stream_id, e.stream_version, e.event_id, e.event_type, e.schema_version,
                    e.payload, e.metadata, e.recorded_at, e.event_hash
             FROM unnest(p_stream_ids, p_versions, p_event_ids, p_event_types, p_schema_versions,
                         p_payloads, p_metadata, p_recorded_at, p_hashes)
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
              c.n = cardinality(p_new_ids) AND v_moved = cardinality(p_moved_ids)
              AND i.n = cardinality(p_event_ids));
END
$$;
