package pricing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Errors returned by ExtractUsage. Callers apply their "missing usage" policy to the first
// two; unknown usage is never treated as zero.
var (
	// ErrNoUsage: the body holds no usage at all (no usage object, or an empty one).
	ErrNoUsage = errors.New("no usage in response")
	// ErrIncompleteUsage: a usage object is present but a required count is missing (e.g.
	// completion_tokens, or an Anthropic stream that ended before its final message_delta).
	ErrIncompleteUsage = errors.New("incomplete usage")
	// ErrUnknownFlavor: the API flavour is not one purser knows for that provider.
	ErrUnknownFlavor = errors.New("unknown api flavor")
)

// maxTokenCount is the largest token count accepted from a response: 2^53, the largest
// integer a JSON number (a double) carries exactly.
const maxTokenCount = 1 << 53

// dest indexes the usage fields an extractor mapping can write.
type dest int

const (
	dInput dest = iota
	dOutput
	dCacheRead
	dCacheWrite
	dInputAudio
	dOutputAudio
	dCacheAudioRead
	numDests
	dUnsupported dest = -1
)

var destNames = map[string]dest{
	"input_tokens":            dInput,
	"output_tokens":           dOutput,
	"cache_read_tokens":       dCacheRead,
	"cache_write_tokens":      dCacheWrite,
	"input_audio_tokens":      dInputAudio,
	"output_audio_tokens":     dOutputAudio,
	"cache_audio_read_tokens": dCacheAudioRead,
}

// pathStep is a key of an object, or (when am is set) the first element of an array whose
// field matches.
type pathStep struct {
	key string
	am  *arrayMatch
}

type arrayMatch struct {
	field string
	match *clause
}

type mapping struct {
	path     []pathStep
	dest     dest
	required bool
}

type extractor struct {
	flavor    string
	root      []pathStep
	modelPath []pathStep
	mappings  []mapping
}

func parseExtractor(raw json.RawMessage) (*extractor, error) {
	var re struct {
		APIFlavor *string         `json:"api_flavor"`
		Root      json.RawMessage `json:"root"`
		ModelPath json.RawMessage `json:"model_path"`
		Mappings  []struct {
			Path     json.RawMessage `json:"path"`
			Dest     string          `json:"dest"`
			Required *bool           `json:"required"`
		} `json:"mappings"`
	}
	if err := strictUnmarshal(raw, &re); err != nil {
		return nil, err
	}
	ex := &extractor{flavor: "default"}
	if re.APIFlavor != nil {
		ex.flavor = *re.APIFlavor
	}
	var err error
	if ex.root, err = parsePath(re.Root); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	if isPresent(re.ModelPath) {
		if ex.modelPath, err = parsePath(re.ModelPath); err != nil {
			return nil, fmt.Errorf("model_path: %w", err)
		}
	} else {
		ex.modelPath = []pathStep{{key: "model"}}
	}
	for i, m := range re.Mappings {
		p, err := parsePath(m.Path)
		if err != nil {
			return nil, fmt.Errorf("mappings[%d].path: %w", i, err)
		}
		if p[len(p)-1].am != nil {
			return nil, fmt.Errorf("mappings[%d].path: must end with a key", i)
		}
		d, ok := destNames[m.Dest]
		if !ok {
			// A usage kind purser does not price separately (image, video, text, cache TTL
			// variants): its tokens are already in the totals, so the mapping is ignored.
			d = dUnsupported
		}
		ex.mappings = append(ex.mappings, mapping{path: p, dest: d, required: m.Required == nil || *m.Required})
	}
	return ex, nil
}

