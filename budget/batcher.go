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
	// lane, not the process: requests that do not touch it go on in the other lanes. Only one
	// batch runs on time at once (the next one accumulates meanwhile, so batches stay large);
	// the other lanes open for a batch that runs late (see lateAfterLocked).
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

	mu        sync.Mutex
	pending   []*call
	busy      map[int64]bool     // budgets of batches in flight
	suspect   map[int64]struct{} // budgets whose last batch timed out
	inflight  int
	flights   []*flight // batches in flight, oldest first
	resolving bool      // a lookup of unknown conflict sets is in flight
	// held is how many waiting requests the last scan found held by a suspect budget or an
	// unknown conflict set: they wait for their budget, not for the batches the others form,
	// so the expected wait of a request apart from them leaves them out.
	held     int
	stopping bool
	// limit is the current batch size cap (at most MaxBatch): halved when a batch of one
	// class of clean budgets times out, grown again by a quarter with every batch that
	// succeeds, so a batch too large to finish within its callers' deadlines does not fail
	// again and again.
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
	req     ReserveRequest
	budgets []int64 // ids of the budgets of the request's subjects: its conflict set
	// known: budgets is the conflict set (every subject's definitions were cached). An unknown
	// set is looked up (resolve) before the request is batched; if it stays unknown the
	// request is batched only with other such requests (class unknownClass).
	known     bool
	resolved  bool      // a lookup ran for it (it is not looked up again)
	resolving bool      // a lookup for it is in flight: not batched meanwhile
	class     string    // the budgets as a key: suspect requests batch only within their class
	deadline  time.Time // zero: none
	state     atomic.Int32
	out       chan callResult // buffered 1
}

// unknownClass is the class of requests whose conflict set stayed unknown after a lookup.
const unknownClass = "unknown"

