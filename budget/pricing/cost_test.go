package pricing

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Prices used below (USD per million tokens = micros per token), from the embedded catalog:
//
//	openai/gpt-4o-mini        input 0.15  cache_read 0.075  output 0.6
//	openai/gpt-4o             input 2.5   cache_read 1.25   output 10
//	openai/gpt-4o-realtime-preview input 5, cache_read 2.5, output 20, input_audio 40,
//	                          cache_audio_read 2.5, output_audio 80
//	anthropic/claude-sonnet-4-5  input 3 (>200k: 6), cache_write 3.75 (7.5), cache_read 0.3 (0.6),
//	                          output 15 (22.5)
//	perplexity/sonar          input 1, output 1, requests_kcount 12
func TestModel_Cost(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		provider string
		model    string
		usage    Usage
		want     Cost
	}{
		{
			// 7 × 0.15 = 1.05 micros → 2 (the old service charged 0 for this).
			name: "TinyCallRoundsUp", provider: "openai", model: "gpt-4o-mini",
			usage: Usage{InputTokens: 7},
			want:  Cost{Input: 2, Output: 0, Total: 2},
		},
		{
			// input 1.05, output 1 × 0.6 = 0.6, exact total 1.65 → 2; Input ⌈1.05⌉ = 2,
			// Output = 2 − 2 = 0 (⌊0.6⌋): Input + Output == Total.
			name: "SplitAddsUp", provider: "openai", model: "gpt-4o-mini",
			usage: Usage{InputTokens: 7, OutputTokens: 1},
			want:  Cost{Input: 2, Output: 0, Total: 2},
		},
		{
			// (1000 − 400) × 2.5 + 400 × 1.25 = 1500 + 500 = 2000; 200 × 10 = 2000.
			name: "CachedInput", provider: "openai", model: "gpt-4o",
			usage: Usage{InputTokens: 1000, CacheReadTokens: 400, OutputTokens: 200},
			want:  Cost{Input: 2000, Output: 2000, Total: 4000},
		},
		{
			// Reasoning is part of OutputTokens and not charged twice: 300 × 10 = 3000.
			name: "ReasoningNotDoubleCharged", provider: "openai", model: "gpt-4o",
			usage: Usage{InputTokens: 100, OutputTokens: 300, ReasoningTokens: 250},
			want:  Cost{Input: 250, Output: 3000, Total: 3250},
		},
		{
			// Input side: cached audio 100 × 2.5 = 250; cache read (300 − 100) × 2.5 = 500;
			// input audio (500 − 100) × 40 = 16000; text (1000 − 200 − 400 − 100) × 5 = 1500
			// → 18250. Output: audio 50 × 80 = 4000, text (200 − 50) × 20 = 3000 → 7000.
			name: "AudioAndCachedAudio", provider: "openai", model: "gpt-4o-realtime-preview",
			usage: Usage{InputTokens: 1000, CacheReadTokens: 300, InputAudioTokens: 500, CacheAudioReadTokens: 100,
				OutputTokens: 200, OutputAudioTokens: 50},
			want: Cost{Input: 18250, Output: 7000, Total: 25250},
		},
		{
			// gpt-4o has no audio price: audio tokens are charged as input/output.
			// 1000 × 2.5 = 2500; 200 × 10 = 2000.
			name: "UnpricedPartChargedWithTotal", provider: "openai", model: "gpt-4o",
			usage: Usage{InputTokens: 1000, InputAudioTokens: 500, OutputTokens: 200, OutputAudioTokens: 50},
			want:  Cost{Input: 2500, Output: 2000, Total: 4500},
		},
		{
			// Total input 200000 is not above the 200000 tier: base prices.
			// (200000 − 50000 − 100000) × 3 = 150000; 50000 × 3.75 = 187500; 100000 × 0.3 = 30000
			// → 367500. 1000 × 15 = 15000.
			name: "TierAtThresholdIsBase", provider: "anthropic", model: "claude-sonnet-4-5",
			usage: Usage{InputTokens: 200000, CacheWriteTokens: 50000, CacheReadTokens: 100000, OutputTokens: 1000},
			want:  Cost{Input: 367500, Output: 15000, Total: 382500},
		},
		{
			// Total input 200001 > 200000: every token pays the tier price.
			// (200001 − 50000 − 100000) × 6 = 300006; 50000 × 7.5 = 375000; 100000 × 0.6 = 60000
			// → 735006. 1000 × 22.5 = 22500.
			name: "TierAboveThreshold", provider: "anthropic", model: "claude-sonnet-4-5",
			usage: Usage{InputTokens: 200001, CacheWriteTokens: 50000, CacheReadTokens: 100000, OutputTokens: 1000},
			want:  Cost{Input: 735006, Output: 22500, Total: 757506},
		},
		{
			// 100 × 1 + 12/1000 USD per request = 100 + 12000; output 200 × 1.
			name: "PerRequestPrice", provider: "perplexity", model: "sonar",
			usage: Usage{InputTokens: 100, OutputTokens: 200},
			want:  Cost{Input: 12100, Output: 200, Total: 12300},
		},
		{
			name: "ZeroUsage", provider: "openai", model: "gpt-4o",
			usage: Usage{},
			want:  Cost{},
		},
		{
			// 2^62 × 0.15 = 691752902764108185.6 → 691752902764108186: fits in int64.
			name: "HugeButFits", provider: "openai", model: "gpt-4o-mini",
			usage: Usage{InputTokens: 1 << 62},
			want:  Cost{Input: 691752902764108186, Output: 0, Total: 691752902764108186},
		},
		{
			// MaxInt64 × 0.15 = 1383505805528216371.05 → Input 1383505805528216372;
			// MaxInt64 × 0.6 = 5534023222112865484.2; exact total 6917529027641081855.25 →
			// 6917529027641081856; Output = Total − Input = 5534023222112865484.
			name: "MaxInt64TokensFits", provider: "openai", model: "gpt-4o-mini",
			usage: Usage{InputTokens: math.MaxInt64, OutputTokens: math.MaxInt64},
			want:  Cost{Input: 1383505805528216372, Output: 5534023222112865484, Total: 6917529027641081856},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := mustModel(t, c, tt.provider, tt.model)
			got, err := m.CostAt(tt.usage, at)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, got.Total, got.Input+got.Output)
		})
	}
}

