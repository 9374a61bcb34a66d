package budget_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
)

// replica is one purser replica of a storm test: a Service listening for changes, and its
// batcher.
type replica struct {
	svc *budget.Service
	b   *budget.Batcher
}

func startReplica(t *testing.T, e *env, now func() time.Time) replica {
	t.Helper()
	st := store.New(e.schema.Pool)
	svc := budget.New(st, st, budget.Config{Now: now})
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan struct{})
	go func() { svc.Listen(ctx, ready); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("the change listener was not ready within 30s")
	}
	return replica{svc: svc, b: startBatcher(t, svc, budget.BatcherConfig{})}
}

// untilStormDenied reserves on r, one request at a time, until one is denied from memory
// (each try waits for its answer); admitted requests fail the test.
func untilStormDenied(t *testing.T, r replica, rq budget.ReserveRequest) {
	t.Helper()
	before := r.svc.StormDenials()
	deadline := time.Now().Add(30 * time.Second)
	for r.svc.StormDenials() == before {
		require.False(t, time.Now().After(deadline), "no request was denied from memory within 30s")
		d, err := r.b.Reserve(context.Background(), rq)
		require.NoError(t, err)
		require.Equal(t, budget.Denied, d.Outcome, "the budget is exhausted: every request is denied")
	}
}

// reconcile asserts the ledger reconciles and the window holds exactly want, within its limit.
func reconcile(t *testing.T, e *env, budgetID, limit, want int64) {
	t.Helper()
	e.requireClean(t)
	var used, holds int64
	require.NoError(t, e.schema.Pool.QueryRow(context.Background(),
		`SELECT coalesce(sum(posted + pending), 0), (SELECT coalesce(sum(h.amount), 0) FROM reservation_holds h
		   JOIN reservations r ON r.id = h.reservation_id WHERE h.budget_id = $1 AND r.state = 'pending')
		   FROM budget_windows WHERE budget_id = $1`, budgetID).Scan(&used, &holds))
	require.LessOrEqual(t, used, limit, "zero overspend: the window holds at most its limit")
	require.Equal(t, want, used, "the window holds exactly the admitted requests")
	require.Equal(t, want, holds, "pending holds add up to the window's spend")
}

// A burst of 10×K concurrent reservations on a budget with room for K, on two replicas
// sharing the database, admits exactly K and denies the rest with a decision (no error);
// once the budget is known exhausted, a second storm is answered from memory on both
// replicas, and the ledger reconciles.
func TestStorm_BurstExactlyK(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const k, cost = 40, 10
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: k * cost, Window: "month", Hard: true})
	rs := []replica{startReplica(t, e, e.clock.Now), startReplica(t, e, e.clock.Now)}

	storm := func(n int) (admitted, denied, failed int64) {
		var wg sync.WaitGroup
		var a, d, f atomic.Int64
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := rs[i%2].b.Reserve(context.Background(), req("team:ml"))
				switch {
				case err != nil:
					f.Add(1)
				case out.Outcome == budget.Admitted:
					a.Add(1)
				default:
					if out.DeniedBy == nil || out.DeniedBy.Budget.ID != b.ID || out.DeniedBy.Remaining() >= cost {
						t.Errorf("a denial names the exhausted budget and less room than the request: %+v", out.DeniedBy)
					}
					d.Add(1)
				}
			}()
		}
		wg.Wait()
		return a.Load(), d.Load(), f.Load()
	}
	a, d, f := storm(10 * k)
	require.Equal(t, int64(k), a, "exactly K admitted")
	require.Equal(t, int64(9*k), d, "every other request denied")
	require.Zero(t, f, "no request failed")
	reconcile(t, e, b.ID, k*cost, k*cost)

	for _, r := range rs {
		untilStormDenied(t, r, req("team:ml"))
	}
	before := rs[0].svc.StormDenials() + rs[1].svc.StormDenials()
	a, d, f = storm(10 * k)
	require.Zero(t, a, "the budget stays exhausted")
	require.Equal(t, int64(10*k), d, "every request denied")
	require.Zero(t, f, "no request failed")
	require.Equal(t, int64(10*k), rs[0].svc.StormDenials()+rs[1].svc.StormDenials()-before,
		"the whole second storm is answered from memory (nothing added room)")
	reconcile(t, e, b.ID, k*cost, k*cost)
}