func parsePath(raw json.RawMessage) ([]pathStep, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return nil, errors.New("missing")
	}
	if t[0] == '"' {
		var s string
		if err := json.Unmarshal(t, &s); err != nil {
			return nil, err
		}
		return []pathStep{{key: s}}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(t, &items); err != nil || len(items) == 0 {
		return nil, errors.New("must be a string or a non-empty list")
	}
	out := make([]pathStep, 0, len(items))
	for _, it := range items {
		it = bytes.TrimSpace(it)
		if len(it) > 0 && it[0] == '"' {
			var s string
			if err := json.Unmarshal(it, &s); err != nil {
				return nil, err
			}
			out = append(out, pathStep{key: s})
			continue
		}
		var am struct {
			Type  string          `json:"type"`
			Field string          `json:"field"`
			Match json.RawMessage `json:"match"`
		}
		if err := strictUnmarshal(it, &am); err != nil {
			return nil, fmt.Errorf("step: %w", err)
		}
		if am.Type != "array-match" || am.Field == "" {
			return nil, fmt.Errorf("unsupported path step type %q", am.Type)
		}
		cl, err := parseClause(am.Match)
		if err != nil {
			return nil, fmt.Errorf("array-match: %w", err)
		}
		out = append(out, pathStep{am: &arrayMatch{field: am.Field, match: cl}})
	}
	return out, nil
}

func pathString(prefix []pathStep, p []pathStep) string {
	var b strings.Builder
	for _, s := range slices.Concat(prefix, p) {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		if s.am != nil {
			b.WriteString("[" + s.am.field + "=" + s.am.match.s + "]")
		} else {
			b.WriteString(s.key)
		}
	}
	return b.String()
}

// walk follows path from v. It returns (nil, false) when a step is missing, is null, or the
// data does not have the shape the step needs.
func walk(v any, path []pathStep) (any, bool) {
	for _, s := range path {
		if s.am != nil {
			arr, ok := v.([]any)
			if !ok {
				return nil, false
			}
			found := false
			for _, el := range arr {
				obj, ok := el.(map[string]any)
				if !ok {
					continue
				}
				f, ok := obj[s.am.field].(string)
				if ok && s.am.match.match(strings.ToLower(f)) {
					v, found = obj, true
					break
				}
			}
			if !found {
				return nil, false
			}
			continue
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		v, ok = obj[s.key]
		if !ok || v == nil {
			return nil, false
		}
	}
	return v, true
}

// errMissingRoot marks an extractor whose usage object is absent, so the next candidate
// extractor may be tried.
var errMissingRoot = errors.New("missing usage root")

// extracted is the result of one extractor.
type extracted struct {
	usage Usage
	model string
}

// run applies the extractor to body.
func (ex *extractor) run(body map[string]any) (extracted, error) {
	var out extracted
	if m, ok := walk(body, ex.modelPath); ok {
		if s, ok := m.(string); ok {
			out.model = s
		}
	}
	rootV, ok := walk(body, ex.root)
	if !ok {
		return out, errMissingRoot
	}
	root, ok := rootV.(map[string]any)
	if !ok {
		return out, fmt.Errorf("%w: %s: want an object, got %s", ErrInvalidUsage, pathString(nil, ex.root), typeName(rootV))
	}
	var vals [numDests]int64
	found := false
	for _, m := range ex.mappings {
		if m.dest == dUnsupported {
			continue
		}
		v, ok := walk(root, m.path)
		if !ok {
			if m.required {
				return out, fmt.Errorf("%w: %s: missing", ErrIncompleteUsage, pathString(ex.root, m.path))
			}
			continue
		}
		n, err := tokenCount(v)
		if err != nil {
			return out, fmt.Errorf("%w: %s: %w", ErrInvalidUsage, pathString(ex.root, m.path), err)
		}
		vals[m.dest] += n // at most a few values ≤ 2^53 each: no overflow
		found = true
	}
	if !found {
		return out, fmt.Errorf("%w: %s holds no token counts", ErrNoUsage, pathString(nil, ex.root))
	}
	// Reasoning counts are not in genai-prices' extractors; they are parts of the output.
	var reasoning int64
	for _, p := range reasoningPaths {
		if v, ok := walk(root, p); ok {
			n, err := tokenCount(v)
			if err != nil {
				return out, fmt.Errorf("%w: %s: %w", ErrInvalidUsage, pathString(ex.root, p), err)
			}
			reasoning = n
			break
		}
	}
	out.usage = Usage{
		InputTokens:          vals[dInput],
		OutputTokens:         vals[dOutput],
		CacheReadTokens:      vals[dCacheRead],
		CacheWriteTokens:     vals[dCacheWrite],
		ReasoningTokens:      reasoning,
		InputAudioTokens:     vals[dInputAudio],
		OutputAudioTokens:    vals[dOutputAudio],
		CacheAudioReadTokens: vals[dCacheAudioRead],
	}
	return out, nil
}

var reasoningPaths = [][]pathStep{
	{{key: "completion_tokens_details"}, {key: "reasoning_tokens"}}, // OpenAI chat
	{{key: "output_tokens_details"}, {key: "reasoning_tokens"}},     // OpenAI responses
	{{key: "thoughtsTokenCount"}},                                   // Gemini
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	}
	return "a number"
}

