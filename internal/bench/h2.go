package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/purser-dev/purser/internal/pbwire"
)

// The h2 generator speaks gRPC over HTTP/2 frames itself, as Envoy's ext_authz client does
// in C++, instead of through grpc-go's client: a grpc-go call costs the generator about
// 40 µs of CPU (a goroutine, a stream object, its own HPACK encoding, a blocking wait),
// which on a shared 2-core machine is taken from the server it measures. Here a Check is a
// HEADERS frame whose block is encoded once per target and a DATA frame of bytes encoded
// before the run, written into a buffer flushed once per batch; one reader per connection
// parses the answers. It honours what a server may impose on a client (SETTINGS_MAX_
// CONCURRENT_STREAMS: extra requests queue, as grpc-go's client and Envoy queue them; the
// connection's send window; SETTINGS_MAX_FRAME_SIZE), acknowledges SETTINGS and PING (grpc-
// go's BDP estimator pings), and returns what it receives to the server's window.

// H2Target is a set of HTTP/2 connections to one gRPC server.
type H2Target struct{ conns []*h2Conn }

// h2 sizes: the client's receive windows are opened wide at once (answers are small and
// read at once), and returned in steps of h2WindowStep.
const (
	h2RecvWindow = 1 << 30
	h2WindowStep = 1 << 20
	h2BufSize    = 64 << 10
)

// h2Done receives a request's outcome: the CheckResponse's status code, or -1 - the gRPC
// code of a call that failed (the convention of Detail.add).
type h2Done func(code int32)

type h2Req struct {
	b    []byte // gRPC length prefix and CheckRequest
	done h2Done
}

type h2Stream struct {
	done h2Done
	msg  []byte
	code int32
	have bool // a whole CheckResponse was read
}

type h2Conn struct {
	nc  net.Conn
	br  *bufio.Reader
	fr  *http2.Framer
	hdr []byte // the request header block (never-indexed literals: no HPACK state)

	mu         sync.Mutex
	bw         *bufio.Writer
	dirty      bool
	nextID     uint32
	maxStreams int
	streamWin  int64 // the server's initial stream window
	sendWin    int64 // what the connection may still send
	maxFrame   int
	unacked    int // bytes received and not yet returned to the server's window
	pending    []h2Req
	streams    map[uint32]*h2Stream
	err        error
	settled    chan struct{} // closed when the server's first SETTINGS is applied
	readerDone chan struct{}
}

// DialH2 opens n HTTP/2 connections to the gRPC server at addr. Checks sent through the
// target carry grpc-timeout = timeout (Envoy sends its ext_authz timeout the same way).
func DialH2(ctx context.Context, addr string, n int, timeout time.Duration) (*H2Target, error) {
	hdr, err := h2HeaderBlock(addr, timeout)
	if err != nil {
		return nil, err
	}
	t := &H2Target{}
	for range n {
		c, err := dialH2(ctx, addr, hdr)
		if err != nil {
			t.Close()
			return nil, err
		}
		t.conns = append(t.conns, c)
	}
	return t, nil
}

// h2HeaderBlock encodes a Check's request headers as never-indexed literals, so the same
// block can be sent on every stream without touching either side's dynamic table.
func h2HeaderBlock(addr string, timeout time.Duration) ([]byte, error) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: authv3.Authorization_Check_FullMethodName},
		{Name: ":authority", Value: addr},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}
	if timeout > 0 {
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: strconv.FormatInt(max(timeout.Milliseconds(), 1), 10) + "m"})
	}
	for _, f := range fields {
		f.Sensitive = true
		if err := enc.WriteField(f); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

func dialH2(ctx context.Context, addr string, hdr []byte) (*h2Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("h2 dial %s: %w", addr, err)
	}
	c := &h2Conn{
		nc: nc, br: bufio.NewReaderSize(nc, h2BufSize), bw: bufio.NewWriterSize(nc, h2BufSize), hdr: hdr,
		nextID: 1, maxStreams: 100, streamWin: 65535, sendWin: 65535, maxFrame: 16384,
		streams: map[uint32]*h2Stream{}, settled: make(chan struct{}), readerDone: make(chan struct{}),
	}
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.SetReuseFrames()
	_, _ = c.bw.WriteString(http2.ClientPreface)
	err = errors.Join(
		c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2RecvWindow},
			http2.Setting{ID: http2.SettingEnablePush, Val: 0}),
		c.fr.WriteWindowUpdate(0, h2RecvWindow-65535),
		c.bw.Flush())
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("h2 handshake with %s: %w", addr, err)
	}
	go c.read()
	select {
	case <-c.settled:
		return c, nil
	case <-c.readerDone:
		_ = nc.Close()
		return nil, fmt.Errorf("h2 handshake with %s: %w", addr, c.failure())
	case <-ctx.Done():
		_ = nc.Close()
		return nil, fmt.Errorf("h2 handshake with %s: %w", addr, ctx.Err())
	}
}

