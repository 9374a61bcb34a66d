package alerts_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/purser-dev/purser/alerts"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// The ledger satisfies the alerts' interface.
var _ alerts.Ledger = (*budget.Service)(nil)

// clock is a settable test clock shared by the ledger (windows) and the dispatcher (backoff).
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// receiver is a real local webhook endpoint that answers from a script of statuses.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	script []int // statuses to answer in order; 200 once exhausted
	got    []delivery
	hit    chan struct{}
}

type delivery struct {
	status  int
	header  http.Header
	body    []byte
	payload map[string]any
}

func newReceiver(t *testing.T, script ...int) *receiver {
	r := &receiver{script: script, hit: make(chan struct{}, 100)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		status := http.StatusOK
		if len(r.script) > 0 {
			status, r.script = r.script[0], r.script[1:]
		}
		d := delivery{status: status, header: req.Header.Clone(), body: body}
		_ = json.Unmarshal(body, &d.payload)
		r.got = append(r.got, d)
		r.mu.Unlock()
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, "answer %d", status)
		r.hit <- struct{}{}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// succeeded counts 2xx answers per idempotency key.
func (r *receiver) succeeded() map[string]int {
	out := map[string]int{}
	for _, d := range r.deliveries() {
		if d.status/100 == 2 {
			out[d.header.Get("Idempotency-Key")]++
		}
	}
	return out
}

type env struct {
	schema *pgtest.Schema
	clock  *clock
	svc    *budget.Service
}

func newEnv(t *testing.T, start time.Time) *env {
	s := pgtest.New(t)
	c := &clock{}
	c.Set(start)
	st := store.New(s.Pool)
	return &env{schema: s, clock: c, svc: budget.New(st, st, budget.Config{Now: c.Now})}
}

// replica is another purser replica on the same database and clock.
func (e *env) replica() *budget.Service {
	st := store.New(e.schema.Pool)
	return budget.New(st, st, budget.Config{Now: e.clock.Now})
}

func (e *env) alerts(t *testing.T, svc *budget.Service, cfg alerts.Config) *alerts.Alerts {
	t.Helper()
	cfg.Now = e.clock.Now
	if cfg.Rand == nil {
		cfg.Rand = func() float64 { return 0.5 }
	}
	a, err := alerts.New(svc, cfg)
	require.NoError(t, err)
	return a
}

func (e *env) spend(t *testing.T, subject budget.Subject, cost int64) {
	t.Helper()
	ds, err := e.svc.Reserve(context.Background(), []budget.ReserveRequest{{Subjects: []budget.Subject{subject}, Cost: cost, Tokens: 1}})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, ds[0].Outcome)
	_, err = e.svc.Settle(context.Background(), []budget.Settlement{{ReservationID: ds[0].ReservationID, Cost: cost, Tokens: 1}})
	require.NoError(t, err)
}

// concurrently runs f on each instance at once and returns the sum of what they report.
func concurrently(t *testing.T, as []*alerts.Alerts, f func(*alerts.Alerts) (int, error)) int {
	t.Helper()
	var wg sync.WaitGroup
	var total atomic.Int64
	for _, a := range as {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := f(a)
			assert.NoError(t, err) // require would stop only this goroutine
			total.Add(int64(n))
		}()
	}
	wg.Wait()
	return int(total.Load())
}

func evaluate(a *alerts.Alerts) (int, error) { return a.EvaluateOnce(context.Background()) }
func dispatch(a *alerts.Alerts) (int, error) { return a.DispatchOnce(context.Background()) }

