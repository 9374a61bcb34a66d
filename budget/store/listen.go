package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ChangesChannel is the channel purser_notify_change (migrations/functions) notifies when a
// definition row changes: keys, budgets, templates, grants, signing keys.
const ChangesChannel = "purser_changes"

// RoomChannel is the channel purser_notify_room (migrations/functions) notifies when a
// watched budget's window spend goes down (budget_storm_watch): its payload is the budget id.
const RoomChannel = "purser_room"

// ListenCheckEvery is how often an idle listener asks its server whether it still takes
// writes. After a switchover the old primary may stay up, read-only, and never send another
// notification (changes now commit on the new primary): the listener must move too.
const ListenCheckEvery = 5 * time.Second

// ErrReadOnly ends a listener whose server stopped taking writes.
var ErrReadOnly = errors.New("the database no longer takes writes (not the primary)")

// Listen takes a connection out of the pool for good, LISTENs on channels, calls ready once
// the LISTENs are in place (notifications sent from then on are delivered), then notify for
// each notification, in order, on Listen's goroutine. On ChangesChannel only this schema's
// notifications are delivered, without the schema: the changed table's name on
// ChangesChannel, the budget id on RoomChannel (the triggers send "schema.payload"). Listen returns when the connection fails, the server no longer takes
// writes (ErrReadOnly; checked on connecting and every ListenCheckEvery of quiet), ready
// fails, or ctx ends; it never returns nil. The caller reconnects.
func (s *Store) Listen(ctx context.Context, channels []string, ready func(context.Context) error, notify func(channel, payload string)) error {
	pooled, err := s.pool.Acquire(ctx)
	if err != nil {
		return interpret(err)
	}
	// The connection carries LISTENs: it never goes back to the pool.
	conn := pooled.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	var schema, readOnly string
	if err := conn.QueryRow(ctx, `SELECT current_schema(), current_setting('transaction_read_only')`).Scan(&schema, &readOnly); err != nil {
		return interpret(err)
	}
	if readOnly == "on" {
		return ErrReadOnly
	}
	for _, ch := range channels {
		if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{ch}.Sanitize()); err != nil {
			return interpret(err)
		}
	}
	if err := ready(ctx); err != nil {
		return err
	}
	prefix := schema + "."
	for {
		wctx, cancel := context.WithTimeout(ctx, ListenCheckEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// Quiet for a while: still on a primary? (A timeout leaves the connection usable.)
			// Bounded: a connection that died silently must not keep a listener "live".
			qctx, qcancel := context.WithTimeout(ctx, ListenCheckEvery)
			err := conn.QueryRow(qctx, `SHOW transaction_read_only`).Scan(&readOnly)
			qcancel()
			if err != nil {
				return interpret(err)
			}
			if readOnly == "on" {
				return ErrReadOnly
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return interpret(err)
		}
		payload, ours := strings.CutPrefix(n.Payload, prefix)
		if !ours {
			continue // another schema's (tests share a server)
		}
		notify(n.Channel, payload)
	}
}
