package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// WatchBudget makes every later change that adds room to the budget's windows notify
// purser_room (migrations/010), for ttl on the database clock. It returns how long until the
// next of the budget's grants starts (a grant starting later adds room without a change to
// notify), or a negative duration when none is scheduled.
func (s *Store) WatchBudget(ctx context.Context, budgetID int64, ttl time.Duration) (time.Duration, error) {
	var nextGrantMs *float64
	err := s.pool.QueryRow(ctx, `WITH w AS (
		INSERT INTO budget_storm_watch AS w (budget_id, until) VALUES ($1, now() + $2 * interval '1 millisecond')
		ON CONFLICT (budget_id) DO UPDATE SET until = greatest(w.until, excluded.until)
		RETURNING 1)
	SELECT (SELECT extract(epoch FROM min(g.starts_at) - now()) * 1000 FROM budget_grants g
	         WHERE g.budget_id = $1 AND g.starts_at > now())::float8 FROM w`,
		budgetID, ttl.Milliseconds()).Scan(&nextGrantMs)
	if err != nil {
		return 0, fmt.Errorf("watch budget %d: %w", budgetID, interpret(err))
	}
	if nextGrantMs == nil {
		return -1, nil
	}
	return time.Duration(*nextGrantMs * float64(time.Millisecond)), nil
}

// PendingByIdempotencyKeys returns the ids of pending reservations holding these idempotency
// keys.
func (s *Store) PendingByIdempotencyKeys(ctx context.Context, keys [][]byte) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id::text FROM reservations WHERE idempotency_key = ANY ($1::bytea[]) AND state = 'pending'`, keys)
	if err != nil {
		return nil, fmt.Errorf("reservations by idempotency key: %w", interpret(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reservations by idempotency key: %w", interpret(err))
	}
	return ids, nil
}
