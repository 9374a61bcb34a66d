package extauthz_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/extauthz/request"
	"github.com/purser-dev/purser/internal/testkit"
)

type harness struct {
	client authv3.AuthorizationClient
	svc    *budget.Service
	schema *pgtest.Schema
	cat    *pricing.Catalog
	reader *sdkmetric.ManualReader
	cfg    extauthz.Config
}

var catalogOnce = sync.OnceValues(pricing.Embedded)

func catalog(t *testing.T) *pricing.Catalog {
	cat, err := catalogOnce()
	require.NoError(t, err)
	return cat
}

// serve starts an ext_authz server on 127.0.0.1:0 with the real ledger and batcher, or with
// res when it is not nil.
func serve(t *testing.T, cfg extauthz.Config, res extauthz.Reserver) *harness {
	t.Helper()
	return serveBatcher(t, cfg, res, budget.BatcherConfig{})
}

// serveBatcher is serve with the batcher's configuration (used when res is nil).
func serveBatcher(t *testing.T, cfg extauthz.Config, res extauthz.Reserver, bcfg budget.BatcherConfig) *harness {
	t.Helper()
	h := &harness{schema: pgtest.New(t), cat: catalog(t), reader: sdkmetric.NewManualReader()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	lm, err := budget.NewMetrics(mp.Meter("test"))
	require.NoError(t, err)
	st := store.New(h.schema.Pool)
	h.svc = budget.New(st, st, budget.Config{Metrics: lm})
	if res == nil {
		b := budget.NewBatcher(h.svc, bcfg)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { b.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		res = b
	}
	cfg.Meter = mp.Meter("test")
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = 10 * time.Second // tests about decisions must not fail on a loaded -race run
	}
	h.cfg = cfg
	srv, err := extauthz.New(res, h.svc, func() *pricing.Catalog { return h.cat }, cfg)
	require.NoError(t, err)
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, srv)
	conn := testkit.ServeAndDial(t, gs)
	h.client = authv3.NewAuthorizationClient(conn)
	return h
}

// fixture loads one of the parser's Envoy-shaped CheckRequests.
func fixture(t testing.TB, name string) *authv3.CheckRequest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("request", "testdata", name+".json"))
	require.NoError(t, err)
	var req authv3.CheckRequest
	require.NoError(t, protojson.Unmarshal(b, &req))
	return &req
}

// withKey replaces the fixture's credentials with a purser key and gives it a fresh request id.
func withKey(req *authv3.CheckRequest, secret string, n int) *authv3.CheckRequest {
	h := req.GetAttributes().GetRequest().GetHttp()
	if hm := h.GetHeaderMap(); hm != nil { // encode_raw_headers: the headers are here instead
		kept := hm.Headers[:0]
		for _, x := range hm.Headers {
			switch x.GetKey() {
			case "authorization", "x-api-key", "api-key", "x-goog-api-key", "x-request-id":
				continue
			}
			kept = append(kept, x)
		}
		hm.Headers = kept
		if secret != "" {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: "authorization", RawValue: []byte("Bearer " + secret)})
		}
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: "x-request-id", RawValue: []byte("req-" + strconv.Itoa(n))})
		h.Id = strconv.Itoa(1000 + n)
		return req
	}
	for _, k := range []string{"authorization", "x-api-key", "api-key", "x-goog-api-key"} {
		delete(h.Headers, k)
	}
	if secret != "" {
		h.Headers["authorization"] = "Bearer " + secret
	}
	h.Headers["x-request-id"] = "req-" + strconv.Itoa(n)
	h.Id = strconv.Itoa(1000 + n)
	return req
}

func (h *harness) key(t *testing.T, subjects ...string) (budget.Key, string) {
	t.Helper()
	k, secret, err := h.svc.CreateKey(context.Background(), "test", budget.KeySpec{Name: "k", Subjects: subjects})
	require.NoError(t, err)
	return k, secret
}

func (h *harness) budget(t *testing.T, d budget.Definition) budget.Budget {
	t.Helper()
	b, err := h.svc.CreateBudget(context.Background(), "test", d)
	require.NoError(t, err)
	return b
}

// expectedBound recomputes the hold of a fixture independently of the server's wiring.
func (h *harness) expectedBound(t *testing.T, req *authv3.CheckRequest, defaultCap int64) (cost, tokens int64) {
	t.Helper()
	r := request.Parse(req, &request.Config{})
	m, ok := h.cat.Lookup(r.Provider, r.Model)
	require.True(t, ok, "model %q", r.Model)
	out := r.OutputBound(0)
	if !r.HasOutputCap {
		out = r.OutputBound(defaultCap)
	}
	cost, err := m.UpperBound(r.InputTokens, out)
	require.NoError(t, err)
	return cost, r.InputTokens + out
}

func okResponse(t *testing.T, resp *authv3.CheckResponse) *authv3.OkHttpResponse {
	t.Helper()
	require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "denied: %s", resp.GetDeniedResponse().GetBody())
	return resp.GetOkResponse()
}

