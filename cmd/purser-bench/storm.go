package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/purser-dev/purser/internal/bench"
)

// stormResult is the exhausted-budget storm: a burst of 10×K Checks at room K, then a
// closed-loop storm on the exhausted budget, answered from memory (budget/exhausted.go),
// against the allow-all ceiling at the same concurrency.
type stormResult struct {
	k, n        int
	cost, limit int64
	burst       bench.BurstResult
	relaxed     bench.BurstResult // the same burst on a second process with -check-timeout 10s
	relaxedMem  float64
	relaxedEnd  int64
	final       int64 // posted + pending at the end
	callers     int
	storm       bench.Result
	ceiling     bench.Result
	fromMemory  float64 // purser_reservations_storm_denied_total during the closed loop
	burstMemory float64 // ... during the burst
}

func (r *stormResult) overspend() int64 { return max(0, max(r.final, r.relaxedEnd)-r.limit) }

// runStorm measures the exhausted-budget storm on the main purser process.
func (b *benchRun) runStorm(ctx context.Context) error {
	chat, err := bench.LoadCheck("openai_chat")
	if err != nil {
		return err
	}
	resp, err := bench.CheckOnce(ctx, b.targets[purser], chat, b.probeKey.Secret)
	if err != nil || resp.GetStatus().GetCode() != 0 {
		return fmt.Errorf("probe Check: %v %v", resp.GetStatus(), err)
	}
	cost, err := strconv.ParseInt(resp.GetDynamicMetadata().GetFields()["reserved_micros"].GetStringValue(), 10, 64)
	if err != nil || cost <= 0 {
		return fmt.Errorf("probe Check: no reserved_micros in %v", resp.GetDynamicMetadata())
	}
	k := b.cfg.stormK
	r := &stormResult{k: k, n: 10 * k, cost: cost, limit: int64(k)*cost + cost - 1, callers: b.cfg.callers[len(b.cfg.callers)-1]}
	budget := func(subject string) ([]bench.SeedKey, int64, error) {
		keys, err := bench.NewKeys(8, func(int) []string { return []string{subject} })
		if err != nil {
			return nil, 0, err
		}
		if err := bench.InsertKeys(ctx, b.qC, keys); err != nil {
			return nil, 0, err
		}
		ids, err := bench.InsertBudgets(ctx, b.qC, []bench.SeedBudget{{Name: "storm", Subject: subject, Limit: r.limit}})
		if err != nil {
			return nil, 0, err
		}
		return keys, ids[0], nil
	}
	keys, budgetID, err := budget("team:storm")
	if err != nil {
		return err
	}
	deniedBy := func(p *bench.Purser) (float64, error) {
		m, err := p.Metrics(ctx)
		if err != nil {
			return 0, err
		}
		return m.Sum("purser_reservations_storm_denied_total"), nil
	}
	denied := func() (float64, error) { return deniedBy(b.purser) }
	used := func(id int64) (int64, error) {
		var n int64
		err := b.qC.QueryRow(ctx, `SELECT coalesce(sum(posted + pending), 0)::bigint FROM budget_windows WHERE budget_id = $1`, id).Scan(&n)
		return n, err
	}

	b.logf("storm: room for exactly %d requests of %d µUSD; %d concurrent Checks at once", k, cost, r.n)
	before, err := denied()
	if err != nil {
		return err
	}
	r.burst = bench.Burst(ctx, []*bench.Target{b.targets[purser]}, chat, secrets(keys), r.n, 10*time.Second)
	after, err := denied()
	if err != nil {
		return err
	}
	r.burstMemory = after - before
	b.logf("  admitted %d, denied %d, failed %d, %d from memory, wall %s", r.burst.OK, r.burst.Denied, r.burst.Failed, int64(r.burstMemory), r.burst.Elapsed.Round(time.Millisecond))

	// The storm: a runaway client keeps calling the exhausted budget.
	w := &bench.Workload{Templates: []*bench.CheckTemplate{chat}, Secrets: secrets(keys)}
	warmup := max(b.cfg.warmup, 1500*time.Millisecond)
	b.logf("storm: %d callers, closed loop %s on the exhausted budget", r.callers, b.cfg.duration)
	before = after
	r.storm = bench.ClosedLoop(ctx, b.targets[purser], w, r.callers, warmup, b.cfg.duration)
	if after, err = denied(); err != nil {
		return err
	}
	r.fromMemory = after - before
	b.logf("  %.0f Checks/s, p99 %s, ok %d, denied %d, failed %d, %.0f denied from memory (warm-up included)", r.storm.Throughput(),
		ms(r.storm.Pct(99)), r.storm.OK, r.storm.Denied, r.storm.Failed, r.fromMemory)
	b.logf("storm: allow-all ceiling, %d callers", r.callers)
	r.ceiling = bench.ClosedLoop(ctx, b.targets[allowAll], w, r.callers, b.cfg.warmup, b.cfg.duration)
	b.logf("  %.0f Checks/s", r.ceiling.Throughput())

	if r.final, err = used(budgetID); err != nil {
		return err
	}

	// The same burst where deadlines cannot interfere: admission exactness and memory alone.
	b.logf("storm: the burst again on a second purser process with -check-timeout 10s")
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
	keys2, budget2, err := budget("team:storm2")
	if err != nil {
		return err
	}
	before, err = deniedBy(relaxed)
	if err != nil {
		return err
	}
	r.relaxed = bench.Burst(ctx, []*bench.Target{rt}, chat, secrets(keys2), r.n, 30*time.Second)
	if after, err = deniedBy(relaxed); err != nil {
		return err
	}
	r.relaxedMem = after - before
	if r.relaxedEnd, err = used(budget2); err != nil {
		return err
	}
	b.logf("  admitted %d, denied %d, failed %d, %d from memory, wall %s", r.relaxed.OK, r.relaxed.Denied, r.relaxed.Failed, int64(r.relaxedMem), r.relaxed.Elapsed.Round(time.Millisecond))
	b.storm = r
	return nil
}

