package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// Target is a set of HTTP/2 connections to one Authorization server (one ClientConn each:
// grpc-go keeps one connection per ClientConn).
type Target struct {
	conns   []*grpc.ClientConn
	clients []authv3.AuthorizationClient
}

// Dial opens n connections to addr and waits until they are ready.
func Dial(ctx context.Context, addr string, n int) (*Target, error) {
	codec, err := clientCodec()
	if err != nil {
		return nil, err
	}
	t := &Target{}
	for range n {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), codec)
		if err != nil {
			t.Close()
			return nil, err
		}
		t.conns = append(t.conns, cc)
		t.clients = append(t.clients, authv3.NewAuthorizationClient(cc))
		cc.Connect()
		for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
			if !cc.WaitForStateChange(ctx, s) {
				t.Close()
				return nil, fmt.Errorf("connect to %s: %w", addr, ctx.Err())
			}
		}
	}
	return t, nil
}

// Close closes every connection.
func (t *Target) Close() {
	for _, c := range t.conns {
		_ = c.Close()
	}
}

// Client returns the client of connection i modulo the number of connections.
func (t *Target) Client(i int) authv3.AuthorizationClient { return t.clients[i%len(t.clients)] }

// Workload says what the callers send: fixtures, keys, and how a key is picked per call.
type Workload struct {
	Templates []*CheckTemplate
	Secrets   []string
	// PickKey returns an index into Secrets (nil: key i%len for caller i).
	PickKey func(r *mrand.Rand, caller int) int
	// CallTimeout is the client deadline of one Check (default 10s: long enough to measure
	// a slow strategy's real latency; Envoy's own default is 200ms).
	CallTimeout time.Duration

	creds  [][]string // [template][key] credential header values
	prefix string
	seq    atomic.Uint64
}

func (w *Workload) prepare() {
	if w.creds != nil {
		return
	}
	w.creds = make([][]string, len(w.Templates))
	for i, t := range w.Templates {
		w.creds[i] = make([]string, len(w.Secrets))
		for j, s := range w.Secrets {
			w.creds[i][j] = t.Credential(s)
		}
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	w.prefix = strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[:])), 10)
	if w.CallTimeout <= 0 {
		w.CallTimeout = 10 * time.Second
	}
}

// nextIDs returns a fresh x-request-id (a random UUID, as Envoy generates them) and stream
// id (a counter, unique within the run).
func (w *Workload) nextIDs(r *mrand.Rand) (string, string) {
	n := w.seq.Add(1)
	return randomUUID(r), w.prefix + strconv.FormatUint(n, 10)
}

// randomUUID formats 128 random bits as a version-4 UUID.
func randomUUID(r *mrand.Rand) string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], r.Uint64())
	binary.LittleEndian.PutUint64(b[8:], r.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:36], b[10:16])
	return string(out[:])
}

// Outcome of one Check.
type Outcome int

// Outcomes.
const (
	OK     Outcome = iota // CheckResponse with status OK
	Denied                // CheckResponse with a non-OK status (budget exhausted, bad key...)
	Failed                // gRPC error (deadline, unavailable)
)

func classify(resp *authv3.CheckResponse, err error) Outcome {
	switch {
	case err != nil:
		return Failed
	case resp.GetStatus().GetCode() == 0:
		return OK
	default:
		return Denied
	}
}

// Result is what a load run measured.
type Result struct {
	Calls, OK, Denied, Failed int
	// Elapsed is the measured span (warm-up excluded).
	Elapsed time.Duration
	// Lat holds the measured latencies, sorted.
	Lat []time.Duration
	// GenLag (open loop) is how late the generator fired each request, sorted.
	GenLag []time.Duration
	// Offered (open loop) is the scheduled rate.
	Offered  float64
	FirstErr error
}

// Throughput is completed calls per second over the measured span.
func (r *Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Calls) / r.Elapsed.Seconds()
}

