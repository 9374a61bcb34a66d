// Package envoysim is a Go stand-in for Envoy, driven by purser's shipped bootstrap
// (envoy/envoy.yaml). It is an HTTP server that, for each request, does what
// shared/reference/envoy.md sections 1-5 describe: the HCM sets x-request-id, ext_authz
// builds the CheckRequest as CheckRequestUtils::createHttpCheck does and calls purser over
// gRPC with the configured timeout and initial metadata, a denial or an error becomes a local
// reply (status_on_error, local_reply_config), an OK applies its header mutations and stores
// its dynamic metadata, the route forwards to the upstream (the fake LLM) and streams the
// answer back, json_to_metadata / sse_to_metadata copy usage into dynamic metadata, and at
// the end of the stream the http_grpc access logger batches an HTTPAccessLogEntry per worker
// and ships it to purser's StreamAccessLogs.
//
// Everything configurable comes from the bootstrap; unsupported filters or fields are load
// errors. Faults (Faults) break, drop or duplicate access-log batches, block the sink, and
// make Envoy's Check timer fire early or lose the Check's answer.
//
// The Lua filter's response path runs in gopher-lua (lua.go); a route's FilterConfig switches
// any filter on or off; Options.EnvoyVersion selects release-specific behaviour. Where Envoy's
// behaviour is inconvenient the stand-in follows it (fidelity_test.go names the source file of
// each): a request chunk ending on max_request_bytes gives x-envoy-auth-partial-body: false;
// the access logger drops entries rather than hold requests back on a slow sink; an HTTP/1.1
// client that leaves is DC, not DR; only the x-envoy-* headers Envoy acts on are removed.
//
// Not simulated: TLS (listener or upstream), HTTP/2 downstream, active health checks and
// outlier detection, circuit breakers, overload manager, retries, internal redirects,
// idle_timeout, per-route configs inside FilterConfig, Lua's request path, stats, hot restart.
package envoysim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/envoy"
)

// Options configure a Sim.
type Options struct {
	// Config is the parsed bootstrap (LoadShipped() when nil).
	Config *Config
	// GRPC maps a gRPC cluster name (the ext_authz and access-log cluster, "purser" in
	// envoy.yaml) to its hosts, host:port each. Several hosts are balanced like
	// lb_policy LEAST_REQUEST (fewest active requests; ties round-robin).
	GRPC map[string][]string
	// Upstream is the base URL (http://127.0.0.1:port) every other cluster points at;
	// UpstreamFor overrides it per cluster name.
	Upstream    string
	UpstreamFor map[string]string
	// Workers is Envoy's --concurrency: one access-log stream per worker; requests are
	// assigned to workers round-robin (default 2).
	Workers int
	// Secrets holds the SDS files named by credential injectors, looked up by base name
	// under SecretsDir (default envoy.Files, "secrets").
	Secrets    fs.FS
	SecretsDir string
	// Logf, when set, receives a line per request.
	Logf func(format string, args ...any)
	// Addr is the listener's address (default 127.0.0.1:0, a free loopback port).
	Addr string
	// EnvoyVersion is the release whose behaviour the stand-in follows where releases
	// differ, "1.NN" (default 1.40): before 1.39 a failed access-log stream creation
	// discarded the batch (accesslog.go).
	EnvoyVersion string
}

// Sim is a running simulated Envoy.
type Sim struct {
	cfg   *Config
	opts  Options
	srv   *http.Server
	ln    net.Listener
	url   string
	hosts map[string]*grpcCluster

	upstream *http.Client
	secrets  map[string]string // credential filter name -> header value
	minor    int               // Envoy 1.minor (Options.EnvoyVersion)

	workers []*worker
	rr      atomic.Uint64

	als       ALSStats
	alsFaults alsFaults
	streamSeq atomic.Int64

	checkFault atomic.Pointer[func(*http.Request) CheckFault]

	mu         sync.Mutex
	entries    []*alsdata.HTTPAccessLogEntry // every entry logged, in order
	deliveries []delivery
	stats      Stats
}

type worker struct {
	loggers []*alsLogger
}

type delivery struct {
	id string
	st *alsStream
}

