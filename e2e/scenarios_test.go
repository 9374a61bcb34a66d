package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
)

// TestPurserBehindEnvoy runs purser's end-to-end scenarios: the real binary, envoysim
// playing envoy/envoy.yaml, the fake LLM upstream and the official SDKs. The binary is built
// once; scenarios run in parallel, each on its own schema and processes.
func TestPurserBehindEnvoy(t *testing.T) {
	bin := buildPurser(t)
	scenarios := []struct {
		name string
		run  func(*testing.T, string)
	}{
		{"RefundBelowHold", scenarioRefund},
		{"DenyAtLimit", scenarioDeny},
		{"StreamingSettle", scenarioStreaming},
		{"SDKDefaultsSettleAtRealPrice", scenarioSDKDefaults},
		{"ClientDisconnectMidStream", scenarioDisconnect},
		{"EnvoyCheckTimeout", scenarioCheckTimeout},
		{"AccessLogDownAndBack", scenarioALSDown},
		{"DuplicatedAccessLogBatches", scenarioDuplicates},
		{"PurserKilledUnderLoad", scenarioKill},
		{"TwoReplicasOneBudget", scenarioReplicas},
		{"RealEnvoy", scenarioRealEnvoy},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			sc.run(t, bin)
		})
	}
}

func chat(maxTokens int64) openai.ChatCompletionNewParams {
	p := openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
	}
	if maxTokens > 0 {
		p.MaxTokens = openai.Int(maxTokens)
	}
	return p
}

func messages(maxTokens int64) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: maxTokens,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello"))},
	}
}

func usage(in, out int) map[string]string {
	return map[string]string{fakellm.HeaderInputTokens: strconv.Itoa(in), fakellm.HeaderOutputTokens: strconv.Itoa(out)}
}

// 1. Allowed, settled below the hold: the difference is refunded.
func scenarioRefund(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{})
	ctx := context.Background()
	keyID, secret := st.key("refund", "team:refund")
	team := st.budget("team daily", "team:refund", 1_000_000, "day")
	key := st.budget("key daily", "key:"+keyID, 500_000, "day")

	var httpRes *http.Response
	resp, err := st.openai(secret, usage(40, 60)).Chat.Completions.New(ctx, chat(500), option.WithResponseInto(&httpRes))
	require.NoError(t, err, "the call succeeds")
	require.EqualValues(t, 40, resp.Usage.PromptTokens, "resp.Usage.PromptTokens is 40")
	require.NotEmpty(t, httpRes.Header.Get("x-budget-remaining"), "ext_authz response_headers_to_add reach the client")
	r1 := st.assertSettledAtReportedPrice(st.lastRequestID())
	require.EqualValues(t, 42, *r1.Actual, "by hand: 40 x $0.15/M + 60 x $0.60/M = 6 + 36 micro-USD")
	require.Greater(t, r1.Hold, *r1.Actual, "the hold is the worst case (500 output tokens)")

	// A prompt above with_request_body.max_request_bytes (1 MiB): purser sees the first MiB with
	// x-envoy-auth-partial-body: true and bounds the rest from content-length (here: up to the
	// model's context window).
	prompt := strings.Repeat("lorem ", 200_000)
	raw := `{"model":"gpt-4o-mini","max_tokens":500,"messages":[{"role":"user","content":"` + prompt + `"}]}`
	req, err := http.NewRequest(http.MethodPost, st.baseURL+"/v1/chat/completions", strings.NewReader(raw))
	require.NoError(t, err, "the call succeeds")
	req.Header.Set("authorization", "Bearer "+secret)
	req.Header.Set("content-type", "application/json")
	for k, v := range usage(40, 60) {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err, "the call succeeds")
	drain(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "res.StatusCode is http.StatusOK")
	rBig := st.assertSettledAtReportedPrice(st.lastRequestID())
	require.GreaterOrEqual(t, rBig.Hold, int64(128_000*15/100), "the unseen part is bounded by the context window, not ignored")
	// The same prompt through openai-go: the SDK writes "messages" before "model", so the
	// model lies beyond the first MiB and purser refuses with a clear 413 (its documented
	// policy for a truncated body without a model); nothing is forwarded or held.
	served := len(st.served())
	big := chat(500)
	big.Messages = []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)}
	_, err = st.openai(secret, nil).Chat.Completions.New(ctx, big)
	apiErr, ok := errors.AsType[*openai.Error](err)
	require.True(t, ok, "%T %v", err, err)
	require.Equal(t, http.StatusRequestEntityTooLarge, apiErr.StatusCode, "apiErr.StatusCode is http.StatusRequestEntityTooLarge")
	require.Equal(t, "body_truncated", apiErr.Code, "apiErr.Code is \"body_truncated\"")
	require.Equal(t, served, len(st.served()), "len(st.served()) is served")

	msg, err := st.anthropic(secret, usage(30, 20)).Messages.New(ctx, messages(1024))
	require.NoError(t, err, "the call succeeds")
	require.EqualValues(t, 20, msg.Usage.OutputTokens, "msg.Usage.OutputTokens is 20")
	r2 := st.assertSettledAtReportedPrice(st.lastRequestID())
	require.EqualValues(t, 390, *r2.Actual, "by hand: 30 x $3/M + 20 x $15/M = 90 + 300 micro-USD")
	require.Greater(t, r2.Hold, *r2.Actual, "r2.Hold > *r2.Actual")

	for _, b := range []int64{team, key} {
		posted, pending := st.window(b)
		require.EqualValues(t, 42+42+390, posted, "posted = the real costs, the rest of the holds released")
		require.Zero(t, pending, "pending is zero")
	}
	st.verify()
}

