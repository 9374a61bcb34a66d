package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

func TestAdmin_Budgets(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	actor := admin.Actor(adminToken)

	r := h.admin("POST", "/v1/budgets", map[string]any{
		"name": "ml monthly", "subject": "team:ml", "limit": "12.50", "window": "month", "timezone": "Europe/Paris",
		"warn_at": []int{80, 50}, "models": []string{"gpt-4o*"}, "endpoints": []string{"/v1/chat/*"},
		"route": map[string]string{"route": "openai"},
	}, http.StatusCreated)
	id := int64(r.body["id"].(float64))
	path := fmt.Sprintf("/v1/budgets/%d", id)
	require.Equal(t, map[string]any{
		"id": float64(id), "name": "ml monthly", "subject": "team:ml", "unit": "usd", "limit": "12.500000", "window": "month",
		"timezone": "Europe/Paris", "anchor_day": float64(0), "hard": true, "warn_at": []any{float64(50), float64(80)},
		"models": []any{"gpt-4o*"}, "endpoints": []any{"/v1/chat/*"}, "route": map[string]any{"route": "openai"},
		"created_at": r.body["created_at"], "updated_at": r.body["updated_at"], "set_by": "admin",
	}, r.body)

	tok := h.admin("POST", "/v1/budgets", map[string]any{
		"name": "ml tokens", "subject": "team:ml", "limit": "150000", "unit": "tokens", "window": "72h", "hard": false,
	}, http.StatusCreated)
	require.Equal(t, "150000", tok.body["limit"])
	require.Equal(t, "72h0m0s", tok.body["window"])
	require.Equal(t, false, tok.body["hard"])
	tokPath := fmt.Sprintf("/v1/budgets/%d", int64(tok.body["id"].(float64)))

	// Duplicate name on the same subject: conflict. Same name elsewhere: fine.
	r = h.admin("POST", "/v1/budgets", map[string]any{"name": "ml monthly", "subject": "team:ml", "limit": "1", "window": "day"}, http.StatusConflict)
	require.Equal(t, "conflict", r.errCode())
	require.Equal(t, "a budget with this name already exists on this subject", r.errMsg())
	h.admin("POST", "/v1/budgets", map[string]any{"name": "ml monthly", "subject": "team:other", "limit": "1", "window": "day"}, http.StatusCreated)

	// The current window: spend a little and read it back.
	d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 2_000_000, Tokens: 1000,
		Target: budget.Target{Model: "gpt-4o", Path: "/v1/chat/completions", Route: map[string]string{"route": "openai"}}}})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, d[0].Outcome)
	_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: 1_250_000, Tokens: 900}})
	require.NoError(t, err)
	_, err = h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 500_000, Tokens: 10,
		Target: budget.Target{Model: "gpt-4o-mini", Path: "/v1/chat/completions", Route: map[string]string{"route": "openai"}}}})
	require.NoError(t, err)

	r = h.admin("GET", path, nil, http.StatusOK)
	cur := obj(r.body["current"])
	require.Equal(t, "12.500000", cur["limit"])
	require.Equal(t, "12.500000", cur["base_limit"])
	require.Equal(t, "1.250000", cur["posted"])
	require.Equal(t, "0.500000", cur["pending"])
	require.Equal(t, "10.750000", cur["remaining"])
	require.Equal(t, float64(14), cur["utilization"])
	require.Equal(t, []any{}, cur["grants"])
	paris, _ := time.LoadLocation("Europe/Paris")
	now := time.Now().In(paris)
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, paris)
	require.Equal(t, monthStart.UTC().Format(time.RFC3339), cur["window_start"])
	require.Equal(t, monthStart.AddDate(0, 1, 0).UTC().Format(time.RFC3339), cur["window_end"])
	require.Equal(t, cur["window_end"], cur["resets_at"])
	require.IsType(t, float64(0), cur["days_until_reset"])

	// A grant raises the limit until it expires.
	g := h.admin("POST", path+"/grants", map[string]any{"amount": "5", "expires_at": time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339), "reason": "launch"}, http.StatusCreated)
	require.Equal(t, "5.000000", g.body["amount"])
	require.Equal(t, "launch", g.body["reason"])
	require.Equal(t, actor, g.body["created_by"])
	cur = obj(h.admin("GET", path, nil, http.StatusOK).body["current"])
	require.Equal(t, "17.500000", cur["limit"])
	require.Equal(t, "12.500000", cur["base_limit"])
	require.Equal(t, "15.750000", cur["remaining"])
	require.Len(t, list(cur["grants"]), 1)
	// A token budget's grant is in tokens.
	g = h.admin("POST", tokPath+"/grants", map[string]any{"amount": "1000", "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, http.StatusCreated)
	require.Equal(t, "1000", g.body["amount"])

	// PATCH: present fields replace, the rest stays.
	r = h.admin("PATCH", path, map[string]any{"limit": "20", "warn_at": []int{90}}, http.StatusOK)
	require.Equal(t, "20.000000", r.body["limit"])
	require.Equal(t, []any{float64(90)}, r.body["warn_at"])
	require.Equal(t, "Europe/Paris", r.body["timezone"])
	require.Equal(t, []any{"gpt-4o*"}, r.body["models"])
	r = h.admin("PATCH", path, map[string]any{"models": nil, "timezone": nil, "subject": "team:ml"}, http.StatusOK)
	require.Equal(t, []any{}, r.body["models"])
	require.Equal(t, "UTC", r.body["timezone"])
	h.invalid("PATCH", path, map[string]any{"subject": "team:other"}, "subject", "subject: cannot change (delete and create a budget instead)")
	h.invalid("PATCH", path, map[string]any{"unit": "tokens"}, "limit", "limit: is required when the unit changes")
	r = h.admin("PATCH", path, map[string]any{"unit": "tokens", "limit": "1000000"}, http.StatusOK)
	require.Equal(t, "1000000", r.body["limit"])
	h.admin("PATCH", "/v1/budgets/999999", map[string]any{"limit": "1"}, http.StatusNotFound)

	// List, by subject.
	r = h.admin("GET", "/v1/budgets?subject=team:ml", nil, http.StatusOK)
	require.Len(t, list(r.body["budgets"]), 2)
	r = h.admin("GET", "/v1/budgets", nil, http.StatusOK)
	require.Len(t, list(r.body["budgets"]), 3)
	h.invalid("GET", "/v1/budgets?subject=ml", nil, "subject", `subject: subject "ml": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`)

	// Reset starts a fresh window now: nothing counted any more.
	r = h.admin("POST", tokPath+"/reset", map[string]any{"reason": "new quarter"}, http.StatusOK)
	require.NotEmpty(t, r.body["reset_at"])
	cur = obj(obj(r.body["budget"])["current"])
	require.Equal(t, "0", cur["posted"])
	require.Equal(t, "0", cur["pending"])
	h.admin("POST", tokPath+"/reset", nil, http.StatusOK) // the reason is optional

	// Delete: 204, then gone.
	r = h.admin("DELETE", path, nil, http.StatusNoContent)
	require.Empty(t, r.raw)
	h.admin("GET", path, nil, http.StatusNotFound)
	h.admin("DELETE", path, nil, http.StatusNotFound)
	h.admin("POST", path+"/grants", map[string]any{"amount": "1", "expires_at": time.Now().Add(time.Hour).Format(time.RFC3339)}, http.StatusNotFound)
	h.admin("POST", path+"/reset", nil, http.StatusNotFound)

	bt := func(p string) string { return "budget:" + strings.TrimPrefix(p, "/v1/budgets/") }
	var got [][2]string
	for _, a := range h.auditActions() {
		require.Equal(t, actor, a[2])
		got = append(got, [2]string{a[0], a[1]})
	}
	require.Equal(t, [][2]string{
		{"budget.create", bt(path)}, {"budget.create", bt(tokPath)}, {"budget.create", got[2][1]},
		{"budget.grant", bt(path)}, {"budget.grant", bt(tokPath)},
		{"budget.update", bt(path)}, {"budget.update", bt(path)}, {"budget.update", bt(path)},
		{"budget.reset", bt(tokPath)}, {"budget.reset", bt(tokPath)},
		{"budget.delete", bt(path)},
	}, got)
}

func TestAdmin_BudgetValidation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	base := func(kv ...any) map[string]any {
		m := map[string]any{"name": "b", "subject": "team:ml", "limit": "10", "window": "month"}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
				continue
			}
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	for name, tc := range map[string]struct {
		body       any
		field, msg string
	}{
		"BadDecimal":     {base("limit", "12.5.0"), "limit", `limit: invalid amount "12.5.0": unexpected character '.'`},
		"TooPrecise":     {base("limit", "0.0000001"), "limit", `limit: invalid amount "0.0000001": more than 6 decimal places`},
		"Negative":       {base("limit", "-1"), "limit", `limit: invalid amount "-1": negative amount not allowed`},
		"LimitNumber":    {base("limit", 12.5), "limit", `limit: must be a decimal string such as "12.50" (or "150000" tokens)`},
		"NoLimit":        {base("limit", nil), "limit", "limit: is required"},
		"TooLarge":       {base("limit", "9999999999"), "limit", "limit: is too large"},
		"FractionTokens": {base("unit", "tokens", "limit", "12.5"), "limit", `limit: want a whole number of tokens such as "150000", got "12.5"`},
		"Unit":           {base("unit", "eur"), "unit", `unit: must be usd, tokens or requests, got "eur"`},
		"NoName":         {base("name", nil), "name", "name: is required"},
		"NoSubject":      {base("subject", nil), "subject", "subject: subject is empty"},
		"Subject":        {base("subject", "team"), "subject", `subject: subject "team": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`},
		"NoWindow":       {base("window", nil), "window", "window: is required"},
		"Window":         {base("window", "fortnight"), "window", `window: window "fortnight": want minute, hour, day, week, month, quarter, year, lifetime or a duration such as 72h`},
		"ShortRolling":   {base("window", "10s"), "window", "window: rolling window must be between 1m0s and 9600h0m0s, got 10s"},
		"Timezone":       {base("timezone", "Mars/Olympus"), "timezone", `timezone: "Mars/Olympus" is not a known IANA time zone`},
		"AnchorDay":      {base("window", "week", "anchor_day", 5), "anchor_day", `anchor_day: anchor day applies to month, quarter and year windows, not "week"`},
		"AnchorType":     {base("anchor_day", "5"), "anchor_day", "anchor_day: must be an integer"},
		"WarnAt":         {base("warn_at", []int{50, 0}), "warn_at", "warn_at: 0 is not a percentage in 1..1000"},
		"WarnAtTwice":    {base("warn_at", []int{50, 50}), "warn_at", "warn_at: 50 appears twice"},
		"WarnAtType":     {base("warn_at", []string{"50%"}), "warn_at", "warn_at: must be an array of integers"},
		"Model":          {base("models", []string{"gpt-4o", "]"}), "models[1]", `models[1]: pattern "]": unmatched ']' at byte 0`},
		"Endpoint":       {base("endpoints", []string{"v1/chat"}), "endpoints[0]", `endpoints[0]: must start with / or *, got "v1/chat"`},
		"Route":          {base("route", map[string]string{"route": ""}), "route", "route: keys and values must be non-empty"},
		"RouteType":      {base("route", map[string]any{"route": 1}), "route", "route: must be an object of string values"},
		"Hard":           {base("hard", "yes"), "hard", "hard: must be true or false"},
		"HardNull":       {base("hard", nil), "", ""},
		"Unknown":        {base("subject_kind", "user"), "subject_kind", "subject_kind: unknown field"},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "HardNull" {
				body := `{"name": "b", "subject": "team:ml", "limit": "10", "window": "month", "hard": null}`
				h.invalid("POST", "/v1/budgets", body, "hard", "hard: must not be null")
				return
			}
			h.invalid("POST", "/v1/budgets", tc.body, tc.field, tc.msg)
		})
	}

	t.Run("BodyTooLarge", func(t *testing.T) {
		big := fmt.Sprintf(`{"name": "b", "subject": "team:ml", "limit": "10", "window": "month", "models": ["%s"]}`, strings.Repeat("x", 1<<20))
		r := h.call("POST", "/v1/budgets", big, adminToken)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.status)
		require.Equal(t, "too_large", r.errCode())
		require.Equal(t, "request body is larger than 1048576 bytes", r.errMsg())
	})
	t.Run("GrantValidation", func(t *testing.T) {
		r := h.admin("POST", "/v1/budgets", base(), http.StatusCreated)
		p := fmt.Sprintf("/v1/budgets/%d/grants", int64(r.body["id"].(float64)))
		future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		h.invalid("POST", p, map[string]any{"expires_at": future}, "amount", "amount: is required")
		h.invalid("POST", p, map[string]any{"amount": "1,5", "expires_at": future}, "amount", `amount: invalid amount "1,5": unexpected character ','`)
		h.invalid("POST", p, map[string]any{"amount": "0", "expires_at": future}, "amount", "amount: must be positive")
		h.invalid("POST", p, map[string]any{"amount": "1"}, "expires_at", "expires_at: is required")
		h.invalid("POST", p, map[string]any{"amount": "1", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "expires_at: must be in the future")
		h.invalid("POST", p, map[string]any{"amount": "1", "expires_at": future, "why": "x"}, "why", "why: unknown field")
	})
	require.Len(t, h.auditActions(), 1, "only the valid budget was written")
}