// Stats counts what the simulated filters did.
type Stats struct {
	Requests   int64
	Checks     int64 // Check calls made
	CheckError int64 // gRPC errors and timeouts (ext_authz.error)
	Upstream   int64 // requests forwarded upstream
}

// New builds a Sim; Start serves it.
func New(o Options) (*Sim, error) {
	if o.Config == nil {
		cfg, err := LoadShipped()
		if err != nil {
			return nil, err
		}
		o.Config = cfg
	}
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.Secrets == nil {
		o.Secrets, o.SecretsDir = envoy.Files, "secrets"
	}
	s := &Sim{cfg: o.Config, opts: o, hosts: map[string]*grpcCluster{}, secrets: map[string]string{}, minor: 40}
	if o.EnvoyVersion != "" {
		m, ok := strings.CutPrefix(o.EnvoyVersion, "1.")
		n, err := strconv.Atoi(m)
		if !ok || err != nil || n < 29 {
			return nil, fmt.Errorf("envoysim: EnvoyVersion %q: want 1.29 or later, as 1.NN", o.EnvoyVersion)
		}
		s.minor = n
	}
	for _, cf := range o.Config.Credentials {
		v, err := readSDSSecret(o.Secrets, o.SecretsDir, cf.SecretPath, cf.SecretName)
		if err != nil {
			return nil, fmt.Errorf("envoysim: credential %s: %w", cf.Name, err)
		}
		s.secrets[cf.Name] = v
	}
	for name, addrs := range o.GRPC {
		gc, err := s.newGRPCCluster(name, addrs)
		if err != nil {
			s.closeClusters()
			return nil, err
		}
		s.hosts[name] = gc
	}
	if az := o.Config.ExtAuthz; az != nil && s.hosts[az.Cluster] == nil {
		s.closeClusters()
		return nil, fmt.Errorf("envoysim: no hosts for ext_authz cluster %q (Options.GRPC)", az.Cluster)
	}
	for _, al := range o.Config.AccessLogs {
		if s.hosts[al.Cluster] == nil {
			s.closeClusters()
			return nil, fmt.Errorf("envoysim: no hosts for access-log cluster %q (Options.GRPC)", al.Cluster)
		}
	}
	s.upstream = &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DisableCompression:  true, // bytes pass through untouched, as through Envoy
			MaxIdleConnsPerHost: 256,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for i := 0; i < o.Workers; i++ {
		w := &worker{}
		for _, al := range o.Config.AccessLogs {
			w.loggers = append(w.loggers, newALSLogger(s, al, i))
		}
		s.workers = append(s.workers, w)
	}
	return s, nil
}

// Start listens on Options.Addr (127.0.0.1:0 by default) and serves until Close.
func (s *Sim) Start() error {
	addr := s.opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return nil
}

// URL is the listener's base URL.
func (s *Sim) URL() string { return s.url }

// Close stops serving, stops the access loggers without a final flush (as Envoy exits), and
// closes the gRPC connections.
func (s *Sim) Close() {
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.srv.Shutdown(ctx)
		cancel()
		_ = s.srv.Close()
	}
	for _, w := range s.workers {
		for _, l := range w.loggers {
			l.close()
		}
	}
	s.closeClusters()
	s.upstream.CloseIdleConnections()
}

func (s *Sim) closeClusters() {
	for _, c := range s.hosts {
		for _, h := range c.hosts {
			_ = h.conn.Close()
		}
	}
}

// Stats returns the request-path counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// ALSStats returns the access loggers' counters.
func (s *Sim) ALSStats() ALSStats {
	return ALSStats{
		Written: atomic.LoadInt64(&s.als.Written), Dropped: atomic.LoadInt64(&s.als.Dropped),
		Flushed: atomic.LoadInt64(&s.als.Flushed), Lost: atomic.LoadInt64(&s.als.Lost),
		Batches: atomic.LoadInt64(&s.als.Batches), StreamsOpened: atomic.LoadInt64(&s.als.StreamsOpened),
		StreamFailures: atomic.LoadInt64(&s.als.StreamFailures), Breaks: atomic.LoadInt64(&s.als.Breaks),
		FlushFailed: atomic.LoadInt64(&s.als.FlushFailed), Discarded: atomic.LoadInt64(&s.als.Discarded),
	}
}

