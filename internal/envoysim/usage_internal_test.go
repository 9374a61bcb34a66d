package envoysim

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/internal/fakellm"
)

// TestSSERules_EveryChunkBoundary feeds the fake's real SSE bodies to the sse_to_metadata
// imitation cut at (nearly) every byte: the metadata must not depend on where chunks end, and must
// equal what internal/fakellm's envoyrules_test.go expects from envoy.yaml's rules.
func TestSSERules_EveryChunkBoundary(t *testing.T) {
	t.Parallel()
	cfg, err := LoadShipped()
	require.NoError(t, err)
	ts := httptest.NewServer(fakellm.New())
	t.Cleanup(ts.Close)
	cases := []struct {
		name, path, body string
		want             map[string]any
	}{
		{"OpenAIChat", "/v1/chat/completions", `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}`,
			map[string]any{"usage.prompt_tokens": 300.0, "usage.completion_tokens": 40.0, "usage.prompt_tokens_details.cached_tokens": 1000.0, "model": "gpt-4o-mini"}},
		{"Anthropic", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true}`,
			map[string]any{"message.usage.input_tokens": 300.0, "message.usage.output_tokens": 1.0, "usage.output_tokens": 40.0,
				"usage.cache_read_input_tokens": 1000.0, "message.model": "claude-sonnet-4-5"}},
		{"Responses", "/v1/responses", `{"model":"gpt-4o-mini","input":"hi","stream":true}`,
			map[string]any{"response.usage.input_tokens": 300.0, "response.usage.output_tokens": 40.0, "response.model": "gpt-4o-mini"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(http.MethodPost, ts.URL+tc.path, strings.NewReader(tc.body))
			req.Header.Set(fakellm.HeaderInputTokens, "300")
			req.Header.Set(fakellm.HeaderOutputTokens, "40")
			req.Header.Set(fakellm.HeaderCachedTokens, "1000")
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			require.True(t, isSSE(res.Header.Get("content-type")))
			run := func(chunks ...[]byte) map[string]any {
				md := map[string]any{}
				s := newSSEState(cfg.SSERules, cfg.SSEMaxEventSize, func(ns, key string, v *structpb.Value, _ bool) {
					require.Equal(t, "purser.usage", ns)
					md[key] = v.AsInterface()
				})
				for _, c := range chunks {
					s.feed(c)
				}
				s.end()
				return md
			}
			whole := run(body)
			for k, v := range tc.want {
				require.Equal(t, v, whole[k], "key %s", k)
			}
			// Two-way splits across the body (every byte of the short streams), then 1-byte chunks.
			step := max(1, len(body)/400)
			for i := 1; i < len(body); i += step {
				require.Equal(t, whole, run(body[:i], body[i:]), "split at %d", i)
			}
			bytesOnly := make([][]byte, len(body))
			for i := range body {
				bytesOnly[i] = body[i : i+1]
			}
			require.Equal(t, whole, run(bytesOnly...), "1-byte chunks")
		})
	}
}
