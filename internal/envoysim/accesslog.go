package envoysim

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// This file imitates envoy.access_loggers.http_grpc as
// source/extensions/access_loggers/common/grpc_access_logger.h implements it (reference 4.4,
// 4.5): one logger, hence one gRPC stream, per worker; entries batched per worker and sent
// when the pending message reaches buffer_size_bytes or when buffer_flush_interval fires; when
// the buffer is full after a flush attempt new entries are dropped (logs_dropped). Sending never
// blocks the worker: the message is written to the stream's send buffer, and while that stream
// is above its write-buffer high watermark (here: a previous message not yet taken by gRPC flow
// control) the batch stays buffered (grpc_entries_flush_failed) and new entries pile up to
// buffer_size_bytes, then drop. A batch that cannot be handed to a stream because stream
// creation failed stays buffered and is retried at the next flush since 1.39; before 1.39
// log() wrongly reported success there and the batch was discarded, uncounted
// (changelogs/1.39.0.yaml, Options.EnvoyVersion). A batch handed to a stream that then breaks
// is lost (no ack, no resend); the first message of every stream carries the identifier (node,
// log_name).

// ALSStats are the logger's counters (access_logs.grpc_access_log.* in Envoy, plus what the
// simulation knows and Envoy cannot: entries lost with a broken stream).
type ALSStats struct {
	Written        int64 // logs_written: accepted into a buffer
	Dropped        int64 // logs_dropped: buffer full
	Flushed        int64 // grpc_entries_flushed: handed to a stream
	FlushFailed    int64 // grpc_entries_flush_failed (1.39+): a flush kept its batch (no stream, or above the high watermark)
	Discarded      int64 // before 1.39: batches thrown away when stream creation failed (Envoy counted nothing)
	Lost           int64 // handed to a stream that broke by fault (never reached the server)
	Batches        int64 // messages sent (duplicates included)
	StreamsOpened  int64
	StreamFailures int64 // stream creation failures (entries kept)
	Breaks         int64 // streams that ended (server closed, reset, fault)
}

// Delivery records one entry handed to a stream.
type Delivery struct {
	RequestID string
	Stream    int64
	Host      string
	// Broken: the stream carrying it has since ended abnormally, so the entry may not have
	// been read by the server (Envoy could not know either).
	Broken bool
}

// alsFaults are the access-log faults in force (faults.go sets them).
type alsFaults struct {
	mu       sync.Mutex
	blocked  bool
	loseNext int
	dupNext  int
}

type alsLogger struct {
	sim    *Sim
	cfg    *AccessLogConfig
	worker int

	mu      sync.Mutex
	entries []*alsdata.HTTPAccessLogEntry
	size    int
	stream  *alsStream

	flushMu sync.Mutex // one flush at a time per worker (Envoy: one worker thread)
	stop    chan struct{}
	done    chan struct{}
}

type alsStream struct {
	id     int64
	host   *grpcHost
	cs     grpc.ClientStreamingClient[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]
	cancel context.CancelFunc
	first  bool // the next message is the stream's first: it carries the identifier
	broken atomic.Bool
	ended  chan struct{}
	// busy: a message is being written (gRPC flow control has not taken it yet): the
	// stream is above its write-buffer high watermark for the logger.
	busy  atomic.Bool
	sendq chan sendReq
}

// sendReq is work for a stream's sender: messages to write, or the end of the stream. Only
// the sender touches the client stream's send side (grpc-go forbids concurrent SendMsg and
// CloseSend).
type sendReq struct {
	msgs      []*alsv3.StreamAccessLogsMessage
	closeSend bool
}

// sender writes the stream's messages one batch at a time, off the worker (Envoy's async
// client: the worker only appends to the stream's buffer).
func (l *alsLogger) sender(st *alsStream) {
	for {
		select {
		case <-st.ended:
			return
		case req := <-st.sendq:
			if req.closeSend {
				_ = st.cs.CloseSend()
				return
			}
			var err error
			for _, m := range req.msgs {
				if err = st.cs.Send(m); err != nil {
					break
				}
				atomic.AddInt64(&l.sim.als.Batches, 1)
			}
			if err != nil {
				l.breakStream(st) // handed to a dead stream: lost, like Envoy
			}
			st.busy.Store(false)
		}
	}
}

