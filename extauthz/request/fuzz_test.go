package request

import (
	"encoding/json"
	"testing"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

// FuzzParse fuzzes method, path, host, one header and the body, seeded with the fixtures.
// Invariants: no panic; InputTokens >= 0 and Choices >= 1; a body accepted without error is
// valid JSON; a billable body with non-empty text never estimates 0 tokens; a subject always
// satisfies the subject grammar.
func FuzzParse(f *testing.F) {
	for name, spec := range fixtureSpecs {
		req := loadFixture(f, name)
		h := req.GetAttributes().GetRequest().GetHttp()
		body := h.GetRawBody()
		if len(body) == 0 {
			body = []byte(h.GetBody())
		}
		f.Add(h.GetMethod(), h.GetPath(), h.GetHost(), "authorization", "Bearer k-"+name, body, spec.partial)
	}
	f.Add("POST", "/v1/messages", "api.anthropic.com", "x-api-key", "k", []byte(`{"max_tok\u0065ns":5,"messages":[{"content":"\ud83d\ude00\u00e9"}]}`), false)
	f.Add("POST", "/v1/chat/completions", "h", "content-length", "999", []byte(`{"messages":[{"content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA`), true)
	f.Add("POST", "/v1/embeddings", "h", "x-envoy-auth-partial-body", "true", []byte(`{"input":[[1,2,3],"abc",[4]]}`), false)
	f.Add("post", "//v1/./chat//completions/", "H:1", "Authorization", "BEARER x", []byte(`{"n":2,"max_tokens":-5,"stream":true}`), false)

	f.Fuzz(func(t *testing.T, method, path, host, hk, hv string, body []byte, partial bool) {
		req := checkRequest(method, host, path, "", map[string]string{hk: hv})
		h := req.GetAttributes().GetRequest().GetHttp()
		h.RawBody = body
		if partial {
			h.Headers["x-envoy-auth-partial-body"] = "true"
		}
		r := Parse(req, fullConfig)
		if r.InputTokens < 0 || r.Choices < 1 || r.OutputCap < 0 {
			t.Fatalf("negative estimate: %v", r)
		}
		if r.OutputBound(1<<20) < 0 {
			t.Fatalf("negative output bound: %v", r)
		}
		for _, s := range r.Subjects {
			if _, err := budget.ParseSubject(s); err != nil {
				t.Fatalf("invalid subject emitted: %v", err)
			}
		}
		if !r.Billable || r.BodyError != nil || r.Truncated || len(body) == 0 {
			return
		}
		if !json.Valid(body) {
			t.Fatalf("invalid JSON accepted: %q", body)
		}
		var v map[string]any
		if err := json.Unmarshal(body, &v); err != nil {
			return
		}
		var text any = v
		if r.Flavor == pricing.FlavorEmbeddings {
			text = v["input"]
		} else {
			delete(v, "model")
		}
		if hasText(text) && r.InputTokens == 0 {
			t.Fatalf("body with text estimated at 0 tokens: %q", body)
		}
	})
}

// hasText reports whether v holds a non-empty string value anywhere.
func hasText(v any) bool {
	switch x := v.(type) {
	case string:
		return x != ""
	case []any:
		for _, e := range x {
			if hasText(e) {
				return true
			}
		}
	case map[string]any:
		for _, e := range x {
			if hasText(e) {
				return true
			}
		}
	}
	return false
}
