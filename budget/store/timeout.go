package store

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server-side time limits of the hot path (reserve, settle).
//
// A statement of the hot path runs with lock_timeout and statement_timeout set, for its own
// transaction only, to the time its context has left less serverMargin: the server gives up
// and rolls back before the client does, so a batch that cannot finish in time leaves no work
// behind, the connection stays usable, and a backend whose client died (a SIGKILLed purser)
// can never acquire a lock and commit a hold later.
const (
	// serverMargin is taken off the context's remaining time: the rollback and its answer
	// must reach purser before its own deadline fires.
	serverMargin = 2 * time.Millisecond
	// minServerTimeout is the smallest limit sent (0 would mean "none").
	minServerTimeout = time.Millisecond
	// DefaultServerTimeout applies when the context has no deadline.
	DefaultServerTimeout = 5 * time.Second
)

// ServerTimeout is the lock_timeout and statement_timeout a hot-path statement run under ctx
// gets.
func ServerTimeout(ctx context.Context) time.Duration {
	d, ok := ctx.Deadline()
	if !ok {
		return DefaultServerTimeout
	}
	return max(time.Until(d)-serverMargin, minServerTimeout)
}

// timedBatch starts a pipeline whose first statement sets lock_timeout and statement_timeout
// for the transaction (set_config(..., true) is SET LOCAL); the statements queued after it
// run in the same implicit transaction, one round trip in all.
func timedBatch(ctx context.Context) *pgx.Batch { return limitedBatch(ServerTimeout(ctx)) }

func limitedBatch(d time.Duration) *pgx.Batch {
	ms := strconv.FormatInt(max(d.Milliseconds(), 1), 10)
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)`, ms)
	return b
}

// hotRow is QueryRow under timedBatch's limits.
func (s *Store) hotRow(ctx context.Context, sql string, args ...any) pgx.Row {
	b := timedBatch(ctx)
	b.Queue(sql, args...)
	return &timedRow{br: s.pool.SendBatch(ctx, b)}
}

type timedRow struct{ br pgx.BatchResults }

func (r *timedRow) Scan(dest ...any) error {
	_, err := r.br.Exec()
	if err == nil {
		err = r.br.QueryRow().Scan(dest...)
	}
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return err
}

// hotQuery is Query under timedBatch's limits; closing the rows ends the pipeline.
func (s *Store) hotQuery(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	b := timedBatch(ctx)
	b.Queue(sql, args...)
	br := s.pool.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &timedRows{Rows: rows, br: br}, nil
}

type timedRows struct {
	pgx.Rows
	br pgx.BatchResults
}

func (r *timedRows) Close() {
	r.Rows.Close()
	_ = r.br.Close()
}
