package budget

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// MinRetention is the shortest retention Prune accepts. A reservation must outlive every
// access-log entry that could still settle it (a late entry refunds an expired hold) and
// every replay its idempotency key must recognise; a day is far beyond Envoy's buffering.
const MinRetention = 24 * time.Hour

func checkRetention(retention time.Duration) error {
	if retention < MinRetention {
		return fmt.Errorf("%w: retention %s: want at least %s", ErrInvalid, retention, MinRetention)
	}
	return nil
}

// PruneStats is what a Prune run removed.
type PruneStats struct {
	Reservations int64
	Holds        int64
	Batches      int
	AlertEvents  int64 // alert events of windows that ended before the horizon, all delivered
}

// Prune removes resolved reservations (settled, voided, expired) resolved more than retention
// ago, batchSize at a time, until none is left or ctx ends. Their spend stays in daily rollups
// (spend reports keep day resolution for pruned history) and their holds' sums in a per-window
// archive (verify reconciles pruned windows exactly); pending reservations are never pruned.
// Alert events of windows that ended before the horizon go too, once every delivery is done.
// One process prunes at a time: on a replica that finds another pruning, Prune does nothing.
func (s *Service) Prune(ctx context.Context, retention time.Duration, batchSize int) (PruneStats, error) {
	var st PruneStats
	if err := checkRetention(retention); err != nil {
		return st, err
	}
	if batchSize <= 0 {
		return st, fmt.Errorf("%w: prune batch size %d: want at least 1", ErrInvalid, batchSize)
	}
	before := s.cfg.Now().Add(-retention)
	after := ""
	for ctx.Err() == nil {
		res, err := s.db.Prune(ctx, before, after, batchSize)
		if err != nil {
			return st, mapErr(err)
		}
		if res.Busy {
			break
		}
		st.Batches++
		st.Reservations += res.Reservations
		st.Holds += res.Holds
		s.cfg.Metrics.prunedN(ctx, res.Reservations)
		if res.Reservations < int64(batchSize) { // the walk reached the horizon
			break
		}
		after = res.LastID
	}
	for st.Batches > 0 && ctx.Err() == nil {
		n, err := s.db.PruneAlerts(ctx, before, batchSize)
		if err != nil {
			return st, mapErr(err)
		}
		st.AlertEvents += n
		if n < int64(batchSize) {
			break
		}
	}
	return st, ctx.Err()
}

// Prunable counts the resolved reservations Prune would remove for retention, removing none.
func (s *Service) Prunable(ctx context.Context, retention time.Duration) (int64, error) {
	if err := checkRetention(retention); err != nil {
		return 0, err
	}
	n, err := s.db.Prunable(ctx, s.cfg.Now().Add(-retention))
	return n, mapErr(err)
}

// RunPruner prunes history older than retention every interval until ctx ends.
func (s *Service) RunPruner(ctx context.Context, retention, interval time.Duration, batchSize int) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, err := s.Prune(ctx, retention, batchSize)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.LogAttrs(ctx, slog.LevelError, "prune reservations", slog.String("error", err.Error()))
		case st.Reservations > 0 || st.AlertEvents > 0:
			s.log.LogAttrs(ctx, slog.LevelInfo, "pruned resolved reservations",
				slog.Int64("reservations", st.Reservations), slog.Int64("holds", st.Holds),
				slog.Int64("alert_events", st.AlertEvents), slog.Duration("retention", retention))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
