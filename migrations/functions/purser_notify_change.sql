-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- Definition changes wake every replica's caches (LISTEN purser_changes). Row-level, so a
-- statement that changes nothing (LoadBudgets' INSERT ... ON CONFLICT DO NOTHING runs on every
-- cache miss) notifies nobody; Postgres folds identical notifications of one transaction.
CREATE OR REPLACE FUNCTION purser_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('purser_changes', current_schema() || '.' || TG_TABLE_NAME);
    RETURN NULL;
END $$;
