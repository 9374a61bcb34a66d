package budget_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
)

func startBatcher(t *testing.T, svc *budget.Service, cfg budget.BatcherConfig) *budget.Batcher {
	t.Helper()
	b := budget.NewBatcher(svc, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

func TestBatcher_IdleRequestsGoAlone(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	b := startBatcher(t, e.svc, budget.BatcherConfig{})
	for range 5 {
		d, err := b.Reserve(context.Background(), req("team:ml"))
		require.NoError(t, err)
		require.Equal(t, budget.Admitted, d.Outcome)
	}
	batches, reserved := b.Stats()
	require.Equal(t, int64(5), reserved)
	require.Equal(t, int64(5), batches, "sequential callers never wait for a batch to fill")
}

func TestBatcher_HotBudgetExact(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const limit, cost = 40_000, 10
	tb := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: limit, Window: "month", Hard: true})
	st := store.New(e.schema.Pool)
	// Two replicas, each with its own batcher, on one hot budget.
	bs := []*budget.Batcher{
		startBatcher(t, budget.New(st, st, budget.Config{}), budget.BatcherConfig{}),
		startBatcher(t, budget.New(st, st, budget.Config{}), budget.BatcherConfig{Lanes: 2}),
	}
	const callers, each = 256, 20 // 5,120 attempts for 4,000 places
	var wg sync.WaitGroup
	var admitted, denied atomic.Int64
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				r := req("team:ml", budget.Subject("user:u"+string(rune('a'+c%26))))
				r.Cost = cost
				d, err := bs[c%2].Reserve(ctx, r)
				if err != nil {
					t.Errorf("reserve: %v", err)
					return
				}
				switch d.Outcome {
				case budget.Admitted:
					admitted.Add(1)
					if d.Budgets[0].Used > limit {
						t.Errorf("admitted at %d > %d", d.Budgets[0].Used, limit)
					}
				case budget.Denied:
					denied.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int64(limit/cost), admitted.Load(), "exactly the limit is admitted")
	require.Equal(t, int64(callers*each-limit/cost), denied.Load())
	var batches, reserved int64
	for _, b := range bs {
		n, r := b.Stats()
		batches += n
		reserved += r
	}
	require.Equal(t, int64(callers*each), reserved)
	require.Less(t, batches, reserved/2, "concurrent callers share transactions")
	t.Logf("%d reservations in %d batches (%.1f per batch)", reserved, batches, float64(reserved)/float64(batches))
	posted, pending := e.window(t, tb.ID, tb.Window.At(e.clock.Now(), time.Time{}).Start)
	require.Equal(t, int64(limit), posted+pending)
	e.requireClean(t)
}

// waitBlocked waits until the number of backends waiting on a lock the transaction tx holds
// satisfies ok (other tests share the database: only tx's waiters count).
func waitBlocked(t *testing.T, e *env, tx pgx.Tx, ok func(int) bool, what string) {
	t.Helper()
	ctx := context.Background()
	var pid int
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	require.Eventually(t, func() bool {
		var got int
		err := e.schema.Pool.QueryRow(ctx,
			`SELECT count(*) FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid))`, pid).Scan(&got)
		return err == nil && ok(got)
	}, 10*time.Second, 5*time.Millisecond, what)
}

// waitLockWaiters waits until at least n backends wait on a lock tx holds.
func waitLockWaiters(t *testing.T, e *env, tx pgx.Tx, n int) {
	t.Helper()
	waitBlocked(t, e, tx, func(got int) bool { return got >= n }, fmt.Sprintf("want %d backends waiting on the locked rows", n))
}

