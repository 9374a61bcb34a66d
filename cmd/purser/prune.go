package main

import (
	"context"
	"fmt"
	"time"

	"github.com/purser-dev/purser/budget"
)

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
