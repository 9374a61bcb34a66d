-- The missing-usage watchdog (alerts: EvaluateUsageOnce) raises events about a route, provider
-- and model whose answers come back without usage and are charged their whole hold. They
-- belong to no budget: budget_id is NULL for them, and only for them.
ALTER TABLE alert_events ALTER COLUMN budget_id DROP NOT NULL;
ALTER TABLE alert_events DROP CONSTRAINT alert_events_kind_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_kind_check
    CHECK (kind IN ('threshold', 'projected', 'missing_usage'));
ALTER TABLE alert_events ADD CONSTRAINT alert_events_budget_by_kind
    CHECK ((budget_id IS NULL) = (kind = 'missing_usage'));
