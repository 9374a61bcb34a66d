// Package fakellm is a deterministic stand-in for the OpenAI, Anthropic and Gemini HTTP APIs.
// It answers with bodies shaped exactly like the real APIs (the official Go SDKs parse them),
// reports token usage chosen per request by headers, and records every request it served so
// tests can compare purser's settled spend with what "the provider" reported.
//
// Endpoints: POST /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings,
// GET /v1/models and /v1/models/{id} (OpenAI); POST /v1/messages and
// /v1/messages/count_tokens (Anthropic); POST /v1beta/models/{model}:generateContent and
// :streamGenerateContent (Gemini: server-sent events with ?alt=sse, as Google's SDKs ask,
// else a streamed JSON array). Test helpers: GET /healthz, GET and DELETE /_fake/requests
// (the records as JSON, and a reset).
//
// Like the real APIs, answers are compressed when the request's Accept-Encoding offers a
// coding the provider uses (gzip for all three, brotli and zstd for OpenAI; compress.go): the
// official SDKs offer gzip by default, so a proxy that forwards their Accept-Encoding sees
// compressed JSON and compressed event streams.
//
// Request headers that steer a response (all optional):
//
//	x-fake-input-tokens           input tokens to report (default: the real o200k_base count of an
//	                              OpenAI-flavoured prompt, see tokens.go; otherwise request body
//	                              bytes / 4, at least 1)
//	x-fake-output-tokens          output tokens to report, used as is even above the request's cap
//	                              (default: min(cap, Server.DefaultOutputTokens); cap = max_tokens,
//	                              max_completion_tokens, max_output_tokens or maxOutputTokens)
//	x-fake-cached-tokens          cached input tokens (OpenAI cached_tokens, Anthropic
//	                              cache_read_input_tokens, Gemini cachedContentTokenCount)
//	x-fake-cache-creation-tokens  Anthropic cache_creation_input_tokens (5-minute TTL bucket)
//	x-fake-reasoning-tokens       reasoning tokens (OpenAI reasoning_tokens, part of the output;
//	                              Anthropic output_tokens_details.thinking_tokens; Gemini
//	                              thoughtsTokenCount, billed in addition to candidates)
//	x-fake-response-model         model id to answer with (default: the requested model)
//	x-fake-status                 answer with this HTTP status (400-599) and the provider's error
//	                              body, without usage
//	x-fake-cut-after              streams: close the connection after N SSE events (no clean end);
//	                              JSON: after N body bytes
//	x-fake-delay-ms               wait this long before the first byte (request context honoured)
//
// Token counts follow each API's own conventions, as a provider would report them: OpenAI's
// prompt_tokens includes cached tokens and completion_tokens includes reasoning tokens;
// Anthropic's input_tokens excludes cache reads and writes. Record.Usage holds the header values
// (or defaults) as given; Record.Reported holds what actually went out on the wire.
package fakellm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Header names understood by the fake (see the package documentation).
const (
	HeaderInputTokens         = "x-fake-input-tokens"
	HeaderOutputTokens        = "x-fake-output-tokens"
	HeaderCachedTokens        = "x-fake-cached-tokens"
	HeaderCacheCreationTokens = "x-fake-cache-creation-tokens"
	HeaderReasoningTokens     = "x-fake-reasoning-tokens"
	HeaderResponseModel       = "x-fake-response-model"
	HeaderStatus              = "x-fake-status"
	HeaderCutAfter            = "x-fake-cut-after"
	HeaderDelayMs             = "x-fake-delay-ms"
)

// DefaultOutputTokens is used when a request names neither an output cap nor
// x-fake-output-tokens.
const DefaultOutputTokens = 16

const maxRequestBody = 64 << 20

// Usage is a provider-neutral view of token counts.
type Usage struct {
	InputTokens         int64 `json:"input_tokens"`
	OutputTokens        int64 `json:"output_tokens"`
	CachedTokens        int64 `json:"cached_tokens"`
	CacheCreationTokens int64 `json:"cache_creation_tokens"`
	ReasoningTokens     int64 `json:"reasoning_tokens"`
}

