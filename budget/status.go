package budget

import (
	"context"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Status is one budget's current window, as an operator or a key holder sees it.
type Status struct {
	Budget      Budget
	Window      Window // for rolling budgets Start is RollFrom: the whole counted span
	BaseLimit   int64
	Limit       int64 // BaseLimit plus active grants
	Grants      []Grant
	Posted      int64
	Pending     int64
	Remaining   int64 // Limit - Posted - Pending, may be negative
	Utilization int   // percent of Limit used (posted + pending), rounded down
	// BurnPerDay is the average spend per day so far in this window (rounded up).
	BurnPerDay int64
	// Projected is the spend at the window's end if the burn rate holds (calendar windows only).
	Projected int64
	// UntilReset is the time left before the window ends (0 for lifetime budgets).
	UntilReset time.Duration
	// UntilExhausted is when the budget runs out at the current burn rate (0 if never, or if
	// it is already exhausted).
	UntilExhausted time.Duration
	// RunsOutBeforeReset: at the current burn rate the limit is reached before the window ends.
	RunsOutBeforeReset bool
}

// Status reports every live budget of the given subjects (in the order given, then by id).
func (s *Service) Status(ctx context.Context, subjects ...Subject) ([]Status, error) {
	var budgets []Budget
	for _, sub := range subjects {
		bs, err := s.Budgets(ctx, BudgetQuery{Subject: string(sub)})
		if err != nil {
			return nil, err
		}
		budgets = append(budgets, bs...)
	}
	return s.statusOf(ctx, budgets)
}

// statusOf reports the given budgets' current windows.
func (s *Service) statusOf(ctx context.Context, budgets []Budget) ([]Status, error) {
	if len(budgets) == 0 {
		return nil, nil
	}
	now := s.cfg.Now() // the same clock that picks windows for reservations
	ids := make([]int64, len(budgets))
	from, to := make([]time.Time, len(budgets)), make([]time.Time, len(budgets))
	wins := make([]Window, len(budgets))
	for i, b := range budgets {
		ids[i] = b.ID
		w := b.Window.At(now, b.ResetAt)
		wins[i] = w
		from[i], to[i] = w.Start, w.Start
		if b.Window.Kind == Rolling {
			from[i] = w.RollFrom
		}
	}
	sums, err := s.db.WindowSums(ctx, ids, from, to)
	if err != nil {
		return nil, mapErr(err)
	}
	type key struct {
		id   int64
		from int64
	}
	byKey := make(map[key]store.WindowRow, len(sums))
	for _, w := range sums {
		byKey[key{w.BudgetID, w.Start.UnixNano()}] = w
	}
	grants, err := s.db.ActiveGrants(ctx, ids)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Status, len(budgets))
	for i, b := range budgets {
		w := byKey[key{b.ID, from[i].UnixNano()}]
		st := Status{Budget: b, Window: wins[i], BaseLimit: b.Limit, Limit: b.Limit, Posted: w.Posted, Pending: w.Pending}
		if b.Window.Kind == Rolling {
			st.Window = Window{Start: wins[i].RollFrom, End: wins[i].End, RollFrom: wins[i].RollFrom}
		}
		for _, g := range grants {
			if g.BudgetID == b.ID {
				st.Grants = append(st.Grants, grantFromRow(g))
				st.Limit += g.Amount
			}
		}
		fillRates(&st, now)
		out[i] = st
	}
	return out, nil
}

// fillRates computes remaining, utilisation, burn rate and projections with integer math.
func fillRates(st *Status, now time.Time) {
	used := st.Posted + st.Pending
	st.Remaining = st.Limit - used
	if st.Limit > 0 {
		st.Utilization = int(mulDivFloor(used, 100, st.Limit))
	} else if used > 0 {
		st.Utilization = 100
	}
	start := st.Window.Start
	if st.Budget.Window.Kind == Lifetime && st.Budget.CreatedAt.After(start) {
		start = st.Budget.CreatedAt
	}
	// Avoid absurd rates in a window's first minutes: at least an hour has elapsed, or the
	// whole window when it is shorter (minute and hour windows).
	floor := time.Hour
	if k := st.Budget.Window.Kind; k == Minute || k == Hour {
		floor = min(floor, st.Window.End.Sub(start))
	}
	elapsed := max(now.Sub(start), floor)
	const day = int64(24 * time.Hour)
	st.BurnPerDay = mulDivCeil(used, day, int64(elapsed))
	if st.Budget.Window.Kind != Lifetime {
		st.UntilReset = max(st.Window.End.Sub(now), 0)
	}
	switch st.Budget.Window.Kind {
	case Lifetime:
		st.Projected = used
	case Rolling:
		st.Projected = used
		st.BurnPerDay = mulDivCeil(used, day, int64(st.Budget.Window.Rolling))
	default:
		total := st.Window.End.Sub(start)
		st.Projected = mulDivCeil(used, int64(total), int64(elapsed))
		st.RunsOutBeforeReset = st.Projected > st.Limit
	}
	if st.Remaining > 0 && used > 0 && st.BurnPerDay > 0 {
		st.UntilExhausted = time.Duration(mulDivFloor(st.Remaining, day, st.BurnPerDay))
	}
}

func mulDivFloor(a, b, c int64) int64 {
	if a <= 0 || b <= 0 || c <= 0 {
		return 0
	}
	return mulDivCeil(a, b, c) - boolInt(remainderNonZero(a, b, c))
}
