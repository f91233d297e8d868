-- The check that closes a grouped append (lifeline_store's `batch` module): one statement
-- writes a whole group of appends (new streams, moved streams, events) and ends by calling this
-- with whether every row it planned was written. If not (a stream created or an event id stored
-- by someone else meanwhile), it raises, so the statement, and with it the group, stores nothing
-- and the appends take the careful path one by one. If so, it queues the subscribers' wake-up
-- (delivered at commit, like every append's).
CREATE FUNCTION lifeline_grouped_append_check(all_written boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF all_written IS NOT TRUE THEN
        RAISE EXCEPTION 'lifeline: a grouped append found the log other than planned'
            USING ERRCODE = 'LLG01';
    END IF;
    PERFORM pg_notify('lifeline_events', '');
    RETURN true;
END
$$;
