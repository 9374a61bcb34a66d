package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

func TestAdmin_Tokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r := h.admin("POST", "/v1/tokens", map[string]any{"name": "ml lead", "role": "manager", "scope": []string{"team:ml"}}, http.StatusCreated)
	secret := str(r.body["token"])
	id := str(r.body["id"])
	require.True(t, strings.HasPrefix(secret, "pt_"))
	require.Equal(t, "manager", r.body["role"])
	require.Equal(t, []any{"team:ml"}, r.body["scope"])
	require.Equal(t, "active", r.body["state"])

	// The manager token works within its scope, and is refused outside it and on admin routes.
	r = h.call("POST", "/v1/budgets", map[string]any{"name": "nlp", "subject": "team:ml/nlp", "limit": "5", "window": "month"}, secret)
	require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
	require.Equal(t, "manager", r.body["set_by"])
	r = h.call("POST", "/v1/budgets", map[string]any{"name": "web", "subject": "team:web", "limit": "5", "window": "month"}, secret)
	require.Equal(t, http.StatusForbidden, r.status)
	require.Equal(t, "subject team:web is outside your scope (team:ml)", r.errMsg())
	r = h.call("GET", "/v1/tokens", nil, secret)
	require.Equal(t, http.StatusForbidden, r.status)
	require.Equal(t, "a manager token cannot call GET /v1/tokens", r.errMsg())

	// Listed without secrets; the audit log names the token.
	r = h.admin("GET", "/v1/tokens", nil, http.StatusOK)
	require.Len(t, list(r.body["tokens"]), 1)
	require.NotContains(t, string(r.raw), secret)
	require.Contains(t, h.auditActions(), [3]string{"budget.create", "budget:1", "token:" + id})

	// Revoked: refused at once.
	r = h.admin("DELETE", "/v1/tokens/"+id, nil, http.StatusOK)
	require.Equal(t, "revoked", r.body["state"])
	r = h.call("GET", "/v1/budgets", nil, secret)
	require.Equal(t, http.StatusUnauthorized, r.status)
	require.Equal(t, "admin token revoked", r.errMsg())
	h.invalid("POST", "/v1/tokens", map[string]any{"name": "x", "role": "viewer", "scope": []string{"team:ml"}}, "scope", "scope: only a manager has a scope")
	h.admin("GET", "/v1/tokens/tok_nope", nil, http.StatusNotFound)

	// Stored tokens work without any bootstrap token.
	h2 := newHarness(t, []string{}...)
	_, s2, err := h2.svc.CreateToken(context.Background(), budget.AdminActor("t"), budget.TokenSpec{Name: "a", Role: "viewer"})
	require.NoError(t, err)
	r = h2.call("GET", "/v1/budgets", nil, s2)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	r = h2.call("GET", "/v1/budgets", nil, "anything")
	require.Equal(t, "the admin API is disabled until PURSER_ADMIN_TOKEN is set", r.errMsg())
}

