package accesslog_test

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/proof"
)

func testRing(t *testing.T) *proof.Keyring {
	t.Helper()
	secret := make([]byte, proof.KeySize)
	_, err := rand.Read(secret)
	require.NoError(t, err)
	now := time.Now()
	var r proof.Keyring
	require.NoError(t, r.Set([]proof.Key{{ID: "1", Secret: secret, ActivatesAt: now.Add(-time.Hour), RetiresAt: now.Add(time.Hour), ExpiresAt: now.Add(72 * time.Hour)}}))
	return &r
}

func authz(e *alsdata.HTTPAccessLogEntry) map[string]*structpb.Value {
	return e.GetCommonProperties().GetMetadata().GetFilterMetadata()["envoy.filters.http.ext_authz"].GetFields()
}

// sign adds the proof extauthz would have written for the entry's metadata.
func sign(t *testing.T, ring *proof.Keyring, e *alsdata.HTTPAccessLogEntry) *alsdata.HTTPAccessLogEntry {
	t.Helper()
	f := authz(e)
	c := proof.Claims{Decision: f["purser_decision"].GetStringValue(), ReservationID: f["reservation_id"].GetStringValue(),
		ReservedMicros: f["reserved_micros"].GetStringValue(), ReservedTokens: f["reserved_tokens"].GetStringValue(),
		KeyID: f["key_id"].GetStringValue(), Subjects: f["subjects"].GetStringValue(),
		Provider: f["provider"].GetStringValue(), Flavor: f["api_flavor"].GetStringValue(), Model: f["model"].GetStringValue()}
	tok, err := ring.Sign(&c, time.Now(), time.Now().Add(time.Hour))
	require.NoError(t, err)
	f["purser_proof"] = structpb.NewStringValue(tok)
	return e
}

func metered(cfg accesslog.Config) (accesslog.Config, *sdkmetric.ManualReader) {
	reader := sdkmetric.NewManualReader()
	cfg.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")
	return cfg, reader
}

// Only purser's proof moves money: forged, altered, unsigned and expired entries are refused
// before they take a queue slot, counted, and never reach the ledger.
func TestSink_RefusesEntriesWithoutPurserProof(t *testing.T) {
	t.Parallel()
	ring := testRing(t)
	cfg, reader := metered(accesslog.Config{Verifier: ring})
	h := serve(t, cfg)

	genuine := h.reserve(t, 160_000, 10_000, "req-genuine")
	victim := h.reserve(t, 160_000, 10_000, "req-victim")
	voidable := h.reserve(t, 160_000, 10_000, "req-voidable")

	unsigned := entry(t, "openai_chat_usage", victim, "req-victim") // usage: would settle at $0.00024
	altered := sign(t, ring, entry(t, "openai_chat_usage", victim, "req-victim"))
	authz(altered)["reservation_id"] = structpb.NewStringValue(voidable) // a proof for another reservation
	reused := sign(t, ring, entry(t, "provider_error", genuine, "req-genuine"))
	authz(reused)["model"] = structpb.NewStringValue("gpt-4o-mini-cheaper")
	var other proof.Keyring
	otherSecret := make([]byte, proof.KeySize)
	_, _ = rand.Read(otherSecret)
	require.NoError(t, other.Set([]proof.Key{{ID: "1", Secret: otherSecret, ActivatesAt: time.Now().Add(-time.Hour), RetiresAt: time.Now().Add(time.Hour), ExpiresAt: time.Now().Add(time.Hour)}}))
	guessed := sign(t, &other, entry(t, "provider_error", voidable, "req-voidable"))
	forgedCharge := entry(t, "unverified_usage", "", "req-charge")
	authz(forgedCharge)["subjects"] = structpb.NewStringValue("user:alice")
	authz(forgedCharge)["purser_proof"] = structpb.NewStringValue("1.1.9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")

	h.send(t, []*alsdata.HTTPAccessLogEntry{unsigned, altered, reused, guessed, forgedCharge,
		sign(t, ring, entry(t, "openai_chat_usage", genuine, "req-genuine"))})

	require.Equal(t, "pending", h.state(victim), "an unsigned entry cannot settle it at $0.00024")
	require.Equal(t, "pending", h.state(voidable), "neither another reservation's proof nor a guessed key can void it")
	r := h.reservation(t, genuine)
	require.Equal(t, "settled", r.State)
	require.Equal(t, int64(240), *r.ActualCost, "the genuine entry settles the real cost")
	got := countsByOutcome(t, reader, "purser.accesslog.entries")
	require.Equal(t, int64(1), got["refused_missing"], "%v", got)
	require.Equal(t, int64(4), got["refused_bad_mac"], "altered, reused, guessed, made up: %v", got)
	require.Equal(t, int64(1), got["received"], "only the genuine entry took a queue slot: %v", got)
	var unreserved int
	require.NoError(t, h.schema.Pool.QueryRow(context.Background(), `SELECT count(*) FROM reservations WHERE unreserved`).Scan(&unreserved))
	require.Zero(t, unreserved, "no forged charge to user:alice")
	h.requireClean(t)
}

