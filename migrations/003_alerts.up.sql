-- Budget alerts: an outbox of events and their deliveries to webhooks, plus the indexes the
-- alert evaluator, the utilisation gauges and the spend reports read through.

-- One row per (budget, window, kind, threshold), ever. The idempotency key
-- budget:<id>:<window start, RFC 3339 UTC>:<kind>:<threshold> is unique, so replicas that
-- evaluate concurrently insert it exactly once (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE alert_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    budget_id       bigint NOT NULL REFERENCES budgets (id),
    kind            text NOT NULL CHECK (kind IN ('threshold', 'projected')),
    threshold       integer NOT NULL CHECK (threshold > 0),
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    -- A lower threshold crossed in the same evaluation as a higher one is recorded (so it is
    -- never raised later) but not delivered: receivers get the highest threshold only.
    suppressed      boolean NOT NULL DEFAULT false,
    -- The generic JSON webhook body, as delivered (the Slack text is rendered from it).
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX alert_events_budget ON alert_events (budget_id, created_at);

-- One row per event per configured webhook. The webhook column is a stable id of the webhook
-- (never its URL: Slack webhook URLs are secrets). A dispatcher claims due rows with
-- FOR UPDATE SKIP LOCKED and leases them by pushing next_attempt_at forward; state survives
-- restarts.
CREATE TABLE alert_deliveries (
    event_id        bigint NOT NULL REFERENCES alert_events (id),
    webhook         text NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_error      text,
    PRIMARY KEY (event_id, webhook)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE state = 'pending';

-- Current windows: the evaluator and the gauges look only at window rows that have not ended
-- (or, for rolling budgets, ended within the rolling length). window_end is never updated, so
-- this index leaves the counters' HOT updates on the reservation path intact.
CREATE INDEX budget_windows_end ON budget_windows (window_end);
