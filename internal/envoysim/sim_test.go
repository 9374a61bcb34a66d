package envoysim_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/envoy"
	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
	"github.com/purser-dev/purser/internal/testkit"
)

// fakePurser is an in-process Authorization + AccessLogService recording what Envoy sent.
type fakePurser struct {
	authv3.UnimplementedAuthorizationServer
	alsv3.UnimplementedAccessLogServiceServer

	mu       sync.Mutex
	checks   []*authv3.CheckRequest
	checkMD  []metadata.MD
	msgs     []*alsv3.StreamAccessLogsMessage
	streams  int
	decide   func(*authv3.CheckRequest) (*authv3.CheckResponse, error)
	received chan struct{}
}

func (f *fakePurser) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.checks = append(f.checks, req)
	f.checkMD = append(f.checkMD, md)
	decide := f.decide
	f.mu.Unlock()
	if decide != nil {
		return decide(req)
	}
	return okResponse(nil), nil
}

func (f *fakePurser) StreamAccessLogs(s alsv3.AccessLogService_StreamAccessLogsServer) error {
	f.mu.Lock()
	f.streams++
	f.mu.Unlock()
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.msgs = append(f.msgs, m)
		f.mu.Unlock()
		select {
		case f.received <- struct{}{}:
		default:
		}
	}
}

func (f *fakePurser) entries() []*alsdata.HTTPAccessLogEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*alsdata.HTTPAccessLogEntry
	for _, m := range f.msgs {
		out = append(out, m.GetHttpLogs().GetLogEntry()...)
	}
	return out
}

func (f *fakePurser) messages() []*alsv3.StreamAccessLogsMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*alsv3.StreamAccessLogsMessage(nil), f.msgs...)
}

func (f *fakePurser) lastCheck() (*authv3.CheckRequest, metadata.MD) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checks[len(f.checks)-1], f.checkMD[len(f.checkMD)-1]
}

// okResponse answers OK as purser does for a billable request: the dynamic metadata, and
// accept-encoding: identity upstream so the answer is not compressed (extauthz/respond.go).
func okResponse(md map[string]any) *authv3.CheckResponse {
	s, _ := structpb.NewStruct(md)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "accept-encoding", Value: "identity"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
		}},
		DynamicMetadata: s,
	}
}

func startFakePurser(t *testing.T) (*fakePurser, string) {
	t.Helper()
	f := &fakePurser{received: make(chan struct{}, 1)}
	g := grpc.NewServer()
	authv3.RegisterAuthorizationServer(g, f)
	alsv3.RegisterAccessLogServiceServer(g, f)
	return f, testkit.Serve(t, g)
}

type rig struct {
	sim     *envoysim.Sim
	purser  *fakePurser
	fake    *fakellm.Server
	upCalls chan *http.Request
}

// startRig runs the shipped config against a fake purser and fakellm (or handler).
func startRig(t *testing.T, cfg *envoysim.Config, upstream http.Handler) *rig {
	t.Helper()
	if cfg == nil {
		var err error
		cfg, err = envoysim.LoadShipped()
		require.NoError(t, err)
	}
	f, addr := startFakePurser(t)
	rg := &rig{purser: f, upCalls: make(chan *http.Request, 100)}
	if upstream == nil {
		rg.fake = fakellm.New()
		upstream = rg.fake
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case rg.upCalls <- r.Clone(context.Background()):
		default:
		}
		upstream.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	sim, err := envoysim.New(envoysim.Options{Config: cfg, GRPC: map[string][]string{"purser": {addr}}, Upstream: up.URL, Workers: 2})
	require.NoError(t, err)
	require.NoError(t, sim.Start())
	t.Cleanup(sim.Close)
	rg.sim = sim
	return rg
}

// waitEntries waits until the fake sink received n entries.
func (rg *rig) waitEntries(t *testing.T, n int) []*alsdata.HTTPAccessLogEntry {
	t.Helper()
	require.Eventually(t, func() bool { return len(rg.purser.entries()) >= n }, 10*time.Second, 10*time.Millisecond,
		"access-log entries: want %d, got %d", n, len(rg.purser.entries()))
	return rg.purser.entries()
}

