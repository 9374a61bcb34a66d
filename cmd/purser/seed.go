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
// team budget and a hard daily budget on the key. It is idempotent; the key's secret is only
// ever shown once, so a second run rotates the demo key to print a usable secret again.
func runSeed(ctx context.Context, e env, args []string) error {
	f := newFlags("seed", e)
	dsn := databaseFlag(f)
	httpAddr := f.String("http-addr", "PURSER_HTTP_ADDR", defaultHTTPAddr, "where `purser serve` answers HTTP (for the printed examples)")
	demo := f.FlagSet.Bool("demo", false, "also load demo teams, keys, budgets (money, tokens, requests), a manager token and this month's spend history, for the console")
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
	if key.ID == "" {
		key, secret, err = svc.CreateKey(ctx, actor, budget.KeySpec{Name: demoKeyName, Subjects: []string{"user:demo", "team:demo"}})
	} else {
		key, secret, err = svc.RotateKey(ctx, actor, key.ID)
	}
	if err != nil {
		return err
	}

	samples := []budget.Definition{
		{Name: "demo team monthly", Subject: "team:demo", Unit: "usd", Limit: 10_000_000, Window: "month", Hard: true, WarnAt: []int{50, 80}},
		{Name: "demo key daily", Subject: string(budget.KeySubject(key.ID)), Unit: "usd", Limit: 1_000_000, Window: "day", Hard: true},
	}
	for _, d := range samples {
		existing, err := svc.Budgets(ctx, budget.BudgetQuery{Subject: d.Subject})
		if err != nil {
			return err
		}
		found := false
		for _, b := range existing {
			found = found || b.Name == d.Name
		}
		if found {
			continue
		}
		if _, err := svc.CreateBudget(ctx, actor, d); err != nil && !errors.Is(err, budget.ErrConflict) {
			return err
		}
	}

	w := e.stdout
	fmt.Fprintf(w, "Sample loaded.\n\n")
	fmt.Fprintf(w, "  demo API key (shown once, stored only as a SHA-256 hash):\n    %s\n", secret)
	fmt.Fprintf(w, "  key id %s, owners user:demo and team:demo\n", key.ID)
	for _, d := range samples {
		fmt.Fprintf(w, "  budget %-18s on %-22s $%s per %s (hard)\n", fmt.Sprintf("%q", d.Name), d.Subject, pricing.FormatMicros(d.Limit), d.Window)
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
	return seedDemo(ctx, w, pool, svc, time.Now().UTC())
}
