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
-- scanned, and `plan_cache_mode = force_generic_plan`: planned once per connection). Unless
-- every moved stream was where the group expects, LLG01 is raised (through the check of
-- migration 4, called only to raise: it also notifies the readers when it passes); then the
-- new streams and the events are written by `lifeline_append_new_streams` (migration 7),
-- with its own check. A refusal undoes the call's writes with the calling statement.
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
    IF v_moved <> coalesce(cardinality(p_moved_ids), 0) THEN
        PERFORM lifeline_grouped_append_check(false);
    END IF;
    SELECT a.o_ids, a.o_positions INTO o_ids, o_positions
    FROM lifeline_append_new_streams(p_new_ids, p_new_versions, p_new_hashes, p_stream_ids,
                                     p_versions, p_event_ids, p_event_types,
                                     p_schema_versions, p_payloads, p_metadata,
                                     p_recorded_at, p_hashes) AS a;
END
$$;
