package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

func TestAdmin_Status(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.admin("POST", "/v1/budgets", map[string]any{"name": "monthly", "subject": "team:ml", "limit": "100", "window": "month", "warn_at": []int{50}}, http.StatusCreated)
	h.admin("POST", "/v1/budgets", map[string]any{"name": "forever", "subject": "team:ml", "limit": "1000000", "unit": "tokens", "window": "lifetime"}, http.StatusCreated)
	h.admin("POST", "/v1/budgets", map[string]any{"name": "other", "subject": "team:other", "limit": "1", "window": "day"}, http.StatusCreated)
	d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 99_000_000, Tokens: 2000}})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, d[0].Outcome)

	r := h.admin("GET", "/v1/status?subject=team:ml", nil, http.StatusOK)
	require.Equal(t, []any{"team:ml"}, r.body["subjects"])
	bs := list(r.body["budgets"])
	require.Len(t, bs, 2)
	m := obj(obj(bs[0])["current"])
	require.Equal(t, "monthly", obj(bs[0])["name"])
	require.Equal(t, "99.000000", m["pending"])
	require.Equal(t, "1.000000", m["remaining"])
	require.Equal(t, float64(99), m["utilization"])
	for _, k := range []string{"burn_per_day", "projected", "days_until_reset", "days_until_exhausted", "runs_out_before_reset", "resets_at"} {
		require.Contains(t, m, k)
	}
	require.NotNil(t, m["days_until_reset"])
	life := obj(obj(bs[1])["current"])
	require.Equal(t, "2000", life["pending"])
	require.Nil(t, life["window_end"], "a lifetime window never ends")
	require.Nil(t, life["resets_at"])
	require.Nil(t, life["days_until_reset"])
	require.Equal(t, false, life["runs_out_before_reset"])

	r = h.admin("GET", "/v1/status?subject=team:ml&subject=team:other", nil, http.StatusOK)
	require.Len(t, list(r.body["budgets"]), 3)
	h.invalid("GET", "/v1/status", nil, "subject", "subject: is required (e.g. ?subject=team:ml; repeat it for several)")
	h.invalid("GET", "/v1/status?subject=nope", nil, "subject", `subject: subjects[0]: subject "nope": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`)
}

func TestAdmin_Spend(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	key, _, err := h.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "a", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	settle := func(model string, hold, cost int64, at time.Time) {
		d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{KeyID: key.ID, Subjects: key.AllSubjects(), Cost: hold, Tokens: 100,
			Target: budget.Target{Model: model}}})
		require.NoError(t, err)
		_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: cost, Tokens: 40}})
		require.NoError(t, err)
		_, err = h.schema.Pool.Exec(ctx, `UPDATE reservations SET resolved_at = $2 WHERE id = $1`, d[0].ReservationID, at)
		require.NoError(t, err)
	}
	sep := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	settle("gpt-4o", 2_000_000, 1_500_000, sep.Add(time.Hour))
	settle("gpt-4o-mini", 100_000, 150, sep.AddDate(0, 0, 29).Add(23*time.Hour))
	settle("gpt-4o", 100_000, 300_000, sep.AddDate(0, 1, 0)) // October: outside

	r := h.admin("GET", "/v1/spend?from=2026-09-01&to=2026-09-30&group_by=model", nil, http.StatusOK)
	require.Equal(t, "2026-09-01T00:00:00Z", r.body["from"])
	require.Equal(t, "2026-10-01T00:00:00Z", r.body["to"], "a date as the end includes that day")
	require.Equal(t, "model", r.body["group_by"])
	require.Equal(t, false, r.body["truncated"])
	rows := list(r.body["rows"])
	require.Len(t, rows, 2)
	require.Equal(t, map[string]any{"group": "gpt-4o", "cost": "1.500000", "tokens": "40", "requests": float64(1), "expired": float64(0),
		"overruns": float64(0), "overrun_cost": "0.000000", "overrun_tokens": "0", "unreserved": float64(0),
		"unreserved_cost": "0.000000", "unreserved_tokens": "0"}, obj(rows[0]))
	require.Equal(t, "0.000150", obj(rows[1])["cost"], "a cheap call is not rounded away")
	total := obj(r.body["total"])
	require.Equal(t, "1.500150", total["cost"])
	require.Equal(t, "80", total["tokens"])
	require.Equal(t, float64(2), total["requests"])

	r = h.admin("GET", "/v1/spend?from=2026-09-01T00:00:00Z&to=2026-10-01T00:00:01Z&group_by=subject&subject=team:ml&limit=1", nil, http.StatusOK)
	require.Equal(t, true, r.body["truncated"])
	require.Len(t, list(r.body["rows"]), 1)
	require.Equal(t, "team:ml", r.body["subject"])
	require.Equal(t, "1.800150", obj(r.body["total"])["cost"])
	overrun := obj(r.body["total"])
	require.Equal(t, float64(1), overrun["overruns"])
	require.Equal(t, "0.200000", overrun["overrun_cost"])

	r = h.admin("GET", "/v1/spend?from=2026-09-01&to=2026-09-30", nil, http.StatusOK)
	require.Equal(t, "day", r.body["group_by"])
	rows = list(r.body["rows"])
	require.Equal(t, "2026-09-01", obj(rows[0])["group"])
	require.Equal(t, "2026-09-30", obj(rows[1])["group"])

	// Defaults to this month, on the admin API's clock.
	srv := httptest.NewServer(admin.New(h.svc, admin.Config{Tokens: []string{adminToken},
		Now: func() time.Time { return time.Date(2026, 2, 14, 9, 30, 0, 0, time.UTC) }}))
	t.Cleanup(srv.Close)
	r = (&harness{t: t, url: srv.URL}).admin("GET", "/v1/spend?group_by=key", nil, http.StatusOK)
	require.Equal(t, "2026-02-01T00:00:00Z", r.body["from"])
	require.Equal(t, "2026-03-01T00:00:00Z", r.body["to"])

	h.invalid("GET", "/v1/spend?from=yesterday", nil, "from", `from: must be an RFC 3339 time (2026-09-01T00:00:00Z) or a date (2026-09-01), got "yesterday"`)
	h.invalid("GET", "/v1/spend?from=2026-09-02&to=2026-09-01", nil, "to", "to: must be after from")
	h.invalid("GET", "/v1/spend?group_by=team", nil, "group_by", `group_by: must be subject, model, key or day, got "team"`)
	h.invalid("GET", "/v1/spend?group_by=", nil, "group_by", "group_by: must be subject, model, key or day")
	h.invalid("GET", "/v1/spend?limit=0", nil, "limit", `limit: must be an integer from 1 to 10000, got "0"`)
	h.invalid("GET", "/v1/spend?subject=ml", nil, "subject", `subject: subject "ml": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`)
}

