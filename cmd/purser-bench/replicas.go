package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/internal/bench"
)

// The replicas scenario: how many reservations per second one Postgres primary sustains with
// 1, 2, 3... purser processes in front of it, the Checks spread evenly over the processes as
// Envoy spreads them. Every admitted Check is one reservation (a durable row and its hold),
// so admitted Checks/s is reservations/s. On one machine the processes share the cores
// with Postgres and the load generator: the figures show what more processes cost the
// primary (more, smaller batches contending for the same rows), not what more machines gain.

// replicaCheckTimeout is the replicas' -check-timeout.
const replicaCheckTimeout = 5 * time.Second

type replicaRow struct {
	workload string
	procs    int
	callers  int
	res      bench.Result
	batch    float64 // reservations per purser_reserve call
	calls    float64 // purser_reserve calls per second
	purser   float64 // cores used by the purser processes
	db       float64 // cores used by the database backends
	self     float64 // cores used by the load generator
	other    float64 // cores used by everything else
	waits    []share
}

func (b *benchRun) runReplicas(ctx context.Context) error {
	counts := slices.Clone(b.cfg.replicaCounts)
	slices.Sort(counts)
	callers := slices.Max(b.cfg.callers)
	// Processes of their own, with a long Check deadline: this measures what the primary
	// sustains, not how many Checks miss a 150 ms deadline on a saturated machine (every
	// Check is answered, so closed-loop callers never idle on a failure).
	var procs []*bench.Purser
	var targets []*bench.Target
	for _, n := range counts {
		for len(procs) < n {
			p, err := bench.StartPurser(ctx, b.bin, bench.PurserOptions{DatabaseURL: b.dbC.URL, Args: []string{
				"-hot-pool-size", fmt.Sprint(b.cfg.hotPoolSize), "-log-level", "warn", "-shutdown-timeout", "5s", "-check-timeout", replicaCheckTimeout.String(),
			}})
			if err != nil {
				return fmt.Errorf("replica %d: %w", len(procs)+1, err)
			}
			b.defer_(func() { _ = p.Stop(10 * time.Second) })
			t, err := bench.Dial(ctx, p.GRPCAddr, b.cfg.conns)
			if err != nil {
				return err
			}
			b.defer_(t.Close)
			procs = append(procs, p)
			targets = append(targets, t)
		}
		target := bench.Combine(targets[:n]...)
		for _, wl := range []struct {
			label string
			w     func() *bench.Workload
		}{{"one hot budget", b.hotWorkload}, {fmt.Sprintf("%d budgets, Zipf s=%.1f", b.cfg.zipfBudgets, b.cfg.zipfS), b.zipfWorkload}} {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.logf("replicas: %d purser process(es), %s, %d callers, closed loop %s", n, wl.label, callers, b.cfg.duration)
			row := b.measureReplicas(ctx, procs[:n], func() bench.Result {
				return bench.ClosedLoop(ctx, target, wl.w(), callers, b.cfg.warmup, b.cfg.duration)
			})
			row.workload, row.procs, row.callers = wl.label, n, callers
			b.logf("  %.0f reservations/s, p99 %s, avg batch %.1f, %.0f purser_reserve calls/s, failed %d", float64(row.res.OK)/row.res.Elapsed.Seconds(),
				ms(row.res.Pct(99)), row.batch, row.calls, row.res.Failed)
			if row.res.FirstErr != nil {
				b.logf("  first error: %v", row.res.FirstErr)
			}
			b.replicas = append(b.replicas, row)
		}
	}
	for _, p := range procs {
		if p.Exited() {
			return fmt.Errorf("a purser replica exited during the run: %s", p.Log())
		}
	}
	return nil
}

