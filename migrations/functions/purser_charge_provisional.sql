-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- purser_charge_provisional charges pending reservations their whole hold, as expiry does
-- (state 'expired', so a later authentic access-log entry still settles the real cost and
-- refunds the difference). The access log's x-request-id fallback uses it when an entry
-- without ext_authz metadata cannot settle with usage: the fallback never voids.
-- out_outcome per distinct id: provisional | duplicate (not pending) | unknown.
CREATE OR REPLACE FUNCTION purser_charge_provisional(p_ids uuid[], p_causes text[])
RETURNS TABLE (out_id uuid, out_outcome text)
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    ids uuid[];
BEGIN
    -- Lock order as everywhere: reservations by id, then windows by (budget_id, window_start).
    SELECT array_agg(q.id) INTO ids FROM (
        SELECT r.id FROM reservations r
         WHERE r.id = ANY (p_ids) AND r.state = 'pending'
         ORDER BY r.id
           FOR UPDATE) AS q;
    IF ids IS NOT NULL THEN
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
           SET state = 'expired', resolved_at = now(), cause = c.cause,
               actual_cost = r.hold_cost, actual_tokens = r.hold_tokens
          FROM (SELECT DISTINCT ON (t.id) t.id, t.cause
                  FROM unnest(p_ids, p_causes) WITH ORDINALITY AS t(id, cause, ord)
                 ORDER BY t.id, t.ord) AS c
         WHERE r.id = c.id AND r.id = ANY (ids);
    END IF;

    RETURN QUERY
        SELECT u.id,
               CASE WHEN u.id = ANY (coalesce(ids, '{}')) THEN 'provisional'
                    WHEN r.id IS NULL THEN 'unknown'
                    ELSE 'duplicate' END
          FROM (SELECT DISTINCT t.id FROM unnest(p_ids) AS t(id)) AS u
          LEFT JOIN reservations r ON r.id = u.id;
END
$$;
