-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- purser_grants_in_force is the grants of a budget in force at some instant of
-- [p_from, p_until], both ends included: pass the same instant twice for the grants in force
-- at that instant (admission, alerts and status use now() on the database clock), or a
-- window's start and its end less one microsecond for every grant that overlapped the window
-- (timestamptz counts microseconds, so that is exactly the half-open window).
--
-- A set-returning SQL function without SET clauses: the planner inlines it into the calling
-- query (a lateral subquery on budget_grants_budget), so it costs what the subquery it
-- replaces did.
CREATE OR REPLACE FUNCTION purser_grants_in_force(p_budget_id bigint, p_from timestamptz, p_until timestamptz)
RETURNS SETOF budget_grants
LANGUAGE sql STABLE
AS $$
SELECT g.* FROM budget_grants g
 WHERE g.budget_id = p_budget_id AND g.starts_at <= p_until AND g.expires_at > p_from
$$;
