package accesslog_test

import (
	"context"
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
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
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
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/internal/testkit"
)

var catalogOnce = sync.OnceValues(pricing.Embedded)

type harness struct {
	sink   *accesslog.Sink
	svc    *budget.Service
	schema *pgtest.Schema
	client alsv3.AccessLogServiceClient
	team   budget.Budget
}

func serve(t *testing.T, cfg accesslog.Config) *harness {
	t.Helper()
	cat, err := catalogOnce()
	require.NoError(t, err)
	return startSink(t, cfg, cat, true)
}

// startSink starts a sink on a fresh schema with the team:ml budget, pricing from cat, behind
// a real gRPC server. run false leaves its queue unconsumed.
func startSink(t *testing.T, cfg accesslog.Config, cat *pricing.Catalog, run bool) *harness {
	t.Helper()
	h := &harness{schema: pgtest.New(t)}
	st := store.New(h.schema.Pool)
	h.svc = budget.New(st, st, budget.Config{})
	var err error
	h.team, err = h.svc.CreateBudget(context.Background(), "test", budget.Definition{Name: "team", Subject: "team:ml", Limit: 1_000_000_000, Window: "month", Hard: true})
	require.NoError(t, err)
	h.sink, err = accesslog.New(h.svc, func() *pricing.Catalog { return cat }, cfg)
	require.NoError(t, err)
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { h.sink.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}

	codec, err := grpccodec.ServerOption()
	require.NoError(t, err)
	gs := grpc.NewServer(codec, grpc.InTapHandle(h.sink.Tap))
	alsv3.RegisterAccessLogServiceServer(gs, h.sink)
	conn := testkit.ServeAndDial(t, gs)
	h.client = alsv3.NewAccessLogServiceClient(conn)
	return h
}

// countsByOutcome sums the int64 counter name by its outcome attribute.
func countsByOutcome(t *testing.T, reader *sdkmetric.ManualReader, name string) map[string]int64 {
	t.Helper()
	return countsByAttr(t, reader, name, "outcome")
}

// countsByAttr sums the int64 counter name by one attribute.
func countsByAttr(t *testing.T, reader *sdkmetric.ManualReader, name, attr string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					o, _ := dp.Attributes.Value(attribute.Key(attr))
					got[o.AsString()] += dp.Value
				}
			}
		}
	}
	return got
}

// reserve makes a reservation of the given hold on team:ml and returns its id.
func (h *harness) reserve(t *testing.T, cost, tokens int64, requestID string) string {
	t.Helper()
	ds, err := h.svc.Reserve(context.Background(), []budget.ReserveRequest{{
		Subjects: []budget.Subject{"team:ml"}, Cost: cost, Tokens: tokens, RequestID: requestID,
		Provider: "openai", Flavor: "chat", Target: budget.Target{Model: "gpt-4o-mini"},
	}})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, ds[0].Outcome)
	return ds[0].ReservationID
}

// reserveStarted reserves like extauthz does for a downstream request Envoy started at start:
// its idempotency key begins with that time, which the x-request-id fallback joins on.
func (h *harness) reserveStarted(t *testing.T, cost int64, requestID string, start time.Time) string {
	t.Helper()
	key := append(budget.RequestStartKey(start), []byte(strings.Repeat("k", 32))...)
	copy(key[8:], requestID)
	ds, err := h.svc.Reserve(context.Background(), []budget.ReserveRequest{{
		Subjects: []budget.Subject{"team:ml"}, Cost: cost, Tokens: 10_000, RequestID: requestID, IdempotencyKey: key,
		Provider: "openai", Flavor: "chat", Target: budget.Target{Model: "gpt-4o-mini"},
	}})
	require.NoError(t, err)
	require.Equal(t, budget.Admitted, ds[0].Outcome)
	return ds[0].ReservationID
}

