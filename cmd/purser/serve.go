package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/alerts"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/migrations"
)

const (
	defaultGRPCAddr = "127.0.0.1:9000"
	defaultHTTPAddr = "127.0.0.1:9090"
	// sharedSecretHeader is the gRPC metadata key Envoy sends through initial_metadata.
	sharedSecretHeader = "x-purser-secret"
)

// serveConfig is `purser serve`'s configuration after flags and environment.
type serveConfig struct {
	databaseURL     string
	grpcAddr        string
	httpAddr        string
	adminTokens     []string
	sharedSecret    string
	configFile      string
	pricesFile      string
	logLevel        slog.Level
	hotPoolSize     int
	poolSize        int
	checkTimeout    time.Duration
	reservationTTL  time.Duration
	sweepInterval   time.Duration
	shutdownDelay   time.Duration
	shutdownTimeout time.Duration
	maxBodyBytes    int
	maxStreams      int
	streamWorkers   int
	alertWebhooks   []alerts.Webhook
	alertInterval   time.Duration
	gaugeTop        int
	retention       time.Duration
	pruneInterval   time.Duration
}

func parseServeConfig(e env, args []string) (serveConfig, error) {
	f := newFlags("serve", e)
	var c serveConfig
	dsn := databaseFlag(f)
	grpcAddr := f.String("grpc-addr", "PURSER_GRPC_ADDR", defaultGRPCAddr, "gRPC listen address (ext_authz, access log, health)")
	httpAddr := f.String("http-addr", "PURSER_HTTP_ADDR", defaultHTTPAddr, "HTTP listen address (/healthz, /readyz, /metrics, admin API)")
	tokens := f.Secret("admin-token", "PURSER_ADMIN_TOKEN", "", "admin API bearer token(s), comma separated (none: admin API refuses every call)")
	secret := f.Secret("shared-secret", "PURSER_SHARED_SECRET", "", "require this value in gRPC metadata "+sharedSecretHeader+" on Check and access-log calls")
	cfgFile := f.String("config", "PURSER_CONFIG", "", "configuration file (identity sources, policies, usage keys)")
	prices := f.String("prices", "PURSER_PRICES", "", "price override file, reloaded when it changes")
	level := f.String("log-level", "PURSER_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	hot := f.Int("hot-pool-size", "PURSER_HOT_POOL_SIZE", 4, "connections dedicated to reserving and settling")
	pool := f.Int("pool-size", "PURSER_POOL_SIZE", 8, "connections for everything else")
	checkTimeout := f.Duration("check-timeout", "PURSER_CHECK_TIMEOUT", 150*time.Millisecond, "server deadline for a Check (keep it below Envoy's ext_authz timeout)")
	ttl := f.Duration("reservation-ttl", "PURSER_RESERVATION_TTL", budget.DefaultReservationTTL, "how long a reservation waits for its access-log entry before it is charged in full")
	sweep := f.Duration("sweep-interval", "PURSER_SWEEP_INTERVAL", 5*time.Second, "how often overdue reservations are expired")
	delay := f.Duration("shutdown-delay", "PURSER_SHUTDOWN_DELAY", 0, "time between reporting NOT_SERVING and closing listeners (let load balancers notice)")
	timeout := f.Duration("shutdown-timeout", "PURSER_SHUTDOWN_TIMEOUT", 20*time.Second, "how long in-flight calls get to finish on shutdown")
	maxBody := f.Int("max-body-bytes", "PURSER_MAX_BODY_BYTES", 8<<20, "largest request body purser accepts in a Check (sets the gRPC receive limit)")
	maxStreams := f.Int("max-concurrent-streams", "PURSER_MAX_CONCURRENT_STREAMS", 1024, "gRPC concurrent streams per connection")
	workers := f.Int("grpc-workers", "PURSER_GRPC_WORKERS", 512, "reused goroutines serving gRPC calls (more concurrent calls get fresh goroutines)")
	hooks := f.Secret("alert-webhooks", "PURSER_ALERT_WEBHOOKS", "", "budget alert webhooks, comma separated: [json=|slack=]URL")
	hookSecret := f.Secret("alert-webhook-secret", "PURSER_ALERT_WEBHOOK_SECRET", "", "HMAC secret signing JSON alert webhooks (X-Purser-Signature)")
	alertInterval := f.Duration("alert-interval", "PURSER_ALERT_INTERVAL", alerts.DefaultEvaluateEvery, "how often budgets are evaluated for alerts")
	retention := f.Duration("retention", "PURSER_RETENTION", 0, "prune resolved reservations older than this, keeping their spend as daily rollups (e.g. 2160h; 0: keep them all)")
	pruneInterval := f.Duration("prune-interval", "PURSER_PRUNE_INTERVAL", time.Hour, "how often -retention prunes")
	gaugeTop := f.Int("metrics-top-budgets", "PURSER_METRICS_TOP_BUDGETS", budget.DefaultGaugeTopBudgets, "how many of the most utilised budgets export a utilisation gauge")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	webhooks, err := alerts.ParseWebhooks(*hooks, *hookSecret)
	if err != nil {
		return c, fmt.Errorf("-alert-webhooks: %w", err)
	}
	c = serveConfig{
		databaseURL: *dsn, grpcAddr: *grpcAddr, httpAddr: *httpAddr, sharedSecret: *secret,
		configFile: *cfgFile, pricesFile: *prices, hotPoolSize: *hot, poolSize: *pool,
		checkTimeout: *checkTimeout, reservationTTL: *ttl, sweepInterval: *sweep, shutdownDelay: *delay,
		shutdownTimeout: *timeout, maxBodyBytes: *maxBody, maxStreams: *maxStreams, streamWorkers: *workers,
		alertWebhooks: webhooks, alertInterval: *alertInterval, gaugeTop: *gaugeTop,
		retention: *retention, pruneInterval: *pruneInterval,
	}
	for _, t := range strings.Split(*tokens, ",") {
		if t = strings.TrimSpace(t); t != "" {
			c.adminTokens = append(c.adminTokens, t)
		}
	}
	if err := c.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return c, fmt.Errorf("-log-level %q: want debug, info, warn or error", *level)
	}
	return c, c.validate()
}

