-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- A watched budget's window gained room (budget/exhausted.go): every replica's storm memory
-- for it must go (LISTEN purser_room). Fires only for budgets some replica watches, so
-- settling an ordinary budget costs no notification.
CREATE OR REPLACE FUNCTION purser_notify_room() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    b bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        b := OLD.budget_id;
    ELSE
        b := NEW.budget_id;
    END IF;
    IF EXISTS (SELECT 1 FROM budget_storm_watch w WHERE w.budget_id = b AND w.until > now()) THEN
        -- One notification per budget per transaction (Postgres folds identical ones).
        PERFORM pg_notify('purser_room', current_schema() || '.' || b);
    END IF;
    RETURN NULL;
END
$$;
