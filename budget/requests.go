package budget

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/purser-dev/purser/budget/store"
)

// RequestRecord is one reservation as a per-request record: who, what, the hold, the actual
// charge and the outcome.
type RequestRecord struct {
	Reservation
	InputTokens  *int64 // from the normalised usage of a settled reservation
	OutputTokens *int64
}

// Reservation states, the outcome of a request record.
const (
	StatePending = "pending"
	StateSettled = "settled"
	StateVoided  = "voided"
	StateExpired = "expired"
)

// RequestQuery selects request records, newest first.
type RequestQuery struct {
	Subject, KeyID, Model, State string
	From, To                     time.Time // created_at in [From, To); zero: unbounded
	Scope                        Scope     // only records that carried a subject in it (nil: all)
	BeforeID                     string    // continue after this record ("": from the newest)
	Limit                        int       // at most this many (1-MaxRequestPage)
}

// MaxRequestPage bounds one page of Requests (what one query may hold in memory).
const MaxRequestPage = 10_000

func (q RequestQuery) filter() (store.RequestFilter, error) {
	f := store.RequestFilter{Subject: q.Subject, KeyID: q.KeyID, Model: q.Model, State: q.State, From: q.From, To: q.To,
		BeforeID: q.BeforeID, Limit: q.Limit}
	if q.Subject != "" {
		if _, err := ParseSubject(q.Subject); err != nil {
			return f, &FieldError{Field: "subject", Err: err}
		}
	}
	switch q.State {
	case "", StatePending, StateSettled, StateVoided, StateExpired:
	default:
		return f, fieldErr("state", "must be pending, settled, voided or expired, got %q", q.State)
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.From.Before(q.To) {
		return f, fieldErr("to", "must be after from")
	}
	if q.BeforeID != "" {
		if _, err := uuid.Parse(q.BeforeID); err != nil {
			return f, fieldErr("before", "is not a reservation id")
		}
	}
	if q.Limit < 1 || q.Limit > MaxRequestPage {
		return f, fieldErr("limit", "must be 1-%d", MaxRequestPage)
	}
	if q.Scope != nil {
		f.Scope = q.Scope.filter()
	}
	return f, nil
}

// Requests returns one page of request records, newest first (in reservation id order: ids
// are UUIDv7, made when the request was reserved or recorded).
func (s *Service) Requests(ctx context.Context, q RequestQuery) ([]RequestRecord, error) {
	f, err := q.filter()
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Requests(ctx, f)
	return convertAll(rows, requestFromRow), mapErr(err)
}

// EachRequest calls fn for every record q selects, newest first, fetching q.Limit at a time
// (each page its own query, so a long export holds no transaction open). It stops at fn's
// first error.
func (s *Service) EachRequest(ctx context.Context, q RequestQuery, fn func(RequestRecord) error) error {
	for {
		page, err := s.Requests(ctx, q)
		if err != nil {
			return err
		}
		for _, r := range page {
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(page) < q.Limit {
			return nil
		}
		q.BeforeID = page[len(page)-1].ID
	}
}

// TopBudgets returns the status of the n budgets most utilised in their current window
// (only budgets with spend in it; within scope when set), most utilised first.
func (s *Service) TopBudgets(ctx context.Context, scope Scope, n int) ([]Status, error) {
	var f *store.ScopeFilter
	if scope != nil {
		f = scope.filter()
	}
	top, err := s.db.TopBudgets(ctx, s.cfg.Now(), n, f)
	if err != nil {
		return nil, mapErr(err)
	}
	ids := make([]int64, len(top))
	for i, u := range top {
		ids[i] = u.ID
	}
	rows, err := s.db.BudgetsByID(ctx, ids)
	if err != nil {
		return nil, mapErr(err)
	}
	byID := make(map[int64]Budget, len(rows))
	for _, r := range rows {
		b, err := budgetFromRow(r)
		if err != nil {
			return nil, err
		}
		byID[b.ID] = b
	}
	bs := make([]Budget, 0, len(ids))
	for _, id := range ids {
		if b, ok := byID[id]; ok { // deleted since: skipped
			bs = append(bs, b)
		}
	}
	return s.statusOf(ctx, bs)
}

// BudgetStatus returns one live budget's current window.
func (s *Service) BudgetStatus(ctx context.Context, id int64) (Status, error) {
	b, err := s.Budget(ctx, id)
	if err != nil {
		return Status{}, err
	}
	sts, err := s.statusOf(ctx, []Budget{b})
	if err != nil {
		return Status{}, err
	}
	return sts[0], nil
}

// StatusOf returns the current windows of the given budgets (two queries, whatever their
// number: a page of a list).
func (s *Service) StatusOf(ctx context.Context, bs []Budget) ([]Status, error) {
	return s.statusOf(ctx, bs)
}

// History is a budget's spend over its current window, for a chart.
type History struct {
	Status Status
	// Bucket is the length of each point's span; points are aligned on the window's start.
	Bucket time.Duration
	// Points are the spend per bucket in the budget's unit (USD micros, tokens or requests),
	// in time order; buckets without spend are absent.
	Points []HistoryPoint
	// Approximate: the budget's endpoint or route filters cannot be applied to recorded
	// requests, so the points may include requests the budget did not count.
	Approximate bool
}

// HistoryPoint is one bucket of a History.
type HistoryPoint struct {
	At     time.Time
	Amount int64
}

// maxHistorySpan bounds a lifetime budget's chart.
const maxHistorySpan = 400 * 24 * time.Hour

// BudgetHistory returns a live budget's settled spend over its current window (resolved
// reservations that carried its subject and match its model filter, pruned history included
// at day resolution), bucketed: minutes for windows up to two hours, hours up to four days,
// days beyond. What is still pending is in Status, not in the points.
func (s *Service) BudgetHistory(ctx context.Context, id int64) (History, error) {
	st, err := s.BudgetStatus(ctx, id)
	if err != nil {
		return History{}, err
	}
	b := st.Budget
	from, to := st.Window.Start, st.Window.End
	now := s.cfg.Now()
	if b.Window.Kind == Lifetime {
		from = b.CreatedAt
		if earliest := now.Add(-maxHistorySpan); from.Before(earliest) {
			from = earliest
		}
		from = from.Truncate(24 * time.Hour)
		to = now.Add(time.Second)
	}
	span := to.Sub(from)
	h := History{Status: st, Bucket: 24 * time.Hour, Approximate: len(b.Endpoints) > 0 || len(b.RouteMatch) > 0}
	switch {
	case span <= 2*time.Hour:
		h.Bucket = time.Minute
	case span <= 4*24*time.Hour:
		h.Bucket = time.Hour
	}
	pts, err := s.db.Series(ctx, store.SeriesFilter{Subject: string(b.Subject), From: from, To: to, Bucket: h.Bucket})
	if err != nil {
		return History{}, mapErr(err)
	}
	for _, p := range pts {
		if len(b.Models) > 0 && !anyMatch(b.Models, p.Model) {
			continue
		}
		var v int64
		switch b.Unit {
		case Tokens:
			v = p.Tokens
		case Requests:
			v = p.Requests
		default:
			v = p.Cost
		}
		if n := len(h.Points); n > 0 && h.Points[n-1].At.Equal(p.At) {
			h.Points[n-1].Amount += v // another model in the same bucket
			continue
		}
		h.Points = append(h.Points, HistoryPoint{At: p.At.UTC(), Amount: v})
	}
	return h, nil
}
