package bench

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/purser-dev/purser/grpccodec"
)

// scripted answers Checks by arrival order: OK, a 503 denial (shed), a gRPC error, in turn;
// it records the deadline each Check arrived with and how many ran at once.
type scripted struct {
	authv3.UnimplementedAuthorizationServer
	n, running, peak atomic.Int64
	hold             chan struct{} // when set, each Check waits for it (or its deadline)
	arrived          chan struct{} // when set, told of each Check as it starts
	mu               sync.Mutex
	deadlines        []time.Duration
	ids              map[string]bool
}

func (s *scripted) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	r := s.running.Add(1)
	defer s.running.Add(-1)
	for p := s.peak.Load(); r > p && !s.peak.CompareAndSwap(p, r); p = s.peak.Load() {
	}
	s.mu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		s.deadlines = append(s.deadlines, time.Until(dl))
	}
	if s.ids != nil {
		h := req.GetAttributes().GetRequest().GetHttp()
		s.ids[h.GetHeaders()["x-request-id"]+"/"+h.GetId()] = true
	}
	s.mu.Unlock()
	if s.arrived != nil {
		s.arrived <- struct{}{}
	}
	if s.hold != nil {
		select {
		case <-s.hold:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	switch s.n.Add(1) % 3 {
	case 1:
		return okResponse, nil
	case 2:
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_UNAVAILABLE)}}, nil
	default:
		return nil, status.Error(codes.ResourceExhausted, "scripted")
	}
}

