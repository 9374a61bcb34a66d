package extauthz_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/internal/testkit"
	"github.com/purser-dev/purser/proof"
)

func keyring(t testing.TB) *proof.Keyring {
	t.Helper()
	secret := make([]byte, proof.KeySize)
	_, err := rand.Read(secret)
	require.NoError(t, err)
	now := time.Now()
	var r proof.Keyring
	require.NoError(t, r.Set([]proof.Key{{ID: "1", Secret: secret, ActivatesAt: now.Add(-time.Hour), RetiresAt: now.Add(time.Hour), ExpiresAt: now.Add(72 * time.Hour)}}))
	return &r
}

// claimsOf reads the claims a proof covers back from an answer's metadata, as the sink does.
func claimsOf(resp *authv3.CheckResponse) proof.Claims {
	return proof.Claims{
		Decision: meta(resp, extauthz.MetaDecision), ReservationID: meta(resp, extauthz.MetaReservationID),
		ReservedMicros: meta(resp, extauthz.MetaReservedMicros), ReservedTokens: meta(resp, extauthz.MetaReservedTokens),
		KeyID: meta(resp, extauthz.MetaKeyID), Subjects: meta(resp, extauthz.MetaSubjects),
		Provider: meta(resp, extauthz.MetaProvider), Flavor: meta(resp, extauthz.MetaFlavor), Model: meta(resp, extauthz.MetaModel),
	}
}

// Reserved and unverified answers carry a proof of exactly what the sink acts on, valid past
// the reservation's expiry by the grace; denials carry none.
func TestCheck_SignsWhatTheSinkActsOn(t *testing.T) {
	t.Parallel()
	ring := keyring(t)
	h := serve(t, extauthz.Config{Signer: ring, ReservationTTL: 10 * time.Minute, ProofGrace: time.Hour}, nil)
	ctx := context.Background()
	k, secret := h.key(t, "team:ml")
	cost, _ := h.expectedBound(t, fixture(t, "openai_chat"), extauthz.DefaultOutputCap)
	h.budget(t, budget.Definition{Name: "key", Subject: "key:" + k.ID, Limit: cost + cost/2, Window: "day", Hard: true})

	req := withKey(fixture(t, "openai_chat"), secret, 1)
	resp, err := h.client.Check(ctx, req)
	require.NoError(t, err)
	okResponse(t, resp)
	tok := meta(resp, extauthz.MetaProof)
	c := claimsOf(resp)
	require.Equal(t, k.ID, c.KeyID)
	require.NoError(t, ring.Verify(&c, tok, time.Now()), "the proof covers the metadata as sent")
	parsed, err := proof.Parse(tok)
	require.NoError(t, err)
	exp := time.Unix(parsed.Expires, 0)
	require.WithinDuration(t, time.Now().Add(10*time.Minute+time.Hour), exp, 10*time.Second, "TTL plus grace")
	forged := c
	forged.ReservedMicros = "0"
	require.ErrorIs(t, ring.Verify(&forged, tok, time.Now()), proof.ErrBadMAC)

	// A retried Check gets its first reservation back, proven again.
	again, err := h.client.Check(ctx, req)
	require.NoError(t, err)
	require.Equal(t, c.ReservationID, meta(again, extauthz.MetaReservationID))
	ca := claimsOf(again)
	require.NoError(t, ring.Verify(&ca, meta(again, extauthz.MetaProof), time.Now()))

	// A denial moves no money: no proof.
	denied, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, 2))
	require.NoError(t, err)
	require.Equal(t, extauthz.DecisionDenied, meta(denied, extauthz.MetaDecision))
	require.Empty(t, meta(denied, extauthz.MetaProof))

	// An unverified admission (route fails open, ledger down) proves the subjects it charges.
	h2 := serve(t, extauthz.Config{Signer: ring}, failingReserver{})
	_, secret2 := h2.key(t, "user:alice")
	req2 := withKey(fixture(t, "openai_chat"), secret2, 3)
	req2.Attributes.ContextExtensions = map[string]string{"failure_policy": "open"}
	un, err := h2.client.Check(ctx, req2)
	require.NoError(t, err)
	require.Equal(t, extauthz.DecisionUnverified, meta(un, extauthz.MetaDecision))
	cu := claimsOf(un)
	require.Contains(t, cu.Subjects, "user:alice")
	require.NoError(t, ring.Verify(&cu, meta(un, extauthz.MetaProof), time.Now()))
	cu.Subjects = "user:bob"
	require.ErrorIs(t, ring.Verify(&cu, meta(un, extauthz.MetaProof), time.Now()), proof.ErrBadMAC, "subjects cannot be swapped")

	// No key to sign with: cannot decide (a hold whose entry would be refused helps no one).
	h3 := serve(t, extauthz.Config{Signer: &proof.Keyring{}}, nil)
	_, secret3 := h3.key(t, "team:ml")
	_, err = h3.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret3, 4))
	require.Equal(t, codes.Unavailable, status.Code(err))
}

