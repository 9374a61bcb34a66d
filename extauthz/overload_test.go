package extauthz_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/extauthz"
)

// A saturating burst over a real gRPC socket: the ledger's only lane is stuck on a locked
// window row and its queue holds 8, so all but a batch and a queue of the burst must be shed
// while the lock is held (at once, not at their deadline), as 503 denials with Retry-After
// (never a gRPC error, which failure_mode_allow would let through), and refused before the
// ledger saw them. Once the lock is gone the others are admitted, and the database holds a
// reservation for each admitted Check and for nothing else.
func TestCheck_BurstIsShedAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const maxBatch, queue, n = 4, 8, 150
	h := serveBatcher(t, extauthz.Config{CheckTimeout: 30 * time.Second}, nil,
		budget.BatcherConfig{Lanes: 1, MaxBatch: maxBatch, QueueSize: queue})
	b := h.budget(t, budget.Definition{Name: "ml", Subject: "team:ml", Limit: 1_000_000_000, Window: "month", Hard: true})
	_, secret := h.key(t, "team:ml")
	first, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, 0))
	require.NoError(t, err)
	admitted := []string{meta(first, extauthz.MetaReservationID)}
	require.NotEmpty(t, admitted[0], "the first Check creates the window row: want a reservation")

	tx, err := h.schema.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM budget_windows WHERE budget_id = $1 FOR UPDATE`, b.ID)
	require.NoError(t, err)

	type answer struct {
		resp *authv3.CheckResponse
		err  error
	}
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := h.client.Check(ctx, withKey(fixture(t, "openai_chat"), secret, i))
			answers <- answer{resp, err}
		}()
	}
	// At most a batch and a full queue wait on the lock: every other answer must arrive
	// while it is held, and be a shed.
	shed := 0
	for range n - (maxBatch + queue) {
		a := <-answers
		require.NoError(t, a.err, "a shed is a denial, not a gRPC error (failure_mode_allow would admit it)")
		d := a.resp.GetDeniedResponse()
		require.NotNil(t, d, "with the ledger stuck, want only sheds, got %v", a.resp)
		require.Equal(t, int32(codes.Unavailable), a.resp.GetStatus().GetCode())
		require.EqualValues(t, 503, d.GetStatus().GetCode())
		hs := map[string]string{}
		for _, x := range d.GetHeaders() {
			hs[x.GetHeader().GetKey()] = x.GetHeader().GetValue()
		}
		require.Equal(t, "1", hs["retry-after"], "want Retry-After: 1, got %v", hs)
		require.Equal(t, extauthz.ReasonOverloaded, hs[extauthz.HeaderReason])
		require.Contains(t, d.GetBody(), `"code":"overloaded"`, "want an OpenAI-shaped error body")
		require.Empty(t, meta(a.resp, extauthz.MetaReservationID), "a shed holds nothing")
		shed++
	}
	require.NoError(t, tx.Rollback(ctx))
	wg.Wait()
	close(answers)
	for a := range answers {
		require.NoError(t, a.err)
		switch {
		case a.resp.GetOkResponse() != nil:
			admitted = append(admitted, meta(a.resp, extauthz.MetaReservationID))
		case a.resp.GetDeniedResponse().GetStatus().GetCode() == 503:
			shed++
		default:
			t.Fatalf("want admitted or shed, got %v", a.resp)
		}
	}
	require.Equal(t, n+1, shed+len(admitted), "every Check answered once")
	require.GreaterOrEqual(t, shed, n-(maxBatch+queue), "want all but a batch and a queue shed")

	// Reconcile against the database: a hold for each admitted Check, none for a shed one.
	held := h.schema.Strings(t, `SELECT id::text FROM reservations`)
	require.ElementsMatch(t, admitted, held, "holds in the database must be exactly the admitted Checks'")
	shedBy := h.counter(t, "purser.reservations.shed", "reason")
	require.Positive(t, shedBy["early"], "want sheds decided before the request was parsed, got %v", shedBy)
	var total int64
	for _, v := range shedBy {
		total += v
	}
	require.EqualValues(t, shed, total, "every shed answer counted once by the ledger, got %v", shedBy)
	require.Equal(t, int64(shed), h.counter(t, "purser.check.decisions", "decision,reason")["denied/overloaded"])
}

// shedAll is a ledger that refuses every request at admission, as an overloaded batcher does.
type shedAll struct{ admitAll }

func (shedAll) Admit(context.Context) error {
	return fmt.Errorf("%w: 8192 requests are waiting", budget.ErrOverloaded)
}

// A shed Check must cost far less than a served one: it is answered before the body is
// parsed, the key looked up and the cost bounded. Allocations are exact, unlike times on a
// shared machine: a shed must allocate under a third of what a served Check does.
// BenchmarkCheck/shed against BenchmarkCheck/openai_chat gives the CPU ratio.
func TestCheck_ShedIsCheap(t *testing.T) {
	cat := catalog(t)
	bud, err := budget.Definition{Name: "team", Subject: "team:ml", Limit: 1 << 40, Window: "month", Hard: true}.Build()
	require.NoError(t, err)
	key := &budget.Key{ID: "key_bench", Prefix: "pk_bench", Subjects: []budget.Subject{"team:ml"}}
	catf := func() *pricing.Catalog { return cat }
	served, err := extauthz.New(admitAll{&bud}, staticKeys{key}, catf, extauthz.Config{})
	require.NoError(t, err)
	shedding, err := extauthz.New(shedAll{admitAll{&bud}}, staticKeys{key}, catf, extauthz.Config{})
	require.NoError(t, err)
	ctx := context.Background()
	req := withKey(fixture(t, "openai_chat"), budget.SecretPrefix+"benchbenchbenchbench", 1)
	resp, err := shedding.Check(ctx, req)
	require.NoError(t, err)
	require.EqualValues(t, 503, resp.GetDeniedResponse().GetStatus().GetCode(), "want a shed, got %v", resp)
	servedAllocs := testing.AllocsPerRun(50, func() { _, _ = served.Check(ctx, req) })
	shedAllocs := testing.AllocsPerRun(50, func() { _, _ = shedding.Check(ctx, req) })
	require.Less(t, shedAllocs*3, servedAllocs, "shed Check: %.0f allocations, served: %.0f", shedAllocs, servedAllocs)
}

// slowLedger admits everything, two requests at a time, each taking at least work: a ledger
// (or a purser short of CPU) that serves about 100 requests a second whatever is offered.
type slowLedger struct {
	admitAll
	slots chan struct{}
	work  time.Duration
	done  chan struct{}
}

func (l slowLedger) Reserve(ctx context.Context, r budget.ReserveRequest) (budget.Decision, error) {
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		return budget.Decision{}, ctx.Err()
	}
	time.Sleep(l.work) // the work itself: a lower bound on each request's time, not a wait for an event
	<-l.slots
	l.done <- struct{}{}
	return l.admitAll.Reserve(ctx, r)
}

// Checks queued inside purser (more in flight than it answers within half its deadline) are
// a standing queue the ledger's batch-counting rule cannot see: the in-flight cap then
// refuses new Checks at once, as 503 denials, instead of letting them join a queue they
// would wait out. Once the queue has drained, Checks are served again.
func TestCheck_StandingQueueIsCapped(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	bud, err := budget.Definition{Name: "team", Subject: "team:ml", Limit: 1 << 40, Window: "month", Hard: true}.Build()
	require.NoError(t, err)
	key := &budget.Key{ID: "key_q", Prefix: "pk_q", Subjects: []budget.Subject{"team:ml"}}
	const wave = 300
	ledger := slowLedger{admitAll: admitAll{&bud}, slots: make(chan struct{}, 2), work: 20 * time.Millisecond, done: make(chan struct{}, wave+2)}
	// CheckTimeout 2 s: a standing queue is one whose fastest Check took over 500 ms; the cap
	// then allows a second of queue at the rate served (at most 100/s here).
	s, err := extauthz.New(ledger, staticKeys{key}, func() *pricing.Catalog { return cat }, extauthz.Config{CheckTimeout: 2 * time.Second})
	require.NoError(t, err)
	ctx := context.Background()
	check := func(i int) (*authv3.CheckResponse, error) {
		return s.Check(ctx, withKey(fixture(t, "openai_chat"), budget.SecretPrefix+"queuequeuequeuequeue", i))
	}
	type answer struct {
		resp *authv3.CheckResponse
		err  error
	}
	answers := make(chan answer, wave)
	for i := range wave {
		go func() {
			resp, err := check(i + 1)
			answers <- answer{resp, err}
		}()
	}
	// 80 answered: at most 100/s, so over 800 ms have passed and windows whose fastest Check
	// waited over 500 ms have closed; about 220 are still in flight, over any cap of 100/s × 1 s.
	for range 80 {
		<-ledger.done
	}
	probe, err := check(wave + 1)
	require.NoError(t, err)
	require.EqualValues(t, 503, probe.GetDeniedResponse().GetStatus().GetCode(), "with a standing queue, want a new Check shed, got %v", probe)
	require.Equal(t, int32(codes.Unavailable), probe.GetStatus().GetCode())
	served := 0
	for range wave {
		a := <-answers
		switch {
		case a.err != nil:
			require.Equal(t, codes.DeadlineExceeded, status.Code(a.err), "a Check of the wave that waited out its deadline: %v", a.err)
		case a.resp.GetOkResponse() != nil:
			served++
		default:
			t.Fatalf("the wave was admitted before any cap: want served or timed out, got %v", a.resp)
		}
	}
	require.GreaterOrEqual(t, served, 80)
	last, err := check(wave + 2)
	require.NoError(t, err)
	require.NotNil(t, last.GetOkResponse(), "the queue has drained: want the next Check served, got %v", last)
}
