package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// A unique violation comes back typed: ErrConflict, the kind callers tell apart, and the
// Postgres error itself, so nobody above the store matches constraint names or texts.
func TestStore_ConflictErrorsAreTyped(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	ctx := context.Background()
	row := store.BudgetRow{Name: "team", Subject: "team:ml", Unit: "usd", Limit: 10, WindowKind: "day", TimeZone: "UTC"}
	_, err := st.CreateBudget(ctx, row, store.Audit{Actor: "test", Action: "budget.create"})
	require.NoError(t, err)
	_, err = st.CreateBudget(ctx, row, store.Audit{Actor: "test", Action: "budget.create"})
	require.ErrorIs(t, err, store.ErrConflict, "a second budget of the same name on the subject conflicts")
	require.ErrorIs(t, err, store.ErrBudgetNameTaken, "the conflict says which")
	require.NotErrorIs(t, err, store.ErrTemplateNameTaken, "and not another kind")
	var ce *store.ConflictError
	require.ErrorAs(t, err, &ce, "the conflict is a *store.ConflictError")
	require.Equal(t, "budgets_subject_name", ce.Constraint, "naming the constraint")
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr) && pgErr.Code == "23505", "the Postgres unique violation stays in the chain: %v", err)

	tpl := store.BudgetRow{Name: "per-user", SubjectKind: "user", Unit: "usd", Limit: 10, WindowKind: "day", TimeZone: "UTC"}
	_, err = st.CreateTemplate(ctx, tpl, store.Audit{Actor: "test", Action: "template.create"})
	require.NoError(t, err)
	_, err = st.CreateTemplate(ctx, tpl, store.Audit{Actor: "test", Action: "template.create"})
	require.ErrorIs(t, err, store.ErrTemplateNameTaken, "a second template of the same name conflicts, and says so")
	require.ErrorIs(t, err, store.ErrConflict, "a template name conflict is a conflict")
}
