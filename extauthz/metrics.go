package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/purser-dev/purser/extauthz/request"
)

type metrics struct {
	decisions metric.Int64Counter
	duration  metric.Float64Histogram
}

func newMetrics(meter metric.Meter) (*metrics, error) {
	if meter == nil {
		return nil, nil
	}
	var m metrics
	var err error
	if m.decisions, err = meter.Int64Counter("purser.check.decisions",
		metric.WithDescription("ext_authz Check answers by decision (reserved, passthrough, denied, unidentified, unverified, error) and reason")); err != nil {
		return nil, fmt.Errorf("metric purser.check.decisions: %w", err)
	}
	if m.duration, err = meter.Float64Histogram("purser.check.duration", metric.WithUnit("s"),
		metric.WithDescription("ext_authz Check latency, by decision"),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.5, 1)); err != nil {
		return nil, fmt.Errorf("metric purser.check.duration: %w", err)
	}
	return &m, nil
}

func decisionName(k kind) string {
	switch k {
	case kindAllow:
		return DecisionReserved
	case kindPass:
		return DecisionPassthrough
	case kindUnverified:
		return DecisionUnverified
	case kindDeny:
		return DecisionDenied
	case kindUnidentified:
		return DecisionUnidentified
	}
	return "error"
}

// observe records metrics and logs the decision: denials and failures at info/warn, the rest
// at debug. Never a secret, a header value or a body.
func (s *Server) observe(ctx context.Context, r *request.Request, v verdict, took time.Duration) {
	name := decisionName(v.kind)
	if s.m != nil {
		attrs := metric.WithAttributes(attribute.String("decision", name), attribute.String("reason", v.reason))
		s.m.decisions.Add(ctx, 1, attrs)
		s.m.duration.Record(ctx, took.Seconds(), metric.WithAttributes(attribute.String("decision", name)))
	}
	level := slog.LevelDebug
	switch v.kind {
	case kindDeny, kindUnidentified:
		level = slog.LevelInfo
	case kindError, kindUnverified:
		level = slog.LevelWarn
	}
	log := s.cfg.Logger
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("decision", name),
		slog.String("request_id", r.RequestID),
		slog.String("model", r.Model),
		slog.String("api_flavor", r.Flavor),
		slog.Duration("duration", took),
	}
	if v.reason != "" {
		attrs = append(attrs, slog.String("reason", v.reason))
	}
	if v.key != nil {
		attrs = append(attrs, slog.String("key_id", v.key.ID))
	}
	if d := v.decision; d != nil {
		attrs = append(attrs, slog.String("reservation_id", d.ReservationID), slog.Int64("estimate_micros", v.cost))
		if d.DeniedBy != nil {
			attrs = append(attrs, slog.Int64("budget_id", d.DeniedBy.Budget.ID))
		}
	}
	if v.err != nil {
		attrs = append(attrs, slog.String("error", v.err.Error()))
	}
	log.LogAttrs(ctx, level, "check", attrs...)
}
