-- Appends to existing streams without locking them first, when the writer knows each stream's
-- last hash.
--
-- A group that moves existing streams used to take four round trips: `BEGIN`, `SELECT .. FOR
-- UPDATE` of the streams (their versions and last hashes, which the new events' hashes chain
-- from), the writing statement (migration 9's function) and `COMMIT`. A writer that has just
-- read a stream (an agency's claim or completion goes through cqrs-es, which loads the task's
-- stream first) already knows the hash of its event at the version it expects: an event never
-- changes, so that hash is the stream's last hash for as long as the stream stays at that
-- version. This function takes that hash and checks it in the `UPDATE` that moves the stream,
-- under the row lock the `UPDATE` takes: a stream that moved, or whose last hash is not the one
-- given, is not updated, and then `lifeline_grouped_append_check` raises LLG01 and the
-- statement stores nothing (the writer then takes the careful path, which decides between a
-- conflict and a re-sent append). So such a group is one statement, its own transaction.
--
-- `p_moved_prev_hashes[i]` null means "not checked here": the writer locked that stream itself
-- (the older path, for a stream whose last hash it did not know). Otherwise the same statement
-- as migration 9's function, which stays for binaries of before this migration.

CREATE FUNCTION lifeline_append_known_streams(
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
    p_moved_ids text[],
    p_moved_from bigint[],
    p_moved_versions bigint[],
    p_moved_hashes bytea[],
    p_moved_prev_hashes bytea[],
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
        WHERE stream_id = p_moved_ids[i] AND version = p_moved_from[i]
          AND (p_moved_prev_hashes[i] IS NULL OR last_hash = p_moved_prev_hashes[i]);
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