// PendingEntries is how many entries wait in the workers' buffers.
func (s *Sim) PendingEntries() int {
	n := 0
	for _, w := range s.workers {
		for _, l := range w.loggers {
			n += l.pending()
		}
	}
	return n
}

// Entries returns every access-log entry built so far (delivered or not), in order.
func (s *Sim) Entries() []*alsdata.HTTPAccessLogEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*alsdata.HTTPAccessLogEntry(nil), s.entries...)
}

// Deliveries returns every entry handed to a stream, with whether that stream broke since.
func (s *Sim) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Delivery, len(s.deliveries))
	for i, d := range s.deliveries {
		out[i] = Delivery{RequestID: d.id, Stream: d.st.id, Host: d.st.host.addr, Broken: d.st.broken.Load()}
	}
	return out
}

func (s *Sim) recordDeliveries(ids []string, st *alsStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.deliveries = append(s.deliveries, delivery{id: id, st: st})
	}
}

// HostStats reports, per host of a gRPC cluster, the Checks sent and access-log streams opened.
func (s *Sim) HostStats(cluster string) map[string][2]int64 {
	out := map[string][2]int64{}
	if c := s.hosts[cluster]; c != nil {
		for _, h := range c.hosts {
			out[h.addr] = [2]int64{h.checks.Load(), h.alsStreams.Load()}
		}
	}
	return out
}

// ---- gRPC clusters -----------------------------------------------------------------------

type grpcCluster struct {
	name  string
	hosts []*grpcHost
	rr    atomic.Uint64
}

type grpcHost struct {
	addr       string
	conn       *grpc.ClientConn
	active     atomic.Int64 // requests (Checks and ALS streams) in flight
	checks     atomic.Int64
	alsStreams atomic.Int64
}

func (s *Sim) newGRPCCluster(name string, addrs []string) (*grpcCluster, error) {
	c := &grpcCluster{name: name}
	cl := s.cfg.Clusters[name]
	connectTimeout := 5 * time.Second // cluster connect_timeout default
	if cl.GetConnectTimeout() != nil {
		connectTimeout = cl.GetConnectTimeout().AsDuration()
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Envoy opens a connection when a request needs one and fails the request when the
		// connection fails; it has no long reconnect back-off. Keep grpc-go's short.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
			MinConnectTimeout: connectTimeout,
		}),
	}
	// http2_protocol_options.connection_keepalive (purser cluster: 30 s / 5 s).
	var ka *corev3.KeepaliveSettings
	if hpo := cl.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; hpo != nil {
		ka = http2Keepalive(hpo)
	}
	if ka.GetInterval() != nil {
		opts = append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: ka.GetInterval().AsDuration(), Timeout: ka.GetTimeout().AsDuration(), PermitWithoutStream: true,
		}))
	}
	for _, a := range addrs {
		conn, err := grpc.NewClient(a, opts...)
		if err != nil {
			return nil, fmt.Errorf("envoysim: cluster %s host %s: %w", name, a, err)
		}
		c.hosts = append(c.hosts, &grpcHost{addr: a, conn: conn})
	}
	return c, nil
}

// pick chooses the host with the fewest active requests, ties round-robin (LEAST_REQUEST;
// with two hosts Envoy's power-of-two-choices behaves the same on average).
func (c *grpcCluster) pick() *grpcHost {
	if c == nil || len(c.hosts) == 0 {
		return nil
	}
	start := int(c.rr.Add(1)-1) % len(c.hosts)
	var best *grpcHost
	for i := range c.hosts {
		h := c.hosts[(start+i)%len(c.hosts)]
		if best == nil || h.active.Load() < best.active.Load() {
			best = h
		}
	}
	return best
}

// ---- the request path --------------------------------------------------------------------

