package e2e_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSIGTERMUnderAccessLogLoad: `purser serve` gets SIGTERM while callers keep requests
// flowing through Envoy (envoysim, two workers flushing access logs every 0.25 s). Every
// access-log entry of a reserved request that Envoy handed to a stream before the signal was
// received and settled at its reported usage before purser exited — none is left to expire
// and be charged in full — and `purser verify` reconciles.
func TestSIGTERMUnderAccessLogLoad(t *testing.T) {
	bin := buildPurser(t)
	st := newStack(t, bin, stackOpts{workers: 2})
	keyID, secret := st.key("drain", "team:drain")
	st.budget("key", "key:"+keyID, 1_000_000_000_000, "month")
	client := st.openai(secret, usage(40, 60))

	var (
		stop     atomic.Bool
		ok, errs atomic.Int64
		wg       sync.WaitGroup
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := client.Chat.Completions.New(context.Background(), chat(200)); err != nil {
					errs.Add(1) // after the signal: Envoy answers 403/503 itself
					continue
				}
				ok.Add(1)
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	eventually(t, 60*time.Second, "access-log traffic under way", func() (bool, string) {
		n := len(st.sim.Deliveries())
		return n >= 300, fmt.Sprintf("%d entries delivered", n)
	})

	before := st.sim.Deliveries() // handed to a stream before the signal
	start := time.Now()
	st.pursers[0].stop() // SIGTERM, and wait for the process to exit
	took := time.Since(start)
	stop.Store(true)
	wg.Wait()

	// Entries of requests Envoy let through on purser's reservation (not those whose Check
	// timed out under load: the x-request-id fallback charges those provisionally).
	reserved := map[string]bool{}
	for _, e := range st.sim.Entries() {
		md := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["envoy.filters.http.ext_authz"]
		if md.GetFields()["purser_decision"].GetStringValue() == "reserved" {
			reserved[e.GetRequest().GetRequestId()] = true
		}
	}
	states := map[string]int{}
	others := 0
	for _, d := range before {
		if !reserved[d.RequestID] {
			others++
			continue
		}
		rs := st.reservationsFor(d.RequestID)
		require.Len(t, rs, 1, "request %s has one reservation", d.RequestID)
		states[rs[0].State]++
		require.Equal(t, "settled", rs[0].State, "an entry Envoy sent before SIGTERM was settled before purser exited (request %s)", d.RequestID)
		require.Equal(t, "usage", rs[0].Cause, "settled from the reported usage (request %s)", d.RequestID)
	}
	all := map[string]int{}
	for _, r := range st.allReservations() {
		all[r.State]++
	}
	require.Greater(t, states["settled"], 100, "the signal came under access-log load")
	t.Logf("SIGTERM to exit %v; %d requests served, %d failed; entries delivered before SIGTERM %d (reserved: %v, others %d); all reservations %v; envoysim %+v",
		took, ok.Load(), errs.Load(), len(before), states, others, all, st.sim.ALSStats())
	st.verify()
}
