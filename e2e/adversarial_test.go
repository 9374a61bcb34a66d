package e2e_test

// The adversarial suite: each attempt of issue 13 against the real `purser serve` binary and
// Postgres, through envoysim (Envoy's behaviour from envoy/envoy.yaml) or straight at purser's
// gRPC port as an attacker would. Each asserts what must hold whatever the attacker does: no
// hard budget overspent, no request free, entries without purser's proof refused and counted,
// and `purser verify` clean.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/proof"
)

func TestAdversarial(t *testing.T) {
	bin := buildPurser(t)
	attempts := []struct {
		name string
		run  func(*testing.T, string)
	}{
		{"ForgedAndReplayedEntries", attemptForgedEntries},
		{"RequestIDReuse", attemptRequestIDReuse},
		{"UnauthenticatedCallers", attemptUnauthenticated},
		{"IdleStreamFlood", attemptIdleStreams},
		{"EntryFlood", attemptEntryFlood},
		{"UnknownKeyFlood", attemptUnknownKeys},
		{"TenantHeaderFlood", attemptTenantFlood},
		{"BothCredentialsStripped", attemptTwoCredentials},
	}
	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			a.run(t, bin)
		})
	}
}

// attacker is a gRPC client of purser's port that is not Envoy.
type attacker struct {
	conn   *grpc.ClientConn
	secret string // "" sends none
}

func (st *stack) attacker(t *testing.T, secret string) *attacker {
	t.Helper()
	conn, err := grpc.NewClient(st.pursers[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &attacker{conn: conn, secret: secret}
}

func (a *attacker) ctx(ctx context.Context) context.Context {
	if a.secret == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "x-purser-secret", a.secret)
}

// sendEntries streams entries to purser's access-log service in messages of per.
func (a *attacker) sendEntries(ctx context.Context, entries []*alsdata.HTTPAccessLogEntry, per int) error {
	s, err := alsv3.NewAccessLogServiceClient(a.conn).StreamAccessLogs(a.ctx(ctx))
	if err != nil {
		return err
	}
	for i := 0; i < len(entries); i += per {
		msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries[i:min(i+per, len(entries))]}}}
		if i == 0 {
			msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "attacker"}, LogName: "purser"}
		}
		if err := s.Send(msg); err != nil {
			_, err2 := s.CloseAndRecv()
			return errors.Join(err, err2)
		}
	}
	_, err = s.CloseAndRecv()
	return err
}

// small keeps each attempt's purser to six database connections: the suite runs its
// attempts side by side on one Postgres.
func small(o stackOpts) stackOpts {
	o.purserArgs = append([]string{"-hot-pool-size", "2", "-pool-size", "4"}, o.purserArgs...)
	return o
}

// slackDeadlines: flood tests share two busy cores with the suite; Envoy's and purser's Check
// deadlines are made generous (5 s, 4 s) so that a failure is purser's, not the scheduler's.
func slackDeadlines(o stackOpts) stackOpts {
	o.purserArgs = append(o.purserArgs, "-check-timeout", "4s")
	o.configure = func(c *envoysim.Config) { c.ExtAuthz.Timeout = 5 * time.Second }
	return o
}

func (st *stack) metrics(t *testing.T) bench.Metrics {
	t.Helper()
	m, err := st.pursers[0].current().Metrics(context.Background())
	require.NoError(t, err)
	return m
}

// waitMetric polls purser's metric until it reaches at least want.
func (st *stack) waitMetric(t *testing.T, want float64, name string, labels ...string) float64 {
	t.Helper()
	var got float64
	eventually(t, 60*time.Second, fmt.Sprintf("%s%v >= %v", name, labels, want), func() (bool, string) {
		got = st.metrics(t).Sum(name, labels...)
		return got >= want, fmt.Sprint(got)
	})
	return got
}

// madeUpProof has a proof's shape and verifies nothing.
const madeUpProof = "1.1.9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

func setAuthz(e *alsdata.HTTPAccessLogEntry, kv ...string) *alsdata.HTTPAccessLogEntry {
	f := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["envoy.filters.http.ext_authz"].GetFields()
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(f, kv[i])
			continue
		}
		f[kv[i]] = structpb.NewStringValue(kv[i+1])
	}
	return e
}

func entryTemplate(t *testing.T, usage map[string]any) *bench.EntryTemplate {
	t.Helper()
	tmpl, err := bench.LoadEntry("openai_chat_usage")
	require.NoError(t, err)
	if usage != nil {
		tmpl, err = tmpl.WithUsage(usage)
		require.NoError(t, err)
	}
	return tmpl
}

