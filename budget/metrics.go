package budget

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics holds the ledger's instruments. A nil *Metrics records nothing.
type Metrics struct {
	decisions   metric.Int64Counter
	keyLookups  metric.Int64Counter
	settlements metric.Int64Counter
	expired     metric.Int64Counter
	overruns    metric.Int64Counter
	pruned      metric.Int64Counter
	templates   metric.Int64Counter
	batchSize   metric.Int64Histogram
	storm       metric.Int64Counter
	shed        metric.Int64Counter
}

// NewMetrics creates the instruments on meter.
func NewMetrics(meter metric.Meter) (*Metrics, error) {
	var m Metrics
	var err error
	if m.decisions, err = meter.Int64Counter("purser.reservations",
		metric.WithDescription("Reservation decisions by outcome (admitted, duplicate, denied)")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations: %w", err)
	}
	if m.keyLookups, err = meter.Int64Counter("purser.key_lookups",
		metric.WithDescription("API key lookups that missed the positive cache, by source")); err != nil {
		return nil, fmt.Errorf("metric purser.key_lookups: %w", err)
	}
	if m.settlements, err = meter.Int64Counter("purser.settlements",
		metric.WithDescription("Reservation resolutions by outcome (settled, voided, late_settled, late_voided, duplicate, unknown)")); err != nil {
		return nil, fmt.Errorf("metric purser.settlements: %w", err)
	}
	if m.expired, err = meter.Int64Counter("purser.reservations.expired",
		metric.WithDescription("Reservations charged in full because no access-log entry arrived in time")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations.expired: %w", err)
	}
	if m.overruns, err = meter.Int64Counter("purser.overruns",
		metric.WithDescription("Settlements whose actual cost exceeded the reserved upper bound")); err != nil {
		return nil, fmt.Errorf("metric purser.overruns: %w", err)
	}
	if m.pruned, err = meter.Int64Counter("purser.reservations.pruned",
		metric.WithDescription("Resolved reservations removed by retention (their spend kept as daily rollups)")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations.pruned: %w", err)
	}
	if m.templates, err = meter.Int64Counter("purser.templates.budgets",
		metric.WithDescription("Budgets made by default-budget templates for new subjects, by outcome (made, rate_limited, capped, pruned)")); err != nil {
		return nil, fmt.Errorf("metric purser.templates.budgets: %w", err)
	}
	if m.batchSize, err = meter.Int64Histogram("purser.reservation.batch_size",
		metric.WithDescription("Reservations admitted per database round trip by the batcher"),
		metric.WithExplicitBucketBoundaries(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)); err != nil {
		return nil, fmt.Errorf("metric purser.reservation.batch_size: %w", err)
	}
	if m.storm, err = meter.Int64Counter("purser.reservations.storm_denied",
		metric.WithDescription("Reservations denied from memory (a remembered exhausted budget window), without a database round trip; also counted in purser.reservations")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations.storm_denied: %w", err)
	}
	if m.shed, err = meter.Int64Counter("purser.reservations.shed",
		metric.WithDescription("Reservations refused at once as over capacity (answered 503 with Retry-After), by reason (early: predicted before the Check was parsed, see Batcher.Admit; queue: the expected wait exceeded the caller's deadline or the queue was full; deadline: the deadline came too close while waiting)")); err != nil {
		return nil, fmt.Errorf("metric purser.reservations.shed: %w", err)
	}
	return &m, nil
}

func (m *Metrics) stormDenied(ctx context.Context) {
	if m == nil {
		return
	}
	m.storm.Add(ctx, 1)
}

func (m *Metrics) shedN(ctx context.Context, reason string, n int64) {
	if m == nil {
		return
	}
	m.shed.Add(ctx, n, metric.WithAttributes(attribute.String("reason", reason)))
}

func (m *Metrics) batch(ctx context.Context, n int) {
	if m == nil {
		return
	}
	m.batchSize.Record(ctx, int64(n))
}

func (m *Metrics) reserved(ctx context.Context, ds []Decision) {
	if m == nil {
		return
	}
	var counts [3]int64
	for i := range ds {
		counts[ds[i].Outcome]++
	}
	for o, n := range counts {
		if n > 0 {
			m.decisions.Add(ctx, n, metric.WithAttributes(attribute.String("outcome", Outcome(o).String())))
		}
	}
}

func (m *Metrics) keyLookup(ctx context.Context, source string) {
	if m == nil {
		return
	}
	m.keyLookups.Add(ctx, 1, metric.WithAttributes(attribute.String("source", source)))
}

func (m *Metrics) settled(ctx context.Context, outcome string, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.settlements.Add(ctx, n, metric.WithAttributes(attribute.String("outcome", outcome)))
}

func (m *Metrics) expiredN(ctx context.Context, n int) {
	if m == nil || n == 0 {
		return
	}
	m.expired.Add(ctx, int64(n))
}

func (m *Metrics) prunedN(ctx context.Context, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.pruned.Add(ctx, n)
}

func (m *Metrics) materialised(ctx context.Context, outcome string, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.templates.Add(ctx, n, metric.WithAttributes(attribute.String("outcome", outcome)))
}

func (m *Metrics) overrun(ctx context.Context, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.overruns.Add(ctx, n)
}
