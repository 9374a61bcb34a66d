package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// RequestFilter selects reservations (per-request records) for Requests, newest first.
type RequestFilter struct {
	Subject string // only reservations that carried this subject
	KeyID   string // only this key's
	Model   string // only this model's (as requested)
	State   string // pending | settled | voided | expired; "" for all
	// From and To bound created_at: [From, To); zero for no bound.
	From, To time.Time
	// Scope keeps only reservations that carried a subject a manager administers (nil: all).
	Scope *ScopeFilter
	// BeforeID continues a list: only reservations with a smaller id ("" from the newest).
	BeforeID string
	Limit    int // at most this many; 0 for all
}

// RequestRow is one reservation with the usage fields an invoice is reconciled on.
type RequestRow struct {
	ReservationRow
	InputTokens  *int64 // from the normalised usage of a settled reservation
	OutputTokens *int64
}

// idSkew is how far a reservation's id (a UUIDv7 made by the replica that reserved it) may be
// older than its created_at (the database clock): the lower id bound of a time range
// allows for it.
const idSkew = time.Hour

// Requests returns a page of reservations, newest first: in descending id order, which is
// creation order because the ledger makes every reservation id a UUIDv7. A page walks the
// primary key from the cursor down; a From bound also bounds the walk (ids of reservations
// created at or after From are at least From's first id, less idSkew).
func (s *Store) Requests(ctx context.Context, f RequestFilter) ([]RequestRow, error) {
	var before, floor *string
	if f.BeforeID != "" {
		before = &f.BeforeID
	}
	if !f.From.IsZero() {
		id := firstIDAt(f.From.Add(-idSkew)).String()
		floor = &id
	}
	var from, to *time.Time
	if !f.From.IsZero() {
		from = &f.From
	}
	if !f.To.IsZero() {
		to = &f.To
	}
	rows, err := s.pool.Query(ctx, `SELECT `+reservationCols+`,
		       (usage->>'input_tokens')::bigint, (usage->>'output_tokens')::bigint
		  FROM reservations r
		 WHERE ($1::uuid IS NULL OR id < $1::uuid) AND ($2::uuid IS NULL OR id >= $2::uuid)
		   AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)
		   AND ($5 = '' OR subjects @> ARRAY[$5]::text[]) AND ($6 = '' OR key_id = $6)
		   AND ($7 = '' OR model = $7) AND ($8 = '' OR state = $8)
		   AND `+coveredAny("r.subjects", f.Scope, 10)+`
		 ORDER BY id DESC LIMIT $9`,
		append([]any{before, floor, from, to, f.Subject, f.KeyID, f.Model, f.State, limitOrAll(f.Limit)}, scopeArgs(f.Scope)...)...)
	if err != nil {
		return nil, fmt.Errorf("list requests: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (RequestRow, error) {
		var x RequestRow
		err := r.Scan(&x.ID, &x.State, &x.CreatedAt, &x.ExpiresAt, &x.ResolvedAt, &x.KeyID, &x.Subjects, &x.Provider,
			&x.Flavor, &x.Model, &x.Route, &x.RequestID, &x.HoldCost, &x.HoldTokens, &x.ActualCost, &x.ActualTokens,
			&x.CatalogVersion, &x.Cause, &x.OverrunCost, &x.OverrunTokens, &x.Unreserved, &x.InputTokens, &x.OutputTokens)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("list requests: %w", interpret(err))
	}
	return out, nil
}

// SeriesFilter selects the spend series of one subject: settled and expired reservations
// that carried it, resolved in [From, To), summed per bucket (of Bucket length, starting at
// From) and model.
type SeriesFilter struct {
	Subject  string
	From, To time.Time
	Bucket   time.Duration // a whole number of seconds, at least one
}

// SeriesPoint is one bucket's spend of one model.
type SeriesPoint struct {
	At       time.Time // the bucket's start
	Model    string
	Cost     int64
	Tokens   int64
	Requests int64
}

// Series sums a subject's spend per bucket and model, in bucket order, including pruned
// history (spend rollups, at day resolution: a pruned day's spend lands in the bucket holding
// its UTC midnight).
func (s *Store) Series(ctx context.Context, f SeriesFilter) ([]SeriesPoint, error) {
	secs := int64(f.Bucket / time.Second)
	if secs < 1 || f.Bucket%time.Second != 0 {
		return nil, fmt.Errorf("series: bucket %s is shorter than a second", f.Bucket)
	}
	rows, err := s.pool.Query(ctx, `
SELECT to_timestamp(extract(epoch FROM $2::timestamptz) + floor((extract(epoch FROM x.at) - extract(epoch FROM $2::timestamptz)) / $4) * $4) AS bucket,
       x.model,
       sum(x.cost)::bigint, sum(x.tokens)::bigint, sum(x.requests)::bigint
  FROM (SELECT r.resolved_at AS at, r.model, coalesce(r.actual_cost, 0) AS cost,
               coalesce(r.actual_tokens, 0) AS tokens, 1 AS requests
          FROM reservations r
         WHERE r.resolved_at >= $2 AND r.resolved_at < $3 AND r.state IN ('settled', 'expired')
           AND r.subjects @> ARRAY[$1]::text[]
        UNION ALL
        SELECT u.day::timestamp AT TIME ZONE 'UTC', u.model, u.cost, u.tokens, u.requests
          FROM spend_rollups u
         WHERE u.day >= ($2 AT TIME ZONE 'UTC')::date AND u.day <= ($3 AT TIME ZONE 'UTC')::date
           AND u.day::timestamp AT TIME ZONE 'UTC' >= $2 AND u.day::timestamp AT TIME ZONE 'UTC' < $3
           AND u.subjects @> ARRAY[$1]::text[]) AS x
 GROUP BY 1, 2
 ORDER BY 1, 2`, f.Subject, f.From, f.To, secs)
	if err != nil {
		return nil, fmt.Errorf("series: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SeriesPoint, error) {
		var p SeriesPoint
		err := r.Scan(&p.At, &p.Model, &p.Cost, &p.Tokens, &p.Requests)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("series: %w", interpret(err))
	}
	return out, nil
}
