package budget_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// clock is a settable test clock.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock { c := &clock{}; c.Set(t); return c }
func (c *clock) Now() time.Time   { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Set(t time.Time)  { c.ns.Store(t.UnixNano()) }

type env struct {
	svc    *budget.Service
	schema *pgtest.Schema
	clock  *clock
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := pgtest.New(t)
	c := newClock(time.Now())
	st := store.New(s.Pool)
	return &env{svc: budget.New(st, st, budget.Config{Now: c.Now}), schema: s, clock: c}
}

func (e *env) budget(t *testing.T, d budget.Definition) budget.Budget {
	t.Helper()
	b, err := e.svc.CreateBudget(context.Background(), "test", d)
	require.NoError(t, err)
	return b
}

func (e *env) reserveOne(t *testing.T, r budget.ReserveRequest) budget.Decision {
	t.Helper()
	ds, err := e.svc.Reserve(context.Background(), []budget.ReserveRequest{r})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	return ds[0]
}

func (e *env) requireClean(t *testing.T) {
	t.Helper()
	rep, err := e.svc.Verify(context.Background())
	require.NoError(t, err)
	require.Empty(t, rep.Mismatches, "ledger does not reconcile")
	require.True(t, rep.Clean(), "over limit: %+v", rep.OverLimit)
}

// window reads a budget's counters for the window starting at start.
func (e *env) window(t *testing.T, budgetID int64, start time.Time) (posted, pending int64) {
	t.Helper()
	err := e.schema.Pool.QueryRow(context.Background(),
		`SELECT posted, pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2`, budgetID, start).Scan(&posted, &pending)
	require.NoError(t, err)
	return posted, pending
}

func req(subjects ...budget.Subject) budget.ReserveRequest {
	return budget.ReserveRequest{Subjects: subjects, Cost: 10, Tokens: 100, Target: budget.Target{Model: "gpt-4o", Path: "/v1/chat/completions"}}
}

func TestService_ReserveAllowThenDeny(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 25, Window: "month", Hard: true})

	d1 := e.reserveOne(t, req("team:ml"))
	require.Equal(t, budget.Admitted, d1.Outcome)
	require.NotEmpty(t, d1.ReservationID)
	require.Len(t, d1.Budgets, 1)
	require.Equal(t, int64(10), d1.Budgets[0].Used)
	require.Equal(t, int64(15), d1.Tightest().Remaining())

	require.Equal(t, budget.Admitted, e.reserveOne(t, req("team:ml")).Outcome)
	d3 := e.reserveOne(t, req("team:ml"))
	require.Equal(t, budget.Denied, d3.Outcome)
	require.Empty(t, d3.ReservationID)
	require.NotNil(t, d3.DeniedBy)
	require.Equal(t, b.ID, d3.DeniedBy.Budget.ID)
	require.Equal(t, int64(20), d3.DeniedBy.Used)

	// A smaller request still fits (serial semantics: a denial does not block what fits).
	small := req("team:ml")
	small.Cost = 5
	require.Equal(t, budget.Admitted, e.reserveOne(t, small).Outcome)
	_, pending := e.window(t, b.ID, d1.Budgets[0].Window.Start)
	require.Equal(t, int64(25), pending)
	e.requireClean(t)
}

func TestService_ReserveAllOrNothingAcrossBudgets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	key, _, err := e.svc.CreateKey(ctx, "test", budget.KeySpec{Name: "k", Subjects: []string{"user:alice", "team:ml"}})
	require.NoError(t, err)
	kb := e.budget(t, budget.Definition{Name: "key", Subject: string(budget.KeySubject(key.ID)), Limit: 1000, Window: "day", Hard: true})
	ub := e.budget(t, budget.Definition{Name: "user", Subject: "user:alice", Limit: 1000, Window: "week", Hard: true})
	tb := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 15, Window: "month", Hard: true})
	tok := e.budget(t, budget.Definition{Name: "tokens", Subject: "team:ml", Unit: "tokens", Limit: 1_000_000, Window: "month", Hard: true})

	r := req(key.AllSubjects()...)
	d := e.reserveOne(t, r)
	require.Equal(t, budget.Admitted, d.Outcome)
	require.Len(t, d.Budgets, 4)
	amounts := map[int64]int64{}
	for _, b := range d.Budgets {
		amounts[b.Budget.ID] = b.Amount
	}
	require.Equal(t, map[int64]int64{kb.ID: 10, ub.ID: 10, tb.ID: 10, tok.ID: 100}, amounts, "token budgets hold tokens, money budgets micros")

	// The team budget has no room for a second: nothing may be held on the others either.
	d2 := e.reserveOne(t, r)
	require.Equal(t, budget.Denied, d2.Outcome)
	require.Equal(t, tb.ID, d2.DeniedBy.Budget.ID)
	for _, b := range []budget.Budget{kb, ub} {
		w := b.Window.At(e.clock.Now(), time.Time{})
		_, pending := e.window(t, b.ID, w.Start)
		require.Equal(t, int64(10), pending, "budget %s must hold only the admitted request", b.Name)
	}
	e.requireClean(t)
}

