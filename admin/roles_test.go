package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// The intended policy, written independently of routes(): who may call each route. A route
// missing here, or whose rule differs, fails TestRoles_EveryRoute.
var intendedAccess = map[string]string{
	"POST /v1/keys":                   "change",
	"GET /v1/keys":                    "read",
	"GET /v1/keys/{id}":               "read",
	"PATCH /v1/keys/{id}":             "change",
	"DELETE /v1/keys/{id}":            "change",
	"POST /v1/keys/{id}/rotate":       "change",
	"POST /v1/budgets":                "change",
	"GET /v1/budgets":                 "read",
	"GET /v1/budgets/{id}":            "read",
	"PATCH /v1/budgets/{id}":          "change",
	"DELETE /v1/budgets/{id}":         "change",
	"POST /v1/budgets/{id}/grants":    "change",
	"POST /v1/budgets/{id}/reset":     "change",
	"GET /v1/budgets/{id}/history":    "read",
	"POST /v1/templates":              "admin",
	"GET /v1/templates":               "read",
	"GET /v1/templates/{id}":          "read",
	"PATCH /v1/templates/{id}":        "admin",
	"DELETE /v1/templates/{id}":       "admin",
	"POST /v1/tokens":                 "admin",
	"GET /v1/tokens":                  "admin",
	"GET /v1/tokens/{id}":             "admin",
	"DELETE /v1/tokens/{id}":          "admin",
	"GET /v1/status":                  "read",
	"GET /v1/spend":                   "read",
	"GET /v1/requests":                "read",
	"GET /v1/audit":                   "global",
	"GET /v1/alerts":                  "read",
	"POST /v1/verify":                 "global",
	"GET /v1/me":                      "key",
	"GET /v1/me/requests":             "key",
	"GET /v1/me/budgets/{id}/history": "key",
	"GET /v1/openapi.yaml":            "public",
}

var accessRules = map[string]rule{
	"read": ruleRead, "change": ruleChange, "admin": ruleAdmin, "global": ruleReadGlobal, "key": ruleKey, "public": rulePublic,
}

// roleFixture holds the credentials and makes fresh resources inside ("in": the manager's
// scope, team:ml; for key routes the key's own) or outside it (team:web).
type roleFixture struct {
	t      *testing.T
	svc    *budget.Service
	admin  budget.Actor
	mgr    budget.Actor
	keyID  string
	n      atomic.Int64
	outKey string // a key outside the manager's scope (listed to check filtering)
}

func (f *roleFixture) name(prefix string) string { return fmt.Sprintf("%s-%d", prefix, f.n.Add(1)) }

// budget makes a budget inside the scope (set by the manager, so it may change it) or outside.
func (f *roleFixture) budget(in bool) int64 {
	f.t.Helper()
	by, subject := f.mgr, "team:ml/"+f.name("b")
	if !in {
		by, subject = f.admin, "team:web"
	}
	b, err := f.svc.CreateBudgetAs(context.Background(), by, budget.Definition{Name: f.name("budget"), Subject: subject, Limit: 1_000_000, Window: "day", Hard: true})
	require.NoError(f.t, err)
	return b.ID
}

func (f *roleFixture) key(in bool) string {
	f.t.Helper()
	owner := "team:ml"
	if !in {
		owner = "team:web"
	}
	k, _, err := f.svc.CreateKeyAs(context.Background(), f.admin, budget.KeySpec{Name: f.name("key"), Subjects: []string{owner}})
	require.NoError(f.t, err)
	return k.ID
}

func (f *roleFixture) template() int64 {
	f.t.Helper()
	b, err := f.svc.CreateTemplate(context.Background(), "t", budget.Definition{Name: f.name("tpl"), Kind: "user", Limit: 1, Window: "day"})
	require.NoError(f.t, err)
	return b.ID
}

func (f *roleFixture) token() string {
	f.t.Helper()
	tk, _, err := f.svc.CreateToken(context.Background(), f.admin, budget.TokenSpec{Name: f.name("tok"), Role: "viewer"})
	require.NoError(f.t, err)
	return tk.ID
}

// ownBudget makes a budget of the key holder's (on its owner team:ml) or not its own.
func (f *roleFixture) ownBudget(in bool) int64 {
	f.t.Helper()
	subject := "key:" + f.keyID
	if !in {
		subject = "team:web"
	}
	b, err := f.svc.CreateBudgetAs(context.Background(), f.admin, budget.Definition{Name: f.name("own"), Subject: subject, Limit: 1, Window: "day"})
	require.NoError(f.t, err)
	return b.ID
}

type roleCase struct {
	// build returns the path and body of a request about a resource inside (in) or outside
	// the manager's scope; built fresh for every call, so changes never collide.
	build func(f *roleFixture, in bool) (string, any)
	// filtered: a manager's answer about "outside" is a 200 list that must not contain it.
	filtered bool
	// unscoped: the resource belongs to no subject (templates), or is always the caller's own
	// (/v1/me): in and out are the same.
	unscoped bool
}

