package budget

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// A Check repeated by Envoy's retry_policy may be answered with the first attempt's
// reservation while the batcher releases that attempt's hold (its caller gave up). The
// release must then not apply: the request is going upstream on it.
func TestVoidTentative_RespectsRepeatedCheck(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	svc := New(st, st, Config{})
	ctx := context.Background()
	_, err := svc.CreateBudget(ctx, "t", Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	require.NoError(t, err)
	r := ReserveRequest{IdempotencyKey: []byte("k|req|stream"), Subjects: []Subject{"team:ml"}, Cost: 10}

	ds, err := svc.Reserve(ctx, []ReserveRequest{r})
	require.NoError(t, err)
	first := ds[0].ReservationID
	ds, err = svc.Reserve(ctx, []ReserveRequest{r}) // the repeat, answered with the first
	require.NoError(t, err)
	require.Equal(t, Duplicate, ds[0].Outcome)
	require.Equal(t, first, ds[0].ReservationID)

	res, err := svc.voidTentative(ctx, []string{first}, "caller_gone")
	require.NoError(t, err)
	require.Equal(t, OutcomeDuplicate, res[0].Outcome, "the repeat's request relies on it")
	got, err := svc.Reservation(ctx, first)
	require.NoError(t, err)
	require.Equal(t, "pending", got.State)

	// An unanswered reservation is released, and gives up its key: a later repeat reserves
	// afresh instead of being handed a voided reservation (free spend).
	r2 := ReserveRequest{IdempotencyKey: []byte("k|req2|stream2"), Subjects: []Subject{"team:ml"}, Cost: 10}
	ds, err = svc.Reserve(ctx, []ReserveRequest{r2})
	require.NoError(t, err)
	lone := ds[0].ReservationID
	res, err = svc.voidTentative(ctx, []string{lone}, "caller_gone")
	require.NoError(t, err)
	require.Equal(t, OutcomeVoided, res[0].Outcome)
	ds, err = svc.Reserve(ctx, []ReserveRequest{r2})
	require.NoError(t, err)
	require.Equal(t, Admitted, ds[0].Outcome)
	require.NotEqual(t, lone, ds[0].ReservationID)

	rep, err := svc.Verify(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean())
	var pending int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT pending FROM budget_windows`).Scan(&pending))
	require.Equal(t, int64(20), pending, "the kept first reservation and the fresh one")
}

// The release of holds whose callers have gone runs on its own context: a batch context that
// expired (the callers' deadlines passed) must not lose it, or the holds would expire charged.
func TestBatcher_VoidOutlivesBatchContext(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	svc := New(st, st, Config{})
	ctx := context.Background()
	_, err := svc.CreateBudget(ctx, "t", Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	require.NoError(t, err)
	ds, err := svc.Reserve(ctx, []ReserveRequest{{Subjects: []Subject{"team:ml"}, Cost: 10}})
	require.NoError(t, err)
	id := ds[0].ReservationID

	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	b := NewBatcher(svc, BatcherConfig{})
	b.voidOrphans(expired, []string{id}, "caller_gone")
	got, err := svc.Reservation(ctx, id)
	require.NoError(t, err)
	require.Equal(t, "voided", got.State, "the void ran although the batch's context had expired")
}
