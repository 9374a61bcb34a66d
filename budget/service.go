package budget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/purser-dev/purser/budget/store"
)

// Config tunes a Service. The zero value means "use the defaults".
type Config struct {
	Logger *slog.Logger
	// Now is the clock used to pick windows (default time.Now). Reservation expiry always uses
	// the database clock.
	Now func() time.Time
	// ReservationTTL is how long a reservation waits for its access-log entry before it
	// expires and is charged in full (default 15 minutes).
	ReservationTTL time.Duration
	// KeyCacheSize / KeyCacheTTL bound the API key cache (defaults 100,000 / 1 minute);
	// NegativeKeyTTL is how long an unknown secret is remembered (default 10 seconds).
	KeyCacheSize   int
	KeyCacheTTL    time.Duration
	NegativeKeyTTL time.Duration
	// BudgetCacheSize / BudgetCacheTTL bound the per-subject budget definition cache
	// (defaults 100,000 / 1 minute). LISTEN/NOTIFY invalidates both caches within moments of
	// a change; the TTL only matters if notifications are lost.
	BudgetCacheSize int
	BudgetCacheTTL  time.Duration
	// KeyLookupRate bounds database lookups of secrets the key index does not know (keys
	// created moments ago on another replica, before its notification arrived), per second
	// (default 20, burst 2x). Past it such a secret is unknown; before the index first loaded
	// it is "cannot decide" (ErrUnavailable), never "allow".
	KeyLookupRate float64
	// Templates bounds default-budget template materialisation (see TemplateLimits).
	Templates TemplateLimits
	// Metrics receives counters and gauges (nil: none).
	Metrics *Metrics
}

// Defaults.
const (
	DefaultReservationTTL = 15 * time.Minute
	defaultCacheSize      = 100_000
	defaultCacheTTL       = time.Minute
	defaultNegativeTTL    = 10 * time.Second
	defaultKeyLookupRate  = 20
)

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.ReservationTTL <= 0 {
		c.ReservationTTL = DefaultReservationTTL
	}
	if c.KeyCacheSize <= 0 {
		c.KeyCacheSize = defaultCacheSize
	}
	if c.KeyCacheTTL <= 0 {
		c.KeyCacheTTL = defaultCacheTTL
	}
	if c.NegativeKeyTTL <= 0 {
		c.NegativeKeyTTL = defaultNegativeTTL
	}
	if c.BudgetCacheSize <= 0 {
		c.BudgetCacheSize = defaultCacheSize
	}
	if c.BudgetCacheTTL <= 0 {
		c.BudgetCacheTTL = defaultCacheTTL
	}
	if c.KeyLookupRate <= 0 {
		c.KeyLookupRate = defaultKeyLookupRate
	}
	c.Templates = c.Templates.withDefaults()
	return c
}

// Service is the ledger: it reserves, settles, voids and expires spend, and manages keys and
// budgets. It is safe for concurrent use.
type Service struct {
	hot *store.Store // reserve / settle / expire: a small dedicated pool
	db  *store.Store // everything else
	cfg Config
	log *slog.Logger

	keys     *expirable.LRU[[32]byte, *Key]
	keyLoads singleflight.Group // concurrent misses for one secret share one query
	unknown  *expirable.LRU[[32]byte, struct{}]
	budgets  *expirable.LRU[Subject, []*Budget]
	cacheGen atomic.Uint64 // bumped on every invalidation; loads started earlier are not cached

	keyIdx     keyIndex
	keyLookups *rate.Limiter // database lookups of secrets the index does not know
	templates  templateGate
	signing    chan struct{} // a signing key change was notified (RunSigningKeys reloads)
	storm      stormMemory   // exhausted budget windows (exhausted.go)
}

