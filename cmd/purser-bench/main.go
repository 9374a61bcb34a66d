// Command purser-bench measures purser's Check throughput and latency, its settlement
// throughput and its overspend against two baselines measured in the same run on the same
// machine: an allow-all Authorization server (the ceiling of the gRPC path) and the original
// service's per-request transaction strategy. It prints a markdown table on stdout (and
// writes it to bench/latest.md); progress goes to stderr.
//
//	go run ./cmd/purser-bench                      # everything (~3-4 minutes)
//	go run ./cmd/purser-bench -only hot,burst -duration 3s
//	go run ./cmd/purser-bench -only hot -callers 256 -profile=false
//	go run ./cmd/purser-bench -only storm -profile=false   # exhausted-budget storm (seconds)
//
// It needs a PostgreSQL superuser on $DATABASE_URL's server (default the local trust-auth
// server): it creates purser_bench_<random> databases and drops them at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "purser-bench:", err)
		}
		os.Exit(1)
	}
}

// scenarios, in the order they run.
var allScenarios = []string{"hot", "zipf", "open", "settle", "burst", "storm", "replicas", "partition", "noisy", "overload"}

type config struct {
	duration, warmup, cooldown time.Duration
	only                       map[string]bool
	callers                    []int
	rates                      []float64
	conns                      int
	generator                  string
	hotKeys                    int
	zipfBudgets                int
	zipfS                      float64
	settleN, settleLagRate     int
	settleLagFor               time.Duration
	burstK                     int
	stormK                     int
	overloadRate               float64
	generatorNice              int
	hotPoolSize                int
	originalPool               int
	adminURL                   string
	out                        string
	profile                    bool
	profileDir                 string
	keep                       bool
	verbose                    bool
	autovacuum                 string
	whatIf                     []string
	history                    int
	replicaCounts              []int // the replicas scenario: purser processes per run
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("purser-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	only := fs.String("only", strings.Join(allScenarios, ","), "scenarios to run, comma separated: "+strings.Join(allScenarios, ", "))
	callers := fs.String("callers", "64,256", "closed-loop concurrent callers, comma separated")
	rates := fs.String("rates", "1000,5000", "open-loop rates in Checks/s, comma separated")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measured time of each load run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up before each load run")
	fs.DurationVar(&c.cooldown, "cooldown", 1100*time.Millisecond, "pause after each run (lets Postgres publish function statistics)")
	fs.IntVar(&c.conns, "conns", 4, "HTTP/2 connections per server")
	fs.StringVar(&c.generator, "generator", generatorH2, "load generator of the open-loop and overload scenarios: h2 (HTTP/2 frames written directly, as cheap as the generator can be on shared cores) or grpc (grpc-go's client)")
	fs.IntVar(&c.hotKeys, "hot-keys", 16, "API keys sharing the hot team budget")
	fs.IntVar(&c.zipfBudgets, "zipf-budgets", 1000, "budgets (one team and one key each) in the Zipf scenario")
	fs.Float64Var(&c.zipfS, "zipf-s", 1.1, "Zipf exponent")
	fs.IntVar(&c.settleN, "settle-n", 100_000, "access-log entries in the settlement throughput run")
	fs.IntVar(&c.settleLagRate, "settle-lag-rate", 5000, "entries/s of the paced settlement-lag run")
	fs.DurationVar(&c.settleLagFor, "settle-lag-for", 3*time.Second, "length of the paced settlement-lag run")
	fs.IntVar(&c.burstK, "burst-k", 1000, "overspend check: the hard budget has room for exactly K requests; 10×K are fired at once")
	fs.Float64Var(&c.overloadRate, "overload-capacity", 0, "overload scenario: offer multiples of this many Checks/s instead of the capacity measured first (to compare branches at the same offered load)")
	fs.IntVar(&c.generatorNice, "generator-nice", 0, "overload scenario: the load generator's nice value (negative: above purser and Postgres; needs CAP_SYS_NICE)")
	fs.IntVar(&c.stormK, "storm-k", 1000, "exhausted-budget storm: room for exactly K requests; 10×K Checks at once, then a closed-loop storm on the exhausted budget")
	fs.IntVar(&c.hotPoolSize, "hot-pool-size", 4, "purser -hot-pool-size")
	fs.IntVar(&c.originalPool, "original-pool", 16, "connections of the original strategy's pool")
	fs.StringVar(&c.adminURL, "admin-url", "", "maintenance database URL (default: $DATABASE_URL's server, database postgres)")
	fs.StringVar(&c.out, "out", "bench/latest.md", "also write the table here (relative to the repository root; empty: don't)")
	fs.BoolVar(&c.profile, "profile", true, "also profile an in-process purser (same wiring as serve) under the hot-budget load at the largest caller count")
	fs.StringVar(&c.profileDir, "profile-dir", "bench/profiles", "where -profile writes CPU profiles (relative to the repository root)")
	fs.BoolVar(&c.keep, "keep", false, "keep the databases (for inspection)")
	fs.IntVar(&c.history, "history", 100_000, "settled reservations each ledger holds before the run (then ANALYZE): a ledger in service, not an empty one")
	whatIf := fs.String("whatif", "", "experiments on purser's bench database only, comma separated ("+whatIfNames()+"): measure what a suggested fix buys; the report says so at the top")
	fs.StringVar(&c.autovacuum, "autovacuum", "auto", "emulate autovacuum (ANALYZE/VACUUM at the server's thresholds) on the bench databases: auto (when the server has autovacuum=off), on, off")
	fs.BoolVar(&c.verbose, "v", false, "stream purser's log to stderr")
	replicaCounts := fs.String("replica-counts", "1,2,3", "the replicas scenario: purser processes sharing the database, comma separated")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	rc, err := positiveInts("-replica-counts", *replicaCounts)
	if err != nil {
		return c, err
	}
	c.replicaCounts = rc
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	c.only = map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		known := false
		for _, a := range allScenarios {
			known = known || a == s
		}
		if !known {
			return c, fmt.Errorf("-only: unknown scenario %q (want %s)", s, strings.Join(allScenarios, ", "))
		}
		c.only[s] = true
	}
	for _, s := range strings.Split(*callers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return c, fmt.Errorf("-callers: %q is not a positive integer", s)
		}
		c.callers = append(c.callers, n)
	}
	for _, s := range strings.Split(*rates, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || r <= 0 {
			return c, fmt.Errorf("-rates: %q is not a positive rate", s)
		}
		c.rates = append(c.rates, r)
	}
	if c.duration < 500*time.Millisecond || c.warmup < 0 {
		return c, fmt.Errorf("-duration must be at least 500ms and -warmup not negative")
	}
	for _, w := range strings.Split(*whatIf, ",") {
		if w = strings.TrimSpace(w); w != "" {
			if _, ok := whatIfs[w]; !ok {
				return c, fmt.Errorf("-whatif: unknown experiment %q (known: %s)", w, whatIfNames())
			}
			c.whatIf = append(c.whatIf, w)
		}
	}
	switch c.autovacuum {
	case "auto", "on", "off":
	default:
		return c, fmt.Errorf("-autovacuum: want auto, on or off")
	}
	if c.generator != generatorH2 && c.generator != generatorGRPC {
		return c, fmt.Errorf("-generator %q: want %s or %s", c.generator, generatorH2, generatorGRPC)
	}
	if c.burstK < 1 || c.stormK < 1 || c.settleN < 1 || c.zipfBudgets < 2 || c.hotKeys < 1 || c.conns < 1 {
		return c, fmt.Errorf("-burst-k, -settle-n, -hot-keys, -conns must be positive and -zipf-budgets at least 2")
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	b := &benchRun{cfg: cfg, stderr: stderr, started: time.Now()}
	defer b.cleanup()
	if err := b.setup(ctx); err != nil {
		return err
	}
	if err := b.scenarios(ctx); err != nil {
		return err
	}
	report := b.render()
	fmt.Fprint(stdout, report)
	if cfg.out != "" {
		path := cfg.out
		if !filepath.IsAbs(path) {
			path = filepath.Join(b.root, path)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
			return err
		}
		b.logf("table written to %s", path)
	}
	b.logf("done in %s", time.Since(b.started).Round(time.Second))
	return nil
}
