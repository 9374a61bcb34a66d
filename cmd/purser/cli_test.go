package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

const cliToken = "cli-test-admin-token-0123456789"

// cliHarness runs CLI commands against a real admin API on 127.0.0.1:0 over a fresh schema.
type cliHarness struct {
	t      *testing.T
	url    string
	svc    *budget.Service
	schema *pgtest.Schema
}

func newCLIHarness(t *testing.T) *cliHarness {
	t.Helper()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	svc := budget.New(st, st, budget.Config{})
	srv := httptest.NewServer(admin.New(svc, admin.Config{Tokens: []string{cliToken}}))
	t.Cleanup(srv.Close)
	return &cliHarness{t: t, url: srv.URL, svc: svc, schema: s}
}

// cli runs `purser args...` with PURSER_ADDR and PURSER_ADMIN_TOKEN set; stdin feeds apply -f -.
func (h *cliHarness) cli(stdin string, args ...string) (string, error) {
	h.t.Helper()
	var out, errb bytes.Buffer
	vars := map[string]string{"PURSER_ADDR": h.url, "PURSER_ADMIN_TOKEN": cliToken}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, func(k string) string { return vars[k] }, strings.NewReader(stdin), &out, &errb)
	return out.String(), err
}

func (h *cliHarness) ok(args ...string) string {
	h.t.Helper()
	out, err := h.cli("", args...)
	require.NoError(h.t, err, "purser %s", strings.Join(args, " "))
	return out
}

func (h *cliHarness) count(sql string) int {
	h.t.Helper()
	var n int
	require.NoError(h.t, h.schema.Pool.QueryRow(context.Background(), sql).Scan(&n))
	return n
}

// normalise blanks ids and times so tables can be compared exactly.
var (
	reKeyID  = regexp.MustCompile(`key_[a-z2-7]{16}`)
	reSecret = regexp.MustCompile(`pk_[0-9A-Za-z]+`)
	reTime   = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)
)

func normalise(s string) string {
	s = reSecret.ReplaceAllString(s, "pk_SECRET")
	s = reKeyID.ReplaceAllString(s, "key_ID")
	return reTime.ReplaceAllString(s, "TIME")
}