// entry loads a protojson fixture with its placeholders filled in.
func entry(t *testing.T, name, reservationID, requestID string) *alsdata.HTTPAccessLogEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	require.NoError(t, err)
	s := strings.NewReplacer("RESERVATION_ID", reservationID, "REQUEST_ID", requestID,
		"RESERVED_MICROS", "0", "RESERVED_TOKENS", "0", "KEY_ID", "key_test").Replace(string(b))
	var e alsdata.HTTPAccessLogEntry
	require.NoError(t, protojson.Unmarshal([]byte(s), &e))
	// Entries start now, so the x-request-id fallback window finds reservations made now.
	e.CommonProperties.StartTime = timestamppb.Now()
	return &e
}

// send streams the entries like one Envoy worker: the identifier on the first message only,
// then batches of entries; it closes the stream and waits until the sink settled them.
func (h *harness) send(t *testing.T, batches ...[]*alsdata.HTTPAccessLogEntry) {
	t.Helper()
	ctx := context.Background()
	stream, err := h.client.StreamAccessLogs(ctx)
	require.NoError(t, err)
	for i, b := range batches {
		msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: b}}}
		if i == 0 {
			msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy-1"}, LogName: "purser"}
		}
		require.NoError(t, stream.Send(msg))
	}
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)
	h.flush(t)
}

func (h *harness) flush(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, h.sink.Flush(ctx))
}

func (h *harness) reservation(t *testing.T, id string) budget.Reservation {
	t.Helper()
	r, err := h.svc.Reservation(context.Background(), id)
	require.NoError(t, err)
	return r
}

// state reads a reservation's state without failing the test (for polling conditions).
func (h *harness) state(id string) string {
	r, err := h.svc.Reservation(context.Background(), id)
	if err != nil {
		return ""
	}
	return r.State
}

func (h *harness) requireClean(t *testing.T) {
	t.Helper()
	rep, err := h.svc.Verify(context.Background())
	require.NoError(t, err)
	require.True(t, rep.Clean(), "verify: %+v", rep)
}

func TestSink_Outcomes(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{})
	const hold, holdTokens = 5_000, 10_000

	type want struct {
		state        string
		cost, tokens int64
		cause        string
	}
	cases := map[string]struct {
		fixture string
		want    want
	}{
		// gpt-4o-mini: 600 uncached × 0.15 + 400 cached × 0.075 + 200 out × 0.6 = 90 + 30 + 120.
		"SettledAtRealPrice": {"openai_chat_usage", want{"settled", 240, 1200, "usage"}},
		// claude-sonnet-4-5: 300 × 3 + 1000 cache write × 3.75 + 2000 cache read × 0.3 +
		// 500 out × 15 = 900 + 3750 + 600 + 7500; input total 3300 + output 500 tokens.
		"AnthropicStreamMerged": {"anthropic_stream_usage", want{"settled", 12750, 3800, "usage"}},
		// AI Gateway's normalised counts, same usage as the OpenAI case.
		"AIGatewayTokens":       {"ai_gateway_usage", want{"settled", 240, 1200, "usage"}},
		"ClientResetChargeHold": {"client_reset_stream", want{"settled", hold, holdTokens, "cut_off:downstream_remote_reset"}},
		"ProviderErrorVoided":   {"provider_error", want{"voided", 0, 0, "provider_error"}},
	}
	ids := map[string]string{}
	var batch []*alsdata.HTTPAccessLogEntry
	for name, c := range cases {
		id := h.reserve(t, hold, holdTokens, "req-"+name)
		ids[name] = id
		batch = append(batch, entry(t, c.fixture, id, "req-"+name))
	}
	h.send(t, batch)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r := h.reservation(t, ids[name])
			require.Equal(t, c.want.state, r.State)
			require.Equal(t, c.want.cost, *r.ActualCost)
			require.Equal(t, c.want.tokens, *r.ActualTokens)
			require.Equal(t, c.want.cause, *r.Cause)
			if c.want.cause == "usage" {
				require.NotNil(t, r.CatalogVersion)
				require.Contains(t, *r.CatalogVersion, "genai-prices@")
			}
		})
	}
	var posted, pending int64
	require.NoError(t, h.schema.Pool.QueryRow(context.Background(), `SELECT posted, pending FROM budget_windows WHERE budget_id = $1`, h.team.ID).Scan(&posted, &pending))
	require.Equal(t, int64(240+12750+240+hold), posted, "real costs, the cut-off hold, nothing for the provider error")
	require.Zero(t, pending)
	h.requireClean(t)
}

