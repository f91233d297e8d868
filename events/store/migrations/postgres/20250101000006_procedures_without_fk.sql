-- projection_life_event_procedures lost its foreign key to projection_life_events.
--
-- Both tables are projections: the life-event projection writes them together, in one
-- transaction, from the log, and a rebuild empties and refills both. The key checked nothing the
-- projection does not already guarantee, and it cost a look-up of the parent row for every
-- procedure row written. Worse, PostgreSQL caches the plan of that look-up per connection: made
-- while the table is small (a new database, or right after a rebuild empties it), it is a
-- sequential scan, kept while the table grows (seen in the W4 rebuild: one scan of the whole
-- life-event table per procedure row).
ALTER TABLE projection_life_event_procedures
    DROP CONSTRAINT IF EXISTS projection_life_event_procedures_life_event_id_fkey;
