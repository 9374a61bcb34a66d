package budget_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

// spendReport reads a spend report in every grouping.
func spendReport(t *testing.T, e *env, q budget.SpendQuery) map[string][]budget.SpendRow {
	t.Helper()
	out := map[string][]budget.SpendRow{}
	for _, g := range []string{budget.GroupByNone, budget.GroupBySubject, budget.GroupByModel, budget.GroupByKey, budget.GroupByDay} {
		q.GroupBy = g
		rows, err := e.svc.Spend(context.Background(), q)
		require.NoError(t, err)
		out[g] = rows
	}
	return out
}

func (e *env) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	require.NoError(t, e.schema.Pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// TestPrune_KeepsSpendAndReconciliation: pruning removes resolved history and nothing a
// report or the reconciliation needs — spend reports (day-aligned) and verify answer exactly
// as before, the windows keep their counters, pending reservations stay, and a late or
// replayed settlement of a pruned reservation changes nothing.
func TestPrune_KeepsSpendAndReconciliation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	team := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1_000_000, Window: "lifetime", Hard: true})
	bob := e.budget(t, budget.Definition{Name: "bob", Subject: "user:bob", Limit: 1_000_000, Window: "month", Hard: true})
	f := newSpendFixture(t, e)
	e.requireClean(t)

	whole := budget.SpendQuery{From: f.day1, To: f.day2.AddDate(0, 0, 1)}
	before := spendReport(t, e, whole)
	require.Equal(t, int64(3550), before[budget.GroupByNone][0].Cost, "the fixture's spend")
	windows := func() map[int64][2]int64 {
		out := map[int64][2]int64{}
		rows, err := e.schema.Pool.Query(ctx, `SELECT budget_id, posted, pending FROM budget_windows`)
		require.NoError(t, err)
		for rows.Next() {
			var id, posted, pending int64
			require.NoError(t, rows.Scan(&id, &posted, &pending))
			out[id] = [2]int64{posted, pending}
		}
		require.NoError(t, rows.Err())
		return out
	}
	windowsBefore := windows()
	require.Contains(t, windowsBefore, team.ID)
	require.Contains(t, windowsBefore, bob.ID)
	ids := e.schema.Strings(t, `SELECT id::text FROM reservations WHERE state <> 'pending'`)
	require.Len(t, ids, 5, "r1-r4 and the unreserved r6")

	_, err := e.svc.Prune(ctx, time.Hour, 100)
	require.ErrorIs(t, err, budget.ErrInvalid, "a retention shorter than a day is refused")

	// Everything was resolved in March 2026; with the clock two days ahead the reservations
	// were also created (their UUIDv7 ids) before now - 24h. Batches of 2 take three rounds.
	e.clock.Set(time.Now().Add(48 * time.Hour))
	st, err := e.svc.Prune(ctx, budget.MinRetention, 2)
	require.NoError(t, err)
	require.Equal(t, int64(5), st.Reservations)
	require.Equal(t, 3, st.Batches)
	require.Equal(t, int64(1), e.count(t, `SELECT count(*) FROM reservations`), "only the pending r5 is left")
	require.Equal(t, int64(1), e.count(t, `SELECT count(*) FROM reservations WHERE state = 'pending'`))
	require.Equal(t, e.count(t, `SELECT count(*) FROM reservation_holds`), e.count(t, `SELECT count(*) FROM reservation_holds h JOIN reservations r ON r.id = h.reservation_id AND r.state = 'pending'`))
	require.Positive(t, st.Holds)
	require.Equal(t, st.Holds, e.count(t, `SELECT sum(holds)::bigint FROM window_archive`))

	require.Equal(t, windowsBefore, windows(), "the counters are not touched")
	require.Equal(t, before, spendReport(t, e, whole), "spend reports answer as before")
	e.requireClean(t)

	// Pruned history keeps day resolution: a range starting mid-day no longer sees that day.
	rows2, err := e.svc.Spend(ctx, budget.SpendQuery{From: f.day1.Add(30 * time.Minute), To: f.day2})
	require.NoError(t, err)
	require.Empty(t, rows2)
	rows2, err = e.svc.Spend(ctx, budget.SpendQuery{From: f.day2, To: f.day2.AddDate(0, 0, 1), Subject: "user:bob"})
	require.NoError(t, err)
	require.Equal(t, []budget.SpendRow{{Cost: 2000, Tokens: 200, Requests: 1, Expired: 1}}, rows2)

	// Nothing left to prune; a replayed or late settlement of a pruned reservation is unknown.
	st, err = e.svc.Prune(ctx, budget.MinRetention, 2)
	require.NoError(t, err)
	require.Equal(t, budget.PruneStats{Batches: 1}, st)
	for _, id := range ids {
		res, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: id, Cost: 1, Tokens: 1, Cause: "usage"}})
		require.NoError(t, err)
		require.Equal(t, budget.OutcomeUnknown, res[0].Outcome, id)
	}
	require.Equal(t, windowsBefore, windows())
	e.requireClean(t)

	// A window damaged after pruning is still caught: the archive is part of the sum.
	_, err = e.schema.Pool.Exec(ctx, `UPDATE budget_windows SET posted = posted + 1 WHERE budget_id = $1`, team.ID)
	require.NoError(t, err)
	rep, err := e.svc.Verify(ctx)
	require.NoError(t, err)
	require.Len(t, rep.Mismatches, 1)
	require.Equal(t, team.ID, rep.Mismatches[0].BudgetID)
}

