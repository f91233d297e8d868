-- A subscription's batch moves its checkpoints and commits in one round trip.
--
-- A subscription (the projections) writes its rows, moves its checkpoint from where it read to
-- the batch's last event, and commits, in one transaction. From its first write that
-- transaction holds an id, and every gap-free reader of the log (the relay, the other
-- subscriptions) waits for it to end. Sampled during W3 at 500 births/s, the most frequent holder
-- of that horizon was such a transaction idle after its checkpoint update: waiting for its
-- client's turn to send `COMMIT` on a busy machine (205 of 1,161 samples; BENCHMARKS.md, W3).
--
-- `lifeline_advance_checkpoints` moves several checkpoints at once and raises (SQLSTATE LLC01,
-- nothing moved) if one of them is no longer where its runner read from: another runner of the
-- same subscriber moved it. The store sends it with `COMMIT` behind it in one simple-query
-- message (`StoreTransaction::commit_advancing`): PostgreSQL runs the `COMMIT` as soon as the
-- checkpoints are moved, without a round trip to the client in between; if it raises, the rest
-- of the message is skipped and the client rolls the transaction back.
--
-- Every checkpoint moved here exists (a first batch, from the log's start, inserts its row
-- through the statement-by-statement way).
CREATE FUNCTION lifeline_advance_checkpoints(
    p_subscribers text[],
    p_from_transactions bigint[],
    p_from_positions bigint[],
    p_to_transactions bigint[],
    p_to_positions bigint[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_moved bigint;
BEGIN
    UPDATE checkpoints AS c
    SET transaction_id = m.to_transaction,
        global_position = m.to_position,
        updated_at = clock_timestamp()
    FROM unnest(p_subscribers, p_from_transactions, p_from_positions, p_to_transactions,
                p_to_positions)
         AS m(subscriber, from_transaction, from_position, to_transaction, to_position)
    WHERE c.subscriber = m.subscriber
      AND c.transaction_id = m.from_transaction
      AND c.global_position = m.from_position;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF v_moved <> coalesce(cardinality(p_subscribers), 0) THEN
        RAISE EXCEPTION 'a checkpoint was moved by another runner'
            USING ERRCODE = 'LLC01';
    END IF;
END
$$;
