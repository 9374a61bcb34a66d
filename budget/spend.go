package budget

import (
	"context"
	"fmt"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Spend groupings.
const (
	GroupBySubject = "subject"
	GroupByModel   = "model"
	GroupByKey     = "key"
	GroupByDay     = "day"
	GroupByNone    = "" // one total row
)

// MaxSpendRange bounds a spend report's time range.
const MaxSpendRange = 400 * 24 * time.Hour

// SpendQuery selects a spend report: reservations resolved (settled, or expired and charged in
// full) in [From, To), grouped.
type SpendQuery struct {
	From, To time.Time
	// GroupBy is GroupBySubject, GroupByModel, GroupByKey, GroupByDay or GroupByNone. By
	// subject, a reservation counts once in each subject it carried (key, owners, team...), so
	// the rows add up to more than the total.
	GroupBy string
	// Subject keeps only reservations that carried this subject ("" = all).
	Subject string
	// Limit caps the rows (0: no cap); rows come largest cost first, days in date order.
	Limit int
}

// SpendRow is one group of a spend report: the money (micro-USD) and tokens charged, request
// counts, and the parts that were overruns or unreserved spend (included in the totals).
type SpendRow struct {
	Group            string
	Cost             int64 // micro-USD
	Tokens           int64
	Requests         int64
	Expired          int64 // charged in full because no access-log entry arrived
	Overruns         int64 // requests that cost more than their reserved upper bound
	OverrunCost      int64
	OverrunTokens    int64
	Unreserved       int64 // requests that reached purser without a reservation (fail-open)
	UnreservedCost   int64
	UnreservedTokens int64
}

// Spend reports settled and expired spend, grouped.
func (s *Service) Spend(ctx context.Context, q SpendQuery) ([]SpendRow, error) {
	switch q.GroupBy {
	case GroupBySubject, GroupByModel, GroupByKey, GroupByDay, GroupByNone:
	default:
		return nil, fieldErr("group_by", "must be subject, model, key or day, got %q", q.GroupBy)
	}
	if q.From.IsZero() {
		return nil, fieldErr("from", "is required")
	}
	if q.To.IsZero() {
		return nil, fieldErr("to", "is required")
	}
	if !q.From.Before(q.To) {
		return nil, fieldErr("to", "must be after from")
	}
	if q.To.Sub(q.From) > MaxSpendRange {
		return nil, fieldErr("to", "the range is longer than %d days", int(MaxSpendRange/(24*time.Hour)))
	}
	if q.Subject != "" {
		if _, err := ParseSubject(q.Subject); err != nil {
			return nil, &FieldError{Field: "subject", Err: err}
		}
	}
	if q.Limit < 0 {
		return nil, fieldErr("limit", "must not be negative")
	}
	rows, err := s.db.Spend(ctx, store.SpendFilter{From: q.From, To: q.To, GroupBy: q.GroupBy, Subject: q.Subject, Limit: q.Limit})
	if err != nil {
		return nil, mapErr(fmt.Errorf("spend report: %w", err))
	}
	return convertAll(rows, spendFromRow), nil
}
