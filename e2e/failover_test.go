package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
	"github.com/purser-dev/purser/internal/pgcluster"
)

// TestFailoverWithoutLosingMoney runs two purser processes against a real PostgreSQL
// primary with a synchronous streaming standby, through a multi-host DATABASE_URL
// (target_session_attrs=read-write), under steady load from envoysim playing envoy.yaml (the
// official OpenAI SDK as callers, the fake LLM upstream, access logs flowing back), and
// fails the database over twice:
//
//  1. crash: the primary's processes are killed at once (a machine dying), then the standby
//     is promoted;
//  2. switchover: the crashed node is rebuilt as a synchronous standby of the new primary,
//     which is then fenced read-only (it stays up, answering reads and refusing writes with
//     SQLSTATE 25006), and the rebuilt node is promoted.
//
// Each phase spends on its own hard budget sized so that it runs out after the failover. It
// checks that purser reconnects by itself (no restart), that every request fails closed
// (503) while no primary takes writes, that /readyz never says ready then, that every
// reservation acknowledged to Envoy exists on the final primary and ends settled at the
// provider's reported price or expired at its hold (never voided, never lost), that the
// provider-side spend and the ledger stay within each limit, that the ledger's posted
// amount is exactly what those reservations charged, that an admin change made after the
// switchover reaches both replicas' caches long before their TTL, and that `purser verify`
// reconciles the final primary. It logs the time from promotion to the first successful
// Check and to each replica's /readyz.
func TestFailoverWithoutLosingMoney(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin := buildPurser(t)
	cl := pgcluster.New(t)
	a, err := cl.InitPrimary(ctx, "a", "purser")
	require.NoError(t, err)
	b, err := cl.AddStandby(ctx, "b", a, 0)
	require.NoError(t, err)
	require.NoError(t, a.MakeSynchronous(ctx))
	dsn := "postgres://postgres@" + pgcluster.Hosts(a, b) + "/purser?sslmode=disable&target_session_attrs=read-write"
	t.Logf("DATABASE_URL=%s", dsn)

	out, err := exec.CommandContext(ctx, bin, "migrate", "-database-url", dsn).CombinedOutput()
	require.NoError(t, err, "purser migrate on the multi-host URL: %s", out)

	st := newFailoverStack(t, bin, dsn)
	probeKeyID, probeSecret := st.key("probe", "team:probe")
	hold := st.holdOf(probeSecret)
	require.Positive(t, hold)
	served0 := len(st.served()) // the probe: not on a phase budget

	// Room for exactly room requests at their hold (posted+pending+hold <= limit), not one
	// more. Settled requests report 200 output tokens, the whole output cap, so each charges
	// nearly its hold and the budget runs out after about room requests.
	const room = 120 // generous: the load must not exhaust it before the fault, even on a stalled machine
	limit := int64(room)*hold + hold - 1
	monitors := []*readyMonitor{monitorReady(t, st.pursers[0].HTTPAddr), monitorReady(t, st.pursers[1].HTTPAddr)}
	sampler := sampleWindows(t, dsn)

	// Phase 1: crash the primary, promote the standby.
	_, secret1 := st.key("phase 1", "team:crash")
	b1 := st.budget("crash", "team:crash", limit, "lifetime")
	p1 := st.failover(monitors, phaseSpec{
		name: "crash", secret: secret1,
		fault:   func() { a.Crash() },
		promote: func() error { return b.Promote(ctx) },
	})
	served1 := len(st.served())

	// Phase 2: rebuild the crashed node in place as a synchronous standby of b, fence b
	// read-only, promote the rebuilt node.
	a2, err := cl.AddStandby(ctx, "a2", b, a.Port)
	require.NoError(t, err)
	require.NoError(t, b.MakeSynchronous(ctx))
	st.reconnect(dsn)
	_, secret2 := st.key("phase 2", "team:switch")
	b2 := st.budget("switchover", "team:switch", limit, "lifetime")
	p2 := st.failover(monitors, phaseSpec{
		name: "switchover", secret: secret2,
		fault: func() {
			require.NoError(t, b.FenceReadOnly(ctx))
			require.NoError(t, b.WaitCaughtUp(ctx), "the synchronous standby has everything")
		},
		promote: func() error { return a2.Promote(ctx) },
	})
	st.reconnect(dsn)
	var port int
	require.NoError(t, st.db.Pool.QueryRow(ctx, `SELECT current_setting('port')::int`).Scan(&port))
	require.Equal(t, a2.Port, port, "the test's own pool follows the primary too")

	// An admin change on the new primary reaches both replicas through their change
	// listeners (which had to leave the fenced, still running old primary), well before the
	// caches' one-minute TTL would have dropped the key.
	st.checkRevocationReachesReplicas(probeSecret, probeKeyID)
	sampler.stop()

	// Settle the books: Envoy's buffers delivered, everything still pending expired (the
	// entries that reached purser while it could not write were dropped by its sink, so those
	// reservations are charged their hold), then the final checks.
	st.sim.FlushAccessLogs()
	eventually(t, 60*time.Second, "Envoy's access-log buffers empty", func() (bool, string) {
		return st.sim.PendingEntries() == 0, strconv.Itoa(st.sim.PendingEntries())
	})
	recs := st.served()
	st.expireAllPending()
	st.assertEveryAcknowledgedReservationKept()
	st.assertPhaseBooks("crash", b1, limit, recs[served0:served1])
	st.assertPhaseBooks("switchover", b2, limit, recs[served1:])
	sampler.assertWithin(map[int64]int64{b1: limit, b2: limit})
	st.verify()

	for _, p := range []phaseResult{p1, p2} {
		t.Logf("%s: %s", p.name, p.summary())
	}
}