func meta(resp *authv3.CheckResponse, k string) string {
	return resp.GetDynamicMetadata().GetFields()[k].GetStringValue()
}

func TestCheck_AllowThenDenyAtTheLimit(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	_, secret := h.key(t, "team:ml")
	cost, tokens := h.expectedBound(t, fixture(t, "openai_chat"), extauthz.DefaultOutputCap)
	tb := h.budget(t, budget.Definition{Name: "ml monthly", Subject: "team:ml", Limit: 2*cost + cost/2, Window: "month", Hard: true})

	var ids []string
	for i := range 2 {
		resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, i))
		require.NoError(t, err)
		ok := okResponse(t, resp)
		require.Equal(t, extauthz.DecisionReserved, meta(resp, extauthz.MetaDecision))
		require.NotEmpty(t, meta(resp, extauthz.MetaReservationID))
		require.Equal(t, strconv.FormatInt(cost, 10), meta(resp, extauthz.MetaReservedMicros))
		require.Equal(t, strconv.FormatInt(tokens, 10), meta(resp, extauthz.MetaReservedTokens))
		require.Equal(t, "gpt-4o-mini", meta(resp, extauthz.MetaModel))
		require.Equal(t, []string{"authorization"}, ok.GetHeadersToRemove(), "the purser key never reaches the provider")
		hs := map[string]string{}
		for _, x := range ok.GetResponseHeadersToAdd() {
			hs[x.GetHeader().GetKey()] = x.GetHeader().GetValue()
			require.Equal(t, "OVERWRITE_IF_EXISTS_OR_ADD", x.GetAppendAction().String())
		}
		require.Equal(t, pricing.FormatMicros(tb.Limit), hs[extauthz.HeaderLimit])
		require.Equal(t, pricing.FormatMicros(tb.Limit-int64(i+1)*cost), hs[extauthz.HeaderRemaining])
		require.Equal(t, "usd", hs[extauthz.HeaderUnit])
		require.NotEmpty(t, hs[extauthz.HeaderReset])
		ids = append(ids, meta(resp, extauthz.MetaReservationID))
	}
	require.NotEqual(t, ids[0], ids[1])

	resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, 3))
	require.NoError(t, err, "a budget denial is an answer, not a gRPC error")
	require.Equal(t, int32(codes.ResourceExhausted), resp.GetStatus().GetCode())
	d := resp.GetDeniedResponse()
	require.Equal(t, 429, int(d.GetStatus().GetCode()))
	hs := map[string]string{}
	for _, x := range d.GetHeaders() {
		hs[x.GetHeader().GetKey()] = x.GetHeader().GetValue()
	}
	require.Equal(t, "application/json", hs["content-type"])
	require.Equal(t, "budget_exceeded", hs[extauthz.HeaderReason])
	retry, err := strconv.Atoi(hs["retry-after"])
	require.NoError(t, err)
	require.Positive(t, retry)
	var body struct {
		Error struct {
			Message, Type, Code string
		}
	}
	require.NoError(t, json.Unmarshal([]byte(d.GetBody()), &body))
	require.Equal(t, "insufficient_quota", body.Error.Type)
	require.Equal(t, "budget_exceeded", body.Error.Code)
	require.Contains(t, body.Error.Message, `budget "ml monthly" (team:ml) is exhausted until `)
	require.NotContains(t, body.Error.Message, "$", "amounts only when configured")
	require.Equal(t, extauthz.DecisionDenied, meta(resp, extauthz.MetaDecision))
	require.Empty(t, meta(resp, extauthz.MetaReservationID))

	// The same request again (same x-request-id and Envoy stream id) is not held twice.
	again, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, 0))
	require.NoError(t, err)
	require.Equal(t, ids[0], meta(again, extauthz.MetaReservationID))
	rep, err := h.svc.Verify(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean())
}