// Anyone who reaches the access-log port — here even with the shared secret, as a leaked
// secret or a compromised proxy would have it — cannot settle a hold at $0, void another,
// charge user:alice an unverified spend, or replay a genuine entry to any effect: only
// purser's own proof moves money. Issue 13: "settled a $0.16 hold at $0, voided another,
// charged $0.75 to user:alice with an unverified entry".
func attemptForgedEntries(t *testing.T, bin string) {
	st := newStack(t, bin, small(stackOpts{}))
	ctx := context.Background()
	keyID, secret := st.key("victim", "team:victim")
	b := st.budget("victim daily", "key:"+keyID, 5_000_000, "day")
	alice := st.budget("alice daily", "user:alice", 1_000_000, "day")

	// Two genuine requests whose entries wait in Envoy's buffer.
	st.sim.BlockAccessLog(true)
	_, err := st.openai(secret, usage(400, 600)).Chat.Completions.New(ctx, chat(4000))
	require.NoError(t, err)
	reqA := st.lastRequestID()
	_, err = st.openai(secret, usage(400, 600)).Chat.Completions.New(ctx, chat(4000))
	require.NoError(t, err)
	reqB := st.lastRequestID()
	rA, rB := st.reservationsFor(reqA)[0], st.reservationsFor(reqB)[0]
	require.Equal(t, "pending", rA.State)

	now := time.Now()
	cheap := entryTemplate(t, map[string]any{"usage.prompt_tokens": 1, "usage.completion_tokens": 0, "model": "gpt-4o-mini"})
	big := entryTemplate(t, map[string]any{"usage.prompt_tokens": 100_000, "usage.completion_tokens": 100_000, "model": "gpt-4o"})
	var other proof.Keyring
	secretBytes := make([]byte, proof.KeySize)
	_, _ = rand.Read(secretBytes)
	require.NoError(t, other.Set([]proof.Key{{ID: "1", Secret: secretBytes, ActivatesAt: now.Add(-time.Hour), RetiresAt: now.Add(time.Hour), ExpiresAt: now.Add(time.Hour)}}))
	forged := []*alsdata.HTTPAccessLogEntry{
		cheap.Entry(rA.ID, reqA, now, true),                                        // settle A at $0.00000015, unsigned
		setAuthz(cheap.Entry(rA.ID, reqA, now, true), "purser_proof", madeUpProof), // the same with a made-up proof
		cheap.Signed(&other).Entry(rA.ID, reqA, now, true),                         // signed with a guessed key
		cheap.Entry(rB.ID, reqB, now, false),                                       // void B (nothing went upstream)
		setAuthz(big.Entry("", "req-alice", now, true), "purser_decision", "unverified", "subjects", "user:alice", "purser_proof", madeUpProof),
		setAuthz(big.Entry("", "req-alice2", now, true), "purser_decision", "unverified", "subjects", "user:alice"),
	}
	atk := st.attacker(t, st.secret)
	require.NoError(t, atk.sendEntries(ctx, forged, 10))
	refused := st.waitMetric(t, float64(len(forged)), "purser_accesslog_entries_total", `outcome="refused_`)
	require.Equal(t, float64(len(forged)), refused, "every forged entry is refused")
	m := st.metrics(t)
	require.Equal(t, float64(3), m.Sum("purser_accesslog_entries_total", `outcome="refused_missing"`), "three carried no proof")
	require.Equal(t, float64(3), m.Sum("purser_accesslog_entries_total", `outcome="refused_bad_mac"`), "three a proof purser never issued")
	require.Equal(t, "pending", st.reservationsFor(reqA)[0].State, "A is not settled at $0")
	require.Equal(t, "pending", st.reservationsFor(reqB)[0].State, "B is not voided")

	// The genuine entries arrive and settle the real cost.
	st.sim.BlockAccessLog(false)
	gA := st.assertSettledAtReportedPrice(reqA)
	gB := st.assertSettledAtReportedPrice(reqB)

	// Replays of the genuine entries, as they were and with a smaller usage (the proof covers
	// what purser decided, not the usage): A is settled once; re-pointed at B, the proof fails.
	var genuine *alsdata.HTTPAccessLogEntry
	for _, e := range st.sim.Entries() {
		if e.GetRequest().GetRequestId() == reqA {
			genuine = e
		}
	}
	require.NotNil(t, genuine)
	// The genuine entry with a smaller usage (the proof covers purser's decision, not the
	// provider's usage): A is already settled, so nothing changes.
	cheapened := proto.Clone(genuine).(*alsdata.HTTPAccessLogEntry)
	cheapened.CommonProperties.Metadata.FilterMetadata["purser.usage"], _ = structpb.NewStruct(map[string]any{"usage.prompt_tokens": 1, "usage.completion_tokens": 0})
	retargeted := setAuthz(proto.Clone(genuine).(*alsdata.HTTPAccessLogEntry), "reservation_id", rB.ID)
	dup0 := m.Sum("purser_accesslog_settlements_total", `outcome="duplicate"`)
	require.NoError(t, atk.sendEntries(ctx, []*alsdata.HTTPAccessLogEntry{genuine, genuine, cheapened, retargeted}, 4))
	st.waitMetric(t, dup0+3, "purser_accesslog_settlements_total", `outcome="duplicate"`)
	require.Equal(t, float64(4), st.metrics(t).Sum("purser_accesslog_entries_total", `outcome="refused_bad_mac"`), "the proof re-pointed at B")
	require.Equal(t, *gA.Actual, *st.reservationsFor(reqA)[0].Actual, "replays change nothing")
	require.Equal(t, *gB.Actual, *st.reservationsFor(reqB)[0].Actual)

	posted, pending := st.window(b)
	require.Equal(t, *gA.Actual+*gB.Actual, posted, "the real costs, nothing free, nothing forged")
	require.Zero(t, pending)
	posted, pending = st.window(alice)
	require.Zero(t, posted+pending, "nothing was charged to user:alice")
	require.Empty(t, st.reservations("unreserved"), "no forged unverified spend")
	st.verify()
}