// measureReplicas runs load (warmup + duration) and records CPU by process group over the
// measured part, database wait events, and the batches the primary executed.
func (b *benchRun) measureReplicas(ctx context.Context, procs []*bench.Purser, load func() bench.Result) replicaRow {
	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.Pid()
	}
	reservations := func() float64 {
		var sum float64
		for _, p := range procs {
			if m, err := p.Metrics(ctx); err == nil {
				sum += m.Sum("purser_reservations_total")
			}
		}
		return sum
	}
	calls0, _, _ := bench.FunctionStats(ctx, b.qC, "purser_reserve")
	res0 := reservations()
	type snap struct {
		at     time.Time
		purser time.Duration
		cpu    bench.CPUSnapshot
	}
	snaps := make(chan snap, 2)
	var dbPIDs []int
	take := func() {
		if dbPIDs == nil {
			dbPIDs, _ = bench.BackendPIDs(ctx, b.qC, b.dbC.Name)
		}
		snaps <- snap{at: time.Now(), purser: bench.ProcsCPU(pids), cpu: bench.TakeCPU(0, dbPIDs)}
	}
	t1 := time.AfterFunc(b.cfg.warmup, take)
	t2 := time.AfterFunc(b.cfg.warmup+b.cfg.duration, take)
	defer t1.Stop()
	defer t2.Stop()
	waitsC := make(chan []share, 1)
	sctx, stopSampling := context.WithCancel(ctx)
	go func() { waitsC <- sampleWaits(sctx, b.qC, b.dbC.Name, b.cfg.warmup, b.cfg.warmup+b.cfg.duration) }()
	started := time.Now()
	res := load()
	span := time.Since(started)
	stopSampling()
	row := replicaRow{res: res, waits: <-waitsC}
	a, z := <-snaps, <-snaps
	use := z.cpu.Sub(a.cpu)
	if wall := z.at.Sub(a.at).Seconds(); wall > 0 {
		row.purser = (z.purser - a.purser).Seconds() / wall
		row.db = use.DB.Seconds() / wall
		row.self = use.Self.Seconds() / wall
		row.other = max(0, (use.Machine-use.DB-use.Self-(z.purser-a.purser)).Seconds()/wall)
	}
	sleep(ctx, b.cfg.cooldown) // Postgres publishes function statistics with a delay
	calls1, _, _ := bench.FunctionStats(ctx, b.qC, "purser_reserve")
	if dc := calls1 - calls0; dc > 0 && b.batchOK {
		row.batch = (reservations() - res0) / float64(dc)
		row.calls = float64(dc) / span.Seconds()
	}
	return row
}

func (b *benchRun) renderReplicas(p func(string, ...any)) {
	if len(b.replicas) == 0 {
		return
	}
	p("## Replicas: reservations per second on one primary\n\n")
	p("%d closed-loop callers spread evenly over N `purser serve` processes started for this scenario on the purser bench database (each `-hot-pool-size %d -check-timeout %s`, its own batcher), %d HTTP/2 connections per process. Every admitted Check is a reservation (a row and its hold): *reservations/s* is admitted Checks per second. CPU in cores over the measured window.\n\n",
		b.replicas[0].callers, b.cfg.hotPoolSize, replicaCheckTimeout, b.cfg.conns)
	p("| workload | purser processes | reservations/s | vs 1 process | p50 | p99 | not OK | avg batch | purser_reserve calls/s | CPU purser | CPU Postgres | CPU generator | other load | database backends, sampled |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range b.replicas {
		rate := float64(r.res.OK) / r.res.Elapsed.Seconds()
		vs := ""
		for _, o := range b.replicas {
			if o.workload == r.workload && o.procs == 1 && o.res.OK > 0 {
				vs = fmt.Sprintf("%.2f×", rate/(float64(o.res.OK)/o.res.Elapsed.Seconds()))
			}
		}
		batch, calls := "", ""
		if r.batch > 0 {
			batch, calls = fmt.Sprintf("%.1f", r.batch), thousands(r.calls)
		}
		p("| %s | %d | **%s** | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %s |\n", r.workload, r.procs, thousands(rate), vs,
			msf(r.res.Pct(50)), msf(r.res.Pct(99)), notOK(r.res), batch, calls, r.purser, r.db, r.self, r.other, waitsCell(r.waits))
	}
	p("\nOn this machine every process shares the same cores, so more processes add no CPU: the table shows what N replicas cost one primary (each replica sends its own batches, so batches get smaller and replicas queue on the hot budget's row: `Lock:transactionid` / `Lock:tuple` waits), not what N machines would gain. docs/capacity.md reads these figures.\n\n")
}

// positiveInts parses a comma-separated list of positive integers (a flag's value).
func positiveInts(flag, v string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive integer", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}
