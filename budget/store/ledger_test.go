package store_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// Every call of a purser_* SQL function from this package uses named notation, each argument
// bound by the same name (`r_provider => @r_provider`, with pgx.StrictNamedArgs), and names
// exactly the parameters the function declares (pg_proc.proargnames). Positional arguments
// would let two adjacent text[] swap silently; with names, a swap in the SQL text or a name
// the function does not have fails here, and a value bound under the wrong key is next to
// that key (TestLedgerCalls_RoundTrip catches it).
func TestLedgerCalls_NamedArguments(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()

	declared := map[string][]string{} // function name -> input parameter names, sorted
	rows, err := s.Pool.Query(ctx, `
SELECT p.proname, coalesce(array_agg(a.name ORDER BY a.name) FILTER (WHERE a.name IS NOT NULL), '{}')
  FROM pg_proc p
  LEFT JOIN LATERAL unnest(coalesce(p.proargnames, '{}'),
       coalesce(p.proargmodes, array_fill('i'::"char", ARRAY[coalesce(cardinality(p.proargnames), 0)])))
       AS a(name, mode) ON a.mode IN ('i', 'b', 'v')
 WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'purser\_%'
 GROUP BY p.oid, p.proname`)
	require.NoError(t, err)
	for rows.Next() {
		var name string
		var args []string
		require.NoError(t, rows.Scan(&name, &args))
		_, dup := declared[name]
		require.False(t, dup, "one function per name expected (overloads would make named calls ambiguous): %s", name)
		declared[name] = args
	}
	require.NoError(t, rows.Err())
	require.Contains(t, declared, "purser_reserve", "the migrated schema declares purser_reserve")

	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	call := regexp.MustCompile(`\b(purser_[a-z_]+)\(`)
	arg := regexp.MustCompile(`^([a-z_]+) => (.+)$`)
	bound := regexp.MustCompile(`^@([a-z_]+)(::[a-z]+(\[\])?)?$`)
	calls := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range call.FindAllSubmatchIndex(src, -1) {
			fn := string(src[m[2]:m[3]])
			want, ok := declared[fn]
			if !ok {
				continue // not a function of the schema (a trigger name, a comment)
			}
			args := topLevelArgs(t, string(src[m[1]:]))
			var got []string
			for _, a := range args {
				a = strings.Join(strings.Fields(a), " ")
				if a == "" && len(want) == 0 {
					continue
				}
				p := arg.FindStringSubmatch(a)
				require.NotNil(t, p, "%s: argument %q of %s is `name => value`, in named notation", f, a, fn)
				if b := bound.FindStringSubmatch(p[2]); b != nil {
					require.Equal(t, p[1], b[1], "%s: %s's parameter %s is bound to the Go argument of the same name", f, fn, p[1])
				} else {
					require.False(t, strings.Contains(p[2], "@") || strings.Contains(p[2], "$"),
						"%s: %s's parameter %s is a SQL expression or one `@%s`, nothing else bound from Go", f, fn, p[1], p[1])
				}
				got = append(got, p[1])
			}
			slices.Sort(got)
			require.Equal(t, want, got, "%s: the call of %s names exactly the parameters the function declares", f, fn)
			calls++
		}
	}
	require.GreaterOrEqual(t, calls, 8, "the store calls reserve, settle, charge_provisional, expire, record_unreserved, grants_in_force and effective_limit (alerts, verify)")
}

// topLevelArgs splits the argument list that starts src (just after the opening parenthesis)
// at its top-level commas.
func topLevelArgs(t *testing.T, src string) []string {
	t.Helper()
	var args []string
	depth, start := 0, 0
	for i, c := range src {
		switch c {
		case '(':
			depth++
		case ')':
			if depth == 0 {
				return append(args, src[start:i])
			}
			depth--
		case ',':
			if depth == 0 {
				args = append(args, src[start:i])
				start = i + 1
			}
		}
	}
	t.Fatalf("unclosed argument list: %.80q", src)
	return nil
}