// Issue 13: "a second request reusing a running request's x-request-id, reset before its Check
// answers: the access-log fallback join voided the first, running reservation; its real entry
// then counted as a duplicate: actual cost 0". Here the proxy keeps the client's x-request-id
// (preserve_external_request_id), the second request's Check answer is lost, and its entry
// carries no metadata: the fallback joins on the x-request-id and Envoy's start time, so it
// finds only the second request's own reservation, and never voids. (Envoy stamps the Check's
// attributes.request.time and the entry's common_properties.start_time from the same
// StreamInfo::startTime(): source/extensions/filters/common/ext_authz/check_request_utils.cc,
// source/extensions/access_loggers/grpc/grpc_access_log_utils.cc.)
func attemptRequestIDReuse(t *testing.T, bin string) {
	g := newGate()
	defer g.open()
	st := newStack(t, bin, small(stackOpts{wrapUpstream: g.wrap, configure: func(c *envoysim.Config) {
		c.HCM.PreserveExternalRequestId = true
	}}))
	st.sim.SetCheckFault(func(r *http.Request) envoysim.CheckFault {
		return envoysim.CheckFault{LoseAnswer: r.Header.Get("x-e2e-fault") == "lose"}
	})
	ctx := context.Background()
	keyID, secret := st.key("reuse")
	b := st.budget("key daily", "key:"+keyID, 1_000_000, "day")
	const shared = "0b5e7c1a-2f44-4a3e-9d8e-3c1b5a7f0001"

	aDone := make(chan error, 1)
	go func() {
		h := usage(40, 60)
		h["x-request-id"], h["x-e2e-gate"] = shared, "1"
		_, err := st.openai(secret, h).Chat.Completions.New(ctx, chat(1000))
		aDone <- err
	}()
	eventually(t, 20*time.Second, "A running upstream", func() (bool, string) {
		return g.waiting.Load() == 1, fmt.Sprint(g.waiting.Load())
	})
	first := st.reservationsFor(shared)
	require.Len(t, first, 1)

	// B reuses A's x-request-id; its Check answer never reaches Envoy: 503, an entry without
	// ext_authz metadata, nothing upstream.
	_, err := st.openai(secret, map[string]string{"x-request-id": shared, "x-e2e-fault": "lose"}).Chat.Completions.New(ctx, chat(1000))
	apiErr, ok := errors.AsType[*openai.Error](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, http.StatusServiceUnavailable, apiErr.StatusCode)
	var rB reservation
	eventually(t, 30*time.Second, "B's entry processed", func() (bool, string) {
		for _, r := range st.reservationsFor(shared) {
			if r.ID != first[0].ID && r.State != "pending" {
				rB = r
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", st.reservationsFor(shared))
	})
	require.Equal(t, "expired", rB.State, "B's own hold, charged provisionally: never a void")
	require.True(t, strings.HasPrefix(rB.Cause, "request_id_join:"), rB.Cause)
	rA := st.reservations("id = $1", first[0].ID)[0]
	require.Equal(t, "pending", rA.State, "A's running reservation is untouched")

	g.open()
	require.NoError(t, <-aDone)
	eventually(t, 30*time.Second, "A settled", func() (bool, string) {
		rA = st.reservations("id = $1", first[0].ID)[0]
		return rA.State == "settled", rA.State
	})
	rec := st.record(shared)
	require.Equal(t, "usage", rA.Cause)
	require.Equal(t, st.price(rec), *rA.Actual, "A pays its real cost, not zero")
	posted, pending := st.window(b)
	require.Equal(t, *rA.Actual+rB.Hold, posted)
	require.Zero(t, pending)
	require.Equal(t, 1, len(st.served()), "B never reached the provider")
	st.verify()
}

// Issue 13: "anyone who reaches the gRPC port (no shared secret required by default) … was
// admitted as a forged source.principal workload". With the shared secret on, calls without
// it reach neither Check nor StreamAccessLogs; a purser listening without authentication
// ignores identity claims; and purser refuses to listen beyond loopback unauthenticated.
func attemptUnauthenticated(t *testing.T, bin string) {
	st := newStack(t, bin, small(stackOpts{}))
	ctx := context.Background()
	keyID, secret := st.key("mine")
	st.budget("key daily", "key:"+keyID, 1_000_000, "day")
	const workload = "workload:spiffe://cluster.local/ns/app/sa/web"
	st.budget("web", workload, 1_000_000, "day")

	check, err := bench.LoadCheck("mtls_principal") // source.principal, no purser key
	require.NoError(t, err)
	req := check.New()
	req.SetIDs("forged-principal", "7001")

	none := st.attacker(t, "")
	_, err = authv3.NewAuthorizationClient(none.conn).Check(none.ctx(ctx), req.Req)
	require.Equal(t, codes.Unauthenticated, status.Code(err), "Check without the secret: %v", err)
	wrong := st.attacker(t, "not-the-secret-but-long-enough")
	_, err = authv3.NewAuthorizationClient(wrong.conn).Check(wrong.ctx(ctx), req.Req)
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	err = none.sendEntries(ctx, []*alsdata.HTTPAccessLogEntry{entryTemplate(t, nil).Entry("018f0000-0000-7000-8000-000000000001", "x", time.Now(), false)}, 1)
	require.Equal(t, codes.Unauthenticated, status.Code(err), "StreamAccessLogs without the secret: %v", err)

	// A second purser on the same ledger, on loopback without a secret (its default): the
	// forged principal identifies nobody there.
	open := startPurser(t, bin, st.db.ConnString, "-check-timeout", "2s", "-hot-pool-size", "1", "-pool-size", "2")
	conn, err := grpc.NewClient(open.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	req.SetIDs("forged-principal-2", "7002")
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, req.Req)
	require.NoError(t, err)
	require.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode())
	require.Contains(t, resp.GetDeniedResponse().GetBody(), "did not authenticate", "untrusted_identity")
	require.Empty(t, st.reservations("$1 = ANY (subjects)", workload), "nothing reserved for the forged workload")
	// Envoy with the secret is believed (the workload is real in a mesh).
	req.SetIDs("real-principal", "7003")
	resp, err = authv3.NewAuthorizationClient(conn).Check(metadata.AppendToOutgoingContext(ctx, "x-purser-secret", st.secret), req.Req)
	require.NoError(t, err)
	require.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode(), "the open purser has no secret: it authenticates nobody")
	resp, err = authv3.NewAuthorizationClient(st.attacker(t, st.secret).conn).Check(metadata.AppendToOutgoingContext(ctx, "x-purser-secret", st.secret), req.Req)
	require.NoError(t, err)
	require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "believed from the authenticated proxy")

	// Refusal to listen beyond loopback without authentication, and the explicit opt-out.
	free, err := bench.FreeAddr()
	require.NoError(t, err)
	_, port, _ := net.SplitHostPort(free)
	out, code := runServe(t, bin, st.db.ConnString, "-grpc-addr", "0.0.0.0:"+port)
	require.NotZero(t, code, "purser must not start: %s", out)
	require.Contains(t, out, "no caller has to authenticate")
	p, err := bench.StartPurser(ctx, bin, bench.PurserOptions{DatabaseURL: st.db.ConnString, GRPCAddr: "0.0.0.0:" + port,
		Args: []string{"-insecure-grpc", "-hot-pool-size", "1", "-pool-size", "2"}})
	require.NoError(t, err, "-insecure-grpc says so explicitly")
	require.Contains(t, p.Log(), "gRPC callers are not authenticated", "and it warns")
	require.NoError(t, p.Stop(30*time.Second))

	// Envoy, which sends the secret, is served as before.
	_, err = st.openai(secret, usage(10, 10)).Chat.Completions.New(ctx, chat(100))
	require.NoError(t, err)
	st.assertSettledAtReportedPrice(st.lastRequestID())
	st.verify()
}

