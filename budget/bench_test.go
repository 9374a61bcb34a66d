package budget_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// BenchmarkReserveBatch measures one purser_reserve round trip per batch size, on one hot
// budget (each request also has its own key budget). ns/op is per reservation.
func BenchmarkReserveBatch(b *testing.B) {
	for _, size := range []int{1, 16, 128, 512} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			s := pgtest.New(b)
			st := store.New(s.Pool)
			svc := budget.New(st, st, budget.Config{})
			ctx := context.Background()
			if _, err := svc.CreateBudget(ctx, "b", budget.Definition{Name: "team", Subject: "team:ml", Limit: budget.MaxLimit, Window: "month", Hard: true}); err != nil {
				b.Fatal(err)
			}
			batch := make([]budget.ReserveRequest, size)
			for i := range batch {
				batch[i] = budget.ReserveRequest{Subjects: []budget.Subject{"team:ml", budget.Subject("user:u" + strconv.Itoa(i%50))}, Cost: 100, Tokens: 10,
					RequestID: "req", IdempotencyKey: nil, Target: budget.Target{Model: "gpt-4o-mini"}}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i += size {
				for j := range batch {
					batch[j].IdempotencyKey = []byte(strconv.Itoa(i) + "/" + strconv.Itoa(j))
				}
				if _, err := svc.Reserve(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSettleBatch measures one purser_settle round trip per batch; ns/op per settlement.
func BenchmarkSettleBatch(b *testing.B) {
	for _, size := range []int{16, 512} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			s := pgtest.New(b)
			st := store.New(s.Pool)
			svc := budget.New(st, st, budget.Config{})
			ctx := context.Background()
			if _, err := svc.CreateBudget(ctx, "b", budget.Definition{Name: "team", Subject: "team:ml", Limit: budget.MaxLimit, Window: "month", Hard: true}); err != nil {
				b.Fatal(err)
			}
			reqs := make([]budget.ReserveRequest, size)
			for i := range reqs {
				reqs[i] = budget.ReserveRequest{Subjects: []budget.Subject{"team:ml"}, Cost: 100, Tokens: 10}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i += size {
				b.StopTimer()
				ds, err := svc.Reserve(ctx, reqs)
				if err != nil {
					b.Fatal(err)
				}
				settle := make([]budget.Settlement, len(ds))
				for j, d := range ds {
					settle[j] = budget.Settlement{ReservationID: d.ReservationID, Cost: 50, Tokens: 5, Usage: []byte(`{"input_tokens":1}`), Cause: "usage"}
				}
				b.StartTimer()
				if _, err := svc.Settle(ctx, settle); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