// The x-request-id reuse attack: a second request reusing a running request's x-request-id,
// reset before its Check answered, logs an entry without ext_authz metadata. It must not void
// or cheapen the first request's reservation, whose own entry later settles its real cost.
//
// The join is on the request's start time too: Envoy stamps CheckRequest
// attributes.request.time (source/extensions/filters/common/ext_authz/check_request_utils.cc,
// setRequestTime: StreamInfo::startTime() in nanoseconds) and the access-log entry's
// common_properties.start_time (source/extensions/access_loggers/grpc/grpc_access_log_utils.cc,
// extractCommonAccessLogProperties: the same startTime(), nanoseconds) from one clock reading.
func TestSink_RequestIDReuseCannotVoidAnother(t *testing.T) {
	t.Parallel()
	ring := testRing(t)
	h := serve(t, accesslog.Config{Verifier: ring})
	startA := time.Now().Add(-2 * time.Second)
	first := h.reserveStarted(t, 160_000, "shared-id", startA)

	// The attacker's request: same x-request-id, started later, reset before its Check
	// answered (no metadata, nothing upstream).
	attack := entry(t, "ext_authz_error", "", "shared-id")
	attack.CommonProperties.StartTime = timestamppb.New(startA.Add(time.Millisecond))
	h.send(t, []*alsdata.HTTPAccessLogEntry{attack})
	require.Equal(t, "pending", h.state(first), "the running request's hold is untouched")

	real := sign(t, ring, entry(t, "openai_chat_usage", first, "shared-id"))
	real.CommonProperties.StartTime = timestamppb.New(startA)
	h.send(t, []*alsdata.HTTPAccessLogEntry{real})
	r := h.reservation(t, first)
	require.Equal(t, "settled", r.State)
	require.Equal(t, int64(240), *r.ActualCost, "its real cost, not a duplicate at zero")
	h.requireClean(t)
}

// A lost Check answer: the entry without metadata joins its own reservation by request id and
// start time; with usage it settles, without it charges the hold provisionally, and a proven
// entry arriving later still settles the real cost.
func TestSink_FallbackSettlesOrChargesProvisionally(t *testing.T) {
	t.Parallel()
	ring := testRing(t)
	h := serve(t, accesslog.Config{Verifier: ring})
	start := time.Now().Add(-time.Second)
	withUsage := h.reserveStarted(t, 160_000, "lost-usage", start)
	noUsage := h.reserveStarted(t, 160_000, "lost-none", start)

	u := entry(t, "openai_chat_usage", "", "lost-usage")
	delete(u.CommonProperties.Metadata.FilterMetadata, "envoy.filters.http.ext_authz")
	u.CommonProperties.StartTime = timestamppb.New(start)
	n := entry(t, "ext_authz_error", "", "lost-none")
	n.CommonProperties.StartTime = timestamppb.New(start)
	h.send(t, []*alsdata.HTTPAccessLogEntry{u, n})

	r := h.reservation(t, withUsage)
	require.Equal(t, "settled", r.State)
	require.Equal(t, "request_id_join:usage", *r.Cause)
	require.Equal(t, int64(240), *r.ActualCost)
	r = h.reservation(t, noUsage)
	require.Equal(t, "expired", r.State, "provisional: never a void")
	require.Equal(t, int64(160_000), *r.ActualCost)

	later := sign(t, ring, entry(t, "openai_chat_usage", noUsage, "lost-none"))
	h.send(t, []*alsdata.HTTPAccessLogEntry{later})
	r = h.reservation(t, noUsage)
	require.Equal(t, "settled", r.State, "the proven entry replaces the provisional charge")
	require.Equal(t, int64(240), *r.ActualCost)
	h.requireClean(t)
}

