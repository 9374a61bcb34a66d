-- purser ledger: keys, budgets, window counters, reservations and their holds.
-- Money is bigint micro-units of USD; token amounts are whole tokens. No floats anywhere.

CREATE TABLE api_keys (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    secret_hash    bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    prefix         text NOT NULL,
    subjects       text[] NOT NULL DEFAULT '{}',
    allowed_models text[] NOT NULL DEFAULT '{}',
    expires_at     timestamptz,
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    rotated_at     timestamptz
);

-- Default-budget templates: attached to every subject of subject_kind when it is first seen.
CREATE TABLE budget_templates (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    subject_kind    text NOT NULL,
    unit            text NOT NULL CHECK (unit IN ('usd', 'tokens')),
    limit_amount    bigint NOT NULL CHECK (limit_amount >= 0),
    window_kind     text NOT NULL CHECK (window_kind IN ('day', 'week', 'month', 'quarter', 'year', 'rolling', 'lifetime')),
    time_zone       text NOT NULL DEFAULT 'UTC',
    anchor_day      smallint CHECK (anchor_day BETWEEN 1 AND 31),
    rolling_seconds bigint CHECK (rolling_seconds > 0),
    hard            boolean NOT NULL DEFAULT true,
    warn_at         smallint[] NOT NULL DEFAULT '{}',
    models          text[] NOT NULL DEFAULT '{}',
    endpoints       text[] NOT NULL DEFAULT '{}',
    route_match     jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    CHECK ((window_kind = 'rolling') = (rolling_seconds IS NOT NULL))
);
CREATE UNIQUE INDEX budget_templates_name ON budget_templates (name) WHERE deleted_at IS NULL;

CREATE TABLE budgets (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    subject         text NOT NULL CHECK (subject <> ''),
    unit            text NOT NULL CHECK (unit IN ('usd', 'tokens')),
    limit_amount    bigint NOT NULL CHECK (limit_amount >= 0),
    window_kind     text NOT NULL CHECK (window_kind IN ('day', 'week', 'month', 'quarter', 'year', 'rolling', 'lifetime')),
    time_zone       text NOT NULL DEFAULT 'UTC',
    anchor_day      smallint CHECK (anchor_day BETWEEN 1 AND 31),
    rolling_seconds bigint CHECK (rolling_seconds > 0),
    hard            boolean NOT NULL DEFAULT true,
    warn_at         smallint[] NOT NULL DEFAULT '{}',
    models          text[] NOT NULL DEFAULT '{}',
    endpoints       text[] NOT NULL DEFAULT '{}',
    route_match     jsonb NOT NULL DEFAULT '{}',
    -- A manual reset starts a fresh window at this instant (the old window keeps its history).
    reset_at        timestamptz,
    template_id     bigint REFERENCES budget_templates (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    CHECK ((window_kind = 'rolling') = (rolling_seconds IS NOT NULL)),
    -- A template is materialised at most once per subject, even under concurrent first requests.
    UNIQUE (template_id, subject)
);
CREATE INDEX budgets_subject ON budgets (subject) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX budgets_subject_name ON budgets (subject, name) WHERE deleted_at IS NULL;

-- Temporary increases of a budget's limit.
CREATE TABLE budget_grants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    budget_id   bigint NOT NULL REFERENCES budgets (id),
    amount      bigint NOT NULL CHECK (amount > 0),
    starts_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_by  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at > starts_at)
);
CREATE INDEX budget_grants_budget ON budget_grants (budget_id, expires_at);

-- One row per budget per window, created lazily. Rolling budgets use one row per bucket.
CREATE TABLE budget_windows (
    budget_id    bigint NOT NULL REFERENCES budgets (id),
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    posted       bigint NOT NULL DEFAULT 0 CHECK (posted >= 0),
    pending      bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    PRIMARY KEY (budget_id, window_start),
    CHECK (window_end > window_start)
);

CREATE TABLE reservations (
    id              uuid PRIMARY KEY,
    idempotency_key bytea UNIQUE,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'settled', 'voided', 'expired')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    key_id          text,
    subjects        text[] NOT NULL DEFAULT '{}',
    provider        text NOT NULL DEFAULT '',
    api_flavor      text NOT NULL DEFAULT '',
    model           text NOT NULL DEFAULT '',
    route           text NOT NULL DEFAULT '',
    request_id      text,
    hold_cost       bigint NOT NULL CHECK (hold_cost >= 0),
    hold_tokens     bigint NOT NULL CHECK (hold_tokens >= 0),
    actual_cost     bigint CHECK (actual_cost >= 0),
    actual_tokens   bigint CHECK (actual_tokens >= 0),
    usage           jsonb,
    catalog_version text,
    cause           text,
    overrun_cost    bigint NOT NULL DEFAULT 0 CHECK (overrun_cost >= 0),
    overrun_tokens  bigint NOT NULL DEFAULT 0 CHECK (overrun_tokens >= 0),
    -- Spend that reached purser without a reservation (fail-open, lost Check) is recorded here too.
    unreserved      boolean NOT NULL DEFAULT false,
    -- A repeated Check (Envoy's retry_policy) was answered with this reservation: the request
    -- may have gone upstream on it, so a void from a caller that gave up must not release it.
    reanswered      boolean NOT NULL DEFAULT false
);
CREATE INDEX reservations_expiry ON reservations (expires_at) WHERE state = 'pending';
-- Time ranges (spend reports, the access log's x-request-id fallback) use BRIN indexes: rows
-- are written and resolved roughly in time order, and a BRIN entry costs next to nothing on
-- the insert and the settlement update, where a btree would cost an index insert each.
CREATE INDEX reservations_created ON reservations USING brin (created_at);
CREATE INDEX reservations_resolved ON reservations USING brin (resolved_at);

-- What one reservation holds on one budget window, in that budget's unit.
-- charged is what the hold posted: 0 while pending or voided, the actual amount once settled,
-- the full amount once expired.
CREATE TABLE reservation_holds (
    reservation_id uuid NOT NULL,
    budget_id      bigint NOT NULL,
    window_start   timestamptz NOT NULL,
    tokens_unit    boolean NOT NULL,
    amount         bigint NOT NULL CHECK (amount >= 0),
    charged        bigint NOT NULL DEFAULT 0 CHECK (charged >= 0),
    PRIMARY KEY (reservation_id, budget_id)
);

CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    target   text NOT NULL,
    details  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Definition changes wake every replica's caches (LISTEN purser_changes). Row-level, so a
-- statement that changes nothing (LoadBudgets' INSERT ... ON CONFLICT DO NOTHING runs on every
-- cache miss) notifies nobody; Postgres folds identical notifications of one transaction.
CREATE FUNCTION purser_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('purser_changes', current_schema() || '.' || TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION purser_notify_change();
CREATE TRIGGER budgets_changed AFTER INSERT OR UPDATE OR DELETE ON budgets
    FOR EACH ROW EXECUTE FUNCTION purser_notify_change();
CREATE TRIGGER budget_templates_changed AFTER INSERT OR UPDATE OR DELETE ON budget_templates
    FOR EACH ROW EXECUTE FUNCTION purser_notify_change();
CREATE TRIGGER budget_grants_changed AFTER INSERT OR UPDATE OR DELETE ON budget_grants
    FOR EACH ROW EXECUTE FUNCTION purser_notify_change();
