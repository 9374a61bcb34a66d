package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// positionalArgs names the positional arguments of the commands that take some, as their
// usage line must show them. Every other leaf command takes none.
var positionalArgs = map[string]string{
	"keys revoke":      "KEY_ID",
	"keys rotate":      "KEY_ID",
	"budgets get":      "ID",
	"budgets update":   "ID",
	"budgets delete":   "ID",
	"budgets reset":    "ID",
	"budgets grant":    "ID",
	"templates delete": "ID",
	"tokens revoke":    "TOKEN_ID",
	"status":           "SUBJECT...",
}

// commandPaths lists every command of the tree, groups and leaves, as "keys revoke".
func commandPaths() (groups, leaves []string) {
	var walk func(prefix string, c command)
	walk = func(prefix string, c command) {
		for _, n := range sortedKeys(c.subs) {
			sub, path := c.subs[n], strings.TrimSpace(prefix+" "+n)
			if sub.subs != nil {
				groups = append(groups, path)
				walk(path, sub)
			} else {
				leaves = append(leaves, path)
			}
		}
	}
	walk("", group("", commands()))
	return groups, leaves
}

// cliRun runs purser with args and no environment; it returns stdout, stderr and the exit
// status main would give.
func cliRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	var ex exitError
	switch {
	case err == nil:
	case errors.As(err, &ex):
		code = ex.code
	default:
		code = 1
	}
	return out.String(), errb.String(), code
}

