package bench

import (
	"context"
	"fmt"
	"net"
	"runtime/pprof"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/proof"
)

// InProc is purser's serving path wired in this process the way `purser serve` wires it
// (two pools, ledger with metrics, batcher, ext_authz server, access-log sink, sweeper and
// change listener, the same gRPC server options), for CPU profiling: every goroutine it
// starts carries the pprof label side=server, so a profile of this process can be narrowed
// to the server with -tagfocus=side=server and the load generator left out.
type InProc struct {
	Addr string
	stop func()
}

// ServerLabel is the pprof label on InProc's goroutines.
var ServerLabel = pprof.Labels("side", "server")

// StartInProc serves purser on 127.0.0.1:0 against databaseURL. extra gRPC server options
// come after serve's own (experiments).
func StartInProc(ctx context.Context, databaseURL string, hotPoolSize, poolSize int32, extra ...grpc.ServerOption) (*InProc, error) {
	var p *InProc
	var err error
	pprof.Do(ctx, ServerLabel, func(ctx context.Context) {
		p, err = startInProc(ctx, databaseURL, hotPoolSize, poolSize, extra)
	})
	return p, err
}

func startInProc(ctx context.Context, databaseURL string, hotPoolSize, poolSize int32, extra []grpc.ServerOption) (*InProc, error) {
	hot, err := OpenPool(ctx, databaseURL, hotPoolSize)
	if err != nil {
		return nil, err
	}
	pool, err := OpenPool(ctx, databaseURL, poolSize)
	if err != nil {
		hot.Close()
		return nil, err
	}
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		return nil, err
	}
	meters := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	meter := meters.Meter("github.com/purser-dev/purser")
	lm, err := budget.NewMetrics(meter)
	if err != nil {
		return nil, err
	}
	cat, err := pricing.Embedded()
	if err != nil {
		return nil, err
	}
	catalog := func() *pricing.Catalog { return cat }
	svc := budget.New(store.New(hot), store.New(pool), budget.Config{Metrics: lm})
	batcher := budget.NewBatcher(svc, budget.BatcherConfig{})
	// As serve: Check answers are signed, access-log entries verified.
	keys := &proof.Keyring{}
	if err := svc.LoadSigningKeys(ctx, keys, budget.SigningConfig{}); err != nil {
		return nil, err
	}
	authz, err := extauthz.New(batcher, svc, catalog, extauthz.Config{Meter: meter, Signer: keys})
	if err != nil {
		return nil, err
	}
	sink, err := accesslog.New(svc, catalog, accesslog.Config{Meter: meter, Verifier: keys})
	if err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	listening := make(chan struct{})
	go svc.Listen(bg, listening)
	go svc.RunSweeper(bg, 5*time.Second, 1000)
	go batcher.Run(bg)
	go sink.Run(bg)

	codec, err := grpccodec.ServerOption()
	if err != nil {
		cancel()
		return nil, err
	}
	opts := []grpc.ServerOption{
		codec,
		grpc.InTapHandle(sink.Tap), // as serve.go: access-log streams bounded and endable
		grpc.MaxRecvMsgSize(8<<20 + 1<<20),
		grpc.MaxConcurrentStreams(1024),
		grpc.NumStreamWorkers(512), // serve's -grpc-workers default
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// serve.go chains a shared-secret check; with no secret configured it only passes on.
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(ctx, req)
		}),
	}
	gs := grpc.NewServer(append(opts, extra...)...)
	authv3.RegisterAuthorizationServer(gs, authz)
	alsv3.RegisterAccessLogServiceServer(gs, sink)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, err
	}
	go func() { _ = gs.Serve(lis) }()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		gs.Stop()
		cancel()
		return nil, fmt.Errorf("in-process purser: change listener not ready")
	}
	return &InProc{Addr: lis.Addr().String(), stop: func() {
		gs.Stop()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		sink.Drain(sctx)
		scancel()
		cancel()
		_ = meters.Shutdown(context.Background())
		hot.Close()
		pool.Close()
	}}, nil
}

// Stop shuts the server down.
func (p *InProc) Stop() { p.stop() }
