package e2e_test

// The end-to-end harness: the real purser binary (built once per run) on free ports, one
// fresh Postgres schema per scenario, the fake LLM upstream, envoysim playing Envoy from
// envoy/envoy.yaml, and the official OpenAI and Anthropic SDKs as callers.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/jackc/pgx/v5"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
)

// buildPurser builds ./cmd/purser (without -race: the binary under test is the product as
// shipped; the suite's own code runs with -race).
func buildPurser(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := bench.BuildPurser(ctx, t.TempDir())
	require.NoError(t, err)
	return bin
}

// purserProc is one `purser serve` subprocess (bench.StartPurser) on free ports. Restarting
// keeps its ports, as a restarted pod keeps its address behind Envoy's cluster.
type purserProc struct {
	t        *testing.T
	bin      string
	opts     bench.PurserOptions
	GRPCAddr string
	HTTPAddr string

	mu   sync.Mutex
	runs []*bench.Purser // one per start; the last is the current process
}

// startPurser starts `purser serve` and waits until /readyz answers.
func startPurser(t *testing.T, bin, dsn string, args ...string) *purserProc {
	t.Helper()
	p := &purserProc{t: t, bin: bin, opts: bench.PurserOptions{DatabaseURL: dsn, Args: append([]string{"-log-level", "debug"}, args...)}}
	p.start()
	t.Cleanup(p.cleanup)
	return p
}

// start starts the process, on the ports of the first start from the second one on.
func (p *purserProc) start() {
	p.t.Helper()
	run, err := bench.StartPurser(context.Background(), p.bin, p.opts)
	require.NoError(p.t, err, "start purser")
	p.mu.Lock()
	p.runs = append(p.runs, run)
	p.mu.Unlock()
	p.GRPCAddr, p.HTTPAddr = run.GRPCAddr, run.HTTPAddr
	p.opts.GRPCAddr, p.opts.HTTPAddr = run.GRPCAddr, run.HTTPAddr
}

func (p *purserProc) current() *bench.Purser {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runs[len(p.runs)-1]
}

// restart starts the process again on the same ports.
func (p *purserProc) restart() { p.t.Helper(); p.start() }

// kill sends SIGKILL and waits for the process to go.
func (p *purserProc) kill() { p.current().Kill() }

// stop sends SIGTERM (graceful shutdown) and waits; a process still running after 30 s is
// killed.
func (p *purserProc) stop() {
	p.t.Helper()
	require.NoError(p.t, p.current().Stop(30*time.Second), "graceful stop")
}

