-- Tamper evidence (see lifeline_model::integrity for the encodings):
-- * events.event_hash: SHA-256 of the event's canonical fields chained to the hash of its
--   stream's previous event; streams.last_hash: the hash of the stream's last event.
-- * log_seals: signed checkpoints of the global log in commit order.
--
-- The chain starts at this migration. SQLite cannot add a NOT NULL column without a default,
-- so the column allows NULL: the store always writes a hash, rows written before this
-- migration have none, and `lifeline verify` reports the first row without one as bad.
ALTER TABLE events ADD COLUMN event_hash BLOB
    CHECK (event_hash IS NULL OR length(event_hash) = 32);

ALTER TABLE streams ADD COLUMN last_hash BLOB
    CHECK (last_hash IS NULL OR length(last_hash) = 32);

CREATE TABLE log_seals (
    seq                   INTEGER PRIMARY KEY CHECK (seq >= 1),
    from_transaction_id   INTEGER NOT NULL,
    from_global_position  INTEGER NOT NULL,
    to_transaction_id     INTEGER NOT NULL,
    to_global_position    INTEGER NOT NULL,
    event_count           INTEGER NOT NULL CHECK (event_count >= 1),
    merkle_root           BLOB    NOT NULL CHECK (length(merkle_root) = 32),
    prev_seal_hash        BLOB    NOT NULL CHECK (length(prev_seal_hash) = 32),
    seal_hash             BLOB    NOT NULL CHECK (length(seal_hash) = 32),
    key_id                TEXT    NOT NULL,
    signature             TEXT    NOT NULL,
    sealed_at             TEXT    NOT NULL
);

CREATE TRIGGER log_seals_no_update
BEFORE UPDATE ON log_seals
BEGIN
    SELECT RAISE(ABORT, 'seals are append-only: UPDATE on log_seals is refused');
END;

CREATE TRIGGER log_seals_no_delete
BEFORE DELETE ON log_seals
BEGIN
    SELECT RAISE(ABORT, 'seals are append-only: DELETE on log_seals is refused');
END;
