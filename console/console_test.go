package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/console"
)

const bootToken = "console-test-token-0123456789"

type env struct {
	t   *testing.T
	url string
	svc *budget.Service
	db  *pgtest.Schema
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	svc := budget.New(st, st, budget.Config{})
	api := admin.New(svc, admin.Config{Tokens: []string{bootToken}})
	ui, err := console.New(api, svc, console.Config{})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/v1/", api)
	mux.Handle(console.Path, ui)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &env{t: t, url: srv.URL, svc: svc, db: s}
}

// browser is an HTTP client with a cookie jar that does not follow redirects.
type browser struct {
	e  *env
	c  *http.Client
	jr *cookiejar.Jar
}

func (e *env) browser() *browser {
	jar, err := cookiejar.New(nil)
	require.NoError(e.t, err)
	return &browser{e: e, jr: jar, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

type page struct {
	status   int
	location string
	body     string
	header   http.Header
}

func (b *browser) do(method, path string, form url.Values) page {
	b.e.t.Helper()
	var rd io.Reader
	if form != nil {
		rd = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.url+path, rd)
	require.NoError(b.e.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", b.e.url)
	}
	res, err := b.c.Do(req)
	require.NoError(b.e.t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(b.e.t, err)
	return page{status: res.StatusCode, location: res.Header.Get("Location"), body: string(raw), header: res.Header}
}

var reCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrf(t *testing.T, p page) string {
	t.Helper()
	m := reCSRF.FindStringSubmatch(p.body)
	require.NotNil(t, m, "no CSRF field in %s", p.body)
	return m[1]
}

func (b *browser) signIn(secret string) page {
	b.e.t.Helper()
	form := b.do("GET", "/ui/signin", nil)
	require.Equal(b.e.t, http.StatusOK, form.status)
	return b.do("POST", "/ui/signin", url.Values{"csrf": {csrf(b.e.t, form)}, "credential": {secret}})
}

func TestConsole_PagesAndSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	k, keySecret, err := e.svc.CreateKey(ctx, "t", budget.KeySpec{Name: "bot", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	b1, err := e.svc.CreateBudget(ctx, "t", budget.Definition{Name: "ml monthly", Subject: "team:ml", Limit: 50_000_000, Window: "month", Hard: true, WarnAt: []int{50}})
	require.NoError(t, err)
	_, err = e.svc.CreateBudget(ctx, "t", budget.Definition{Name: "rpm", Subject: "key:" + k.ID, Unit: "requests", Limit: 60, Window: "minute", Hard: true})
	require.NoError(t, err)
	for i := range 4 {
		d, err := e.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: k.AllSubjects(), KeyID: k.ID, Cost: 2_000_000, Tokens: 100,
			Target: budget.Target{Model: "gpt-4o"}}})
		require.NoError(t, err)
		if i < 3 {
			_, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: 1_500_000, Tokens: 90, Cause: "usage"}})
			require.NoError(t, err)
		}
	}

	// Signed out: every page sends to the sign-in form, which remembers where to go.
	br := e.browser()
	p := br.do("GET", "/ui/budgets", nil)
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Equal(t, "/ui/signin?next=%2Fui%2Fbudgets", p.location)
	p = br.do("GET", "/ui/signin", nil)
	require.Contains(t, p.header.Get("Content-Security-Policy"), "default-src 'none'")
	require.Equal(t, "DENY", p.header.Get("X-Frame-Options"))

	// A wrong credential is refused without echoing it; a forged sign-in form too.
	p = br.signIn("pt_not-a-real-token-value")
	require.Equal(t, http.StatusUnauthorized, p.status)
	require.Contains(t, p.body, "Sign-in refused: invalid admin token.")
	require.NotContains(t, p.body, "not-a-real-token-value")
	p = br.do("POST", "/ui/signin", url.Values{"csrf": {"forged"}, "credential": {bootToken}})
	require.Equal(t, http.StatusForbidden, p.status)

	// The bootstrap token signs in: an HttpOnly, SameSite=Strict cookie on /ui/.
	p = br.signIn(bootToken)
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, "/ui/", p.location)
	var sc *http.Cookie
	for _, c := range br.jr.Cookies(mustURL(t, e.url+"/ui/")) {
		if c.Name == "purser_session" {
			sc = c
		}
	}
	require.NotNil(t, sc)
	cookie := p.header.Values("Set-Cookie")
	require.True(t, anyContains(cookie, "purser_session=", "HttpOnly", "SameSite=Strict", "Path=/ui/"), "%v", cookie)
	require.NotContains(t, sc.Value, bootToken)
	// The audit log names the sign-in by the token's short actor, never its whole hash.
	require.Equal(t, []string{"console.sign_in " + admin.Actor(bootToken)},
		e.db.Strings(t, `SELECT action || ' ' || target FROM audit_log WHERE action = 'console.sign_in'`))

	pages := []string{"/ui/", "/ui/budgets", "/ui/budgets?q=ml", fmt.Sprintf("/ui/budgets/%d", b1.ID), fmt.Sprintf("/ui/budgets/%d/edit", b1.ID),
		"/ui/budgets/new", "/ui/spend", "/ui/spend?group_by=model", "/ui/spend?group_by=subject", "/ui/requests",
		"/ui/requests?state=settled", "/ui/keys", "/ui/tokens", "/ui/audit"}
	for _, path := range pages {
		p := br.do("GET", path, nil)
		require.Equal(t, http.StatusOK, p.status, "%s: %s", path, p.body)
		require.NotContains(t, p.body, bootToken, path)
		require.Contains(t, p.body, `<main id="main"`, path)
		require.Equal(t, "no-store", p.header.Get("Cache-Control"), path)
	}
	// The audit page writes amounts in their unit, a grant's too (its details carry no unit:
	// the page looks up the budget's).
	_, err = e.svc.AddGrant(ctx, "t", b1.ID, 25_000_000, time.Now().Add(48*time.Hour), "launch")
	require.NoError(t, err)
	p = br.do("GET", "/ui/audit", nil)
	require.Equal(t, http.StatusOK, p.status, p.body)
	for _, want := range []string{"limit=$50.00", "amount=$25.00", "reason=launch"} {
		require.Contains(t, p.body, want, "the audit page shows %s", want)
	}
	require.NotContains(t, p.body, "50000000", "no raw micro-USD on the audit page")
	require.NotContains(t, p.body, "25000000", "no raw micro-USD on the audit page")
	p = br.do("GET", fmt.Sprintf("/ui/budgets/%d", b1.ID), nil)
	require.Contains(t, p.body, `<svg class="chart"`)
	require.Contains(t, p.body, `class="limit"`, "the limit line")
	require.Contains(t, p.body, `class="projection"`, "the burn-rate projection")
	require.Contains(t, p.body, "$4.50", "posted: three settled at $1.50")
	p = br.do("GET", "/ui/", nil)
	require.Contains(t, p.body, "ml monthly", "nearest exhaustion lists the spent budget")

	// A form without the session's CSRF token is refused.
	p = br.do("POST", "/ui/keys", url.Values{"csrf": {"nope"}, "name": {"x"}})
	require.Equal(t, http.StatusForbidden, p.status)
	// With it: the key is created and its secret shown once, on this answer only.
	keysPage := br.do("GET", "/ui/keys", nil)
	p = br.do("POST", "/ui/keys", url.Values{"csrf": {csrf(t, keysPage)}, "name": {"new-bot"}, "subjects": {"team:ml"}})
	require.Equal(t, http.StatusCreated, p.status, p.body)
	secret := regexp.MustCompile(`value="(pk_[0-9A-Za-z]+)"`).FindStringSubmatch(p.body)
	require.NotNil(t, secret)
	require.NotContains(t, br.do("GET", "/ui/keys", nil).body, secret[1])
	// A cross-site post (another Origin) is refused even with a token.
	req, _ := http.NewRequest("POST", e.url+"/ui/signout", strings.NewReader(url.Values{"csrf": {csrf(t, keysPage)}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	res, err := br.c.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusForbidden, res.StatusCode)

	// CSV downloads are the API's bytes.
	p = br.do("GET", "/ui/requests.csv", nil)
	require.Equal(t, http.StatusOK, p.status)
	require.Equal(t, "text/csv; charset=utf-8", p.header.Get("Content-Type"))
	apiCSV := apiGet(t, e.url+"/v1/requests?format=csv", bootToken)
	require.Equal(t, apiCSV, p.body)
	p = br.do("GET", "/ui/spend.csv?group_by=model", nil)
	require.Contains(t, p.body, "model,cost,tokens")

	// Signing out ends the session on the server: the old cookie no longer works.
	p = br.do("POST", "/ui/signout", url.Values{"csrf": {csrf(t, keysPage)}})
	require.Equal(t, "/ui/signin?m=out", p.location)
	stale := e.browser()
	stale.jr.SetCookies(mustURL(t, e.url+"/ui/"), []*http.Cookie{{Name: "purser_session", Value: sc.Value, Path: "/ui/"}})
	require.Equal(t, http.StatusSeeOther, stale.do("GET", "/ui/", nil).status)

	// A key holder sees its own budgets and requests only.
	kb := e.browser()
	require.Equal(t, http.StatusSeeOther, kb.signIn(keySecret).status)
	p = kb.do("GET", "/ui/", nil)
	require.Equal(t, http.StatusOK, p.status)
	require.Contains(t, p.body, "ml monthly")
	require.Contains(t, p.body, "rpm")
	require.NotContains(t, p.body, keySecret)
	require.Equal(t, http.StatusOK, kb.do("GET", fmt.Sprintf("/ui/budgets/%d", b1.ID), nil).status)
	require.Equal(t, http.StatusOK, kb.do("GET", "/ui/requests", nil).status)
	require.Equal(t, http.StatusForbidden, kb.do("GET", "/ui/keys", nil).status)
	require.Equal(t, http.StatusForbidden, kb.do("GET", "/ui/audit", nil).status)
	// Revoking the key ends its session at once.
	_, err = e.svc.RevokeKey(ctx, "t", k.ID)
	require.NoError(t, err)
	require.Equal(t, http.StatusSeeOther, kb.do("GET", "/ui/", nil).status)
}

func TestConsole_Manager(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	admin := budget.AdminActor("t")
	_, err := e.svc.CreateBudget(ctx, "t", budget.Definition{Name: "ml allowance", Subject: "team:ml", Limit: 100_000_000, Window: "month", Hard: true})
	require.NoError(t, err)
	web, err := e.svc.CreateBudget(ctx, "t", budget.Definition{Name: "web", Subject: "team:web", Limit: 1, Window: "day"})
	require.NoError(t, err)
	_, secret, err := e.svc.CreateToken(ctx, admin, budget.TokenSpec{Name: "ml lead", Role: "manager", Scope: []string{"team:ml"}})
	require.NoError(t, err)
	br := e.browser()
	require.Equal(t, http.StatusSeeOther, br.signIn(secret).status)
	p := br.do("GET", "/ui/budgets", nil)
	require.Contains(t, p.body, "ml allowance")
	require.NotContains(t, p.body, "team:web")
	p = br.do("GET", fmt.Sprintf("/ui/budgets/%d", web.ID), nil)
	require.Equal(t, http.StatusForbidden, p.status)
	require.Contains(t, p.body, fmt.Sprintf("budget %d (team:web) is outside your scope (team:ml)", web.ID))
	form := br.do("GET", "/ui/budgets/new", nil)
	p = br.do("POST", "/ui/budgets", url.Values{"csrf": {csrf(t, form)}, "name": {"x"}, "subject": {"team:ml/nlp"}, "unit": {"usd"},
		"limit": {"200"}, "window": {"month"}, "timezone": {"UTC"}, "hard": {"on"}})
	require.Equal(t, http.StatusForbidden, p.status)
	require.Contains(t, p.body, "is above budget")
	require.Contains(t, p.body, `value="team:ml/nlp"`, "the form keeps what was typed")
	p = br.do("POST", "/ui/budgets", url.Values{"csrf": {csrf(t, form)}, "name": {"x"}, "subject": {"team:ml/nlp"}, "unit": {"usd"},
		"limit": {"20"}, "window": {"month"}, "timezone": {"UTC"}, "hard": {"on"}})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, http.StatusForbidden, br.do("GET", "/ui/tokens", nil).status)
	p = br.do("GET", "/ui/spend", nil)
	require.Equal(t, http.StatusOK, p.status, p.body)
	require.Contains(t, p.body, `value="team:ml"`, "a manager's spend defaults to its subject")
}

