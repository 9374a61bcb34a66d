package pricing

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCatalog_ExtractUsage(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	tests := []struct {
		name      string
		provider  string
		flavor    string
		body      string
		want      Usage
		wantModel string
	}{
		{
			name: "OpenAIChat", provider: "openai", flavor: "chat",
			body: `{"model": "o4-mini-2025-04-16", "usage": {"prompt_tokens": 2000, "completion_tokens": 800, "total_tokens": 2800,
				"prompt_tokens_details": {"cached_tokens": 1500, "audio_tokens": 0},
				"completion_tokens_details": {"reasoning_tokens": 600, "audio_tokens": 0}}}`,
			want:      Usage{InputTokens: 2000, CacheReadTokens: 1500, OutputTokens: 800, ReasoningTokens: 600},
			wantModel: "o4-mini-2025-04-16",
		},
		{
			name: "OpenAIChatNullDetails", provider: "openai", flavor: "chat",
			body: `{"usage": {"prompt_tokens": 5, "completion_tokens": 6, "prompt_tokens_details": null, "completion_tokens_details": null}}`,
			want: Usage{InputTokens: 5, OutputTokens: 6},
		},
		{
			name: "OpenAIChatAudio", provider: "openai", flavor: "chat",
			body: `{"usage": {"prompt_tokens": 1000, "completion_tokens": 500,
				"prompt_tokens_details": {"audio_tokens": 600}, "completion_tokens_details": {"audio_tokens": 400}}}`,
			want: Usage{InputTokens: 1000, InputAudioTokens: 600, OutputTokens: 500, OutputAudioTokens: 400},
		},
		{
			name: "Completions", provider: "openai", flavor: "completions",
			body: `{"model": "gpt-3.5-turbo-instruct", "usage": {"prompt_tokens": 10, "completion_tokens": 20}}`,
			want: Usage{InputTokens: 10, OutputTokens: 20}, wantModel: "gpt-3.5-turbo-instruct",
		},
		{
			name: "OpenAIResponses", provider: "openai", flavor: "responses",
			body: `{"object": "response", "model": "gpt-4.1", "usage": {"input_tokens": 1200, "output_tokens": 300,
				"input_tokens_details": {"cached_tokens": 1000}, "output_tokens_details": {"reasoning_tokens": 120}}}`,
			want:      Usage{InputTokens: 1200, CacheReadTokens: 1000, OutputTokens: 300, ReasoningTokens: 120},
			wantModel: "gpt-4.1",
		},
		{
			name: "OpenAIResponsesStreamCompleted", provider: "openai", flavor: "responses",
			body: `{"response": {"model": "gpt-4.1", "usage": {"input_tokens": 1200, "output_tokens": 300,
				"input_tokens_details": {"cached_tokens": 1000}, "output_tokens_details": {"reasoning_tokens": 0}}}}`,
			want:      Usage{InputTokens: 1200, CacheReadTokens: 1000, OutputTokens: 300},
			wantModel: "gpt-4.1",
		},
		{
			name: "Embeddings", provider: "openai", flavor: "embeddings",
			body: `{"model": "text-embedding-3-small", "usage": {"prompt_tokens": 1234, "total_tokens": 1234}}`,
			want: Usage{InputTokens: 1234}, wantModel: "text-embedding-3-small",
		},
		{
			// Anthropic's input_tokens excludes cache tokens; the catalog adds them in.
			name: "Anthropic", provider: "anthropic", flavor: "anthropic",
			body: `{"type": "message", "model": "claude-sonnet-4-5", "usage": {"input_tokens": 100,
				"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 50}}`,
			want:      Usage{InputTokens: 3100, CacheWriteTokens: 1000, CacheReadTokens: 2000, OutputTokens: 50},
			wantModel: "claude-sonnet-4-5",
		},
		{
			name: "AnthropicStreamMerge", provider: "anthropic", flavor: "anthropic",
			body: `{"message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 100,
				"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 1}},
				"usage": {"output_tokens": 50}}`,
			want:      Usage{InputTokens: 3100, CacheWriteTokens: 1000, CacheReadTokens: 2000, OutputTokens: 50},
			wantModel: "claude-sonnet-4-5",
		},
		{
			// Newer message_delta events repeat the (cumulative) input counts: they win.
			name: "AnthropicStreamDeltaWins", provider: "anthropic", flavor: "anthropic",
			body: `{"message": {"usage": {"input_tokens": 100, "cache_read_input_tokens": 0, "output_tokens": 1}},
				"usage": {"input_tokens": 120, "cache_read_input_tokens": 30, "cache_creation_input_tokens": null, "output_tokens": 50}}`,
			want: Usage{InputTokens: 150, CacheReadTokens: 30, OutputTokens: 50},
		},
		{
			name: "AnthropicOnBedrock", provider: "bedrock", flavor: "anthropic",
			body: `{"usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}}`,
			want: Usage{InputTokens: 15, CacheReadTokens: 5, OutputTokens: 7},
		},
		{
			name: "BedrockConverse", provider: "aws", flavor: "default",
			body: `{"usage": {"inputTokens": 10, "cacheReadInputTokens": 4, "outputTokens": 3}}`,
			want: Usage{InputTokens: 14, CacheReadTokens: 4, OutputTokens: 3},
		},
		{
			// candidatesTokenCount excludes thoughts; the catalog adds thoughts to output.
			name: "Gemini", provider: "google", flavor: "gemini",
			body: `{"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": 1000,
				"cachedContentTokenCount": 200, "candidatesTokenCount": 300, "thoughtsTokenCount": 700, "totalTokenCount": 2000}}`,
			want:      Usage{InputTokens: 1000, CacheReadTokens: 200, OutputTokens: 1000, ReasoningTokens: 700},
			wantModel: "gemini-2.5-flash",
		},
		{
			name: "GeminiModalities", provider: "google", flavor: "gemini",
			body: `{"usageMetadata": {"promptTokenCount": 1000,
				"promptTokensDetails": [{"modality": "TEXT", "tokenCount": 400}, {"modality": "AUDIO", "tokenCount": 600}],
				"cachedContentTokenCount": 500,
				"cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 300}, {"modality": "TEXT", "tokenCount": 200}],
				"candidatesTokenCount": 100,
				"candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 100}]}}`,
			want: Usage{InputTokens: 1000, InputAudioTokens: 600, CacheReadTokens: 500, CacheAudioReadTokens: 300, OutputTokens: 100},
		},
		{
			name: "GeminiNoProvider", flavor: "gemini",
			body: `{"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}`,
			want: Usage{InputTokens: 3, OutputTokens: 4},
		},
		{
			name: "AzureChat", provider: "azure", flavor: "chat",
			body: `{"model": "gpt-4o-2024-08-06", "usage": {"prompt_tokens": 10, "completion_tokens": 2,
				"prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 0}}}`,
			want: Usage{InputTokens: 10, CacheReadTokens: 4, OutputTokens: 2}, wantModel: "gpt-4o-2024-08-06",
		},
		{
			name: "SelfHostedOpenAICompatible", provider: "", flavor: "openai-compatible",
			body: `{"model": "meta-llama/Llama-3.1-8B-Instruct", "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}`,
			want: Usage{InputTokens: 9, OutputTokens: 12}, wantModel: "meta-llama/Llama-3.1-8B-Instruct",
		},
		{
			name: "UnknownProviderChat", provider: "vllm", flavor: "chat",
			body: `{"usage": {"prompt_tokens": 9, "completion_tokens": 12}}`,
			want: Usage{InputTokens: 9, OutputTokens: 12},
		},
		{
			name: "ProviderWithoutExtractors", provider: "perplexity", flavor: "chat",
			body: `{"model": "sonar", "usage": {"prompt_tokens": 9, "completion_tokens": 12}}`,
			want: Usage{InputTokens: 9, OutputTokens: 12}, wantModel: "sonar",
		},
		{
			name: "ProviderDefaultIsChatShaped", provider: "groq", flavor: "chat",
			body: `{"usage": {"prompt_tokens": 9, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 3}}}`,
			want: Usage{InputTokens: 9, CacheReadTokens: 3, OutputTokens: 12},
		},
		{
			name: "InferredChat", provider: "openai",
			body: `{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}`,
			want: Usage{InputTokens: 1, OutputTokens: 2},
		},
		{
			name: "InferredAnthropicStream", provider: "anthropic",
			body: `{"message": {"usage": {"input_tokens": 1, "output_tokens": 1}}, "usage": {"output_tokens": 9}}`,
			want: Usage{InputTokens: 1, OutputTokens: 9},
		},
		{
			name: "InferredGemini",
			body: `{"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}`,
			want: Usage{InputTokens: 3, OutputTokens: 4},
		},
		{
			name: "StringNumbers", provider: "openai", flavor: "chat",
			body: `{"usage": {"prompt_tokens": "12", "completion_tokens": "5"}}`,
			want: Usage{InputTokens: 12, OutputTokens: 5},
		},
		{
			name: "IntegralFloatsAndExponents", provider: "openai", flavor: "chat",
			body: `{"usage": {"prompt_tokens": 12.0, "completion_tokens": 1e3}}`,
			want: Usage{InputTokens: 12, OutputTokens: 1000},
		},
		{
			name: "MaxSafeInteger", provider: "openai", flavor: "chat",
			body: `{"usage": {"prompt_tokens": 9007199254740992, "completion_tokens": 0}}`,
			want: Usage{InputTokens: 1 << 53},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, decode := range []func(testing.TB, string) map[string]any{body, bodyNumbers} {
				b := decode(t, tt.body)
				u, model, err := c.ExtractUsage(tt.provider, tt.flavor, b)
				require.NoError(t, err)
				require.Equal(t, tt.want, u)
				require.Equal(t, tt.wantModel, model)
			}
		})
	}
}