func TestService_SoftBudgetAndWarnings(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.budget(t, budget.Definition{Name: "soft", Subject: "user:bob", Limit: 15, Window: "day", Hard: false})
	e.budget(t, budget.Definition{Name: "hard", Subject: "team:x", Limit: 100, Window: "day", Hard: true, WarnAt: []int{10, 50}})

	d1 := e.reserveOne(t, req("user:bob", "team:x"))
	require.Equal(t, budget.Admitted, d1.Outcome)
	w := d1.Warnings()
	require.Len(t, w, 1)
	require.Equal(t, 10, w[0].Threshold)

	d2 := e.reserveOne(t, req("user:bob", "team:x"))
	require.Equal(t, budget.Admitted, d2.Outcome, "a soft budget never denies")
	var exceeded bool
	for _, w := range d2.Warnings() {
		if w.Exceeded && w.Budget.Name == "soft" {
			exceeded = true
		}
	}
	require.True(t, exceeded)
	require.Equal(t, "hard", d2.Tightest().Budget.Name, "only hard budgets are 'tightest'")
}

func TestService_Filters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.budget(t, budget.Definition{Name: "premium", Subject: "team:ml", Limit: 5, Window: "month", Hard: true, Models: []string{"gpt-4o*"}})
	cheap := req("team:ml")
	cheap.Target.Model = "gpt-4.1-nano"
	require.Empty(t, e.reserveOne(t, cheap).Budgets, "filter excludes other models")
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome, "gpt-4o is capped at 5")
}

func TestService_Idempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	r := req("team:ml")
	r.IdempotencyKey = []byte("key-1|req-1|stream-1")

	d1 := e.reserveOne(t, r)
	d2 := e.reserveOne(t, r)
	require.Equal(t, budget.Admitted, d1.Outcome)
	require.Equal(t, budget.Duplicate, d2.Outcome)
	require.Equal(t, d1.ReservationID, d2.ReservationID)

	// Twice in the same batch: one hold, the same answer.
	r2 := req("team:ml")
	r2.IdempotencyKey = []byte("key-1|req-2|stream-2")
	ds, err := e.svc.Reserve(ctx, []budget.ReserveRequest{r2, r2})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, ds[0].Outcome)
	require.Equal(t, budget.Duplicate, ds[1].Outcome)
	require.Equal(t, ds[0].ReservationID, ds[1].ReservationID)
	_, pending := e.window(t, b.ID, d1.Budgets[0].Window.Start)
	require.Equal(t, int64(20), pending)

	// Settle twice, void after settle: only the first counts.
	st := budget.Settlement{ReservationID: d1.ReservationID, Cost: 7, Tokens: 50, Cause: "usage"}
	res, err := e.svc.Settle(ctx, []budget.Settlement{st, st})
	require.NoError(t, err)
	require.Len(t, res, 1, "the same id twice in one batch is applied once")
	require.Equal(t, budget.OutcomeSettled, res[0].Outcome)
	res, err = e.svc.Settle(ctx, []budget.Settlement{st})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeDuplicate, res[0].Outcome)
	res, err = e.svc.Void(ctx, []string{d1.ReservationID}, "no_upstream")
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeDuplicate, res[0].Outcome)

	posted, pending := e.window(t, b.ID, d1.Budgets[0].Window.Start)
	require.Equal(t, int64(7), posted)
	require.Equal(t, int64(10), pending)

	// Void, then void again.
	res, err = e.svc.Void(ctx, []string{ds[0].ReservationID, ds[0].ReservationID}, "no_upstream")
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeVoided, res[0].Outcome)
	res, err = e.svc.Void(ctx, []string{ds[0].ReservationID}, "no_upstream")
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeDuplicate, res[0].Outcome)
	posted, pending = e.window(t, b.ID, d1.Budgets[0].Window.Start)
	require.Equal(t, int64(7), posted)
	require.Equal(t, int64(0), pending)

	// Unknown ids are reported, and change nothing.
	res, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: "018f0000-0000-7000-8000-000000000000", Cost: 1}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeUnknown, res[0].Outcome)

	// An id that is no UUID names no reservation either: reported unknown (once), and the
	// rest of its batch still settles.
	d3 := e.reserveOne(t, req("team:ml"))
	res, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: "not-a-uuid", Cost: 1}, {ReservationID: d3.ReservationID, Cost: 4, Tokens: 5, Cause: "usage"}, {ReservationID: "not-a-uuid", Void: true}})
	require.NoError(t, err)
	outcomes := map[string]string{}
	for _, r := range res {
		outcomes[r.ReservationID] = r.Outcome
	}
	require.Equal(t, map[string]string{"not-a-uuid": budget.OutcomeUnknown, d3.ReservationID: budget.OutcomeSettled}, outcomes)
	require.Len(t, res, 2)
	posted, pending = e.window(t, b.ID, d1.Budgets[0].Window.Start)
	require.Equal(t, int64(7+4), posted)
	require.Equal(t, int64(0), pending)
	e.requireClean(t)
}

