package bench

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Detail is what an open-loop run got back, split the way overload is judged: successes
// (and their latencies), sheds (a 503 denial: Unavailable status in a CheckResponse), other
// denials and failures (gRPC errors, deadlines).
type Detail struct {
	Offered                 float64
	Elapsed                 time.Duration
	Calls, OK, Shed, Denied int
	Failed                  int
	OKLat, ShedLat, GenLag  []time.Duration // sorted
	FirstErr                error
	// GenCPU is the CPU the generator's process used over the run (OpenLoopWire).
	GenCPU time.Duration
	// Errors counts the failures by gRPC code.
	Errors map[codes.Code]int
}

// Goodput is successful Checks per second over the run.
func (d *Detail) Goodput() float64 {
	if d.Elapsed <= 0 {
		return 0
	}
	return float64(d.OK) / d.Elapsed.Seconds()
}

// OpenLoopDetail is OpenLoop without a warm-up, sorting outcomes for overload: request i is
// due at start + i/rate whatever the server's pace, and its latency runs from that time.
func OpenLoopDetail(ctx context.Context, t *Target, w *Workload, rate float64, dur time.Duration) Detail {
	w.prepare()
	n := int(rate * dur.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	type out struct {
		lat, lag time.Duration
		resp     *authv3.CheckResponse
		err      error
	}
	outs := make([]out, n)
	var wg sync.WaitGroup
	start := time.Now().Add(10 * time.Millisecond)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fired := time.Now()
			ti := i % len(w.Templates)
			ch := w.Templates[ti].New()
			ch.SetCredential(w.creds[ti][i%len(w.Secrets)])
			ch.SetIDs(w.nextIDs(rngFor(i)))
			cctx, cancel := context.WithTimeout(ctx, w.CallTimeout)
			resp, err := t.Client(i).Check(cctx, ch.Req)
			cancel()
			outs[i] = out{lat: time.Since(due), lag: fired.Sub(due), resp: resp, err: err}
		}()
	}
	wg.Wait()
	d := Detail{Offered: rate, Elapsed: dur}
	for _, o := range outs {
		if o.resp == nil && o.err == nil {
			continue // never sent (ctx ended)
		}
		c := o.resp.GetStatus().GetCode()
		if o.err != nil {
			c = -1 - int32(status.Code(o.err))
			if d.FirstErr == nil {
				d.FirstErr = o.err
			}
		}
		d.add(o.lat, o.lag, c)
	}
	d.sort()
	return d
}

// add counts one sent Check: its latency, its generator lag and its outcome, the answer's
// status code, or -1 - the gRPC code of a call that failed.
func (d *Detail) add(lat, lag time.Duration, c int32) {
	d.Calls++
	d.GenLag = append(d.GenLag, lag)
	switch {
	case c < 0:
		d.Failed++
		if d.Errors == nil {
			d.Errors = map[codes.Code]int{}
		}
		d.Errors[codes.Code(-1-c)]++
	case c == int32(code.Code_OK):
		d.OK++
		d.OKLat = append(d.OKLat, lat)
	case c == int32(code.Code_UNAVAILABLE):
		d.Shed++
		d.ShedLat = append(d.ShedLat, lat)
	default:
		d.Denied++
	}
}

// sort orders the latencies for percentiles.
func (d *Detail) sort() {
	slices.Sort(d.OKLat)
	slices.Sort(d.ShedLat)
	slices.Sort(d.GenLag)
}

func rngFor(i int) *mrand.Rand {
	return mrand.New(mrand.NewPCG(uint64(i)+1, uint64(time.Now().UnixNano())))
}

// RSS returns a process's resident set size (Linux /proc; 0 when unknown).
func RSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
