-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- Lock order, everywhere: reservations (by id), then budgets rows of rolling budgets (by id),
-- then budget_windows (by budget_id, window_start). Reserve locks an existing reservation
-- only when a Check is repeated, and does so before any other lock, so no cycle can form
-- between reserving, settling and expiring.

-- purser_reserve admits a batch of requests in arrival order. A request is admitted when every
-- hard budget it touches still has room (posted + pending + amount <= purser_effective_limit),
-- counting what earlier requests of the same batch were just given; all its holds are written
-- together or none. This is exactly the outcome of serving the requests one by one in order.
--
-- Arrays come in three shapes: r_* one element per request (arrival order), w_* one element
-- per distinct window sorted by (budget_id, window_start), h_* one element per hold line,
-- grouped by request (r_first/r_count point into them; 1-based, r_count 0 = no budget applies;
-- h_req names each line's request). Every array is read with unnest or by fixed-width
-- subscript, so a batch costs time linear in its size.
--
-- out_status per request: 1 admitted, 2 duplicate (reserved before under its idempotency
-- key: out_reservation_id is the first answer's), 0 denied (out_deny_line is the line that
-- did not fit).
CREATE OR REPLACE FUNCTION purser_reserve(
    r_id          uuid[],
    r_idem        bytea[],
    r_ttl_ms      bigint[],
    r_key_id      text[],
    r_subjects    text[],
    r_provider    text[],
    r_flavor      text[],
    r_model       text[],
    r_route       text[],
    r_request_id  text[],
    r_hold_cost   bigint[],
    r_hold_tokens bigint[],
    r_first       integer[],
    r_count       integer[],
    w_budget      bigint[],
    w_start       timestamptz[],
    w_end         timestamptz[],
    w_roll_from   timestamptz[],
    h_req         integer[],
    h_window      integer[],
    h_amount      bigint[],
    h_hard        boolean[],
    h_tokens      boolean[],
    p_check_idem  boolean
) RETURNS TABLE (out_status integer[], out_reservation_id uuid[], out_deny_line integer[], out_line_limit bigint[], out_line_used bigint[])
LANGUAGE plpgsql
-- Each statement looks rows up by key. A plan cached while the ledger was small (a fresh
-- deployment) would otherwise keep sequential scans as the tables grow.
SET enable_seqscan = off
-- Statements are planned once per connection, not on every call (migration 004): re-planning
-- the dozen statements for each batch's arrays cost more than running them (one reservation
-- took 1.3 ms with custom plans, 0.7 ms with cached generic ones). Every statement looks rows
-- up by key and enable_seqscan is off, so a generic plan cannot fall back to scanning a table
-- that has grown since it was made.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    n      integer := coalesce(array_length(r_id, 1), 0);
    nw     integer := coalesce(array_length(w_budget, 1), 0);
    nh     integer := coalesce(array_length(h_window, 1), 0);
    sti    integer[] := array_fill(0, ARRAY[n]);
    resid  uuid[] := array_fill(NULL::uuid, ARRAY[n]);
    deny   integer[] := array_fill(0, ARRAY[n]);
    lim    bigint[] := array_fill(NULL::bigint, ARRAY[nh]);
    used   bigint[] := array_fill(0::bigint, ARRAY[nh]);
    wused  bigint[];
    wlimit bigint[];
    wdelta bigint[] := array_fill(0::bigint, ARRAY[nw]);
    ex     record;
    vi     integer;
    vj     integer;
    vk     integer;
    fits   boolean;
