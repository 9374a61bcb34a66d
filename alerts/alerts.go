// Package alerts raises budget alerts and delivers them to webhooks through an outbox.
//
// The Evaluator (EvaluateOnce, every Config.EvaluateEvery) reads the current window of every
// budget that has warning thresholds or a hard limit and spend, and records two kinds of
// events: "threshold" (a warn_at percentage reached) and "projected" (at the burn rate so far
// the budget runs out before its window ends). Each event has the idempotency key
// budget:<id>:<window start>:<kind>:<threshold> and is inserted with ON CONFLICT DO NOTHING,
// so replicas evaluating at once create it exactly once, together with one pending delivery
// per configured webhook.
//
// The Dispatcher (DispatchOnce, every Config.DispatchEvery and right after new events) claims
// due deliveries with FOR UPDATE SKIP LOCKED under a lease, POSTs them with a timeout, marks
// them delivered on 2xx and otherwise retries with exponential backoff and jitter up to
// Config.MaxAttempts. All state is in the database: a restart or another replica picks up
// where this one stopped. A receiver that answers 2xx is not sent the event again (short of
// the database failing between its answer and the write that records it: delivery is at
// least once, and Idempotency-Key lets a receiver drop a repeat).
package alerts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/purser-dev/purser/budget"
)

// Ledger is what alerts needs of the ledger (*budget.Service).
type Ledger interface {
	Now() time.Time
	EachAlertCandidate(ctx context.Context, chunk int, fn func([]budget.Status) error) error
	UsageHealth(ctx context.Context, from time.Time) ([]budget.UsageHealth, error)
	RecordAlerts(ctx context.Context, events []budget.AlertEvent, webhooks []string, firstAttempt time.Time) ([]budget.AlertEvent, error)
	ClaimAlertDeliveries(ctx context.Context, webhooks []string, now, leaseUntil time.Time, limit int) ([]budget.AlertDelivery, error)
	FinishAlertDelivery(ctx context.Context, d budget.AlertDelivery, state string, at time.Time, lastError string) (bool, error)
}

// Webhook formats.
const (
	FormatJSON  = "json"  // the generic JSON event (see admin/openapi.yaml, webhooks.budgetAlert)
	FormatSlack = "slack" // {"text": "..."} for Slack (and compatible) incoming webhooks
)

// Webhook is one receiver of alerts.
type Webhook struct {
	// Name identifies the webhook in the outbox and in logs (default: "webhook-" and 12 hex
	// characters of the URL's SHA-256; the URL itself is never stored or logged, since Slack
	// webhook URLs are secrets). Keep it stable across restarts: pending deliveries belong to it.
	Name string
	// URL receives a POST per event (http or https).
	URL string
	// Format is FormatJSON (default) or FormatSlack.
	Format string
	// Secret, when set, signs each body: X-Purser-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>.
	Secret string
}

// ID is the webhook's stable identifier.
func (w Webhook) ID() string {
	if w.Name != "" {
		return w.Name
	}
	h := sha256.Sum256([]byte(w.URL))
	return "webhook-" + hex.EncodeToString(h[:])[:12]
}

