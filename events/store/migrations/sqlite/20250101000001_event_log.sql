-- The Lifeline event log on SQLite: events (append-only), streams (current versions),
-- checkpoints (where each subscriber of the global log stands).

-- One row per event. SQLite has one writer at a time and every append runs in
-- BEGIN IMMEDIATE, so rowid order is commit order; transaction_id equals global_position and
-- the (transaction_id, global_position) cursor of the PostgreSQL schema orders the same way.
-- Nothing ever updates or deletes a row (see the triggers below). A later migration adds the
-- integrity (hash chain) columns.
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,
    transaction_id  INTEGER NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 1),
    -- The idempotency key of an append, as a lowercase hyphenated uuid.
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL CHECK (schema_version >= 0),
    payload         TEXT    NOT NULL CHECK (json_valid(payload)),
    metadata        TEXT    NOT NULL CHECK (json_valid(metadata)),
    recorded_at     TEXT    NOT NULL,
    CONSTRAINT events_event_id_unique UNIQUE (event_id),
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_version),
    CHECK (transaction_id = global_position)
);

CREATE INDEX events_commit_order ON events (transaction_id, global_position);

-- The current version of every stream, checked and bumped by each append.
CREATE TABLE streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL CHECK (version >= 1)
) WITHOUT ROWID;

-- Where each subscriber of the global log stands, saved in the same transaction as its effects.
CREATE TABLE checkpoints (
    subscriber      TEXT    PRIMARY KEY,
    transaction_id  INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    updated_at      TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER events_no_update
BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE on events is refused');
END;

CREATE TRIGGER events_no_delete
BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE on events is refused');
END;
