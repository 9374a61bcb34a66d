-- Re-applied by `purser migrate` after the numbered migrations (see migrations/README.md):
-- this file is the only definition of the function from now on. Edit it here, never in a
-- numbered migration.

-- purser_effective_limit is a budget's effective limit: its base limit p_limit plus every grant
-- in force at some instant of [p_from, p_until] (see purser_grants_in_force). Admission
-- (purser_reserve), the utilisation gauges and alerts (budget/store/alerts.go) ask at now();
-- purser verify (budget/store/verify.go) over a whole window, the most admission could ever
-- have allowed in it. Called in FROM (LATERAL), one row; inlined by the planner like
-- purser_grants_in_force.
CREATE OR REPLACE FUNCTION purser_effective_limit(p_budget_id bigint, p_limit bigint, p_from timestamptz, p_until timestamptz)
RETURNS TABLE (effective_limit bigint)
LANGUAGE sql STABLE
AS $$
SELECT p_limit + coalesce(sum(g.amount), 0)::bigint
  FROM purser_grants_in_force(p_budget_id => p_budget_id, p_from => p_from, p_until => p_until) AS g
$$;