func apiGet(t *testing.T, u, token string) string {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, string(raw))
	return string(raw)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

func anyContains(headers []string, parts ...string) bool {
	for _, h := range headers {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(h, p)
		}
		if ok {
			return true
		}
	}
	return false
}

var _ = time.Second

func TestDisplayAmount(t *testing.T) {
	t.Parallel()
	for in, want := range map[[2]string]string{
		{"usd", "220.399794"}: "$220.40", {"usd", "1234567.995000"}: "$1,234,568.00", {"usd", "0.000150"}: "$0.00015",
		{"usd", "12.500000"}: "$12.50", {"usd", "-3.004999"}: "−$3.00", {"tokens", "1500000"}: "1,500,000 tokens",
		{"requests", "600"}: "600 requests", {"usd", "0.000000"}: "$0.00",
	} {
		require.Equal(t, want, console.DisplayAmount(in[0], in[1]), "%v", in)
	}
}

func TestNiceAxis(t *testing.T) {
	t.Parallel()
	for v, want := range map[float64][2]float64{190: {200, 4}, 1083: {1500, 3}, 0: {4, 4}, 1: {1, 4}, 7_000_000: {8_000_000, 4}, 99: {100, 4}} {
		top, ticks := console.NiceAxis(v)
		require.Equal(t, want, [2]float64{top, float64(ticks)}, "niceAxis(%v)", v)
		require.GreaterOrEqual(t, top, v)
	}
}