// A retried Check (same x-request-id, stream id and request time) gets its first reservation
// back; a new request reusing both ids is told apart by Envoy's request time. The stored key
// starts with that time in nanoseconds, so keys arrive in ascending order (index locality) and
// the access log's fallback join finds the reservation by the entry's start_time
// (budget.RequestStartKey).
func TestCheck_IdempotencyKeyStartsWithRequestTime(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	_, secret := h.key(t, "team:ml")
	h.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 10_000_000, Window: "month", Hard: true})
	check := func(req *authv3.CheckRequest) string {
		t.Helper()
		resp, err := h.client.Check(ctx, req)
		require.NoError(t, err)
		okResponse(t, resp)
		return meta(resp, extauthz.MetaReservationID)
	}
	keyOf := func(id string) []byte {
		t.Helper()
		var k []byte
		require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT idempotency_key FROM reservations WHERE id = $1`, id).Scan(&k))
		return k
	}
	req := withKey(fixture(t, "openai_chat"), secret, 7)
	req.GetAttributes().GetRequest().GetTime().Nanos = 123456789
	at := req.GetAttributes().GetRequest().GetTime().AsTime()
	require.Positive(t, at.Unix(), "the fixture carries Envoy's request time")
	first := check(req)
	require.Equal(t, first, check(proto.Clone(req).(*authv3.CheckRequest)), "a retry reserves once")

	later := proto.Clone(req).(*authv3.CheckRequest)
	later.GetAttributes().GetRequest().GetTime().Nanos++
	second := check(later)
	require.NotEqual(t, first, second, "another downstream request with the same ids")

	k1, k2 := keyOf(first), keyOf(second)
	require.Len(t, k1, 8+sha256.Size)
	require.Equal(t, uint64(at.UnixNano()), binary.BigEndian.Uint64(k1))
	require.Equal(t, uint64(at.UnixNano()+1), binary.BigEndian.Uint64(k2), "a nanosecond apart: another request")
	require.Equal(t, budget.RequestStartKey(at), k1[:8])
	require.Equal(t, k1[8:], k2[8:], "the same hash after the time")
	require.Negative(t, bytes.Compare(k1, k2))

	untimed := withKey(fixture(t, "openai_chat"), secret, 8)
	untimed.GetAttributes().GetRequest().Time = nil
	require.Len(t, keyOf(check(untimed)), sha256.Size, "no request time: the hash alone")
}

func TestCheck_SeveralBudgetsAtOnce(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	k, secret := h.key(t, "team:ml")
	kb := h.budget(t, budget.Definition{Name: "key", Subject: "key:" + k.ID, Limit: 10_000_000, Window: "day", Hard: true})
	tb := h.budget(t, budget.Definition{Name: "team", Subject: "team:ml", Limit: 10_000_000, Window: "month", Hard: true})
	wb := h.budget(t, budget.Definition{Name: "workload", Subject: "workload:spiffe://cluster.local/ns/app/sa/web", Limit: 10_000_000, Window: "week", Hard: true})
	nb := h.budget(t, budget.Definition{Name: "namespace", Subject: "namespace:app", Unit: "tokens", Limit: 10_000_000, Window: "month", Hard: true})

	req := withKey(fixture(t, "mtls_principal"), secret, 1)
	resp, err := h.client.Check(ctx, req)
	require.NoError(t, err)
	okResponse(t, resp)
	res, err := h.svc.Reservation(ctx, meta(resp, extauthz.MetaReservationID))
	require.NoError(t, err)
	require.Equal(t, []string{"key:" + k.ID, "team:ml", "workload:spiffe://cluster.local/ns/app/sa/web", "namespace:app", "global"}, res.Subjects)
	for _, b := range []budget.Budget{kb, tb, wb, nb} {
		var pending int64
		require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT pending FROM budget_windows WHERE budget_id = $1`, b.ID).Scan(&pending))
		want := res.HoldCost
		if b.Unit == budget.Tokens {
			want = res.HoldTokens
		}
		require.Equal(t, want, pending, "budget %s", b.Name)
	}

	// A workload with no key at all is an identity too.
	req = withKey(fixture(t, "mtls_principal"), "", 2)
	resp, err = h.client.Check(ctx, req)
	require.NoError(t, err)
	okResponse(t, resp)
}

func TestCheck_SoftBudgetWarning(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	_, secret := h.key(t, "user:bob")
	h.budget(t, budget.Definition{Name: "bob soft", Subject: "user:bob", Limit: 1, Window: "day", Hard: false})
	resp, err := h.client.Check(context.Background(), withKey(fixture(t, "openai_chat"), secret, 1))
	require.NoError(t, err)
	ok := okResponse(t, resp)
	hs := map[string]string{}
	for _, x := range ok.GetResponseHeadersToAdd() {
		hs[x.GetHeader().GetKey()] = x.GetHeader().GetValue()
	}
	require.Equal(t, `"bob soft" exceeded (soft)`, hs[extauthz.HeaderWarning])
	require.Empty(t, hs[extauthz.HeaderLimit], "no hard budget applies")
}

func TestCheck_Identity(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	k, secret := h.key(t, "team:ml")
	_, err := h.svc.RevokeKey(ctx, "test", k.ID)
	require.NoError(t, err)

	cases := map[string]struct {
		fixture, secret, reason, bodyType string
	}{
		"Revoked":            {"openai_chat", secret, "key_revoked", "authentication_error"},
		"RevokedAnthropic":   {"anthropic_messages", secret, "key_revoked", "authentication_error"},
		"Unknown":            {"openai_chat", budget.SecretPrefix + "forged0000000000000000000000000000", "invalid_api_key", "authentication_error"},
		"NoKey":              {"openai_chat", "", "missing_api_key", "authentication_error"},
		"ProviderKeyIgnored": {"openai_chat", "sk-not-a-purser-key", "missing_api_key", "authentication_error"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			resp, err := h.client.Check(ctx, withKey(fixture(t, c.fixture), c.secret, 1))
			require.NoError(t, err)
			require.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode())
			d := resp.GetDeniedResponse()
			require.Equal(t, 401, int(d.GetStatus().GetCode()))
			require.NotContains(t, d.GetBody(), secret, "the secret is never echoed")
			var body map[string]any
			require.NoError(t, json.Unmarshal([]byte(d.GetBody()), &body))
			if c.fixture == "anthropic_messages" {
				require.Equal(t, "error", body["type"])
			}
			require.Equal(t, c.bodyType, body["error"].(map[string]any)["type"])
			require.Equal(t, extauthz.DecisionUnidentified, meta(resp, extauthz.MetaDecision))
		})
	}
}