// Every credential carrying a purser key is removed before the request goes upstream; a
// provider key on a pass-through is left alone.
func TestCheck_StripsEveryPurserCredential(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	_, a := h.key(t, "team:ml")
	_, b := h.key(t, "team:ml")

	req := withKey(fixture(t, "openai_chat"), a, 1)
	req.GetAttributes().GetRequest().GetHttp().Headers["x-api-key"] = b
	resp, err := h.client.Check(ctx, req)
	require.NoError(t, err)
	ok := okResponse(t, resp)
	require.ElementsMatch(t, []string{"authorization", "x-api-key"}, ok.GetHeadersToRemove(), "key B must not reach the provider")

	// Repeated headers arrive joined: a purser key behind a provider key, with a scheme, is
	// stripped.
	req = withKey(fixture(t, "openai_chat"), a, 2)
	req.GetAttributes().GetRequest().GetHttp().Headers["api-key"] = "sk-provider, Bearer " + b
	resp, err = h.client.Check(ctx, req)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"authorization", "api-key"}, okResponse(t, resp).GetHeadersToRemove())

	// A caller identified by its mTLS workload sends its own provider key: it passes.
	req = withKey(fixture(t, "mtls_principal"), "", 3)
	req.GetAttributes().GetRequest().GetHttp().Headers["authorization"] = "Bearer sk-provider-key"
	resp, err = h.client.Check(ctx, req)
	require.NoError(t, err)
	ok = okResponse(t, resp)
	require.Empty(t, ok.GetHeadersToRemove(), "a provider key is not purser's to strip")
}

// Identity claims count only from an authenticated proxy: from an unauthenticated one a
// forged source.principal is ignored, with its own answer when nothing else identifies.
func TestCheck_IdentityClaimsNeedAnAuthenticatedProxy(t *testing.T) {
	t.Parallel()
	var authenticated atomic.Bool
	h := serve(t, extauthz.Config{Authenticated: func(context.Context) bool { return authenticated.Load() }}, nil)
	ctx := context.Background()
	const workload = "workload:spiffe://cluster.local/ns/app/sa/web"
	h.budget(t, budget.Definition{Name: "web", Subject: workload, Limit: 10_000_000, Window: "day", Hard: true})

	resp, err := h.client.Check(ctx, withKey(fixture(t, "mtls_principal"), "", 1))
	require.NoError(t, err)
	require.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode())
	require.Equal(t, "untrusted_identity", headerOf(resp, extauthz.HeaderReason))
	require.Contains(t, resp.GetDeniedResponse().GetBody(), "did not authenticate")
	require.Equal(t, map[string]int64{"": 1}, h.counter(t, "purser.check.untrusted_claims", "none"))

	// With a key, the key identifies; the forged workload adds nothing, and neither does a
	// made-up route context (its budget_subject would charge someone else's budget).
	k, secret := h.key(t, "team:ml")
	req := withKey(fixture(t, "mtls_principal"), secret, 2)
	req.Attributes.ContextExtensions = map[string]string{"budget_subject": "team:victim", "route": "made-up"}
	resp, err = h.client.Check(ctx, req)
	require.NoError(t, err)
	okResponse(t, resp)
	res, err := h.svc.Reservation(ctx, meta(resp, extauthz.MetaReservationID))
	require.NoError(t, err)
	require.Equal(t, []string{"key:" + k.ID, "team:ml", "global"}, res.Subjects)

	authenticated.Store(true)
	resp, err = h.client.Check(ctx, withKey(fixture(t, "mtls_principal"), "", 3))
	require.NoError(t, err)
	okResponse(t, resp)
	res, err = h.svc.Reservation(ctx, meta(resp, extauthz.MetaReservationID))
	require.NoError(t, err)
	require.Contains(t, res.Subjects, workload, "believed from an authenticated proxy")
}