func TestCLI_Keys(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	out := h.ok("keys", "create", "-name", "ci-bot", "-subject", "team:ml,user:alice", "-model", "gpt-4o*", "-expires", "720h")
	require.Equal(t, "created key key_ID (ci-bot)\nsecret (shown once, store it now): pk_SECRET\n", normalise(out))
	secret := reSecret.FindString(out)
	id := reKeyID.FindString(out)
	k, err := h.svc.Authenticate(context.Background(), secret)
	require.NoError(t, err)
	require.Equal(t, id, k.ID)

	out = h.ok("keys", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2)
	require.Regexp(t, `^ID\s+NAME\s+PREFIX\s+STATE\s+SUBJECTS\s+MODELS\s+EXPIRES\s+CREATED$`, lines[0])
	require.Regexp(t, `^`+id+`\s+ci-bot\s+`+secret[:11]+`\s+active\s+team:ml,user:alice\s+gpt-4o\*\s+\S+Z\s+\S+Z$`, lines[1])
	require.NotContains(t, out, secret)

	out = h.ok("keys", "list", "-o", "json")
	var list struct {
		Keys []map[string]any `json:"keys"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list.Keys, 1)
	require.NotContains(t, list.Keys[0], "key")
	h.ok("keys", "create", "-name", "web", "-subject", "team:web")
	require.Len(t, strings.Split(strings.TrimSpace(h.ok("keys", "list", "-subject", "user:alice")), "\n"), 2, "a header and ci-bot")
	require.Contains(t, h.ok("keys", "list", "-name", "web"), " web ")
	require.NotContains(t, h.ok("keys", "list", "-name", "web"), "ci-bot")

	out = h.ok("keys", "rotate", id)
	require.Equal(t, "rotated key key_ID (ci-bot); the old secret no longer works\nnew secret (shown once, store it now): pk_SECRET\n", normalise(out))
	require.NotEqual(t, secret, reSecret.FindString(out))
	out = h.ok("keys", "revoke", id)
	require.Equal(t, "revoked key "+id+" (ci-bot)\n", out)

	_, err = h.cli("", "keys", "rotate", id)
	require.EqualError(t, err, "key "+id+" is revoked and cannot be rotated; create a new key")
	_, err = h.cli("", "keys", "create", "-subject", "team:ml")
	require.EqualError(t, err, "name: is required")
	_, err = h.cli("", "keys", "revoke")
	require.EqualError(t, err, "keys revoke: takes 1 argument, got 0")
	_, err = h.cli("", "keys", "burn")
	require.EqualError(t, err, `unknown command "burn" for purser keys (want create, list, revoke, rotate)`)
	_, err = h.cli("", "keys", "list", "-o", "yaml")
	require.EqualError(t, err, `-o "yaml": want table, json`)

	// Without a token, or with the wrong one.
	var outb, errb bytes.Buffer
	err = run(context.Background(), []string{"keys", "list", "-addr", h.url}, func(string) string { return "" }, strings.NewReader(""), &outb, &errb)
	require.EqualError(t, err, "no admin token: set PURSER_ADMIN_TOKEN or pass -token")
	_, err = h.cli("", "keys", "list", "-token", "wrong-token-0123456789")
	require.EqualError(t, err, "invalid admin token")
}

func TestCLI_BudgetsTemplatesReports(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	ctx := context.Background()

	out := h.ok("budgets", "create", "-name", "ml monthly", "-subject", "team:ml", "-limit", "500", "-window", "month",
		"-timezone", "Europe/Paris", "-warn-at", "50,80", "-model", "gpt-4o*")
	require.Equal(t, "created 1 \"ml monthly\" on team:ml: 500.000000 usd per month Europe/Paris\n", out)
	h.ok("budgets", "create", "-name", "ml tokens", "-subject", "team:ml", "-limit", "150000", "-unit", "tokens", "-window", "72h", "-hard=false")
	_, err := h.cli("", "budgets", "create", "-name", "bad", "-subject", "team:ml", "-limit", "12.5.0", "-window", "day")
	require.EqualError(t, err, `limit: invalid amount "12.5.0": unexpected character '.'`)
	_, err = h.cli("", "budgets", "create", "-name", "bad", "-subject", "team:ml", "-window", "day")
	require.EqualError(t, err, "limit: is required")

	out = h.ok("budgets", "list", "-subject", "team:ml")
	require.Equal(t, strings.Join([]string{
		"ID  SUBJECT  NAME        LIMIT       UNIT    WINDOW              HARD   WARN AT  FILTERS",
		"1   team:ml  ml monthly  500.000000  usd     month Europe/Paris  true   50%,80%  models=gpt-4o*",
		"2   team:ml  ml tokens   150000      tokens  72h0m0s             false  -        -",
		""}, "\n"), out)

	// Flags after the id work too; only the flags given change.
	out = h.ok("budgets", "update", "1", "-limit", "600", "-o", "json")
	var b map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &b))
	require.Equal(t, "600.000000", b["limit"])
	require.Equal(t, []any{float64(50), float64(80)}, b["warn_at"])
	_, err = h.cli("", "budgets", "update", "1")
	require.EqualError(t, err, "budgets update: nothing to change (give -limit, -window, -warn-at, ...)")
	_, err = h.cli("", "budgets", "update", "1", "-subject", "team:other")
	require.EqualError(t, err, "subject: cannot change (delete and create a budget instead)")

	d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 150_000_000, Tokens: 2000,
		Target: budget.Target{Model: "gpt-4o"}}})
	require.NoError(t, err)
	_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: 120_000_000, Tokens: 1500}})
	require.NoError(t, err)

	out = h.ok("budgets", "grant", "1", "-amount", "100", "-until", "48h", "-reason", "launch")
	require.Equal(t, "budget 1: +100.000000 until TIME (grant 1)\n", normalise(out))
	out = h.ok("budgets", "get", "1")
	for _, want := range []string{"name:             ml monthly", "limit:            600.000000 usd", "effective limit:  700.000000 (base 600.000000)",
		"posted:           120.000000", "remaining:        580.000000", "utilization:      17%", "grant:            +100.000000 until TIME (launch)"} {
		require.Contains(t, normalise(out), want)
	}

	out = h.ok("status", "team:ml")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4)
	require.Equal(t, "usage (last hour): all 1 resolved requests settled from their reported usage", lines[3], "the missing-usage watchdog's line")
	require.Regexp(t, `^ID\s+SUBJECT\s+NAME\s+USED\s+LIMIT\s+USE%\s+REMAINING\s+BURN/DAY\s+PROJECTED\s+RESETS\s+RUNS OUT$`, lines[0])
	require.Regexp(t, `^1\s+team:ml\s+ml monthly\s+120\.000000\s+700\.000000 usd\s+17%\s+580\.000000\s+`, lines[1])
	require.Regexp(t, `^2\s+team:ml\s+ml tokens\s+1500\s+150000 tok\s+1%\s+148500\s+`, lines[2])
	_, err = h.cli("", "status")
	require.EqualError(t, err, "status: takes at least 1 argument, got 0")

	out = h.ok("spend", "-group-by", "model")
	require.Equal(t, strings.Join([]string{
		"MODEL   COST USD    TOKENS  REQUESTS  EXPIRED  OVERRUNS  UNRESERVED USD",
		"gpt-4o  120.000000  1500    1         0        0         0.000000",
		"TOTAL   120.000000  1500    1         0        0         0.000000",
		"",
		"TIME → TIME",
		""}, "\n"), normalise(out))
	_, err = h.cli("", "spend", "-group-by", "team")
	require.EqualError(t, err, `group_by: must be subject, model, key or day, got "team"`)

	out = h.ok("budgets", "reset", "2", "-reason", "new quarter")
	require.Equal(t, "budget 2: fresh window since TIME\n", normalise(out))
	out = h.ok("budgets", "delete", "2")
	require.Equal(t, "deleted budget 2\n", out)
	_, err = h.cli("", "budgets", "get", "2")
	require.EqualError(t, err, "budget 2 not found")

	out = h.ok("templates", "create", "-name", "user default", "-kind", "user", "-limit", "10", "-window", "month", "-warn-at", "80")
	require.Equal(t, "created template 1 \"user default\" on every new user: 10.000000 usd per month\n", out)
	out = h.ok("templates", "list")
	require.Equal(t, strings.Join([]string{
		"ID  KIND  NAME          LIMIT      UNIT  WINDOW  HARD  WARN AT  FILTERS",
		"1   user  user default  10.000000  usd   month   true  80%      -",
		""}, "\n"), out)
	require.Equal(t, "deleted template 1\n", h.ok("templates", "delete", "1"))

	out = h.ok("audit", "-limit", "3")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	require.Regexp(t, `^ID\s+AT\s+ACTOR\s+ACTION\s+TARGET\s+DETAILS$`, lines[0])
	require.Regexp(t, `^\d+\s+TIME\s+`+regexp.QuoteMeta(admin.Actor(cliToken))+`\s+template\.delete\s+template:1\s+-$`, normalise(lines[1]))
	require.Regexp(t, `^more: purser audit -before \d+$`, lines[len(lines)-1])
	out = h.ok("audit", "-target", "budget:2", "-o", "json")
	var audit struct {
		Entries []map[string]any `json:"entries"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &audit))
	var actions []string
	for _, e := range audit.Entries {
		actions = append(actions, e["action"].(string))
	}
	require.Equal(t, []string{"budget.delete", "budget.reset", "budget.create"}, actions)
	// An answer that came back compressed, without usage, charged its hold: the line warns.
	d, err = h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 1_000_000, Tokens: 10,
		Target: budget.Target{Model: "gpt-4o"}, Route: "openai-chat", Provider: "openai"}})
	require.NoError(t, err)
	_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, ChargeHold: true, Cause: "missing_usage:compressed"}})
	require.NoError(t, err)
	out = h.ok("status", "team:ml")
	require.Contains(t, out, `usage (last hour): WARNING 1 of 2 resolved requests (50%) were charged their whole hold: 1 without usage, 0 without an access-log entry; worst: route "openai-chat" (openai gpt-4o) 1 of 1; run purser doctor`)
}

