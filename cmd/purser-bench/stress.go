package main

import (
	"context"
	"fmt"
	"time"

	"github.com/purser-dev/purser/internal/bench"
)

// Stress scenarios (issue 15): a noisy neighbour (one budget's window row locked by another
// transaction) and overload (open loop above the measured capacity).
const (
	stressTimeout   = 200 * time.Millisecond // Envoy's default ext_authz timeout
	noisyLock       = 7 * time.Second
	noisyRate       = 500 // Checks/s of the unrelated tenant
	noisyLockedRate = 50  // Checks/s of the locked tenant
	overloadRun     = 4 * time.Second
)

var overloadFactors = []float64{2, 5}

type noisyResult struct {
	base, during, locked bench.Detail
}

type overloadRow struct {
	factor float64
	// capacity is the closed loop's rate with the generator's process otherwise idle;
	// fairCapacity the same while that process burns what the generator spent during this
	// row's open-loop run, measured just before and after it (capCPU: the process's CPU per
	// second during the measurement after).
	capacity, fairCapacity float64
	capBefore, capAfter    float64 // fairCapacity is their mean
	capCPU, genCPU         float64 // cores used by the generator's process
	d                      bench.Detail
	shed                   float64 // purser_reservations_shed_total over the run
	decided                float64 // purser_check_decisions_total over the run: Checks purser's handler answered
	purserCPU              time.Duration
	rssBefore, rssAfter    int64
	gBefore, gPeak, gAfter float64 // purser's goroutines
}

func (b *benchRun) stressWorkload(secrets []string) *bench.Workload {
	return &bench.Workload{Templates: b.templates, Secrets: secrets, CallTimeout: stressTimeout}
}

