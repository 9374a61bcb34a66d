package budget

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// BatcherConfig tunes a Batcher. The zero value means "use the defaults".
type BatcherConfig struct {
	// MaxBatch caps how many reservations one transaction admits (default 512).
	MaxBatch int
	// Lanes is how many batches may be in flight at once per process (default 1). One lane
	// per replica keeps a hot budget's row lock uncontended inside the replica; more lanes
	// only help when traffic is spread over many unrelated budgets.
	Lanes int
	// QueueSize bounds the requests waiting per lane (default 8192); a full queue makes
	// callers wait, within their own deadline.
	QueueSize int
	// BatchTimeout bounds one batch's database call (default 5s). Batches run on their own
	// context: one caller giving up must not fail its neighbours.
	BatchTimeout time.Duration
	Logger       *slog.Logger
}

func (c BatcherConfig) withDefaults() BatcherConfig {
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.Lanes <= 0 {
		c.Lanes = 1
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 8192
	}
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Batcher groups concurrent reservations into batches: while one batch is in flight the next
// one accumulates, and when nothing is in flight a request goes alone, so an idle system pays
// no extra latency and a busy one pays one round trip per batch instead of per request.
// Decisions are exactly those of serving the requests one by one in arrival order.
//
// Run must be running for Reserve to make progress.
type Batcher struct {
	svc   *Service
	cfg   BatcherConfig
	lanes []chan *call
	done  chan struct{} // closed when Run has returned
	once  sync.Once

	batches  atomic.Int64
	reserved atomic.Int64
}

// call states: the worker and the caller agree through one CAS on who owns the outcome.
const (
	callWaiting   int32 = iota
	callDelivered       // the worker handed the decision to the caller
	callAbandoned       // the caller gave up; the worker voids what it admitted
)

type call struct {
	req   ReserveRequest
	state atomic.Int32
	out   chan callResult // buffered 1
}

type callResult struct {
	d   Decision
	err error
}

// NewBatcher returns a Batcher in front of svc.
func NewBatcher(svc *Service, cfg BatcherConfig) *Batcher {
	cfg = cfg.withDefaults()
	b := &Batcher{svc: svc, cfg: cfg, done: make(chan struct{})}
	for range cfg.Lanes {
		b.lanes = append(b.lanes, make(chan *call, cfg.QueueSize))
	}
	return b
}

// ErrStopped is returned by Reserve after the Batcher stopped.
var ErrStopped = fmt.Errorf("%w: reservation batcher stopped", ErrUnavailable)

// Reserve queues one reservation and waits for its batch. If ctx ends first it returns
// ctx's error and the reservation, if the batch admits it, is voided at once.
func (b *Batcher) Reserve(ctx context.Context, req ReserveRequest) (Decision, error) {
	if d, ok := b.svc.fromMemory(ctx, &req); ok {
		return d, nil // an exhausted budget: no queue, no round trip (exhausted.go)
	}
	if req.ID == "" {
		req.ID = uuidV7()
	}
	c := &call{req: req, out: make(chan callResult, 1)}
	lane := b.lanes[b.laneOf(&req)]
	select {
	case lane <- c:
	case <-ctx.Done():
		return Decision{}, ctx.Err()
	case <-b.done:
		return Decision{}, ErrStopped
	}
	select {
	case r := <-c.out:
		return r.d, r.err
	case <-ctx.Done():
		if c.state.CompareAndSwap(callWaiting, callAbandoned) {
			return Decision{}, ctx.Err()
		}
		r := <-c.out // delivered just now: the decision stands
		return r.d, r.err
	case <-b.done:
		if c.state.CompareAndSwap(callWaiting, callAbandoned) {
			return Decision{}, ErrStopped
		}
		r := <-c.out
		return r.d, r.err
	}
}

func (b *Batcher) laneOf(r *ReserveRequest) int {
	if len(b.lanes) == 1 || len(r.Subjects) == 0 {
		return 0
	}
	h := fnv.New32a()
	for _, s := range r.Subjects {
		_, _ = h.Write([]byte(s))
	}
	return int(h.Sum32() % uint32(len(b.lanes)))
}

// Stats reports how many batches ran and how many reservations they carried.
func (b *Batcher) Stats() (batches, reservations int64) {
	return b.batches.Load(), b.reserved.Load()
}

// Run processes batches until ctx ends; requests still queued then are refused with
// ErrStopped. Run once.
func (b *Batcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, lane := range b.lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.work(ctx, lane)
		}()
	}
	wg.Wait()
	b.once.Do(func() { close(b.done) })
	for _, lane := range b.lanes { // nothing else receives now
		for len(lane) > 0 {
			b.deliver(<-lane, callResult{err: ErrStopped})
		}
	}
}