// A flood of one forged key reaches the database about once: concurrent misses share one
// query, and the negative cache answers what follows.
func TestCheck_UnknownKeyFlood(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{CheckTimeout: 5 * time.Second}, nil)
	ctx := context.Background()
	forged := budget.SecretPrefix + "floodfloodfloodfloodfloodfloodflood"
	check := func(i int) {
		resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), forged, i))
		if err != nil || resp.GetStatus().GetCode() != int32(codes.Unauthenticated) {
			t.Errorf("flood request %d: %v %v", i, err, resp.GetStatus())
		}
	}
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() { defer wg.Done(); check(i) }()
	}
	wg.Wait()
	first := keyLookups(t, h)
	require.LessOrEqual(t, first["unknown"], int64(3), "200 concurrent requests, a handful of queries at most")
	for i := range 50 {
		check(1000 + i)
	}
	then := keyLookups(t, h)
	require.Equal(t, first["unknown"], then["unknown"], "no more database lookups")
	require.Equal(t, first["negative_cache"]+50, then["negative_cache"])
}

func keyLookups(t *testing.T, h *harness) map[string]int64 {
	t.Helper()
	return h.counter(t, "purser.key_lookups", "source")
}

// counter sums the int64 counter name by the values of attribute key (attribute values
// joined with "/" when key names several, comma separated).
func (h *harness) counter(t *testing.T, name, key string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, h.reader.Collect(context.Background(), &rm))
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				var vals []string
				for _, k := range strings.Split(key, ",") {
					v, _ := dp.Attributes.Value(attribute.Key(k))
					vals = append(vals, v.AsString())
				}
				out[strings.Join(vals, "/")] += dp.Value
			}
		}
	}
	return out
}

// Every answer is counted by decision and reason, and timed by decision.
func TestCheck_DecisionMetrics(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	_, secret := h.key(t, "team:ml")
	for i := range 3 {
		resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, i))
		require.NoError(t, err)
		okResponse(t, resp)
	}
	for i := range 2 {
		resp, err := h.client.Check(ctx, withKey(fixture(t, "garbage_body"), secret, 10+i))
		require.NoError(t, err)
		require.NotNil(t, resp.GetDeniedResponse())
	}
	require.Equal(t, map[string]int64{"reserved/": 3, "denied/invalid_body": 2},
		h.counter(t, "purser.check.decisions", "decision,reason"))

	var rm metricdata.ResourceMetrics
	require.NoError(t, h.reader.Collect(ctx, &rm))
	timed := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "purser.check.duration" {
				for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
					d, _ := dp.Attributes.Value("decision")
					_, hasReason := dp.Attributes.Value("reason")
					require.False(t, hasReason, "durations are by decision only")
					timed[d.AsString()] += dp.Count
				}
			}
		}
	}
	require.Equal(t, map[string]uint64{"reserved": 3, "denied": 2}, timed)
}

// blockingReserver never answers before the caller's deadline: the Check must give up in time.
type blockingReserver struct{}

func (blockingReserver) Reserve(ctx context.Context, _ budget.ReserveRequest) (budget.Decision, error) {
	<-ctx.Done()
	return budget.Decision{}, ctx.Err()
}

type failingReserver struct{}

func (failingReserver) Reserve(context.Context, budget.ReserveRequest) (budget.Decision, error) {
	return budget.Decision{}, budget.ErrUnavailable
}

type overloadedReserver struct{}

func (overloadedReserver) Reserve(context.Context, budget.ReserveRequest) (budget.Decision, error) {
	return budget.Decision{}, fmt.Errorf("%w: expected wait 300ms, 150ms left", budget.ErrOverloaded)
}

