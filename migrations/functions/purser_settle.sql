-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- purser_settle resolves a batch of reservations with their real outcome. Per reservation:
--   pending -> settled (charged = actual, pending released) or voided (nothing charged);
--   expired -> settled / voided as well: a late entry replaces the expiry's full charge with the
--              real one, refunding the difference;
--   settled, voided -> no change (duplicates and replays are harmless);
--   unknown id -> reported, nothing changes.
-- An actual above the hold is charged in full and recorded as an overrun. s_hold marks
-- settlements that charge the full hold (usage unknown: cut off, missing, unpriced), whatever
-- s_cost and s_tokens say. s_tentative marks voids that apply only if no repeated Check was
-- answered with the reservation (the batcher releasing the hold of a caller that gave up).
-- A voided reservation gives up its idempotency key, so a later repeat reserves afresh.
-- A requests hold (tokens_unit IS NULL, migration 007) is charged its amount, 1, when
-- settled, whatever the usage. purser_settle keeps custom plans: with generic ones it settled
-- about 15% slower in the hot-budget bench.
CREATE OR REPLACE FUNCTION purser_settle(
    s_id      uuid[],
    s_void    boolean[],
    s_tentative boolean[],
    s_hold    boolean[],
    s_cost    bigint[],
    s_tokens  bigint[],
    s_usage   jsonb[],
    s_catalog text[],
    s_cause   text[]
) RETURNS TABLE (out_id uuid, out_outcome text, out_overrun boolean)
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t_id     uuid[];
    t_old    text[];
    t_new    text[];
    t_void   boolean[];
    t_cost   bigint[];
    t_tokens bigint[];
    t_usage  jsonb[];
    t_cat    text[];
    t_cause  text[];
    t_hc     bigint[];
    t_ht     bigint[];
BEGIN
    WITH inp AS (
        SELECT DISTINCT ON (t.id) t.id, t.void, t.tentative, t.hold, t.cost, t.tokens, t.usage, t.catalog, t.cause
          FROM unnest(s_id, s_void, s_tentative, s_hold, s_cost, s_tokens, s_usage, s_catalog, s_cause)
               WITH ORDINALITY AS t(id, void, tentative, hold, cost, tokens, usage, catalog, cause, ord)
         ORDER BY t.id, t.ord),
    cur AS (
        SELECT r.id, r.state, r.hold_cost, r.hold_tokens, r.reanswered FROM reservations r
         WHERE r.id IN (SELECT inp.id FROM inp)
         ORDER BY r.id FOR UPDATE)
    SELECT array_agg(inp.id), array_agg(cur.state),
           array_agg(CASE WHEN cur.state IS NULL THEN 'unknown'
                          WHEN inp.void AND inp.tentative AND cur.reanswered THEN 'duplicate'
                          WHEN cur.state IN ('pending', 'expired') AND inp.void THEN 'voided'
                          WHEN cur.state IN ('pending', 'expired') THEN 'settled'
                          ELSE 'duplicate' END),
           array_agg(inp.void),
           array_agg(CASE WHEN inp.hold AND cur.id IS NOT NULL THEN cur.hold_cost ELSE inp.cost END),
           array_agg(CASE WHEN inp.hold AND cur.id IS NOT NULL THEN cur.hold_tokens ELSE inp.tokens END),
           array_agg(inp.usage),
           array_agg(inp.catalog), array_agg(inp.cause), array_agg(cur.hold_cost), array_agg(cur.hold_tokens)
      INTO t_id, t_old, t_new, t_void, t_cost, t_tokens, t_usage, t_cat, t_cause, t_hc, t_ht
      FROM inp LEFT JOIN cur ON cur.id = inp.id;

    IF t_id IS NULL THEN
        RETURN;
    END IF;

    PERFORM 1 FROM budget_windows w
      WHERE (w.budget_id, w.window_start) IN (
            SELECT h.budget_id, h.window_start
              FROM reservation_holds h
              JOIN unnest(t_id, t_new) AS t(id, new) ON h.reservation_id = t.id
             WHERE t.new IN ('settled', 'voided'))
      ORDER BY w.budget_id, w.window_start FOR UPDATE;

    WITH t AS (
        SELECT * FROM unnest(t_id, t_old, t_new, t_cost, t_tokens) AS t(id, old, new, cost, tokens)
         WHERE t.new IN ('settled', 'voided')),
    h AS (
        UPDATE reservation_holds h
           SET charged = CASE WHEN t.new = 'voided' THEN 0
                              WHEN h.tokens_unit IS NULL THEN h.amount -- 007: a requests hold
                              WHEN h.tokens_unit THEN t.tokens ELSE t.cost END
          FROM t
         WHERE h.reservation_id = t.id
        RETURNING h.budget_id, h.window_start, h.amount, h.charged, t.old)
    UPDATE budget_windows w
       SET pending = w.pending - d.released, posted = w.posted + d.charged
      FROM (SELECT h.budget_id, h.window_start,
                   sum(CASE WHEN h.old = 'pending' THEN h.amount ELSE 0 END)::bigint AS released,
                   sum(h.charged - CASE WHEN h.old = 'expired' THEN h.amount ELSE 0 END)::bigint AS charged
              FROM h GROUP BY h.budget_id, h.window_start) AS d
     WHERE w.budget_id = d.budget_id AND w.window_start = d.window_start;

    UPDATE reservations r
       SET state = t.new,
           resolved_at = now(),
           idempotency_key = CASE WHEN t.new = 'voided' THEN NULL ELSE r.idempotency_key END,
           actual_cost = CASE WHEN t.new = 'voided' THEN 0 ELSE t.cost END,
           actual_tokens = CASE WHEN t.new = 'voided' THEN 0 ELSE t.tokens END,
           usage = t.usage,
           catalog_version = t.cat,
           cause = t.cause,
           overrun_cost = CASE WHEN t.new = 'settled' THEN greatest(0, t.cost - r.hold_cost) ELSE 0 END,
           overrun_tokens = CASE WHEN t.new = 'settled' THEN greatest(0, t.tokens - r.hold_tokens) ELSE 0 END
      FROM unnest(t_id, t_new, t_cost, t_tokens, t_usage, t_cat, t_cause) AS t(id, new, cost, tokens, usage, cat, cause)
     WHERE r.id = t.id AND t.new IN ('settled', 'voided');

    RETURN QUERY
        SELECT t.id, CASE WHEN t.old = 'expired' AND t.new IN ('settled', 'voided') THEN 'late_' || t.new ELSE t.new END,
               t.new = 'settled' AND (t.cost > t.hc OR t.tokens > t.ht)
          FROM unnest(t_id, t_old, t_new, t_cost, t_tokens, t_hc, t_ht) AS t(id, old, new, cost, tokens, hc, ht);
END
$$;
