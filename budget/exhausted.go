package budget

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Storms from memory: a runaway client on an exhausted hard budget must not cost a database
// round trip per request. A replica remembers, per budget, the window's room as the database
// last reported it when it denied a request, and denies at once a request whose hold on that
// budget exceeds it. The memory only ever denies what the database certainly would:
//
//   - Room only shrinks while nothing adds room: other reservations (from any replica) and
//     expiry (which turns a hold into the same charge) never add any. What does add room — a
//     settlement below its hold, a void, a late entry refunding an expiry, a grant, a limit
//     change or deletion, a new window — drops the entry: definitions through the
//     purser_changes notification (Invalidate), a window's spend going down through the
//     purser_room notification of migrations/010 (trigger on budget_windows), a new window
//     because entries are keyed by the window's start, and a grant scheduled to start later
//     because the watch reports when (the entry is not trusted past it).
//   - purser_room fires only for budgets some replica watches. A replica watches a budget
//     (store.WatchBudget) before it trusts anything the database says about it: only a
//     reservation that started after the watch committed is learned from, so every change
//     after its read notifies.
//   - Nothing is remembered or denied while the change listener is down (notifications may be
//     lost); reconnecting forgets everything.
//   - A request carrying an idempotency key may repeat a Check the database admitted before
//     (an Envoy retry): the database would answer it with its first reservation and the
//     request would go upstream on it. If it started (the key's first 8 bytes,
//     RequestStartKey) after the observation plus stormClockSkew, any earlier attempt was
//     reserved after the observation, needed room and dropped the entry: it cannot be a
//     repeat. Otherwise it is denied all the same, and its key is handed to a background
//     worker that voids, tentatively (as the batcher releases a caller that gave up), a
//     pending reservation with that key: Envoy retried because it gave up on the first
//     answer and acts on this denial, so the request never goes upstream on that hold. When
//     that worker's queue is full, the database decides.
//
// The one window where the memory denies a request the database would admit is the time a
// notification takes to arrive after the change committed (normally well under a millisecond
// to a few milliseconds; see docs/architecture.md for the bounds when the listener's
// connection dies silently).

// Tunables of the memory.
const (
	// stormWatchTTL is how long a watch lasts on the database clock; stormWatchMargin is
	// taken off it locally, and a watch closer than stormWatchRenew to its end is renewed.
	stormWatchTTL    = 10 * time.Minute
	stormWatchMargin = 5 * time.Second
	stormWatchRenew  = time.Minute
	// stormArmTimeout bounds one watch query.
	stormArmTimeout = 5 * time.Second
	// stormClockSkew is the allowance between Envoy's clock (a request's start) and purser's.
	stormClockSkew = time.Second
)

// stormMemory is a Service's memory of exhausted budget windows.
type stormMemory struct {
	seq     atomic.Uint64 // bumped by every room notification, watch confirmation and reset
	resets  atomic.Uint64
	live    atomic.Bool  // the change listener is connected: notifications arrive
	entries atomic.Int64 // budgets with a remembered window: 0 means nothing to check
	denied  atomic.Int64 // requests denied from memory

	mu       sync.RWMutex
	byBudget map[int64]*stormBudget
	arming   map[int64]bool

	repeats chan []byte // idempotency keys of possible repeats denied from memory
}

// stormRepeatQueue bounds the keys waiting for runStormRepeats.
const stormRepeatQueue = 65_536

// stormBudget is what a replica knows about one watched budget.
type stormBudget struct {
	bumped    uint64    // seq of its last room notification
	armed     uint64    // seq when its watch was confirmed (0: not watched)
	armedTill time.Time // local end of the watch (margin taken)
	grantAt   time.Time // local start of its next scheduled grant (zero: none)

	has   bool  // a window is remembered
	win   int64 // its start, Unix nanoseconds
	limit int64
	used  int64
	seen  time.Time // when the observation was learned, after the database read (Config.Now)
}

// trusted reports whether what the database said about the budget may be remembered at t.
func (b *stormBudget) trusted(t time.Time) bool {
	return b.armed != 0 && t.Before(b.armedTill) && (b.grantAt.IsZero() || t.Before(b.grantAt))
}

func (m *stormMemory) init() {
	m.byBudget = map[int64]*stormBudget{}
	m.arming = map[int64]bool{}
	m.repeats = make(chan []byte, stormRepeatQueue)
}