// Shedding answers at once with a denial Envoy sends as is: 503 with Retry-After, on every
// route (a fail-open route too: the ledger works, it is busy), whatever Envoy's failure mode.
func TestCheck_OverloadedIsShed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := serve(t, extauthz.Config{}, overloadedReserver{})
	_, secret := h.key(t, "team:ml")
	for i, ext := range []map[string]string{nil, {"failure_policy": "open", "route": "batch-jobs"}} {
		req := withKey(fixture(t, "openai_chat"), secret, i+1)
		req.Attributes.ContextExtensions = ext
		resp, err := h.client.Check(ctx, req)
		require.NoError(t, err, "shedding is an answer, not a gRPC error")
		d := resp.GetDeniedResponse()
		require.NotNil(t, d, "want a denied response, got %v", resp)
		require.Equal(t, int32(codes.Unavailable), resp.GetStatus().GetCode())
		require.EqualValues(t, 503, d.GetStatus().GetCode())
		hs := map[string]string{}
		for _, h := range d.GetHeaders() {
			hs[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		require.Equal(t, "1", hs["retry-after"], "want Retry-After, got %v", hs)
		require.Equal(t, extauthz.ReasonOverloaded, hs[extauthz.HeaderReason])
		require.Empty(t, meta(resp, extauthz.MetaReservationID))
	}
	require.Equal(t, map[string]int64{"denied/overloaded": 2}, h.counter(t, "purser.check.decisions", "decision,reason"))
}

func TestCheck_CannotDecide(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	h := serve(t, extauthz.Config{CheckTimeout: 50 * time.Millisecond}, blockingReserver{})
	_, secret := h.key(t, "team:ml")
	start := time.Now()
	_, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, 1))
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "got %v", err)
	require.Less(t, time.Since(start), time.Second, "answers long before Envoy's own timeout")

	// Envoy's deadline shorter than the server's: the server follows Envoy's.
	short, cancel := context.WithTimeout(ctx, 80*time.Millisecond)
	defer cancel()
	h2 := serve(t, extauthz.Config{CheckTimeout: 10 * time.Second}, blockingReserver{})
	_, secret2 := h2.key(t, "team:ml")
	_, err = h2.client.Check(short, withKey(fixture(t, "openai_chat"), secret2, 1))
	require.Contains(t, []codes.Code{codes.DeadlineExceeded}, status.Code(err))

	h3 := serve(t, extauthz.Config{}, failingReserver{})
	_, secret3 := h3.key(t, "team:ml")
	_, err = h3.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret3, 1))
	require.Equal(t, codes.Unavailable, status.Code(err), "database down: Envoy's failure mode decides")

	// A route that fails open admits, unverified, with no reservation.
	req := withKey(fixture(t, "openai_chat"), secret3, 2)
	req.Attributes.ContextExtensions = map[string]string{"failure_policy": "open", "route": "batch-jobs"}
	resp, err := h3.client.Check(ctx, req)
	require.NoError(t, err)
	okResponse(t, resp)
	require.Equal(t, extauthz.DecisionUnverified, meta(resp, extauthz.MetaDecision))
	require.Empty(t, meta(resp, extauthz.MetaReservationID))
	require.Contains(t, meta(resp, extauthz.MetaSubjects), "team:ml", "the sink can charge unreserved spend to these subjects")
}

func TestCheck_BodyPolicies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := serve(t, extauthz.Config{}, nil)
	_, secret := h.key(t, "team:ml")

	// Truncated with a content-length: the missing part may hold anything (images
	// included), so only the model's context window bounds the input; admitted.
	resp, err := h.client.Check(ctx, withKey(fixture(t, "partial_body"), secret, 1))
	require.NoError(t, err)
	okResponse(t, resp)
	r := request.Parse(fixture(t, "partial_body"), &request.Config{})
	require.True(t, r.Truncated)
	require.True(t, r.ExternalInput)
	tokens, err := strconv.ParseInt(meta(resp, extauthz.MetaReservedTokens), 10, 64)
	require.NoError(t, err)
	m, ok := h.cat.Lookup(r.Provider, r.Model)
	require.True(t, ok)
	require.Equal(t, m.ContextWindow+r.OutputCap, tokens, "the context window plus the request's cap")

	strict := serve(t, extauthz.Config{TruncatedBody: extauthz.BodyDeny, MissingCap: extauthz.MissingCapDeny}, nil)
	_, secret2 := strict.key(t, "team:ml")
	resp, err = strict.client.Check(ctx, withKey(fixture(t, "partial_body"), secret2, 2))
	require.NoError(t, err)
	require.Equal(t, 413, int(resp.GetDeniedResponse().GetStatus().GetCode()))

	cases := map[string]struct {
		h       *harness
		secret  string
		fixture string
		status  int
		reason  string
	}{
		"GarbageBody":       {h, secret, "garbage_body", 400, "invalid_body"},
		"HugeMaxTokens":     {h, secret, "huge_max_tokens", 400, "invalid_output_cap"},
		"CapRequired":       {strict, secret2, "jwt_metadata", 400, "output_cap_required"},
		"SelfHostedNoPrice": {h, secret, "selfhosted_vllm_chat", 400, "unknown_model"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			resp, err := c.h.client.Check(ctx, withKey(fixture(t, c.fixture), c.secret, 3))
			require.NoError(t, err)
			d := resp.GetDeniedResponse()
			require.NotNil(t, d, "want a denial, got %v", resp)
			require.Equal(t, c.status, int(d.GetStatus().GetCode()), d.GetBody())
			require.Contains(t, d.GetBody(), c.reason)
		})
	}
}

