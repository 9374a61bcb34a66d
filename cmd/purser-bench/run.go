package main

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/internal/bench"
)

// Server names, as the table prints them.
const (
	allowAll = "allow-all"
	original = "original"
	purser   = "purser"
)

type benchRun struct {
	cfg     config
	stderr  io.Writer
	started time.Time
	root    string
	bin     string
	machine bench.Machine

	dbB, dbC *bench.Database
	poolB    *pgxpool.Pool // the original strategy's own pool
	qB, qC   *pgxpool.Pool // the bench's queries
	purser   *bench.Purser
	targets  map[string]*bench.Target
	cleanups []func()

	templates []*bench.CheckTemplate
	hotKeys   []bench.SeedKey
	zipfKeys  []bench.SeedKey
	probeKey  bench.SeedKey
	zipf      *bench.Zipf
	zipfIDs   []int64
	hotID     int64

	closed  []closedRow
	open    []openRow
	settle  *settleResult
	bursts  []*burstResult
	storm   *stormResult // storm.go
	verifyB *verifyResult
	profs   []*profileResult
	// replicas.go, partition.go
	replicas  []replicaRow
	partition *partitionResult
	// stress.go
	noisy         *noisyResult
	overload      []overloadRow
	generatorNice int     // the overload generator's nice value (0: normal priority)
	lastCapacity  float64 // the overload scenario's last measured capacity (Checks/s)
	notes         []string
	batchOK       bool // pg_stat_user_functions counts purser_reserve

	addrs            map[string]string         // each server's gRPC address
	h2               map[h2Key]*bench.H2Target // the h2 generator's connections (h2Target)
	notifies         *bench.Notifications      // purser_changes on purser's database
	serverAutovacuum string                    // the server's autovacuum setting
	av               []*bench.Autovacuum       // emulation per database (nil: not emulated)
}

func (b *benchRun) logf(format string, args ...any) {
	fmt.Fprintf(b.stderr, "[%6.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *benchRun) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *benchRun) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}

func (b *benchRun) defer_(f func()) { b.cleanups = append(b.cleanups, f) }

func (b *benchRun) setup(ctx context.Context) error {
	var err error
	if b.root, err = bench.RepoRoot(); err != nil {
		return err
	}
	adminURL := b.cfg.adminURL
	if adminURL == "" {
		adminURL = bench.AdminURL()
	}
	if err := b.describeMachine(ctx, adminURL); err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "purser-bench-")
	if err != nil {
		return err
	}
	b.defer_(func() { os.RemoveAll(tmp) })
	b.logf("building ./cmd/purser")
	if b.bin, err = bench.BuildPurser(ctx, tmp); err != nil {
		return err
	}

	b.logf("creating databases on %s", redact(adminURL))
	for _, db := range []**bench.Database{&b.dbB, &b.dbC} {
		d, err := bench.CreateDatabase(ctx, adminURL)
		if err != nil {
			return err
		}
		*db = d
		b.defer_(func() {
			if b.cfg.keep {
				b.logf("kept database %s", d.Name)
				return
			}
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := d.Drop(dctx); err != nil {
				b.logf("drop database %s: %v", d.Name, err)
			}
		})
	}
	if err := b.dbC.TrackFunctions(ctx); err != nil {
		b.note("average batch size unavailable: could not enable track_functions on the bench database (%v)", err)
	} else {
		b.batchOK = true
	}
	if b.qB, err = b.dbB.Open(ctx, 6); err != nil {
		return err
	}
	b.defer_(b.qB.Close)
	if b.qC, err = b.dbC.Open(ctx, 6); err != nil {
		return err
	}
	b.defer_(b.qC.Close)
	for _, q := range []*pgxpool.Pool{b.qB, b.qC} {
		if err := bench.Migrate(ctx, q); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	if err := applyWhatIfs(ctx, b.qC, b.cfg.whatIf); err != nil {
		return err
	}
	if err := b.startAutovacuum(ctx); err != nil {
		return err
	}
	if err := b.seed(ctx); err != nil {
		return err
	}
	return b.startServers(ctx)
}

// startAutovacuum emulates autovacuum on both ledgers when the server runs without it (or
// when asked): without it, a table is never analyzed and plans cached while it was small are
// kept as it grows, which no production server does.
func (b *benchRun) startAutovacuum(ctx context.Context) error {
	off, err := bench.AutovacuumOff(ctx, b.qC)
	if err != nil {
		return err
	}
	b.serverAutovacuum = "on"
	if off {
		b.serverAutovacuum = "off"
	}
	if b.cfg.autovacuum == "off" || (b.cfg.autovacuum == "auto" && !off) {
		return nil
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	for _, q := range []*pgxpool.Pool{b.qB, b.qC} {
		av := &bench.Autovacuum{}
		b.av = append(b.av, av)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := av.Run(actx, q, 0); err != nil {
				b.logf("autovacuum emulation stopped: %v", err)
			}
		}()
	}
	b.defer_(func() { cancel(); wg.Wait() })
	b.logf("server has autovacuum=%s: emulating it on the bench databases", b.serverAutovacuum)
	return nil
}

func redact(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "…" + u[i:]
		}
	}
	return u
}

