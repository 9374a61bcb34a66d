package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// pageThrough follows a list from its first page to its last and returns the ids it saw, in
// order, and how many pages it took.
func (h *harness) pageThrough(path, field string, query url.Values) (ids []string, pages int) {
	h.t.Helper()
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	for pages = 1; pages < 100; pages++ {
		r := h.admin("GET", path+"?"+q.Encode(), nil, http.StatusOK)
		for _, it := range list(r.body[field]) {
			ids = append(ids, fmt.Sprint(obj(it)["id"]))
		}
		require.Contains(h.t, r.body, "next_after", "%s", r.raw)
		next := r.body["next_after"]
		if next == nil {
			return ids, pages
		}
		switch n := next.(type) {
		case float64: // a budget id
			q.Set("after", fmt.Sprint(int64(n)))
		default:
			q.Set("after", str(n))
		}
	}
	h.t.Fatalf("%s: the list does not end", path)
	return nil, 0
}

// TestAdmin_KeyPages: keys come newest first, a page at a time, each key exactly once, also
// when several keys share a creation time (the cursor breaks ties on the id).
func TestAdmin_KeyPages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var created []string
	for i := range 7 {
		name := "bot"
		if i%3 == 0 {
			name = "ci"
		}
		subjects := []string{"team:ml"}
		if i%2 == 1 {
			subjects = []string{"team:web", "user:carol"}
		}
		r := h.admin("POST", "/v1/keys", map[string]any{"name": name, "subjects": subjects}, http.StatusCreated)
		created = append(created, str(r.body["id"]))
	}
	// Keys 2-5 share one creation time; newest first is then by id, descending.
	_, err := h.schema.Pool.Exec(context.Background(),
		`UPDATE api_keys SET created_at = (SELECT created_at FROM api_keys WHERE id = $1) WHERE id = ANY($2)`,
		created[2], created[2:6])
	require.NoError(t, err)
	want := h.schema.Strings(t, `SELECT id FROM api_keys ORDER BY created_at DESC, id DESC`)
	require.Equal(t, created[6], want[0], "the newest key comes first")

	all, pages := h.pageThrough("/v1/keys", "keys", nil)
	require.Equal(t, want, all)
	require.Equal(t, 1, pages)
	for _, limit := range []string{"1", "2", "3", "6", "7"} {
		got, pages := h.pageThrough("/v1/keys", "keys", url.Values{"limit": {limit}})
		require.Equal(t, want, got, "limit %s", limit)
		n, err := strconv.Atoi(limit)
		require.NoError(t, err)
		require.Equal(t, (len(want)+n-1)/n, pages, "limit %s: no empty last page", limit)
	}

	// The filters page too, in the same order.
	only := func(idx ...int) []string {
		in := map[string]bool{}
		for _, i := range idx {
			in[created[i]] = true
		}
		var out []string
		for _, id := range want {
			if in[id] {
				out = append(out, id)
			}
		}
		return out
	}
	ci, _ := h.pageThrough("/v1/keys", "keys", url.Values{"name": {"ci"}, "limit": {"1"}})
	require.Equal(t, only(0, 3, 6), ci)
	none, _ := h.pageThrough("/v1/keys", "keys", url.Values{"name": {"nobody"}})
	require.Empty(t, none)
	web, _ := h.pageThrough("/v1/keys", "keys", url.Values{"subject": {"user:carol"}, "limit": {"2"}})
	require.Equal(t, only(1, 3, 5), web)
	webCI, _ := h.pageThrough("/v1/keys", "keys", url.Values{"subject": {"team:web"}, "name": {"ci"}})
	require.Equal(t, only(3), webCI)
	h.invalid("GET", "/v1/keys?subject=nope", nil, "subject", `subject: subject "nope": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`)

	h.invalid("GET", "/v1/keys?after=not-a-cursor", nil, "after", "after: is not a cursor this API returned as next_after")
	h.invalid("GET", "/v1/keys?after=MTIz", nil, "after", "after: is not a cursor this API returned as next_after") // "123": no id
	h.invalid("GET", "/v1/keys?limit=0", nil, "limit", `limit: must be an integer from 1 to 1000, got "0"`)
	h.invalid("GET", "/v1/keys?limit=1001", nil, "limit", `limit: must be an integer from 1 to 1000, got "1001"`)
}

// TestAdmin_BudgetPages: budgets come in id order, a page at a time, all or one subject's.
func TestAdmin_BudgetPages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var all, ml []string
	for i := range 5 {
		subject := "team:ml"
		if i%2 == 1 {
			subject = "team:web"
		}
		r := h.admin("POST", "/v1/budgets", map[string]any{
			"name": fmt.Sprintf("b%d", i), "subject": subject, "limit": "10.00", "unit": "usd", "window": "month",
		}, http.StatusCreated)
		id := fmt.Sprint(int64(r.body["id"].(float64)))
		all = append(all, id)
		if subject == "team:ml" {
			ml = append(ml, id)
		}
	}
	// A deleted budget is not listed.
	h.admin("DELETE", "/v1/budgets/"+all[2], nil, http.StatusNoContent)
	all = append(all[:2:2], all[3:]...)
	ml = []string{ml[0], ml[2]}

	got, pages := h.pageThrough("/v1/budgets", "budgets", url.Values{"limit": {"2"}})
	require.Equal(t, all, got)
	require.Equal(t, 2, pages)
	got, pages = h.pageThrough("/v1/budgets", "budgets", url.Values{"limit": {"1"}, "subject": {"team:ml"}})
	require.Equal(t, ml, got)
	require.Equal(t, 2, pages)
	got, _ = h.pageThrough("/v1/budgets", "budgets", url.Values{"after": {all[len(all)-1]}})
	require.Empty(t, got)

	h.invalid("GET", "/v1/budgets?after=-1", nil, "after", `after: must be an integer from 0 to 4611686018427387904, got "-1"`)
	h.invalid("GET", "/v1/budgets?limit=x", nil, "limit", `limit: must be an integer from 1 to 1000, got "x"`)
}
