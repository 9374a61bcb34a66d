package accesslog_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/internal/testkit"
)

// A shutdown in the middle of access-log traffic settles every entry purser received: four
// streams send entries as fast as they can, like busy Envoy workers that never half-close,
// and the server shuts down as cmd/purser does (CloseStreams, GracefulStop, Drain) while
// they are still sending. Every entry sent before the shutdown began — received by the
// server, whether or not its handler had read it yet — is settled, every entry the sink
// counted as received is settled, and the ledger reconciles; only entries that never reached
// the sink stay pending (their reservations will expire, charged in full).
func TestSink_ShutdownSettlesEverythingReceived(t *testing.T) {
	t.Parallel()
	cat, err := catalogOnce()
	require.NoError(t, err)
	schema := pgtest.New(t)
	st := store.New(schema.Pool)
	svc := budget.New(st, st, budget.Config{})
	ctx := context.Background()
	_, err = svc.CreateBudget(ctx, "test", budget.Definition{Name: "team", Subject: "team:ml", Limit: 1_000_000_000, Window: "month", Hard: true})
	require.NoError(t, err)

	const streams, msgs, per = 4, 60, 10
	const total = streams * msgs * per
	ids := make([]string, 0, total)
	for len(ids) < total {
		reqs := make([]budget.ReserveRequest, min(500, total-len(ids)))
		for i := range reqs {
			reqs[i] = budget.ReserveRequest{Subjects: []budget.Subject{"team:ml"}, Cost: 5_000, Tokens: 10_000,
				Provider: "openai", Flavor: "chat", Target: budget.Target{Model: "gpt-4o-mini"}}
		}
		ds, err := svc.Reserve(ctx, reqs)
		require.NoError(t, err)
		for _, d := range ds {
			require.Equal(t, budget.Admitted, d.Outcome)
			ids = append(ids, d.ReservationID)
		}
	}
	// Messages, built before the clock starts.
	messages := make([][]*alsv3.StreamAccessLogsMessage, streams)
	for s := range streams {
		for m := range msgs {
			var es []*alsdata.HTTPAccessLogEntry
			for i := range per {
				id := ids[(s*msgs+m)*per+i]
				es = append(es, entry(t, "openai_chat_usage", id, "req-"+id))
			}
			msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
				HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}}
			if m == 0 {
				msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: fmt.Sprint("envoy-", s)}, LogName: "purser"}
			}
			messages[s] = append(messages[s], msg)
		}
	}

	reader := sdkmetric.NewManualReader()
	sink, err := accesslog.New(svc, func() *pricing.Catalog { return cat }, accesslog.Config{
		Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("t"),
		// Generous: on a busy 2-core machine under -race a sender can stall for a good part of
		// a second, and a stream that looks quiet then would be ended with entries unsent.
		DrainQuiet: 2 * time.Second, DrainMax: 60 * time.Second,
	})
	require.NoError(t, err)
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { sink.Run(runCtx); close(ran) }()
	defer func() { stopRun(); <-ran }()
	codec, err := grpccodec.ServerOption()
	require.NoError(t, err)
	gs := grpc.NewServer(codec, grpc.InTapHandle(sink.Tap))
	alsv3.RegisterAccessLogServiceServer(gs, sink)
	client := alsv3.NewAccessLogServiceClient(testkit.ServeAndDial(t, gs))

	var (
		closing  atomic.Bool
		mu       sync.Mutex
		before   []string // entries whose Send returned before the shutdown began
		sentN    atomic.Int64
		wg       sync.WaitGroup
		underway = make(chan struct{}, streams)
	)
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream, err := client.StreamAccessLogs(ctx)
			if err != nil {
				t.Errorf("open stream %d: %v", s, err)
				underway <- struct{}{}
				return
			}
			for m, msg := range messages[s] {
				if err := stream.Send(msg); err != nil {
					break // the server ended the stream
				}
				sentN.Add(per)
				if !closing.Load() {
					mu.Lock()
					for _, e := range msg.GetHttpLogs().GetLogEntry() {
						before = append(before, e.GetCommonProperties().GetMetadata().GetFilterMetadata()["envoy.filters.http.ext_authz"].GetFields()["reservation_id"].GetStringValue())
					}
					mu.Unlock()
				}
				if m == 10 {
					underway <- struct{}{}
				}
			}
			// Like Envoy: never half-close; wait for the server to end the stream.
			_ = stream.RecvMsg(&alsv3.StreamAccessLogsResponse{})
		}()
	}
	t0 := time.Now()
	for range streams {
		<-underway
	}
	t.Logf("underway after %v", time.Since(t0))
	// Shut down as cmd/purser does, while the streams are sending.
	closing.Store(true)
	sink.CloseStreams()
	gs.GracefulStop()
	t.Logf("stopped after %v, %d sent", time.Since(t0), sentN.Load())
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	sink.Drain(dctx)
	require.NoError(t, dctx.Err(), "the drain finished in time")
	wg.Wait()

	received := countsByOutcome(t, reader, "purser.accesslog.entries")["received"]
	states := map[string]int64{}
	rows, err := schema.Pool.Query(ctx, `SELECT state, count(*) FROM reservations GROUP BY state`)
	require.NoError(t, err)
	for rows.Next() {
		var s string
		var n int64
		require.NoError(t, rows.Scan(&s, &n))
		states[s] = n
	}
	require.NoError(t, rows.Err())
	t.Logf("sent before the shutdown %d, sent in all %d, received %d, states %v", len(before), sentN.Load(), received, states)
	require.NotEmpty(t, before, "the shutdown began while the streams were sending")
	require.Equal(t, received, states["settled"], "every entry the sink received is settled")
	require.Equal(t, int64(len(ids))-received, states["pending"], "only entries never received stay pending")
	for _, id := range before {
		r, err := svc.Reservation(ctx, id)
		require.NoError(t, err)
		require.Equal(t, "settled", r.State, "an entry sent before the shutdown began is settled (reservation %s)", id)
	}
	rep, err := svc.Verify(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "the ledger reconciles: %+v", rep)
}