// failoverStack is the e2e stack on a cluster instead of a pgtest schema.
type failoverStack struct {
	*stack
}

func newFailoverStack(t *testing.T, bin, dsn string) *failoverStack {
	t.Helper()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	var secret string
	for _, h := range cfg.ExtAuthz.InitialMetadata {
		if h.GetKey() == "x-purser-secret" {
			secret = h.GetValue()
		}
	}
	require.NotEmpty(t, secret)
	st := &stack{t: t, bin: bin, secret: secret, cfg: cfg}
	st.cat, err = pricing.Embedded()
	require.NoError(t, err)
	fs := &failoverStack{st}
	fs.reconnect(dsn)

	st.fake = fakellm.New()
	srv := httptest.NewServer(st.fake)
	t.Cleanup(srv.Close)
	up := srv.URL
	st.fakeURL = up
	// -check-timeout as the rest of the suite (a busy machine, below envoy.yaml's 0.5 s);
	// a short sweep interval so that the final expiry is quick; small pools, as 2 replicas
	// share the test servers' 80 connections.
	args := []string{"-shared-secret", secret, "-check-timeout", "450ms", "-sweep-interval", "200ms",
		"-reservation-ttl", "10s", "-hot-pool-size", "2", "-pool-size", "4"}
	var addrs []string
	for range 2 {
		p := startPurser(t, bin, dsn, args...)
		st.pursers = append(st.pursers, p)
		addrs = append(addrs, p.GRPCAddr)
	}
	st.sim, err = envoysim.New(envoysim.Options{
		Config: cfg, GRPC: map[string][]string{cfg.ExtAuthz.Cluster: addrs}, Upstream: up, Workers: 2,
	})
	require.NoError(t, err)
	require.NoError(t, st.sim.Start())
	t.Cleanup(st.sim.Close)
	st.baseURL = st.sim.URL()
	return fs
}

// reconnect opens the test's own pool and ledger on whichever server is the primary now.
func (fs *failoverStack) reconnect(dsn string) {
	t := fs.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if fs.db != nil {
		fs.db.Pool.Close()
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, pool.Ping(ctx))
	t.Cleanup(pool.Close)
	fs.db = &pgtest.Schema{Name: "public", Pool: pool, ConnString: dsn}
	s := store.New(pool)
	fs.svc = budget.New(s, s, budget.Config{})
}

