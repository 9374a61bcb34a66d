package pricing

import (
	"fmt"
	"testing"
	"time"
)

func BenchmarkLookup(b *testing.B) {
	c, err := Embedded()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("CachedHit", func(b *testing.B) {
		c.Lookup("azure", "gpt-4o-2024-08-06")
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := c.Lookup("azure", "gpt-4o-2024-08-06"); !ok {
				b.Fatal("not found")
			}
		}
	})
	b.Run("CachedHitParallel", func(b *testing.B) {
		c.Lookup("openai", "gpt-4o-mini")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, ok := c.Lookup("openai", "gpt-4o-mini"); !ok {
					b.Error("not found")
					return
				}
			}
		})
	})
	// Uncached: a fresh catalog per iteration would measure parsing, so call the resolver.
	b.Run("UncachedOpenRouter", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if m := c.lookup("openrouter", "anthropic/claude-sonnet-4.5"); m == nil {
				b.Fatal("not found")
			}
		}
	})
	b.Run("UncachedMiss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if m := c.lookup("", "openai/unknown-model-2099-01-01"); m != nil {
				b.Fatal("found")
			}
		}
	})
	b.Run("ChurningNames", func(b *testing.B) {
		names := make([]string, 50_000) // more than the cache holds
		for i := range names {
			names[i] = fmt.Sprintf("gpt-4o-%d", i)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c.Lookup("openai", names[i%len(names)])
			i++
		}
	})
}

func BenchmarkCost(b *testing.B) {
	c, err := Embedded()
	if err != nil {
		b.Fatal(err)
	}
	at := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	u := Usage{InputTokens: 250_000, CacheReadTokens: 100_000, CacheWriteTokens: 20_000, OutputTokens: 3000, ReasoningTokens: 1000}
	m, _ := c.Lookup("anthropic", "claude-sonnet-4-5")
	b.Run("Tiered", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.CostAt(u, at); err != nil {
				b.Fatal(err)
			}
		}
	})
	o3, _ := c.Lookup("openai", "o3")
	b.Run("PriceList", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := o3.CostAt(u, at); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("UpperBound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.UpperBoundAt(250_000, 8000, at); err != nil {
				b.Fatal(err)
			}
		}
	})
	deepseek, _ := c.Lookup("deepseek", "deepseek-chat") // a daily off-peak window: several instants
	b.Run("UpperBoundTimeOfDay", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := deepseek.UpperBoundAt(250_000, 8000, at); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkExtractUsage(b *testing.B) {
	c, err := Embedded()
	if err != nil {
		b.Fatal(err)
	}
	chat := map[string]any{"model": "gpt-4o", "usage": map[string]any{
		"prompt_tokens": 2000.0, "completion_tokens": 800.0,
		"prompt_tokens_details":     map[string]any{"cached_tokens": 1500.0},
		"completion_tokens_details": map[string]any{"reasoning_tokens": 600.0},
	}}
	b.Run("Chat", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := c.ExtractUsage("openai", "chat", chat); err != nil {
				b.Fatal(err)
			}
		}
	})
	stream := map[string]any{
		"message": map[string]any{"model": "claude-sonnet-4-5", "usage": map[string]any{
			"input_tokens": 100.0, "cache_creation_input_tokens": 1000.0, "cache_read_input_tokens": 2000.0, "output_tokens": 1.0}},
		"usage": map[string]any{"output_tokens": 50.0},
	}
	b.Run("AnthropicStream", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := c.ExtractUsage("anthropic", "anthropic", stream); err != nil {
				b.Fatal(err)
			}
		}
	})
}
