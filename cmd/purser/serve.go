package main

import (
	"context"
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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/alerts"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/console"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/migrations"
	"github.com/purser-dev/purser/proof"
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

	// gRPC listener protections (see transport.go).
	tlsCert, tlsKey, clientCA string
	clientNames               []string
	insecureGRPC              bool
	meshAuthn                 bool
	maxConnections            int
	alsMaxStreams             int
	alsIdleTimeout            time.Duration
	alsStreamRate             float64
	keyLookupRate             float64
	templateMaxBudgets        int64
	templateRate              float64
	idleBudgetAge             time.Duration
	signingRotation           time.Duration
}

func parseServeConfig(e env, args []string) (serveConfig, error) {
	f := newFlags("serve", e)
	var c serveConfig
	dsn := databaseFlag(f)
	grpcAddr := f.String("grpc-addr", "PURSER_GRPC_ADDR", defaultGRPCAddr, "gRPC listen address (ext_authz, access log, health)")
	httpAddr := f.String("http-addr", "PURSER_HTTP_ADDR", defaultHTTPAddr, "HTTP listen address (/healthz, /readyz, /metrics, admin API, console at /ui/)")
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
	tlsCert := f.String("grpc-tls-cert", "PURSER_GRPC_TLS_CERT", "", "PEM certificate of the gRPC listener (TLS; reloaded when the file changes)")
	tlsKey := f.String("grpc-tls-key", "PURSER_GRPC_TLS_KEY", "", "PEM private key of -grpc-tls-cert")
	clientCA := f.String("grpc-client-ca", "PURSER_GRPC_CLIENT_CA", "", "PEM CA bundle: require gRPC clients (Envoy) to present a certificate it signed (mTLS)")
	clientNames := f.String("grpc-client-names", "PURSER_GRPC_CLIENT_NAMES", "", "with -grpc-client-ca: the URI or DNS SANs a client certificate must carry, comma separated (none: any it signed)")
	insecure := f.Bool("insecure-grpc", "PURSER_INSECURE_GRPC", false, "allow a non-loopback -grpc-addr without a shared secret or mTLS: anyone who reaches it can call Check and send access-log entries (identity claims and unproven entries are then ignored)")
	mesh := f.Bool("grpc-mesh-authn", "PURSER_GRPC_MESH_AUTHN", false, "a service mesh in front of purser (mTLS plus an allow policy on its gRPC port) authenticates every caller: believe them without a shared secret")
	maxConns := f.Int("grpc-max-connections", "PURSER_GRPC_MAX_CONNECTIONS", 2048, "gRPC connections open at once; more are closed on accept")
	alsStreams := f.Int("als-max-streams", "PURSER_ALS_MAX_STREAMS", 4096, "access-log streams open at once (an Envoy opens one per worker); more are refused")
	alsIdle := f.Duration("als-idle-timeout", "PURSER_ALS_IDLE_TIMEOUT", 5*time.Minute, "end an access-log stream that sent nothing for this long (Envoy opens a new one at its next flush)")
	alsRate := f.Int("als-stream-rate", "PURSER_ALS_STREAM_RATE", 10_000, "access-log entries one stream may deliver per second (burst 2x); more are dropped and their reservations expire")
	keyLookups := f.Int("key-lookup-rate", "PURSER_KEY_LOOKUP_RATE", 20, "database lookups per second of API keys the in-memory index does not know (keys created moments ago on another replica)")
	tmplMax := f.Int("template-max-budgets", "PURSER_TEMPLATE_MAX_BUDGETS", budget.DefaultTemplateMaxBudgets, "live budgets one default-budget template may make (-1: no cap); a new subject past it is refused")
	tmplRate := f.Int("template-rate", "PURSER_TEMPLATE_RATE", budget.DefaultTemplateRate, "budgets templates may make per second for new subjects of one kind (burst 10x); past it new subjects get 429")
	idleAge := f.Duration("idle-budget-age", "PURSER_IDLE_BUDGET_AGE", 30*24*time.Hour, "prune budgets made by templates that spent and held nothing for this long (0: never)")
	rotation := f.Duration("signing-key-rotation", "PURSER_SIGNING_KEY_ROTATION", budget.DefaultSigningRotate, "how long each key signing Check answers is the newest (keys live in the database, shared by every replica)")
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
		tlsCert: *tlsCert, tlsKey: *tlsKey, clientCA: *clientCA, clientNames: splitList(*clientNames),
		insecureGRPC: *insecure, meshAuthn: *mesh, maxConnections: *maxConns,
		alsMaxStreams: *alsStreams, alsIdleTimeout: *alsIdle, alsStreamRate: float64(*alsRate),
		keyLookupRate: float64(*keyLookups), templateMaxBudgets: int64(*tmplMax), templateRate: float64(*tmplRate),
		idleBudgetAge: *idleAge, signingRotation: *rotation,
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
	errs = append(errs, c.validateTransport()...)
	return errors.Join(errs...)
}

