package budget_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

func TestService_Requests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	key, _, err := e.svc.CreateKey(ctx, "t", budget.KeySpec{Name: "k", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	day := e.budget(t, budget.Definition{Name: "ml day", Subject: "team:ml", Limit: 1_000_000, Window: "day", Hard: true})
	mini := e.budget(t, budget.Definition{Name: "mini only", Subject: "team:ml", Limit: 1_000_000, Window: "day", Models: []string{"gpt-4o-mini*"}})
	rpd := e.budget(t, budget.Definition{Name: "rpd", Subject: "team:ml", Unit: "requests", Limit: 100, Window: "day", Hard: true})
	e.budget(t, budget.Definition{Name: "web", Subject: "team:web", Limit: 10, Window: "day", Hard: true})

	// 12 requests: the key's (gpt-4o and gpt-4o-mini alternately) and 2 of team:web.
	var ids []string
	for i := range 12 {
		r := req(key.AllSubjects()...)
		r.KeyID = key.ID
		r.Target.Model = []string{"gpt-4o", "gpt-4o-mini"}[i%2]
		r.Cost, r.Tokens = int64(100+i), int64(1000+i)
		if i >= 10 {
			r = req("team:web")
			r.Cost = 1
		}
		d := e.reserveOne(t, r)
		require.Equal(t, budget.Admitted, d.Outcome)
		ids = append(ids, d.ReservationID)
	}
	// Settle 0-5 at half the hold, void 6, leave 7-11 pending.
	var settle []budget.Settlement
	for i := range 6 {
		settle = append(settle, budget.Settlement{ReservationID: ids[i], Cost: int64(50 + i), Tokens: int64(500 + i),
			Usage: []byte(fmt.Sprintf(`{"input_tokens":%d,"output_tokens":%d,"model":"x"}`, 400+i, 100)), Cause: "usage"})
	}
	settle = append(settle, budget.Settlement{ReservationID: ids[6], Void: true, Cause: "no_upstream"})
	_, err = e.svc.Settle(ctx, settle)
	require.NoError(t, err)

	list := func(q budget.RequestQuery) []budget.RequestRecord {
		t.Helper()
		if q.Limit == 0 {
			q.Limit = 1000
		}
		rs, err := e.svc.Requests(ctx, q)
		require.NoError(t, err)
		return rs
	}
	all := list(budget.RequestQuery{})
	require.Len(t, all, 12)
	for i, r := range all {
		require.Equal(t, ids[11-i], r.ID, "newest first")
	}
	r0 := all[11]
	require.Equal(t, "settled", r0.State)
	require.Equal(t, int64(100), r0.HoldCost)
	require.Equal(t, int64(50), *r0.ActualCost)
	require.Equal(t, int64(500), *r0.ActualTokens)
	require.Equal(t, int64(400), *r0.InputTokens)
	require.Equal(t, int64(100), *r0.OutputTokens)
	require.Equal(t, "usage", *r0.Cause)
	require.Equal(t, key.ID, *r0.KeyID)
	require.Equal(t, []string{"key:" + key.ID, "team:ml"}, r0.Subjects)
	require.NotNil(t, r0.ResolvedAt)
	require.Nil(t, all[0].InputTokens, "a pending record has no usage yet")

	require.Len(t, list(budget.RequestQuery{Subject: "team:web"}), 2)
	require.Len(t, list(budget.RequestQuery{KeyID: key.ID}), 10)
	require.Len(t, list(budget.RequestQuery{Model: "gpt-4o-mini"}), 5)
	require.Len(t, list(budget.RequestQuery{State: "voided"}), 1)
	require.Len(t, list(budget.RequestQuery{State: "pending", Subject: "team:ml"}), 3)
	require.Len(t, list(budget.RequestQuery{Scope: budget.Scope{"team:web"}}), 2)
	require.Len(t, list(budget.RequestQuery{Scope: budget.Scope{"user:*"}}), 0)
	require.Len(t, list(budget.RequestQuery{From: time.Now().Add(time.Hour)}), 0)
	require.Len(t, list(budget.RequestQuery{To: time.Now().Add(-time.Hour)}), 0)
	require.Len(t, list(budget.RequestQuery{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour)}), 12)

	// Pages of 5 walk every record once.
	var paged []string
	q := budget.RequestQuery{Limit: 5}
	for {
		page := list(q)
		for _, r := range page {
			paged = append(paged, r.ID)
		}
		if len(page) < 5 {
			break
		}
		q.BeforeID = page[len(page)-1].ID
	}
	var each []string
	require.NoError(t, e.svc.EachRequest(ctx, budget.RequestQuery{Limit: 5}, func(r budget.RequestRecord) error {
		each = append(each, r.ID)
		return nil
	}))
	require.Equal(t, paged, each)
	require.Len(t, each, 12)

	for q, msg := range map[*budget.RequestQuery]string{
		{State: "done", Limit: 1}:     `state: must be pending, settled, voided or expired, got "done"`,
		{Subject: "nobody", Limit: 1}: "subject:",
		{BeforeID: "x", Limit: 1}:     "before: is not a reservation id",
		{Limit: 10_001}:               "limit: must be 1-10000",
		{From: time.Now(), To: time.Now().Add(-time.Second), Limit: 1}: "to: must be after from",
	} {
		_, err := e.svc.Requests(ctx, *q)
		var fe *budget.FieldError
		require.ErrorAs(t, err, &fe)
		require.ErrorContains(t, err, msg)
	}

	// History: the settled spend of the budget's window, in its unit and with its model filter.
	h, err := e.svc.BudgetHistory(ctx, day.ID)
	require.NoError(t, err)
	require.Equal(t, time.Hour, h.Bucket)
	var sum int64
	for _, p := range h.Points {
		sum += p.Amount
		require.False(t, p.At.Before(h.Status.Window.Start))
	}
	require.Equal(t, int64(50+51+52+53+54+55), sum)
	require.Equal(t, h.Status.Posted, sum, "all settled spend of the window")
	h, err = e.svc.BudgetHistory(ctx, mini.ID)
	require.NoError(t, err)
	sum = 0
	for _, p := range h.Points {
		sum += p.Amount
	}
	require.Equal(t, int64(51+53+55), sum, "only gpt-4o-mini*")
	h, err = e.svc.BudgetHistory(ctx, rpd.ID)
	require.NoError(t, err)
	sum = 0
	for _, p := range h.Points {
		sum += p.Amount
	}
	require.Equal(t, int64(6), sum, "six settled requests")

	// Top budgets by utilisation, optionally within a scope.
	top, err := e.svc.TopBudgets(ctx, nil, 10)
	require.NoError(t, err)
	require.Equal(t, "web", top[0].Budget.Name, "2 of 10 is the most used")
	require.Equal(t, "rpd", top[1].Budget.Name, "then 11 of 100 requests")
	top, err = e.svc.TopBudgets(ctx, budget.Scope{"team:ml"}, 10)
	require.NoError(t, err)
	require.Equal(t, "rpd", top[0].Budget.Name)
	for _, st := range top {
		require.Equal(t, budget.Subject("team:ml"), st.Budget.Subject)
	}
}