// runServe runs `purser serve` expecting it to exit by itself; it returns its output and
// exit code.
func runServe(t *testing.T, bin, dsn string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "-database-url", dsn, "-http-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	require.NoError(t, err)
	return string(out), 0
}

// Issue 13: "20,000 idle access-log streams: 40k goroutines, 216 → 760 MB, idle streams never
// time out". Scaled to 3,000 attempted streams against a limit of 200: purser keeps at most
// the limit (one goroutine each), refuses the rest before they cost a goroutine, ends the idle
// ones, and keeps settling Envoy's entries.
func attemptIdleStreams(t *testing.T, bin string) {
	const limit, attempts = 200, 3000
	// Idle streams end after 4 s; at the limit, a new stream ends one quiet for 1 s (a quarter).
	st := newStack(t, bin, small(slackDeadlines(stackOpts{purserArgs: []string{"-als-max-streams", strconv.Itoa(limit), "-als-idle-timeout", "4s"}})))
	ctx := context.Background()
	keyID, secret := st.key("streams")
	b := st.budget("key daily", "key:"+keyID, 1_000_000, "day")
	_, err := st.openai(secret, usage(10, 10)).Chat.Completions.New(ctx, chat(100))
	require.NoError(t, err)
	first := st.assertSettledAtReportedPrice(st.lastRequestID())
	base := st.metrics(t)
	g0, rss0 := base.Sum("go_goroutines"), base.Sum("process_resident_memory_bytes")
	streamEvents := func(m bench.Metrics, events ...string) float64 {
		var n float64
		for _, e := range events {
			n += m.Sum("purser_accesslog_streams_total", `event="`+e+`"`) - base.Sum("purser_accesslog_streams_total", `event="`+e+`"`)
		}
		return n
	}

	// An authenticated attacker (a leaked secret) opens streams and sends nothing more.
	var conns []*attacker
	for range 4 {
		conns = append(conns, st.attacker(t, st.secret))
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := conns[i%len(conns)]
			s, err := alsv3.NewAccessLogServiceClient(a.conn).StreamAccessLogs(a.ctx(sctx))
			if err != nil {
				return
			}
			_ = s.Send(&alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "idle"}}})
		}()
	}
	wg.Wait()
	floodSent := time.Now()
	// Every attempt is answered: opened or refused. On a slow machine the flood takes long
	// enough for streams to go quiet (eviction) or idle out, which frees slots for later
	// attempts, so the count of refusals alone depends on the machine's speed; the sum below
	// does not.
	eventually(t, 60*time.Second, "every stream attempt answered", func() (bool, string) {
		n := streamEvents(st.metrics(t), "opened", "refused_limit")
		return n >= attempts, fmt.Sprint(n)
	})
	m := st.metrics(t)
	refused := streamEvents(m, "refused_limit")
	require.GreaterOrEqual(t, refused+streamEvents(m, "evicted", "idle_timeout"), float64(attempts-limit),
		"every attempt beyond the limit of %d was refused, or took the slot of a stream that had gone quiet or idled out", limit)
	g1, rss1 := m.Sum("go_goroutines"), m.Sum("process_resident_memory_bytes")
	t.Logf("idle stream flood: %d attempted, %.0f refused; goroutines %.0f -> %.0f; RSS %.1f -> %.1f MB",
		attempts, refused, g0, g1, rss0/1e6, rss1/1e6)
	require.LessOrEqual(t, g1-g0, float64(limit+60), "at most one goroutine per stream kept (limit %d)", limit)
	require.Less(t, rss1-rss0, 64e6, "bounded memory")

	// Envoy's entries still settle meanwhile: its streams are busy, and a new one of its
	// workers takes the place of a silent one (the flood's have been silent for a second: the
	// time the eviction rule is about, not a synchronisation).
	time.Sleep(time.Until(floodSent.Add(1100 * time.Millisecond)))
	_, err = st.openai(secret, usage(20, 20)).Chat.Completions.New(ctx, chat(100))
	require.NoError(t, err)
	second := st.assertSettledAtReportedPrice(st.lastRequestID())

	// Idle streams are ended: the goroutines go.
	st.waitMetric(t, limit-10, "purser_accesslog_streams_total", `event="idle_timeout"`)
	eventually(t, 30*time.Second, "goroutines back", func() (bool, string) {
		g := st.metrics(t).Sum("go_goroutines")
		return g < g0+40, fmt.Sprint(g)
	})
	posted, pending := st.window(b)
	require.Equal(t, *first.Actual+*second.Actual, posted)
	require.Zero(t, pending)
	st.verify()
}

