package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// UsageHealthRow is what became of the reservations of one (route, provider, model) resolved
// in a time range: how many were resolved, and how many of those were charged their hold
// because the provider's answer came without readable usage.
type UsageHealthRow struct {
	Route, Provider, Model string
	Resolved               int64 // settled or expired (voided ones cost nothing and carry no usage)
	WithoutUsage           int64 // settled at the hold: the answer had no (readable) usage
	Compressed             int64 // ... of which the answer was compressed
	Streams                int64 // ... of which the answer was an event stream
	Expired                int64 // no access-log entry arrived: charged the hold at expiry
}

// UsageHealth groups the reservations resolved since from (resolved_at, a BRIN-indexed
// column) by route, provider and model. Causes are the sink's (accesslog/settle.go): every
// missing_usage[:...], incomplete_usage and invalid_usage is an answer without usage, also
// through the x-request-id join (request_id_join:<cause>). Unreserved spend has no hold and
// is left out.
func (s *Store) UsageHealth(ctx context.Context, from time.Time) ([]UsageHealthRow, error) {
	rows, err := s.pool.Query(ctx, `
WITH r AS (
    SELECT route, provider, model, state,
           regexp_replace(coalesce(cause, ''), '^request_id_join:', '') AS cause
      FROM reservations
     WHERE resolved_at >= $1 AND state IN ('settled', 'expired') AND NOT unreserved)
SELECT route, provider, model, count(*),
       count(*) FILTER (WHERE cause LIKE 'missing_usage%' OR cause IN ('incomplete_usage', 'invalid_usage')),
       count(*) FILTER (WHERE cause = 'missing_usage:compressed'),
       count(*) FILTER (WHERE cause = 'missing_usage:stream'),
       count(*) FILTER (WHERE state = 'expired')
  FROM r
 GROUP BY route, provider, model
 ORDER BY route, provider, model`, from)
	if err != nil {
		return nil, fmt.Errorf("usage health: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[UsageHealthRow])
	if err != nil {
		return nil, fmt.Errorf("usage health: %w", interpret(err))
	}
	return out, nil
}

// Clock returns the database's clock (now()), for comparing it with the caller's.
func (s *Store) Clock(ctx context.Context) (time.Time, error) {
	var t time.Time
	if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("database clock: %w", interpret(err))
	}
	return t, nil
}
