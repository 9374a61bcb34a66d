-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- purser_record_unreserved records spend that reached a provider without a reservation (a
-- route that fails open, a Check whose answer was lost): a settled reservation flagged
-- unreserved, whose holds charge (posted) the real cost on every budget the caller's subjects
-- have — with no admission check: the money is already spent. A replayed entry (same
-- idempotency key) records nothing. Arrays are shaped as for purser_reserve.
CREATE OR REPLACE FUNCTION purser_record_unreserved(
    r_id          uuid[],
    r_idem        bytea[],
    r_key_id      text[],
    r_subjects    text[],
    r_provider    text[],
    r_flavor      text[],
    r_model       text[],
    r_route       text[],
    r_request_id  text[],
    r_cost        bigint[],
    r_tokens      bigint[],
    r_usage       jsonb[],
    r_catalog     text[],
    r_at          timestamptz[],
    w_budget      bigint[],
    w_start       timestamptz[],
    w_end         timestamptz[],
    h_req         integer[],
    h_window      integer[],
    h_amount      bigint[],
    h_tokens      boolean[]
) RETURNS TABLE (out_recorded uuid[])
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    inserted uuid[];
BEGIN
    IF coalesce(array_length(w_budget, 1), 0) > 0 THEN
        INSERT INTO budget_windows AS bw (budget_id, window_start, window_end)
        SELECT t.b, t.s, t.e FROM unnest(w_budget, w_start, w_end) AS t(b, s, e) ORDER BY t.b, t.s
        ON CONFLICT (budget_id, window_start) DO UPDATE SET posted = bw.posted WHERE false;
    END IF;

    WITH ins AS (
        INSERT INTO reservations (id, idempotency_key, state, created_at, expires_at, resolved_at, key_id,
                                  subjects, provider, api_flavor, model, route, request_id, hold_cost,
                                  hold_tokens, actual_cost, actual_tokens, usage, catalog_version, cause,
                                  unreserved)
        SELECT t.id, t.idem, 'settled', t.at, t.at, now(), t.key_id, string_to_array(t.subjects, E'\n'),
               t.provider, t.flavor, t.model, t.route, t.request_id, 0, 0, t.cost, t.tokens, t.usage,
               t.catalog, 'unreserved', true
          FROM unnest(r_id, r_idem, r_key_id, r_subjects, r_provider, r_flavor, r_model, r_route,
                      r_request_id, r_cost, r_tokens, r_usage, r_catalog, r_at)
               AS t(id, idem, key_id, subjects, provider, flavor, model, route, request_id, cost, tokens,
                    usage, catalog, at)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id)
    SELECT array_agg(ins.id) INTO inserted FROM ins;

    IF inserted IS NULL THEN
        RETURN QUERY SELECT ARRAY[]::uuid[];
        RETURN;
    END IF;

    WITH h AS (
        INSERT INTO reservation_holds (reservation_id, budget_id, window_start, tokens_unit, amount, charged)
        SELECT r_id[l.req], w_budget[l.win], w_start[l.win], l.tok, 0, l.amt
          FROM unnest(h_req, h_window, h_tokens, h_amount) AS l(req, win, tok, amt)
         WHERE r_id[l.req] IN (SELECT unnest(inserted))
        RETURNING budget_id, window_start, charged)
    UPDATE budget_windows w SET posted = w.posted + d.total
      FROM (SELECT h.budget_id, h.window_start, sum(h.charged)::bigint AS total
              FROM h GROUP BY h.budget_id, h.window_start) AS d
     WHERE w.budget_id = d.budget_id AND w.window_start = d.window_start;

    RETURN QUERY SELECT inserted;
END
$$;
