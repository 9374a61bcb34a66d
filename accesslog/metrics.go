package accesslog

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// metrics are the sink's instruments; a nil *metrics records nothing.
type metrics struct {
	entries  metric.Int64Counter
	settles  metric.Int64Counter
	problems metric.Int64Counter
	streams  metric.Int64Counter
	lagHist  metric.Float64Histogram
}

func newMetrics(meter metric.Meter) (*metrics, error) {
	if meter == nil {
		return nil, nil
	}
	var m metrics
	var err error
	if m.entries, err = meter.Int64Counter("purser.accesslog.entries",
		metric.WithDescription("Access-log entries by what became of them (received, dropped, settled, voided, charged_hold, unreserved, no_reservation, not_final, ...)")); err != nil {
		return nil, fmt.Errorf("metric purser.accesslog.entries: %w", err)
	}
	if m.settles, err = meter.Int64Counter("purser.accesslog.settlements",
		metric.WithDescription("Ledger outcomes of settlements sent by the sink (settled, voided, late_settled, late_voided, duplicate, unknown)")); err != nil {
		return nil, fmt.Errorf("metric purser.accesslog.settlements: %w", err)
	}
	if m.problems, err = meter.Int64Counter("purser.accesslog.usage_problems",
		metric.WithDescription("Entries whose usage was missing, incomplete, invalid or for an unknown model (each charged the hold)")); err != nil {
		return nil, fmt.Errorf("metric purser.accesslog.usage_problems: %w", err)
	}
	if m.streams, err = meter.Int64Counter("purser.accesslog.streams",
		metric.WithDescription("Access-log stream events (opened, closed, refused_limit, idle_timeout, evicted)")); err != nil {
		return nil, fmt.Errorf("metric purser.accesslog.streams: %w", err)
	}
	if m.lagHist, err = meter.Float64Histogram("purser.accesslog.settlement_lag", metric.WithUnit("s"),
		metric.WithDescription("Time from a request's end (as Envoy logged it) to its settlement"),
		metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)); err != nil {
		return nil, fmt.Errorf("metric purser.accesslog.settlement_lag: %w", err)
	}
	return &m, nil
}

func (m *metrics) entry(ctx context.Context, outcome string, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.entries.Add(ctx, n, metric.WithAttributes(attribute.String("outcome", outcome)))
}

func (m *metrics) stream(ctx context.Context, event string) {
	if m == nil {
		return
	}
	m.streams.Add(ctx, 1, metric.WithAttributes(attribute.String("event", event)))
}

func (m *metrics) settled(ctx context.Context, outcome string) {
	if m == nil {
		return
	}
	m.settles.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", outcome)))
}

func (m *metrics) usageProblem(kind string) {
	if m == nil {
		return
	}
	m.problems.Add(context.Background(), 1, metric.WithAttributes(attribute.String("kind", kind)))
}

func (m *metrics) lag(ctx context.Context, d time.Duration) {
	if m == nil {
		return
	}
	m.lagHist.Record(ctx, d.Seconds())
}
