package budget

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Settlement resolves one reservation.
type Settlement struct {
	ReservationID string
	// Void releases the hold without charging (the upstream was never reached).
	Void bool
	// Tentative makes a Void apply only if no repeated Check (Envoy's retry_policy) was
	// answered with this reservation: the batcher's release of a caller that gave up.
	Tentative bool
	// ChargeHold charges the whole hold: the provider may have billed but the real usage is
	// unknown (response cut off, usage missing or unpriceable). Cost and Tokens are ignored.
	ChargeHold bool
	// Provisional (with ChargeHold) charges the hold as expiry does: the reservation becomes
	// expired, so a later authentic entry still settles its real cost and refunds the
	// difference. Only a pending reservation is charged (outcome provisional); any other is a
	// duplicate. The access log's x-request-id fallback uses it instead of a void.
	Provisional bool
	// Cost (micro-USD) and Tokens are the real spend; charged in full even above the hold
	// (the excess is recorded as an overrun).
	Cost   int64
	Tokens int64
	// Usage is the normalised usage record, kept for reports (optional).
	Usage json.RawMessage
	// CatalogVersion names the price catalog that priced Cost.
	CatalogVersion string
	// Cause explains the outcome: usage, cut_off, no_upstream, provider_error, ...
	Cause string
}

// Settle outcomes.
const (
	OutcomeSettled     = "settled"
	OutcomeVoided      = "voided"
	OutcomeLateSettled = "late_settled" // the reservation had expired; the difference was refunded
	OutcomeLateVoided  = "late_voided"  // the reservation had expired; its charge was refunded
	OutcomeDuplicate   = "duplicate"    // already settled or voided: nothing changed
	OutcomeUnknown     = "unknown"      // no such reservation
	OutcomeProvisional = "provisional"  // charged the hold as expiry does (Settlement.Provisional)
)

// SettleResult reports what happened to one reservation.
type SettleResult struct {
	ReservationID string
	Outcome       string
	// Overrun: the real amount exceeded the hold; it was charged in full and recorded.
	Overrun bool
}

// Settle resolves a batch of reservations in one round trip. It is idempotent: applying the
// same settlement twice changes nothing the second time.
func (s *Service) Settle(ctx context.Context, batch []Settlement) ([]SettleResult, error) {
	if len(batch) == 0 {
		return nil, nil
	}
	rows := make([]store.SettleRow, 0, len(batch))
	var provisional []store.SettleRow
	var res []SettleResult
	counts := map[string]int64{}
	unknown := map[string]bool{}
	for _, st := range batch {
		if st.Cost < 0 || st.Tokens < 0 {
			return nil, fmt.Errorf("%w: settlement %s has a negative amount", ErrInvalid, st.ReservationID)
		}
		if _, err := parseUUID(st.ReservationID); err != nil {
			// No reservation has this id: it is unknown, like an id the ledger does not hold,
			// and must not cost the rest of the batch its settlement.
			if !unknown[st.ReservationID] {
				unknown[st.ReservationID] = true
				res = append(res, SettleResult{ReservationID: st.ReservationID, Outcome: OutcomeUnknown})
				counts[OutcomeUnknown]++
			}
			continue
		}
		row := store.SettleRow{
			ReservationID: st.ReservationID, Void: st.Void, Tentative: st.Tentative, ChargeHold: st.ChargeHold, Cost: st.Cost, Tokens: st.Tokens,
			Usage: st.Usage, CatalogVersion: st.CatalogVersion, Cause: st.Cause,
		}
		if st.Provisional {
			if st.Void || !st.ChargeHold {
				return nil, fmt.Errorf("%w: settlement %s: a provisional settlement charges the hold", ErrInvalid, st.ReservationID)
			}
			provisional = append(provisional, row)
			continue
		}
		rows = append(rows, row)
	}
	var outs []store.SettleOutcome
	if len(rows) > 0 {
		var err error
		if outs, err = s.hot.Settle(ctx, rows); err != nil {
			return nil, mapErr(err)
		}
	}
	if len(provisional) > 0 {
		more, err := s.hot.ChargeProvisional(ctx, provisional)
		if err != nil {
			return nil, mapErr(err)
		}
		outs = append(outs, more...)
	}
	var overruns int64
	for _, o := range outs {
		res = append(res, SettleResult{ReservationID: o.ReservationID, Outcome: o.Outcome, Overrun: o.Overrun})
		counts[o.Outcome]++
		if o.Overrun {
			overruns++
		}
	}
	for o, n := range counts {
		s.cfg.Metrics.settled(ctx, o, n)
	}
	s.cfg.Metrics.overrun(ctx, overruns)
	return res, nil
}

