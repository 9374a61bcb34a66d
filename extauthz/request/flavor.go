package request

import (
	"net/url"
	"path"
	"strings"

	"github.com/purser-dev/purser/budget/pricing"
)

// API recognition.
//
// The path is matched by its END, so any gateway prefix is accepted: /v1/chat/completions,
// /openai/v1/chat/completions (Azure v1, Groq), /api/v1/chat/completions (OpenRouter),
// /v1beta/openai/chat/completions (Gemini's OpenAI endpoint), /chat/completions (DeepSeek)
// are all Chat Completions. Recognising more paths is the conservative direction: an
// unrecognised POST is not billed. For matching only, the path is percent-decoded, cleaned
// (duplicate slashes, dot segments and a trailing slash removed) and compared without regard
// to ASCII case, so that spellings an upstream might accept cannot slip through unbilled.
//
// Gemini and Vertex AI paths end in ".../models/{model}:{verb}" (also tunedModels, and
// ".../publishers/{publisher}/models/{model}:{verb}" on Vertex); the model comes from the
// path. Azure OpenAI paths ".../openai/deployments/{deployment}/{operation}" give the
// deployment as the model unless the body names one.

// dialect selects how the body is read.
type dialect uint8

const (
	dialectNone dialect = iota
	dialectChat
	dialectCompletions
	dialectResponses
	dialectEmbeddings
	dialectAnthropic
	dialectGemini
	dialectGeminiEmbeddings
	dialectGeneric // route-given flavour with no known body shape: every field counts
)

// epKind is what a path is.
type epKind uint8

const (
	epUnknown  epKind = iota // not an LLM API we know
	epBillable               // priced from the body
	epFree                   // known to cost nothing (token counting, moderation, ...)
	epUnpriced               // costs money, but not estimable from the request
)

type endpoint struct {
	kind      epKind
	flavor    pricing.Flavor
	dialect   dialect
	provider  string // from the path shape
	model     string // from the path
	pathModel bool   // the path model wins over a body "model" (Gemini, Vertex)
	stream    bool   // the path itself means streaming
}

type suffixRule struct {
	suffix   string
	kind     epKind
	flavor   pricing.Flavor
	dialect  dialect
	provider string
}

// suffixRules are tried in order; the first suffix that matches wins.
var suffixRules = [...]suffixRule{
	{"/messages/count_tokens", epFree, "", dialectNone, ProviderAnthropic},
	{"/messages/batches", epUnpriced, "", dialectNone, ProviderAnthropic},
	{"/v1/messages", epBillable, pricing.FlavorAnthropic, dialectAnthropic, ProviderAnthropic},
	{"/chat/completions", epBillable, pricing.FlavorChat, dialectChat, ""},
	{"/completions", epBillable, pricing.FlavorCompletions, dialectCompletions, ""},
	{"/embeddings", epBillable, pricing.FlavorEmbeddings, dialectEmbeddings, ""},
	{"/responses/input_tokens", epFree, "", dialectNone, ""},
	{"/responses/compact", epUnpriced, "", dialectNone, ""},
	{"/responses", epBillable, pricing.FlavorResponses, dialectResponses, ""},
	{"/moderations", epFree, "", dialectNone, ""},
	{"/tokenize", epFree, "", dialectNone, ""},
	{"/detokenize", epFree, "", dialectNone, ""},
	{"/v1/complete", epUnpriced, "", dialectNone, ProviderAnthropic},
	{"/images/generations", epUnpriced, "", dialectNone, ""},
	{"/images/edits", epUnpriced, "", dialectNone, ""},
	{"/images/variations", epUnpriced, "", dialectNone, ""},
	{"/audio/speech", epUnpriced, "", dialectNone, ""},
	{"/audio/transcriptions", epUnpriced, "", dialectNone, ""},
	{"/audio/translations", epUnpriced, "", dialectNone, ""},
	{"/fine_tuning/jobs", epUnpriced, "", dialectNone, ""},
	{"/batches", epUnpriced, "", dialectNone, ""},
	{"/runs", epUnpriced, "", dialectNone, ""}, // Assistants: /threads/runs, /threads/{id}/runs
	{"/realtime/sessions", epUnpriced, "", dialectNone, ""},
	{"/realtime/client_secrets", epUnpriced, "", dialectNone, ""},
	{"/realtime/calls", epUnpriced, "", dialectNone, ""},
	{"/videos", epUnpriced, "", dialectNone, ""},
	{"/rerank", epUnpriced, "", dialectNone, ""},
	{"/api/chat", epUnpriced, "", dialectNone, ""}, // Ollama native API
	{"/api/generate", epUnpriced, "", dialectNone, ""},
	{"/api/embed", epUnpriced, "", dialectNone, ""},
	{"/api/embeddings", epUnpriced, "", dialectNone, ""},
	{"/converse", epUnpriced, "", dialectNone, ""}, // Amazon Bedrock runtime
	{"/converse-stream", epUnpriced, "", dialectNone, ""},
	{"/invoke", epUnpriced, "", dialectNone, ""},
	{"/invoke-with-response-stream", epUnpriced, "", dialectNone, ""},
}

