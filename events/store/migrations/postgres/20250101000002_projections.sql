-- The projections (read models) built from the log by the subscribers of
-- lifeline_policies::projections: the agency inbox, the person registry, the status of each life
-- event and its procedures. Every row here can be thrown away and rebuilt from the events
-- (`lifeline projections rebuild`); nothing here is a source of truth.

-- The agency inbox: one row per task.
CREATE TABLE projection_tasks (
    task_id       uuid        PRIMARY KEY,
    procedure     text        NOT NULL,
    agency        text        NOT NULL,
    office        text        NOT NULL,
    life_event_id uuid        NOT NULL,
    -- open | claimed | completed | rejected | cancelled
    status        text        NOT NULL,
    claimed_by    text,
    due_at        timestamptz NOT NULL,
    overdue       boolean     NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    -- The prefilled application (dotted field paths to values).
    application   jsonb       NOT NULL,
    -- The outcome of a completed task, tagged by `kind`.
    outcome       jsonb,
    -- Why the task was rejected or cancelled.
    reason        text
);

-- The inbox query and its keyset paging: an agency's tasks by (due_at, task_id).
CREATE INDEX projection_tasks_inbox ON projection_tasks (agency, due_at, task_id);
CREATE INDEX projection_tasks_life_event ON projection_tasks (life_event_id);
-- What the overdue watcher looks for.
CREATE INDEX projection_tasks_due_open ON projection_tasks (due_at)
    WHERE status IN ('open', 'claimed') AND NOT overdue;

-- The person registry: what Lifeline learned about each person from its own events.
CREATE TABLE projection_persons (
    personal_id           text        PRIMARY KEY,
    full_name             text        NOT NULL,
    date_of_birth         date,
    sex                   text,
    -- alive | deceased
    vital_status          text        NOT NULL,
    date_of_death         date,
    -- The death record that made the person deceased (a void of it makes them alive again).
    death_life_event_id   uuid,
    residence_province    text,
    residence_commune     text,
    residence_address     text,
    insured               boolean     NOT NULL,
    insurance_card_number text,
    insurance_valid_until date,
    -- Facts learned from completed tasks: [{kind, procedure, task_id, details, at}].
    facts                 jsonb       NOT NULL,
    -- The life events naming the person: [{life_event_id, kind, role, voided}].
    life_events           jsonb       NOT NULL,
    updated_at            timestamptz NOT NULL
);

-- The status of each life event (what the registrar and the citizen portal show).
CREATE TABLE projection_life_events (
    life_event_id uuid        PRIMARY KEY,
    -- birth | death
    kind          text        NOT NULL,
    reference     text        NOT NULL UNIQUE,
    office        text        NOT NULL,
    recorded_on   date        NOT NULL,
    late          boolean     NOT NULL,
    voided        boolean     NOT NULL,
    corrections   bigint      NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Each procedure of a life event: one row per procedure of its group.
CREATE TABLE projection_life_event_procedures (
    life_event_id uuid        NOT NULL REFERENCES projection_life_events (life_event_id),
    procedure     text        NOT NULL,
    -- pending | open | claimed | completed | rejected | cancelled | not-eligible | not-chosen
    state         text        NOT NULL,
    -- The latest task of this procedure, once one is created.
    task_id       uuid,
    opened_at     timestamptz,
    closed_at     timestamptz,
    due_at        timestamptz,
    overdue       boolean     NOT NULL,
    -- The eligibility reason, the rejection or cancellation reason.
    detail        text,
    PRIMARY KEY (life_event_id, procedure)
);

CREATE INDEX projection_life_event_procedures_task ON projection_life_event_procedures (task_id);
