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
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/proof"
)

// Ledger is what the sink needs from the ledger (the budget Service).
type Ledger interface {
	Settle(ctx context.Context, batch []budget.Settlement) ([]budget.SettleResult, error)
	RecordUnreserved(ctx context.Context, us []budget.Unreserved) (int, error)
	ReservationsForRequest(ctx context.Context, requestID string, start, from, to time.Time) ([]budget.Reservation, error)
}

// Verifier checks the proof of an entry's ext_authz metadata (a *proof.Keyring).
type Verifier interface {
	Verify(c *proof.Claims, token string, now time.Time) error
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
	// Verifier checks the proof (purser_proof) of every entry that would settle, void or
	// charge (decisions reserved and unverified) before it takes a queue slot; an entry whose
	// proof fails is refused and counted (refused_<reason>). nil: no proof is required.
	Verifier Verifier
	// Authenticated reports whether a stream comes from an authenticated Envoy (shared
	// secret or verified client certificate). Entries without ext_authz metadata (the
	// x-request-id fallback, unreserved spend) carry no proof: they are taken only from an
	// authenticated stream. nil: every stream is.
	Authenticated func(ctx context.Context) bool
	// MaxStreams bounds the access-log streams open at once (default 4,096: an Envoy opens
	// one per worker). More are refused (RESOURCE_EXHAUSTED) before they cost a goroutine
	// when the server uses Tap.
	MaxStreams int
	// IdleTimeout ends a stream that sent nothing for this long (default 5 minutes); Envoy
	// opens a new one at its next flush. Needs Tap.
	IdleTimeout time.Duration
	// EvictIdle: when MaxStreams are open, a new stream ends the one that has been quiet the
	// longest, if quiet for at least this long (default a quarter of IdleTimeout, at most
	// 5s: a busy Envoy worker flushes every second), instead of being refused: streams held
	// open and silent cannot keep Envoy's out.
	// Needs Tap.
	EvictIdle time.Duration
	// StreamRate caps the entries one stream may deliver per second (default 10,000, burst
	// 2x; an Envoy worker at 1,000 requests/s is a tenth of it). Entries over it are dropped
	// and counted (rate_limited): their reservations expire, charged in full.
	StreamRate float64
	// UnsignedShare is the part of the queue that entries without a proof (the x-request-id
	// fallback) may fill (default 1/8), so that a flood of them cannot crowd out proven ones.
	UnsignedShare float64
	// DrainQuiet: on shutdown (CloseStreams) a stream is ended once it has delivered nothing
	// for this long (default 250ms), so that what Envoy already sent — buffered in the
	// connection, not read yet — is read and settled first. A stream that never goes quiet is
	// ended after DrainMax (default 3s), right after a message was read (when the least is
	// likely to wait behind it). Needs Tap.
	DrainQuiet time.Duration
	DrainMax   time.Duration
	Logger     *slog.Logger
	Meter      metric.Meter
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
	if c.MaxStreams <= 0 {
		c.MaxStreams = 4096
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.EvictIdle <= 0 {
		c.EvictIdle = min(c.IdleTimeout/4, 5*time.Second)
	}
	if c.StreamRate <= 0 {
		c.StreamRate = 10_000
	}
	if c.DrainQuiet <= 0 {
		c.DrainQuiet = 250 * time.Millisecond
	}
	if c.DrainMax <= 0 {
		c.DrainMax = 3 * time.Second
	}
	if c.UnsignedShare <= 0 || c.UnsignedShare > 1 {
		c.UnsignedShare = 1.0 / 8
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
// (grpccodec.ServerOption), which hands it the bytes. On a server without it the sink still
// reads every message, through protobuf first, and says so in the log (wireMessage).
type Sink struct {
	alsv3.UnimplementedAccessLogServiceServer
	cfg     Config
	extract ExtractConfig // cfg.Extract with its defaults
	ledger  Ledger
	catalog func() *pricing.Catalog
	m       *metrics

	queue       chan Entry
	pending     atomic.Int64 // entries queued and not yet processed
	unsigned    atomic.Int64 // of which entries without a proof
	maxUnsigned int64
	streams     atomic.Int64 // open access-log streams
	ctlMu       sync.Mutex
	ctls        map[*streamCtl]struct{} // streams opened through Tap
	refusals    *rate.Limiter           // sampled log lines for refused entries
	refusedN    atomic.Int64            // refusals not logged since the last line
	progress    chan struct{}           // signalled after each processed batch (Flush waits on it)
	draining    chan struct{}
	drainOne    sync.Once
	workers     sync.WaitGroup
	handlers    atomic.Int64  // StreamAccessLogs calls running
	handlerGone chan struct{} // signalled when one returns (Drain waits on it)
	started     atomic.Bool
	stopped     chan struct{}
	closing     chan struct{} // CloseStreams: open streams end so the gRPC server can stop
	closeOne    sync.Once
	noCodec     sync.Once // the warning that the server lacks purser's codec
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
		handlerGone: make(chan struct{}, 1),
		maxUnsigned: max(1, int64(float64(cfg.QueueSize)*cfg.UnsignedShare)),
		ctls:        map[*streamCtl]struct{}{},
		refusals:    rate.NewLimiter(1, 5),
	}, nil
}

// streamCtl lets the sink end a stream whose handler waits in Recv (idle timeout, shutdown):
// Tap gives each access-log stream a context only the sink can cancel.
type streamCtl struct {
	cancel context.CancelCauseFunc
	active atomic.Int64 // Unix nanoseconds of the last message (or the opening)

	mu      sync.Mutex
	timer   *time.Timer // ends the stream when quiet: IdleTimeout, or DrainQuiet once closing
	closing bool        // CloseStreams was called
	endBy   time.Time   // when closing: a stream still busy then ends after its next message
}

// arm starts the stream's quiet timer (the handler, once).
func (c *streamCtl) arm(idle, quiet time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := idle
	if c.closing {
		d = quiet
	}
	c.timer = time.AfterFunc(d, c.quiet)
}

// quiet ends a stream that delivered nothing for its timer's duration.
func (c *streamCtl) quiet() {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		c.cancel(errClosing)
		return
	}
	c.cancel(errIdle)
}

// touch re-arms the quiet timer after a message.
func (c *streamCtl) touch(idle, quiet time.Duration) {
	c.active.Store(time.Now().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer == nil {
		return
	}
	if c.closing {
		c.timer.Reset(quiet)
		return
	}
	c.timer.Reset(idle)
}

// close makes the stream end once quiet for quiet, or after its first message past endBy.
func (c *streamCtl) close(quiet time.Duration, endBy time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing, c.endBy = true, endBy
	if c.timer != nil {
		c.timer.Reset(quiet)
	}
}

// overdue reports whether a closing stream has been drained for long enough.
func (c *streamCtl) overdue(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing && now.After(c.endBy)
}

func (c *streamCtl) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
}

type ctlKey struct{}

var (
	errIdle    = errors.New("access-log stream idle")
	errEvicted = errors.New("access-log stream evicted for a new one")
	errClosing = errors.New("purser is shutting down")
)

// Tap is a tap.ServerInHandle for the gRPC server that serves the sink (grpc.InTapHandle;
// compose it with any other): for each new access-log stream it refuses one over MaxStreams
// before the stream costs a goroutine, and gives the stream a context the sink cancels on
// IdleTimeout and CloseStreams (a handler blocked in Recv is woken by nothing else). It runs
// in the connection's reader goroutine and never blocks. Other methods pass unchanged.
func (s *Sink) Tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != alsv3.AccessLogService_StreamAccessLogs_FullMethodName {
		return ctx, nil
	}
	select {
	case <-s.closing:
		return nil, status.Error(codes.Unavailable, "purser is shutting down")
	default:
	}
	if s.streams.Add(1) > int64(s.cfg.MaxStreams) && !s.evictQuietest() {
		s.streams.Add(-1)
		s.m.stream(ctx, "refused_limit")
		return nil, status.Error(codes.ResourceExhausted, "too many access-log streams")
	}
	cctx, cancel := context.WithCancelCause(ctx)
	ctl := &streamCtl{cancel: cancel}
	ctl.active.Store(time.Now().UnixNano())
	s.ctlMu.Lock()
	s.ctls[ctl] = struct{}{}
	s.ctlMu.Unlock()
	s.m.stream(ctx, "opened")
	// When the stream ends, however it ends (no goroutine waits for it meanwhile).
	context.AfterFunc(cctx, func() {
		s.streams.Add(-1)
		s.ctlMu.Lock()
		delete(s.ctls, ctl)
		s.ctlMu.Unlock()
		s.m.stream(context.Background(), "closed")
	})
	return context.WithValue(cctx, ctlKey{}, ctl), nil
}

