package alerts

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"time"

	"github.com/purser-dev/purser/budget"
)

// EvaluateOnce reads every budget that can alert and records the events its current window
// calls for. It returns how many events this call created (events other replicas created
// first are not counted).
func (a *Alerts) EvaluateOnce(ctx context.Context) (int, error) {
	created := 0
	err := a.svc.EachAlertCandidate(ctx, evaluateChunk, func(sts []budget.Status) error {
		now := a.svc.Now()
		var events []budget.AlertEvent
		for _, st := range sts {
			evs, err := a.eventsFor(st, now)
			if err != nil {
				return err
			}
			events = append(events, evs...)
		}
		if len(events) == 0 {
			return nil
		}
		out, err := a.svc.RecordAlerts(ctx, events, a.ids, a.cfg.Now())
		if err != nil {
			return fmt.Errorf("record alerts: %w", err)
		}
		for _, e := range out {
			a.m.event(ctx, e.Kind, e.Suppressed)
			level := slog.LevelInfo
			if e.Suppressed {
				level = slog.LevelDebug
			}
			a.log.LogAttrs(ctx, level, "budget alert",
				slog.String("event_id", e.IdempotencyKey), slog.Int64("budget_id", e.BudgetID),
				slog.String("kind", e.Kind), slog.Int("threshold", e.Threshold),
				slog.Bool("suppressed", e.Suppressed), slog.Int("webhooks", len(a.ids)))
		}
		created += len(out)
		return nil
	})
	return created, err
}

// eventsFor returns the events a budget's current window calls for (already-recorded ones
// included: the outbox keeps each once).
func (a *Alerts) eventsFor(st budget.Status, now time.Time) ([]budget.AlertEvent, error) {
	used := st.Posted + st.Pending
	if used <= 0 {
		return nil, nil
	}
	start, end := budget.AlertWindow(st, now)
	var out []budget.AlertEvent
	add := func(kind string, threshold int, suppressed bool) error {
		key := budget.AlertKey(st.Budget.ID, start, kind, threshold)
		body, err := json.Marshal(newPayload(key, kind, threshold, st, start, end, now))
		if err != nil {
			return fmt.Errorf("alert payload: %w", err)
		}
		out = append(out, budget.AlertEvent{
			IdempotencyKey: key, BudgetID: st.Budget.ID, Kind: kind, Threshold: threshold,
			WindowStart: start, WindowEnd: end, Suppressed: suppressed, Payload: body, CreatedAt: now,
		})
		return nil
	}

	// Thresholds: every one reached is recorded, only the highest is delivered (a jump from 0
	// to 90% sends one alert, not three).
	var reached []int
	for _, p := range st.Budget.WarnAt {
		if atLeastPercent(used, st.Limit, p) {
			reached = append(reached, p)
		}
	}
	for i, p := range reached {
		if err := add(budget.AlertThreshold, p, i < len(reached)-1); err != nil {
			return nil, err
		}
	}

	// Projection: the window's burn rate so far runs out before the window ends (calendar
	// windows; Status decides), once enough of the window has passed to mean something.
	if st.RunsOutBeforeReset && used < st.Limit && a.warmedUp(st, now) {
		if err := add(budget.AlertProjected, 100, false); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (a *Alerts) warmedUp(st budget.Status, now time.Time) bool {
	total := st.Window.End.Sub(st.Window.Start)
	if total <= 0 {
		return false
	}
	return now.Sub(st.Window.Start)*100 >= total*time.Duration(a.cfg.ProjectionWarmup)
}

// atLeastPercent reports used*100 >= limit*p exactly (no overflow).
func atLeastPercent(used, limit int64, p int) bool {
	x := new(big.Int).Mul(big.NewInt(used), big.NewInt(100))
	y := new(big.Int).Mul(big.NewInt(limit), big.NewInt(int64(p)))
	return x.Cmp(y) >= 0
}