func (c serveConfig) validate() error {
	var errs []error
	for name, addr := range map[string]string{"-grpc-addr": c.grpcAddr, "-http-addr": c.httpAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port (e.g. 127.0.0.1:9000 or :9000)", name, addr))
		}
	}
	if c.hotPoolSize < 1 || c.hotPoolSize > 64 {
		errs = append(errs, fmt.Errorf("-hot-pool-size %d: want 1-64 (a hot budget is fastest with 2-4)", c.hotPoolSize))
	}
	if c.poolSize < 2 || c.poolSize > 256 {
		errs = append(errs, fmt.Errorf("-pool-size %d: want 2-256", c.poolSize))
	}
	if c.checkTimeout < 10*time.Millisecond || c.checkTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("-check-timeout %s: want 10ms-1m, below Envoy's ext_authz timeout (default 200ms)", c.checkTimeout))
	}
	if c.reservationTTL < 10*time.Second {
		errs = append(errs, fmt.Errorf("-reservation-ttl %s: want at least 10s, longer than your longest streamed response", c.reservationTTL))
	}
	if c.sweepInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("-sweep-interval %s: want at least 100ms", c.sweepInterval))
	}
	if c.retention != 0 && c.retention < budget.MinRetention {
		errs = append(errs, fmt.Errorf("-retention %s: want 0 (keep everything) or at least %s", c.retention, budget.MinRetention))
	}
	if c.pruneInterval < time.Minute {
		errs = append(errs, fmt.Errorf("-prune-interval %s: want at least 1m", c.pruneInterval))
	}
	if c.maxBodyBytes < 64<<10 || c.maxBodyBytes > 256<<20 {
		errs = append(errs, fmt.Errorf("-max-body-bytes %d: want 64KiB-256MiB", c.maxBodyBytes))
	}
	if c.streamWorkers < 0 || c.streamWorkers > 65536 {
		errs = append(errs, fmt.Errorf("-grpc-workers %d: want 0-65536", c.streamWorkers))
	}
	if c.maxStreams < 1 {
		errs = append(errs, fmt.Errorf("-max-concurrent-streams %d: want at least 1", c.maxStreams))
	}
	for _, t := range c.adminTokens {
		if len(t) < 16 {
			errs = append(errs, fmt.Errorf("-admin-token: each token must be at least 16 characters"))
			break
		}
	}
	if c.sharedSecret != "" && len(c.sharedSecret) < 16 {
		errs = append(errs, fmt.Errorf("-shared-secret: must be at least 16 characters"))
	}
	return errors.Join(errs...)
}