func (p *purserProc) cleanup() {
	p.kill()
	if p.t.Failed() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for i, r := range p.runs {
			p.t.Logf("purser %s run %d log (tail):\n%s", p.GRPCAddr, i+1, tail(r.Log(), 6000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stack is one scenario's world.
type stack struct {
	t       *testing.T
	bin     string
	db      *pgtest.Schema
	svc     *budget.Service
	pursers []*purserProc
	fake    *fakellm.Server
	fakeURL string
	sim     *envoysim.Sim // nil when a real Envoy plays the proxy
	baseURL string        // where callers send requests (envoysim or Envoy's listener)
	cfg     *envoysim.Config
	cat     *pricing.Catalog
	secret  string // the shared secret of envoy.yaml's initial_metadata
}

type stackOpts struct {
	replicas   int      // purser processes on the one schema (default 1)
	purserArgs []string // extra `purser serve` flags
	workers    int      // Envoy workers (default 2)
	// wrapUpstream wraps the fake LLM handler (e.g. to stall a stream).
	wrapUpstream func(http.Handler) http.Handler
	// noSim: the caller starts a real Envoy and sets baseURL.
	noSim bool
	// configure adjusts the Envoy configuration envoysim plays (e.g. preserve the client's
	// x-request-id) before it starts.
	configure func(*envoysim.Config)
}

func newStack(t *testing.T, bin string, o stackOpts) *stack {
	t.Helper()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	var secret string
	for _, h := range cfg.ExtAuthz.InitialMetadata {
		if h.GetKey() == "x-purser-secret" {
			secret = h.GetValue()
		}
	}
	require.NotEmpty(t, secret, "envoy.yaml sends the shared secret as initial_metadata")
	db := pgtest.New(t)
	st := &stack{t: t, bin: bin, db: db, secret: secret, cfg: cfg}
	s := store.New(db.Pool)
	st.svc = budget.New(s, s, budget.Config{})
	st.cat, err = pricing.Embedded()
	require.NoError(t, err)

	st.fake = fakellm.New()
	var h http.Handler = st.fake
	if o.wrapUpstream != nil {
		h = o.wrapUpstream(h)
	}
	up := httptest.NewServer(h)
	t.Cleanup(up.Close)
	st.fakeURL = up.URL

	if o.replicas <= 0 {
		o.replicas = 1
	}
	// purser's default 150 ms Check deadline assumes a quiet machine; this suite runs many
	// processes under -race on two cores. 450 ms stays below envoy.yaml's 0.5 s timeout, so
	// purser still answers before Envoy gives up. Scenarios may override it.
	args := append([]string{"-shared-secret", secret, "-check-timeout", "450ms"}, o.purserArgs...)
	var addrs []string
	for range o.replicas {
		p := startPurser(t, bin, db.ConnString, args...)
		st.pursers = append(st.pursers, p)
		addrs = append(addrs, p.GRPCAddr)
	}
	if o.noSim {
		return st
	}
	if o.configure != nil {
		o.configure(cfg)
	}
	st.sim, err = envoysim.New(envoysim.Options{
		Config: cfg, GRPC: map[string][]string{cfg.ExtAuthz.Cluster: addrs}, Upstream: up.URL, Workers: o.workers,
		Logf: func(f string, a ...any) { t.Logf(f, a...) },
	})
	require.NoError(t, err)
	require.NoError(t, st.sim.Start())
	t.Cleanup(st.sim.Close)
	st.baseURL = st.sim.URL()
	return st
}

// key creates an API key owned by the given subjects and returns its id and secret.
func (st *stack) key(name string, subjects ...string) (string, string) {
	st.t.Helper()
	k, secret, err := st.svc.CreateKey(context.Background(), "e2e", budget.KeySpec{Name: name, Subjects: subjects})
	require.NoError(st.t, err)
	return k.ID, secret
}

// budget creates a hard USD budget (limit in micro-USD) on subject over window.
func (st *stack) budget(name, subject string, limit int64, window string) int64 {
	st.t.Helper()
	b, err := st.svc.CreateBudget(context.Background(), "e2e", budget.Definition{
		Name: name, Subject: subject, Unit: "usd", Limit: limit, Window: window, Hard: true,
	})
	require.NoError(st.t, err)
	return b.ID
}

func (st *stack) openai(secret string, headers map[string]string) *openai.Client {
	opts := []option.RequestOption{
		option.WithBaseURL(st.baseURL + "/v1/"),
		option.WithAPIKey(secret),
		option.WithMaxRetries(0),
		option.WithHTTPClient(&http.Client{Timeout: time.Minute}),
	}
	for k, v := range headers {
		opts = append(opts, option.WithHeader(k, v))
	}
	c := openai.NewClient(opts...)
	return &c
}

func (st *stack) anthropic(secret string, headers map[string]string) *anthropic.Client {
	opts := []aoption.RequestOption{
		aoption.WithBaseURL(st.baseURL),
		aoption.WithAPIKey(secret),
		aoption.WithMaxRetries(0),
		aoption.WithHTTPClient(&http.Client{Timeout: time.Minute}),
	}
	for k, v := range headers {
		opts = append(opts, aoption.WithHeader(k, v))
	}
	c := anthropic.NewClient(opts...)
	return &c
}

// reservation is a reservations row as the tests read it.
type reservation struct {
	ID, State, Cause string
	Hold             int64
	Actual           *int64
	RequestID        string
}

// reservations returns the reservations rows matching where, oldest first.
func (st *stack) reservations(where string, args ...any) []reservation {
	st.t.Helper()
	rows, err := st.db.Pool.Query(context.Background(),
		`SELECT id::text, state, coalesce(cause, ''), hold_cost, actual_cost, coalesce(request_id, '') FROM reservations WHERE `+where+` ORDER BY created_at`, args...)
	require.NoError(st.t, err)
	rs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[reservation])
	require.NoError(st.t, err)
	return rs
}

// reservationsFor returns the reservations made for an x-request-id.
func (st *stack) reservationsFor(requestID string) []reservation {
	st.t.Helper()
	return st.reservations("request_id = $1", requestID)
}

// allReservations returns every non-unreserved reservation.
func (st *stack) allReservations() []reservation {
	st.t.Helper()
	return st.reservations("NOT unreserved")
}

// window returns a budget's posted and pending over all its windows.
func (st *stack) window(budgetID int64) (posted, pending int64) {
	st.t.Helper()
	err := st.db.Pool.QueryRow(context.Background(),
		`SELECT coalesce(sum(posted), 0)::bigint, coalesce(sum(pending), 0)::bigint FROM budget_windows WHERE budget_id = $1`, budgetID).Scan(&posted, &pending)
	require.NoError(st.t, err)
	return posted, pending
}

// expireNow moves reservations' deadlines into the past; purser's sweeper (run with a short
// -sweep-interval) then expires them, charging the hold.
func (st *stack) expireNow(ids ...string) {
	st.t.Helper()
	_, err := st.db.Pool.Exec(context.Background(),
		`UPDATE reservations SET expires_at = now() - interval '1 second' WHERE state = 'pending' AND id::text = ANY($1)`, ids)
	require.NoError(st.t, err)
}

// eventuallyFloor is the least time eventually gives a condition before failing. The
// timeouts the tests name are what the condition takes on an idle machine; on a busy 2-core
// machine (a CPU hog on each core, other suites compiling) deliveries and settlements take
// several times longer, and a deadline is only ever a failure bound: a condition that holds
// returns at once.
const eventuallyFloor = 90 * time.Second

// eventually polls cond until it holds or the deadline passes (never a bare sleep).
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	timeout = max(timeout, eventuallyFloor)
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s (last state: %s)", what, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitState waits until the reservation of requestID is in one of the states.
func (st *stack) waitState(requestID string, states ...string) reservation {
	st.t.Helper()
	var got reservation
	eventually(st.t, 20*time.Second, "reservation of "+requestID+" in "+strings.Join(states, "|"), func() (bool, string) {
		rs := st.reservationsFor(requestID)
		if len(rs) != 1 {
			return false, fmt.Sprintf("%d reservations", len(rs))
		}
		got = rs[0]
		for _, s := range states {
			if got.State == s {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", got)
	})
	return got
}

// verify runs `purser verify` (the binary) on the scenario's schema: it must exit 0.
func (st *stack) verify() {
	st.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, out, err := bench.Verify(ctx, st.bin, st.db.ConnString)
	require.NoError(st.t, err)
	require.Zero(st.t, code, "purser verify:\n%s", out)
	require.Contains(st.t, out, "ledger reconciles")
}

// price is what the fake provider's reported usage costs, priced with the catalog (an
// independent path from purser's: the fake's own counts, not the access-log metadata).
func (st *stack) price(rec fakellm.Record) int64 {
	st.t.Helper()
	r := rec.Reported
	provider := "openai"
	u := pricing.Usage{InputTokens: r.InputTokens, OutputTokens: r.OutputTokens, CacheReadTokens: r.CachedTokens, ReasoningTokens: r.ReasoningTokens}
	if rec.API == "anthropic" {
		provider = "anthropic"
		// Anthropic's input_tokens excludes cache reads and writes; the catalog's total includes them.
		u = pricing.Usage{InputTokens: r.InputTokens + r.CachedTokens + r.CacheCreationTokens, OutputTokens: r.OutputTokens,
			CacheReadTokens: r.CachedTokens, CacheWriteTokens: r.CacheCreationTokens, ReasoningTokens: r.ReasoningTokens}
	}
	if rec.API == "gemini" {
		provider = "google" // promptTokenCount, candidatesTokenCount (the calls here set no cache or thoughts)
		require.Zero(st.t, r.CachedTokens+r.ReasoningTokens, "price gemini cache/thought tokens by hand")
	}
	m, ok := st.cat.Lookup(provider, rec.Model)
	require.True(st.t, ok, "catalog has %s/%s", provider, rec.Model)
	c, err := m.CostAt(u, time.Now())
	require.NoError(st.t, err)
	return c.Total
}

// record returns the fake's record of the request with this x-request-id.
func (st *stack) record(requestID string) fakellm.Record {
	st.t.Helper()
	for _, r := range st.served() {
		if r.RequestID == requestID {
			return r
		}
	}
	st.t.Fatalf("the fake upstream never saw request %s", requestID)
	return fakellm.Record{}
}

// served returns the fake's records once every request it is serving has been recorded (a
// client may be done with a response before the fake's handler returned).
func (st *stack) served() []fakellm.Record {
	st.t.Helper()
	eventually(st.t, 10*time.Second, "the fake recorded every request", func() (bool, string) {
		n := st.fake.Busy()
		return n == 0, fmt.Sprintf("%d being served", n)
	})
	return st.fake.Requests()
}

// lastRequestID is the x-request-id of the most recent request the fake served.
func (st *stack) lastRequestID() string {
	st.t.Helper()
	recs := st.served()
	require.NotEmpty(st.t, recs)
	return recs[len(recs)-1].RequestID
}

// requestIDsWithDetails returns the x-request-ids of envoysim's entries with these
// response_code_details (requests that never reached the fake).
func (st *stack) requestIDsWithDetails(details string) []string {
	return st.requestIDsWhere(func(e *alsdata.HTTPAccessLogEntry) bool {
		return e.GetResponse().GetResponseCodeDetails() == details
	})
}

func (st *stack) requestIDsWhere(pred func(*alsdata.HTTPAccessLogEntry) bool) []string {
	var out []string
	for _, e := range st.sim.Entries() {
		if pred(e) {
			out = append(out, e.GetRequest().GetRequestId())
		}
	}
	return out
}

// delivered reports whether envoysim handed the entry of requestID to an access-log stream.
func (st *stack) delivered(requestID string) bool {
	for _, d := range st.sim.Deliveries() {
		if d.RequestID == requestID {
			return true
		}
	}
	return false
}

// assertSettledAtReportedPrice checks a request's reservation settled with exactly what the
// fake reported, priced, and that it was below the hold (a refund) or reports an overrun.
func (st *stack) assertSettledAtReportedPrice(requestID string) reservation {
	st.t.Helper()
	r := st.waitState(requestID, "settled")
	rec := st.record(requestID)
	require.True(st.t, rec.Complete, "the fake finished the response")
	require.Equal(st.t, "usage", r.Cause, "settled from the reported usage")
	require.NotNil(st.t, r.Actual)
	require.Equal(st.t, st.price(rec), *r.Actual, "actual cost = the fake's reported usage, priced")
	return r
}

func drain(r io.Reader) { _, _ = io.Copy(io.Discard, r) }
