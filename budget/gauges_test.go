package budget_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/purser-dev/purser/budget"
)

type gaugeValues struct {
	pending int64
	held    map[string]int64
	util    map[int64]float64
	attrs   map[int64][3]string // id, name, subject
}

func collectGauges(t *testing.T, r *sdkmetric.ManualReader) gaugeValues {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	v := gaugeValues{held: map[string]int64{}, util: map[int64]float64{}, attrs: map[int64][3]string{}}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "purser.reservations.pending":
				for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
					v.pending = dp.Value
				}
			case "purser.reservations.pending.held":
				for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
					u, _ := dp.Attributes.Value("unit")
					v.held[u.AsString()] = dp.Value
				}
			case "purser.budget.utilization":
				for _, dp := range m.Data.(metricdata.Gauge[float64]).DataPoints {
					id, _ := dp.Attributes.Value("budget.id")
					name, _ := dp.Attributes.Value("budget.name")
					sub, _ := dp.Attributes.Value("budget.subject")
					v.util[id.AsInt64()] = dp.Value
					v.attrs[id.AsInt64()] = [3]string{id.String(), name.AsString(), sub.AsString()}
				}
			}
		}
	}
	return v
}

// statusUtil is the exact utilisation Status computes, as the gauge reports it.
func statusUtil(t *testing.T, e *env, b budget.Budget) (float64, bool) {
	t.Helper()
	sts, err := e.svc.Status(context.Background(), b.Subject)
	require.NoError(t, err)
	for _, st := range sts {
		if st.Budget.ID == b.ID {
			used := st.Posted + st.Pending
			if used == 0 {
				return 0, false
			}
			return float64(used) * 100 / float64(st.Limit), true
		}
	}
	t.Fatalf("budget %d has no status", b.ID)
	return 0, false
}

func TestRegisterGauges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	t0 := time.Date(2026, 5, 14, 10, 0, 0, 0, time.UTC)
	e.clock.Set(t0)

	month := e.budget(t, budget.Definition{Name: "team monthly", Subject: "team:ml", Limit: 1000, Window: "month", TimeZone: "Europe/Paris", Hard: true})
	roll := e.budget(t, budget.Definition{Name: "hourly", Subject: "user:alice", Limit: 400, Window: "1h", Hard: true})
	tok := e.budget(t, budget.Definition{Name: "tokens", Subject: "team:ml", Unit: "tokens", Limit: 10_000, Window: "day", Hard: false})
	reset := e.budget(t, budget.Definition{Name: "reset", Subject: "user:bob", Limit: 100, Window: "lifetime", Hard: true})
	idle := e.budget(t, budget.Definition{Name: "idle", Subject: "team:idle", Limit: 100, Window: "day", Hard: true})

	reserve := func(cost, tokens int64, subjects ...budget.Subject) string {
		d := e.reserveOne(t, budget.ReserveRequest{Subjects: subjects, Cost: cost, Tokens: tokens})
		require.Equal(t, budget.Admitted, d.Outcome)
		return d.ReservationID
	}
	r1 := reserve(100, 1000, "team:ml", "user:alice")
	reserve(50, 0, "user:bob")
	// A reset (at t0 + 1m on the test clock) leaves bob's spend out of his window.
	_, err := e.schema.Pool.Exec(ctx, `UPDATE budgets SET reset_at = $2 WHERE id = $1`, reset.ID, t0.Add(time.Minute))
	require.NoError(t, err)
	e.svc.Invalidate()
	// 30 minutes later alice spends again; the first hold is still in her rolling hour.
	e.clock.Set(t0.Add(30 * time.Minute))
	reserve(100, 500, "team:ml", "user:alice")
	_, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: r1, Cost: 60, Tokens: 700}})
	require.NoError(t, err)
	_, err = e.svc.AddGrant(ctx, "test", month.ID, 600, time.Now().Add(time.Hour), "launch week")
	require.NoError(t, err)

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	reg, err := budget.RegisterGauges(mp.Meter("test"), e.svc, budget.GaugeConfig{TopBudgets: 3})
	require.NoError(t, err)

	v := collectGauges(t, reader)
	require.Equal(t, int64(2), v.pending) // bob's (reset away from his budget, still held) and alice's second
	require.Equal(t, map[string]int64{"micro_usd": 150, "tokens": 500}, v.held)
	// month: (60 + 100) / (1000 + 600); rolling: (60 + 100) / 400; tokens: (700 + 500) / 10000.
	require.Equal(t, map[int64]float64{month.ID: 10, roll.ID: 40, tok.ID: 12}, v.util)
	require.Equal(t, [3]string{strconv.FormatInt(roll.ID, 10), "hourly", "user:alice"}, v.attrs[roll.ID])
	for _, b := range []budget.Budget{month, roll, tok} {
		want, ok := statusUtil(t, e, b)
		require.True(t, ok)
		require.InDelta(t, want, v.util[b.ID], 1e-9, "gauge and Status agree on budget %q", b.Name)
	}
	for _, b := range []budget.Budget{reset, idle} {
		_, ok := statusUtil(t, e, b)
		require.False(t, ok, "budget %q has no spend in its current window", b.Name)
	}

	// Within MinInterval a scrape reuses the snapshot: new spend is not seen yet.
	reserve(40, 0, "user:alice")
	require.Equal(t, map[int64]float64{month.ID: 10, roll.ID: 40, tok.ID: 12}, collectGauges(t, reader).util)

	// Later the first hold leaves alice's rolling hour; only the top 2 are exported now.
	e.clock.Set(t0.Add(75 * time.Minute))
	require.NoError(t, reg.Unregister())
	_, err = budget.RegisterGauges(mp.Meter("test2"), e.svc, budget.GaugeConfig{TopBudgets: 2})
	require.NoError(t, err)
	v = collectGauges(t, reader)
	wantRoll, ok := statusUtil(t, e, roll)
	require.True(t, ok)
	require.Equal(t, float64(140)/400*100, wantRoll, "the rolling window dropped the 60 settled at t0")
	require.Equal(t, map[int64]float64{roll.ID: wantRoll, tok.ID: 12}, v.util)
	require.Equal(t, int64(3), v.pending)
}