// holdOf is what one chat(200) request holds, as purser prices it (through Envoy, on a key
// without a budget).
func (fs *failoverStack) holdOf(secret string) int64 {
	fs.t.Helper()
	_, err := fs.openai(secret, nil).Chat.Completions.New(context.Background(), chat(200))
	require.NoError(fs.t, err)
	return fs.waitState(fs.lastRequestID(), "pending", "settled").Hold
}

// phaseSpec is one failover: a fault that leaves no writable primary, then a promotion.
type phaseSpec struct {
	name    string
	secret  string
	fault   func()
	promote func() error
}

type phaseResult struct {
	name                     string
	okBefore, failedClosed   int
	okAfter, deniedAfter     int
	promoteTook              time.Duration
	firstOK                  time.Duration // after pg_promote returned (negative: before it returned)
	ready                    []time.Duration
	outageFrom, outageTo     time.Time
	notReadySamplesInOutage  []int
	firstFailClosedAfterFail time.Duration
}

func (p phaseResult) summary() string {
	return fmt.Sprintf("%d OK before the fault; %d requests failed closed (503) during the outage, the first %s after the fault; "+
		"pg_promote took %s; first successful Check %s after pg_promote returned; /readyz ready again after %v; "+
		"/readyz samples while no primary took writes: %v (all not ready); after promotion %d OK and %d denied by the exhausted hard budget",
		p.okBefore, p.failedClosed, p.firstFailClosedAfterFail.Round(time.Millisecond), p.promoteTook.Round(time.Millisecond),
		p.firstOK.Round(time.Millisecond), roundAll(p.ready), p.notReadySamplesInOutage, p.okAfter, p.deniedAfter)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// failover runs one phase under load and checks what the callers and /readyz saw.
func (fs *failoverStack) failover(monitors []*readyMonitor, p phaseSpec) phaseResult {
	t := fs.t
	t.Helper()
	ld := fs.startLoad(p.secret, 4)
	defer ld.stop()
	r := phaseResult{name: p.name}
	eventually(t, 60*time.Second, p.name+": load before the fault", func() (bool, string) {
		n := ld.count(http.StatusOK, time.Time{})
		return n >= 20, strconv.Itoa(n)
	})
	for i, m := range monitors {
		eventually(t, 60*time.Second, fmt.Sprintf("%s: replica %d ready before the fault", p.name, i), func() (bool, string) {
			c := m.last()
			return c == http.StatusOK, strconv.Itoa(c)
		})
	}
	r.okBefore = ld.count(http.StatusOK, time.Time{})
	faultAt := time.Now()
	p.fault()
	r.outageFrom = time.Now() // from here on no server takes writes
	eventually(t, 60*time.Second, p.name+": requests failing closed", func() (bool, string) {
		n := ld.count(http.StatusServiceUnavailable, r.outageFrom)
		return n >= 3, strconv.Itoa(n)
	})
	// Hold the outage until each replica's /readyz has answered a few times: what it says
	// while no server takes writes is checked below.
	for i, m := range monitors {
		eventually(t, 60*time.Second, fmt.Sprintf("%s: replica %d probed while no server takes writes", p.name, i), func() (bool, string) {
			n := m.answeredSince(r.outageFrom)
			return n >= 5, strconv.Itoa(n)
		})
	}
	promoteStart := time.Now()
	r.outageTo = promoteStart
	require.NoError(t, p.promote())
	promoted := time.Now()
	r.promoteTook = promoted.Sub(promoteStart)

	eventually(t, 90*time.Second, p.name+": Checks succeed again", func() (bool, string) {
		n := ld.count(http.StatusOK, promoteStart)
		return n >= 10, strconv.Itoa(n)
	})
	eventually(t, 90*time.Second, p.name+": the hard budget runs out after the failover", func() (bool, string) {
		n := ld.count(http.StatusTooManyRequests, promoteStart)
		return n >= 3, strconv.Itoa(n)
	})
	for i, m := range monitors {
		eventually(t, 60*time.Second, fmt.Sprintf("%s: replica %d ready again", p.name, i), func() (bool, string) {
			c := m.last()
			return c == http.StatusOK, strconv.Itoa(c)
		})
		r.ready = append(r.ready, m.firstOKSince(promoteStart).Sub(promoted))
	}
	ld.stop()

	res := ld.results()
	r.failedClosed = 0
	first503 := time.Time{}
	firstOK := time.Time{}
	for _, x := range res {
		switch {
		case x.status == http.StatusServiceUnavailable && x.end.After(faultAt):
			r.failedClosed++
			if first503.IsZero() || x.end.Before(first503) {
				first503 = x.end
			}
		case x.status == http.StatusOK && x.start.After(r.outageFrom): // its Check came after the fault
			if firstOK.IsZero() || x.end.Before(firstOK) {
				firstOK = x.end
			}
		}
	}
	r.firstFailClosedAfterFail = first503.Sub(faultAt)
	r.firstOK = firstOK.Sub(promoted)
	r.okAfter = ld.count(http.StatusOK, promoteStart)
	r.deniedAfter = ld.count(http.StatusTooManyRequests, promoteStart)
	require.Empty(t, ld.others(), "%s: every request was served (200), denied by the budget (429) or failed closed (503)", p.name)
	for _, x := range res {
		if x.status == http.StatusOK {
			require.False(t, x.start.After(r.outageFrom) && x.end.Before(promoteStart),
				"%s: a request admitted while no server took writes (%s-%s)", p.name, x.start, x.end)
		}
	}
	// /readyz told the truth: while no primary took writes, no probe said ready.
	for i, m := range monitors {
		n := 0
		for _, s := range m.samples() {
			if s.start.After(r.outageFrom) && s.end.Before(r.outageTo) {
				require.Equal(t, http.StatusServiceUnavailable, s.code, "%s: replica %d at %s, while no server took writes", p.name, i, s.end)
				n++
			}
		}
		require.Positive(t, n, "%s: replica %d was probed during the outage", p.name, i)
		r.notReadySamplesInOutage = append(r.notReadySamplesInOutage, n)
	}
	t.Logf("%s: %s", p.name, r.summary())
	return r
}

// load is closed-loop callers through Envoy with one API key.
type load struct {
	mu   sync.Mutex
	res  []loadResult
	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

type loadResult struct {
	start, end time.Time
	status     int // 0: not an HTTP answer
	err        string
}

func (fs *failoverStack) startLoad(secret string, workers int) *load {
	l := &load{quit: make(chan struct{})}
	client := fs.openai(secret, usage(12, 200))
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.quit:
					return
				default:
				}
				start := time.Now()
				_, err := client.Chat.Completions.New(context.Background(), chat(200))
				r := loadResult{start: start, end: time.Now(), status: http.StatusOK}
				if err != nil {
					r.status, r.err = 0, err.Error()
					if e, ok := errors.AsType[*openai.Error](err); ok {
						r.status = e.StatusCode
					}
				}
				l.mu.Lock()
				l.res = append(l.res, r)
				l.mu.Unlock()
				if r.status != http.StatusOK {
					// A client backs off after an error; this also keeps the outage from
					// turning into a flood of access-log entries.
					select {
					case <-l.quit:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}
		}()
	}
	return l
}

