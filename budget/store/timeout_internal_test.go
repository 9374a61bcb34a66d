package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store/pgtest"
)

// The limits apply to the statement queued after them, in the same implicit transaction, and
// end with it: the next statement on the connection runs with the server's defaults again.
func TestTimedBatch_LimitsTheTransactionOnly(t *testing.T) {
	t.Parallel()
	sc := pgtest.NewWithPoolSize(t, 1) // one connection: the next query reuses it
	s := New(sc.Pool)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var stmt, lock string
	require.NoError(t, s.hotRow(ctx, `SELECT current_setting('statement_timeout'), current_setting('lock_timeout')`).Scan(&stmt, &lock))
	d, err := time.ParseDuration(stmt)
	require.NoError(t, err, "statement_timeout %q", stmt)
	require.True(t, d > 5*time.Second && d < 10*time.Second, "statement_timeout %v: want the context's remaining time less a margin", d)
	require.Equal(t, stmt, lock, "lock_timeout and statement_timeout are the same limit")

	require.NoError(t, sc.Pool.QueryRow(ctx, `SELECT current_setting('statement_timeout'), current_setting('lock_timeout')`).Scan(&stmt, &lock))
	require.Equal(t, "0", stmt, "the limit is SET LOCAL: gone after the transaction")
	require.Equal(t, "0", lock, "the limit is SET LOCAL: gone after the transaction")
}

// The server cancels a statement that outlives its limit by itself: no client is needed for it
// to give up (a SIGKILLed purser's backend stops on its own).
func TestTimedBatch_ServerCancelsSlowStatement(t *testing.T) {
	t.Parallel()
	sc := pgtest.New(t)
	b := limitedBatch(50 * time.Millisecond)
	b.Queue(`SELECT pg_sleep(5)`)
	br := sc.Pool.SendBatch(context.Background(), b) // no client deadline at all
	_, err := br.Exec()
	require.NoError(t, err)
	_, err = br.Exec()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want a server error, got %v", err)
	require.Equal(t, "57014", pgErr.Code, "want query_canceled by statement_timeout, got %v", err)
	_ = br.Close() // repeats the error
}
