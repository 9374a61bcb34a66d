package budget_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/testkit"
)

// A change listener on a server that takes no writes (a standby, or an old primary fenced
// read-only after a switchover) would never hear of changes committed on the new primary:
// it gives that connection up and keeps retrying, without claiming to be listening.
// (The failover test in e2e covers a server that turns read-only under a running listener.)
func TestService_ListenerRefusesReadOnlyServer(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	cfg, err := pgxpool.ParseConfig(schema.ConnString + "&default_transaction_read_only=on")
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	defer pool.Close()
	var logs testkit.SyncBuffer
	st := store.New(pool)
	svc := budget.New(st, st, budget.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() { svc.Listen(ctx, ready); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(logs.String(), "no longer takes writes") < 2 {
		select {
		case <-ready:
			t.Fatal("the listener reported ready on a read-only server")
		default:
		}
		require.False(t, time.Now().After(deadline), "the listener did not refuse the read-only server twice within 30s; log:\n%s", logs.String())
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-ready:
		t.Fatal("the listener reported ready on a read-only server")
	default:
	}
}