func (l *load) stop() {
	l.once.Do(func() { close(l.quit) })
	l.wg.Wait()
}

func (l *load) results() []loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.res)
}

// count is how many requests that ended after since got status.
func (l *load) count(status int, since time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.res {
		if r.status == status && r.end.After(since) {
			n++
		}
	}
	return n
}

func (l *load) others() []string {
	var out []string
	for _, r := range l.results() {
		switch r.status {
		case http.StatusOK, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		default:
			out = append(out, fmt.Sprintf("%d %s", r.status, r.err))
		}
	}
	return out
}

// readyMonitor polls a replica's /readyz every 25 ms for the rest of the test.
type readyMonitor struct {
	mu   sync.Mutex
	all  []readySample
	quit chan struct{}
	done chan struct{}
}

type readySample struct {
	start, end time.Time
	code       int // 0: no answer
}

func monitorReady(t *testing.T, httpAddr string) *readyMonitor {
	m := &readyMonitor{quit: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(m.done)
		for {
			s := readySample{start: time.Now()}
			if resp, err := client.Get("http://" + httpAddr + "/readyz"); err == nil {
				drain(resp.Body)
				resp.Body.Close()
				s.code = resp.StatusCode
			}
			s.end = time.Now()
			m.mu.Lock()
			m.all = append(m.all, s)
			m.mu.Unlock()
			select {
			case <-m.quit:
				return
			case <-time.After(25 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(m.quit); <-m.done })
	return m
}

func (m *readyMonitor) samples() []readySample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.all)
}