func TestCheck_NonBillable(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	ctx := context.Background()
	_, secret := h.key(t, "team:ml")
	h.budget(t, budget.Definition{Name: "empty", Subject: "team:ml", Limit: 0, Window: "month", Hard: true})
	for i, name := range []string{"get_models", "anthropic_count_tokens"} {
		resp, err := h.client.Check(ctx, withKey(fixture(t, name), secret, i))
		require.NoError(t, err)
		okResponse(t, resp)
		require.Equal(t, extauthz.DecisionPassthrough, meta(resp, extauthz.MetaDecision), name)
		require.Empty(t, meta(resp, extauthz.MetaReservationID))
	}
	var n int
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations`).Scan(&n))
	require.Zero(t, n)
	// The same budget denies a billable call: the passthroughs did not dodge it by accident.
	// (A zero limit can never hold it: the never-fit answer.)
	resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, 9))
	require.NoError(t, err)
	require.Equal(t, 400, int(resp.GetDeniedResponse().GetStatus().GetCode()))
	require.Contains(t, resp.GetDeniedResponse().GetBody(), extauthz.ReasonExceedsBudget)
}

// Every fixture gets a precise answer (never a gRPC error, never a panic) with a valid key.
func TestCheck_EveryFixture(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	_, secret := h.key(t, "team:ml")
	entries, err := os.ReadDir(filepath.Join("request", "testdata"))
	require.NoError(t, err)
	n := 0
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		name := e.Name()[:len(e.Name())-5]
		n++
		resp, err := h.client.Check(context.Background(), withKey(fixture(t, name), secret, n))
		require.NoError(t, err, name)
		require.NotNil(t, resp.GetStatus(), name)
		dec := meta(resp, extauthz.MetaDecision)
		require.NotEmpty(t, dec, name)
		if dec == extauthz.DecisionReserved {
			require.NotEmpty(t, meta(resp, extauthz.MetaReservationID), name)
		}
		t.Logf("%-28s %-12s %s", name, dec, resp.GetDeniedResponse().GetBody())
	}
	require.Greater(t, n, 10)
}

// Secrets, Authorization headers and prompt bodies never reach a log line, at any level.
func TestCheck_LogsNoSecrets(t *testing.T) {
	t.Parallel()
	var buf testkit.SyncBuffer
	h := serve(t, extauthz.Config{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}, nil)
	ctx := context.Background()
	_, secret := h.key(t, "team:ml")
	h.budget(t, budget.Definition{Name: "tiny", Subject: "team:ml", Limit: 1, Window: "day", Hard: true})
	for i, r := range []*authv3.CheckRequest{
		withKey(fixture(t, "openai_chat"), secret, 1),                                 // denied: budget
		withKey(fixture(t, "anthropic_messages"), secret+"x", 2),                      // unknown key
		withKey(fixture(t, "get_models"), secret, 3),                                  // passthrough
		withKey(fixture(t, "garbage_body"), secret, 4),                                // invalid body
		withKey(fixture(t, "openai_chat"), budget.SecretPrefix+"forged0123456789", 5), // forged
	} {
		_, err := h.client.Check(ctx, r)
		require.NoError(t, err, "request %d", i)
	}
	logs := buf.String()
	require.NotEmpty(t, logs)
	require.Contains(t, logs, `"decision":"denied"`)
	for _, leak := range []string{secret, "Bearer", "forged0123456789", "Summarise the plot of Hamlet", "authorization"} {
		require.NotContains(t, logs, leak)
	}
}

// With invalid_body: estimate, an unreadable body is bounded by its size (a token is at
// least one byte), never by what the parser happened to count.
func TestCheck_InvalidBodyEstimateBoundsBySize(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{InvalidBody: extauthz.BodyEstimate}, nil)
	_, secret := h.key(t, "team:ml")
	req := withKey(fixture(t, "openai_chat"), secret, 1)
	body := `{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"` + strings.Repeat("word ", 2000) // unterminated
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	httpReq.RawBody = []byte(body)
	httpReq.Headers["content-length"] = strconv.Itoa(len(body))
	r := request.Parse(req, &request.Config{})
	require.Error(t, r.BodyError)
	require.Equal(t, "gpt-4o-mini", r.Model)
	resp, err := h.client.Check(context.Background(), req)
	require.NoError(t, err)
	okResponse(t, resp)
	tokens, err := strconv.ParseInt(meta(resp, extauthz.MetaReservedTokens), 10, 64)
	require.NoError(t, err)
	require.GreaterOrEqual(t, tokens, int64(len(body)+10))
}

// failingAuth cannot reach the ledger.
type failingAuth struct{}

func (failingAuth) Authenticate(context.Context, string) (*budget.Key, error) {
	return nil, budget.ErrUnavailable
}

// A route that fails open still never admits a credential it could not verify.
func TestCheck_FailOpenNeverSkipsAuthentication(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	srv, err := extauthz.New(failingReserver{}, failingAuth{}, func() *pricing.Catalog { return cat }, extauthz.Config{})
	require.NoError(t, err)
	req := withKey(fixture(t, "openai_chat"), budget.SecretPrefix+"anything0000000000000000", 1)
	req.Attributes.ContextExtensions = map[string]string{"failure_policy": "open"}
	_, err = srv.Check(context.Background(), req)
	require.Equal(t, codes.Unavailable, status.Code(err))
}

// A key sent as a query parameter (Gemini's ?key=) is removed before the request goes upstream.
func TestCheck_StripsQueryCredential(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{Request: request.Config{CredentialSources: []string{"query:key"}}}, nil)
	_, secret := h.key(t, "team:ml")
	req := withKey(fixture(t, "gemini_generate"), "", 1)
	hr := req.GetAttributes().GetRequest().GetHttp()
	hr.Path += "?key=" + secret
	hr.Headers[":path"] = hr.Path
	resp, err := h.client.Check(context.Background(), req)
	require.NoError(t, err)
	ok := okResponse(t, resp)
	require.Equal(t, []string{"key"}, ok.GetQueryParametersToRemove())
	require.Empty(t, ok.GetHeadersToRemove())
}

