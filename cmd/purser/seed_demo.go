package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/purser-dev/purser/budget"
)

// The demo (purser seed -demo, what make run loads): three teams with keys, money, token and
// request-count budgets, a manager token for team:ml, and this month's spend history, so the
// console has something to show. Every request goes through the ledger (Reserve, then Settle)
// and only its timestamps are moved back within the current month afterwards: every budget the
// history touches has a monthly (or longer) window, so the counters and holds reconcile as they
// would have. Budgets with shorter windows are created after the history, and the history is
// written only once (on a ledger without reservations).

type demoTeam struct {
	subject, key string
	owners       []string
	limit        int64   // monthly, micro-USD
	hard         bool    // a soft one may go over
	used         float64 // fraction of the limit spent by now
	models       []string
}

var demoTeams = []demoTeam{
	{"team:ml", "ml-bot", []string{"team:ml", "org:acme"}, 400_000_000, true, 0.55, []string{"gpt-4o", "gpt-4o-mini", "o3"}},
	{"team:web", "web-app", []string{"team:web", "org:acme"}, 150_000_000, true, 0.86, []string{"gpt-4o-mini", "claude-haiku-4-5"}},
	{"team:research", "research", []string{"team:research", "user:alice", "org:acme"}, 250_000_000, false, 1.04, []string{"claude-sonnet-4-5", "gpt-4o"}},
}

const demoManagerToken = "ml lead (demo)"

