package main

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/purser-dev/purser/internal/bench"
)

func startCPUProfile(f *os.File) error { return pprof.StartCPUProfile(f) }
func stopCPUProfile()                  { pprof.StopCPUProfile() }

// Settlement: reservations are seeded directly in purser's ledger (the same rows Reserve
// writes, on the Zipf budgets), then Envoy-shaped end-of-stream entries with usage are
// streamed to purser's StreamAccessLogs. Two runs: a paced one (Envoy-like steady traffic)
// for the lag from sending an entry to its settlement, and a saturating one for throughput,
// with flow control so purser's sink queue (65,536 entries; it drops beyond) never overflows.

const (
	settleHoldCost   = 1000 // micro-USD held per seeded reservation
	settleHoldTokens = 2000
	settleWindow     = 40_000 // entries sent but not yet settled, at most (sink queue: 65,536)
)

type settleResult struct {
	lagN, n         int
	streams, perMsg int
	lagRate         int
	lag             []time.Duration // sorted
	elapsed         time.Duration   // first send to all settled (throughput run)
	settledDB       int             // reservations of the throughput run settled in the ledger
	dropped         float64
	batches         int64 // purser_settle calls in the throughput run
	cpu             bench.CPUUse
}

func (s *settleResult) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.n) / s.elapsed.Seconds()
}