// waitLogged waits until the simulation built n entries (Envoy logs at the end of the
// stream, which may be after the client read the response).
func (rg *rig) waitLogged(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return len(rg.sim.Entries()) >= n }, 10*time.Second, 5*time.Millisecond)
}

func post(t *testing.T, url, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("content-type", "application/json")
	for k, v := range hdr {
		req.Header.Add(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func TestLoadShipped_TakesEverythingFromEnvoyYAML(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	az := cfg.ExtAuthz
	require.NotNil(t, az)
	require.Equal(t, "purser", az.Cluster)
	require.Equal(t, 500*time.Millisecond, az.Timeout)
	require.False(t, az.FailureModeAllow)
	require.Equal(t, 503, az.StatusOnError)
	require.EqualValues(t, 1<<20, az.Body.GetMaxRequestBytes())
	require.True(t, az.Body.GetAllowPartialMessage())
	require.True(t, az.Body.GetPackAsBytes())
	require.Equal(t, []string{"purser"}, az.RouteMetadataContextNS)
	require.Len(t, az.InitialMetadata, 1)
	require.Equal(t, "x-purser-secret", az.InitialMetadata[0].GetKey())
	require.Len(t, cfg.AccessLogs, 1)
	al := cfg.AccessLogs[0]
	require.Equal(t, "purser", al.LogName)
	require.Equal(t, 250*time.Millisecond, al.FlushInterval)
	require.EqualValues(t, 1<<20, al.BufferSize)
	require.Equal(t, []string{"content-type"}, al.RequestHeadersToLog)
	require.EqualValues(t, 3, al.StreamRetries)
	require.NotEmpty(t, cfg.JSONRules.GetRules())
	require.NotEmpty(t, cfg.SSERules)
	require.EqualValues(t, 4<<20, cfg.SSEMaxEventSize)
	require.Len(t, cfg.Credentials, 3)
	require.Equal(t, "purser-envoy", cfg.Node.GetId())
}

func TestLoad_RefusesWhatItCannotSimulate(t *testing.T) {
	t.Parallel()
	b, err := envoy.Files.ReadFile("envoy-lua.yaml")
	require.NoError(t, err)
	cfg, err := envoysim.Load(b)
	require.NoError(t, err, "the Lua variant is simulated")
	require.NotNil(t, cfg.Lua)
	require.False(t, cfg.Lua.DisabledDefault)
	// A request-path Lua handler is not simulated: refused, not skipped.
	withRequest := strings.Replace(string(b), "function envoy_on_response(handle)", "function envoy_on_request(handle) end\n                  function envoy_on_response(handle)", 1)
	require.NotEqual(t, string(b), withRequest)
	_, err = envoysim.Load([]byte(withRequest))
	require.ErrorContains(t, err, "envoy_on_request is not simulated")
	// Neither is a header matcher.
	withHeader := strings.Replace(string(b), "match: { path: /v1/chat/completions }", "match: { path: /v1/chat/completions, headers: [{ name: x, present_match: true }] }", 1)
	require.NotEqual(t, string(b), withHeader)
	_, err = envoysim.Load([]byte(withHeader))
	require.ErrorContains(t, err, "header/grpc/runtime matchers are not simulated")
}

func TestCheckRequest_AsCreateHttpCheck(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	res := post(t, rg.sim.URL()+"/v1/chat/completions?x=1", body, map[string]string{
		"Authorization": "Bearer pk-test", "X-Dup": "a", "x-request-id": "client-chosen", "x-envoy-auth-partial-body": "true",
	})
	require.Equal(t, http.StatusOK, res.StatusCode)
	req, md := rg.purser.lastCheck()
	require.Equal(t, []string{"change-me-purser-shared-secret"}, md.Get("x-purser-secret"), "initial_metadata")
	h := req.GetAttributes().GetRequest().GetHttp()
	hd := h.GetHeaders()
	require.Equal(t, "POST", hd[":method"])
	require.Equal(t, "/v1/chat/completions?x=1", hd[":path"])
	require.Equal(t, "http", hd[":scheme"])
	require.Equal(t, strings.TrimPrefix(rg.sim.URL(), "http://"), hd[":authority"])
	require.Equal(t, "Bearer pk-test", hd["authorization"])
	require.Equal(t, "false", hd["x-envoy-auth-partial-body"], "client value stripped, Envoy's own set")
	require.NotEqual(t, "client-chosen", hd["x-request-id"], "edge request: x-request-id regenerated")
	require.NotEmpty(t, hd["x-request-id"])
	require.Equal(t, "127.0.0.1", hd["x-forwarded-for"])
	for k := range hd {
		require.Equal(t, strings.ToLower(k), k)
	}
	_, err := strconv.ParseUint(h.GetId(), 10, 64)
	require.NoError(t, err, "request.http.id is Envoy's numeric stream id")
	require.NotEqual(t, hd["x-request-id"], h.GetId())
	require.Equal(t, []byte(body), h.GetRawBody(), "pack_as_bytes")
	require.Empty(t, h.GetBody())
	require.EqualValues(t, len(body), h.GetSize())
	require.Equal(t, "HTTP/1.1", h.GetProtocol())
	require.Equal(t, map[string]string{"route": "openai-chat", "provider": "openai", "api_flavor": "chat"}, req.GetAttributes().GetContextExtensions())
	require.NotNil(t, req.GetAttributes().GetSource().GetAddress().GetSocketAddress())

	// The upstream saw the same x-request-id and the injected provider key.
	up := <-rg.upCalls
	require.Equal(t, hd["x-request-id"], up.Header.Get("x-request-id"))
	require.Equal(t, "Bearer sk-REPLACE-WITH-YOUR-OPENAI-KEY", up.Header.Get("authorization"), "credential injector (overwrite)")
	require.Equal(t, "api.openai.com", up.Host, "host_rewrite_literal")
}

func TestCheckRequest_DuplicateHeadersJoined(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	req, err := http.NewRequest(http.MethodGet, rg.sim.URL()+"/v1/models", nil)
	require.NoError(t, err)
	req.Header.Add("x-dup", "a")
	req.Header.Add("X-Dup", "b")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	cr, _ := rg.purser.lastCheck()
	hd := cr.GetAttributes().GetRequest().GetHttp().GetHeaders()
	require.Equal(t, "a,b", hd["x-dup"])
	_, hasPartial := hd["x-envoy-auth-partial-body"]
	require.False(t, hasPartial, "headers-only requests are not buffered")
	require.Nil(t, cr.GetAttributes().GetRequest().GetHttp().GetRawBody())
}

func TestPartialBodyAnd413(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	cfg.ExtAuthz.Body.MaxRequestBytes = 64
	rg := startRig(t, cfg, nil)
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"` + strings.Repeat("x", 200) + `"}]}`
	res := post(t, rg.sim.URL()+"/v1/chat/completions", body, nil)
	require.Equal(t, http.StatusOK, res.StatusCode)
	cr, _ := rg.purser.lastCheck()
	h := cr.GetAttributes().GetRequest().GetHttp()
	require.Equal(t, "true", h.GetHeaders()["x-envoy-auth-partial-body"])
	require.Equal(t, []byte(body[:64]), h.GetRawBody())
	require.Equal(t, strconv.Itoa(len(body)), h.GetHeaders()["content-length"])
	up := <-rg.upCalls
	require.EqualValues(t, len(body), up.ContentLength, "the whole body still goes upstream")

	cfg2, err := envoysim.LoadShipped()
	require.NoError(t, err)
	cfg2.ExtAuthz.Body.MaxRequestBytes = 64
	cfg2.ExtAuthz.Body.AllowPartialMessage = false
	rg2 := startRig(t, cfg2, nil)
	res = post(t, rg2.sim.URL()+"/v1/chat/completions", body, nil)
	require.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
	require.Zero(t, rg2.sim.Stats().Checks, "413 before any Check")
	e := rg2.waitEntries(t, 1)[0]
	require.Equal(t, "request_payload_too_large", e.GetResponse().GetResponseCodeDetails())
}

func TestDeniedAndErrorReplies(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	md, _ := structpb.NewStruct(map[string]any{"purser_decision": "denied"})
	rg.purser.decide = func(r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		if r.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-mode"] == "error" {
			return nil, status.Error(codes.Unavailable, "down")
		}
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_RESOURCE_EXHAUSTED)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
				Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "content-type", Value: "application/json"}},
					{Header: &corev3.HeaderValue{Key: "retry-after", Value: "7"}}},
				Body: `{"error":{"message":"no"}}`,
			}},
			DynamicMetadata: md,
		}, nil
	}
	body := `{"model":"gpt-4o-mini","messages":[]}`
	res := post(t, rg.sim.URL()+"/v1/chat/completions", body, nil)
	b, _ := io.ReadAll(res.Body)
	require.Equal(t, http.StatusTooManyRequests, res.StatusCode)
	require.Equal(t, "7", res.Header.Get("retry-after"))
	require.Equal(t, "application/json", res.Header.Get("content-type"))
	require.JSONEq(t, `{"error":{"message":"no"}}`, string(b))

	res = post(t, rg.sim.URL()+"/v1/chat/completions", body, map[string]string{"x-mode": "error"})
	b, _ = io.ReadAll(res.Body)
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "status_on_error")
	require.Equal(t, "1", res.Header.Get("retry-after"), "local_reply_config mapper")
	require.Contains(t, string(b), "budget_service_unavailable")
	require.Zero(t, rg.sim.Stats().Upstream, "nothing went upstream")
	require.Empty(t, rg.upCalls)

	es := rg.waitEntries(t, 2)
	byDetails := map[string]*alsdata.HTTPAccessLogEntry{}
	for _, e := range es {
		byDetails[e.GetResponse().GetResponseCodeDetails()] = e
	}
	d := byDetails["ext_authz_denied"]
	require.NotNil(t, d)
	require.EqualValues(t, 429, d.GetResponse().GetResponseCode().GetValue())
	require.Equal(t, "denied", d.GetCommonProperties().GetMetadata().GetFilterMetadata()[envoysim.ExtAuthzNamespace].GetFields()["purser_decision"].GetStringValue())
	require.NotContains(t, d.GetCommonProperties().GetMetadata().GetFilterMetadata()[envoysim.ExtAuthzNamespace].GetFields(), envoysim.ExtAuthzDurationKey)
	require.Equal(t, alsdata.ResponseFlags_Unauthorized_EXTERNAL_SERVICE, d.GetCommonProperties().GetResponseFlags().GetUnauthorizedDetails().GetReason())
	require.Empty(t, d.GetCommonProperties().GetUpstreamCluster())
	require.Nil(t, d.GetCommonProperties().GetTimeToFirstUpstreamTxByte())
	er := byDetails["ext_authz_error"]
	require.NotNil(t, er)
	require.EqualValues(t, 503, er.GetResponse().GetResponseCode().GetValue())
	require.Nil(t, er.GetCommonProperties().GetMetadata(), "no ext_authz metadata without an answer")
	require.NotEmpty(t, er.GetRequest().GetRequestId(), "x-request-id is the fallback join key")
}

func TestOKMutationsMetadataAndUsage(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	rg.purser.decide = func(*authv3.CheckRequest) (*authv3.CheckResponse, error) {
		r := okResponse(map[string]any{"reservation_id": "r-1", "purser_decision": "reserved"})
		r.GetOkResponse().Headers = append(r.GetOkResponse().Headers,
			&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-added", Value: "1"}},
			&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-keep", Value: "new"}, AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT},
		)
		r.GetOkResponse().HeadersToRemove = []string{"x-secret", ":path"}
		r.GetOkResponse().ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-budget-remaining", Value: "9"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
		return r, nil
	}
	res := post(t, rg.sim.URL()+"/v1/chat/completions", `{"model":"gpt-4o-mini","max_tokens":50,"messages":[]}`, map[string]string{
		"x-secret": "s", "x-keep": "old", fakellm.HeaderInputTokens: "12", fakellm.HeaderOutputTokens: "34",
	})
	_, _ = io.ReadAll(res.Body)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "9", res.Header.Get("x-budget-remaining"))
	up := <-rg.upCalls
	require.Equal(t, "1", up.Header.Get("x-added"))
	require.Equal(t, "old", up.Header.Get("x-keep"))
	require.Empty(t, up.Header.Get("x-secret"))
	e := rg.waitEntries(t, 1)[0]
	fm := e.GetCommonProperties().GetMetadata().GetFilterMetadata()
	az := fm[envoysim.ExtAuthzNamespace].GetFields()
	require.Equal(t, "r-1", az["reservation_id"].GetStringValue())
	require.Contains(t, az, envoysim.ExtAuthzDurationKey)
	u := fm["purser.usage"].GetFields()
	require.EqualValues(t, 12, u["usage.prompt_tokens"].GetNumberValue())
	require.EqualValues(t, 34, u["usage.completion_tokens"].GetNumberValue())
	require.Equal(t, "gpt-4o-mini", u["model"].GetStringValue())
	c := e.GetCommonProperties()
	require.Equal(t, "openai", c.GetUpstreamCluster())
	require.Equal(t, "openai-chat", c.GetRouteName())
	require.NotNil(t, c.GetTimeToFirstUpstreamTxByte())
	require.Equal(t, alsdata.AccessLogType_DownstreamEnd, c.GetAccessLogType())
	require.Equal(t, "via_upstream", e.GetResponse().GetResponseCodeDetails())
	require.EqualValues(t, 200, e.GetResponse().GetResponseCode().GetValue())
	require.Equal(t, map[string]string{"content-type": "application/json"}, e.GetRequest().GetRequestHeaders())
	require.Equal(t, up.Header.Get("x-request-id"), e.GetRequest().GetRequestId())
	msgs := rg.purser.messages()
	require.Equal(t, "purser", msgs[0].GetIdentifier().GetLogName())
	require.Equal(t, "purser-envoy", msgs[0].GetIdentifier().GetNode().GetId())
}

func TestNoRouteAndDisabledRoute(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	res, err := http.Get(rg.sim.URL() + "/v1/files")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	res, err = http.Get(rg.sim.URL() + "/healthz")
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, "ok\n", string(b))
	require.Zero(t, rg.sim.Stats().Checks, "no Check without a route or with ext_authz disabled")
	es := rg.waitEntries(t, 2)
	var nr bool
	for _, e := range es {
		nr = nr || e.GetCommonProperties().GetResponseFlags().GetNoRouteFound()
	}
	require.True(t, nr)
}

// heldSSE is an upstream that sends an event stream's headers and first, then holds the
// response until release is closed (and sends rest) or the client goes away.
func heldSSE(first, rest string, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, first)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
			_, _ = io.WriteString(w, rest)
		}
	})
}

// TestSSE_StreamedWithoutBuffering: the client reads the first event while the upstream is
// still holding the rest; usage comes from the last matching event.
func TestSSE_StreamedWithoutBuffering(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	up := heldSSE("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
		"event: message_delta\r\ndata: {\"type\":\"message_delta\",\r\ndata: \"usage\":{\"output_tokens\":7}}\r\n\r\n: comment\n\ndata: [DONE]\n\n", release)
	rg := startRig(t, nil, up)
	res := post(t, rg.sim.URL()+"/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[]}`, nil)
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "event: message_start\n", line, "first event before the upstream finished")
	close(release)
	_, _ = io.ReadAll(br)
	e := rg.waitEntries(t, 1)[0]
	u := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["purser.usage"].GetFields()
	require.EqualValues(t, 5, u["message.usage.input_tokens"].GetNumberValue())
	require.EqualValues(t, 7, u["usage.output_tokens"].GetNumberValue(), "multi-line data joined, CRLF")
	require.Equal(t, "m", u["message.model"].GetStringValue())
}

