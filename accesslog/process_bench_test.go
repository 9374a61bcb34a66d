package accesslog

import (
	"context"
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/protobuf/proto"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

// answerAll is a ledger that settles everything without a database: the benchmark measures
// the sink's own work per entry (judging, usage, metrics), not Postgres.
type answerAll struct{}

func (answerAll) Settle(_ context.Context, batch []budget.Settlement) ([]budget.SettleResult, error) {
	out := make([]budget.SettleResult, len(batch))
	for i, st := range batch {
		out[i] = budget.SettleResult{ReservationID: st.ReservationID, Outcome: budget.OutcomeSettled}
	}
	return out, nil
}

func (answerAll) RecordUnreserved(context.Context, []budget.Unreserved) (int, error) { return 0, nil }

func (answerAll) ReservationsForRequest(context.Context, string, time.Time, time.Time, time.Time) ([]budget.Reservation, error) {
	return nil, nil
}

// BenchmarkProcess: one batch of 256 decoded entries (16 messages of 16, as Envoy flushes
// them) through the sink's process, with a real OpenTelemetry meter; ns/op per batch.
func BenchmarkProcess(b *testing.B) {
	e := wireFixtures(b)["openai_chat_usage"]
	es := make([]*alsdata.HTTPAccessLogEntry, 16)
	for i := range es {
		es[i] = e
	}
	wire, err := proto.Marshal(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}})
	require.NoError(b, err)
	cat, err := pricing.Embedded()
	require.NoError(b, err)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	s, err := New(answerAll{}, func() *pricing.Catalog { return cat }, Config{Meter: mp.Meter("bench")})
	require.NoError(b, err)
	var batch []Entry
	for range 16 {
		m, err := decodeMessage(wire, &s.extract)
		require.NoError(b, err)
		batch = append(batch, m.http...)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		s.process(ctx, batch)
	}
}