func TestAdmin_AuditAlertsVerify(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for i := range 3 {
		h.admin("POST", "/v1/budgets", map[string]any{"name": fmt.Sprint("b", i), "subject": "team:ml", "limit": "1", "window": "day"}, http.StatusCreated)
	}
	r := h.admin("GET", "/v1/audit?limit=2", nil, http.StatusOK)
	entries := list(r.body["entries"])
	require.Len(t, entries, 2)
	first := obj(entries[0])
	require.Equal(t, "budget.create", first["action"])
	require.Equal(t, "b2", obj(first["details"])["name"])
	require.NotNil(t, r.body["next_before"])
	r = h.admin("GET", fmt.Sprintf("/v1/audit?before=%d", int64(r.body["next_before"].(float64))), nil, http.StatusOK)
	require.Len(t, list(r.body["entries"]), 1)
	require.Nil(t, r.body["next_before"])
	target := str(first["target"])
	r = h.admin("GET", "/v1/audit?target="+target, nil, http.StatusOK)
	require.Len(t, list(r.body["entries"]), 1)
	h.invalid("GET", "/v1/audit?limit=5000", nil, "limit", `limit: must be an integer from 1 to 1000, got "5000"`)
	h.invalid("GET", "/v1/audit?before=x", nil, "before", `before: must be an integer from 0 to 4611686018427387904, got "x"`)

	r = h.admin("GET", "/v1/alerts", nil, http.StatusOK)
	require.Equal(t, []any{}, r.body["alerts"])

	r = h.admin("POST", "/v1/verify", nil, http.StatusOK)
	require.Equal(t, map[string]any{"clean": true, "mismatches": []any{}, "over_limit": []any{}}, r.body)
	// Break the ledger on purpose: verify reports it, in the budget's unit.
	_, err := h.svc.Reserve(context.Background(), []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 500_000}})
	require.NoError(t, err)
	_, err = h.schema.Pool.Exec(context.Background(), `UPDATE budget_windows SET pending = pending + 1`)
	require.NoError(t, err)
	r = h.admin("POST", "/v1/verify", nil, http.StatusOK)
	require.Equal(t, false, r.body["clean"])
	ms := list(r.body["mismatches"])
	require.Len(t, ms, 3)
	require.Equal(t, "0.500001", obj(ms[0])["pending"])
	require.Equal(t, "0.500000", obj(ms[0])["held_pending"])
	require.Equal(t, "usd", obj(ms[0])["unit"])
}

