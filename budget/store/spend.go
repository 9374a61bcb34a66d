package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SpendFilter selects the resolved reservations a spend report sums.
type SpendFilter struct {
	From, To time.Time // resolved_at in [From, To)
	// GroupBy is "subject" (one row per subject a reservation carried: a reservation counts in
	// each of its subjects), "model", "key" (key id, "" for requests without a key), "day"
	// (UTC date of resolution, YYYY-MM-DD) or "" (one total row).
	GroupBy string
	// Subject, when set, keeps only reservations that carried this subject.
	Subject string
	// Limit caps the number of rows (0: no cap). Rows come largest cost first, except by day,
	// which comes in date order.
	Limit int
}

// SpendRow is one group of a spend report. Amounts are what the reservations were charged:
// the actual cost and tokens of settled ones, the full hold of expired ones.
type SpendRow struct {
	Group            string
	Cost             int64 // micro-USD
	Tokens           int64
	Requests         int64
	Expired          int64 // charged in full because no access-log entry arrived
	Overruns         int64 // requests that cost more than their reserved upper bound
	OverrunCost      int64
	OverrunTokens    int64
	Unreserved       int64 // requests that reached purser without a reservation (fail-open)
	UnreservedCost   int64
	UnreservedTokens int64
}

// spendGroups gives each grouping's expression over a live reservation and over a spend
// rollup (both aliased r; a subject grouping unnests r.subjects as s).
var spendGroups = map[string][2]string{
	"":        {`''`, `''`},
	"subject": {`s.subject`, `s.subject`},
	"model":   {`r.model`, `r.model`},
	"key":     {`coalesce(r.key_id, '')`, `coalesce(r.key_id, '')`},
	"day":     {`to_char(r.resolved_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')`, `to_char(r.day, 'YYYY-MM-DD')`},
}

// Spend sums settled and expired reservations resolved in [From, To), grouped, together with
// the spend rollups of pruned reservations whose day (UTC midnight) is in [From, To): pruned
// history keeps day resolution.
func (s *Store) Spend(ctx context.Context, f SpendFilter) ([]SpendRow, error) {
	group, ok := spendGroups[f.GroupBy]
	if !ok {
		return nil, fmt.Errorf("spend: unknown grouping %q", f.GroupBy)
	}
	unnest := ``
	if f.GroupBy == "subject" {
		unnest = ` CROSS JOIN LATERAL unnest(r.subjects) AS s(subject)`
	}
	order := `2 DESC, 1`
	if f.GroupBy == "day" {
		order = `1`
	}
	limit := ``
	if f.Limit > 0 {
		limit = fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	// resolved_at has a BRIN index (reservations_resolved); the subject filter is a containment test
	// on the rows of that range rather than a GIN index, which would cost every reservation on
	// the hot path an extra index write.
	q := `SELECT x.g, sum(x.cost)::bigint, sum(x.tokens)::bigint, sum(x.requests)::bigint, sum(x.expired)::bigint,
	       sum(x.overruns)::bigint, sum(x.overrun_cost)::bigint, sum(x.overrun_tokens)::bigint,
	       sum(x.unreserved)::bigint, sum(x.unreserved_cost)::bigint, sum(x.unreserved_tokens)::bigint
	  FROM (
	SELECT ` + group[0] + ` AS g,
	       coalesce(r.actual_cost, 0) AS cost,
	       coalesce(r.actual_tokens, 0) AS tokens,
	       1 AS requests,
	       (r.state = 'expired')::int AS expired,
	       (r.overrun_cost > 0 OR r.overrun_tokens > 0)::int AS overruns,
	       r.overrun_cost,
	       r.overrun_tokens,
	       r.unreserved::int AS unreserved,
	       CASE WHEN r.unreserved THEN coalesce(r.actual_cost, 0) ELSE 0 END AS unreserved_cost,
	       CASE WHEN r.unreserved THEN coalesce(r.actual_tokens, 0) ELSE 0 END AS unreserved_tokens
	  FROM reservations r` + unnest + `
	 WHERE r.resolved_at >= $1 AND r.resolved_at < $2
	   AND r.state IN ('settled', 'expired')
	   AND ($3 = '' OR r.subjects @> ARRAY[$3]::text[])
	UNION ALL
	SELECT ` + group[1] + `, r.cost, r.tokens, r.requests, r.expired, r.overruns, r.overrun_cost, r.overrun_tokens,
	       r.unreserved, r.unreserved_cost, r.unreserved_tokens
	  FROM spend_rollups r` + unnest + `
	 WHERE r.day >= ($1 AT TIME ZONE 'UTC')::date AND r.day <= ($2 AT TIME ZONE 'UTC')::date
	   AND r.day::timestamp AT TIME ZONE 'UTC' >= $1 AND r.day::timestamp AT TIME ZONE 'UTC' < $2
	   AND ($3 = '' OR r.subjects @> ARRAY[$3]::text[])) AS x
	 GROUP BY 1
	 ORDER BY ` + order + limit
	rows, err := s.pool.Query(ctx, q, f.From, f.To, f.Subject)
	if err != nil {
		return nil, fmt.Errorf("spend: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SpendRow, error) {
		var x SpendRow
		err := r.Scan(&x.Group, &x.Cost, &x.Tokens, &x.Requests, &x.Expired, &x.Overruns, &x.OverrunCost,
			&x.OverrunTokens, &x.Unreserved, &x.UnreservedCost, &x.UnreservedTokens)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("spend: %w", interpret(err))
	}
	return out, nil
}
