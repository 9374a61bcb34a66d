package main

import (
	"context"
	"fmt"
	"time"

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

// pruneBatch is how many reservations one prune transaction removes.
const pruneBatch = 10_000

func runPrune(ctx context.Context, e env, args []string) error {
	f := newFlags("prune", e)
	dsn := databaseFlag(f)
	olderThan := f.Duration("older-than", "PURSER_RETENTION", 0, "prune resolved reservations resolved longer ago than this (at least 24h; e.g. 2160h)")
	dryRun := f.FlagSet.Bool("dry-run", false, "only count the reservations that would be pruned")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *olderThan < budget.MinRetention {
		return exitError{code: 2, msg: fmt.Sprintf("-older-than %s: want at least %s", *olderThan, budget.MinRetention)}
	}
	svc, closeLedger, err := openLedger(ctx, *dsn)
	if err != nil {
		return err
	}
	defer closeLedger()
	horizon := time.Now().Add(-*olderThan).UTC().Format(time.RFC3339)
	if *dryRun {
		n, err := svc.Prunable(ctx, *olderThan)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "would prune %d reservations resolved before %s\n", n, horizon)
		return nil
	}
	st, err := svc.Prune(ctx, *olderThan, pruneBatch)
	if err != nil {
		return err
	}
	if st.Batches == 0 {
		return exitError{code: 1, msg: "another process is pruning this ledger; try again later"}
	}
	fmt.Fprintf(e.stdout, "pruned %d reservations and %d holds resolved before %s (their spend is kept as daily rollups) and %d delivered alert events of windows that ended before then\n",
		st.Reservations, st.Holds, horizon, st.AlertEvents)
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
