package budget

import (
	"context"
	"log/slog"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Listen keeps the caches fresh: it LISTENs (store.Listen) on purser_changes (sent by triggers
// on keys, budgets, templates, grants and signing keys) and drops the caches whenever this schema's
// definitions change, so an admin change reaches every replica within moments; a key change
// also reloads the index of key hashes, a signing key change wakes RunSigningKeys. It
// reconnects on failure, purging and reloading on every reconnect (notifications may have been
// missed), and returns when ctx ends. ready, if not nil, is closed once the first LISTEN is in
// place and the key index is loaded.
func (s *Service) Listen(ctx context.Context, ready chan<- struct{}) {
	ictx, stop := context.WithCancel(ctx)
	defer stop()
	go s.runKeyIndex(ictx)
	go s.runStormRepeats(ictx)
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
	defer s.storm.setLive(false)
	return s.db.Listen(ctx, []string{store.ChangesChannel, store.RoomChannel}, func(ctx context.Context) error {
		s.Invalidate() // anything cached before the LISTEN may be stale
		// Exhausted windows may be remembered only while room notifications arrive.
		s.storm.setLive(true)
		s.wakeSigning()
		if err := s.loadKeyIndex(ctx); err != nil {
			return err
		}
		if *ready != nil {
			close(*ready)
			*ready = nil
		}
		return nil
	}, func(channel, table string) {
		if channel == store.RoomChannel {
			s.roomNotice(table) // a watched budget's window gained room
			return
		}
		switch table {
		case "signing_keys":
			s.wakeSigning() // not a definition: the caches stay
		case "api_keys":
			s.keyIdx.markDirty()
			s.Invalidate()
		default:
			s.Invalidate()
		}
	})
}

func (s *Service) wakeSigning() {
	select {
	case s.signing <- struct{}{}:
	default:
	}
}