// validateTransport refuses a gRPC listener anyone on the network could use unnoticed: a
// non-loopback -grpc-addr needs a shared secret, mTLS, or an explicit statement that the
// network authenticates (-grpc-mesh-authn) or that no one has to (-insecure-grpc).
func (c serveConfig) validateTransport() []error {
	var errs []error
	if (c.tlsCert == "") != (c.tlsKey == "") {
		errs = append(errs, errors.New("-grpc-tls-cert and -grpc-tls-key go together"))
	}
	if c.clientCA != "" && c.tlsCert == "" {
		errs = append(errs, errors.New("-grpc-client-ca (mTLS) needs -grpc-tls-cert and -grpc-tls-key"))
	}
	if len(c.clientNames) > 0 && c.clientCA == "" {
		errs = append(errs, errors.New("-grpc-client-names needs -grpc-client-ca"))
	}
	if c.insecureGRPC && c.meshAuthn {
		errs = append(errs, errors.New("-insecure-grpc and -grpc-mesh-authn contradict each other: choose one"))
	}
	if _, _, err := net.SplitHostPort(c.grpcAddr); err == nil && !isLoopback(c.grpcAddr) &&
		c.sharedSecret == "" && c.clientCA == "" && !c.meshAuthn && !c.insecureGRPC {
		errs = append(errs, fmt.Errorf("-grpc-addr %s accepts connections from other hosts, but no caller has to authenticate: "+
			"set -shared-secret (Envoy sends it as initial_metadata %s) or -grpc-client-ca (mTLS); "+
			"-grpc-mesh-authn if a service mesh authenticates callers; or -insecure-grpc to accept anyone", c.grpcAddr, sharedSecretHeader))
	}
	if c.maxConnections < 1 {
		errs = append(errs, fmt.Errorf("-grpc-max-connections %d: want at least 1", c.maxConnections))
	}
	if c.alsMaxStreams < 1 {
		errs = append(errs, fmt.Errorf("-als-max-streams %d: want at least 1", c.alsMaxStreams))
	}
	if c.alsIdleTimeout < time.Second {
		errs = append(errs, fmt.Errorf("-als-idle-timeout %s: want at least 1s", c.alsIdleTimeout))
	}
	if c.alsStreamRate < 1 || c.keyLookupRate < 1 || c.templateRate < 1 {
		errs = append(errs, errors.New("-als-stream-rate, -key-lookup-rate and -template-rate must be at least 1"))
	}
	if c.templateMaxBudgets == 0 || c.templateMaxBudgets < -1 {
		errs = append(errs, fmt.Errorf("-template-max-budgets %d: want -1 (no cap) or at least 1", c.templateMaxBudgets))
	}
	if c.idleBudgetAge != 0 && c.idleBudgetAge < budget.MinIdleBudget {
		errs = append(errs, fmt.Errorf("-idle-budget-age %s: want 0 (never) or at least %s", c.idleBudgetAge, budget.MinIdleBudget))
	}
	if c.signingRotation < 10*time.Minute {
		errs = append(errs, fmt.Errorf("-signing-key-rotation %s: want at least 10m", c.signingRotation))
	}
	return errs
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
	keys     *proof.Keyring // signs Check answers, verifies access-log entries
	tap      *grpcTap
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
		KeyLookupRate: cfg.keyLookupRate,
		Templates:     budget.TemplateLimits{MaxBudgets: cfg.templateMaxBudgets, Rate: cfg.templateRate},
	})
	s.ready = func(ctx context.Context) error { return checkWritable(ctx, hotPool, pool) }
	// No answer goes out unsigned: the keys are in hand before anything is served.
	s.keys = &proof.Keyring{}
	if err := s.svc.LoadSigningKeys(ctx, s.keys, s.signingConfig()); err != nil {
		return fail(fmt.Errorf("signing keys: %w", err))
	}

	batcher := budget.NewBatcher(s.svc, budget.BatcherConfig{MaxBatch: fc.Ledger.MaxBatch, Lanes: fc.Ledger.Lanes, Logger: log})
	azCfg := fc.extauthzConfig(cfg.checkTimeout, cfg.reservationTTL)
	azCfg.Logger, azCfg.Meter = log, meter
	azCfg.Signer, azCfg.Authenticated = s.keys, authenticated
	authz, err := extauthz.New(batcher, s.svc, catalog, azCfg)
	if err != nil {
		return fail(err)
	}
	alsCfg := fc.accesslogConfig()
	alsCfg.Logger, alsCfg.Meter = log, meter
	alsCfg.Verifier, alsCfg.Authenticated = s.keys, authenticated
	alsCfg.MaxStreams, alsCfg.IdleTimeout, alsCfg.StreamRate = cfg.alsMaxStreams, cfg.alsIdleTimeout, cfg.alsStreamRate
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
	s.tap = &grpcTap{secret: cfg.sharedSecret, mtls: cfg.clientCA != "", mesh: cfg.meshAuthn, next: sink.Tap}
	var creds []grpc.ServerOption
	if cfg.tlsCert != "" {
		files, err := newTLSFiles(cfg.tlsCert, cfg.tlsKey, cfg.clientCA, cfg.clientNames, log)
		if err != nil {
			return fail(err)
		}
		creds = append(creds, grpc.Creds(credentials.NewTLS(files.serverConfig())))
	}
	s.grpc = grpc.NewServer(append(creds,
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
		// A connection without a call for 15 minutes is closed (Envoy reconnects when it needs
		// one; a connection whose every stream was refused does not linger).
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: 15 * time.Minute}),
		// Credentials are checked on every new stream before it costs a goroutine: the shared
		// secret (and mTLS by the handshake); the tap also bounds access-log streams.
		grpc.InTapHandle(s.tap.handle),
		// The TLS handshake (mTLS) of a connection that never completes it is cut short.
		grpc.ConnectionTimeout(10*time.Second),
	)...)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	authv3.RegisterAuthorizationServer(s.grpc, authz)
	alsv3.RegisterAccessLogServiceServer(s.grpc, sink)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	api := admin.New(s.svc, admin.Config{Tokens: cfg.adminTokens, Logger: log})
	mux.Handle("/v1/", api)
	ui, err := console.New(api, s.svc, console.Config{Logger: log}) // the web console, a client of api
	if err != nil {
		return fail(err)
	}
	mux.Handle(console.Path, ui)
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