// Record describes one request the fake served.
type Record struct {
	Seq          int    `json:"seq"`
	Method       string `json:"method"`
	Path         string `json:"path"`
	API          string `json:"api"` // chat, completions, responses, embeddings, models, anthropic, count_tokens, gemini
	Model        string `json:"model"`
	Stream       bool   `json:"stream"`
	IncludeUsage bool   `json:"include_usage"` // OpenAI stream_options.include_usage
	Status       int    `json:"status"`
	// RequestID is the x-request-id header the fake received (set by Envoy).
	RequestID string `json:"request_id"`
	// Usage is what this response was meant to report (zero for errors and non-billable calls).
	Usage Usage `json:"usage"`
	// Reported is the usage that actually reached the wire: for a cut stream only the fields of
	// the events sent before the cut, last value per field.
	Reported Usage `json:"reported"`
	// Complete is false when the response was cut (x-fake-cut-after) or the client went away.
	Complete bool `json:"complete"`
	// Encoding is the content coding the answer was compressed with ("" for none), chosen
	// from the request's Accept-Encoding as the provider would (compress.go).
	Encoding string `json:"encoding,omitempty"`
	// AcceptEncoding is the Accept-Encoding header the fake received.
	AcceptEncoding string `json:"accept_encoding,omitempty"`
}

// Server is the fake provider. The zero value is not usable; call New.
type Server struct {
	// DefaultOutputTokens replaces the package default when positive.
	DefaultOutputTokens int64
	// Now is the clock for "created" timestamps; time.Now when nil.
	Now func() time.Time

	mu      sync.Mutex
	seq     int
	records []Record
	mux     *http.ServeMux
	busy    atomic.Int64 // requests being served, not yet recorded
	delayed atomic.Int64 // requests waiting out their x-fake-delay-ms
}

// New returns a fake provider ready to serve.
func New() *Server {
	s := &Server{}
	m := http.NewServeMux()
	m.HandleFunc("POST /v1/chat/completions", s.handle("chat", (*call).chat))
	m.HandleFunc("POST /v1/completions", s.handle("completions", (*call).completions))
	m.HandleFunc("POST /v1/responses", s.handle("responses", (*call).responses))
	m.HandleFunc("POST /v1/embeddings", s.handle("embeddings", (*call).embeddings))
	m.HandleFunc("GET /v1/models", s.handle("models", (*call).models))
	m.HandleFunc("GET /v1/models/{id}", s.handle("models", (*call).model1))
	m.HandleFunc("POST /v1/messages", s.handle("anthropic", (*call).messages))
	m.HandleFunc("POST /v1/messages/count_tokens", s.handle("count_tokens", (*call).countTokens))
	m.HandleFunc("POST /v1beta/models/{call}", s.handle("gemini", (*call).gemini))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	m.HandleFunc("GET /_fake/requests", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Requests()) })
	m.HandleFunc("DELETE /_fake/requests", func(w http.ResponseWriter, _ *http.Request) { s.Reset(); w.WriteHeader(http.StatusNoContent) })
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, openAIError("Unknown request URL: "+r.Method+" "+r.URL.Path, "invalid_request_error", "unknown_url"))
	})
	s.mux = m
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Requests returns a copy of the records of every request served since the last Reset, in
// arrival order.
func (s *Server) Requests() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Record, len(s.records))
	copy(out, s.records)
	return out
}

// Busy returns how many requests are being served. A request is recorded when its handler
// returns, which may be after its client read the whole response (openai-go stops reading at
// "data: [DONE]"): wait for Busy to reach 0 before reading the record of a request just made.
func (s *Server) Busy() int { return int(s.busy.Load()) }

// Delayed returns how many requests are waiting out their x-fake-delay-ms: a test that
// cancels a delayed request waits for it to be there first.
func (s *Server) Delayed() int { return int(s.delayed.Load()) }

// Count returns how many requests were served since the last Reset.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// Reset forgets every record.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = nil
}

// call is one request in flight.
type call struct {
	s        *Server
	w        http.ResponseWriter
	r        *http.Request
	body     []byte
	req      request
	rec      *Record
	cutAfter int  // SSE events or JSON bytes; 0 = never
	aborted  bool // abort() cut the response
	// wrote is set by the first write of the response body; live says whether the client was
	// still there at the last one, failed whether a write failed. A client that closes once it
	// has read the end (openai-go stops at "data: [DONE]") leaves a complete response.
	wrote, live, failed bool
	created             int64
	id                  string
}