func TestCatalog_ExtractUsageErrors(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	tests := []struct {
		name     string
		provider string
		flavor   string
		body     string
		wantIs   error
		wantErr  string
	}{
		{name: "EmptyBody", provider: "openai", flavor: "chat", body: `{}`,
			wantIs: ErrNoUsage, wantErr: "no usage in response: empty body"},
		{name: "NoUsageObject", provider: "openai", flavor: "chat", body: `{"model": "gpt-4o", "choices": []}`,
			wantIs: ErrNoUsage, wantErr: "no usage in response: no usage found"},
		{name: "NullUsage", provider: "openai", flavor: "chat", body: `{"usage": null}`,
			wantIs: ErrNoUsage, wantErr: "no usage in response: no usage found"},
		{name: "NoUsageInferred", provider: "openai", body: `{"model": "gpt-4o"}`,
			wantIs: ErrNoUsage, wantErr: "no usage in response: no usage object of a known shape"},
		{name: "EmptyGeminiUsage", provider: "google", flavor: "gemini", body: `{"usageMetadata": {}}`,
			wantIs: ErrNoUsage, wantErr: "no usage in response: usageMetadata holds no token counts"},
		{name: "MissingCompletionTokens", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": 3}}`,
			wantIs: ErrIncompleteUsage, wantErr: "incomplete usage: usage.completion_tokens: missing"},
		{name: "MissingOutputTokensAnthropic", provider: "anthropic", flavor: "anthropic", body: `{"usage": {"input_tokens": 3}}`,
			wantIs: ErrIncompleteUsage, wantErr: "incomplete usage: usage.output_tokens: missing"},
		{name: "AnthropicStreamWithoutFinalDelta", provider: "anthropic", flavor: "anthropic",
			body:   `{"message": {"usage": {"input_tokens": 3, "output_tokens": 1}}}`,
			wantIs: ErrIncompleteUsage, wantErr: "incomplete usage: usage: missing (only message.usage from message_start: the stream ended before its final message_delta)"},
		{name: "Negative", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": -3, "completion_tokens": 1}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.prompt_tokens: negative value -3"},
		{name: "Fractional", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": 3.5, "completion_tokens": 1}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.prompt_tokens: 3.5 is not an integer"},
		{name: "TooLarge", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": 9007199254740994, "completion_tokens": 1}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.prompt_tokens: 9007199254740994 exceeds 2^53"},
		{name: "HugeFloat", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": 1e300, "completion_tokens": 1}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.prompt_tokens: 1e+300 exceeds 2^53"},
		{name: "String", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": "many", "completion_tokens": 1}}`,
			wantIs: ErrInvalidUsage, wantErr: `invalid usage: usage.prompt_tokens: invalid number "many"`},
		{name: "Bool", provider: "openai", flavor: "chat", body: `{"usage": {"prompt_tokens": true, "completion_tokens": 1}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.prompt_tokens: want a number, got a boolean"},
		{name: "OptionalFieldInvalid", provider: "openai", flavor: "chat",
			body:   `{"usage": {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -1}}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.prompt_tokens_details.cached_tokens: negative value -1"},
		{name: "ReasoningInvalid", provider: "openai", flavor: "chat",
			body:   `{"usage": {"prompt_tokens": 3, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 0.5}}}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage.completion_tokens_details.reasoning_tokens: 0.5 is not an integer"},
		{name: "UsageNotObject", provider: "openai", flavor: "chat", body: `{"usage": [1, 2]}`,
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: usage: want an object, got a list"},
		{name: "UnknownFlavor", provider: "openai", flavor: "speech", body: `{"usage": {}}`,
			wantIs: ErrUnknownFlavor, wantErr: `unknown api flavor "speech" for provider openai`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := c.ExtractUsage(tt.provider, tt.flavor, body(t, tt.body))
			require.ErrorIs(t, err, tt.wantIs)
			require.EqualError(t, err, tt.wantErr)
		})
	}

	t.Run("NotFinite", func(t *testing.T) {
		t.Parallel()
		for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			b := map[string]any{"usage": map[string]any{"prompt_tokens": f, "completion_tokens": 1.0}}
			_, _, err := c.ExtractUsage("openai", "chat", b)
			require.ErrorIs(t, err, ErrInvalidUsage)
			require.Contains(t, err.Error(), "usage.prompt_tokens: ")
			require.Contains(t, err.Error(), "is not a finite number")
		}
	})
	t.Run("GoIntegers", func(t *testing.T) {
		t.Parallel()
		b := map[string]any{"usage": map[string]any{"prompt_tokens": int64(3), "completion_tokens": uint32(4)}}
		u, _, err := c.ExtractUsage("openai", "chat", b)
		require.NoError(t, err)
		require.Equal(t, Usage{InputTokens: 3, OutputTokens: 4}, u)
		b = map[string]any{"usage": map[string]any{"prompt_tokens": -3, "completion_tokens": 4}}
		_, _, err = c.ExtractUsage("openai", "chat", b)
		require.EqualError(t, err, "invalid usage: usage.prompt_tokens: negative value -3")
	})
}

func TestInferFlavor(t *testing.T) {
	t.Parallel()
	tests := map[string]Flavor{
		`{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}`:                                   FlavorChat,
		`{"usage": {"prompt_tokens": 1, "total_tokens": 1}}`:                                        FlavorEmbeddings,
		`{"object": "list", "usage": {"prompt_tokens": 1}}`:                                         FlavorEmbeddings,
		`{"usage": {"prompt_tokens": 1}}`:                                                           FlavorChat,
		`{"usage": {"prompt_tokens": 1, "total_tokens": 3}}`:                                        FlavorChat,
		`{"object": "response", "usage": {"input_tokens": 1, "output_tokens": 2}}`:                  FlavorResponses,
		`{"usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}}`:                     FlavorResponses,
		`{"response": {"usage": {"input_tokens": 1, "output_tokens": 2}}}`:                          FlavorResponses,
		`{"type": "message", "usage": {"input_tokens": 1, "output_tokens": 2}}`:                     FlavorAnthropic,
		`{"usage": {"input_tokens": 1, "output_tokens": 2}}`:                                        FlavorAnthropic,
		`{"message": {"usage": {"input_tokens": 1}}, "usage": {"output_tokens": 2}}`:                FlavorAnthropic,
		`{"message": {"usage": {"input_tokens": 1}}}`:                                               FlavorAnthropic,
		`{"usageMetadata": {"promptTokenCount": 1}}`:                                                FlavorGemini,
		`{"usage": {"something": 1}}`:                                                               "",
		`{"model": "x"}`:                                                                            "",
		`{"usage": "x"}`:                                                                            "",
		`{"usage": {"input_tokens": 1, "output_tokens": 2, "input_tokens_details": {}}, "x": true}`: FlavorResponses,
	}
	for in, want := range tests {
		require.Equal(t, want, InferFlavor(body(t, in)), in)
	}
}

// FuzzExtractUsage feeds random JSON bodies through every flavour: no panic, and either an
// error or a non-negative usage whose values are within 2^53 per field.
func FuzzExtractUsage(f *testing.F) {
	c, err := Embedded()
	if err != nil {
		f.Fatal(err)
	}
	seeds := []string{
		`{"model": "gpt-4o", "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 1}}}`,
		`{"object": "response", "usage": {"input_tokens": 1, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}}`,
		`{"response": {"usage": {"input_tokens": 1, "output_tokens": 2}}}`,
		`{"usage": {"input_tokens": 1, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 3, "output_tokens": 4}}`,
		`{"message": {"usage": {"input_tokens": 1, "output_tokens": 1}}, "usage": {"output_tokens": 9}}`,
		`{"usageMetadata": {"promptTokenCount": 10, "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 4}], "candidatesTokenCount": 3, "thoughtsTokenCount": 2}}`,
		`{"usage": {"prompt_tokens": "1e3", "completion_tokens": 1.0}}`,
		`{"usage": {"prompt_tokens": -1, "completion_tokens": 1e400}}`,
		`{"usage.prompt_tokens": 1, "usage.completion_tokens": 2}`,
		`{"usage": [], "message": 1, "response": null}`,
		`{"usageMetadata": {"cacheTokensDetails": [null, 1, {"modality": 7}, {"modality": "AUDIO"}]}}`,
	}
	for i, s := range seeds {
		f.Add(s, i%len(fuzzFlavors), i%len(fuzzProviders), i%2 == 0)
	}
	f.Fuzz(func(t *testing.T, js string, fi, pi int, useNumber bool) {
		d := json.NewDecoder(strings.NewReader(js))
		if useNumber {
			d.UseNumber()
		}
		var b map[string]any
		if d.Decode(&b) != nil {
			return
		}
		flavor := fuzzFlavors[uint(fi)%uint(len(fuzzFlavors))]
		provider := fuzzProviders[uint(pi)%uint(len(fuzzProviders))]
		u, _, err := c.ExtractUsage(provider, flavor, b)
		if err != nil {
			return
		}
		for _, v := range []int64{u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens,
			u.ReasoningTokens, u.InputAudioTokens, u.OutputAudioTokens, u.CacheAudioReadTokens} {
			require.GreaterOrEqual(t, v, int64(0))
			require.LessOrEqual(t, v, int64(4)<<53) // a field sums at most a few counts ≤ 2^53
		}
		if m, ok := c.Lookup(provider, "gpt-4o"); ok {
			_, _ = m.Cost(u) // must not panic
		}
	})
}

var (
	fuzzFlavors   = []string{"", "chat", "completions", "responses", "embeddings", "anthropic", "gemini", "default", "tokens"}
	fuzzProviders = []string{"", "openai", "anthropic", "google", "azure", "aws", "cohere", "groq", "vllm"}
)