// Close closes every connection; requests still open fail with Unavailable.
func (t *H2Target) Close() {
	for _, c := range t.conns {
		_ = c.nc.Close()
		<-c.readerDone
	}
}

// Flush writes out what the connections have buffered.
func (t *H2Target) Flush() {
	for _, c := range t.conns {
		c.mu.Lock()
		c.flushLocked()
		c.mu.Unlock()
	}
}

// send queues a request on the connection and writes it when the server's limits allow; it
// is on the wire after the next flush (Flush, or the reader's once it has read all it had).
func (c *h2Conn) send(b []byte, done h2Done) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		done(-1 - int32(codes.Unavailable))
		return
	}
	c.pending = append(c.pending, h2Req{b: b, done: done})
	failed := c.pumpLocked()
	c.mu.Unlock()
	for _, r := range failed {
		r.done(-1 - int32(codes.Internal))
	}
}

// pumpLocked writes queued requests while the server's stream limit and the connection's
// send window allow; it returns requests that can never be sent (larger than a stream's
// window), for the caller to fail outside the lock.
func (c *h2Conn) pumpLocked() (failed []h2Req) {
	for len(c.pending) > 0 && len(c.streams) < c.maxStreams {
		r := c.pending[0]
		if int64(len(r.b)) > c.streamWin {
			c.pending = c.pending[1:]
			failed = append(failed, r)
			continue
		}
		if int64(len(r.b)) > c.sendWin {
			break
		}
		c.pending[0] = h2Req{}
		c.pending = c.pending[1:]
		id := c.nextID
		c.nextID += 2
		err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hdr, EndHeaders: true})
		for rest := r.b; err == nil; {
			n := min(len(rest), c.maxFrame)
			err = c.fr.WriteData(id, n == len(rest), rest[:n])
			if rest = rest[n:]; len(rest) == 0 {
				break
			}
		}
		if err != nil {
			c.err = err
			failed = append(failed, r)
			break
		}
		c.sendWin -= int64(len(r.b))
		c.streams[id] = &h2Stream{done: r.done}
		c.dirty = true
	}
	return failed
}

func (c *h2Conn) flushLocked() {
	if c.dirty && c.err == nil {
		if err := c.bw.Flush(); err != nil {
			c.err = err
		}
		c.dirty = false
	}
}

