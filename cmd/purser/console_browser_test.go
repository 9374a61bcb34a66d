package main

// Browser tests of the console: a real headless Chromium (Debian's chromium package) driven
// over the DevTools protocol by github.com/chromedp/chromedp, against `purser serve` in process
// on 127.0.0.1:0 and Postgres. Chromium runs with the flags a closed, root-run CI machine needs
// (--no-sandbox, --disable-gpu, --disable-background-networking, --disable-component-update,
// --disable-sync, a fresh --user-data-dir). Screenshots go to $PURSER_TEST_ARTIFACTS (default
// <temp>/purser-test-artifacts/console); PURSER_README_SCREENSHOT=path also writes the
// README's picture there.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

const browserAdminToken = "browser-test-admin-token-0123456789"

// chromiumPath finds Chromium: without one the browser tests skip, except under CI=true,
// where a missing browser is a failure (make test installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium binary on PATH; the console browser tests need it (apt-get install -y chromium, as `make test` does)")
	}
	t.Skip("no chromium binary on PATH: install Debian's chromium (apt-get install -y chromium) to run the console browser tests")
	return ""
}

func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PURSER_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "purser-test-artifacts")
	}
	dir = filepath.Join(dir, "console")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// consoleServer runs `purser serve` in process on a fresh schema and returns its HTTP address,
// the schema and a ledger on it (for seeding).
func consoleServer(t *testing.T) (string, *pgtest.Schema, *budget.Service) {
	t.Helper()
	schema := pgtest.New(t)
	cfg, err := parseServeConfig(testEnv(nil), []string{"-database-url", schema.ConnString, "-grpc-addr", "127.0.0.1:0",
		"-http-addr", "127.0.0.1:0", "-admin-token", browserAdminToken})
	require.NoError(t, err)
	srv, err := newServer(context.Background(), cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	gl, err := net.Listen("tcp", cfg.grpcAddr)
	require.NoError(t, err)
	hl, err := net.Listen("tcp", cfg.httpAddr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.serve(ctx, gl, hl) }()
	t.Cleanup(func() { cancel(); <-done })
	st := store.New(schema.Pool)
	return "http://" + hl.Addr().String(), schema, budget.New(st, st, budget.Config{})
}

// tab is one browser tab on the console.
type tab struct {
	t    *testing.T
	ctx  context.Context
	base string
}

func newBrowser(t *testing.T, base string) *tab {
	t.Helper()
	exe := chromiumPath(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true), chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("force-color-profile", "srgb"), chromedp.Flag("password-store", "basic"),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	// A generous bound for the whole test on a busy two-core machine; every wait below is
	// for an element or a load event, never a sleep.
	ctx, cancelT := context.WithTimeout(ctx, 8*time.Minute)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	return &tab{t: t, ctx: ctx, base: base}
}

// step bounds one browser step: a minute, generous on a busy machine.
func (b *tab) step() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, time.Minute)
}

func (b *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := b.step()
	defer cancel()
	require.NoError(b.t, chromedp.Do(ctx, actions...))
}

// open navigates, waits for the page to load and returns how long that took.
func (b *tab) open(path string) time.Duration {
	b.t.Helper()
	start := time.Now()
	_, err := chromedp.Run(b.ctx, chromedp.NavigateResponse(b.base+path))
	require.NoError(b.t, err, "open %s", path)
	return time.Since(start)
}

func (b *tab) eval(js string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](js))
	require.NoError(b.t, err, js)
	return v
}

func (b *tab) count(css string) int {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, css)))
	require.NoError(b.t, err)
	return v
}

// fetch downloads a console URL in the page, with its session cookie.
func (b *tab) fetch(path string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](fmt.Sprintf(`fetch(%q).then(r => r.text())`, path), chromedp.EvalAwaitPromise))
	require.NoError(b.t, err, path)
	return v
}

func (b *tab) html() string { return b.eval(`document.documentElement.outerHTML`) }
func (b *tab) url() string  { return b.eval(`location.href`) }
func (b *tab) text() string { return b.eval(`document.body.innerText`) }

// submit clicks a link or submit button and waits until the page it leads to has loaded;
// it returns that page's HTTP status.
func (b *tab) submit(css string) int64 {
	b.t.Helper()
	res, err := chromedp.RunResponse(b.ctx, chromedp.Click(chromedp.CSS(css)))
	require.NoError(b.t, err, "click %s", css)
	return res.Status
}

