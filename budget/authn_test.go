package budget_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/proof"
)

// counts sums an int64 counter by one attribute.
func counts(t *testing.T, r *sdkmetric.ManualReader, name, attr string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				v, _ := dp.Attributes.Value(attribute.Key(attr))
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}

// listening starts svc's change listener and waits until it is in place (and the key index
// loaded).
func listening(t *testing.T, svc *budget.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() { svc.Listen(ctx, ready); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("listener not ready")
	}
}

func metered(t *testing.T, s *pgtest.Schema, cfg budget.Config) (*budget.Service, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	m, err := budget.NewMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"))
	require.NoError(t, err)
	cfg.Metrics = m
	st := store.New(s.Pool)
	return budget.New(st, st, cfg), reader
}

func TestValidSecret(t *testing.T) {
	for range 2000 {
		secret, _, _, err := budget.NewSecret()
		require.NoError(t, err)
		require.True(t, budget.ValidSecret(secret), "every issued secret has a key's shape: %s...", secret[:6])
	}
	for _, bad := range []string{"", "pk_", "sk-abc", "pk-abc", "pk_abc def", "pk_abc_def", "pk_" + strings.Repeat("a", 44),
		"pk_ab\x00c", "pk_é", "PK_abc", "Bearer pk_abc"} {
		require.False(t, budget.ValidSecret(bad), "%q is not a key", bad)
	}
	require.True(t, budget.ValidSecret("pk_"+strings.Repeat("Z", 43)))
}

// A malformed key and, once the index of key hashes is loaded, a well-formed key nobody
// issued cost no database query; a key created on another replica moments ago still works
// (the index only denies faster).
func TestAuthenticate_UnknownKeysCostNoQuery(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	svc, reader := metered(t, s, budget.Config{KeyLookupRate: 1})
	ctx := context.Background()
	k, secret, err := svc.CreateKey(ctx, "test", budget.KeySpec{Name: "a"})
	require.NoError(t, err)
	listening(t, svc)

	_, err = svc.Authenticate(ctx, "pk_not a key")
	require.ErrorIs(t, err, budget.ErrKeyUnknown)
	_, err = svc.Authenticate(ctx, strings.Repeat("x", 10_000))
	require.ErrorIs(t, err, budget.ErrKeyUnknown)

	// A flood of well-formed, distinct, unknown keys: a burst (2 + 1/s) reaches the database,
	// the rest are answered by the index.
	const flood = 500
	for i := range flood {
		_, err := svc.Authenticate(ctx, fmt.Sprintf("pk_unknown%08d", i))
		require.ErrorIs(t, err, budget.ErrKeyUnknown)
	}
	got := counts(t, reader, "purser.key_lookups", "source")
	require.Equal(t, int64(2), got["malformed"], "malformed keys are refused before anything")
	require.LessOrEqual(t, got["unknown"], int64(10), "database lookups of unknown keys are bounded: %v", got)
	require.GreaterOrEqual(t, got["index"], int64(flood-10), "the index answers the rest: %v", got)

	// The real key still authenticates (from the database, then the cache).
	got1, err := svc.Authenticate(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, k.ID, got1.ID)

	// A key made by another replica: this one learns it from the notification.
	other := budget.New(store.New(s.Pool), store.New(s.Pool), budget.Config{})
	k2, secret2, err := other.CreateKey(ctx, "test", budget.KeySpec{Name: "b"})
	require.NoError(t, err)
	eventually(t, func() bool {
		got, err := svc.Authenticate(ctx, secret2)
		return err == nil && got.ID == k2.ID
	}, "a key created on another replica authenticates")
}

