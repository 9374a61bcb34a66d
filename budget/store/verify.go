package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Mismatch is a window whose counters disagree with its holds (design invariant 2), or a hold
// whose charge disagrees with its reservation's state.
type Mismatch struct {
	BudgetID     int64
	WindowStart  time.Time
	Posted       int64 // counter
	Pending      int64 // counter
	HeldPosted   int64 // sum of charges of settled and expired holds
	HeldPending  int64 // sum of amounts of pending holds
	BadHolds     int64 // holds whose charge contradicts their reservation's state
	OrphanHolds  int64 // holds without a reservation
	MissingCount bool  // holds exist for a window row that does not
}

// Verify runs the reconciliation query over every window. An empty result means the ledger is
// consistent. It reads under one REPEATABLE READ snapshot so concurrent traffic cannot produce
// a false alarm.
func (s *Store) Verify(ctx context.Context) ([]Mismatch, error) {
	var out []Mismatch
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
WITH live AS (
    SELECT h.budget_id, h.window_start,
           sum(CASE WHEN r.state IN ('settled', 'expired') THEN h.charged ELSE 0 END)::bigint AS posted,
           sum(CASE WHEN r.state = 'pending' THEN h.amount ELSE 0 END)::bigint AS pending,
           count(*) FILTER (WHERE (r.state IN ('pending', 'voided') AND h.charged <> 0)
                               OR (r.state = 'expired' AND h.charged <> h.amount)) AS bad,
           count(*) FILTER (WHERE r.id IS NULL) AS orphan
      FROM reservation_holds h
      LEFT JOIN reservations r ON r.id = h.reservation_id
     GROUP BY h.budget_id, h.window_start),
-- Pruned holds count as they did when they were live (window_archive, written by Prune).
h AS (
    SELECT x.budget_id, x.window_start, sum(x.posted)::bigint AS posted, sum(x.pending)::bigint AS pending,
           sum(x.bad)::bigint AS bad, sum(x.orphan)::bigint AS orphan
      FROM (SELECT * FROM live
            UNION ALL
            SELECT a.budget_id, a.window_start, a.posted, 0, a.bad, 0 FROM window_archive a) AS x
     GROUP BY x.budget_id, x.window_start)
SELECT coalesce(w.budget_id, h.budget_id), coalesce(w.window_start, h.window_start),
       coalesce(w.posted, 0), coalesce(w.pending, 0), coalesce(h.posted, 0), coalesce(h.pending, 0),
       coalesce(h.bad, 0), coalesce(h.orphan, 0), w.budget_id IS NULL
  FROM budget_windows w
  FULL JOIN h ON h.budget_id = w.budget_id AND h.window_start = w.window_start
 WHERE w.budget_id IS NULL
    OR w.posted <> coalesce(h.posted, 0)
    OR w.pending <> coalesce(h.pending, 0)
    OR coalesce(h.bad, 0) > 0
    OR coalesce(h.orphan, 0) > 0
 ORDER BY 1, 2`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Mismatch, error) {
			var m Mismatch
			err := r.Scan(&m.BudgetID, &m.WindowStart, &m.Posted, &m.Pending, &m.HeldPosted, &m.HeldPending,
				&m.BadHolds, &m.OrphanHolds, &m.MissingCount)
			return m, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("verify: %w", interpret(err))
	}
	return out, nil
}

// OverLimit is a hard budget window holding or having spent more than its limit.
type OverLimit struct {
	BudgetID    int64
	WindowStart time.Time
	Limit       int64
	Posted      int64
	Pending     int64
	Overrun     int64 // sum of recorded overruns and unreserved spend in the window (explains excess)
}

// OverLimits lists hard calendar windows whose posted + pending exceed the limit plus every
// grant that overlapped the window (purser_effective_limit over the window: the most
// admission could ever have allowed). Excess is
// legitimate only when recorded overruns or unreserved spend explain it, or when the limit was
// lowered after the spend (the audit log shows that).
func (s *Store) OverLimits(ctx context.Context) ([]OverLimit, error) {
	rows, err := s.pool.Query(ctx, `
WITH over AS (
    SELECT w.budget_id, w.window_start, w.posted, w.pending, el.effective_limit AS lim
      FROM budget_windows w
      JOIN budgets b ON b.id = w.budget_id AND b.hard AND b.window_kind <> 'rolling'
     CROSS JOIN LATERAL purser_effective_limit(p_budget_id => b.id, p_limit => b.limit_amount,
                                               p_from => w.window_start, p_until => w.window_end - interval '1 microsecond') AS el
     WHERE w.posted + w.pending > el.effective_limit),
excess AS (
    SELECT x.budget_id, x.window_start, sum(x.total)::bigint AS total FROM (
        SELECT h.budget_id, h.window_start,
               CASE WHEN r.unreserved THEN h.charged ELSE greatest(h.charged - h.amount, 0) END AS total
          FROM reservation_holds h
          JOIN reservations r ON r.id = h.reservation_id
          JOIN over o ON o.budget_id = h.budget_id AND o.window_start = h.window_start
        UNION ALL
        SELECT a.budget_id, a.window_start, a.excess
          FROM window_archive a
          JOIN over o ON o.budget_id = a.budget_id AND o.window_start = a.window_start) AS x
     GROUP BY x.budget_id, x.window_start)
SELECT o.budget_id, o.window_start, o.lim, o.posted, o.pending, coalesce(e.total, 0)
  FROM over o LEFT JOIN excess e ON e.budget_id = o.budget_id AND e.window_start = o.window_start
 ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("over-limit check: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (OverLimit, error) {
		var o OverLimit
		err := r.Scan(&o.BudgetID, &o.WindowStart, &o.Limit, &o.Posted, &o.Pending, &o.Overrun)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("over-limit check: %w", interpret(err))
	}
	return out, nil
}

