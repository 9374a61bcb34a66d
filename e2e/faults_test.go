package e2e_test

// Faults under stress (issue 15): the real purser binary on Postgres, driven over gRPC as
// Envoy's ext_authz filter drives it, with a row locked, more load than it can take, a
// database slower than the deadline, and a SIGKILL while a batch waits on a lock. Each ends
// with the money assertions: no hard budget over its limit, `purser verify` clean.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/bench"
)

// faultWorld is one fault scenario: a schema, a ledger to set it up with, one purser.
type faultWorld struct {
	t    *testing.T
	bin  string
	db   *pgtest.Schema
	svc  *budget.Service
	p    *purserProc
	tg   *bench.Target
	tmpl *bench.CheckTemplate
}

func newFaultWorld(t *testing.T, bin string, args ...string) *faultWorld {
	t.Helper()
	db := pgtest.New(t)
	s := store.New(db.Pool)
	w := &faultWorld{t: t, bin: bin, db: db, svc: budget.New(s, s, budget.Config{})}
	w.p = startPurser(t, bin, db.ConnString, append([]string{"-log-level", "info"}, args...)...)
	tg, err := bench.Dial(context.Background(), w.p.GRPCAddr, 4)
	require.NoError(t, err)
	t.Cleanup(tg.Close)
	w.tg = tg
	w.tmpl, err = bench.LoadCheck("openai_chat")
	require.NoError(t, err)
	return w
}

// tenant makes a hard monthly budget on team:<name> and a key of that team.
func (w *faultWorld) tenant(name string, limit int64) (budgetID int64, secret string) {
	w.t.Helper()
	ctx := context.Background()
	b, err := w.svc.CreateBudget(ctx, "e2e", budget.Definition{Name: name, Subject: "team:" + name, Limit: limit, Window: "month", Hard: true})
	require.NoError(w.t, err)
	_, secret, err = w.svc.CreateKey(ctx, "e2e", budget.KeySpec{Name: name, Subjects: []string{"team:" + name}})
	require.NoError(w.t, err)
	return b.ID, secret
}

// check sends one Check with a fresh x-request-id and stream id; timeout is the client's
// deadline (purser's own -check-timeout is shorter in these tests).
func (w *faultWorld) check(secret string, i int, timeout time.Duration) (*authv3.CheckResponse, string, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	rid := "fault-" + hex.EncodeToString(b[:])
	ch := w.tmpl.New()
	ch.SetCredential(w.tmpl.Credential(secret))
	ch.SetIDs(rid, strconv.Itoa(2_000_000_000+i))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := w.tg.Client(i).Check(ctx, ch.Req)
	return resp, rid, err
}

// warm sends Checks until one is admitted (a cold purser on a busy machine may miss its
// first deadline): the key is cached and its budget's window row exists.
func (w *faultWorld) warm(secret string) {
	w.t.Helper()
	eventually(w.t, 30*time.Second, "a warm-up Check is admitted", func() (bool, string) {
		resp, _, err := w.check(secret, 0, 10*time.Second)
		return err == nil && resp.GetStatus().GetCode() == 0, fmt.Sprintf("%v %v", resp.GetStatus(), err)
	})
}

// lockWindows locks every window row of a budget in a transaction the test ends.
func (w *faultWorld) lockWindows(budgetID int64) func() {
	w.t.Helper()
	ctx := context.Background()
	tx, err := w.db.Pool.Begin(ctx)
	require.NoError(w.t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM budget_windows WHERE budget_id = $1 FOR UPDATE`, budgetID)
	require.NoError(w.t, err)
	var once sync.Once
	release := func() { once.Do(func() { require.NoError(w.t, tx.Rollback(ctx)) }) }
	w.t.Cleanup(release)
	return release
}

// lockWaiters counts backends of the test database waiting on a lock.
func (w *faultWorld) lockWaiters() int {
	var n int
	require.NoError(w.t, w.db.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&n))
	return n
}

// reservationCount counts reservations of a budget's subject made by Checks.
func (w *faultWorld) reservationCount(subject, where string) int {
	var n int
	require.NoError(w.t, w.db.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM reservations WHERE NOT unreserved AND $1 = ANY(subjects) AND `+where, subject).Scan(&n))
	return n
}