func (b *benchRun) describeMachine(ctx context.Context, adminURL string) error {
	b.machine = bench.DescribeMachine()
	pool, err := bench.OpenPool(ctx, adminURL, 1)
	if err != nil {
		return fmt.Errorf("postgres at %s: %w", redact(adminURL), err)
	}
	defer pool.Close()
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&b.machine.Postgres); err != nil {
		return err
	}
	for _, s := range []string{"synchronous_commit", "fsync", "wal_sync_method", "shared_buffers", "commit_delay", "max_connections", "data_directory"} {
		var v string
		if err := pool.QueryRow(ctx, `SELECT current_setting($1)`, s).Scan(&v); err == nil {
			b.machine.Settings[s] = v
		}
	}
	dir := os.TempDir()
	if d, err := bench.MeasureFdatasync(dir, 400*time.Millisecond); err == nil {
		b.machine.Fdatasync = d
		where := "a temp file in " + dir
		if dd := b.machine.Settings["data_directory"]; dd != "" {
			if bench.SameFilesystem(dir, dd) {
				where += ", same filesystem as PGDATA"
			} else {
				where += ", NOT the filesystem of PGDATA"
			}
		}
		b.machine.FsyncWhere = where
	}
	return nil
}

// seed creates the same keys and budgets in both ledgers: the hot team budget and its keys,
// the Zipf teams (one budget and one key each), the burst keys and a probe key.
func (b *benchRun) seed(ctx context.Context) error {
	var err error
	if b.hotKeys, err = bench.NewKeys(b.cfg.hotKeys, func(int) []string { return []string{"team:hot"} }); err != nil {
		return err
	}
	if b.zipfKeys, err = bench.NewKeys(b.cfg.zipfBudgets, func(i int) []string { return []string{fmt.Sprintf("team:z%04d", i)} }); err != nil {
		return err
	}
	probe, err := bench.NewKeys(1, func(int) []string { return []string{"team:probe"} })
	if err != nil {
		return err
	}
	b.probeKey = probe[0]
	all := slices.Concat(b.hotKeys, b.zipfKeys, probe)
	budgets := []bench.SeedBudget{{Name: "hot team monthly", Subject: "team:hot", Limit: 1e15}}
	for i := range b.cfg.zipfBudgets {
		budgets = append(budgets, bench.SeedBudget{Name: "zipf team monthly", Subject: fmt.Sprintf("team:z%04d", i), Limit: 1e15})
	}
	b.logf("seeding %d keys and %d budgets in each ledger", len(all), len(budgets))
	for _, q := range []*pgxpool.Pool{b.qB, b.qC} {
		if err := bench.InsertKeys(ctx, q, all); err != nil {
			return err
		}
		ids, err := bench.InsertBudgets(ctx, q, budgets)
		if err != nil {
			return err
		}
		if q == b.qC {
			b.hotID, b.zipfIDs = ids[0], ids[1:]
		}
	}
	b.zipf = bench.NewZipf(b.cfg.zipfBudgets, b.cfg.zipfS)
	if b.cfg.history > 0 {
		b.logf("seeding %d settled reservations of history in each ledger, then ANALYZE", b.cfg.history)
		allIDs := append([]int64{b.hotID}, b.zipfIDs...)
		errs := make(chan error, 2)
		for _, q := range []*pgxpool.Pool{b.qB, b.qC} {
			go func() { errs <- bench.SeedHistory(ctx, q, allIDs, b.cfg.history) }()
		}
		for range 2 {
			if err := <-errs; err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *benchRun) startServers(ctx context.Context) error {
	b.targets = map[string]*bench.Target{}
	cat, err := pricing.Embedded()
	if err != nil {
		return err
	}

	addrA, stopA, err := bench.Serve(bench.AllowAll{})
	if err != nil {
		return err
	}
	b.defer_(stopA)

	if b.poolB, err = b.dbB.Open(ctx, int32(b.cfg.originalPool)); err != nil {
		return err
	}
	b.defer_(b.poolB.Close)
	st := store.New(b.poolB)
	orig := &bench.Original{Pool: b.poolB, Svc: budget.New(st, st, budget.Config{}), Catalog: cat}
	addrB, stopB, err := bench.Serve(orig)
	if err != nil {
		return err
	}
	b.defer_(stopB)

	b.logf("starting purser serve (-hot-pool-size %d)", b.cfg.hotPoolSize)
	opts := bench.PurserOptions{DatabaseURL: b.dbC.URL, Args: []string{
		"-hot-pool-size", fmt.Sprint(b.cfg.hotPoolSize), "-log-level", "warn", "-shutdown-timeout", "5s",
	}}
	if b.cfg.verbose {
		opts.Log = b.stderr
	}
	if b.purser, err = bench.StartPurser(ctx, b.bin, opts); err != nil {
		return err
	}
	b.defer_(func() {
		if err := b.purser.Stop(10 * time.Second); err != nil {
			b.logf("purser stop: %v", err)
		}
	})
	b.logf("purser pid %d: gRPC %s, HTTP %s", b.purser.Pid(), b.purser.GRPCAddr, b.purser.HTTPAddr)
	if b.notifies, err = bench.Listen(ctx, b.dbC.URL, "purser_changes"); err != nil {
		return err
	}
	b.defer_(b.notifies.Stop)

	b.addrs = map[string]string{allowAll: addrA, original: addrB, purser: b.purser.GRPCAddr}
	for name, addr := range b.addrs {
		t, err := bench.Dial(ctx, addr, b.cfg.conns)
		if err != nil {
			return err
		}
		b.defer_(t.Close)
		b.targets[name] = t
	}
	return b.checkFixtures(ctx)
}

// checkFixtures keeps the fixtures that both ledgers admit (a fixture purser cannot price
// would measure a cheap denial, not an admission).
func (b *benchRun) checkFixtures(ctx context.Context) error {
	ts, err := bench.LoadChecks(bench.DefaultMix)
	if err != nil {
		return err
	}
	for _, t := range ts {
		ok := true
		for _, srv := range []string{original, purser} {
			resp, err := bench.CheckOnce(ctx, b.targets[srv], t, b.hotKeys[0].Secret)
			if err != nil || resp.GetStatus().GetCode() != 0 {
				b.note("fixture %s left out: %s answered %v %v", t.Name, srv, resp.GetStatus(), err)
				ok = false
				break
			}
		}
		if ok {
			b.templates = append(b.templates, t)
		}
	}
	if len(b.templates) == 0 {
		return fmt.Errorf("no fixture is admitted by both ledgers")
	}
	names := make([]string, len(b.templates))
	for i, t := range b.templates {
		names[i] = t.Name
	}
	b.logf("fixtures: %s", strings.Join(names, ", "))
	return nil
}

func (b *benchRun) hotWorkload() *bench.Workload {
	return &bench.Workload{Templates: b.templates, Secrets: secrets(b.hotKeys)}
}

func (b *benchRun) zipfWorkload() *bench.Workload {
	z := b.zipf
	return &bench.Workload{Templates: b.templates, Secrets: secrets(b.zipfKeys),
		PickKey: func(r *mrand.Rand, _ int) int { return z.Pick(r) }}
}

func secrets(ks []bench.SeedKey) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Secret
	}
	return out
}