// Pct returns the p-th percentile (0-100) of the latencies.
func (r *Result) Pct(p float64) time.Duration { return Percentile(r.Lat, p) }

// Over counts latencies above d.
func (r *Result) Over(d time.Duration) int {
	i, _ := slices.BinarySearch(r.Lat, d+1)
	return len(r.Lat) - i
}

// Percentile of sorted values (nearest rank).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

type sample struct {
	lat time.Duration
	out Outcome
	err error
}

// ClosedLoop runs callers that each send a Check, wait for the answer and send the next, for
// warmup+dur; only calls started after the warm-up and finished before the end count.
func ClosedLoop(ctx context.Context, t *Target, w *Workload, callers int, warmup, dur time.Duration) Result {
	w.prepare()
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+dur)
	per := make([][]sample, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(c)+1, uint64(start.UnixNano())))
			checks := make([]*Check, len(w.Templates))
			for i, tp := range w.Templates {
				checks[i] = tp.New()
			}
			client := t.Client(c)
			out := make([]sample, 0, 4096)
			for ctx.Err() == nil {
				ti := rng.IntN(len(checks))
				ki := c % len(w.Secrets)
				if w.PickKey != nil {
					ki = w.PickKey(rng, c)
				}
				ch := checks[ti]
				ch.SetCredential(w.creds[ti][ki])
				ch.SetIDs(w.nextIDs(rng))
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				cctx, cancel := context.WithTimeout(ctx, w.CallTimeout)
				resp, err := client.Check(cctx, ch.Req)
				cancel()
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) {
					continue
				}
				out = append(out, sample{lat: t1.Sub(t0), out: classify(resp, err), err: err})
			}
			per[c] = out
		}()
	}
	wg.Wait()
	return summarize(per, dur)
}

func summarize(per [][]sample, elapsed time.Duration) Result {
	var r Result
	r.Elapsed = elapsed
	for _, ss := range per {
		for _, s := range ss {
			r.Calls++
			r.Lat = append(r.Lat, s.lat)
			switch s.out {
			case OK:
				r.OK++
			case Denied:
				r.Denied++
			default:
				r.Failed++
				if r.FirstErr == nil {
					r.FirstErr = s.err
				}
			}
		}
	}
	slices.Sort(r.Lat)
	return r
}

// OpenLoop sends Checks on a fixed schedule (rate per second) for warmup+dur, whatever the
// server's pace: request i is due at start + i/rate and its latency is measured from that
// intended time, so queueing anywhere (server, connection, generator) shows in the numbers
// instead of silently lowering the offered load (no coordinated omission). Requests
// scheduled during the warm-up are sent but not counted.
func OpenLoop(ctx context.Context, t *Target, w *Workload, rate float64, warmup, dur time.Duration) Result {
	w.prepare()
	n := int(rate * (warmup + dur).Seconds())
	skip := int(rate * warmup.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	lat := make([]time.Duration, n)
	lag := make([]time.Duration, n)
	outs := make([]Outcome, n)
	var firstErr atomic.Pointer[error]
	free := make(chan []*Check, 4096)
	get := func() []*Check {
		select {
		case cs := <-free:
			return cs
		default:
			cs := make([]*Check, len(w.Templates))
			for i, tp := range w.Templates {
				cs[i] = tp.New()
			}
			return cs
		}
	}
	var seed atomic.Uint64
	rngs := sync.Pool{New: func() any { return mrand.New(mrand.NewPCG(seed.Add(1), uint64(time.Now().UnixNano()))) }}
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
			cs := get()
			ti := i % len(cs)
			ki := i % len(w.Secrets)
			rng := rngs.Get().(*mrand.Rand)
			if w.PickKey != nil {
				ki = w.PickKey(rng, i)
			}
			ch := cs[ti]
			ch.SetCredential(w.creds[ti][ki])
			ch.SetIDs(w.nextIDs(rng))
			rngs.Put(rng)
			cctx, cancel := context.WithTimeout(ctx, w.CallTimeout)
			resp, err := t.Client(i).Check(cctx, ch.Req)
			cancel()
			lat[i] = time.Since(due)
			lag[i] = fired.Sub(due)
			outs[i] = classify(resp, err)
			if err != nil {
				firstErr.CompareAndSwap(nil, &err)
			}
			select {
			case free <- cs:
			default:
			}
		}()
	}
	wg.Wait()
	r := Result{Elapsed: dur, Offered: rate}
	for i := skip; i < n; i++ {
		r.Calls++
		r.Lat = append(r.Lat, lat[i])
		r.GenLag = append(r.GenLag, lag[i])
		switch outs[i] {
		case OK:
			r.OK++
		case Denied:
			r.Denied++
		default:
			r.Failed++
		}
	}
	if p := firstErr.Load(); p != nil {
		r.FirstErr = *p
	}
	slices.Sort(r.Lat)
	slices.Sort(r.GenLag)
	return r
}

