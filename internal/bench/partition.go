package bench

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Partitioned is a prototype of purser over several ledgers, each its own database holding
// the budgets of some subjects (docs/capacity.md). A request whose subjects live on one
// partition is one reservation there, as today. A request whose subjects span partitions
// holds on each of them and is admitted only if every partition admits it; when one denies
// (or fails), the holds already made elsewhere are voided: a two-phase reservation with a
// compensating void instead of a distributed transaction. The holds stay pending until the
// request's access-log entry settles each of them, as any reservation does.
//
// It is a measuring device, not purser: it runs the real ledger code (budget.Service and
// budget.Batcher on real databases) in this process, without gRPC.
type Partitioned struct {
	// Parts are the partitions' batchers (one per database, each with Run going).
	Parts []*budget.Batcher
	// Svcs are the partitions' services (for the compensating voids).
	Svcs []*budget.Service
	// Of names the partition of a subject.
	Of func(budget.Subject) int
	// Parallel reserves on every partition at once instead of one after the other (lower
	// latency; more compensations when a partition denies).
	Parallel bool
}

// PartitionResult is one Reserve across partitions.
type PartitionResult struct {
	Admitted bool
	// IDs are the reservation ids of an admitted request, by partition.
	IDs map[int]string
	// Voided counts holds released because another partition denied or failed.
	Voided int
}

// Reserve holds req on every partition its subjects live on (req.Subjects split by Of; each
// partition's reservation gets its own id and the same request id).
func (p *Partitioned) Reserve(ctx context.Context, req budget.ReserveRequest) (PartitionResult, error) {
	byPart := map[int][]budget.Subject{}
	var order []int
	for _, s := range req.Subjects {
		i := p.Of(s)
		if _, ok := byPart[i]; !ok {
			order = append(order, i)
		}
		byPart[i] = append(byPart[i], s)
	}
	res := PartitionResult{IDs: map[int]string{}}
	type one struct {
		part int
		d    budget.Decision
		err  error
	}
	reserveOn := func(part int) one {
		r := req
		r.ID = ""
		r.Subjects = byPart[part]
		d, err := p.Parts[part].Reserve(ctx, r)
		return one{part, d, err}
	}
	var outs []one
	if p.Parallel && len(order) > 1 {
		ch := make(chan one, len(order))
		for _, part := range order {
			go func() { ch <- reserveOn(part) }()
		}
		for range order {
			outs = append(outs, <-ch)
		}
	} else {
		for _, part := range order {
			o := reserveOn(part)
			outs = append(outs, o)
			if o.err != nil || o.d.Outcome != budget.Admitted {
				break // no need to ask the others: this request is denied
			}
		}
	}
	var firstErr error
	admitted := len(outs) == len(order)
	for _, o := range outs {
		switch {
		case o.err != nil:
			admitted = false
			firstErr = errors.Join(firstErr, fmt.Errorf("partition %d: %w", o.part, o.err))
		case o.d.Outcome != budget.Admitted:
			admitted = false
		default:
			res.IDs[o.part] = o.d.ReservationID
		}
	}
	if admitted {
		res.Admitted = true
		return res, nil
	}
	// Compensate: release what the other partitions held. A void that fails leaves the hold
	// to expire (charged: never free spend, but capacity stranded until the TTL).
	var verr error
	for part, id := range res.IDs {
		if _, err := p.Svcs[part].Void(context.WithoutCancel(ctx), []string{id}, "partition_denied"); err != nil {
			verr = errors.Join(verr, err)
			continue
		}
		res.Voided++
	}
	res.IDs = map[int]string{}
	return res, errors.Join(firstErr, verr)
}

// ClosedLoopFunc runs callers that each call f, wait and call again, for warmup+dur; only
// calls started after the warm-up and finished before the end count (ClosedLoop for any
// call, e.g. an in-process ledger).
func ClosedLoopFunc(ctx context.Context, callers int, warmup, dur time.Duration, f func(ctx context.Context, caller int, r *mrand.Rand) (Outcome, error)) Result {
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+dur)
	per := make([][]sample, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(c)+1, uint64(start.UnixNano())))
			out := make([]sample, 0, 1024)
			for ctx.Err() == nil {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				o, err := f(ctx, c, rng)
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) {
					continue
				}
				out = append(out, sample{lat: t1.Sub(t0), out: o, err: err})
			}
			per[c] = out
		}()
	}
	wg.Wait()
	return summarize(per, dur)
}