func runServe(ctx context.Context, e env, args []string) error {
	cfg, err := parseServeConfig(e, args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	tuneGC(e.getenv)
	srv, err := newServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.run(ctx)
}

// serveGCPercent is purser serve's garbage-collection target unless GOGC says otherwise. The
// live heap is small (caches of keys and budgets, in-flight requests) while every Check
// allocates its request, so at Go's default of 100 the collector runs several times a second
// under load; 400 cut purser's CPU per Check by about a fifth in `make bench` for a few tens
// of MB more memory. GOMEMLIMIT (set from the container limit in the shipped Deployment)
// still bounds the heap.
const serveGCPercent = 400

// tuneGC applies serveGCPercent unless GOGC is set (the runtime already applied that one).
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(serveGCPercent)
	}
}

// server owns every long-lived part of `purser serve` and their shutdown order.
type server struct {
	cfg      serveConfig
	log      *slog.Logger
	hotPool  interface{ Close() }
	pool     interface{ Close() }
	svc      *budget.Service
	prices   *pricing.Watcher
	registry *prometheus.Registry
	meters   *sdkmetric.MeterProvider
	health   *health.Server
	grpc     *grpc.Server
	http     *http.Server
	ready    func(context.Context) error
	stopping chan struct{}
	// components adds the Envoy-facing services and their background work.
	components []component
}

// streamCloser ends long-lived streams at the start of a shutdown.
type streamCloser interface{ CloseStreams() }

// runOnly is a component without a drain step.
type runOnly func(ctx context.Context)

func (r runOnly) Run(ctx context.Context) { r(ctx) }
func (runOnly) Drain(context.Context)     {}

// component is a piece of serve with background work and a drain step on shutdown.
// Components that hold long-lived streams also implement streamCloser.
type component interface {
	// Run blocks until ctx ends.
	Run(ctx context.Context)
	// Drain finishes in-flight work after the listeners closed.
	Drain(ctx context.Context)
}

