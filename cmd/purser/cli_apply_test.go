package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

const applyV1 = `
keys:
  - name: ci-bot
    subjects: [team:ml]
    allowed_models: ["gpt-4o*"]
    expires_at: 2099-01-01T00:00:00Z
budgets:
  - name: ml monthly
    subject: team:ml
    limit: "500.00"
    window: month
    timezone: Europe/Paris
    warn_at: [80, 50]
  - name: ml tokens
    subject: team:ml
    limit: 150000
    unit: tokens
    window: 72h
    hard: false
  - name: everything
    subject: global
    limit: "10000"
    window: month
templates:
  - name: user default
    subject_kind: user
    limit: "10"
    window: month
    warn_at: [80]
`

// applyV2 raises a limit, changes a key's models, drops a budget and a template, adds one.
const applyV2 = `
keys:
  - name: ci-bot
    subjects: [team:ml]
    allowed_models: ["gpt-4o*", "claude-*"]
    expires_at: 2099-01-01T00:00:00Z
budgets:
  - name: ml monthly
    subject: team:ml
    limit: "750"
    window: month
    timezone: Europe/Paris
    warn_at: [50, 80]
  - name: everything
    subject: global
    limit: "10000"
    window: month
templates:
  - name: team default
    subject_kind: team
    limit: "100"
    window: month
`

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "budgets.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestCLI_Apply(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	ctx := context.Background()
	v1, v2 := writeFile(t, applyV1), writeFile(t, applyV2)
	state := func() [4]int {
		return [4]int{
			h.count(`SELECT count(*) FROM budgets WHERE deleted_at IS NULL`),
			h.count(`SELECT count(*) FROM budget_templates WHERE deleted_at IS NULL`),
			h.count(`SELECT count(*) FROM api_keys`),
			h.count(`SELECT count(*) FROM audit_log`),
		}
	}

	// A per-tenant budget that exists only in Postgres, on a subject the file does not manage.
	_, err := h.svc.CreateBudget(ctx, "test", budget.Definition{Name: "alice", Subject: "user:alice", Limit: 1, Window: "day", Hard: true})
	require.NoError(t, err)
	before := state()

	// Dry run: the whole plan, nothing changed.
	out := h.ok("apply", "-f", v1, "--dry-run")
	require.Equal(t, strings.Join([]string{
		`+ budget "everything" on global: 10000.000000 usd per month`,
		`+ budget "ml monthly" on team:ml: 500.000000 usd per month`,
		`+ budget "ml tokens" on team:ml: 150000 tokens per 72h0m0s`,
		`+ key "ci-bot" (subjects [team:ml])`,
		`+ template "user default" for every new user: 10.000000 usd per month`,
		`dry run: 5 change(s), nothing applied`,
		``}, "\n"), sortPlan(out))
	require.Equal(t, before, state())

	out = h.ok("apply", "-f", v1)
	require.Contains(t, out, `+ budget "ml monthly" on team:ml: 500.000000 usd per month`)
	require.Regexp(t, `\n    key key_[a-z2-7]{16} secret \(shown once, store it now\): pk_[0-9A-Za-z]+\n`, out)
	require.True(t, strings.HasSuffix(out, "applied 5 change(s)\n"), out)
	secret := reSecret.FindString(out)
	k, err := h.svc.Authenticate(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, "ci-bot", k.Name)

	// Applying the same file again is a no-op, with or without -prune (alice is not managed).
	after := state()
	require.Equal(t, "no changes\n", h.ok("apply", "-f", v1))
	require.Equal(t, "no changes\n", h.ok("apply", "-f", v1, "-prune"))
	require.Equal(t, "no changes\n", h.ok("apply", "-f", v1, "-dry-run"))
	require.Equal(t, after, state(), "nothing written, not even audit entries")

	// A template-made budget on a managed subject is never pruned.
	_, err = h.svc.CreateTemplate(ctx, "test", budget.Definition{Name: "team default old", Kind: "team", Limit: 5, Window: "day", Hard: true})
	require.NoError(t, err)
	_, err = h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"team:ml"}, Cost: 1}})
	require.NoError(t, err)
	require.Equal(t, 1, h.count(`SELECT count(*) FROM budgets WHERE subject = 'team:ml' AND template_id IS NOT NULL`))

	// The second version: field-level diff; deletions only with -prune.
	out = h.ok("apply", "-f", v2, "-dry-run")
	require.Equal(t, strings.Join([]string{
		`+ template "team default" for every new team: 100.000000 usd per month`,
		`~ budget "ml monthly" on team:ml: limit 500.000000 usd → 750.000000 usd`,
		`~ key "ci-bot": allowed_models [gpt-4o*] → [claude-* gpt-4o*]`,
		`dry run: 3 change(s), nothing applied`,
		``}, "\n"), sortPlan(out))
	out = h.ok("apply", "-f", v2, "-dry-run", "-prune")
	require.Equal(t, strings.Join([]string{
		`+ template "team default" for every new team: 100.000000 usd per month`,
		`- budget "ml tokens" on team:ml (not in the file)`,
		`- template "team default old" for every new team (not in the file)`,
		`- template "user default" for every new user (not in the file)`,
		`~ budget "ml monthly" on team:ml: limit 500.000000 usd → 750.000000 usd`,
		`~ key "ci-bot": allowed_models [gpt-4o*] → [claude-* gpt-4o*]`,
		`dry run: 6 change(s), nothing applied`,
		``}, "\n"), sortPlan(out))
	require.Equal(t, "applied 6 change(s)\n", lastLine(h.ok("apply", "-f", v2, "-prune")))
	require.Equal(t, "no changes\n", h.ok("apply", "-f", v2, "-prune"))

	require.Equal(t, []string{"global/everything", "team:ml/ml monthly", "team:ml/team default old", "user:alice/alice"},
		h.schema.Strings(t, `SELECT subject || '/' || name FROM budgets WHERE deleted_at IS NULL ORDER BY 1`))
	stored, err := h.svc.Key(ctx, k.ID)
	require.NoError(t, err)
	require.Len(t, stored.AllowedModels, 2, "the key was updated in place: same id, same secret")
	_, err = h.svc.Authenticate(ctx, secret)
	require.NoError(t, err)

	// stdin works too.
	out, err = h.cli(applyV2, "apply", "-f", "-")
	require.NoError(t, err)
	require.Equal(t, "no changes\n", out)
}