// recognize classifies a request path (without query string).
func recognize(rawPath string) endpoint {
	p := matchPath(rawPath)
	if ep, ok := recognizeModelVerb(p); ok {
		return ep
	}
	var ep endpoint
	if i := indexFold(p, "/openai/deployments/"); i >= 0 {
		rest := p[i+len("/openai/deployments/"):]
		dep, op, _ := strings.Cut(rest, "/")
		ep = bySuffix("/" + op)
		ep.provider = ProviderAzure
		if ep.kind == epBillable && dep != "" {
			ep.model = dep
		}
		return ep
	}
	return bySuffix(p)
}

func bySuffix(p string) endpoint {
	for i := range suffixRules {
		r := &suffixRules[i]
		if hasSuffixFold(p, r.suffix) {
			return endpoint{kind: r.kind, flavor: r.flavor, dialect: r.dialect, provider: r.provider}
		}
	}
	return endpoint{}
}

// recognizeModelVerb handles ".../models/{model}:{verb}" (Gemini, Vertex AI; also
// tunedModels and Vertex endpoints).
func recognizeModelVerb(p string) (endpoint, bool) {
	var seg [4]string // seg[0] is the last path segment
	rest := p
	for i := range seg {
		j := strings.LastIndexByte(rest, '/')
		if j < 0 {
			break
		}
		seg[i], rest = rest[j+1:], rest[:j]
	}
	colon := strings.LastIndexByte(seg[0], ':')
	if colon <= 0 {
		return endpoint{}, false
	}
	if !strings.EqualFold(seg[1], "models") && !strings.EqualFold(seg[1], "tunedModels") && !strings.EqualFold(seg[1], "endpoints") {
		return endpoint{}, false
	}
	model, verb := seg[0][:colon], seg[0][colon+1:]
	anthropic := strings.EqualFold(seg[3], "publishers") && strings.EqualFold(seg[2], "anthropic")
	ep := endpoint{provider: ProviderGoogle, model: model, pathModel: true, kind: epUnpriced}
	switch {
	case strings.EqualFold(verb, "generateContent"):
		ep.kind, ep.flavor, ep.dialect = epBillable, pricing.FlavorGemini, dialectGemini
	case strings.EqualFold(verb, "streamGenerateContent"):
		ep.kind, ep.flavor, ep.dialect, ep.stream = epBillable, pricing.FlavorGemini, dialectGemini, true
	case strings.EqualFold(verb, "embedContent"), strings.EqualFold(verb, "batchEmbedContents"):
		ep.kind, ep.flavor, ep.dialect = epBillable, pricing.FlavorGeminiEmbeddings, dialectGeminiEmbeddings
	case strings.EqualFold(verb, "countTokens"), strings.EqualFold(verb, "computeTokens"):
		ep.kind = epFree
	case anthropic && strings.EqualFold(verb, "rawPredict"):
		ep.kind, ep.flavor, ep.dialect = epBillable, pricing.FlavorAnthropic, dialectAnthropic
	case anthropic && strings.EqualFold(verb, "streamRawPredict"):
		ep.kind, ep.flavor, ep.dialect, ep.stream = epBillable, pricing.FlavorAnthropic, dialectAnthropic, true
	}
	return ep, true
}

// matchPath returns the form of the path used for matching: percent-decoded when it has
// escapes, cleaned when it is not already clean. It allocates only in those cases.
func matchPath(p string) string {
	if strings.IndexByte(p, '%') >= 0 {
		if u, err := url.PathUnescape(p); err == nil {
			p = u
		}
	}
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	return path.Clean(p)
}

// flavorDialect maps a route-context api_flavor to a body dialect. openai-compatible keeps
// the dialect of an OpenAI path; unknown flavours read the body generically.
func flavorDialect(flavor pricing.Flavor, pathDialect dialect) (d dialect, known bool) {
	switch flavor {
	case pricing.FlavorChat:
		return dialectChat, true
	case pricing.FlavorCompletions:
		return dialectCompletions, true
	case pricing.FlavorResponses:
		return dialectResponses, true
	case pricing.FlavorEmbeddings:
		return dialectEmbeddings, true
	case pricing.FlavorAnthropic:
		return dialectAnthropic, true
	case pricing.FlavorGemini:
		return dialectGemini, true
	case pricing.FlavorGeminiEmbeddings:
		return dialectGeminiEmbeddings, true
	case pricing.FlavorOpenAICompatible:
		switch pathDialect {
		case dialectChat, dialectCompletions, dialectResponses, dialectEmbeddings:
			return pathDialect, true
		}
		return dialectGeneric, true
	}
	return dialectGeneric, false
}

// providerFromHost maps well-known provider hosts (lower case, port removed) to a provider id.
func providerFromHost(host string) string {
	switch host {
	case "api.openai.com":
		return ProviderOpenAI
	case "api.anthropic.com":
		return ProviderAnthropic
	case "generativelanguage.googleapis.com", "aiplatform.googleapis.com":
		return ProviderGoogle
	}
	switch {
	case strings.HasSuffix(host, "-aiplatform.googleapis.com"):
		return ProviderGoogle
	case strings.HasSuffix(host, ".openai.azure.com"), strings.HasSuffix(host, ".cognitiveservices.azure.com"),
		strings.HasSuffix(host, ".services.ai.azure.com"):
		return ProviderAzure
	}
	return ""
}

// hostname strips the port, IPv6 brackets and a trailing dot from a host value.
func hostname(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			return h[1:i]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h[:i], ':') < 0 {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// indexFold is strings.Index ignoring ASCII case, for short needles.
func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}