// Entries without a proof are taken only from an authenticated stream.
func TestSink_UnsignedEntriesNeedAnAuthenticatedStream(t *testing.T) {
	t.Parallel()
	var authenticated atomic.Bool
	cfg, reader := metered(accesslog.Config{Authenticated: func(context.Context) bool { return authenticated.Load() }})
	h := serve(t, cfg)
	start := time.Now().Add(-time.Second)
	id := h.reserveStarted(t, 160_000, "lost", start)
	e := entry(t, "ext_authz_error", "", "lost")
	e.CommonProperties.StartTime = timestamppb.New(start)
	h.send(t, []*alsdata.HTTPAccessLogEntry{e})
	require.Equal(t, "pending", h.state(id))
	require.Equal(t, int64(1), countsByOutcome(t, reader, "purser.accesslog.entries")["refused_unauthenticated"])
	authenticated.Store(true)
	h.send(t, []*alsdata.HTTPAccessLogEntry{e})
	require.Equal(t, "expired", h.state(id))
}

// A flood of forged and unsigned entries does not starve proven ones of queue slots: forged
// ones are refused before the queue, unsigned ones have their share of it.
func TestSink_FloodDoesNotStarveProvenEntries(t *testing.T) {
	t.Parallel()
	cat, err := catalogOnce()
	require.NoError(t, err)
	ring := testRing(t)
	cfg, reader := metered(accesslog.Config{Verifier: ring, QueueSize: 64, UnsignedShare: 0.125})
	h := startSink(t, cfg, cat, false) // nothing drains the queue: slots are the only resource
	var flood []*alsdata.HTTPAccessLogEntry
	for i := range 2000 {
		f := entry(t, "provider_error", "018f0000-0000-7000-8000-0000000000aa", "forged-"+strconv.Itoa(i))
		authz(f)["purser_proof"] = structpb.NewStringValue("1.1.9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
		flood = append(flood, f, entry(t, "ext_authz_error", "", "unsigned-"+strconv.Itoa(i)))
	}
	var genuine []*alsdata.HTTPAccessLogEntry
	for i := range 50 {
		genuine = append(genuine, sign(t, ring, entry(t, "openai_chat_usage", "018f0000-0000-7000-8000-0000000001"+strconv.Itoa(10+i), "g"+strconv.Itoa(i))))
	}
	stream, err := h.client.StreamAccessLogs(context.Background())
	require.NoError(t, err)
	for i := 0; i < len(flood); i += 500 {
		require.NoError(t, stream.Send(httpLogs(flood[i:i+500])))
	}
	require.NoError(t, stream.Send(httpLogs(genuine)))
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)
	got := countsByOutcome(t, reader, "purser.accesslog.entries")
	require.Equal(t, int64(8+50), got["received"], "8 unsigned (their share) and every proven entry: %v", got)
	require.Equal(t, int64(2000-8), got["unsigned_dropped"])
	require.Equal(t, int64(2000), got["refused_bad_mac"])
	require.Zero(t, got["dropped"])
}

func httpLogs(es []*alsdata.HTTPAccessLogEntry) *alsv3.StreamAccessLogsMessage {
	return &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}}
}