// runNoisy measures an unrelated tenant's Checks (the hot budget) while another budget's
// window row is locked by a long transaction, against the same load without the lock.
func (b *benchRun) runNoisy(ctx context.Context) error {
	lockedKey := b.zipfKeys[len(b.zipfKeys)-1]
	lockedID := b.zipfIDs[len(b.zipfIDs)-1]
	if _, err := bench.CheckOnce(ctx, b.targets[purser], b.templates[0], lockedKey.Secret); err != nil {
		return err // its window row now exists
	}
	r := &noisyResult{}
	b.logf("noisy neighbour: baseline, %d Checks/s on the hot budget, %s deadline", noisyRate, stressTimeout)
	r.base = bench.OpenLoopDetail(ctx, b.targets[purser], b.stressWorkload(secrets(b.hotKeys)), noisyRate, 3*time.Second)
	b.logf("  baseline: %d OK, %d shed, %d denied, %d failed (first error: %v)", r.base.OK, r.base.Shed, r.base.Denied, r.base.Failed, r.base.FirstErr)

	tx, err := b.qC.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM budget_windows WHERE budget_id = $1 FOR UPDATE`, lockedID); err != nil {
		return err
	}
	b.logf("noisy neighbour: window row of budget %d locked for %s; its tenant sends %d Checks/s, the hot budget %d/s", lockedID, noisyLock, noisyLockedRate, noisyRate)
	done := make(chan bench.Detail, 1)
	go func() {
		done <- bench.OpenLoopDetail(ctx, b.targets[purser], b.stressWorkload([]string{lockedKey.Secret}), noisyLockedRate, noisyLock-500*time.Millisecond)
	}()
	r.during = bench.OpenLoopDetail(ctx, b.targets[purser], b.stressWorkload(secrets(b.hotKeys)), noisyRate, noisyLock-500*time.Millisecond)
	r.locked = <-done
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	b.logf("  unrelated tenant: %d/%d OK (%.2f%%, baseline %d/%d), p99 %s (baseline %s); locked tenant: %d OK, %d shed, %d failed",
		r.during.OK, r.during.Calls, 100*float64(r.during.OK)/float64(max(r.during.Calls, 1)), r.base.OK, r.base.Calls, ms(bench.Percentile(r.during.OKLat, 99)),
		ms(bench.Percentile(r.base.OKLat, 99)), r.locked.OK, r.locked.Shed, r.locked.Failed)
	b.noisy = r
	return nil
}

// runOverload measures purser's capacity on the hot budget (closed loop, 256 callers, Envoy's
// deadline), then offers 2× and 5× that rate open loop with pre-encoded Checks. After each
// open-loop run it measures the capacity again while this process burns as much CPU as the
// generator used during that run: goodput at f× and that capacity are measured with the
// generator taking the same share of the two cores, so their ratio is purser's.
func (b *benchRun) runOverload(ctx context.Context) error {
	w := b.stressWorkload(secrets(b.hotKeys))
	// -generator-nice: on cores other processes keep busy, the generator can be run above
	// purser and Postgres to keep its schedule (its CPU, ballast included, stays the same in
	// the capacity and overload measurements).
	if n := b.cfg.generatorNice; n != 0 {
		if err := bench.Renice(n); err != nil {
			b.logf("overload: generator at normal priority (%v)", err)
		} else {
			b.generatorNice = n
			defer func() { _ = bench.Renice(0) }()
		}
	}
	var h2 *bench.H2Target
	if b.cfg.generator == generatorH2 {
		var err error
		if h2, err = b.h2Target(ctx, purser, stressTimeout); err != nil {
			return err
		}
	}
	capacity, capCPU, err := b.measureCapacity(ctx, w, 0)
	if err != nil {
		return err
	}
	b.logf("  capacity %.0f Checks/s, generator %.2f cores", capacity, capCPU)
	if b.cfg.overloadRate > 0 {
		capCPU *= b.cfg.overloadRate / capacity
		capacity = b.cfg.overloadRate
		b.logf("  offering multiples of %.0f Checks/s (-overload-capacity)", capacity)
	}
	perCheck := capCPU / capacity // generator cores per Check/s; from the last open-loop run once there is one
	for _, f := range overloadFactors {
		row := overloadRow{factor: f, capacity: capacity}
		// The machine is shared: capacity drifts from minute to minute. It is measured just
		// before and just after the run, both times with the generator's process as busy as
		// during the run (before: as predicted from the last run), and the mean is the divisor.
		if row.capBefore, _, err = b.measureCapacity(ctx, w, max(0, perCheck*f*capacity-capCPU)); err != nil {
			return err
		}
		row.rssBefore = bench.RSS(b.purser.Pid())
		reqs, err := bench.Encode(b.stressWorkload(secrets(b.hotKeys)), int(f*capacity*overloadRun.Seconds()))
		if err != nil {
			return err
		}
		row.gBefore = b.goroutines(ctx)
		shed0, decided0 := b.shedCount(ctx), b.decided(ctx)
		pcpu0, _ := bench.ProcCPU(b.purser.Pid())
		b.logf("overload: %.0f× capacity, %.0f Checks/s open loop for %s", f, f*capacity, overloadRun)
		peak := make(chan float64, 1)
		runCtx, stopSampling := context.WithCancel(ctx)
		go func() { peak <- b.peakGoroutines(runCtx) }()
		if h2 != nil {
			row.d = bench.OpenLoopH2(ctx, h2, reqs, f*capacity, stressTimeout)
		} else {
			row.d = bench.OpenLoopWire(ctx, b.targets[purser], reqs, f*capacity, stressTimeout)
		}
		pcpu1, _ := bench.ProcCPU(b.purser.Pid())
		row.purserCPU = pcpu1 - pcpu0
		stopSampling()
		row.gPeak = <-peak
		reqs = nil
		row.genCPU = row.d.GenCPU.Seconds() / row.d.Elapsed.Seconds()
		sleep(ctx, 2*time.Second)
		row.rssAfter = bench.RSS(b.purser.Pid())
		row.gAfter = b.goroutines(ctx)
		row.shed = b.shedCount(ctx) - shed0
		row.decided = b.decided(ctx) - decided0
		b.logf("  %d sent, %.0f answered by purser's handler, failures by gRPC code: %v; purser CPU %.2f cores, %.0f µs per Check answered",
			row.d.Calls, row.decided, row.d.Errors, row.purserCPU.Seconds()/row.d.Elapsed.Seconds(), float64(row.purserCPU.Microseconds())/max(row.decided, 1))
		b.logf("  goodput %.0f/s (%.0f%% of capacity), p99 of successes %s, %d shed (p99 %s), %d failed, generator lag p99 %s, %.2f cores; RSS %d → %d MiB, goroutines %.0f → %.0f (peak %.0f)",
			row.d.Goodput(), 100*row.d.Goodput()/capacity, ms(bench.Percentile(row.d.OKLat, 99)), row.d.Shed,
			ms(bench.Percentile(row.d.ShedLat, 99)), row.d.Failed, ms(bench.Percentile(row.d.GenLag, 99)), row.genCPU,
			row.rssBefore>>20, row.rssAfter>>20, row.gBefore, row.gAfter, row.gPeak)
		perCheck = row.genCPU / (f * capacity)
		ballast := max(0, row.genCPU-capCPU)
		if row.capAfter, row.capCPU, err = b.measureCapacity(ctx, w, ballast); err != nil {
			return err
		}
		row.fairCapacity = (row.capBefore + row.capAfter) / 2
		b.logf("  capacity at the run's generator CPU: %.0f Checks/s before, %.0f after (generator process %.2f cores); goodput ÷ their mean: %.0f%%",
			row.capBefore, row.capAfter, row.capCPU, 100*row.d.Goodput()/row.fairCapacity)
		b.overload = append(b.overload, row)
	}
	return nil
}

// measureCapacity runs the closed loop (256 callers, Envoy's deadline, 1 s warm-up, 3 s
// measured) while this process burns ballast cores besides; it returns the successful
// Checks per second and the cores this process used over the loop.
func (b *benchRun) measureCapacity(ctx context.Context, w *bench.Workload, ballast float64) (float64, float64, error) {
	b.logf("overload: measuring capacity (closed loop, 256 callers, %s deadline, %.2f cores of ballast, %s generator)", stressTimeout, ballast, b.cfg.generator)
	load := func() bench.Result {
		return bench.ClosedLoop(ctx, b.targets[purser], w, 256, time.Second, 3*time.Second)
	}
	if b.cfg.generator == generatorH2 {
		t, err := b.h2Target(ctx, purser, stressTimeout)
		if err != nil {
			return 0, 0, err
		}
		// Enough distinct Checks for 4 s at half again the last capacity (the first time, at
		// 30,000/s); should they run out, the measured span ends there.
		n := int(4 * 1.5 * b.lastCapacity)
		if n == 0 {
			n = 4 * 30_000
		}
		reqs, err := bench.Encode(w, n)
		if err != nil {
			return 0, 0, err
		}
		load = func() bench.Result {
			return bench.ClosedLoopH2(ctx, t, reqs, 256, time.Second, 3*time.Second, stressTimeout)
		}
	}
	stop := bench.Burn(ballast)
	cpu0, t0 := bench.SelfCPU(), time.Now()
	res := load()
	cores := (bench.SelfCPU() - cpu0).Seconds() / time.Since(t0).Seconds()
	stop()
	capacity := float64(res.OK) / res.Elapsed.Seconds()
	b.lastCapacity = capacity
	if capacity <= 0 {
		return 0, 0, fmt.Errorf("no Check succeeded while measuring capacity: %d answered (%d denied, %d failed; first failure: %v)", res.Calls, res.Denied, res.Failed, res.FirstErr)
	}
	return capacity, cores, nil
}

func (b *benchRun) decided(ctx context.Context) float64 {
	m, err := b.purser.Metrics(ctx)
	if err != nil {
		return 0
	}
	return m.Sum("purser_check_decisions_total")
}

func (b *benchRun) goroutines(ctx context.Context) float64 {
	m, err := b.purser.Metrics(ctx)
	if err != nil {
		return 0
	}
	return m.Sum("go_goroutines")
}

// peakGoroutines samples purser's goroutines every 500 ms until ctx ends.
func (b *benchRun) peakGoroutines(ctx context.Context) float64 {
	var peak float64
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return peak
		case <-t.C:
			peak = max(peak, b.goroutines(ctx))
		}
	}
}

func (b *benchRun) shedCount(ctx context.Context) float64 {
	m, err := b.purser.Metrics(ctx)
	if err != nil {
		return 0
	}
	// Every shed, whoever refused it (the ledger's admission or extauthz's in-flight cap), is a
	// denial with reason overloaded.
	return m.Sum("purser_check_decisions_total", `decision="denied"`, `reason="overloaded"`)
}

func (b *benchRun) renderStress(p func(string, ...any)) {
	if r := b.noisy; r != nil {
		p("## Noisy neighbour (one budget's window row locked for %s by another transaction)\n\n", noisyLock)
		p("| tenant | offered | Checks | OK | success | success without the lock | p99 of successes | p99 without the lock | shed (503) | failed | generator lag p99 |\n")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		p("| unrelated (hot budget) | %d/s | %d | %d | **%s** | %s | %s | %s | %d | %d | %s |\n", noisyRate, r.during.Calls, r.during.OK,
			pct(r.during.OK, r.during.Calls), pct(r.base.OK, r.base.Calls), msf(bench.Percentile(r.during.OKLat, 99)), msf(bench.Percentile(r.base.OKLat, 99)),
			r.during.Shed, r.during.Failed, msf(bench.Percentile(r.during.GenLag, 99)))
		p("| locked budget | %d/s | %d | %d | %s | | %s | | %d | %d | %s |\n\n", noisyLockedRate, r.locked.Calls, r.locked.OK,
			pct(r.locked.OK, r.locked.Calls), msf(bench.Percentile(r.locked.OKLat, 99)), r.locked.Shed, r.locked.Failed, msf(bench.Percentile(r.locked.GenLag, 99)))
		p("Open loop, %s client deadline (Envoy's default). Target: unrelated success ≥ 99%%.\n\n", stressTimeout)
	}
	if len(b.overload) > 0 {
		p("## Overload (one hot budget, open loop above the measured capacity)\n\n")
		p("| offered | × capacity | goodput | **goodput ÷ capacity at the same generator CPU** | goodput ÷ capacity (idle generator) | p99 of successes | shed (503) | shed p99 | shed counted by purser | failed | generator lag p99 | generator CPU: run / capacity | purser CPU, per Check its handler answered | purser RSS before → 2 s after | purser goroutines before → peak → 2 s after |\n")
		p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range b.overload {
			p("| %s/s | %.0f× | %s/s | **%.0f%%** (of %s/s: %s before, %s after) | %.0f%% | %s | %s | %s | %.0f | %s | %s | %.2f / %.2f cores | %.2f cores, %.0f µs | %d → %d MiB | %.0f → %.0f → %.0f |\n", thousands(r.factor*r.capacity), r.factor,
				thousands(r.d.Goodput()), 100*r.d.Goodput()/r.fairCapacity, thousands(r.fairCapacity), thousands(r.capBefore), thousands(r.capAfter), 100*r.d.Goodput()/r.capacity, msf(bench.Percentile(r.d.OKLat, 99)), thousands(float64(r.d.Shed)),
				msf(bench.Percentile(r.d.ShedLat, 99)), r.shed, thousands(float64(r.d.Failed)), msf(bench.Percentile(r.d.GenLag, 99)), r.genCPU, r.capCPU, r.purserCPU.Seconds()/r.d.Elapsed.Seconds(), float64(r.purserCPU.Microseconds())/max(r.decided, 1),
				r.rssBefore>>20, r.rssAfter>>20, r.gBefore, r.gPeak, r.gAfter)
		}
		p("\nCapacity: successful Checks/s of a closed loop of 256 callers on the hot budget with a %s deadline (%s/s with the generator's process otherwise idle: it sets the offered rates). "+
			"The generator shares the two cores with purser and Postgres and spends more CPU at 2× and 5× than while measuring capacity, so the capacity is measured again just before and just after each run while "+
			"the generator's process burns the difference (ballast; before the run, as predicted from the last run): the bold ratio is purser's goodput over the mean of these two capacities, with the generator taking the same CPU in all three. "+
			"Checks are encoded before each run and sent by one timer loop%s; generator lag is how late a Check left against its schedule, counted in its latency. Each run lasts %s; target: goodput ≥ 80%% of capacity at 2×. %s\n\n",
			stressTimeout, thousands(b.overload[0].capacity), niceNote(b.generatorNice), overloadRun, generatorNote(b.cfg.generator))
	}
}

func niceNote(nice int) string {
	if nice == 0 {
		return " at normal priority"
	}
	return fmt.Sprintf(" at nice %d (-generator-nice)", nice)
}