// Config tunes alerts. The zero value means "use the defaults" (and no webhooks: events are
// still recorded, and visible in GET /v1/alerts).
type Config struct {
	Webhooks []Webhook
	// Logger receives one line per new event and delivery failures (default: discard).
	Logger *slog.Logger
	// Meter receives the purser.alerts.events and purser.alerts.deliveries counters (default: none).
	Meter metric.Meter
	// EvaluateEvery is how often budgets are evaluated (default 30s).
	EvaluateEvery time.Duration
	// DispatchEvery is how often due deliveries are looked for (default 5s).
	DispatchEvery time.Duration
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
	// BackoffBase and BackoffMax shape the retry delay: base·2^(attempt-1), capped, with
	// jitter (half fixed, half random). Defaults 10s and 1h.
	BackoffBase, BackoffMax time.Duration
	// MaxAttempts is how many POSTs a delivery gets before it is marked failed (default 20:
	// about half a day of retries with the default backoff).
	MaxAttempts int
	// BatchSize is how many deliveries one dispatch claims (default 50); Concurrency how many
	// POSTs run at once (default 4).
	BatchSize, Concurrency int
	// ProjectionWarmup is the share of a window (in percent) that must have elapsed before a
	// "projected" alert can fire, so one early burst does not predict the month (default 10).
	ProjectionWarmup int
	// The missing-usage watchdog (EvaluateUsageOnce, run with the budget evaluation): a
	// (route, provider, model) whose reservations resolved in the last UsageWindow (default
	// 1h) number at least UsageMinRequests (default 20) and of which more than
	// UsageMaxMissingPercent (default 5; negative disables the watchdog) were charged their
	// whole hold for want of usage (no readable usage in the answer, or no access-log entry at
	// all) raises a missing_usage event, once per group and window period.
	UsageWindow            time.Duration
	UsageMinRequests       int
	UsageMaxMissingPercent int
	// Now is the dispatcher's clock: attempts, leases and backoff (default time.Now). Budget
	// windows follow the ledger's clock.
	Now func() time.Time
	// Rand returns a float in [0, 1) for jitter (default math/rand/v2).
	Rand func() float64
	// Client sends the webhooks (default: a client with Timeout that does not follow redirects).
	Client *http.Client
}

// Defaults.
const (
	DefaultEvaluateEvery = 30 * time.Second
	DefaultDispatchEvery = 5 * time.Second
	DefaultTimeout       = 10 * time.Second
	DefaultBackoffBase   = 10 * time.Second
	DefaultBackoffMax    = time.Hour
	DefaultMaxAttempts   = 20
	// The missing-usage watchdog's defaults (Config.Usage*).
	DefaultUsageWindow            = time.Hour
	DefaultUsageMinRequests       = 20
	DefaultUsageMaxMissingPercent = 5
	defaultBatchSize              = 50
	defaultConcurrency            = 4
	defaultProjectionWarmup       = 10
	evaluateChunk                 = 500
)

// Alerts evaluates budgets and dispatches alert deliveries. Safe for concurrent use; run one
// per replica (or several: they coordinate through the database).
type Alerts struct {
	svc   Ledger
	cfg   Config
	log   *slog.Logger
	hooks map[string]Webhook
	ids   []string
	m     instruments
	kick  chan struct{}

	mu       sync.Mutex // guards draining and inflight.Add
	draining bool
	inflight sync.WaitGroup
}

