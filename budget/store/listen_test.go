package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// Listen delivers this schema's notifications without the schema (a table name on
// ChangesChannel, whatever follows "schema." on the others) and drops other schemas'.
func TestStore_Listen(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	ctx, cancel := context.WithCancel(context.Background())
	type note struct{ channel, payload string }
	got := make(chan note, 16)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- st.Listen(ctx, []string{store.ChangesChannel, "purser_test other"}, func(context.Context) error {
			close(ready)
			return nil
		}, func(channel, payload string) { got <- note{channel, payload} })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Listen ended before it was ready: %v", err)
	}
	_, err := s.Pool.Exec(ctx, `SELECT pg_notify('purser_changes', 'another_schema.budgets')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `INSERT INTO budgets (name, subject, unit, limit_amount, window_kind) VALUES ('b', 'team:a', 'usd', 1, 'day')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `SELECT pg_notify('purser_test other', 'another_schema.42')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `SELECT pg_notify('purser_test other', current_schema() || '.hello')`)
	require.NoError(t, err)
	timeout := time.After(30 * time.Second)
	for _, want := range []note{{store.ChangesChannel, "budgets"}, {"purser_test other", "hello"}} {
		select {
		case n := <-got:
			require.Equal(t, want, n, "notifications arrive in order, another schema's change dropped")
		case <-timeout:
			t.Fatalf("notification %v not delivered within 30s", want)
		}
	}
	cancel()
	require.True(t, errors.Is(<-done, context.Canceled), "Listen returns the context's error when it ends")

	// A failing ready ends Listen with its error.
	boom := errors.New("boom")
	err = st.Listen(context.Background(), []string{store.ChangesChannel}, func(context.Context) error { return boom }, func(string, string) {})
	require.ErrorIs(t, err, boom, "Listen returns ready's error")
}
