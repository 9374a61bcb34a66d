package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/purser-dev/purser/internal/bench"
)

// render builds the markdown report.
func (b *benchRun) render() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	m := b.machine
	p("# purser-bench\n\n")
	if len(b.cfg.whatIf) > 0 {
		p("> **Experiment, not purser as committed.** purser's bench database was patched before the run (`-whatif %s`):\n", strings.Join(b.cfg.whatIf, ","))
		for _, w := range b.cfg.whatIf {
			p("> - `%s`: %s.\n", w, whatIfs[w].about)
		}
		p("\n")
	}
	p("Run %s UTC, %s, `%s`.\n\n", b.started.UTC().Format("2006-01-02 15:04"), time.Since(b.started).Round(time.Second), commandLine())
	p("**Machine.** %s, %d cores, %s, %s. PostgreSQL %s: synchronous_commit=%s, fsync=%s, wal_sync_method=%s, shared_buffers=%s, commit_delay=%s.",
		m.CPU, m.Cores, m.Kernel, m.GoVersion, m.Postgres, m.Settings["synchronous_commit"], m.Settings["fsync"],
		m.Settings["wal_sync_method"], m.Settings["shared_buffers"], m.Settings["commit_delay"])
	if m.Fdatasync > 0 {
		p(" fdatasync of 8 KiB: %s median (%s).", msf(m.Fdatasync), m.FsyncWhere)
	}
	p(" autovacuum=%s", b.serverAutovacuum)
	if len(b.av) > 0 {
		var an, va int64
		for _, a := range b.av {
			an += a.Analyzes.Load()
			va += a.Vacuums.Load()
		}
		p(" (emulated on the bench databases by the bench with the server's thresholds, cost limits and naptime %s: %d ANALYZE, %d VACUUM)", b.av[0].Interval(), an, va)
	} else if b.serverAutovacuum == "off" {
		p(" (**not emulated**: tables are never analyzed, plans cached while they were small stay)")
	}
	p(". Load average at start %s, at end %s.\n\n", m.LoadAvg, bench.LoadAvg())
	p("The load generator, the in-process baselines, the purser subprocess and Postgres share these cores with whatever else runs on the machine (the *other load* column: cores used by other processes during each measured window). Absolute numbers drift with that load; the ratios compare runs of the same minutes.\n\n")
	p("**Servers.** *allow-all*: an Authorization server that answers OK without looking at the request (the ceiling of the gRPC path); it and *original* are served in the bench process with `purser serve`'s gRPC options and codec (`bench.NewGRPCServer`). *original*: the original service's strategy on purser's schema: per request one transaction — `SELECT … FOR UPDATE` of the budget window row (budget-id order; each request here has one applicable budget, so the order changes nothing), check `posted + pending + amount <= limit`, `UPDATE` pending, `INSERT` the reservation and its hold, `COMMIT`; pool of %d connections; purser's parser, key lookup, price catalog and bound around it. *purser*: the `purser serve` binary built from ./cmd/purser, `-hot-pool-size %d`, default batcher (four lanes on disjoint budgets, batches up to 512). Each server has its own fresh database; each is driven over %d HTTP/2 connections with the fixtures %s, every request with its own x-request-id and stream id; the generator encodes with the same codec (go-control-plane's generated marshallers), the cheapest client it can be on shared cores.\n\n",
		b.cfg.originalPool, b.cfg.hotPoolSize, b.cfg.conns, fixtureNames(b.templates))
	p("Each ledger starts with %s settled reservations of history (then `ANALYZE`), as a ledger in service would. Each load run: %s warm-up, then %s measured.\n\n", thousands(float64(b.cfg.history)), b.cfg.warmup, b.cfg.duration)

	if len(b.closed) > 0 {
		p("## Closed loop\n\n")
		p("| workload | callers | server | Checks/s | p50 | p99 | > 200 ms | not OK | purser ÷ allow-all | purser ÷ original | avg batch | SQL per batch | other load |\n")
		p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range b.closed {
			ratioA, ratioB := "", ""
			if r.server == purser {
				if a := b.closedOf(r.scenario, r.callers, allowAll); a != nil && a.st.res.Throughput() > 0 {
					ratioA = fmt.Sprintf("**%.0f%%**", 100*r.st.res.Throughput()/a.st.res.Throughput())
				}
				if o := b.closedOf(r.scenario, r.callers, original); o != nil && o.st.res.Throughput() > 0 {
					ratioB = fmt.Sprintf("**%.1f×**", r.st.res.Throughput()/o.st.res.Throughput())
				}
			}
			p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |\n", r.scenario, r.callers, r.server,
				thousands(r.st.res.Throughput()), msf(r.st.res.Pct(50)), msf(r.st.res.Pct(99)),
				pct(r.st.res.Over(200*time.Millisecond), r.st.res.Calls), notOK(r.st.res), ratioA, ratioB, batchCell(r.server, r.st.batch), fnCell(r.st), r.st.cpu.Other())
		}
		p("\n")
	}

	if len(b.open) > 0 {
		p("## Open loop (one hot budget; latency from the intended send time)\n\n")
		p("| offered | server | achieved | p50 | p99 | p99.9 | max | generator lag p99 | not OK | avg batch | SQL per batch | other load |\n")
		p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range b.open {
			p("| %s/s | %s | %s/s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |\n", thousands(r.rate), r.server, thousands(r.st.res.Throughput()),
				msf(r.st.res.Pct(50)), msf(r.st.res.Pct(99)), msf(r.st.res.Pct(99.9)), msf(r.st.res.Pct(100)),
				msf(bench.Percentile(r.st.res.GenLag, 99)), notOK(r.st.res), batchCell(r.server, r.st.batch), fnCell(r.st), r.st.cpu.Other())
		}
		p("\n*Generator lag* is how late the generator itself fired requests (it shares the cores); it is included in the latencies, for both servers alike. %s\n\n", generatorNote(b.cfg.generator))
	}

	if s := b.settle; s != nil {
		p("## Settlement (purser's StreamAccessLogs, end-of-stream entries with usage)\n\n")
		p("| entries | streams × entries/message | settled/s | settled in the ledger | avg entries per purser_settle | dropped by the sink | lag p50 (paced %s/s) | lag p99 | lag max | other load |\n", thousands(float64(s.lagRate)))
		p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		avg := "n/a"
		if s.batches > 0 {
			avg = fmt.Sprintf("%.0f", float64(s.n)/float64(s.batches))
		}
		p("| %s | %d × %d | **%s** | %d / %d | %s | %.0f | %s | %s | %s | %.2f |\n\n", thousands(float64(s.n)), s.streams, s.perMsg,
			thousands(s.rate()), s.settledDB, s.n, avg, s.dropped, msf(bench.Percentile(s.lag, 50)), msf(bench.Percentile(s.lag, 99)),
			msf(bench.Percentile(s.lag, 100)), s.cpu.Other())
		p("Throughput: first entry sent until purser's settlement counter showed all %s settled (polled every 25 ms), with at most %s entries in flight so the sink's 65,536-entry queue never drops; the ledger was then checked row by row. Lag: a separate run paced at %s entries/s (%s entries), from the moment an entry was written to its stream to the start of the transaction that settled it (`resolved_at`, same machine clock). Reservations were seeded directly in the ledger (same rows as `purser_reserve` writes) on the Zipf budgets.\n\n",
			thousands(float64(s.n)), thousands(settleWindow), thousands(float64(s.lagRate)), thousands(float64(s.lagN)))
	}

	if len(b.bursts) > 0 {
		p("## Overspend (hard budget with room for exactly K requests, 10×K concurrent Checks)\n\n")
		p("| server | -check-timeout | K | Checks fired | admitted | denied (429) | failed | hold per request | limit | window at end (posted+pending) | max seen during burst | overspend | `purser verify` |\n")
		p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range b.bursts {
			p("| %s | %s | %s | %s | **%s** | %s | %s | %d µUSD | %d | %d | %d (%d samples) | **%d** | exit %d |\n",
				r.label, r.checkTimeout, thousands(float64(r.k)), thousands(float64(r.n)), thousands(float64(r.br.OK)), thousands(float64(r.br.Denied)),
				thousands(float64(r.br.Failed)), r.cost, r.limit, r.final, r.maxSeen, r.samples, r.overspend(), r.verifyCode)
		}
		p("\nLimit = K × hold + (hold − 1): K requests fit, K+1 do not. All 10×K Checks are released at once over %d connections. A Check that misses its deadline is answered with a gRPC error (Envoy: `status_on_error`) and the batcher voids its hold if the batch admitted it, so with the default deadline *admitted* can be below K while the budget briefly held more (the *max seen* column: the window polled every millisecond during the burst). The second process (same database, same binary) only has a longer deadline, to judge admission exactness apart from deadline misses. ", b.cfg.conns)
		for _, r := range b.bursts {
			p("%s: burst wall time %s, Check p99 %s, %d reservations left holding on the budget", r.label, r.br.Elapsed.Round(time.Millisecond), msf(bench.Percentile(r.br.Lat, 99)), r.pendingRes)
			if r.br.FirstErr != nil {
				p(", first error `%v`", r.br.FirstErr)
			}
			p(". ")
		}
		p("`purser verify` reconciles the whole bench ledger (every scenario's reservations).\n\n")
	}

	b.renderStorm(p)     // storm.go
	b.renderReplicas(p)  // replicas.go
	b.renderPartition(p) // partition.go
	b.renderStress(p)    // stress.go
	b.renderTargets(p)
	b.renderCPU(p)
	b.renderProfile(p)

	p("## Notes\n\n")
	if b.batchOK {
		p("- Average batch = reservation decisions (`purser_reservations_total`, all outcomes, from purser's /metrics) ÷ calls of `purser_reserve` (`pg_stat_user_functions`; `track_functions = 'pl'` is set on the bench database only). In production the same figure is purser's own histogram `purser_reservation_batch_size` (`_sum` ÷ `_count` on /metrics). *SQL per batch* is the mean execution time of one `purser_reserve` call inside Postgres (`pg_stat_user_functions.total_time`; the commit and its WAL flush come after it).\n")
	}
	p("- *not OK* = denied or failed Checks; *> 200 ms* = share of Checks slower than Envoy's default ext_authz timeout, which Envoy would have failed (`status_on_error`).\n")
	p("- The purser database keeps every reservation the scenarios made (pending until they expire 15 minutes later), so later scenarios run on a larger reservations table; the original's database likewise.\n")
	if v := b.verifyB; v != nil {
		p("- `purser verify` on the original strategy's ledger: exit %d (it writes the same rows, so it must reconcile too).\n", v.code)
	}
	for _, n := range b.notes {
		p("- %s\n", n)
	}
	return w.String()
}