// The admin token from the environment never appears in flag usage, which -h and every flag
// error print.
func TestCLI_TokenNotInUsage(t *testing.T) {
	t.Parallel()
	env := func(k string) string { return map[string]string{"PURSER_ADMIN_TOKEN": cliToken}[k] }
	for _, args := range [][]string{{"keys", "list", "-h"}, {"budgets", "create", "-bogus"}, {"apply", "-h"}} {
		var out, errb bytes.Buffer
		_ = run(context.Background(), args, env, strings.NewReader(""), &out, &errb)
		require.Contains(t, errb.String()+out.String(), "admin bearer token (env PURSER_ADMIN_TOKEN)", "%v prints the flags", args)
		require.NotContains(t, errb.String()+out.String(), cliToken, "%v does not print the token", args)
	}
}

// Long audit details are cut to whole characters: a cut inside "é" would print invalid UTF-8.
func TestCLI_AuditCutsWholeCharacters(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	for _, name := range []string{strings.Repeat("é", 99), "x" + strings.Repeat("é", 99)} { // both byte parities
		h.ok("budgets", "create", "-name", name, "-subject", "team:ml", "-limit", "1", "-window", "day")
		out := h.ok("audit", "-limit", "1")
		require.True(t, utf8.ValidString(out), "%q", out)
		require.Contains(t, out, "ééé...\n")
	}
}