// evictQuietest ends the stream quiet the longest if it has been quiet for EvictIdle, making
// room for a new one (its slot is released when it has ended).
func (s *Sink) evictQuietest() bool {
	cutoff := time.Now().Add(-s.cfg.EvictIdle).UnixNano()
	s.ctlMu.Lock()
	var quietest *streamCtl
	for c := range s.ctls {
		if a := c.active.Load(); a <= cutoff && (quietest == nil || a < quietest.active.Load()) {
			quietest = c
		}
	}
	if quietest != nil {
		delete(s.ctls, quietest) // not chosen twice
		quietest.active.Store(time.Now().UnixNano())
	}
	s.ctlMu.Unlock()
	if quietest == nil {
		return false
	}
	quietest.cancel(errEvicted)
	s.m.stream(context.Background(), "evicted")
	return true
}

// StreamAccessLogs reads one Envoy stream (one per Envoy worker), in its handler's goroutine
// alone. It never waits for the database: entries go to the queue, or are dropped and counted
// when it is full. Entries that would move money are proven before they take a slot.
func (s *Sink) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	s.handlers.Add(1)
	defer func() {
		s.handlers.Add(-1)
		select {
		case s.handlerGone <- struct{}{}:
		default:
		}
	}()
	ctx := stream.Context()
	ctl, _ := ctx.Value(ctlKey{}).(*streamCtl)
	if ctl == nil {
		// Served without Tap: the stream limit still holds, but idle streams are not ended
		// and CloseStreams cannot wake this one.
		if s.streams.Add(1) > int64(s.cfg.MaxStreams) {
			s.streams.Add(-1)
			s.m.stream(ctx, "refused_limit")
			return status.Error(codes.ResourceExhausted, "too many access-log streams")
		}
		defer s.streams.Add(-1)
	} else {
		ctl.arm(s.cfg.IdleTimeout, s.cfg.DrainQuiet)
		defer ctl.stop()
		defer ctl.cancel(nil)
		stream = idleReset{stream, s.cfg.IdleTimeout, s.cfg.DrainQuiet, ctl}
	}
	authenticated := s.cfg.Authenticated == nil || s.cfg.Authenticated(ctx)
	limit := rate.NewLimiter(rate.Limit(s.cfg.StreamRate), int(2*s.cfg.StreamRate)+1)
	var node, logName string
	for {
		w := &wireMessage{conf: &s.extract}
		err := stream.RecvMsg(w)
		if err == nil && !w.decoded {
			err = s.decodeFallback(ctx, w)
		}
		if err == io.EOF {
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			switch cause := context.Cause(ctx); {
			case errors.Is(cause, errIdle):
				s.m.stream(ctx, "idle_timeout")
				return status.Error(codes.Unavailable, "access-log stream idle: open a new one")
			case errors.Is(cause, errEvicted):
				return status.Error(codes.Unavailable, "access-log stream ended for a new one")
			case errors.Is(cause, errClosing):
				// Envoy opens a new stream (to another replica) at its next flush.
				return status.Error(codes.Unavailable, "purser is shutting down")
			}
			if c := status.Code(err); c != codes.Canceled && c != codes.DeadlineExceeded {
				// An undecodable message (or a server without grpccodec: then every one):
				// its entries are lost and their reservations expire, charged in full.
				s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log stream failed", slog.String("node", node), slog.String("error", err.Error()))
			}
			return err
		}
		msg := &w.m
		if id := msg.identifier; id != nil { // only on a stream's first message
			node, logName = id.GetNode().GetId(), id.GetLogName()
			s.cfg.Logger.LogAttrs(ctx, slog.LevelDebug, "access-log stream", slog.String("node", node), slog.String("log_name", logName))
		}
		if msg.tcp {
			s.m.entry(ctx, "tcp_ignored", int64(msg.tcpEntries))
			continue
		}
		now := time.Now()
		for i := range msg.http {
			e := &msg.http[i]
			e.NodeID = node
			if !e.Final {
				s.m.entry(ctx, "not_final", 1)
				continue
			}
			if !limit.AllowN(now, 1) {
				s.m.entry(ctx, "rate_limited", 1)
				continue
			}
			s.admit(ctx, e, authenticated, now)
		}
		if ctl != nil && ctl.overdue(now) {
			// Shutting down and never quiet: end it now, just after a message, rather than
			// cancel it while another may be waiting unread.
			return status.Error(codes.Unavailable, "purser is shutting down")
		}
	}
}