// TestAlerts_ExactlyOnceAcrossReplicas: two evaluator/dispatcher instances run concurrently
// against a receiver that fails first (500) and then succeeds. Each alert reaches it with a
// 2xx exactly once per window and threshold, and is never sent again after that.
func TestAlerts_ExactlyOnceAcrossReplicas(t *testing.T) {
	t.Parallel()
	// Late in the month, so that 85% spent does not also project an overrun.
	t0 := time.Date(2026, 9, 29, 12, 0, 0, 0, time.UTC)
	e := newEnv(t, t0)
	ctx := context.Background()
	b, err := e.svc.CreateBudget(ctx, "test", budget.Definition{Name: "ml monthly", Subject: "team:ml", Limit: 100_000_000,
		Window: "month", Hard: true, WarnAt: []int{50, 80}})
	require.NoError(t, err)

	rec := newReceiver(t, http.StatusInternalServerError)
	slack := newReceiver(t)
	const secret = "whsec-test"
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(ctx) })
	cfg := alerts.Config{
		Webhooks: []alerts.Webhook{
			{Name: "ops", URL: rec.srv.URL + "/hook", Secret: secret},
			{URL: slack.srv.URL + "/services/T000/B000/SECRETPART", Format: alerts.FormatSlack},
		},
		BackoffBase: 10 * time.Second, BackoffMax: time.Minute, Meter: mp.Meter("test"),
	}
	as := []*alerts.Alerts{e.alerts(t, e.svc, cfg), e.alerts(t, e.replica(), cfg)}

	// Nothing spent: nothing to say.
	require.Zero(t, concurrently(t, as, evaluate))

	// 85% in one go crosses 50 and 80: both recorded, only 80 is delivered.
	e.spend(t, "team:ml", 85_000_000)
	require.Equal(t, 2, concurrently(t, as, evaluate), "each event is created by exactly one replica")
	require.Zero(t, concurrently(t, as, evaluate), "and never again")

	// First attempt: one replica claims each delivery; the JSON receiver answers 500.
	require.Equal(t, 2, concurrently(t, as, dispatch))
	require.Len(t, rec.deliveries(), 1)
	require.Len(t, slack.deliveries(), 1)
	require.Equal(t, http.StatusInternalServerError, rec.deliveries()[0].status)
	// Not due again until the backoff (10s, jittered to 7.5s here) has passed.
	require.Zero(t, concurrently(t, as, dispatch))
	e.clock.Advance(7 * time.Second)
	require.Zero(t, concurrently(t, as, dispatch))
	e.clock.Advance(time.Second)
	require.Equal(t, 1, concurrently(t, as, dispatch))

	key := budget.AlertKey(b.ID, time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), budget.AlertThreshold, 80)
	require.Equal(t, "budget:"+strconv.FormatInt(b.ID, 10)+":2026-09-01T00:00:00Z:threshold:80", key)
	require.Equal(t, map[string]int{key: 1}, rec.succeeded())
	require.Equal(t, map[string]int{key: 1}, slack.succeeded())

	// Later evaluations and dispatches, on both replicas and after a "restart", send nothing.
	e.spend(t, "team:ml", 10_000_000) // 95%: no new threshold
	restarted := e.alerts(t, e.replica(), cfg)
	as = append(as, restarted)
	for range 3 {
		e.clock.Advance(time.Hour)
		require.Zero(t, concurrently(t, as, evaluate))
		require.Zero(t, concurrently(t, as, dispatch))
	}
	require.Len(t, rec.deliveries(), 2)
	require.Len(t, slack.deliveries(), 1)

	// What the JSON receiver got.
	d := rec.deliveries()[1]
	require.Equal(t, key, d.header.Get("Idempotency-Key"))
	require.Equal(t, "threshold", d.header.Get("X-Purser-Event"))
	require.Equal(t, "2", d.header.Get("X-Purser-Delivery-Attempt"))
	require.Equal(t, "application/json", d.header.Get("Content-Type"))
	sig := d.header.Get("X-Purser-Signature")
	ts, mac, ok := strings.Cut(strings.TrimPrefix(sig, "t="), ",v1=")
	require.True(t, ok, sig)
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(ts + "." + string(d.body)))
	require.Equal(t, hex.EncodeToString(h.Sum(nil)), mac, "the signature verifies")
	require.Equal(t, alerts.Sign(secret, time.Unix(mustInt(t, ts), 0), d.body), sig)
	require.Equal(t, rec.deliveries()[0].body, d.body, "a retry sends the same event")
	require.Equal(t, map[string]any{
		"id": key, "type": "budget.threshold", "created_at": "2026-09-29T12:00:00Z",
		"budget": map[string]any{"id": float64(b.ID), "name": "ml monthly", "subject": "team:ml", "unit": "usd", "hard": true},
		"window": map[string]any{"start": "2026-09-01T00:00:00Z", "end": "2026-10-01T00:00:00Z"},
		"limit":  "100.000000", "used": "85.000000", "posted": "85.000000", "pending": "0.000000",
		"utilization": float64(85), "threshold": float64(80), "projected": d.payload["projected"], "runs_out_at": d.payload["runs_out_at"],
	}, d.payload)

	// What Slack got.
	s := slack.deliveries()[0]
	require.Empty(t, s.header.Get("X-Purser-Signature"))
	require.Equal(t, map[string]any{"text": `:warning: purser: hard budget "ml monthly" (team:ml) reached 80% of its limit: ` +
		`$85.00 of $100.00 used in 2026-09-01 00:00 → 2026-10-01 00:00 UTC.`}, s.payload)

	// The outbox: one delivered row per webhook for 80, nothing for the suppressed 50.
	rows, err := e.schema.Pool.Query(ctx, `SELECT e.threshold, e.suppressed, d.webhook, d.state, d.attempts, coalesce(d.last_error, '')
		FROM alert_events e LEFT JOIN alert_deliveries d ON d.event_id = e.id ORDER BY e.threshold, d.webhook`)
	require.NoError(t, err)
	var outbox []string
	for rows.Next() {
		var th, attempts *int
		var sup bool
		var hook, state, lastErr *string
		require.NoError(t, rows.Scan(&th, &sup, &hook, &state, &attempts, &lastErr))
		if hook == nil {
			outbox = append(outbox, fmt.Sprintf("%d suppressed=%t no deliveries", *th, sup))
			continue
		}
		outbox = append(outbox, fmt.Sprintf("%d %s %s %d %q", *th, *hook, *state, *attempts, *lastErr))
	}
	require.NoError(t, rows.Err())
	slackID := cfg.Webhooks[1].ID()
	require.Regexp(t, `^webhook-[0-9a-f]{12}$`, slackID)
	require.NotContains(t, slackID, "SECRETPART")
	require.Equal(t, []string{
		"50 suppressed=true no deliveries",
		"80 ops delivered 2 \"\"",
		"80 " + slackID + " delivered 1 \"\"",
	}, outbox)

	// A new window is a new alert (too early in it for a projection).
	e.clock.Set(time.Date(2026, 10, 2, 12, 0, 0, 0, time.UTC))
	e.spend(t, "team:ml", 55_000_000)
	require.Equal(t, 1, concurrently(t, as, evaluate))
	require.Equal(t, 2, concurrently(t, as, dispatch))
	oct := budget.AlertKey(b.ID, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), budget.AlertThreshold, 50)
	require.Equal(t, map[string]int{key: 1, oct: 1}, rec.succeeded())

	// Counters.
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	counts := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				var labels []string
				for _, kv := range dp.Attributes.ToSlice() {
					labels = append(labels, string(kv.Key)+"="+kv.Value.String())
				}
				counts[m.Name+"{"+strings.Join(labels, ",")+"}"] += dp.Value
			}
		}
	}
	require.Equal(t, map[string]int64{
		"purser.alerts.events{kind=threshold,suppressed=false}": 2,
		"purser.alerts.events{kind=threshold,suppressed=true}":  1,
		"purser.alerts.deliveries{outcome=delivered}":           4,
		"purser.alerts.deliveries{outcome=retry}":               1,
	}, counts)
}

