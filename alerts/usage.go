package alerts

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/purser-dev/purser/budget"
)

// UsagePayload is the JSON body of a missing_usage event (type usage.missing): the answers of
// one route, provider and model came back without usage purser could read, and were charged
// their whole hold, more often than the configured share.
type UsagePayload struct {
	ID        string        `json:"id"`
	Type      string        `json:"type"` // usage.missing
	CreatedAt time.Time     `json:"created_at"`
	Window    PayloadWindow `json:"window"`
	Route     string        `json:"route"`
	Provider  string        `json:"provider"`
	Model     string        `json:"model"`
	Resolved  int64         `json:"resolved"`
	// WithoutUsage were settled at the hold (Compressed and Streams of them: the answer was
	// compressed, an event stream); Expired never got an access-log entry.
	WithoutUsage int64 `json:"without_usage"`
	Compressed   int64 `json:"compressed"`
	Streams      int64 `json:"streams"`
	Expired      int64 `json:"expired"`
	// MissingPercent is (WithoutUsage + Expired) / Resolved, rounded up.
	MissingPercent int    `json:"missing_percent"`
	Hint           string `json:"hint"`
}

// EvaluateUsageOnce runs the missing-usage watchdog over the reservations resolved in the last
// Config.UsageWindow and records a missing_usage event for each (route, provider, model) over
// the threshold, once per window period (key usage:<route>:<provider>:<model>:<period start>).
// It returns how many events this call created.
func (a *Alerts) EvaluateUsageOnce(ctx context.Context) (int, error) {
	if a.cfg.UsageMaxMissingPercent < 0 {
		return 0, nil
	}
	now := a.svc.Now()
	rows, err := a.svc.UsageHealth(ctx, now.Add(-a.cfg.UsageWindow))
	if err != nil {
		return 0, fmt.Errorf("usage health: %w", err)
	}
	start := now.Truncate(a.cfg.UsageWindow)
	end := start.Add(a.cfg.UsageWindow)
	var events []budget.AlertEvent
	for _, r := range rows {
		missing := r.WithoutUsage + r.Expired
		if r.Resolved < int64(a.cfg.UsageMinRequests) || missing*100 <= r.Resolved*int64(a.cfg.UsageMaxMissingPercent) {
			continue
		}
		pct := int((missing*100 + r.Resolved - 1) / r.Resolved)
		key := budget.UsageAlertKey(r.Route, r.Provider, r.Model, start)
		p := UsagePayload{
			ID: key, Type: "usage.missing", CreatedAt: now.UTC(), Window: PayloadWindow{Start: start.UTC(), End: end.UTC()},
			Route: r.Route, Provider: r.Provider, Model: r.Model, Resolved: r.Resolved, WithoutUsage: r.WithoutUsage,
			Compressed: r.Compressed, Streams: r.Streams, Expired: r.Expired, MissingPercent: pct, Hint: UsageHint(r),
		}
		body, err := json.Marshal(p)
		if err != nil {
			return 0, fmt.Errorf("usage alert payload: %w", err)
		}
		events = append(events, budget.AlertEvent{IdempotencyKey: key, Kind: budget.AlertMissingUsage, Threshold: max(pct, 1),
			WindowStart: start, WindowEnd: end, Payload: body, CreatedAt: now})
	}
	if len(events) == 0 {
		return 0, nil
	}
	out, err := a.svc.RecordAlerts(ctx, events, a.ids, a.cfg.Now())
	if err != nil {
		return 0, fmt.Errorf("record alerts: %w", err)
	}
	for _, e := range out {
		a.m.event(ctx, e.Kind, false)
		a.log.LogAttrs(ctx, slog.LevelWarn, "answers without usage are charged their whole hold",
			slog.String("event_id", e.IdempotencyKey), slog.Int("missing_percent", e.Threshold), slog.Int("webhooks", len(a.ids)))
	}
	return len(out), nil
}

// UsageHint tells an operator the likeliest cause of a group's missing usage.
func UsageHint(r budget.UsageHealth) string {
	switch {
	case r.Compressed > 0 && r.Compressed*2 >= r.WithoutUsage:
		return "the provider's answers were compressed, so the proxy's usage filters could not read them: purser asks for accept-encoding: identity on every billable request; check that the proxy applies ext_authz header mutations (and that no filter re-adds Accept-Encoding), then run purser doctor"
	case r.Streams > 0 && r.Streams*2 >= r.WithoutUsage:
		return "event streams came back without usage: OpenAI-style streams report usage only with stream_options.include_usage: true (policies.stream_without_usage: deny refuses the others); for other providers check the proxy's stream usage filter (sse_to_metadata, or the Lua scan)"
	case r.Expired*2 >= r.WithoutUsage+r.Expired:
		return "no access-log entry arrived before the reservations expired: check the access-log cluster, the shared secret and Envoy's access_logs.grpc_access_log.logs_dropped"
	}
	return "answers came back without usage the proxy extracted: check that the route's usage filters (json_to_metadata, sse_to_metadata or the Lua scan) run for this route and API, then run purser doctor"
}
