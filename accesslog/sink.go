package accesslog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

// Ledger is what the sink needs from the ledger (the budget Service).
type Ledger interface {
	Settle(ctx context.Context, batch []budget.Settlement) ([]budget.SettleResult, error)
	RecordUnreserved(ctx context.Context, us []budget.Unreserved) (int, error)
	ReservationsByRequestID(ctx context.Context, requestID string, from, to time.Time) ([]budget.Reservation, error)
}

// Config tunes the sink. The zero value means the defaults.
type Config struct {
	Extract ExtractConfig
	// QueueSize bounds entries received but not yet settled (default 65,536). When it is
	// full, new entries are DROPPED and counted (purser.accesslog.entries{outcome=dropped}):
	// the receive loop never blocks Envoy's stream on the database, and a dropped entry's
	// reservation expires and is charged in full — never free spend. Size it for the
	// longest database stall you want to ride out.
	QueueSize int
	// BatchSize caps the entries settled in one database round trip (default 1,000).
	BatchSize int
	// Workers settle batches concurrently (default 2).
	Workers int
	// ProviderError is ProviderErrorVoid (default) or ProviderErrorChargeHold.
	ProviderError string
	// UnknownModel is UnknownModelChargeHold (default) or UnknownModelDefaultPrice.
	UnknownModel string
	// FallbackWindow bounds the x-request-id fallback join around the entry's start
	// (default 10 minutes).
	FallbackWindow time.Duration
	// SettleTimeout bounds one batch's database calls (default 10s).
	SettleTimeout time.Duration
	Logger        *slog.Logger
	Meter         metric.Meter
}