func TestModel_CostErrors(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	tests := []struct {
		name    string
		model   string
		usage   Usage
		wantIs  error
		wantErr string
	}{
		{
			// 2^62 × 2.5 ≈ 1.15e19 micros > MaxInt64.
			name: "Overflow2Pow62", model: "gpt-4o", usage: Usage{InputTokens: 1 << 62},
			wantIs: ErrOverflow, wantErr: "cost overflows int64 micros",
		},
		{
			name: "OverflowMaxTokens", model: "gpt-4o",
			usage:  Usage{InputTokens: math.MaxInt64, OutputTokens: math.MaxInt64},
			wantIs: ErrOverflow, wantErr: "cost overflows int64 micros",
		},
		{
			name: "Negative", model: "gpt-4o", usage: Usage{InputTokens: -1},
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: input_tokens is negative (-1)",
		},
		{
			name: "NegativeReasoning", model: "gpt-4o", usage: Usage{ReasoningTokens: -1},
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: reasoning_tokens is negative (-1)",
		},
		{
			name: "CacheExceedsInput", model: "gpt-4o", usage: Usage{InputTokens: 10, CacheReadTokens: 11},
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: input_tokens (10) is less than the sum of its separately priced parts",
		},
		{
			name: "OutputAudioExceedsOutput", model: "gpt-4o-realtime-preview", usage: Usage{OutputTokens: 1, OutputAudioTokens: 2},
			wantIs: ErrInvalidUsage, wantErr: "invalid usage: output_tokens (1) is less than the sum of its separately priced parts",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := mustModel(t, c, "openai", tt.model)
			_, err := m.Cost(tt.usage)
			require.ErrorIs(t, err, tt.wantIs)
			require.EqualError(t, err, tt.wantErr)
		})
	}
}