func TestService_ExpireUsesDatabaseClock(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "lifetime", Hard: true})
	d := e.reserveOne(t, req("team:ml"))
	require.Equal(t, budget.Admitted, d.Outcome)

	// The replica's clock racing ahead changes nothing: expiry follows the database clock.
	e.clock.Set(time.Now().Add(24 * time.Hour))
	n, err := e.svc.Expire(ctx, 100)
	require.NoError(t, err)
	require.Zero(t, n)

	// Move the deadline into the database's past.
	_, err = e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, d.ReservationID)
	require.NoError(t, err)
	n, err = e.svc.Expire(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = e.svc.Expire(ctx, 100)
	require.NoError(t, err)
	require.Zero(t, n, "expiry is idempotent")

	start := d.Budgets[0].Window.Start
	posted, pending := e.window(t, b.ID, start)
	require.Equal(t, int64(10), posted, "expiry charges the whole hold")
	require.Zero(t, pending)

	// A late access-log entry settles the expired reservation and refunds the difference.
	res, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Cost: 3, Tokens: 30, Cause: "usage"}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeLateSettled, res[0].Outcome)
	posted, _ = e.window(t, b.ID, start)
	require.Equal(t, int64(3), posted)
	res, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Cost: 3, Tokens: 30}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeDuplicate, res[0].Outcome)

	// A late void of an expired reservation refunds the whole charge.
	d2 := e.reserveOne(t, req("team:ml"))
	_, err = e.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, d2.ReservationID)
	require.NoError(t, err)
	n, err = e.svc.Expire(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	res, err = e.svc.Void(ctx, []string{d2.ReservationID}, "no_upstream")
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeLateVoided, res[0].Outcome)
	posted, pending = e.window(t, b.ID, start)
	require.Equal(t, int64(3), posted)
	require.Zero(t, pending)
	e.requireClean(t)
}

func TestService_Overrun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 12, Window: "day", Hard: true})
	d := e.reserveOne(t, req("team:ml"))
	res, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Cost: 14, Tokens: 120, Cause: "usage"}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeSettled, res[0].Outcome)
	r, err := e.svc.Reservation(ctx, d.ReservationID)
	require.NoError(t, err)
	require.True(t, res[0].Overrun)
	require.Equal(t, int64(4), r.OverrunCost)
	require.Equal(t, int64(20), r.OverrunTokens)
	posted, _ := e.window(t, b.ID, d.Budgets[0].Window.Start)
	require.Equal(t, int64(14), posted, "the real cost is charged in full")
	rep, err := e.svc.Verify(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Mismatches)
	require.Len(t, rep.OverLimit, 1)
	require.False(t, budget.Unexplained(rep.OverLimit[0]), "the overrun explains the excess")
	require.True(t, rep.Clean())
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)
}

