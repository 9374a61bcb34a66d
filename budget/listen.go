package budget

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"
)

// listenCheckEvery is how often an idle change listener asks its server whether it still
// takes writes. After a switchover the old primary may stay up, read-only, and never send
// another notification (admin changes now commit on the new primary): the listener must
// move too, or the caches would only follow the new primary through their TTL.
const listenCheckEvery = 5 * time.Second

// errListenerReadOnly ends a listener whose server stopped taking writes.
var errListenerReadOnly = errors.New("the database no longer takes writes (not the primary)")

// Listen keeps the caches fresh: it LISTENs on purser_changes (sent by triggers on keys,
// budgets, templates, grants and signing keys) and drops the caches whenever this schema's
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
	pooled, err := s.db.Pool().Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection carries a LISTEN: take it out of the pool for good.
	conn := pooled.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	var schema, readOnly string
	if err := conn.QueryRow(ctx, `SELECT current_schema(), current_setting('transaction_read_only')`).Scan(&schema, &readOnly); err != nil {
		return err
	}
	if readOnly == "on" {
		return errListenerReadOnly
	}
	if _, err := conn.Exec(ctx, `LISTEN purser_changes; LISTEN purser_room`); err != nil {
		return err
	}
	s.Invalidate() // anything cached before the LISTEN may be stale
	// Exhausted windows may be remembered only while room notifications arrive.
	s.storm.setLive(true)
	defer s.storm.setLive(false)
	s.wakeSigning()
	if err := s.loadKeyIndex(ctx); err != nil {
		return err
	}
	if *ready != nil {
		close(*ready)
		*ready = nil
	}
	prefix := schema + "."
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheckEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// Quiet for a while: still on a primary? (A timeout leaves the connection usable.)
			// Bounded: a connection that died silently must not keep the storm memory live.
			qctx, qcancel := context.WithTimeout(ctx, listenCheckEvery)
			err := conn.QueryRow(qctx, `SHOW transaction_read_only`).Scan(&readOnly)
			qcancel()
			if err != nil {
				return err
			}
			if readOnly == "on" {
				return errListenerReadOnly
			}
			continue
		}
		if err != nil {
			return err
		}
		if n.Channel == "purser_room" {
			s.roomNotice(prefix, n.Payload)
			continue
		}
		table, ours := strings.CutPrefix(n.Payload, prefix)
		if !ours {
			continue
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
	}
}

func (s *Service) wakeSigning() {
	select {
	case s.signing <- struct{}{}:
	default:
	}
}