// idleReset re-arms the stream's quiet timer, and notes its activity, on every message.
type idleReset struct {
	alsv3.AccessLogService_StreamAccessLogsServer
	idle, quiet time.Duration
	ctl         *streamCtl
}

func (r idleReset) RecvMsg(m any) error {
	err := r.AccessLogService_StreamAccessLogsServer.RecvMsg(m)
	if err == nil {
		r.ctl.touch(r.idle, r.quiet)
	}
	return err
}

// admit queues one final entry if it may act: a reserved or unverified entry only with a valid
// proof, an entry without ext_authz metadata only from an authenticated stream and within its
// share of the queue; denials and pass-throughs act on nothing and are only counted.
func (s *Sink) admit(ctx context.Context, e *Entry, authenticated bool, now time.Time) {
	unsigned := false
	switch e.Decision {
	case "reserved", "unverified":
		if s.cfg.Verifier != nil {
			c := proof.Claims{Decision: e.Decision, ReservationID: e.ReservationID, ReservedMicros: e.ReservedMicros,
				ReservedTokens: e.ReservedTokens, KeyID: e.KeyID, Subjects: e.SubjectsRaw,
				Provider: e.Provider, Flavor: e.Flavor, Model: e.Model}
			if err := s.cfg.Verifier.Verify(&c, e.Proof, now); err != nil {
				s.refuse(ctx, e, "refused_"+proof.Reason(err))
				return
			}
		}
	case "":
		if !authenticated {
			s.refuse(ctx, e, "refused_unauthenticated")
			return
		}
		unsigned = true
	default:
		// denied, unidentified, passthrough: nothing was held.
		s.m.entry(ctx, "not_reserved_"+e.Decision, 1)
		return
	}
	if unsigned && s.unsigned.Add(1) > s.maxUnsigned {
		s.unsigned.Add(-1)
		s.m.entry(ctx, "unsigned_dropped", 1)
		return
	}
	e.unsigned = unsigned
	s.pending.Add(1)
	select {
	case s.queue <- *e:
		s.m.entry(ctx, "received", 1)
	default:
		s.pending.Add(-1)
		if unsigned {
			s.unsigned.Add(-1)
		}
		s.m.entry(ctx, "dropped", 1)
		s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log queue full: entry dropped (its reservation will expire and be charged in full)",
			slog.String("request_id", e.RequestID), slog.String("reservation_id", e.ReservationID))
	}
}