// money asserts no hard budget is over its limit and `purser verify` is clean.
func (w *faultWorld) money() {
	w.t.Helper()
	ctx := context.Background()
	var over int
	require.NoError(w.t, w.db.Pool.QueryRow(ctx,
		`SELECT count(*) FROM budget_windows bw JOIN budgets b ON b.id = bw.budget_id WHERE b.hard AND bw.posted + bw.pending > b.limit_amount`).Scan(&over))
	require.Zero(w.t, over, "hard budget windows over their limit")
	rep, err := w.svc.Verify(ctx)
	require.NoError(w.t, err)
	require.True(w.t, rep.Clean(), "ledger reconciliation: %+v", rep)
	vctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	exit, out, err := bench.Verify(vctx, w.bin, w.db.ConnString)
	require.NoError(w.t, err)
	require.Zero(w.t, exit, "purser verify:\n%s", out)
}

func TestFaults(t *testing.T) {
	bin := buildPurser(t)
	t.Run("LockedRowDelaysOnlyItsTenant", func(t *testing.T) { faultLockedRow(t, bin) })
	t.Run("OverloadIsShed", func(t *testing.T) { faultOverload(t, bin) })
	t.Run("SlowDatabaseWritesNothing", func(t *testing.T) { faultSlowDatabase(t, bin) })
	t.Run("KillWhileWaitingOnLock", func(t *testing.T) { faultKillOnLock(t, bin) })
}

// One tenant's window row is locked by a long transaction; another tenant's Checks keep
// being admitted (≥ 99%) while the locked tenant keeps asking, and no hold of the locked
// tenant is written while its row is locked.
//
// The Check deadline here is 2 s, not Envoy's 200 ms: the test judges isolation (a request of
// another tenant must not wait behind the locked one's batches, which hold a lane until their
// deadline), and in `make test` under a CPU hog, with the race detector and other packages'
// tests on the same two cores, purser's process was seen stalled for over 300 ms, which failed
// 6 of 200 Checks at a 450 ms deadline whatever the batcher did. A batcher without isolation
// still fails them (they would wait behind a 2 s batch). The 200 ms deadline is measured on a
// quiet machine by `make bench` (noisy neighbour: 100.0% on 2026-12-07).
func faultLockedRow(t *testing.T, bin string) {
	w := newFaultWorld(t, bin, "-check-timeout", "2s")
	lockedID, lockedKey := w.tenant("locked", 1e12)
	_, freeKey := w.tenant("free", 1e12)
	for _, k := range []string{lockedKey, freeKey} { // window rows exist
		w.warm(k)
	}
	before := w.reservationCount("team:locked", "true")
	release := w.lockWindows(lockedID)

	stop := make(chan struct{})
	var noisy sync.WaitGroup
	var noisyOK atomic.Int64
	for c := range 4 {
		noisy.Add(1)
		go func() {
			defer noisy.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if resp, _, err := w.check(lockedKey, c*100_000+i, 5*time.Second); err == nil && resp.GetStatus().GetCode() == 0 {
					noisyOK.Add(1)
				}
			}
		}()
	}
	eventually(t, 20*time.Second, "a batch of the locked tenant waits on the lock", func() (bool, string) {
		n := w.lockWaiters()
		return n > 0, fmt.Sprintf("%d waiters", n)
	})

	const callers, each = 8, 25
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				resp, _, err := w.check(freeKey, 1_000_000+c*1000+i, 5*time.Second)
				if err == nil && resp.GetStatus().GetCode() == 0 {
					ok.Add(1)
					continue
				}
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%v %v", resp.GetStatus(), err))
			}
		}()
	}
	wg.Wait()
	close(stop)
	noisy.Wait()
	total := int64(callers * each)
	require.GreaterOrEqual(t, ok.Load()*100, total*99, "unrelated tenant: %d of %d admitted while another budget was locked (first failure: %v)", ok.Load(), total, firstErr.Load())
	require.Zero(t, noisyOK.Load(), "the locked tenant cannot be admitted while its row is locked")
	require.Equal(t, before, w.reservationCount("team:locked", "true"), "only the warm-up: every batch of the locked tenant rolled back at its deadline")

	release()
	eventually(t, 20*time.Second, "no backend waits on a lock", func() (bool, string) {
		n := w.lockWaiters()
		return n == 0, fmt.Sprintf("%d waiters", n)
	})
	require.Equal(t, before, w.reservationCount("team:locked", "true"), "no hold committed after its Check's deadline")
	resp, _, err := w.check(lockedKey, 3_000_000, 10*time.Second)
	require.NoError(t, err)
	require.Zero(t, resp.GetStatus().GetCode(), "the tenant is admitted again once its row is free: %v", resp.GetStatus())
	w.money()
}

