package extauthz

import (
	"testing"
	"time"
)

// feed records n Checks of the given sojourn, evenly spread over span from *now, with as
// many in flight at each completion as Little's law gives (rate × sojourn).
func feed(l *limiter, now *time.Time, n int, span, sojourn time.Duration) {
	step := span / time.Duration(n)
	inFlight := max(1, int64(sojourn/step))
	for range n {
		*now = now.Add(step)
		l.record(*now, sojourn, inFlight)
	}
}

// CheckTimeout 200 ms: a standing queue is a window whose fastest Check took over 50 ms; the
// cap then allows 100 ms of queue at the rate the window completed.
func TestLimiter_CapsAStandingQueueByLittlesLaw(t *testing.T) {
	l := newLimiter(200*time.Millisecond, 10_240)
	now := time.Unix(1_700_000_000, 0)
	feed(l, &now, 200, 100*time.Millisecond, 20*time.Millisecond) // 2,000/s, 20 ms each
	if c := l.cap.Load(); c != 0 {
		t.Fatalf("Checks well within the target: want no cap, got %d", c)
	}
	// 2,000 Checks/s, none faster than 60 ms: a queue stands. (Windows open at a record and
	// close at the first one 50 ms later: the first window here still holds fast Checks.)
	feed(l, &now, 200, 100*time.Millisecond, 60*time.Millisecond)
	c := l.cap.Load()
	// The window of slow Checks held 100 of them over 50 ms: 2,000/s × 100 ms = 200.
	if c < 190 || c > 210 {
		t.Fatalf("want a cap of about 2,000/s × 100 ms = 200, got %d", c)
	}
	if !l.admits(c, now) || l.admits(c+1, now) {
		t.Errorf("want the %dth Check in flight admitted and the next refused", c)
	}
	// While the queue stands, the cap never rises, even if the window's rate does.
	feed(l, &now, 400, 50*time.Millisecond, 60*time.Millisecond)
	if got := l.cap.Load(); got > c {
		t.Errorf("a queue stands at a cap of %d: want it not raised, got %d", c, got)
	}
}

// The minimum decides: a few slow Checks (a tenant whose budget row is locked waits out its
// deadline) among fast ones are no standing queue, and nobody is capped for them.
func TestLimiter_SlowFewDoNotCapTheRest(t *testing.T) {
	l := newLimiter(200*time.Millisecond, 10_240)
	now := time.Unix(1_700_000_000, 0)
	for range 20 {
		feed(l, &now, 10, 5*time.Millisecond, 150*time.Millisecond) // the locked tenant's
		feed(l, &now, 40, 20*time.Millisecond, 3*time.Millisecond)  // everyone else's
	}
	if c := l.cap.Load(); c != 0 {
		t.Fatalf("want no cap while most Checks are fast, got %d", c)
	}
}

// A uniformly slow ledger (every Check 80 ms, well within the deadline) with many Checks in
// flight sets a cap, but one above them (80 ms × rate < 100 ms × rate): nothing is refused
// that would have been answered in time.
func TestLimiter_SlowButUncrowdedIsNotShed(t *testing.T) {
	l := newLimiter(200*time.Millisecond, 10_240)
	now := time.Unix(1_700_000_000, 0)
	const rate = 1000                                                 // Checks/s
	feed(l, &now, rate/10, 100*time.Millisecond, 80*time.Millisecond) // in flight: 1,000/s × 80 ms = 80
	if !l.admits(80, now) {
		t.Fatalf("want 80 Checks in flight admitted (cap %d)", l.cap.Load())
	}
}

