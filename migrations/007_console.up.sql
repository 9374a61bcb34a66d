-- The spend console, scoped admin tokens and request-count limits.
--
-- 1. A third budget unit, 'requests': every admitted request holds 1 on such a budget, settles
--    at 1 whatever its usage, is released when voided and charged 1 when it expires. With the
--    new 'minute' and 'hour' calendar windows (and rolling windows down to one minute) this
--    gives RPM / RPH / RPD limits on the same reserve/settle machinery as money and tokens.
-- 2. Scoped admin tokens (admin_tokens), console sessions (console_sessions), and the role
--    that last set each budget (budgets.set_by_role), which bounds what managers may do.

ALTER TABLE budgets DROP CONSTRAINT budgets_unit_check,
    ADD CONSTRAINT budgets_unit_check CHECK (unit IN ('usd', 'tokens', 'requests'));
ALTER TABLE budget_templates DROP CONSTRAINT budget_templates_unit_check,
    ADD CONSTRAINT budget_templates_unit_check CHECK (unit IN ('usd', 'tokens', 'requests'));
ALTER TABLE budgets DROP CONSTRAINT budgets_window_kind_check,
    ADD CONSTRAINT budgets_window_kind_check
        CHECK (window_kind IN ('minute', 'hour', 'day', 'week', 'month', 'quarter', 'year', 'rolling', 'lifetime'));
ALTER TABLE budget_templates DROP CONSTRAINT budget_templates_window_kind_check,
    ADD CONSTRAINT budget_templates_window_kind_check
        CHECK (window_kind IN ('minute', 'hour', 'day', 'week', 'month', 'quarter', 'year', 'rolling', 'lifetime'));

-- A hold's unit is read at settlement (what the hold is charged): tokens_unit true = tokens,
-- false = money, and from now on NULL = requests. purser_reserve and purser_record_unreserved
-- are unchanged: they copy each line's unit from their boolean[] argument, and the ledger
-- now passes NULL in that array for a requests hold. Only purser_settle (below) reads the
-- unit, and it gains one CASE branch. purser_expire charges every hold its full amount (1
-- for a requests hold), and verify, retention and reports never read the column.
ALTER TABLE reservation_holds ALTER COLUMN tokens_unit DROP NOT NULL;

-- purser_settle as in 002_ledger_functions, with ONE change, in the statement that charges
-- the holds (marked "007:"): a requests hold (tokens_unit IS NULL) is charged its amount, 1,
-- when settled, whatever the usage. Everything else is byte for byte the same; a later
-- change to purser_settle must keep that branch.
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

-- Who last set a budget: an admin (the bootstrap token, an admin token, the seed command, a
-- template) or a manager (a token scoped to some subjects). A manager may change only budgets
-- a manager set, and never above a budget an admin set on the same or a wider subject.
ALTER TABLE budgets ADD COLUMN set_by_role text NOT NULL DEFAULT 'admin'
    CHECK (set_by_role IN ('admin', 'manager'));

-- Admin API tokens beyond the bootstrap PURSER_ADMIN_TOKEN: only the SHA-256 of the secret is
-- stored. scope lists the subjects a manager administers (see budget.Scope); empty for the
-- other roles.
CREATE TABLE admin_tokens (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    prefix      text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'manager', 'viewer')),
    scope       text[] NOT NULL DEFAULT '{}',
    expires_at  timestamptz,
    revoked_at  timestamptz,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'manager') = (cardinality(scope) > 0))
);
CREATE INDEX admin_tokens_created ON admin_tokens (created_at, id);

-- Console sign-ins: the cookie carries a random secret, this table its SHA-256 and who signed
-- in ('env:<sha-256 of a bootstrap token>', 'token:<id>' or 'key:<id>'). The principal is
-- re-checked on every request, so revoking the token or key ends its sessions at once, on
-- every replica.
CREATE TABLE console_sessions (
    id_hash    bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    principal  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
