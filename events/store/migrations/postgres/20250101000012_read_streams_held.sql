-- Reads streams held (`StoreTransaction::read_streams_held`) in one round trip instead of two.
--
-- A policy that prefills tasks from a record locks the record's `streams` row `FOR SHARE` (an
-- append updates that row, so it waits for the policy's commit) and then reads the record's
-- events. The read must come in a statement of its own: under READ COMMITTED a statement's
-- snapshot is taken when it starts, so a single statement that waited for an append's lock
-- would not see that append's events. A PL/pgSQL function (volatile) takes a new snapshot for
-- each statement it runs, so the lock and the read still run as two statements, in one call.
-- Streams are locked in stream id order, the order in which a group append moves them.

CREATE FUNCTION lifeline_read_streams_held(p_stream_ids text[])
RETURNS SETOF events
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM 1 FROM streams WHERE stream_id = ANY(p_stream_ids) ORDER BY stream_id FOR SHARE;
    RETURN QUERY SELECT * FROM events WHERE stream_id = ANY(p_stream_ids);
END
$$;