func (b *tab) signIn(secret string) {
	b.t.Helper()
	b.open("/ui/signin")
	b.signInHere(secret)
}

// signInHere fills the sign-in form of the current page.
func (b *tab) signInHere(secret string) {
	b.t.Helper()
	b.do(chromedp.SendKeys(chromedp.ID("credential"), secret))
	b.submit(`form[action="/ui/signin"] button[type=submit]`)
}

func (b *tab) signOut() {
	b.t.Helper()
	b.submit(`form[action="/ui/signout"] button`)
	require.Contains(b.t, b.url(), "/ui/signin?m=out")
}

func (b *tab) screenshot(name string) []byte {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	require.NoError(b.t, err)
	path := filepath.Join(artifactsDir(b.t), name)
	require.NoError(b.t, os.WriteFile(path, png, 0o644))
	b.t.Logf("screenshot: %s", path)
	return png
}

// accessible checks what a page must offer keyboard and screen-reader users: every control
// has a label, every table header a scope or a caption, every chart a title and a description,
// and the first Tab lands on the skip link.
func (b *tab) accessible() {
	b.t.Helper()
	unlabelled := b.eval(`Array.from(document.querySelectorAll("input:not([type=hidden]), select, textarea"))
		.filter(el => el.labels.length === 0 && !el.getAttribute("aria-label")).map(el => el.name || el.id).join(",")`)
	require.Empty(b.t, unlabelled, "controls without a label on %s", b.url())
	untitled := b.count(`svg.chart:not([aria-labelledby])`) + b.count(`svg.chart:not(:has(title))`) + b.count(`svg.chart:not(:has(desc))`)
	require.Zero(b.t, untitled, "charts without a title and a description on %s", b.url())
	require.Zero(b.t, b.count(`thead th:not([scope])`), "column headers without scope on %s", b.url())
	b.do(chromedp.KeyEvent("\t"))
	require.Equal(b.t, "skip", b.eval(`document.activeElement.className`), "the first Tab reaches the skip link")
}

// noSecrets checks that none of the secrets is in the page, its URL or its readable cookies.
func (b *tab) noSecrets(secrets ...string) {
	b.t.Helper()
	page, u, cookies := b.html(), b.url(), b.eval(`document.cookie`)
	for _, s := range secrets {
		require.NotContains(b.t, page, s, "a secret in the page %s", u)
		require.NotContains(b.t, u, s, "a secret in the URL")
		require.NotContains(b.t, cookies, s)
	}
	require.NotContains(b.t, cookies, "purser_session", "the session cookie is HttpOnly")
}

