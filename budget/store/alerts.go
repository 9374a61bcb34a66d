package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// AlertCandidateIDs returns, in id order, the live budgets that can raise an alert (they have
// warning thresholds or are hard) and whose windows hold spend that may count at now: a
// window row that has not ended, or for rolling budgets one that ended less than the rolling
// length ago. Budgets without spend cannot cross a threshold and are not read at all.
func (s *Store) AlertCandidateIDs(ctx context.Context, now time.Time) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `
SELECT b.id FROM budgets b
 WHERE b.deleted_at IS NULL
   AND (b.hard OR cardinality(b.warn_at) > 0)
   AND b.id IN (
       SELECT w.budget_id FROM budget_windows w
        WHERE w.window_end > $1 AND w.posted + w.pending > 0
       UNION
       SELECT w.budget_id FROM budgets r JOIN budget_windows w ON w.budget_id = r.id
        WHERE r.rolling_seconds IS NOT NULL AND r.deleted_at IS NULL
          AND w.window_end > $1 - r.rolling_seconds * interval '1 second'
          AND w.posted + w.pending > 0)
 ORDER BY b.id`, now)
	if err != nil {
		return nil, fmt.Errorf("alert candidates: %w", interpret(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("alert candidates: %w", interpret(err))
	}
	return ids, nil
}

// BudgetsByID returns the live budgets among ids, in id order.
func (s *Store) BudgetsByID(ctx context.Context, ids []int64) ([]BudgetRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+budgetCols+` FROM budgets WHERE id = ANY ($1) AND deleted_at IS NULL ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("budgets by id: %w", interpret(err))
	}
	out, err := collectBudgets(rows)
	if err != nil {
		return nil, fmt.Errorf("budgets by id: %w", interpret(err))
	}
	return out, nil
}

// AlertEventRow is one alert event of the outbox.
type AlertEventRow struct {
	ID             int64
	IdempotencyKey string
	BudgetID       int64  // 0 for a missing_usage event (NULL in the table)
	Kind           string // threshold | projected | missing_usage
	Threshold      int
	WindowStart    time.Time
	WindowEnd      time.Time
	Suppressed     bool
	Payload        []byte // JSON
	CreatedAt      time.Time
}

// InsertAlertEvents inserts the events whose idempotency key is new, and for each of them that
// is not suppressed one pending delivery per webhook, first due at firstAttempt — all in one
// statement. It returns the events it inserted (with their ids); events that existed already
// are skipped, so concurrent evaluators create each event exactly once.
func (s *Store) InsertAlertEvents(ctx context.Context, events []AlertEventRow, webhooks []string, firstAttempt time.Time) ([]AlertEventRow, error) {
	if len(events) == 0 {
		return nil, nil
	}
	n := len(events)
	keys, kinds, payloads := make([]string, n), make([]string, n), make([]string, n)
	budgets := make([]int64, n)
	thresholds := make([]int32, n)
	starts, ends, created := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	suppressed := make([]bool, n)
	byKey := make(map[string]AlertEventRow, n)
	for i, e := range events {
		keys[i], kinds[i], payloads[i] = e.IdempotencyKey, e.Kind, string(e.Payload)
		budgets[i], thresholds[i] = e.BudgetID, int32(e.Threshold)
		starts[i], ends[i], created[i], suppressed[i] = e.WindowStart, e.WindowEnd, e.CreatedAt, e.Suppressed
		byKey[e.IdempotencyKey] = e
	}
	// Keys are inserted in a fixed order so that two evaluators inserting overlapping sets
	// wait for each other instead of deadlocking on the unique index.
	rows, err := s.pool.Query(ctx, `
WITH ins AS (
    INSERT INTO alert_events (idempotency_key, budget_id, kind, threshold, window_start, window_end, suppressed, payload, created_at)
    SELECT t.k, NULLIF(t.b, 0), t.kind, t.th, t.ws, t.we, t.sup, t.p::jsonb, t.c
      FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::timestamptz[], $6::timestamptz[],
                  $7::boolean[], $8::text[], $9::timestamptz[]) AS t(k, b, kind, th, ws, we, sup, p, c)
     ORDER BY t.k
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key, suppressed),
dl AS (
    INSERT INTO alert_deliveries (event_id, webhook, next_attempt_at)
    SELECT ins.id, w.hook, $11 FROM ins CROSS JOIN unnest($10::text[]) AS w(hook)
     WHERE NOT ins.suppressed)
SELECT id, idempotency_key FROM ins ORDER BY id`,
		keys, budgets, kinds, thresholds, starts, ends, suppressed, payloads, created, nonNil(webhooks), firstAttempt)
	if err != nil {
		return nil, fmt.Errorf("insert alert events: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AlertEventRow, error) {
		var id int64
		var key string
		if err := r.Scan(&id, &key); err != nil {
			return AlertEventRow{}, err
		}
		e := byKey[key]
		e.ID = id
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("insert alert events: %w", interpret(err))
	}
	return out, nil
}

// AlertDeliveryRow is a claimed delivery with what it delivers.
type AlertDeliveryRow struct {
	EventID        int64
	Webhook        string
	Attempt        int // this attempt's number, from 1
	IdempotencyKey string
	Kind           string
	Payload        []byte
}

// ClaimAlertDeliveries takes up to limit pending deliveries to the given webhooks that are due
// at now, counts an attempt on each and leases them until leaseUntil (their next_attempt_at),
// so that no other dispatcher takes them meanwhile; a dispatcher that dies mid-delivery leaves
// them to be retried when the lease ends. Rows another dispatcher is claiming are skipped.
func (s *Store) ClaimAlertDeliveries(ctx context.Context, webhooks []string, now, leaseUntil time.Time, limit int) ([]AlertDeliveryRow, error) {
	rows, err := s.pool.Query(ctx, `
WITH c AS (
    SELECT d.event_id, d.webhook FROM alert_deliveries d
     WHERE d.state = 'pending' AND d.next_attempt_at <= $2 AND d.webhook = ANY ($1)
     ORDER BY d.next_attempt_at, d.event_id
     LIMIT $4
       FOR UPDATE SKIP LOCKED)
UPDATE alert_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $3
  FROM c, alert_events e
 WHERE d.event_id = c.event_id AND d.webhook = c.webhook AND e.id = d.event_id
RETURNING d.event_id, d.webhook, d.attempts, e.idempotency_key, e.kind, e.payload`, nonNil(webhooks), now, leaseUntil, limit)
	if err != nil {
		return nil, fmt.Errorf("claim alert deliveries: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AlertDeliveryRow, error) {
		var d AlertDeliveryRow
		err := r.Scan(&d.EventID, &d.Webhook, &d.Attempt, &d.IdempotencyKey, &d.Kind, &d.Payload)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim alert deliveries: %w", interpret(err))
	}
	return out, nil
}

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed"
)

// FinishAlertDelivery records the outcome of one claimed attempt: delivered (at is the
// delivery time), pending again (at is the next attempt) or failed for good. A retry or a
// failure only applies while the row still carries this attempt (a newer claim wins); a
// delivery always applies to a pending row. It reports whether the row changed.
func (s *Store) FinishAlertDelivery(ctx context.Context, eventID int64, webhook string, attempt int, state string, at time.Time, lastError string) (bool, error) {
	switch state {
	case DeliveryPending, DeliveryDelivered, DeliveryFailed:
	default:
		return false, fmt.Errorf("finish alert delivery: unknown state %q", state)
	}
	tag, err := s.pool.Exec(ctx, `
UPDATE alert_deliveries SET
       state = $4,
       delivered_at = CASE WHEN $4 = 'delivered' THEN $5 ELSE delivered_at END,
       next_attempt_at = CASE WHEN $4 = 'pending' THEN $5 ELSE next_attempt_at END,
       last_error = nullif($6, '')
 WHERE event_id = $1 AND webhook = $2 AND state = 'pending' AND ($4 = 'delivered' OR attempts = $3)`,
		eventID, webhook, attempt, state, at, lastError)
	if err != nil {
		return false, fmt.Errorf("finish alert delivery %d/%s: %w", eventID, webhook, interpret(err))
	}
	return tag.RowsAffected() == 1, nil
}

// AlertDeliveryState is one delivery as stored.
type AlertDeliveryState struct {
	Webhook       string
	State         string
	Attempts      int
	NextAttemptAt time.Time
	DeliveredAt   *time.Time
	LastError     *string
}

// AlertEventWithDeliveries is an event and its deliveries.
type AlertEventWithDeliveries struct {
	AlertEventRow
	Deliveries []AlertDeliveryState
}

// AlertEvents lists events newest first: of one budget (0: all), with id below before (0: from
// the newest), at most limit, each with its deliveries.
func (s *Store) AlertEvents(ctx context.Context, budgetID, before int64, limit int) ([]AlertEventWithDeliveries, error) {
	rows, err := s.pool.Query(ctx, `
SELECT e.id, e.idempotency_key, coalesce(e.budget_id, 0), e.kind, e.threshold, e.window_start, e.window_end, e.suppressed,
       e.payload, e.created_at,
       coalesce(jsonb_agg(jsonb_build_object('webhook', d.webhook, 'state', d.state, 'attempts', d.attempts,
                'next_attempt_at', d.next_attempt_at, 'delivered_at', d.delivered_at, 'last_error', d.last_error)
                ORDER BY d.webhook) FILTER (WHERE d.event_id IS NOT NULL), '[]')
  FROM alert_events e LEFT JOIN alert_deliveries d ON d.event_id = e.id
 WHERE ($1 = 0 OR e.budget_id = $1) AND ($2 = 0 OR e.id < $2)
 GROUP BY e.id
 ORDER BY e.id DESC
 LIMIT $3`, budgetID, before, limit)
	if err != nil {
		return nil, fmt.Errorf("alert events: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AlertEventWithDeliveries, error) {
		var e AlertEventWithDeliveries
		var ds []struct {
			Webhook       string     `json:"webhook"`
			State         string     `json:"state"`
			Attempts      int        `json:"attempts"`
			NextAttemptAt time.Time  `json:"next_attempt_at"`
			DeliveredAt   *time.Time `json:"delivered_at"`
			LastError     *string    `json:"last_error"`
		}
		err := r.Scan(&e.ID, &e.IdempotencyKey, &e.BudgetID, &e.Kind, &e.Threshold, &e.WindowStart, &e.WindowEnd,
			&e.Suppressed, &e.Payload, &e.CreatedAt, &ds)
		for _, d := range ds {
			e.Deliveries = append(e.Deliveries, AlertDeliveryState(d))
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("alert events: %w", interpret(err))
	}
	return out, nil
}

// UsageSnapshot is what the gauges export: open holds and the most utilised budgets.
type UsageSnapshot struct {
	PendingCount  int64
	PendingCost   int64 // micro-USD held by pending reservations
	PendingTokens int64 // tokens held by pending reservations
	Budgets       []BudgetUsage
}

// BudgetUsage is one budget's current window, as the gauges see it.
type BudgetUsage struct {
	ID      int64
	Name    string
	Subject string
	Unit    string
	Limit   int64 // base limit plus the grants in force at now
	Used    int64 // posted + pending
}

// zeroTimeOffset is the number of seconds from Go's zero time (year 1) to the Unix epoch:
// rolling buckets start at multiples of the bucket size counted from Go's zero time
// (time.Time.Truncate), and the SQL below must pick exactly the same buckets.
const zeroTimeOffset = 62135596800

// Usage returns, in one round trip, the open holds and the top budgets by utilisation of
// their current window at now (only budgets with spend in it; ties by id). Calendar and
// lifetime windows are the row containing now that started at or after the last reset;
// rolling windows are the buckets from the window's roll start (see budget.WindowSpec.At).
// Grants count when in force on the database clock, as in admission.
func (s *Store) Usage(ctx context.Context, now time.Time, top int) (UsageSnapshot, error) {
	var snap UsageSnapshot
	batch := &pgx.Batch{}
	batch.Queue(`SELECT count(*), coalesce(sum(hold_cost), 0)::bigint, coalesce(sum(hold_tokens), 0)::bigint
		FROM reservations WHERE state = 'pending'`).QueryRow(func(r pgx.Row) error {
		return r.Scan(&snap.PendingCount, &snap.PendingCost, &snap.PendingTokens)
	})
	batch.Queue(topUsageSQL(nil), append([]any{now, top}, scopeArgs(nil)...)...).Query(func(rows pgx.Rows) error {
		var err error
		snap.Budgets, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (BudgetUsage, error) {
			var u BudgetUsage
			err := r.Scan(&u.ID, &u.Name, &u.Subject, &u.Unit, &u.Limit, &u.Used)
			return u, err
		})
		return err
	})
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return UsageSnapshot{}, fmt.Errorf("usage snapshot: %w", interpret(err))
	}
	return snap, nil
}

// topUsageSQL is the query of the budgets most utilised at $1 (a limit of $2), restricted to
// a manager's scope in $3 and $4 (see coveredSubject; NULLs for every budget).
func topUsageSQL(scope *ScopeFilter) string {
	return `
WITH rb AS (
    SELECT b.id, b.rolling_seconds, CASE WHEN b.reset_at <= $1 THEN b.reset_at ELSE '-infinity' END AS reset_at,
           ceil(b.rolling_seconds / 24.0)::bigint AS bucket
      FROM budgets b WHERE b.deleted_at IS NULL AND b.rolling_seconds IS NOT NULL),
rs AS (
    SELECT rb.*, (floor((extract(epoch FROM $1::timestamptz) + ` + fmt.Sprint(zeroTimeOffset) + `) / rb.bucket) * rb.bucket
                  - ` + fmt.Sprint(zeroTimeOffset) + ` - ceil(rb.rolling_seconds::numeric / rb.bucket) * rb.bucket) AS roll_from_epoch
      FROM rb),
cur AS (
    SELECT w.budget_id, w.posted + w.pending AS used
      FROM budget_windows w JOIN budgets b ON b.id = w.budget_id
     WHERE w.window_end > $1 AND w.window_start <= $1
       AND b.deleted_at IS NULL AND b.rolling_seconds IS NULL
       AND w.window_start >= CASE WHEN b.reset_at <= $1 THEN b.reset_at ELSE '-infinity' END
    UNION ALL
    SELECT w.budget_id, w.posted + w.pending
      FROM rs JOIN budget_windows w ON w.budget_id = rs.id
     WHERE w.window_start <= $1
       AND w.window_start >= greatest(timestamptz 'epoch' + rs.roll_from_epoch::float8 * interval '1 second', rs.reset_at)),
used AS (
    SELECT budget_id, sum(used)::bigint AS used FROM cur GROUP BY budget_id HAVING sum(used) > 0),
lim AS (
    SELECT b.id, b.name, b.subject, b.unit, u.used, el.effective_limit AS lim
      FROM used u JOIN budgets b ON b.id = u.budget_id
     CROSS JOIN LATERAL purser_effective_limit(p_budget_id => b.id, p_limit => b.limit_amount,
                                               p_from => now(), p_until => now()) AS el
     WHERE ` + coveredSubject("b.subject", scope, 3) + `)
SELECT id, name, subject, unit, lim, used FROM lim
 ORDER BY used::numeric / nullif(lim, 0) DESC NULLS FIRST, id
 LIMIT $2`
}

// TopBudgets returns the top budgets by utilisation of their current window at now, as
// Usage does, only those a manager administers when scope is set.
func (s *Store) TopBudgets(ctx context.Context, now time.Time, top int, scope *ScopeFilter) ([]BudgetUsage, error) {
	rows, err := s.pool.Query(ctx, topUsageSQL(scope), append([]any{now, top}, scopeArgs(scope)...)...)
	if err != nil {
		return nil, fmt.Errorf("top budgets: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BudgetUsage, error) {
		var u BudgetUsage
		err := r.Scan(&u.ID, &u.Name, &u.Subject, &u.Unit, &u.Limit, &u.Used)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("top budgets: %w", interpret(err))
	}
	return out, nil
}
