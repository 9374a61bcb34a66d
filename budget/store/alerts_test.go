package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

func newBudget(t *testing.T, st *store.Store, subject string) int64 {
	t.Helper()
	b, err := st.CreateBudget(context.Background(), store.BudgetRow{Name: "b", Subject: subject, Unit: "usd", Limit: 100,
		WindowKind: "month", TimeZone: "UTC", Hard: true, WarnAt: []int16{50, 80}}, store.Audit{Actor: "test", Action: "budget.create"})
	require.NoError(t, err)
	return b.ID
}

func event(budgetID int64, threshold int, suppressed bool, at time.Time) store.AlertEventRow {
	start := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	return store.AlertEventRow{
		IdempotencyKey: fmt.Sprintf("budget:%d:%s:threshold:%d", budgetID, start.Format(time.RFC3339), threshold),
		BudgetID:       budgetID, Kind: "threshold", Threshold: threshold, WindowStart: start, WindowEnd: start.AddDate(0, 1, 0),
		Suppressed: suppressed, Payload: []byte(fmt.Sprintf(`{"threshold": %d}`, threshold)), CreatedAt: at,
	}
}

func count(t *testing.T, s *pgtest.Schema, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, s.Pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func TestStore_InsertAlertEventsOnce(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	ctx := context.Background()
	b := newBudget(t, st, "team:ml")
	now := time.Date(2026, 9, 20, 12, 0, 0, 0, time.UTC)
	events := []store.AlertEventRow{event(b, 50, true, now), event(b, 80, false, now)}
	hooks := []string{"w1", "w2"}

	// Eight evaluators record the same events at once: each event exists once, with one
	// delivery per webhook, and exactly one caller is told it created it.
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := map[string]int{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := st.InsertAlertEvents(ctx, events, hooks, now)
			assert.NoError(t, err) // not require: FailNow belongs to the test goroutine
			mu.Lock()
			defer mu.Unlock()
			for _, e := range out {
				assert.NotZero(t, e.ID)
				created[e.IdempotencyKey]++
			}
		}()
	}
	wg.Wait()
	require.Equal(t, map[string]int{events[0].IdempotencyKey: 1, events[1].IdempotencyKey: 1}, created)
	require.Equal(t, 2, count(t, s, `SELECT count(*) FROM alert_events`))
	// The suppressed (lower) threshold is recorded but has no deliveries.
	require.Equal(t, 2, count(t, s, `SELECT count(*) FROM alert_deliveries`))
	require.Equal(t, 2, count(t, s, `SELECT count(*) FROM alert_deliveries d JOIN alert_events e ON e.id = d.event_id WHERE e.threshold = 80`))

	out, err := st.InsertAlertEvents(ctx, events, hooks, now)
	require.NoError(t, err)
	require.Empty(t, out)
}

func TestStore_AlertDeliveryLifecycle(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	ctx := context.Background()
	b := newBudget(t, st, "team:ml")
	t0 := time.Date(2026, 9, 20, 12, 0, 0, 0, time.UTC)
	_, err := st.InsertAlertEvents(ctx, []store.AlertEventRow{event(b, 80, false, t0)}, []string{"w1", "w2"}, t0)
	require.NoError(t, err)

	// Not due yet; unknown webhooks are never claimed.
	ds, err := st.ClaimAlertDeliveries(ctx, []string{"w1", "w2"}, t0.Add(-time.Second), t0.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Empty(t, ds)
	ds, err = st.ClaimAlertDeliveries(ctx, []string{"other"}, t0, t0.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Empty(t, ds)

	// Two dispatchers claim at once: they split the work, nothing is claimed twice.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var claimed []store.AlertDeliveryRow
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds, err := st.ClaimAlertDeliveries(ctx, []string{"w1", "w2"}, t0, t0.Add(time.Minute), 10)
			assert.NoError(t, err)
			mu.Lock()
			claimed = append(claimed, ds...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Len(t, claimed, 2)
	require.NotEqual(t, claimed[0].Webhook, claimed[1].Webhook)
	for _, d := range claimed {
		require.Equal(t, 1, d.Attempt)
		require.JSONEq(t, `{"threshold": 80}`, string(d.Payload))
		require.Equal(t, "threshold", d.Kind)
	}
	// Leased: not claimable again before the lease ends.
	ds, err = st.ClaimAlertDeliveries(ctx, []string{"w1", "w2"}, t0.Add(30*time.Second), t0.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Empty(t, ds)

	var w1 store.AlertDeliveryRow
	for _, d := range claimed {
		if d.Webhook == "w1" {
			w1 = d
		} else {
			ok, err := st.FinishAlertDelivery(ctx, d.EventID, d.Webhook, d.Attempt, store.DeliveryDelivered, t0.Add(time.Second), "")
			require.NoError(t, err)
			require.True(t, ok)
		}
	}
	// w1 failed: retry in 10 s. A stale attempt number changes nothing.
	ok, err := st.FinishAlertDelivery(ctx, w1.EventID, w1.Webhook, w1.Attempt+1, store.DeliveryPending, t0.Add(10*time.Second), "HTTP 500")
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = st.FinishAlertDelivery(ctx, w1.EventID, w1.Webhook, w1.Attempt, store.DeliveryPending, t0.Add(10*time.Second), "HTTP 500")
	require.NoError(t, err)
	require.True(t, ok)

	ds, err = st.ClaimAlertDeliveries(ctx, []string{"w1", "w2"}, t0.Add(10*time.Second), t0.Add(2*time.Minute), 10)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, "w1", ds[0].Webhook)
	require.Equal(t, 2, ds[0].Attempt)
	ok, err = st.FinishAlertDelivery(ctx, ds[0].EventID, ds[0].Webhook, ds[0].Attempt, store.DeliveryFailed, t0.Add(11*time.Second), "HTTP 404")
	require.NoError(t, err)
	require.True(t, ok)
	// Finished deliveries are never claimed again, and a late "delivered" cannot revive them.
	ds, err = st.ClaimAlertDeliveries(ctx, []string{"w1", "w2"}, t0.Add(time.Hour), t0.Add(2*time.Hour), 10)
	require.NoError(t, err)
	require.Empty(t, ds)
	ok, err = st.FinishAlertDelivery(ctx, w1.EventID, "w1", 2, store.DeliveryDelivered, t0.Add(time.Hour), "")
	require.NoError(t, err)
	require.False(t, ok)

	evs, err := st.AlertEvents(ctx, b, 0, 10)
	require.NoError(t, err)
	require.Len(t, evs, 1)
	require.Len(t, evs[0].Deliveries, 2)
	d1, d2 := evs[0].Deliveries[0], evs[0].Deliveries[1]
	require.Equal(t, "w1", d1.Webhook)
	require.Equal(t, store.DeliveryFailed, d1.State)
	require.Equal(t, 2, d1.Attempts)
	require.Equal(t, "HTTP 404", *d1.LastError)
	require.Nil(t, d1.DeliveredAt)
	require.Equal(t, store.DeliveryDelivered, d2.State)
	require.True(t, t0.Add(time.Second).Equal(*d2.DeliveredAt))
	require.Nil(t, d2.LastError)
	evs, err = st.AlertEvents(ctx, b+1, 0, 10)
	require.NoError(t, err)
	require.Empty(t, evs)
}