func (b *benchRun) runSettle(ctx context.Context) error {
	tmpl, err := bench.LoadEntry("openai_chat_usage")
	if err != nil {
		return err
	}
	// purser serve settles only entries its Check answers proved: sign them as it would.
	ring, err := bench.SigningKeys(ctx, b.dbC.URL)
	if err != nil {
		return err
	}
	tmpl = tmpl.Signed(ring)
	lagN := int(float64(b.cfg.settleLagRate) * b.cfg.settleLagFor.Seconds())
	n := b.cfg.settleN
	b.logf("settlement: seeding %d reservations", lagN+n)
	ids, err := b.seedReservations(ctx, lagN+n)
	if err != nil {
		return err
	}
	als, err := bench.DialALS(b.purser.GRPCAddr)
	if err != nil {
		return err
	}
	defer als.Close()
	r := &settleResult{lagN: lagN, n: n, streams: 4, perMsg: 16, lagRate: b.cfg.settleLagRate}
	entry := func(off int) func(i int) *alsdata.HTTPAccessLogEntry {
		return func(i int) *alsdata.HTTPAccessLogEntry {
			// The entry ends now: the sink's own lag metric measures from start+duration.
			return tmpl.Entry(ids[off+i], "settle-"+strconv.Itoa(off+i), time.Now().Add(-tmpl.Duration()), true)
		}
	}
	m0, err := b.purser.Metrics(ctx)
	if err != nil {
		return err
	}
	base := m0.Sum("purser_settlements_total")
	dropped0 := m0.Sum("purser_accesslog_entries_total", `outcome="dropped"`)

	// 1. Paced: lagRate entries/s, latency from send to settlement (resolved_at).
	b.logf("settlement lag: %d entries at %d/s over %d streams", lagN, b.cfg.settleLagRate, r.streams)
	sent := make([]time.Time, lagN+n)
	t0 := time.Now()
	err = als.Stream(ctx, lagN, entry(0), bench.StreamOptions{Streams: r.streams, PerMessage: r.perMsg,
		Before: func(ctx context.Context, first, _ int) error {
			due := t0.Add(time.Duration(float64(first) / float64(b.cfg.settleLagRate) * float64(time.Second)))
			sleep(ctx, time.Until(due))
			return ctx.Err()
		},
		Sent: func(first, count int, at time.Time) {
			for i := first; i < first+count; i++ {
				sent[i] = at
			}
		}})
	if err != nil {
		return err
	}
	if _, err := b.waitSettled(ctx, base+float64(lagN), nil); err != nil {
		return err
	}
	resolved, err := b.resolvedAt(ctx, ids[:lagN])
	if err != nil {
		return err
	}
	for i, id := range ids[:lagN] {
		if at, ok := resolved[id]; ok && !sent[i].IsZero() {
			r.lag = append(r.lag, at.Sub(sent[i]))
		}
	}
	slices.Sort(r.lag)
	sleep(ctx, b.cfg.cooldown)

	// 2. Saturating, with flow control.
	b.logf("settlement throughput: %d entries over %d streams, at most %d in flight", n, r.streams, settleWindow)
	m1, err := b.purser.Metrics(ctx)
	if err != nil {
		return err
	}
	base = m1.Sum("purser_settlements_total")
	calls0, _ := bench.FunctionCalls(ctx, b.qC, "purser_settle")
	var settled atomic.Int64 // settled in this run, as purser's metrics report it
	mctx, stopMon := context.WithCancel(ctx)
	defer stopMon()
	doneC := make(chan time.Time, 1)
	go func() {
		t, _ := b.waitSettled(mctx, base+float64(n), func(v float64) { settled.Store(int64(v - base)) })
		doneC <- t
	}()
	pids, _ := bench.BackendPIDs(ctx, b.qC, b.dbC.Name)
	cpu0 := bench.TakeCPU(b.purser.Pid(), pids)
	start := time.Now()
	err = als.Stream(ctx, n, entry(lagN), bench.StreamOptions{Streams: r.streams, PerMessage: r.perMsg,
		Before: func(ctx context.Context, first, _ int) error {
			for int64(first)-settled.Load() > settleWindow {
				sleep(ctx, 2*time.Millisecond)
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
			return nil
		}})
	if err != nil {
		return err
	}
	end := <-doneC
	if end.IsZero() {
		return fmt.Errorf("entries not all settled (metric shows %d of %d)", settled.Load(), n)
	}
	r.cpu = bench.TakeCPU(b.purser.Pid(), pids).Sub(cpu0)
	r.elapsed = end.Sub(start)
	sleep(ctx, b.cfg.cooldown)
	calls1, _ := bench.FunctionCalls(ctx, b.qC, "purser_settle")
	r.batches = calls1 - calls0
	if err := b.qC.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE id = ANY($1::uuid[]) AND state = 'settled'`, ids[lagN:]).Scan(&r.settledDB); err != nil {
		return err
	}
	m2, err := b.purser.Metrics(ctx)
	if err != nil {
		return err
	}
	r.dropped = m2.Sum("purser_accesslog_entries_total", `outcome="dropped"`) - dropped0
	b.logf("  %.0f entries/s; lag p50 %s p99 %s; %d/%d settled in the ledger; dropped %.0f", r.rate(),
		ms(bench.Percentile(r.lag, 50)), ms(bench.Percentile(r.lag, 99)), r.settledDB, n, r.dropped)
	b.settle = r
	return nil
}

// waitSettled polls purser's settlement counter every 25ms until it reaches target; it
// returns when it saw it (zero time if ctx ended or 120s passed).
func (b *benchRun) waitSettled(ctx context.Context, target float64, progress func(float64)) (time.Time, error) {
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m, err := b.purser.Metrics(ctx)
		if err == nil {
			v := m.Sum("purser_settlements_total")
			if progress != nil {
				progress(v)
			}
			if v >= target {
				return time.Now(), nil
			}
		}
		sleep(ctx, 25*time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("settlement counter did not reach %.0f", target)
}

// seedReservations writes n pending reservations with one hold each on the Zipf budgets'
// current windows, exactly as purser_reserve would (reservation, hold, window pending).
func (b *benchRun) seedReservations(ctx context.Context, n int) ([]string, error) {
	w, err := bench.MonthWindow(time.Now())
	if err != nil {
		return nil, err
	}
	rng := mrand.New(mrand.NewPCG(42, 42))
	ids := make([]string, n)
	for i := range ids {
		u, err := uuid.NewV7()
		if err != nil {
			return nil, err
		}
		ids[i] = u.String()
	}
	const chunk = 20_000
	for from := 0; from < n; from += chunk {
		to := min(from+chunk, n)
		rids := make([]string, 0, to-from)
		budgets := make([]int64, 0, to-from)
		for i := from; i < to; i++ {
			rids = append(rids, "settle-"+strconv.Itoa(i))
			budgets = append(budgets, b.zipfIDs[b.zipf.Pick(rng)])
		}
		err := pgx.BeginFunc(ctx, b.qC, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO reservations (id, expires_at, provider, api_flavor, model, request_id, hold_cost, hold_tokens)
				SELECT t.id, now() + interval '1 hour', 'openai', 'chat', 'gpt-4o-mini', t.rid, $3, $4
				  FROM unnest($1::uuid[], $2::text[]) AS t(id, rid)`, ids[from:to], rids, settleHoldCost, settleHoldTokens); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO reservation_holds (reservation_id, budget_id, window_start, tokens_unit, amount)
				SELECT t.id, t.b, $3, false, $4 FROM unnest($1::uuid[], $2::bigint[]) AS t(id, b)`, ids[from:to], budgets, w.Start, settleHoldCost); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE budget_windows w SET pending = w.pending + s.total
				  FROM (SELECT b, count(*) * $3::bigint AS total FROM unnest($1::bigint[]) AS b GROUP BY b) AS s
				 WHERE w.budget_id = s.b AND w.window_start = $2`, budgets, w.Start, settleHoldCost)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("seed reservations: %w", err)
		}
	}
	return ids, nil
}