func TestModel_CostAtPriceList(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	tests := []struct {
		name  string
		model string
		at    time.Time
		usage Usage
		want  int64
	}{
		// o3: 10/40 until 2025-06-09, 2/8 from 2025-06-10 (UTC).
		// 1000 × 10 + 1000 × 40 = 50000.
		{"O3BeforeCut", "o3", time.Date(2025, 6, 9, 23, 59, 59, 0, time.UTC), Usage{InputTokens: 1000, OutputTokens: 1000}, 50000},
		// 1000 × 2 + 1000 × 8 = 10000.
		{"O3AtCut", "o3", time.Date(2025, 6, 10, 0, 0, 0, 0, time.UTC), Usage{InputTokens: 1000, OutputTokens: 1000}, 10000},
		// claude-opus-4-6 is tiered before 2026-03-13: 300000 > 200000, so 300000 × 10 +
		// 1000 × 37.5 = 3037500.
		{"OpusTieredBefore", "claude-opus-4-6", time.Date(2026, 3, 12, 12, 0, 0, 0, time.UTC), Usage{InputTokens: 300000, OutputTokens: 1000}, 3037500},
		// From 2026-03-13 flat: 300000 × 5 + 1000 × 25 = 1525000.
		{"OpusFlatAfter", "claude-opus-4-6", time.Date(2026, 3, 13, 0, 0, 0, 0, time.UTC), Usage{InputTokens: 300000, OutputTokens: 1000}, 1525000},
		// deepseek-chat: standard 0.27/1.1 from 00:30 to 16:30 UTC: 270 + 1100 = 1370.
		{"DeepseekDaytime", "deepseek-chat", time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC), Usage{InputTokens: 1000, OutputTokens: 1000}, 1370},
		// off-peak 0.135/0.55 otherwise: 135 + 550 = 685.
		{"DeepseekOffPeak", "deepseek-chat", time.Date(2026, 1, 1, 20, 0, 0, 0, time.UTC), Usage{InputTokens: 1000, OutputTokens: 1000}, 685},
		{"DeepseekWindowEndExclusive", "deepseek-chat", time.Date(2026, 1, 1, 16, 30, 0, 0, time.UTC), Usage{InputTokens: 1000, OutputTokens: 1000}, 685},
		{"DeepseekWindowStartInclusive", "deepseek-chat", time.Date(2026, 1, 1, 0, 30, 0, 0, time.UTC), Usage{InputTokens: 1000, OutputTokens: 1000}, 1370},
		// Non-UTC times are compared in UTC: 21:00+09:00 is 12:00Z.
		{"DeepseekOtherZone", "deepseek-chat", time.Date(2026, 1, 1, 21, 0, 0, 0, time.FixedZone("JST", 9*3600)), Usage{InputTokens: 1000, OutputTokens: 1000}, 1370},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := mustModel(t, c, "", tt.model)
			got, err := m.CostAt(tt.usage, tt.at)
			require.NoError(t, err)
			require.Equal(t, tt.want, got.Total)
		})
	}
}