// gate holds upstream requests that carry x-e2e-gate until released (or their client goes).
type gate struct {
	once    sync.Once
	release chan struct{}
	waiting atomic.Int64
}

func newGate() *gate { return &gate{release: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-e2e-gate") != "" {
			g.waiting.Add(1)
			select {
			case <-g.release:
			case <-r.Context().Done():
			}
		}
		next.ServeHTTP(w, r)
	})
}

// 2. Denied at the limit: pending holds count; the SDKs raise their own 429 errors.
func scenarioDeny(t *testing.T, bin string) {
	g := newGate()
	defer g.open()
	st := newStack(t, bin, stackOpts{wrapUpstream: g.wrap})
	ctx := context.Background()
	keyID, secret := st.key("deny")
	// $0.001. One gpt-4o-mini call capped at 1000 output tokens holds 600 micros plus its
	// (tiny) input estimate: one fits, two do not.
	b := st.budget("key tiny", "key:"+keyID, 1000, "day")

	// A is admitted and held upstream, its hold pending.
	aDone := make(chan error, 1)
	go func() {
		_, err := st.openai(secret, map[string]string{"x-e2e-gate": "1", fakellm.HeaderInputTokens: "20", fakellm.HeaderOutputTokens: "30"}).
			Chat.Completions.New(ctx, chat(1000))
		aDone <- err
	}()
	eventually(t, 20*time.Second, "A's hold pending", func() (bool, string) {
		_, pending := st.window(b)
		return pending > 0 && g.waiting.Load() == 1, fmt.Sprintf("pending=%d", pending)
	})
	_, pendingA := st.window(b)
	require.True(t, pendingA >= 600 && pendingA < 700, "hold %d", pendingA)

	// B, identical, does not fit next to A's hold: 429 from purser, in OpenAI's format.
	before := len(st.served())
	_, err := st.openai(secret, nil).Chat.Completions.New(ctx, chat(1000))
	apiErr, ok := errors.AsType[*openai.Error](err)
	require.True(t, ok, "openai SDK error type, got %T %v", err, err)
	require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode, "apiErr.StatusCode is http.StatusTooManyRequests")
	require.Equal(t, "insufficient_quota", apiErr.Type, "apiErr.Type is \"insufficient_quota\"")
	require.Contains(t, apiErr.Message, `budget "key tiny"`, "names the budget")
	reset := apiErr.Response.Header.Get("x-budget-reset")
	_, perr := time.Parse(time.RFC3339, reset)
	require.NoError(t, perr, "x-budget-reset %q", reset)
	require.Contains(t, apiErr.Message, reset, "names the reset time")
	ra, err := strconv.Atoi(apiErr.Response.Header.Get("retry-after"))
	require.NoError(t, err, "retry-after present")
	require.Positive(t, ra, "ra is positive")

	// Anthropic caller, a worst case above the whole limit: it can never fit, so not a 429
	// but 400 request_exceeds_budget, without Retry-After (e2e/bounds_test.go has more).
	_, err = st.anthropic(secret, nil).Messages.New(ctx, messages(1024))
	aErr, ok := errors.AsType[*anthropic.Error](err)
	require.True(t, ok, "anthropic SDK error type, got %T %v", err, err)
	require.Equal(t, http.StatusBadRequest, aErr.StatusCode, "aErr.StatusCode is http.StatusBadRequest")
	require.EqualValues(t, "invalid_request_error", aErr.Type(), "aErr.Type() is \"invalid_request_error\"")
	require.Empty(t, aErr.Response.Header.Get("retry-after"), "aErr.Response.Header.Get(\"retry-after\") is empty")
	require.Equal(t, before, len(st.served()), "denied requests never reach the provider")

	// A finishes and settles; C fits beside A's real cost; D (worst case above the limit) never fits.
	g.open()
	require.NoError(t, <-aDone, "<-aDone: no error")
	reqA := st.lastRequestID()
	rA := st.assertSettledAtReportedPrice(reqA)
	_, err = st.openai(secret, usage(20, 30)).Chat.Completions.New(ctx, chat(1000))
	require.NoError(t, err, "posted %d + one hold fits in 1000", *rA.Actual)
	rC := st.assertSettledAtReportedPrice(st.lastRequestID())
	_, err = st.openai(secret, nil).Chat.Completions.New(ctx, chat(2000))
	apiErr, ok = errors.AsType[*openai.Error](err)
	require.True(t, ok, "an *openai.Error, got %T %v", err, err)
	require.Equal(t, http.StatusBadRequest, apiErr.StatusCode, "apiErr.StatusCode is http.StatusBadRequest")
	require.Equal(t, "request_exceeds_budget", apiErr.Code, "apiErr.Code is \"request_exceeds_budget\"")

	posted, pending := st.window(b)
	require.Equal(t, *rA.Actual+*rC.Actual, posted, "posted is *rA.Actual+*rC.Actual")
	require.Zero(t, pending, "pending is zero")
	require.Len(t, st.allReservations(), 2, "denials hold nothing")
	st.verify()
}