// A route whose context is invalid must not turn a request into an unbilled pass-through.
func TestCheck_InvalidRouteContextFailsClosed(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	_, secret := h.key(t, "team:ml")
	req := withKey(fixture(t, "route_flavor_unknown_path"), secret, 1)
	req.Attributes.RouteMetadataContext.FilterMetadata["purser"].Fields["api_flavor"] = structpb.NewStringValue("not a flavour!")
	r := request.Parse(req, &request.Config{})
	require.Error(t, r.RouteError)
	require.False(t, r.Billable)
	_, err := h.client.Check(context.Background(), req)
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
}

// A request that pulls in input its body does not contain (here previous_response_id) is
// bounded by the model's context window, by policies.external_input_tokens when the catalog
// knows none, or denied when that is 0: never by the few tokens its body shows.
func TestCheck_ExternalInputBound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cat := catalog(t)
	const body = `{"model":%q,"previous_response_id":"resp_123","input":"and then?","max_output_tokens":100}`
	responses := func(secret, model string, n int) *authv3.CheckRequest {
		req := withKey(fixture(t, "openai_responses"), secret, n)
		h := req.GetAttributes().GetRequest().GetHttp()
		h.RawBody = fmt.Appendf(nil, body, model)
		h.Headers["content-length"] = strconv.Itoa(len(h.RawBody))
		r := request.Parse(req, &request.Config{})
		require.NoError(t, r.BodyError)
		require.True(t, r.ExternalInput)
		require.Less(t, r.InputTokens, int64(200))
		return req
	}
	known, ok := cat.Lookup("openai", "gpt-4o")
	require.True(t, ok)
	require.Positive(t, known.ContextWindow)
	unknown, ok := cat.Lookup("openai", "chatgpt-4o-latest")
	require.True(t, ok)
	require.Zero(t, unknown.ContextWindow, "the test needs a model without a known context window")

	h := serve(t, extauthz.Config{}, nil)
	_, secret := h.key(t, "team:ml")
	for i, c := range []struct {
		model string
		input int64
	}{{"gpt-4o", known.ContextWindow}, {"chatgpt-4o-latest", extauthz.DefaultExternalInputTokens}} {
		resp, err := h.client.Check(ctx, responses(secret, c.model, i+1))
		require.NoError(t, err)
		okResponse(t, resp)
		require.Equal(t, strconv.FormatInt(c.input+100, 10), meta(resp, extauthz.MetaReservedTokens), c.model)
	}

	zero := int64(0)
	strict := serve(t, extauthz.Config{ExternalInputTokens: &zero}, nil)
	zero = 1_000 // the server keeps its own copy of the configuration
	_, secret = strict.key(t, "team:ml")
	resp, err := strict.client.Check(ctx, responses(secret, "chatgpt-4o-latest", 1))
	require.NoError(t, err)
	require.Equal(t, 400, int(resp.GetDeniedResponse().GetStatus().GetCode()))
	require.Contains(t, resp.GetDeniedResponse().GetBody(), "external_input_unbounded")
	resp, err = strict.client.Check(ctx, responses(secret, "gpt-4o", 2))
	require.NoError(t, err)
	okResponse(t, resp) // a known window still bounds it

	neg := int64(-1)
	require.ErrorContains(t, extauthz.Config{ExternalInputTokens: &neg}.Validate(), "policies.external_input_tokens: -1")
}

