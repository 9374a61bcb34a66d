package envoysim_test

// Behaviours where the stand-in follows Envoy's source rather than what would be convenient;
// each test names the Envoy file it mirrors.

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/testkit"
)

// Mirrors source/extensions/filters/http/ext_authz/ext_authz.cc (decodeData, isBufferFull: the
// Check starts once the buffered chunks reach max_request_bytes) and
// source/extensions/filters/common/ext_authz/check_request_utils.cc (setRequestBody:
// x-envoy-auth-partial-body is "true" only when the buffer holds more than what is sent). A
// chunk ending exactly on the limit gives "false" while the rest of the body is still coming.
func TestFidelity_PartialBodyFlagOnAChunkAtTheLimit(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	const limit = 1000
	cfg.ExtAuthz.Body.MaxRequestBytes = limit
	rg := startRig(t, cfg, nil)
	checked := make(chan *authv3.CheckRequest, 1)
	rg.purser.decide = func(r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		checked <- r
		return okResponse(nil), nil
	}
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"` + strings.Repeat("x", 3000) + `"}]}`
	for _, first := range []int{limit, limit + 10} {
		pr, pw := io.Pipe()
		req, err := http.NewRequest(http.MethodPost, rg.sim.URL()+"/v1/chat/completions", pr)
		require.NoError(t, err)
		req.ContentLength = int64(len(body))
		req.Header.Set("content-type", "application/json")
		done := make(chan *http.Response, 1)
		go func() {
			res, err := http.DefaultClient.Do(req)
			if err == nil {
				done <- res
			}
			close(done)
		}()
		_, err = io.WriteString(pw, body[:first]) // one chunk, then nothing until the Check
		require.NoError(t, err)
		var cr *authv3.CheckRequest
		select {
		case cr = <-checked:
		case <-time.After(30 * time.Second):
			t.Fatal("no Check")
		}
		_, err = io.WriteString(pw, body[first:])
		require.NoError(t, err)
		require.NoError(t, pw.Close())
		res := <-done
		require.NotNil(t, res)
		_, _ = io.ReadAll(res.Body)
		res.Body.Close()
		h := cr.GetAttributes().GetRequest().GetHttp()
		require.Len(t, h.GetRawBody(), limit, "the Check carries max_request_bytes")
		require.EqualValues(t, first, h.GetSize(), "size is what was buffered")
		want := strconv.FormatBool(first != limit)
		require.Equal(t, want, h.GetHeaders()["x-envoy-auth-partial-body"], "first chunk %d bytes", first)
		require.Equal(t, strconv.Itoa(len(body)), h.GetHeaders()["content-length"], "content-length still tells the body is longer")
	}
}

// Mirrors source/extensions/access_loggers/common/grpc_access_logger.h: flush() writes to the
// stream without waiting; while the stream is above its write-buffer high watermark the batch
// stays (grpc_entries_flush_failed), log() drops entries once buffer_size_bytes are pending
// (logs_dropped), and the worker never blocks on the sink: requests go on being served while a
// sink reads nothing.
func TestFidelity_SlowSinkDropsEntriesNeverBlocksRequests(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	cfg.AccessLogs[0].BufferSize = 4000
	cfg.AccessLogs[0].FlushInterval = 5 * time.Millisecond
	f := &fakePurser{received: make(chan struct{}, 1)}
	stuck := &stuckSink{release: make(chan struct{})}
	g := grpc.NewServer()
	authv3.RegisterAuthorizationServer(g, f)
	alsv3.RegisterAccessLogServiceServer(g, stuck)
	addr := testkit.Serve(t, g)
	t.Cleanup(func() { close(stuck.release) }) // before the server stops
	upstream := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	up := newUpstream(t, upstream)
	sim, err := envoysim.New(envoysim.Options{Config: cfg, GRPC: map[string][]string{"purser": {addr}}, Upstream: up, Workers: 1})
	require.NoError(t, err)
	require.NoError(t, sim.Start())
	t.Cleanup(sim.Close)

	// Entries carry a 2 KiB header each, so gRPC's 64 KiB flow-control window fills after a
	// few dozen: the sink never reads.
	client := &http.Client{Timeout: 20 * time.Second}
	const n = 300
	for i := range n {
		req, err := http.NewRequest(http.MethodGet, sim.URL()+"/v1/models", nil)
		require.NoError(t, err)
		req.Header.Set("user-agent", strings.Repeat("u", 2048))
		res, err := client.Do(req)
		require.NoError(t, err, "request %d: the access log must never hold requests back", i)
		res.Body.Close()
	}
	require.Eventually(t, func() bool { return len(sim.Entries()) == n }, 20*time.Second, 5*time.Millisecond)
	st := sim.ALSStats()
	require.Positive(t, st.Dropped, "past buffer_size_bytes entries are dropped")
	require.Positive(t, st.FlushFailed, "batches kept while the stream is above its watermark")
	require.EqualValues(t, n, st.Written+st.Dropped)
	require.Less(t, st.Flushed, int64(n))
}

// stuckSink accepts access-log streams and reads nothing until released.
type stuckSink struct {
	alsv3.UnimplementedAccessLogServiceServer
	release chan struct{}
}

func (s *stuckSink) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	select {
	case <-s.release:
	case <-stream.Context().Done():
	}
	return nil
}

func newUpstream(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// Mirrors source/extensions/access_loggers/common/grpc_access_logger.h and its 1.39 fix
// (changelogs/1.39.0.yaml: a stream-creation failure made log() return true): before 1.39 a
// batch that found no stream was thrown away, since 1.39 it stays for the next flush. The
// shipped configs claim 1.38+, so both are simulated.
func TestFidelity_StreamCreationFailureBeforeAndSince139(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version    string
		kept, lost bool
	}{{"1.38", false, true}, {"1.39", true, false}, {"", true, false}} {
		cfg, err := envoysim.LoadShipped()
		require.NoError(t, err)
		cfg.AccessLogs[0].FlushInterval = time.Hour // explicit flushes only
		f, addr := startFakePurser(t)
		up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
		sim, err := envoysim.New(envoysim.Options{Config: cfg, GRPC: map[string][]string{"purser": {addr}}, Upstream: up, Workers: 1, EnvoyVersion: tc.version})
		require.NoError(t, err)
		require.NoError(t, sim.Start())
		t.Cleanup(sim.Close)
		sim.BlockAccessLog(true)
		res, err := http.Get(sim.URL() + "/v1/models")
		require.NoError(t, err)
		res.Body.Close()
		require.Eventually(t, func() bool { return sim.PendingEntries() == 1 }, 10*time.Second, time.Millisecond)
		sim.FlushAccessLogs() // the stream cannot be created
		st := sim.ALSStats()
		require.EqualValues(t, 1, st.StreamFailures, tc.version)
		if tc.lost {
			require.Zero(t, sim.PendingEntries(), "%s: the batch was discarded", tc.version)
			require.EqualValues(t, 1, st.Discarded, tc.version)
			require.Zero(t, st.Dropped, "%s: and Envoy counted nothing", tc.version)
		} else {
			require.Equal(t, 1, sim.PendingEntries(), "%s: the batch is kept", tc.version)
			require.EqualValues(t, 1, st.FlushFailed, tc.version)
		}
		sim.BlockAccessLog(false)
		sim.FlushAccessLogs()
		if tc.kept {
			require.Eventually(t, func() bool { return len(f.entries()) == 1 }, 10*time.Second, time.Millisecond, "%s: delivered once the sink is back", tc.version)
		} else {
			require.Empty(t, f.entries(), "%s: never delivered", tc.version)
		}
	}
	_, err := envoysim.New(envoysim.Options{EnvoyVersion: "2.0", GRPC: map[string][]string{"purser": {"127.0.0.1:1"}}})
	require.ErrorContains(t, err, "EnvoyVersion")
}

// Mirrors source/common/http/conn_manager_utility.cc (cleanInternalHeaders): from an external
// request Envoy removes the x-envoy-* headers it would act on (retries, timeouts, tracing, ...),
// not every x-envoy-* header; the others reach the filters and the upstream.
func TestFidelity_ExternalRequestsKeepUnknownXEnvoyHeaders(t *testing.T) {
	t.Parallel()
	rg := startRig(t, nil, nil)
	res := post(t, rg.sim.URL()+"/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[]}`, map[string]string{
		"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "9", "x-envoy-upstream-rq-timeout-ms": "1",
		"x-envoy-downstream-service-cluster": "spoofed", "x-envoy-custom": "kept",
	})
	_, _ = io.ReadAll(res.Body)
	require.Equal(t, http.StatusOK, res.StatusCode)
	cr, _ := rg.purser.lastCheck()
	hd := cr.GetAttributes().GetRequest().GetHttp().GetHeaders()
	for _, gone := range []string{"x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-upstream-rq-timeout-ms", "x-envoy-downstream-service-cluster"} {
		require.NotContains(t, hd, gone)
	}
	require.Equal(t, "kept", hd["x-envoy-custom"])
	up := <-rg.upCalls
	require.Equal(t, "kept", up.Header.Get("x-envoy-custom"))
	require.Empty(t, up.Header.Get("x-envoy-retry-on"))
}

