package budget

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Alert kinds.
const (
	// AlertThreshold: a budget's window reached one of its warn_at percentages.
	AlertThreshold = "threshold"
	// AlertProjected: at the window's burn rate so far, the budget runs out before the window
	// ends.
	AlertProjected = "projected"
	// AlertMissingUsage: answers of a route, provider and model came back without usage and
	// were charged their whole hold (alerts: the missing-usage watchdog). No budget.
	AlertMissingUsage = "missing_usage"
)

// AlertEvent is one alert of the outbox. IdempotencyKey is unique for ever:
// AlertKey(budget, window start, kind, threshold).
type AlertEvent struct {
	ID             int64
	IdempotencyKey string
	BudgetID       int64  // 0 for a missing_usage event
	Kind           string // AlertThreshold | AlertProjected | AlertMissingUsage
	Threshold      int
	WindowStart    time.Time
	WindowEnd      time.Time
	Suppressed     bool
	Payload        []byte // JSON
	CreatedAt      time.Time
}

// AlertDelivery is one claimed attempt to deliver an event to one webhook.
type AlertDelivery struct {
	EventID        int64
	Webhook        string
	Attempt        int // this attempt's number, from 1
	IdempotencyKey string
	Kind           string
	Payload        []byte
}

// AlertDeliveryState is one delivery of an event as recorded.
type AlertDeliveryState struct {
	Webhook       string
	State         string // DeliveryPending | DeliveryDelivered | DeliveryFailed
	Attempts      int
	NextAttemptAt time.Time
	DeliveredAt   *time.Time
	LastError     *string
}

// AlertRecord is an event with the state of its deliveries.
type AlertRecord struct {
	AlertEvent
	Deliveries []AlertDeliveryState
}

// Alert delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed"
)

// AlertKey is the idempotency key of an alert: budget:<id>:<window start, RFC 3339 UTC>:<kind>:<threshold>.
func AlertKey(budgetID int64, windowStart time.Time, kind string, threshold int) string {
	return fmt.Sprintf("budget:%d:%s:%s:%d", budgetID, windowStart.UTC().Format(time.RFC3339Nano), kind, threshold)
}

// UsageAlertKey is the idempotency key of a missing-usage alert:
// usage:<route>:<provider>:<model>:<window period start, RFC 3339 UTC>.
func UsageAlertKey(route, provider, model string, periodStart time.Time) string {
	return fmt.Sprintf("usage:%s:%s:%s:%s", route, provider, model, periodStart.UTC().Format(time.RFC3339))
}

// AlertWindow is the span an alert is raised at most once in (per kind and threshold):
// the current window for calendar and lifetime budgets (a manual reset starts a new one).
// A rolling window moves with every bucket, so rolling budgets use consecutive periods of the
// window's length instead (aligned like the buckets); a reset inside a period starts a new one.
func AlertWindow(st Status, now time.Time) (start, end time.Time) {
	if st.Budget.Window.Kind != Rolling {
		return st.Window.Start, st.Window.End
	}
	d := st.Budget.Window.Rolling
	start = now.Truncate(d)
	end = start.Add(d)
	if r := st.Budget.ResetAt; !r.IsZero() && r.After(start) && !r.After(now) {
		start = r
	}
	return start, end
}

// Now is the Service's clock (the one that picks windows).
func (s *Service) Now() time.Time { return s.cfg.Now() }

// EachAlertCandidate calls fn with the current status of every live budget that can raise an
// alert (warning thresholds, or hard) and has spend that may count in its current window, in
// chunks of at most chunk budgets, in id order. Budgets without spend are never read.
func (s *Service) EachAlertCandidate(ctx context.Context, chunk int, fn func([]Status) error) error {
	if chunk <= 0 {
		chunk = 500
	}
	ids, err := s.db.AlertCandidateIDs(ctx, s.cfg.Now())
	if err != nil {
		return mapErr(err)
	}
	for len(ids) > 0 {
		n := min(chunk, len(ids))
		rows, err := s.db.BudgetsByID(ctx, ids[:n])
		if err != nil {
			return mapErr(err)
		}
		ids = ids[n:]
		budgets, err := budgetsFromRows(rows)
		if err != nil {
			return err
		}
		sts, err := s.statusOf(ctx, budgets)
		if err != nil {
			return err
		}
		if len(sts) == 0 {
			continue
		}
		if err := fn(sts); err != nil {
			return err
		}
	}
	return nil
}

// RecordAlerts inserts the events that do not exist yet, each with a pending delivery per
// webhook (none for suppressed events), first due at firstAttempt, in one statement. It
// returns the events it created: when several replicas record the same event at once, exactly
// one of them gets it back.
func (s *Service) RecordAlerts(ctx context.Context, events []AlertEvent, webhooks []string, firstAttempt time.Time) ([]AlertEvent, error) {
	for _, e := range events {
		if e.Kind == AlertMissingUsage {
			if e.BudgetID != 0 || e.Threshold < 1 || e.Threshold > 100 ||
				!strings.HasPrefix(e.IdempotencyKey, "usage:") || !strings.HasSuffix(e.IdempotencyKey, ":"+e.WindowStart.UTC().Format(time.RFC3339)) {
				return nil, fmt.Errorf("%w: missing-usage alert %q", ErrInvalid, e.IdempotencyKey)
			}
			continue
		}
		if e.Kind != AlertThreshold && e.Kind != AlertProjected {
			return nil, fmt.Errorf("%w: alert kind %q", ErrInvalid, e.Kind)
		}
		if e.IdempotencyKey != AlertKey(e.BudgetID, e.WindowStart, e.Kind, e.Threshold) {
			return nil, fmt.Errorf("%w: alert key %q does not match its event", ErrInvalid, e.IdempotencyKey)
		}
	}
	out, err := s.db.InsertAlertEvents(ctx, convertAll(events, alertEventToRow), webhooks, firstAttempt)
	return convertAll(out, alertEventFromRow), mapErr(err)
}

// ClaimAlertDeliveries takes up to limit deliveries due at now for the given webhooks and
// leases them until leaseUntil (see store.ClaimAlertDeliveries). Safe on every replica at once.
func (s *Service) ClaimAlertDeliveries(ctx context.Context, webhooks []string, now, leaseUntil time.Time, limit int) ([]AlertDelivery, error) {
	out, err := s.db.ClaimAlertDeliveries(ctx, webhooks, now, leaseUntil, limit)
	return convertAll(out, alertDeliveryFromRow), mapErr(err)
}

// FinishAlertDelivery records a claimed attempt's outcome: DeliveryDelivered (at: when),
// DeliveryPending (at: the next attempt) or DeliveryFailed (gave up). It reports whether the
// delivery changed (false: another dispatcher's newer claim or outcome won).
func (s *Service) FinishAlertDelivery(ctx context.Context, d AlertDelivery, state string, at time.Time, lastError string) (bool, error) {
	ok, err := s.db.FinishAlertDelivery(ctx, d.EventID, d.Webhook, d.Attempt, state, at, lastError)
	return ok, mapErr(err)
}

// AlertEvents lists alert events newest first with their deliveries: of one budget (0: all),
// below the id cursor before (0: newest), at most limit (default 100, at most 1000).
func (s *Service) AlertEvents(ctx context.Context, budgetID, before int64, limit int) ([]AlertRecord, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	out, err := s.db.AlertEvents(ctx, budgetID, before, limit)
	return convertAll(out, alertRecordFromRow), mapErr(err)
}