// flight is a batch in flight.
type flight struct {
	start time.Time
	// suspect: a batch of suspect budgets (or of unknown conflict sets) may well be stuck on
	// a lock again, so it never holds back batches on other budgets: it counts as late from
	// its start.
	suspect bool
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
	c := &call{req: req, out: make(chan callResult, 1)}
	b.classify(c)
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
// the definition cache only (a miss would cost every caller a query): ok is false when a
// subject is not cached, and the batcher then looks the definitions up once for all the
// requests that miss (resolve) before it batches them.
func (b *Batcher) budgetIDs(subjects []Subject) (ids []int64, ok bool) {
	for _, sub := range subjects {
		bs, ok := b.svc.budgets.Peek(sub)
		if !ok {
			return nil, false
		}
		for _, bu := range bs {
			ids = append(ids, bu.ID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), true
}

// classify sets c's conflict set and class from the definition cache.
func (b *Batcher) classify(c *call) {
	c.budgets, c.known = b.budgetIDs(c.req.Subjects)
	c.class = unknownClass
	if c.known {
		c.class = fmt.Sprint(c.budgets)
	}
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
	// Refused only when its expected wait exceeds what it has left (queueWaitLocked says when
	// that rule applies).
	now := time.Now()
	if wait, ok := b.queueWaitLocked(b.isSuspectLocked(c)); ok && !c.deadline.IsZero() {
		if left := c.deadline.Sub(now); left < wait+b.cfg.Margin {
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
// batch in flight and at least a batch waiting, see queueWaitLocked) the expected wait exceeds the time left, or
// (as in next: with a batch in flight) less time is left than a batch needs, so it would be
// refused as too late when its batch starts. A Check is then answered before its body is
// parsed, its key looked up and its cost bounded, and shedding costs little CPU. It queues
// nothing; a refusal wraps ErrOverloaded and is counted as a shed (reason "early"). It is a
// prediction: a request Admit lets through may still be refused by Reserve.
func (b *Batcher) Admit(ctx context.Context) error {
	deadline, hasDeadline := ctx.Deadline()
	b.mu.Lock()
	waiting, busy := len(b.pending), b.inflight > 0
	// The request's budgets are not known yet (its body is not parsed): it is judged as one of
	// a healthy budget, so a suspect budget's held queue never sheds other tenants here.
	wait, queued := b.queueWaitLocked(false)
	var minLeft time.Duration
	if busy {
		minLeft = b.minLeftLocked()
	}
	b.mu.Unlock()
	var err error
	switch left := time.Until(deadline); {
	case waiting >= b.cfg.QueueSize:
		err = fmt.Errorf("%w: %d requests are waiting", ErrOverloaded, waiting)
	case !hasDeadline || !busy:
	case queued && left < wait+b.cfg.Margin:
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

// queueWaitLocked is the expected wait of a request arriving now, and whether the wait rule
// applies at all. It does not when the batcher is idle (no batch in flight but of suspect
// budgets, maybe stuck on a lock: the request runs at once, and its batch refreshes an
// estimate a slow batch left behind), nor with less than a batch ahead (the request joins the
// next batch; refuseLate still answers one whose deadline comes too close before its batch
// starts). Requests held by a suspect budget (or waiting for a lookup) wait for their budget,
// not for the batches a request of other budgets joins: they count as ahead only of a request
// that is suspect itself.
func (b *Batcher) queueWaitLocked(suspect bool) (time.Duration, bool) {
	idle := true
	for _, f := range b.flights {
		idle = idle && f.suspect
	}
	ahead := len(b.pending)
	if !suspect {
		ahead -= min(b.held, ahead)
	}
	if idle || ahead < b.limit {
		return 0, false
	}
	return b.expectedWaitLocked(ahead), true
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

// onTimeLocked counts the batches in flight that are not late.
func (b *Batcher) onTimeLocked(now time.Time) int {
	late := b.lateAfterLocked()
	n := 0
	for _, f := range b.flights {
		if !f.suspect && now.Sub(f.start) < late {
			n++
		}
	}
	return n
}

// lateAfterLocked is how long a batch runs before it counts as late: twice the measured batch
// duration, and never less than minLate. Only one batch runs on time at once (the next one
// accumulates meanwhile: few large batches cost the database far less than many small ones);
// a late batch may be stuck on a lock, so it no longer holds back batches on other budgets,
// which start in the other lanes.
func (b *Batcher) lateAfterLocked() time.Duration {
	return max(minLate, time.Duration(2*b.ewmaDur))
}

// minLate is the least time a batch runs before the next one may start beside it.
const minLate = 10 * time.Millisecond

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

// Queued reports how many requests wait for a batch.
func (b *Batcher) Queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.pending)
}

// Shed reports how many requests were refused with ErrOverloaded.
func (b *Batcher) Shed() int64 { return b.shed.Load() }

// Run processes batches until ctx ends; requests still queued then are refused with
// ErrStopped. Run once.
func (b *Batcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
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
		case <-timer.C:
		}
		for {
			w := b.next()
			if len(w.resolve) > 0 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					b.resolve(ctx, w.resolve)
				}()
			}
			if len(w.batch) == 0 {
				if !w.wakeAt.IsZero() { // a batch in flight turns late then
					timer.Reset(time.Until(w.wakeAt))
				}
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.runBatch(ctx, w.batch, w.timeout, w.flight)
			}()
		}
	}
}

// work is what next hands Run.
type work struct {
	batch   []*call
	timeout time.Duration
	flight  *flight
	resolve []*call   // requests whose conflict sets to look up
	wakeAt  time.Time // nothing to start now: look again then
}

// next takes the next batch when a lane is free: the oldest waiting requests that touch no
// budget in flight, in arrival order per budget. It marks the batch's budgets busy. A lane
// is free when fewer than Lanes batches are in flight and none of them runs on time (see
// lateAfterLocked). Requests whose conflict sets are unknown are handed over to be looked up
// first (one lookup at a time, for all of them).
func (b *Batcher) next() work {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight >= b.cfg.Lanes || len(b.pending) == 0 {
		return work{}
	}
	now := time.Now()
	if b.onTimeLocked(now) > 0 {
		late := b.lateAfterLocked()
		var at time.Time
		for _, f := range b.flights {
			if t := f.start.Add(late); !f.suspect && t.After(now) && (at.IsZero() || t.Before(at)) {
				at = t
			}
		}
		return work{wakeAt: at}
	}
	minLeft := 2 * b.cfg.Margin
	if b.inflight > 0 { // idle: the estimate may be stale; let the batch refresh it
		minLeft = b.minLeftLocked()
	}
	var (
		batch    []*call
		class    string
		isolated bool           // the batch's class batches only with itself
		blocked  map[int64]bool // budgets of requests left waiting: later ones wait too
		earliest time.Time
		tooLate  []*call
		resolve  []*call
		held     int
	)
	keep := b.pending[:0]
	for _, c := range b.pending {
		if c.state.Load() != callWaiting {
			continue // its caller is gone and nothing was reserved yet: drop it
		}
		if !c.deadline.IsZero() && c.deadline.Sub(now) < minLeft {
			tooLate = append(tooLate, c) // cannot be decided in the time left
			continue
		}
		if !c.known && !c.resolved {
			if !c.resolving && !b.resolving {
				resolve = append(resolve, c)
			}
			held++
			keep = append(keep, c)
			continue
		}
		take := len(batch) < b.limit
		for _, id := range c.budgets {
			if b.busy[id] || blocked[id] {
				take = false
				break
			}
		}
		iso := !c.known || b.isSuspectLocked(c)
		if take {
			switch {
			case len(batch) == 0:
				class, isolated = c.class, iso
			case isolated || iso:
				take = isolated && iso && c.class == class
			}
		}
		if !take {
			if blocked == nil {
				blocked = map[int64]bool{}
			}
			for _, id := range c.budgets {
				blocked[id] = true
			}
			if iso {
				held++ // it waits for its (suspect) budget, not for the batches others form
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
	b.held = held
	for _, c := range tooLate {
		b.refuseLate(c)
	}
	if len(resolve) > 0 {
		b.resolving = true
		for _, c := range resolve {
			c.resolving = true
		}
	}
	if len(batch) == 0 {
		return work{resolve: resolve}
	}
	for _, c := range batch {
		for _, id := range c.budgets {
			b.busy[id] = true
		}
	}
	b.inflight++
	f := &flight{start: now, suspect: isolated}
	b.flights = append(b.flights, f)
	timeout := b.cfg.BatchTimeout
	if !earliest.IsZero() {
		timeout = min(timeout, earliest.Sub(now)-b.cfg.Margin)
	}
	return work{batch: batch, timeout: timeout, flight: f, resolve: resolve}
}

// resolve looks up, in one query, the budget definitions of requests whose conflict sets the
// cache did not know, so that they are batched apart from the budgets they do not touch (a
// request touching a locked budget must not stall a batch of healthy ones). A request whose
// set stays unknown (a failed lookup, a subject a template refuses) batches only with others
// of its kind; its batch reports the error.
func (b *Batcher) resolve(ctx context.Context, calls []*call) {
	var (
		subjects []Subject
		earliest time.Time
	)
	for _, c := range calls {
		subjects = append(subjects, c.req.Subjects...)
		if !c.deadline.IsZero() && (earliest.IsZero() || c.deadline.Before(earliest)) {
			earliest = c.deadline
		}
	}
	timeout := b.cfg.BatchTimeout
	if !earliest.IsZero() {
		timeout = max(min(timeout, time.Until(earliest)-b.cfg.Margin), time.Millisecond)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	if _, _, err := b.svc.budgetsFor(rctx, subjects); err != nil {
		b.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "could not look up the budgets of waiting requests",
			slog.Int("requests", len(calls)), slog.String("error", err.Error()))
	}
	cancel()
	b.mu.Lock()
	for _, c := range calls {
		b.classify(c)
		c.resolved, c.resolving = true, false
	}
	b.resolving = false
	b.mu.Unlock()
	b.signal()
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
func (b *Batcher) finished(batch []*call, f *flight, n int, took time.Duration, err error) {
	b.mu.Lock()
	if i := slices.Index(b.flights, f); i >= 0 {
		b.flights = slices.Delete(b.flights, i, i+1)
	}
	timedOut := err != nil && (errors.Is(err, store.ErrTimeout) || errors.Is(err, context.DeadlineExceeded))
	// A batch of one class (one set of budgets) that timed out was too large for its time;
	// one that mixed several may as well have met a locked row: its budgets become suspect,
	// which splits the next batches by class. Halving the cap for it would shrink every
	// tenant's batches (at 1, a backlog is served one doomed request at a time).
	oneClass := !slices.ContainsFunc(batch, func(c *call) bool { return c.class != batch[0].class })
	if timedOut && n > 1 && oneClass && !b.isSuspectLocked(batch[0]) {
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
			case err == nil && n > 0: // a batch that ran in the database (not an empty one)
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

func (b *Batcher) runBatch(ctx context.Context, batch []*call, timeout time.Duration, f *flight) {
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
		b.finished(batch, f, 0, 0, nil)
		return
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	ds, err := b.svc.Reserve(bctx, reqs)
	cancel()
	took := time.Since(start)
	b.finished(batch, f, len(reqs), took, err)
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