// runStats is one measured load run with what was observed around it.
type runStats struct {
	res   bench.Result
	cpu   bench.CPUUse
	batch float64       // reservations per purser_reserve call (purser only; 0: unknown)
	fnAvg time.Duration // mean execution time of one purser_reserve call (purser only)
	waits []share       // where the database backends were, sampled
	// keyLookups counts API key lookups that went to the database (purser only).
	keyLookups float64
	// notifies counts purser_changes notifications on purser's database (each one purges
	// every replica's key and budget caches).
	notifies int64
	// decisions counts purser's reservation decisions over the whole run (warm-up included).
	decisions float64
}

type share struct {
	what string
	pct  float64
}

// measure runs load (which lasts warmup+duration) and records CPU over the measured part,
// the database backends' wait events, and purser's batch size.
func (b *benchRun) measure(ctx context.Context, server string, load func() bench.Result) runStats {
	var pid int
	var q *pgxpool.Pool
	var dbName string
	switch server {
	case purser:
		pid, q, dbName = b.purser.Pid(), b.qC, b.dbC.Name
	case original:
		q, dbName = b.qB, b.dbB.Name
	}
	var calls0 int64
	var fn0 time.Duration
	var res0, keys0 float64
	var notes0 int64
	if server == purser {
		calls0, fn0, res0 = b.batchCounters(ctx)
		keys0 = b.keyLookups(ctx)
		notes0 = b.notifies.Count()
	}
	snaps := make(chan bench.CPUSnapshot, 2)
	var dbPIDs []int
	take := func() {
		if q != nil && dbPIDs == nil {
			dbPIDs, _ = bench.BackendPIDs(ctx, q, dbName)
		}
		snaps <- bench.TakeCPU(pid, dbPIDs)
	}
	t1 := time.AfterFunc(b.cfg.warmup, take)
	t2 := time.AfterFunc(b.cfg.warmup+b.cfg.duration, take)
	defer t1.Stop()
	defer t2.Stop()
	waitsC := make(chan []share, 1)
	sctx, stopSampling := context.WithCancel(ctx)
	go func() { waitsC <- sampleWaits(sctx, q, dbName, b.cfg.warmup, b.cfg.warmup+b.cfg.duration) }()

	res := load()
	stopSampling()
	var st runStats
	st.res = res
	st.waits = <-waitsC
	a, z := <-snaps, <-snaps
	st.cpu = z.Sub(a)
	sleep(ctx, b.cfg.cooldown)
	if server == purser {
		st.keyLookups = b.keyLookups(ctx) - keys0
		st.notifies = b.notifies.Count() - notes0
		calls1, fn1, res1 := b.batchCounters(ctx)
		st.decisions = res1 - res0
		if calls1 > calls0 && b.batchOK {
			st.batch = (res1 - res0) / float64(calls1-calls0)
			st.fnAvg = (fn1 - fn0) / time.Duration(calls1-calls0)
		}
	}
	return st
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// batchCounters returns purser_reserve calls (batches), their execution time and the
// reservation decisions so far.
func (b *benchRun) batchCounters(ctx context.Context) (int64, time.Duration, float64) {
	calls, fn, _ := bench.FunctionStats(ctx, b.qC, "purser_reserve")
	m, err := b.purser.Metrics(ctx)
	if err != nil {
		return calls, fn, 0
	}
	return calls, fn, m.Sum("purser_reservations_total")
}

// keyLookups returns purser's API key lookups that missed its cache and went to the database.
func (b *benchRun) keyLookups(ctx context.Context) float64 {
	m, err := b.purser.Metrics(ctx)
	if err != nil {
		return 0
	}
	return m.Sum("purser_key_lookups_total", `source="database"`)
}

// sampleWaits samples pg_stat_activity every 100ms between from and to (after the start)
// and returns the share of backend samples per state: on CPU, a wait event, or idle in a
// transaction (waiting for the client's next statement while holding locks).
func sampleWaits(ctx context.Context, q *pgxpool.Pool, dbName string, from, to time.Duration) []share {
	if q == nil {
		return nil
	}
	start := time.Now()
	sleep(ctx, from)
	counts := map[string]int{}
	total := 0
	for ctx.Err() == nil && time.Since(start) < to {
		rows, err := q.Query(ctx, `SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction (client round trip)'
		                                      WHEN wait_event IS NULL THEN 'on CPU'
		                                      ELSE wait_event_type || ':' || wait_event END, count(*)
		                             FROM pg_stat_activity
		                            WHERE datname = $1 AND pid <> pg_backend_pid()
		                              AND state IN ('active', 'idle in transaction')
		                              AND backend_type = 'client backend'
		                              AND query NOT LIKE '%pg_stat_activity%'
		                              AND query NOT LIKE 'LISTEN%'
		                            GROUP BY 1`, dbName)
		if err == nil {
			for rows.Next() {
				var what string
				var n int
				if rows.Scan(&what, &n) == nil {
					counts[what] += n
					total += n
				}
			}
			rows.Close()
		}
		sleep(ctx, 100*time.Millisecond)
	}
	var out []share
	for w, n := range counts {
		out = append(out, share{w, 100 * float64(n) / float64(max(total, 1))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pct > out[j].pct })
	return out
}

type closedRow struct {
	scenario string
	callers  int
	server   string
	st       runStats
}

type openRow struct {
	rate   float64
	server string
	st     runStats
}

func (b *benchRun) scenarios(ctx context.Context) error {
	servers := []string{allowAll, original, purser}
	for _, sc := range []struct {
		name  string
		label string
		wl    func() *bench.Workload
	}{{"hot", "one hot budget", b.hotWorkload}, {"zipf", fmt.Sprintf("%d budgets, Zipf s=%.1f", b.cfg.zipfBudgets, b.cfg.zipfS), b.zipfWorkload}} {
		if !b.cfg.only[sc.name] {
			continue
		}
		for _, n := range b.cfg.callers {
			for _, srv := range servers {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.logf("%s: %s, %d callers, closed loop %s", sc.label, srv, n, b.cfg.duration)
				w := sc.wl()
				st := b.measure(ctx, srv, func() bench.Result {
					return bench.ClosedLoop(ctx, b.targets[srv], w, n, b.cfg.warmup, b.cfg.duration)
				})
				b.logf("  %.0f Checks/s, p50 %s, p99 %s, ok %d, denied %d, failed %d%s", st.res.Throughput(),
					ms(st.res.Pct(50)), ms(st.res.Pct(99)), st.res.OK, st.res.Denied, st.res.Failed, batchNote(st))
				if st.res.FirstErr != nil {
					b.logf("  first error: %v", st.res.FirstErr)
				}
				b.closed = append(b.closed, closedRow{sc.label, n, srv, st})
			}
		}
	}
	if b.cfg.only["open"] {
		for _, rate := range b.cfg.rates {
			for _, srv := range []string{allowAll, purser} {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.logf("open loop: %s at %.0f Checks/s on the hot budget (%s generator)", srv, rate, b.cfg.generator)
				w := b.hotWorkload()
				load := func() bench.Result {
					return bench.OpenLoop(ctx, b.targets[srv], w, rate, b.cfg.warmup, b.cfg.duration)
				}
				if b.cfg.generator == generatorH2 {
					const timeout = 10 * time.Second // the grpc-go generator's (Workload.CallTimeout)
					t, err := b.h2Target(ctx, srv, timeout)
					if err != nil {
						return err
					}
					reqs, err := bench.Encode(w, int(rate*(b.cfg.warmup+b.cfg.duration).Seconds()))
					if err != nil {
						return err
					}
					load = func() bench.Result {
						return bench.OpenLoopH2Result(ctx, t, reqs, rate, b.cfg.warmup, b.cfg.duration, timeout)
					}
				}
				st := b.measure(ctx, srv, load)
				b.logf("  p50 %s, p99 %s, p99.9 %s, failed %d%s", ms(st.res.Pct(50)), ms(st.res.Pct(99)), ms(st.res.Pct(99.9)), st.res.Failed, batchNote(st))
				b.open = append(b.open, openRow{rate, srv, st})
			}
		}
	}
	if b.cfg.only["settle"] {
		if err := b.runSettle(ctx); err != nil {
			return fmt.Errorf("settlement: %w", err)
		}
	}
	if b.cfg.only["burst"] {
		if err := b.runBurst(ctx); err != nil {
			return fmt.Errorf("overspend check: %w", err)
		}
	}
	if b.cfg.only["storm"] {
		if err := b.runStorm(ctx); err != nil {
			return fmt.Errorf("storm: %w", err)
		}
	}
	if b.cfg.only["replicas"] {
		if err := b.runReplicas(ctx); err != nil {
			return fmt.Errorf("replicas: %w", err)
		}
	}
	if b.cfg.only["partition"] {
		if err := b.runPartition(ctx); err != nil {
			return fmt.Errorf("partition: %w", err)
		}
	}
	if b.cfg.only["noisy"] {
		if err := b.runNoisy(ctx); err != nil {
			return fmt.Errorf("noisy neighbour: %w", err)
		}
	}
	if b.cfg.only["overload"] {
		if err := b.runOverload(ctx); err != nil {
			return fmt.Errorf("overload: %w", err)
		}
	}
	if err := b.verifyOriginal(ctx); err != nil {
		return err
	}
	if b.cfg.profile {
		if err := b.runProfile(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	if b.purser.Exited() {
		return fmt.Errorf("purser exited during the run: %s", b.purser.Log())
	}
	return nil
}

func batchNote(st runStats) string {
	if st.batch <= 0 {
		return ""
	}
	return fmt.Sprintf(", avg batch %.1f, purser_reserve %s per call, %.0f key lookups from the database, %d cache-purging notifications", st.batch, ms(st.fnAvg), st.keyLookups, st.notifies)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

type verifyResult struct {
	code int
	out  string
}

// verifyOriginal reconciles the original strategy's ledger with `purser verify`: it writes
// the same rows, so it must reconcile too (a check on the baseline's implementation).
func (b *benchRun) verifyOriginal(ctx context.Context) error {
	code, out, err := bench.Verify(ctx, b.bin, b.dbB.URL)
	if err != nil {
		return err
	}
	b.verifyB = &verifyResult{code, strings.TrimSpace(out)}
	return nil
}

// runProfile serves purser in this process (serve's wiring) and profiles it under the hot
// budget at the largest caller count.
func (b *benchRun) runProfile(ctx context.Context) error {
	return b.profileOnce(ctx, "", nil)
}

func (b *benchRun) profileOnce(ctx context.Context, variant string, opts []grpc.ServerOption) error {
	callers := slices.Max(b.cfg.callers)
	with := ""
	if variant != "" {
		with = " with " + variant
	}
	b.logf("profile: in-process purser%s, one hot budget, %d callers", with, callers)
	p, err := bench.StartInProc(ctx, b.dbC.URL, int32(b.cfg.hotPoolSize), 8, opts...)
	if err != nil {
		return err
	}
	defer p.Stop()
	t, err := bench.Dial(ctx, p.Addr, b.cfg.conns)
	if err != nil {
		return err
	}
	defer t.Close()
	dir := b.cfg.profileDir
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(b.root, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	name := fmt.Sprintf("purser-hot-%d", callers)
	if variant != "" {
		name += "-variant"
	}
	path := filepath.Join(dir, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var once sync.Once
	var profErr error
	startProf := time.AfterFunc(b.cfg.warmup, func() { profErr = startCPUProfile(f) })
	stopProf := time.AfterFunc(b.cfg.warmup+b.cfg.duration, func() { once.Do(stopCPUProfile) })
	w := b.hotWorkload()
	res := bench.ClosedLoop(ctx, t, w, callers, b.cfg.warmup, b.cfg.duration)
	startProf.Stop()
	stopProf.Stop()
	once.Do(stopCPUProfile)
	if profErr != nil {
		return profErr
	}
	b.logf("  in-process: %.0f Checks/s, p99 %s; profile %s", res.Throughput(), ms(res.Pct(99)), path)
	shares, top, server, err := bench.SummarizeProfile(ctx, path, "side=server")
	if err != nil {
		return err
	}
	_, _, whole, err := bench.SummarizeProfile(ctx, path, "")
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(b.root, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		rel = path
	}
	b.profs = append(b.profs, &profileResult{variant: variant, callers: callers, res: res, path: rel, shares: shares, top: top, serverSec: server, wholeSec: whole})
	return nil
}

type profileResult struct {
	variant             string
	callers             int
	res                 bench.Result
	path                string
	shares              []bench.ProfileShare
	top                 []bench.ProfileFunc
	serverSec, wholeSec float64
}

// The load generators of the open-loop and overload scenarios (-generator).
const (
	generatorH2   = "h2"   // bench.OpenLoopH2: HTTP/2 frames written directly, Checks encoded before the run
	generatorGRPC = "grpc" // grpc-go's client, a goroutine per Check
)

type h2Key struct {
	server  string
	timeout time.Duration
}

// h2Target returns the h2 generator's connections to a server, whose Checks carry timeout
// as grpc-timeout; they are opened once and closed at the end of the run.
func (b *benchRun) h2Target(ctx context.Context, server string, timeout time.Duration) (*bench.H2Target, error) {
	k := h2Key{server, timeout}
	if t := b.h2[k]; t != nil {
		return t, nil
	}
	t, err := bench.DialH2(ctx, b.addrs[server], b.cfg.conns, timeout)
	if err != nil {
		return nil, fmt.Errorf("h2 generator: %w", err)
	}
	if b.h2 == nil {
		b.h2 = map[h2Key]*bench.H2Target{}
	}
	b.h2[k] = t
	b.defer_(t.Close)
	return t, nil
}