// 3. Streams settle from the usage sse_to_metadata extracted; a stream without usage is
// charged its hold, never zero.
func scenarioStreaming(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{})
	ctx := context.Background()
	keyID, secret := st.key("stream")
	b := st.budget("key daily", "key:"+keyID, 1_000_000, "day")

	p := chat(500)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := st.openai(secret, map[string]string{fakellm.HeaderInputTokens: "1200", fakellm.HeaderOutputTokens: "300", fakellm.HeaderCachedTokens: "1000"}).
		Chat.Completions.NewStreaming(ctx, p)
	var acc openai.ChatCompletionAccumulator
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	require.NoError(t, s.Err(), "s.Err(): no error")
	require.EqualValues(t, 300, acc.Usage.CompletionTokens, "acc.Usage.CompletionTokens is 300")
	rOpenAI := st.assertSettledAtReportedPrice(st.lastRequestID())
	// by hand: 200 uncached x $0.15/M + 1000 cached x $0.075/M + 300 x $0.60/M = 30 + 75 + 180
	require.EqualValues(t, 285, *rOpenAI.Actual, "*rOpenAI.Actual is 285")

	as := st.anthropic(secret, map[string]string{fakellm.HeaderInputTokens: "800", fakellm.HeaderOutputTokens: "40",
		fakellm.HeaderCachedTokens: "2000", fakellm.HeaderCacheCreationTokens: "100"}).Messages.NewStreaming(ctx, messages(256))
	var msg anthropic.Message
	for as.Next() {
		require.NoError(t, msg.Accumulate(as.Current()), "msg.Accumulate(as.Current()): no error")
	}
	require.NoError(t, as.Err(), "as.Err(): no error")
	require.EqualValues(t, 40, msg.Usage.OutputTokens, "msg.Usage.OutputTokens is 40")
	rAnthropic := st.assertSettledAtReportedPrice(st.lastRequestID())
	// by hand: 800 x $3/M + 2000 x $0.30/M + 100 x $3.75/M + 40 x $15/M = 2400 + 600 + 375 + 600
	require.EqualValues(t, 3975, *rAnthropic.Actual, "*rAnthropic.Actual is 3975")

	// OpenAI stream without include_usage: no usage anywhere, the hold is charged.
	s = st.openai(secret, usage(10, 10)).Chat.Completions.NewStreaming(ctx, chat(100))
	for s.Next() {
	}
	require.NoError(t, s.Err(), "s.Err(): no error")
	r := st.waitState(st.lastRequestID(), "settled")
	// openai-go closes the connection as soon as it reads "data: [DONE]", which may be before
	// Envoy saw the upstream's end of stream: then the entry says downstream_connection_termination (DC).
	require.Contains(t, []string{"missing_usage:stream", "cut_off:downstream_connection_termination"}, r.Cause, "[]string{\"missing_usage:stream\", \"cut_off:downstream_connection_termination\"} contains r.Cause")
	require.Equal(t, r.Hold, *r.Actual, "unknown usage is charged the hold, never zero")

	posted, pending := st.window(b)
	require.Equal(t, *rOpenAI.Actual+*rAnthropic.Actual+r.Hold, posted, "posted is *rOpenAI.Actual+*rAnthropic.Actual+r.Hold")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}

// stallAfter lets x-e2e-stall-after: N writes of a response through, then blocks until the
// request's context ends (the proxy reset the upstream after its client went away).
func stallAfter(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.Header.Get("x-e2e-stall-after"))
		if err != nil {
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(&stallWriter{ResponseWriter: w, left: n, ctx: r.Context()}, r)
	})
}

type stallWriter struct {
	http.ResponseWriter
	left int
	ctx  context.Context
}

func (s *stallWriter) Write(b []byte) (int, error) {
	if s.left == 0 {
		<-s.ctx.Done()
		return 0, s.ctx.Err()
	}
	s.left--
	return s.ResponseWriter.Write(b)
}

