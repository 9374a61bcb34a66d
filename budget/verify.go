package budget

import (
	"context"
	"time"
)

// Mismatch is a window whose counters differ from the sum of its holds, or whose holds
// contradict their reservations.
type Mismatch struct {
	BudgetID     int64
	WindowStart  time.Time
	Posted       int64 // counter
	Pending      int64 // counter
	HeldPosted   int64 // sum of charges of settled and expired holds
	HeldPending  int64 // sum of amounts of pending holds
	BadHolds     int64 // holds whose charge contradicts their reservation's state
	OrphanHolds  int64 // holds without a reservation
	MissingCount bool  // holds exist for a window row that does not
}

// OverLimit is a hard budget window holding or having spent more than its limit.
type OverLimit struct {
	BudgetID    int64
	WindowStart time.Time
	Limit       int64 // the limit plus every grant that overlapped the window
	Posted      int64
	Pending     int64
	Overrun     int64 // sum of recorded overruns and unreserved spend in the window (explains excess)
}

// VerifyReport is the outcome of a reconciliation.
type VerifyReport struct {
	// Mismatches break invariant 2: a window's counters differ from the sum of its holds, or a
	// hold's charge contradicts its reservation's state. Any entry is a bug.
	Mismatches []Mismatch
	// OverLimit lists hard windows above their limit. Recorded overruns, unreserved spend or a
	// limit lowered after the spend explain it; Unexplained says when they do not.
	OverLimit []OverLimit
}

// Clean reports whether the ledger reconciles and no hard window is over its limit without
// an explanation.
func (r VerifyReport) Clean() bool {
	if len(r.Mismatches) > 0 {
		return false
	}
	for _, o := range r.OverLimit {
		if Unexplained(o) {
			return false
		}
	}
	return true
}

// Unexplained reports whether a window's excess over its limit is more than its recorded
// overruns and unreserved spend.
func Unexplained(o OverLimit) bool {
	return o.Posted+o.Pending-o.Overrun > o.Limit
}

// Verify reconciles every window with its holds (one consistent snapshot).
func (s *Service) Verify(ctx context.Context) (VerifyReport, error) {
	mismatches, err := s.db.Verify(ctx)
	if err != nil {
		return VerifyReport{}, mapErr(err)
	}
	over, err := s.db.OverLimits(ctx)
	if err != nil {
		return VerifyReport{}, mapErr(err)
	}
	return VerifyReport{Mismatches: convertAll(mismatches, mismatchFromRow), OverLimit: convertAll(over, overLimitFromRow)}, nil
}