func TestConsole_Browser(t *testing.T) {
	t.Parallel()
	base, schema, svc := consoleServer(t)
	b := newBrowser(t, base)
	ctx := context.Background()
	admin := budget.AdminActor("test")

	// 50,000 tenant budgets in one statement, then the demo (keys, budgets, spend history).
	start := time.Now()
	_, err := schema.Pool.Exec(ctx, `INSERT INTO budgets (name, subject, unit, limit_amount, window_kind)
		SELECT 'tenant ' || g, 'user:tenant-' || lpad(g::text, 5, '0'), 'usd', 10000000, 'month' FROM generate_series(1, 50000) AS g`)
	require.NoError(t, err)
	t.Logf("seeded 50,000 budgets in %s", time.Since(start).Round(time.Millisecond))
	var demoOut bytes.Buffer
	require.NoError(t, seedDemo(ctx, &demoOut, schema.Pool, svc, time.Now().UTC(), false))
	keys, err := svc.Keys(ctx, budget.KeyQuery{Name: "ml-bot"})
	require.NoError(t, err)
	mlBot := keys[0]
	_, keySecret, err := svc.RotateKey(ctx, "test", mlBot.ID) // its secret, to sign in with
	require.NoError(t, err)
	_, mgrSecret, err := svc.CreateToken(ctx, admin, budget.TokenSpec{Name: "ml lead", Role: "manager", Scope: []string{"team:ml"}})
	require.NoError(t, err)
	budgetID := func(subject, name string) int64 {
		bs, err := svc.Budgets(ctx, budget.BudgetQuery{Subject: subject})
		require.NoError(t, err)
		for _, x := range bs {
			if x.Name == name {
				return x.ID
			}
		}
		t.Fatalf("no budget %q on %s", name, subject)
		return 0
	}
	mlBudget := budgetID("team:ml", "ml-bot team monthly")
	webBudget := budgetID("team:web", "web-app team monthly")
	secrets := []string{browserAdminToken, keySecret, mgrSecret}

	t.Run("SignInWithToken", func(t *testing.T) {
		b.open("/ui/budgets")
		require.Contains(t, b.url(), "/ui/signin?next=")
		b.signInHere("pt_wrong")
		require.Contains(t, b.text(), "Sign-in refused: invalid admin token.")
		b.signInHere(browserAdminToken)
		require.Equal(t, base+"/ui/budgets", b.url(), "back where the sign-in started")
		require.Contains(t, b.text(), "bootstrap token")
		b.noSecrets(secrets...)
		b.open("/ui/")
		b.accessible()
		require.GreaterOrEqual(t, b.count("table.budgets tbody tr"), 3, "nearest exhaustion lists the demo teams")
		require.Contains(t, b.text(), "web-app team monthly")
		require.Positive(t, b.count("svg.chart rect.bar"), "the spend-per-day chart is drawn")
		b.screenshot("overview.png")
	})

	t.Run("Paging50000Budgets", func(t *testing.T) {
		d := b.open("/ui/budgets")
		require.Equal(t, 50, b.count("table.budgets tbody tr"))
		first := b.eval(`document.querySelector("table.budgets tbody tr td a").textContent`)
		t.Logf("first page of 50,000 budgets: %s", d.Round(time.Millisecond))
		var worst time.Duration
		for i := range 5 {
			s := time.Now()
			b.submit(`a[rel=next]`)
			worst = max(worst, time.Since(s))
			require.Equal(t, 50, b.count("table.budgets tbody tr"), "page %d", i+2)
		}
		sixth := b.eval(`document.querySelector("table.budgets tbody tr td a").textContent`)
		require.NotEqual(t, first, sixth)
		b.submit(`a[rel=prev]`)
		require.Contains(t, b.url(), "before=")
		// The last page, by walking back from the end, and a search.
		s := time.Now()
		b.submit(`a[href^="/ui/budgets?before=4611686018427387904"]`) // "Last page"
		worst = max(worst, time.Since(s))
		require.Contains(t, b.text(), "tenant 50000")
		require.Zero(t, b.count(`a[rel=next]`), "no page after the last")
		s = time.Now()
		b.open("/ui/budgets?q=user:tenant-4999")
		worst = max(worst, time.Since(s))
		require.Equal(t, 10, b.count("table.budgets tbody tr"), "user:tenant-49990 to -49999 (tenant 4999 is user:tenant-04999)")
		b.open("/ui/budgets")
		b.do(chromedp.SendKeys(chromedp.ID("q"), "tenant 31415"))
		b.submit(`form[role=search] button`)
		require.Equal(t, 1, b.count("table.budgets tbody tr"))
		t.Logf("slowest budgets page (next, last, search) of 50,000: %s", worst.Round(time.Millisecond))
		require.Less(t, worst, 5*time.Second, "a page of 50,000 budgets renders in well under five seconds")
	})

	t.Run("ChartsRendered", func(t *testing.T) {
		b.open(fmt.Sprintf("/ui/budgets/%d", mlBudget))
		b.do(chromedp.WaitVisible(chromedp.CSS("svg.chart")))
		require.Equal(t, 1, b.count("svg.chart path.spend"), "the spend line")
		require.Equal(t, 1, b.count("svg.chart line.limit"), "the limit line")
		require.Equal(t, 1, b.count("svg.chart line.projection"), "the burn-rate projection")
		box, err := chromedp.Run(b.ctx, chromedp.Evaluate[float64](`document.querySelector("svg.chart").getBoundingClientRect().width`))
		require.NoError(t, err)
		require.Greater(t, box, 300.0, "the chart is laid out at a readable size")
		d, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.querySelector("svg.chart path.spend").getAttribute("d")`))
		require.NoError(t, err)
		require.Greater(t, strings.Count(d, "H"), 3, "the spend line has several steps: %s", d)
		require.Contains(t, b.text(), "ml-bot team monthly")
		b.accessible()
		b.screenshot("budget.png")
		if p := os.Getenv("PURSER_README_SCREENSHOT"); p != "" {
			// The README's picture: the top of this page in a smaller window.
			b.do(chromedp.EmulateViewport(1040, 760))
			png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p, png, 0o644))
			b.do(chromedp.EmulateViewport(1280, 900))
		}
		b.open("/ui/spend?group_by=model")
		b.accessible()
		require.Greater(t, b.count("svg.chart rect.bar"), 2, "a bar per model")
		b.screenshot("spend.png")
		b.open("/ui/requests")
		b.accessible()
		require.Equal(t, 50, b.count("table.requests tbody tr"))
		for _, page := range []string{"/ui/keys", "/ui/tokens", "/ui/audit", "/ui/budgets/new"} {
			b.open(page)
			b.accessible()
		}
		b.screenshot("requests.png")
	})

	t.Run("CSVExportMatchesAPI", func(t *testing.T) {
		b.open("/ui/requests?subject=team:web")
		href := b.eval(`document.querySelector('a[href^="/ui/requests.csv"]').getAttribute("href")`)
		// The browser downloads with its session cookie, as a click on the link does.
		got := b.fetch(href)
		want := apiText(t, base+"/v1/requests?format=csv&subject=team:web")
		require.Equal(t, want, got, "the console's CSV is the API's")
		require.Greater(t, strings.Count(got, "\n"), 100)
		b.open("/ui/spend?group_by=day")
		href = b.eval(`document.querySelector('a[href^="/ui/spend.csv"]').getAttribute("href")`)
		got = b.fetch(href)
		q := strings.TrimPrefix(href, "/ui/spend.csv?")
		require.Equal(t, apiText(t, base+"/v1/spend?format=csv&"+q), got)
		b.noSecrets(secrets...)
	})

	t.Run("ManagerRefusedOutsideSubjects", func(t *testing.T) {
		b.signOut()
		b.signIn(mgrSecret)
		require.Contains(t, b.text(), "ml lead")
		b.open("/ui/budgets")
		require.NotContains(t, b.text(), "team:web")
		require.NotContains(t, b.text(), "tenant 1 ")
		b.open(fmt.Sprintf("/ui/budgets/%d", webBudget))
		require.Contains(t, b.text(), fmt.Sprintf("budget %d (team:web) is outside your scope (team:ml)", webBudget))
		b.screenshot("manager-refused.png")
		// Creating a budget on another team's subject is refused with the reason, in the form.
		b.open("/ui/budgets/new")
		b.do(chromedp.SendKeys(chromedp.ID("f-name"), "sneaky"), chromedp.SendKeys(chromedp.ID("f-subject"), "team:web"),
			chromedp.SendKeys(chromedp.ID("f-limit"), "5"))
		b.submit(`form.form button[type=submit]`)
		require.Contains(t, b.text(), "subject team:web is outside your scope (team:ml)")
		// Above the admin's allowance for the team: refused too.
		b.open("/ui/budgets/new")
		b.do(chromedp.SendKeys(chromedp.ID("f-name"), "nlp"), chromedp.SendKeys(chromedp.ID("f-subject"), "team:ml/nlp"),
			chromedp.SendKeys(chromedp.ID("f-limit"), "500"))
		b.submit(`form.form button[type=submit]`)
		require.Contains(t, b.text(), "is above budget")
		b.open("/ui/tokens")
		require.Contains(t, b.text(), "a manager token cannot call GET /v1/tokens")
		b.noSecrets(secrets...)
	})

	t.Run("SignInWithKey", func(t *testing.T) {
		b.signOut()
		b.signIn(keySecret)
		require.Contains(t, b.text(), "My budgets")
		txt := b.text()
		require.Contains(t, txt, "ml-bot team monthly")
		require.Contains(t, txt, "ml-bot rpm")
		require.NotContains(t, txt, "web-app")
		require.NotContains(t, txt, "tenant")
		b.open(fmt.Sprintf("/ui/budgets/%d", mlBudget))
		b.do(chromedp.WaitVisible(chromedp.CSS("svg.chart")))
		b.open(fmt.Sprintf("/ui/budgets/%d", webBudget))
		require.Contains(t, b.text(), fmt.Sprintf("budget %d not found", webBudget))
		b.open("/ui/requests")
		require.NotContains(t, b.text(), "team:web")
		b.screenshot("key-holder.png")
		b.noSecrets(secrets...)
	})

	// The ledger the console showed still reconciles.
	rep, err := svc.Verify(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "%+v", rep)
}

func apiText(t *testing.T, u string) string {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+browserAdminToken)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, string(raw))
	return string(raw)
}