func (c Config) withDefaults() Config {
	if c.QueueSize <= 0 {
		c.QueueSize = 65_536
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.ProviderError == "" {
		c.ProviderError = ProviderErrorVoid
	}
	if c.UnknownModel == "" {
		c.UnknownModel = UnknownModelChargeHold
	}
	if c.FallbackWindow <= 0 {
		c.FallbackWindow = 10 * time.Minute
	}
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports invalid policies.
func (c Config) Validate() error {
	var errs []error
	switch c.ProviderError {
	case "", ProviderErrorVoid, ProviderErrorChargeHold:
	default:
		errs = append(errs, fmt.Errorf("usage.provider_error: %q: want void or charge_hold", c.ProviderError))
	}
	switch c.UnknownModel {
	case "", UnknownModelChargeHold, UnknownModelDefaultPrice:
	default:
		errs = append(errs, fmt.Errorf("usage.unknown_model: %q: want charge_hold or default_price", c.UnknownModel))
	}
	for h := range c.Extract.UsageHeaders {
		if h == "" || h != lowerASCII(h) {
			errs = append(errs, fmt.Errorf("usage.headers: %q: header names must be lower-case", h))
		}
	}
	return errors.Join(errs...)
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Sink implements envoy.service.accesslog.v3.AccessLogService. It reads messages straight
// from the wire (decodeMessage): serve it on a gRPC server with purser's codec
// (grpccodec.ServerOption), which hands it the bytes.
type Sink struct {
	alsv3.UnimplementedAccessLogServiceServer
	cfg     Config
	extract ExtractConfig // cfg.Extract with its defaults
	ledger  Ledger
	catalog func() *pricing.Catalog
	m       *metrics

	queue    chan Entry
	pending  atomic.Int64  // entries queued and not yet processed
	progress chan struct{} // signalled after each processed batch (Flush waits on it)
	draining chan struct{}
	drainOne sync.Once
	workers  sync.WaitGroup
	started  atomic.Bool
	stopped  chan struct{}
	closing  chan struct{} // CloseStreams: open streams end so the gRPC server can stop
	closeOne sync.Once
}

// New returns a Sink. catalog returns the price catalog in force.
func New(ledger Ledger, catalog func() *pricing.Catalog, cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(cfg.Meter)
	if err != nil {
		return nil, err
	}
	return &Sink{
		cfg: cfg, extract: cfg.Extract.withDefaults(), ledger: ledger, catalog: catalog, m: m,
		queue: make(chan Entry, cfg.QueueSize), progress: make(chan struct{}, 1),
		draining: make(chan struct{}), stopped: make(chan struct{}), closing: make(chan struct{}),
	}, nil
}

// StreamAccessLogs reads one Envoy stream (one per Envoy worker). It never waits for the
// database: entries go to the queue, or are dropped and counted when it is full.
func (s *Sink) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	ctx := stream.Context()
	// Recv blocks until Envoy sends; a reader goroutine lets the handler also end the stream
	// when purser shuts down (Envoy never closes its access-log streams by itself).
	type received struct {
		msg *wireMessage
		err error
	}
	msgs := make(chan received)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			m := &wireMessage{conf: &s.extract}
			err := stream.RecvMsg(m)
			select {
			case msgs <- received{m, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var node, logName string
	for {
		var r received
		select {
		case r = <-msgs:
		case <-s.closing:
			// Envoy opens a new stream (to another replica) at its next flush.
			return status.Error(codes.Unavailable, "purser is shutting down")
		}
		if r.err == io.EOF {
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if r.err != nil {
			if c := status.Code(r.err); c != codes.Canceled && c != codes.DeadlineExceeded {
				// An undecodable message (or a server without grpccodec: then every one):
				// its entries are lost and their reservations expire, charged in full.
				s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log stream failed", slog.String("node", node), slog.String("error", r.err.Error()))
			}
			return r.err
		}
		msg := &r.msg.m
		if id := msg.identifier; id != nil { // only on a stream's first message
			node, logName = id.GetNode().GetId(), id.GetLogName()
			s.cfg.Logger.LogAttrs(ctx, slog.LevelDebug, "access-log stream", slog.String("node", node), slog.String("log_name", logName))
		}
		if msg.tcp {
			s.m.entry(ctx, "tcp_ignored", int64(msg.tcpEntries))
			continue
		}
		for _, e := range msg.http {
			e.NodeID = node
			if !e.Final {
				s.m.entry(ctx, "not_final", 1)
				continue
			}
			s.pending.Add(1)
			select {
			case s.queue <- e:
				s.m.entry(ctx, "received", 1)
			default:
				s.pending.Add(-1)
				s.m.entry(ctx, "dropped", 1)
				s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log queue full: entry dropped (its reservation will expire and be charged in full)",
					slog.String("request_id", e.RequestID), slog.String("reservation_id", e.ReservationID))
			}
		}
	}
}

// wireMessage receives one StreamAccessLogsMessage: the codec hands it the message's bytes.
type wireMessage struct {
	conf *ExtractConfig
	m    message
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler.
func (w *wireMessage) UnmarshalBinary(b []byte) error {
	m, err := decodeMessage(b, w.conf)
	if err != nil {
		return fmt.Errorf("access-log message: %w", err)
	}
	w.m = m
	return nil
}

// CloseStreams ends every open access-log stream (and refuses new ones): call it when the
// server starts shutting down, so a graceful stop does not wait for streams Envoy keeps open.
func (s *Sink) CloseStreams() {
	s.closeOne.Do(func() { close(s.closing) })
}

// Run settles queued entries until ctx ends or Drain finished; it returns when every worker
// stopped.
func (s *Sink) Run(ctx context.Context) {
	s.started.Store(true)
	for range s.cfg.Workers {
		s.workers.Add(1)
		go func() {
			defer s.workers.Done()
			s.work(ctx)
		}()
	}
	s.workers.Wait()
	close(s.stopped)
}

// Drain settles everything already received, then stops the workers. Call it after the gRPC
// server stopped accepting streams. It returns early if ctx ends first.
func (s *Sink) Drain(ctx context.Context) {
	s.drainOne.Do(func() { close(s.draining) })
	if !s.started.Load() {
		return
	}
	select {
	case <-s.stopped:
	case <-ctx.Done():
		s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log drain timed out", slog.Int("queued", len(s.queue)))
	}
}

func (s *Sink) work(ctx context.Context) {
	batch := make([]Entry, 0, s.cfg.BatchSize)
	for {
		batch = batch[:0]
		select {
		case e := <-s.queue:
			batch = append(batch, e)
		default:
			select {
			case e := <-s.queue:
				batch = append(batch, e)
			case <-s.draining:
				if len(s.queue) == 0 {
					return
				}
				continue
			case <-ctx.Done():
				return
			}
		}
	fill:
		for len(batch) < s.cfg.BatchSize {
			select {
			case e := <-s.queue:
				batch = append(batch, e)
			default:
				break fill
			}
		}
		s.process(ctx, batch)
		s.pending.Add(-int64(len(batch)))
		select {
		case s.progress <- struct{}{}:
		default:
		}
	}
}

// Flush waits until every entry received so far has been settled (or ctx ends).
func (s *Sink) Flush(ctx context.Context) error {
	for s.pending.Load() > 0 {
		select {
		case <-s.progress:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// process settles one batch: one Settle round trip for every entry with a reservation, one
// for unreserved spend, and a lookup per entry that needs the x-request-id fallback.
func (s *Sink) process(ctx context.Context, batch []Entry) {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.SettleTimeout)
	defer cancel()
	var settles []budget.Settlement
	var ends []time.Time
	var unreserved []budget.Unreserved
	for i := range batch {
		e := &batch[i]
		switch {
		case e.ReservationID != "":
			v := s.judge(e, e.ReservationID, e.Provider, e.Flavor, e.Model)
			s.m.entry(bctx, v.outcome, 1)
			settles = append(settles, v.settle)
			ends = append(ends, e.End)
		case e.Decision == "" && e.RequestID != "":
			// No ext_authz metadata: the Check's answer never reached Envoy (timeout, reset)
			// but its hold may have committed. Join on x-request-id, carefully.
			if v, ok := s.fallback(bctx, e); ok {
				s.m.entry(bctx, v.outcome, 1)
				settles = append(settles, v.settle)
				ends = append(ends, e.End)
			} else if u, ok := s.unreservedFor(e); ok {
				unreserved = append(unreserved, u)
			} else {
				s.m.entry(bctx, "no_reservation", 1)
			}
		case e.Decision == "unverified":
			if u, ok := s.unreservedFor(e); ok {
				unreserved = append(unreserved, u)
			} else {
				s.m.entry(bctx, "unverified_no_usage", 1)
			}
		default:
			// denied, unidentified, passthrough: nothing was held.
			s.m.entry(bctx, "not_reserved_"+nonEmpty(e.Decision, "unknown"), 1)
		}
	}
	if len(settles) > 0 {
		res, err := s.ledger.Settle(bctx, settles)
		if err != nil {
			s.m.entry(bctx, "settle_failed", int64(len(settles)))
			s.cfg.Logger.LogAttrs(bctx, slog.LevelError, "settle batch failed; the reservations will expire and be charged in full",
				slog.Int("size", len(settles)), slog.String("error", err.Error()))
		} else {
			// The ledger answers once per distinct reservation, in its own order: pair by id.
			// Copies of one entry in the batch beyond the first changed nothing: duplicates.
			seen := make(map[string]bool, len(res))
			for _, r := range res {
				seen[r.ReservationID] = true
				s.m.settled(bctx, r.Outcome)
			}
			now := time.Now()
			for i, st := range settles {
				if !seen[st.ReservationID] {
					s.m.settled(bctx, budget.OutcomeDuplicate)
					continue
				}
				delete(seen, st.ReservationID)
				if !ends[i].IsZero() {
					s.m.lag(bctx, now.Sub(ends[i]))
				}
			}
		}
	}
	if len(unreserved) > 0 {
		n, err := s.ledger.RecordUnreserved(bctx, unreserved)
		if err != nil {
			s.cfg.Logger.LogAttrs(bctx, slog.LevelError, "record unreserved spend failed",
				slog.Int("size", len(unreserved)), slog.String("error", err.Error()))
		} else {
			s.m.entry(bctx, "unreserved", int64(n))
			s.m.entry(bctx, "unreserved_duplicate", int64(len(unreserved)-n))
		}
	}
}

// fallback finds the reservation of an entry without ext_authz metadata by x-request-id:
// exactly one reservation with that id, made around the entry's start and not yet settled or
// voided. x-request-id is not guaranteed unique (clients may reuse it), so anything
// ambiguous is left to expiry.
func (s *Sink) fallback(ctx context.Context, e *Entry) (verdict, bool) {
	from, to := e.Start.Add(-s.cfg.FallbackWindow), e.End.Add(s.cfg.FallbackWindow)
	if e.Start.IsZero() {
		return verdict{}, false
	}
	rs, err := s.ledger.ReservationsByRequestID(ctx, e.RequestID, from, to)
	if err != nil {
		s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "x-request-id fallback lookup failed", slog.String("error", err.Error()))
		return verdict{}, false
	}
	var open []budget.Reservation
	for _, r := range rs {
		if r.State == "pending" || r.State == "expired" {
			open = append(open, r)
		}
	}
	if len(open) != 1 {
		if len(open) > 1 {
			s.m.entry(ctx, "fallback_ambiguous", 1)
		}
		return verdict{}, false
	}
	r := open[0]
	v := s.judge(e, r.ID, r.Provider, r.Flavor, r.Model)
	v.settle.Cause = "request_id_join:" + v.settle.Cause
	return v, true
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