// request holds the request-body fields any of the APIs uses.
type request struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int64          `json:"max_tokens"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	MaxOutputTokens     *int64          `json:"max_output_tokens"`
	Input               json.RawMessage `json:"input"`
	Dimensions          int             `json:"dimensions"`
	EncodingFormat      string          `json:"encoding_format"`
	GenerationConfig    *struct {
		MaxOutputTokens *int64 `json:"maxOutputTokens"`
	} `json:"generationConfig"`
}

func (s *Server) handle(api string, h func(*call) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.busy.Add(1)
		defer s.busy.Add(-1) // after finish: deferred calls run last first
		c := &call{s: s, w: w, r: r}
		s.mu.Lock()
		s.seq++
		c.rec = &Record{Seq: s.seq, Method: r.Method, Path: r.URL.Path, API: api, RequestID: r.Header.Get("x-request-id"),
			AcceptEncoding: r.Header.Get("accept-encoding")}
		s.mu.Unlock()
		c.created = s.now().Unix()
		c.id = fmt.Sprintf("%06d", c.rec.Seq)
		// Recorded even when the handler aborts the connection (panic(http.ErrAbortHandler)).
		defer s.finish(c.rec)
		if coding := negotiate(c.rec.AcceptEncoding, providerCodings[providerOf(api)]); coding != "" {
			cw := &compressingWriter{ResponseWriter: w, coding: coding}
			c.w, c.rec.Encoding = cw, coding
			defer func() {
				if !c.aborted {
					cw.finish() // a cut response ends without the coding's trailer
				}
			}()
		}

		if err := c.prepare(); err != nil {
			c.rec.Status = http.StatusBadRequest
			c.error(http.StatusBadRequest, err.Error())
			return
		}
		if err := c.delay(); err != nil {
			c.rec.Status = 499 // client closed the request
			return
		}
		if st := headerInt(r, HeaderStatus); st >= 400 && st <= 599 {
			c.rec.Status = int(st)
			c.rec.Usage = Usage{}
			c.error(int(st), "fake provider error requested by "+HeaderStatus)
			return
		}
		c.rec.Status = http.StatusOK
		if err := h(c); err != nil {
			c.rec.Status = http.StatusBadRequest
			c.error(http.StatusBadRequest, err.Error())
			return
		}
		if c.complete() {
			c.rec.Complete = true
		}
	}
}

func (s *Server) finish(rec *Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = append(s.records, *rec)
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (c *call) prepare() error {
	if c.r.Method == http.MethodPost {
		b, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, maxRequestBody))
		if err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		c.body = b
		if len(b) > 0 {
			if err := json.Unmarshal(b, &c.req); err != nil {
				return fmt.Errorf("request body is not valid JSON: %w", err)
			}
		}
	}
	c.rec.Model = c.req.Model
	c.rec.Stream = c.req.Stream
	c.rec.IncludeUsage = c.req.StreamOptions != nil && c.req.StreamOptions.IncludeUsage
	c.cutAfter = int(headerInt(c.r, HeaderCutAfter))

	out := c.s.DefaultOutputTokens
	if out <= 0 {
		out = DefaultOutputTokens
	}
	for _, cap := range []*int64{c.req.MaxTokens, c.req.MaxCompletionTokens, c.req.MaxOutputTokens, c.maxOutputGemini()} {
		if cap != nil && *cap < out {
			out = max(*cap, 0)
		}
	}
	u := Usage{InputTokens: c.promptTokens(), OutputTokens: out}
	if v, ok := headerValue(c.r, HeaderInputTokens); ok {
		u.InputTokens = v
	}
	if v, ok := headerValue(c.r, HeaderOutputTokens); ok {
		u.OutputTokens = v
	}
	u.CachedTokens, _ = headerValue(c.r, HeaderCachedTokens)
	u.CacheCreationTokens, _ = headerValue(c.r, HeaderCacheCreationTokens)
	u.ReasoningTokens, _ = headerValue(c.r, HeaderReasoningTokens)
	c.rec.Usage = u
	return nil
}

func (c *call) maxOutputGemini() *int64 {
	if c.req.GenerationConfig == nil {
		return nil
	}
	return c.req.GenerationConfig.MaxOutputTokens
}

// capped reports whether the output was limited by the request's own cap (finish reason
// "length" / "max_tokens" / MAX_TOKENS), as opposed to chosen by header.
func (c *call) capped() bool {
	if _, ok := headerValue(c.r, HeaderOutputTokens); ok {
		return false
	}
	for _, cap := range []*int64{c.req.MaxTokens, c.req.MaxCompletionTokens, c.req.MaxOutputTokens, c.maxOutputGemini()} {
		if cap != nil && *cap == c.rec.Usage.OutputTokens {
			return true
		}
	}
	return false
}

func (c *call) model() string {
	if m := c.r.Header.Get(HeaderResponseModel); m != "" {
		return m
	}
	return c.req.Model
}

func (c *call) delay() error {
	ms := headerInt(c.r, HeaderDelayMs)
	if ms <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	c.s.delayed.Add(1)
	defer c.s.delayed.Add(-1)
	select {
	case <-t.C:
		return nil
	case <-c.r.Context().Done():
		return c.r.Context().Err()
	}
}

// error writes the provider's error body for this API.
func (c *call) error(status int, msg string) {
	typ := "server_error"
	switch {
	case status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
		c.w.Header().Set("retry-after", "1")
	case status < 500:
		typ = "invalid_request_error"
	}
	switch c.rec.API {
	case "anthropic", "count_tokens":
		atype := map[int]string{400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
			404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}[status]
		if atype == "" {
			atype = "api_error"
		}
		c.w.Header().Set("request-id", "req_fake_"+c.id)
		writeJSON(c.w, status, map[string]any{"type": "error", "error": map[string]any{"type": atype, "message": msg}})
	case "gemini":
		writeJSON(c.w, status, map[string]any{"error": map[string]any{"code": status, "message": msg, "status": geminiStatus(status)}})
	default:
		c.w.Header().Set("x-request-id", "req_fake_"+c.id)
		writeJSON(c.w, status, openAIError(msg, typ, nil))
	}
}

func geminiStatus(status int) string {
	switch status {
	case 400:
		return "INVALID_ARGUMENT"
	case 403:
		return "PERMISSION_DENIED"
	case 404:
		return "NOT_FOUND"
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 503:
		return "UNAVAILABLE"
	default:
		return "INTERNAL"
	}
}

func openAIError(msg, typ string, code any) map[string]any {
	return map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": code}}
}

// json writes a complete JSON response, honouring x-fake-cut-after as a byte count.
func (c *call) json(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // our own response types always marshal
	}
	h := c.w.Header()
	h.Set("content-type", "application/json")
	h.Set("content-length", strconv.Itoa(len(b)))
	c.w.WriteHeader(http.StatusOK)
	if c.cutAfter > 0 && c.cutAfter < len(b) {
		_, _ = c.w.Write(b[:c.cutAfter])
		c.abort()
	}
	c.writing()
	if _, err := c.w.Write(b); err != nil {
		c.failed = true
	}
}

// writing records, before a write of the response body, whether the client is still there.
func (c *call) writing() {
	c.wrote, c.live = true, c.r.Context().Err() == nil
}

// complete reports whether the whole response was written while the client was connected.
func (c *call) complete() bool {
	if !c.wrote {
		return c.r.Context().Err() == nil
	}
	return c.live && !c.failed
}

// abort flushes what was written and drops the connection without a clean end of response.
func (c *call) abort() {
	if f, ok := c.w.(http.Flusher); ok {
		f.Flush()
	}
	c.aborted = true
	panic(http.ErrAbortHandler)
}

// sse streams server-sent events, honouring x-fake-cut-after as an event count.
type sse struct {
	c *call
	n int
}

func (c *call) sse() *sse {
	h := c.w.Header()
	h.Set("content-type", "text/event-stream; charset=utf-8")
	h.Set("cache-control", "no-cache")
	c.w.WriteHeader(http.StatusOK)
	return &sse{c: c}
}

// event sends one event: an "event:" line when name is set, then the data (JSON-encoded unless
// it is a string already). report, if set, runs once the event is on the wire.
func (e *sse) event(name string, data any, report func(*Usage)) {
	if e.c.cutAfter > 0 && e.n >= e.c.cutAfter {
		e.c.abort()
	}
	var payload []byte
	if s, ok := data.(string); ok {
		payload = []byte(s)
	} else {
		b, err := json.Marshal(data)
		if err != nil {
			panic(err)
		}
		payload = b
	}
	var sb strings.Builder
	if name != "" {
		sb.WriteString("event: " + name + "\n")
	}
	sb.WriteString("data: ")
	sb.Write(payload)
	sb.WriteString("\n\n")
	e.c.writing()
	if _, err := io.WriteString(e.c.w, sb.String()); err != nil {
		e.c.failed = true
		return
	}
	if f, ok := e.c.w.(http.Flusher); ok {
		f.Flush()
	}
	e.n++
	if report != nil {
		report(&e.c.rec.Reported)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func headerValue(r *http.Request, name string) (int64, bool) {
	v := r.Header.Get(name)
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

func headerInt(r *http.Request, name string) int64 {
	n, _ := headerValue(r, name)
	return n
}

// words returns n deterministic "tokens" of text, at most 512 words (usage is what matters).
func words(n int64) []string {
	const lorem = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
	src := strings.Fields(lorem)
	n = min(n, 512)
	out := make([]string, n)
	for i := range out {
		out[i] = src[i%len(src)] + " "
	}
	return out
}

// pieces splits the words of an answer into at most k stream deltas (at least one, possibly "").
func pieces(ws []string, k int) []string {
	if len(ws) == 0 {
		return []string{""}
	}
	k = min(k, len(ws))
	out := make([]string, 0, k)
	per := (len(ws) + k - 1) / k
	for i := 0; i < len(ws); i += per {
		out = append(out, strings.Join(ws[i:min(i+per, len(ws))], ""))
	}
	return out
}

var errUnsupported = errors.New("unsupported request")