func (b *benchRun) renderStorm(p func(string, ...any)) {
	r := b.storm
	if r == nil {
		return
	}
	p("## Exhausted-budget storm (answered from memory)\n\n")
	p("| phase | Checks | admitted | denied (429) | failed | denied from memory | Checks/s | p99 | allow-all Checks/s | ratio |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	p("| burst: %s at once, room for K=%s (-check-timeout 150ms) | %s | **%s** | %s | **%s** | %s | | %s | | |\n",
		thousands(float64(r.n)), thousands(float64(r.k)), thousands(float64(r.n)), thousands(float64(r.burst.OK)),
		thousands(float64(r.burst.Denied)), thousands(float64(r.burst.Failed)), thousands(r.burstMemory), msf(bench.Percentile(r.burst.Lat, 99)))
	p("| the same burst, second process with -check-timeout 10s | %s | **%s** | %s | **%s** | %s | | %s | | |\n",
		thousands(float64(r.n)), thousands(float64(r.relaxed.OK)), thousands(float64(r.relaxed.Denied)), thousands(float64(r.relaxed.Failed)),
		thousands(r.relaxedMem), msf(bench.Percentile(r.relaxed.Lat, 99)))
	ratio := 0.0
	if c := r.ceiling.Throughput(); c > 0 {
		ratio = r.storm.Throughput() / c
	}
	p("| storm: %d callers, closed loop | %s | **%s** | %s | **%s** | %s | **%s** | %s | %s | %.2f |\n\n",
		r.callers, thousands(float64(r.storm.Calls)), thousands(float64(r.storm.OK)), thousands(float64(r.storm.Denied)),
		thousands(float64(r.storm.Failed)), thousands(r.fromMemory), thousands(r.storm.Throughput()), msf(r.storm.Pct(99)),
		thousands(r.ceiling.Throughput()), ratio)
	p("Limit = K × hold + (hold − 1) = %d µUSD; window at the end %d (second process: %d), overspend **%d**. The burst's first batches go to the database; once a batch has seen the budget without room (and the replica watches it), the rest of the queue and every new Check are denied from memory, without a round trip. The burst's Checks started before that observation, so each could be an Envoy retry of a Check admitted earlier: its idempotency key is also handed to a background release (`storm_repeat`, off the request path). *Denied from memory* is `purser_reservations_storm_denied_total` (the storm's includes its warm-up). The allow-all ceiling runs the same Checks at the same concurrency.\n\n",
		r.limit, r.final, r.relaxedEnd, r.overspend())
}
