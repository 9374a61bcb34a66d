package budget_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

// A requests budget is a request-count limit on the money machinery: each admitted request
// holds 1, settles at 1 whatever its usage, is released when voided, and is charged 1 when it
// expires; a new window starts from zero.
func TestService_RequestsUnit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.clock.Set(time.Date(2026, 5, 20, 10, 7, 0, 0, time.UTC))
	rpm := e.budget(t, budget.Definition{Name: "rpm", Subject: "team:ml", Unit: "requests", Limit: 3, Window: "minute", Hard: true})
	usd := e.budget(t, budget.Definition{Name: "money", Subject: "team:ml", Limit: 1_000_000, Window: "month", Hard: true})

	// One batch of five: the batched reserve admits exactly the first three, in order.
	batch := make([]budget.ReserveRequest, 5)
	for i := range batch {
		batch[i] = req("team:ml")
		batch[i].Cost = 1000 // a request's cost does not change what it holds on the rpm budget
	}
	ds, err := e.svc.Reserve(ctx, batch)
	require.NoError(t, err)
	var ids []string
	for i, d := range ds {
		if i < 3 {
			require.Equal(t, budget.Admitted, d.Outcome, "request %d", i)
			ids = append(ids, d.ReservationID)
			for _, st := range d.Budgets {
				if st.Budget.ID == rpm.ID {
					require.Equal(t, int64(1), st.Amount, "a request holds 1 on a requests budget")
					require.Equal(t, int64(i+1), st.Used)
				} else {
					require.Equal(t, int64(1000), st.Amount, "and its cost on the money budget")
				}
			}
			continue
		}
		require.Equal(t, budget.Denied, d.Outcome, "request %d", i)
		require.Equal(t, rpm.ID, d.DeniedBy.Budget.ID, "the requests budget denies")
	}
	start := time.Date(2026, 5, 20, 10, 7, 0, 0, time.UTC)
	posted, pending := e.window(t, rpm.ID, start)
	require.Equal(t, [2]int64{0, 3}, [2]int64{posted, pending})

	// Settled with usage (cost and tokens far from 1): charged 1. Settled at the hold: 1.
	// Voided (never reached the upstream): released. Expired: charged 1.
	res, err := e.svc.Settle(ctx, []budget.Settlement{
		{ReservationID: ids[0], Cost: 700, Tokens: 4321, Cause: "usage"},
		{ReservationID: ids[1], Void: true, Cause: "no_upstream"},
	})
	require.NoError(t, err)
	require.Len(t, res, 2)
	posted, pending = e.window(t, rpm.ID, start)
	require.Equal(t, [2]int64{1, 1}, [2]int64{posted, pending})
	_, err = e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, ids[2])
	require.NoError(t, err)
	n, err := e.svc.Expire(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	posted, pending = e.window(t, rpm.ID, start)
	require.Equal(t, [2]int64{2, 0}, [2]int64{posted, pending}, "settled 1 + expired 1")
	posted, _ = e.window(t, usd.ID, e.reserveOne(t, req("team:ml")).Budgets[1].Window.Start)
	require.Equal(t, int64(700+1000), posted, "the money budget is charged the real cost and the expired hold")

	// The void made room for one more in this minute (the reservation above took it); then
	// the next minute starts from zero.
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)
	e.clock.Set(start.Add(time.Minute))
	for range 3 {
		require.Equal(t, budget.Admitted, e.reserveOne(t, req("team:ml")).Outcome)
	}
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)

	// Unreserved spend counts one request too.
	_, err = e.svc.RecordUnreserved(ctx, []budget.Unreserved{{IdempotencyKey: []byte("u1"), Subjects: []budget.Subject{"team:ml"},
		Target: budget.Target{Model: "gpt-4o"}, At: start.Add(time.Minute), Cost: 5, Tokens: 9}})
	require.NoError(t, err)
	posted, pending = e.window(t, rpm.ID, start.Add(time.Minute))
	require.Equal(t, [2]int64{1, 3}, [2]int64{posted, pending})

	// Status shows the window in requests.
	sts, err := e.svc.Status(ctx, "team:ml")
	require.NoError(t, err)
	var st budget.Status
	for _, s := range sts {
		if s.Budget.ID == rpm.ID {
			st = s
		}
	}
	require.Equal(t, budget.Requests, st.Budget.Unit)
	require.Equal(t, int64(4), st.Posted+st.Pending)
	require.Equal(t, int64(3), st.Limit)
	require.Equal(t, start.Add(2*time.Minute), st.Window.End)
	require.Equal(t, "4", st.Budget.Unit.Format(st.Posted+st.Pending))
	e.requireClean(t)
}

// Many callers through the batcher on a one-minute rolling requests budget: exactly the limit
// is admitted, and the ledger reconciles after settling, voiding and expiring them.
func TestService_RequestsUnitConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const limit, callers = 40, 160
	rpm := e.budget(t, budget.Definition{Name: "rpm", Subject: "user:alice", Unit: "requests", Limit: limit, Window: "1m", Hard: true})
	b := budget.NewBatcher(e.svc, budget.BatcherConfig{MaxBatch: 32})
	runCtx, stop := context.WithCancel(ctx)
	var runWG sync.WaitGroup
	runWG.Add(1)
	go func() { defer runWG.Done(); b.Run(runCtx) }()
	t.Cleanup(func() { stop(); runWG.Wait() })

	var admitted atomic.Int64
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := b.Reserve(ctx, req("user:alice"))
			if err != nil {
				t.Error(err)
				return
			}
			if d.Outcome == budget.Admitted {
				admitted.Add(1)
				mu.Lock()
				ids = append(ids, d.ReservationID)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int64(limit), admitted.Load(), "exactly the limit is admitted")
	sts, err := e.svc.Status(ctx, "user:alice")
	require.NoError(t, err)
	require.Len(t, sts, 1)
	require.Equal(t, rpm.ID, sts[0].Budget.ID)
	require.Equal(t, int64(limit), sts[0].Pending)

	var settle []budget.Settlement
	for i, id := range ids {
		switch i % 3 {
		case 0:
			settle = append(settle, budget.Settlement{ReservationID: id, Cost: int64(i), Tokens: int64(i * 7), Cause: "usage"})
		case 1:
			settle = append(settle, budget.Settlement{ReservationID: id, Void: true, Cause: "no_upstream"})
		}
	}
	_, err = e.svc.Settle(ctx, settle)
	require.NoError(t, err)
	_, err = e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE state = 'pending'`)
	require.NoError(t, err)
	_, err = e.svc.Expire(ctx, 1000)
	require.NoError(t, err)
	sts, err = e.svc.Status(ctx, "user:alice")
	require.NoError(t, err)
	voided := int64((limit + 1) / 3) // indices 1, 4, 7, ...
	require.Equal(t, int64(limit)-voided, sts[0].Posted, "every settled and expired request counts 1, voided ones 0")
	require.Zero(t, sts[0].Pending)
	e.requireClean(t)
}
