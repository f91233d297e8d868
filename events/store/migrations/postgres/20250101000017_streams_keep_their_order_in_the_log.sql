-- A stream's events keep their order in the log's commit order.
--
-- Readers take the log in (transaction_id, global_position) order, and a transaction's id is
-- given at its first write, not at its commit. A transaction that wrote early (a policy batch,
-- its first append to one stream) and appends later to a stream that a younger transaction
-- changed and committed in between would store its event under its older id: before the
-- younger transaction's event in the log, though after it in the stream. Every reader (the
-- relay, the projections, a rebuild) would then see that stream's versions out of order (a
-- task's cancellation before its claim). Such an append is refused with serialization_failure
-- (40001, transient): run again in a new transaction, whose id is younger, it goes through.
--
-- One check per INSERT statement (a statement-level trigger over the rows it inserted): each
-- inserted event's predecessor in its stream, found by the (stream_id, stream_version) unique
-- index, must not come from a younger transaction. Events of one transaction share its id.
CREATE FUNCTION events_keep_stream_order() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM inserted AS appended
        JOIN events AS previous
          ON previous.stream_id = appended.stream_id
         AND previous.stream_version = appended.stream_version - 1
        WHERE previous.transaction_id > appended.transaction_id
    ) THEN
        RAISE EXCEPTION 'a stream''s previous event was written by a younger transaction: append again in a new transaction'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_keep_stream_order
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION events_keep_stream_order();