func TestAdmin_Templates(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	r := h.admin("POST", "/v1/templates", map[string]any{"name": "user default", "subject_kind": "user", "limit": "10", "window": "month", "warn_at": []int{80}}, http.StatusCreated)
	id := int64(r.body["id"].(float64))
	path := fmt.Sprintf("/v1/templates/%d", id)
	require.Equal(t, "user", r.body["subject_kind"])
	require.NotContains(t, r.body, "subject")
	require.Equal(t, "10.000000", r.body["limit"])
	require.Equal(t, true, r.body["hard"])

	h.invalid("POST", "/v1/templates", map[string]any{"name": "t", "limit": "1", "window": "day"}, "subject_kind", "subject_kind: is required")
	h.invalid("POST", "/v1/templates", map[string]any{"name": "t", "subject_kind": "planet", "limit": "1", "window": "day"}, "subject_kind", `subject_kind: unknown kind "planet"`)
	h.invalid("POST", "/v1/templates", map[string]any{"name": "t", "subject": "user:x", "subject_kind": "user", "limit": "1", "window": "day"}, "subject", "subject: unknown field")
	r = h.admin("POST", "/v1/templates", map[string]any{"name": "user default", "subject_kind": "team", "limit": "1", "window": "day"}, http.StatusConflict)
	require.Equal(t, "a template with this name already exists", r.errMsg())

	r = h.admin("GET", "/v1/templates", nil, http.StatusOK)
	require.Len(t, list(r.body["templates"]), 1)
	r = h.admin("GET", path, nil, http.StatusOK)
	require.Equal(t, "user default", r.body["name"])
	h.admin("GET", "/v1/templates/999", nil, http.StatusNotFound)

	r = h.admin("PATCH", path, map[string]any{"limit": "25.5"}, http.StatusOK)
	require.Equal(t, "25.500000", r.body["limit"])
	require.Equal(t, []any{float64(80)}, r.body["warn_at"])
	require.Equal(t, "user", r.body["subject_kind"])

	// A new user gets the template's budget on first use.
	_, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"user:carol"}, Cost: 1}})
	require.NoError(t, err)
	r = h.admin("GET", "/v1/budgets?subject=user:carol", nil, http.StatusOK)
	require.Len(t, list(r.body["budgets"]), 1)
	b := obj(list(r.body["budgets"])[0])
	require.Equal(t, "25.500000", b["limit"])
	require.Equal(t, float64(id), b["template_id"])

	h.admin("DELETE", path, nil, http.StatusNoContent)
	h.admin("DELETE", path, nil, http.StatusNotFound)
	r = h.admin("GET", "/v1/templates", nil, http.StatusOK)
	require.Empty(t, list(r.body["templates"]))

	var got []string
	for _, a := range h.auditActions() {
		if a[1] == fmt.Sprintf("template:%d", id) {
			got = append(got, a[0])
		}
	}
	require.Equal(t, []string{"template.create", "template.update", "template.delete"}, got)
}
