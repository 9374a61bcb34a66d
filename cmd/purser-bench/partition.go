package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/internal/bench"
)

// The partition scenario measures the prototype of docs/capacity.md: budgets split by subject
// over two databases (two ledgers), and what a request whose budgets live on both costs
// (two-phase: hold on each, void the held ones if one denies), against the same requests on
// one database. It runs the ledger in this process (budget.Service and budget.Batcher, the
// code purser serve runs), without gRPC, so the modes differ only in the ledger path.

// partitionCost is every request's hold in micro-USD.
const partitionCost = 1000

type partitionRow struct {
	mode    string
	callers int
	res     bench.Result
	voids   int64
	other   float64
}

type partitionBurst struct {
	mode              string
	k, fired          int
	admitted, denied  int
	failed            int
	voids             int64
	pendingA, voidedA int
	wantPendingA      int
	verifyA, verifyB  bool
	windowB, limitB   int64
	elapsed           time.Duration
	firstErr          error
}

type partitionResult struct {
	rows   []partitionRow
	bursts []partitionBurst
	teams  int
}

type ledger struct {
	db      *bench.Database
	hot, q  *pgxpool.Pool
	svc     *budget.Service
	batcher *budget.Batcher
}

func (b *benchRun) openLedger(ctx context.Context, adminURL string) (*ledger, error) {
	d, err := bench.CreateDatabase(ctx, adminURL)
	if err != nil {
		return nil, err
	}
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
	l := &ledger{db: d}
	// The pools purser serve opens: a small one for reserving and settling, one for the rest.
	if l.hot, err = d.Open(ctx, int32(b.cfg.hotPoolSize)); err != nil {
		return nil, err
	}
	b.defer_(l.hot.Close)
	if l.q, err = d.Open(ctx, 8); err != nil {
		return nil, err
	}
	b.defer_(l.q.Close)
	if err := bench.Migrate(ctx, l.q); err != nil {
		return nil, err
	}
	l.svc = budget.New(store.New(l.hot), store.New(l.q), budget.Config{})
	l.batcher = budget.NewBatcher(l.svc, budget.BatcherConfig{})
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { l.batcher.Run(bctx); close(done) }()
	b.defer_(func() { cancel(); <-done })
	return l, nil
}