func TestSink_DuplicatesAndReplays(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{})
	id := h.reserve(t, 5_000, 10_000, "req-dup")
	e := entry(t, "openai_chat_usage", id, "req-dup")
	// Twice in one message, then again on a second stream.
	h.send(t, []*alsdata.HTTPAccessLogEntry{e, e})
	h.send(t, []*alsdata.HTTPAccessLogEntry{e})
	r := h.reservation(t, id)
	require.Equal(t, "settled", r.State)
	require.Equal(t, int64(240), *r.ActualCost)
	var posted int64
	require.NoError(t, h.schema.Pool.QueryRow(context.Background(), `SELECT posted FROM budget_windows WHERE budget_id = $1`, h.team.ID).Scan(&posted))
	require.Equal(t, int64(240), posted, "charged once")
	h.requireClean(t)
}

func TestSink_LateEntryRefundsExpiredHold(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{})
	ctx := context.Background()
	id := h.reserve(t, 5_000, 10_000, "req-late")
	_, err := h.schema.Pool.Exec(ctx, `UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, id)
	require.NoError(t, err)
	n, err := h.svc.Expire(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, int64(5_000), *h.reservation(t, id).ActualCost, "expiry charged the hold")

	h.send(t, []*alsdata.HTTPAccessLogEntry{entry(t, "openai_chat_usage", id, "req-late")})
	r := h.reservation(t, id)
	require.Equal(t, "settled", r.State)
	require.Equal(t, int64(240), *r.ActualCost, "the late entry refunds the difference")
	h.requireClean(t)
}

func TestSink_JoinsAndNonReservations(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{})
	ctx := context.Background()

	// No ext_authz metadata (the Check's answer was lost): joined on x-request-id and the
	// request's start time, and charged the hold provisionally although nothing went upstream
	// (the fallback never voids: an entry without purser's proof must not release a hold).
	started := time.Now().Add(-time.Second)
	lost := h.reserveStarted(t, 5_000, "req-lost", started)
	lostEntry := entry(t, "ext_authz_error", "", "req-lost")
	lostEntry.CommonProperties.StartTime = timestamppb.New(started)
	// An unknown reservation id, a denial, a periodic (non-final) entry: nothing changes.
	unknownID := "018f0000-0000-7000-8000-0000000000ff"
	periodic := h.reserve(t, 5_000, 10_000, "req-periodic")
	unverified := entry(t, "unverified_usage", "", "req-unverified")
	h.send(t, []*alsdata.HTTPAccessLogEntry{
		lostEntry,
		entry(t, "openai_chat_usage", unknownID, "req-unknown"),
		entry(t, "denied", "", "req-denied"),
		entry(t, "periodic", periodic, "req-periodic"),
		unverified,
	})
	r := h.reservation(t, lost)
	require.Equal(t, "expired", r.State, "charged like an expiry: a later proven entry still settles it")
	require.Equal(t, "request_id_join:no_upstream", *r.Cause)
	require.Equal(t, int64(5_000), *r.ActualCost)
	require.Equal(t, "pending", h.reservation(t, periodic).State, "periodic entries never settle")
	_, err := h.svc.Reservation(ctx, unknownID)
	require.ErrorIs(t, err, budget.ErrNotFound)

	// Unverified admission (route failed open) with usage: recorded as unreserved spend.
	var n int
	var cost int64
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(actual_cost), 0) FROM reservations WHERE unreserved`).Scan(&n, &cost))
	require.Equal(t, 1, n)
	require.Equal(t, int64(1000*15/100+200*60/100), cost) // 1000 × 0.15 + 200 × 0.6 = 270
	var posted, pending int64
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT posted, pending FROM budget_windows WHERE budget_id = $1`, h.team.ID).Scan(&posted, &pending))
	require.Equal(t, int64(270+5_000), posted, "the unverified spend charged to team:ml, named in the entry, and the lost answer's hold")
	require.Equal(t, int64(5_000), pending, "only the periodic one still holds")

	// Replaying the unverified entry records nothing more.
	h.send(t, []*alsdata.HTTPAccessLogEntry{unverified})
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE unreserved`).Scan(&n))
	require.Equal(t, 1, n)
	h.requireClean(t)
}

