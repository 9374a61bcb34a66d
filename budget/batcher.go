package budget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// BatcherConfig tunes a Batcher. The zero value means "use the defaults".
type BatcherConfig struct {
	// MaxBatch caps how many reservations one transaction admits (default 512).
	MaxBatch int
	// Lanes is how many batches may be in flight at once per process (default 4). Batches in
	// flight never share a budget, so a hot budget's batches still run one at a time (its row
	// lock stays uncontended inside the replica), while a budget stuck on a lock holds one
	// lane, not the process: requests that do not touch it go on in the other lanes.
	Lanes int
	// QueueSize bounds the requests waiting for a batch (default 8192); past it a request is
	// refused at once with ErrOverloaded.
	QueueSize int
	// BatchTimeout bounds one batch when none of its callers has a deadline (default 5s). A
	// batch otherwise ends at its earliest caller's deadline less Margin: no reservation is
	// committed after its Check's deadline.
	BatchTimeout time.Duration
	// Margin is taken off the earliest caller's deadline for the answer's way back (default
	// 5ms).
	Margin time.Duration
	Logger *slog.Logger
}

func (c BatcherConfig) withDefaults() BatcherConfig {
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.Lanes <= 0 {
		c.Lanes = 4
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 8192
	}
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 5 * time.Second
	}
	if c.Margin <= 0 {
		c.Margin = 5 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrOverloaded is returned by Batcher.Reserve, at once, when the request cannot be decided
// within its deadline: the queue is full, or the expected wait (the requests ahead at the
// measured rate) exceeds the time the caller has left. Nothing was reserved; the caller may
// retry shortly. It is not ErrUnavailable: the ledger works, it is only busy.
var ErrOverloaded = errors.New("ledger over capacity")

// Batcher groups concurrent reservations into batches: while a batch is in flight the next
// one accumulates, and when nothing is in flight a request goes alone, so an idle system pays
// no extra latency and a busy one pays one round trip per batch instead of per request.
// Decisions are exactly those of serving the requests one by one in arrival order: requests
// that share a budget are taken in arrival order and never run in two batches at once.
//
// Isolation: up to Lanes batches run at once on disjoint sets of budgets, each ending at its
// earliest caller's deadline (the database gives up by itself then: lock_timeout and
// statement_timeout, see store.ServerTimeout). The budgets of a batch that timed out are
// suspect until one of their batches succeeds: a request touching a suspect budget is batched
// only with requests of the same budgets, so a budget stuck on a lock delays only the
// requests that touch it.
//
// Admission: a request that cannot be decided within its deadline is refused at once with
// ErrOverloaded instead of queueing to its deadline.
//
// Run must be running for Reserve to make progress.
type Batcher struct {
	svc  *Service
	cfg  BatcherConfig
	wake chan struct{} // buffered 1: a request arrived or a batch ended
	done chan struct{} // closed when Run has returned
	once sync.Once

	mu       sync.Mutex
	pending  []*call
	busy     map[int64]bool     // budgets of batches in flight
	suspect  map[int64]struct{} // budgets whose last batch timed out
	inflight int
	stopping bool
	// limit is the current batch size cap (at most MaxBatch): halved when a batch of clean
	// budgets times out, grown again by a quarter with every batch that succeeds, so a batch
	// too large to finish within its callers' deadlines does not fail again and again.
	limit int
	// Measured service (successful batches only): exponentially weighted batch duration and
	// size, for the expected wait of a new request.
	ewmaDur, ewmaN float64

	batches  atomic.Int64
	reserved atomic.Int64
	shed     atomic.Int64
}

// call states: the worker and the caller agree through one CAS on who owns the outcome.
const (
	callWaiting   int32 = iota
	callDelivered       // the worker handed the decision to the caller
	callAbandoned       // the caller gave up; the worker voids what it admitted
)

type call struct {
	req      ReserveRequest
	budgets  []int64   // ids of the budgets of the request's subjects: its conflict set
	class    string    // the budgets as a key: suspect requests batch only within their class
	deadline time.Time // zero: none
	state    atomic.Int32
	out      chan callResult // buffered 1
}

type callResult struct {
	d   Decision
	err error
}

// NewBatcher returns a Batcher in front of svc.
func NewBatcher(svc *Service, cfg BatcherConfig) *Batcher {
	cfg = cfg.withDefaults()
	return &Batcher{
		svc: svc, cfg: cfg, wake: make(chan struct{}, 1), done: make(chan struct{}),
		busy: map[int64]bool{}, suspect: map[int64]struct{}{}, limit: cfg.MaxBatch,
	}
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
	ids := b.budgetIDs(req.Subjects)
	c := &call{req: req, budgets: ids, class: fmt.Sprint(ids), out: make(chan callResult, 1)}
	c.deadline, _ = ctx.Deadline()
	if err := b.enqueue(c); err != nil {
		if errors.Is(err, ErrOverloaded) {
			b.shed.Add(1)
			b.svc.cfg.Metrics.shedN(ctx, "queue", 1)
		}
		return Decision{}, err
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

// budgetIDs lists the budgets of the subjects, sorted: a request's conflict set. It reads
// the definition cache only (a miss would cost every caller a query; the batch loads them
// once): with a subject not cached the set is empty and the request conflicts with nothing,
// which only costs isolation, never correctness (the database's row locks order batches).
func (b *Batcher) budgetIDs(subjects []Subject) []int64 {
	var ids []int64
	for _, sub := range subjects {
		bs, ok := b.svc.budgets.Peek(sub)
		if !ok {
			return nil
		}
		for _, bu := range bs {
			ids = append(ids, bu.ID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// enqueue admits c to the queue, or refuses it when it cannot be decided in time.
func (b *Batcher) enqueue(c *call) error {
	b.mu.Lock()
	if b.stopping {
		b.mu.Unlock()
		return ErrStopped
	}
	if len(b.pending) >= b.cfg.QueueSize {
		b.mu.Unlock()
		return fmt.Errorf("%w: %d requests are waiting", ErrOverloaded, b.cfg.QueueSize)
	}
	// An idle batcher (no batch in flight) never refuses: the request runs at once, and its
	// batch refreshes the estimate, which would otherwise stay as the last batch left it.
	// Nor does one with less than a batch waiting: the request joins the next batch, and an
	// estimate from a slow batch or two must not refuse a handful of requests (refuseLate
	// still answers one whose deadline comes too close before its batch starts).
	idle := b.inflight == 0
	if !c.deadline.IsZero() && !idle && len(b.pending) >= b.limit {
		wait := b.expectedWaitLocked(len(b.pending))
		if left := time.Until(c.deadline); left < wait+b.cfg.Margin {
			b.mu.Unlock()
			return fmt.Errorf("%w: expected wait %v, %v left", ErrOverloaded, wait.Round(time.Millisecond), left.Round(time.Millisecond))
		}
	}
	b.pending = append(b.pending, c)
	b.mu.Unlock()
	b.signal()
	return nil
}

// Admit answers, before the caller does any work for a request, whether Reserve would refuse
// a request with ctx's deadline arriving now: the queue is full, or (as in enqueue: with a
// batch in flight and at least a batch waiting) the expected wait exceeds the time left, or
// (as in next: with a batch in flight) less time is left than a batch needs, so it would be
// refused as too late when its batch starts. A Check is then answered before its body is
// parsed, its key looked up and its cost bounded, and shedding costs little CPU. It queues
// nothing; a refusal wraps ErrOverloaded and is counted as a shed (reason "early"). It is a
// prediction: a request Admit lets through may still be refused by Reserve.
func (b *Batcher) Admit(ctx context.Context) error {
	deadline, hasDeadline := ctx.Deadline()
	b.mu.Lock()
	waiting, busy := len(b.pending), b.inflight > 0
	var wait, minLeft time.Duration
	if hasDeadline && busy {
		minLeft = b.minLeftLocked()
		if waiting >= b.limit {
			wait = b.expectedWaitLocked(waiting)
		}
	}
	b.mu.Unlock()
	var err error
	switch left := time.Until(deadline); {
	case waiting >= b.cfg.QueueSize:
		err = fmt.Errorf("%w: %d requests are waiting", ErrOverloaded, waiting)
	case !hasDeadline || !busy:
	case left < wait+b.cfg.Margin:
		err = fmt.Errorf("%w: expected wait %v, %v left", ErrOverloaded, wait.Round(time.Millisecond), left.Round(time.Millisecond))
	case left < minLeft:
		err = fmt.Errorf("%w: %v left, a batch needs %v", ErrOverloaded, left.Round(time.Millisecond), minLeft.Round(time.Millisecond))
	}
	if err != nil {
		b.shed.Add(1)
		b.svc.cfg.Metrics.shedN(ctx, "early", 1)
	}
	return err
}

// expectedWaitLocked is how long a request arriving behind ahead others should wait for its
// answer: what is left of the batch in flight (half a batch on average), then one batch per
// MaxBatch requests ahead, its own included, at the measured batch duration. A batch costs
// mostly its round trip and commit, so requests ahead count in batches, not one by one.
// Before anything was measured it is zero.
func (b *Batcher) expectedWaitLocked(ahead int) time.Duration {
	if b.ewmaN == 0 {
		return 0
	}
	batches := (ahead + b.limit) / b.limit
	return time.Duration(b.ewmaDur/2 + float64(batches)*b.ewmaDur)
}

// minLeftLocked is the least time a request must have left to join a batch: one batch
// duration and a half (the batch ends at its earliest caller's deadline, so a request that
// joins with less would doom its batch mates too), and never less than two margins.
func (b *Batcher) minLeftLocked() time.Duration {
	return max(2*b.cfg.Margin, time.Duration(1.5*b.ewmaDur))
}

func (b *Batcher) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Stats reports how many batches ran and how many reservations they carried.
func (b *Batcher) Stats() (batches, reservations int64) {
	return b.batches.Load(), b.reserved.Load()
}

// Shed reports how many requests were refused with ErrOverloaded.
func (b *Batcher) Shed() int64 { return b.shed.Load() }

// Run processes batches until ctx ends; requests still queued then are refused with
// ErrStopped. Run once.
func (b *Batcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for {
		select {
		case <-ctx.Done():
			b.mu.Lock()
			b.stopping = true
			b.mu.Unlock()
			wg.Wait()
			b.once.Do(func() { close(b.done) })
			b.mu.Lock()
			rest := b.pending
			b.pending = nil
			b.mu.Unlock()
			for _, c := range rest {
				b.deliver(c, callResult{err: ErrStopped})
			}
			return
		case <-b.wake:
		}
		for {
			batch, timeout := b.next()
			if len(batch) == 0 {
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.runBatch(ctx, batch, timeout)
			}()
		}
	}
}

// next takes the next batch when a lane is free: the oldest waiting requests that touch no
// budget in flight, in arrival order per budget. It marks the batch's budgets busy.
func (b *Batcher) next() ([]*call, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight >= b.cfg.Lanes || len(b.pending) == 0 {
		return nil, 0
	}
	now := time.Now()
	minLeft := 2 * b.cfg.Margin
	if b.inflight > 0 { // idle: the estimate may be stale; let the batch refresh it
		minLeft = b.minLeftLocked()
	}
	var (
		batch    []*call
		class    string
		suspect  bool
		blocked  map[int64]bool // budgets of requests left waiting: later ones wait too
		earliest time.Time
		tooLate  []*call
	)
	keep := b.pending[:0]
	for _, c := range b.pending {
		if c.state.Load() == callAbandoned {
			continue // its caller is gone and nothing was reserved yet: drop it
		}
		if !c.deadline.IsZero() && c.deadline.Sub(now) < minLeft {
			tooLate = append(tooLate, c) // cannot be decided in the time left
			continue
		}
		take := len(batch) < b.limit
		for _, id := range c.budgets {
			if b.busy[id] || blocked[id] {
				take = false
				break
			}
		}
		if take {
			sus := b.isSuspectLocked(c)
			switch {
			case len(batch) == 0:
				class, suspect = c.class, sus
			case suspect || sus:
				take = suspect && sus && c.class == class
			}
		}
		if !take {
			if blocked == nil {
				blocked = map[int64]bool{}
			}
			for _, id := range c.budgets {
				blocked[id] = true
			}
			keep = append(keep, c)
			continue
		}
		batch = append(batch, c)
		if !c.deadline.IsZero() && (earliest.IsZero() || c.deadline.Before(earliest)) {
			earliest = c.deadline
		}
	}
	clear(b.pending[len(keep):])
	b.pending = keep
	for _, c := range tooLate {
		b.refuseLate(c)
	}
	if len(batch) == 0 {
		return nil, 0
	}
	for _, c := range batch {
		for _, id := range c.budgets {
			b.busy[id] = true
		}
	}
	b.inflight++
	timeout := b.cfg.BatchTimeout
	if !earliest.IsZero() {
		timeout = min(timeout, earliest.Sub(now)-b.cfg.Margin)
	}
	return batch, timeout
}

func (b *Batcher) isSuspectLocked(c *call) bool {
	if len(b.suspect) == 0 {
		return false
	}
	for _, id := range c.budgets {
		if _, ok := b.suspect[id]; ok {
			return true
		}
	}
	return false
}

// refuseLate answers a waiting request whose deadline is too close for any batch.
func (b *Batcher) refuseLate(c *call) {
	if b.deliver(c, callResult{err: fmt.Errorf("%w: deadline too close to run a batch", ErrOverloaded)}) {
		b.shed.Add(1)
		b.svc.cfg.Metrics.shedN(context.Background(), "deadline", 1)
	}
}

// finished releases a batch's budgets and records how it went.
func (b *Batcher) finished(batch []*call, n int, took time.Duration, err error) {
	b.mu.Lock()
	timedOut := err != nil && (errors.Is(err, store.ErrTimeout) || errors.Is(err, context.DeadlineExceeded))
	if timedOut && n > 1 && !b.isSuspectLocked(batch[0]) {
		b.limit = max(1, n/2)
	} else if err == nil {
		b.limit = min(b.cfg.MaxBatch, b.limit+max(1, b.limit/4))
	}
	for _, c := range batch {
		for _, id := range c.budgets {
			delete(b.busy, id)
			switch {
			case timedOut:
				if len(b.suspect) < maxSuspects {
					b.suspect[id] = struct{}{}
				}
			case err == nil:
				delete(b.suspect, id)
			}
		}
	}
	if err == nil && n > 0 {
		const alpha = 0.5 // a slow batch is forgotten within a few
		if b.ewmaN == 0 {
			b.ewmaDur, b.ewmaN = float64(took), float64(n)
		} else {
			b.ewmaDur += alpha * (float64(took) - b.ewmaDur)
			b.ewmaN += alpha * (float64(n) - b.ewmaN)
		}
	}
	b.inflight--
	b.mu.Unlock()
	b.signal()
}

// maxSuspects bounds the suspect set (a database down times out every budget).
const maxSuspects = 10_000

// voidTimeout bounds the release of holds whose callers have gone: its own context, never the
// batch's (which may have expired with the callers).
const voidTimeout = 2 * time.Second

func (b *Batcher) runBatch(ctx context.Context, batch []*call, timeout time.Duration) {
	start := time.Now()
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
		b.finished(batch, 0, 0, nil)
		return
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	ds, err := b.svc.Reserve(bctx, reqs)
	cancel()
	took := time.Since(start)
	b.finished(batch, len(reqs), took, err)
	b.svc.cfg.Metrics.batch(ctx, len(reqs))
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
		} else if err == nil && ds[i].Outcome == Admitted {
			orphans = append(orphans, c.req.ID)
		}
	}
	// A repeat of the same Check in this batch was answered with an orphan's reservation:
	// that request goes upstream on it, so it stays.
	orphans = slices.DeleteFunc(orphans, func(id string) bool { return answered[id] })
	cause := "caller_gone"
	if err != nil {
		b.cfg.Logger.LogAttrs(ctx, slog.LevelError, "reservation batch failed",
			slog.Int("size", len(reqs)), slog.Duration("timeout", timeout), slog.String("error", err.Error()))
		if !errors.Is(err, store.ErrTimeout) && !errors.Is(err, ErrInvalid) {
			// The outcome is unknown (the commit may have happened): release every hold the
			// batch may have made. Unknown ids are harmless; if this fails too, the holds
			// expire. A server-side timeout rolled back: nothing to release.
			cause = "reserve_error"
			for _, c := range live {
				orphans = append(orphans, c.req.ID)
			}
		}
	}
	if len(orphans) > 0 {
		b.voidOrphans(ctx, orphans, cause)
	}
}

// voidOrphans releases holds no caller received, on their own short context.
func (b *Batcher) voidOrphans(ctx context.Context, ids []string, cause string) {
	vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), voidTimeout)
	defer cancel()
	if _, err := b.svc.voidTentative(vctx, ids, cause); err != nil {
		b.cfg.Logger.LogAttrs(vctx, slog.LevelWarn, "could not void abandoned reservations; they will expire",
			slog.Int("count", len(ids)), slog.String("error", err.Error()))
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
