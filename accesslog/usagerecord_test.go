package accesslog

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/purser-dev/purser/budget/pricing"
)

// TestUsageRecord_MatchesJSONMarshal: the hand-written usage record is byte for byte what
// json.Marshal wrote before it (the ledger stores it; reports and exports read it).
func TestUsageRecord_MatchesJSONMarshal(t *testing.T) {
	t.Parallel()
	ref := func(u pricing.Usage, model, provider string) string {
		b, err := json.Marshal(struct {
			pricing.Usage
			Model    string `json:"model"`
			Provider string `json:"provider"`
		}{u, model, provider})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	usages := []pricing.Usage{{}, {InputTokens: 12, OutputTokens: 3, CacheReadTokens: 2},
		{InputTokens: math.MaxInt64, OutputTokens: math.MinInt64, CacheReadTokens: -1, CacheWriteTokens: 1 << 40,
			ReasoningTokens: 7, InputAudioTokens: 8, OutputAudioTokens: 9, CacheAudioReadTokens: 10}}
	names := []string{"", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "models/gemini-2.0-flash", "a\"b", `back\slash`,
		"<tag>&amp;", "tab\there", "\x00\x1f\x7f", "héllo", "\u2028\u2029", "bad\xffutf8", "emoji 😀", "openai", "anthropic"}
	for _, u := range usages {
		for _, m := range names {
			for _, p := range names {
				if got, want := string(usageRecord(u, m, p)), ref(u, m, p); got != want {
					t.Fatalf("usageRecord(%+v, %q, %q)\n got %s\nwant %s", u, m, p, got, want)
				}
			}
		}
	}
}