func (c *h2Conn) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// read handles the server's frames until the connection ends, then fails what is open.
func (c *h2Conn) read() {
	defer close(c.readerDone)
	var err error
	for err == nil {
		var f http2.Frame
		if f, err = c.fr.ReadFrame(); err != nil {
			break
		}
		err = c.handle(f)
		if c.br.Buffered() == 0 {
			c.mu.Lock()
			c.flushLocked()
			c.mu.Unlock()
		}
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	open := make([]h2Done, 0, len(c.streams)+len(c.pending))
	for _, s := range c.streams {
		open = append(open, s.done)
	}
	for _, r := range c.pending {
		open = append(open, r.done)
	}
	c.streams, c.pending = map[uint32]*h2Stream{}, nil
	c.mu.Unlock()
	for _, d := range open {
		d(-1 - int32(codes.Unavailable))
	}
}

func (c *h2Conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		err := f.ForeachSetting(func(s http2.Setting) error {
			switch s.ID {
			case http2.SettingMaxConcurrentStreams:
				c.maxStreams = int(s.Val)
			case http2.SettingInitialWindowSize:
				c.streamWin = int64(s.Val)
			case http2.SettingMaxFrameSize:
				c.maxFrame = int(s.Val)
			}
			return nil
		})
		if err == nil {
			err = c.fr.WriteSettingsAck()
		}
		c.dirty = true
		failed := c.pumpLocked()
		c.mu.Unlock()
		c.fail(failed)
		select {
		case <-c.settled:
		default:
			close(c.settled)
		}
		return err
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 {
			return nil // a request is one DATA frame within its stream's first window
		}
		c.mu.Lock()
		c.sendWin += int64(f.Increment)
		failed := c.pumpLocked()
		c.mu.Unlock()
		c.fail(failed)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		err := c.fr.WritePing(true, f.Data)
		c.dirty = true
		c.mu.Unlock()
		return err
	case *http2.DataFrame:
		c.mu.Lock()
		var err error
		if c.unacked += int(f.Length); c.unacked >= h2WindowStep {
			err = c.fr.WriteWindowUpdate(0, uint32(c.unacked))
			c.unacked, c.dirty = 0, true
		}
		s := c.streams[f.StreamID]
		if s != nil && !s.have {
			s.msg = append(s.msg, f.Data()...)
			s.code, s.have = checkResponseCode(s.msg)
		}
		c.mu.Unlock()
		if s != nil && f.StreamEnded() {
			c.end(f.StreamID, -1-int32(codes.Internal)) // a gRPC answer ends with trailers
		}
		return err
	case *http2.MetaHeadersFrame:
		if !f.StreamEnded() {
			return nil // response headers; the trailers say how the call ended
		}
		code := int32(-1 - int32(codes.Internal))
		if v := headerValue(f, "grpc-status"); v != "" {
			n, err := strconv.Atoi(v)
			switch {
			case err != nil:
			case n != 0:
				code = -1 - int32(n)
			default:
				c.mu.Lock()
				if s := c.streams[f.StreamID]; s != nil && s.have {
					code = s.code
				}
				c.mu.Unlock()
			}
		}
		c.end(f.StreamID, code)
	case *http2.RSTStreamFrame:
		code := codes.Internal
		switch f.ErrCode {
		case http2.ErrCodeRefusedStream:
			code = codes.Unavailable
		case http2.ErrCodeCancel:
			code = codes.Canceled
		}
		c.end(f.StreamID, -1-int32(code))
	case *http2.GoAwayFrame:
		return fmt.Errorf("server sent GOAWAY (%v)", f.ErrCode)
	}
	return nil
}

// end closes a stream with its outcome and lets a queued request take its place.
func (c *h2Conn) end(id uint32, code int32) {
	c.mu.Lock()
	s := c.streams[id]
	delete(c.streams, id)
	failed := c.pumpLocked()
	c.mu.Unlock()
	c.fail(failed)
	if s != nil {
		s.done(code)
	}
}

