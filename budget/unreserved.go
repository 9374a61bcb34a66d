package budget

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Unreserved is spend that reached a provider without a reservation: a route that fails
// open admitted it while the ledger was unreachable, or the Check's answer was lost. It is
// charged to every budget its subjects have, at the time the request started, with no
// admission check (the money is spent); windows may go over their limit, which Verify
// explains with the unreserved flag.
type Unreserved struct {
	// IdempotencyKey makes a replayed access-log entry record nothing the second time.
	IdempotencyKey []byte
	KeyID          string
	Subjects       []Subject
	Target         Target
	Provider       string
	Flavor         string
	Route          string
	RequestID      string
	At             time.Time // when the request started: picks the windows
	Cost           int64     // micro-USD
	Tokens         int64
	Usage          json.RawMessage
	CatalogVersion string
}

// RecordUnreserved stores unreserved spend in one round trip; it returns how many records
// were new (replays are skipped).
func (s *Service) RecordUnreserved(ctx context.Context, us []Unreserved) (int, error) {
	if len(us) == 0 {
		return 0, nil
	}
	var subjects []Subject
	for i := range us {
		if len(us[i].IdempotencyKey) == 0 {
			return 0, fmt.Errorf("%w: unreserved spend needs an idempotency key", ErrInvalid)
		}
		if us[i].Cost < 0 || us[i].Tokens < 0 {
			return 0, fmt.Errorf("%w: unreserved spend has a negative amount", ErrInvalid)
		}
		subjects = append(subjects, us[i].Subjects...)
	}
	// Spend already happened: a new subject a template may not make a budget for now has no
	// budget to charge.
	bySubject, _, err := s.budgetsFor(ctx, subjects)
	if err != nil {
		return 0, err
	}
	var batch store.UnreservedBatch
	var windows windowSet
	seen := map[string]bool{}
	for i := range us {
		u := &us[i]
		if seen[string(u.IdempotencyKey)] {
			continue // the same entry twice in one batch
		}
		seen[string(u.IdempotencyKey)] = true
		r := ReserveRequest{Subjects: u.Subjects, Target: u.Target}
		applicable := applicableBudgets(&r, bySubject)
		row := store.UnreservedRow{
			ID: uuidV7(), IdempotencyKey: u.IdempotencyKey, KeyID: u.KeyID, Subjects: subjectStrings(u.Subjects),
			Provider: u.Provider, Flavor: u.Flavor, Model: u.Target.Model, Route: u.Route, RequestID: u.RequestID,
			Cost: u.Cost, Tokens: u.Tokens, Usage: u.Usage, CatalogVersion: u.CatalogVersion, At: u.At,
			FirstLine: len(batch.Lines), LineCount: len(applicable),
		}
		for _, b := range applicable {
			w := b.Window.At(u.At, b.ResetAt)
			batch.Lines = append(batch.Lines, store.HoldLine{Window: windows.add(b, w), Amount: b.amountOf(u.Cost, u.Tokens), Unit: b.holdUnit()})
		}
		batch.Rows = append(batch.Rows, row)
	}
	batch.Windows = windows.sorted(batch.Lines)
	recorded, err := s.hot.RecordUnreserved(ctx, batch)
	if err != nil {
		return 0, mapErr(err)
	}
	s.cfg.Metrics.settled(ctx, "unreserved", int64(len(recorded)))
	return len(recorded), nil
}