func (b *benchRun) runPartition(ctx context.Context) error {
	adminURL := b.cfg.adminURL
	if adminURL == "" {
		adminURL = bench.AdminURL()
	}
	b.logf("partition: creating two ledgers")
	A, err := b.openLedger(ctx, adminURL)
	if err != nil {
		return err
	}
	B, err := b.openLedger(ctx, adminURL)
	if err != nil {
		return err
	}
	teams := b.cfg.zipfBudgets
	team := func(i int) budget.Subject { return budget.Subject(fmt.Sprintf("team:p%04d", i)) }
	// Teams alternate between the partitions; org:shared (every request's second budget) is
	// on B. A also holds every budget, for the one-database baseline.
	var onA, onB []bench.SeedBudget
	for i := range teams {
		sb := bench.SeedBudget{Name: "team monthly", Subject: string(team(i)), Limit: 1e15}
		onA = append(onA, sb)
		if i%2 == 1 {
			onB = append(onB, sb)
		}
	}
	shared := bench.SeedBudget{Name: "org monthly", Subject: "org:shared", Limit: 1e15}
	onA, onB = append(onA, shared), append(onB, shared)
	if _, err := bench.InsertBudgets(ctx, A.q, onA); err != nil {
		return err
	}
	if _, err := bench.InsertBudgets(ctx, B.q, onB); err != nil {
		return err
	}
	partOf := func(s budget.Subject) int {
		if s == "org:shared" || s == "org:burst" {
			return 1
		}
		var i int
		if _, err := fmt.Sscanf(string(s), "team:p%04d", &i); err == nil && i%2 == 1 {
			return 1
		}
		return 0
	}
	one := &bench.Partitioned{Parts: []*budget.Batcher{A.batcher}, Svcs: []*budget.Service{A.svc}, Of: func(budget.Subject) int { return 0 }}
	seq := &bench.Partitioned{Parts: []*budget.Batcher{A.batcher, B.batcher}, Svcs: []*budget.Service{A.svc, B.svc}, Of: partOf}
	par := &bench.Partitioned{Parts: seq.Parts, Svcs: seq.Svcs, Of: partOf, Parallel: true}
	zipf := bench.NewZipf(teams, b.cfg.zipfS)
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	pfx := hex.EncodeToString(prefix[:])
	var seqN atomic.Int64
	request := func(r *mrand.Rand, subjects ...budget.Subject) budget.ReserveRequest {
		return budget.ReserveRequest{Subjects: subjects, Cost: partitionCost, Tokens: 100, Provider: "openai", Target: budget.Target{Model: "gpt-4o-mini"},
			RequestID: pfx + "-" + strconv.FormatInt(seqN.Add(1), 10)}
	}
	modes := []struct {
		name string
		p    *bench.Partitioned
		req  func(r *mrand.Rand) budget.ReserveRequest
	}{
		{"one database: team + org budget (one reservation, two holds)", one, func(r *mrand.Rand) budget.ReserveRequest {
			return request(r, team(zipf.Pick(r)), "org:shared")
		}},
		{"two databases: team budget only (each request on its team's partition)", seq, func(r *mrand.Rand) budget.ReserveRequest {
			return request(r, team(zipf.Pick(r)))
		}},
		{"two databases: team + org on different partitions, sequential (hold A, then B)", seq, func(r *mrand.Rand) budget.ReserveRequest {
			return request(r, team(2*(zipf.Pick(r)/2)), "org:shared") // an even team: on A, org on B
		}},
		{"two databases: team + org on different partitions, parallel (A and B at once)", par, func(r *mrand.Rand) budget.ReserveRequest {
			return request(r, team(2*(zipf.Pick(r)/2)), "org:shared")
		}},
	}
	pr := &partitionResult{teams: teams}
	for _, callers := range b.cfg.callers {
		for _, m := range modes {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.logf("partition: %s, %d callers", m.name, callers)
			var voids atomic.Int64
			cpu0 := bench.TakeCPU(0, nil)
			res := bench.ClosedLoopFunc(ctx, callers, b.cfg.warmup, b.cfg.duration, func(ctx context.Context, _ int, r *mrand.Rand) (bench.Outcome, error) {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				out, err := m.p.Reserve(cctx, m.req(r))
				voids.Add(int64(out.Voided))
				switch {
				case err != nil:
					return bench.Failed, err
				case out.Admitted:
					return bench.OK, nil
				default:
					return bench.Denied, nil
				}
			})
			use := bench.TakeCPU(0, nil).Sub(cpu0)
			row := partitionRow{mode: m.name, callers: callers, res: res, voids: voids.Load()}
			if use.Wall > 0 {
				row.other = max(0, (use.Machine-use.Self).Seconds()/use.Wall.Seconds())
			}
			b.logf("  %.0f requests admitted/s, p50 %s, p99 %s, failed %d, compensating voids %d", float64(res.OK)/res.Elapsed.Seconds(),
				ms(res.Pct(50)), ms(res.Pct(99)), res.Failed, row.voids)
			pr.rows = append(pr.rows, row)
			sleep(ctx, b.cfg.cooldown)
		}
	}

	// Compensation: org:burst on B has room for exactly K requests; 10×K cross-partition
	// requests at once must admit exactly K end to end and leave on A exactly K pending holds
	// (every other hold A made voided), both ledgers reconciling.
	k := min(b.cfg.burstK, 200)
	for _, m := range []struct {
		name string
		p    *bench.Partitioned
	}{{"sequential", seq}, {"parallel", par}} {
		limit := int64(k)*partitionCost + partitionCost - 1
		if _, err := B.q.Exec(ctx, `UPDATE budgets SET deleted_at = now() WHERE subject = 'org:burst' AND deleted_at IS NULL`); err != nil {
			return err
		}
		B.svc.Invalidate()
		ids, err := bench.InsertBudgets(ctx, B.q, []bench.SeedBudget{{Name: "org burst", Subject: "org:burst", Limit: limit}})
		if err != nil {
			return err
		}
		burstPfx := fmt.Sprintf("burst-%s-%s-", pfx, m.name)
		n := 10 * k
		b.logf("partition: compensation burst (%s): room for %d on B, %d requests at once", m.name, k, n)
		br := partitionBurst{mode: m.name, k: k, fired: n, limitB: limit}
		var mu sync.Mutex
		var wg sync.WaitGroup
		gate := make(chan struct{})
		var voids atomic.Int64
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				defer cancel()
				req := budget.ReserveRequest{Subjects: []budget.Subject{team(2 * (i % (teams / 2))), "org:burst"}, Cost: partitionCost,
					Tokens: 100, Provider: "openai", Target: budget.Target{Model: "gpt-4o-mini"}, RequestID: burstPfx + strconv.Itoa(i)}
				out, err := m.p.Reserve(cctx, req)
				voids.Add(int64(out.Voided))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					br.failed++
					if br.firstErr == nil {
						br.firstErr = err
					}
				case out.Admitted:
					br.admitted++
				default:
					br.denied++
				}
			}()
		}
		t0 := time.Now()
		close(gate)
		wg.Wait()
		br.elapsed = time.Since(t0)
		br.voids = voids.Load()
		if err := A.q.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'voided')
			FROM reservations WHERE request_id LIKE $1 || '%'`, burstPfx).Scan(&br.pendingA, &br.voidedA); err != nil {
			return err
		}
		br.wantPendingA = br.admitted
		if err := B.q.QueryRow(ctx, `SELECT coalesce(sum(posted + pending), 0)::bigint FROM budget_windows WHERE budget_id = $1`, ids[0]).Scan(&br.windowB); err != nil {
			return err
		}
		for _, l := range []struct {
			svc *budget.Service
			ok  *bool
		}{{A.svc, &br.verifyA}, {B.svc, &br.verifyB}} {
			rep, err := l.svc.Verify(ctx)
			if err != nil {
				return err
			}
			*l.ok = rep.Clean()
		}
		b.logf("  admitted %d of %d (room %d), denied %d, failed %d, compensating voids %d; A: %d pending, %d voided; verify A %v, B %v",
			br.admitted, n, k, br.denied, br.failed, br.voids, br.pendingA, br.voidedA, br.verifyA, br.verifyB)
		pr.bursts = append(pr.bursts, br)
	}
	b.partition = pr
	return nil
}

func (b *benchRun) renderPartition(p func(string, ...any)) {
	pr := b.partition
	if pr == nil {
		return
	}
	p("## Partitioning prototype: budgets on two databases\n\n")
	p("The ledger code of `purser serve` (`budget.Service` and one `budget.Batcher` per database, `-hot-pool-size %d` pools) in the bench process, no gRPC: %d team budgets (Zipf s=%.1f) and one org budget every request also touches; %d µUSD held per request. *One database*: both budgets in one ledger, one reservation with two holds (purser today). *Two databases*: teams alternate between ledgers A and B, the org budget is on B; a request touching both holds on each (`bench.Partitioned`: sequential = A, then B only if A admitted; parallel = both at once) and voids what it held if the other denies. Both databases are on the same server and cores here.\n\n",
		b.cfg.hotPoolSize, pr.teams, b.cfg.zipfS, partitionCost)
	p("| mode | callers | requests admitted/s | vs one database | p50 | p99 | not OK | compensating voids | other load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range pr.rows {
		rate := float64(r.res.OK) / r.res.Elapsed.Seconds()
		vs := ""
		if base := pr.rows[slices.IndexFunc(pr.rows, func(o partitionRow) bool { return o.callers == r.callers })]; base.res.OK > 0 {
			vs = fmt.Sprintf("%.2f×", rate/(float64(base.res.OK)/base.res.Elapsed.Seconds()))
		}
		p("| %s | %d | **%s** | %s | %s | %s | %s | %d | %.2f |\n", r.mode, r.callers, thousands(rate), vs, msf(r.res.Pct(50)), msf(r.res.Pct(99)), notOK(r.res), r.voids, r.other)
	}
	if len(pr.bursts) > 0 {
		p("\n**Compensation.** The org budget on B has room for exactly K requests; 10×K cross-partition requests are released at once.\n\n")
		p("| mode | K | fired | admitted | denied | failed | compensating voids on A | A: pending / voided | B window (posted+pending) / limit | verify A, B | wall time |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range pr.bursts {
			verdict := "clean, clean"
			if !r.verifyA || !r.verifyB {
				verdict = fmt.Sprintf("**A %v, B %v**", r.verifyA, r.verifyB)
			}
			p("| %s | %d | %d | **%d** | %d | %d | %d | %d / %d (want %d pending) | %d / %d | %s | %s |\n", r.mode, r.k, r.fired, r.admitted, r.denied, r.failed, r.voids,
				r.pendingA, r.voidedA, r.wantPendingA, r.windowB, r.limitB, verdict, r.elapsed.Round(time.Millisecond))
		}
	}
	p("\n")
}
