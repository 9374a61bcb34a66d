package extauthz

import (
	"sync"
	"sync/atomic"
	"time"
)

// limiter caps the billable Checks in flight once they queue inside purser itself, where the
// ledger's own admission rule (the Batcher's expected wait, counted in batches) cannot see
// them: when purser's CPU is the bottleneck, Checks wait for a core in parsing, key lookup
// and answering, not for a batch, and the batcher keeps admitting requests that then miss
// their deadline together (measured: at twice the capacity, 95% failed while purser answered
// every Check at full cost and shed almost none).
//
// It watches the sojourn of billable Checks (from admission to answer) in windows of
// limiterWindow. A window whose fastest Check took longer than a quarter of CheckTimeout,
// with more than limiterFloor Checks in flight at some completion, has a standing queue
// (CoDel's test: the minimum is immune to a few slow Checks, such as those of a tenant whose
// budget row is locked, which must not get other tenants shed; and a ledger that is merely
// far away, every Check slow but few in flight, has no queue to cap: a cap computed from its
// low rate would shed the next burst, which its batches would have served in time). The cap is
// then set, by Little's law, to the Checks the window completed per second times the delay
// allowed, half of CheckTimeout: the Checks that can be answered within it. While every
// Check takes longer than the quarter but the Checks in flight stay below that cap (a
// uniformly slow database, say), the cap does not bind: nothing is shed that would have
// been answered in time. While the queue stands the cap never rises.
//
// A window without a standing queue raises the cap by a quarter, and a cap beyond
// MaxInFlight is lifted. A Check that finds none in flight after limiterStale without
// arrivals lifts it too: a burst after a quiet spell is not shed for a queue that stood
// before it. Nothing else does: while Checks keep arriving, those in flight may drop to none
// for a moment (under a CPU shortage they wait below the handler, unseen), and while some are
// in flight a queue may stand however long ago the last one arrived. A window that follows
// limiterStale without a completed Check starts afresh, so the gap does not dilute its rate.
//
// So while purser keeps up nothing changes, and when it cannot the excess is refused at
// once, before its body is parsed, for about a microsecond of CPU, instead of being served
// late.
type limiter struct {
	target  time.Duration // a window's fastest Check above this: a standing queue
	delay   time.Duration // the queue delay the cap allows
	ceiling int64         // MaxInFlight: a cap above it is lifted
	cap     atomic.Int64  // 0: no cap
	arrived atomic.Int64  // when the last billable Check arrived (unix nanoseconds)

	mu      sync.Mutex
	start   time.Time     // of the current window
	last    time.Time     // the last Check recorded
	fastest time.Duration // the window's fastest sojourn (0: none yet)
	crowd   int64         // the most billable Checks in flight at one of the window's completions
	done    int           // Checks the window completed
}

const (
	limiterWindow = 50 * time.Millisecond
	// limiterFloor is the least cap set: the queue keeps moving and the rate stays measured.
	limiterFloor = 32
	// limiterStale: after this long without an arrival the cap is lifted, and after this long
	// without a completed Check a window starts afresh.
	limiterStale = 4 * limiterWindow
)

func newLimiter(checkTimeout time.Duration, ceiling int) *limiter {
	return &limiter{target: checkTimeout / 4, delay: checkTimeout / 2, ceiling: int64(ceiling)}
}

// admits reports whether a Check arriving at now that makes n in flight may proceed.
func (l *limiter) admits(n int64, now time.Time) bool {
	at := now.UnixNano()
	prev := l.arrived.Swap(at)
	c := l.cap.Load()
	if n == 1 && c != 0 && at-prev > int64(limiterStale) {
		l.cap.Store(0) // the first Check after a quiet spell, alone: the queue it was set for is gone
		return true
	}
	return c == 0 || n <= c
}

// record records a billable Check that was admitted and answered after sojourn, with
// inFlight billable Checks (its own included) in flight when it was answered.
func (l *limiter) record(now time.Time, sojourn time.Duration, inFlight int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.start.IsZero() || now.Sub(l.last) > limiterStale {
		l.start, l.done, l.fastest, l.crowd = now, 0, 0, 0 // first Check, or after a gap: a fresh window
	}
	l.crowd = max(l.crowd, inFlight)
	l.last = now
	if l.done == 0 || sojourn < l.fastest {
		l.fastest = sojourn
	}
	l.done++
	elapsed := now.Sub(l.start)
	if elapsed < limiterWindow {
		return
	}
	c := l.cap.Load()
	if l.fastest > l.target && l.crowd > limiterFloor {
		rate := float64(l.done) / elapsed.Seconds()
		next := max(limiterFloor, int64(rate*l.delay.Seconds()))
		if c == 0 || next < c {
			c = next // a queue stands at the cap in force: it never rises
		}
	} else if c != 0 {
		if c += max(1, c/4); c > l.ceiling {
			c = 0
		}
	}
	l.cap.Store(c)
	l.start, l.done, l.fastest, l.crowd = now, 0, 0, 0
}
