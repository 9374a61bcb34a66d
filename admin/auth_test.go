package admin_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/internal/testkit"
)

func TestAdmin_DisabledWithoutTokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []string{}...)
	for _, tok := range []string{"", adminToken, "anything"} {
		r := h.call("GET", "/v1/budgets", nil, tok)
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "unauthorized", r.errCode())
		require.Equal(t, "the admin API is disabled until PURSER_ADMIN_TOKEN is set", r.errMsg())
		require.Equal(t, `Bearer realm="purser"`, r.header.Get("WWW-Authenticate"))
	}
}

func TestAdmin_Auth(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()

	// Two keys with their own budgets and one shared owner.
	ka, secretA, err := h.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "a", Subjects: []string{"user:alice", "team:ml"}})
	require.NoError(t, err)
	kb, secretB, err := h.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "b", Subjects: []string{"user:bob"}})
	require.NoError(t, err)
	for _, d := range []budget.Definition{
		{Name: "a daily", Subject: "key:" + ka.ID, Limit: 1_000_000, Window: "day", Hard: true},
		{Name: "alice", Subject: "user:alice", Limit: 5_000_000, Window: "month", Hard: true},
		{Name: "team", Subject: "team:ml", Limit: 50_000_000, Window: "month", Hard: true},
		{Name: "b daily", Subject: "key:" + kb.ID, Limit: 1_000_000, Window: "day", Hard: true},
		{Name: "bob", Subject: "user:bob", Limit: 5_000_000, Window: "month", Hard: true},
	} {
		_, err := h.svc.CreateBudget(ctx, "test", d)
		require.NoError(t, err)
	}

	t.Run("AnonymousAndWrongTokens", func(t *testing.T) {
		r := h.call("GET", "/v1/keys", nil, "")
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "missing admin token: send Authorization: Bearer <admin token>", r.errMsg())
		r = h.call("GET", "/v1/keys", nil, "not-the-token-0123456789")
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "invalid admin token", r.errMsg())
		r = h.callHeaders("GET", "/v1/keys", nil, map[string]string{"Authorization": "Basic " + adminToken}, false)
		require.Equal(t, http.StatusUnauthorized, r.status)
		r = h.call("GET", "/v1/me", nil, "")
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "missing API key: send Authorization: Bearer <purser API key> or x-api-key", r.errMsg())
	})
	t.Run("APIKeyCannotCallAdminRoutes", func(t *testing.T) {
		for _, path := range []string{"/v1/keys", "/v1/budgets", "/v1/status?subject=user:alice", "/v1/spend", "/v1/audit"} {
			r := h.call("GET", path, nil, secretA)
			require.Equal(t, http.StatusForbidden, r.status, path)
			require.Equal(t, "forbidden", r.errCode())
			require.Equal(t, "a purser API key cannot call the admin API (key holders use GET /v1/me)", r.errMsg())
		}
		r := h.call("POST", "/v1/budgets", map[string]any{"name": "x", "subject": "user:alice", "limit": "1", "window": "day"}, secretA)
		require.Equal(t, http.StatusForbidden, r.status)
	})
	t.Run("AdminTokenIsNotAnAPIKey", func(t *testing.T) {
		r := h.call("GET", "/v1/me", nil, adminToken)
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "unknown API key", r.errMsg())
		r = h.callHeaders("GET", "/v1/me", nil, map[string]string{"x-api-key": adminToken}, true)
		require.Equal(t, http.StatusUnauthorized, r.status)
	})
	t.Run("KeyHolderSeesOnlyOwnBudgets", func(t *testing.T) {
		r := h.call("GET", "/v1/me", nil, secretA)
		require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
		key := obj(r.body["key"])
		require.Equal(t, ka.ID, key["id"])
		require.NotContains(t, key, "key", "the secret is never shown again")
		require.NotContains(t, string(r.raw), secretA)
		var names []string
		for _, b := range list(r.body["budgets"]) {
			names = append(names, str(obj(b)["name"]))
			require.NotNil(t, obj(b)["current"])
		}
		require.Equal(t, []string{"a daily", "alice", "team"}, names)

		// The other key, by x-api-key, sees its own and nothing of a's.
		r = h.callHeaders("GET", "/v1/me", nil, map[string]string{"x-api-key": secretB}, true)
		require.Equal(t, http.StatusOK, r.status)
		names = nil
		for _, b := range list(r.body["budgets"]) {
			names = append(names, str(obj(b)["name"]))
		}
		require.Equal(t, []string{"b daily", "bob"}, names)
		require.NotContains(t, string(r.raw), ka.ID)
	})
	t.Run("RevokedAndUnknownKeys", func(t *testing.T) {
		_, err := h.svc.RevokeKey(ctx, "test", kb.ID)
		require.NoError(t, err)
		r := h.call("GET", "/v1/me", nil, secretB)
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "API key revoked", r.errMsg())
		r = h.call("GET", "/v1/me", nil, "pk_unknown")
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Equal(t, "unknown API key", r.errMsg())
	})
	t.Run("SeveralTokensAndActors", func(t *testing.T) {
		require.Regexp(t, `^admin:[0-9a-f]{6}$`, admin.Actor(adminToken))
		require.NotEqual(t, admin.Actor("token-one-0123456789"), admin.Actor("token-two-0123456789"))
	})
}

