package budget

import (
	"context"
	"time"
)

// UsageHealth is the missing-usage watchdog's view of one (route, provider, model): of the
// reservations resolved in a span, how many were charged their whole hold because the
// provider's answer came without usage the data plane could read (compressed answers, streams
// that carry no usage, a missing usage filter), or because no access-log entry arrived.
type UsageHealth struct {
	Route, Provider, Model string
	Resolved               int64 // settled or expired (voided ones cost nothing and carry no usage)
	WithoutUsage           int64 // settled at the hold: the answer had no (readable) usage
	Compressed             int64 // ... of which the answer was compressed
	Streams                int64 // ... of which the answer was an event stream
	Expired                int64 // no access-log entry arrived: charged the hold at expiry
}

// UsageHealth reports the reservations resolved since from, by route, provider and model.
func (s *Service) UsageHealth(ctx context.Context, from time.Time) ([]UsageHealth, error) {
	rows, err := s.db.UsageHealth(ctx, from)
	return convertAll(rows, usageHealthFromRow), mapErr(err)
}

// DatabaseClock is the database's now(), to compare with purser's own clock: reservations'
// times come from one, expiry and windows from the other.
func (s *Service) DatabaseClock(ctx context.Context) (time.Time, error) {
	t, err := s.db.Clock(ctx)
	return t, mapErr(err)
}

// UsageShortfall sums rows: the reservations resolved and those of them charged without usage.
func UsageShortfall(rows []UsageHealth) (resolved, withoutUsage int64) {
	for _, r := range rows {
		resolved += r.Resolved
		withoutUsage += r.WithoutUsage
	}
	return resolved, withoutUsage
}
