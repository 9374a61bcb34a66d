-- The ledger's state changes, each one database round trip for a whole batch.
--
-- Lock order, everywhere: reservations (by id), then budgets rows of rolling budgets (by id),
-- then budget_windows (by budget_id, window_start). Reserve locks an existing reservation
-- only when a Check is repeated, and does so before any other lock, so no cycle can form
-- between reserving, settling and expiring.

-- purser_reserve admits a batch of requests in arrival order. A request is admitted when every
-- hard budget it touches still has room (posted + pending + amount <= limit + active grants),
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
CREATE FUNCTION purser_reserve(
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
                   CASE WHEN b.deleted_at IS NOT NULL THEN NULL
                        ELSE b.limit_amount + coalesce((SELECT sum(g.amount) FROM budget_grants g
                                                         WHERE g.budget_id = b.id
                                                           AND g.starts_at <= now()
                                                           AND g.expires_at > now()), 0)::bigint END AS l
              FROM unnest(w_budget, w_start, w_roll_from) WITH ORDINALITY AS t(b, s, f, x)
              JOIN budget_windows bw ON bw.budget_id = t.b AND bw.window_start = t.s
              JOIN budgets b ON b.id = t.b) AS q;
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
CREATE FUNCTION purser_settle(
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
           SET charged = CASE WHEN t.new = 'voided' THEN 0 WHEN h.tokens_unit THEN t.tokens ELSE t.cost END
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

-- purser_expire charges in full up to p_limit pending reservations whose deadline (database
-- clock) has passed. SKIP LOCKED lets many replicas sweep at once without double charging.
CREATE FUNCTION purser_expire(p_limit integer) RETURNS integer
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

-- purser_record_unreserved records spend that reached a provider without a reservation (a
-- route that fails open, a Check whose answer was lost): a settled reservation flagged
-- unreserved, whose holds charge (posted) the real cost on every budget the caller's subjects
-- have — with no admission check: the money is already spent. A replayed entry (same
-- idempotency key) records nothing. Arrays are shaped as for purser_reserve.
CREATE FUNCTION purser_record_unreserved(
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
