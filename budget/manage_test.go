package budget_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

func requireForbidden(t *testing.T, err error, msg string) {
	t.Helper()
	require.ErrorIs(t, err, budget.ErrForbidden)
	require.ErrorContains(t, err, msg)
}

func TestService_ManagerRules(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	admin := budget.AdminActor("admin:test")
	mgr := budget.Actor{Name: "token:tok_mgr", Role: budget.RoleManager, Scope: budget.Scope{"team:ml"}}
	viewer := budget.Actor{Name: "token:tok_view", Role: budget.RoleViewer}

	// The admin's allowance for the team, and a global cap.
	teamCap, err := e.svc.CreateBudgetAs(ctx, admin, budget.Definition{Name: "ml allowance", Subject: "team:ml", Limit: 500_000_000, Window: "month", Hard: true})
	require.NoError(t, err)
	require.Equal(t, budget.RoleAdmin, teamCap.SetBy)
	_, err = e.svc.CreateBudgetAs(ctx, admin, budget.Definition{Name: "all", Subject: "global", Limit: 10_000_000_000, Window: "month", Hard: true})
	require.NoError(t, err)

	t.Run("Keys", func(t *testing.T) {
		k, _, err := e.svc.CreateKeyAs(ctx, mgr, budget.KeySpec{Name: "nlp", Subjects: []string{"team:ml/nlp", "team:ml"}})
		require.NoError(t, err)
		_, _, err = e.svc.CreateKeyAs(ctx, mgr, budget.KeySpec{Name: "shared", Subjects: []string{"team:ml", "org:acme"}})
		requireForbidden(t, err, "subject org:acme is outside your scope (team:ml)")
		_, _, err = e.svc.CreateKeyAs(ctx, mgr, budget.KeySpec{Name: "orphan"})
		requireForbidden(t, err, "needs owner subjects")
		_, err = e.svc.UpdateKeyAs(ctx, mgr, k.ID, budget.KeySpec{Name: "nlp", Subjects: []string{"team:web"}})
		requireForbidden(t, err, "subject team:web is outside your scope")

		other, _, err := e.svc.CreateKeyAs(ctx, admin, budget.KeySpec{Name: "web", Subjects: []string{"team:web"}})
		require.NoError(t, err)
		_, err = e.svc.RevokeKeyAs(ctx, mgr, other.ID)
		requireForbidden(t, err, "team:web is outside your scope")
		_, _, err = e.svc.RotateKeyAs(ctx, mgr, other.ID)
		requireForbidden(t, err, "outside your scope")
		_, _, err = e.svc.RotateKeyAs(ctx, mgr, k.ID)
		require.NoError(t, err)
		_, err = e.svc.RevokeKeyAs(ctx, mgr, k.ID)
		require.NoError(t, err)
		_, _, err = e.svc.CreateKeyAs(ctx, viewer, budget.KeySpec{Name: "v", Subjects: []string{"team:ml"}})
		requireForbidden(t, err, "a viewer cannot change anything")
	})

	t.Run("Ceilings", func(t *testing.T) {
		def := func(subject, unit, window string, limit int64) budget.Definition {
			return budget.Definition{Name: fmt.Sprintf("%s %s %s %d", subject, unit, window, limit), Subject: subject, Unit: unit, Limit: limit, Window: window, Hard: true}
		}
		// Below the team's allowance: fine; above it, over the same or a shorter window: no.
		nlp, err := e.svc.CreateBudgetAs(ctx, mgr, def("team:ml/nlp", "usd", "month", 400_000_000))
		require.NoError(t, err)
		require.Equal(t, budget.RoleManager, nlp.SetBy)
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def("team:ml/nlp", "usd", "month", 600_000_000))
		requireForbidden(t, err, `limit 600.000000 usd is above budget `+fmt.Sprint(teamCap.ID)+` "ml allowance" (500.000000 usd per month) an admin set on team:ml`)
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def("team:ml", "usd", "day", 600_000_000))
		requireForbidden(t, err, "an admin set on team:ml")
		// A longer window, or another unit, is not capped by a monthly money budget.
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def("team:ml/nlp", "usd", "year", 6_000_000_000))
		require.NoError(t, err)
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def("team:ml/nlp", "tokens", "month", 900_000_000))
		require.NoError(t, err)
		// The global cap binds too (and tighter admin caps bind first).
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def("team:ml/cv", "usd", "week", 20_000_000_000))
		requireForbidden(t, err, "an admin set on team:ml")

		// A key's owners are wider than its own subject.
		k, _, err := e.svc.CreateKeyAs(ctx, mgr, budget.KeySpec{Name: "bot", Subjects: []string{"team:ml"}})
		require.NoError(t, err)
		ks := string(budget.KeySubject(k.ID))
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def(ks, "usd", "day", 500_000_001))
		requireForbidden(t, err, "an admin set on team:ml")
		kb, err := e.svc.CreateBudgetAs(ctx, mgr, def(ks, "usd", "day", 100_000_000))
		require.NoError(t, err)

		// Out of scope, by name or by key ownership.
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def("team:web", "usd", "day", 1))
		requireForbidden(t, err, "subject team:web is outside your scope (team:ml)")
		web, _, err := e.svc.CreateKeyAs(ctx, admin, budget.KeySpec{Name: "w", Subjects: []string{"team:web"}})
		require.NoError(t, err)
		_, err = e.svc.CreateBudgetAs(ctx, mgr, def(string(budget.KeySubject(web.ID)), "usd", "day", 1))
		requireForbidden(t, err, "is outside your scope")

		// Admin-set budgets are read-only to a manager, even in its scope.
		d := teamCap.Definition()
		d.Limit = 5_000_000_000
		_, err = e.svc.UpdateBudgetAs(ctx, mgr, teamCap.ID, d)
		requireForbidden(t, err, "was set by an admin: a manager cannot change it")
		requireForbidden(t, e.svc.DeleteBudgetAs(ctx, mgr, teamCap.ID), "was set by an admin")
		_, err = e.svc.AddGrantAs(ctx, mgr, teamCap.ID, 1, e.clock.Now().Add(time.Hour), "")
		requireForbidden(t, err, "was set by an admin")
		_, err = e.svc.ResetBudgetAs(ctx, mgr, teamCap.ID, "")
		requireForbidden(t, err, "was set by an admin")

		// A manager's own budget: raise up to the cap, grants included, and no further.
		d = nlp.Definition()
		d.Limit = 450_000_000
		_, err = e.svc.UpdateBudgetAs(ctx, mgr, nlp.ID, d)
		require.NoError(t, err)
		_, err = e.svc.AddGrantAs(ctx, mgr, nlp.ID, 50_000_000, e.clock.Now().Add(time.Hour), "launch")
		require.NoError(t, err)
		_, err = e.svc.AddGrantAs(ctx, mgr, nlp.ID, 1, e.clock.Now().Add(time.Hour), "more")
		requireForbidden(t, err, "limit 450.000000 with grants 50.000001 usd is above budget")
		_, err = e.svc.ResetBudgetAs(ctx, mgr, nlp.ID, "new quarter")
		require.NoError(t, err)
		require.NoError(t, e.svc.DeleteBudgetAs(ctx, mgr, kb.ID))

		// An admin's change makes a budget admin-set; a viewer changes nothing.
		d = nlp.Definition()
		up, err := e.svc.UpdateBudgetAs(ctx, admin, nlp.ID, d)
		require.NoError(t, err)
		require.Equal(t, budget.RoleAdmin, up.SetBy)
		_, err = e.svc.UpdateBudgetAs(ctx, mgr, nlp.ID, d)
		requireForbidden(t, err, "was set by an admin")
		_, err = e.svc.CreateBudgetAs(ctx, viewer, def("team:ml/x", "usd", "day", 1))
		requireForbidden(t, err, "a viewer cannot change anything")
	})

	// Every change names its actor in the audit log.
	actors := e.schema.Strings(t, `SELECT DISTINCT actor FROM audit_log ORDER BY 1`)
	require.Equal(t, []string{"admin:test", "token:tok_mgr"}, actors)
}