// resolvedAt returns resolved_at of the given reservations (database clock: the start of the
// settling transaction).
func (b *benchRun) resolvedAt(ctx context.Context, ids []string) (map[string]time.Time, error) {
	rows, err := b.qC.Query(ctx, `SELECT id::text, resolved_at FROM reservations WHERE id = ANY($1::uuid[]) AND resolved_at IS NOT NULL`, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]time.Time, len(ids))
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			return nil, err
		}
		out[id] = at
	}
	return out, rows.Err()
}

// Overspend: a hard budget with room for exactly K requests of the same cost, then 10×K
// concurrent Checks. Exactly K must be admitted, the window must never exceed its limit, and
// `purser verify` must reconcile the whole ledger (every scenario's reservations included).

type burstResult struct {
	label          string
	checkTimeout   string
	k, n           int
	cost, limit    int64
	br             bench.BurstResult
	final, maxSeen int64
	samples        int
	pendingRes     int // pending reservations holding on the burst budget
	verifyCode     int
	verifyOut      string
}

// exact reports whether the burst admitted exactly K with no failure.
func (r *burstResult) exact() bool { return r.br.OK == r.k && r.br.Failed == 0 }

func (r *burstResult) overspend() int64 { return max(r.maxSeen-r.limit, 0) }

// runBurst fires the burst twice: at the purser under test (default -check-timeout 150ms,
// the deadline Envoy's 200ms timeout needs) and at a second purser process on the same
// database with -check-timeout 10s, so that admission exactness is judged apart from
// deadline misses (a Check that misses its deadline is answered with an error and its hold,
// if any, is voided). `purser verify` then reconciles the whole ledger.
func (b *benchRun) runBurst(ctx context.Context) error {
	var chat *bench.CheckTemplate
	for _, t := range b.templates {
		if t.Name == "openai_chat" {
			chat = t
		}
	}
	if chat == nil {
		var err error
		if chat, err = bench.LoadCheck("openai_chat"); err != nil {
			return err
		}
	}
	resp, err := bench.CheckOnce(ctx, b.targets[purser], chat, b.probeKey.Secret)
	if err != nil || resp.GetStatus().GetCode() != 0 {
		return fmt.Errorf("probe Check: %v %v", resp.GetStatus(), err)
	}
	cost, err := strconv.ParseInt(resp.GetDynamicMetadata().GetFields()["reserved_micros"].GetStringValue(), 10, 64)
	if err != nil || cost <= 0 {
		return fmt.Errorf("probe Check: no reserved_micros in %v", resp.GetDynamicMetadata())
	}

	b.logf("starting a second purser with -check-timeout 10s for the exactness burst")
	relaxed, err := bench.StartPurser(ctx, b.bin, bench.PurserOptions{DatabaseURL: b.dbC.URL, Args: []string{
		"-hot-pool-size", fmt.Sprint(b.cfg.hotPoolSize), "-log-level", "warn", "-shutdown-timeout", "5s", "-check-timeout", "10s",
	}})
	if err != nil {
		return err
	}
	defer func() { _ = relaxed.Stop(10 * time.Second) }()
	rt, err := bench.Dial(ctx, relaxed.GRPCAddr, b.cfg.conns)
	if err != nil {
		return err
	}
	defer rt.Close()

	for i, c := range []struct {
		label, timeout string
		t              *bench.Target
	}{{"purser", "150ms (default)", b.targets[purser]}, {"second purser process", "10s", rt}} {
		r, err := b.burstOnce(ctx, fmt.Sprintf("team:burst%d", i), chat, cost, c.t)
		if err != nil {
			return err
		}
		r.label, r.checkTimeout = c.label, c.timeout
		b.bursts = append(b.bursts, r)
	}
	b.logf("verifying the ledger with `purser verify`")
	code, out, err := bench.Verify(ctx, b.bin, b.dbC.URL)
	if err != nil {
		return err
	}
	for _, r := range b.bursts {
		r.verifyCode, r.verifyOut = code, out
	}
	b.logf("  verify exit %d", code)
	return nil
}