// A stream that breaks mid-batch: what Envoy sent before the break is settled, nothing is
// settled twice, and the rest (never sent) stays pending for its entry on a new stream.
func TestSink_BrokenStream(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var ids []string
	for i := range 10 {
		ids = append(ids, h.reserve(t, 5_000, 10_000, "req-b"+strconv.Itoa(i)))
	}
	stream, err := h.client.StreamAccessLogs(ctx)
	require.NoError(t, err)
	var first []*alsdata.HTTPAccessLogEntry
	for i := range 5 {
		first = append(first, entry(t, "openai_chat_usage", ids[i], "req-b"+strconv.Itoa(i)))
	}
	require.NoError(t, stream.Send(&alsv3.StreamAccessLogsMessage{
		Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy-2"}},
		LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: first}},
	}))
	// Wait until the server has taken them in, then break the stream.
	require.Eventually(t, func() bool {
		n := 0
		for i := range 5 {
			if h.state(ids[i]) == "settled" {
				n++
			}
		}
		return n == 5
	}, 30*time.Second, 10*time.Millisecond)
	cancel()
	// Envoy opens a new stream at its next flush and sends the rest.
	var rest []*alsdata.HTTPAccessLogEntry
	for i := 5; i < 10; i++ {
		rest = append(rest, entry(t, "openai_chat_usage", ids[i], "req-b"+strconv.Itoa(i)))
	}
	h.send(t, rest)
	for _, id := range ids {
		require.Equal(t, int64(240), *h.reservation(t, id).ActualCost)
	}
	h.requireClean(t)
}

func TestSink_ManyConcurrentStreams(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{BatchSize: 64})
	const streams, per = 8, 60
	ids := make([][]string, streams)
	for s := range streams {
		for i := range per {
			ids[s] = append(ids[s], h.reserve(t, 5_000, 10_000, "req-"+strconv.Itoa(s)+"-"+strconv.Itoa(i)))
		}
	}
	var wg sync.WaitGroup
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream, err := h.client.StreamAccessLogs(context.Background())
			if err != nil {
				t.Errorf("stream: %v", err)
				return
			}
			for i := 0; i < per; i += 10 {
				var b []*alsdata.HTTPAccessLogEntry
				for j := i; j < i+10; j++ {
					b = append(b, entry(t, "openai_chat_usage", ids[s][j], "x"))
				}
				msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: b}}}
				if i == 0 {
					msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy-" + strconv.Itoa(s)}}
				}
				if err := stream.Send(msg); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
			if _, err := stream.CloseAndRecv(); err != nil {
				t.Errorf("close: %v", err)
			}
		}()
	}
	wg.Wait()
	h.flush(t)
	var settled int
	var posted int64
	ctx := context.Background()
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE state = 'settled' AND actual_cost = 240`).Scan(&settled))
	require.Equal(t, streams*per, settled)
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT posted FROM budget_windows WHERE budget_id = $1`, h.team.ID).Scan(&posted))
	require.Equal(t, int64(streams*per*240), posted)
	h.requireClean(t)
}