// Mirrors source/extensions/filters/common/ext_authz/check_request_utils.cc (createHttpCheck:
// route_metadata_context is always set, empty without route metadata) and
// source/extensions/access_loggers/grpc/grpc_access_log_utils.cc (stream_id from the stream id
// provider, the x-request-id; upstream_cluster and upstream_remote_address from the chosen host
// even when connecting to it failed).
func TestFidelity_RouteMetadataStreamIDAndUpstreamOnConnectFailure(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	f, addr := startFakePurser(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there any more: connection refused
	sim, err := envoysim.New(envoysim.Options{Config: cfg, GRPC: map[string][]string{"purser": {addr}}, Upstream: "http://" + dead})
	require.NoError(t, err)
	require.NoError(t, sim.Start())
	t.Cleanup(sim.Close)
	res := post(t, sim.URL()+"/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[]}`, nil)
	_, _ = io.ReadAll(res.Body)
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	cr, _ := f.lastCheck()
	require.NotNil(t, cr.GetAttributes().GetRouteMetadataContext(), "set even when the route has no purser metadata")
	require.Empty(t, cr.GetAttributes().GetRouteMetadataContext().GetFilterMetadata())

	var e *alsdata.HTTPAccessLogEntry
	require.Eventually(t, func() bool {
		sim.FlushAccessLogs()
		es := f.entries()
		if len(es) == 0 {
			return false
		}
		e = es[0]
		return true
	}, 10*time.Second, 5*time.Millisecond)
	c := e.GetCommonProperties()
	require.True(t, c.GetResponseFlags().GetUpstreamConnectionFailure())
	require.Equal(t, e.GetRequest().GetRequestId(), c.GetStreamId(), "stream_id is the x-request-id")
	require.Equal(t, "openai", c.GetUpstreamCluster(), "the cluster of the host that was tried")
	sa := c.GetUpstreamRemoteAddress().GetSocketAddress()
	require.Equal(t, dead, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
	require.Nil(t, c.GetTimeToFirstUpstreamTxByte(), "no byte went upstream")

}