func mustInt(t *testing.T, s string) int64 {
	v, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err)
	return v
}

func TestAlerts_GivesUpAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 9, 20, 23, 0, 0, 0, time.UTC) // late in the day: no projection
	e := newEnv(t, t0)
	ctx := context.Background()
	_, err := e.svc.CreateBudget(ctx, "test", budget.Definition{Name: "b", Subject: "team:ml", Limit: 100, Window: "day", WarnAt: []int{50}})
	require.NoError(t, err)
	rec := newReceiver(t, 503, 503, 503, 503)
	a := e.alerts(t, e.svc, alerts.Config{Webhooks: []alerts.Webhook{{Name: "down", URL: rec.srv.URL}}, MaxAttempts: 3,
		BackoffBase: time.Second, BackoffMax: 4 * time.Second, Rand: func() float64 { return 0.999 }})
	e.spend(t, "team:ml", 60)
	n, err := a.EvaluateOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	for i, wait := range []time.Duration{0, time.Second, 2 * time.Second} {
		e.clock.Advance(wait)
		n, err = a.DispatchOnce(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n, "attempt %d", i+1)
		n, err = a.DispatchOnce(ctx)
		require.NoError(t, err)
		require.Zero(t, n, "backoff after attempt %d", i+1)
	}
	e.clock.Advance(24 * time.Hour)
	n, err = a.DispatchOnce(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "failed deliveries are not retried")
	require.Len(t, rec.deliveries(), 3)
	evs, err := e.svc.AlertEvents(ctx, 0, 0, 10)
	require.NoError(t, err)
	require.Equal(t, budget.DeliveryFailed, evs[0].Deliveries[0].State)
	require.Equal(t, 3, evs[0].Deliveries[0].Attempts)
	require.Equal(t, "HTTP 503: answer 503", *evs[0].Deliveries[0].LastError)
}

