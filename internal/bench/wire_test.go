package bench

import (
	"context"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// recorder answers OK and keeps each Check's ids and credential.
type recorder struct {
	authv3.UnimplementedAuthorizationServer
	mu    sync.Mutex
	ids   map[string]bool
	creds map[string]bool
}

func (r *recorder) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	h := req.GetAttributes().GetRequest().GetHttp()
	r.mu.Lock()
	r.ids[h.GetHeaders()["x-request-id"]+"/"+h.GetId()] = true
	r.creds[h.GetHeaders()["authorization"]] = true
	r.mu.Unlock()
	return okResponse, nil
}

// Pre-encoded Checks arrive whole and distinct, and the open loop counts what came back.
func TestOpenLoopWire(t *testing.T) {
	ctx := context.Background()
	tmpl, err := LoadCheck("openai_chat")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{ids: map[string]bool{}, creds: map[string]bool{}}
	addr, stop, err := Serve(rec)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	target, err := Dial(ctx, addr, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	const n = 200
	reqs, err := Encode(&Workload{Templates: []*CheckTemplate{tmpl}, Secrets: []string{"pk_a", "pk_b"}}, n)
	if err != nil {
		t.Fatal(err)
	}
	d := OpenLoopWire(ctx, target, reqs, 2000, 10*time.Second)
	if d.Calls != n || d.OK != n || d.Failed != 0 {
		t.Fatalf("want %d Checks sent and answered OK, got %d sent, %d OK, %d failed (%v)", n, d.Calls, d.OK, d.Failed, d.FirstErr)
	}
	if len(rec.ids) != n {
		t.Errorf("want %d distinct (x-request-id, stream id) pairs at the server, got %d", n, len(rec.ids))
	}
	if !rec.creds["Bearer pk_a"] || !rec.creds["Bearer pk_b"] || len(rec.creds) != 2 {
		t.Errorf("want both keys sent in turn, got %v", rec.creds)
	}
	if len(d.OKLat) != n || len(d.GenLag) != n {
		t.Errorf("want a latency and a lag per Check, got %d and %d", len(d.OKLat), len(d.GenLag))
	}
}