func (b *Batcher) work(ctx context.Context, lane chan *call) {
	batch := make([]*call, 0, b.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case c := <-lane:
			batch = append(batch, c)
		}
	fill:
		for len(batch) < b.cfg.MaxBatch {
			select {
			case c := <-lane:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		b.runBatch(ctx, batch)
	}
}

func (b *Batcher) runBatch(ctx context.Context, batch []*call) {
	live := make([]*call, 0, len(batch))
	reqs := make([]ReserveRequest, 0, len(batch))
	for _, c := range batch {
		if c.state.Load() == callAbandoned {
			continue // its caller is gone and nothing was reserved yet: skip it
		}
		if d, ok := b.svc.fromMemory(ctx, &c.req); ok {
			b.deliver(c, callResult{d: d}) // queued before an earlier batch found it exhausted
			continue
		}
		live = append(live, c)
		reqs = append(reqs, c.req)
	}
	if len(reqs) == 0 {
		return
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.BatchTimeout)
	defer cancel()
	ds, err := b.svc.Reserve(bctx, reqs)
	b.svc.cfg.Metrics.batch(bctx, len(reqs))
	b.batches.Add(1)
	b.reserved.Add(int64(len(reqs)))

	var orphans []string
	answered := map[string]bool{} // reservation ids some caller of this batch was given
	for i, c := range live {
		r := callResult{err: err}
		if err == nil {
			r.d = ds[i]
		}
		if b.deliver(c, r) {
			if err == nil {
				answered[ds[i].ReservationID] = true
			}
		} else if err != nil || ds[i].Outcome == Admitted {
			orphans = append(orphans, c.req.ID)
		}
	}
	// A repeat of the same Check in this batch was answered with an orphan's reservation:
	// that request goes upstream on it, so it stays.
	orphans = slices.DeleteFunc(orphans, func(id string) bool { return answered[id] })
	if err != nil {
		// The outcome is unknown (the commit may have happened): release every hold the
		// batch may have made. Unknown ids are harmless; if this fails too, the holds expire.
		orphans = orphans[:0]
		for _, c := range live {
			orphans = append(orphans, c.req.ID)
		}
		b.cfg.Logger.LogAttrs(bctx, slog.LevelError, "reservation batch failed",
			slog.Int("size", len(reqs)), slog.String("error", err.Error()))
	}
	if len(orphans) > 0 {
		cause := "caller_gone"
		if err != nil {
			cause = "reserve_error"
		}
		if _, verr := b.svc.voidTentative(bctx, orphans, cause); verr != nil && !errors.Is(verr, context.Canceled) {
			b.cfg.Logger.LogAttrs(bctx, slog.LevelWarn, "could not void abandoned reservations; they will expire",
				slog.Int("count", len(orphans)), slog.String("error", verr.Error()))
		}
	}
}

// deliver hands r to the caller unless it already gave up; it reports whether it did.
func (b *Batcher) deliver(c *call, r callResult) bool {
	if !c.state.CompareAndSwap(callWaiting, callDelivered) {
		return false
	}
	c.out <- r
	return true
}