// tokenCount reads a token count: a float64 (protobuf Struct, encoding/json), a json.Number,
// a Go integer, or a string of digits ("123"). Only integral values in [0, 2^53] are accepted.
func tokenCount(v any) (int64, error) {
	switch n := v.(type) {
	case float64:
		return floatCount(n)
	case float32:
		return floatCount(float64(n))
	case json.Number:
		return parseCount(string(n))
	case string:
		return parseCount(n)
	case int:
		return intCount(int64(n))
	case int8:
		return intCount(int64(n))
	case int16:
		return intCount(int64(n))
	case int32:
		return intCount(int64(n))
	case int64:
		return intCount(n)
	case uint:
		return uintCount(uint64(n))
	case uint8:
		return uintCount(uint64(n))
	case uint16:
		return uintCount(uint64(n))
	case uint32:
		return uintCount(uint64(n))
	case uint64:
		return uintCount(n)
	}
	return 0, fmt.Errorf("want a number, got %s", typeName(v))
}

func intCount(n int64) (int64, error) {
	switch {
	case n < 0:
		return 0, fmt.Errorf("negative value %d", n)
	case n > maxTokenCount:
		return 0, fmt.Errorf("%d exceeds 2^53", n)
	}
	return n, nil
}

func uintCount(n uint64) (int64, error) {
	if n > maxTokenCount {
		return 0, fmt.Errorf("%d exceeds 2^53", n)
	}
	return int64(n), nil
}

func floatCount(f float64) (int64, error) {
	txt := func() string {
		if math.Abs(f) >= 1e21 {
			return strconv.FormatFloat(f, 'g', -1, 64)
		}
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return 0, fmt.Errorf("%s is not a finite number", txt())
	case f < 0:
		return 0, fmt.Errorf("negative value %s", txt())
	case f != math.Trunc(f):
		return 0, fmt.Errorf("%s is not an integer", txt())
	case f > maxTokenCount:
		return 0, fmt.Errorf("%s exceeds 2^53", txt())
	}
	return int64(f), nil
}

// parseCount parses number text ("123", "1e+06", "12.0") as a non-negative integer ≤ 2^53.
func parseCount(s string) (int64, error) {
	d, err := parseDecimal(s)
	if err != nil {
		return 0, err
	}
	if d.neg && d.digits != "" {
		return 0, fmt.Errorf("negative value %s", s)
	}
	v, err := d.scaled(0, maxTokenCount)
	switch {
	case errors.Is(err, errNotExact):
		return 0, fmt.Errorf("%s is not an integer", s)
	case errors.Is(err, errTooLarge):
		return 0, fmt.Errorf("%s exceeds 2^53", s)
	}
	return int64(v), nil
}