// TestAdmin_RemainingValidation covers the validation of routes not exercised elsewhere.
func TestAdmin_RemainingValidation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r := h.admin("POST", "/v1/templates", map[string]any{"name": "t", "subject_kind": "user", "limit": "1", "window": "day"}, http.StatusCreated)
	tp := fmt.Sprintf("/v1/templates/%d", int64(r.body["id"].(float64)))
	r = h.admin("POST", "/v1/budgets", map[string]any{"name": "b", "subject": "team:ml", "limit": "1", "window": "day"}, http.StatusCreated)
	bp := fmt.Sprintf("/v1/budgets/%d", int64(r.body["id"].(float64)))
	r = h.admin("POST", "/v1/keys", map[string]any{"name": "k"}, http.StatusCreated)
	kp := "/v1/keys/" + str(r.body["id"])

	h.invalid("PATCH", tp, map[string]any{"subject_kind": "planet"}, "subject_kind", `subject_kind: unknown kind "planet"`)
	h.invalid("PATCH", tp, map[string]any{"limit": "1.2.3"}, "limit", `limit: invalid amount "1.2.3": unexpected character '.'`)
	h.invalid("PATCH", tp, map[string]any{"subject": "user:x"}, "subject", "subject: unknown field")
	h.invalid("GET", "/v1/templates/x", nil, "id", `id: must be a positive integer, got "x"`)
	h.invalid("DELETE", "/v1/templates/0", nil, "id", `id: must be a positive integer, got "0"`)
	h.invalid("POST", bp+"/reset", map[string]any{"why": "x"}, "why", "why: unknown field")
	h.invalid("POST", bp+"/reset", map[string]any{"reason": 5}, "reason", "reason: must be a string")
	h.invalid("PATCH", bp, map[string]any{"window": "fortnight"}, "window", `window: window "fortnight": want minute, hour, day, week, month, quarter, year, lifetime or a duration such as 72h`)
	h.invalid("PATCH", bp, "", "", "request body must be a JSON object")
	h.invalid("POST", kp+"/rotate", map[string]any{"name": "x"}, "name", "name: unknown field")
	h.invalid("PATCH", kp, map[string]any{"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "expires_at: is in the past")
	h.invalid("PATCH", kp, map[string]any{"subjects": []string{"nope"}}, "subjects", `subjects: subjects[0]: subject "nope": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`)
	h.invalid("POST", "/v1/verify", map[string]any{"deep": true}, "deep", "deep: unknown field")
	h.invalid("GET", "/v1/alerts?budget_id=x", nil, "budget_id", `budget_id: must be an integer from 0 to 4611686018427387904, got "x"`)
	h.invalid("GET", "/v1/alerts?limit=0", nil, "limit", `limit: must be an integer from 1 to 1000, got "0"`)
	require.Len(t, h.auditActions(), 3, "no invalid request wrote anything")
}

// unavailableReads is the real ledger whose single-budget and single-key reads fail.
type unavailableReads struct{ admin.Ledger }

func (unavailableReads) Budget(context.Context, int64) (budget.Budget, error) {
	return budget.Budget{}, budget.ErrUnavailable
}

func (unavailableReads) Key(context.Context, string) (budget.Key, error) {
	return budget.Key{}, budget.ErrUnavailable
}

// TestAdmin_LookupFailuresAreNotHidden: a read that fails while an answer is being completed
// fails the request; only a budget that is really gone falls back (to raw integers).
func TestAdmin_LookupFailuresAreNotHidden(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	b, err := h.svc.CreateBudget(ctx, "test", budget.Definition{Name: "b", Subject: "team:ml", Limit: 1_000_000, Window: "day", Hard: true})
	require.NoError(t, err)
	_, err = h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 500_000}})
	require.NoError(t, err)
	_, err = h.schema.Pool.Exec(ctx, `UPDATE budget_windows SET pending = pending + 1`)
	require.NoError(t, err)
	k, _, err := h.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "k"})
	require.NoError(t, err)
	_, err = h.svc.RevokeKey(ctx, "test", k.ID)
	require.NoError(t, err)

	srv := httptest.NewServer(admin.New(unavailableReads{h.svc}, admin.Config{Tokens: []string{adminToken}}))
	t.Cleanup(srv.Close)
	down := &harness{t: t, url: srv.URL}
	r := down.admin("POST", "/v1/verify", nil, http.StatusServiceUnavailable)
	require.Equal(t, "unavailable", r.errCode())
	r = down.admin("POST", "/v1/keys/"+k.ID+"/rotate", nil, http.StatusServiceUnavailable)
	require.Equal(t, "unavailable", r.errCode())

	require.NoError(t, h.svc.DeleteBudget(ctx, "test", b.ID))
	r = h.admin("POST", "/v1/verify", nil, http.StatusOK)
	ms := list(r.body["mismatches"])
	require.Len(t, ms, 1)
	require.Equal(t, "", obj(ms[0])["unit"])
	require.Equal(t, "500001", obj(ms[0])["pending"])
}
