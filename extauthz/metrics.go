package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/purser-dev/purser/extauthz/request"
)

type metrics struct {
	decisions metric.Int64Counter
	duration  metric.Float64Histogram
	untrust   metric.Int64Counter
	// attrs caches the attribute options of each (decision, reason): building an attribute
	// set sorts and allocates, and both come from small fixed sets.
	attrs sync.Map // attrKey → [2]metric.MeasurementOption (decisions, duration)
}

type attrKey struct{ decision, reason string }

func (m *metrics) options(decision, reason string) *[2]metric.MeasurementOption {
	k := attrKey{decision, reason}
	if o, ok := m.attrs.Load(k); ok {
		return o.(*[2]metric.MeasurementOption)
	}
	o := &[2]metric.MeasurementOption{
		metric.WithAttributeSet(attribute.NewSet(attribute.String("decision", decision), attribute.String("reason", reason))),
		metric.WithAttributeSet(attribute.NewSet(attribute.String("decision", decision))),
	}
	got, _ := m.attrs.LoadOrStore(k, o)
	return got.(*[2]metric.MeasurementOption)
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
	if m.untrust, err = meter.Int64Counter("purser.check.untrusted_claims",
		metric.WithDescription("Checks whose identity claims (principal, JWT claims, trusted headers) were ignored: the proxy did not authenticate")); err != nil {
		return nil, fmt.Errorf("metric purser.check.untrusted_claims: %w", err)
	}
	return &m, nil
}

func (m *metrics) untrusted(ctx context.Context) {
	if m == nil {
		return
	}
	m.untrust.Add(ctx, 1)
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
		o := s.m.options(name, v.reason)
		s.m.decisions.Add(ctx, 1, o[0])
		s.m.duration.Record(ctx, took.Seconds(), o[1])
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
	var suppressed int64
	if level == slog.LevelInfo {
		// Denials are what a flood produces (20,000 unknown keys): log a sample, count all.
		if !s.denialLog.Allow() {
			s.denialsDropped.Add(1)
			return
		}
		suppressed = s.denialsDropped.Swap(0)
	}
	attrs := []slog.Attr{
		slog.String("decision", name),
		slog.String("request_id", r.RequestID),
		slog.String("model", r.Model),
		slog.String("api_flavor", string(r.Flavor)),
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
	if suppressed > 0 {
		attrs = append(attrs, slog.Int64("denials_not_logged", suppressed))
	}
	log.LogAttrs(ctx, level, "check", attrs...)
}