// A far-away ledger (every Check 80 ms) at a low rate keeps few Checks in flight: no queue
// stands, and no cap is set from its low rate, so the next burst goes to the ledger (whose
// batches serve it in time) instead of being shed.
func TestLimiter_FarLedgerAtLowRateSetsNoCap(t *testing.T) {
	l := newLimiter(200*time.Millisecond, 10_240)
	now := time.Unix(1_700_000_000, 0)
	feed(l, &now, 20, 200*time.Millisecond, 80*time.Millisecond) // 100/s: 8 in flight
	if c := l.cap.Load(); c != 0 {
		t.Fatalf("want no cap with 8 Checks in flight, got %d", c)
	}
	if !l.admits(500, now) {
		t.Fatal("want a burst of 500 admitted")
	}
}

// Once the queue is gone the cap grows by a quarter per window and is lifted past
// MaxInFlight; a trickle never caps below the floor.
func TestLimiter_RecoversAndHasAFloor(t *testing.T) {
	l := newLimiter(200*time.Millisecond, 1000)
	now := time.Unix(1_700_000_000, 0)
	for range 5 { // a trickle (about 80/s), all slow, behind a crowd of 100 stuck Checks
		now = now.Add(15 * time.Millisecond)
		l.record(now, 120*time.Millisecond, 100)
	}
	if c := l.cap.Load(); c != limiterFloor {
		t.Fatalf("want the floor (%d) for a slow trickle through a crowd, got %d", limiterFloor, c)
	}
	feed(l, &now, 11, 55*time.Millisecond, time.Millisecond) // one window without a queue
	if c := l.cap.Load(); c != limiterFloor+limiterFloor/4 {
		t.Fatalf("want the cap grown by a quarter (%d) after a window without a queue, got %d", limiterFloor+limiterFloor/4, c)
	}
	prev := l.cap.Load()
	for i := 0; l.cap.Load() != 0; i++ {
		if i > 40 {
			t.Fatalf("want the cap lifted within 40 windows without a queue; it is %d", l.cap.Load())
		}
		feed(l, &now, 11, 55*time.Millisecond, time.Millisecond)
		if c := l.cap.Load(); c != 0 && c < prev {
			t.Fatalf("want the cap never to shrink without a queue: %d after %d", c, prev)
		}
		prev = l.cap.Load()
	}
	if !l.admits(1<<40, now) {
		t.Error("want no cap once lifted")
	}
}

// While Checks keep arriving, or some are in flight, the cap stands; a Check that finds none
// in flight after limiterStale without arrivals lifts it: a burst after a quiet spell is not
// shed for a queue that stood before it. A window after a gap without completed Checks
// starts afresh (its rate is not diluted by the gap).
func TestLimiter_QuietSpellLiftsTheCap(t *testing.T) {
	l := newLimiter(200*time.Millisecond, 10_240)
	now := time.Unix(1_700_000_000, 0)
	feed(l, &now, 200, 100*time.Millisecond, 60*time.Millisecond)
	c := l.cap.Load()
	l.arrived.Store(now.UnixNano()) // the queue's last arrival
	for i := range 10 {             // arrivals every 30 ms find it standing: refused, and the cap stands
		if now = now.Add(30 * time.Millisecond); l.admits(c+1, now) {
			t.Fatalf("arrival %d: want the cap of %d standing while Checks keep arriving", i, c)
		}
	}
	now = now.Add(limiterStale + time.Millisecond)
	if l.admits(c+1, now) {
		t.Fatalf("after a quiet spell with %d still in flight, want the cap of %d standing", c, c)
	}
	now = now.Add(limiterStale + time.Millisecond)
	if !l.admits(1, now) || !l.admits(c+100, now) {
		t.Fatalf("want the cap of %d lifted by a Check that finds none in flight after a quiet %s", c, limiterStale)
	}
	// After a quiet second, 100 slow Checks in 50 ms: the new cap is that window's rate
	// (2,000/s × 100 ms), not one diluted by the quiet spell.
	now = now.Add(time.Second)
	feed(l, &now, 102, 51*time.Millisecond, 60*time.Millisecond)
	if got := l.cap.Load(); got < 190 || got > 210 {
		t.Fatalf("want the first window after the gap measured on its own (cap about 200), got %d", got)
	}
}