// refuse counts an entry that may not act and logs a sample of them.
func (s *Sink) refuse(ctx context.Context, e *Entry, outcome string) {
	s.m.entry(ctx, outcome, 1)
	if !s.refusals.Allow() {
		s.refusedN.Add(1)
		return
	}
	s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log entry refused: it would move money without purser's proof",
		slog.String("outcome", outcome), slog.String("node", e.NodeID), slog.String("decision", e.Decision),
		slog.String("reservation_id", e.ReservationID), slog.Int64("refusals_not_logged", s.refusedN.Swap(0)))
}

// CloseStreams ends every open access-log stream (and refuses new ones): call it when the
// server starts shutting down, so a graceful stop does not wait for streams Envoy keeps open.
// A stream is not cut at once: what Envoy already sent may wait, received but not read, in
// the connection's buffers (cancelling the stream's context would discard it, and those
// reservations would expire charged in full). Each stream ends once it has delivered nothing
// for DrainQuiet, or after DrainMax.
func (s *Sink) CloseStreams() {
	s.closeOne.Do(func() {
		close(s.closing)
		endBy := time.Now().Add(s.cfg.DrainMax)
		s.ctlMu.Lock()
		for ctl := range s.ctls {
			ctl.close(s.cfg.DrainQuiet, endBy)
		}
		s.ctlMu.Unlock()
		// The last resort, for a stream stuck in the middle of a message.
		time.AfterFunc(2*s.cfg.DrainMax, func() {
			s.ctlMu.Lock()
			defer s.ctlMu.Unlock()
			for ctl := range s.ctls {
				ctl.cancel(errClosing)
			}
		})
	})
}