func TestDownstreamReset_FlagsAndNoFallback(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	up := heldSSE("data: {\"model\":\"gpt-4o-mini\"}\n\n", "", release)
	defer close(release)
	rg := startRig(t, nil, up)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, rg.sim.URL()+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o-mini","stream":true}`))
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, err = bufio.NewReader(res.Body).ReadString('\n')
	require.NoError(t, err)
	cancel()
	res.Body.Close()
	e := rg.waitEntries(t, 1)[0]
	require.True(t, e.GetCommonProperties().GetResponseFlags().GetDownstreamConnectionTermination(), "HTTP/1.1 client gone: DC (conn_manager_impl.cc)")
	require.EqualValues(t, 200, e.GetResponse().GetResponseCode().GetValue(), "headers were sent")
	require.NotNil(t, e.GetCommonProperties().GetTimeToFirstUpstreamTxByte())
}

func TestCheckFaults(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	// The first Check ("timeout") is answered only when the test ends, long after Envoy's
	// timer; the second ("lose") at once, and the answer is lost on the way back.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // runs before the rig's own cleanup stops the server
	var calls atomic.Int32
	rg.purser.decide = func(*authv3.CheckRequest) (*authv3.CheckResponse, error) {
		if calls.Add(1) == 1 {
			<-release
		}
		return okResponse(map[string]any{"reservation_id": "r"}), nil
	}
	rg.sim.SetCheckFault(func(r *http.Request) envoysim.CheckFault {
		switch r.Header.Get("x-fault") {
		case "timeout":
			return envoysim.CheckFault{TimeoutAfter: 20 * time.Millisecond}
		case "lose":
			return envoysim.CheckFault{LoseAnswer: true}
		}
		return envoysim.CheckFault{}
	})
	for _, f := range []string{"timeout", "lose"} {
		res := post(t, rg.sim.URL()+"/v1/chat/completions", `{"model":"gpt-4o-mini"}`, map[string]string{"x-fault": f})
		require.Equal(t, http.StatusServiceUnavailable, res.StatusCode, f)
	}
	require.Zero(t, rg.sim.Stats().Upstream, "nothing went upstream")
	require.Empty(t, rg.upCalls)
	require.EqualValues(t, 2, rg.sim.Stats().CheckError)
}