// Far more Checks at once than purser can decide within the deadline: the excess is refused
// fast with 503 (a denied answer with Retry-After), what is admitted was delivered, and no
// hold is left that no caller received.
func faultOverload(t *testing.T, bin string) {
	w := newFaultWorld(t, bin, "-check-timeout", "150ms", "-hot-pool-size", "1")
	hotID, hotKey := w.tenant("hot", 1e15)
	w.warm(hotKey)
	// Every batch costs at least 30 ms in the database: capacity is bounded by batches.
	_, err := w.db.Pool.Exec(context.Background(), `
		CREATE FUNCTION e2e_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$;
		CREATE TRIGGER e2e_slow BEFORE INSERT ON reservations FOR EACH STATEMENT EXECUTE FUNCTION e2e_slow();`)
	require.NoError(t, err)

	// Many more callers than purser can answer within its deadline, each sending Checks back
	// to back (as Envoy's many downstream clients do).
	const callers, each = 400, 8
	type res struct {
		status int32
		id     string
		lat    time.Duration
		err    error
	}
	results := make([]res, callers*each)
	gate := make(chan struct{})
	var ready, wg sync.WaitGroup
	for c := range callers {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-gate
			for i := range each {
				t0 := time.Now()
				resp, _, err := w.check(hotKey, 10+c*each+i, 2*time.Second)
				r := res{lat: time.Since(t0), err: err}
				if err == nil {
					r.status = resp.GetStatus().GetCode()
					r.id = resp.GetDynamicMetadata().GetFields()["reservation_id"].GetStringValue()
				}
				results[c*each+i] = r
			}
		}()
	}
	ready.Wait()
	close(gate)
	wg.Wait()

	var ok, shed, other, failed int
	var shedLat []time.Duration
	delivered := map[string]bool{}
	for _, r := range results {
		switch {
		case r.err != nil:
			failed++
		case r.status == int32(code.Code_OK):
			ok++
			delivered[r.id] = true
		case r.status == int32(code.Code_UNAVAILABLE):
			shed++
			shedLat = append(shedLat, r.lat)
		default:
			other++
		}
	}
	if os.Getenv("FAULTS_DEBUG") != "" {
		t.Log(tail(w.p.current().Log(), 20000))
	}
	t.Logf("overload: %d admitted, %d shed (503), %d other denials, %d failed", ok, shed, other, failed)
	require.Positive(t, ok, "some Checks are admitted")
	// Whether this burst overloads purser depends on the machine: on a quiet one it may keep
	// up (every Check admitted in time). What must hold either way: no budget denial, shed
	// answers come fast from purser, and no hold is orphaned. (That a full queue or a hopeless
	// deadline is refused at once is budget's batcher tests.)
	require.Zero(t, other, "no budget denial: the budget has room")
	if shed > 0 {
		slices.Sort(shedLat)
		require.Less(t, shedLat[len(shedLat)/2], 2*time.Second, "refusals come from purser (median %v), not the client's deadline", shedLat[len(shedLat)/2])
	}

	// No orphan holds: every pending reservation was delivered to a caller (the others were
	// voided at once, caller_gone).
	eventually(t, 20*time.Second, "every pending hold was delivered", func() (bool, string) {
		rs := w.reservationCountIDs("team:hot", "state = 'pending'")
		var orphans int
		for _, id := range rs {
			if !delivered[id] {
				orphans++
			}
		}
		return orphans <= 1, fmt.Sprintf("%d pending holds no caller received (the warm-up's is one)", orphans)
	})
	_, pending := w.window(hotID)
	require.Equal(t, w.pendingHolds("team:hot"), pending, "window pending = sum of pending holds")
	w.money()
}