func newALSLogger(s *Sim, cfg *AccessLogConfig, worker int) *alsLogger {
	l := &alsLogger{sim: s, cfg: cfg, worker: worker, stop: make(chan struct{}), done: make(chan struct{})}
	go l.timer()
	return l
}

// timer flushes every buffer_flush_interval.
func (l *alsLogger) timer() {
	defer close(l.done)
	t := time.NewTicker(l.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.flush()
		}
	}
}

// log is AccessLogger::log: drop when the buffer is full even after a flush attempt, else
// add, then flush if the buffer reached buffer_size_bytes (reference 4.5 items 2-3).
func (l *alsLogger) log(e *alsdata.HTTPAccessLogEntry) {
	st := &l.sim.als
	limit := int(l.cfg.BufferSize)
	if limit == 0 { // batching disabled: every entry is sent at once
		l.mu.Lock()
		l.entries = append(l.entries, e)
		l.mu.Unlock()
		atomic.AddInt64(&st.Written, 1)
		l.flush()
		return
	}
	l.mu.Lock()
	full := l.size >= limit
	l.mu.Unlock()
	if full {
		l.flush()
		l.mu.Lock()
		full = l.size >= limit
		l.mu.Unlock()
		if full {
			atomic.AddInt64(&st.Dropped, 1)
			return
		}
	}
	atomic.AddInt64(&st.Written, 1)
	l.mu.Lock()
	l.entries = append(l.entries, e)
	l.size += proto.Size(e)
	full = l.size >= limit
	l.mu.Unlock()
	if full {
		l.flush()
	}
}

// flush hands the pending message to the worker's stream, opening one if needed.
func (l *alsLogger) flush() {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	n := len(l.entries)
	batch := l.entries[:n:n]
	st := l.stream
	l.mu.Unlock()
	if n == 0 {
		return
	}
	if st == nil || st.broken.Load() {
		var err error
		if st, err = l.open(); err != nil {
			atomic.AddInt64(&l.sim.als.StreamFailures, 1)
			if l.sim.minor < 39 {
				// Before 1.39 log() reported success on a synchronous stream-creation
				// failure, so the flush cleared the batch: gone, and counted nowhere.
				l.mu.Lock()
				l.entries = append([]*alsdata.HTTPAccessLogEntry(nil), l.entries[n:]...)
				l.size = 0
				for _, e := range l.entries {
					l.size += proto.Size(e)
				}
				l.mu.Unlock()
				atomic.AddInt64(&l.sim.als.Discarded, int64(n))
				return
			}
			// 1.39+: the batch stays buffered and is retried at the next flush (reference
			// 4.5 item 4).
			atomic.AddInt64(&l.sim.als.FlushFailed, int64(n))
			return
		}
	}
	if st.busy.Load() {
		// Above the stream's high watermark: keep the batch for the next flush.
		atomic.AddInt64(&l.sim.als.FlushFailed, int64(n))
		return
	}
	msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
	}}
	if st.first { // identifier only on a stream's first message (reference 4.2)
		msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: l.sim.cfg.Node, LogName: l.cfg.LogName}
		st.first = false
	}
	f := &l.sim.alsFaults
	f.mu.Lock()
	lose, dup := f.loseNext > 0, f.dupNext > 0
	if lose {
		f.loseNext--
	} else if dup {
		f.dupNext--
	}
	f.mu.Unlock()

	ids := make([]string, n)
	for i, e := range batch {
		ids[i] = e.GetRequest().GetRequestId()
	}
	l.mu.Lock()
	l.entries = append([]*alsdata.HTTPAccessLogEntry(nil), l.entries[n:]...)
	l.size = 0
	for _, e := range l.entries {
		l.size += proto.Size(e)
	}
	l.mu.Unlock()
	atomic.AddInt64(&l.sim.als.Flushed, int64(n))

	switch {
	case lose:
		// Fault: the batch was handed to a stream that broke before the server read it
		// (reference 4.5 item 5): lost for good.
		atomic.AddInt64(&l.sim.als.Lost, int64(n))
		l.breakStream(st)
	default:
		msgs := []*alsv3.StreamAccessLogsMessage{msg}
		if dup { // fault: the same message twice (duplicated delivery)
			msgs = append(msgs, proto.Clone(msg).(*alsv3.StreamAccessLogsMessage))
		}
		st.busy.Store(true)
		st.sendq <- sendReq{msgs: msgs} // capacity 1 and busy was clear: never blocks
	}
	l.sim.recordDeliveries(ids, st)
}