// TestALS_BatchingOverflowLossDuplicates drives the logger's batching and faults.
func TestALS_BatchingOverflowLossDuplicates(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	cfg.AccessLogs[0].FlushInterval = time.Hour // only size-triggered and explicit flushes
	cfg.AccessLogs[0].BufferSize = 1000         // about three entries (~315 bytes each)
	rg := startRig(t, cfg, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	get := func() {
		res, err := http.Get(rg.sim.URL() + "/v1/models")
		require.NoError(t, err)
		res.Body.Close()
	}
	// Sink blocked: entries accumulate, then overflow is dropped.
	rg.sim.BlockAccessLog(true)
	for range 12 {
		get()
	}
	rg.waitLogged(t, 12)
	st := rg.sim.ALSStats()
	require.Positive(t, st.Dropped, "buffer_size_bytes is also the drop threshold")
	require.Positive(t, st.StreamFailures)
	require.Zero(t, st.Flushed)
	kept := rg.sim.PendingEntries()
	require.Positive(t, kept)
	require.EqualValues(t, 12, st.Written+st.Dropped)
	// Back: the kept batch is delivered on a new stream whose first message has the identifier.
	rg.sim.BlockAccessLog(false)
	rg.sim.FlushAccessLogs()
	rg.waitEntries(t, kept)
	msgs := rg.purser.messages()
	require.NotNil(t, msgs[0].GetIdentifier())

	// A lost batch never arrives; the next stream starts with an identifier again.
	before := len(rg.purser.entries())
	opened := rg.sim.ALSStats().StreamsOpened
	rg.sim.LoseAccessLogBatches(1)
	get()
	rg.waitLogged(t, 13)
	rg.sim.FlushAccessLogs()
	require.EqualValues(t, 1, rg.sim.ALSStats().Lost)
	nmsgs := len(rg.purser.messages())
	get() // one request per worker: the worker whose stream broke opens a new one
	get()
	rg.waitLogged(t, 15)
	rg.sim.FlushAccessLogs()
	rg.waitEntries(t, before+2)
	require.Equal(t, opened+1, rg.sim.ALSStats().StreamsOpened)
	withID := 0
	for _, m := range rg.purser.messages()[nmsgs:] {
		if m.GetIdentifier() != nil {
			withID++
		}
	}
	require.Equal(t, 1, withID, "exactly the new stream's first message carries the identifier")

	// A duplicated batch arrives twice.
	before = len(rg.purser.entries())
	rg.sim.DuplicateAccessLogBatches(1)
	get()
	rg.waitLogged(t, 16)
	rg.sim.FlushAccessLogs()
	es := rg.waitEntries(t, before+2)
	require.Equal(t, es[len(es)-1].GetRequest().GetRequestId(), es[len(es)-2].GetRequest().GetRequestId())
}

func TestRenderForEnvoy_PointsTheDemoAtTheTest(t *testing.T) {
	t.Parallel()
	src, err := envoy.Files.ReadFile("envoy-demo.yaml")
	require.NoError(t, err)
	out, err := envoysim.RenderForEnvoy(src, envoysim.RenderOptions{
		ListenerPort: 10001, AdminPort: 10002, GRPC: map[string][]string{"purser": {"127.0.0.1:9001", "127.0.0.1:9002"}},
		Upstream: "127.0.0.1:8001", SecretsDir: "/tmp/s",
	})
	require.NoError(t, err)
	cfg, err := envoysim.Load(out)
	require.NoError(t, err, "the rendered bootstrap is still a valid, simulable config")
	bs := cfg.Bootstrap
	require.NoError(t, bs.ValidateAll(), "PGV rules of the bootstrap")
	require.EqualValues(t, 10002, bs.GetAdmin().GetAddress().GetSocketAddress().GetPortValue())
	require.EqualValues(t, 10001, bs.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress().GetPortValue())
	eps := func(name string) []string {
		var out []string
		for _, e := range cfg.Clusters[name].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints() {
			a := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, a.GetAddress()+":"+strconv.Itoa(int(a.GetPortValue())))
		}
		return out
	}
	require.Equal(t, []string{"127.0.0.1:9001", "127.0.0.1:9002"}, eps("purser"))
	for _, c := range []string{"openai", "anthropic", "gemini"} {
		require.Equal(t, []string{"127.0.0.1:8001"}, eps(c))
	}
	for _, cf := range cfg.Credentials {
		require.Equal(t, "/tmp/s", path.Dir(cf.SecretPath))
	}
	// Everything else is as shipped: the same ext_authz and access-log settings.
	require.Equal(t, 500*time.Millisecond, cfg.ExtAuthz.Timeout)
	require.Equal(t, 250*time.Millisecond, cfg.AccessLogs[0].FlushInterval)
}