// Streams are bounded: over MaxStreams they are refused at once; an idle one is ended; one
// stream's entries are capped per second.
func TestSink_StreamLimits(t *testing.T) {
	t.Parallel()
	cfg, reader := metered(accesslog.Config{MaxStreams: 3, IdleTimeout: time.Second, EvictIdle: time.Hour, StreamRate: 10})
	h := serve(t, cfg)
	ctx := context.Background()
	var open []alsv3.AccessLogService_StreamAccessLogsClient
	for range 3 {
		s, err := h.client.StreamAccessLogs(ctx)
		require.NoError(t, err)
		require.NoError(t, s.Send(httpLogs(nil))) // make the stream exist at the server
		open = append(open, s)
	}
	require.Eventually(t, func() bool { return h.sink.Streams() == 3 }, 10*time.Second, 5*time.Millisecond)
	extra, err := h.client.StreamAccessLogs(ctx)
	require.NoError(t, err)
	_, err = extra.CloseAndRecv()
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "the fourth stream is refused")

	// Idle streams end on their own (the first one stays busy, so it lives on).
	busyDone := make(chan int)
	go func() {
		sent := 0
		for range 40 {
			if open[0].Send(httpLogs(nil)) != nil {
				break
			}
			sent++
			time.Sleep(50 * time.Millisecond) // a busy Envoy worker flushing every 50 ms
		}
		busyDone <- sent
	}()
	for _, s := range open[1:] {
		// Wait for the server's answer without closing our side: the server ends it.
		err := s.RecvMsg(new(alsv3.StreamAccessLogsResponse))
		require.Equal(t, codes.Canceled, status.Code(err), "an idle stream is ended by the server")
	}
	require.Equal(t, 40, <-busyDone, "the busy stream lived on past the idle timeout")
	require.GreaterOrEqual(t, counterBy(t, reader, "purser.accesslog.streams", "event")["idle_timeout"], int64(2))

	// Rate: 10 entries/s, burst 21: a message of 100 entries keeps 21.
	var b []*alsdata.HTTPAccessLogEntry
	for i := range 100 {
		b = append(b, entry(t, "denied", "", "r"+strconv.Itoa(i)))
	}
	s, err := h.client.StreamAccessLogs(ctx) // opened only now: it idles out after a second
	require.NoError(t, err)
	require.NoError(t, s.Send(httpLogs(b)))
	_, err = s.CloseAndRecv()
	require.NoError(t, err)
	got := countsByOutcome(t, reader, "purser.accesslog.entries")
	require.Equal(t, int64(79), got["rate_limited"], "%v", got)
	require.Equal(t, int64(21), got["not_reserved_denied"])
}

// At the stream limit, a new stream ends the one quiet the longest instead of being refused:
// streams held open and silent cannot keep Envoy's out.
func TestSink_NewStreamEvictsTheQuietest(t *testing.T) {
	t.Parallel()
	cfg, reader := metered(accesslog.Config{MaxStreams: 2, EvictIdle: 200 * time.Millisecond})
	h := serve(t, cfg)
	ctx := context.Background()
	var quiet []alsv3.AccessLogService_StreamAccessLogsClient
	for range 2 {
		s, err := h.client.StreamAccessLogs(ctx)
		require.NoError(t, err)
		require.NoError(t, s.Send(httpLogs(nil)))
		quiet = append(quiet, s)
	}
	require.Eventually(t, func() bool { return h.sink.Streams() == 2 }, 10*time.Second, 5*time.Millisecond)
	// Envoy's new stream gets in once the others have been quiet long enough. The stream
	// that got in is not necessarily the last one tried (the eviction is seen a moment after
	// the attempt that caused it): every attempt is kept, and judged at the end.
	var attempts []alsv3.AccessLogService_StreamAccessLogsClient
	require.Eventually(t, func() bool {
		s, err := h.client.StreamAccessLogs(ctx)
		if err != nil {
			return false
		}
		attempts = append(attempts, s)
		if s.Send(httpLogs(nil)) != nil {
			return false
		}
		return counterBy(t, reader, "purser.accesslog.streams", "event")["evicted"] >= 1
	}, 10*time.Second, 50*time.Millisecond)
	ended := 0
	for _, s := range quiet {
		done := make(chan error, 1)
		go func() { done <- s.RecvMsg(new(alsv3.StreamAccessLogsResponse)) }()
		select {
		case err := <-done:
			require.Equal(t, codes.Canceled, status.Code(err))
			ended++
		case <-time.After(time.Second): // the other one is still open: that is the point
		}
	}
	require.GreaterOrEqual(t, ended, 1, "a quiet stream made room")
	works := 0
	for _, s := range attempts {
		_, err := s.CloseAndRecv()
		if err == nil {
			works++
			continue
		}
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "an attempt before the eviction is refused: %v", err)
	}
	require.GreaterOrEqual(t, works, 1, "a new stream got in and works (of %d attempts)", len(attempts))
}

func counterBy(t *testing.T, reader *sdkmetric.ManualReader, name, attr string) map[string]int64 {
	t.Helper()
	return countsByAttr(t, reader, name, attr)
}
