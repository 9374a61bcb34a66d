package fakellm

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
)

// OpenAI usage objects, field order as the API sends them.

type chatUsage struct {
	PromptTokens            int64                   `json:"prompt_tokens"`
	CompletionTokens        int64                   `json:"completion_tokens"`
	TotalTokens             int64                   `json:"total_tokens"`
	PromptTokensDetails     promptTokensDetails     `json:"prompt_tokens_details"`
	CompletionTokensDetails completionTokensDetails `json:"completion_tokens_details"`
}

type promptTokensDetails struct {
	CachedTokens int64 `json:"cached_tokens"`
	AudioTokens  int64 `json:"audio_tokens"`
}

type completionTokensDetails struct {
	ReasoningTokens          int64 `json:"reasoning_tokens"`
	AudioTokens              int64 `json:"audio_tokens"`
	AcceptedPredictionTokens int64 `json:"accepted_prediction_tokens"`
	RejectedPredictionTokens int64 `json:"rejected_prediction_tokens"`
}

func (c *call) chatUsage() chatUsage {
	u := c.rec.Usage
	return chatUsage{
		PromptTokens:            u.InputTokens,
		CompletionTokens:        u.OutputTokens,
		TotalTokens:             u.InputTokens + u.OutputTokens,
		PromptTokensDetails:     promptTokensDetails{CachedTokens: u.CachedTokens},
		CompletionTokensDetails: completionTokensDetails{ReasoningTokens: u.ReasoningTokens},
	}
}

// reportOpenAI records a usage object as sent.
func (c *call) reportOpenAI(r *Usage) {
	u := c.rec.Usage
	r.InputTokens, r.OutputTokens, r.CachedTokens, r.ReasoningTokens = u.InputTokens, u.OutputTokens, u.CachedTokens, u.ReasoningTokens
}

func (c *call) finishReason() string {
	if c.capped() {
		return "length"
	}
	return "stop"
}

// chat answers POST /v1/chat/completions.
func (c *call) chat() error {
	ws := words(c.rec.Usage.OutputTokens)
	id := "chatcmpl-fake-" + c.id
	if !c.req.Stream {
		c.json(map[string]any{
			"id": id, "object": "chat.completion", "created": c.created, "model": c.model(),
			"choices": []any{map[string]any{
				"index":         0,
				"message":       map[string]any{"role": "assistant", "content": strings.Join(ws, ""), "refusal": nil, "annotations": []any{}},
				"logprobs":      nil,
				"finish_reason": c.finishReason(),
			}},
			"usage":              c.chatUsage(),
			"service_tier":       "default",
			"system_fingerprint": "fp_fake",
		})
		c.reportOpenAI(&c.rec.Reported)
		return nil
	}
	e := c.sse()
	includeUsage := c.rec.IncludeUsage
	chunk := func(choices []any) map[string]any {
		m := map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": c.created, "model": c.model(),
			"service_tier": "default", "system_fingerprint": "fp_fake", "choices": choices,
		}
		if includeUsage {
			m["usage"] = nil // as OpenAI does: every chunk carries "usage": null until the last one
		}
		return m
	}
	choice := func(delta map[string]any, finish any) []any {
		return []any{map[string]any{"index": 0, "delta": delta, "logprobs": nil, "finish_reason": finish}}
	}
	e.event("", chunk(choice(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil)), nil)
	for _, p := range pieces(ws, 8) {
		e.event("", chunk(choice(map[string]any{"content": p}, nil)), nil)
	}
	e.event("", chunk(choice(map[string]any{}, c.finishReason())), nil)
	if includeUsage {
		last := chunk([]any{})
		last["usage"] = c.chatUsage()
		e.event("", last, c.reportOpenAI)
	}
	e.event("", "[DONE]", nil)
	return nil
}