// New returns a Service. hot serves the request path (reserve, settle, expire); db serves the
// rest. They may be the same store.
func New(hot, db *store.Store, cfg Config) *Service {
	cfg = cfg.withDefaults()
	s := &Service{
		hot:     hot,
		db:      db,
		cfg:     cfg,
		log:     cfg.Logger,
		keys:    expirable.NewLRU[[32]byte, *Key](cfg.KeyCacheSize, nil, cfg.KeyCacheTTL),
		unknown: expirable.NewLRU[[32]byte, struct{}](cfg.KeyCacheSize, nil, cfg.NegativeKeyTTL),
		budgets: expirable.NewLRU[Subject, []*Budget](cfg.BudgetCacheSize, nil, cfg.BudgetCacheTTL),

		keyIdx:     newKeyIndex(),
		keyLookups: rate.NewLimiter(rate.Limit(cfg.KeyLookupRate), int(2*cfg.KeyLookupRate)+1),
		templates:  newTemplateGate(cfg.Templates),
		signing:    make(chan struct{}, 1),
	}
	s.storm.init()
	return s
}

// Invalidate drops every cached key and budget definition.
func (s *Service) Invalidate() {
	s.cacheGen.Add(1)
	s.keys.Purge()
	s.unknown.Purge()
	s.budgets.Purge()
	s.templates.live.Store(nil)
	s.storm.reset()
}