// stream is one downstream request and what Envoy's StreamInfo would hold about it.
type stream struct {
	s      *Sim
	w      http.ResponseWriter
	r      *http.Request
	worker *worker

	id        uint64 // Envoy's numeric stream id (CheckRequest request.http.id)
	start     time.Time
	requestID string

	method, path, authority, scheme string
	hdr                             http.Header // request headers as they go upstream

	route *routeInfo
	md    map[string]*structpb.Struct // dynamic metadata by namespace

	flags   alsdata.ResponseFlags
	code    int // 0: no response sent
	details string

	reqBodyBytes  int64
	respBodyBytes int64
	respHeaders   http.Header
	respHdrBytes  int64
	reqHdrBytes   int64
	respToAdd     []*corev3.HeaderValueOption // ext_authz response_headers_to_add

	upstreamCluster string
	upstreamHost    string // host:port the load balancer chose (set before connecting)
	attempts        uint32
	upBody          *countingReader
	// Set from the HTTP client's trace hooks, which run on the transport's goroutines.
	upstreamAddr                      atomic.Pointer[string]
	tFirstUpTx, tLastUpTx, tFirstUpRx atomicDuration

	tLastRx, tLastUpRx, tFirstDownTx, tLastDownTx time.Duration
	abort                                         bool
}

type atomicDuration struct{ v atomic.Int64 }

func (a *atomicDuration) set(d time.Duration) { a.v.Store(int64(d)) }
func (a *atomicDuration) get() time.Duration  { return time.Duration(a.v.Load()) }

func (st *stream) since() time.Duration { return time.Since(st.start) }

// ServeHTTP handles one downstream request end to end.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &stream{s: s, w: w, r: r, start: time.Now(), md: map[string]*structpb.Struct{}}
	st.worker = s.workers[int(s.rr.Add(1)-1)%len(s.workers)]
	st.id = randUint64()
	s.count(func(x *Stats) { x.Requests++ })
	defer st.finish()
	st.decodeHeaders()
	st.run()
}

func (s *Sim) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

// decodeHeaders is the HCM's header work before any filter (reference 0, 8.1): pseudo
// headers, x-forwarded-for (use_remote_address), x-request-id (generate_request_id), and the
// removal of the x-envoy-* headers Envoy acts on from an external request.
func (st *stream) decodeHeaders() {
	r := st.r
	st.method, st.path, st.authority, st.scheme = r.Method, r.URL.RequestURI(), r.Host, "http"
	st.hdr = r.Header.Clone()
	hcm := st.s.cfg.HCM
	st.cleanInternalHeaders(hcm.GetUseRemoteAddress().GetValue())
	if hcm.GetUseRemoteAddress().GetValue() {
		peer, _, _ := net.SplitHostPort(r.RemoteAddr)
		if xff := st.hdr.Get("x-forwarded-for"); xff != "" {
			st.hdr.Set("x-forwarded-for", xff+","+peer)
		} else {
			st.hdr.Set("x-forwarded-for", peer)
		}
		st.hdr.Set("x-forwarded-proto", "http")
	}
	// generate_request_id (default true): an edge request gets a fresh UUID unless
	// preserve_external_request_id keeps the client's.
	genID := hcm.GetGenerateRequestId() == nil || hcm.GetGenerateRequestId().GetValue()
	if genID && (st.hdr.Get("x-request-id") == "" || !hcm.GetPreserveExternalRequestId()) {
		st.hdr.Set("x-request-id", uuid.NewString())
	}
	st.requestID = st.hdr.Get("x-request-id")
	st.reqHdrBytes = headerBytes(st.hdr) + int64(len(st.method)+len(st.path)+len(st.authority))
}

// edgeOnlyHeaders and externalHeaders are what
// source/common/http/conn_manager_utility.cc (cleanInternalHeaders) removes from a request that
// did not come from an internal address: these three from an edge request (use_remote_address),
// the rest from any external one, plus the route configuration's internal_only_headers. Every
// other x-envoy-* header a client sends passes through, to the filters and upstream alike.
// (No address is internal here: internal_address_config is unset, and since
// envoy.reloadable_features.explicit_internal_address_config no address is internal by default.)
var (
	edgeOnlyHeaders = []string{"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node"}
	externalHeaders = []string{
		"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on", "x-envoy-retry-grpc-on",
		"x-envoy-max-retries", "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-ms",
		"x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
		"x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
	}
)

func (st *stream) cleanInternalHeaders(edge bool) {
	if edge {
		for _, h := range edgeOnlyHeaders {
			st.hdr.Del(h)
		}
	}
	for _, h := range externalHeaders {
		st.hdr.Del(h)
	}
	for _, h := range st.s.cfg.RouteConfig.GetInternalOnlyHeaders() {
		st.hdr.Del(h)
	}
}

