package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/purser-dev/purser/grpccodec"
)

// wireCheck is a CheckRequest already in wire form: the generator's codec sends its bytes
// as they are, so an overload run spends no CPU encoding while it measures.
type wireCheck struct{ b []byte }

// wireCodec is purser's codec that passes a wireCheck's bytes through.
type wireCodec struct{ encoding.CodecV2 }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(*wireCheck); ok {
		return mem.BufferSlice{mem.SliceBuffer(w.b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// Encode builds n distinct Checks of the workload in wire form (fresh ids each, templates
// and keys in turn), before a run, so that sending them costs the generator no encoding.
func Encode(w *Workload, n int) ([]*wireCheck, error) {
	w.prepare()
	codec, err := grpccodec.New()
	if err != nil {
		return nil, err
	}
	checks := make([]*Check, len(w.Templates))
	for i, t := range w.Templates {
		checks[i] = t.New()
	}
	rng := rngFor(n)
	out := make([]*wireCheck, n)
	for i := range out {
		ti := i % len(checks)
		ch := checks[ti]
		ch.SetCredential(w.creds[ti][i%len(w.Secrets)])
		ch.SetIDs(w.nextIDs(rng))
		bs, err := codec.Marshal(ch.Req)
		if err != nil {
			return nil, err
		}
		out[i] = &wireCheck{b: bs.Materialize()}
		bs.Free()
	}
	return out, nil
}

// SelfCPU is the CPU time this process (the load generator) has used so far.
func SelfCPU() time.Duration {
	d, _ := ProcCPU(os.Getpid())
	return d
}

// OpenLoopWire sends pre-encoded Checks on a fixed schedule, as cheaply as the generator
// can: one timer loop wakes every millisecond and starts every request due by then (one
// goroutine each, the least grpc-go's blocking calls allow), request i is due at
// start + i/rate, and its latency runs from that time, so any lag of the generator counts
// against the result (no coordinated omission) and is reported (GenLag: when it was sent
// less when it was due). GenCPU is the CPU the generator's process used over the run.
func OpenLoopWire(ctx context.Context, t *Target, reqs []*wireCheck, rate float64, timeout time.Duration) Detail {
	n := len(reqs)
	interval := float64(time.Second) / rate
	type out struct {
		lat, lag time.Duration
		code     int32 // < 0: gRPC error, -1 - its code
		sent     bool
	}
	outs := make([]out, n)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	cpu0 := SelfCPU()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	next := 0
	for next < n && ctx.Err() == nil {
		now := time.Since(start)
		for ; next < n && time.Duration(float64(next)*interval) <= now; next++ {
			due := start.Add(time.Duration(float64(next) * interval))
			wg.Add(1)
			go func(i int, due time.Time) {
				defer wg.Done()
				fired := time.Now()
				cctx, cancel := context.WithTimeout(ctx, timeout)
				resp := &authv3.CheckResponse{}
				err := t.conns[i%len(t.conns)].Invoke(cctx, authv3.Authorization_Check_FullMethodName, reqs[i], resp)
				cancel()
				o := out{lat: time.Since(due), lag: fired.Sub(due), sent: true, code: resp.GetStatus().GetCode()}
				if err != nil {
					o.code = -1 - int32(status.Code(err))
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
				}
				outs[i] = o
			}(next, due)
		}
		if next < n {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}
	elapsed := time.Duration(float64(n) * interval)
	wg.Wait()
	d := Detail{Offered: rate, Elapsed: elapsed, FirstErr: firstErr, GenCPU: SelfCPU() - cpu0}
	for _, o := range outs {
		if !o.sent {
			continue
		}
		d.add(o.lat, o.lag, o.code)
	}
	d.sort()
	return d
}

// Burn keeps cores (fractional) of CPU busy in this process until stop is called: ballast
// standing in for generator work, so a capacity can be measured while the generator's
// process takes as much CPU as it did during an overload run. Each of ⌈cores⌉ goroutines
// spins for its share of every millisecond and sleeps the rest.
func Burn(cores float64) (stop func()) {
	if cores <= 0 {
		return func() {}
	}
	k := int(cores + 0.999)
	share := time.Duration(float64(time.Millisecond) * cores / float64(k))
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				t0 := time.Now()
				for time.Since(t0) < share {
				}
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}

// Renice sets the scheduling priority (nice value) of every thread of this process (Linux
// priorities are per thread; threads started later inherit their creator's). A negative value
// needs CAP_SYS_NICE; the error says when it was not allowed.
func Renice(nice int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil {
			return fmt.Errorf("setpriority %d: %w", nice, err)
		}
	}
	return nil
}
