package accesslog

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/pricing"
)

// jsonObject decodes JSON the way an Envoy Struct arrives (numbers as float64).
func jsonObject(t testing.TB, s string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(s), &m), "test JSON %s", s)
	return m
}

func TestUnflatten(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want string
	}{
		{
			name: "DottedKeys",
			in:   `{"usage.prompt_tokens": 12, "usage.prompt_tokens_details.cached_tokens": 3, "model": "gpt-4o"}`,
			want: `{"usage": {"prompt_tokens": 12, "prompt_tokens_details": {"cached_tokens": 3}}, "model": "gpt-4o"}`,
		},
		{
			name: "AnthropicStream",
			in:   `{"message.usage.input_tokens": 5, "message.usage.output_tokens": 1, "usage.output_tokens": 40, "message.model": "claude"}`,
			want: `{"message": {"usage": {"input_tokens": 5, "output_tokens": 1}, "model": "claude"}, "usage": {"output_tokens": 40}}`,
		},
		{
			name: "StructValueMerged",
			in:   `{"usage": {"prompt_tokens": 1, "completion_tokens": 2}, "usage.prompt_tokens_details.cached_tokens": 1}`,
			want: `{"usage": {"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}}}`,
		},
		{
			name: "DottedScalarWinsOverStructField",
			in:   `{"usage": {"prompt_tokens": 1}, "usage.prompt_tokens": 2}`,
			want: `{"usage": {"prompt_tokens": 2}}`,
		},
		{
			name: "DeeperPathReplacesScalar",
			in:   `{"usage": 5, "usage.prompt_tokens": 2}`,
			want: `{"usage": {"prompt_tokens": 2}}`,
		},
		{
			name: "DottedObjectsMerged",
			in:   `{"response.usage": {"input_tokens": 1}, "response.usage.output_tokens": 2, "response.model": "m"}`,
			want: `{"response": {"usage": {"input_tokens": 1, "output_tokens": 2}, "model": "m"}}`,
		},
		{name: "Empty", in: `{}`, want: `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := jsonObject(t, tt.in)
			before, err := json.Marshal(in)
			require.NoError(t, err)
			got := unflatten(in)
			require.Equal(t, jsonObject(t, tt.want), got, "unflatten(%s)", tt.in)
			after, err := json.Marshal(in)
			require.NoError(t, err)
			require.JSONEq(t, string(before), string(after), "input modified")
		})
	}
}

// The catalog's extractors read what unflatten rebuilds from flat usage metadata.
func TestUnflatten_Priced(t *testing.T) {
	t.Parallel()
	c, err := pricing.Embedded()
	require.NoError(t, err)
	flat := jsonObject(t, `{"usage.prompt_tokens": 12, "usage.completion_tokens": 5, "usage.prompt_tokens_details.cached_tokens": 4, "model": "gpt-4o"}`)
	u, model, err := c.ExtractUsage("openai", string(pricing.FlavorChat), unflatten(flat))
	require.NoError(t, err)
	require.Equal(t, pricing.Usage{InputTokens: 12, CacheReadTokens: 4, OutputTokens: 5}, u, "usage read from the dotted paths")
	require.Equal(t, "gpt-4o", model, "model read from the flat metadata")
}

// FuzzUnflatten: for any JSON object, unflatten does not panic or modify its input, and what
// it rebuilds is either refused by the extractors or priced with non-negative counts.
func FuzzUnflatten(f *testing.F) {
	c, err := pricing.Embedded()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		`{"usage.prompt_tokens": 12, "usage.completion_tokens": 5, "model": "gpt-4o"}`,
		`{"usage": {"prompt_tokens": 1}, "usage.prompt_tokens": 2, "usage.x.y": 3}`,
		`{"usage": 5, "usage.prompt_tokens": 2, "..": 1, ".a.": {"b.c": 2}}`,
		`{"message.usage.input_tokens": 5, "usage.output_tokens": 40}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, js string) {
		var in map[string]any
		if json.Unmarshal([]byte(js), &in) != nil {
			return
		}
		before, err := json.Marshal(in)
		require.NoError(t, err, "re-encoding decoded JSON")
		out := unflatten(in)
		after, err := json.Marshal(in)
		require.NoError(t, err, "re-encoding decoded JSON")
		require.JSONEq(t, string(before), string(after), "unflatten modified its input")
		for _, flavor := range []string{"", "chat", "responses", "anthropic", "gemini"} {
			u, _, err := c.ExtractUsage("openai", flavor, out)
			if err != nil {
				continue
			}
			require.GreaterOrEqual(t, min(u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens), int64(0),
				"usage counts are never negative: %+v", u)
		}
	})
}

func BenchmarkUnflattenPriceResponse(b *testing.B) {
	c, err := pricing.Embedded()
	if err != nil {
		b.Fatal(err)
	}
	flat := map[string]any{"usage.prompt_tokens": 12.0, "usage.completion_tokens": 5.0, "usage.prompt_tokens_details.cached_tokens": 4.0, "model": "gpt-4o"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.PriceResponse("openai", "", "gpt-4o", unflatten(flat), time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}
