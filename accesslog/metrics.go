package accesslog

import (
	"context"
	"fmt"
	"sync"
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
	usageCtr metric.Int64Counter

	mu     sync.Mutex
	groups map[usageGroup]metric.MeasurementOption // label sets seen, at most maxUsageGroups

	// The outcome and event attribute sets, built once each: building one sorts and
	// allocates, and every entry counts two or three outcomes.
	outcomes, settleOutcomes, events attrCache
}

// attrCache holds the measurement option of each value of one attribute, up to
// maxCachedValues of them (values from the wire, such as an unknown decision, could be
// many): past that a value's option is built for each use, as without the cache.
type attrCache struct {
	key string
	mu  sync.RWMutex
	m   map[string]metric.MeasurementOption
}

const maxCachedValues = 256

func (c *attrCache) option(v string) metric.MeasurementOption {
	c.mu.RLock()
	o, ok := c.m[v]
	c.mu.RUnlock()
	if ok {
		return o
	}
	o = metric.WithAttributeSet(attribute.NewSet(attribute.String(c.key, v)))
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]metric.MeasurementOption{}
	}
	if len(c.m) < maxCachedValues {
		c.m[v] = o
	}
	c.mu.Unlock()
	return o
}

// usageGroup is one label set of purser.accesslog.usage.
type usageGroup struct {
	route, provider, model string
	found                  bool
}

// maxUsageGroups bounds the label sets of purser.accesslog.usage: the model is the caller's
// string, so past this many (route, provider, model) the model is reported as "other".
const maxUsageGroups = 2000

func newMetrics(meter metric.Meter) (*metrics, error) {
	if meter == nil {
		return nil, nil
	}
	m := metrics{outcomes: attrCache{key: "outcome"}, settleOutcomes: attrCache{key: "outcome"}, events: attrCache{key: "event"}}
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
	if m.usageCtr, err = meter.Int64Counter("purser.accesslog.usage",
		metric.WithDescription("Complete provider answers by route, provider, model and whether their usage was found (found=false: charged the full hold); alert on the share of found=false")); err != nil {
		return nil, fmt.Errorf("metric purser.accesslog.usage: %w", err)
	}
	m.groups = map[usageGroup]metric.MeasurementOption{}
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
	m.entries.Add(ctx, n, m.outcomes.option(outcome))
}

func (m *metrics) stream(ctx context.Context, event string) {
	if m == nil {
		return
	}
	m.streams.Add(ctx, 1, m.events.option(event))
}

func (m *metrics) settled(ctx context.Context, outcome string, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.settles.Add(ctx, n, m.settleOutcomes.option(outcome))
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

// usage counts one complete answer of a (route, provider, model), with or without usage.
func (m *metrics) usage(route, provider, model string, found bool) {
	if m == nil {
		return
	}
	g := usageGroup{route: route, provider: provider, model: model, found: found}
	m.mu.Lock()
	opt, ok := m.groups[g]
	if !ok {
		if len(m.groups) >= maxUsageGroups {
			g.model = "other"
			opt, ok = m.groups[g]
		}
		if !ok {
			opt = metric.WithAttributeSet(attribute.NewSet(attribute.String("route", g.route), attribute.String("provider", g.provider),
				attribute.String("model", g.model), attribute.Bool("found", g.found)))
			m.groups[g] = opt
		}
	}
	m.mu.Unlock()
	m.usageCtr.Add(context.Background(), 1, opt)
}