func TestAdmin_SignInAndPrincipal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	api := admin.New(h.svc, admin.Config{Tokens: []string{adminToken}})
	k, keySecret, err := h.svc.CreateKey(ctx, "t", budget.KeySpec{Name: "k", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	tk, tokSecret, err := h.svc.CreateToken(ctx, budget.AdminActor("t"), budget.TokenSpec{Name: "v", Role: "viewer"})
	require.NoError(t, err)

	for secret, want := range map[string]string{adminToken: "admin", keySecret: "key", tokSecret: "viewer", " " + tokSecret + "\n": "viewer"} {
		p, err := api.SignIn(ctx, secret)
		require.NoError(t, err)
		require.Equal(t, want, p.Role())
		require.NotContains(t, p.Ref, strings.TrimSpace(secret), "a reference never holds the secret")
		again, err := api.Principal(ctx, p.Ref)
		require.NoError(t, err)
		require.Equal(t, p.Ref, again.Ref)
	}
	for secret, msg := range map[string]string{"": "enter an admin token or a purser API key", "pk_nope": "unknown API key",
		"pt_nope": "invalid admin token", "guess": "invalid admin token"} {
		_, err := api.SignIn(ctx, secret)
		require.ErrorIs(t, err, admin.ErrSignIn)
		require.EqualError(t, err, msg)
	}
	// Revocation ends what a session refers to; a bootstrap token no longer configured too.
	p, err := api.SignIn(ctx, keySecret)
	require.NoError(t, err)
	_, err = h.svc.RevokeKey(ctx, "t", k.ID)
	require.NoError(t, err)
	_, err = api.Principal(ctx, p.Ref)
	require.ErrorIs(t, err, admin.ErrSignIn)
	_, err = h.svc.RevokeToken(ctx, budget.AdminActor("t"), tk.ID)
	require.NoError(t, err)
	_, err = api.Principal(ctx, "token:"+tk.ID)
	require.ErrorIs(t, err, admin.ErrSignIn)
	envP, err := api.SignIn(ctx, adminToken)
	require.NoError(t, err)
	other := admin.New(h.svc, admin.Config{Tokens: []string{"another-token-0123456789"}})
	_, err = other.Principal(ctx, envP.Ref)
	require.ErrorIs(t, err, admin.ErrSignIn)

	// A principal in the context is served without any Authorization header, under the
	// same rules.
	rec := httptest.NewRecorder()
	req := httptest.NewRequestWithContext(admin.WithPrincipal(ctx, envP), "GET", "/v1/budgets", nil)
	api.ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	keyP, err := api.SignIn(ctx, mustKey(t, h))
	require.NoError(t, err)
	rec = httptest.NewRecorder()
	api.ServeHTTP(rec, httptest.NewRequestWithContext(admin.WithPrincipal(ctx, keyP), "GET", "/v1/budgets", nil))
	require.Equal(t, http.StatusForbidden, rec.Code, "a key holder's principal is still no admin")
}

func mustKey(t *testing.T, h *harness) string {
	t.Helper()
	_, secret, err := h.svc.CreateKey(context.Background(), "t", budget.KeySpec{Name: "another", Subjects: []string{"user:x"}})
	require.NoError(t, err)
	return secret
}

func TestAdmin_BudgetListsAndHistory(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	for i := range 25 {
		subject := fmt.Sprintf("team:t%02d", i)
		_, err := h.svc.CreateBudget(ctx, "t", budget.Definition{Name: fmt.Sprintf("Budget %02d", i), Subject: subject, Limit: 100, Window: "day", Hard: true})
		require.NoError(t, err)
	}
	ids := func(r response) []int64 {
		var out []int64
		for _, b := range list(r.body["budgets"]) {
			out = append(out, int64(obj(b)["id"].(float64)))
		}
		return out
	}
	p1 := h.admin("GET", "/v1/budgets?limit=10", nil, http.StatusOK)
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, ids(p1))
	require.Nil(t, p1.body["prev_before"])
	p2 := h.admin("GET", "/v1/budgets?limit=10&after=10", nil, http.StatusOK)
	require.Equal(t, float64(11), p2.body["prev_before"])
	back := h.admin("GET", "/v1/budgets?limit=10&before=11", nil, http.StatusOK)
	require.Equal(t, ids(p1), ids(back), "before walks back to the same page")
	require.Nil(t, back.body["prev_before"], "the first page has no previous")
	require.Equal(t, float64(10), back.body["next_after"])
	last := h.admin("GET", "/v1/budgets?limit=10&before=26", nil, http.StatusOK)
	require.Equal(t, []int64{16, 17, 18, 19, 20, 21, 22, 23, 24, 25}, ids(last))
	end := h.admin("GET", "/v1/budgets?limit=10&before=4611686018427387904", nil, http.StatusOK)
	require.Equal(t, ids(last), ids(end), "the largest cursor reads the last page (a bigint, not an int4)")

	s := h.admin("GET", "/v1/budgets?q=TEAM:T1", nil, http.StatusOK)
	require.Len(t, ids(s), 10, "subject prefix, case-insensitive")
	s = h.admin("GET", "/v1/budgets?q=get%2007", nil, http.StatusOK)
	require.Equal(t, []int64{8}, ids(s), "name substring")
	h.invalid("GET", "/v1/budgets?sort=name", nil, "sort", `sort: must be id or utilization, got "name"`)
	h.invalid("GET", "/v1/budgets?after=1&before=3", nil, "before", "before: cannot be combined with after")

	// Spend on two budgets: current windows and the utilisation order.
	for _, sub := range []budget.Subject{"team:t03", "team:t03", "team:t07"} {
		d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{sub}, Cost: 20, Tokens: 1, Target: budget.Target{Model: "gpt-4o"}}})
		require.NoError(t, err)
		_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: 20, Tokens: 1, Cause: "usage"}})
		require.NoError(t, err)
	}
	cur := h.admin("GET", "/v1/budgets?limit=5&current=true", nil, http.StatusOK)
	for _, b := range list(cur.body["budgets"]) {
		require.NotNil(t, obj(b)["current"])
	}
	require.Equal(t, "0.000040", obj(obj(list(cur.body["budgets"])[3])["current"])["posted"])
	top := h.admin("GET", "/v1/budgets?sort=utilization&limit=5", nil, http.StatusOK)
	require.Equal(t, []int64{4, 8}, ids(top), "only budgets with spend, most used first")

	hist := h.admin("GET", "/v1/budgets/4/history", nil, http.StatusOK)
	require.Equal(t, float64(3600), hist.body["bucket_seconds"])
	pts := list(hist.body["points"])
	require.Len(t, pts, 1)
	require.Equal(t, "0.000040", obj(pts[0])["amount"])
	require.Equal(t, "0.000040", obj(obj(hist.body["budget"])["current"])["posted"])
}