// ExtractUsage normalises the usage of one provider response. body is the response body (or
// the fragment holding its usage, e.g. {"usage": {...}} rebuilt from Envoy metadata by the
// access-log sink). provider is a provider id or name (empty or unknown: an OpenAI-compatible
// server). flavor is a Flavor (openai-compatible and completions read as chat), a
// provider's own extractor name, or "" to infer it from the body (InferFlavor). It returns
// the usage, the model named in the body ("" if none) and:
//
//   - ErrNoUsage when there is no usage at all;
//   - ErrIncompleteUsage when a required count is missing (the message names the field);
//   - ErrInvalidUsage when a count is negative, fractional, not finite, above 2^53 or not a
//     number (the message names the field);
//   - ErrUnknownFlavor for an unknown flavour.
//
// The extractors come from the catalog (genai-prices), tried in order: the provider's own for
// the flavour, then (chat and default) the provider's default, then the canonical shape of the
// flavour (OpenAI chat/responses/embeddings, Anthropic messages, Gemini). Beyond them:
//
//   - reasoning counts: completion_tokens_details.reasoning_tokens (chat),
//     output_tokens_details.reasoning_tokens (responses), thoughtsTokenCount (Gemini) set
//     ReasoningTokens (already counted in OutputTokens);
//   - Anthropic streaming: {"message": {"usage": {message_start}}, "usage": {last
//     message_delta}} is merged, fields of "usage" winning; a fragment with only
//     message.usage is ErrIncompleteUsage (the stream ended before its final usage);
//   - OpenAI responses streaming: {"response": {"usage": ...}} (response.completed) is read
//     like a whole response.
func (c *Catalog) ExtractUsage(provider, flavor string, body map[string]any) (Usage, string, error) {
	if len(body) == 0 {
		return Usage{}, "", fmt.Errorf("%w: empty body", ErrNoUsage)
	}
	f := Flavor(strings.ToLower(strings.TrimSpace(flavor)))
	if f == "" {
		f = InferFlavor(body)
		if f == "" {
			return Usage{}, "", fmt.Errorf("%w: no usage object of a known shape", ErrNoUsage)
		}
	}
	switch f {
	case FlavorOpenAICompatible, "openai", FlavorCompletions:
		f = FlavorChat
	case "messages":
		f = FlavorAnthropic
	case "google", "vertex":
		f = FlavorGemini
	}
	p := c.providerByID(provider)

	switch f {
	case FlavorAnthropic:
		var err error
		if body, err = mergeAnthropicStream(body); err != nil {
			return Usage{}, "", err
		}
	case FlavorResponses:
		if body["usage"] == nil {
			if r, ok := body["response"].(map[string]any); ok {
				body = r
			}
		}
	}

	var buf [3]*extractor
	cands := c.extractorsFor(p, f, buf[:0])
	if len(cands) == 0 {
		pid := "(none)"
		if p != nil {
			pid = p.id
		}
		return Usage{}, "", fmt.Errorf("%w %q for provider %s", ErrUnknownFlavor, flavor, pid)
	}
	var firstErr error
	for _, ex := range cands {
		r, err := ex.run(body)
		if err == nil {
			return r.usage, r.model, nil
		}
		if errors.Is(err, ErrInvalidUsage) {
			return Usage{}, r.model, err
		}
		if firstErr == nil && !errors.Is(err, errMissingRoot) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return Usage{}, c.bodyModel(body, cands), firstErr
	}
	return Usage{}, c.bodyModel(body, cands), fmt.Errorf("%w: no %s found", ErrNoUsage, pathString(nil, cands[0].root))
}

func (c *Catalog) bodyModel(body map[string]any, cands []*extractor) string {
	for _, ex := range cands {
		if m, ok := walk(body, ex.modelPath); ok {
			if s, ok := m.(string); ok {
				return s
			}
		}
	}
	return ""
}

// canonical names the provider and extractor that define each flavour's standard shape.
var canonical = map[Flavor][2]string{
	FlavorChat:       {"openai", "chat"},
	FlavorResponses:  {"openai", "responses"},
	FlavorEmbeddings: {"openai", "embeddings"},
	FlavorAnthropic:  {"anthropic", "default"},
	FlavorGemini:     {"google", "default"},
	FlavorDefault:    {"openai", "chat"},
}

// extractorsFor appends to out the extractors to try, in order, without duplicates: the
// provider's own for the flavour and its chat/default twin, then the flavour's canonical one.
func (c *Catalog) extractorsFor(p *provider, f Flavor, out []*extractor) []*extractor {
	add := func(ex *extractor) {
		if ex != nil && !slices.Contains(out, ex) {
			out = append(out, ex)
		}
	}
	if p != nil {
		add(p.extractors[string(f)])
		switch f {
		case FlavorChat:
			add(p.extractors["default"])
		case FlavorDefault:
			add(p.extractors["chat"])
		}
	}
	if cn, ok := canonical[f]; ok {
		if cp := c.providerByExactID(cn[0]); cp != nil {
			add(cp.extractors[cn[1]])
		}
	}
	return out
}