func TestAlerts_Projected(t *testing.T) {
	t.Parallel()
	// 11 days into September (over the 10% warm-up), half the budget is gone: at that rate
	// the month costs ~136% of the limit.
	t0 := time.Date(2026, 9, 12, 0, 0, 0, 0, time.UTC)
	e := newEnv(t, time.Date(2026, 9, 2, 0, 0, 0, 0, time.UTC))
	ctx := context.Background()
	b, err := e.svc.CreateBudget(ctx, "test", budget.Definition{Name: "hard", Subject: "team:ml", Limit: 1_000_000, Window: "month", Hard: true})
	require.NoError(t, err)
	_, err = e.svc.CreateBudget(ctx, "test", budget.Definition{Name: "soft quiet", Subject: "team:ml", Limit: 1_000_000, Window: "month"})
	require.NoError(t, err)
	rec := newReceiver(t)
	a := e.alerts(t, e.svc, alerts.Config{Webhooks: []alerts.Webhook{{URL: rec.srv.URL}}})

	// A burst on day 1 (under the warm-up) predicts nothing yet.
	e.spend(t, "team:ml", 50_000)
	n, err := a.EvaluateOnce(ctx)
	require.NoError(t, err)
	require.Zero(t, n)

	e.clock.Set(t0)
	e.spend(t, "team:ml", 450_000)
	n, err = a.EvaluateOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n, "only the hard budget alerts; a soft budget without thresholds stays quiet")
	_, err = a.DispatchOnce(ctx)
	require.NoError(t, err)
	got := rec.deliveries()
	require.Len(t, got, 1)
	p := got[0].payload
	require.Equal(t, "budget.projected", p["type"])
	require.Equal(t, budget.AlertKey(b.ID, time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), budget.AlertProjected, 100), p["id"])
	require.Equal(t, "0.500000", p["used"])
	require.Equal(t, "1.363637", p["projected"])               // ceil(0.5 × 30 days / 11 days)
	require.Equal(t, "2026-09-22T23:59:50Z", p["runs_out_at"]) // remaining / ceil(burn per day)
	n, err = a.EvaluateOnce(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestAlerts_DrainWaitsForInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Date(2026, 9, 20, 12, 0, 0, 0, time.UTC))
	ctx := context.Background()
	_, err := e.svc.CreateBudget(ctx, "test", budget.Definition{Name: "b", Subject: "team:ml", Limit: 100, Window: "day", WarnAt: []int{10, 50}})
	require.NoError(t, err)
	release := make(chan struct{})
	arrived := make(chan struct{})
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if posts.Add(1) == 1 {
			close(arrived)
		}
		<-release
	}))
	t.Cleanup(srv.Close)
	a := e.alerts(t, e.svc, alerts.Config{Webhooks: []alerts.Webhook{{Name: "slow", URL: srv.URL}}})
	e.spend(t, "team:ml", 20)
	_, err = a.EvaluateOnce(ctx)
	require.NoError(t, err)

	dispatched := make(chan error, 1)
	go func() { _, err := a.DispatchOnce(ctx); dispatched <- err }()
	<-arrived
	drained := make(chan struct{})
	go func() { a.Drain(ctx); close(drained) }()
	close(release)
	<-drained
	// Drain returned only after the answer was recorded.
	evs, err := e.svc.AlertEvents(ctx, 0, 0, 10)
	require.NoError(t, err)
	require.Equal(t, budget.DeliveryDelivered, evs[0].Deliveries[0].State)
	require.NoError(t, <-dispatched)
	// Once draining, nothing new is claimed: a new event's delivery stays due, unattempted.
	e.spend(t, "team:ml", 30) // 50% at noon: a threshold, no projected overrun
	n, err := a.EvaluateOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = a.DispatchOnce(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	evs, err = e.svc.AlertEvents(ctx, 0, 0, 10)
	require.NoError(t, err)
	require.Equal(t, 50, evs[0].Threshold)
	require.Equal(t, budget.DeliveryPending, evs[0].Deliveries[0].State)
	require.Zero(t, evs[0].Deliveries[0].Attempts)
	require.Equal(t, int32(1), posts.Load())

	// Drain gives up when its context ends.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	a.Drain(cctx)
}