func seedDemo(ctx context.Context, w io.Writer, pool *pgxpool.Pool, svc *budget.Service, now time.Time, rotate bool) error {
	admin := budget.AdminActor("seed")
	long := []budget.Definition{
		{Name: "acme monthly", Subject: "org:acme", Limit: 1_000_000_000, Window: "month", Hard: true, WarnAt: []int{80}},
		{Name: "everything", Subject: "global", Limit: 2_000_000_000, Window: "month", Hard: true},
	}
	keys := map[string]budget.Key{}
	for _, t := range demoTeams {
		long = append(long, budget.Definition{Name: t.key + " team monthly", Subject: t.subject, Limit: t.limit, Window: "month",
			Hard: t.hard, WarnAt: []int{50, 80}})
		k, err := demoKey(ctx, svc, t.key, t.owners)
		if err != nil {
			return err
		}
		keys[t.key] = k
	}
	if err := ensureBudgets(ctx, svc, admin, long); err != nil {
		return err
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM reservations`).Scan(&n); err != nil {
		return fmt.Errorf("seed demo: %w", err)
	}
	history := 0
	if n == 0 {
		var err error
		if history, err = demoHistory(ctx, pool, svc, keys, now); err != nil {
			return err
		}
	}
	short := []budget.Definition{
		{Name: "ml-bot rpm", Subject: "key:" + keys["ml-bot"].ID, Unit: "requests", Limit: 120, Window: "minute", Hard: true},
		{Name: "web-app requests per day", Subject: "key:" + keys["web-app"].ID, Unit: "requests", Limit: 20_000, Window: "day", Hard: true},
		{Name: "alice tokens per day", Subject: "user:alice", Unit: "tokens", Limit: 2_000_000, Window: "day", Hard: true, WarnAt: []int{90}},
	}
	if err := ensureBudgets(ctx, svc, admin, short); err != nil {
		return err
	}

	// A manager token for team:ml: kept when an earlier run made it (its secret was shown
	// then), replaced with rotate.
	ts, err := svc.Tokens(ctx, budget.TokenQuery{})
	if err != nil {
		return err
	}
	kept, revoked := false, false
	for _, t := range ts {
		if t.Name != demoManagerToken || !t.RevokedAt.IsZero() {
			continue
		}
		if !rotate {
			kept = true
			continue
		}
		if _, err := svc.RevokeToken(ctx, admin, t.ID); err != nil {
			return err
		}
		revoked = true
	}
	mgrSecret := ""
	if !kept {
		if _, mgrSecret, err = svc.CreateToken(ctx, admin, budget.TokenSpec{Name: demoManagerToken, Role: "manager", Scope: []string{"team:ml"}}); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nDemo data: teams ml, web and research of org:acme, each with a key and a monthly budget,\n")
	fmt.Fprintf(w, "request-count budgets (ml-bot: 120 requests per minute), ")
	if history > 0 {
		fmt.Fprintf(w, "and %d requests of spend history this month.\n", history)
	} else {
		fmt.Fprintf(w, "(spend history was loaded by an earlier run).\n")
	}
	switch {
	case kept:
		fmt.Fprintf(w, "  manager token for team:ml: kept from an earlier run (`purser seed -demo -rotate` replaces it)\n")
	case revoked:
		fmt.Fprintf(w, "  manager token for team:ml REPLACED (-rotate; the previous one is revoked), shown once: %s\n", mgrSecret)
	default:
		fmt.Fprintf(w, "  manager token for team:ml (shown once): %s\n", mgrSecret)
	}
	return nil
}

// demoKey returns the live key of that name, creating it when missing.
func demoKey(ctx context.Context, svc *budget.Service, name string, owners []string) (budget.Key, error) {
	ks, err := svc.Keys(ctx, budget.KeyQuery{Name: name})
	if err != nil {
		return budget.Key{}, err
	}
	for _, k := range ks {
		if k.RevokedAt.IsZero() {
			return k, nil
		}
	}
	k, _, err := svc.CreateKey(ctx, "seed", budget.KeySpec{Name: name, Subjects: owners})
	return k, err
}

// ensureBudgets creates the budgets whose subject has none of that name yet.
func ensureBudgets(ctx context.Context, svc *budget.Service, by budget.Actor, defs []budget.Definition) error {
	for _, d := range defs {
		existing, err := svc.Budgets(ctx, budget.BudgetQuery{Subject: d.Subject})
		if err != nil {
			return err
		}
		found := false
		for _, b := range existing {
			found = found || b.Name == d.Name
		}
		if found {
			continue
		}
		if _, err := svc.CreateBudgetAs(ctx, by, d); err != nil && !errors.Is(err, budget.ErrConflict) {
			return err
		}
	}
	return nil
}

// demoHistory reserves and settles each team's spend so far this month, in small batches so
// the holds in flight never crowd a hard budget, then spreads the requests' timestamps over
// the month until now. It returns how many requests it wrote.
func demoHistory(ctx context.Context, pool *pgxpool.Pool, svc *budget.Service, keys map[string]budget.Key, now time.Time) (int, error) {
	rng := rand.New(rand.NewPCG(2026, 11))
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	elapsed := now.Sub(monthStart)
	days := int(elapsed/(24*time.Hour)) + 1
	var ids []string
	var times []time.Time
	for _, t := range demoTeams {
		k := keys[t.key]
		perDay := 30
		count := perDay * days
		target := int64(float64(t.limit) * t.used)
		avg := target / int64(count)
		var batch []budget.ReserveRequest
		var costs []int64
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			ds, err := svc.Reserve(ctx, batch)
			if err != nil {
				return err
			}
			var settle []budget.Settlement
			for i, d := range ds {
				if d.Outcome != budget.Admitted {
					continue
				}
				settle = append(settle, budget.Settlement{ReservationID: d.ReservationID, Cost: costs[i], Tokens: costs[i] / 4,
					Usage: fmt.Appendf(nil, `{"input_tokens":%d,"output_tokens":%d,"model":%q}`, costs[i]/5, costs[i]/20, batch[i].Target.Model),
					Cause: "usage"})
				ids = append(ids, d.ReservationID)
				// Later in the month, more traffic: a rising burn rate.
				at := monthStart.Add(time.Duration(float64(elapsed) * (1 - rng.Float64()*rng.Float64())))
				times = append(times, at)
			}
			batch, costs = batch[:0], costs[:0]
			_, err = svc.Settle(ctx, settle)
			return err
		}
		for range count {
			cost := avg/2 + rng.Int64N(avg+1)
			// As extauthz identifies them: the key, its owners and global.
			batch = append(batch, budget.ReserveRequest{Subjects: append(k.AllSubjects(), budget.Global), KeyID: k.ID, Provider: "openai", Flavor: "chat",
				Target: budget.Target{Model: t.models[rng.IntN(len(t.models))], Path: "/v1/chat/completions"},
				Cost:   cost + cost/5, Tokens: cost/4 + 100})
			costs = append(costs, cost)
			if len(batch) == 20 {
				if err := flush(); err != nil {
					return 0, err
				}
			}
		}
		if err := flush(); err != nil {
			return 0, err
		}
	}
	// Each request gets the UUIDv7 of its new time too (as if reserved then), so lists that
	// go newest first by id stay in time order; holds follow their reservation.
	_, err := pool.Exec(ctx, `
WITH m AS (
    SELECT u.id AS old, u.at,
           (lpad(to_hex(floor(extract(epoch FROM u.at) * 1000)::bigint), 12, '0') || '7' ||
            substr(md5(u.id::text), 1, 3) || '8' || substr(md5(u.id::text), 4, 15))::uuid AS new
      FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)),
h AS (
    UPDATE reservation_holds h SET reservation_id = m.new FROM m WHERE h.reservation_id = m.old)
UPDATE reservations r
   SET id = m.new, created_at = m.at, resolved_at = m.at + interval '2 seconds', expires_at = m.at + interval '15 minutes'
  FROM m WHERE r.id = m.old`, ids, times)
	if err != nil {
		return 0, fmt.Errorf("seed demo history: %w", err)
	}
	return len(ids), nil
}
