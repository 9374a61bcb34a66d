package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// A replica whose rotation began before another replica's committed (it waited on the advisory
// lock meanwhile) sees that key as signing: it judges by the clock after the lock, not by its
// transaction's start, so replicas starting together make one key. (Seen as a flaky
// TestSigningKeys_SharedAndRotated: two keys from six replicas on a loaded machine.)
func TestRotateSigningKeys_WaiterSeesKeyCommittedWhileItWaited(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := store.New(s.Pool)
	rot := store.Rotation{Every: time.Hour, Lead: time.Minute, Verify: time.Hour,
		Secret: func() ([]byte, error) { return make([]byte, 32), nil }}

	// The other replica: holds the rotation lock.
	other, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer other.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit: a no-op
	_, err = other.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.signing_keys'))`)
	require.NoError(t, err)

	// This replica starts its rotation (its transaction's now() is fixed here) and waits.
	type result struct {
		inserted bool
		err      error
	}
	done := make(chan result, 1)
	go func() {
		ins, err := st.RotateSigningKeys(ctx, rot)
		done <- result{ins, err}
	}()
	require.Eventually(t, func() bool {
		var n int
		err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = current_database()
			  AND a.query LIKE '%pg_advisory_xact_lock%' AND a.query LIKE '%signing_keys%'`).Scan(&n)
		return err == nil && n > 0
	}, 20*time.Second, 5*time.Millisecond, "the rotation waits on the other replica's lock")

	// The other replica inserts a key that activates now (after the waiter's transaction began).
	_, err = other.Exec(ctx, `INSERT INTO signing_keys (secret, activates_at, retires_at, expires_at)
		VALUES (decode(repeat('00', 32), 'hex'), clock_timestamp(), clock_timestamp() + interval '61 minutes', clock_timestamp() + interval '121 minutes')`)
	require.NoError(t, err)
	require.NoError(t, other.Commit(ctx))

	r := <-done
	require.NoError(t, r.err)
	require.False(t, r.inserted, "a key committed while the rotation waited already signs: no second key")
	require.Equal(t, []string{"1"}, s.Strings(t, `SELECT count(*)::text FROM signing_keys`), "one key")
}