// Before the index is loaded, an unknown key's lookups are rate-limited and their exhaustion
// is "cannot decide" (ErrUnavailable), never an admission.
func TestAuthenticate_NoIndexIsCannotDecide(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	svc, _ := metered(t, s, budget.Config{KeyLookupRate: 1})
	ctx := context.Background()
	var unavailable, unknown int
	for i := range 20 {
		_, err := svc.Authenticate(ctx, fmt.Sprintf("pk_nobody%04d", i))
		switch {
		case errors.Is(err, budget.ErrUnavailable):
			unavailable++
		case errors.Is(err, budget.ErrKeyUnknown):
			unknown++
		default:
			t.Fatalf("unexpected answer %v", err)
		}
	}
	require.Positive(t, unavailable, "past the lookup rate: cannot decide")
	require.LessOrEqual(t, unknown, 4, "only the burst was looked up")
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Replicas share signing keys: one inserts, all load; each verifies the others' proofs. A
// rotation due inserts the next key ahead of its activation, once however many replicas try.
func TestSigningKeys_SharedAndRotated(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()
	replicas := make([]*budget.Service, 6)
	rings := make([]*proof.Keyring, len(replicas))
	for i := range replicas {
		st := store.New(s.Pool)
		replicas[i] = budget.New(st, st, budget.Config{})
		rings[i] = &proof.Keyring{}
	}
	cfg := budget.SigningConfig{Rotate: time.Hour, Lead: time.Minute}
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, replicas[i].LoadSigningKeys(ctx, rings[i], cfg))
		}()
	}
	wg.Wait()
	var n int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM signing_keys`).Scan(&n))
	require.Equal(t, 1, n, "replicas starting together make one key")
	c := proof.Claims{Decision: "reserved", ReservationID: "018f0000-0000-7000-8000-000000000001"}
	now := time.Now()
	tok, err := rings[0].Sign(&c, now, now.Add(time.Hour))
	require.NoError(t, err)
	for i := range rings {
		require.NoError(t, rings[i].Verify(&c, tok, now), "replica %d verifies replica 0's proof", i)
	}

	// The key is due for succession: move it back in time (database clock decides).
	_, err = s.Pool.Exec(ctx, `UPDATE signing_keys SET activates_at = activates_at - interval '59 minutes 30 seconds',
		retires_at = retires_at - interval '59 minutes 30 seconds'`)
	require.NoError(t, err)
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, replicas[i].LoadSigningKeys(ctx, rings[i], cfg))
		}()
	}
	wg.Wait()
	var future int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE activates_at > now()) FROM signing_keys`).Scan(&future))
	require.Equal(t, 1, future, "exactly one successor, not yet active")
	require.Equal(t, 2, rings[3].Len(), "every replica holds the successor before it signs")
	// Until the successor activates, the old key signs and every replica verifies.
	tok2, err := rings[5].Sign(&c, time.Now(), time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, strings.Split(tok, ".")[1], strings.Split(tok2, ".")[1], "the old key still signs")
	require.NoError(t, rings[2].Verify(&c, tok2, time.Now()))
}

// The x-request-id fallback finds a reservation only by its request's exact start time, and
// charges provisionally: a later authentic settlement still applies, refunding the difference.
func TestProvisionalChargeAndRequestStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	b := e.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 1000, Window: "month", Hard: true})
	start := time.Now().Add(-time.Second).Truncate(time.Nanosecond)
	key := append(budget.RequestStartKey(start), make([]byte, 32)...)
	key[len(key)-1] = 1
	r := req("team:ml")
	r.Cost, r.RequestID, r.IdempotencyKey = 300, "shared-id", key
	d := e.reserveOne(t, r)
	require.Equal(t, budget.Admitted, d.Outcome)
	other := req("team:ml") // another request reusing the x-request-id, started 1 µs later
	other.Cost, other.RequestID = 50, "shared-id"
	other.IdempotencyKey = append(budget.RequestStartKey(start.Add(time.Microsecond)), make([]byte, 32)...)
	require.Equal(t, budget.Admitted, e.reserveOne(t, other).Outcome)

	from, to := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	rs, err := e.svc.ReservationsForRequest(ctx, "shared-id", start, from, to)
	require.NoError(t, err)
	require.Len(t, rs, 1, "exactly the request that started then")
	require.Equal(t, d.ReservationID, rs[0].ID)
	rs, err = e.svc.ReservationsForRequest(ctx, "shared-id", start.Add(time.Nanosecond), from, to)
	require.NoError(t, err)
	require.Empty(t, rs, "a nanosecond off matches nothing")

	res, err := e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, ChargeHold: true, Provisional: true, Cause: "request_id_join:no_upstream"}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeProvisional, res[0].Outcome)
	row, err := e.svc.Reservation(ctx, d.ReservationID)
	require.NoError(t, err)
	require.Equal(t, "expired", row.State, "charged like an expiry")
	res, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, ChargeHold: true, Provisional: true}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeDuplicate, res[0].Outcome, "only a pending reservation is charged provisionally")
	// The authentic entry arrives: the real cost replaces the charge.
	res, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Cost: 120, Cause: "usage"}})
	require.NoError(t, err)
	require.Equal(t, budget.OutcomeLateSettled, res[0].Outcome)
	_, err = e.svc.Settle(ctx, []budget.Settlement{{ReservationID: d.ReservationID, Void: true, Provisional: true}})
	require.ErrorIs(t, err, budget.ErrInvalid, "a provisional settlement never voids")
	posted, pending := e.window(t, b.ID, b.Window.At(e.clock.Now(), time.Time{}).Start)
	require.Equal(t, int64(120), posted)
	require.Equal(t, int64(50), pending, "the other request's hold is untouched")
	e.requireClean(t)
}

