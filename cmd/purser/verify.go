package main

import (
	"context"
	"fmt"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

func runVerify(ctx context.Context, e env, args []string) error {
	f := newFlags("verify", e)
	dsn := databaseFlag(f)
	if err := f.Parse(args); err != nil {
		return err
	}
	svc, closeLedger, err := openLedger(ctx, *dsn)
	if err != nil {
		return err
	}
	defer closeLedger()
	rep, err := svc.Verify(ctx)
	if err != nil {
		return err
	}
	for _, m := range rep.Mismatches {
		fmt.Fprintf(e.stdout, "MISMATCH budget %d window %s: counters posted=%d pending=%d, holds posted=%d pending=%d, bad holds=%d, orphan holds=%d, window row missing=%t\n",
			m.BudgetID, m.WindowStart.Format("2006-01-02T15:04:05Z07:00"), m.Posted, m.Pending, m.HeldPosted, m.HeldPending, m.BadHolds, m.OrphanHolds, m.MissingCount)
	}
	for _, o := range rep.OverLimit {
		verdict := "explained by recorded overruns / unreserved spend"
		if budget.Unexplained(o) {
			verdict = "UNEXPLAINED (was the limit lowered? see the audit log)"
		}
		fmt.Fprintf(e.stdout, "over limit: budget %d window %s: posted=%d pending=%d limit=%d overrun=%d: %s\n",
			o.BudgetID, o.WindowStart.Format("2006-01-02T15:04:05Z07:00"), o.Posted, o.Pending, o.Limit, o.Overrun, verdict)
	}
	if !rep.Clean() {
		return exitError{code: 1, msg: fmt.Sprintf("ledger does not reconcile: %d mismatches, %d windows over limit", len(rep.Mismatches), len(rep.OverLimit))}
	}
	fmt.Fprintln(e.stdout, "ledger reconciles: every window's posted and pending equal the sum of its holds")
	return nil
}

func runCost(ctx context.Context, e env, args []string) error {
	f := newFlags("cost", e)
	prices := f.String("prices", "PURSER_PRICES", "", "price override file (YAML or JSON)")
	if err := f.Parse(args); err != nil {
		return err
	}
	cat, err := loadCatalog(*prices)
	if err != nil {
		return err
	}
	return pricing.RunCost(ctx, cat, e.stdin, e.stdout)
}
