-- The log's primary key becomes the order its readers read in, (transaction_id,
-- global_position), instead of global_position alone: one b-tree fewer to insert into per event.
--
-- Every reader of the log (the gap-free reader, subscriptions, the relay, integrity checks,
-- stats) seeks and orders by (transaction_id, global_position), through the index
-- `events_commit_order`; nothing looks an event up by its global position alone. The index of
-- the old key was written by every append and read by nobody: an event carried four b-tree
-- inserts (key, event id, stream and version, commit order), now three. The new key is unique
-- because global_position is (one sequence), and it is what the old index held, now enforced.
--
-- On an existing log this builds the new unique index (a full scan of `events`, holding off
-- appends meanwhile, as any `CREATE INDEX`) before the two old ones are dropped: run it with
-- the writers stopped, as the other migrations. The key keeps its name, `events_pkey`.

CREATE UNIQUE INDEX events_commit_order_unique ON events (transaction_id, global_position);
ALTER TABLE events DROP CONSTRAINT events_pkey;
DROP INDEX events_commit_order;
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_commit_order_unique;