// signingConfig is how the keys signing Check answers rotate: a key verifies long enough for
// any reservation it signed (TTL) plus late access-log entries.
func (s *server) signingConfig() budget.SigningConfig {
	return budget.SigningConfig{Rotate: s.cfg.signingRotation, Verify: s.cfg.reservationTTL + extauthz.DefaultProofGrace + time.Hour}
}

// guarded reports whether a gRPC method needs the shared secret: the Envoy-facing services
// do, health checks do not.
func guarded(method string) bool {
	return strings.HasPrefix(method, "/envoy.service.")
}

// run serves until ctx ends, then shuts down in order: health NOT_SERVING, (delay), stop
// accepting and let in-flight calls finish, drain components, close the pools.
func (s *server) run(ctx context.Context) error {
	grpcLis, err := listen(s.cfg.grpcAddr, "grpc-addr", "PURSER_GRPC_ADDR")
	if err != nil {
		return err
	}
	httpLis, err := listen(s.cfg.httpAddr, "http-addr", "PURSER_HTTP_ADDR")
	if err != nil {
		grpcLis.Close()
		return err
	}
	return s.serve(ctx, grpcLis, httpLis)
}

func (s *server) serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	grpcLis = &limitListener{Listener: grpcLis, max: int64(s.cfg.maxConnections)}
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
	goRun(func(c context.Context) { s.svc.RunSigningKeys(c, s.keys, s.signingConfig()) })
	if s.cfg.idleBudgetAge > 0 {
		goRun(func(c context.Context) { s.svc.RunIdleBudgetPruner(c, s.cfg.idleBudgetAge, time.Hour) })
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
		slog.Bool("tls", s.cfg.tlsCert != ""), slog.Bool("mtls", s.cfg.clientCA != ""), slog.Bool("mesh_authn", s.cfg.meshAuthn),
		// false: built without -tags vtprotobuf (correct, but Check responses cost more CPU).
		slog.Bool("generated_marshallers", grpccodec.Generated(&authv3.CheckResponse{})))

	if s.cfg.sharedSecret == "" && s.cfg.clientCA == "" && !s.cfg.meshAuthn {
		s.log.Warn("gRPC callers are not authenticated: identity claims (principal, JWT, trusted headers) and access-log entries without a proof are ignored; set -shared-secret or -grpc-client-ca",
			slog.Bool("loopback", isLoopback(s.cfg.grpcAddr)), slog.Bool("insecure_grpc", s.cfg.insecureGRPC))
	}
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
	// 3. Drain what was received (access-log entries) while the database is still open, with
	// a time budget of its own: a slow graceful stop must not leave the drain none.
	drainCtx, cancelDrain := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.shutdownTimeout)
	defer cancelDrain()
	for _, c := range s.components {
		c.Drain(drainCtx)
	}
	// 4. Background loops end; the pools close on return.
	stopBG()
	wg.Wait()
	s.log.Info("purser stopped")
	return serveErr
}
