-- Authentic settlement and bounded template materialisation.

-- Keys that sign what a Check answer tells the access-log sink (package proof). Every replica
-- signs with the newest active key and verifies with any unexpired one; a replica rotates when
-- the active key is old, inserting the next key ahead of its activation so every replica has
-- loaded it (LISTEN purser_changes, or the periodic reload) before anyone signs with it. The
-- database already is the root of trust of the ledger: whoever can write here can move money
-- directly, so keeping the HMAC keys here adds no exposure and needs no operator secret.
CREATE TABLE signing_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret       bytea NOT NULL CHECK (length(secret) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activates_at timestamptz NOT NULL,
    retires_at   timestamptz NOT NULL,
    -- verification ends here: after the last proof this key signed has expired.
    expires_at   timestamptz NOT NULL,
    CHECK (activates_at < retires_at AND retires_at <= expires_at)
);
CREATE TRIGGER signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION purser_notify_change();

-- purser_charge_provisional charges pending reservations their whole hold, as expiry does
-- (state 'expired', so a later authentic access-log entry still settles the real cost and
-- refunds the difference). The access log's x-request-id fallback uses it when an entry
-- without ext_authz metadata cannot settle with usage: the fallback never voids.
-- out_outcome per distinct id: provisional | duplicate (not pending) | unknown.
CREATE FUNCTION purser_charge_provisional(p_ids uuid[], p_causes text[])
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

-- Default-budget templates materialise one budget per new subject. An idle materialised
-- budget (nothing spent or held in its current window, never edited, no grant) may be pruned:
-- soft-deleted with pruned_at set, its windows and holds kept as history (purser verify
-- reconciles them as before). A pruned budget no longer blocks re-materialisation: the
-- subject, if it comes back, gets a fresh budget from the template, which starts exactly where
-- the pruned one stood (an empty current window). A budget an operator deleted still does.
ALTER TABLE budgets ADD COLUMN pruned_at timestamptz;
ALTER TABLE budgets DROP CONSTRAINT budgets_template_id_subject_key;
CREATE UNIQUE INDEX budgets_template_subject ON budgets (template_id, subject) WHERE pruned_at IS NULL;
-- Counting a template's live budgets (its cap) and finding idle ones.
CREATE INDEX budgets_template_live ON budgets (template_id) WHERE template_id IS NOT NULL AND deleted_at IS NULL;

-- A budget a template makes for a new subject needs no notification: a replica caches a
-- subject's budgets only after it made (or found) that subject's template budgets, or was
-- refused (and cached nothing). Without this, every new subject purged every replica's caches
-- (a flood of new tenants amplified into cache misses for everyone).
DROP TRIGGER budgets_changed ON budgets;
CREATE TRIGGER budgets_changed AFTER UPDATE OR DELETE ON budgets
    FOR EACH ROW EXECUTE FUNCTION purser_notify_change();
CREATE TRIGGER budgets_created AFTER INSERT ON budgets
    FOR EACH ROW WHEN (NEW.template_id IS NULL) EXECUTE FUNCTION purser_notify_change();