// Every value reaches the column it is meant for: each same-typed argument gets a distinct
// value, read back from the rows the functions wrote. A value bound under a neighbour's name
// (say flavors under "r_provider") shows up in the wrong column.
func TestLedgerCalls_RoundTrip(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	ctx := context.Background()

	var budgetID int64
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO budgets (name, subject, unit, limit_amount, window_kind)
		VALUES ('b', 'team:a', 'usd', 1000000, 'day') RETURNING id`).Scan(&budgetID))
	day := time.Now().UTC().Truncate(24 * time.Hour)
	win := store.WindowKey{BudgetID: budgetID, Start: day, End: day.Add(24 * time.Hour)}

	const id = "018f0000-0000-7000-8000-0000000000a1"
	res, err := st.Reserve(ctx, store.ReserveBatch{
		Requests: []store.ReserveRequestRow{{
			ID: id, IdempotencyKey: []byte("idem-a1"), TTL: time.Hour, KeyID: "key_a", Subjects: []string{"team:a", "key:key_a"},
			Provider: "prov", Flavor: "flav", Model: "mod", Route: "rte", RequestID: "req-1",
			HoldCost: 300, HoldTokens: 40, FirstLine: 0, LineCount: 1,
		}},
		Windows: []store.WindowKey{win},
		Lines:   []store.HoldLine{{Window: 0, Amount: 300, Hard: true, Unit: store.HoldMoney}},
	})
	require.NoError(t, err)
	require.Equal(t, []store.ReserveStatus{store.StatusAdmitted}, res.Status, "the request fits its budget")
	require.Equal(t, []int64{300}, res.LineUsed, "the line's window holds the request's 300 after it")
	require.Equal(t, int64(1000000), *res.LineLimit[0], "the line reports the budget's limit")

	type row struct {
		Key, Provider, Flavor, Model, Route, RequestID, Catalog, Cause string
		Subjects                                                       []string
		HoldCost, HoldTokens, Cost, Tokens                             int64
		TTL                                                            time.Duration
	}
	read := func(id string) row {
		var r row
		var ttlMS float64
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT key_id, provider, api_flavor, model, route, request_id,
			coalesce(catalog_version, ''), coalesce(cause, ''), subjects, hold_cost, hold_tokens,
			coalesce(actual_cost, -1), coalesce(actual_tokens, -1), extract(epoch FROM expires_at - created_at) * 1000
			FROM reservations WHERE id = $1`, id).Scan(&r.Key, &r.Provider, &r.Flavor, &r.Model, &r.Route, &r.RequestID,
			&r.Catalog, &r.Cause, &r.Subjects, &r.HoldCost, &r.HoldTokens, &r.Cost, &r.Tokens, &ttlMS))
		r.TTL = time.Duration(ttlMS) * time.Millisecond
		return r
	}
	require.Equal(t, row{Key: "key_a", Provider: "prov", Flavor: "flav", Model: "mod", Route: "rte", RequestID: "req-1",
		Subjects: []string{"team:a", "key:key_a"}, HoldCost: 300, HoldTokens: 40, Cost: -1, Tokens: -1, TTL: time.Hour},
		read(id), "purser_reserve stores every request field in its own column")

	out, err := st.Settle(ctx, []store.SettleRow{{ReservationID: id, Cost: 250, Tokens: 35,
		Usage: json.RawMessage(`{"in":1}`), CatalogVersion: "cat-v", Cause: "cause-c"}})
	require.NoError(t, err)
	require.Equal(t, []store.SettleOutcome{{ReservationID: id, Outcome: "settled"}}, out, "the reservation settles")
	got := read(id)
	require.Equal(t, [4]any{int64(250), int64(35), "cat-v", "cause-c"}, [4]any{got.Cost, got.Tokens, got.Catalog, got.Cause},
		"purser_settle stores cost, tokens, catalog version and cause in their own columns")

	const uid = "018f0000-0000-7000-8000-0000000000a2"
	at := day.Add(time.Hour)
	recorded, err := st.RecordUnreserved(ctx, store.UnreservedBatch{
		Rows: []store.UnreservedRow{{ID: uid, IdempotencyKey: []byte("idem-a2"), KeyID: "key_b", Subjects: []string{"team:a"},
			Provider: "prov2", Flavor: "flav2", Model: "mod2", Route: "rte2", RequestID: "req-2", Cost: 70, Tokens: 9,
			Usage: []byte(`{"in":2}`), CatalogVersion: "cat-w", At: at, FirstLine: 0, LineCount: 1}},
		Windows: []store.WindowKey{win},
		Lines:   []store.HoldLine{{Window: 0, Amount: 70, Unit: store.HoldMoney}},
	})
	require.NoError(t, err)
	require.Equal(t, []string{uid}, recorded, "the unreserved spend is recorded")
	got = read(uid)
	require.Equal(t, row{Key: "key_b", Provider: "prov2", Flavor: "flav2", Model: "mod2", Route: "rte2", RequestID: "req-2",
		Catalog: "cat-w", Cause: "unreserved", Subjects: []string{"team:a"}, Cost: 70, Tokens: 9},
		got, "purser_record_unreserved stores every field in its own column (created_at = expires_at = At)")
	var posted int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT posted FROM budget_windows WHERE budget_id = $1 AND window_start = $2`,
		budgetID, day).Scan(&posted))
	require.Equal(t, int64(250+70), posted, "the window has posted the settlement and the unreserved charge")
}

// The effective limit is one rule, purser_effective_limit over purser_grants_in_force: at an
// instant (admission, gauges, alerts, status) or over a window (verify), both ends included.
func TestEffectiveLimit(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()
	var id int64
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO budgets (name, subject, unit, limit_amount, window_kind)
		VALUES ('b', 'team:a', 'usd', 1000, 'day') RETURNING id`).Scan(&id))
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	next := day.Add(24 * time.Hour)
	_, err := s.Pool.Exec(ctx, `INSERT INTO budget_grants (budget_id, amount, starts_at, expires_at) VALUES
		($1, 1, $2::timestamptz - interval '1 hour', $2),  -- expires as the day starts: never in it
		($1, 10, $2::timestamptz - interval '1 hour', $2::timestamptz + interval '1 microsecond'),
		($1, 100, $2::timestamptz + interval '12 hours', $3::timestamptz + interval '1 hour'),
		($1, 1000, $3, $3::timestamptz + interval '1 hour')  -- starts as the day ends: never in it`, id, day, next)
	require.NoError(t, err)
	limit := func(from, until time.Time) int64 {
		var l int64
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT effective_limit FROM purser_effective_limit(
			p_budget_id => @id, p_limit => 1000, p_from => @from, p_until => @until)`,
			pgx.StrictNamedArgs{"id": id, "from": from, "until": until}).Scan(&l))
		return l
	}
	require.Equal(t, int64(1000+10), limit(day, day), "at the day's start: the grant of 10 only (1 has just expired)")
	require.Equal(t, int64(1000), limit(day.Add(time.Hour), day.Add(time.Hour)), "an hour in: no grant")
	require.Equal(t, int64(1000+100), limit(day.Add(12*time.Hour), day.Add(12*time.Hour)), "at noon: the grant of 100 starts")
	require.Equal(t, int64(1000+10+100), limit(day, next.Add(-time.Microsecond)),
		"over the day [start, end): every grant that overlapped it, not the one expiring at its start nor the one starting at its end")
	require.Equal(t, int64(1000+100+1000), limit(next, next), "at the next day's start")
}

// Whether a grant is in force is written once, in migrations/functions/purser_grants_in_force.sql.
func TestEffectiveLimit_DefinedOnce(t *testing.T) {
	t.Parallel()
	sources, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fns, err := filepath.Glob("../../migrations/functions/*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, fns, "the functions are in migrations/functions")
	inForce := regexp.MustCompile("(?s)budget_grants\\b[^;`]{0,400}?(starts_at\\s*<|expires_at\\s*>)")
	for _, f := range append(sources, fns...) {
		if strings.HasSuffix(f, "_test.go") || strings.HasSuffix(f, "purser_grants_in_force.sql") {
			continue
		}
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NotRegexp(t, inForce, string(src), "%s restates when a grant is in force: use purser_grants_in_force or purser_effective_limit", f)
	}
}