// completions answers POST /v1/completions (legacy).
func (c *call) completions() error {
	ws := words(c.rec.Usage.OutputTokens)
	id := "cmpl-fake-" + c.id
	u := c.rec.Usage
	usage := map[string]any{"prompt_tokens": u.InputTokens, "completion_tokens": u.OutputTokens, "total_tokens": u.InputTokens + u.OutputTokens}
	if !c.req.Stream {
		c.json(map[string]any{
			"id": id, "object": "text_completion", "created": c.created, "model": c.model(),
			"choices": []any{map[string]any{"text": strings.Join(ws, ""), "index": 0, "logprobs": nil, "finish_reason": c.finishReason()}},
			"usage":   usage,
		})
		c.rec.Reported = Usage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens}
		return nil
	}
	e := c.sse()
	chunk := func(text string, finish any) map[string]any {
		return map[string]any{
			"id": id, "object": "text_completion", "created": c.created, "model": c.model(),
			"choices": []any{map[string]any{"text": text, "index": 0, "logprobs": nil, "finish_reason": finish}},
		}
	}
	ps := pieces(ws, 8)
	for i, p := range ps {
		var finish any
		if i == len(ps)-1 {
			finish = c.finishReason()
		}
		e.event("", chunk(p, finish), nil)
	}
	if c.rec.IncludeUsage {
		e.event("", map[string]any{
			"id": id, "object": "text_completion", "created": c.created, "model": c.model(), "choices": []any{}, "usage": usage,
		}, func(r *Usage) { r.InputTokens, r.OutputTokens = u.InputTokens, u.OutputTokens })
	}
	e.event("", "[DONE]", nil)
	return nil
}

// responses answers POST /v1/responses.
func (c *call) responses() error {
	ws := words(c.rec.Usage.OutputTokens)
	text := strings.Join(ws, "")
	u := c.rec.Usage
	respID, msgID := "resp_fake"+c.id, "msg_fake"+c.id
	status, incomplete := "completed", any(nil)
	if c.capped() {
		status, incomplete = "incomplete", map[string]any{"reason": "max_output_tokens"}
	}
	usage := map[string]any{
		"input_tokens":          u.InputTokens,
		"input_tokens_details":  map[string]any{"cached_tokens": u.CachedTokens},
		"output_tokens":         u.OutputTokens,
		"output_tokens_details": map[string]any{"reasoning_tokens": u.ReasoningTokens},
		"total_tokens":          u.InputTokens + u.OutputTokens,
	}
	part := func(t string) map[string]any {
		return map[string]any{"type": "output_text", "text": t, "annotations": []any{}, "logprobs": []any{}}
	}
	item := func(st string, content []any) map[string]any {
		return map[string]any{"id": msgID, "type": "message", "status": st, "role": "assistant", "content": content}
	}
	response := func(st string, output []any, usage, incomplete any) map[string]any {
		var maxOut any
		if c.req.MaxOutputTokens != nil {
			maxOut = *c.req.MaxOutputTokens
		}
		return map[string]any{
			"id": respID, "object": "response", "created_at": c.created, "status": st,
			"background": false, "error": nil, "incomplete_details": incomplete, "instructions": nil,
			"max_output_tokens": maxOut, "model": c.model(), "output": output, "parallel_tool_calls": true,
			"previous_response_id": nil, "reasoning": map[string]any{"effort": nil, "summary": nil},
			"service_tier": "default", "store": true, "temperature": 1.0,
			"text":        map[string]any{"format": map[string]any{"type": "text"}, "verbosity": "medium"},
			"tool_choice": "auto", "tools": []any{}, "top_p": 1.0, "truncation": "disabled",
			"usage": usage, "user": nil, "metadata": map[string]any{},
		}
	}
	final := response(status, []any{item("completed", []any{part(text)})}, usage, incomplete)
	if !c.req.Stream {
		c.json(final)
		c.reportOpenAI(&c.rec.Reported)
		return nil
	}
	e := c.sse()
	seq := 0
	ev := func(typ string, fields map[string]any, rep func(*Usage)) {
		fields["type"] = typ
		fields["sequence_number"] = seq
		seq++
		e.event(typ, fields, rep)
	}
	ev("response.created", map[string]any{"response": response("in_progress", []any{}, nil, nil)}, nil)
	ev("response.in_progress", map[string]any{"response": response("in_progress", []any{}, nil, nil)}, nil)
	ev("response.output_item.added", map[string]any{"output_index": 0, "item": item("in_progress", []any{})}, nil)
	ev("response.content_part.added", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "part": part("")}, nil)
	for _, p := range pieces(ws, 8) {
		ev("response.output_text.delta", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "delta": p, "logprobs": []any{}}, nil)
	}
	ev("response.output_text.done", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "text": text, "logprobs": []any{}}, nil)
	ev("response.content_part.done", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "part": part(text)}, nil)
	ev("response.output_item.done", map[string]any{"output_index": 0, "item": item("completed", []any{part(text)})}, nil)
	terminal := "response.completed"
	if status == "incomplete" {
		terminal = "response.incomplete"
	}
	ev(terminal, map[string]any{"response": final}, c.reportOpenAI)
	return nil
}