func (b *benchRun) closedOf(scenario string, callers int, server string) *closedRow {
	for i := range b.closed {
		r := &b.closed[i]
		if r.scenario == scenario && r.callers == callers && r.server == server {
			return r
		}
	}
	return nil
}

func (b *benchRun) openOf(rate float64, server string) *openRow {
	for i := range b.open {
		if b.open[i].rate == rate && b.open[i].server == server {
			return &b.open[i]
		}
	}
	return nil
}

func (b *benchRun) renderTargets(p func(string, ...any)) {
	type target struct{ what, measured, status string }
	var ts []target
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**short**"
	}
	hot := "one hot budget"
	if a, o, c := b.closedOf(hot, 256, allowAll), b.closedOf(hot, 256, original), b.closedOf(hot, 256, purser); c != nil {
		if a != nil && a.st.res.Throughput() > 0 {
			r := c.st.res.Throughput() / a.st.res.Throughput()
			ts = append(ts, target{"purser ≥ 50% of allow-all (hot budget, 256 callers)", fmt.Sprintf("%.0f%%", 100*r), verdict(r >= 0.5)})
		}
		if o != nil && o.st.res.Throughput() > 0 {
			r := c.st.res.Throughput() / o.st.res.Throughput()
			ts = append(ts, target{"purser ≥ 10× the original strategy (hot budget, 256 callers)", fmt.Sprintf("%.1f×", r), verdict(r >= 10)})
		}
	}
	if c := b.openOf(5000, purser); c != nil {
		p99 := c.st.res.Pct(99)
		ts = append(ts, target{"open-loop p99 ≤ 5 ms at 5,000 Checks/s", msf(p99), verdict(p99 <= 5*time.Millisecond && c.st.res.Failed == 0)})
	}
	if len(b.bursts) > 0 {
		var over int64
		var parts []string
		ok := true
		for _, r := range b.bursts {
			over = max(over, r.overspend())
			ok = ok && r.verifyCode == 0
			parts = append(parts, fmt.Sprintf("%s (-check-timeout %s): %d admitted of K=%d, %d failed", r.label, r.checkTimeout, r.br.OK, r.k, r.br.Failed))
		}
		last := b.bursts[len(b.bursts)-1]
		ok = ok && over == 0 && last.exact()
		ts = append(ts, target{"zero overspend; exactly K admitted; verify exit 0",
			fmt.Sprintf("overspend %d; %s; verify exit %d", over, strings.Join(parts, "; "), last.verifyCode), verdict(ok)})
	}
	if r := b.storm; r != nil {
		ts = append(ts, target{"storm: exactly K admitted, 0 errors, zero overspend",
			fmt.Sprintf("burst %d admitted of K=%d, %d failed (10s deadline: %d admitted, %d failed); storm %d admitted, %d failed, %.0f%% of allow-all from memory; overspend %d",
				r.burst.OK, r.k, r.burst.Failed, r.relaxed.OK, r.relaxed.Failed, r.storm.OK, r.storm.Failed, 100*r.storm.Throughput()/max(r.ceiling.Throughput(), 1), r.overspend()),
			verdict(r.burst.OK == r.k && r.burst.Failed == 0 && r.relaxed.OK == r.k && r.relaxed.Failed == 0 && r.storm.OK == 0 && r.storm.Failed == 0 && r.overspend() == 0)})
	}
	if s := b.settle; s != nil {
		ts = append(ts, target{"settlement ≥ 20,000 entries/s", thousands(s.rate()) + "/s", verdict(s.rate() >= 20000 && s.settledDB == s.n)})
	}
	if len(ts) == 0 {
		return
	}
	p("## Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, t := range ts {
		p("| %s | %s | %s |\n", t.what, t.measured, t.status)
	}
	p("\n")
}