func (c *h2Conn) fail(rs []h2Req) {
	for _, r := range rs {
		r.done(-1 - int32(codes.Internal))
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// checkResponseCode reads a length-prefixed CheckResponse's status.code (CheckResponse field
// 1, google.rpc.Status field 1); ok is false until the whole message has arrived. A
// malformed message is a failed call (Internal).
func checkResponseCode(b []byte) (code int32, ok bool) {
	if len(b) < 5 || len(b)-5 < int(binary.BigEndian.Uint32(b[1:5])) {
		return 0, false
	}
	status, err := pbField(b[5:5+int(binary.BigEndian.Uint32(b[1:5]))], 1)
	if err == nil && status != nil {
		var c *pbwire.Field
		if c, err = pbField(status.Bytes, 1); c != nil {
			code = int32(c.Scalar)
		}
	}
	if err != nil {
		return -1 - int32(codes.Internal), true
	}
	return code, true
}

// pbField returns the last field numbered num in a message (protobuf's rule for a scalar;
// a CheckResponse's status is never split), or nil.
func pbField(m []byte, num protowire.Number) (*pbwire.Field, error) {
	var last *pbwire.Field
	for len(m) > 0 {
		f, rest, err := pbwire.Next(m)
		if err != nil {
			return nil, err
		}
		if f.Num == num {
			last = &f
		}
		m = rest
	}
	return last, nil
}

// h2Frame gives each pre-encoded Check its gRPC length prefix, all in one buffer (one
// allocation the garbage collector need not scan).
func h2Frame(reqs []*wireCheck) [][]byte {
	size := 0
	for _, r := range reqs {
		size += 5 + len(r.b)
	}
	arena := make([]byte, 0, size)
	out := make([][]byte, len(reqs))
	for i, r := range reqs {
		start := len(arena)
		arena = append(arena, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(arena[start+1:], uint32(len(r.b)))
		arena = append(arena, r.b...)
		out[i] = arena[start:len(arena):len(arena)]
	}
	return out
}

// h2Outcome is one request's result; state guards it between the reader that delivers it
// and a tally that gives up waiting (0 open, 1 being written, 2 written, 3 given up).
type h2Outcome struct {
	state       atomic.Int32
	fired, done time.Time
	code        int32
}

// deliver records a request's outcome unless the tally gave up on it already.
func (o *h2Outcome) deliver(code int32, timeout time.Duration) bool {
	if !o.state.CompareAndSwap(0, 1) {
		return false
	}
	o.done = time.Now()
	if o.done.Sub(o.fired) > timeout {
		// Past its deadline the caller has given up, whatever came (a late answer, or the
		// server's RST_STREAM when its own copy of the deadline fired): grpc-go's client
		// reports DeadlineExceeded then too.
		code = -1 - int32(codes.DeadlineExceeded)
	}
	o.code = code
	o.state.Store(2)
	return true
}

// settle waits (briefly: a delivery in progress) for an outcome, or gives up on an open one.
func (o *h2Outcome) settle() bool {
	for {
		if o.state.CompareAndSwap(0, 3) {
			return false
		}
		if o.state.Load() == 2 {
			return true
		}
		runtime.Gosched()
	}
}

// h2Run is what an h2 open-loop run sent and got back.
type h2Run struct {
	start    time.Time
	interval float64 // nanoseconds between requests
	outs     []h2Outcome
	sent     int
	genCPU   time.Duration
}

// each calls f with every sent request's outcome: its latency from when it was due, how late
// it was sent, and its code (a request with no answer counts as DeadlineExceeded, its latency
// the deadline).
func (r *h2Run) each(timeout time.Duration, f func(i int, lat, lag time.Duration, code int32)) {
	for i := range r.sent {
		o := &r.outs[i]
		due := r.start.Add(time.Duration(float64(i) * r.interval))
		if !o.settle() {
			f(i, o.fired.Add(timeout).Sub(due), o.fired.Sub(due), -1-int32(codes.DeadlineExceeded))
			continue
		}
		f(i, o.done.Sub(due), o.fired.Sub(due), o.code)
	}
}

// openLoopH2 sends reqs on a fixed schedule: request i is due at start + i/rate; a timer
// loop writes every request due by each millisecond's tick and flushes once. It returns when
// every request is answered, or a second after the last one's deadline.
func openLoopH2(ctx context.Context, t *H2Target, reqs []*wireCheck, rate float64, timeout time.Duration) *h2Run {
	framed := h2Frame(reqs)
	n := len(framed)
	r := &h2Run{interval: float64(time.Second) / rate, outs: make([]h2Outcome, n)}
	var left sync.WaitGroup
	cpu0 := SelfCPU()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	r.start = time.Now()
	for r.sent < n && ctx.Err() == nil {
		now := time.Since(r.start)
		for ; r.sent < n && time.Duration(float64(r.sent)*r.interval) <= now; r.sent++ {
			o := &r.outs[r.sent]
			o.fired = time.Now()
			left.Add(1)
			t.conns[r.sent%len(t.conns)].send(framed[r.sent], func(code int32) {
				if o.deliver(code, timeout) {
					left.Done()
				}
			})
		}
		t.Flush()
		if r.sent < n {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}
	waitOrGiveUp(&left, timeout+time.Second)
	r.genCPU = SelfCPU() - cpu0
	return r
}

// OpenLoopH2 is OpenLoopWire on the h2 generator: same schedule, same accounting (latency
// from when a request was due, the generator's lag and CPU), without a goroutine or an
// encoding per request.
func OpenLoopH2(ctx context.Context, t *H2Target, reqs []*wireCheck, rate float64, timeout time.Duration) Detail {
	r := openLoopH2(ctx, t, reqs, rate, timeout)
	d := Detail{Offered: rate, Elapsed: time.Duration(float64(len(reqs)) * r.interval), GenCPU: r.genCPU}
	r.each(timeout, func(_ int, lat, lag time.Duration, code int32) { d.add(lat, lag, code) })
	d.sort()
	return d
}

// OpenLoopH2Result is OpenLoop on the h2 generator: reqs holds rate × (warmup + dur) Checks
// (Encode), those due in the warm-up are sent and not counted.
func OpenLoopH2Result(ctx context.Context, t *H2Target, reqs []*wireCheck, rate float64, warmup, dur, timeout time.Duration) Result {
	skip := int(rate * warmup.Seconds())
	r := openLoopH2(ctx, t, reqs, rate, timeout)
	res := Result{Elapsed: dur, Offered: rate}
	r.each(timeout, func(i int, lat, lag time.Duration, code int32) {
		if i < skip {
			return
		}
		res.Calls++
		res.Lat = append(res.Lat, lat)
		res.GenLag = append(res.GenLag, lag)
		res.count(code)
	})
	slices.Sort(res.Lat)
	slices.Sort(res.GenLag)
	return res
}

// count adds an outcome (a CheckResponse's code, or -1 - a failed call's gRPC code).
func (r *Result) count(code int32) {
	switch {
	case code == 0:
		r.OK++
	case code > 0:
		r.Denied++
	default:
		r.Failed++
		if r.FirstErr == nil {
			r.FirstErr = fmt.Errorf("h2 Check failed: %v", codes.Code(-1-code))
		}
	}
}

// waitOrGiveUp waits for wg, at most d.
func waitOrGiveUp(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
}

// ClosedLoopH2 keeps callers Checks open on the h2 generator, each answer sending the next
// pre-encoded Check on the same connection, for warmup and then dur (or until reqs run
// out: the measured span then ends there). Latencies, outcomes and Calls count the Checks
// answered in the measured span.
func ClosedLoopH2(ctx context.Context, t *H2Target, reqs []*wireCheck, callers int, warmup, dur, timeout time.Duration) Result {
	framed := h2Frame(reqs)
	var (
		mu       sync.Mutex
		res      Result
		next     atomic.Int64
		inFlight sync.WaitGroup
	)
	start := time.Now()
	from, end := start.Add(warmup), start.Add(warmup+dur)
	last := end
	var fire func(c *h2Conn)
	fire = func(c *h2Conn) {
		i := int(next.Add(1) - 1)
		if i >= len(framed) || ctx.Err() != nil || !time.Now().Before(end) {
			if i == len(framed) {
				mu.Lock()
				last = time.Now()
				mu.Unlock()
			}
			inFlight.Done()
			return
		}
		fired := time.Now()
		c.send(framed[i], func(code int32) {
			now := time.Now()
			if now.Sub(fired) > timeout {
				code = -1 - int32(codes.DeadlineExceeded)
			}
			if !now.Before(from) && now.Before(end) {
				mu.Lock()
				res.Calls++
				res.count(code)
				res.Lat = append(res.Lat, now.Sub(fired))
				mu.Unlock()
			}
			fire(c)
		})
	}
	for i := range callers {
		inFlight.Add(1)
		fire(t.conns[i%len(t.conns)])
	}
	t.Flush()
	waitOrGiveUp(&inFlight, warmup+dur+timeout+time.Second)
	mu.Lock()
	defer mu.Unlock()
	if last.Before(end) {
		end = last
	}
	res.Elapsed = end.Sub(from)
	slices.Sort(res.Lat)
	return res
}
