-- Tamper evidence (see lifeline_model::integrity for the encodings):
-- * events.event_hash: SHA-256 of the event's canonical fields chained to the hash of its
--   stream's previous event; streams.last_hash: the hash of the stream's last event, so an
--   append chains under the same row lock that serialises its version check.
-- * log_seals: signed checkpoints of the global log in commit order (a Merkle root over the
--   event hashes of each range, each seal chained to the one before).
--
-- The chain starts at this migration. On an empty events table (every database so far) the
-- column becomes NOT NULL. On a table that already has rows the old rows keep a NULL hash,
-- `lifeline verify` reports the first of them as bad (the log before the chain cannot be
-- vouched for), and new rows still always carry a hash.
ALTER TABLE events
    ADD COLUMN event_hash bytea CHECK (event_hash IS NULL OR octet_length(event_hash) = 32);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM events) THEN
        ALTER TABLE events ALTER COLUMN event_hash SET NOT NULL;
    END IF;
END
$$;

ALTER TABLE streams
    ADD COLUMN last_hash bytea CHECK (last_hash IS NULL OR octet_length(last_hash) = 32);

CREATE TABLE log_seals (
    seq                   bigint      PRIMARY KEY CHECK (seq >= 1),
    -- The range: after the `from` cursor (exclusive) up to the `to` cursor (inclusive), in
    -- commit order (transaction_id, global_position).
    from_transaction_id   bigint      NOT NULL,
    from_global_position  bigint      NOT NULL,
    to_transaction_id     bigint      NOT NULL,
    to_global_position    bigint      NOT NULL,
    event_count           bigint      NOT NULL CHECK (event_count >= 1),
    merkle_root           bytea       NOT NULL CHECK (octet_length(merkle_root) = 32),
    prev_seal_hash        bytea       NOT NULL CHECK (octet_length(prev_seal_hash) = 32),
    seal_hash             bytea       NOT NULL CHECK (octet_length(seal_hash) = 32),
    key_id                text        NOT NULL,
    -- Ed25519 over seal_hash, hex.
    signature             text        NOT NULL,
    sealed_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER log_seals_no_update_or_delete
    BEFORE UPDATE OR DELETE ON log_seals
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