func TestCLI_ApplyFileErrors(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	for name, tc := range map[string]struct{ body, msg string }{
		"UnknownTop":      {"budget: []\n", `file: unknown field "budget"`},
		"UnknownField":    {"budgets:\n  - name: b\n    subject: team:ml\n    limt: \"1\"\n    window: day\n", `budgets[0]: unknown field "limt"`},
		"BadDecimal":      {"budgets:\n  - name: b\n    subject: team:ml\n    limit: \"12.5.0\"\n    window: day\n", `budgets[0].limit: invalid amount "12.5.0": unexpected character '.'`},
		"FloatLimit":      {"budgets:\n  - name: b\n    subject: team:ml\n    limit: 12.5\n    window: day\n", `budgets[0].limit: write 12.5 as a quoted decimal string ("12.50"): YAML numbers with a fraction or exponent go through floating point`},
		"NoLimit":         {"budgets:\n  - name: b\n    subject: team:ml\n    window: day\n", `budgets[0].limit: is required`},
		"BadWindow":       {"budgets:\n  - {name: a, subject: team:ml, limit: '1', window: day}\n  - {name: b, subject: team:ml, limit: '1', window: fortnight}\n", `budgets[1].window "fortnight": want minute, hour, day, week, month, quarter, year, lifetime or a duration such as 72h`},
		"BadSubject":      {"budgets:\n  - {name: b, subject: ml, limit: '1', window: day}\n", `budgets[0].subject "ml": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`},
		"WarnAtType":      {"budgets:\n  - {name: b, subject: team:ml, limit: '1', window: day, warn_at: 80}\n", `budgets[0].warn_at: want a list, got number`},
		"Model":           {"budgets:\n  - {name: b, subject: team:ml, limit: '1', window: day, models: ['[']}\n", `budgets[0].models[0]: pattern "[": unclosed '[' at byte 0`},
		"Duplicate":       {"budgets:\n  - {name: b, subject: team:ml, limit: '1', window: day}\n  - {name: b, subject: team:ml, limit: '2', window: day}\n", `budgets[1] (budget "b" on team:ml): duplicate of budgets[0] (budget "b" on team:ml)`},
		"TemplateSubject": {"templates:\n  - {name: t, subject: user:x, limit: '1', window: day}\n", `templates[0].subject: templates take subject_kind, not subject`},
		"TemplateKind":    {"templates:\n  - {name: t, subject_kind: planet, limit: '1', window: day}\n", `templates[0].subject_kind: unknown kind "planet"`},
		"KeyNoName":       {"keys:\n  - subjects: [team:ml]\n", `keys[0].name: is required`},
		"KeyExpiry":       {"keys:\n  - {name: k, expires_at: soon}\n", `keys[0].expires_at: "soon": want an RFC 3339 time or a date (2027-01-01)`},
		"KeySubjects":     {"keys:\n  - {name: k, subjects: [team]}\n", `keys[0].subjects: subjects[0]: subject "team": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`},
		"DuplicateYAML":   {"budgets: []\nbudgets: []\n", `not valid YAML: yaml: unmarshal errors:` + "\n" + `  line 2: key "budgets" already set in map`},
		"Managed":         {"managed_subjects: [ml]\n", `managed_subjects[0]: subject "ml": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`},
		"Empty":           {"", `the file is empty`},
		"List":            {"- a\n", `the file must be a mapping with keys, budgets, templates and managed_subjects`},
	} {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, tc.body)
			_, err := h.cli("", "apply", "-f", p, "-dry-run")
			require.EqualError(t, err, p+": "+tc.msg)
		})
	}
	_, err := h.cli("", "apply")
	require.EqualError(t, err, "apply: -f FILE is required")
	// Too large, from a file or from stdin: refused, never cut to size and applied.
	big := "managed_subjects: []\n" + strings.Repeat("#", maxApplyFile)
	p := writeFile(t, big)
	_, err = h.cli("", "apply", "-f", p, "-dry-run")
	require.EqualError(t, err, p+": larger than 8388608 bytes")
	_, err = h.cli(big, "apply", "-f", "-", "-dry-run")
	require.EqualError(t, err, "-: larger than 8388608 bytes")
	require.Zero(t, h.count(`SELECT count(*) FROM audit_log`))
}