// Issue 13: "400k forged entries dropped 46k genuine queue slots (genuine entries then expire
// and are charged in full)". Scaled to 30,000 forged and 10,000 unsigned entries sent while
// genuine traffic runs: forged entries are refused before the queue, unsigned ones keep to
// their share, and every genuine entry settles at its real price.
func attemptEntryFlood(t *testing.T, bin string) {
	st := newStack(t, bin, small(slackDeadlines(stackOpts{})))
	ctx := context.Background()
	keyID, secret := st.key("flooded")
	b := st.budget("key daily", "key:"+keyID, 5_000_000, "day")
	tmpl := entryTemplate(t, nil)
	now := time.Now()
	const forged, unsigned = 30_000, 10_000
	var flood []*alsdata.HTTPAccessLogEntry
	for i := range forged {
		flood = append(flood, setAuthz(tmpl.Entry(fmt.Sprintf("018f0000-0000-7000-8000-%012d", i), "f"+strconv.Itoa(i), now, false), "purser_proof", madeUpProof))
		if i < unsigned {
			flood = append(flood, setAuthz(tmpl.Entry("", "u"+strconv.Itoa(i), now, false), "purser_decision", "", "reservation_id", ""))
		}
	}
	atk := st.attacker(t, st.secret)
	floodDone := make(chan error, 2)
	half := len(flood) / 2
	for _, part := range [][]*alsdata.HTTPAccessLogEntry{flood[:half], flood[half:]} {
		go func() { floodDone <- atk.sendEntries(ctx, part, 500) }()
	}
	var ids []string
	for range 12 {
		_, err := st.openai(secret, usage(100, 50)).Chat.Completions.New(ctx, chat(200))
		require.NoError(t, err)
		ids = append(ids, st.lastRequestID())
	}
	require.NoError(t, <-floodDone)
	require.NoError(t, <-floodDone)
	var total int64
	for _, id := range ids {
		total += *st.assertSettledAtReportedPrice(id).Actual
	}
	m := st.metrics(t)
	require.Equal(t, float64(forged), m.Sum("purser_accesslog_entries_total", `outcome="refused_bad_mac"`), "forged entries refused before the queue")
	require.Zero(t, m.Sum("purser_accesslog_entries_total", `outcome="dropped"`), "no genuine entry lost its slot")
	t.Logf("entry flood: %d forged refused, unsigned: %.0f queued, %.0f over their share",
		forged, m.Sum("purser_accesslog_entries_total", `outcome="received"`)-float64(len(ids)),
		m.Sum("purser_accesslog_entries_total", `outcome="unsigned_dropped"`))
	posted, pending := st.window(b)
	require.Equal(t, total, posted, "every genuine request at its real price")
	require.Zero(t, pending)
	st.verify()
}

