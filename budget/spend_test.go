package budget_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

// spendFixture reserves through the ledger and resolves the reservations in every way a
// report must distinguish, on two UTC days:
//
//	r1 key A gpt-4o       hold 1000/100  settled 700/70            day 1
//	r2 key A gpt-4o-mini  hold  500/100  settled 800/90 (overrun)  day 1
//	r3 key B gpt-4o       hold 2000/200  expired: charged 2000/200 day 2
//	r4 key B claude       hold  100/10   voided: not spend
//	r5 key B claude       hold  100/10   pending: not spend
//	r6 (no key) unreserved spend 50/5 on team:ml                   day 2
type spendFixture struct {
	a, b       budget.Key
	day1, day2 time.Time
}

func newSpendFixture(t *testing.T, e *env) spendFixture {
	t.Helper()
	ctx := context.Background()
	ka, _, err := e.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "a", Subjects: []string{"user:alice", "team:ml"}})
	require.NoError(t, err)
	kb, _, err := e.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "b", Subjects: []string{"user:bob", "team:ml"}})
	require.NoError(t, err)
	reserve := func(k budget.Key, model string, cost, tokens int64) string {
		d := e.reserveOne(t, budget.ReserveRequest{KeyID: k.ID, Subjects: k.AllSubjects(), Cost: cost, Tokens: tokens,
			Target: budget.Target{Model: model, Path: "/v1/chat/completions"}})
		require.Equal(t, budget.Admitted, d.Outcome)
		return d.ReservationID
	}
	r1 := reserve(ka, "gpt-4o", 1000, 100)
	r2 := reserve(ka, "gpt-4o-mini", 500, 100)
	r3 := reserve(kb, "gpt-4o", 2000, 200)
	r4 := reserve(kb, "claude-sonnet-4", 100, 10)
	reserve(kb, "claude-sonnet-4", 100, 10)

	res, err := e.svc.Settle(ctx, []budget.Settlement{
		{ReservationID: r1, Cost: 700, Tokens: 70, Cause: "usage"},
		{ReservationID: r2, Cost: 800, Tokens: 90, Cause: "usage"},
	})
	require.NoError(t, err)
	require.Len(t, res, 2)
	_, err = e.svc.Void(ctx, []string{r4}, "no_upstream")
	require.NoError(t, err)
	_, err = e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, r3)
	require.NoError(t, err)
	n, err := e.svc.Expire(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	// Unreserved spend (fail-open traffic) is recorded as a settled reservation marked unreserved.
	n, err = e.svc.RecordUnreserved(ctx, []budget.Unreserved{{IdempotencyKey: []byte("fail-open-1"), Subjects: []budget.Subject{"team:ml"},
		Target: budget.Target{Model: "gpt-4o"}, At: e.clock.Now(), Cost: 50, Tokens: 5}})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	var r6 string
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT id::text FROM reservations WHERE unreserved`).Scan(&r6))

	// Pin the resolution days.
	f := spendFixture{a: ka, b: kb, day1: time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC), day2: time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)}
	for id, at := range map[string]time.Time{
		r1: f.day1.Add(time.Hour), r2: f.day1.Add(23*time.Hour + 59*time.Minute), r3: f.day2,
		r6: f.day2.Add(12 * time.Hour),
	} {
		_, err := e.schema.Pool.Exec(ctx, `UPDATE reservations SET resolved_at = $2 WHERE id = $1`, id, at)
		require.NoError(t, err)
	}
	_, err = e.schema.Pool.Exec(ctx, `UPDATE reservations SET resolved_at = $1 WHERE id = $2`, f.day1.Add(2*time.Hour), r4)
	require.NoError(t, err)
	return f
}

func TestService_Spend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	f := newSpendFixture(t, e)
	q := budget.SpendQuery{From: f.day1, To: f.day2.AddDate(0, 0, 1)}
	ka, kb := "key:"+f.a.ID, "key:"+f.b.ID

	for name, tc := range map[string]struct {
		groupBy string
		want    []budget.SpendRow
	}{
		"Total": {budget.GroupByNone, []budget.SpendRow{{Group: "", Cost: 700 + 800 + 2000 + 50, Tokens: 70 + 90 + 200 + 5, Requests: 4,
			Expired: 1, Overruns: 1, OverrunCost: 300, Unreserved: 1, UnreservedCost: 50, UnreservedTokens: 5}}},
		// Largest cost first, ties by group; a reservation counts under each of its subjects.
		"BySubject": {budget.GroupBySubject, []budget.SpendRow{
			{Group: "team:ml", Cost: 3550, Tokens: 365, Requests: 4, Expired: 1, Overruns: 1, OverrunCost: 300, Unreserved: 1, UnreservedCost: 50, UnreservedTokens: 5},
			{Group: kb, Cost: 2000, Tokens: 200, Requests: 1, Expired: 1},
			{Group: "user:bob", Cost: 2000, Tokens: 200, Requests: 1, Expired: 1},
			{Group: ka, Cost: 1500, Tokens: 160, Requests: 2, Overruns: 1, OverrunCost: 300},
			{Group: "user:alice", Cost: 1500, Tokens: 160, Requests: 2, Overruns: 1, OverrunCost: 300},
		}},
		"ByModel": {budget.GroupByModel, []budget.SpendRow{
			{Group: "gpt-4o", Cost: 2750, Tokens: 275, Requests: 3, Expired: 1, Unreserved: 1, UnreservedCost: 50, UnreservedTokens: 5},
			{Group: "gpt-4o-mini", Cost: 800, Tokens: 90, Requests: 1, Overruns: 1, OverrunCost: 300},
		}},
		"ByKey": {budget.GroupByKey, []budget.SpendRow{
			{Group: f.b.ID, Cost: 2000, Tokens: 200, Requests: 1, Expired: 1},
			{Group: f.a.ID, Cost: 1500, Tokens: 160, Requests: 2, Overruns: 1, OverrunCost: 300},
			{Group: "", Cost: 50, Tokens: 5, Requests: 1, Unreserved: 1, UnreservedCost: 50, UnreservedTokens: 5},
		}},
		// Days in date order.
		"ByDay": {budget.GroupByDay, []budget.SpendRow{
			{Group: "2026-03-10", Cost: 1500, Tokens: 160, Requests: 2, Overruns: 1, OverrunCost: 300},
			{Group: "2026-03-11", Cost: 2050, Tokens: 205, Requests: 2, Expired: 1, Unreserved: 1, UnreservedCost: 50, UnreservedTokens: 5},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			q := q
			q.GroupBy = tc.groupBy
			rows, err := e.svc.Spend(ctx, q)
			require.NoError(t, err)
			require.Equal(t, tc.want, rows)
		})
	}
	t.Run("SubjectFilterAndHalfOpenRange", func(t *testing.T) {
		// [day1, day2): r3 resolved exactly at day2 is out.
		rows, err := e.svc.Spend(ctx, budget.SpendQuery{From: f.day1, To: f.day2, GroupBy: budget.GroupByModel, Subject: "user:alice"})
		require.NoError(t, err)
		require.Equal(t, []budget.SpendRow{
			{Group: "gpt-4o-mini", Cost: 800, Tokens: 90, Requests: 1, Overruns: 1, OverrunCost: 300},
			{Group: "gpt-4o", Cost: 700, Tokens: 70, Requests: 1},
		}, rows)
		rows, err = e.svc.Spend(ctx, budget.SpendQuery{From: f.day2, To: f.day2.Add(time.Hour), Subject: "user:alice"})
		require.NoError(t, err)
		require.Empty(t, rows)
	})
	t.Run("Limit", func(t *testing.T) {
		rows, err := e.svc.Spend(ctx, budget.SpendQuery{From: q.From, To: q.To, GroupBy: budget.GroupBySubject, Limit: 1})
		require.NoError(t, err)
		require.Len(t, rows, 1)
		require.Equal(t, "team:ml", rows[0].Group)
	})
	t.Run("Invalid", func(t *testing.T) {
		for name, tc := range map[string]struct {
			q     budget.SpendQuery
			field string
			msg   string
		}{
			"GroupBy":    {budget.SpendQuery{From: f.day1, To: f.day2, GroupBy: "team"}, "group_by", `group_by: must be subject, model, key or day, got "team"`},
			"NoFrom":     {budget.SpendQuery{To: f.day2}, "from", "from: is required"},
			"Backwards":  {budget.SpendQuery{From: f.day2, To: f.day1}, "to", "to: must be after from"},
			"TooLong":    {budget.SpendQuery{From: f.day1, To: f.day1.AddDate(2, 0, 0)}, "to", "to: the range is longer than 400 days"},
			"BadSubject": {budget.SpendQuery{From: f.day1, To: f.day2, Subject: "ml"}, "subject", `subject: subject "ml": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`},
		} {
			t.Run(name, func(t *testing.T) {
				_, err := e.svc.Spend(ctx, tc.q)
				var fe *budget.FieldError
				require.True(t, errors.As(err, &fe), "%v", err)
				require.Equal(t, tc.field, fe.Field)
				require.EqualError(t, err, tc.msg)
			})
		}
	})
}