// TestPrune_ConcurrentWithTraffic: pruners (several at once, as on several replicas) run
// while many goroutines reserve, settle, replay settlements and void on one hard budget. No
// reservation is settled twice or lost, the limit holds, and at the end the ledger reconciles
// and the spend report equals what the workers were charged.
func TestPrune_ConcurrentWithTraffic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	// The service's clock runs two days ahead, so everything resolved during the test is
	// older than the minimum retention and prunable at once.
	e.clock.Set(time.Now().Add(48 * time.Hour))
	const limit = 400_000
	b := e.budget(t, budget.Definition{Name: "hot", Subject: "team:hot", Limit: limit, Window: "lifetime", Hard: true})

	const workers, perWorker = 8, 60
	var charged, admitted, denied atomic.Int64
	var wg sync.WaitGroup
	done := make(chan struct{})
	var pruned atomic.Int64
	var pruners sync.WaitGroup
	for range 3 {
		pruners.Add(1)
		go func() {
			defer pruners.Done()
			for {
				st, err := e.svc.Prune(ctx, budget.MinRetention, 7)
				if err != nil {
					t.Errorf("prune: %v", err)
					return
				}
				pruned.Add(st.Reservations)
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range perWorker {
				ds, err := e.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:hot"}, Cost: 1000, Tokens: 10,
					Target: budget.Target{Model: fmt.Sprintf("m%d", i%3), Path: "/v1/chat/completions"}}})
				if err != nil {
					t.Errorf("reserve: %v", err)
					return
				}
				if ds[0].Outcome != budget.Admitted {
					denied.Add(1)
					continue
				}
				admitted.Add(1)
				id := ds[0].ReservationID
				if rng.IntN(5) == 0 {
					if _, err := e.svc.Void(ctx, []string{id}, "no_upstream"); err != nil {
						t.Errorf("void: %v", err)
					}
					continue
				}
				cost := int64(1 + rng.IntN(1500)) // some overrun the 1000 hold
				res, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: id, Cost: cost, Tokens: 5, Cause: "usage"}})
				if err != nil || res[0].Outcome != budget.OutcomeSettled {
					t.Errorf("settle %s: %v %+v", id, err, res)
					continue
				}
				charged.Add(cost)
				// A replay, possibly after the reservation was pruned: it never charges again.
				res, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: id, Cost: cost + 7, Tokens: 5, Cause: "usage"}})
				if err != nil || (res[0].Outcome != budget.OutcomeDuplicate && res[0].Outcome != budget.OutcomeUnknown) {
					t.Errorf("replay %s: %v %+v", id, err, res)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	pruners.Wait()
	st, err := e.svc.Prune(ctx, budget.MinRetention, 1000)
	require.NoError(t, err)
	pruned.Add(st.Reservations)

	require.Equal(t, int64(workers*perWorker), admitted.Load()+denied.Load())
	require.Positive(t, admitted.Load())
	require.Equal(t, admitted.Load(), pruned.Load(), "every resolved reservation was pruned exactly once")
	require.Zero(t, e.count(t, `SELECT count(*) FROM reservations`))
	posted, pending := e.window(t, b.ID, time.Unix(0, 0).UTC())
	require.Equal(t, charged.Load(), posted, "each settlement charged once")
	require.Zero(t, pending)
	require.Equal(t, admitted.Load(), e.count(t, `SELECT sum(holds)::bigint FROM window_archive`))
	// Dozens of batches added to one rollup row per day, key, model and subject set.
	require.Equal(t, int64(0), e.count(t, `SELECT count(*) FILTER (WHERE n > 1) FROM (SELECT count(*) AS n FROM spend_rollups GROUP BY day, model) x`))
	require.LessOrEqual(t, e.count(t, `SELECT count(*) FROM spend_rollups`), 3*e.count(t, `SELECT count(DISTINCT day) FROM spend_rollups`))
	rows, err := e.svc.Spend(ctx, budget.SpendQuery{From: time.Now().AddDate(0, 0, -2), To: time.Now().AddDate(0, 0, 2)})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, charged.Load(), rows[0].Cost)
	e.requireClean(t)
}