// Streams is the number of access-log streams open now.
func (s *Sink) Streams() int { return int(s.streams.Load()) }

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
// server stopped accepting streams (and CloseStreams). It waits for stream handlers still
// reading first: the workers stop only once nothing can be queued any more. It returns early
// if ctx ends first.
func (s *Sink) Drain(ctx context.Context) {
	for s.handlers.Load() > 0 {
		select {
		case <-s.handlerGone:
		case <-ctx.Done():
			s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log drain timed out waiting for streams",
				slog.Int64("streams", s.handlers.Load()), slog.Int("queued", len(s.queue)))
			s.drainOne.Do(func() { close(s.draining) })
			return
		}
	}
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
		var unsigned int64
		for i := range batch {
			if batch[i].unsigned {
				unsigned++
			}
		}
		s.unsigned.Add(-unsigned)
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
	settles := make([]budget.Settlement, 0, len(batch))
	ends := make([]time.Time, 0, len(batch))
	var unreserved []budget.Unreserved
	var outcomes tally // counted per batch: one metric update per outcome, not per entry
	for i := range batch {
		e := &batch[i]
		switch {
		case e.Decision == "reserved" && e.ReservationID != "":
			v := s.judge(e, e.ReservationID, e.Provider, e.Flavor, e.Model)
			outcomes = outcomes.add(v.outcome)
			settles = append(settles, v.settle)
			ends = append(ends, e.End)
		case e.Decision == "" && e.RequestID != "":
			// No ext_authz metadata: the Check's answer never reached Envoy (timeout, reset)
			// but its hold may have committed. Join on x-request-id and start time, carefully.
			if v, ok := s.fallback(bctx, e); ok {
				outcomes = outcomes.add(v.outcome)
				settles = append(settles, v.settle)
				ends = append(ends, e.End)
			} else if u, ok := s.unreservedFor(e); ok {
				unreserved = append(unreserved, u)
			} else {
				outcomes = outcomes.add("no_reservation")
			}
		case e.Decision == "unverified":
			if u, ok := s.unreservedFor(e); ok {
				unreserved = append(unreserved, u)
			} else {
				outcomes = outcomes.add("unverified_no_usage")
			}
		default:
			// A reserved entry without a reservation id, or no request id to join on.
			outcomes = outcomes.add("not_reserved_" + nonEmpty(e.Decision, "unknown"))
		}
	}
	for _, o := range outcomes {
		s.m.entry(bctx, o.key, o.n)
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
			var settled tally
			for _, r := range res {
				seen[r.ReservationID] = true
				settled = settled.add(r.Outcome)
			}
			now := time.Now()
			for i, st := range settles {
				if !seen[st.ReservationID] {
					settled = settled.add(budget.OutcomeDuplicate)
					continue
				}
				delete(seen, st.ReservationID)
				if !ends[i].IsZero() {
					s.m.lag(bctx, now.Sub(ends[i]))
				}
			}
			for _, o := range settled {
				s.m.settled(bctx, o.key, o.n)
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

// tally counts occurrences of a few distinct keys (a batch's outcomes), in first-seen order.
type tally []struct {
	key string
	n   int64
}

func (t tally) add(key string) tally {
	for i := range t {
		if t[i].key == key {
			t[i].n++
			return t
		}
	}
	return append(t, struct {
		key string
		n   int64
	}{key, 1})
}

// fallback finds the reservation of an entry without ext_authz metadata: the one made for the
// downstream request with this x-request-id that Envoy started at exactly the entry's
// start_time (Envoy stamps the CheckRequest's attributes.request.time and the entry's
// common_properties.start_time from the same StreamInfo::startTime(), to the nanosecond), not
// yet settled or voided. A client reusing someone's x-request-id started another request at
// another instant: it never finds theirs. The fallback settles with the entry's usage or
// charges the hold provisionally (as expiry does: a later authentic entry still settles the
// real cost); it never voids: nothing but purser's proof releases a hold.
func (s *Sink) fallback(ctx context.Context, e *Entry) (verdict, bool) {
	if e.Start.IsZero() {
		return verdict{}, false
	}
	from, to := e.Start.Add(-s.cfg.FallbackWindow), e.End.Add(s.cfg.FallbackWindow)
	rs, err := s.ledger.ReservationsForRequest(ctx, e.RequestID, e.Start, from, to)
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
	if v.settle.Void || v.settle.ChargeHold {
		if r.State != "pending" {
			return verdict{}, false // expired already: charged the hold; nothing to add
		}
		cause := v.settle.Cause
		v.settle = budget.Settlement{ReservationID: r.ID, ChargeHold: true, Provisional: true, Cause: cause}
		v.outcome = "charged_hold_provisional"
	}
	v.settle.Cause = "request_id_join:" + v.settle.Cause
	return v, true
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
