-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- purser_expire charges in full up to p_limit pending reservations whose deadline (database
-- clock) has passed. SKIP LOCKED lets many replicas sweep at once without double charging.
CREATE OR REPLACE FUNCTION purser_expire(p_limit integer) RETURNS integer
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    ids uuid[];
BEGIN
    SELECT array_agg(q.id) INTO ids FROM (
        SELECT r.id FROM reservations r
         WHERE r.state = 'pending' AND r.expires_at <= now()
         ORDER BY r.expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED) AS q;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;

    PERFORM 1 FROM budget_windows w
      WHERE (w.budget_id, w.window_start) IN (
            SELECT h.budget_id, h.window_start FROM reservation_holds h WHERE h.reservation_id = ANY (ids))
      ORDER BY w.budget_id, w.window_start FOR UPDATE;

    WITH h AS (
        UPDATE reservation_holds h SET charged = h.amount
         WHERE h.reservation_id = ANY (ids)
        RETURNING h.budget_id, h.window_start, h.amount)
    UPDATE budget_windows w
       SET pending = w.pending - d.total, posted = w.posted + d.total
      FROM (SELECT h.budget_id, h.window_start, sum(h.amount)::bigint AS total
              FROM h GROUP BY h.budget_id, h.window_start) AS d
     WHERE w.budget_id = d.budget_id AND w.window_start = d.window_start;

    UPDATE reservations r
       SET state = 'expired', resolved_at = now(), cause = 'expired',
           actual_cost = r.hold_cost, actual_tokens = r.hold_tokens
     WHERE r.id = ANY (ids);

    RETURN array_length(ids, 1);
END
$$;
