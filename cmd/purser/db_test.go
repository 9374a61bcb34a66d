package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/bench"
)

// testPool opens purser's pool (openPool: the failover hooks included) on the test server,
// with extra runtime parameters appended to the URL. pgtest.New first fails (CI) or skips
// when no server answers.
func testPool(t *testing.T, maxConns int32, params string) *pgxpool.Pool {
	t.Helper()
	pgtest.New(t)
	url := pgtest.URL() + params
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := openPool(ctx, url, maxConns)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func backendPID(t *testing.T, c *pgxpool.Conn) uint32 {
	t.Helper()
	return c.Conn().PgConn().PID()
}

// A write refused because the transaction is read-only (what every write on a standby or a
// fenced primary gets) must close the connection, so the pool reconnects instead of keeping
// a connection that will refuse every reservation.
func TestFollowPrimary_ReadOnlyErrorClosesTheConnection(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 1, "")
	ctx := context.Background()

	c, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer c.Release() // Release is idempotent; this one only matters when an assertion fails
	first := backendPID(t, c)
	tx, err := c.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SET TRANSACTION READ ONLY`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `CREATE TEMP TABLE purser_readonly_probe (i int)`)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "the write fails with a server error: %v", err)
	require.Equal(t, sqlstateReadOnly, pgErr.Code)
	require.True(t, c.Conn().IsClosed(), "a read-only refusal closes the connection")
	c.Release()

	c2, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer c2.Release()
	c = c2
	require.NotEqual(t, first, backendPID(t, c), "the pool opened a new connection")
	_, err = c.Exec(ctx, `SELECT 1`)
	require.NoError(t, err)
}

// Other errors (a constraint, a syntax error) leave the connection alone.
func TestFollowPrimary_OrdinaryErrorsKeepTheConnection(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 1, "")
	ctx := context.Background()
	c, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer c.Release() // Release is idempotent; this one only matters when an assertion fails
	first := backendPID(t, c)
	_, err = c.Exec(ctx, `SELECT 1/0`)
	require.ErrorContains(t, err, "division by zero")
	require.False(t, c.Conn().IsClosed())
	c.Release()
	c2, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer c2.Release()
	c = c2
	require.Equal(t, first, backendPID(t, c), "the connection was reused")
}

// A connection whose server reported default_transaction_read_only=on (PostgreSQL 14+ sends
// it as a ParameterStatus whenever it changes, as after the reload that fences a primary)
// is not put back in the pool, even though nothing failed on it.
func TestFollowPrimary_ReportedReadOnlyIsNotReused(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 1, "")
	ctx := context.Background()
	c, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer c.Release() // Release is idempotent; this one only matters when an assertion fails
	first := backendPID(t, c)
	require.Equal(t, "off", c.Conn().PgConn().ParameterStatus("default_transaction_read_only"),
		"the server reports default_transaction_read_only (PostgreSQL 14+)")
	_, err = c.Exec(ctx, `SET default_transaction_read_only = on`)
	require.NoError(t, err)
	require.Equal(t, "on", c.Conn().PgConn().ParameterStatus("default_transaction_read_only"))
	c.Release()

	c2, err := pool.Acquire(ctx) // the pool has one slot: this waits for the old one's fate
	require.NoError(t, err)
	defer c2.Release()
	c = c2
	require.NotEqual(t, first, backendPID(t, c), "the read-only connection was destroyed, not reused")
	var ro string
	require.NoError(t, c.QueryRow(ctx, `SHOW transaction_read_only`).Scan(&ro))
	require.Equal(t, "off", ro)
}

func TestCheckWritable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	rw := testPool(t, 2, "")
	require.NoError(t, checkWritable(ctx, rw, rw), "a primary is writable")

	// Every session of this pool is read-only, as on a fenced primary.
	ro := testPool(t, 2, "&default_transaction_read_only=on")
	err := checkWritable(ctx, rw, ro)
	require.ErrorIs(t, err, errDBReadOnly)
	require.Equal(t, "database is read-only (a standby or a fenced primary)", readyReason(err))

	// Nothing listens: unreachable (the pool is created lazily, as serve's would be after a
	// primary vanished).
	addr, err := bench.FreeAddr()
	require.NoError(t, err)
	cfg, err := pgxpool.ParseConfig("postgres://postgres@" + addr + "/purser?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	followPrimary(cfg)
	gone, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer gone.Close()
	err = checkWritable(ctx, rw, gone)
	require.ErrorIs(t, err, errDBUnreachable)
	require.Equal(t, "database unreachable", readyReason(err))
	require.NotContains(t, readyReason(err), addr, "no addresses in the public answer")

	// A deadline that passes while the commit waits (here: before anything was sent).
	done, cancelDone := context.WithCancel(ctx)
	cancelDone()
	require.Error(t, checkWritable(done, rw))
}

// pgx parses a multi-host URL (the failover topology's DATABASE_URL) with one fallback per
// host and target_session_attrs=read-write checking each; redactURL keeps every host and
// hides the password.
func TestMultiHostURL(t *testing.T) {
	t.Parallel()
	const url = "postgres://purser:hunter2@db-a:5432,db-b:5433/purser?sslmode=disable&target_session_attrs=read-write"
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	require.Equal(t, "db-a", cfg.ConnConfig.Host)
	require.Equal(t, uint16(5432), cfg.ConnConfig.Port)
	require.Len(t, cfg.ConnConfig.Fallbacks, 1)
	require.Equal(t, "db-b", cfg.ConnConfig.Fallbacks[0].Host)
	require.Equal(t, uint16(5433), cfg.ConnConfig.Fallbacks[0].Port)
	require.NotNil(t, cfg.ConnConfig.ValidateConnect, "target_session_attrs=read-write validates each host")
	red := redactURL(url)
	require.NotContains(t, red, "hunter2")
	require.Contains(t, red, "db-a:5432,db-b:5433")
}