// Authenticate returns the key whose secret this is, if it may be used now. A secret that
// does not have a key's shape (ValidSecret) is unknown at once. Then it answers from the
// cache when it can; a secret the index of every key's hash does not hold is unknown without
// a query, except for a few lookups a second (KeyLookupRate) that catch keys created moments
// ago on another replica; an unknown secret is remembered briefly. Expiry is checked on every
// call; a revocation reaches every replica's cache through Listen.
func (s *Service) Authenticate(ctx context.Context, secret string) (*Key, error) {
	if !ValidSecret(secret) {
		s.cfg.Metrics.keyLookup(ctx, "malformed")
		return nil, ErrKeyUnknown
	}
	h := HashSecret(secret)
	if k, ok := s.keys.Get(h); ok {
		return k, k.Usable(s.cfg.Now())
	}
	if _, ok := s.unknown.Get(h); ok {
		s.cfg.Metrics.keyLookup(ctx, "negative_cache")
		return nil, ErrKeyUnknown
	}
	known, loaded := s.keyIdx.lookup(h)
	ch := s.keyLoads.DoChan(string(h[:]), func() (any, error) {
		// Checked again inside the flight: a caller that missed both caches just before another
		// flight for this secret ended (and filled one) would otherwise query once more; under
		// a flood of one forged key on a starved CPU that was one query per such gap.
		if k, ok := s.keys.Get(h); ok {
			return k, nil
		}
		if _, ok := s.unknown.Get(h); ok {
			s.cfg.Metrics.keyLookup(ctx, "negative_cache")
			return nil, ErrKeyUnknown
		}
		if !known && !s.keyLookups.Allow() {
			if !loaded {
				// Nothing says whether this key exists: cannot decide, never allow.
				s.cfg.Metrics.keyLookup(ctx, "rate_limited")
				return nil, fmt.Errorf("%w: key lookups are rate-limited until the key index is loaded", ErrUnavailable)
			}
			s.cfg.Metrics.keyLookup(ctx, "index")
			return nil, ErrKeyUnknown
		}
		// Shared by every caller waiting for this secret: not bound to the first one's context.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keyLoadTimeout)
		defer cancel()
		gen := s.cacheGen.Load()
		row, err := s.db.KeyByHash(lctx, h[:])
		if errors.Is(err, store.ErrNotFound) {
			if s.cacheGen.Load() == gen {
				s.unknown.Add(h, struct{}{})
			}
			s.cfg.Metrics.keyLookup(ctx, "unknown")
			return nil, ErrKeyUnknown
		}
		if err != nil {
			return nil, mapErr(err)
		}
		k, err := keyFromRow(row)
		if err != nil {
			return nil, err
		}
		if s.cacheGen.Load() == gen {
			s.keys.Add(h, &k)
		}
		s.cfg.Metrics.keyLookup(ctx, "database")
		return &k, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		k := r.Val.(*Key)
		return k, k.Usable(s.cfg.Now())
	}
}

// keyLoadTimeout bounds a shared key lookup.
const keyLoadTimeout = 5 * time.Second

// ReserveRequest asks to hold a request's worst-case cost.
type ReserveRequest struct {
	// ID is the reservation id to use when admitted (a UUID); empty: one is generated.
	ID string
	// IdempotencyKey, when set, makes a repeated Reserve of the same request return the first
	// answer instead of holding twice. It must be unique per downstream request (see
	// extauthz: key id + x-request-id + Envoy stream id). When it starts with
	// RequestStartKey(the request's start) followed by a SHA-256 (40 bytes), the access log's
	// fallback join can find the reservation (ReservationsForRequest).
	IdempotencyKey []byte
	KeyID          string
	Subjects       []Subject
	Target         Target // model, path and route context, for budget filters
	Provider       string
	Flavor         string
	Route          string
	RequestID      string // x-request-id, the access log's fallback join key
	Cost           int64  // upper bound, micro-USD
	Tokens         int64  // upper bound, tokens
	TTL            time.Duration
}

// Outcome of a reservation.
type Outcome int

// Outcomes.
const (
	Denied    Outcome = iota // a hard budget has no room; nothing was held
	Admitted                 // held on every applicable budget
	Duplicate                // the idempotency key was reserved before: this is the first answer
)

func (o Outcome) String() string {
	switch o {
	case Admitted:
		return "admitted"
	case Duplicate:
		return "duplicate"
	}
	return "denied"
}

// BudgetState is a budget's window as a decision saw it.
type BudgetState struct {
	Budget *Budget
	Window Window
	// Limit is the effective limit (grants included); Enforced is false when the budget was
	// deleted after the definition was cached.
	Limit    int64
	Enforced bool
	// Used is posted + pending including this request's hold when it was admitted.
	Used int64
	// Amount is what this request holds (or asked to hold) on the budget.
	Amount int64
}

// Remaining is Limit - Used (negative when over).
func (b BudgetState) Remaining() int64 { return b.Limit - b.Used }

// Decision is Reserve's answer for one request.
type Decision struct {
	Outcome       Outcome
	ReservationID string
	// Budgets lists every budget the request touched, hard and soft.
	Budgets []BudgetState
	// DeniedBy is the hard budget that had no room (Denied only).
	DeniedBy *BudgetState
	// Refused is set (Denied, DeniedBy nil) when a subject of the request is new and its
	// default-budget template could not make its budget (*SubjectLimit): admitting the
	// request without that budget would let it spend unbounded.
	Refused error
}

// Tightest is the hard budget with the least room left relative to its limit (nil when no
// hard budget applies).
func (d *Decision) Tightest() *BudgetState {
	var best *BudgetState
	for i := range d.Budgets {
		b := &d.Budgets[i]
		if !b.Budget.Hard || !b.Enforced {
			continue
		}
		if best == nil || lessRoom(b, best) {
			best = b
		}
	}
	return best
}

// lessRoom compares remaining/limit fractions exactly (cross-multiplied in 128 bits).
func lessRoom(a, b *BudgetState) bool {
	ra, rb := max(a.Remaining(), 0), max(b.Remaining(), 0)
	la, lb := max(a.Limit, 1), max(b.Limit, 1)
	return cmpProducts(ra, lb, rb, la) < 0
}

// Warning is a threshold crossed or a soft budget exceeded by a request.
type Warning struct {
	Budget    *Budget
	Threshold int  // percent of the limit reached (0 for "soft budget exceeded")
	Exceeded  bool // a soft budget is over its limit
}

// Warnings lists, per budget, the highest warning threshold reached and soft budgets over
// their limit.
func (d *Decision) Warnings() []Warning {
	var out []Warning
	for _, b := range d.Budgets {
		if !b.Enforced {
			continue
		}
		if !b.Budget.Hard && b.Used > b.Limit {
			out = append(out, Warning{Budget: b.Budget, Exceeded: true})
			continue
		}
		for i := len(b.Budget.WarnAt) - 1; i >= 0; i-- {
			p := b.Budget.WarnAt[i]
			// used*100 >= limit*p, compared in 128 bits.
			if cmpProducts(b.Used, 100, b.Limit, int64(p)) >= 0 {
				out = append(out, Warning{Budget: b.Budget, Threshold: p})
				break
			}
		}
	}
	return out
}

type winKey struct {
	budget int64
	start  int64 // unix nanos
}

// Reserve admits a batch of requests, each on every budget that applies to any of its
// subjects, in one database round trip. A batch of one is the plain case; the Batcher groups
// concurrent callers. The decisions are those of serving the requests one by one in order.
func (s *Service) Reserve(ctx context.Context, reqs []ReserveRequest) ([]Decision, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	var subjects []Subject
	for i := range reqs {
		subjects = append(subjects, reqs[i].Subjects...)
		if reqs[i].Cost < 0 || reqs[i].Tokens < 0 || reqs[i].Cost > MaxLimit || reqs[i].Tokens > MaxLimit {
			return nil, fmt.Errorf("%w: reservation amount out of range (cost %d, tokens %d)", ErrInvalid, reqs[i].Cost, reqs[i].Tokens)
		}
	}
	bySubject, refused, err := s.budgetsFor(ctx, subjects)
	if err != nil {
		return nil, err
	}

	now := s.cfg.Now()
	batch := store.ReserveBatch{Requests: make([]store.ReserveRequestRow, 0, len(reqs))}
	var windows windowSet
	type lineRef struct {
		budget *Budget
		window Window
		amount int64
	}
	var refs []lineRef
	sent := make([]int, len(reqs)) // index into batch.Requests, or -(first+1) for in-batch duplicates
	firstByKey := map[string]int{}
	for i := range reqs {
		r := &reqs[i]
		if err := refusal(r.Subjects, refused); err != nil {
			sent[i] = refusedRequest
			continue
		}
		if r.IdempotencyKey != nil {
			if first, ok := firstByKey[string(r.IdempotencyKey)]; ok {
				sent[i] = -(first + 1)
				continue
			}
			firstByKey[string(r.IdempotencyKey)] = i
		}
		applicable := applicableBudgets(r, bySubject)
		id := r.ID
		if id == "" {
			id = uuidV7()
		} else if _, err := parseUUID(id); err != nil {
			return nil, fmt.Errorf("%w: reservation id: %w", ErrInvalid, err)
		}
		row := store.ReserveRequestRow{
			ID: id, IdempotencyKey: r.IdempotencyKey, TTL: r.TTL, KeyID: r.KeyID,
			Subjects: subjectStrings(r.Subjects), Provider: r.Provider, Flavor: r.Flavor, Model: r.Target.Model,
			Route: r.Route, RequestID: r.RequestID, HoldCost: r.Cost, HoldTokens: r.Tokens,
			FirstLine: len(batch.Lines), LineCount: len(applicable),
		}
		if row.TTL <= 0 {
			row.TTL = s.cfg.ReservationTTL
		}
		for _, b := range applicable {
			w := b.Window.At(now, b.ResetAt)
			amount := b.amountOf(r.Cost, r.Tokens)
			batch.Lines = append(batch.Lines, store.HoldLine{Window: windows.add(b, w), Amount: amount, Hard: b.Hard, Unit: b.holdUnit()})
			refs = append(refs, lineRef{budget: b, window: w, amount: amount})
		}
		sent[i] = len(batch.Requests)
		batch.Requests = append(batch.Requests, row)
	}
	batch.Windows = windows.sorted(batch.Lines)

	snap := s.storm.snapshot()
	res, err := s.hot.Reserve(ctx, batch)
	if err != nil {
		return nil, mapErr(err)
	}

	out := make([]Decision, len(reqs))
	for i := range reqs {
		j := sent[i]
		if j == refusedRequest {
			out[i] = Decision{Outcome: Denied, Refused: refusal(reqs[i].Subjects, refused)}
			continue
		}
		if j < 0 {
			continue // filled below from the first occurrence
		}
		row := batch.Requests[j]
		d := Decision{ReservationID: res.ReservationID[j]}
		switch res.Status[j] {
		case store.StatusAdmitted:
			d.Outcome = Admitted
		case store.StatusDuplicate:
			d.Outcome = Duplicate
		default:
			d.Outcome = Denied
		}
		if row.LineCount > 0 {
			d.Budgets = make([]BudgetState, row.LineCount)
			for l := range row.LineCount {
				li := row.FirstLine + l
				st := BudgetState{Budget: refs[li].budget, Window: refs[li].window, Amount: refs[li].amount, Used: res.LineUsed[li]}
				if lim := res.LineLimit[li]; lim != nil {
					st.Limit, st.Enforced = *lim, true
				}
				d.Budgets[l] = st
			}
			if d.Outcome == Denied && res.DenyLine[j] >= 0 {
				d.DeniedBy = &d.Budgets[res.DenyLine[j]-row.FirstLine]
			}
		}
		out[i] = d
	}
	for i := range reqs {
		if sent[i] < 0 && sent[i] != refusedRequest {
			first := out[-sent[i]-1]
			if first.Outcome == Admitted {
				first.Outcome = Duplicate
			}
			out[i] = first
		}
	}
	s.cfg.Metrics.reserved(ctx, out)
	s.learnStorm(snap, out)
	return out, nil
}

// refusedRequest marks, in Reserve, a request one of whose subjects budgetsFor refused.
const refusedRequest = math.MinInt

// refusal is the first refusal among the subjects, or nil.
func refusal(subjects []Subject, refused map[Subject]error) error {
	for _, s := range subjects {
		if err := refused[s]; err != nil {
			return err
		}
	}
	return nil
}

// applicableBudgets returns the budgets of the request's subjects whose filters select it,
// each once, ordered by id.
func applicableBudgets(r *ReserveRequest, bySubject map[Subject][]*Budget) []*Budget {
	var out []*Budget
	for _, sub := range r.Subjects {
		for _, b := range bySubject[sub] {
			if b.Applies(r.Target) && !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// windowSet collects the distinct windows of a batch.
type windowSet struct {
	idx  map[winKey]int
	keys []store.WindowKey
}

// add returns the (unsorted) index of b's window w, adding it when new.
func (ws *windowSet) add(b *Budget, w Window) int {
	k := winKey{b.ID, w.Start.UnixNano()}
	if i, ok := ws.idx[k]; ok {
		return i
	}
	if ws.idx == nil {
		ws.idx = map[winKey]int{}
	}
	wk := store.WindowKey{BudgetID: b.ID, Start: w.Start, End: w.End}
	if b.Window.Kind == Rolling {
		from := w.RollFrom
		wk.RollFrom = &from
	}
	ws.idx[k] = len(ws.keys)
	ws.keys = append(ws.keys, wk)
	return ws.idx[k]
}

// sorted returns the windows ordered by (budget id, start) — the lock order — and remaps the
// lines' window indices to the new positions.
func (ws *windowSet) sorted(lines []store.HoldLine) []store.WindowKey {
	perm := make([]int, len(ws.keys))
	for i := range perm {
		perm[i] = i
	}
	sort.Slice(perm, func(i, j int) bool {
		a, c := ws.keys[perm[i]], ws.keys[perm[j]]
		if a.BudgetID != c.BudgetID {
			return a.BudgetID < c.BudgetID
		}
		return a.Start.Before(c.Start)
	})
	pos := make([]int, len(perm))
	out := make([]store.WindowKey, len(perm))
	for newIdx, oldIdx := range perm {
		pos[oldIdx] = newIdx
		out[newIdx] = ws.keys[oldIdx]
	}
	for i := range lines {
		lines[i].Window = pos[lines[i].Window]
	}
	return out
}

// amountOf is what a request of that cost and token bound holds on the budget, in its unit:
// a requests budget holds 1 whatever the request may cost.
func (b *Budget) amountOf(cost, tokens int64) int64 {
	switch b.Unit {
	case Tokens:
		return tokens
	case Requests:
		return 1
	}
	return cost
}

// holdUnit is how the ledger records the unit of the budget's holds.
func (b *Budget) holdUnit() store.HoldUnit {
	switch b.Unit {
	case Tokens:
		return store.HoldTokens
	case Requests:
		return store.HoldRequests
	}
	return store.HoldMoney
}

func subjectStrings(ss []Subject) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

// uuidV7 returns a time-ordered UUID: new reservations land at the right edge of the primary
// key index instead of all over it.
func uuidV7() string {
	u, err := uuid.NewV7()
	if err != nil { // only if the system's random source fails
		return uuid.NewString()
	}
	return u.String()
}