// Every command, group or leaf, follows the same conventions: -h (and --help, and
// `purser help <command>`) prints its usage on stdout and exits 0; the usage line names the
// command and its positional arguments; misuse prints the usage on stderr and exits 2.
func TestCLI_EveryCommandsHelp(t *testing.T) {
	t.Parallel()
	groups, leaves := commandPaths()
	require.Contains(t, groups, "keys", "the walk finds the groups")
	require.Contains(t, leaves, "serve", "the walk finds the leaves")
	for path := range positionalArgs {
		require.Contains(t, leaves, path, "positionalArgs names an existing command")
	}
	for _, path := range append(append([]string{""}, groups...), leaves...) {
		words := strings.Fields(path)
		name := strings.TrimSpace("purser " + path)
		t.Run(strings.ReplaceAll(cmp(path, "purser"), " ", "_"), func(t *testing.T) {
			t.Parallel()
			for _, ask := range [][]string{append(append([]string{}, words...), "-h"), append(append([]string{}, words...), "--help"),
				append([]string{"help"}, words...)} {
				out, errOut, code := cliRun(t, ask...)
				require.Equal(t, 0, code, "%q exits 0 (stderr: %s)", ask, errOut)
				require.Empty(t, errOut, "%q writes nothing on stderr", ask)
				first, _, _ := strings.Cut(out, "\n")
				require.True(t, strings.HasPrefix(first, "usage: "+name+" "), "%q prints %s's usage line on stdout, got %q", ask, name, first)
				if args, ok := positionalArgs[path]; ok {
					require.Contains(t, first, " "+args, "%q: the usage line names the positional arguments %s", ask, args)
				}
			}

			// Misuse: the usage on stderr, exit 2, nothing on stdout.
			var misuse []string
			switch _, takesArgs := positionalArgs[path]; {
			case path == "" || slicesContains(groups, path):
				misuse = append(append([]string{}, words...), "no-such-command")
			case takesArgs:
				misuse = words // the positional arguments are missing
			default:
				misuse = append(append([]string{}, words...), "stray-argument")
			}
			out, errOut, code := cliRun(t, misuse...)
			require.Equal(t, 2, code, "%q is misuse: exit 2", misuse)
			require.Empty(t, out, "%q prints nothing on stdout", misuse)
			require.Contains(t, errOut, "usage: "+name+" ", "%q prints the usage on stderr", misuse)
			if path != "" && !slicesContains(groups, path) {
				_, errOut, code = cliRun(t, append(append([]string{}, words...), "-no-such-flag")...)
				require.Equal(t, 2, code, "%s -no-such-flag: exit 2", name)
				require.Contains(t, errOut, "flag provided but not defined: -no-such-flag", "%s names the bad flag on stderr", name)
				require.Contains(t, errOut, "usage: "+name+" ", "%s -no-such-flag prints the usage on stderr", name)
			}
		})
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// purser with no arguments is misuse; `purser help serve` is serve's help, not the list.
func TestCLI_TopLevelHelp(t *testing.T) {
	t.Parallel()
	out, errOut, code := cliRun(t)
	require.Equal(t, 2, code, "purser without a command exits 2")
	require.Empty(t, out, "purser without a command prints nothing on stdout")
	require.Contains(t, errOut, "usage: purser <command>", "purser without a command prints the usage on stderr")

	out, _, code = cliRun(t, "help", "serve")
	require.Equal(t, 0, code, "purser help serve exits 0")
	require.True(t, strings.HasPrefix(out, "usage: purser serve "), "purser help serve prints serve's usage, got %q", out)
	require.Contains(t, out, "-grpc-addr", "purser help serve lists serve's flags")

	out, _, code = cliRun(t, "help", "keys", "create")
	require.Equal(t, 0, code, "purser help keys create exits 0")
	require.True(t, strings.HasPrefix(out, "usage: purser keys create "), "purser help keys create prints its usage, got %q", out)

	_, errOut, code = cliRun(t, "help", "nosuch")
	require.Equal(t, 2, code, "help for an unknown command exits 2")
	require.Contains(t, errOut, "usage: purser <command>", "help for an unknown command lists the commands on stderr")
}

// budgets update changes only the flags given: its help shows no creation defaults.
func TestCLI_BudgetsUpdateHelpHasNoDefaults(t *testing.T) {
	t.Parallel()
	out, _, code := cliRun(t, "budgets", "update", "-h")
	require.Equal(t, 0, code, "budgets update -h exits 0")
	for _, def := range []string{`(default "usd")`, `(default "UTC")`, "(default true)"} {
		require.NotContains(t, out, def, "budgets update -h shows no creation default: only the flags given change")
	}
	out, _, _ = cliRun(t, "budgets", "create", "-h")
	require.Contains(t, out, `(default "usd")`, "budgets create -h shows the unit's default")
}

// purser cost: a line that cannot be priced is reported on stderr and exits 1; its stdout
// keeps one line per input line.
func TestCLI_CostErrorsOnStderr(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	in := `{"provider":"openai","model":"gpt-4o-mini","body":{"usage":{"prompt_tokens":1000,"completion_tokens":10}}}` + "\nnot json\n"
	err := run(context.Background(), []string{"cost"}, func(string) string { return "" }, strings.NewReader(in), &out, &errb)
	var ex exitError
	require.ErrorAs(t, err, &ex, "a line that cannot be priced makes purser cost fail")
	require.Equal(t, 1, ex.code, "exit 1")
	require.Equal(t, "cost: 1 of 2 lines could not be priced", ex.msg, "the summary says how many")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, "one output line per input line")
	require.Contains(t, lines[0], `"total_cost":"0.000156"`, "the first line is priced")
	require.Contains(t, lines[1], `{"error":"line 2: invalid input`, "the second line's error keeps its place on stdout")
	require.Regexp(t, `^purser cost: line 2: invalid input: .*\n$`, errb.String(), "the error is on stderr")

	out.Reset()
	errb.Reset()
	require.NoError(t, run(context.Background(), []string{"cost"}, func(string) string { return "" },
		strings.NewReader(strings.Repeat(`{"provider":"openai","model":"gpt-4o-mini","body":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}`+"\n", 3)),
		&out, &errb), "every line priced: exit 0")
	require.Empty(t, errb.String(), "nothing on stderr when every line is priced")
}

// Errors wrapped at two layers do not repeat their field: `timezone: timezone "Mars/Olympus"`.
func TestCLI_TidyMessage(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`timezone: timezone "Mars/Olympus": not a known IANA time zone`:            `timezone "Mars/Olympus": not a known IANA time zone`,
		`budgets[0].timezone: timezone "Mars/Olympus": not a known IANA time zone`: `budgets[0].timezone "Mars/Olympus": not a known IANA time zone`,
		`name: is required`:                     `name: is required`,
		`group_by: must be subject, model, key`: `group_by: must be subject, model, key`,
		`window: window "fortnight": not valid`: `window "fortnight": not valid`,
	} {
		require.Equal(t, want, tidyMessage(in), "tidyMessage(%q)", in)
	}
	// apply's own path: a declaration with an unknown time zone.
	_, err := parseApplyFile([]byte("budgets:\n  - {name: b, subject: team:ml, limit: \"1\", window: month, timezone: Mars/Olympus}\n"))
	require.Error(t, err, "an unknown time zone is refused")
	require.False(t, regexp.MustCompile(`timezone: timezone`).MatchString(err.Error()), "no repeated prefix: %s", err)
}