// Issue 13: "20,000 distinct unknown keys: one database lookup each; 1 in 200 legitimate Checks
// failed meanwhile; one INFO line per denial". Scaled to 3,000 distinct well-formed unknown
// keys and 200 malformed ones, straight at the Check port, while a legitimate client keeps
// calling through Envoy: the index of key hashes answers the unknown keys (database lookups
// bounded by the lookup rate), every legitimate request succeeds, denials are logged a sample
// at a time.
func attemptUnknownKeys(t *testing.T, bin string) {
	st := newStack(t, bin, small(slackDeadlines(stackOpts{purserArgs: []string{"-log-level", "info", "-key-lookup-rate", "20"}})))
	ctx := context.Background()
	keyID, secret := st.key("legit")
	b := st.budget("key daily", "key:"+keyID, 5_000_000, "day")
	check, err := bench.LoadCheck("openai_chat")
	require.NoError(t, err)
	atk := st.attacker(t, st.secret)
	az := authv3.NewAuthorizationClient(atk.conn)
	const unknown, malformed = 3000, 200
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for range 6 { // a flood, within what two shared cores can answer while Envoy's traffic runs
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > unknown+malformed {
					return
				}
				c := check.New()
				key := fmt.Sprintf("pk_unknown%010d", i)
				if i > unknown {
					key = "pk_bad key " + strings.Repeat("x", i%300)
				}
				c.SetCredential(check.Credential(key))
				c.SetIDs("flood-"+strconv.Itoa(i), strconv.Itoa(10_000+i))
				resp, err := az.Check(atk.ctx(ctx), c.Req)
				if err != nil || resp.GetStatus().GetCode() != int32(codes.Unauthenticated) {
					wrong.Add(1)
				}
			}
		}()
	}
	var legit int
	for time.Since(start) < 3*time.Second || next.Load() < unknown+malformed {
		_, err := st.openai(secret, usage(10, 10)).Chat.Completions.New(ctx, chat(100))
		require.NoError(t, err, "a legitimate request during the flood")
		legit++
	}
	wg.Wait()
	elapsed := time.Since(start)
	require.Zero(t, wrong.Load(), "every unknown key is an answer (401), never an error or an admission")
	m := st.metrics(t)
	lookups := m.Sum("purser_key_lookups_total", `source="unknown"`)
	byIndex := m.Sum("purser_key_lookups_total", `source="index"`)
	t.Logf("unknown-key flood: %d keys in %s, %.0f database lookups, %.0f answered by the index, %.0f malformed; %d legitimate requests all served",
		unknown, elapsed.Round(time.Millisecond), lookups, byIndex, m.Sum("purser_key_lookups_total", `source="malformed"`), legit)
	require.LessOrEqual(t, lookups, 41+20*elapsed.Seconds()+5, "database lookups bounded by -key-lookup-rate")
	require.GreaterOrEqual(t, byIndex, float64(unknown)-41-20*elapsed.Seconds()-5)
	require.Equal(t, float64(malformed), m.Sum("purser_key_lookups_total", `source="malformed"`), "malformed keys: no lookup at all")
	lines := strings.Count(st.pursers[0].current().Log(), `"reason":"invalid_api_key"`)
	require.LessOrEqual(t, float64(lines), 21+10*elapsed.Seconds()+5, "denials logged a sample at a time")
	require.Contains(t, st.pursers[0].current().Log(), `"denials_not_logged"`)
	eventually(t, 30*time.Second, "every legitimate request settled", func() (bool, string) {
		_, pending := st.window(b)
		return pending == 0, fmt.Sprint(pending)
	})
	posted, _ := st.window(b)
	require.Positive(t, posted)
	st.verify()
}