// Everything that adds room reaches the other replica's memory: while a storm runs on two
// replicas, holds are voided and settled below their amount one at a time by a third
// instance (as another replica's access log would), a grant is added, the limit is raised and
// the window rolls over; after each, the storm takes exactly the new room, in moments.
func TestStorm_InvalidatedAcrossReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const k, cost = 8, 10
	limit := int64(k * cost)
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: limit, Window: "day", Hard: true})
	rs := []replica{startReplica(t, e, e.clock.Now), startReplica(t, e, e.clock.Now)}
	settler := e.svc // no listener, no batcher: only the database links it to the replicas

	var (
		mu        sync.Mutex
		ids       []string // admitted reservations, in order
		admitted  atomic.Int64
		failed    atomic.Int64
		stop      atomic.Bool
		progress  = make(chan struct{}, 1)
		stormDone sync.WaitGroup
	)
	for w := range 16 {
		stormDone.Add(1)
		go func() {
			defer stormDone.Done()
			for !stop.Load() {
				d, err := rs[w%2].b.Reserve(ctx, req("team:ml"))
				if err != nil {
					failed.Add(1)
					continue
				}
				if d.Outcome == budget.Admitted {
					mu.Lock()
					ids = append(ids, d.ReservationID)
					mu.Unlock()
					admitted.Add(1)
					select {
					case progress <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	defer func() { stop.Store(true); stormDone.Wait() }()
	// waitAdmitted waits until the storm has taken n admissions in all.
	waitAdmitted := func(n int64, after string) time.Duration {
		t.Helper()
		start := time.Now()
		timeout := time.After(30 * time.Second)
		for admitted.Load() < n {
			select {
			case <-progress:
			case <-timeout:
				t.Fatalf("after %s the storm took %d admissions in 30s, want %d: the new room was not seen", after, admitted.Load(), n)
			}
		}
		return time.Since(start)
	}
	stormed := func() {
		t.Helper()
		for _, r := range rs {
			untilStormDenied(t, r, req("team:ml"))
		}
	}
	want := int64(k)
	waitAdmitted(want, "the start")
	stormed()

	// Voids, one at a time.
	for i := range 4 {
		mu.Lock()
		id := ids[i]
		mu.Unlock()
		_, err := settler.Void(ctx, []string{id}, "no_upstream")
		require.NoError(t, err)
		want++
		t.Logf("void %d: room taken %v after the void returned", i, waitAdmitted(want, "a void"))
		stormed()
	}
	// A settlement below the hold frees cost-1 per settle: two free room for one more.
	mu.Lock()
	two := []string{ids[4], ids[5]}
	mu.Unlock()
	for _, id := range two {
		_, err := settler.Settle(ctx, []budget.Settlement{{ReservationID: id, Cost: cost / 2, Tokens: 1, Cause: "usage"}})
		require.NoError(t, err)
	}
	want++
	waitAdmitted(want, "two settlements below their holds")
	stormed()

	_, err := settler.AddGrant(ctx, "alice", b.ID, 2*cost, time.Now().Add(72*time.Hour), "more") // spans the next window too
	require.NoError(t, err)
	want += 2
	waitAdmitted(want, "a grant")
	stormed()

	def := budget.Definition{Name: "team", Subject: "team:ml", Limit: limit + cost, Window: "day", Hard: true}
	_, err = settler.UpdateBudget(ctx, "alice", b.ID, def)
	require.NoError(t, err)
	want++
	waitAdmitted(want, "a limit raise")
	stormed()

	// A new window: a whole limit's room (plus the grant's).
	e.clock.Set(e.clock.Now().Add(24 * time.Hour))
	want += limit/cost + 1 + 2
	waitAdmitted(want, "a new window")
	stormed()

	stop.Store(true)
	stormDone.Wait()
	require.Zero(t, failed.Load(), "no reservation failed")
	require.Equal(t, want, admitted.Load(), "the storm took exactly the room that appeared")
	e.requireClean(t)
	var over int64
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM budget_windows w JOIN budgets b ON b.id = w.budget_id
		WHERE w.posted + w.pending > b.limit_amount + coalesce((SELECT sum(amount) FROM budget_grants g WHERE g.budget_id = b.id), 0)`).Scan(&over))
	require.Zero(t, over, "zero overspend in every window")
}

// A repeated Check (same idempotency key, an Envoy retry) of a request admitted before the
// budget was known exhausted is denied from memory like any other; the caller acts on that
// denial, so the first attempt's hold is released (voided tentatively, in the background)
// rather than left to expire charged in full — and the room it frees is admitted again.
func TestStorm_RepeatedCheckReleasesItsFirstHold(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const cost = 10
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 2 * cost, Window: "month", Hard: true})
	r := startReplica(t, e, e.clock.Now)
	key := func(start time.Time, id string) []byte {
		k := binary.BigEndian.AppendUint64(nil, uint64(start.UnixNano()))
		h := sha256.Sum256([]byte(id))
		return append(k, h[:]...)
	}
	withKey := func(start time.Time, id string) budget.ReserveRequest {
		rq := req("team:ml")
		rq.IdempotencyKey = key(start, id)
		return rq
	}
	t0 := e.clock.Now()
	first, err := r.b.Reserve(ctx, withKey(t0, "a"))
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, first.Outcome)
	second, err := r.b.Reserve(ctx, withKey(t0, "b"))
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, second.Outcome)
	untilStormDenied(t, r, req("team:ml"))

	// A request that started after the observation cannot be a repeat: denied, nothing to release.
	before := r.svc.StormDenials()
	d, err := r.b.Reserve(ctx, withKey(e.clock.Now().Add(2*time.Second), "c"))
	require.NoError(t, err)
	require.Equal(t, budget.Denied, d.Outcome)
	require.Equal(t, before+1, r.svc.StormDenials(), "denied from memory")

	again, err := r.b.Reserve(ctx, withKey(t0, "a"))
	require.NoError(t, err)
	require.Equal(t, budget.Denied, again.Outcome, "the repeat is denied from memory")
	require.Equal(t, before+2, r.svc.StormDenials())
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := e.svc.Reservation(ctx, first.ReservationID)
		require.NoError(t, err)
		if res.State == "voided" {
			require.NotNil(t, res.Cause)
			require.Equal(t, "storm_repeat", *res.Cause, "released as a repeat denied from memory")
			break
		}
		require.Equal(t, "pending", res.State)
		require.False(t, time.Now().After(deadline), "the first attempt's hold was not released within 30s")
		_, err = e.schema.Pool.Exec(ctx, `SELECT pg_sleep(0.01)`) // wait on the database, not a timer
		require.NoError(t, err)
	}
	res, err := e.svc.Reservation(ctx, second.ReservationID)
	require.NoError(t, err)
	require.Equal(t, "pending", res.State, "another request's hold is untouched")

	deadline = time.Now().Add(30 * time.Second)
	for {
		d, err := r.b.Reserve(ctx, req("team:ml"))
		require.NoError(t, err)
		if d.Outcome == budget.Admitted {
			break
		}
		require.False(t, time.Now().After(deadline), "the released room was not admitted within 30s")
	}
	reconcile(t, e, b.ID, 2*cost, 2*cost)
}

// Without a change listener nothing is remembered: the database answers every request.
func TestStorm_NothingRememberedWithoutListener(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 10, Window: "month", Hard: true})
	bt := startBatcher(t, e.svc, budget.BatcherConfig{})
	for range 20 {
		_, err := bt.Reserve(context.Background(), req("team:ml"))
		require.NoError(t, err)
	}
	require.Zero(t, e.svc.StormDenials(), "no denial from memory without the notifications that invalidate it")
}
