package extauthz_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/extauthz/request"
)

// withBody replaces a fixture's body (and path, when not empty) and gives it a purser key.
func withBody(t *testing.T, name, path, body, secret string, n int) *authv3.CheckRequest {
	t.Helper()
	req := withKey(fixture(t, name), secret, n)
	h := req.GetAttributes().GetRequest().GetHttp()
	h.RawBody, h.Body = []byte(body), ""
	h.Headers["content-length"] = strconv.Itoa(len(body))
	if path != "" {
		h.Path = path
	}
	return req
}

// reservedTokens checks the request was admitted and returns the tokens it holds.
func reservedTokens(t *testing.T, resp *authv3.CheckResponse) int64 {
	t.Helper()
	okResponse(t, resp)
	n, err := strconv.ParseInt(meta(resp, extauthz.MetaReservedTokens), 10, 64)
	require.NoError(t, err)
	return n
}

// denial checks the request was denied with status and reason and returns the reply.
func denial(t *testing.T, resp *authv3.CheckResponse, status int, reason string) *authv3.DeniedHttpResponse {
	t.Helper()
	d := resp.GetDeniedResponse()
	require.NotNil(t, d, "want a %d %s denial, got %v", status, reason, resp)
	require.Equal(t, status, int(d.GetStatus().GetCode()), d.GetBody())
	require.Contains(t, d.GetBody(), reason)
	return d
}

func headerValue(hs []*corev3.HeaderValueOption, k string) (string, bool) {
	for _, h := range hs {
		if h.GetHeader().GetKey() == k {
			return h.GetHeader().GetValue(), true
		}
	}
	return "", false
}

// TestCheck_OutputBound: without a cap a request holds its model's maximum output (o3:
// 100,000, not a guess of 4,096), a cap counts up to that maximum, choices multiply, a
// Gemini that may think holds its thinking on top of maxOutputTokens, and a model whose
// output nothing bounds is refused clearly.
func TestCheck_OutputBound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := serve(t, extauthz.Config{}, nil)
	// A model the catalog prices but knows no limits of (neither maximum output nor window).
	cat, err := pricing.Load(catalog(t), strings.NewReader("models:\n  - {provider: openai, id: acme-mystery, prices: {input_mtok: 1, output_mtok: 1}}\n"))
	require.NoError(t, err)
	h.cat = cat
	_, secret := h.key(t, "team:ml")
	const chatPath = "/v1/chat/completions"
	const geminiFlash = "/v1beta/models/gemini-2.5-flash:generateContent"
	cases := []struct {
		name, fixture, path, body string
		out                       int64
	}{
		{"O3NoCap", "openai_chat", chatPath, `{"model":"o3","messages":[{"role":"user","content":"hi"}]}`, 100_000},
		{"O3Cap", "openai_chat", chatPath, `{"model":"o3","max_completion_tokens":500,"messages":[{"role":"user","content":"hi"}]}`, 500},
		{"O3CapAboveMax", "openai_chat", chatPath, `{"model":"o3","max_completion_tokens":1000000,"messages":[{"role":"user","content":"hi"}]}`, 100_000},
		{"O3ThreeChoices", "openai_chat", chatPath, `{"model":"o3","n":3,"messages":[{"role":"user","content":"hi"}]}`, 300_000},
		{"WindowWhenNoMax", "openai_chat", chatPath, `{"model":"gpt-4-32k","messages":[{"role":"user","content":"hi"}]}`, 32_000},
		{"OwnCapWhenNothingKnown", "openai_chat", chatPath, `{"model":"acme-mystery","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, 10},
		{"AnthropicCapAboveMax", "anthropic_messages", "", `{"model":"claude-opus-4-1","max_tokens":50000,"messages":[{"role":"user","content":"hi"}]}`, 32_000},
		{"GeminiThinkingDefault", "gemini_generate", geminiFlash, `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100}}`, 65_536},
		{"GeminiThinkingBudget", "gemini_generate", geminiFlash, `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100,"thinkingConfig":{"thinkingBudget":1000}}}`, 1_100},
		{"GeminiThinkingOff", "gemini_generate", geminiFlash, `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100,"thinkingConfig":{"thinkingBudget":0}}}`, 100},
		{"GeminiNoThinking", "gemini_generate", "/v1beta/models/gemini-2.0-flash:generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100}}`, 100},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := withBody(t, c.fixture, c.path, c.body, secret, i+1)
			r := request.Parse(req, &request.Config{})
			require.NoError(t, r.BodyError)
			resp, err := h.client.Check(ctx, req)
			require.NoError(t, err)
			require.Equal(t, r.InputTokens+c.out, reservedTokens(t, resp), "input bound + %d output tokens", c.out)
		})
	}

	resp, err := h.client.Check(ctx, withBody(t, "openai_chat", chatPath, `{"model":"acme-mystery","messages":[{"role":"user","content":"hi"}]}`, secret, 90))
	require.NoError(t, err)
	d := denial(t, resp, 400, "output_unbounded")
	require.Contains(t, d.GetBody(), "set max_tokens")

	// The operator's default cap: an assertion, capped at the model's maximum all the same.
	asserted := serve(t, extauthz.Config{MissingCap: extauthz.MissingCapDefault}, nil)
	_, secret2 := asserted.key(t, "team:ml")
	req := withBody(t, "openai_chat", chatPath, `{"model":"o3","messages":[{"role":"user","content":"hi"}]}`, secret2, 1)
	r := request.Parse(req, &request.Config{})
	resp, err = asserted.client.Check(ctx, req)
	require.NoError(t, err)
	require.Equal(t, r.InputTokens+extauthz.DefaultOutputCap, reservedTokens(t, resp), "the asserted 4,096, not o3's 100,000")
	req = withBody(t, "openai_chat", chatPath, `{"model":"computer-use-preview","messages":[{"role":"user","content":"hi"}]}`, secret2, 2)
	r = request.Parse(req, &request.Config{})
	resp, err = asserted.client.Check(ctx, req)
	require.NoError(t, err)
	require.Equal(t, r.InputTokens+1024, reservedTokens(t, resp), "4,096 asserted, 1,024 the model's maximum")

	strict := serve(t, extauthz.Config{MissingCap: extauthz.MissingCapDeny}, nil)
	_, secret3 := strict.key(t, "team:ml")
	resp, err = strict.client.Check(ctx, withBody(t, "openai_chat", chatPath, `{"model":"o3","messages":[{"role":"user","content":"hi"}]}`, secret3, 1))
	require.NoError(t, err)
	require.Contains(t, denial(t, resp, 400, "output_cap_required").GetBody(), "set an output-token cap")

	require.ErrorContains(t, extauthz.Config{MissingCap: "guess"}.Validate(), `policies.missing_output_cap: "guess": want one of [model_max deny default]`)
}

