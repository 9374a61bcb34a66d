package request

import (
	"strconv"
	"strings"
)

// Per-image maxima: the most input tokens one image can cost, from each provider's documented
// image-token rules (sources in docs/bounds.md). Images are resized by the provider before
// they are counted, so their size in the request does not matter.
const (
	// Anthropic: an image costs ceil(w/28) x ceil(h/28) tokens after resizing to the model's
	// native resolution, at most 4,784 (Claude Opus 4.7 and later; earlier models about
	// 1,600), plus 3 for the image block.
	imageTokensAnthropic = 4_800
	// OpenAI: detail "original" is budgeted at 10,000 32-px patches, times the model's
	// multiplier (at most 2.46, the nano models); the tile rules (85 + 170 per 512-px tile,
	// at most 8 tiles, on gpt-4o) cost less.
	imageTokensOpenAI = 24_600
	// OpenAI gpt-4o-mini: 2,833 base + 5,667 per tile, at most 8 tiles.
	imageTokensGPT4oMini = 48_169
	// Gemini 3 and later: media_resolution ultra high is 2,240 tokens per image. Gemini 2.x
	// tiles an image into 768-px tiles of 258 tokens with no documented maximum: unbounded.
	imageTokensGemini3 = 2_240
)

// ImageTokensFor returns the most input tokens one image can cost with this model, and false
// when no documented maximum exists (the image is then bounded only by the context window).
// The operator's Config.ImageTokens, when set, is used instead: their assertion, not a bound.
func ImageTokensFor(provider, model string, cfg *Config) (int64, bool) {
	if cfg != nil && cfg.ImageTokens > 0 {
		return cfg.ImageTokens, true
	}
	m := strings.ToLower(strings.TrimSpace(model))
	m = strings.TrimPrefix(m, "models/")
	if _, rest, ok := strings.Cut(m, "/"); ok { // "openai/gpt-4o", "publishers/google/..."
		m = rest[strings.LastIndexByte(rest, '/')+1:]
	}
	switch {
	case strings.Contains(m, "claude"):
		return imageTokensAnthropic, true
	case strings.Contains(m, "gpt-4o-mini"):
		return imageTokensGPT4oMini, true
	case strings.HasPrefix(m, "gemini-"):
		if major, ok := geminiMajor(m); ok && major >= 3 {
			return imageTokensGemini3, true
		}
		return 0, false
	case isOpenAIModel(m):
		return imageTokensOpenAI, true
	}
	switch strings.ToLower(provider) {
	case ProviderAnthropic:
		return imageTokensAnthropic, true
	case ProviderOpenAI, ProviderAzure:
		// A deployment name may hide any OpenAI model: the largest OpenAI maximum.
		return imageTokensGPT4oMini, true
	}
	return 0, false
}

// isOpenAIModel recognises OpenAI's model families by name.
func isOpenAIModel(m string) bool {
	m = strings.TrimPrefix(m, "ft:")
	for _, p := range [...]string{"gpt-", "chatgpt-", "o1", "o3", "o4", "computer-use", "codex-"} {
		if strings.HasPrefix(m, p) {
			return true
		}
	}
	return false
}

// geminiMajor returns the major version of a "gemini-<major>[.<minor>]-..." model name.
func geminiMajor(m string) (int, bool) {
	v := strings.TrimPrefix(m, "gemini-")
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end == 0 {
		return 0, false
	}
	if end < 0 {
		end = len(v)
	}
	major, err := strconv.Atoi(v[:end])
	return major, err == nil
}

// IsGeminiThinking reports whether a Gemini model may think (Gemini 2.5 and later, and any
// Gemini whose version purser cannot read): its thinking tokens may come on top of
// maxOutputTokens.
func IsGeminiThinking(model string) bool {
	m := strings.ToLower(strings.TrimSpace(model))
	m = m[strings.LastIndexByte(m, '/')+1:]
	if !strings.HasPrefix(m, "gemini-") {
		return false
	}
	major, ok := geminiMajor(m)
	if !ok {
		return true
	}
	if major >= 3 {
		return true
	}
	return major == 2 && strings.HasPrefix(strings.TrimPrefix(m, "gemini-2"), ".5")
}