// A caller that gives up while its batch is in flight must not leave a hold behind.
func TestBatcher_AbandonedReservationIsVoided(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	tb := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	b := startBatcher(t, e.svc, budget.BatcherConfig{})
	first, err := b.Reserve(ctx, req("team:ml")) // creates the window row
	require.NoError(t, err)
	start := first.Budgets[0].Window.Start

	// Hold the window's row lock so the next batch blocks inside the database.
	tx := e.lockWindows(t, tb.ID)

	gone, cancel := context.WithCancel(ctx) // no deadline: the batch waits for the lock
	r := req("team:ml")
	r.ID = "018f0000-0000-7000-8000-00000000abcd"
	errc := make(chan error, 1)
	go func() { _, err := b.Reserve(gone, r); errc <- err }()
	waitLockWaiters(t, e, tx, 1)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	require.NoError(t, tx.Rollback(ctx)) // the blocked batch now commits, then voids

	require.Eventually(t, func() bool {
		res, err := e.svc.Reservation(ctx, r.ID)
		return err == nil && res.State == "voided"
	}, 10*time.Second, 5*time.Millisecond, "the abandoned reservation is voided")
	res, err := e.svc.Reservation(ctx, r.ID)
	require.NoError(t, err)
	require.Equal(t, "caller_gone", *res.Cause)
	_, pending := e.window(t, tb.ID, start)
	require.Equal(t, int64(10), pending, "only the delivered reservation holds budget")
	e.requireClean(t)
}

// A caller that gave up with an idempotency key, then the same Check repeated (Envoy's
// retry_policy) after the release: the repeat gets a fresh reservation, never the voided one.
func TestBatcher_RetryAfterAbandonReservesAfresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	tb := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	b := startBatcher(t, e.svc, budget.BatcherConfig{})
	first, err := b.Reserve(ctx, req("team:ml"))
	require.NoError(t, err)
	start := first.Budgets[0].Window.Start

	tx := e.lockWindows(t, tb.ID)
	r := req("team:ml")
	r.ID = "018f0000-0000-7000-8000-00000000abce"
	r.IdempotencyKey = []byte("key|req-1|stream-1")
	gone, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := b.Reserve(gone, r); errc <- err }()
	waitLockWaiters(t, e, tx, 1)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	require.NoError(t, tx.Rollback(ctx))
	require.Eventually(t, func() bool {
		res, err := e.svc.Reservation(ctx, r.ID)
		return err == nil && res.State == "voided"
	}, 10*time.Second, 5*time.Millisecond, "the abandoned reservation is voided")

	r.ID = ""
	retry, err := b.Reserve(ctx, r)
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, retry.Outcome)
	got, err := e.svc.Reservation(ctx, retry.ReservationID)
	require.NoError(t, err)
	require.Equal(t, "pending", got.State, "the retry's request goes upstream on a live hold")
	_, pending := e.window(t, tb.ID, start)
	require.Equal(t, int64(20), pending)
	e.requireClean(t)
}

// A batch that cannot finish before its caller's deadline gives up in the database (its
// lock_timeout) and leaves nothing behind: no hold written, none to void.
func TestBatcher_DeadlineRollsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	tb := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	b := startBatcher(t, e.svc, budget.BatcherConfig{})
	first, err := b.Reserve(ctx, req("team:ml"))
	require.NoError(t, err)
	start := first.Budgets[0].Window.Start

	tx := e.lockWindows(t, tb.ID)
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r := req("team:ml")
	r.ID = "018f0000-0000-7000-8000-00000000abcf"
	errc := make(chan error, 1)
	go func() { _, err := b.Reserve(short, r); errc <- err }()
	waitLockWaiters(t, e, tx, 1)
	require.Error(t, <-errc, "the locked budget cannot be decided in time")
	// The row is still locked: only the batch's own lock_timeout can end its wait. (Releasing
	// the row as soon as the caller gave up would race a backend that started its statement
	// late, as a starved machine can make it: its lock_timeout runs from the statement's
	// start, so it may still be waiting, and would then commit; the caller-gone void is the
	// backstop for that, TestBatcher_AbandonedReservationIsVoided.)
	waitBlocked(t, e, tx, func(n int) bool { return n == 0 }, "the batch stops waiting in the database by itself (lock_timeout)")
	require.NoError(t, tx.Rollback(ctx))

	_, err = e.svc.Reservation(ctx, r.ID)
	require.ErrorIs(t, err, budget.ErrNotFound, "the timed-out batch rolled back: no hold was ever written")
	require.Zero(t, e.count(t, `SELECT count(*) FROM reservations WHERE state = 'voided'`), "nothing written then voided")
	_, pending := e.window(t, tb.ID, start)
	require.Equal(t, int64(10), pending)
	e.requireClean(t)
}