// TestCheck_NeverFits: a request whose worst case exceeds a hard budget's whole limit gets
// its own answer (400 request_exceeds_budget, x-should-retry: false, no Retry-After) in the
// caller's error format, holds nothing, and leaves genuine exhaustion its 429 + Retry-After.
func TestCheck_NeverFits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := serve(t, extauthz.Config{ShowAmounts: true}, nil)
	_, secret := h.key(t, "team:ml")
	h.budget(t, budget.Definition{Name: "ml daily", Subject: "team:ml", Limit: 2_000, Window: "day", Hard: true})
	const chatPath = "/v1/chat/completions"
	huge := `{"model":"gpt-4o-mini","max_tokens":16000,"messages":[{"role":"user","content":"hi"}]}` // 9,600+ micro-USD
	small := `{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`  // under 100 micro-USD

	resp, err := h.client.Check(ctx, withBody(t, "openai_chat", chatPath, huge, secret, 1))
	require.NoError(t, err)
	d := denial(t, resp, 400, extauthz.ReasonExceedsBudget)
	_, hasRetry := headerValue(d.GetHeaders(), "retry-after")
	require.False(t, hasRetry, "waiting cannot help: no Retry-After")
	shouldRetry, _ := headerValue(d.GetHeaders(), "x-should-retry")
	require.Equal(t, "false", shouldRetry)
	var body struct {
		Error struct{ Message, Type, Code string }
	}
	require.NoError(t, json.Unmarshal([]byte(d.GetBody()), &body))
	require.Equal(t, "invalid_request_error", body.Error.Type, "OpenAI's format; the SDKs do not retry a 400")
	require.Equal(t, extauthz.ReasonExceedsBudget, body.Error.Code)
	require.Contains(t, body.Error.Message, `budget "ml daily" (team:ml) for a day, so it can never be admitted`)
	require.Contains(t, body.Error.Message, "limit $0.002000")
	require.NotContains(t, body.Error.Message, "exhausted")
	require.Empty(t, meta(resp, extauthz.MetaReservationID))

	// Anthropic's format.
	resp, err = h.client.Check(ctx, withBody(t, "anthropic_messages", "", `{"model":"claude-opus-4-1","max_tokens":30000,"messages":[{"role":"user","content":"hi"}]}`, secret, 2))
	require.NoError(t, err)
	d = denial(t, resp, 400, `"type":"invalid_request_error"`)
	require.Contains(t, d.GetBody(), "can never be admitted")

	// Genuine exhaustion: small requests fit until the window is full, then 429 + Retry-After.
	var last *authv3.CheckResponse
	for i := 3; i < 100; i++ {
		last, err = h.client.Check(ctx, withBody(t, "openai_chat", chatPath, small, secret, i))
		require.NoError(t, err)
		if last.GetDeniedResponse() != nil {
			break
		}
	}
	d = denial(t, last, 429, "budget_exceeded")
	_, hasRetry = headerValue(d.GetHeaders(), "retry-after")
	require.True(t, hasRetry, "a window that resets: Retry-After at its end")
	_, hasShould := headerValue(d.GetHeaders(), "x-should-retry")
	require.False(t, hasShould)
	require.Contains(t, d.GetBody(), "exhausted until")

	var n int
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE hold_cost > 2000`).Scan(&n))
	require.Zero(t, n, "a never-fitting request holds nothing")

	// A lifetime budget: never a Retry-After, exhausted or never fitting.
	lt := serve(t, extauthz.Config{}, nil)
	_, secret4 := lt.key(t, "team:ml")
	lt.budget(t, budget.Definition{Name: "trial", Subject: "team:ml", Limit: 2_000, Window: "lifetime", Hard: true})
	resp, err = lt.client.Check(ctx, withBody(t, "openai_chat", chatPath, huge, secret4, 1))
	require.NoError(t, err)
	d = denial(t, resp, 400, extauthz.ReasonExceedsBudget)
	require.NotContains(t, d.GetBody(), "for a")
	for i := 2; i < 100; i++ {
		last, err = lt.client.Check(ctx, withBody(t, "openai_chat", chatPath, small, secret4, i))
		require.NoError(t, err)
		if last.GetDeniedResponse() != nil {
			break
		}
	}
	d = denial(t, last, 429, "budget_exceeded")
	_, hasRetry = headerValue(d.GetHeaders(), "retry-after")
	require.False(t, hasRetry, "a lifetime budget does not reset")
	require.Contains(t, d.GetBody(), "it does not reset")
}