// A full queue drops (and counts) instead of blocking Envoy's stream; the dropped entries'
// reservations stay pending, to be charged in full by expiry — never free.
func TestSink_QueueFullDropsNotBlocks(t *testing.T) {
	t.Parallel()
	cat, err := catalogOnce()
	require.NoError(t, err)
	reader := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")
	h := startSink(t, accesslog.Config{QueueSize: 3, Meter: meter}, cat, false) // nothing consumes the queue
	stream, err := h.client.StreamAccessLogs(context.Background())
	require.NoError(t, err)
	var b []*alsdata.HTTPAccessLogEntry
	for i := range 10 {
		b = append(b, entry(t, "openai_chat_usage", "018f0000-0000-7000-8000-0000000000a"+strconv.Itoa(i), "r"))
	}
	require.NoError(t, stream.Send(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: b}}}))
	_, err = stream.CloseAndRecv()
	require.NoError(t, err, "the stream completes although nothing settles")
	got := countsByOutcome(t, reader, "purser.accesslog.entries")
	require.Equal(t, int64(3), got["received"])
	require.Equal(t, int64(7), got["dropped"])
}

func TestExtract_Defaults(t *testing.T) {
	t.Parallel()
	e := accesslog.Extract(entry(t, "openai_chat_usage", "r1", "q1"), &accesslog.ExtractConfig{})
	require.True(t, e.Final)
	require.Equal(t, "r1", e.ReservationID)
	require.Equal(t, "q1", e.RequestID)
	require.True(t, e.UpstreamSent)
	require.Equal(t, 200, e.ResponseCode)
	require.Equal(t, []string{"key:key_test", "team:ml", "global"}, e.Subjects)
	require.Equal(t, float64(1000), e.Usage["usage.prompt_tokens"])
	p := accesslog.Extract(entry(t, "periodic", "r1", "q1"), &accesslog.ExtractConfig{})
	require.False(t, p.Final)
	x := accesslog.Extract(entry(t, "ext_authz_error", "", "q1"), &accesslog.ExtractConfig{})
	require.False(t, x.UpstreamSent)
	require.True(t, x.ResponseFromExt)
}

// FuzzExtract feeds arbitrary wire bytes (seeded with the fixtures) to Extract: whatever
// decodes must extract without panicking.
func FuzzExtract(f *testing.F) {
	entries, _ := os.ReadDir("testdata")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("testdata", e.Name()))
		if err != nil || filepath.Ext(e.Name()) != ".json" {
			continue
		}
		var x alsdata.HTTPAccessLogEntry
		if protojson.Unmarshal(b, &x) == nil {
			wire, _ := proto.Marshal(&x)
			f.Add(wire)
		}
	}
	cfg := &accesslog.ExtractConfig{UsageHeaders: map[string]string{"x-usage-in": "usage.prompt_tokens"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		var e alsdata.HTTPAccessLogEntry
		if proto.Unmarshal(data, &e) != nil {
			return
		}
		got := accesslog.Extract(&e, cfg)
		if got.Tokens != nil && (got.Tokens.Input < 0 || got.Tokens.Output < 0) {
			t.Fatalf("negative tokens: %+v", got.Tokens)
		}
	})
}