func newServer(ctx context.Context, cfg serveConfig, log *slog.Logger) (*server, error) {
	hotPool, err := openPool(ctx, cfg.databaseURL, int32(cfg.hotPoolSize))
	if err != nil {
		return nil, err
	}
	pool, err := openPool(ctx, cfg.databaseURL, int32(cfg.poolSize))
	if err != nil {
		hotPool.Close()
		return nil, err
	}
	s := &server{cfg: cfg, log: log, hotPool: hotPool, pool: pool, stopping: make(chan struct{})}
	fail := func(err error) (*server, error) {
		hotPool.Close()
		pool.Close()
		return nil, err
	}
	if err := migrations.Check(ctx, pool); err != nil {
		return fail(err)
	}
	if err := warmPool(ctx, hotPool); err != nil {
		return fail(err)
	}

	s.registry = prometheus.NewRegistry()
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exporter, err := otelprom.New(otelprom.WithRegisterer(s.registry))
	if err != nil {
		return fail(fmt.Errorf("metrics exporter: %w", err))
	}
	s.meters = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	meter := s.meters.Meter("github.com/purser-dev/purser")
	ledgerMetrics, err := budget.NewMetrics(meter)
	if err != nil {
		return fail(err)
	}

	fc, err := loadFileConfig(cfg.configFile)
	if err != nil {
		return fail(err)
	}
	if err := fc.validate(); err != nil {
		return fail(fmt.Errorf("config %s: %w", cfg.configFile, err))
	}
	base, err := loadCatalog("")
	if err != nil {
		return fail(err)
	}
	catalog := func() *pricing.Catalog { return base }
	if cfg.pricesFile != "" {
		s.prices, err = pricing.NewWatcher(base, cfg.pricesFile, pricing.WatcherConfig{Logger: log})
		if err != nil {
			return fail(fmt.Errorf("price overrides: %w", err))
		}
		catalog = s.prices.Catalog
	}

	s.svc = budget.New(store.New(hotPool), store.New(pool), budget.Config{
		Logger: log, ReservationTTL: cfg.reservationTTL, Metrics: ledgerMetrics,
	})
	s.ready = func(ctx context.Context) error { return checkWritable(ctx, hotPool, pool) }

	batcher := budget.NewBatcher(s.svc, budget.BatcherConfig{MaxBatch: fc.Ledger.MaxBatch, Lanes: fc.Ledger.Lanes, Logger: log})
	azCfg := fc.extauthzConfig(cfg.checkTimeout, cfg.reservationTTL)
	azCfg.Logger, azCfg.Meter = log, meter
	authz, err := extauthz.New(batcher, s.svc, catalog, azCfg)
	if err != nil {
		return fail(err)
	}
	alsCfg := fc.accesslogConfig()
	alsCfg.Logger, alsCfg.Meter = log, meter
	sink, err := accesslog.New(s.svc, catalog, alsCfg)
	if err != nil {
		return fail(err)
	}
	s.components = append(s.components, runOnly(batcher.Run), sink)
	if _, err := budget.RegisterGauges(meter, s.svc, budget.GaugeConfig{TopBudgets: cfg.gaugeTop, Logger: log}); err != nil {
		return fail(err)
	}
	al, err := alerts.New(s.svc, alerts.Config{Webhooks: cfg.alertWebhooks, Logger: log, Meter: meter, EvaluateEvery: cfg.alertInterval})
	if err != nil {
		return fail(err)
	}
	s.components = append(s.components, al) // Drain waits for webhook POSTs in flight

	s.health = health.NewServer()
	codec, err := grpccodec.ServerOption()
	if err != nil {
		return fail(err)
	}
	s.grpc = grpc.NewServer(
		// CheckRequests decoded and Envoy's messages encoded without protobuf's reflection
		// (the encoding needs the build tag vtprotobuf).
		codec,
		grpc.MaxRecvMsgSize(cfg.maxBodyBytes+1<<20), // the body plus headers and attributes
		grpc.MaxConcurrentStreams(uint32(cfg.maxStreams)),
		// Reused handler goroutines keep their grown stacks: a fresh goroutine per Check spent
		// a sixth of the server's CPU growing its stack (bench profile).
		grpc.NumStreamWorkers(uint32(cfg.streamWorkers)),
		// Envoy pings its HTTP/2 connections (connection_keepalive); accept that and keep
		// access-log streams open indefinitely: closing them loses what Envoy just wrote.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.ChainUnaryInterceptor(s.unarySecret),
		grpc.ChainStreamInterceptor(s.streamSecret),
	)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	authv3.RegisterAuthorizationServer(s.grpc, authz)
	alsv3.RegisterAccessLogServiceServer(s.grpc, sink)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	mux.Handle("/v1/", admin.New(s.svc, admin.Config{Tokens: cfg.adminTokens, Logger: log}))
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.stopping:
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	default:
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		http.Error(w, readyReason(err), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// guarded reports whether a gRPC method needs the shared secret: the Envoy-facing services
// do, health checks do not.
func guarded(method string) bool {
	return strings.HasPrefix(method, "/envoy.service.")
}

func (s *server) checkSecret(ctx context.Context) error {
	if s.cfg.sharedSecret == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(sharedSecretHeader) {
		if subtle.ConstantTimeCompare([]byte(v), []byte(s.cfg.sharedSecret)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or wrong "+sharedSecretHeader)
}

func (s *server) unarySecret(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if guarded(info.FullMethod) {
		if err := s.checkSecret(ctx); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

func (s *server) streamSecret(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if guarded(info.FullMethod) {
		if err := s.checkSecret(ss.Context()); err != nil {
			return err
		}
	}
	return h(srv, ss)
}

// run serves until ctx ends, then shuts down in order: health NOT_SERVING, (delay), stop
// accepting and let in-flight calls finish, drain components, close the pools.
func (s *server) run(ctx context.Context) error {
	grpcLis, err := net.Listen("tcp", s.cfg.grpcAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.grpcAddr, err)
	}
	httpLis, err := net.Listen("tcp", s.cfg.httpAddr)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("listen %s: %w", s.cfg.httpAddr, err)
	}
	return s.serve(ctx, grpcLis, httpLis)
}

func (s *server) serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	defer s.pool.Close()
	defer s.hotPool.Close()
	defer func() { _ = s.meters.Shutdown(context.WithoutCancel(ctx)) }()

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(bg) }()
	}
	listening := make(chan struct{})
	goRun(func(c context.Context) { s.svc.Listen(c, listening) })
	goRun(func(c context.Context) { s.svc.RunSweeper(c, s.cfg.sweepInterval, 1000) })
	if s.cfg.retention > 0 {
		goRun(func(c context.Context) { s.svc.RunPruner(c, s.cfg.retention, s.cfg.pruneInterval, pruneBatch) })
	}
	if s.prices != nil {
		goRun(func(c context.Context) { _ = s.prices.Run(c) })
	}
	for _, c := range s.components {
		goRun(c.Run)
	}

	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(grpcLis) }()
	go func() {
		if err := s.http.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	for _, name := range []string{"", authv3.Authorization_ServiceDesc.ServiceName, alsv3.AccessLogService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.log.Info("purser serving", slog.String("grpc", grpcLis.Addr().String()), slog.String("http", httpLis.Addr().String()),
		slog.Bool("admin_api", len(s.cfg.adminTokens) > 0), slog.Bool("shared_secret", s.cfg.sharedSecret != ""),
		// false: built without -tags vtprotobuf (correct, but Check responses cost more CPU).
		slog.Bool("generated_marshallers", grpccodec.Generated(&authv3.CheckResponse{})))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		s.log.Error("listener failed", slog.String("error", serveErr.Error()))
	}

	// 1. Tell Envoy and Kubernetes we are going away; keep answering meanwhile.
	close(s.stopping)
	s.health.Shutdown()
	if s.cfg.shutdownDelay > 0 {
		s.log.Info("not serving; waiting before closing listeners", slog.Duration("delay", s.cfg.shutdownDelay))
		time.Sleep(s.cfg.shutdownDelay)
	}
	// 2. Stop accepting: in-flight Checks finish; access-log streams are ended (Envoy never
	// closes them and reconnects to another replica at its next flush).
	for _, c := range s.components {
		if sc, ok := c.(streamCloser); ok {
			sc.CloseStreams()
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.shutdownTimeout)
	defer cancel()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdownCtx.Done():
		s.log.Warn("graceful stop timed out; closing remaining gRPC streams")
		s.grpc.Stop()
	}
	_ = s.http.Shutdown(shutdownCtx)
	// 3. Drain what was received (access-log entries) while the database is still open.
	for _, c := range s.components {
		c.Drain(shutdownCtx)
	}
	// 4. Background loops end; the pools close on return.
	stopBG()
	wg.Wait()
	s.log.Info("purser stopped")
	return serveErr
}