// Templates make budgets for new subjects within a rate per kind and a cap per template; a
// refused subject is denied (never admitted without its budget); idle budgets are pruned and
// made afresh, with history and reconciliation intact.
func TestTemplates_BoundedMaterialisation(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	svc, reader := metered(t, s, budget.Config{Templates: budget.TemplateLimits{MaxBudgets: 5, Rate: 0.001, Burst: 8}})
	ctx := context.Background()
	_, err := svc.CreateTemplate(ctx, "test", budget.Definition{Name: "tenant", Kind: "org", Limit: 100, Window: "month", Hard: true})
	require.NoError(t, err)
	// A tenant with a manual budget of the template's name needs nothing from the template.
	_, err = svc.CreateBudget(ctx, "test", budget.Definition{Name: "tenant", Subject: "org:manual", Limit: 100000, Window: "month", Hard: true})
	require.NoError(t, err)

	var admitted, capped, limited int
	for i := range 12 {
		r := req(budget.Subject(fmt.Sprintf("org:t%02d", i)))
		ds, err := svc.Reserve(ctx, []budget.ReserveRequest{r, req("org:manual")})
		require.NoError(t, err)
		require.Equal(t, budget.Admitted, ds[1].Outcome, "the manual tenant is never refused")
		var lim *budget.SubjectLimit
		switch {
		case ds[0].Outcome == budget.Admitted:
			admitted++
		case errors.As(ds[0].Refused, &lim) && lim.Retry:
			limited++
		case errors.As(ds[0].Refused, &lim):
			capped++
			require.ErrorIs(t, ds[0].Refused, budget.ErrSubjectLimit)
		default:
			t.Fatalf("tenant %d: %+v", i, ds[0])
		}
	}
	require.Equal(t, 5, admitted, "the cap")
	require.Equal(t, 3, capped, "past the cap, within the burst")
	require.Equal(t, 4, limited, "past the burst")
	var live int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM budgets WHERE template_id IS NOT NULL AND deleted_at IS NULL`).Scan(&live))
	require.Equal(t, 5, live)
	got := counts(t, reader, "purser.templates.budgets", "outcome")
	require.Equal(t, int64(5), got["made"])
	require.Equal(t, int64(3), got["capped"])
	require.Equal(t, int64(4), got["rate_limited"])

	// Pruning: t00 settled spend this month (not idle); the others are idle once old enough.
	ds, err := svc.Reserve(ctx, []budget.ReserveRequest{req("org:t00")})
	require.NoError(t, err)
	_, err = svc.Settle(ctx, []budget.Settlement{{ReservationID: ds[0].ReservationID, Cost: 10}})
	require.NoError(t, err)
	// The admitted holds of the loop are still pending: settle them at zero (as a void would).
	_, err = s.Pool.Exec(ctx, `UPDATE budgets SET created_at = created_at - interval '2 hours', updated_at = updated_at - interval '2 hours' WHERE template_id IS NOT NULL`)
	require.NoError(t, err)
	_, err = svc.PruneIdleBudgets(ctx, time.Hour, 100)
	require.NoError(t, err)
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM budgets WHERE template_id IS NOT NULL AND deleted_at IS NULL`).Scan(&live))
	require.Equal(t, 5, live, "every budget holds something pending: none is idle")
	var pendingIDs []string
	rows, err := s.Pool.Query(ctx, `SELECT id::text FROM reservations WHERE state = 'pending'`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		pendingIDs = append(pendingIDs, id)
	}
	require.NoError(t, rows.Err())
	_, err = svc.Void(ctx, pendingIDs, "test")
	require.NoError(t, err)
	n, err := svc.PruneIdleBudgets(ctx, time.Hour, 2) // batches of two: the loop drains them all
	require.NoError(t, err)
	require.Equal(t, int64(4), n, "t01..t04 are idle; t00 spent this month")
	require.Equal(t, int64(4), counts(t, reader, "purser.templates.budgets", "outcome")["pruned"])
	var kept string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT subject FROM budgets WHERE template_id IS NOT NULL AND deleted_at IS NULL`).Scan(&kept))
	require.Equal(t, "org:t00", kept)
	_, err = svc.PruneIdleBudgets(ctx, time.Minute, 1)
	require.ErrorIs(t, err, budget.ErrInvalid, "an idle age below an hour is refused")

	// A pruned tenant comes back: a fresh budget from the template (the cap counts live ones).
	svc2, _ := metered(t, s, budget.Config{Templates: budget.TemplateLimits{MaxBudgets: 5}})
	ds, err = svc2.Reserve(ctx, []budget.ReserveRequest{req("org:t01")})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, ds[0].Outcome)
	require.Len(t, ds[0].Budgets, 1)
	require.Equal(t, int64(100), ds[0].Budgets[0].Limit, "the template's limit, a fresh window")
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM budgets WHERE subject = 'org:t01'`).Scan(&live))
	require.Equal(t, 2, live, "the pruned budget stays as history")

	// An operator's deletion still sticks: the template never makes that subject another.
	var t00 int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT id FROM budgets WHERE subject = 'org:t00' AND deleted_at IS NULL`).Scan(&t00))
	require.NoError(t, svc2.DeleteBudget(ctx, "admin", t00))
	ds, err = svc2.Reserve(ctx, []budget.ReserveRequest{req("org:t00")})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, ds[0].Outcome)
	require.Empty(t, ds[0].Budgets, "deleted by an operator: not made again")

	rep, err := svc2.Verify(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "%+v", rep)
}

// Many replicas materialising the same template at once respect its cap exactly.
func TestTemplates_CapAcrossReplicas(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()
	setup := budget.New(store.New(s.Pool), store.New(s.Pool), budget.Config{})
	_, err := setup.CreateTemplate(ctx, "test", budget.Definition{Name: "tenant", Kind: "org", Limit: 100, Window: "day", Hard: true})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		svc := budget.New(store.New(s.Pool), store.New(s.Pool), budget.Config{Templates: budget.TemplateLimits{MaxBudgets: 10, Rate: 1000}})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				_, err := svc.Reserve(ctx, []budget.ReserveRequest{req(budget.Subject(fmt.Sprintf("org:g%d-%d", g, i)))})
				if err != nil {
					t.Errorf("reserve: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var live int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM budgets WHERE template_id IS NOT NULL AND deleted_at IS NULL`).Scan(&live))
	require.Equal(t, 10, live, "80 new tenants from 8 replicas, cap 10")
}

var secretShape = regexp.MustCompile(`^pk_[0-9A-Za-z]{1,43}$`)

// FuzzValidSecret: the format check agrees with the key grammar on any input and never panics.
func FuzzValidSecret(f *testing.F) {
	for _, s := range []string{"", "pk_", "pk_abc", "pk_" + strings.Repeat("Z", 43), "pk_" + strings.Repeat("Z", 44), "pk_é", "Bearer pk_x", "pk_\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := budget.ValidSecret(s), secretShape.MatchString(s); got != want {
			t.Fatalf("ValidSecret(%q) = %t, want %t", s, got, want)
		}
	})
}
