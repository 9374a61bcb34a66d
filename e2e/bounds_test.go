package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/internal/fakellm"
)

// TestBounds runs the money-bound scenarios of issue 13 against the real binary, Postgres,
// envoysim and the fake provider, which reports the real o200k_base count of OpenAI prompts
// (internal/fakellm/tokens.go): expensive scripts against a hard budget, an o3 request without
// max_tokens, and a request that can never fit.
func TestBounds(t *testing.T) {
	bin := buildPurser(t)
	for _, sc := range []struct {
		name string
		run  func(*testing.T, string)
	}{
		{"ExpensiveScriptsHardBudget", scenarioExpensiveScripts},
		{"O3WithoutMaxTokens", scenarioO3WithoutCap},
		{"NeverFits", scenarioNeverFits},
	} {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			sc.run(t, bin)
		})
	}
}

// scriptText is n characters cycling through the code points lo..hi.
func scriptText(lo, hi rune, n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteRune(lo + rune(i)%(hi-lo+1))
	}
	return b.String()
}

// Before the bound, 40,000-character prompts in these scripts were held at about half of
// what o200k counts, and a $1.00 hard budget admitted six of them and posted $1.79. Now: two
// concurrent requests per script, script after script, against $1.00; whatever is admitted
// settles at the provider's real count within its hold, the budget is never overspent. (Pairs
// rather than all ten at once: ten 120 KB bodies at once can outlast Envoy's 0.5 s ext_authz
// timeout on a loaded two-core machine, and a timeout is a 503, not the answer under test.)
func scenarioExpensiveScripts(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{})
	ctx := context.Background()
	_, secret := st.key("scripts", "team:scripts")
	b := st.budget("scripts $1", "team:scripts", 1_000_000, "day")
	scripts := []struct {
		name   string
		lo, hi rune
	}{
		{"Yi", 0xA000, 0xA48C}, {"CJKExtA", 0x3400, 0x4DBF}, {"Braille", 0x2800, 0x28FF},
		{"CyrillicSupplement", 0x0500, 0x052F}, {"LatinExtendedB", 0x0180, 0x024F},
	}
	var (
		mu                 sync.Mutex
		admitted, exceeded int
	)
	for _, sc := range scripts {
		prompt := scriptText(sc.lo, sc.hi, 40_000)
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := st.openai(secret, nil).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
					Model: "gpt-4o", MaxTokens: openai.Int(16),
					Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
				})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					admitted++
					return
				}
				apiErr, ok := errors.AsType[*openai.Error](err)
				require.True(t, ok, "%s: %v", sc.name, err)
				require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode, "%s: %s", sc.name, apiErr.Message)
				require.Equal(t, "budget_exceeded", apiErr.Code)
				exceeded++
			}()
		}
		wg.Wait()
	}
	require.Positive(t, admitted, "some fit")
	require.Positive(t, exceeded, "not all ten fit in $1.00")
	eventually(t, 30*time.Second, "every admitted request settled", func() (bool, string) {
		_, pending := st.window(b)
		return pending == 0, fmt.Sprintf("pending %d", pending)
	})
	posted, _ := st.window(b)
	require.LessOrEqual(t, posted, int64(1_000_000), "the hard budget holds: posted $%d.%06d", posted/1e6, posted%1e6)
	rs := st.allReservations()
	require.Len(t, rs, admitted)
	var sum int64
	for _, r := range rs {
		require.Equal(t, "settled", r.State)
		require.Equal(t, "usage", r.Cause)
		require.NotNil(t, r.Actual)
		require.LessOrEqual(t, *r.Actual, r.Hold, "no overrun: the real cost is within the hold")
		rec := st.record(r.RequestID)
		require.Equal(t, st.price(rec), *r.Actual, "settled at what the provider reported")
		require.Greater(t, rec.Reported.InputTokens, int64(40_000), "the fake reported the real o200k count")
		sum += *r.Actual
	}
	require.Equal(t, sum, posted)
	var overruns int
	require.NoError(t, st.db.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE actual_cost > hold_cost`).Scan(&overruns))
	require.Zero(t, overruns)
	t.Logf("admitted %d, denied %d, posted $%.6f of $1.00", admitted, exceeded, float64(posted)/1e6)
	st.verify()
}

// An o3 request without max_tokens may produce up to o3's 100,000 output tokens: it holds
// them (not 4,096), so a second one does not fit beside it on $1.00, and once the first
// settles at its real cost the next one fits again.
func scenarioO3WithoutCap(t *testing.T, bin string) {
	g := newGate()
	defer g.open()
	st := newStack(t, bin, stackOpts{wrapUpstream: g.wrap})
	ctx := context.Background()
	_, secret := st.key("o3", "team:o3")
	b := st.budget("o3 $1", "team:o3", 1_000_000, "day")
	m, ok := st.cat.Lookup("openai", "o3")
	require.True(t, ok)
	require.EqualValues(t, 100_000, m.MaxOutputTokens)
	outputOnly, err := m.UpperBound(0, 100_000)
	require.NoError(t, err)
	params := openai.ChatCompletionNewParams{Model: "o3",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Prove that there are infinitely many primes.")}}

	aDone := make(chan error, 1)
	go func() {
		_, err := st.openai(secret, map[string]string{"x-e2e-gate": "1", fakellm.HeaderOutputTokens: "2500", fakellm.HeaderReasoningTokens: "2000"}).
			Chat.Completions.New(ctx, params)
		aDone <- err
	}()
	eventually(t, 20*time.Second, "A's hold pending", func() (bool, string) {
		_, pending := st.window(b)
		return pending > 0 && g.waiting.Load() == 1, fmt.Sprintf("pending=%d", pending)
	})
	_, pending := st.window(b)
	require.GreaterOrEqual(t, pending, outputOnly, "the hold covers o3's maximum output")

	_, err = st.openai(secret, nil).Chat.Completions.New(ctx, params)
	apiErr, ok := errors.AsType[*openai.Error](err)
	require.True(t, ok, "%T %v", err, err)
	require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode, "B fits an empty window but not beside A: exhaustion")
	require.NotEmpty(t, apiErr.Response.Header.Get("retry-after"))

	g.open()
	require.NoError(t, <-aDone)
	rA := st.assertSettledAtReportedPrice(st.lastRequestID())
	require.GreaterOrEqual(t, rA.Hold, outputOnly)
	_, err = st.openai(secret, usage(20, 30)).Chat.Completions.New(ctx, params)
	require.NoError(t, err, "after A settled at its real cost")
	st.assertSettledAtReportedPrice(st.lastRequestID())
	posted, pending := st.window(b)
	require.LessOrEqual(t, posted, int64(1_000_000))
	require.Zero(t, pending)
	st.verify()
}

// A request whose worst case exceeds the whole limit can never be admitted: the official SDKs
// get a 400 request_exceeds_budget (their retry rules leave a 400 alone, and
// x-should-retry: false says so), without Retry-After, after exactly one attempt.
func scenarioNeverFits(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{})
	ctx := context.Background()
	_, secret := st.key("never", "team:never")
	st.budget("never 50c", "team:never", 500_000, "day")
	entries := func() int { return len(st.sim.Entries()) }
	oneMore := func(before int, what string) {
		eventually(t, 10*time.Second, what+" logged", func() (bool, string) {
			return entries() > before, fmt.Sprintf("%d entries", entries())
		})
		require.Equal(t, before+1, entries(), "%s: one attempt, no retry", what)
	}

	oc := openai.NewClient(option.WithBaseURL(st.baseURL+"/v1/"), option.WithAPIKey(secret), option.WithMaxRetries(2),
		option.WithHTTPClient(&http.Client{Timeout: time.Minute}))
	before := entries()
	_, err := oc.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "o3",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	apiErr, ok := errors.AsType[*openai.Error](err)
	require.True(t, ok, "%T %v", err, err)
	require.Equal(t, http.StatusBadRequest, apiErr.StatusCode)
	require.Equal(t, "request_exceeds_budget", apiErr.Code)
	require.Equal(t, "invalid_request_error", apiErr.Type)
	require.Contains(t, apiErr.Message, "can never be admitted")
	require.Contains(t, apiErr.Message, "set a lower max_tokens")
	require.Empty(t, apiErr.Response.Header.Get("retry-after"))
	require.Equal(t, "false", apiErr.Response.Header.Get("x-should-retry"))
	oneMore(before, "openai")

	ac := anthropic.NewClient(aoption.WithBaseURL(st.baseURL), aoption.WithAPIKey(secret), aoption.WithMaxRetries(2),
		aoption.WithHTTPClient(&http.Client{Timeout: time.Minute}))
	before = entries()
	_, err = ac.Messages.New(ctx, anthropic.MessageNewParams{Model: "claude-opus-4-1", MaxTokens: 8_000, // $0.60 of output at $75/M
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}})
	aErr, ok := errors.AsType[*anthropic.Error](err)
	require.True(t, ok, "%T %v", err, err)
	require.Equal(t, http.StatusBadRequest, aErr.StatusCode)
	require.EqualValues(t, "invalid_request_error", aErr.Type())
	require.Empty(t, aErr.Response.Header.Get("retry-after"))
	oneMore(before, "anthropic")

	require.Empty(t, st.allReservations(), "nothing held")
	require.Zero(t, st.fake.Count(), "nothing reached the provider")
	st.verify()
}