func TestService_SettledInNextWindowChargesAdmissionWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	ny, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	b := e.budget(t, budget.Definition{Name: "daily", Subject: "team:ml", Limit: 15, Window: "day", TimeZone: "America/New_York", Hard: true})

	e.clock.Set(time.Date(2026, 3, 7, 23, 59, 0, 0, ny))
	d := e.reserveOne(t, req("team:ml"))
	require.Equal(t, budget.Admitted, d.Outcome)
	day1 := d.Budgets[0].Window.Start
	require.True(t, day1.Equal(time.Date(2026, 3, 7, 0, 0, 0, 0, ny)))

	// Next day (the 23-hour DST day): a fresh window, settlement still lands in day one.
	e.clock.Set(time.Date(2026, 3, 8, 0, 1, 0, 0, ny))
	d2 := e.reserveOne(t, req("team:ml"))
	require.Equal(t, budget.Admitted, d2.Outcome, "new window starts at zero")
	day2 := d2.Budgets[0].Window.Start
	require.Equal(t, 23*time.Hour, d2.Budgets[0].Window.End.Sub(day2))

	_, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Cost: 4, Tokens: 1}})
	require.NoError(t, err)
	posted, pending := e.window(t, b.ID, day1)
	require.Equal(t, int64(4), posted)
	require.Zero(t, pending)
	posted, pending = e.window(t, b.ID, day2)
	require.Zero(t, posted)
	require.Equal(t, int64(10), pending)
	e.requireClean(t)
}

func TestService_RollingWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.budget(t, budget.Definition{Name: "rolling", Subject: "team:ml", Limit: 20, Window: "24h", Hard: true})
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	e.clock.Set(t0)
	d := e.reserveOne(t, req("team:ml"))
	_, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Cost: 10}})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, e.reserveOne(t, req("team:ml")).Outcome)

	// 23 hours later both are still inside the window.
	e.clock.Set(t0.Add(23 * time.Hour))
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)
	// 24 hours and one bucket later the first has rolled out; the second (pending, at t0 as
	// well) too.
	e.clock.Set(t0.Add(25*time.Hour + time.Second))
	d3 := e.reserveOne(t, req("team:ml"))
	require.Equal(t, budget.Admitted, d3.Outcome)
	require.Equal(t, int64(10), d3.Budgets[0].Used)
	e.requireClean(t)
}