func id(v any) string { return fmt.Sprint(v) }

var roleCases = map[string]roleCase{
	"POST /v1/keys": {build: func(f *roleFixture, in bool) (string, any) {
		owner := map[bool]string{true: "team:ml", false: "team:web"}[in]
		return "/v1/keys", map[string]any{"name": f.name("k"), "subjects": []string{owner}}
	}},
	"GET /v1/keys":      {build: func(f *roleFixture, in bool) (string, any) { return "/v1/keys", nil }, filtered: true},
	"GET /v1/keys/{id}": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/keys/" + f.key(in), nil }},
	"PATCH /v1/keys/{id}": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/keys/" + f.key(in), map[string]any{"name": "renamed"}
	}},
	"DELETE /v1/keys/{id}": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/keys/" + f.key(in), nil
	}},
	"POST /v1/keys/{id}/rotate": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/keys/" + f.key(in) + "/rotate", nil }},
	"POST /v1/budgets": {build: func(f *roleFixture, in bool) (string, any) {
		subject := map[bool]string{true: "team:ml/new", false: "team:web"}[in]
		return "/v1/budgets", map[string]any{"name": f.name("nb"), "subject": subject, "limit": "1", "window": "day"}
	}},
	"GET /v1/budgets":      {build: func(f *roleFixture, in bool) (string, any) { return "/v1/budgets?current=true", nil }, filtered: true},
	"GET /v1/budgets/{id}": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/budgets/" + id(f.budget(in)), nil }},
	"PATCH /v1/budgets/{id}": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/budgets/" + id(f.budget(in)), map[string]any{"limit": "0.5"}
	}},
	"DELETE /v1/budgets/{id}": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/budgets/" + id(f.budget(in)), nil }},
	"POST /v1/budgets/{id}/grants": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/budgets/" + id(f.budget(in)) + "/grants", map[string]any{"amount": "0.1", "expires_at": time.Now().Add(time.Hour)}
	}},
	"POST /v1/budgets/{id}/reset": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/budgets/" + id(f.budget(in)) + "/reset", nil }},
	"GET /v1/budgets/{id}/history": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/budgets/" + id(f.budget(in)) + "/history", nil
	}},
	"POST /v1/templates": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/templates", map[string]any{"name": f.name("t"), "subject_kind": "user", "limit": "1", "window": "day"}
	}},
	"GET /v1/templates":      {build: func(f *roleFixture, in bool) (string, any) { return "/v1/templates", nil }, unscoped: true},
	"GET /v1/templates/{id}": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/templates/" + id(f.template()), nil }, unscoped: true},
	"PATCH /v1/templates/{id}": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/templates/" + id(f.template()), map[string]any{"limit": "2"}
	}},
	"DELETE /v1/templates/{id}": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/templates/" + id(f.template()), nil }},
	"POST /v1/tokens": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/tokens", map[string]any{"name": f.name("nt"), "role": "viewer"}
	}},
	"GET /v1/tokens":         {build: func(f *roleFixture, in bool) (string, any) { return "/v1/tokens", nil }},
	"GET /v1/tokens/{id}":    {build: func(f *roleFixture, in bool) (string, any) { return "/v1/tokens/" + f.token(), nil }},
	"DELETE /v1/tokens/{id}": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/tokens/" + f.token(), nil }},
	"GET /v1/status": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/status?subject=" + map[bool]string{true: "team:ml", false: "team:web"}[in], nil
	}},
	"GET /v1/spend": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/spend?group_by=model&subject=" + map[bool]string{true: "team:ml", false: "team:web"}[in], nil
	}},
	"GET /v1/requests": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/requests", nil }, filtered: true},
	"GET /v1/audit":    {build: func(f *roleFixture, in bool) (string, any) { return "/v1/audit", nil }},
	"GET /v1/alerts": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/alerts?budget_id=" + id(f.budget(in)), nil
	}},
	"POST /v1/verify":     {build: func(f *roleFixture, in bool) (string, any) { return "/v1/verify", nil }},
	"GET /v1/me":          {build: func(f *roleFixture, in bool) (string, any) { return "/v1/me", nil }, unscoped: true},
	"GET /v1/me/requests": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/me/requests", nil }, unscoped: true},
	"GET /v1/me/budgets/{id}/history": {build: func(f *roleFixture, in bool) (string, any) {
		return "/v1/me/budgets/" + id(f.ownBudget(in)) + "/history", nil
	}},
	"GET /v1/openapi.yaml": {build: func(f *roleFixture, in bool) (string, any) { return "/v1/openapi.yaml", nil }},
}

