package budget_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
)

// TestService_ConcurrentNoOverspend is the ledger's bank test: 64 goroutines on two "replicas"
// reserve in batches against overlapping budgets (key + user + team, one hot team budget) while
// others settle, void and expire at random. A sampler reads every hard window throughout and
// fails on any posted + pending above its limit; afterwards the ledger must reconcile exactly.
// Settlements never exceed the hold here, so no overrun can legitimately push a window over.
func TestService_ConcurrentNoOverspend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()

	team := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 12_000, Window: "month", Hard: true})
	hard := map[int64]int64{team.ID: team.Limit}
	for u := range 4 {
		b := e.budget(t, budget.Definition{Name: "user", Subject: fmt.Sprintf("user:u%d", u), Limit: 5_000, Window: "day", Hard: true})
		hard[b.ID] = b.Limit
	}
	e.budget(t, budget.Definition{Name: "all", Subject: "global", Limit: 1, Window: "day", Hard: false})
	var keys []budget.Key
	for k := range 8 {
		key, _, err := e.svc.CreateKey(ctx, "test", budget.KeySpec{Name: fmt.Sprint("k", k), Subjects: []string{fmt.Sprintf("user:u%d", k%4), "team:ml", "global"}})
		require.NoError(t, err)
		b := e.budget(t, budget.Definition{Name: "key", Subject: string(budget.KeySubject(key.ID)), Limit: 2_500, Window: "week", Hard: true})
		hard[b.ID] = b.Limit
		keys = append(keys, key)
	}

	st := store.New(e.schema.Pool)
	replicas := []*budget.Service{budget.New(st, st, budget.Config{}), budget.New(st, st, budget.Config{})}

	var (
		stop             atomic.Bool
		admitted, denied atomic.Int64
		pendingMu        sync.Mutex
		pending          []string
		samples          atomic.Int64
	)
	violation := make(chan string, 1)

	// The sampler: a Jepsen-style reader asserting invariant 1 on every observation.
	var samplerWG sync.WaitGroup
	samplerWG.Add(1)
	go func() {
		defer samplerWG.Done()
		for !stop.Load() {
			rows, err := e.schema.Pool.Query(ctx, `SELECT budget_id, posted + pending FROM budget_windows`)
			if err != nil {
				t.Errorf("sampler: %v", err)
				return
			}
			for rows.Next() {
				var id, used int64
				if err := rows.Scan(&id, &used); err != nil {
					t.Errorf("sampler: %v", err)
				}
				if lim, ok := hard[id]; ok && used > lim {
					select {
					case violation <- fmt.Sprintf("budget %d holds %d > limit %d", id, used, lim):
					default:
					}
				}
			}
			rows.Close()
			samples.Add(1)
		}
	}()

	const workers, rounds = 64, 25
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			svc := replicas[w%2]
			for range rounds {
				batch := make([]budget.ReserveRequest, 1+rng.IntN(4))
				for i := range batch {
					k := keys[rng.IntN(len(keys))]
					batch[i] = budget.ReserveRequest{KeyID: k.ID, Subjects: k.AllSubjects(), Cost: 1 + rng.Int64N(60), Tokens: 10}
				}
				ds, err := svc.Reserve(ctx, batch)
				if err != nil {
					t.Errorf("reserve: %v", err)
					return
				}
				var settle []budget.Settlement
				for i, d := range ds {
					for _, b := range d.Budgets {
						if lim, ok := hard[b.Budget.ID]; ok && d.Outcome == budget.Admitted && b.Used > lim {
							t.Errorf("admitted with used %d > limit %d on budget %d", b.Used, lim, b.Budget.ID)
						}
					}
					if d.Outcome != budget.Admitted {
						denied.Add(1)
						continue
					}
					admitted.Add(1)
					switch rng.IntN(4) {
					case 0: // settle at or below the hold
						settle = append(settle, budget.Settlement{ReservationID: d.ReservationID, Cost: rng.Int64N(batch[i].Cost + 1), Tokens: 5, Cause: "usage"})
					case 1:
						settle = append(settle, budget.Settlement{ReservationID: d.ReservationID, Void: true, Cause: "no_upstream"})
					case 2: // settle twice: the duplicate must change nothing
						s := budget.Settlement{ReservationID: d.ReservationID, Cost: batch[i].Cost, Tokens: 5}
						settle = append(settle, s, s)
					default: // leave pending: the expirer may charge it, or a late settle may follow
						pendingMu.Lock()
						pending = append(pending, d.ReservationID)
						pendingMu.Unlock()
					}
				}
				if len(settle) > 0 {
					if _, err := svc.Settle(ctx, settle); err != nil {
						t.Errorf("settle: %v", err)
						return
					}
				}
			}
		}()
	}
	// The expirer: forces deadlines into the past and sweeps, concurrently with everything.
	var expWG sync.WaitGroup
	expWG.Add(1)
	go func() {
		defer expWG.Done()
		rng := rand.New(rand.NewPCG(7, 7))
		for !stop.Load() {
			pendingMu.Lock()
			var ids []string
			for len(pending) > 0 && len(ids) < 8 {
				i := rng.IntN(len(pending))
				ids = append(ids, pending[i])
				pending = append(pending[:i], pending[i+1:]...)
			}
			pendingMu.Unlock()
			if len(ids) > 0 {
				if _, err := e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = ANY ($1::uuid[])`, ids); err != nil {
					t.Errorf("expirer: %v", err)
					return
				}
			}
			if _, err := replicas[0].Expire(ctx, 50); err != nil {
				t.Errorf("expire: %v", err)
				return
			}
			// Late settlement of some expired ones: a refund path racing the rest.
			if len(ids) > 1 {
				if _, err := replicas[1].Settle(ctx, []budget.Settlement{{ReservationID: ids[0], Cost: 1, Tokens: 1, Cause: "usage"}}); err != nil {
					t.Errorf("late settle: %v", err)
					return
				}
			}
		}
	}()

	wg.Wait()
	stop.Store(true)
	samplerWG.Wait()
	expWG.Wait()
	select {
	case v := <-violation:
		t.Fatalf("invariant 1 violated: %s", v)
	default:
	}
	require.Positive(t, admitted.Load())
	require.Positive(t, denied.Load(), "the limits must bite for this test to mean anything")
	require.Positive(t, samples.Load())
	t.Logf("admitted %d, denied %d, sampler observations %d", admitted.Load(), denied.Load(), samples.Load())

	// Drain: expire everything left, then the ledger must reconcile exactly.
	_, err := e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE state = 'pending'`)
	require.NoError(t, err)
	for {
		n, err := e.svc.Expire(ctx, 1000)
		require.NoError(t, err)
		if n == 0 {
			break
		}
	}
	e.requireClean(t)
	var open int
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE state = 'pending'`).Scan(&open))
	require.Zero(t, open)
	var pendingSum int64
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT coalesce(sum(pending), 0) FROM budget_windows`).Scan(&pendingSum))
	require.Zero(t, pendingSum, "nothing stays held once every reservation is resolved")

	// Exactness at the edge: fill the hot team budget's remaining room with unit requests;
	// exactly that many are admitted, not one more.
	var used int64
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT coalesce(sum(posted + pending), 0) FROM budget_windows WHERE budget_id = $1`, team.ID).Scan(&used))
	room := team.Limit - used
	require.GreaterOrEqual(t, room, int64(0))
	fill := budget.ReserveRequest{Subjects: []budget.Subject{"team:ml"}, Cost: 1}
	var wg2 sync.WaitGroup
	var got atomic.Int64
	for w := range 32 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			batch := make([]budget.ReserveRequest, int(room)/16+2)
			for i := range batch {
				batch[i] = fill
			}
			ds, err := replicas[w%2].Reserve(ctx, batch)
			if err != nil {
				t.Errorf("fill: %v", err)
				return
			}
			for _, d := range ds {
				if d.Outcome == budget.Admitted {
					got.Add(1)
				}
			}
		}()
	}
	wg2.Wait()
	require.Equal(t, room, got.Load(), "exactly the remaining room is admitted")
	e.requireClean(t)
}
