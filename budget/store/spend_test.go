package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// The sums themselves are checked against reservations made through the ledger in
// budget.TestService_Spend; this covers the store's own contract.
func TestStore_Spend(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	ctx := context.Background()
	from := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 1, 0)

	_, err := st.Spend(ctx, store.SpendFilter{From: from, To: to, GroupBy: "team; DROP TABLE reservations"})
	require.EqualError(t, err, `spend: unknown grouping "team; DROP TABLE reservations"`)

	for _, g := range []string{"", "subject", "model", "key", "day"} {
		rows, err := st.Spend(ctx, store.SpendFilter{From: from, To: to, GroupBy: g})
		require.NoError(t, err, g)
		require.Empty(t, rows, g)
	}

	// Pending and voided reservations are not spend; a settled one with several subjects
	// counts once per subject, and once in the total.
	_, err = s.Pool.Exec(ctx, `INSERT INTO reservations (id, state, expires_at, resolved_at, key_id, subjects, model,
		hold_cost, hold_tokens, actual_cost, actual_tokens) VALUES
		('018f0000-0000-7000-8000-000000000001', 'settled', $1, $1, 'key_a', '{key:key_a,team:ml}', 'm', 10, 1, 7, 2),
		('018f0000-0000-7000-8000-000000000002', 'voided', $1, $1, 'key_a', '{key:key_a,team:ml}', 'm', 10, 1, 0, 0),
		('018f0000-0000-7000-8000-000000000003', 'pending', $1, NULL, 'key_a', '{key:key_a,team:ml}', 'm', 10, 1, NULL, NULL)`,
		from.Add(time.Hour))
	require.NoError(t, err)
	rows, err := st.Spend(ctx, store.SpendFilter{From: from, To: to, GroupBy: "subject"})
	require.NoError(t, err)
	require.Equal(t, []store.SpendRow{{Group: "key:key_a", Cost: 7, Tokens: 2, Requests: 1}, {Group: "team:ml", Cost: 7, Tokens: 2, Requests: 1}}, rows)
	rows, err = st.Spend(ctx, store.SpendFilter{From: from, To: to, Subject: "team:ml"})
	require.NoError(t, err)
	require.Equal(t, []store.SpendRow{{Cost: 7, Tokens: 2, Requests: 1}}, rows)
	rows, err = st.Spend(ctx, store.SpendFilter{From: from, To: to, Subject: "team:other"})
	require.NoError(t, err)
	require.Empty(t, rows)
}