// last is the code of the latest probe (0: none yet, or no answer).
func (m *readyMonitor) last() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.all); n > 0 {
		return m.all[n-1].code
	}
	return 0
}

// answeredSince counts the probes that started after t and got an HTTP answer.
func (m *readyMonitor) answeredSince(t time.Time) int {
	n := 0
	for _, s := range m.samples() {
		if s.start.After(t) && s.code != 0 {
			n++
		}
	}
	return n
}

func (m *readyMonitor) firstOKSince(t time.Time) time.Time {
	for _, s := range m.samples() {
		if s.start.After(t) && s.code == http.StatusOK {
			return s.end
		}
	}
	return time.Time{}
}

// windowSampler reads posted+pending of every budget window on the current primary every
// few milliseconds, reconnecting (to whichever host takes writes) whenever it fails or
// finds itself on a read-only server.
type windowSampler struct {
	t       *testing.T
	mu      sync.Mutex
	max     map[int64]int64
	samples int
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func sampleWindows(t *testing.T, dsn string) *windowSampler {
	w := &windowSampler{t: t, max: map[int64]int64{}, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for {
			select {
			case <-w.quit:
				return
			case <-time.After(5 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if conn == nil {
				c, err := pgx.Connect(ctx, dsn)
				if err != nil {
					cancel()
					continue
				}
				conn = c
			}
			var ro string
			if err := conn.QueryRow(ctx, `SHOW transaction_read_only`).Scan(&ro); err != nil || ro == "on" {
				conn.Close(ctx)
				conn = nil
				cancel()
				continue
			}
			rows, err := conn.Query(ctx, `SELECT budget_id, posted + pending FROM budget_windows`)
			if err == nil {
				var id, used int64
				_, err = pgx.ForEachRow(rows, []any{&id, &used}, func() error {
					w.mu.Lock()
					w.max[id] = max(w.max[id], used)
					w.mu.Unlock()
					return nil
				})
			}
			cancel()
			if err != nil {
				conn.Close(context.Background())
				conn = nil
				continue
			}
			w.mu.Lock()
			w.samples++
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *windowSampler) stop() {
	w.once.Do(func() { close(w.quit); <-w.done })
}

func (w *windowSampler) assertWithin(limits map[int64]int64) {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	require.Positive(w.t, w.samples)
	for id, limit := range limits {
		require.Positive(w.t, w.max[id], "budget %d was sampled while in use", id)
		require.LessOrEqual(w.t, w.max[id], limit, "budget %d: posted+pending above its limit at some point", id)
		w.t.Logf("budget %d: max posted+pending %d of limit %d over %d samples of the primary", id, w.max[id], limit, w.samples)
	}
}

// expireAllPending moves every pending reservation's deadline into the past and waits until
// purser's sweeper has expired them (charging their holds).
func (fs *failoverStack) expireAllPending() {
	t := fs.t
	t.Helper()
	ids := fs.db.Strings(t, `SELECT id::text FROM reservations WHERE state = 'pending'`)
	fs.expireNow(ids...)
	eventually(t, 60*time.Second, "nothing pending", func() (bool, string) {
		n := len(fs.db.Strings(t, `SELECT id::text FROM reservations WHERE state = 'pending'`))
		return n == 0, strconv.Itoa(n)
	})
}

// assertEveryAcknowledgedReservationKept: every reservation id Envoy received in an OK
// Check (dynamic metadata, logged in its access-log entry) exists on the final primary, and
// every request the provider served has exactly one reservation.
func (fs *failoverStack) assertEveryAcknowledgedReservationKept() {
	t := fs.t
	t.Helper()
	var acked []string
	for _, e := range fs.sim.Entries() {
		md := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["envoy.filters.http.ext_authz"]
		if id := md.GetFields()["reservation_id"].GetStringValue(); id != "" {
			acked = append(acked, id)
		}
	}
	require.NotEmpty(t, acked)
	found := fs.db.Strings(t, `SELECT id::text FROM reservations WHERE id = ANY($1::uuid[])`, acked)
	missing := map[string]bool{}
	for _, id := range acked {
		missing[id] = true
	}
	for _, id := range found {
		delete(missing, id)
	}
	require.Empty(t, missing, "reservations acknowledged to Envoy but missing on the new primary")
	t.Logf("%d reservations acknowledged to Envoy, all on the final primary", len(acked))
}

// assertPhaseBooks checks one phase's money: each request the provider served has one
// reservation, settled at the reported usage's price or expired at its hold (never voided,
// never free); the provider-side spend is within the limit; and the budget's posted amount
// is exactly what those reservations charged, plus the holds of reservations whose Check
// never reached Envoy (committed as the primary died) and expired.
func (fs *failoverStack) assertPhaseBooks(name string, budgetID, limit int64, recs []fakellm.Record) {
	t := fs.t
	t.Helper()
	require.NotEmpty(t, recs)
	served := map[string]bool{}
	var spent, charged int64
	var settled, expired int
	for _, rec := range recs {
		require.True(t, rec.Complete, "%s: the fake finished %s", name, rec.RequestID)
		served[rec.RequestID] = true
		price := fs.price(rec)
		spent += price
		rs := fs.reservationsFor(rec.RequestID)
		require.Len(t, rs, 1, "%s: one reservation for served request %s", name, rec.RequestID)
		r := rs[0]
		switch r.State {
		case "settled":
			require.NotNil(t, r.Actual)
			require.Equal(t, price, *r.Actual, "%s: %s settled at the reported usage's price", name, rec.RequestID)
			charged += *r.Actual
			settled++
		case "expired":
			charged += r.Hold
			expired++
		default:
			t.Fatalf("%s: served request %s ended %s (%s): a served request must be charged", name, rec.RequestID, r.State, r.Cause)
		}
	}
	// Reservations on this budget for requests the provider never saw.
	var phantomHolds int64
	var phantoms int
	rows, err := fs.db.Pool.Query(context.Background(), `SELECT coalesce(r.request_id, ''), r.state, r.hold_cost FROM reservations r
		JOIN reservation_holds h ON h.reservation_id = r.id WHERE h.budget_id = $1`, budgetID)
	require.NoError(t, err)
	var reqID, state string
	var h int64
	_, err = pgx.ForEachRow(rows, []any{&reqID, &state, &h}, func() error {
		if served[reqID] {
			return nil
		}
		phantoms++
		switch state {
		case "voided":
		case "expired":
			phantomHolds += h
		default:
			return fmt.Errorf("request %s never reached the provider but its reservation is %s", reqID, state)
		}
		return nil
	})
	require.NoError(t, err, name)
	// Each hold's charge as the ledger booked it, against what this test expects of it.
	var diffs []string
	rows, err = fs.db.Pool.Query(context.Background(), `SELECT coalesce(r.request_id, ''), r.state, coalesce(r.cause, ''), r.hold_cost,
		coalesce(r.actual_cost, -1), h.amount, h.charged FROM reservations r JOIN reservation_holds h ON h.reservation_id = r.id WHERE h.budget_id = $1`, budgetID)
	require.NoError(t, err)
	var cause string
	var hc, ac, amount, hcharged int64
	_, err = pgx.ForEachRow(rows, []any{&reqID, &state, &cause, &hc, &ac, &amount, &hcharged}, func() error {
		want := int64(0)
		switch {
		case state == "settled":
			want = ac
		case state == "expired":
			want = hc
		}
		if want != hcharged {
			diffs = append(diffs, fmt.Sprintf("%s %s/%s hold %d actual %d amount %d charged %d served %v", reqID, state, cause, hc, ac, amount, hcharged, served[reqID]))
		}
		return nil
	})
	require.NoError(t, err)
	require.Empty(t, diffs, "%s: holds charged otherwise than their reservation says", name)
	posted, pending := fs.window(budgetID)
	require.Zero(t, pending, name)
	require.LessOrEqual(t, spent, limit, "%s: the provider was paid more than the hard limit", name)
	require.LessOrEqual(t, posted, limit, "%s: posted above the hard limit", name)
	require.Equal(t, charged+phantomHolds, posted, "%s: posted = what the served requests were charged + expired holds of unserved ones", name)
	t.Logf("%s: %d requests served, provider paid %d of limit %d µUSD; %d settled at the reported price, %d expired at their hold "+
		"(their entries reached purser while it could not write); %d reservations for requests never served (voided or expired, %d µUSD charged)",
		name, len(recs), spent, limit, settled, expired, phantoms, phantomHolds)
}

// checkRevocationReachesReplicas caches a key on both replicas (a Check each, sent to the
// replica directly as Envoy would), revokes it on the primary, and requires each replica to
// deny it within 30 s (the caches' TTL is a minute from now).
func (fs *failoverStack) checkRevocationReachesReplicas(secret, keyID string) {
	t := fs.t
	t.Helper()
	ctx := context.Background()
	tmpl, err := bench.LoadCheck("openai_chat")
	require.NoError(t, err)
	mctx := metadata.AppendToOutgoingContext(ctx, "x-purser-secret", fs.secret)
	// A Check can fail closed (purser's 450 ms deadline) when the machine stalls right after a
	// failover: the waits below retry it, and judge only answers.
	check := func(c authv3.AuthorizationClient, i int) (*authv3.CheckResponse, error) {
		ch := tmpl.New()
		ch.SetCredential(tmpl.Credential(secret))
		ch.SetIDs(fmt.Sprintf("revocation-%d-%d", i, time.Now().UnixNano()), strconv.FormatInt(time.Now().UnixNano(), 10))
		cctx, cancel := context.WithTimeout(mctx, 10*time.Second)
		defer cancel()
		return c.Check(cctx, ch.Req)
	}
	var clients []authv3.AuthorizationClient
	for i, p := range fs.pursers {
		cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { _ = cc.Close() })
		c := authv3.NewAuthorizationClient(cc)
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d admits the probe key (and caches it)", i), func() (bool, string) {
			resp, err := check(c, 0)
			if err != nil {
				return false, err.Error()
			}
			return resp.GetStatus().GetCode() == 0, resp.GetStatus().String()
		})
		clients = append(clients, c)
	}
	_, err = fs.svc.RevokeKey(ctx, "e2e", keyID)
	require.NoError(t, err)
	revoked := time.Now()
	for i, c := range clients {
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d denies the revoked key", i), func() (bool, string) {
			resp, err := check(c, i)
			if err != nil {
				return false, err.Error()
			}
			return resp.GetStatus().GetCode() != 0 && resp.GetDeniedResponse().GetStatus().GetCode() == http.StatusUnauthorized, resp.GetStatus().String()
		})
		t.Logf("replica %d denied the key revoked on the new primary after %s", i, time.Since(revoked).Round(time.Millisecond))
	}
}