// mergeAnthropicStream turns the merged Anthropic streaming fragment into a message-shaped
// body: the usage of the last message_delta ("usage") over that of message_start
// ("message.usage"), and the model from "message.model" when there is no top-level "model".
func mergeAnthropicStream(body map[string]any) (map[string]any, error) {
	msg, ok := body["message"].(map[string]any)
	if !ok {
		return body, nil
	}
	start, ok := msg["usage"].(map[string]any)
	if !ok {
		return body, nil
	}
	final, hasFinal := body["usage"].(map[string]any)
	if !hasFinal {
		if body["usage"] != nil {
			return nil, fmt.Errorf("%w: usage: want an object, got %s", ErrInvalidUsage, typeName(body["usage"]))
		}
		return nil, fmt.Errorf("%w: usage: missing (only message.usage from message_start: the stream ended before its final message_delta)", ErrIncompleteUsage)
	}
	merged := make(map[string]any, len(start)+len(final))
	for k, v := range start {
		merged[k] = v
	}
	for k, v := range final {
		if v != nil {
			merged[k] = v
		}
	}
	out := make(map[string]any, len(body))
	for k, v := range body {
		out[k] = v
	}
	out["usage"] = merged
	if _, ok := out["model"].(string); !ok {
		if m, ok := msg["model"].(string); ok {
			out["model"] = m
		}
	}
	return out, nil
}

// InferFlavor guesses the API flavour of a response body from its usage shape: "gemini"
// (usageMetadata), "responses" (a response.usage wrapper, or input/output_tokens with
// *_details or total_tokens), "anthropic" (message.usage, or input/output_tokens without
// total_tokens), "embeddings" (prompt_tokens without completion_tokens, and "object": "list"
// or total_tokens equal to prompt_tokens), "chat" (any other prompt_tokens). It returns ""
// when the body has no usage it recognises. An explicit flavour is always better: inference
// exists for `purser cost` and for entries whose flavour was not recorded.
func InferFlavor(body map[string]any) Flavor {
	if _, ok := body["usageMetadata"].(map[string]any); ok {
		return FlavorGemini
	}
	u, _ := body["usage"].(map[string]any)
	if u == nil {
		if r, ok := body["response"].(map[string]any); ok {
			if _, ok := r["usage"].(map[string]any); ok {
				return FlavorResponses
			}
		}
		if m, ok := body["message"].(map[string]any); ok {
			if _, ok := m["usage"].(map[string]any); ok {
				return FlavorAnthropic
			}
		}
		return ""
	}
	has := func(k string) bool { _, ok := u[k]; return ok }
	switch {
	case has("prompt_tokens") && has("completion_tokens"):
		return FlavorChat
	case has("prompt_tokens"):
		// Embeddings only on positive evidence; otherwise chat, whose extractor then reports
		// the missing completion_tokens instead of pricing the output as zero.
		if obj, _ := body["object"].(string); obj == "list" {
			return FlavorEmbeddings
		}
		p, perr := tokenCount(u["prompt_tokens"])
		t, terr := tokenCount(u["total_tokens"])
		if perr == nil && terr == nil && p == t {
			return FlavorEmbeddings
		}
		return FlavorChat
	case has("input_tokens") || has("output_tokens"):
		if obj, _ := body["object"].(string); obj == "response" {
			return FlavorResponses
		}
		if typ, _ := body["type"].(string); typ == "message" {
			return FlavorAnthropic
		}
		if _, ok := body["message"].(map[string]any); ok {
			return FlavorAnthropic
		}
		if has("input_tokens_details") || has("output_tokens_details") || has("total_tokens") {
			return FlavorResponses
		}
		return FlavorAnthropic
	}
	return ""
}
