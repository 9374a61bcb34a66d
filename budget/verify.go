package budget

import (
	"context"

	"github.com/purser-dev/purser/budget/store"
)

// VerifyReport is the outcome of a reconciliation.
type VerifyReport struct {
	// Mismatches break invariant 2: a window's counters differ from the sum of its holds, or a
	// hold's charge contradicts its reservation's state. Any entry is a bug.
	Mismatches []store.Mismatch
	// OverLimit lists hard windows above their limit. Recorded overruns, unreserved spend or a
	// limit lowered after the spend explain it; Unexplained says when they do not.
	OverLimit []store.OverLimit
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
func Unexplained(o store.OverLimit) bool {
	return o.Posted+o.Pending-o.Overrun > o.Limit
}

// Verify reconciles every window with its holds (one consistent snapshot).
func (s *Service) Verify(ctx context.Context) (VerifyReport, error) {
	var r VerifyReport
	var err error
	if r.Mismatches, err = s.db.Verify(ctx); err != nil {
		return r, mapErr(err)
	}
	if r.OverLimit, err = s.db.OverLimits(ctx); err != nil {
		return r, mapErr(err)
	}
	return r, nil
}