// Open streams end promptly when the sink is told to close them (shutdown), after what they
// already delivered was taken in.
func TestSink_CloseStreamsEndsOpenStreams(t *testing.T) {
	t.Parallel()
	h := serve(t, accesslog.Config{})
	id := h.reserve(t, 5_000, 10_000, "req-close")
	stream, err := h.client.StreamAccessLogs(context.Background())
	require.NoError(t, err)
	require.NoError(t, stream.Send(&alsv3.StreamAccessLogsMessage{
		Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy-9"}},
		LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: []*alsdata.HTTPAccessLogEntry{entry(t, "openai_chat_usage", id, "req-close")}}},
	}))
	require.Eventually(t, func() bool { return h.state(id) == "settled" }, 30*time.Second, 10*time.Millisecond)
	h.sink.CloseStreams()
	// Like Envoy, the client never half-closes. The handler waited in Recv; once the stream
	// was quiet for DrainQuiet the sink cancelled its context (Tap), and gRPC answers an
	// interrupted Recv with CANCELLED itself. Envoy opens a new stream at its next flush
	// whatever the status.
	err = stream.RecvMsg(&alsv3.StreamAccessLogsResponse{})
	require.Equal(t, codes.Canceled, status.Code(err), "the server ended the stream")
	require.Eventually(t, func() bool { return h.sink.Streams() == 0 }, 10*time.Second, 5*time.Millisecond, "and forgot it")
	again, err := h.client.StreamAccessLogs(context.Background())
	require.NoError(t, err)
	_, err = again.CloseAndRecv()
	require.Equal(t, codes.Unavailable, status.Code(err), "a closing sink refuses new streams")
}

// Settlement outcomes are counted per entry, copies within one batch included.
func TestSink_SettlementMetricsPerEntry(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	h := serve(t, accesslog.Config{Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("t")})

	a, b := h.reserve(t, 5000, 100, "ra"), h.reserve(t, 5000, 100, "rb")
	ea := entry(t, "openai_chat_usage", a, "ra")
	h.send(t, []*alsdata.HTTPAccessLogEntry{ea, ea, ea, entry(t, "provider_error", b, "rb")})
	got := countsByOutcome(t, reader, "purser.accesslog.settlements")
	require.Equal(t, map[string]int64{"settled": 1, "voided": 1, "duplicate": 2}, got)
}

// With unknown_model: default_price, usage of a model the catalog does not know is priced at
// the operator's default price, not charged the hold and never zero.
func TestSink_UnknownModelDefaultPrice(t *testing.T) {
	t.Parallel()
	base, err := catalogOnce()
	require.NoError(t, err)
	cat, err := pricing.Load(base, strings.NewReader("default_price: {input_mtok: 1, output_mtok: 2}\n"))
	require.NoError(t, err)
	h := startSink(t, accesslog.Config{UnknownModel: accesslog.UnknownModelDefaultPrice}, cat, true)

	id := h.reserve(t, 5_000, 10_000, "r-local")
	e := entry(t, "unverified_usage", id, "r-local") // chat usage: 1000 in, 200 out
	md := e.CommonProperties.Metadata.FilterMetadata
	md["envoy.filters.http.ext_authz"].Fields["purser_decision"] = structpb.NewStringValue("reserved")
	md["envoy.filters.http.ext_authz"].Fields["reservation_id"] = structpb.NewStringValue(id)
	md["envoy.filters.http.ext_authz"].Fields["model"] = structpb.NewStringValue("my-local-llm")
	md["envoy.filters.http.ext_authz"].Fields["provider"] = structpb.NewStringValue("")
	h.send(t, []*alsdata.HTTPAccessLogEntry{e})
	r := h.reservation(t, id)
	require.Equal(t, "settled", r.State)
	require.Equal(t, int64(1000*1+200*2), *r.ActualCost, "1000 × $1/M + 200 × $2/M in micros")
}