func (st *stream) run() {
	cfg := st.s.cfg
	st.route = cfg.match(st.authority, st.path)
	if st.route == nil {
		// No route: 404 from Envoy, no Check (reference 1.2, 8.11).
		st.flags.NoRouteFound = true
		st.localReply(http.StatusNotFound, "", nil, "route_not_found")
		return
	}
	var body *bodyReader
	if az := cfg.ExtAuthz; az != nil && !st.route.authzDisabled {
		var proceed bool
		if body, proceed = st.extAuthz(az); !proceed {
			return
		}
	}
	if dr := st.route.r.GetDirectResponse(); dr != nil {
		st.drain(body)
		st.localReply(int(dr.GetStatus()), dr.GetBody().GetInlineString(), nil, "direct_response")
		return
	}
	if body == nil {
		body = &bodyReader{rest: st.r.Body, contentLength: st.r.ContentLength}
	}
	st.credentials()
	st.forward(body)
}

func (st *stream) drain(b *bodyReader) {
	if b != nil && b.rest != nil {
		n, _ := io.Copy(io.Discard, b.rest)
		st.reqBodyBytes += n
	}
}

// credentials runs the credential_injector filters the route enables: the header is set to
// the SDS secret, replacing a value only with overwrite: true.
func (st *stream) credentials() {
	for _, cf := range st.s.cfg.Credentials {
		if !st.route.filterOn(cf.Name, cf.DisabledDefault) {
			continue
		}
		if st.hdr.Get(cf.Header) != "" && !cf.Overwrite {
			continue
		}
		st.hdr.Set(cf.Header, st.s.secrets[cf.Name])
	}
}

// bodyReader is the request body as buffered by ext_authz plus what is still unread.
type bodyReader struct {
	buffered      []byte
	rest          io.Reader
	contentLength int64
}

func (b *bodyReader) reader() io.Reader {
	if b.rest == nil {
		return bytes.NewReader(b.buffered)
	}
	return io.MultiReader(bytes.NewReader(b.buffered), b.rest)
}

// forward is the router: route request_headers_to_remove and host_rewrite_literal, the
// upstream request under the route timeout, then the response back to the client.
func (st *stream) forward(body *bodyReader) {
	ra := st.route.route
	st.upstreamCluster = ra.GetCluster()
	base := st.s.opts.Upstream
	if u, ok := st.s.opts.UpstreamFor[st.upstreamCluster]; ok {
		base = u
	}
	if base == "" {
		st.flags.NoClusterFound = true
		st.localReply(http.StatusServiceUnavailable, "", nil, "cluster_not_found")
		return
	}
	for _, h := range st.route.r.GetRequestHeadersToRemove() {
		st.hdr.Del(h)
	}
	for _, h := range st.route.vh.GetRequestHeadersToRemove() {
		st.hdr.Del(h)
	}
	authority := st.authority
	if h := ra.GetHostRewriteLiteral(); h != "" {
		authority = h
	}
	ctx, cancel := context.WithCancel(st.r.Context()) // the client going away resets upstream too
	defer cancel()
	var timedOut atomic.Bool
	if d := st.route.timeout; d > 0 {
		t := time.AfterFunc(d, func() { timedOut.Store(true); cancel() })
		defer t.Stop()
	}
	trace := &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			a := i.Conn.RemoteAddr().String()
			st.upstreamAddr.Store(&a)
		},
		WroteHeaders:         func() { st.tFirstUpTx.set(st.since()) },
		WroteRequest:         func(httptrace.WroteRequestInfo) { st.tLastUpTx.set(st.since()) },
		GotFirstResponseByte: func() { st.tFirstUpRx.set(st.since()) },
	}
	counted := &countingReader{r: body.reader()} // buffered part included
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), st.method, strings.TrimSuffix(base, "/")+st.path, counted)
	if err != nil {
		st.localReply(http.StatusBadRequest, "", nil, "invalid_path")
		return
	}
	req.Host = authority
	if u, err := url.Parse(base); err == nil {
		st.upstreamHost = u.Host // the host is chosen before the connection is tried
	}
	req.ContentLength = body.contentLength
	if req.ContentLength == 0 && (len(body.buffered) > 0 || body.rest != nil && body.rest != http.NoBody) {
		req.ContentLength = -1
	}
	if st.method == http.MethodGet || st.method == http.MethodHead {
		req.ContentLength, req.Body = 0, http.NoBody
	}
	for k, vs := range st.hdr {
		if hopByHop(k) || strings.EqualFold(k, "content-length") {
			continue
		}
		req.Header[k] = vs
	}
	st.attempts = 1
	st.s.count(func(x *Stats) { x.Upstream++ })
	st.upBody = counted
	res, err := st.s.upstream.Do(req)
	st.tLastRx = st.since()
	if err != nil {
		switch {
		case st.r.Context().Err() != nil:
			st.downstreamGone()
		case timedOut.Load():
			st.flags.UpstreamRequestTimeout = true
			st.localReply(http.StatusGatewayTimeout, "upstream request timeout", nil, "upstream_response_timeout")
		case st.tFirstUpTx.get() == 0:
			st.flags.UpstreamConnectionFailure = true
			st.localReply(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
				nil, "upstream_reset_before_response_started{connection_failure}")
		default:
			st.flags.UpstreamRemoteReset = true
			st.localReply(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
				nil, "upstream_reset_before_response_started{remote_reset}")
		}
		return
	}
	defer res.Body.Close()
	st.encode(res, &timedOut)
}