func TestAdmin_Requests(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	k, keySecret, err := h.svc.CreateKey(ctx, "t", budget.KeySpec{Name: "k", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	const n = 25
	for i := range n {
		r := budget.ReserveRequest{Subjects: k.AllSubjects(), KeyID: k.ID, Cost: int64(1000 + i), Tokens: int64(100 + i),
			Target: budget.Target{Model: []string{"gpt-4o", "=HYPERLINK(\"x\")"}[i%2]}, RequestID: fmt.Sprintf("req-%d", i), Provider: "openai"}
		if i%5 == 4 {
			r.Subjects, r.KeyID = []budget.Subject{"team:web"}, ""
		}
		d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{r})
		require.NoError(t, err)
		if i%3 == 0 {
			_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: int64(500 + i), Tokens: int64(50 + i),
				Usage: []byte(fmt.Sprintf(`{"input_tokens":%d,"output_tokens":7}`, 43+i)), Cause: "usage"}})
			require.NoError(t, err)
		}
	}

	// JSON pages of 10 walk all 25, newest first.
	var all []admin.Request
	path := "/v1/requests?limit=10"
	for {
		r := h.admin("GET", path, nil, http.StatusOK)
		var page struct {
			Requests   []admin.Request `json:"requests"`
			NextBefore *string         `json:"next_before"`
		}
		require.NoError(t, json.Unmarshal(r.raw, &page))
		all = append(all, page.Requests...)
		if page.NextBefore == nil {
			break
		}
		path = "/v1/requests?limit=10&before=" + *page.NextBefore
	}
	require.Len(t, all, n)
	require.Equal(t, "req-24", *all[0].RequestID)
	first := all[n-1]
	require.Equal(t, "settled", first.State)
	require.Equal(t, "0.001000", first.HoldCost)
	require.Equal(t, "0.000500", *first.ActualCost)
	require.Equal(t, "43", *first.InputTokens)
	require.Equal(t, []string{"key:" + k.ID, "team:ml"}, first.Subjects)

	r := h.admin("GET", "/v1/requests?subject=team:web&state=pending", nil, http.StatusOK)
	require.Len(t, list(r.body["requests"]), 3, "i = 4, 14, 19 (9 and 24 are settled)")
	r = h.admin("GET", "/v1/requests?key="+k.ID+"&model=gpt-4o", nil, http.StatusOK)
	require.Len(t, list(r.body["requests"]), 10)
	h.invalid("GET", "/v1/requests?format=xml", nil, "format", `format: must be json or csv or jsonl, got "xml"`)
	h.invalid("GET", "/v1/requests?state=done&format=csv", nil, "state", `state: must be pending, settled, voided or expired, got "done"`)

	// The CSV export holds exactly the JSON records, in order, with formula-like text defused.
	res := h.raw("GET", "/v1/requests?format=csv", adminToken)
	require.Equal(t, "text/csv; charset=utf-8", res.Header.Get("Content-Type"))
	require.Contains(t, res.Header.Get("Content-Disposition"), `attachment; filename="requests-`)
	rows, err := csv.NewReader(bytes.NewReader(res.body)).ReadAll()
	require.NoError(t, err)
	require.Len(t, rows, n+1)
	require.Equal(t, "id", rows[0][0])
	for i, row := range rows[1:] {
		want := all[i]
		require.Equal(t, want.ID, row[0])
		require.Equal(t, want.State, row[1])
		require.Equal(t, strings.Join(want.Subjects, " "), row[3])
		model := want.Model
		if strings.HasPrefix(model, "=") {
			model = "'" + model
		}
		require.Equal(t, model, row[7])
		require.Equal(t, want.HoldCost, row[10])
		require.Equal(t, deref(want.ActualCost), row[12])
		require.Equal(t, want.CreatedAt.Format(time.RFC3339Nano), row[20])
	}
	// JSON lines: one record per line, equal to the JSON list's.
	res = h.raw("GET", "/v1/requests?format=jsonl&subject=team:ml", adminToken)
	sc := bufio.NewScanner(bytes.NewReader(res.body))
	var lines []admin.Request
	for sc.Scan() {
		var x admin.Request
		require.NoError(t, json.Unmarshal(sc.Bytes(), &x))
		lines = append(lines, x)
	}
	require.Len(t, lines, 20)
	require.Equal(t, all[1], lines[0])

	// A key holder sees only its key's requests.
	r = h.call("GET", "/v1/me/requests?limit=1000", nil, keySecret)
	require.Equal(t, http.StatusOK, r.status)
	require.Len(t, list(r.body["requests"]), 20)
	require.NotContains(t, string(r.raw), "team:web")

	// The spend report as CSV has the JSON report's rows.
	sj := h.admin("GET", "/v1/spend?group_by=model", nil, http.StatusOK)
	res = h.raw("GET", "/v1/spend?group_by=model&format=csv", adminToken)
	rows, err = csv.NewReader(bytes.NewReader(res.body)).ReadAll()
	require.NoError(t, err)
	require.Equal(t, []string{"model", "cost", "tokens", "requests"}, rows[0][:4])
	require.Len(t, rows, len(list(sj.body["rows"]))+1)
	for i, x := range list(sj.body["rows"]) {
		require.Equal(t, str(obj(x)["cost"]), rows[i+1][1])
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

type rawResponse struct {
	http.Header
	body []byte
}

func (h *harness) raw(method, path, bearer string) rawResponse {
	h.t.Helper()
	req, err := http.NewRequest(method, h.url+path, nil)
	require.NoError(h.t, err)
	req.Header.Set("Authorization", "Bearer "+bearer)
	res, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(h.t, err)
	require.Equal(h.t, http.StatusOK, res.StatusCode, "%s: %s", path, body)
	return rawResponse{res.Header, body}
}

// failingLedger fails EachRequest after its first page.
type failingLedger struct {
	admin.Ledger
}

func (f failingLedger) EachRequest(ctx context.Context, q budget.RequestQuery, fn func(budget.RequestRecord) error) error {
	for i := range 3000 {
		if err := fn(budget.RequestRecord{Reservation: budget.Reservation{ID: fmt.Sprint(i), State: "settled"}}); err != nil {
			return err
		}
	}
	return errors.New("connection reset")
}

// An export that fails midway is aborted: the client sees an error, never a short file.
func TestAdmin_ExportAbortsOnError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(admin.New(failingLedger{}, admin.Config{Tokens: []string{adminToken}}))
	defer srv.Close()
	req, err := http.NewRequest("GET", srv.URL+"/v1/requests?format=csv", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "rows were already on their way")
	_, err = io.ReadAll(res.Body)
	require.Error(t, err, "the body ends in an error, not a clean EOF")
}
