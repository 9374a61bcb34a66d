package budget_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

func TestAlertKeyAndWindow(t *testing.T) {
	t.Parallel()
	paris, err := time.LoadLocation("Europe/Paris")
	require.NoError(t, err)
	start := time.Date(2026, 9, 1, 0, 0, 0, 0, paris)
	require.Equal(t, "budget:12:2026-08-31T22:00:00Z:threshold:80", budget.AlertKey(12, start, budget.AlertThreshold, 80))

	now := time.Date(2026, 9, 17, 15, 4, 5, 0, time.UTC)
	cal := budget.Status{Budget: budget.Budget{Window: budget.WindowSpec{Kind: budget.Month}},
		Window: budget.Window{Start: start, End: start.AddDate(0, 1, 0)}}
	s, e := budget.AlertWindow(cal, now)
	require.Equal(t, start, s)
	require.Equal(t, start.AddDate(0, 1, 0), e)

	// Rolling windows alert at most once per period of their length.
	roll := budget.Status{Budget: budget.Budget{Window: budget.WindowSpec{Kind: budget.Rolling, Rolling: 24 * time.Hour}}}
	s, e = budget.AlertWindow(roll, now)
	require.Equal(t, time.Date(2026, 9, 17, 0, 0, 0, 0, time.UTC), s)
	require.Equal(t, s.Add(24*time.Hour), e)
	s2, _ := budget.AlertWindow(roll, now.Add(9*time.Hour))
	require.Equal(t, s.Add(24*time.Hour), s2)
	// A reset inside the period starts a new one.
	roll.Budget.ResetAt = now.Add(-time.Hour)
	s, _ = budget.AlertWindow(roll, now)
	require.Equal(t, now.Add(-time.Hour), s)
}

func TestService_RecordAlertsValidates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "b", Subject: "team:ml", Limit: 100, Window: "month", Hard: true, WarnAt: []int{50}})
	start := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	ev := budget.AlertEvent{IdempotencyKey: budget.AlertKey(b.ID, start, budget.AlertThreshold, 50), BudgetID: b.ID,
		Kind: budget.AlertThreshold, Threshold: 50, WindowStart: start, WindowEnd: start.AddDate(0, 1, 0), Payload: []byte(`{}`), CreatedAt: start}

	bad := ev
	bad.Kind = "exhausted"
	_, err := e.svc.RecordAlerts(ctx, []budget.AlertEvent{bad}, nil, start)
	require.ErrorIs(t, err, budget.ErrInvalid)
	bad = ev
	bad.Threshold = 80
	_, err = e.svc.RecordAlerts(ctx, []budget.AlertEvent{bad}, nil, start)
	require.ErrorIs(t, err, budget.ErrInvalid)

	out, err := e.svc.RecordAlerts(ctx, []budget.AlertEvent{ev}, []string{"w"}, start)
	require.NoError(t, err)
	require.Len(t, out, 1)
	out, err = e.svc.RecordAlerts(ctx, []budget.AlertEvent{ev}, []string{"w"}, start)
	require.NoError(t, err)
	require.Empty(t, out)
	evs, err := e.svc.AlertEvents(ctx, b.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, 1)
	require.Equal(t, budget.DeliveryPending, evs[0].Deliveries[0].State)
}

func TestService_EachAlertCandidate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	warn := e.budget(t, budget.Definition{Name: "warn", Subject: "team:ml", Limit: 100, Window: "month", Hard: false, WarnAt: []int{50}})
	hard := e.budget(t, budget.Definition{Name: "hard", Subject: "team:ml", Limit: 100, Window: "day", Hard: true})
	e.budget(t, budget.Definition{Name: "soft, no thresholds", Subject: "team:ml", Limit: 100, Window: "day"})
	e.budget(t, budget.Definition{Name: "idle", Subject: "team:idle", Limit: 100, Window: "day", Hard: true})
	roll := e.budget(t, budget.Definition{Name: "rolling", Subject: "user:a", Limit: 100, Window: "1h", Hard: true})
	e.reserveOne(t, budget.ReserveRequest{Subjects: []budget.Subject{"team:ml", "user:a"}, Cost: 10})

	var got []int64
	err := e.svc.EachAlertCandidate(ctx, 2, func(sts []budget.Status) error {
		require.LessOrEqual(t, len(sts), 2)
		for _, st := range sts {
			got = append(got, st.Budget.ID)
			require.Equal(t, int64(10), st.Pending)
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, []int64{warn.ID, hard.ID, roll.ID}, got)

	// Rolling spend stays a candidate while it may still count, though its bucket ended.
	e.clock.Set(time.Now().Add(30 * time.Minute))
	got = nil
	require.NoError(t, e.svc.EachAlertCandidate(ctx, 0, func(sts []budget.Status) error {
		for _, st := range sts {
			got = append(got, st.Budget.ID)
		}
		return nil
	}))
	require.Contains(t, got, roll.ID)
}