// embeddings answers POST /v1/embeddings.
func (c *call) embeddings() error {
	n, err := inputCount(c.req.Input)
	if err != nil {
		return err
	}
	dims := c.req.Dimensions
	if dims <= 0 {
		dims = 8
	}
	c.rec.Usage.OutputTokens, c.rec.Usage.CachedTokens, c.rec.Usage.ReasoningTokens = 0, 0, 0
	data := make([]any, n)
	for i := range data {
		vec := make([]float32, dims)
		for j := range vec {
			vec[j] = float32(math.Sin(float64(i*dims+j+1))) / 2
		}
		var emb any = vec
		if c.req.EncodingFormat == "base64" {
			b := make([]byte, 4*dims)
			for j, f := range vec {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(f))
			}
			emb = base64.StdEncoding.EncodeToString(b)
		}
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": emb}
	}
	in := c.rec.Usage.InputTokens
	c.json(map[string]any{
		"object": "list", "data": data, "model": c.model(),
		"usage": map[string]any{"prompt_tokens": in, "total_tokens": in},
	})
	c.rec.Reported = Usage{InputTokens: in}
	return nil
}

// inputCount counts the embedding inputs: a string or a token array is one input, an array of
// strings or of token arrays is one per element.
func inputCount(raw json.RawMessage) (int, error) {
	s := strings.TrimSpace(string(raw))
	switch {
	case s == "":
		return 0, fmt.Errorf("%w: embeddings need an input", errUnsupported)
	case s[0] == '"':
		return 1, nil
	case s[0] == '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return 0, fmt.Errorf("input: %w", err)
		}
		if len(items) == 0 {
			return 0, fmt.Errorf("%w: empty input", errUnsupported)
		}
		if first := strings.TrimSpace(string(items[0])); first != "" && (first[0] == '-' || (first[0] >= '0' && first[0] <= '9')) {
			return 1, nil // one input given as token ids
		}
		return len(items), nil
	default:
		return 0, fmt.Errorf("%w: input must be a string or an array", errUnsupported)
	}
}

var fakeModels = []string{"gpt-4o-mini", "gpt-4o", "gpt-4.1", "o4-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small"}

func modelObject(id string, created int64) map[string]any {
	return map[string]any{"id": id, "object": "model", "created": created, "owned_by": "openai"}
}

// models answers GET /v1/models (non-billable).
func (c *call) models() error {
	c.rec.Usage = Usage{}
	data := make([]any, len(fakeModels))
	for i, id := range fakeModels {
		data[i] = modelObject(id, c.created)
	}
	c.json(map[string]any{"object": "list", "data": data})
	return nil
}

// model answers GET /v1/models/{id}.
func (c *call) model1() error {
	c.rec.Usage = Usage{}
	id := c.r.PathValue("id")
	c.rec.Model = id
	for _, m := range fakeModels {
		if m == id {
			c.json(modelObject(id, c.created))
			return nil
		}
	}
	c.rec.Status = http.StatusNotFound
	c.error(http.StatusNotFound, fmt.Sprintf("The model '%s' does not exist", id))
	return nil
}
