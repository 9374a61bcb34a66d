-- Retention: resolved reservations older than a horizon leave the ledger (purser prune, or
-- purser serve -retention), and what reports and reconciliation need of them stays behind in
-- two small tables, written in the same transaction as the delete.

-- Spend of pruned reservations, per UTC day of resolution, key ('' for none), model and
-- subject set: the same sums a spend report takes of live reservations (settled and expired
-- ones only). Each prune batch adds its sums to the group's one row.
CREATE TABLE spend_rollups (
    day               date NOT NULL,
    key_id            text NOT NULL,
    model             text NOT NULL,
    subjects          text[] NOT NULL,
    requests          bigint NOT NULL,
    expired           bigint NOT NULL,
    overruns          bigint NOT NULL,
    cost              bigint NOT NULL,
    tokens            bigint NOT NULL,
    overrun_cost      bigint NOT NULL,
    overrun_tokens    bigint NOT NULL,
    unreserved        bigint NOT NULL,
    unreserved_cost   bigint NOT NULL,
    unreserved_tokens bigint NOT NULL,
    PRIMARY KEY (day, key_id, model, subjects)
);

-- Per budget window, what the pruned holds had posted, how much of it recorded overruns and
-- unreserved spend explain, and how many contradicted their reservation's state (a bug verify
-- must keep reporting): purser verify adds these to the live holds, so a window reconciles
-- exactly whether or not its history was pruned.
CREATE TABLE window_archive (
    budget_id    bigint NOT NULL,
    window_start timestamptz NOT NULL,
    posted       bigint NOT NULL,
    excess       bigint NOT NULL,
    holds        bigint NOT NULL,
    bad          bigint NOT NULL,
    PRIMARY KEY (budget_id, window_start)
);