// open starts a StreamAccessLogs stream on a host of the logger's cluster, retrying the
// establishment up to grpc_stream_retry_policy.num_retries times.
func (l *alsLogger) open() (*alsStream, error) {
	if l.sim.alsBlocked() {
		return nil, errBlocked
	}
	var lastErr error
	for attempt := 0; attempt <= int(l.cfg.StreamRetries); attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(25<<(attempt-1)) * time.Millisecond) // Envoy's 25 ms base back-off
		}
		h := l.sim.hosts[l.cfg.Cluster].pick()
		if h == nil {
			return nil, errNoHost
		}
		ctx, cancel := context.WithCancel(context.Background())
		ctx = metadata.NewOutgoingContext(ctx, initialMetadata(l.cfg.InitialMetadata))
		h.active.Add(1) // an ALS stream counts as an active request on its host
		cs, err := alsv3.NewAccessLogServiceClient(h.conn).StreamAccessLogs(ctx)
		if err != nil {
			h.active.Add(-1)
			cancel()
			lastErr = err
			continue
		}
		st := &alsStream{id: l.sim.streamSeq.Add(1), host: h, cs: cs, cancel: cancel, first: true, ended: make(chan struct{}),
			sendq: make(chan sendReq, 1)}
		h.alsStreams.Add(1)
		atomic.AddInt64(&l.sim.als.StreamsOpened, 1)
		go l.watch(st)
		go l.sender(st)
		l.mu.Lock()
		l.stream = st
		l.mu.Unlock()
		return st, nil
	}
	return nil, lastErr
}

// watch notices the end of a stream (the server returned, closed or died). Envoy drops its
// stream object then and opens a new one at the next flush (reference 4.1).
func (l *alsLogger) watch(st *alsStream) {
	if err := st.cs.RecvMsg(new(alsv3.StreamAccessLogsResponse)); err != nil {
		st.broken.Store(true) // anything but the server's clean SendAndClose
		atomic.AddInt64(&l.sim.als.Breaks, 1)
	}
	st.host.active.Add(-1)
	close(st.ended)
	l.mu.Lock()
	if l.stream == st {
		l.stream = nil
	}
	l.mu.Unlock()
}

func (l *alsLogger) breakStream(st *alsStream) {
	st.broken.Store(true)
	st.cancel()
	l.mu.Lock()
	if l.stream == st {
		l.stream = nil
	}
	l.mu.Unlock()
}

// close stops the timer and ends the stream without a final flush: Envoy does not flush on
// exit (reference 4.5 item 6).
func (l *alsLogger) close() {
	close(l.stop)
	<-l.done
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	st := l.stream
	l.stream = nil
	l.mu.Unlock()
	if st != nil {
		select {
		case st.sendq <- sendReq{closeSend: true}:
		case <-st.ended:
		case <-time.After(2 * time.Second): // a send stuck on a sink that does not read
		}
		select {
		case <-st.ended:
		case <-time.After(2 * time.Second):
		}
		st.cancel()
	}
}

// breakAll ends every worker's stream now (a reset: what was in flight may be lost).
func (l *alsLogger) breakAll() {
	l.mu.Lock()
	st := l.stream
	l.mu.Unlock()
	if st != nil {
		l.breakStream(st)
	}
}

// pending returns how many entries wait in this worker's buffer.
func (l *alsLogger) pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// replay sends entries again on the worker's stream (or a new one): duplicates as a
// misbehaving proxy or a second logger would produce them.
func (l *alsLogger) replay(entries []*alsdata.HTTPAccessLogEntry) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	st := l.stream
	l.mu.Unlock()
	if st == nil || st.broken.Load() {
		var err error
		if st, err = l.open(); err != nil {
			return err
		}
	}
	msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries},
	}}
	if st.first {
		msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: l.sim.cfg.Node, LogName: l.cfg.LogName}
		st.first = false
	}
	st.busy.Store(true)
	select {
	case st.sendq <- sendReq{msgs: []*alsv3.StreamAccessLogsMessage{msg}}:
		return nil
	case <-st.ended:
		return errors.New("envoysim: access-log stream ended")
	}
}

var (
	errBlocked = errors.New("envoysim: access-log sink blocked by fault (no healthy host)")
	errNoHost  = errors.New("envoysim: no host in cluster")
)
