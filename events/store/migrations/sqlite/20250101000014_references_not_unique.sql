-- As migrations/postgres/20250101000014_references_not_unique.sql: a life event's reference is
-- no longer UNIQUE in projection_life_events (two ids can fold to one reference, and the second
-- record's upsert then stopped the projections), a plain index instead.
--
-- SQLite cannot drop a column's UNIQUE constraint: the table is built again. The procedure
-- table refers to it (a foreign key on the name), so its rows are set aside, it is dropped
-- first and created again after, as migration 2 made it.
CREATE TABLE projection_life_events_new (
    life_event_id TEXT        PRIMARY KEY,
    -- birth | death
    kind          TEXT        NOT NULL,
    reference     TEXT        NOT NULL,
    office        TEXT        NOT NULL,
    recorded_on   TEXT        NOT NULL,
    late          INTEGER     NOT NULL,
    voided        INTEGER     NOT NULL,
    corrections   INTEGER     NOT NULL,
    updated_at    TEXT        NOT NULL
);
INSERT INTO projection_life_events_new
    SELECT life_event_id, kind, reference, office, recorded_on, late, voided, corrections,
           updated_at
    FROM projection_life_events;
CREATE TABLE projection_life_event_procedures_kept AS
    SELECT * FROM projection_life_event_procedures;
DROP TABLE projection_life_event_procedures;
DROP TABLE projection_life_events;
ALTER TABLE projection_life_events_new RENAME TO projection_life_events;
CREATE INDEX projection_life_events_reference ON projection_life_events (reference);

CREATE TABLE projection_life_event_procedures (
    life_event_id TEXT        NOT NULL REFERENCES projection_life_events (life_event_id),
    procedure     TEXT        NOT NULL,
    -- pending | open | claimed | completed | rejected | cancelled | not-eligible | not-chosen
    state         TEXT        NOT NULL,
    -- The latest task of this procedure, once one is created.
    task_id       TEXT,
    opened_at     TEXT,
    closed_at     TEXT,
    due_at        TEXT,
    overdue       INTEGER     NOT NULL,
    -- The eligibility reason, the rejection or cancellation reason.
    detail        TEXT,
    PRIMARY KEY (life_event_id, procedure)
) WITHOUT ROWID;
INSERT INTO projection_life_event_procedures
    SELECT life_event_id, procedure, state, task_id, opened_at, closed_at, due_at, overdue,
           detail
    FROM projection_life_event_procedures_kept;
DROP TABLE projection_life_event_procedures_kept;
CREATE INDEX projection_life_event_procedures_task ON projection_life_event_procedures (task_id);