// TestCLI_ListsFollowEveryPage: the lists and apply read past the API's first page (1,000 at
// most): a deployment with more keys or budgets than that is listed and planned in full.
func TestCLI_ListsFollowEveryPage(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	ctx := context.Background()
	_, err := h.schema.Pool.Exec(ctx, `
		INSERT INTO budgets (name, subject, unit, limit_amount, window_kind)
		SELECT 'b' || i, CASE WHEN i % 10 = 0 THEN 'team:small' ELSE 'team:big' END, 'usd', 1000000, 'month'
		  FROM generate_series(1, 2300) AS i;
		INSERT INTO api_keys (id, name, secret_hash, prefix, subjects)
		SELECT 'key_' || lpad(i::text, 16, '0'), 'k' || i, sha256(i::text::bytea), 'pk_x', '{team:big}'
		  FROM generate_series(1, 1001) AS i;`)
	require.NoError(t, err)

	var budgets struct {
		Budgets []struct {
			ID      int64  `json:"id"`
			Subject string `json:"subject"`
		} `json:"budgets"`
	}
	require.NoError(t, json.Unmarshal([]byte(h.ok("budgets", "list", "-o", "json")), &budgets))
	require.Equal(t, 2300, len(budgets.Budgets))
	for i := 1; i < len(budgets.Budgets); i++ {
		require.Less(t, budgets.Budgets[i-1].ID, budgets.Budgets[i].ID, "id order, each budget once")
	}
	table := strings.Split(strings.TrimSpace(h.ok("budgets", "list", "-subject", "team:big")), "\n")
	require.Len(t, table, 1+2070, "a header and team:big's budgets")

	var keys struct {
		Keys []struct {
			ID string `json:"id"`
		} `json:"keys"`
	}
	require.NoError(t, json.Unmarshal([]byte(h.ok("keys", "list", "-o", "json")), &keys))
	require.Equal(t, 1001, len(keys.Keys))
	seen := map[string]bool{}
	for _, k := range keys.Keys {
		seen[k.ID] = true
	}
	require.Equal(t, 1001, len(seen), "each key once")

	// apply finds what is on the last pages (the oldest key, the last budget): both unchanged.
	p := writeFile(t, `
keys:
  - {name: k1, subjects: [team:big]}
budgets:
  - {name: b2299, subject: team:big, limit: "1", window: month}
`)
	require.Equal(t, "no changes\n", h.ok("apply", "-f", p, "-dry-run"))
}