func TestAdmin_MultipleTokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "first-token-0123456789", "second-token-0123456789")
	for _, tok := range []string{"first-token-0123456789", "second-token-0123456789"} {
		r := h.call("POST", "/v1/budgets", map[string]any{"name": "n " + tok[:5], "subject": "team:ml", "limit": "1", "window": "day"}, tok)
		require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
	}
	actions := h.auditActions()
	require.Len(t, actions, 2)
	require.Equal(t, admin.Actor("first-token-0123456789"), actions[0][2])
	require.Equal(t, admin.Actor("second-token-0123456789"), actions[1][2])
	require.NotContains(t, actions[0][2], "first-token")
}

func TestAdmin_UnknownRoutesAnswerJSON(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r := h.admin("GET", "/v1/nope", nil, http.StatusNotFound)
	require.Equal(t, "not_found", r.errCode())
	require.Equal(t, "no route GET /v1/nope", r.errMsg())
	r = h.admin("PUT", "/v1/budgets", nil, http.StatusMethodNotAllowed)
	require.Equal(t, "invalid", r.errCode())
	require.Equal(t, "GET, HEAD, POST", r.header.Get("Allow"))
	r = h.admin("GET", "/v1/budgets/abc", nil, http.StatusBadRequest)
	require.Equal(t, `id: must be a positive integer, got "abc"`, r.errMsg())
	r = h.admin("GET", "/v1/budgets/999", nil, http.StatusNotFound)
	require.Equal(t, "budget 999 not found", r.errMsg())
	r = h.admin("GET", "/v1/keys/key_nope", nil, http.StatusNotFound)
	require.Equal(t, "key key_nope not found", r.errMsg())

	// The OpenAPI document is public.
	res, err := http.Get(h.url + "/v1/openapi.yaml")
	require.NoError(t, err)
	defer res.Body.Close()
	doc, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.True(t, strings.HasPrefix(string(doc), "openapi: 3.1.0"))
}

// fakeLedger fails every call with an internal error.
type fakeLedger struct {
	admin.Ledger
	err error
}

func (f fakeLedger) Keys(context.Context, budget.KeyQuery) ([]budget.Key, error) { return nil, f.err }
func (f fakeLedger) Budgets(context.Context, budget.BudgetQuery) ([]budget.Budget, error) {
	return nil, f.err
}

func TestAdmin_InternalErrorsAreLoggedNotLeaked(t *testing.T) {
	t.Parallel()
	logs := &testkit.SyncBuffer{}
	internal := errors.New(`list keys: dial tcp 10.1.2.3:5432: password authentication failed for user "purser"`)
	srv := httptest.NewServer(admin.New(fakeLedger{err: internal}, admin.Config{
		Tokens: []string{adminToken}, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	}))
	defer srv.Close()
	h := &harness{t: t, url: srv.URL}
	r := h.admin("GET", "/v1/keys", nil, http.StatusInternalServerError)
	require.Equal(t, "internal", r.errCode())
	require.Equal(t, "internal error (logged)", r.errMsg())
	require.NotContains(t, string(r.raw), "10.1.2.3")
	require.Contains(t, logs.String(), `"level":"ERROR"`)
	require.Contains(t, logs.String(), "password authentication failed")
	require.Contains(t, logs.String(), `"route":"GET /v1/keys"`)
	require.NotContains(t, logs.String(), adminToken)

	// An unavailable database is a 503 the client may retry.
	srv2 := httptest.NewServer(admin.New(fakeLedger{err: budget.ErrUnavailable}, admin.Config{Tokens: []string{adminToken}}))
	defer srv2.Close()
	h.url = srv2.URL
	r = h.admin("GET", "/v1/budgets", nil, http.StatusServiceUnavailable)
	require.Equal(t, "unavailable", r.errCode())
}
