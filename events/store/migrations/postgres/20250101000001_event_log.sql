-- The Lifeline event log on PostgreSQL: events (append-only), streams (current versions),
-- checkpoints (where each subscriber of the global log stands).

-- One row per event. Nothing ever updates or deletes a row (see the triggers below); corrections
-- and voids are new events. A later migration adds the integrity (hash chain) columns.
CREATE TABLE events (
    global_position bigserial   PRIMARY KEY,
    -- The writing transaction's id: readers order and checkpoint by
    -- (transaction_id, global_position) and only read rows whose transaction_id is below the
    -- oldest transaction still running, so no row can become visible behind a reader's cursor.
    transaction_id  bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    -- The idempotency key of an append.
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 0),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_event_id_unique UNIQUE (event_id),
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_commit_order ON events (transaction_id, global_position);

-- The current version of every stream: appends check their expected version against this row
-- (INSERT ... ON CONFLICT / UPDATE ... WHERE version = expected), which serialises concurrent
-- writers of one stream without gaps.
CREATE TABLE streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version >= 1)
);

-- Where each subscriber of the global log stands, saved in the same transaction as its effects.
CREATE TABLE checkpoints (
    subscriber      text        PRIMARY KEY,
    transaction_id  bigint      NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