// Audit details show amounts in their unit: money as $1.50, not micro-USD.
func TestCLI_AuditShowsMoney(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	h.ok("budgets", "create", "-name", "small", "-subject", "team:ml", "-limit", "1.50", "-window", "day")
	h.ok("budgets", "grant", "1", "-amount", "25", "-until", "48h", "-reason", "launch")
	h.ok("budgets", "create", "-name", "tok", "-subject", "team:ml", "-unit", "tokens", "-limit", "150000", "-window", "day")
	h.ok("budgets", "grant", "2", "-amount", "1000", "-until", "48h")
	out := h.ok("audit")
	for _, want := range []string{"limit=$1.50", "amount=$25.00", "limit=150000 tokens", "amount=1000 tokens", "reason=launch", `name=small`} {
		require.Contains(t, out, want, "purser audit shows %s", want)
	}
	require.NotContains(t, out, "1500000", "no raw micro-USD in the audit table")
}

// The README's list of commands is the CLI's: every command, each with its summary, and no
// command the CLI does not have (it once listed keys get and alerts).
func TestREADME_CommandList(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	readme := string(data)
	_, after, ok := strings.Cut(readme, "`TestREADME_CommandList` checks")
	require.True(t, ok, "the README introduces its command list")
	_, after, ok = strings.Cut(after, "```text\n")
	require.True(t, ok, "the README's command list is a text block")
	block, _, ok := strings.Cut(after, "```")
	require.True(t, ok, "the README's command list ends")

	listed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		name, summary, ok := strings.Cut(line, "  ")
		require.True(t, ok, "README command line %q: name, two spaces, summary", line)
		path := strings.TrimPrefix(name, "purser ")
		require.NotContains(t, listed, path, "the README lists %s once", path)
		listed[path] = strings.TrimSpace(summary)
	}
	_, leaves := commandPaths()
	for _, p := range leaves {
		s, ok := listed[p]
		require.True(t, ok, "the README lists purser %s", p)
		require.Equal(t, summaryOf(p), s, "the README's summary of purser %s is the CLI's", p)
	}
	require.Len(t, listed, len(leaves), "the README lists no command the CLI does not have")

	// Commands named anywhere in the README exist: `purser keys get` would fail here.
	root := group("", commands())
	mention := regexp.MustCompile("`purser ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")
	for _, m := range mention.FindAllStringSubmatch(readme, -1) {
		if m[1] == "help" {
			continue
		}
		c, ok := root.subs[m[1]]
		require.True(t, ok, "the README mentions `purser %s`, which is not a command", m[1])
		if c.subs != nil && m[2] != "" && m[2] != "help" {
			_, ok := c.subs[m[2]]
			require.True(t, ok, "the README mentions `purser %s %s`, which is not a command", m[1], m[2])
		}
	}
}
