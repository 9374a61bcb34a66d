// Command purser enforces LLM spending budgets inside Envoy: an ext_authz gRPC server that
// reserves each request's worst-case cost and an access-log sink that settles the real cost.
//
//	purser serve     run the gRPC (ext_authz, access log, health) and HTTP (health, metrics, admin) servers
//	purser migrate   create the database if needed and apply schema migrations
//	purser seed      load a small sample (a key, budgets) and print how to use it
//	purser verify    reconcile the ledger; exit 1 on any mismatch
//	purser doctor    report what charges whole holds (usage lost, clock skew); exit 1 on a problem
//	purser cost      price provider responses read as JSON lines (the settlement code path)
//	purser check-config  validate a configuration file and price overrides offline
//	purser keys | budgets | templates | tokens | status | spend | requests | audit   talk to the admin API
//	purser apply -f budgets.yaml [-dry-run] [-prune]             declarative budgets, templates, keys
//	purser version   print the version
//
// Run `purser help <command>` or `purser <command> -h` for a command's usage and flags (on
// stdout, exit 0). Misuse prints the usage on stderr and exits 2; errors go to stderr with a
// non-zero exit. Flags fall back to environment variables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	if err != nil {
		var ex exitError
		if errors.As(err, &ex) {
			if ex.msg != "" {
				fmt.Fprintln(os.Stderr, "purser:", tidyMessage(ex.msg))
			}
			os.Exit(ex.code)
		}
		fmt.Fprintln(os.Stderr, "purser:", tidyMessage(err.Error()))
		os.Exit(1)
	}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// env is what every command gets: the process's environment and streams, injectable in tests.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// command is a leaf (run) or a group of commands (subs).
type command struct {
	summary string
	run     func(ctx context.Context, e env, args []string) error
	subs    map[string]command
}

func leaf(summary string, run func(ctx context.Context, e env, args []string) error) command {
	return command{summary: summary, run: run}
}

func group(summary string, subs map[string]command) command {
	return command{summary: summary, subs: subs}
}

func commands() map[string]command {
	return map[string]command{
		"serve":        leaf("run the ext_authz, access-log, health, metrics and admin servers", runServe),
		"migrate":      leaf("create the database if needed and apply schema migrations", runMigrate),
		"seed":         leaf("load a small sample (a key, budgets) and print how to use it", runSeed),
		"verify":       leaf("reconcile the ledger (exit 1 on any mismatch)", runVerify),
		"doctor":       doctorCommand(),
		"prune":        leaf("remove resolved reservations older than -older-than, keeping daily spend rollups", runPrune),
		"cost":         leaf("price provider responses read as JSON lines on stdin", runCost),
		"check-config": leaf("validate a configuration file and price overrides offline", runCheckConfig),
		"keys":         keysCommand(),
		"budgets":      budgetsCommand(),
		"templates":    templatesCommand(),
		"status":       statusCommand(),
		"spend":        spendCommand(),
		"audit":        auditCommand(),
		"tokens":       tokensCommand(),
		"requests":     requestsCommand(),
		"apply":        applyCommand(),
		"version":      leaf("print the version", runVersion),
	}
}

func runVersion(_ context.Context, e env, args []string) error {
	if err := newFlags("version", e).Parse(args); err != nil {
		return err
	}
	_, err := fmt.Fprintln(e.stdout, "purser", version)
	return err
}

// run runs the command line args. Help asked for (-h, --help, help) goes to stdout and
// exits 0; misuse prints the usage on stderr and exits 2; errors go to stderr, exit 1.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	err := dispatch(ctx, e, nil, group("", commands()), args)
	if errors.Is(err, flag.ErrHelp) {
		return nil // the help was asked for and printed
	}
	return err
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// dispatch runs c (reached by path) with args: a leaf parses its own flags; a group picks
// its subcommand.
func dispatch(ctx context.Context, e env, path []string, c command, args []string) error {
	if c.subs == nil {
		return c.run(ctx, e, args)
	}
	switch {
	case len(args) == 0:
		groupUsage(e.stderr, path, c)
		return exitError{code: 2, msg: "missing command"}
	case args[0] == "help" && len(args) > 1:
		return help(ctx, e, path, c, args[1:])
	case isHelp(args[0]):
		groupUsage(e.stdout, path, c)
		return flag.ErrHelp
	}
	sub, ok := c.subs[args[0]]
	if !ok {
		groupUsage(e.stderr, path, c)
		return exitError{code: 2, msg: fmt.Sprintf("unknown command %q for %s (want %s)", args[0], cmdName(path), strings.Join(sortedKeys(c.subs), ", "))}
	}
	return dispatch(ctx, e, append(slices.Clone(path), args[0]), sub, args[1:])
}

// help prints the help of the command named by names under c: `purser help serve`,
// `purser keys help create`.
func help(ctx context.Context, e env, path []string, c command, names []string) error {
	for i, n := range names {
		if c.subs == nil {
			return exitError{code: 2, msg: fmt.Sprintf("%s has no subcommands (got %q)", cmdName(path), strings.Join(names[i:], " "))}
		}
		sub, ok := c.subs[n]
		if !ok {
			groupUsage(e.stderr, path, c)
			return exitError{code: 2, msg: fmt.Sprintf("unknown command %q for %s", n, cmdName(path))}
		}
		path, c = append(slices.Clone(path), n), sub
	}
	if c.subs != nil {
		groupUsage(e.stdout, path, c)
		return flag.ErrHelp
	}
	return c.run(ctx, e, []string{"-h"})
}

func cmdName(path []string) string { return strings.Join(append([]string{"purser"}, path...), " ") }

// groupUsage lists a group's commands.
func groupUsage(w io.Writer, path []string, c command) {
	name := cmdName(path)
	fmt.Fprintf(w, "usage: %s <command> [flags] [arguments]\n", name)
	if c.summary != "" {
		fmt.Fprintf(w, "\n%s\n", c.summary)
	}
	fmt.Fprintln(w)
	names := sortedKeys(c.subs)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s  %s\n", width, n, c.subs[n].summary)
	}
	fmt.Fprintf(w, "\nRun `%s help <command>` (or `%s <command> -h`) for a command's usage and flags.\n", name, name)
}

// summaryOf returns the summary of the command at path ("keys revoke").
func summaryOf(path string) string {
	c := group("", commands())
	for _, n := range strings.Fields(path) {
		sub, ok := c.subs[n]
		if !ok {
			return ""
		}
		c = sub
	}
	return c.summary
}

// tidyMessage drops a word repeated across a field prefix ("timezone: timezone \"Mars\": ..."
// becomes "timezone \"Mars\": ..."), as errors wrapped at two layers can read.
func tidyMessage(msg string) string {
	for _, m := range repeatedPrefix.FindAllStringSubmatchIndex(msg, -1) {
		if msg[m[2]:m[3]] == msg[m[4]:m[5]] {
			return tidyMessage(msg[:m[2]] + msg[m[4]:])
		}
	}
	return msg
}

var repeatedPrefix = regexp.MustCompile(`\b([a-z_]+): ([a-z_]+)\b`)
