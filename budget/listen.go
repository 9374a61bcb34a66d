package budget

import (
	"context"
	"log/slog"
	"strings"
	"time"
)

// Listen keeps the caches fresh: it LISTENs on purser_changes (sent by triggers on keys,
// budgets, templates and grants) and drops the caches whenever this schema changes, so an
// admin change reaches every replica within moments. It reconnects on failure, purging on every
// reconnect (notifications may have been missed), and returns when ctx ends. ready, if not
// nil, is closed once the first LISTEN is in place.
func (s *Service) Listen(ctx context.Context, ready chan<- struct{}) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, &ready)
		if ctx.Err() != nil {
			return
		}
		s.log.LogAttrs(ctx, slog.LevelWarn, "change listener lost; caches purged, reconnecting",
			slog.String("error", err.Error()), slog.Duration("backoff", backoff))
		s.Invalidate()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Service) listenOnce(ctx context.Context, ready *chan<- struct{}) error {
	pooled, err := s.db.Pool().Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection carries a LISTEN: take it out of the pool for good.
	conn := pooled.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `LISTEN purser_changes`); err != nil {
		return err
	}
	s.Invalidate() // anything cached before the LISTEN may be stale
	if *ready != nil {
		close(*ready)
		*ready = nil
	}
	prefix := schema + "."
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if strings.HasPrefix(n.Payload, prefix) {
			s.Invalidate()
		}
	}
}