// The default external-input bound covers every context window the embedded catalog knows.
func TestDefaultExternalInputTokens_CoversCatalog(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "budget", "pricing", "data", "genai-prices-data_slim.json"))
	require.NoError(t, err)
	var providers []struct {
		Models []struct {
			ContextWindow int64 `json:"context_window"`
		} `json:"models"`
	}
	require.NoError(t, json.Unmarshal(b, &providers))
	var largest int64
	for _, p := range providers {
		for _, m := range p.Models {
			largest = max(largest, m.ContextWindow)
		}
	}
	require.Positive(t, largest)
	require.GreaterOrEqual(t, extauthz.DefaultExternalInputTokens, largest)
}

// policies.stream_without_usage: deny refuses an OpenAI-style stream that does not ask for
// usage (its settlement could only charge the whole hold), and nothing else.
func TestCheck_StreamWithoutUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	chat := func(secret, body string, n int) *authv3.CheckRequest {
		req := withKey(fixture(t, "openai_chat_stream"), secret, n)
		h := req.GetAttributes().GetRequest().GetHttp()
		h.RawBody = []byte(body)
		h.Headers["content-length"] = strconv.Itoa(len(body))
		return req
	}
	const (
		noUsage   = `{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`
		usageOff  = `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":false},"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`
		withUsage = `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`
		noStream  = `{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`
	)

	lenient := serve(t, extauthz.Config{}, nil)
	_, secret := lenient.key(t, "team:ml")
	resp, err := lenient.client.Check(ctx, chat(secret, noUsage, 1))
	require.NoError(t, err)
	okResponse(t, resp) // default: admitted, settled at the hold

	strict := serve(t, extauthz.Config{StreamWithoutUsage: extauthz.StreamUsageDeny}, nil)
	_, secret = strict.key(t, "team:ml")
	for i, body := range []string{noUsage, usageOff} {
		resp, err := strict.client.Check(ctx, chat(secret, body, i+1))
		require.NoError(t, err)
		d := resp.GetDeniedResponse()
		require.NotNil(t, d, body)
		require.Equal(t, 400, int(d.GetStatus().GetCode()))
		require.Contains(t, d.GetBody(), "stream_usage_required")
		require.Contains(t, d.GetBody(), "include_usage")
	}
	for i, body := range []string{withUsage, noStream} {
		resp, err := strict.client.Check(ctx, chat(secret, body, i+10))
		require.NoError(t, err)
		okResponse(t, resp)
	}
	// Anthropic and Gemini streams always report usage: the policy does not apply.
	for i, name := range []string{"anthropic_messages_stream", "gemini_stream"} {
		resp, err := strict.client.Check(ctx, withKey(fixture(t, name), secret, i+20))
		require.NoError(t, err)
		okResponse(t, resp)
	}
	var n int
	require.NoError(t, strict.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations`).Scan(&n))
	require.Equal(t, 4, n, "the denied streams reserved nothing")

	require.ErrorContains(t, extauthz.Config{StreamWithoutUsage: "maybe"}.Validate(), "policies.stream_without_usage")
}

// A billable request goes upstream with accept-encoding: identity (overwriting the client's
// gzip), so the data plane's usage filters read an uncompressed response; a non-billable one
// keeps the client's header. The mutation is OVERWRITE: Envoy's default append_action would
// append "identity" to the client's value instead (envoy.md 3.2).
func TestCheck_BillableAsksForUncompressedResponse(t *testing.T) {
	t.Parallel()
	h := serve(t, extauthz.Config{}, nil)
	_, secret := h.key(t, "team:ml")
	for i, name := range []string{"openai_chat", "anthropic_messages_stream", "gemini_stream", "openai_embeddings"} {
		req := withKey(fixture(t, name), secret, i)
		req.GetAttributes().GetRequest().GetHttp().GetHeaders()["accept-encoding"] = "gzip, deflate, br"
		resp, err := h.client.Check(context.Background(), req)
		require.NoError(t, err, name)
		ok := okResponse(t, resp)
		require.Equal(t, extauthz.DecisionReserved, meta(resp, extauthz.MetaDecision), name)
		var found *corev3.HeaderValueOption
		for _, o := range ok.GetHeaders() {
			if o.GetHeader().GetKey() == "accept-encoding" {
				require.Nil(t, found, "%s: one accept-encoding mutation", name)
				found = o
			}
		}
		require.NotNil(t, found, "%s: billable requests must ask for an uncompressed answer", name)
		require.Equal(t, "identity", found.GetHeader().GetValue(), name)
		require.Equal(t, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, found.GetAppendAction(), name)
	}
	resp, err := h.client.Check(context.Background(), withKey(fixture(t, "get_models"), secret, 9))
	require.NoError(t, err)
	for _, o := range okResponse(t, resp).GetHeaders() {
		require.NotEqual(t, "accept-encoding", o.GetHeader().GetKey(), "non-billable requests keep the client's compression")
	}
}