func TestService_Tokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	admin := budget.AdminActor("admin:boot")

	mt, secret, err := e.svc.CreateToken(ctx, admin, budget.TokenSpec{Name: "ml lead", Role: "manager", Scope: []string{"team:ml", "user:*"}})
	require.NoError(t, err)
	require.Regexp(t, `^pt_[0-9A-Za-z]{30,}$`, secret)
	require.Equal(t, secret[:11], mt.Prefix)
	require.Regexp(t, `^tok_[a-z2-7]{16}$`, mt.ID)
	got, err := e.svc.AuthenticateToken(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, budget.Actor{Name: "token:" + mt.ID, Role: budget.RoleManager, Scope: budget.Scope{"team:ml", "user:*"}}, got.Actor())
	require.Empty(t, e.schema.Strings(t, `SELECT id FROM admin_tokens WHERE encode(secret_hash, 'escape') LIKE '%' || $1 || '%'`, secret[3:]),
		"the secret is not stored")

	_, err = e.svc.AuthenticateToken(ctx, "pt_nope")
	require.ErrorIs(t, err, budget.ErrTokenUnknown)
	for spec, msg := range map[*budget.TokenSpec]string{
		{Name: "x", Role: "manager"}:                            "scope: a manager needs at least one subject",
		{Name: "x", Role: "viewer", Scope: []string{"team:ml"}}: "scope: only a manager has a scope",
		{Name: "x", Role: "root"}:                               `role: must be admin, manager or viewer, got "root"`,
		{Name: "", Role: "viewer"}:                              "name: is required",
		{Name: "x", Role: "manager", Scope: []string{"global"}}: "not global or key: subjects",
		{Name: "x", Role: "viewer", ExpiresAt: time.Unix(1, 0)}: "expires_at: is in the past",
	} {
		_, _, err := e.svc.CreateToken(ctx, admin, *spec)
		require.ErrorContains(t, err, msg)
	}
	_, _, err = e.svc.CreateToken(ctx, got.Actor(), budget.TokenSpec{Name: "x", Role: "admin"})
	requireForbidden(t, err, "only an admin can create tokens")
	_, err = e.svc.RevokeToken(ctx, got.Actor(), mt.ID)
	requireForbidden(t, err, "only an admin can revoke tokens")

	vt, vsecret, err := e.svc.CreateToken(ctx, admin, budget.TokenSpec{Name: "auditor", Role: "viewer", ExpiresAt: e.clock.Now().Add(time.Hour)})
	require.NoError(t, err)
	list, err := e.svc.Tokens(ctx, budget.TokenQuery{})
	require.NoError(t, err)
	require.Equal(t, []string{vt.ID, mt.ID}, []string{list[0].ID, list[1].ID}, "newest first")
	page, err := e.svc.Tokens(ctx, budget.TokenQuery{After: budget.KeyCursor{CreatedAt: list[0].CreatedAt, ID: list[0].ID}, Limit: 1})
	require.NoError(t, err)
	require.Equal(t, mt.ID, page[0].ID)

	e.clock.Set(e.clock.Now().Add(2 * time.Hour))
	_, err = e.svc.AuthenticateToken(ctx, vsecret)
	require.ErrorIs(t, err, budget.ErrTokenExpired)
	_, err = e.svc.RevokeToken(ctx, admin, mt.ID)
	require.NoError(t, err)
	_, err = e.svc.AuthenticateToken(ctx, secret)
	require.ErrorIs(t, err, budget.ErrTokenRevoked)
	_, err = e.svc.RevokeToken(ctx, admin, "tok_nope")
	require.ErrorIs(t, err, budget.ErrNotFound)

	audit := e.schema.Strings(t, `SELECT action || ' ' || target || ' ' || actor FROM audit_log ORDER BY id`)
	require.Equal(t, []string{"token.create token:" + mt.ID + " admin:boot", "token.create token:" + vt.ID + " admin:boot",
		"token.revoke token:" + mt.ID + " admin:boot"}, audit)
}