// A budget whose window row is locked delays only the requests that touch it: another
// tenant's requests keep being decided within their deadlines while it stays locked.
func TestBatcher_LockedBudgetDelaysOnlyItsRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	locked := e.budget(t, budget.Definition{Name: "a", Subject: "team:a", Limit: 1_000_000, Window: "month", Hard: true})
	e.budget(t, budget.Definition{Name: "b", Subject: "team:b", Limit: 1_000_000, Window: "month", Hard: true})
	b := startBatcher(t, e.svc, budget.BatcherConfig{})
	for _, s := range []budget.Subject{"team:a", "team:b"} {
		_, err := b.Reserve(ctx, req(s)) // window rows exist
		require.NoError(t, err)
	}
	tx := e.lockWindows(t, locked.ID)
	defer func() { _ = tx.Rollback(ctx) }()

	// The locked tenant keeps asking (each attempt waits for its own deadline) while the other
	// tenant's callers run: their deadlines are far shorter than the lock.
	stop := make(chan struct{})
	var noisy sync.WaitGroup
	for range 4 {
		noisy.Add(1)
		go func() {
			defer noisy.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				_, _ = b.Reserve(c, req("team:a"))
				cancel()
			}
		}()
	}
	waitLockWaiters(t, e, tx, 1) // a batch of team:a waits behind the lock
	var failed atomic.Int64
	var wg sync.WaitGroup
	const callers, each = 8, 25
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				// 5 s: a batch behind the locked one (no isolation) waits until the lock
				// ends, after these callers; a stalled machine (a batch taking hundreds of
				// milliseconds, so 8 batches ahead predict over 2 s) is not isolation.
				c, cancel := context.WithTimeout(ctx, 5*time.Second)
				d, err := b.Reserve(c, req("team:b"))
				cancel()
				if err != nil || d.Outcome != budget.Admitted {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	noisy.Wait()
	require.Zero(t, failed.Load(), "the unrelated tenant's %d requests all succeed while team:a is locked", callers*each)
	require.NoError(t, tx.Rollback(ctx))
	e.requireClean(t)
}

func TestBatcher_StoppedRefuses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	b := budget.NewBatcher(e.svc, budget.BatcherConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	cancel()
	<-done
	_, err := b.Reserve(context.Background(), req("team:ml"))
	require.ErrorIs(t, err, budget.ErrStopped)
	require.ErrorIs(t, err, budget.ErrUnavailable)
}

// Above capacity a request is refused at once (ErrOverloaded), not queued to its deadline:
// here the queue is full while a batch waits on a locked row.
func TestBatcher_FullQueueSheds(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	tb := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	b := startBatcher(t, e.svc, budget.BatcherConfig{QueueSize: 1})
	_, err := b.Reserve(ctx, req("team:ml")) // the window row exists, the definition is cached
	require.NoError(t, err)
	tx := e.lockWindows(t, tb.ID)

	waiting, cancel := context.WithCancel(ctx)
	errs := make(chan error, 2)
	go func() { _, err := b.Reserve(waiting, req("team:ml")); errs <- err }() // in flight, blocked
	waitLockWaiters(t, e, tx, 1)
	go func() { _, err := b.Reserve(waiting, req("team:ml")); errs <- err }() // queued behind it
	require.Eventually(t, func() bool {
		// A probe that finds room waits its second out (abandoned, it still fills the queue).
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := b.Reserve(c, req("team:ml"))
		return errors.Is(err, budget.ErrOverloaded)
	}, 20*time.Second, 5*time.Millisecond, "with the queue full a request is refused at once")
	start := time.Now()
	_, err = b.Reserve(ctx, req("team:ml"))
	require.ErrorIs(t, err, budget.ErrOverloaded)
	require.False(t, errors.Is(err, budget.ErrUnavailable), "over capacity is not ledger unavailable")
	require.Less(t, time.Since(start), time.Second, "refused without waiting")
	cancel()
	require.NoError(t, tx.Rollback(ctx))
	for range 2 {
		err := <-errs
		require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, budget.ErrOverloaded), "the waiting callers gave up or were refused: %v", err)
	}
	e.requireClean(t)
}

