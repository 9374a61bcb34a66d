package budget

import "github.com/purser-dev/purser/budget/store"

// The seam between budget's types and store's rows. budget's exported types are its own, so
// admin/ and cmd/ never see a store type; where the fields are the same, the conversion is a
// Go struct conversion, which stops compiling when either side gains or changes a field: the
// seam then has to be decided, not drifted across.

func convertAll[S, T any](xs []S, f func(S) T) []T {
	if xs == nil {
		return nil
	}
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func grantFromRow(r store.GrantRow) Grant { return Grant(r) }
func grantToRow(g Grant) store.GrantRow   { return store.GrantRow(g) }

func auditFromRow(r store.AuditRow) AuditEntry { return AuditEntry(r) }

func alertEventFromRow(r store.AlertEventRow) AlertEvent { return AlertEvent(r) }
func alertEventToRow(e AlertEvent) store.AlertEventRow   { return store.AlertEventRow(e) }

func alertDeliveryFromRow(r store.AlertDeliveryRow) AlertDelivery { return AlertDelivery(r) }

func alertRecordFromRow(r store.AlertEventWithDeliveries) AlertRecord {
	return AlertRecord{
		AlertEvent: alertEventFromRow(r.AlertEventRow),
		Deliveries: convertAll(r.Deliveries, func(d store.AlertDeliveryState) AlertDeliveryState { return AlertDeliveryState(d) }),
	}
}

func reservationFromRow(r store.ReservationRow) Reservation { return Reservation(r) }

func requestFromRow(r store.RequestRow) RequestRecord {
	return RequestRecord{Reservation: reservationFromRow(r.ReservationRow), InputTokens: r.InputTokens, OutputTokens: r.OutputTokens}
}

func spendFromRow(r store.SpendRow) SpendRow { return SpendRow(r) }

func mismatchFromRow(r store.Mismatch) Mismatch    { return Mismatch(r) }
func overLimitFromRow(r store.OverLimit) OverLimit { return OverLimit(r) }

func usageHealthFromRow(r store.UsageHealthRow) UsageHealth { return UsageHealth(r) }