func TestAlerts_Run(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Date(2026, 9, 20, 12, 0, 0, 0, time.UTC))
	ctx, cancel := context.WithCancel(context.Background())
	// At noon 20 of 1000 crosses the 1% threshold; the projection (40) stays below the limit.
	_, err := e.svc.CreateBudget(ctx, "test", budget.Definition{Name: "b", Subject: "team:ml", Limit: 1000, Window: "day", WarnAt: []int{1}})
	require.NoError(t, err)
	rec := newReceiver(t)
	a := e.alerts(t, e.svc, alerts.Config{Webhooks: []alerts.Webhook{{URL: rec.srv.URL}}, EvaluateEvery: 20 * time.Millisecond, DispatchEvery: time.Hour})
	e.spend(t, "team:ml", 20)
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	select { // the evaluator kicks the dispatcher as soon as it creates the event
	case <-rec.hit:
	case <-time.After(30 * time.Second):
		t.Fatal("no delivery")
	}
	cancel()
	<-done
	require.Len(t, rec.deliveries(), 1)
}

func TestNew_Validates(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		cfg alerts.Config
		msg string
	}{
		"URL":       {alerts.Config{Webhooks: []alerts.Webhook{{URL: "hooks.slack.com/services/SECRET"}}}, "alerts: webhooks[0]: url must be an absolute http(s) URL"},
		"Format":    {alerts.Config{Webhooks: []alerts.Webhook{{URL: "https://x.example", Format: "teams"}}}, `alerts: webhooks[0]: format "teams": want json or slack`},
		"Duplicate": {alerts.Config{Webhooks: []alerts.Webhook{{URL: "https://x.example"}, {URL: "https://x.example"}}}, `alerts: webhooks[1]: "webhook-` + alerts.Webhook{URL: "https://x.example"}.ID()[8:] + `" is configured twice`},
		"Backoff":   {alerts.Config{BackoffBase: time.Hour, BackoffMax: time.Minute}, "alerts: backoff max 1m0s is below the base 1h0m0s"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := alerts.New(nil, tc.cfg)
			require.EqualError(t, err, tc.msg)
			require.NotContains(t, err.Error(), "SECRET")
		})
	}
}

