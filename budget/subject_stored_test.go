package budget_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

// TestStoredLegacySubjects: rows written when the admin API still accepted ',' and format
// characters (U+202E) stay usable after the rules tightened: the key still authenticates
// with its subjects, budget lists still load; new writes are refused.
func TestStoredLegacySubjects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	k, secret, err := e.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "old", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	b := e.budget(t, budget.Definition{Name: "old", Subject: "team:ml", Limit: 1_000_000, Window: "day", Hard: true})
	const legacy = "team:a,b\u202e"
	_, err = e.schema.Pool.Exec(ctx, `UPDATE api_keys SET subjects = ARRAY['team:ml', $1] WHERE id = $2`, legacy, k.ID)
	require.NoError(t, err)
	_, err = e.schema.Pool.Exec(ctx, `UPDATE budgets SET subject = $1 WHERE id = $2`, legacy, b.ID)
	require.NoError(t, err)

	got, err := e.svc.Authenticate(ctx, secret)
	require.NoError(t, err, "the key still authenticates")
	require.Contains(t, got.Subjects, budget.Subject(legacy))
	bs, err := e.svc.Budgets(ctx, budget.BudgetQuery{})
	require.NoError(t, err, "lists still load")
	require.Len(t, bs, 1)
	require.Equal(t, budget.Subject(legacy), bs[0].Subject)

	_, _, err = e.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "new", Subjects: []string{legacy}})
	require.ErrorContains(t, err, "id contains ','", "new writes follow the rules")
}