// encode sends the upstream response to the client through the response-side filters.
func (st *stream) encode(res *http.Response, timedOut *atomic.Bool) {
	cfg := st.s.cfg
	ct := res.Header.Get("content-type")
	h := st.w.Header()
	for k, vs := range res.Header {
		if hopByHop(k) {
			continue
		}
		h[k] = vs
	}
	h.Set("server", "envoy") // server_header_transformation: OVERWRITE
	h.Set("x-envoy-upstream-service-time", strconv.FormatInt(st.tFirstUpRx.get().Milliseconds(), 10))
	applyHeaderOptions(h, st.respToAdd) // ext_authz OK response_headers_to_add
	st.respHeaders = h.Clone()
	set := st.setMetadata
	jsonOn := cfg.JSONRules != nil && st.route.on(cfg.jsonName)
	sseOn := cfg.hasSSE && st.route.on(cfg.sseName)
	// The Lua filter (last before the router) sees the upstream's chunks first on the way
	// back; it runs over them when the response is over (lua.go).
	var luaChunks [][]byte
	if cfg.Lua != nil && st.route.on(cfg.Lua.Name) {
		upstreamHeaders := res.Header.Clone()
		defer func() {
			reset := st.abort || st.flags.GetDownstreamConnectionTermination()
			if err := cfg.Lua.respond(upstreamHeaders, luaChunks, reset, set); err != nil && st.s.opts.Logf != nil {
				st.s.opts.Logf("envoysim: lua %s: script error: %v", cfg.Lua.Name, err)
			}
		}()
		luaChunks = [][]byte{}
	}
	keep := func(b []byte) {
		if luaChunks != nil {
			luaChunks = append(luaChunks, append([]byte(nil), b...))
		}
	}

	// json_to_metadata: a matching response is held, headers and body, until its last byte
	// (reference 5.1); the listener's buffer limit bounds it (500 response_payload_too_large).
	if jsonOn && cfg.jsonContentTypeAllowed(ct) {
		body, err := io.ReadAll(io.LimitReader(res.Body, int64(cfg.BufferLimit)+1))
		keep(body)
		st.tLastUpRx = st.since()
		if err != nil {
			st.code = res.StatusCode // the router saw the upstream headers
			st.upstreamFailed(timedOut)
			return
		}
		if int64(len(body)) > int64(cfg.BufferLimit) {
			_, _ = io.Copy(io.Discard, res.Body)
			for k := range h {
				delete(h, k)
			}
			st.localReply(http.StatusInternalServerError, "", nil, "response_payload_too_large")
			return
		}
		cfg.applyJSONRules(ct, body, set)
		h.Set("content-length", strconv.Itoa(len(body)))
		st.writeHeader(res.StatusCode, "via_upstream")
		st.write(body)
		return
	}
	if jsonOn {
		cfg.applyJSONRules(ct, nil, set) // mismatched content type: on_error rules only
	}
	var sse *sseState
	if sseOn && isSSE(ct) {
		sse = newSSEState(cfg.SSERules, cfg.SSEMaxEventSize, set)
	}
	st.writeHeader(res.StatusCode, "via_upstream")
	buf := make([]byte, 32<<10)
	for {
		n, err := res.Body.Read(buf)
		if n > 0 {
			keep(buf[:n])
			if sse != nil {
				sse.feed(buf[:n]) // never holds the stream back (reference 5.2)
			}
			if !st.write(buf[:n]) {
				return
			}
		}
		if err == io.EOF {
			st.tLastUpRx = st.since()
			if sse != nil {
				sse.end()
			}
			return
		}
		if err != nil {
			st.tLastUpRx = st.since()
			st.upstreamFailed(timedOut)
			return
		}
	}
}