// BurstResult is what a burst of concurrent Checks got back.
type BurstResult struct {
	OK, Denied, Failed int
	// Reservations are the reservation ids of the admitted Checks (from dynamic metadata).
	Reservations []string
	// PerTarget counts admissions by target index.
	PerTarget []int
	Lat       []time.Duration
	Elapsed   time.Duration
	FirstErr  error
}

// Burst sends n Checks of one fixture at once (all goroutines released together), spread
// round-robin over the targets and their connections, key i%len(creds) for request i.
func Burst(ctx context.Context, targets []*Target, tmpl *CheckTemplate, secrets []string, n int, timeout time.Duration) BurstResult {
	prefix := make([]byte, 6)
	_, _ = rand.Read(prefix)
	pfx := "burst-" + hex.EncodeToString(prefix) + "-"
	type res struct {
		out Outcome
		id  string
		tgt int
		lat time.Duration
		err error
	}
	results := make([]res, n)
	gate := make(chan struct{})
	var ready, wg sync.WaitGroup
	for i := range n {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch := tmpl.New()
			ch.SetCredential(tmpl.Credential(secrets[i%len(secrets)]))
			ch.SetIDs(pfx+strconv.Itoa(i), strconv.Itoa(1_000_000_000+i))
			ti := i % len(targets)
			client := targets[ti].Client(i / len(targets))
			ready.Done()
			<-gate
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			t0 := time.Now()
			resp, err := client.Check(cctx, ch.Req)
			r := res{out: classify(resp, err), tgt: ti, lat: time.Since(t0), err: err}
			if r.out == OK {
				r.id = resp.GetDynamicMetadata().GetFields()["reservation_id"].GetStringValue()
			}
			results[i] = r
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(gate)
	wg.Wait()
	br := BurstResult{Elapsed: time.Since(t0), PerTarget: make([]int, len(targets))}
	for _, r := range results {
		br.Lat = append(br.Lat, r.lat)
		switch r.out {
		case OK:
			br.OK++
			br.PerTarget[r.tgt]++
			if r.id != "" {
				br.Reservations = append(br.Reservations, r.id)
			}
		case Denied:
			br.Denied++
		default:
			br.Failed++
			if br.FirstErr == nil {
				br.FirstErr = r.err
			}
		}
	}
	slices.Sort(br.Lat)
	return br
}

// CheckOnce sends one Check of tmpl with secret and fresh ids.
func CheckOnce(ctx context.Context, t *Target, tmpl *CheckTemplate, secret string) (*authv3.CheckResponse, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	ch := tmpl.New()
	ch.SetCredential(tmpl.Credential(secret))
	ch.SetIDs("probe-"+hex.EncodeToString(b[:]), strconv.FormatUint(binary.BigEndian.Uint64(b[:])>>1, 10))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return t.Client(0).Check(cctx, ch.Req)
}
