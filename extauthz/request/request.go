package request

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/purser-dev/purser/budget/pricing"
)

// Provider ids as detected from the host or the path shape. Route context may name others.
const (
	ProviderOpenAI    = "openai"
	ProviderAnthropic = "anthropic"
	ProviderGoogle    = "google"
	ProviderAzure     = "azure"
)

// Failure policies of the route-context key failure_policy.
const (
	FailureClosed = "closed"
	FailureOpen   = "open"
)

// Request is what purser needs to know about one CheckRequest. Parse fills it; problems are
// recorded in the *Error fields and flags, never turned into a "free" request. It keeps no
// body text. Secrets in Credentials are redacted by String, GoString, LogValue and JSON.
type Request struct {
	// Billable is false for requests that cost nothing (GET, token counting, model lists) and
	// for POST paths that are not a recognised LLM API.
	Billable bool
	// Unpriced marks a recognised provider endpoint that may cost money but whose cost
	// purser cannot estimate from the request (images, audio, batches, fine-tuning, ...).
	// Billable is false; the caller decides whether to pass it through or deny it.
	Unpriced bool
	// Provider is the provider id ("openai", "anthropic", "google", "azure", or a route
	// context value); "" for an unknown host speaking an OpenAI-compatible API.
	Provider string
	// Flavor is the API flavour (pricing.Flavor* constants, or a route-context value).
	Flavor pricing.Flavor
	// Model is the model as requested: from the body, the path (Gemini, Vertex, Azure
	// deployment when the body has none) or Config.ModelHeader.
	Model string
	// Stream is set for streaming requests: body "stream": true, Gemini
	// streamGenerateContent, Vertex streamRawPredict, or ?alt=sse.
	Stream bool
	// StreamUsage is set when an OpenAI-style body asks for usage in the stream
	// (stream_options.include_usage: true); without it a streamed response carries no usage.
	StreamUsage bool

	// OutputCap is the output-token cap the request sets (max_tokens, max_completion_tokens,
	// max_output_tokens, generationConfig.maxOutputTokens, whichever the flavour honours;
	// the largest when several are given). HasOutputCap reports whether one was given.
	OutputCap    int64
	HasOutputCap bool
	// Choices multiplies the output: n, best_of, candidateCount, and the number of prompts
	// of a batched legacy completion. It is at least 1.
	Choices int64
	// CapError is set when a cap or choice count is present but invalid (not a positive
	// integer that fits in int64); the caller should answer 400 rather than guess.
	CapError error
	// ThinkingBudget is Gemini's generationConfig.thinkingConfig.thinkingBudget (-1: dynamic,
	// 0: off) when HasThinkingBudget; Google documents thinking as separate from
	// maxOutputTokens.
	ThinkingBudget    int64
	HasThinkingBudget bool

	// InputTokens is an upper bound of the prompt tokens any supported tokenizer counts for
	// what the body holds (bound.go, docs/bounds.md): text and structure, chat-format and
	// tool overheads, each image at its model's documented maximum, and, for a truncated
	// body, any text the missing bytes could hold.
	InputTokens int64
	// Images is the number of images in the body (charged in InputTokens).
	Images int64
	// ExternalInput is set when the request's input is not bounded by its body: input pulled
	// from elsewhere (previous_response_id, conversation, cached content, file references,
	// server-side tools such as web search), media whose tokens their size does not bound
	// (audio, video, PDFs and other documents, images of a model without a documented
	// per-image maximum), and bodies purser could not read whole (truncated, compressed or
	// invalid). Only the model's context window bounds such input.
	ExternalInput bool
	// Truncated is set when the body is incomplete: x-envoy-auth-partial-body: true, or
	// content-length larger than the body received.
	Truncated bool
	// BodyError is set when the body cannot be used: invalid JSON, not an object, empty,
	// ambiguous (duplicate keys that matter) or compressed. A truncated body is not an error.
	BodyError error
	// BodyBytes is the number of body bytes received in the CheckRequest.
	BodyBytes int
	// ContentLength is the content-length header, -1 if absent or invalid.
	ContentLength int64

	// Credentials are API-key candidates in Config.CredentialSources order. Not validated.
	Credentials []Credential
	// Principal is source.principal (the SPIFFE id in an mTLS mesh).
	Principal string
	// Subjects are the subjects derived without a database, deduplicated, in this order:
	// SPIFFE workload and namespace, JWT claims, trusted headers, route, tags, budget_subject.
	Subjects []string
	// SubjectErrors lists rejected subject values (see budget.ParseSubject).
	SubjectErrors []error

	// Route is the merged route context.
	Route RouteContext
	// RouteError reports invalid route-context values (ignored values, defaults used).
	RouteError error

	// RequestID is the x-request-id header.
	RequestID string
	// StreamID is attributes.request.http.id: Envoy's numeric stream id, not x-request-id.
	StreamID string
	// ReceivedAt is attributes.request.time in Unix seconds (0 when absent): when Envoy
	// received the downstream request, the same in every retry of its Check.
	ReceivedAt int64
	// Path is the request path without query string; Host is lower-cased; Method is as sent.
	Path, Host, Method string
}

// Credential is one API-key candidate. Secret is never printed by the fmt, slog or JSON
// encodings of Credential or Request.
type Credential struct {
	// Source is the configured source it came from: "authorization", a header name, or
	// "query:<param>".
	Source string
	// Header is the header name the secret was read from; "" for a query parameter.
	Header string
	// Secret is the key itself (the bearer token without its scheme).
	Secret string `json:"-"`
}