// upstreamFailed ends a response whose upstream failed after its headers: the client's
// stream is reset (reference: the router cannot send a local reply once the response started).
func (st *stream) upstreamFailed(timedOut *atomic.Bool) {
	switch {
	case st.r.Context().Err() != nil && !timedOut.Load():
		st.downstreamGone()
		return
	case timedOut.Load():
		st.flags.UpstreamRequestTimeout = true
		st.details = "upstream_response_timeout"
	default:
		st.flags.UpstreamConnectionTermination = true
		st.details = "upstream_reset_after_response_started{connection_termination}"
	}
	st.abort = true
}

// downstreamGone records the client going away. The stand-in serves HTTP/1.1 only, where a
// client that leaves closes its connection: the connection manager resets the stream with
// StreamResetReason::ConnectionTermination and sets DC, downstream_connection_termination
// (source/common/http/conn_manager_impl.cc, onEvent -> doConnectionClose). DR,
// downstream_remote_reset, is an HTTP/2 or HTTP/3 client's RST_STREAM on a connection it keeps.
func (st *stream) downstreamGone() {
	st.flags.DownstreamConnectionTermination = true
	if st.code != 0 && st.details == "" {
		st.details = "via_upstream"
	}
}

func (st *stream) writeHeader(code int, details string) {
	st.code, st.details = code, details
	st.respHdrBytes = headerBytes(st.w.Header())
	st.w.WriteHeader(code)
	if f, ok := st.w.(http.Flusher); ok {
		f.Flush()
	}
	st.tFirstDownTx = st.since()
}

// write sends body bytes to the client at once; false when the client is gone.
func (st *stream) write(b []byte) bool {
	if st.r.Context().Err() != nil {
		st.downstreamGone()
		return false
	}
	n, err := st.w.Write(b)
	st.respBodyBytes += int64(n)
	if f, ok := st.w.(http.Flusher); ok {
		f.Flush()
	}
	if err != nil { // bytes written are sent: a client closing right after is not a reset of them
		st.downstreamGone()
		return false
	}
	st.tLastDownTx = st.since()
	return true
}

// localReply is sendLocalReply: local_reply_config mappers may rewrite status, headers and
// body; nothing goes upstream.
func (st *stream) localReply(code int, body string, headers []*corev3.HeaderValueOption, details string) {
	if st.r.Context().Err() != nil {
		st.downstreamGone()
		st.details = details
		return
	}
	h := st.w.Header()
	contentType := ""
	if body != "" {
		contentType = "text/plain"
	}
	for _, m := range st.s.cfg.HCM.GetLocalReplyConfig().GetMappers() {
		if !st.mapperMatches(m.GetFilter(), code) {
			continue
		}
		if sc := m.GetStatusCode(); sc != nil {
			code = int(sc.GetValue())
		}
		if b := m.GetBody(); b != nil {
			body = b.GetInlineString()
		}
		if bf := m.GetBodyFormatOverride(); bf != nil {
			//lint:ignore SA1019 Envoy still honours the deprecated field, so the simulator does
			body = strings.ReplaceAll(bf.GetTextFormat(), "%LOCAL_REPLY_BODY%", body)
			if bf.GetContentType() != "" {
				contentType = bf.GetContentType()
			}
		}
		headers = append(append([]*corev3.HeaderValueOption(nil), headers...), m.GetHeadersToAdd()...)
		break // the first matching mapper wins
	}
	if contentType != "" {
		h.Set("content-type", contentType)
	}
	h.Set("server", "envoy")
	// Denied-response headers: each key removed, then added (reference 3.3).
	for _, o := range headers {
		h.Del(o.GetHeader().GetKey())
	}
	for _, o := range headers {
		h.Add(o.GetHeader().GetKey(), o.GetHeader().GetValue())
	}
	h.Set("content-length", strconv.Itoa(len(body)))
	st.respHeaders = h.Clone()
	st.writeHeader(code, details)
	if body != "" {
		st.write([]byte(body))
	}
}