func (s *stallWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// 4. The client disconnects mid-stream: the provider may have billed, the usage is unknown
// or partial: the reservation is charged its hold, never settled free.
func scenarioDisconnect(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{wrapUpstream: stallAfter})
	keyID, secret := st.key("disconnect")
	b := st.budget("key daily", "key:"+keyID, 1_000_000, "day")
	hdr := map[string]string{"x-e2e-stall-after": "3", fakellm.HeaderInputTokens: "50", fakellm.HeaderOutputTokens: "400"}

	ctx, cancel := context.WithCancel(context.Background())
	p := chat(500)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := st.openai(secret, hdr).Chat.Completions.NewStreaming(ctx, p)
	for i := 0; i < 2; i++ {
		require.True(t, s.Next(), "event %d: %v", i, s.Err())
	}
	cancel() // the caller gives up after two events
	_ = s.Close()

	ctx2, cancel2 := context.WithCancel(context.Background())
	as := st.anthropic(secret, hdr).Messages.NewStreaming(ctx2, messages(500))
	for i := 0; i < 2; i++ { // message_start (with input usage) and content_block_start
		require.True(t, as.Next(), "event %d: %v", i, as.Err())
	}
	cancel2()
	_ = as.Close()

	eventually(t, 20*time.Second, "both streams recorded as cut by the fake", func() (bool, string) {
		return len(st.fake.Requests()) == 2, fmt.Sprint(len(st.fake.Requests()))
	})
	var holds int64
	for _, rec := range st.fake.Requests() {
		require.False(t, rec.Complete, "not rec.Complete")
		r := st.waitState(rec.RequestID, "settled", "expired")
		require.Equal(t, "settled", r.State, "r.State is \"settled\"")
		require.Equal(t, r.Hold, *r.Actual, "%s: charged the hold (cause %s)", rec.API, r.Cause)
		require.NotEqual(t, "usage", r.Cause, "r.Cause is not \"usage\"")
		holds += r.Hold
	}
	var resets int
	for _, e := range st.sim.Entries() {
		if e.GetCommonProperties().GetResponseFlags().GetDownstreamConnectionTermination() {
			resets++
		}
	}
	require.Equal(t, 2, resets, "Envoy logged both as downstream_connection_termination (HTTP/1.1 client gone)")
	posted, pending := st.window(b)
	require.Equal(t, holds, posted, "posted is holds")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}

