-- The writing statement of a grouped append whose appends all create new streams (most records
-- of births and deaths: lifeline_store's `batch` module), as a function planned once per
-- connection.
--
-- Run as a prepared statement, PostgreSQL planned that statement anew on every group: its
-- custom plans (which see how long each array is) are estimated cheaper than the generic plan,
-- so the plan cache never settles on the generic one, and planning three data-modifying CTEs
-- over `unnest` costs about as much as executing them for a small group. Here
-- `plan_cache_mode = force_generic_plan` holds while the function runs: PL/pgSQL plans the
-- statement once per connection and reuses it. The plan does not depend on the tables' sizes
-- (inserts, a unique-key check per row), so an early plan stays right as the tables grow. The
-- rows and the check are those of the statement in `batch.rs` without its moved streams.
CREATE FUNCTION lifeline_append_new_streams(
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
    OUT o_positions bigint[])
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
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
              c.n = cardinality(p_new_ids) AND i.n = cardinality(p_event_ids));
END
$$;