// New validates cfg and returns Alerts over svc.
func New(svc Ledger, cfg Config) (*Alerts, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meter == nil {
		cfg.Meter = noop.NewMeterProvider().Meter("")
	}
	if cfg.EvaluateEvery <= 0 {
		cfg.EvaluateEvery = DefaultEvaluateEvery
	}
	if cfg.DispatchEvery <= 0 {
		cfg.DispatchEvery = DefaultDispatchEvery
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = DefaultBackoffBase
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffBase {
		return nil, fmt.Errorf("alerts: backoff max %s is below the base %s", cfg.BackoffMax, cfg.BackoffBase)
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = defaultBatchSize
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = defaultConcurrency
	}
	if cfg.ProjectionWarmup <= 0 {
		cfg.ProjectionWarmup = defaultProjectionWarmup
	}
	if cfg.ProjectionWarmup > 100 {
		return nil, fmt.Errorf("alerts: projection warm-up %d%% is above 100%%", cfg.ProjectionWarmup)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.UsageWindow <= 0 {
		cfg.UsageWindow = DefaultUsageWindow
	}
	if cfg.UsageMinRequests <= 0 {
		cfg.UsageMinRequests = DefaultUsageMinRequests
	}
	if cfg.UsageMaxMissingPercent == 0 {
		cfg.UsageMaxMissingPercent = DefaultUsageMaxMissingPercent
	}
	if cfg.UsageMaxMissingPercent > 100 {
		return nil, fmt.Errorf("alerts: usage missing percent %d is above 100", cfg.UsageMaxMissingPercent)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout:       cfg.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	a := &Alerts{svc: svc, cfg: cfg, log: cfg.Logger, hooks: map[string]Webhook{}, kick: make(chan struct{}, 1)}
	for i, w := range cfg.Webhooks {
		if err := validateWebhook(&w); err != nil {
			return nil, fmt.Errorf("alerts: webhooks[%d]: %w", i, err)
		}
		id := w.ID()
		if _, dup := a.hooks[id]; dup {
			return nil, fmt.Errorf("alerts: webhooks[%d]: %q is configured twice", i, id)
		}
		a.hooks[id] = w
		a.ids = append(a.ids, id)
	}
	var err error
	if a.m, err = newInstruments(cfg.Meter); err != nil {
		return nil, err
	}
	return a, nil
}

func validateWebhook(w *Webhook) error {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("url must be an absolute http(s) URL") // never echo the URL: it may be a secret
	}
	switch w.Format {
	case "":
		w.Format = FormatJSON
	case FormatJSON, FormatSlack:
	default:
		return fmt.Errorf("format %q: want json or slack", w.Format)
	}
	if strings.ContainsAny(w.Name, " \t\n") {
		return fmt.Errorf("name %q must not contain whitespace", w.Name)
	}
	return nil
}

// ParseWebhooks reads webhooks from a flag or environment value: comma-separated entries
// "[format=]URL", format json (default) or slack, e.g.
// "json=https://ops.example/purser,slack=https://hooks.slack.com/services/T/B/X". secret,
// when set, signs the JSON webhooks.
func ParseWebhooks(spec, secret string) ([]Webhook, error) {
	var out []Webhook
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		w := Webhook{URL: entry, Format: FormatJSON}
		if f, u, ok := strings.Cut(entry, "="); ok && (f == FormatJSON || f == FormatSlack) {
			w.Format, w.URL = f, u
		}
		if w.Format == FormatJSON {
			w.Secret = secret
		}
		if err := validateWebhook(&w); err != nil {
			return nil, fmt.Errorf("webhook %d: %w", i+1, err)
		}
		out = append(out, w)
	}
	return out, nil
}

// Run evaluates and dispatches until ctx ends.
func (a *Alerts) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		every(ctx, a.cfg.EvaluateEvery, nil, func() {
			n, err := a.EvaluateOnce(ctx)
			if err != nil && ctx.Err() == nil {
				a.log.LogAttrs(ctx, slog.LevelError, "evaluate budget alerts", slog.String("error", err.Error()))
			}
			u, err := a.EvaluateUsageOnce(ctx)
			if err != nil && ctx.Err() == nil {
				a.log.LogAttrs(ctx, slog.LevelError, "evaluate the missing-usage watchdog", slog.String("error", err.Error()))
			}
			n += u
			if n > 0 {
				select {
				case a.kick <- struct{}{}:
				default:
				}
			}
		})
	}()
	go func() {
		defer wg.Done()
		every(ctx, a.cfg.DispatchEvery, a.kick, func() {
			for ctx.Err() == nil {
				n, err := a.DispatchOnce(ctx)
				if err != nil && ctx.Err() == nil {
					a.log.LogAttrs(ctx, slog.LevelError, "dispatch alert deliveries", slog.String("error", err.Error()))
				}
				if err != nil || n < a.cfg.BatchSize {
					return
				}
			}
		})
	}()
	wg.Wait()
}

// every runs f now and then every interval (or when kicked) until ctx ends.
func every(ctx context.Context, interval time.Duration, kick <-chan struct{}, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		f()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
	}
}

// Drain stops claiming deliveries and waits (until ctx ends) for the POSTs in flight to
// finish and be recorded, so a receiver that just answered is not sent the event again after
// the restart. Run keeps evaluating until its own context ends.
func (a *Alerts) Drain(ctx context.Context) {
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
	done := make(chan struct{})
	go func() { a.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		a.log.LogAttrs(ctx, slog.LevelWarn, "alert deliveries still in flight at shutdown; they will be retried after their lease")
	}
}

// begin registers a dispatch in flight; false once draining.
func (a *Alerts) begin() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return false
	}
	a.inflight.Add(1)
	return true
}