// 5. Envoy times out a Check whose hold then commits: the client gets 503 (fail closed). When
// purser sees its caller go, it voids the hold itself; when only the answer was lost, the
// ext_authz_error entry (no metadata, no proof) joins the reservation on x-request-id and start
// time and charges its hold provisionally: an entry without purser's proof never voids
// (design invariant 7), and the cost of a lost answer is the hold, never a free request.
func scenarioCheckTimeout(t *testing.T, bin string) {
	// purser's own deadline far above Envoy's 0.5 s: Envoy gives up first.
	st := newStack(t, bin, stackOpts{purserArgs: []string{"-check-timeout", "2s", "-sweep-interval", "100ms"}})
	ctx := context.Background()
	keyID, secret := st.key("timeout")
	b := st.budget("key daily", "key:"+keyID, 1_000_000, "day")
	checkStarted := make(chan struct{}, 1) // (d)'s Check reached Envoy's ext_authz filter
	st.sim.SetCheckFault(func(r *http.Request) envoysim.CheckFault {
		switch r.Header.Get("x-e2e-fault") {
		case "client-gives-up":
			select {
			case checkStarted <- struct{}{}:
			default:
			}
		case "envoy-timeout":
			return envoysim.CheckFault{TimeoutAfter: 300 * time.Millisecond}
		case "late-answer":
			return envoysim.CheckFault{LoseAnswer: true}
		}
		return envoysim.CheckFault{}
	})
	_, err := st.openai(secret, usage(10, 10)).Chat.Completions.New(ctx, chat(100)) // creates the window row
	require.NoError(t, err, "the call succeeds")
	warm := st.assertSettledAtReportedPrice(st.lastRequestID())
	served := len(st.served())

	requireFailClosed := func(err error) {
		t.Helper()
		apiErr, ok := errors.AsType[*openai.Error](err)
		require.True(t, ok, "got %T %v", err, err)
		require.Equal(t, http.StatusServiceUnavailable, apiErr.StatusCode, "status_on_error")
		require.Equal(t, "budget_service_unavailable", apiErr.Code, "local_reply_config body")
		require.Equal(t, "1", apiErr.Response.Header.Get("retry-after"), "apiErr.Response.Header.Get(\"retry-after\") is \"1\"")
	}

	// (a) The budget's window row is locked: purser's reservation waits; Envoy's timer fires
	// and cancels the call; the hold commits once the lock goes, for a caller that is gone.
	tx, err := st.db.Pool.Begin(ctx)
	require.NoError(t, err, "the call succeeds")
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM budget_windows WHERE budget_id = $1 FOR UPDATE`, b)
	require.NoError(t, err, "the call succeeds")
	_, err = st.openai(secret, map[string]string{"x-e2e-fault": "envoy-timeout"}).Chat.Completions.New(ctx, chat(100))
	requireFailClosed(err)
	// (d) In the same stall, a client that gives up during the Check: Envoy cancels the call
	// (onDestroy); the entry has no response code and no ext_authz metadata.
	// The client gives up once its Check has started (an event, not a timer: on a loaded
	// machine a fixed delay could end before the request reached Envoy).
	cctx, ccancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() {
		_, err := st.openai(secret, map[string]string{"x-e2e-fault": "client-gives-up"}).Chat.Completions.New(cctx, chat(100))
		gaveUp <- err
	}()
	select {
	case <-checkStarted:
	case err := <-gaveUp:
		t.Fatalf("the request ended before its Check started: %v", err)
	}
	ccancel()
	require.ErrorIs(t, <-gaveUp, context.Canceled, "the client sees its own cancellation")
	var idA, idD string
	eventually(t, 10*time.Second, "both entries delivered while the row is still locked", func() (bool, string) {
		ids := st.requestIDsWithDetails("ext_authz_error")
		resets := st.requestIDsWhere(func(e *alsdata.HTTPAccessLogEntry) bool {
			return e.GetCommonProperties().GetResponseFlags().GetDownstreamConnectionTermination() && e.GetResponse().GetResponseCode() == nil
		})
		if len(ids) != 1 || len(resets) != 1 {
			return false, fmt.Sprint(ids, resets)
		}
		idA, idD = ids[0], resets[0]
		return st.delivered(idA) && st.delivered(idD), "not delivered yet"
	})
	require.NoError(t, tx.Rollback(ctx), "tx.Rollback(ctx): no error") // the database answers again
	// A's batch waited on the locked row under lock_timeout = its Check's remaining time, so
	// either the server gave up first and nothing was written (the batch failed), or the
	// rollback above let it commit just in time and the batcher voids the hold of a caller
	// that has gone. (A's entry, with no proof and no upstream, may reach the x-request-id
	// fallback first and charge a hold provisionally: the void still releases it, so wait for
	// the end state rather than the first resolution.)
	eventually(t, 30*time.Second, "A's batch failed with nothing written, or A's hold voided", func() (bool, string) {
		rs := st.reservationsFor(idA)
		if len(rs) == 0 {
			return strings.Contains(st.pursers[0].current().Log(), "reservation batch failed"), "no reservation, batch not failed yet"
		}
		return rs[0].State == "voided", fmt.Sprintf("state %s cause %s", rs[0].State, rs[0].Cause)
	})
	// D queued behind A's stalled batch and was abandoned before it ran: no hold at all, or
	// (had it been batched with A) a voided one.
	for _, r := range st.reservationsFor(idD) {
		require.Equal(t, "voided", r.State, "%+v", r)
	}

	// (b) The Check completes and commits at purser but its answer reaches Envoy too late:
	// the ext_authz_error entry has no reservation id; the x-request-id fallback charges the
	// hold provisionally (as expiry would).
	_, err = st.openai(secret, map[string]string{"x-e2e-fault": "late-answer"}).Chat.Completions.New(ctx, chat(100))
	requireFailClosed(err)
	var idB string
	eventually(t, 10*time.Second, "second ext_authz_error entry", func() (bool, string) {
		for _, id := range st.requestIDsWithDetails("ext_authz_error") {
			if id != idA {
				idB = id
				return true, ""
			}
		}
		return false, ""
	})
	rB := st.waitState(idB, "voided", "expired")
	require.Equal(t, "expired", rB.State, "charged, not voided: the entry carries no proof")
	require.True(t, strings.HasPrefix(rB.Cause, "request_id_join:"), "through the x-request-id fallback, cause %q", rB.Cause)
	require.Equal(t, rB.Hold, *rB.Actual, "*rB.Actual is rB.Hold")

	// (c) As (b), but the entry is late too: the ghost hold expires first (charged); the late
	// ext_authz_error entry, without proof and without usage, changes nothing.
	st.sim.BlockAccessLog(true)
	_, err = st.openai(secret, map[string]string{"x-e2e-fault": "late-answer"}).Chat.Completions.New(ctx, chat(100))
	requireFailClosed(err)
	var idC string
	eventually(t, 10*time.Second, "third ext_authz_error entry", func() (bool, string) {
		for _, id := range st.requestIDsWithDetails("ext_authz_error") {
			if id != idA && id != idB {
				idC = id
				return len(st.reservationsFor(id)) == 1, "no reservation yet"
			}
		}
		return false, ""
	})
	rC := st.reservationsFor(idC)[0]
	st.expireNow(rC.ID)
	st.waitState(idC, "expired")
	posted, _ := st.window(b)
	require.Equal(t, *warm.Actual+rB.Hold+rC.Hold, posted, "the ghost hold expired: charged (and B's, provisionally)")
	noReservation := func() float64 {
		m, err := st.pursers[0].current().Metrics(ctx)
		require.NoError(t, err, "the call succeeds")
		return m.Sum("purser_accesslog_entries_total", `outcome="no_reservation"`)
	}
	before := noReservation()
	st.sim.BlockAccessLog(false)
	eventually(t, 20*time.Second, "C's late entry processed", func() (bool, string) {
		n := noReservation()
		return n > before, fmt.Sprintf("no_reservation=%v", n)
	})
	rC = st.reservationsFor(idC)[0]
	require.Equal(t, "expired", rC.State, "still charged: the late entry proves nothing")

	require.Equal(t, served, len(st.served()), "nothing reached the provider without a decision")
	posted, pending := st.window(b)
	require.Equal(t, *warm.Actual+rB.Hold+rC.Hold, posted, "the lost answers cost their holds; the caller-gone ones nothing")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}

// 6. The access-log sink is down (and purser restarts) between the response and the flush:
// expiry charges the hold; the late entry, once delivered, settles the real cost and
// refunds the difference. A batch lost with a broken stream stays charged at the hold.
func scenarioALSDown(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{purserArgs: []string{"-sweep-interval", "100ms"}})
	ctx := context.Background()
	keyID, secret := st.key("als")
	b := st.budget("key daily", "key:"+keyID, 1_000_000, "day")

	st.sim.BlockAccessLog(true)
	_, err := st.openai(secret, usage(40, 60)).Chat.Completions.New(ctx, chat(500))
	require.NoError(t, err, "the call succeeds")
	idA := st.lastRequestID()
	eventually(t, 10*time.Second, "A's entry buffered in Envoy", func() (bool, string) {
		return st.sim.PendingEntries() == 1 && st.sim.ALSStats().StreamFailures > 0, fmt.Sprint(st.sim.PendingEntries())
	})
	st.pursers[0].stop() // purser restarts while the entry waits in Envoy's buffer
	st.pursers[0].restart()
	rs := st.reservationsFor(idA)
	require.Len(t, rs, 1, "rs has 1 elements")
	require.Equal(t, "pending", rs[0].State, "rs[0].State is \"pending\"")
	st.expireNow(rs[0].ID)
	st.waitState(idA, "expired")
	posted, pending := st.window(b)
	require.Equal(t, rs[0].Hold, posted, "expiry charges the whole hold")
	require.Zero(t, pending, "pending is zero")

	st.sim.BlockAccessLog(false) // the sink is back: the next flush delivers the late entry
	rA := st.assertSettledAtReportedPrice(idA)
	posted, _ = st.window(b)
	require.Equal(t, *rA.Actual, posted, "the late entry refunded the difference")

	// A batch handed to a stream that breaks is lost: only expiry resolves it.
	st.sim.LoseAccessLogBatches(1)
	_, err = st.openai(secret, usage(40, 60)).Chat.Completions.New(ctx, chat(500))
	require.NoError(t, err, "the call succeeds")
	idB := st.lastRequestID()
	eventually(t, 10*time.Second, "B's batch lost", func() (bool, string) {
		return st.sim.ALSStats().Lost == 1, fmt.Sprintf("%+v", st.sim.ALSStats())
	})
	rB := st.reservationsFor(idB)
	require.Len(t, rB, 1, "rB has 1 elements")
	st.expireNow(rB[0].ID)
	st.waitState(idB, "expired")
	// A later request on a fresh stream still settles normally.
	_, err = st.openai(secret, usage(40, 60)).Chat.Completions.New(ctx, chat(500))
	require.NoError(t, err, "the call succeeds")
	rC := st.assertSettledAtReportedPrice(st.lastRequestID())
	require.Equal(t, "expired", st.reservationsFor(idB)[0].State, "no entry ever came for B")
	posted, pending = st.window(b)
	require.Equal(t, *rA.Actual+rB[0].Hold+*rC.Actual, posted, "posted is *rA.Actual+rB[0].Hold+*rC.Actual")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}

// 7. Duplicated access-log batches (every batch sent twice, then everything replayed on a
// new stream): each reservation is settled once.
func scenarioDuplicates(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{})
	ctx := context.Background()
	keyID, secret := st.key("dups")
	b := st.budget("key daily", "key:"+keyID, 10_000_000, "day")
	st.sim.DuplicateAccessLogBatches(1000)
	var ids []string
	for i := range 6 {
		hdr := usage(10+i, 20+i)
		if i%2 == 0 {
			_, err := st.openai(secret, hdr).Chat.Completions.New(ctx, chat(300))
			require.NoError(t, err, "the call succeeds")
		} else {
			as := st.anthropic(secret, hdr).Messages.NewStreaming(ctx, messages(300))
			for as.Next() {
			}
			require.NoError(t, as.Err(), "as.Err(): no error")
		}
		ids = append(ids, st.lastRequestID())
	}
	var want int64
	for _, id := range ids {
		want += *st.assertSettledAtReportedPrice(id).Actual
	}
	st.sim.BreakAccessLogStreams()
	require.NoError(t, st.sim.ReplayAccessLogs(), "st.sim.ReplayAccessLogs(): no error")
	// purser counts each entry it judged (copies included): wait until it judged every copy
	// (each request twice, then once more replayed), then push a sentinel through.
	copies := int64(3 * len(ids))
	eventually(t, 20*time.Second, "purser judged every copy", func() (bool, string) {
		m, err := st.pursers[0].current().Metrics(ctx)
		if err != nil {
			return false, err.Error()
		}
		n := int64(m.Sum("purser_accesslog_entries_total", `outcome="settled"`))
		return n >= copies, fmt.Sprint(n)
	})
	_, err := st.openai(secret, usage(5, 5)).Chat.Completions.New(ctx, chat(300))
	require.NoError(t, err, "the call succeeds")
	want += *st.assertSettledAtReportedPrice(st.lastRequestID()).Actual
	for _, id := range ids {
		r := st.reservationsFor(id)
		require.Len(t, r, 1, "r has 1 elements")
		require.Equal(t, "settled", r[0].State, "r[0].State is \"settled\"")
	}
	posted, pending := st.window(b)
	require.Equal(t, want, posted, "nothing charged twice")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}

// 8. purser is SIGKILLed under load and restarted: requests during the outage fail closed
// (503, nothing forwarded); every forwarded request ends settled at its reported price or
// (entry lost with the dead process) expired at its hold; entries delivered on streams that
// never broke are all settled.
func scenarioKill(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{purserArgs: []string{"-sweep-interval", "100ms"}})
	keyID, secret := st.key("kill")
	b := st.budget("key daily", "key:"+keyID, 100_000_000, "day")

	var ok, failed, other atomic.Int64
	var otherMu sync.Mutex
	var otherErrs []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				hdr := usage(10+w, 10+i%7)
				var err error
				if (w+i)%2 == 0 {
					_, err = st.openai(secret, hdr).Chat.Completions.New(context.Background(), chat(200))
				} else {
					p := chat(200)
					p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
					s := st.openai(secret, hdr).Chat.Completions.NewStreaming(context.Background(), p)
					for s.Next() {
					}
					err = s.Err()
				}
				if err == nil {
					ok.Add(1)
					continue
				}
				if e, isAPI := errors.AsType[*openai.Error](err); isAPI && e.StatusCode == http.StatusServiceUnavailable {
					failed.Add(1)
					continue
				}
				other.Add(1)
				otherMu.Lock()
				otherErrs = append(otherErrs, err.Error())
				otherMu.Unlock()
			}
		}()
	}
	stopLoad := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoad()
	eventually(t, 60*time.Second, "load before the kill", func() (bool, string) { return ok.Load() >= 20, fmt.Sprint(ok.Load()) })
	st.pursers[0].kill()
	eventually(t, 60*time.Second, "requests failing closed", func() (bool, string) { return failed.Load() >= 8, fmt.Sprint(failed.Load()) })
	okAtRestart := ok.Load()
	st.pursers[0].restart()
	eventually(t, 60*time.Second, "load after the restart", func() (bool, string) {
		return ok.Load() >= okAtRestart+20, fmt.Sprint(ok.Load())
	})
	stopLoad()
	require.Zero(t, other.Load(), "every failure is a fail-closed 503: %v", otherErrs)
	require.EqualValues(t, ok.Load(), len(st.served()), "only admitted requests reached the provider")

	// Entries still buffered in Envoy are delivered to the restarted purser.
	eventually(t, 20*time.Second, "Envoy's buffers empty", func() (bool, string) {
		return st.sim.PendingEntries() == 0, fmt.Sprint(st.sim.PendingEntries())
	})
	deliveredOK := map[string]bool{} // delivered on a stream that never broke
	for _, d := range st.sim.Deliveries() {
		if !d.Broken {
			deliveredOK[d.RequestID] = true
		}
	}
	recs := st.served()
	eventually(t, 30*time.Second, "every cleanly delivered entry settled", func() (bool, string) {
		for _, rec := range recs {
			if !deliveredOK[rec.RequestID] {
				continue
			}
			rs := st.reservationsFor(rec.RequestID)
			if len(rs) != 1 || rs[0].State != "settled" {
				return false, fmt.Sprintf("%s: %+v", rec.RequestID, rs)
			}
		}
		return true, ""
	})
	// What died with the process (entries in its queue, batches on its broken streams)
	// expires and is charged the hold.
	var stale []string
	for _, r := range st.allReservations() {
		if r.State == "pending" {
			stale = append(stale, r.ID)
		}
	}
	st.expireNow(stale...)
	eventually(t, 20*time.Second, "nothing pending", func() (bool, string) {
		_, pending := st.window(b)
		return pending == 0, fmt.Sprint(pending)
	})
	var want, settled, expired int64
	for _, rec := range recs {
		require.True(t, rec.Complete, "the fake finished forwarded request %s (status %d)", rec.RequestID, rec.Status)
		rs := st.reservationsFor(rec.RequestID)
		require.Len(t, rs, 1, "one reservation per forwarded request")
		r := rs[0]
		switch r.State {
		case "settled":
			require.Equal(t, "usage", r.Cause, "r.Cause is \"usage\"")
			require.Equal(t, st.price(rec), *r.Actual, "*r.Actual is st.price(rec)")
			want += *r.Actual
			settled++
		case "expired":
			require.False(t, deliveredOK[rec.RequestID], "a cleanly delivered entry was lost")
			want += r.Hold
			expired++
		default:
			t.Fatalf("forwarded request %s ended %s (%s): it may not be free", rec.RequestID, r.State, r.Cause)
		}
	}
	// Requests that failed closed: any hold their Check committed was voided or expired.
	served := map[string]bool{}
	for _, rec := range recs {
		served[rec.RequestID] = true
	}
	for _, r := range st.allReservations() {
		if served[r.RequestID] {
			continue
		}
		require.Contains(t, []string{"voided", "expired"}, r.State, "%+v", r)
		if r.State == "expired" {
			want += r.Hold
		}
	}
	t.Logf("forwarded %d (settled %d, expired %d), failed closed %d", len(recs), settled, expired, failed.Load())
	posted, pending := st.window(b)
	require.Equal(t, want, posted, "posted is want")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}

// 9. Two purser replicas on one budget, Checks and access-log streams spread over both:
// with every hold pending at once, exactly floor(limit / hold) requests are admitted.
func scenarioReplicas(t *testing.T, bin string) {
	g := newGate()
	defer g.open()
	// About admission across replicas, not deadlines: a Check must not miss Envoy's deadline
	// (or be shed) on a loaded machine under -race, or the count of holds would be short.
	st := newStack(t, bin, stackOpts{replicas: 2, wrapUpstream: g.wrap,
		purserArgs: []string{"-check-timeout", "4s"},
		configure:  func(c *envoysim.Config) { c.ExtAuthz.Timeout = 5 * time.Second }})
	keyID, secret := st.key("replicas")
	const limit = 5000
	b := st.budget("key tiny", "key:"+keyID, limit, "day")
	const n = 12
	codes := make(chan int, n)
	for range n {
		go func() {
			_, err := st.openai(secret, map[string]string{"x-e2e-gate": "1", fakellm.HeaderInputTokens: "20", fakellm.HeaderOutputTokens: "30"}).
				Chat.Completions.New(context.Background(), chat(1000))
			if e, ok := errors.AsType[*openai.Error](err); ok {
				codes <- e.StatusCode
				return
			}
			if err != nil {
				codes <- -1
				return
			}
			codes <- http.StatusOK
		}()
	}
	var denied int
	eventually(t, 30*time.Second, "every Check decided", func() (bool, string) {
		for len(codes) > 0 {
			c := <-codes
			require.Equal(t, http.StatusTooManyRequests, c, "only denials finish while the gate is closed")
			denied++
		}
		return int(g.waiting.Load())+denied == n, fmt.Sprintf("admitted %d denied %d", g.waiting.Load(), denied)
	})
	rs := st.allReservations()
	require.Len(t, rs, int(g.waiting.Load()), "rs has int(g.waiting.Load()) elements")
	hold := rs[0].Hold
	for _, r := range rs {
		require.Equal(t, hold, r.Hold, "identical requests, identical holds")
	}
	require.EqualValues(t, limit/hold, len(rs), "exactly as many holds as fit: hold %d, limit %d", hold, limit)
	_, pending := st.window(b)
	require.LessOrEqual(t, pending, int64(limit), "pending <= int64(limit)")

	for addr, s := range st.sim.HostStats("purser") {
		require.Positive(t, s[0], "replica %s got Checks", addr)
	}
	g.open()
	for range n - denied {
		require.Equal(t, http.StatusOK, <-codes, "<-codes is http.StatusOK")
	}
	var want int64
	for _, rec := range st.served() {
		want += *st.assertSettledAtReportedPrice(rec.RequestID).Actual
	}
	for addr, s := range st.sim.HostStats("purser") {
		require.Positive(t, s[1], "replica %s got an access-log stream", addr)
	}
	posted, pending := st.window(b)
	require.Equal(t, want, posted, "posted is want")
	require.Zero(t, pending, "pending is zero")
	st.verify()
}