func TestService_Sessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	secret, exp, err := e.svc.CreateSession(ctx, "token:tok_a", "token:tok_a")
	require.NoError(t, err)
	require.WithinDuration(t, e.clock.Now().Add(budget.SessionTTL), exp, time.Second)
	p, _, err := e.svc.Session(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, "token:tok_a", p)
	_, _, err = e.svc.Session(ctx, secret+"x")
	require.ErrorIs(t, err, budget.ErrNotFound)
	require.Empty(t, e.schema.Strings(t, `SELECT principal FROM console_sessions WHERE id_hash = convert_to($1, 'UTF8')`, secret),
		"only the hash is stored")

	require.NoError(t, e.svc.DeleteSession(ctx, secret))
	_, _, err = e.svc.Session(ctx, secret)
	require.ErrorIs(t, err, budget.ErrNotFound, "signed out")

	// Expiry follows the database clock, and a new sign-in sweeps expired sessions.
	s2, _, err := e.svc.CreateSession(ctx, "key:key_a", "key:key_a")
	require.NoError(t, err)
	_, err = e.schema.Pool.Exec(ctx, `UPDATE console_sessions SET expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
	_, _, err = e.svc.Session(ctx, s2)
	require.ErrorIs(t, err, budget.ErrNotFound)
	_, _, err = e.svc.CreateSession(ctx, "key:key_b", "key:key_b")
	require.NoError(t, err)
	require.Equal(t, []string{"key:key_b"}, e.schema.Strings(t, `SELECT principal FROM console_sessions`))
	require.Equal(t, []string{"console.sign_in key:key_a", "console.sign_in key:key_b", "console.sign_in token:tok_a"},
		e.schema.Strings(t, `SELECT action || ' ' || target FROM audit_log ORDER BY target`))
}

// The store's SQL scope filter agrees with Scope.Covers on every budget and key of a random
// population, for random scopes.
func TestScope_SQLMatchesCovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 11))
	owners := []string{"team:ml", "team:ml/nlp", "team:mlops", "team:ml_x", "team:web-shop", "user:alice", "user:a%b", "org:acme", "org:acme/r&d"}
	pick := func() string { return owners[rng.IntN(len(owners))] }
	var keys []budget.Key
	for i := range 30 {
		var subs []string
		for range rng.IntN(3) {
			subs = append(subs, pick())
		}
		k, _, err := e.svc.CreateKey(ctx, "t", budget.KeySpec{Name: fmt.Sprint("k", i), Subjects: subs})
		require.NoError(t, err)
		keys = append(keys, k)
	}
	subjects := append(slices.Clone(owners), "global", "tag:x")
	for _, k := range keys {
		subjects = append(subjects, string(budget.KeySubject(k.ID)))
	}
	for i, s := range subjects {
		e.budget(t, budget.Definition{Name: fmt.Sprint("b", i), Subject: s, Limit: 1, Window: "day"})
	}
	all, err := e.svc.Budgets(ctx, budget.BudgetQuery{})
	require.NoError(t, err)
	ownersOf := map[budget.Subject][]budget.Subject{}
	for _, k := range keys {
		ownersOf[budget.KeySubject(k.ID)] = k.Subjects
	}
	scopes := []budget.Scope{{"team:ml"}, {"team:ml/nlp", "user:*"}, {"team:ml_*"}, {"user:a%*"}, {"org:acme"}, {"team:*", "user:alice"}, {"org:acme/r&d", "team:web-*"}}
	for _, sc := range scopes {
		var want, got []int64
		for _, b := range all {
			if sc.Covers(b.Subject, ownersOf[b.Subject]) {
				want = append(want, b.ID)
			}
		}
		bs, err := e.svc.Budgets(ctx, budget.BudgetQuery{Scope: sc})
		require.NoError(t, err)
		for _, b := range bs {
			got = append(got, b.ID)
		}
		require.Equal(t, want, got, "budgets in scope %v", sc)

		var wantK, gotK []string
		for _, k := range keys {
			if sc.CoversKey(k) {
				wantK = append(wantK, k.ID)
			}
		}
		ks, err := e.svc.Keys(ctx, budget.KeyQuery{Scope: sc})
		require.NoError(t, err)
		for _, k := range ks {
			gotK = append(gotK, k.ID)
		}
		slices.Sort(wantK)
		slices.Sort(gotK)
		require.Equal(t, wantK, gotK, "keys in scope %v", sc)
		for _, b := range all {
			ok, err := e.svc.Covers(ctx, sc, b.Subject)
			require.NoError(t, err)
			require.Equal(t, slices.Contains(want, b.ID), ok, "Covers(%v, %s)", sc, b.Subject)
		}
	}
	_, err = e.svc.Covers(ctx, budget.Scope{"team:ml"}, "key:key_unknown")
	require.False(t, errors.Is(err, budget.ErrNotFound), "an unknown key is simply not covered")
}