func (b *benchRun) renderCPU(p func(string, ...any)) {
	if len(b.closed) == 0 && len(b.open) == 0 {
		return
	}
	p("## Where the CPU goes (CPU ms per 1,000 Checks over the measured window)\n\n")
	p("| run | server | purser process | Postgres backends | bench process (load generator + in-process servers) | purser key lookups sent to the database | cache-purging notifications | database backends, sampled every 100 ms |\n")
	p("|---|---|---:|---:|---:|---:|---:|---|\n")
	per1k := func(d time.Duration, calls int) string {
		if calls == 0 {
			return ""
		}
		return fmt.Sprintf("%.0f", float64(d.Milliseconds())*1000/float64(calls))
	}
	row := func(name, server string, st runStats) {
		srv := ""
		if server == purser {
			srv = per1k(st.cpu.Server, st.res.Calls)
		}
		db := ""
		if server != allowAll {
			db = per1k(st.cpu.DB, st.res.Calls)
		}
		lookups, notes := "", ""
		if server == purser {
			if st.decisions > 0 {
				lookups = fmt.Sprintf("%.0f per 1,000", st.keyLookups*1000/st.decisions)
			}
			notes = fmt.Sprint(st.notifies)
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", name, server, srv, db, per1k(st.cpu.Self, st.res.Calls), lookups, notes, waitsCell(st.waits))
	}
	for _, r := range b.closed {
		row(fmt.Sprintf("%s, %d callers", r.scenario, r.callers), r.server, r.st)
	}
	for _, r := range b.open {
		row(fmt.Sprintf("open loop %s/s", thousands(r.rate)), r.server, r.st)
	}
	if s := b.settle; s != nil && s.n > 0 {
		p("| settlement, per 1,000 entries | purser | %s | %s | %s | | | |\n", per1k(s.cpu.Server, s.n), per1k(s.cpu.DB, s.n), per1k(s.cpu.Self, s.n))
	}
	p("\nKey lookups and notifications count the whole run of each purser row (warm-up included; lookups per 1,000 reservation decisions); a key lookup goes to the database when purser's key cache misses, and every purser_changes notification purges the key and budget caches of every replica.\n\n")
}

func (b *benchRun) renderProfile(p func(string, ...any)) {
	for _, pr := range b.profs {
		variant := ""
		if pr.variant != "" {
			variant = ", with " + pr.variant
		}
		p("## Profile: in-process purser%s, one hot budget, %d callers\n\n", variant, pr.callers)
		p("purser's packages wired as `purser serve` wires them, in the bench process, their goroutines labelled `side=server` (`%s`; `go tool pprof -tagfocus=side=server`). Throughput in this configuration: %s Checks/s, p99 %s. Server goroutines: %.2f s of CPU over %s, %.0f µs per Check, out of %.2f s for the whole process (the rest is the load generator and background GC).\n\n",
			pr.path, thousands(pr.res.Throughput()), msf(pr.res.Pct(99)), pr.serverSec, b.cfg.duration, 1e6*pr.serverSec/float64(max(pr.res.Calls, 1)), pr.wholeSec)
		p("| flat CPU of server goroutines, by package | share |\n|---|---:|\n")
		for _, s := range pr.shares {
			if s.Percent < 0.5 {
				continue
			}
			p("| %s | %.1f%% |\n", s.Category, s.Percent)
		}
		p("\n| function (cumulative, server goroutines) | cum | share of server CPU |\n|---|---:|---:|\n")
		for _, f := range pr.top {
			p("| `%s` | %.2f s | %.1f%% |\n", f.Name, f.Cum, 100*f.Cum/pr.serverSec)
		}
		p("\n")
	}
}

func waitsCell(ws []share) string {
	var parts []string
	for i, w := range ws {
		if i == 4 || w.pct < 2 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.0f%%", w.what, w.pct))
	}
	return strings.Join(parts, ", ")
}

func batchCell(server string, avg float64) string {
	switch {
	case server == original:
		return "1"
	case server != purser:
		return ""
	case avg <= 0:
		return "n/a"
	}
	return fmt.Sprintf("%.1f", avg)
}

// fnCell is the mean execution time of one purser_reserve call (its commit excluded).
func fnCell(st runStats) string {
	if st.fnAvg <= 0 {
		return ""
	}
	return msf(st.fnAvg)
}

func notOK(r bench.Result) string {
	n := r.Denied + r.Failed
	if n == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%d denied, %d failed)", n, r.Denied, r.Failed)
}

func pct(n, of int) string {
	if of == 0 || n == 0 {
		return "0"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

func msf(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// thousands formats a number with thousands separators, no decimals.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fixtureNames(ts []*bench.CheckTemplate) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = "`" + t.Name + "`"
	}
	return strings.Join(names, ", ")
}

func commandLine() string {
	args := strings.Join(os.Args[1:], " ")
	if args == "" {
		return "go run ./cmd/purser-bench"
	}
	return "go run ./cmd/purser-bench " + args
}

// generatorNote says which load generator drove the open-loop and overload scenarios.
func generatorNote(g string) string {
	if g == generatorGRPC {
		return "Generator: grpc-go's client, a goroutine per Check (`-generator grpc`)."
	}
	return "Generator: `bench.OpenLoopH2` (`-generator h2`, the default), which writes gRPC's HTTP/2 frames itself as Envoy's C++ client does: every Check is encoded before the run, its header block once per target, and a timer loop writes all Checks due at each millisecond's tick and flushes once; one reader per connection parses the answers. It honours the server's stream limit (Checks beyond it queue in the generator), flow-control windows and frame size, and costs about half of grpc-go's client per Check, CPU taken from the servers it measures on these shared cores."
}
