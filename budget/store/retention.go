package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// PruneResult counts what one Prune call removed from the ledger.
type PruneResult struct {
	Reservations int64  // reservation rows deleted
	Holds        int64  // hold rows deleted
	LastID       string // the greatest id deleted: the next call continues after it ("" if none)
	Busy         bool   // another process was pruning: nothing was done
}

// prunable selects the reservations Prune deletes: resolved before $1 and created before it
// ($2, the first UUIDv7 of its millisecond).
const prunable = `id < $2::uuid AND state IN ('settled', 'voided', 'expired') AND resolved_at < $1::timestamptz`

// pruneLock keys the transaction-level advisory lock that lets one process prune at a time
// (two pruners would upsert the same window_archive rows in different orders).
const pruneLock = `SELECT pg_try_advisory_xact_lock(hashtextextended('purser-prune:' || current_schema(), 0))`

// Prune deletes up to limit resolved reservations (settled, voided, expired) resolved before
// before, with their holds, in one transaction. What reports and reconciliation need of them
// stays behind: their spend in spend_rollups (one row per UTC day, key, model and subject
// set, each batch adding to it) and their holds' sums in window_archive (per budget window).
// Pending reservations are never pruned. Rows locked by a concurrent settlement are skipped
// (a later run takes them).
//
// Reservation ids are UUIDv7, time-ordered: Prune walks the primary key in order from after
// (an id; "" for the start) up to the first id of before's millisecond, so a run over a
// large backlog reads each row once instead of rescanning what earlier batches deleted.
func (s *Store) Prune(ctx context.Context, before time.Time, after string, limit int) (PruneResult, error) {
	if after == "" {
		after = "00000000-0000-0000-0000-000000000000"
	}
	bound := firstIDAt(before)
	var res PruneResult
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var got bool
		if err := tx.QueryRow(ctx, pruneLock).Scan(&got); err != nil {
			return err
		}
		if !got {
			res.Busy = true
			return nil
		}
		// Every data-modifying WITH runs exactly once, to completion, on one snapshot, read or
		// not; the inserts read the deletes' RETURNING rows. The sums mirror Spend's and
		// Verify's exactly.
		return tx.QueryRow(ctx, `
WITH victims AS (
    SELECT id FROM reservations
     WHERE id > $4::uuid AND `+prunable+`
     ORDER BY id
     LIMIT $3
       FOR UPDATE SKIP LOCKED),
gone AS (
    DELETE FROM reservations r USING victims v WHERE r.id = v.id
    RETURNING r.id, r.state, r.resolved_at, r.key_id, r.model, r.subjects, r.actual_cost, r.actual_tokens,
              r.overrun_cost, r.overrun_tokens, r.unreserved),
held AS (
    DELETE FROM reservation_holds h USING victims v WHERE h.reservation_id = v.id
    RETURNING h.reservation_id, h.budget_id, h.window_start, h.amount, h.charged),
archived AS (
    INSERT INTO window_archive AS a (budget_id, window_start, posted, excess, holds, bad)
    SELECT h.budget_id, h.window_start,
           sum(CASE WHEN g.state IN ('settled', 'expired') THEN h.charged ELSE 0 END),
           sum(CASE WHEN g.unreserved THEN h.charged ELSE greatest(h.charged - h.amount, 0) END),
           count(*),
           count(*) FILTER (WHERE (g.state = 'voided' AND h.charged <> 0) OR (g.state = 'expired' AND h.charged <> h.amount))
      FROM held h JOIN gone g ON g.id = h.reservation_id
     GROUP BY h.budget_id, h.window_start
     ORDER BY h.budget_id, h.window_start
    ON CONFLICT (budget_id, window_start) DO UPDATE
       SET posted = a.posted + excluded.posted, excess = a.excess + excluded.excess,
           holds = a.holds + excluded.holds, bad = a.bad + excluded.bad),
rolled AS (
    INSERT INTO spend_rollups AS u (day, key_id, model, subjects, requests, expired, overruns, cost, tokens,
                                    overrun_cost, overrun_tokens, unreserved, unreserved_cost, unreserved_tokens)
    SELECT (g.resolved_at AT TIME ZONE 'UTC')::date, coalesce(g.key_id, ''), g.model, g.subjects,
           count(*),
           count(*) FILTER (WHERE g.state = 'expired'),
           count(*) FILTER (WHERE g.overrun_cost > 0 OR g.overrun_tokens > 0),
           coalesce(sum(g.actual_cost), 0), coalesce(sum(g.actual_tokens), 0),
           sum(g.overrun_cost), sum(g.overrun_tokens),
           count(*) FILTER (WHERE g.unreserved),
           coalesce(sum(g.actual_cost) FILTER (WHERE g.unreserved), 0),
           coalesce(sum(g.actual_tokens) FILTER (WHERE g.unreserved), 0)
      FROM gone g
     WHERE g.state IN ('settled', 'expired')
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, key_id, model, subjects) DO UPDATE
       SET requests = u.requests + excluded.requests, expired = u.expired + excluded.expired,
           overruns = u.overruns + excluded.overruns, cost = u.cost + excluded.cost,
           tokens = u.tokens + excluded.tokens, overrun_cost = u.overrun_cost + excluded.overrun_cost,
           overrun_tokens = u.overrun_tokens + excluded.overrun_tokens, unreserved = u.unreserved + excluded.unreserved,
           unreserved_cost = u.unreserved_cost + excluded.unreserved_cost,
           unreserved_tokens = u.unreserved_tokens + excluded.unreserved_tokens)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM held),
       coalesce((SELECT id::text FROM victims ORDER BY id DESC LIMIT 1), '')`,
			before, bound, limit, after).Scan(&res.Reservations, &res.Holds, &res.LastID)
	})
	if err != nil {
		return PruneResult{}, fmt.Errorf("prune: %w", interpret(err))
	}
	return res, nil
}

// firstIDAt returns the smallest UUIDv7 of t's millisecond: every reservation created before
// t has a smaller id.
func firstIDAt(t time.Time) uuid.UUID {
	var id uuid.UUID
	ms := uint64(t.UnixMilli())
	for i := range 6 {
		id[i] = byte(ms >> (8 * (5 - i)))
	}
	return id
}

// Prunable counts the reservations Prune would delete for before (locked rows included).
func (s *Store) Prunable(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE `+prunable, before, firstIDAt(before)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count prunable: %w", interpret(err))
	}
	return n, nil
}

// PruneAlerts deletes up to limit alert events whose window ended before before, with their
// deliveries, unless a delivery is still pending (a receiver that is down still gets it).
// Alerts are raised for current windows only, so an event this old is never raised again.
func (s *Store) PruneAlerts(ctx context.Context, before time.Time, limit int) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `
WITH old AS (
    SELECT e.id FROM alert_events e
     WHERE e.window_end < $1
       AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.event_id = e.id AND d.state = 'pending')
     ORDER BY e.id
     LIMIT $2
       FOR UPDATE SKIP LOCKED),
deliveries AS (
    DELETE FROM alert_deliveries d USING old WHERE d.event_id = old.id),
events AS (
    DELETE FROM alert_events e USING old WHERE e.id = old.id RETURNING 1)
SELECT count(*) FROM events`, before, limit).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("prune alerts: %w", interpret(err))
	}
	return n, nil
}