// sortPlan sorts the change lines (the order within a kind follows the file; sorted is stable
// to compare) and keeps the summary last.
func sortPlan(out string) string {
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	last := lines[len(lines)-1]
	body := lines[:len(lines)-1]
	slices.Sort(body)
	return strings.Join(append(body, last), "\n") + "\n"
}

func lastLine(out string) string {
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	return lines[len(lines)-1] + "\n"
}

// Budgets are read subject by subject: what one subject's budgets carry (a template, a route)
// must not rub off on the next subject's.
func TestCLI_ApplyPrunesAcrossSubjects(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	ctx := context.Background()
	_, err := h.svc.CreateTemplate(ctx, "test", budget.Definition{Name: "org default", Kind: "org", Limit: 5, Window: "day", Hard: true})
	require.NoError(t, err)
	_, err = h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: []budget.Subject{"org:acme"}, Cost: 1}})
	require.NoError(t, err)
	_, err = h.svc.CreateBudget(ctx, "test", budget.Definition{Name: "stray", Subject: "team:ml", Limit: 1, Window: "day", Hard: true})
	require.NoError(t, err)

	p := writeFile(t, "managed_subjects: [org:acme, team:ml]\n")
	require.Equal(t, "- budget \"stray\" on team:ml (not in the file)\ndry run: 1 change(s), nothing applied\n",
		h.ok("apply", "-f", p, "-dry-run", "-prune"), "org:acme's template budget is kept, team:ml's stray one goes")
}

// A template whose subject kind alone changed is updated, the change named.
func TestCLI_ApplyTemplateKindChange(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	_, err := h.svc.CreateTemplate(context.Background(), "test", budget.Definition{Name: "t", Kind: "user", Limit: 5, Window: "day", Hard: true})
	require.NoError(t, err)
	p := writeFile(t, "templates:\n  - {name: t, subject_kind: team, limit: '0.000005', window: day}\n")
	require.Equal(t, "~ template \"t\" for every new team: subject_kind user → team\ndry run: 1 change(s), nothing applied\n",
		h.ok("apply", "-f", p, "-dry-run"))
	require.Equal(t, "applied 1 change(s)\n", lastLine(h.ok("apply", "-f", p)))
	require.Equal(t, "no changes\n", h.ok("apply", "-f", p))
}