// setLive records whether the change listener is connected; going down forgets everything.
func (m *stormMemory) setLive(live bool) {
	if !live {
		m.live.Store(false)
		m.reset()
		return
	}
	m.reset()
	m.live.Store(true)
}

// reset forgets every watch and window (Invalidate, listener reconnect).
func (m *stormMemory) reset() {
	m.mu.Lock()
	m.resets.Add(1)
	m.seq.Add(1)
	clear(m.byBudget)
	m.entries.Store(0)
	m.mu.Unlock()
}

// bump records that the budget's room may have grown (a purser_room notification).
func (m *stormMemory) bump(budgetID int64) {
	m.mu.Lock()
	seq := m.seq.Add(1)
	if b := m.byBudget[budgetID]; b != nil {
		b.bumped = seq
		if b.has {
			b.has = false
			m.entries.Add(-1)
		}
	}
	m.mu.Unlock()
}

// snapshot is taken before a reservation batch reads the database.
func (m *stormMemory) snapshot() uint64 { return m.seq.Load() }

// stormEntry is a remembered window.
type stormEntry struct {
	limit, used int64
	seen        time.Time
}

// lookup returns the remembered window of the budget starting at win, if still trusted.
func (m *stormMemory) lookup(budgetID int64, win time.Time, now time.Time) (stormEntry, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	b := m.byBudget[budgetID]
	if b == nil || !b.has || b.win != win.UnixNano() || !b.trusted(now) {
		return stormEntry{}, false
	}
	return stormEntry{limit: b.limit, used: b.used, seen: b.seen}, true
}

// stormObservation is a hard budget window's state after a batch that a request could not fit.
type stormObservation struct {
	budget      int64
	win         int64
	limit, used int64
}

// observe collects, from a batch's decisions, the windows that denied a request, each with
// the most spend any line of the batch saw on it (the window as the batch left it).
func observe(ds []Decision) []stormObservation {
	var obs []stormObservation
	for i := range ds {
		d := &ds[i]
		if d.Outcome != Denied || d.DeniedBy == nil || !d.DeniedBy.Enforced || !d.DeniedBy.Budget.Hard {
			continue
		}
		o := stormObservation{budget: d.DeniedBy.Budget.ID, win: d.DeniedBy.Window.Start.UnixNano(), limit: d.DeniedBy.Limit}
		known := false
		for _, p := range obs {
			if p.budget == o.budget && p.win == o.win {
				known = true
				break
			}
		}
		if !known {
			obs = append(obs, o)
		}
	}
	if len(obs) == 0 {
		return nil
	}
	for i := range ds {
		for _, st := range ds[i].Budgets {
			if !st.Enforced {
				continue
			}
			for j := range obs {
				if o := &obs[j]; o.budget == st.Budget.ID && o.win == st.Window.Start.UnixNano() {
					o.used = max(o.used, st.Used)
					o.limit = min(o.limit, st.Limit)
				}
			}
		}
	}
	return obs
}

// learnStorm remembers the windows a reservation batch (read after snapshot snap) found
// without room for a request, and starts watching budgets not watched yet.
func (s *Service) learnStorm(snap uint64, ds []Decision) {
	m := &s.storm
	if !m.live.Load() {
		return
	}
	obs := observe(ds)
	if len(obs) == 0 {
		return
	}
	// Later than the database's read: a request that started after it (plus the clock skew)
	// was not counted in it (see fromMemory).
	seen, now := s.cfg.Now(), time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range obs {
		b := m.byBudget[o.budget]
		if b == nil {
			b = &stormBudget{}
			m.byBudget[o.budget] = b
		}
		if !b.trusted(now) || now.After(b.armedTill.Add(-stormWatchRenew)) {
			s.armStorm(o.budget)
		}
		if !b.trusted(now) || b.armed > snap || b.bumped > snap {
			continue // watched only since the batch read, or its room may have grown since
		}
		if b.has && b.win == o.win && b.limit-b.used <= o.limit-o.used {
			continue // what is remembered is as tight already
		}
		if !b.has {
			m.entries.Add(1)
		}
		b.has, b.win, b.limit, b.used, b.seen = true, o.win, o.limit, o.used, seen
	}
}