// TestRegisterGauges_RollingBucketsMatchStatus checks the SQL that picks a rolling window's
// buckets against WindowSpec.At for a bucket size (7s) that does not divide the distance from
// Go's zero time to the Unix epoch, second by second across the window's edge, with a reset.
func TestRegisterGauges_RollingBucketsMatchStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	e.clock.Set(t0)
	b := e.budget(t, budget.Definition{Name: "short", Subject: "user:carol", Limit: 1000, Window: "168s", Hard: true})
	require.Equal(t, 7*time.Second, b.Window.BucketSize())
	for i, off := range []time.Duration{0, 40 * time.Second, 100 * time.Second, 150 * time.Second} {
		e.clock.Set(t0.Add(off))
		d := e.reserveOne(t, budget.ReserveRequest{Subjects: []budget.Subject{"user:carol"}, Cost: int64(10 * (i + 1))})
		require.Equal(t, budget.Admitted, d.Outcome)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	_, err := budget.RegisterGauges(mp.Meter("test"), e.svc, budget.GaugeConfig{MinInterval: time.Nanosecond})
	require.NoError(t, err)

	check := func(from, to time.Duration) {
		for off := from; off <= to; off += time.Second {
			e.clock.Set(t0.Add(off))
			want, ok := statusUtil(t, e, b)
			got, exported := collectGauges(t, reader).util[b.ID]
			require.Equal(t, ok, exported, "at t0+%s", off)
			require.InDelta(t, want, got, 1e-9, "at t0+%s", off)
		}
	}
	check(160*time.Second, 200*time.Second) // the t0 hold leaves the window somewhere in here
	check(300*time.Second, 340*time.Second) // ... and the last one
	_, err = e.schema.Pool.Exec(ctx, `UPDATE budgets SET reset_at = $2 WHERE id = $1`, b.ID, t0.Add(120*time.Second))
	require.NoError(t, err)
	check(140*time.Second, 180*time.Second)
}