// Issue 13: "4,992 distinct x-tenant values (trusted header with a template): 4,992 budgets and
// window rows created, no cap". Scaled to 400 values against a cap of 40 and a rate of 20 new
// tenants a second (burst 200): the template makes at most 40 budgets; every other new tenant
// is refused, at the cap or by the rate (never admitted without the budget its template would
// give it).
func attemptTenantFlood(t *testing.T, bin string) {
	cfgPath := filepath.Join(t.TempDir(), "purser.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte("identity:\n  trusted_headers: [{header: x-tenant, subject: org}]\n"), 0o600))
	st := newStack(t, bin, small(stackOpts{purserArgs: []string{"-config", cfgPath, "-template-max-budgets", "40", "-template-rate", "20", "-check-timeout", "10s"}}))
	ctx := context.Background()
	_, err := st.svc.CreateTemplate(ctx, "e2e", budget.Definition{Name: "tenant daily", Kind: "org", Unit: "usd", Limit: 200_000, Window: "day", Hard: true})
	require.NoError(t, err)
	check, err := bench.LoadCheck("openai_chat") // its credential is a provider key: the tenant header identifies
	require.NoError(t, err)
	atk := st.attacker(t, st.secret) // the tenant header is believed only from an authenticated proxy
	az := authv3.NewAuthorizationClient(atk.conn)
	const tenants = 400
	var next atomic.Int64
	var admitted, capped, limited, other atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > tenants {
					return
				}
				c := check.New()
				c.SetIDs("tenant-"+strconv.Itoa(i), strconv.Itoa(20_000+i))
				c.Req.GetAttributes().GetRequest().GetHttp().Headers["x-tenant"] = "t" + strconv.Itoa(i)
				resp, err := az.Check(atk.ctx(ctx), c.Req)
				switch {
				case err != nil:
					other.Add(1)
				case resp.GetStatus().GetCode() == int32(codes.OK):
					admitted.Add(1)
				case resp.GetDeniedResponse().GetStatus().GetCode() == 403:
					capped.Add(1)
				case resp.GetDeniedResponse().GetStatus().GetCode() == 429:
					limited.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	var made, windows int
	require.NoError(t, st.db.Pool.QueryRow(ctx, `SELECT count(*) FROM budgets WHERE template_id IS NOT NULL`).Scan(&made))
	require.NoError(t, st.db.Pool.QueryRow(ctx, `SELECT count(*) FROM budget_windows`).Scan(&windows))
	t.Logf("tenant flood: %d tenants: %d admitted, %d refused at the cap, %d rate-limited; %d budgets, %d window rows",
		tenants, admitted.Load(), capped.Load(), limited.Load(), made, windows)
	require.Zero(t, other.Load())
	require.Equal(t, 40, made, "the template's cap")
	require.LessOrEqual(t, windows, 40)
	require.Equal(t, int64(40), admitted.Load(), "admitted only with their budget")
	require.Equal(t, int64(tenants-40), capped.Load()+limited.Load())
	require.Positive(t, capped.Load(), "refused at the cap (403)")
	require.Positive(t, limited.Load(), "refused by the rate (429)")
	// Every admitted request holds on its tenant's hard budget.
	var unbudgeted int
	require.NoError(t, st.db.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations r
		WHERE NOT EXISTS (SELECT 1 FROM reservation_holds h JOIN budgets b ON b.id = h.budget_id
		                  WHERE h.reservation_id = r.id AND b.template_id IS NOT NULL)`).Scan(&unbudgeted))
	require.Zero(t, unbudgeted, "no tenant admitted without its budget")
	st.verify()
}

// Issue 13: "key A in authorization, valid key B in x-api-key: only authorization stripped, B
// forwarded to the provider". Every header carrying a purser key is removed before the
// provider sees the request; Envoy's credential injector sets the provider key.
func attemptTwoCredentials(t *testing.T, bin string) {
	var mu sync.Mutex
	seen := map[string]http.Header{}
	record := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen[r.Header.Get("x-request-id")] = r.Header.Clone()
			mu.Unlock()
			next.ServeHTTP(w, r)
		})
	}
	st := newStack(t, bin, small(stackOpts{wrapUpstream: record}))
	ctx := context.Background()
	keyA, a := st.key("a")
	keyB, bSecret := st.key("b")
	budgetA := st.budget("a daily", "key:"+keyA, 1_000_000, "day")
	budgetB := st.budget("b daily", "key:"+keyB, 1_000_000, "day")

	// OpenAI: A in authorization (the SDK's), B in x-api-key and, with a scheme, in api-key.
	h := usage(10, 10)
	h["x-api-key"], h["api-key"] = bSecret, "Bearer "+bSecret
	_, err := st.openai(a, h).Chat.Completions.New(ctx, chat(100))
	require.NoError(t, err)
	idOpenAI := st.lastRequestID()
	// Anthropic: A in x-api-key (the SDK's), B in authorization — the first source purser
	// reads, so B identifies this one.
	h = usage(10, 10)
	h["authorization"] = "Bearer " + bSecret
	_, err = st.anthropic(a, h).Messages.New(ctx, messages(100))
	require.NoError(t, err)
	idAnthropic := st.lastRequestID()

	mu.Lock()
	defer mu.Unlock()
	for _, id := range []string{idOpenAI, idAnthropic} {
		h := seen[id]
		require.NotNil(t, h, "the provider saw %s", id)
		for name, vs := range h {
			for _, v := range vs {
				require.NotContains(t, v, budget.SecretPrefix, "header %s carries a purser key to the provider", name)
			}
		}
	}
	require.NotEmpty(t, seen[idOpenAI].Get("authorization"), "the provider key, injected by Envoy")
	require.NotEmpty(t, seen[idAnthropic].Get("x-api-key"), "the provider key, injected by Envoy")
	rO := st.assertSettledAtReportedPrice(idOpenAI)
	rA := st.assertSettledAtReportedPrice(idAnthropic)
	posted, pending := st.window(budgetA)
	require.Equal(t, *rO.Actual, posted, "the first credential source that holds a key identifies")
	require.Zero(t, pending)
	posted, pending = st.window(budgetB)
	require.Equal(t, *rA.Actual, posted)
	require.Zero(t, pending)
	st.verify()
}
