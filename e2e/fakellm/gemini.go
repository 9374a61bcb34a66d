package fakellm

import (
	"fmt"
	"strings"
)

// gemini answers POST /v1beta/models/{model}:generateContent and :streamGenerateContent
// (the SSE form, ?alt=sse, which is what Envoy's sse_to_metadata can read).
func (c *call) gemini() error {
	model, method, ok := strings.Cut(c.r.PathValue("call"), ":")
	if !ok || (method != "generateContent" && method != "streamGenerateContent") {
		return fmt.Errorf("%w: %s", errUnsupported, c.r.URL.Path)
	}
	stream := method == "streamGenerateContent"
	if stream && c.r.URL.Query().Get("alt") != "sse" {
		return fmt.Errorf("%w: only ?alt=sse streams are served", errUnsupported)
	}
	c.req.Model, c.rec.Model, c.rec.Stream = model, model, stream
	ws := words(c.rec.Usage.OutputTokens)
	finish := "STOP"
	if c.capped() {
		finish = "MAX_TOKENS"
	}
	u := c.rec.Usage
	// usage is cumulative: candidates counted so far. Zero counts are omitted, as Gemini does.
	usage := func(candidates int64, final bool) map[string]any {
		m := map[string]any{
			"promptTokenCount":     u.InputTokens,
			"candidatesTokenCount": candidates,
			"totalTokenCount":      u.InputTokens + candidates,
			"promptTokensDetails":  []any{map[string]any{"modality": "TEXT", "tokenCount": u.InputTokens}},
		}
		if u.CachedTokens > 0 {
			m["cachedContentTokenCount"] = u.CachedTokens
		}
		if final && u.ReasoningTokens > 0 {
			m["thoughtsTokenCount"] = u.ReasoningTokens
			m["totalTokenCount"] = u.InputTokens + candidates + u.ReasoningTokens
		}
		return m
	}
	chunk := func(text string, candidates int64, final bool) map[string]any {
		cand := map[string]any{"content": map[string]any{"parts": []any{map[string]any{"text": text}}, "role": "model"}, "index": 0}
		if final {
			cand["finishReason"] = finish
		}
		return map[string]any{
			"candidates":    []any{cand},
			"usageMetadata": usage(candidates, final),
			"modelVersion":  c.model(),
			"responseId":    "fake" + c.id,
		}
	}
	if !stream {
		c.json(chunk(strings.Join(ws, ""), u.OutputTokens, true))
		c.rec.Reported = Usage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CachedTokens: u.CachedTokens, ReasoningTokens: u.ReasoningTokens}
		return nil
	}
	e := c.sse()
	ps := pieces(ws, 8)
	var sent int64
	for i, p := range ps {
		final := i == len(ps)-1
		n := int64(len(strings.Fields(p)))
		sent += n
		if final {
			sent = u.OutputTokens
		}
		cands := sent
		e.event("", chunk(p, cands, final), func(r *Usage) {
			r.InputTokens, r.OutputTokens, r.CachedTokens = u.InputTokens, cands, u.CachedTokens
			if final {
				r.ReasoningTokens = u.ReasoningTokens
			}
		})
	}
	return nil
}