func headerOf(resp *authv3.CheckResponse, name string) string {
	for _, x := range resp.GetDeniedResponse().GetHeaders() {
		if x.GetHeader().GetKey() == name {
			return x.GetHeader().GetValue()
		}
	}
	return ""
}

// A new subject a template may not make a budget for is refused, never admitted unbounded.
func TestCheck_NewSubjectLimits(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	_, err := h.svc.CreateTemplate(ctx, "test", budget.Definition{Name: "user daily", Kind: "user", Limit: 10_000_000, Window: "day", Hard: true})
	require.NoError(t, err)
	capped := serveWith(t, h, budget.Config{Templates: budget.TemplateLimits{MaxBudgets: 1, Rate: 1000}})
	limited := serveWith(t, h, budget.Config{Templates: budget.TemplateLimits{Rate: 0.001, Burst: 1}})
	_, first := h.key(t, "user:first")
	_, second := h.key(t, "user:second")
	_, third := h.key(t, "user:third")

	resp, err := capped.Check(ctx, withKey(fixture(t, "openai_chat"), first, 1))
	require.NoError(t, err)
	okResponse(t, resp)
	resp, err = capped.Check(ctx, withKey(fixture(t, "openai_chat"), second, 2))
	require.NoError(t, err)
	require.Equal(t, 403, int(resp.GetDeniedResponse().GetStatus().GetCode()))
	require.Equal(t, "subject_limit_reached", headerOf(resp, extauthz.HeaderReason))

	resp, err = limited.Check(ctx, withKey(fixture(t, "openai_chat"), second, 3))
	require.NoError(t, err)
	okResponse(t, resp) // the burst of one
	resp, err = limited.Check(ctx, withKey(fixture(t, "openai_chat"), third, 4))
	require.NoError(t, err)
	require.Equal(t, 429, int(resp.GetDeniedResponse().GetStatus().GetCode()))
	require.Equal(t, "new_subject_rate_limited", headerOf(resp, extauthz.HeaderReason))
	require.Equal(t, "1", headerOf(resp, "retry-after"))
}

// serveWith starts another ext_authz server on h's schema with its own ledger configuration.
func serveWith(t *testing.T, h *harness, cfg budget.Config) authv3.AuthorizationClient {
	t.Helper()
	st := store.New(h.schema.Pool)
	svc := budget.New(st, st, cfg)
	b := budget.NewBatcher(svc, budget.BatcherConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	srv, err := extauthz.New(b, svc, func() *pricing.Catalog { return h.cat }, extauthz.Config{CheckTimeout: 10 * time.Second})
	require.NoError(t, err)
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, srv)
	return authv3.NewAuthorizationClient(testkit.ServeAndDial(t, gs))
}

// Denials are logged a sample at a time; the next line logged says how many were not.
func TestCheck_DenialLogsAreSampled(t *testing.T) {
	t.Parallel()
	var logs testkit.SyncBuffer
	h := serve(t, extauthz.Config{DenialLogRate: 1, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}, nil)
	ctx := context.Background()
	for i := range 60 {
		resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), budget.SecretPrefix+"unknownunknown"+strings.Repeat("x", i%5), i))
		require.NoError(t, err)
		require.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode())
	}
	lines := strings.Count(logs.String(), `"msg":"check"`)
	require.GreaterOrEqual(t, lines, 1)
	require.LessOrEqual(t, lines, 10, "60 denials in well under 10 s at 1 line/s (burst 3)")
	require.Equal(t, map[string]int64{"unidentified/invalid_api_key": 60}, h.counter(t, "purser.check.decisions", "decision,reason"), "every denial is counted")

	// Once the rate allows another line (a second later), it reports what was not logged.
	deadline := time.Now().Add(10 * time.Second)
	for i := 100; !strings.Contains(logs.String(), `"denials_not_logged":`); i++ {
		require.True(t, time.Now().Before(deadline), "no line reported the suppressed denials")
		resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), budget.SecretPrefix+"unknownagain", i))
		require.NoError(t, err)
		require.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode())
		time.Sleep(50 * time.Millisecond) // pacing the polling, not synchronisation
	}
}