// TestRoles_EveryRoute walks the router's routes: each must have an intended rule and a case
// here, and every kind of caller gets exactly the answer class its role and scope allow: 2xx
// when allowed, 403 when refused (401 without a credential), and a manager's lists never
// hold anything outside its scope.
func TestRoles_EveryRoute(t *testing.T) {
	t.Parallel()
	const envToken = "bootstrap-token-0123456789"
	schema := pgtest.New(t)
	st := store.New(schema.Pool)
	svc := budget.New(st, st, budget.Config{})
	srv := httptest.NewServer(New(svc, Config{Tokens: []string{envToken}}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	adminActor := budget.AdminActor("admin:test")

	mk := func(role string, scope ...string) string {
		_, secret, err := svc.CreateToken(ctx, adminActor, budget.TokenSpec{Name: role, Role: role, Scope: scope})
		require.NoError(t, err)
		return secret
	}
	creds := map[string]string{
		"admin-env": envToken, "admin-db": mk("admin"), "viewer": mk("viewer"), "manager": mk("manager", "team:ml"),
	}
	key, keySecret, err := svc.CreateKey(ctx, "t", budget.KeySpec{Name: "holder", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	creds["key"] = keySecret
	f := &roleFixture{t: t, svc: svc, admin: adminActor, keyID: key.ID,
		mgr: budget.Actor{Name: "token:mgr", Role: budget.RoleManager, Scope: budget.Scope{"team:ml"}}}
	f.outKey = f.key(false)
	f.budget(false)
	// A request outside the manager's scope, and one inside.
	for _, s := range []budget.Subject{"team:web", "team:ml"} {
		_, err := svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{s}, Cost: 1, Tokens: 1, Target: budget.Target{Model: "m-" + string(s)}}})
		require.NoError(t, err)
	}

	call := func(cred, method, path string, body any) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			rd = strings.NewReader(mustJSON(t, body))
		}
		req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, rd)
		require.NoError(t, err)
		if cred != "" {
			req.Header.Set("Authorization", "Bearer "+cred)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		raw, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return res.StatusCode, string(raw)
	}

	seen := map[string]bool{}
	for _, rt := range routes() {
		name := rt.method + " " + rt.path
		seen[name] = true
		intended, ok := intendedAccess[name]
		require.True(t, ok, "route %s has no intended access rule in this test: add one", name)
		require.Equal(t, accessRules[intended], rt.rule, "route %s: its rule is not the intended %q", name, intended)
		c, ok := roleCases[name]
		require.True(t, ok, "route %s has no role case in this test: add one", name)
		t.Run(strings.NewReplacer("/", "_", " ", "_", "{", "", "}", "").Replace(name), func(t *testing.T) {
			// Anonymous.
			path, body := c.build(f, true)
			status, raw := call("", rt.method, path, body)
			if rt.rule.public {
				require.Equal(t, http.StatusOK, status, raw)
				return
			}
			require.Equal(t, http.StatusUnauthorized, status, "anonymous: %s", raw)

			for who, cred := range creds {
				for _, in := range []bool{true, false} {
					path, body := c.build(f, in)
					status, raw := call(cred, rt.method, path, body)
					want := expected(rt.rule, who, in || c.unscoped, c.filtered)
					label := fmt.Sprintf("%s (in scope %v) %s %s: %s", who, in, rt.method, path, raw)
					require.Less(t, status, 500, label)
					switch want {
					case "ok":
						require.True(t, status/100 == 2, label)
						if who == "manager" && c.filtered {
							for _, marker := range []string{"team:web", f.outKey} {
								require.NotContains(t, raw, marker, "a manager's list holds something outside its scope: "+label)
							}
						}
					case "unauthorized":
						require.Equal(t, http.StatusUnauthorized, status, label)
					case "not found":
						require.Equal(t, http.StatusNotFound, status, label)
					default:
						require.Equal(t, http.StatusForbidden, status, label)
						require.Contains(t, raw, `"code":"forbidden"`, label)
					}
				}
			}
		})
	}
	for name := range intendedAccess {
		require.True(t, seen[name], "intendedAccess names %s, which is not a route", name)
	}
}

// expected is the answer class a caller should get.
func expected(r rule, who string, in, filtered bool) string {
	if r.key {
		switch {
		case who != "key":
			return "unauthorized" // an admin credential is no API key
		case !in:
			return "not found" // someone else's budget
		}
		return "ok"
	}
	if who == "key" {
		return "forbidden"
	}
	role := map[string]budget.Role{"admin-env": budget.RoleAdmin, "admin-db": budget.RoleAdmin, "viewer": budget.RoleViewer,
		"manager": budget.RoleManager}[who]
	if !r.allows(role) {
		return "forbidden"
	}
	if role == budget.RoleManager && !in && !filtered {
		return "forbidden"
	}
	return "ok"
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}
