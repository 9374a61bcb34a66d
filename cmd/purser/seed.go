package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

const demoKeyName = "demo"

// runSeed loads a small sample: a demo key owned by user:demo and team:demo, a hard monthly
// team budget and a hard daily budget on the key. It is idempotent: a second run keeps the
// demo key, its budgets and (with -demo) the manager token, and says so. A secret is only
// ever shown once, so -rotate gives the demo key (and the manager token) a new one, printed,
// and the old one stops working; the output says that too.
func runSeed(ctx context.Context, e env, args []string) error {
	f := newFlags("seed", e)
	dsn := databaseFlag(f)
	httpAddr := f.String("http-addr", "PURSER_HTTP_ADDR", defaultHTTPAddr, "where `purser serve` answers HTTP (for the printed examples)")
	demo := f.FlagSet.Bool("demo", false, "also load demo teams, keys, budgets (money, tokens, requests), a manager token and this month's spend history, for the console")
	rotate := f.FlagSet.Bool("rotate", false, "give an existing demo key (and with -demo the manager token) a new secret, printed once; the old one stops working")
	if err := f.Parse(args); err != nil {
		return err
	}
	svc, closeLedger, err := openLedger(ctx, *dsn)
	if err != nil {
		return err
	}
	defer closeLedger()
	const actor = "seed"

	keys, err := svc.Keys(ctx, budget.KeyQuery{Name: demoKeyName})
	if err != nil {
		return err
	}
	var key budget.Key
	var secret string
	for _, k := range keys {
		if k.RevokedAt.IsZero() {
			key = k
			break
		}
	}
	keyState := "created"
	switch {
	case key.ID == "":
		key, secret, err = svc.CreateKey(ctx, actor, budget.KeySpec{Name: demoKeyName, Subjects: []string{"user:demo", "team:demo"}})
	case *rotate:
		keyState = "rotated"
		key, secret, err = svc.RotateKey(ctx, actor, key.ID)
	default:
		keyState = "kept"
	}
	if err != nil {
		return err
	}

	samples := []budget.Definition{
		{Name: "demo team monthly", Subject: "team:demo", Unit: "usd", Limit: 10_000_000, Window: "month", Hard: true, WarnAt: []int{50, 80}},
		{Name: "demo key daily", Subject: string(budget.KeySubject(key.ID)), Unit: "usd", Limit: 1_000_000, Window: "day", Hard: true},
	}
	budgetState := make([]string, len(samples))
	for i, d := range samples {
		existing, err := svc.Budgets(ctx, budget.BudgetQuery{Subject: d.Subject})
		if err != nil {
			return err
		}
		budgetState[i] = "kept"
		found := false
		for _, b := range existing {
			found = found || b.Name == d.Name
		}
		if found {
			continue
		}
		if _, err := svc.CreateBudget(ctx, actor, d); err == nil {
			budgetState[i] = "created"
		} else if !errors.Is(err, budget.ErrConflict) {
			return err
		}
	}

	w := e.stdout
	fmt.Fprintf(w, "Sample loaded.\n\n")
	switch keyState {
	case "created":
		fmt.Fprintf(w, "  demo API key (shown once, stored only as a SHA-256 hash):\n    %s\n", secret)
	case "rotated":
		fmt.Fprintf(w, "  demo API key ROTATED (-rotate): the previous secret no longer works; the new one (shown once):\n    %s\n", secret)
	default:
		secret = "<the demo key>"
		fmt.Fprintf(w, "  demo API key: kept from an earlier run (its secret was shown then and is stored only as a hash);\n")
		fmt.Fprintf(w, "    run `purser seed -rotate` for a new secret (the old one then stops working)\n")
	}
	fmt.Fprintf(w, "  key id %s, owners user:demo and team:demo\n", key.ID)
	for i, d := range samples {
		fmt.Fprintf(w, "  budget %-18s on %-22s $%s per %s (hard; %s)\n", fmt.Sprintf("%q", d.Name), d.Subject, pricing.FormatMicros(d.Limit), d.Window, budgetState[i])
	}
	fmt.Fprintf(w, "\nUse it:\n")
	fmt.Fprintf(w, "  - point Envoy's ext_authz and http_grpc access log at purser's gRPC port (envoy/envoy.yaml, or `docker compose up`)\n")
	fmt.Fprintf(w, "    and call any OpenAI or Anthropic API through Envoy with `Authorization: Bearer <the key above>`.\n")
	fmt.Fprintf(w, "  - your own budgets, as the key holder:\n      curl -s -H 'Authorization: Bearer %s' http://%s/v1/me\n", secret, *httpAddr)
	fmt.Fprintf(w, "  - as an admin (PURSER_ADMIN_TOKEN):\n      curl -s -H \"Authorization: Bearer $PURSER_ADMIN_TOKEN\" 'http://%s/v1/status?subject=team:demo'\n", *httpAddr)
	fmt.Fprintf(w, "  - the console: http://%s/ui/ (sign in with PURSER_ADMIN_TOKEN, or with the key above)\n", *httpAddr)
	if !*demo {
		return nil
	}
	pool, err := openPool(ctx, *dsn, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	return seedDemo(ctx, w, pool, svc, time.Now().UTC(), *rotate)
}
