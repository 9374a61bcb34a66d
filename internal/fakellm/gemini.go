package fakellm

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// gemini answers POST /v1beta/models/{model}:generateContent and :streamGenerateContent.
// A stream is server-sent events with ?alt=sse (what Google's SDKs ask for: go-genai
// models.go builds "{model}:streamGenerateContent?alt=sse"); without it the API streams one
// JSON array whose elements are the same chunks, as application/json (Google's REST clients
// and plain curl get this form; simonw/llm-gemini#97 shows both). Each chunk repeats the
// cumulative usageMetadata, so the last one holds the call's usage.
func (c *call) gemini() error {
	model, method, ok := strings.Cut(c.r.PathValue("call"), ":")
	if !ok || (method != "generateContent" && method != "streamGenerateContent") {
		return fmt.Errorf("%w: %s", errUnsupported, c.r.URL.Path)
	}
	stream := method == "streamGenerateContent"
	jsonArray := stream && !strings.EqualFold(c.r.URL.Query().Get("alt"), "sse")
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
	if jsonArray {
		c.jsonArray(ws, chunk)
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

// jsonArray streams the chunks as one JSON array: "[" then each chunk pretty-printed, joined
// by ",\r\n", then "]", flushed chunk by chunk (x-fake-cut-after counts chunks).
func (c *call) jsonArray(ws []string, chunk func(text string, candidates int64, final bool) map[string]any) {
	h := c.w.Header()
	h.Set("content-type", "application/json; charset=UTF-8")
	c.w.WriteHeader(http.StatusOK)
	u := c.rec.Usage
	ps := pieces(ws, 8)
	var sent int64
	for i, p := range ps {
		if c.cutAfter > 0 && i >= c.cutAfter {
			c.abort()
		}
		final := i == len(ps)-1
		sent += int64(len(strings.Fields(p)))
		if final {
			sent = u.OutputTokens
		}
		b, err := json.MarshalIndent(chunk(p, sent, final), "", "  ")
		if err != nil {
			panic(err) // maps of strings and numbers always marshal
		}
		prefix := "[" // the array opens with the first chunk
		if i > 0 {
			prefix = "\n,\r\n"
		}
		c.writing()
		if _, err := io.WriteString(c.w, prefix+string(b)); err != nil {
			c.failed = true
			return
		}
		if final {
			if _, err := io.WriteString(c.w, "\n]"); err != nil {
				c.failed = true
			}
		}
		if f, ok := c.w.(http.Flusher); ok {
			f.Flush()
		}
		r := &c.rec.Reported
		r.InputTokens, r.OutputTokens, r.CachedTokens = u.InputTokens, sent, u.CachedTokens
		if final {
			r.ReasoningTokens = u.ReasoningTokens
		}
	}
}
