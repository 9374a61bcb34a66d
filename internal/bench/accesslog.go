package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ALS is a connection to an access-log service.
type ALS struct {
	conn   *grpc.ClientConn
	client alsv3.AccessLogServiceClient
}

// DialALS connects to addr.
func DialALS(addr string) (*ALS, error) {
	codec, err := clientCodec()
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), codec)
	if err != nil {
		return nil, err
	}
	return &ALS{conn: cc, client: alsv3.NewAccessLogServiceClient(cc)}, nil
}

// Close closes the connection.
func (a *ALS) Close() error { return a.conn.Close() }

// StreamOptions configures Stream.
type StreamOptions struct {
	// Streams is how many concurrent streams carry the entries (Envoy opens one per worker
	// thread); default 4.
	Streams int
	// PerMessage is how many entries one message carries (Envoy flushes its 16 KiB buffer);
	// default 16.
	PerMessage int
	// Before is called before a message with entries [first, first+count) is built and sent;
	// it may block (pacing, flow control). An error stops the stream.
	Before func(ctx context.Context, first, count int) error
	// Sent is called after that message was handed to the stream.
	Sent func(first, count int, at time.Time)
}

// Stream sends n entries, entry(i) for i in [0, n), like Envoy's gRPC access logger: a
// stream identifies its node on its first message, then carries batches of entries. Each
// stream is closed at the end (the sink has then queued, not necessarily settled, them).
func (a *ALS) Stream(ctx context.Context, n int, entry func(i int) *alsdata.HTTPAccessLogEntry, o StreamOptions) error {
	if o.Streams <= 0 {
		o.Streams = 4
	}
	if o.PerMessage <= 0 {
		o.PerMessage = 16
	}
	var next atomic.Int64
	errs := make(chan error, o.Streams)
	var wg sync.WaitGroup
	for s := range o.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- a.stream(ctx, s, n, &next, entry, o)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *ALS) stream(ctx context.Context, s, n int, next *atomic.Int64, entry func(int) *alsdata.HTTPAccessLogEntry, o StreamOptions) error {
	st, err := a.client.StreamAccessLogs(ctx)
	if err != nil {
		return err
	}
	first := true
	for {
		from := int(next.Add(int64(o.PerMessage))) - o.PerMessage
		if from >= n {
			break
		}
		count := min(o.PerMessage, n-from)
		if o.Before != nil {
			if err := o.Before(ctx, from, count); err != nil {
				_ = st.CloseSend()
				return err
			}
		}
		es := make([]*alsdata.HTTPAccessLogEntry, count)
		for i := range es {
			es[i] = entry(from + i)
		}
		msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}}
		if first {
			msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{
				Node: &corev3.Node{Id: fmt.Sprintf("bench-envoy-%d", s)}, LogName: "purser"}
			first = false
		}
		if err := st.Send(msg); err != nil {
			return fmt.Errorf("access-log stream %d: %w", s, err)
		}
		if o.Sent != nil {
			o.Sent(from, count, time.Now())
		}
	}
	if _, err := st.CloseAndRecv(); err != nil {
		return fmt.Errorf("access-log stream %d: close: %w", s, err)
	}
	return nil
}
