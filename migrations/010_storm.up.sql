-- Exhausted budgets answered from memory (budget/exhausted.go).
--
-- A replica that saw a hard budget's window without room for a request may deny the next
-- requests that cannot fit without asking the database, until something adds room. Anything
-- that can add room must reach every replica: definitions (limit, deletion, grants) already
-- notify purser_changes; a window's spend going down (a settlement below its hold, a void, a
-- late entry refunding an expiry) notifies purser_room — but only for budgets some replica
-- watches, so that settling an ordinary budget costs no notification.
--
-- A replica watches a budget (a row here, valid until `until` on the database clock) before
-- it trusts what the database tells it about that budget: a reservation that starts after the
-- watch committed and reads the window under its lock is followed by a notification for every
-- later change that adds room (that change needs the same row lock, so it runs after the
-- read, and its trigger sees the watch).
CREATE TABLE budget_storm_watch (
    budget_id bigint PRIMARY KEY,
    until     timestamptz NOT NULL
);

CREATE FUNCTION purser_notify_room() RETURNS trigger
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

-- Only a change that lowers posted + pending can add room: reserving and expiring do not fire.
CREATE TRIGGER budget_windows_room AFTER UPDATE OF posted, pending ON budget_windows
    FOR EACH ROW WHEN (NEW.posted + NEW.pending < OLD.posted + OLD.pending)
    EXECUTE FUNCTION purser_notify_room();
CREATE TRIGGER budget_windows_room_gone AFTER DELETE ON budget_windows
    FOR EACH ROW EXECUTE FUNCTION purser_notify_room();
