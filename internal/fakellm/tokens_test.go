package fakellm

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestOpenAIPromptTokens: the fake reports o200k counts with OpenAI's chat framing (3 per
// message + role + content, 3 for the reply): "hello world" is 2 tokens, "user" 1.
func TestOpenAIPromptTokens(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		api, body string
		want      int64
	}{
		{"chat", `{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}`, 3 + 3 + 1 + 2},
		{"chat", `{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"hello world"}]}]}`, 3 + 3 + 1 + 2},
		{"completions", `{"model":"x","prompt":["hello world","hello world"]}`, 4},
		{"embeddings", `{"model":"x","input":[[1,2,3],[4]]}`, 4},
		{"responses", `{"model":"x","input":"hello world","instructions":"hello world"}`, 2 + 3 + 2 + 3},
	} {
		n, ok := openAIPromptTokens(c.api, []byte(c.body))
		require.True(t, ok, c.body)
		require.Equal(t, c.want, n, c.body)
	}
	_, ok := openAIPromptTokens("anthropic", []byte(`{"messages":[]}`))
	require.False(t, ok, "other APIs keep the body-size default")
	// The reported attack's script: Yi syllables cost about 3 o200k tokens each (40,000 of
	// them ~119,000), not the ~1.5 the old estimate assumed.
	var b strings.Builder
	for i := range 4_000 {
		b.WriteRune(rune(0xA000 + i%1165))
	}
	n, ok := openAIPromptTokens("chat", []byte(`{"messages":[{"role":"user","content":"`+b.String()+`"}]}`))
	require.True(t, ok)
	require.Greater(t, n, int64(11_000))
}