// TestGeminiStreams_BothForms runs the shipped envoy.yaml's three Gemini routes: alt=sse
// streams through sse_to_metadata, the JSON-array form (no alt=sse) through the Lua scan with
// json_to_metadata switched off on its route (so it is not held), generateContent through
// json_to_metadata. Each carries the last, cumulative usageMetadata.
func TestGeminiStreams_BothForms(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	h := map[string]string{fakellm.HeaderInputTokens: "10", fakellm.HeaderOutputTokens: "20", fakellm.HeaderCachedTokens: "3"}
	body := `{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100}}`
	cases := []struct {
		path, route string
		held        bool
		usage       func(map[string]*structpb.Value) (prompt, candidates float64)
	}{
		{"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "gemini-stream", false,
			func(u map[string]*structpb.Value) (float64, float64) {
				return u["usageMetadata.promptTokenCount"].GetNumberValue(), u["usageMetadata.candidatesTokenCount"].GetNumberValue()
			}},
		{"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=SSE", "gemini-stream", false, // ignore_case
			func(u map[string]*structpb.Value) (float64, float64) {
				return u["usageMetadata.promptTokenCount"].GetNumberValue(), u["usageMetadata.candidatesTokenCount"].GetNumberValue()
			}},
		{"/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini-stream-json", false,
			func(u map[string]*structpb.Value) (float64, float64) {
				m := u["usageMetadata"].GetStructValue().GetFields() // the Lua scan writes the object
				return m["promptTokenCount"].GetNumberValue(), m["candidatesTokenCount"].GetNumberValue()
			}},
		{"/v1beta/models/gemini-2.5-flash:generateContent", "gemini-generate", true,
			func(u map[string]*structpb.Value) (float64, float64) {
				return u["usageMetadata.promptTokenCount"].GetNumberValue(), u["usageMetadata.candidatesTokenCount"].GetNumberValue()
			}},
	}
	for i, tc := range cases {
		res := post(t, rg.sim.URL()+tc.path, body, h)
		b, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode, tc.path)
		require.NotEmpty(t, b)
		// json_to_metadata holds a body and sends it with its length; a stream passes as it comes.
		require.Equal(t, tc.held, res.ContentLength >= 0, "%s: held by json_to_metadata", tc.path)
		es := rg.waitEntries(t, i+1)
		var e *alsdata.HTTPAccessLogEntry
		for _, x := range es {
			if x.GetRequest().GetPath() == tc.path {
				e = x
			}
		}
		require.NotNil(t, e, tc.path)
		require.Equal(t, tc.route, e.GetCommonProperties().GetRouteName(), tc.path)
		u := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["purser.usage"].GetFields()
		prompt, cands := tc.usage(u)
		require.Equal(t, 10.0, prompt, "%s: usage %v", tc.path, u)
		require.Equal(t, 20.0, cands, "%s: the last chunk's cumulative count", tc.path)
	}
}

