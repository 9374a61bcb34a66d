package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/testkit"
)

// The ledger satisfies the admin API's interface.
var _ admin.Ledger = (*budget.Service)(nil)

const adminToken = "test-admin-token-0123456789"

type harness struct {
	t      *testing.T
	url    string
	svc    *budget.Service
	schema *pgtest.Schema
	logs   *testkit.SyncBuffer
}

func newHarness(t *testing.T, tokens ...string) *harness {
	t.Helper()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	svc := budget.New(st, st, budget.Config{})
	if tokens == nil {
		tokens = []string{adminToken}
	}
	logs := &testkit.SyncBuffer{}
	srv := httptest.NewServer(admin.New(svc, admin.Config{
		Tokens: tokens, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}))
	t.Cleanup(srv.Close)
	return &harness{t: t, url: srv.URL, svc: svc, schema: s, logs: logs}
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r response) errCode() string  { return r.errField("code") }
func (r response) errMsg() string   { return r.errField("message") }
func (r response) fieldErr() string { return r.errField("field") }

func (r response) errField(k string) string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e[k].(string)
	return s
}

// call sends body (a string is sent as is, anything else as JSON) with the given
// Authorization bearer ("" for none).
func (h *harness) call(method, path string, body any, bearer string) response {
	h.t.Helper()
	return h.callHeaders(method, path, body, map[string]string{"Authorization": "Bearer " + bearer}, bearer == "")
}

func (h *harness) callHeaders(method, path string, body any, headers map[string]string, noAuth bool) response {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(h.t, err)
		rd = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, h.url+path, rd)
	require.NoError(h.t, err)
	for k, v := range headers {
		if noAuth && k == "Authorization" {
			continue
		}
		req.Header.Set(k, v)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(h.t, err)
	out := response{status: res.StatusCode, header: res.Header, raw: raw}
	if len(bytes.TrimSpace(raw)) > 0 {
		require.NoError(h.t, json.Unmarshal(raw, &out.body), "body %s", raw)
		require.Equal(h.t, "application/json", res.Header.Get("Content-Type"))
	}
	return out
}

// admin calls an admin route with the admin token and requires the status.
func (h *harness) admin(method, path string, body any, status int) response {
	h.t.Helper()
	r := h.call(method, path, body, adminToken)
	require.Equal(h.t, status, r.status, "%s %s: %s", method, path, r.raw)
	return r
}

// invalid calls an admin route and requires a 400 with this field and message.
func (h *harness) invalid(method, path string, body any, field, msg string) {
	h.t.Helper()
	r := h.call(method, path, body, adminToken)
	require.Equal(h.t, http.StatusBadRequest, r.status, "%s %s: %s", method, path, r.raw)
	require.Equal(h.t, "invalid", r.errCode(), "%s", r.raw)
	require.Equal(h.t, field, r.fieldErr(), "%s", r.raw)
	require.Equal(h.t, msg, r.errMsg())
}

// auditActions lists the audit log's (action, target, actor), oldest first.
func (h *harness) auditActions() [][3]string {
	h.t.Helper()
	rows, err := h.schema.Pool.Query(context.Background(), `SELECT action, target, actor FROM audit_log ORDER BY id`)
	require.NoError(h.t, err)
	defer rows.Close()
	var out [][3]string
	for rows.Next() {
		var a [3]string
		require.NoError(h.t, rows.Scan(&a[0], &a[1], &a[2]))
		out = append(out, a)
	}
	require.NoError(h.t, rows.Err())
	return out
}

func str(v any) string { s, _ := v.(string); return s }

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }

func list(v any) []any { l, _ := v.([]any); return l }