// RouteContext is context_extensions merged with route_metadata_context.filter_metadata
// ["purser"] (route metadata wins on conflict).
type RouteContext struct {
	Route         string         // route name
	Tags          []string       // from the comma-separated tags value
	Provider      string         // provider override
	Flavor        pricing.Flavor // api_flavor override
	FailurePolicy string         // FailureClosed (default) or FailureOpen
	BudgetSubject string         // an extra subject for every request on the route
	// Raw holds every key as a string (lists joined with ","). It may alias the
	// CheckRequest's context_extensions map: treat it as read-only.
	Raw map[string]string
}

const redacted = "REDACTED"

// OutputBound returns the worst-case number of output tokens of the request given the
// model's maximum output (modelMax, 0 when unknown): the cap when one is given and lower than
// modelMax, else modelMax, times Choices. Embeddings produce no output.
func (r *Request) OutputBound(modelMax int64) int64 {
	if r.Flavor == pricing.FlavorEmbeddings || r.Flavor == pricing.FlavorGeminiEmbeddings {
		return 0
	}
	out := modelMax
	if r.HasOutputCap && (modelMax <= 0 || r.OutputCap < modelMax) {
		out = r.OutputCap
	}
	return mulSat(out, max(r.Choices, 1))
}

// String describes the credential without its secret.
func (c Credential) String() string {
	if c.Header == "" || c.Header == c.Source {
		return c.Source + ":" + redacted
	}
	return c.Source + "(" + c.Header + "):" + redacted
}

// GoString makes %#v redact the secret too.
func (c Credential) GoString() string { return "request.Credential{" + c.String() + "}" }

// LogValue implements slog.LogValuer without the secret.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("source", c.Source), slog.String("header", c.Header),
		slog.String("secret", redacted))
}

// String describes the request without secrets; it is what %v and %+v print.
func (r Request) String() string {
	var b strings.Builder
	b.WriteString("request{")
	fmt.Fprintf(&b, "method=%s host=%q path=%q billable=%t unpriced=%t provider=%q flavor=%q model=%q stream=%t",
		r.Method, r.Host, r.Path, r.Billable, r.Unpriced, r.Provider, r.Flavor, r.Model, r.Stream)
	fmt.Fprintf(&b, " output_cap=%d has_output_cap=%t choices=%d input_tokens=%d external_input=%t truncated=%t body_bytes=%d content_length=%d",
		r.OutputCap, r.HasOutputCap, r.Choices, r.InputTokens, r.ExternalInput, r.Truncated, r.BodyBytes, r.ContentLength)
	b.WriteString(" credentials=[")
	for i, c := range r.Credentials {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(c.String())
	}
	fmt.Fprintf(&b, "] principal=%q subjects=%q route=%q request_id=%q stream_id=%s", r.Principal, r.Subjects, r.Route.Route, r.RequestID, r.StreamID)
	for _, e := range []struct {
		name string
		err  error
	}{{"body_error", r.BodyError}, {"cap_error", r.CapError}, {"route_error", r.RouteError}} {
		if e.err != nil {
			fmt.Fprintf(&b, " %s=%q", e.name, e.err.Error())
		}
	}
	if len(r.SubjectErrors) > 0 {
		fmt.Fprintf(&b, " subject_errors=%d", len(r.SubjectErrors))
	}
	b.WriteByte('}')
	return b.String()
}

// GoString makes %#v print the redacted form too.
func (r Request) GoString() string { return r.String() }

// LogValue implements slog.LogValuer without secrets or body text.
func (r Request) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, 24)
	attrs = append(attrs,
		slog.String("method", r.Method), slog.String("host", r.Host), slog.String("path", r.Path),
		slog.Bool("billable", r.Billable), slog.Bool("unpriced", r.Unpriced),
		slog.String("provider", r.Provider), slog.String("api_flavor", string(r.Flavor)),
		slog.String("model", r.Model), slog.Bool("stream", r.Stream),
		slog.Int64("output_cap", r.OutputCap), slog.Bool("has_output_cap", r.HasOutputCap),
		slog.Int64("choices", r.Choices), slog.Int64("input_tokens", r.InputTokens),
		slog.Bool("external_input", r.ExternalInput), slog.Bool("truncated", r.Truncated),
		slog.Int("body_bytes", r.BodyBytes), slog.Int64("content_length", r.ContentLength),
		slog.String("principal", r.Principal), slog.Any("subjects", r.Subjects),
		slog.String("route", r.Route.Route), slog.String("request_id", r.RequestID),
		slog.String("stream_id", r.StreamID))
	sources := make([]string, len(r.Credentials))
	for i, c := range r.Credentials {
		sources[i] = c.String()
	}
	attrs = append(attrs, slog.Any("credentials", sources))
	if r.BodyError != nil {
		attrs = append(attrs, slog.String("body_error", r.BodyError.Error()))
	}
	if r.CapError != nil {
		attrs = append(attrs, slog.String("cap_error", r.CapError.Error()))
	}
	if r.RouteError != nil {
		attrs = append(attrs, slog.String("route_error", r.RouteError.Error()))
	}
	if len(r.SubjectErrors) > 0 {
		msgs := make([]string, len(r.SubjectErrors))
		for i, e := range r.SubjectErrors {
			msgs[i] = e.Error()
		}
		attrs = append(attrs, slog.Any("subject_errors", msgs))
	}
	return slog.GroupValue(attrs...)
}

// mulSat multiplies two non-negative numbers, saturating at the largest int64.
func mulSat(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	const maxInt64 = 1<<63 - 1
	if a > maxInt64/b {
		return maxInt64
	}
	return a * b
}

// addSat adds two non-negative numbers, saturating at the largest int64.
func addSat(a, b int64) int64 {
	const maxInt64 = 1<<63 - 1
	if a > maxInt64-b {
		return maxInt64
	}
	return a + b
}

// itoa formats an int64.
func itoa(v int64) string { return strconv.FormatInt(v, 10) }