func TestService_GrantsAndReset(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 10, Window: "month", Hard: true})
	require.Equal(t, budget.Admitted, e.reserveOne(t, req("team:ml")).Outcome)
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)

	_, err := e.svc.AddGrant(ctx, "alice", b.ID, 10, time.Now().Add(time.Hour), "launch week")
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, e.reserveOne(t, req("team:ml")).Outcome, "the grant adds room")
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)

	// An expired grant no longer counts.
	_, err = e.schema.Pool.Exec(ctx, `UPDATE budget_grants SET starts_at = now() - interval '2 hours', expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
	st, err := e.svc.Status(ctx, "team:ml")
	require.NoError(t, err)
	require.Equal(t, int64(10), st[0].Limit)
	require.Equal(t, int64(20), st[0].Pending)

	// A manual reset starts a fresh window; the pending holds stay where they were admitted.
	e.clock.Set(time.Now().Add(time.Second)) // after the database's reset instant
	_, err = e.svc.ResetBudget(ctx, "alice", b.ID, "new contract")
	require.NoError(t, err)
	e.clock.Set(time.Now().Add(2 * time.Second))
	require.Equal(t, budget.Admitted, e.reserveOne(t, req("team:ml")).Outcome)
	st, err = e.svc.Status(ctx, "team:ml")
	require.NoError(t, err)
	require.Equal(t, int64(10), st[0].Pending, "status shows the window since the reset")

	log, err := e.svc.AuditLog(ctx, "budget:"+itoa(b.ID), 0, 10)
	require.NoError(t, err)
	var actions []string
	for _, a := range log {
		actions = append(actions, a.Action+"/"+a.Actor)
	}
	require.Equal(t, []string{"budget.reset/alice", "budget.grant/alice", "budget.create/test"}, actions)
	e.requireClean(t)
}

func TestService_DefaultBudgetRace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	_, err := e.svc.CreateTemplate(ctx, "test", budget.Definition{Name: "new users", Kind: "user", Limit: 50, Window: "month", Hard: true})
	require.NoError(t, err)

	// 48 concurrent first requests from a never-seen user, each on its own Service (as if on
	// separate replicas with cold caches): one default budget, and it caps them all.
	const n = 48
	var wg sync.WaitGroup
	var admitted atomic.Int64
	errs := make(chan error, n)
	st := store.New(e.schema.Pool)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			svc := budget.New(st, st, budget.Config{})
			ds, err := svc.Reserve(ctx, []budget.ReserveRequest{req("user:newcomer")})
			if err != nil {
				errs <- err
				return
			}
			if ds[0].Outcome == budget.Admitted {
				if len(ds[0].Budgets) != 1 {
					t.Errorf("admitted without the default budget: %+v", ds[0])
				}
				admitted.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	bs, err := e.svc.Budgets(ctx, budget.BudgetQuery{Subject: "user:newcomer"})
	require.NoError(t, err)
	require.Len(t, bs, 1)
	require.Equal(t, int64(5), admitted.Load(), "50 / 10 = 5 requests fit")
	e.requireClean(t)
}

func TestService_Keys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	k, secret, err := e.svc.CreateKey(ctx, "admin", budget.KeySpec{Name: "ci", Subjects: []string{"team:ml"}, AllowedModels: []string{"gpt-4o*"}})
	require.NoError(t, err)
	require.True(t, len(secret) > 40)
	require.Equal(t, secret[:len(k.Prefix)], k.Prefix)

	var stored []byte
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT secret_hash FROM api_keys WHERE id = $1`, k.ID).Scan(&stored))
	h := budget.HashSecret(secret)
	require.Equal(t, h[:], stored, "only the SHA-256 is stored")
	var n int
	require.NoError(t, e.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE details::text LIKE '%' || $1 || '%'`, secret).Scan(&n))
	require.Zero(t, n, "the secret never reaches the audit log")

	got, err := e.svc.Authenticate(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, k.ID, got.ID)
	require.True(t, got.AllowsModel("gpt-4o-mini"))
	require.False(t, got.AllowsModel("o3"))
	_, err = e.svc.Authenticate(ctx, secret+"x")
	require.ErrorIs(t, err, budget.ErrKeyUnknown)

	_, err = e.svc.RevokeKey(ctx, "admin", k.ID)
	require.NoError(t, err)
	_, err = e.svc.Authenticate(ctx, secret)
	require.ErrorIs(t, err, budget.ErrKeyRevoked)

	k2, s2, err := e.svc.CreateKey(ctx, "admin", budget.KeySpec{Name: "short", ExpiresAt: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	_, newSecret, err := e.svc.RotateKey(ctx, "admin", k2.ID)
	require.NoError(t, err)
	_, err = e.svc.Authenticate(ctx, s2)
	require.ErrorIs(t, err, budget.ErrKeyUnknown, "the old secret stops working")
	got, err = e.svc.Authenticate(ctx, newSecret)
	require.NoError(t, err)
	require.Equal(t, k2.ID, got.ID, "rotation keeps the key id")
	e.clock.Set(time.Now().Add(2 * time.Hour))
	_, err = e.svc.Authenticate(ctx, newSecret)
	require.ErrorIs(t, err, budget.ErrKeyExpired)
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

func TestService_SettleChargeHold(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	d := e.reserveOne(t, req("team:ml"))
	res, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, ChargeHold: true, Cost: 1, Cause: "cut_off"}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeSettled, res[0].Outcome)
	r, err := e.svc.Reservation(ctx, d.ReservationID)
	require.NoError(t, err)
	require.Equal(t, int64(10), *r.ActualCost, "the hold is charged, whatever Cost says")
	require.Equal(t, int64(100), *r.ActualTokens)
	require.Equal(t, "cut_off", *r.Cause)
	posted, pending := e.window(t, b.ID, d.Budgets[0].Window.Start)
	require.Equal(t, int64(10), posted)
	require.Zero(t, pending)
	e.requireClean(t)
}

func TestService_RecordUnreserved(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 100, Window: "day", Hard: true})
	tok := e.budget(t, budget.Definition{Name: "tokens", Subject: "team:ml", Unit: "tokens", Limit: 100, Window: "day", Hard: true})
	at := e.clock.Now()
	u := budget.Unreserved{IdempotencyKey: []byte("node|req-1|123"), Subjects: []budget.Subject{"team:ml", "global"},
		Target: budget.Target{Model: "gpt-4o"}, At: at, Cost: 150, Tokens: 30, Usage: []byte(`{"input_tokens":10}`)}
	n, err := e.svc.RecordUnreserved(ctx, []budget.Unreserved{u, u})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = e.svc.RecordUnreserved(ctx, []budget.Unreserved{u})
	require.NoError(t, err)
	require.Zero(t, n, "a replayed entry changes nothing")

	start := b.Window.At(at, time.Time{}).Start
	posted, pending := e.window(t, b.ID, start)
	require.Equal(t, int64(150), posted, "charged even above the limit: the money is spent")
	require.Zero(t, pending)
	posted, _ = e.window(t, tok.ID, start)
	require.Equal(t, int64(30), posted)

	rep, err := e.svc.Verify(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Mismatches)
	require.Len(t, rep.OverLimit, 1)
	require.False(t, budget.Unexplained(rep.OverLimit[0]), "unreserved spend explains the excess")
	require.Equal(t, budget.Denied, e.reserveOne(t, req("team:ml")).Outcome)
}

// An admin change on one replica reaches another replica's caches through LISTEN/NOTIFY.
func TestService_InvalidationAcrossReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	st := store.New(e.schema.Pool)
	other := budget.New(st, st, budget.Config{KeyCacheTTL: time.Hour, BudgetCacheTTL: time.Hour})
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() { other.Listen(lctx, ready); close(done) }()
	defer func() { cancel(); <-done }()
	<-ready

	k, secret, err := e.svc.CreateKey(ctx, "admin", budget.KeySpec{Name: "k", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	_, err = other.Authenticate(ctx, secret) // now cached for an hour on the other replica
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, mustReserve(t, other, req("team:ml")).Outcome, "no budget yet: admitted")

	_, err = e.svc.RevokeKey(ctx, "admin", k.ID)
	require.NoError(t, err)
	e.budget(t, budget.Definition{Name: "zero", Subject: "team:ml", Limit: 0, Window: "day", Hard: true})
	require.Eventually(t, func() bool {
		_, err := other.Authenticate(ctx, secret)
		return errors.Is(err, budget.ErrKeyRevoked)
	}, 2*time.Second, 5*time.Millisecond, "revocation reaches the other replica within a second or so")
	require.Eventually(t, func() bool {
		ds, err := other.Reserve(ctx, []budget.ReserveRequest{req("team:ml")})
		return err == nil && ds[0].Outcome == budget.Denied
	}, 2*time.Second, 5*time.Millisecond, "a new budget reaches the other replica")
}

func mustReserve(t *testing.T, svc *budget.Service, r budget.ReserveRequest) budget.Decision {
	t.Helper()
	ds, err := svc.Reserve(context.Background(), []budget.ReserveRequest{r})
	require.NoError(t, err)
	return ds[0]
}

func TestService_TemplateRenameAndExpiredKeyRename(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	tpl, err := e.svc.CreateTemplate(ctx, "admin", budget.Definition{Name: "users", Kind: "user", Limit: 5, Window: "month", Hard: true})
	require.NoError(t, err)
	renamed, err := e.svc.UpdateTemplate(ctx, "admin", tpl.ID, budget.Definition{Name: "new users", Kind: "user", Limit: 5, Window: "month", Hard: true})
	require.NoError(t, err)
	require.Equal(t, "new users", renamed.Name)

	exp := time.Now().Add(time.Hour)
	k, _, err := e.svc.CreateKey(ctx, "admin", budget.KeySpec{Name: "old", ExpiresAt: exp})
	require.NoError(t, err)
	e.clock.Set(time.Now().Add(2 * time.Hour)) // the key has expired
	k2, err := e.svc.UpdateKey(ctx, "admin", k.ID, budget.KeySpec{Name: "renamed", ExpiresAt: k.ExpiresAt})
	require.NoError(t, err, "an unchanged past expiry does not block a rename")
	require.Equal(t, "renamed", k2.Name)
	_, err = e.svc.UpdateKey(ctx, "admin", k.ID, budget.KeySpec{Name: "renamed", ExpiresAt: time.Now().Add(time.Minute)})
	require.ErrorContains(t, err, "expires_at: is in the past")
}
