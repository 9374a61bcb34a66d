package budget

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/purser-dev/purser/budget/store"
)

// GaugeConfig tunes RegisterGauges. The zero value means "use the defaults".
type GaugeConfig struct {
	// TopBudgets is how many budgets export a utilisation series: the most utilised ones
	// (default 100). It bounds the cardinality whatever the number of tenants.
	TopBudgets int
	// MinInterval is how long a collected snapshot is reused (default 10s): scrapes within it
	// cost no query.
	MinInterval time.Duration
	// Timeout bounds the collecting query (default 5s).
	Timeout time.Duration
	// Logger receives collection errors (default: discard).
	Logger *slog.Logger
}

// Gauge defaults.
const (
	DefaultGaugeTopBudgets  = 100
	DefaultGaugeMinInterval = 10 * time.Second
	defaultGaugeTimeout     = 5 * time.Second
)

// RegisterGauges registers observable gauges on meter:
//
//	purser.reservations.pending            open reservations
//	purser.reservations.pending.held       what they hold, by unit (micro_usd, tokens)
//	purser.budget.utilization              percent of the limit (grants included) used in the
//	                                       current window, for the TopBudgets most utilised
//	                                       budgets with spend; attributes budget.id,
//	                                       budget.name, budget.subject
//
// One round trip to the database collects them all, at most once per MinInterval (scrapes in
// between see the cached snapshot). Unregister the returned registration to stop.
func RegisterGauges(meter metric.Meter, svc *Service, cfg GaugeConfig) (metric.Registration, error) {
	if cfg.TopBudgets <= 0 {
		cfg.TopBudgets = DefaultGaugeTopBudgets
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultGaugeMinInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultGaugeTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	g := &gauges{svc: svc, cfg: cfg}
	var err error
	if g.pending, err = meter.Int64ObservableGauge("purser.reservations.pending",
		metric.WithDescription("Reservations waiting for their access-log entry"),
		metric.WithUnit("{reservation}")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations.pending: %w", err)
	}
	if g.held, err = meter.Int64ObservableGauge("purser.reservations.pending.held",
		metric.WithDescription("Amount held by pending reservations, by unit (micro_usd or tokens)")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations.pending.held: %w", err)
	}
	if g.util, err = meter.Float64ObservableGauge("purser.budget.utilization",
		metric.WithDescription("Percent of the limit (grants included) used in the current window; only the most utilised budgets"),
		metric.WithUnit("%")); err != nil {
		return nil, fmt.Errorf("metric purser.budget.utilization: %w", err)
	}
	reg, err := meter.RegisterCallback(g.observe, g.pending, g.held, g.util)
	if err != nil {
		return nil, fmt.Errorf("register budget gauges: %w", err)
	}
	return reg, nil
}

type gauges struct {
	svc           *Service
	cfg           GaugeConfig
	pending, held metric.Int64ObservableGauge
	util          metric.Float64ObservableGauge
	mu            sync.Mutex // serialises collections: concurrent scrapes share one query
	snap          store.UsageSnapshot
	collected     time.Time // when snap was read; zero: no snapshot to reuse
}

func (g *gauges) snapshot(ctx context.Context) (store.UsageSnapshot, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.svc.cfg.Now()
	if !g.collected.IsZero() && now.Sub(g.collected) < g.cfg.MinInterval && !now.Before(g.collected) {
		return g.snap, true
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	snap, err := g.svc.db.Usage(ctx, now, g.cfg.TopBudgets)
	if err != nil {
		// A failed collection exports nothing rather than stale values; the next scrape retries.
		g.collected = time.Time{}
		g.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "collect budget gauges", slog.String("error", err.Error()))
		return store.UsageSnapshot{}, false
	}
	g.snap, g.collected = snap, now
	return snap, true
}

func (g *gauges) observe(ctx context.Context, o metric.Observer) error {
	snap, ok := g.snapshot(ctx)
	if !ok {
		return nil
	}
	o.ObserveInt64(g.pending, snap.PendingCount)
	o.ObserveInt64(g.held, snap.PendingCost, metric.WithAttributes(attribute.String("unit", "micro_usd")))
	o.ObserveInt64(g.held, snap.PendingTokens, metric.WithAttributes(attribute.String("unit", "tokens")))
	for _, b := range snap.Budgets {
		o.ObserveFloat64(g.util, utilizationPercent(b.Used, b.Limit), metric.WithAttributes(
			attribute.Int64("budget.id", b.ID),
			attribute.String("budget.name", b.Name),
			attribute.String("budget.subject", b.Subject),
		))
	}
	return nil
}

// utilizationPercent is used/limit in percent; a zero limit with spend reads 100.
func utilizationPercent(used, limit int64) float64 {
	if limit <= 0 {
		if used > 0 {
			return 100
		}
		return 0
	}
	return float64(used) * 100 / float64(limit)
}
