package pgcluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/internal/pgcluster"
)

// The topology the failover test relies on: a commit acknowledged by a primary with a
// synchronous standby survives the primary's crash and the standby's promotion; a multi-host
// URL with target_session_attrs=read-write reaches whichever server is the primary; a fenced
// primary refuses writes with SQLSTATE 25006 but still answers reads.
func TestSynchronousFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := pgcluster.New(t)
	a, err := c.InitPrimary(ctx, "a", "app")
	require.NoError(t, err)
	b, err := c.AddStandby(ctx, "b", a, 0)
	require.NoError(t, err)
	require.NoError(t, a.MakeSynchronous(ctx))

	multi := "postgres://postgres@" + pgcluster.Hosts(a, b) + "/app?sslmode=disable&target_session_attrs=read-write&connect_timeout=5"
	conn, err := pgx.Connect(ctx, multi)
	require.NoError(t, err)
	var port int
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('port')::int`).Scan(&port))
	require.Equal(t, a.Port, port, "read-write: the primary, not the standby")
	_, err = conn.Exec(ctx, `CREATE TABLE acked (id int PRIMARY KEY)`)
	require.NoError(t, err)
	for i := range 50 {
		_, err = conn.Exec(ctx, `INSERT INTO acked VALUES ($1)`, i)
		require.NoError(t, err)
	}
	require.NoError(t, conn.Close(ctx))

	a.Crash()
	require.True(t, a.Exited())
	_, err = pgx.Connect(ctx, multi)
	require.Error(t, err, "no read-write server while the standby is still a standby")

	require.NoError(t, b.Promote(ctx))
	conn, err = pgx.Connect(ctx, multi)
	require.NoError(t, err)
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('port')::int`).Scan(&port))
	require.Equal(t, b.Port, port, "the promoted standby")
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM acked`).Scan(&n))
	require.Equal(t, 50, n, "every acknowledged commit survived the crash")

	// A new standby on the crashed server's port, then a planned switchover to it.
	a2, err := c.AddStandby(ctx, "a2", b, a.Port)
	require.NoError(t, err)
	require.NoError(t, b.MakeSynchronous(ctx))
	_, err = conn.Exec(ctx, `INSERT INTO acked VALUES (50)`)
	require.NoError(t, err)
	require.NoError(t, b.FenceReadOnly(ctx))
	_, err = conn.Exec(ctx, `INSERT INTO acked VALUES (51)`)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "a write on the fenced primary fails: %v", err)
	require.Equal(t, "25006", pgErr.Code)
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM acked`).Scan(&n), "reads still work")
	require.Equal(t, 51, n)
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, b.WaitCaughtUp(ctx))
	require.NoError(t, a2.Promote(ctx))
	conn, err = pgx.Connect(ctx, multi)
	require.NoError(t, err)
	defer conn.Close(ctx)
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('port')::int`).Scan(&port))
	require.Equal(t, a2.Port, port)
	_, err = conn.Exec(ctx, `INSERT INTO acked VALUES (51)`)
	require.NoError(t, err, "the new primary takes writes")
}