// TestLuaVariant_EndToEnd runs envoy-lua.yaml: the one Lua filter reads JSON and SSE usage as
// whole objects, for every route.
func TestLuaVariant_EndToEnd(t *testing.T) {
	t.Parallel()
	b, err := envoy.Files.ReadFile("envoy-lua.yaml")
	require.NoError(t, err)
	cfg, err := envoysim.Load(b)
	require.NoError(t, err)
	rg := startRig(t, cfg, nil)
	h := map[string]string{fakellm.HeaderInputTokens: "12", fakellm.HeaderOutputTokens: "34"}
	for i, body := range []string{
		`{"model":"gpt-4o-mini","messages":[]}`,
		`{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}`,
	} {
		res := post(t, rg.sim.URL()+"/v1/chat/completions", body, h)
		_, _ = io.ReadAll(res.Body)
		require.Equal(t, http.StatusOK, res.StatusCode)
		e := rg.waitEntries(t, i+1)[i]
		u := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["purser.usage"].GetFields()["usage"].GetStructValue().GetFields()
		require.EqualValues(t, 12, u["prompt_tokens"].GetNumberValue(), body)
		require.EqualValues(t, 34, u["completion_tokens"].GetNumberValue(), body)
	}
}

// TestCompression_UsageNeedsIdentity: the client's Accept-Encoding (Go's transport sends gzip
// by itself, as every official Go SDK does) reaches the provider unchanged through Envoy
// (the router forwards request headers as they are), the answer comes back compressed, and the
// usage filters find nothing in it; purser's accept-encoding: identity makes the same call
// report its usage. content-encoding is in the access-log entry, so purser can tell.
func TestCompression_UsageNeedsIdentity(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	var strip atomic.Bool
	rg.purser.decide = func(*authv3.CheckRequest) (*authv3.CheckResponse, error) {
		r := okResponse(map[string]any{"reservation_id": "r"})
		if !strip.Load() {
			r.GetOkResponse().Headers = nil // an OK without purser's header mutation
		}
		return r, nil
	}
	h := map[string]string{fakellm.HeaderInputTokens: "12", fakellm.HeaderOutputTokens: "34"}
	for i, identity := range []bool{false, true} {
		strip.Store(identity)
		for j, body := range []string{`{"model":"gpt-4o-mini","messages":[]}`,
			`{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}`} {
			res := post(t, rg.sim.URL()+"/v1/chat/completions", body, h) // Go adds accept-encoding: gzip
			_, err := io.ReadAll(res.Body)
			require.NoError(t, err, "Go's transport decodes what it asked for")
			require.Equal(t, http.StatusOK, res.StatusCode)
			up := <-rg.upCalls
			n := 2*i + j + 1
			e := rg.waitEntries(t, n)[n-1]
			u := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["purser.usage"].GetFields()
			enc := e.GetResponse().GetResponseHeaders()["content-encoding"]
			if identity {
				require.Equal(t, "identity", up.Header.Get("accept-encoding"))
				require.Empty(t, enc)
				require.EqualValues(t, 12, u["usage.prompt_tokens"].GetNumberValue(), body)
			} else {
				require.Equal(t, "gzip", up.Header.Get("accept-encoding"), "Envoy forwards the client's header")
				require.Equal(t, "gzip", enc, "the access log shows the answer was compressed")
				require.NotContains(t, u, "usage.prompt_tokens", "no filter reads usage in compressed bytes")
			}
		}
	}
}