// ReservationRow is a reservation as stored.
type ReservationRow struct {
	ID             string
	State          string
	CreatedAt      time.Time
	ExpiresAt      time.Time
	ResolvedAt     *time.Time
	KeyID          *string
	Subjects       []string
	Provider       string
	Flavor         string
	Model          string
	Route          string
	RequestID      *string
	HoldCost       int64
	HoldTokens     int64
	ActualCost     *int64
	ActualTokens   *int64
	CatalogVersion *string
	Cause          *string
	OverrunCost    int64
	OverrunTokens  int64
	Unreserved     bool
}

const reservationCols = `id::text, state, created_at, expires_at, resolved_at, key_id, subjects, provider, api_flavor, model,
	route, request_id, hold_cost, hold_tokens, actual_cost, actual_tokens, catalog_version, cause, overrun_cost,
	overrun_tokens, unreserved`

func scanReservation(r pgx.Row) (ReservationRow, error) {
	var x ReservationRow
	err := r.Scan(&x.ID, &x.State, &x.CreatedAt, &x.ExpiresAt, &x.ResolvedAt, &x.KeyID, &x.Subjects, &x.Provider,
		&x.Flavor, &x.Model, &x.Route, &x.RequestID, &x.HoldCost, &x.HoldTokens, &x.ActualCost, &x.ActualTokens,
		&x.CatalogVersion, &x.Cause, &x.OverrunCost, &x.OverrunTokens, &x.Unreserved)
	return x, err
}

// Reservation returns one reservation.
func (s *Store) Reservation(ctx context.Context, id string) (ReservationRow, error) {
	x, err := scanReservation(s.pool.QueryRow(ctx, `SELECT `+reservationCols+` FROM reservations WHERE id = $1::uuid`, id))
	if err != nil {
		return ReservationRow{}, fmt.Errorf("reservation %s: %w", id, interpret(err))
	}
	return x, nil
}

// ReservationsByRequestStart returns reservations carrying an x-request-id, created in
// [from, to], whose idempotency key is the request's start time (8 bytes, startKey) followed
// by a SHA-256.
func (s *Store) ReservationsByRequestStart(ctx context.Context, requestID string, startKey []byte, from, to time.Time) ([]ReservationRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+reservationCols+` FROM reservations
		WHERE request_id = $1 AND created_at >= $3 AND created_at <= $4
		  AND length(idempotency_key) = 40 AND substring(idempotency_key FROM 1 FOR 8) = $2
		ORDER BY created_at`, requestID, startKey, from, to)
	if err != nil {
		return nil, fmt.Errorf("reservations by request start: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ReservationRow, error) { return scanReservation(r) })
	if err != nil {
		return nil, fmt.Errorf("reservations by request start: %w", interpret(err))
	}
	return out, nil
}