// Void releases reservations whose upstream was never reached.
func (s *Service) Void(ctx context.Context, ids []string, cause string) ([]SettleResult, error) {
	return s.void(ctx, ids, cause, false)
}

// voidTentative releases holds whose callers gave up, unless a repeated Check was answered
// with them meanwhile (then the request may be upstream: its access-log entry decides).
func (s *Service) voidTentative(ctx context.Context, ids []string, cause string) ([]SettleResult, error) {
	return s.void(ctx, ids, cause, true)
}

func (s *Service) void(ctx context.Context, ids []string, cause string, tentative bool) ([]SettleResult, error) {
	batch := make([]Settlement, len(ids))
	for i, id := range ids {
		batch[i] = Settlement{ReservationID: id, Void: true, Tentative: tentative, Cause: cause}
	}
	return s.Settle(ctx, batch)
}

// Expire charges in full, up to limit, pending reservations whose deadline has passed on the
// database clock. Safe to run on every replica at once.
func (s *Service) Expire(ctx context.Context, limit int) (int, error) {
	n, err := s.hot.Expire(ctx, limit)
	if err != nil {
		return 0, mapErr(err)
	}
	s.cfg.Metrics.expiredN(ctx, n)
	return n, nil
}

// RunSweeper expires overdue reservations every interval until ctx ends. It drains a backlog
// in batches of batchSize before waiting again.
func (s *Service) RunSweeper(ctx context.Context, interval time.Duration, batchSize int) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			n, err := s.Expire(ctx, batchSize)
			if err != nil {
				if ctx.Err() == nil {
					s.log.LogAttrs(ctx, slog.LevelError, "expire reservations", slog.String("error", err.Error()))
				}
				break
			}
			if n > 0 {
				s.log.LogAttrs(ctx, slog.LevelInfo, "expired reservations charged in full", slog.Int("count", n))
			}
			if n < batchSize {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reservation is a reservation as recorded in the ledger.
type Reservation struct {
	ID             string
	State          string // StatePending | StateSettled | StateVoided | StateExpired
	CreatedAt      time.Time
	ExpiresAt      time.Time
	ResolvedAt     *time.Time
	KeyID          *string
	Subjects       []string
	Provider       string
	Flavor         string
	Model          string
	Route          string
	RequestID      *string
	HoldCost       int64
	HoldTokens     int64
	ActualCost     *int64
	ActualTokens   *int64
	CatalogVersion *string
	Cause          *string
	OverrunCost    int64
	OverrunTokens  int64
	Unreserved     bool
}

// Reservation returns one reservation by id.
func (s *Service) Reservation(ctx context.Context, id string) (Reservation, error) {
	if _, err := parseUUID(id); err != nil {
		return Reservation{}, fmt.Errorf("%w: reservation id: %w", ErrInvalid, err)
	}
	r, err := s.db.Reservation(ctx, id)
	return reservationFromRow(r), mapErr(err)
}

// ReservationsForRequest finds the reservations made, within [from, to], for the downstream
// request that carried this x-request-id and that Envoy started at start (to the nanosecond:
// the CheckRequest's attributes.request.time and the access-log entry's
// common_properties.start_time are both Envoy's stream start time). It is the access log's
// fallback join when an entry carries no ext_authz metadata: another request reusing the
// x-request-id started at another instant and never matches. Only reservations whose
// idempotency key starts with the request time (RequestStartKey) can match.
func (s *Service) ReservationsForRequest(ctx context.Context, requestID string, start, from, to time.Time) ([]Reservation, error) {
	if start.IsZero() || requestID == "" {
		return nil, nil
	}
	rs, err := s.db.ReservationsByRequestStart(ctx, requestID, RequestStartKey(start), from, to)
	return convertAll(rs, reservationFromRow), mapErr(err)
}

// RequestStartKey is the first 8 bytes of a reservation's idempotency key: the request's start
// time in Unix nanoseconds, big-endian (extauthz builds the key; see ReserveRequest).
func RequestStartKey(start time.Time) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(start.UnixNano()))
}