func TestParseWebhooks(t *testing.T) {
	t.Parallel()
	ws, err := alerts.ParseWebhooks(" json=https://ops.example/a , slack=https://hooks.slack.com/services/T/B/X,https://plain.example/b", "s3cret")
	require.NoError(t, err)
	require.Equal(t, []alerts.Webhook{
		{URL: "https://ops.example/a", Format: "json", Secret: "s3cret"},
		{URL: "https://hooks.slack.com/services/T/B/X", Format: "slack"},
		{URL: "https://plain.example/b", Format: "json", Secret: "s3cret"},
	}, ws)
	ws, err = alerts.ParseWebhooks("", "")
	require.NoError(t, err)
	require.Empty(t, ws)
	_, err = alerts.ParseWebhooks("teams=https://x.example", "")
	require.EqualError(t, err, "webhook 1: url must be an absolute http(s) URL")
}

// TestUsageWatchdog: a route whose answers come back without usage more often than the
// threshold raises one missing_usage event per window period (no budget; replicas racing
// create it once), with the counts and a hint naming the likeliest cause; a healthy route and
// a route with too few requests raise none; a Slack webhook gets a sentence.
func TestUsageWatchdog(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Now())
	ctx := context.Background()
	ins := func(route, cause string, n int) {
		t.Helper()
		for range n {
			_, err := e.schema.Pool.Exec(ctx, `
INSERT INTO reservations (id, expires_at, resolved_at, state, route, provider, model, hold_cost, hold_tokens, cause)
VALUES (gen_random_uuid(), now(), now(), 'settled', $1, 'openai', 'gpt-4o-mini', 10, 10, $2)`, route, cause)
			require.NoError(t, err)
		}
	}
	ins("broken", "usage", 10)
	ins("broken", "missing_usage:compressed", 15)
	ins("healthy", "usage", 100)
	ins("healthy", "missing_usage:stream", 3) // below 5%
	ins("quiet", "missing_usage", 5)          // too few to judge

	var got atomic.Pointer[[]byte]
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(&b)
	}))
	t.Cleanup(hook.Close)
	as := []*alerts.Alerts{
		e.alerts(t, e.svc, alerts.Config{Webhooks: []alerts.Webhook{{URL: hook.URL, Format: alerts.FormatSlack}}}),
		e.alerts(t, e.replica(), alerts.Config{Webhooks: []alerts.Webhook{{URL: hook.URL, Format: alerts.FormatSlack}}}),
	}
	require.Equal(t, 1, concurrently(t, as, func(a *alerts.Alerts) (int, error) { return a.EvaluateUsageOnce(ctx) }), "one event, created once")
	n, err := as[0].EvaluateUsageOnce(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "once per window period")

	recs, err := e.svc.AlertEvents(ctx, 0, 0, 10)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	ev := recs[0]
	require.Equal(t, budget.AlertMissingUsage, ev.Kind)
	require.Zero(t, ev.BudgetID, "about a route, not a budget")
	require.Equal(t, 60, ev.Threshold, "15 of 25 without usage")
	var p alerts.UsagePayload
	require.NoError(t, json.Unmarshal(ev.Payload, &p))
	require.Equal(t, "usage.missing", p.Type)
	require.Equal(t, "broken", p.Route)
	require.EqualValues(t, 25, p.Resolved)
	require.EqualValues(t, 15, p.Compressed)
	require.Contains(t, p.Hint, "compressed")

	_, err = as[0].DispatchOnce(ctx)
	require.NoError(t, err)
	b := got.Load()
	require.NotNil(t, b, "the webhook received the event")
	require.Contains(t, string(*b), `"text":`)
	require.Contains(t, string(*b), "60% of the 25 requests on route \\\"broken\\\"")
}
