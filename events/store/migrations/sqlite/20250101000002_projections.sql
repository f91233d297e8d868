-- The projections (read models) built from the log by the subscribers of
-- lifeline_policies::projections: the agency inbox, the person registry, the status of each life
-- event and its procedures. Every row here can be thrown away and rebuilt from the events
-- (`lifeline projections rebuild`); nothing here is a source of truth.
--
-- SQLite forms: uuids as lowercase hyphenated TEXT, times as TEXT in UTC with a fixed six-digit
-- fraction (`2026-11-20T01:02:03.000000Z`, so text order is time order), dates as `YYYY-MM-DD`,
-- JSON as TEXT, booleans as 0/1.

-- The agency inbox: one row per task.
CREATE TABLE projection_tasks (
    task_id       TEXT        PRIMARY KEY,
    procedure     TEXT        NOT NULL,
    agency        TEXT        NOT NULL,
    office        TEXT        NOT NULL,
    life_event_id TEXT        NOT NULL,
    -- open | claimed | completed | rejected | cancelled
    status        TEXT        NOT NULL,
    claimed_by    TEXT,
    due_at        TEXT        NOT NULL,
    overdue       INTEGER     NOT NULL,
    created_at    TEXT        NOT NULL,
    updated_at    TEXT        NOT NULL,
    -- The prefilled application (dotted field paths to values).
    application   TEXT        NOT NULL,
    -- The outcome of a completed task, tagged by `kind`.
    outcome       TEXT,
    -- Why the task was rejected or cancelled.
    reason        TEXT
);

-- The inbox query and its keyset paging: an agency's tasks by (due_at, task_id).
CREATE INDEX projection_tasks_inbox ON projection_tasks (agency, due_at, task_id);
CREATE INDEX projection_tasks_life_event ON projection_tasks (life_event_id);
-- What the overdue watcher looks for.
CREATE INDEX projection_tasks_due_open ON projection_tasks (due_at)
    WHERE status IN ('open', 'claimed') AND NOT overdue;

-- The person registry: what Lifeline learned about each person from its own events.
CREATE TABLE projection_persons (
    personal_id           TEXT        PRIMARY KEY,
    full_name             TEXT        NOT NULL,
    date_of_birth         TEXT,
    sex                   TEXT,
    -- alive | deceased
    vital_status          TEXT        NOT NULL,
    date_of_death         TEXT,
    -- The death record that made the person deceased (a void of it makes them alive again).
    death_life_event_id   TEXT,
    residence_province    TEXT,
    residence_commune     TEXT,
    residence_address     TEXT,
    insured               INTEGER     NOT NULL,
    insurance_card_number TEXT,
    insurance_valid_until TEXT,
    -- Facts learned from completed tasks: [{kind, procedure, task_id, details, at}].
    facts                 TEXT        NOT NULL,
    -- The life events naming the person: [{life_event_id, kind, role, voided}].
    life_events           TEXT        NOT NULL,
    updated_at            TEXT        NOT NULL
);

-- The status of each life event (what the registrar and the citizen portal show).
CREATE TABLE projection_life_events (
    life_event_id TEXT        PRIMARY KEY,
    -- birth | death
    kind          TEXT        NOT NULL,
    reference     TEXT        NOT NULL UNIQUE,
    office        TEXT        NOT NULL,
    recorded_on   TEXT        NOT NULL,
    late          INTEGER     NOT NULL,
    voided        INTEGER     NOT NULL,
    corrections   INTEGER     NOT NULL,
    updated_at    TEXT        NOT NULL
);

-- Each procedure of a life event: one row per procedure of its group.
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

CREATE INDEX projection_life_event_procedures_task ON projection_life_event_procedures (task_id);