func (b *benchRun) burstOnce(ctx context.Context, subject string, chat *bench.CheckTemplate, cost int64, t *bench.Target) (*burstResult, error) {
	k := b.cfg.burstK
	r := &burstResult{k: k, n: 10 * k, cost: cost, limit: int64(k)*cost + cost - 1}
	keys, err := bench.NewKeys(8, func(int) []string { return []string{subject} })
	if err != nil {
		return nil, err
	}
	if err := bench.InsertKeys(ctx, b.qC, keys); err != nil {
		return nil, err
	}
	ids, err := bench.InsertBudgets(ctx, b.qC, []bench.SeedBudget{{Name: "burst", Subject: subject, Limit: r.limit}})
	if err != nil {
		return nil, err
	}
	budgetID := ids[0]
	b.logf("overspend check (%s): room for exactly %d requests of %d µUSD (limit %d); %d concurrent Checks", subject, k, cost, r.limit, r.n)

	// Watch the window while the burst runs.
	w, _ := bench.MonthWindow(time.Now())
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sctx.Err() == nil {
			var used int64
			if err := b.qC.QueryRow(sctx, `SELECT posted + pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2`, budgetID, w.Start).Scan(&used); err == nil {
				r.samples++
				r.maxSeen = max(r.maxSeen, used)
			}
			sleep(sctx, time.Millisecond)
		}
	}()
	r.br = bench.Burst(ctx, []*bench.Target{t}, chat, secrets(keys), r.n, 15*time.Second)
	stopSampling()
	<-sampled
	if err := b.qC.QueryRow(ctx, `SELECT posted + pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2`, budgetID, w.Start).Scan(&r.final); err != nil {
		return nil, err
	}
	r.maxSeen = max(r.maxSeen, r.final)
	if err := b.qC.QueryRow(ctx, `SELECT count(*) FROM reservation_holds h JOIN reservations r ON r.id = h.reservation_id
		WHERE h.budget_id = $1 AND r.state = 'pending'`, budgetID).Scan(&r.pendingRes); err != nil {
		return nil, err
	}
	b.logf("  admitted %d, denied %d, failed %d in %s; window %d / %d (max seen %d over %d samples)",
		r.br.OK, r.br.Denied, r.br.Failed, r.br.Elapsed.Round(time.Millisecond), r.final, r.limit, r.maxSeen, r.samples)
	if r.br.FirstErr != nil {
		b.logf("  first error: %v", r.br.FirstErr)
	}
	return r, nil
}