func TestModel_UpperBound(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		provider string
		model    string
		at       time.Time
		in, out  int64
		want     int64
	}{
		// Highest input-side price of gpt-4o is input 2.5; output 10: 1000 × 2.5 + 500 × 10.
		{"Simple", "openai", "gpt-4o", at, 1000, 500, 7500},
		// cache_write 3.75 is the highest input-side price below the tier; a request of at
		// most 1000 input tokens cannot reach the 200k output tier, so output is at its base
		// price 15: 1000 × 3.75 + 100 × 15 = 5250.
		{"CacheWriteIsWorstInput", "anthropic", "claude-sonnet-4-5", at, 1000, 100, 5250},
		// Above the tier: 300000 × 7.5 + 100 × 22.5 = 2252250.
		{"TieredAbove", "anthropic", "claude-sonnet-4-5", at, 300000, 100, 2252250},
		// input_audio 40 and output_audio 80 dominate: 10 × 40 + 10 × 80.
		{"Audio", "openai", "gpt-4o-realtime-preview", at, 10, 10, 1200},
		// Per-request price is included: 0 + 12000.
		{"PerRequest", "perplexity", "sonar", at, 0, 0, 12000},
		// 7 × 0.15 = 1.05 → 2.
		{"RoundsUp", "openai", "gpt-4o-mini", at, 7, 0, 2},
		// 2^62 × 0.15 + 2^62 × 0.6 = 2^62 × 0.75 = 3458764513820540928 exactly.
		{"Huge", "openai", "gpt-4o-mini", at, 1 << 62, 1 << 62, 3458764513820540928},
		// At 16:00Z deepseek-chat is at its standard price, and at 16:30 it drops; the
		// bound covers the next 24h, so it is the standard price: 1000 × 0.27 + 1000 × 1.1.
		{"DeepseekBeforeDrop", "deepseek", "deepseek-chat", time.Date(2026, 1, 1, 16, 0, 0, 0, time.UTC), 1000, 1000, 1370},
		// At 00:00Z it is off-peak, but the standard price starts at 00:30: 1370 again.
		{"DeepseekBeforeRise", "deepseek", "deepseek-chat", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 1000, 1000, 1370},
		// claude-sonnet-5 rises from 2/10 to 3/15 on 2026-09-01: a reservation at 23:00 the
		// day before is bounded by the new price: 1000 × 3.75 + 1000 × 15.
		{"PriceRiseWithinWindow", "anthropic", "claude-sonnet-5", time.Date(2026, 8, 31, 23, 0, 0, 0, time.UTC), 1000, 1000, 18750},
		// A week before it, only the current price: 1000 × 2.5 + 1000 × 10.
		{"PriceRiseOutsideWindow", "anthropic", "claude-sonnet-5", time.Date(2026, 8, 24, 23, 0, 0, 0, time.UTC), 1000, 1000, 12500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := mustModel(t, c, tt.provider, tt.model)
			got, err := m.UpperBoundAt(tt.in, tt.out, tt.at)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}

	t.Run("Overflow", func(t *testing.T) {
		t.Parallel()
		_, err := mustModel(t, c, "openai", "gpt-4o").UpperBound(1<<62, 0)
		require.ErrorIs(t, err, ErrOverflow)
	})
	t.Run("Negative", func(t *testing.T) {
		t.Parallel()
		_, err := mustModel(t, c, "openai", "gpt-4o").UpperBound(-1, 0)
		require.ErrorIs(t, err, ErrInvalidUsage)
	})
}

// TestModel_UpperBoundProperty checks, for every model of the catalog and random usages,
// that the reservation bound is never below the settled cost for any split of the same
// totals (cache reads and writes, audio, reasoning) at any time within the bound's window.
func TestModel_UpperBoundProperty(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 8, 31, 10, 0, 0, 0, time.UTC)
	var models []*Model
	for _, p := range c.providers {
		for _, e := range p.entries {
			models = append(models, e.model)
		}
	}
	require.Greater(t, len(models), 1000)
	randTokens := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return rng.Int64N(10)
		case 1:
			return rng.Int64N(300_000) // crosses 128k/200k/272k tiers
		case 2:
			return rng.Int64N(2_000_000)
		}
		return rng.Int64N(1 << 40)
	}
	for _, m := range models {
		for range 20 {
			in, out := randTokens(), randTokens()
			at := base.Add(time.Duration(rng.Int64N(int64(48 * time.Hour))))
			ub, err := m.UpperBoundAt(in, out, at)
			require.NoError(t, err)
			for range 5 {
				u := randomSplit(rng, in, out)
				settleAt := at.Add(time.Duration(rng.Int64N(int64(upperBoundWindow))))
				cost, err := m.CostAt(u, settleAt)
				require.NoError(t, err, "%s/%s %+v", m.Provider, m.ID, u)
				require.GreaterOrEqual(t, ub, cost.Total, "%s/%s %+v at %s", m.Provider, m.ID, u, settleAt)
			}
		}
	}
}

// randomSplit returns a consistent Usage with the given totals.
func randomSplit(rng *rand.Rand, in, out int64) Usage {
	part := func(n int64) int64 {
		if n <= 0 || rng.IntN(3) == 0 {
			return 0
		}
		return rng.Int64N(n + 1)
	}
	u := Usage{InputTokens: in, OutputTokens: out}
	u.CacheReadTokens = part(in)
	u.CacheWriteTokens = part(in - u.CacheReadTokens)
	u.InputAudioTokens = part(in - u.CacheReadTokens - u.CacheWriteTokens)
	u.CacheAudioReadTokens = part(min(u.CacheReadTokens, u.InputAudioTokens))
	u.OutputAudioTokens = part(out)
	u.ReasoningTokens = part(out - u.OutputAudioTokens)
	return u
}