// lockWindows holds the row locks of a budget's windows in a transaction of its own (as a long
// admin transaction would), until the caller rolls it back.
func (e *env) lockWindows(t *testing.T, budgetID int64) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := e.schema.Pool.Begin(ctx)
	require.NoError(t, err, "begin the locking transaction")
	_, err = tx.Exec(ctx, `SELECT 1 FROM budget_windows WHERE budget_id = $1 FOR UPDATE`, budgetID)
	require.NoError(t, err, "lock the budget's window rows")
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

// tupleLockWaiters counts the backends waiting for a row of this test's budget_windows (each
// waiter holds or waits for the row's tuple lock; other tests' schemas are other relations).
func tupleLockWaiters(t *testing.T, e *env) int {
	t.Helper()
	var n int
	require.NoError(t, e.schema.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_locks WHERE locktype = 'tuple' AND relation = 'budget_windows'::regclass`).Scan(&n))
	return n
}

// A budget stuck on a lock holds one lane and nothing else (issue 15): its queued requests
// neither run in several lanes nor share a batch with another tenant's, not even when the
// definition cache has just forgotten both tenants (their conflict sets are looked up before
// they are batched), and they do not count in the other tenant's expected wait. Every request
// of the unrelated tenant is admitted within its deadline.
func TestBatcher_LockedBudgetHoldsOneLane(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	locked := e.budget(t, budget.Definition{Name: "a", Subject: "team:a", Limit: 1_000_000, Window: "month", Hard: true})
	e.budget(t, budget.Definition{Name: "b", Subject: "team:b", Limit: 1_000_000, Window: "month", Hard: true})
	// A small batch cap: were the locked tenant's queue counted in the other's expected wait,
	// it would be many batches long.
	b := startBatcher(t, e.svc, budget.BatcherConfig{MaxBatch: 8})
	for _, s := range []budget.Subject{"team:a", "team:b"} {
		_, err := b.Reserve(ctx, req(s)) // window rows exist
		require.NoError(t, err)
	}
	tx := e.lockWindows(t, locked.ID)
	e.svc.Invalidate() // as when the definition cache's entries expire

	const noisy = 100
	long, cancel := context.WithTimeout(ctx, time.Minute) // they wait for the lock to end
	defer cancel()
	noisyErrs := make(chan error, noisy)
	for range noisy {
		go func() {
			d, err := b.Reserve(long, req("team:a"))
			if err == nil && d.Outcome != budget.Admitted {
				err = errors.New("denied")
			}
			noisyErrs <- err
		}()
	}
	waitLockWaiters(t, e, tx, 1) // a batch of team:a waits behind the lock
	require.Eventually(t, func() bool { return b.Queued() >= noisy-8 }, 10*time.Second, time.Millisecond,
		"the locked tenant's other requests queue behind its batch in flight (at most MaxBatch of them in it)")

	const callers, each = 64, 10
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				// 5 s: a batch behind the locked one (no isolation) waits until the lock
				// ends, after these callers; a stalled machine (a batch taking hundreds of
				// milliseconds, so 8 batches ahead predict over 2 s) is not isolation.
				c, cancel := context.WithTimeout(ctx, 5*time.Second)
				d, err := b.Reserve(c, req("team:b"))
				cancel()
				if err == nil && d.Outcome != budget.Admitted {
					err = errors.New("denied")
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, failed.Load(), "every one of the unrelated tenant's %d requests is admitted while team:a is locked (first error: %v)",
		callers*each, firstErr.Load())
	require.Equal(t, 1, tupleLockWaiters(t, e), "the locked budget's requests wait in one batch, in one lane")

	require.NoError(t, tx.Rollback(ctx))
	for range noisy {
		require.NoError(t, <-noisyErrs, "the locked tenant's requests are admitted once the lock ends")
	}
	e.requireClean(t)
}