BEGIN
    IF n = 0 THEN
        RETURN QUERY SELECT sti, resid, deny, lim, used;
        RETURN;
    END IF;

    -- A request reserved before under the same idempotency key gets its first answer back.
    -- Repeats are rare (an Envoy retry of the same Check), so by default this lookup is
    -- skipped and the reservation insert below detects them instead: it then raises PU001
    -- and the caller runs the batch again with p_check_idem.
    IF p_check_idem THEN
        FOR ex IN SELECT k.ord::integer AS ord, r.id
                    FROM unnest(r_idem) WITH ORDINALITY AS k(key, ord)
                    JOIN reservations r ON r.idempotency_key = k.key
                   ORDER BY r.id
                     FOR UPDATE OF r LOOP
            sti[ex.ord] := 2;
            resid[ex.ord] := ex.id;
        END LOOP;
        -- The request may now go upstream on these: a caller-gone void must not release them.
        UPDATE reservations r SET reanswered = true
         WHERE r.id IN (SELECT u.id FROM unnest(resid, sti) AS u(id, s) WHERE u.s = 2)
           AND r.state = 'pending' AND NOT r.reanswered;
    END IF;

    IF nw > 0 THEN
        -- Rolling budgets span several bucket rows: serialise them on their budget row.
        PERFORM 1 FROM budgets b
          WHERE b.id IN (SELECT t.b FROM unnest(w_budget, w_roll_from) AS t(b, f) WHERE t.f IS NOT NULL)
          ORDER BY b.id FOR NO KEY UPDATE;

        -- Create missing window rows and lock every window in key order, in one pass:
        -- DO UPDATE ... WHERE false locks an existing row without writing it.
        INSERT INTO budget_windows AS bw (budget_id, window_start, window_end)
        SELECT t.b, t.s, t.e FROM unnest(w_budget, w_start, w_end) AS t(b, s, e) ORDER BY t.b, t.s
        ON CONFLICT (budget_id, window_start) DO UPDATE SET posted = bw.posted WHERE false;

        SELECT array_agg(q.u ORDER BY q.x), array_agg(q.l ORDER BY q.x) INTO wused, wlimit FROM (
            SELECT t.x,
                   CASE WHEN t.f IS NULL THEN bw.posted + bw.pending
                        ELSE (SELECT coalesce(sum(o.posted + o.pending), 0)::bigint FROM budget_windows o
                               WHERE o.budget_id = t.b AND o.window_start >= t.f AND o.window_start <= t.s) END AS u,
                   CASE WHEN b.deleted_at IS NOT NULL THEN NULL ELSE el.effective_limit END AS l
              FROM unnest(w_budget, w_start, w_roll_from) WITH ORDINALITY AS t(b, s, f, x)
              JOIN budget_windows bw ON bw.budget_id = t.b AND bw.window_start = t.s
              JOIN budgets b ON b.id = t.b
              CROSS JOIN LATERAL purser_effective_limit(p_budget_id => b.id, p_limit => b.limit_amount,
                                                        p_from => now(), p_until => now()) AS el) AS q;
        IF coalesce(array_length(wused, 1), 0) <> nw THEN
            RAISE EXCEPTION 'purser_reserve: % windows requested, % found (unknown budget id?)',
                nw, coalesce(array_length(wused, 1), 0);
        END IF;
    END IF;

    -- Fast path: when the whole batch fits every hard window, admit it in a few set-based
    -- statements (the usual case: budgets are rarely at their edge).
    IF nw = 0 OR NOT EXISTS (
        SELECT 1 FROM (SELECT l.win, sum(l.amt) AS total
                         FROM unnest(h_req, h_window, h_amount, h_hard) AS l(req, win, amt, hard)
                        WHERE l.hard AND sti[l.req] <> 2
                        GROUP BY l.win) AS t
         WHERE wlimit[t.win] IS NOT NULL AND wused[t.win] + t.total > wlimit[t.win]) THEN
        SELECT array_agg(CASE WHEN u.s = 2 THEN 2 ELSE 1 END ORDER BY u.o),
               array_agg(CASE WHEN u.s = 2 THEN u.prev ELSE u.id END ORDER BY u.o)
          INTO sti, resid
          FROM unnest(sti, resid, r_id) WITH ORDINALITY AS u(s, prev, id, o);
        IF nh > 0 THEN
            SELECT array_agg(coalesce(d.total, 0) ORDER BY w.x) INTO wdelta
              FROM generate_series(1, nw) AS w(x)
              LEFT JOIN (SELECT l.win, sum(l.amt)::bigint AS total
                           FROM unnest(h_req, h_window, h_amount) AS l(req, win, amt)
                          WHERE sti[l.req] = 1
                          GROUP BY l.win) AS d ON d.win = w.x;
            -- Each line sees its window as the requests up to and including its own left it;
            -- a duplicate's lines see the window without adding to it.
            SELECT array_agg(wlimit[q.win] ORDER BY q.line),
                   array_agg(wused[q.win] + q.cum ORDER BY q.line)
              INTO lim, used
              FROM (SELECT l.line, l.win,
                           sum(CASE WHEN sti[l.req] = 1 THEN l.amt ELSE 0 END)
                               OVER (PARTITION BY l.win ORDER BY l.line)::bigint AS cum
                      FROM unnest(h_req, h_window, h_amount) WITH ORDINALITY AS l(req, win, amt, line)) AS q;
        END IF;
    ELSE
        -- Admit in arrival order (integer, bigint and boolean arrays only: O(1) subscripts).
        FOR vi IN 1 .. n LOOP
            IF sti[vi] = 2 THEN
                CONTINUE;
            END IF;
            fits := true;
            FOR vj IN r_first[vi] .. r_first[vi] + r_count[vi] - 1 LOOP
                vk := h_window[vj];
                IF h_hard[vj] AND wlimit[vk] IS NOT NULL AND wused[vk] + wdelta[vk] + h_amount[vj] > wlimit[vk] THEN
                    fits := false;
                    deny[vi] := vj;
                    EXIT;
                END IF;
            END LOOP;
            IF fits THEN
                sti[vi] := 1;
                resid[vi] := r_id[vi];
                FOR vj IN r_first[vi] .. r_first[vi] + r_count[vi] - 1 LOOP
                    wdelta[h_window[vj]] := wdelta[h_window[vj]] + h_amount[vj];
                END LOOP;
            END IF;
            FOR vj IN r_first[vi] .. r_first[vi] + r_count[vi] - 1 LOOP
                vk := h_window[vj];
                lim[vj] := wlimit[vk];
                used[vj] := wused[vk] + wdelta[vk];
            END LOOP;
        END LOOP;
    END IF;

    -- A denied request may be a repeat of one admitted before: then its first answer stands,
    -- which the run with p_check_idem gives (it marks the reservation first, in lock order).
    IF NOT p_check_idem AND EXISTS (
        SELECT 1 FROM unnest(r_idem, sti) AS k(key, s)
          JOIN reservations r ON r.idempotency_key = k.key
         WHERE k.s = 0) THEN
        RAISE EXCEPTION 'purser_reserve: idempotency key reserved before' USING ERRCODE = 'PU001';
    END IF;

    UPDATE budget_windows bw SET pending = bw.pending + d.delta
      FROM unnest(w_budget, w_start, wdelta) AS d(b, s, delta)
     WHERE bw.budget_id = d.b AND bw.window_start = d.s AND d.delta <> 0;

    WITH ins AS (
        INSERT INTO reservations (id, idempotency_key, expires_at, key_id, subjects, provider, api_flavor,
                                  model, route, request_id, hold_cost, hold_tokens)
        SELECT t.id, t.idem, now() + t.ttl * interval '1 millisecond', t.key_id,
               string_to_array(t.subjects, E'\n'), t.provider, t.flavor, t.model, t.route,
               t.request_id, t.hold_cost, t.hold_tokens
          FROM unnest(r_id, r_idem, r_ttl_ms, r_key_id, r_subjects, r_provider, r_flavor, r_model, r_route,
                      r_request_id, r_hold_cost, r_hold_tokens, sti)
               AS t(id, idem, ttl, key_id, subjects, provider, flavor, model, route, request_id, hold_cost, hold_tokens, st)
         WHERE t.st = 1
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING 1)
    SELECT count(*) INTO vi FROM ins;
    IF vi <> (SELECT count(*) FROM unnest(sti) AS u(s) WHERE u.s = 1) THEN
        -- An idempotency key was reserved before: undo this batch (the whole statement rolls
        -- back) and let the caller run it again with p_check_idem.
        RAISE EXCEPTION 'purser_reserve: idempotency key reserved before' USING ERRCODE = 'PU001';
    END IF;

    INSERT INTO reservation_holds (reservation_id, budget_id, window_start, tokens_unit, amount)
    SELECT resid[l.req], w_budget[l.win], w_start[l.win], l.tok, l.amt
      FROM unnest(h_req, h_window, h_tokens, h_amount) AS l(req, win, tok, amt)
     WHERE sti[l.req] = 1;

    RETURN QUERY SELECT sti, resid, deny, lim, used;
END
$$;
