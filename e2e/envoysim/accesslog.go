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

// This file imitates envoy.access_loggers.http_grpc (reference 4.4, 4.5): one logger, hence
// one gRPC stream, per worker; entries batched per worker and sent when the pending message
// reaches buffer_size_bytes or when buffer_flush_interval fires; when the buffer is full after
// a flush attempt new entries are dropped (logs_dropped); a batch that cannot be handed to a
// stream (stream creation failed) stays buffered and is retried at the next flush (the 1.39+
// behaviour); a batch handed to a stream that then breaks is lost (no ack, no resend); the
// first message of every stream carries the identifier (node, log_name).

// ALSStats are the logger's counters (access_logs.grpc_access_log.* in Envoy, plus what the
// simulation knows and Envoy cannot: entries lost with a broken stream).
type ALSStats struct {
	Written        int64 // logs_written: accepted into a buffer
	Dropped        int64 // logs_dropped: buffer full
	Flushed        int64 // grpc_entries_flushed: handed to a stream
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
			// Stream creation failed (no healthy host, connection refused): the batch stays
			// buffered and is retried at the next flush (1.39+, reference 4.5 item 4).
			atomic.AddInt64(&l.sim.als.StreamFailures, 1)
			return
		}
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
		err := st.cs.Send(msg)
		atomic.AddInt64(&l.sim.als.Batches, 1)
		if err == nil && dup {
			// Fault: the same message twice (duplicated delivery).
			err = st.cs.Send(proto.Clone(msg).(*alsv3.StreamAccessLogsMessage))
			atomic.AddInt64(&l.sim.als.Batches, 1)
		}
		if err != nil {
			l.breakStream(st) // handed to a dead stream: lost, like Envoy
		}
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
		st := &alsStream{id: l.sim.streamSeq.Add(1), host: h, cs: cs, cancel: cancel, first: true, ended: make(chan struct{})}
		h.alsStreams.Add(1)
		atomic.AddInt64(&l.sim.als.StreamsOpened, 1)
		go l.watch(st)
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
		_ = st.cs.CloseSend()
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
	atomic.AddInt64(&l.sim.als.Batches, 1)
	return st.cs.Send(msg)
}

var (
	errBlocked = errors.New("envoysim: access-log sink blocked by fault (no healthy host)")
	errNoHost  = errors.New("envoysim: no host in cluster")
)