// reservationCountIDs lists the ids of a subject's reservations matching where.
func (w *faultWorld) reservationCountIDs(subject, where string) []string {
	rows, err := w.db.Pool.Query(context.Background(),
		`SELECT id::text FROM reservations WHERE NOT unreserved AND $1 = ANY(subjects) AND `+where, subject)
	require.NoError(w.t, err)
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		require.NoError(w.t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(w.t, rows.Err())
	return ids
}

func (w *faultWorld) pendingHolds(subject string) int64 {
	var n int64
	require.NoError(w.t, w.db.Pool.QueryRow(context.Background(),
		`SELECT coalesce(sum(hold_cost), 0)::bigint FROM reservations WHERE state = 'pending' AND $1 = ANY(subjects)`, subject).Scan(&n))
	return n
}

func (w *faultWorld) window(budgetID int64) (posted, pending int64) {
	require.NoError(w.t, w.db.Pool.QueryRow(context.Background(),
		`SELECT coalesce(sum(posted), 0)::bigint, coalesce(sum(pending), 0)::bigint FROM budget_windows WHERE budget_id = $1`, budgetID).Scan(&posted, &pending))
	return posted, pending
}

// Postgres slower than the deadline (every reservation insert sleeps past it): every Check
// fails, and no hold is written then voided: the batch gives up in the database and rolls
// back.
func faultSlowDatabase(t *testing.T, bin string) {
	w := newFaultWorld(t, bin, "-check-timeout", "300ms")
	_, key := w.tenant("slow", 1e12)
	w.warm(key)
	before := w.reservationCount("team:slow", "true")
	ctx := context.Background()
	_, err := w.db.Pool.Exec(ctx, `
		CREATE FUNCTION e2e_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$;
		CREATE TRIGGER e2e_slow BEFORE INSERT ON reservations FOR EACH STATEMENT EXECUTE FUNCTION e2e_slow();`)
	require.NoError(t, err)

	var wg sync.WaitGroup
	var admitted atomic.Int64
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				if resp, _, err := w.check(key, 10+c*10+i, 5*time.Second); err == nil && resp.GetStatus().GetCode() == 0 {
					admitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, admitted.Load(), "nothing can be admitted when every batch outlasts the deadline")
	eventually(t, 20*time.Second, "no statement of purser still runs", func() (bool, string) {
		var n int
		require.NoError(t, w.db.Pool.QueryRow(ctx,
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE '%purser_reserve%' AND pid <> pg_backend_pid()`).Scan(&n))
		return n == 0, fmt.Sprintf("%d reserve statements running", n)
	})
	require.Equal(t, before, w.reservationCount("team:slow", "true"), "only the warm-up: no hold written (then voided) while the database was too slow")
	_, err = w.db.Pool.Exec(ctx, `DROP TRIGGER e2e_slow ON reservations`)
	require.NoError(t, err)
	w.money()
}

// purser is SIGKILLed while a batch waits on a row lock: the orphaned backend gives up by
// itself at the Check's deadline (lock_timeout), so releasing the lock later commits nothing.
func faultKillOnLock(t *testing.T, bin string) {
	w := newFaultWorld(t, bin, "-check-timeout", "1s")
	id, key := w.tenant("killed", 1e12)
	w.warm(key)
	before := w.reservationCount("team:killed", "true")
	release := w.lockWindows(id)

	done := make(chan struct{})
	var rid string
	go func() {
		defer close(done)
		_, rid, _ = w.check(key, 1, 10*time.Second)
	}()
	eventually(t, 20*time.Second, "the batch waits on the lock", func() (bool, string) {
		n := w.lockWaiters()
		return n > 0, fmt.Sprintf("%d waiters", n)
	})
	w.p.kill()
	<-done
	// The orphaned backend stops waiting on its own while the lock is still held.
	eventually(t, 20*time.Second, "the orphaned backend gave up", func() (bool, string) {
		n := w.lockWaiters()
		return n == 0, fmt.Sprintf("%d waiters", n)
	})
	release()
	require.Empty(t, w.reservationCountIDs("team:killed", "request_id = '"+rid+"'"), "the killed purser's hold was never committed")
	require.Equal(t, before, w.reservationCount("team:killed", "true"), "nothing written by the killed purser")
	w.money()
}
