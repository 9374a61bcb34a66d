package fakellm

import (
	"strings"
)

// anthropicUsage is the usage object of a Message (and of message_start).
func (c *call) anthropicUsage(output int64) map[string]any {
	u := c.rec.Usage
	return map[string]any{
		"input_tokens":                u.InputTokens,
		"cache_creation_input_tokens": u.CacheCreationTokens,
		"cache_read_input_tokens":     u.CachedTokens,
		"cache_creation": map[string]any{
			"ephemeral_5m_input_tokens": u.CacheCreationTokens,
			"ephemeral_1h_input_tokens": 0,
		},
		"output_tokens":         output,
		"output_tokens_details": map[string]any{"thinking_tokens": min(u.ReasoningTokens, output)},
		"server_tool_use":       nil,
		"service_tier":          "standard",
		"inference_geo":         "not_available",
		"speed":                 "standard",
	}
}

func (c *call) reportAnthropicInput(r *Usage) {
	u := c.rec.Usage
	r.InputTokens, r.CachedTokens, r.CacheCreationTokens = u.InputTokens, u.CachedTokens, u.CacheCreationTokens
}

// messages answers POST /v1/messages.
func (c *call) messages() error {
	ws := words(c.rec.Usage.OutputTokens)
	u := c.rec.Usage
	id := "msg_fake" + c.id
	stop := "end_turn"
	if c.capped() {
		stop = "max_tokens"
	}
	c.w.Header().Set("request-id", "req_fake_"+c.id)
	if !c.req.Stream {
		c.json(map[string]any{
			"id": id, "type": "message", "role": "assistant", "model": c.model(),
			"content":     []any{map[string]any{"type": "text", "text": strings.Join(ws, "")}},
			"stop_reason": stop, "stop_sequence": nil,
			"usage": c.anthropicUsage(u.OutputTokens),
		})
		c.reportAnthropicInput(&c.rec.Reported)
		c.rec.Reported.OutputTokens, c.rec.Reported.ReasoningTokens = u.OutputTokens, u.ReasoningTokens
		return nil
	}
	e := c.sse()
	// message_start reports the input side and an initial output count of 1, as the API does.
	startOut := min(u.OutputTokens, 1)
	e.event("message_start", map[string]any{"type": "message_start", "message": map[string]any{
		"id": id, "type": "message", "role": "assistant", "model": c.model(), "content": []any{},
		"stop_reason": nil, "stop_sequence": nil, "usage": c.anthropicUsage(startOut),
	}}, func(r *Usage) { c.reportAnthropicInput(r); r.OutputTokens = startOut })
	e.event("content_block_start", map[string]any{"type": "content_block_start", "index": 0,
		"content_block": map[string]any{"type": "text", "text": ""}}, nil)
	e.event("ping", map[string]any{"type": "ping"}, nil)
	for _, p := range pieces(ws, 8) {
		e.event("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
			"delta": map[string]any{"type": "text_delta", "text": p}}, nil)
	}
	e.event("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0}, nil)
	// message_delta: cumulative usage (current API versions repeat the input side too).
	e.event("message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": stop, "stop_sequence": nil},
		"usage": map[string]any{
			"input_tokens":                u.InputTokens,
			"cache_creation_input_tokens": u.CacheCreationTokens,
			"cache_read_input_tokens":     u.CachedTokens,
			"output_tokens":               u.OutputTokens,
			"output_tokens_details":       map[string]any{"thinking_tokens": u.ReasoningTokens},
			"server_tool_use":             nil,
		},
	}, func(r *Usage) {
		c.reportAnthropicInput(r)
		r.OutputTokens, r.ReasoningTokens = u.OutputTokens, u.ReasoningTokens
	})
	e.event("message_stop", map[string]any{"type": "message_stop"}, nil)
	return nil
}

// countTokens answers POST /v1/messages/count_tokens (non-billable).
func (c *call) countTokens() error {
	in := c.rec.Usage.InputTokens
	c.rec.Usage = Usage{}
	c.w.Header().Set("request-id", "req_fake_"+c.id)
	c.json(map[string]any{"input_tokens": in})
	return nil
}