// TestPrune_AlertEvents: alert events of windows that ended before the horizon are pruned once
// every delivery is done; one still pending, or of a current window, stays.
func TestPrune_AlertEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true, WarnAt: []int{50, 80}})
	now := time.Now().UTC()
	ev := func(kind string, threshold int, end time.Time) budget.AlertEvent {
		start := end.AddDate(0, -1, 0)
		return budget.AlertEvent{IdempotencyKey: budget.AlertKey(b.ID, start, kind, threshold), BudgetID: b.ID, Kind: kind,
			Threshold: threshold, WindowStart: start, WindowEnd: end, Payload: []byte(`{}`), CreatedAt: end.AddDate(0, 0, -3)}
	}
	old, current := now.AddDate(0, 0, -40), now.AddDate(0, 0, 20)
	delivered, pending := ev(budget.AlertThreshold, 50, old), ev(budget.AlertThreshold, 80, old)
	noWebhook, live := ev(budget.AlertProjected, 100, old), ev(budget.AlertThreshold, 50, current)
	_, err := e.svc.RecordAlerts(ctx, []budget.AlertEvent{delivered, pending}, []string{"hook"}, now)
	require.NoError(t, err)
	_, err = e.svc.RecordAlerts(ctx, []budget.AlertEvent{noWebhook, live}, nil, now)
	require.NoError(t, err)
	_, err = e.schema.Pool.Exec(ctx, `UPDATE alert_deliveries d SET state = 'delivered', delivered_at = now()
		FROM alert_events e WHERE e.id = d.event_id AND e.idempotency_key = $1`, delivered.IdempotencyKey)
	require.NoError(t, err)

	st, err := e.svc.Prune(ctx, budget.MinRetention, 100)
	require.NoError(t, err)
	require.Equal(t, int64(2), st.AlertEvents)
	require.Equal(t, []string{pending.IdempotencyKey, live.IdempotencyKey},
		e.schema.Strings(t, `SELECT idempotency_key FROM alert_events ORDER BY id`))
	require.Equal(t, int64(1), e.count(t, `SELECT count(*) FROM alert_deliveries`), "the pending delivery only")

	st, err = e.svc.Prune(ctx, budget.MinRetention, 100)
	require.NoError(t, err)
	require.Zero(t, st.AlertEvents)
}
