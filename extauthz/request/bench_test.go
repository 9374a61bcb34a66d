package request

import (
	"encoding/json"
	"strings"
	"testing"
)

// chatBody builds an OpenAI chat body of about size bytes from the prose sample.
func chatBody(tb testing.TB, size int) []byte {
	tb.Helper()
	prose := "The harbour town woke slowly that autumn. Fishermen untangled their nets on the quay while gulls argued over scraps, and the baker pulled the first loaves from an oven older than anyone could remember. "
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	msgs := []msg{{"system", "You are a helpful assistant. Answer briefly and cite sources."}}
	for left, i := size-300, 0; left > 0; i++ {
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		n := min(len(prose)*8, left)
		msgs = append(msgs, msg{role, strings.Repeat(prose, n/len(prose)+1)[:n]})
		left -= n + 30
	}
	b, err := json.Marshal(map[string]any{"model": "gpt-4o-mini", "messages": msgs, "max_tokens": 512, "temperature": 0.3})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func BenchmarkParse(b *testing.B) {
	for _, c := range []struct {
		name string
		size int
	}{{"Chat2KiB", 2 << 10}, {"Chat1MiB", 1 << 20}} {
		body := chatBody(b, c.size)
		req := checkRequest("POST", "api.openai.com", "/v1/chat/completions", string(body),
			map[string]string{"authorization": "Bearer sk-bench", "content-type": "application/json", "user-agent": "bench"})
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				r := Parse(req, nil)
				if r.InputTokens == 0 || r.BodyError != nil {
					b.Fatal(r)
				}
			}
		})
	}
	b.Run("FixtureAnthropicImage", func(b *testing.B) {
		req := loadFixture(b, "anthropic_messages")
		b.ReportAllocs()
		for b.Loop() {
			Parse(req, fullConfig)
		}
	})
}
