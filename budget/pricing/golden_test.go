package pricing

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCatalog_PriceResponse prices real-shaped provider responses end to end (ExtractUsage,
// Lookup, CostAt) — the path settlement and `purser cost` share. Every amount is worked out
// by hand in the comments; prices are USD per million tokens, i.e. micros per token.
func TestCatalog_PriceResponse(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	noon := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		provider  string
		flavor    string
		model     string
		at        time.Time
		body      string
		wantModel string
		wantUsage Usage
		want      Cost
	}{
		{
			// o4-mini: input 1.1, cache_read 0.275, output 4.4.
			// input (2000 − 1500) × 1.1 = 550, cached 1500 × 0.275 = 412.5 → 962.5 → Input 963.
			// output 800 × 4.4 = 3520 (the 600 reasoning tokens are inside the 800).
			// total 962.5 + 3520 = 4482.5 → 4483; Output = 4483 − 963 = 3520.
			name: "OpenAIChatCachedAndReasoning", provider: "openai", flavor: "chat", at: noon,
			body: `{"model": "o4-mini-2025-04-16", "usage": {"prompt_tokens": 2000, "completion_tokens": 800,
				"prompt_tokens_details": {"cached_tokens": 1500}, "completion_tokens_details": {"reasoning_tokens": 600}}}`,
			wantModel: "o4-mini",
			wantUsage: Usage{InputTokens: 2000, CacheReadTokens: 1500, OutputTokens: 800, ReasoningTokens: 600},
			want:      Cost{Input: 963, Output: 3520, Total: 4483},
		},
		{
			// gpt-4.1: input 2, cache_read 0.5, output 8.
			// input (1200 − 1000) × 2 = 400, cached 1000 × 0.5 = 500 → 900; output 300 × 8 = 2400.
			name: "OpenAIResponses", provider: "openai", flavor: "responses", at: noon,
			body: `{"object": "response", "model": "gpt-4.1-2025-04-14", "usage": {"input_tokens": 1200, "output_tokens": 300,
				"input_tokens_details": {"cached_tokens": 1000}, "output_tokens_details": {"reasoning_tokens": 0}}}`,
			wantModel: "gpt-4.1",
			wantUsage: Usage{InputTokens: 1200, CacheReadTokens: 1000, OutputTokens: 300},
			want:      Cost{Input: 900, Output: 2400, Total: 3300},
		},
		{
			// Same usage from the response.completed streaming event: same 3300.
			name: "OpenAIResponsesStreaming", provider: "openai", flavor: "responses", at: noon,
			body: `{"response": {"model": "gpt-4.1", "usage": {"input_tokens": 1200, "output_tokens": 300,
				"input_tokens_details": {"cached_tokens": 1000}}}}`,
			wantModel: "gpt-4.1",
			wantUsage: Usage{InputTokens: 1200, CacheReadTokens: 1000, OutputTokens: 300},
			want:      Cost{Input: 900, Output: 2400, Total: 3300},
		},
		{
			// text-embedding-3-small: input 0.02. 1234 × 0.02 = 24.68 → 25.
			name: "Embeddings", provider: "openai", flavor: "embeddings", at: noon,
			body:      `{"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 1234, "total_tokens": 1234}}`,
			wantModel: "text-embedding-3-small",
			wantUsage: Usage{InputTokens: 1234},
			want:      Cost{Input: 25, Output: 0, Total: 25},
		},
		{
			// claude-sonnet-4-5 below its 200k tier: input 3, cache_write 3.75, cache_read 0.3,
			// output 15. Input total 100 + 1000 + 2000 = 3100.
			// 100 × 3 = 300, 1000 × 3.75 = 3750, 2000 × 0.3 = 600 → 4650; 50 × 15 = 750.
			name: "AnthropicCacheWriteAndRead", provider: "anthropic", flavor: "anthropic", at: noon,
			body: `{"type": "message", "model": "claude-sonnet-4-5-20250929", "usage": {"input_tokens": 100,
				"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 50}}`,
			wantModel: "claude-sonnet-4-5",
			wantUsage: Usage{InputTokens: 3100, CacheWriteTokens: 1000, CacheReadTokens: 2000, OutputTokens: 50},
			want:      Cost{Input: 4650, Output: 750, Total: 5400},
		},
		{
			// The same call streamed: message_start says output_tokens 1, the final
			// message_delta 50; the merge keeps 50 and the cache counts: same 5400.
			name: "AnthropicStreamingMerge", provider: "anthropic", flavor: "anthropic", at: noon,
			body: `{"message": {"model": "claude-sonnet-4-5-20250929", "usage": {"input_tokens": 100,
				"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 1}},
				"usage": {"output_tokens": 50}}`,
			wantModel: "claude-sonnet-4-5",
			wantUsage: Usage{InputTokens: 3100, CacheWriteTokens: 1000, CacheReadTokens: 2000, OutputTokens: 50},
			want:      Cost{Input: 4650, Output: 750, Total: 5400},
		},
		{
			// claude-sonnet-4-5 above the tier: input total 150000 + 40000 + 20000 = 210000 > 200000,
			// so every kind pays its tier price: 150000 × 6 = 900000, 40000 × 7.5 = 300000,
			// 20000 × 0.6 = 12000 → 1212000; output 2000 × 22.5 = 45000.
			name: "AnthropicTieredAbove", provider: "anthropic", flavor: "anthropic", at: noon,
			body: `{"model": "claude-sonnet-4-5", "usage": {"input_tokens": 150000,
				"cache_creation_input_tokens": 40000, "cache_read_input_tokens": 20000, "output_tokens": 2000}}`,
			wantModel: "claude-sonnet-4-5",
			wantUsage: Usage{InputTokens: 210000, CacheWriteTokens: 40000, CacheReadTokens: 20000, OutputTokens: 2000},
			want:      Cost{Input: 1212000, Output: 45000, Total: 1257000},
		},
		{
			// gemini-2.5-flash: input 0.3, cache_read 0.03, output 2.5.
			// input (1000 − 200) × 0.3 = 240, cached 200 × 0.03 = 6 → 246.
			// output (candidates 300 + thoughts 700) × 2.5 = 2500. Reasoning 700 recorded.
			name: "GeminiThoughts", provider: "google", flavor: "gemini", at: noon,
			body: `{"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": 1000,
				"cachedContentTokenCount": 200, "candidatesTokenCount": 300, "thoughtsTokenCount": 700, "totalTokenCount": 2000}}`,
			wantModel: "gemini-2.5-flash",
			wantUsage: Usage{InputTokens: 1000, CacheReadTokens: 200, OutputTokens: 1000, ReasoningTokens: 700},
			want:      Cost{Input: 246, Output: 2500, Total: 2746},
		},
		{
			// gemini-2.5-pro below its tier: prompt 200000 is not above 200000.
			// 200000 × 1.25 = 250000; 1000 × 10 = 10000.
			name: "GeminiTierAtThreshold", provider: "google", flavor: "gemini", at: noon,
			body:      `{"modelVersion": "gemini-2.5-pro", "usageMetadata": {"promptTokenCount": 200000, "candidatesTokenCount": 1000}}`,
			wantModel: "gemini-2.5-pro",
			wantUsage: Usage{InputTokens: 200000, OutputTokens: 1000},
			want:      Cost{Input: 250000, Output: 10000, Total: 260000},
		},
		{
			// One token more crosses the tier: 200001 × 2.5 = 500002.5 → Input 500003;
			// output 1000 × 15 = 15000; total 515002.5 → 515003; Output 515003 − 500003 = 15000.
			name: "GeminiTierAbove", provider: "google", flavor: "gemini", at: noon,
			body:      `{"modelVersion": "gemini-2.5-pro", "usageMetadata": {"promptTokenCount": 200001, "candidatesTokenCount": 1000}}`,
			wantModel: "gemini-2.5-pro",
			wantUsage: Usage{InputTokens: 200001, OutputTokens: 1000},
			want:      Cost{Input: 500003, Output: 15000, Total: 515003},
		},
		{
			// gpt-audio: input 2.5, output 10, input_audio 32, output_audio 64.
			// input text (1000 − 600) × 2.5 = 1000, audio 600 × 32 = 19200 → 20200.
			// output text (500 − 400) × 10 = 1000, audio 400 × 64 = 25600 → 26600.
			name: "OpenAIAudio", provider: "openai", flavor: "chat", at: noon,
			body: `{"model": "gpt-audio-2025-08-28", "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
				"prompt_tokens_details": {"audio_tokens": 600, "cached_tokens": 0},
				"completion_tokens_details": {"audio_tokens": 400, "reasoning_tokens": 0}}}`,
			wantModel: "gpt-audio",
			wantUsage: Usage{InputTokens: 1000, InputAudioTokens: 600, OutputTokens: 500, OutputAudioTokens: 400},
			want:      Cost{Input: 20200, Output: 26600, Total: 46800},
		},
		{
			// gemini-2.5-flash with audio: input 0.3, cache_read 0.03, input_audio 1,
			// cache_audio_read 0.1, output 2.5. Parts: cached audio 300 × 0.1 = 30;
			// cached text (500 − 300) × 0.03 = 6; uncached audio (600 − 300) × 1 = 300;
			// uncached text (1000 − 200 − 300 − 300) × 0.3 = 60 → 396. Output 100 × 2.5 = 250.
			name: "GeminiCachedAudio", provider: "google", flavor: "gemini", at: noon,
			body: `{"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": 1000,
				"promptTokensDetails": [{"modality": "TEXT", "tokenCount": 400}, {"modality": "AUDIO", "tokenCount": 600}],
				"cachedContentTokenCount": 500,
				"cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 300}, {"modality": "TEXT", "tokenCount": 200}],
				"candidatesTokenCount": 100}}`,
			wantModel: "gemini-2.5-flash",
			wantUsage: Usage{InputTokens: 1000, InputAudioTokens: 600, CacheReadTokens: 500, CacheAudioReadTokens: 300, OutputTokens: 100},
			want:      Cost{Input: 396, Output: 250, Total: 646},
		},
		{
			// o3 before its 2025-06-10 price cut: input 10, output 40.
			// 1000 × 10 = 10000; 1000 × 40 = 40000.
			name: "PriceListBeforeCut", provider: "openai", flavor: "chat", at: time.Date(2025, 6, 9, 18, 0, 0, 0, time.UTC),
			body:      `{"model": "o3-2025-04-16", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}`,
			wantModel: "o3",
			wantUsage: Usage{InputTokens: 1000, OutputTokens: 1000},
			want:      Cost{Input: 10000, Output: 40000, Total: 50000},
		},
		{
			// o3 after the cut: input 2, output 8. 2000 + 8000.
			name: "PriceListAfterCut", provider: "openai", flavor: "chat", at: time.Date(2025, 6, 10, 6, 0, 0, 0, time.UTC),
			body:      `{"model": "o3-2025-04-16", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}`,
			wantModel: "o3",
			wantUsage: Usage{InputTokens: 1000, OutputTokens: 1000},
			want:      Cost{Input: 2000, Output: 8000, Total: 10000},
		},
		{
			// gpt-4o-mini, input 0.15: 7 × 0.15 = 1.05 micros → 2. Never free.
			name: "TinyCallIsNotFree", provider: "openai", flavor: "chat", at: noon,
			body:      `{"model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 0}}`,
			wantModel: "gpt-4o-mini",
			wantUsage: Usage{InputTokens: 7},
			want:      Cost{Input: 2, Output: 0, Total: 2},
		},
		{
			// Azure deployment "prod-4o" is unknown; the body's model falls back to OpenAI's gpt-4o
			// (2.5 / 1.25 / 10): (10 − 4) × 2.5 = 15, 4 × 1.25 = 5 → 20; 2 × 10 = 20.
			name: "AzureDeployment", provider: "azure", flavor: "chat", model: "prod-4o", at: noon,
			body: `{"model": "gpt-4o-2024-08-06", "usage": {"prompt_tokens": 10, "completion_tokens": 2,
				"prompt_tokens_details": {"cached_tokens": 4}}}`,
			wantModel: "gpt-4o",
			wantUsage: Usage{InputTokens: 10, CacheReadTokens: 4, OutputTokens: 2},
			want:      Cost{Input: 20, Output: 20, Total: 40},
		},
		{
			// A body without a model: the requested model prices it. gpt-4o-mini:
			// 1000 × 0.15 = 150; 100 × 0.6 = 60.
			name: "ModelFromRequest", provider: "", flavor: "openai-compatible", model: "gpt-4o-mini", at: noon,
			body:      `{"usage": {"prompt_tokens": 1000, "completion_tokens": 100}}`,
			wantModel: "gpt-4o-mini",
			wantUsage: Usage{InputTokens: 1000, OutputTokens: 100},
			want:      Cost{Input: 150, Output: 60, Total: 210},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := c.PriceResponse(tt.provider, tt.flavor, tt.model, body(t, tt.body), tt.at)
			require.NoError(t, err)
			require.Equal(t, tt.wantModel, p.Model.ID)
			require.Equal(t, tt.wantUsage, p.Usage)
			require.Equal(t, tt.want, p.Cost)
		})
	}
}

func TestCatalog_PriceResponseErrors(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	now := time.Now()
	_, err := c.PriceResponse("openai", "chat", "", body(t, `{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}`), now)
	require.ErrorIs(t, err, ErrUnknownModel)
	require.EqualError(t, err, "unknown model: no model given and none in the response")

	_, err = c.PriceResponse("openai", "chat", "gpt-x", body(t, `{"model": "gpt-y", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}`), now)
	require.EqualError(t, err, `unknown model: neither "gpt-y" nor "gpt-x" (provider "openai")`)

	p, err := c.PriceResponse("openai", "chat", "gpt-4o", body(t, `{"model": "gpt-4o", "choices": []}`), now)
	require.ErrorIs(t, err, ErrNoUsage)
	require.Equal(t, "gpt-4o", p.BodyModel)

	_, err = c.PriceResponse("openai", "chat", "gpt-4o", body(t, `{"usage": {"prompt_tokens": 1, "completion_tokens": 1,
		"prompt_tokens_details": {"cached_tokens": 5}}}`), now)
	require.ErrorIs(t, err, ErrInvalidUsage)
	require.EqualError(t, err, "price openai/gpt-4o: invalid usage: input_tokens (1) is less than the sum of its separately priced parts")
}