// setMetadata writes one key of the stream's dynamic metadata.
func (st *stream) setMetadata(ns, key string, v *structpb.Value, preserve bool) {
	setMetadata(st.md, ns, key, v, preserve)
}

// setMetadata writes one key of dynamic metadata (namespace -> Struct); preserve keeps a
// value already there.
func setMetadata(md map[string]*structpb.Struct, ns, key string, v *structpb.Value, preserve bool) {
	s := md[ns]
	if s == nil {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		md[ns] = s
	}
	if _, exists := s.Fields[key]; exists && preserve {
		return
	}
	s.Fields[key] = v
}

// finish builds the access-log entry at the end of the stream and logs it on the worker's
// loggers; then a reset stream is reset for the client.
func (st *stream) finish() {
	if st.s.opts.Logf != nil {
		// The path only: a query may carry a credential (?key= for Gemini).
		path, _, _ := strings.Cut(st.path, "?")
		st.s.opts.Logf("envoysim: %s %s -> %d %s flags=%v request_id=%s", st.method, path, st.code, st.details, flagNames(&st.flags), st.requestID)
	}
	for i, al := range st.s.cfg.AccessLogs {
		e := st.entry(al)
		st.s.mu.Lock()
		st.s.entries = append(st.s.entries, e)
		st.s.mu.Unlock()
		st.worker.loggers[i].log(e)
	}
	if st.abort {
		panic(http.ErrAbortHandler) // reset the client's stream without a clean end
	}
}

// ---- helpers -------------------------------------------------------------------------------

// countingReader counts the request body bytes read by the HTTP client's write loop.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func hopByHop(k string) bool {
	switch strings.ToLower(k) {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer":
		return true
	}
	return false
}

func headerBytes(h http.Header) int64 {
	var n int64
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

func randUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

func initialMetadata(hs []*corev3.HeaderValue) map[string][]string {
	md := map[string][]string{}
	for _, h := range hs {
		k := strings.ToLower(h.GetKey())
		md[k] = append(md[k], h.GetValue())
	}
	return md
}

// http2Keepalive reads explicit_http_config.http2_protocol_options.connection_keepalive.
func http2Keepalive(a *anypb.Any) *corev3.KeepaliveSettings {
	var o httpv3.HttpProtocolOptions
	if a.UnmarshalTo(&o) != nil {
		return nil
	}
	return o.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive()
}

func flagNames(f *alsdata.ResponseFlags) []string {
	var out []string
	if f.GetUnauthorizedDetails() != nil {
		out = append(out, "UAEX")
	}
	if f.GetNoRouteFound() {
		out = append(out, "NR")
	}
	if f.GetDownstreamRemoteReset() {
		out = append(out, "DR")
	}
	if f.GetDownstreamConnectionTermination() {
		out = append(out, "DC")
	}
	if f.GetUpstreamConnectionFailure() {
		out = append(out, "UF")
	}
	if f.GetUpstreamConnectionTermination() {
		out = append(out, "UC")
	}
	if f.GetUpstreamRequestTimeout() {
		out = append(out, "UT")
	}
	return out
}

// withQuery applies query_parameters_to_set / _to_remove to a :path.
func withQuery(path string, set map[string]string, remove []string) string {
	if len(set) == 0 && len(remove) == 0 {
		return path
	}
	p, q, _ := strings.Cut(path, "?")
	vals, _ := url.ParseQuery(q)
	for _, k := range remove {
		vals.Del(k)
	}
	for k, v := range set {
		vals.Set(k, v)
	}
	if enc := vals.Encode(); enc != "" {
		return p + "?" + enc
	}
	return p
}

var errCheckTimeout = errors.New("envoysim: ext_authz timeout")