// armStorm starts watching the budget in the background (m.mu held).
func (s *Service) armStorm(budgetID int64) {
	m := &s.storm
	if m.arming[budgetID] {
		return
	}
	m.arming[budgetID] = true
	resets := m.resets.Load()
	go func() {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), stormArmTimeout)
		next, err := s.db.WatchBudget(ctx, budgetID, stormWatchTTL)
		cancel()
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.arming, budgetID)
		if err != nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "could not watch an exhausted budget; it is answered by the database",
				slog.Int64("budget_id", budgetID), slog.String("error", err.Error()))
			return
		}
		if m.resets.Load() != resets {
			return // forgotten meanwhile: the grant schedule read may be stale
		}
		b := m.byBudget[budgetID]
		if b == nil {
			b = &stormBudget{}
			m.byBudget[budgetID] = b
		}
		b.armed = m.seq.Add(1)
		b.armedTill = t0.Add(stormWatchTTL - stormWatchMargin)
		b.grantAt = time.Time{}
		if next >= 0 {
			b.grantAt = t0.Add(next)
		}
	}()
}

// fromMemory answers a reservation that certainly cannot fit a remembered exhausted window
// without a database round trip: a Denied decision whose DeniedBy is that window as last
// seen. ok is false when the database must decide.
func (s *Service) fromMemory(ctx context.Context, req *ReserveRequest) (Decision, bool) {
	m := &s.storm
	if m.entries.Load() == 0 || !m.live.Load() {
		return Decision{}, false
	}
	if req.Cost < 0 || req.Tokens < 0 || req.Cost > MaxLimit || req.Tokens > MaxLimit || len(req.Subjects) == 0 {
		return Decision{}, false
	}
	var start time.Time // zero: unknown
	if k := req.IdempotencyKey; len(k) == 8+sha256.Size {
		start = time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
	}
	bySubject := make(map[Subject][]*Budget, len(req.Subjects))
	for _, sub := range req.Subjects {
		bs, ok := s.budgets.Get(sub)
		if !ok {
			return Decision{}, false // not cached: its budgets may be new
		}
		bySubject[sub] = bs
	}
	applicable := applicableBudgets(req, bySubject)
	now, mono := s.cfg.Now(), time.Now()
	d := Decision{Outcome: Denied, Budgets: make([]BudgetState, len(applicable))}
	deny := -1
	var seen time.Time
	for i, b := range applicable {
		w := b.Window.At(now, b.ResetAt)
		st := BudgetState{Budget: b, Window: w, Amount: b.amountOf(req.Cost, req.Tokens)}
		if b.Hard {
			if e, ok := m.lookup(b.ID, w.Start, mono); ok {
				st.Limit, st.Used, st.Enforced = e.limit, e.used, true
				if deny < 0 && st.Amount > e.limit-e.used {
					deny, seen = i, e.seen
				}
			}
		}
		d.Budgets[i] = st
	}
	if deny < 0 {
		return Decision{}, false
	}
	if req.IdempotencyKey != nil && (start.IsZero() || !start.After(seen.Add(stormClockSkew))) {
		// Possibly a repeat of a Check admitted before the observation: release that hold.
		select {
		case m.repeats <- req.IdempotencyKey:
		default:
			return Decision{}, false
		}
	}
	d.DeniedBy = &d.Budgets[deny]
	m.denied.Add(1)
	s.cfg.Metrics.stormDenied(ctx)
	s.cfg.Metrics.reserved(ctx, []Decision{d})
	return d, true
}

// StormDenials is how many reservations this Service denied from memory.
func (s *Service) StormDenials() int64 { return s.storm.denied.Load() }

// roomNotice handles a purser_room payload (the budget id, schema removed); it reports
// whether it named a budget.
func (s *Service) roomNotice(id string) bool {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return false
	}
	s.storm.bump(n)
	return true
}

// runStormRepeats voids, tentatively, the pending reservations of possible repeats denied
// from memory (see fromMemory), in batches, until ctx ends.
func (s *Service) runStormRepeats(ctx context.Context) {
	const batchMax = 1000
	batch := make([][]byte, 0, batchMax)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case k := <-s.storm.repeats:
			batch = append(batch, k)
		}
	fill:
		for len(batch) < batchMax {
			select {
			case k := <-s.storm.repeats:
				batch = append(batch, k)
			default:
				break fill
			}
		}
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stormArmTimeout)
		ids, err := s.db.PendingByIdempotencyKeys(qctx, batch)
		if err == nil && len(ids) > 0 {
			_, err = s.voidTentative(qctx, ids, "storm_repeat")
		}
		cancel()
		if err != nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "could not release the holds of repeated Checks denied from memory; they will expire",
				slog.Int("count", len(batch)), slog.String("error", err.Error()))
		}
	}
}
