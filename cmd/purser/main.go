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
// Run `purser <command> -h` for a command's flags. Flags fall back to environment variables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
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
				fmt.Fprintln(os.Stderr, "purser:", ex.msg)
			}
			os.Exit(ex.code)
		}
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "purser:", err)
		}
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

type command struct {
	summary string
	run     func(ctx context.Context, e env, args []string) error
}

func commands() map[string]command {
	return map[string]command{
		"serve":        {"run the ext_authz, access-log, health, metrics and admin servers", runServe},
		"migrate":      {"create the database if needed and apply schema migrations", runMigrate},
		"seed":         {"load a small sample (a key, budgets) and print how to use it", runSeed},
		"verify":       {"reconcile the ledger (exit 1 on any mismatch)", runVerify},
		"doctor":       doctorCommand(),
		"prune":        {"remove resolved reservations older than -older-than, keeping daily spend rollups", runPrune},
		"cost":         {"price provider responses read as JSON lines on stdin", runCost},
		"check-config": {"validate a configuration file and price overrides offline", runCheckConfig},
		"keys":         keysCommand(),
		"budgets":      budgetsCommand(),
		"templates":    templatesCommand(),
		"status":       statusCommand(),
		"spend":        spendCommand(),
		"audit":        auditCommand(),
		"tokens":       tokensCommand(),
		"requests":     requestsCommand(),
		"apply":        applyCommand(),
		"version": {"print the version", func(_ context.Context, e env, _ []string) error {
			_, err := fmt.Fprintln(e.stdout, "purser", version)
			return err
		}},
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return exitError{code: 2}
		}
		return nil
	}
	c, ok := cmds[args[0]]
	if !ok {
		usage(stderr, cmds)
		return exitError{code: 2, msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	return c.run(ctx, e, args[1:])
}

func usage(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: purser <command> [flags]")
	fmt.Fprintln(w)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run `purser <command> -h` for the command's flags.")
}