func serveScripted(t *testing.T, s *scripted, opts ...grpc.ServerOption) string {
	t.Helper()
	gs, err := NewGRPCServer()
	if err != nil {
		t.Fatal(err)
	}
	if len(opts) > 0 {
		codec, err := grpccodec.ServerOption()
		if err != nil {
			t.Fatal(err)
		}
		gs = grpc.NewServer(append(opts, codec)...)
	}
	authv3.RegisterAuthorizationServer(gs, s)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func encodeN(t *testing.T, n int) []*wireCheck {
	t.Helper()
	tmpl, err := LoadCheck("openai_chat")
	if err != nil {
		t.Fatal(err)
	}
	reqs, err := Encode(&Workload{Templates: []*CheckTemplate{tmpl}, Secrets: []string{"pk_a"}}, n)
	if err != nil {
		t.Fatal(err)
	}
	return reqs
}

// Every Check reaches a real grpc-go server whole and distinct, with the generator's
// deadline as grpc-timeout, and each kind of answer is counted as OpenLoopWire counts it.
func TestOpenLoopH2_CountsWhatTheServerAnswered(t *testing.T) {
	ctx := context.Background()
	s := &scripted{ids: map[string]bool{}}
	addr := serveScripted(t, s)
	const timeout = 3 * time.Second
	target, err := DialH2(ctx, addr, 2, timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	const n = 300
	d := OpenLoopH2(ctx, target, encodeN(t, n), 3000, timeout)
	if d.Calls != n || d.OK != n/3 || d.Shed != n/3 || d.Failed != n/3 || d.Errors[codes.ResourceExhausted] != n/3 {
		t.Fatalf("want %d sent: %d OK, %d shed, %d failed with ResourceExhausted; got %d sent, %d OK, %d shed, %d failed (%v)",
			n, n/3, n/3, n/3, d.Calls, d.OK, d.Shed, d.Failed, d.Errors)
	}
	if len(s.ids) != n {
		t.Errorf("want %d distinct (x-request-id, stream id) pairs at the server, got %d", n, len(s.ids))
	}
	for _, left := range s.deadlines {
		if left <= 0 || left > timeout {
			t.Fatalf("want each Check to arrive with a deadline within %s (grpc-timeout), got %s left", timeout, left)
		}
	}
	if len(s.deadlines) != n {
		t.Errorf("want a deadline on all %d Checks, got %d", n, len(s.deadlines))
	}
	if len(d.OKLat) != n/3 || len(d.GenLag) != n {
		t.Errorf("want a latency per success and a lag per Check, got %d and %d", len(d.OKLat), len(d.GenLag))
	}
}

// A server's SETTINGS_MAX_CONCURRENT_STREAMS holds: Checks beyond it wait in the client (as
// grpc-go's client and Envoy queue them) instead of being refused by the server.
func TestOpenLoopH2_QueuesBeyondTheServersStreamLimit(t *testing.T) {
	ctx := context.Background()
	const n = 30
	s := &scripted{hold: make(chan struct{}), arrived: make(chan struct{}, n)}
	addr := serveScripted(t, s, grpc.MaxConcurrentStreams(2))
	target, err := DialH2(ctx, addr, 1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	done := make(chan Detail, 1)
	go func() { done <- OpenLoopH2(ctx, target, encodeN(t, n), 1e6, 10*time.Second) }()
	// Two Checks run; the rest wait in the client. Release them once both are running.
	<-s.arrived
	<-s.arrived
	close(s.hold)
	d := <-done
	if d.Calls != n || d.OK+d.Shed+d.Denied != n-n/3 || d.Failed != n/3 || d.Errors[codes.ResourceExhausted] != n/3 {
		t.Fatalf("want all %d Checks answered as scripted (%d gRPC errors, none refused), got %d OK, %d shed, %d failed %v",
			n, n/3, d.OK, d.Shed, d.Failed, d.Errors)
	}
	if p := s.peak.Load(); p != 2 {
		t.Errorf("want at most (and at some point exactly) 2 Checks running at once, the server's limit; saw %d", p)
	}
}

// A Check the server does not answer in time counts as DeadlineExceeded, and the run ends.
func TestOpenLoopH2_DeadlineExceeded(t *testing.T) {
	ctx := context.Background()
	s := &scripted{hold: make(chan struct{})} // never released: every Check waits for its deadline
	addr := serveScripted(t, s)
	const timeout = 50 * time.Millisecond
	target, err := DialH2(ctx, addr, 1, timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	d := OpenLoopH2(ctx, target, encodeN(t, 20), 1000, timeout)
	if d.Calls != 20 || d.Failed != 20 || d.Errors[codes.DeadlineExceeded] != 20 {
		t.Fatalf("want 20 Checks failed with DeadlineExceeded, got %d sent, %d failed %v", d.Calls, d.Failed, d.Errors)
	}
}

// A Check larger than the server's frame size goes out in several DATA frames; one larger
// than a stream's send window (which this client does not wait for) fails at once.
func TestOpenLoopH2_LargeChecks(t *testing.T) {
	ctx := context.Background()
	s := &scripted{}
	addr := serveScripted(t, s)
	target, err := DialH2(ctx, addr, 1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	big := func(size int) *wireCheck {
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: "POST", RawBody: []byte(strings.Repeat("x", size))}}}}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		return &wireCheck{b: b}
	}
	d := OpenLoopH2(ctx, target, []*wireCheck{big(40 << 10)}, 1000, 5*time.Second)
	if d.OK != 1 {
		t.Fatalf("want a 40 KiB Check (3 DATA frames) answered OK, got %d OK, %d failed %v", d.OK, d.Failed, d.Errors)
	}
	d = OpenLoopH2(ctx, target, []*wireCheck{big(80 << 10)}, 1000, 5*time.Second)
	if d.Failed != 1 || d.Errors[codes.Internal] != 1 {
		t.Fatalf("want an 80 KiB Check (over the 64 KiB stream window) failed with Internal, got %d OK, %d failed %v", d.OK, d.Failed, d.Errors)
	}
}

// The closed loop keeps its callers busy and counts only what it answered in the span.
func TestClosedLoopH2(t *testing.T) {
	ctx := context.Background()
	target := dialAllowAllH2(t)
	res := ClosedLoopH2(ctx, target, encodeN(t, 400), 8, 0, time.Minute, 5*time.Second)
	if res.Calls != 400 || res.OK != 400 || res.Failed != 0 {
		t.Fatalf("want all 400 Checks answered OK (the run ends when they run out), got %d calls, %d OK, %d failed (%v)", res.Calls, res.OK, res.Failed, res.FirstErr)
	}
	if res.Elapsed <= 0 || res.Elapsed >= time.Minute || len(res.Lat) != 400 {
		t.Errorf("want the span to end when the Checks ran out and a latency each, got %s and %d latencies", res.Elapsed, len(res.Lat))
	}
}

// Checks due in the warm-up are sent but not counted.
func TestOpenLoopH2Result_SkipsTheWarmUp(t *testing.T) {
	ctx := context.Background()
	target := dialAllowAllH2(t)
	res := OpenLoopH2Result(ctx, target, encodeN(t, 100), 1000, 40*time.Millisecond, 60*time.Millisecond, 5*time.Second)
	if res.Calls != 60 || res.OK != 60 || len(res.Lat) != 60 || len(res.GenLag) != 60 || res.Elapsed != 60*time.Millisecond {
		t.Fatalf("want the 60 Checks due after the 40 ms warm-up counted (all OK) over 60 ms, got %d calls, %d OK, %d latencies, %d lags, %s",
			res.Calls, res.OK, len(res.Lat), len(res.GenLag), res.Elapsed)
	}
}

// dialAllowAllH2 serves AllowAll and opens two h2 connections to it (5 s grpc-timeout).
func dialAllowAllH2(t *testing.T) *H2Target {
	t.Helper()
	addr, stop, err := Serve(AllowAll{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	target, err := DialH2(context.Background(), addr, 2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(target.Close)
	return target
}

// The answer's code is read from the wire as protobuf would read it, only once it is whole.
func TestCheckResponseCode(t *testing.T) {
	framed := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return h2Frame([]*wireCheck{{b: b}})[0]
	}
	denied := framed(&authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_RESOURCE_EXHAUSTED), Message: "budget"},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "no"}}})
	for _, tc := range []struct {
		name string
		b    []byte
		code int32
		ok   bool
	}{
		{"ok", framed(okResponse), 0, true},
		{"no status is OK", framed(&authv3.CheckResponse{}), 0, true},
		{"denied", denied, int32(code.Code_RESOURCE_EXHAUSTED), true},
		{"partial", denied[:len(denied)-1], 0, false},
		{"prefix only", denied[:4], 0, false},
		{"malformed", append([]byte{0, 0, 0, 0, 2}, 0x0a, 0x05), -1 - int32(codes.Internal), true},
	} {
		if c, ok := checkResponseCode(tc.b); c != tc.code || ok != tc.ok {
			t.Errorf("%s: want code %d, whole %v; got %d, %v", tc.name, tc.code, tc.ok, c, ok)
		}
	}
}