// The sink decodes messages itself with purser's codec on its server. Served without it (the
// stock protobuf codec), it still settles every entry, and warns once that the codec is
// missing; with the codec it never warns.
func TestSink_WithoutCodecSettlesAndWarns(t *testing.T) {
	t.Parallel()
	const warning = "served without purser's gRPC codec"
	var logs testkit.SyncBuffer
	h := serve(t, accesslog.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	id := h.reserve(t, 5_000, 10_000, "q0")
	h.send(t, []*alsdata.HTTPAccessLogEntry{entry(t, "openai_chat_usage", id, "q0")})
	require.Equal(t, "settled", h.reservation(t, id).State, "entry settled through purser's codec")
	require.NotContains(t, logs.String(), warning, "no warning with purser's codec")

	gs := grpc.NewServer() // the stock protobuf codec
	alsv3.RegisterAccessLogServiceServer(gs, h.sink)
	h.client = alsv3.NewAccessLogServiceClient(testkit.ServeAndDial(t, gs))
	for _, req := range []string{"q1", "q2"} {
		id := h.reserve(t, 5_000, 10_000, req)
		h.send(t, []*alsdata.HTTPAccessLogEntry{entry(t, "openai_chat_usage", id, req)})
		require.Equal(t, "settled", h.reservation(t, id).State, "entry %s settled through the stock codec", req)
	}
	require.Equal(t, 1, strings.Count(logs.String(), warning), "one warning per sink, got log:\n%s", logs.String())
}

// An entry whose reservation id is not one (damaged metadata) is reported unknown and does not
// cost the other entries of its batch their settlement.
func TestSink_MalformedReservationIDSettlesTheRest(t *testing.T) {
	t.Parallel()
	cat, err := catalogOnce()
	require.NoError(t, err)
	// Both entries are queued before the one worker starts, so they settle in one batch.
	h := startSink(t, accesslog.Config{Workers: 1}, cat, false)
	id := h.reserve(t, 5_000, 10_000, "req-good")
	stream, err := h.client.StreamAccessLogs(context.Background())
	require.NoError(t, err)
	require.NoError(t, stream.Send(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
		LogEntry: []*alsdata.HTTPAccessLogEntry{entry(t, "openai_chat_usage", "not-a-reservation", "req-bad"), entry(t, "openai_chat_usage", id, "req-good")}}}}))
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.sink.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h.flush(t)
	require.Equal(t, "settled", h.state(id))
	require.Equal(t, int64(240), *h.reservation(t, id).ActualCost)
	h.requireClean(t)
}

// TestSink_MissingUsageWatchdog: a complete answer without usage is charged its hold with a
// cause that says why when the entry shows it (compressed, an event stream), and every
// complete answer counts in purser.accesslog.usage by route, provider, model and found.
func TestSink_MissingUsageWatchdog(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	h := serve(t, accesslog.Config{Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("t")})
	const hold = 5000
	ids := map[string]string{}
	var batch []*alsdata.HTTPAccessLogEntry
	for _, f := range []string{"compressed_no_usage", "stream_no_usage", "openai_chat_usage", "provider_error"} {
		ids[f] = h.reserve(t, hold, 100, "req-"+f)
		batch = append(batch, entry(t, f, ids[f], "req-"+f))
	}
	h.send(t, batch)
	for f, cause := range map[string]string{"compressed_no_usage": accesslog.CauseCompressed, "stream_no_usage": accesslog.CauseStreamWithoutUsage} {
		r := h.reservation(t, ids[f])
		require.Equal(t, "settled", r.State, f)
		require.Equal(t, cause, *r.Cause, f)
		require.EqualValues(t, hold, *r.ActualCost, "%s: unknown usage is charged the hold", f)
	}
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "purser.accesslog.usage" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				route, _ := dp.Attributes.Value("route")
				prov, _ := dp.Attributes.Value("provider")
				model, _ := dp.Attributes.Value("model")
				found, _ := dp.Attributes.Value("found")
				got[fmt.Sprintf("%s/%s/%s/%t", route.AsString(), prov.AsString(), model.AsString(), found.AsBool())] += dp.Value
			}
		}
	}
	// The provider error is voided, not an answer without usage: it does not count.
	require.Equal(t, map[string]int64{"openai-chat/openai/gpt-4o-mini/false": 2, "openai-chat/openai/gpt-4o-mini/true": 1}, got)
	// The same entries read from a decoded message (Extract) see the same headers.
	e := accesslog.Extract(entry(t, "compressed_no_usage", "x", "y"), &accesslog.ExtractConfig{})
	require.Equal(t, "gzip", e.ContentEncoding)
	require.Equal(t, "application/json", e.ContentType)
}
