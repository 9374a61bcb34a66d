package e2e

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/proof"
)

// TestReplicasShareOneHardBudget runs three `purser serve` processes on one database and one
// nearly exhausted hard budget (room for exactly K requests of equal cost). Concurrent Checks
// spread over the replicas must admit exactly K; settling and voiding through the access-log
// sinks of different replicas (with replays sent to another replica) must leave a ledger that
// `purser verify` reconciles; the window's posted+pending must never exceed the limit; and
// the room the voids return must be admitted again, exactly.
func TestReplicasShareOneHardBudget(t *testing.T) {
	const (
		replicas = 3
		k        = 45 // room for exactly k requests
		burst    = 5 * k
	)
	schema := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)

	bin, err := bench.BuildPurser(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(schema.Pool)
	svc := budget.New(st, st, budget.Config{})
	keys := make([]string, 6)
	for i := range keys {
		_, secret, err := svc.CreateKey(ctx, "e2e", budget.KeySpec{Name: fmt.Sprintf("hot-%d", i), Subjects: []string{"team:hot"}})
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = secret
	}
	_, probeKey, err := svc.CreateKey(ctx, "e2e", budget.KeySpec{Name: "probe", Subjects: []string{"team:probe"}})
	if err != nil {
		t.Fatal(err)
	}

	// Three replicas. A long -check-timeout: this test is about admission, not deadlines, and
	// must not flake on a loaded machine (a Check that misses its deadline voids its hold).
	var procs []*bench.Purser
	var targets []*bench.Target
	var sinks []*bench.ALS
	for i := range replicas {
		p, err := bench.StartPurser(ctx, bin, bench.PurserOptions{DatabaseURL: schema.ConnString, ReadyTimeout: 60 * time.Second, Args: []string{
			"-hot-pool-size", "2", "-pool-size", "2", "-check-timeout", "30s", "-log-level", "warn", "-shutdown-timeout", "5s",
		}})
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		t.Cleanup(func() {
			if err := p.Stop(10 * time.Second); err != nil {
				t.Logf("replica %d: %v", i, err)
			}
			if t.Failed() {
				t.Logf("replica %d log:\n%s", i, p.Log())
			}
		})
		procs = append(procs, p)
		tg, err := bench.Dial(ctx, p.GRPCAddr, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tg.Close)
		targets = append(targets, tg)
		als, err := bench.DialALS(p.GRPCAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = als.Close() })
		sinks = append(sinks, als)
	}

	chat, err := bench.LoadCheck("openai_chat")
	if err != nil {
		t.Fatal(err)
	}
	// What one request holds, as purser prices it (a key whose team has no budget).
	resp, err := bench.CheckOnce(ctx, targets[0], chat, probeKey)
	if err != nil || resp.GetStatus().GetCode() != 0 {
		t.Fatalf("probe Check: %v %v", resp.GetStatus(), err)
	}
	cost, err := strconv.ParseInt(resp.GetDynamicMetadata().GetFields()["reserved_micros"].GetStringValue(), 10, 64)
	if err != nil || cost <= 0 {
		t.Fatalf("probe Check: reserved_micros in %v", resp.GetDynamicMetadata())
	}

	// A hard budget already nearly spent: room for exactly k requests, not k+1.
	spent := 1000 * cost
	limit := spent + int64(k)*cost + cost - 1
	hot, err := svc.CreateBudget(ctx, "e2e", budget.Definition{Name: "hot", Subject: "team:hot", Unit: "usd", Limit: limit, Window: "month", Hard: true})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:hot"}, Cost: spent}})
	if err != nil || ds[0].Outcome != budget.Admitted {
		t.Fatalf("pre-spend reserve: %v %v", ds, err)
	}
	if _, err := svc.Settle(ctx, []budget.Settlement{{ReservationID: ds[0].ReservationID, Cost: spent, Cause: "e2e"}}); err != nil {
		t.Fatal(err)
	}
	window, err := bench.MonthWindow(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	used := func(ctx context.Context) (int64, error) {
		var u int64
		err := schema.Pool.QueryRow(ctx, `SELECT posted + pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2`,
			hot.ID, window.Start).Scan(&u)
		return u, err
	}

	// Watch the window for the rest of the test.
	var maxSeen, samples int64
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for watchCtx.Err() == nil {
			if u, err := used(watchCtx); err == nil {
				maxSeen = max(maxSeen, u)
				samples++
			}
			select {
			case <-watchCtx.Done():
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	stopWatching := sync.OnceFunc(func() { stopWatch(); <-watched })
	t.Cleanup(stopWatching)

	// 1. The burst, spread over the three replicas.
	br := bench.Burst(ctx, targets, chat, keys, burst, 60*time.Second)
	t.Logf("burst of %d over %d replicas: admitted %d (per replica %v), denied %d, failed %d, in %s",
		burst, replicas, br.OK, br.PerTarget, br.Denied, br.Failed, br.Elapsed.Round(time.Millisecond))
	if br.Failed != 0 {
		t.Fatalf("%d Checks failed (first: %v)", br.Failed, br.FirstErr)
	}
	if br.OK != k || br.Denied != burst-k {
		t.Fatalf("admitted %d, denied %d; want exactly %d admitted and %d denied", br.OK, br.Denied, k, burst-k)
	}
	if len(br.Reservations) != k {
		t.Fatalf("%d admitted Checks carried a reservation id, want %d", len(br.Reservations), k)
	}
	if u, err := used(ctx); err != nil || u != spent+int64(k)*cost {
		t.Fatalf("window posted+pending = %d (%v), want %d", u, err, spent+int64(k)*cost)
	}

	// 2. Settle a third through replica 0, void a third through replica 1 (Envoy never sent
	// them upstream), settle the rest through replica 2; then replay the first third through
	// replica 2 and the voids through replica 0: replays must change nothing.
	tmpl, err := bench.LoadEntry("openai_chat_usage")
	if err == nil {
		// The replicas settle only entries their Check answers proved; these stand in for
		// Envoy's, so they carry the same proof (the replicas' shared signing keys).
		var ring *proof.Keyring
		if ring, err = bench.SigningKeys(ctx, schema.ConnString); err == nil {
			tmpl = tmpl.Signed(ring)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	// Real usage below the hold (20 prompt + 10 completion tokens), so settling releases room.
	tmpl, err = tmpl.WithUsage(map[string]any{"usage.prompt_tokens": 20, "usage.completion_tokens": 10, "model": "gpt-4o-mini"})
	if err != nil {
		t.Fatal(err)
	}
	ids := br.Reservations
	settleA, voidB, settleC := ids[:k/3], ids[k/3:2*k/3], ids[2*k/3:]
	send := func(sink *bench.ALS, ids []string, upstream bool) {
		t.Helper()
		start := time.Now().Add(-tmpl.Duration())
		err := sink.Stream(ctx, len(ids), func(i int) *alsdata.HTTPAccessLogEntry {
			return tmpl.Entry(ids[i], "e2e-"+ids[i], start, upstream)
		}, bench.StreamOptions{Streams: 2, PerMessage: 8})
		if err != nil {
			t.Fatal(err)
		}
	}
	send(sinks[0], settleA, true)
	send(sinks[1], voidB, false)
	send(sinks[2], settleC, true)
	waitStates(ctx, t, schema, map[string][]string{"settled": append(append([]string{}, settleA...), settleC...), "voided": voidB})
	posted := func() (int64, int64) {
		var p, pe int64
		if err := schema.Pool.QueryRow(ctx, `SELECT posted, pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2`,
			hot.ID, window.Start).Scan(&p, &pe); err != nil {
			t.Fatal(err)
		}
		return p, pe
	}
	p1, pe1 := posted()
	var actual int64
	if err := schema.Pool.QueryRow(ctx, `SELECT coalesce(sum(actual_cost), 0)::bigint FROM reservations WHERE id = ANY($1::uuid[])`, ids).Scan(&actual); err != nil {
		t.Fatal(err)
	}
	if p1 != spent+actual || pe1 != 0 {
		t.Fatalf("after settlement: posted %d pending %d, want posted %d (spent %d + actual %d) and pending 0", p1, pe1, spent+actual, spent, actual)
	}
	if actual <= 0 || actual >= int64(len(settleA)+len(settleC))*cost {
		t.Fatalf("actual cost of the settled reservations = %d: want above 0 and below their holds", actual)
	}
	send(sinks[2], settleA, true)
	send(sinks[0], voidB, false)
	if err := waitFlushed(ctx, procs); err != nil {
		t.Fatal(err)
	}
	if p2, pe2 := posted(); p2 != p1 || pe2 != pe1 {
		t.Fatalf("replayed entries changed the window: posted %d→%d, pending %d→%d", p1, p2, pe1, pe2)
	}

	// 3. What settling and voiding released is admitted again, exactly: room is now
	// limit - posted; fire three times as many Checks as fit.
	room := (limit - p1) / cost
	again := bench.Burst(ctx, targets, chat, keys, int(3*room), 60*time.Second)
	t.Logf("second burst of %d: admitted %d (per replica %v), denied %d, failed %d", 3*room, again.OK, again.PerTarget, again.Denied, again.Failed)
	if again.Failed != 0 || int64(again.OK) != room {
		t.Fatalf("second burst: admitted %d, failed %d (first: %v); want exactly %d admitted", again.OK, again.Failed, again.FirstErr, room)
	}

	stopWatching()
	if maxSeen > limit {
		t.Fatalf("the window held %d at some point, above its limit %d", maxSeen, limit)
	}
	t.Logf("window never above its limit: max posted+pending %d of %d over %d samples", maxSeen, limit, samples)

	// 4. The ledger reconciles.
	code, out, err := bench.Verify(ctx, bin, schema.ConnString)
	if err != nil || code != 0 {
		t.Fatalf("purser verify: exit %d (%v)\n%s", code, err, out)
	}
}

// waitStates polls until every listed reservation is in its state.
func waitStates(ctx context.Context, t *testing.T, schema *pgtest.Schema, want map[string][]string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok := true
		for state, ids := range want {
			var n int
			if err := schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE id = ANY($1::uuid[]) AND state = $2`, ids, state).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != len(ids) {
				ok = false
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d reservations %s after 60s", n, len(ids), state)
				}
			}
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitFlushed polls every replica's metrics until its sink has processed every entry it
// received (received = settled outcomes + everything it decided not to settle).
func waitFlushed(ctx context.Context, procs []*bench.Purser) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := true
		for _, p := range procs {
			m, err := p.Metrics(ctx)
			if err != nil {
				return err
			}
			received := m.Sum("purser_accesslog_entries_total", `outcome="received"`)
			settled := m.Sum("purser_accesslog_settlements_total")
			if settled < received {
				done = false
			}
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("access-log sinks did not finish within 60s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
