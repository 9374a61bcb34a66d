package extauthz

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/time/rate"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/extauthz/request"
)

// Reserver holds a request's worst-case cost (the ledger's Batcher).
type Reserver interface {
	Reserve(ctx context.Context, req budget.ReserveRequest) (budget.Decision, error)
}

// Admitter predicts, before any work is done for a Check, whether the ledger would refuse it
// as over capacity (the ledger's Batcher: Admit wraps budget.ErrOverloaded then). Optional:
// a Reserver that is not one is asked only through Reserve.
type Admitter interface {
	Admit(ctx context.Context) error
}

// Authenticator resolves a purser API key secret (the ledger's Service).
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (*budget.Key, error)
}

// Server implements envoy.service.auth.v3.Authorization.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	cfg     Config
	res     Reserver
	admit   Admitter // res, when it predicts its refusals; else nil
	auth    Authenticator
	catalog func() *pricing.Catalog
	m       *metrics

	denialLog      *rate.Limiter
	denialsDropped atomic.Int64                             // denials not logged since the last line that was
	inflight       atomic.Int64                             // billable Checks being decided (admission control)
	limit          *limiter                                 // caps them when they queue inside purser
	shed           map[pricing.Flavor]*authv3.CheckResponse // early sheds' answers, read-only

	reset atomic.Pointer[lastReset] // resetFormat's last answer
}

// New returns a Server. catalog returns the price catalog in force (it may change on reload).
func New(res Reserver, auth Authenticator, catalog func() *pricing.Catalog, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(cfg.Meter)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, res: res, auth: auth, catalog: catalog, m: m,
		denialLog: rate.NewLimiter(rate.Limit(cfg.DenialLogRate), int(2*cfg.DenialLogRate)+1)}
	s.admit, _ = res.(Admitter)
	s.limit = newLimiter(cfg.CheckTimeout, cfg.MaxInFlight)
	s.shed = s.shedResponses()
	return s, nil
}

// Check decides one request. Budget decisions (allow, deny) are CheckResponses with a nil
// error; only "cannot decide" (ledger unreachable, deadline passed) is a gRPC error, so that
// Envoy's failure_mode_allow and status_on_error apply as the operator configured them.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	ctx, cancel := s.deadline(ctx, start)
	defer cancel()
	bill := billable(req)
	if bill {
		// Admission before any work: a Check the ledger would refuse anyway is answered
		// before its body is parsed, its key looked up and its cost bounded.
		n := s.inflight.Add(1)
		defer s.inflight.Add(-1)
		if err := s.admission(ctx, n, start); err != nil {
			return s.shedEarly(ctx, req, start), nil
		}
	}
	r := request.Parse(req, &s.cfg.Request)
	v := s.decide(ctx, &r, requestStart(req))
	resp, err := s.respond(&r, v)
	took := time.Since(start)
	if bill {
		s.limit.record(start.Add(took), took, s.inflight.Load())
	}
	s.observe(ctx, &r, v, took)
	return resp, err
}

// billable reports whether a Check may need a reservation: only POSTs are billable (see
// request.Parse), so other methods never wait for the ledger and are never shed.
func billable(req *authv3.CheckRequest) bool {
	h := req.GetAttributes().GetRequest().GetHttp()
	m := h.GetMethod()
	if m == "" {
		m = h.GetHeaders()[":method"]
	}
	return strings.EqualFold(m, "POST")
}

// admission refuses a Check arriving at now, before any work is done for it, when n Checks
// (its own included) are already being decided past MaxInFlight or past the cap a queue
// inside purser set (limiter), or when the ledger predicts it would refuse it (its queue is
// full or its expected wait exceeds the time left).
func (s *Server) admission(ctx context.Context, n int64, now time.Time) error {
	if n > int64(s.cfg.MaxInFlight) {
		return fmt.Errorf("%w: %d Checks in flight", budget.ErrOverloaded, n-1)
	}
	if !s.limit.admits(n, now) {
		return fmt.Errorf("%w: %d Checks in flight, queued in purser", budget.ErrOverloaded, n-1)
	}
	if s.admit != nil {
		return s.admit.Admit(ctx)
	}
	return nil
}

// shedEarly answers a Check refused by admission: the same 503 denial (retry-after: 1,
// x-purser-reason: overloaded) as a refusal by the ledger, with the error body in the API
// format the route or path names. Nothing was reserved.
func (s *Server) shedEarly(ctx context.Context, req *authv3.CheckRequest, start time.Time) *authv3.CheckResponse {
	f := shedFlavor(req)
	resp := s.shed[f]
	if s.cfg.Logger.Enabled(ctx, slog.LevelInfo) {
		r := request.Request{RequestID: req.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"], Flavor: f}
		s.observe(ctx, &r, shedVerdict(), time.Since(start))
	} else {
		s.observe(ctx, &request.Request{}, shedVerdict(), time.Since(start))
	}
	return resp
}

func shedVerdict() verdict { return deny(verdict{}, 503, ReasonOverloaded, overloadedMessage) }

// shedResponses builds the early shed's answers once, one per error envelope: they are only
// read afterwards (by gRPC, to send them), so every shed Check shares its flavour's.
func (s *Server) shedResponses() map[pricing.Flavor]*authv3.CheckResponse {
	m := map[pricing.Flavor]*authv3.CheckResponse{}
	for _, f := range []pricing.Flavor{pricing.FlavorChat, pricing.FlavorAnthropic, pricing.FlavorGemini, pricing.FlavorGeminiEmbeddings} {
		m[f] = s.denied(&request.Request{Flavor: f}, shedVerdict())
	}
	return m
}

const overloadedMessage = "purser is over capacity: retry in a moment"

// shedFlavor picks the error envelope of an early shed without parsing the request: the
// route's api_flavor, else Anthropic's and Gemini's paths, else OpenAI's (the SDKs retry a
// 503 with Retry-After whatever its body).
func shedFlavor(req *authv3.CheckRequest) pricing.Flavor {
	a := req.GetAttributes()
	switch f := pricing.Flavor(strings.TrimSpace(a.GetContextExtensions()["api_flavor"])); f {
	case pricing.FlavorAnthropic, pricing.FlavorGemini, pricing.FlavorGeminiEmbeddings:
		return f
	case "":
	default:
		return pricing.FlavorChat
	}
	h := a.GetRequest().GetHttp()
	p := h.GetPath()
	if p == "" {
		p = h.GetHeaders()[":path"]
	}
	p, _, _ = strings.Cut(p, "?")
	switch {
	case strings.HasSuffix(p, "/messages"):
		return pricing.FlavorAnthropic
	case strings.Contains(p, ":generateContent"), strings.Contains(p, ":streamGenerateContent"):
		return pricing.FlavorGemini
	case strings.Contains(p, ":embedContent"), strings.Contains(p, ":batchEmbedContents"):
		return pricing.FlavorGeminiEmbeddings
	}
	return pricing.FlavorChat
}

// deadline is the earlier of the server's own deadline and Envoy's minus a margin to answer.
func (s *Server) deadline(ctx context.Context, now time.Time) (context.Context, context.CancelFunc) {
	d := now.Add(s.cfg.CheckTimeout)
	if envoy, ok := ctx.Deadline(); ok {
		if e := envoy.Add(-s.cfg.DeadlineMargin); e.Before(d) {
			d = e
		}
	}
	return context.WithDeadline(ctx, d)
}

// outcome kinds of a verdict.
type kind int

const (
	kindAllow        kind = iota // reserved (or duplicate of a reservation)
	kindPass                     // allowed without a reservation (non-billable)
	kindUnverified               // allowed without a reservation because the ledger failed and the route fails open
	kindDeny                     // a local reply (429, 401, 403, 400, 413)
	kindError                    // cannot decide: gRPC error
	kindUnidentified             // deny 401: no identity
)

// verdict is everything respond needs.
type verdict struct {
	kind     kind
	status   int    // HTTP status of a denial
	reason   string // machine reason: budget_exceeded, invalid_api_key, ...
	message  string // human message for the caller (no secrets)
	err      error  // kindError: the cause
	decision *budget.Decision
	key      *budget.Key
	subjects []budget.Subject
	cred     *request.Credential
	cost     int64
	tokens   int64
}

// keyPrefix marks purser keys among credential candidates: other credentials (for example a
// provider key the client sends on a pass-through route) are not ours to judge.
const keyPrefix = budget.SecretPrefix

// requestStart is attributes.request.time: when Envoy started the downstream stream (zero when
// absent). Envoy sets it from StreamInfo::startTime() to the nanosecond, as it sets the
// access-log entry's common_properties.start_time (see accesslog: the fallback join).
func requestStart(req *authv3.CheckRequest) time.Time {
	t := req.GetAttributes().GetRequest().GetTime()
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return time.Time{}
	}
	return t.AsTime()
}

func (s *Server) decide(ctx context.Context, r *request.Request, start time.Time) verdict {
	v := s.identify(ctx, r)
	if v.kind != kindAllow {
		return v
	}
	if !r.Billable {
		if r.RouteError != nil {
			// The route's context is invalid (say, a malformed api_flavor) and the request
			// would pass unbilled: the operator meant something else. Fail closed, loudly.
			return verdict{kind: kindError, err: fmt.Errorf("route context: %w", r.RouteError)}
		}
		if r.Unpriced && s.cfg.Unpriced == UnpricedDeny {
			return deny(v, 403, "unpriced_endpoint", fmt.Sprintf("purser cannot bound the cost of %s %s, so this endpoint is not allowed here", r.Method, r.Path))
		}
		v.kind = kindPass
		return v
	}
	if v.key != nil && r.Model != "" && !v.key.AllowsModel(r.Model) {
		return deny(v, 403, "model_not_allowed", fmt.Sprintf("this API key may not use model %q", r.Model))
	}
	v, ok := s.bound(r, v)
	if !ok {
		return v
	}
	rr := budget.ReserveRequest{
		Subjects: v.subjects,
		Target:   budget.Target{Model: r.Model, Path: r.Path, Route: r.Route.Raw},
		Provider: r.Provider, Flavor: string(r.Flavor), Route: r.Route.Route, RequestID: r.RequestID,
		Cost: v.cost, Tokens: v.tokens, TTL: s.ttl(r),
	}
	if v.key != nil {
		rr.KeyID = v.key.ID
	}
	rr.IdempotencyKey = idempotencyKey(rr.KeyID, v.subjects, r, start)
	d, err := s.res.Reserve(ctx, rr)
	if errors.Is(err, budget.ErrOverloaded) {
		// Shed at once, on every route (even one that fails open: the ledger works, it is
		// busy): a denied answer, so Envoy's failure mode and version do not matter.
		return deny(v, 503, ReasonOverloaded, overloadedMessage)
	}
	if err != nil {
		return s.cannotDecide(r, v, err)
	}
	v.decision = &d
	if lim, ok := errors.AsType[*budget.SubjectLimit](d.Refused); ok {
		if lim.Retry {
			return deny(v, 429, "new_subject_rate_limited", "too many new "+lim.Subject.Kind()+" subjects at once: retry in a moment")
		}
		return deny(v, 403, "subject_limit_reached", "no budget can be made for this new "+lim.Subject.Kind()+" subject: its budget template is at its limit")
	}
	if d.Outcome == budget.Denied {
		if b := neverFits(&d); b != nil {
			// Waiting cannot help: 400 (not retried by the OpenAI and Anthropic SDKs, which
			// retry 408, 409, 429 and 5xx), no Retry-After, x-should-retry: false.
			return deny(v, 400, ReasonExceedsBudget, s.neverFitsMessage(b))
		}
		return deny(v, 429, "budget_exceeded", s.exhaustedMessage(d.DeniedBy, v.cost, v.tokens))
	}
	return v
}

// ReasonOverloaded is the reason of a request shed because purser could not decide it within
// its deadline (503 with Retry-After; nothing was reserved).
const ReasonOverloaded = "overloaded"

// ReasonExceedsBudget is the reason of a request whose worst case is larger than a hard
// budget's whole effective limit: it cannot be admitted even in an empty window.
const ReasonExceedsBudget = "request_exceeds_budget"

// neverFits returns a hard budget whose whole effective limit (grants included) is smaller
// than what the request must hold on it, or nil.
func neverFits(d *budget.Decision) *budget.BudgetState {
	for i := range d.Budgets {
		if b := &d.Budgets[i]; b.Budget.Hard && b.Enforced && b.Amount > b.Limit {
			return b
		}
	}
	return nil
}

func (s *Server) neverFitsMessage(b *budget.BudgetState) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "this request's worst case is larger than the whole limit of budget %q (%s)", b.Budget.Name, b.Budget.Subject)
	if b.Budget.Window.Kind != budget.Lifetime {
		fmt.Fprintf(&sb, " for a %s", b.Budget.Window.Kind)
	}
	sb.WriteString(", so it can never be admitted: set a lower max_tokens (or set one: without it purser holds the model's maximum output) or send less input")
	if s.cfg.ShowAmounts {
		fmt.Fprintf(&sb, " (limit %s, this request may cost up to %s)", formatAmount(b.Budget.Unit, b.Limit), formatAmount(b.Budget.Unit, b.Amount))
	}
	return sb.String()
}

// identify resolves the caller's subjects: the API key and its owners, the mTLS workload, JWT
// claims and trusted headers (parsed by request.Parse), the route's subjects, and global. The
// claims (workload, JWT, trusted headers) and the route's subjects are believed only from an
// authenticated Envoy: any client that reaches an unauthenticated gRPC port could assert them.
func (s *Server) identify(ctx context.Context, r *request.Request) verdict {
	var v verdict
	var sawCredential bool
	for i := range r.Credentials {
		c := &r.Credentials[i]
		if !strings.HasPrefix(c.Secret, keyPrefix) {
			sawCredential = true
			continue
		}
		k, err := s.auth.Authenticate(ctx, c.Secret)
		switch {
		case err == nil:
			v.key, v.cred = k, c
		case errors.Is(err, budget.ErrKeyRevoked):
			return verdict{kind: kindUnidentified, status: 401, reason: "key_revoked", message: "this API key (" + displayPrefix(k) + ") was revoked"}
		case errors.Is(err, budget.ErrKeyExpired):
			return verdict{kind: kindUnidentified, status: 401, reason: "key_expired", message: "this API key (" + displayPrefix(k) + ") has expired"}
		case errors.Is(err, budget.ErrKeyUnknown):
			return verdict{kind: kindUnidentified, status: 401, reason: "invalid_api_key", message: "the API key is not valid"}
		default:
			// Never fail open here: an unverified credential is no identity at all.
			return verdict{kind: kindError, err: err}
		}
		break
	}
	if v.key != nil {
		v.subjects = append(v.subjects, v.key.AllSubjects()...)
	}
	identified := v.key != nil
	trusted := s.cfg.Authenticated == nil || s.cfg.Authenticated(ctx)
	ignored := false
	for _, raw := range r.Subjects {
		sub, err := budget.ParseSubject(raw)
		if err != nil {
			s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "ignoring an invalid subject", slog.String("error", err.Error()))
			continue
		}
		if !trusted {
			// From an unauthenticated caller the route context is as made-up as the claims:
			// a budget_subject there would charge someone else's budget.
			ignored = ignored || !fromRoute(sub, r)
			continue
		}
		if !fromRoute(sub, r) {
			identified = true
		}
		v.subjects = appendUnique(v.subjects, sub)
	}
	if ignored {
		s.m.untrusted(ctx)
	}
	if !identified {
		if ignored {
			return verdict{kind: kindUnidentified, status: 401, reason: "untrusted_identity",
				message: "purser ignores identity claims (mTLS principal, JWT claims, trusted headers) from a proxy that did not authenticate to it; send a purser API key, or configure the proxy with purser's shared secret or a client certificate"}
		}
		if s.cfg.DefaultSubject == "" {
			msg := "no purser API key: send one as Authorization: Bearer " + keyPrefix + "..."
			if sawCredential {
				msg = "the credential sent is not a purser API key (purser keys start with " + keyPrefix + ")"
			}
			return verdict{kind: kindUnidentified, status: 401, reason: "missing_api_key", message: msg}
		}
		v.subjects = appendUnique(v.subjects, budget.Subject(s.cfg.DefaultSubject))
	}
	v.subjects = appendUnique(v.subjects, budget.Global)
	v.kind = kindAllow
	return v
}

func displayPrefix(k *budget.Key) string {
	if k == nil {
		return keyPrefix + "..."
	}
	return k.Prefix + "..."
}

// fromRoute reports whether a subject came from the route context (it says where the
// request goes, not who sent it, so it does not identify the caller).
func fromRoute(s budget.Subject, r *request.Request) bool {
	k := s.Kind()
	return k == budget.KindRoute || k == budget.KindTag || string(s) == r.Route.BudgetSubject
}

func appendUnique(ss []budget.Subject, s budget.Subject) []budget.Subject {
	for _, x := range ss {
		if x == s {
			return ss
		}
	}
	return append(ss, s)
}

// bound computes the request's worst-case cost and tokens, applying the configured policies
// to what the parser could not establish.
func (s *Server) bound(r *request.Request, v verdict) (verdict, bool) {
	if r.BodyError != nil && s.cfg.InvalidBody == BodyDeny {
		return deny(v, 400, "invalid_body", "purser cannot read the request body: "+r.BodyError.Error()), false
	}
	if r.CapError != nil {
		return deny(v, 400, "invalid_output_cap", r.CapError.Error()), false
	}
	if r.Truncated {
		if s.cfg.TruncatedBody == BodyDeny {
			return deny(v, 413, "body_truncated", "the request body is larger than the proxy lets purser inspect; send a smaller request"), false
		}
		if r.ContentLength < 0 {
			return deny(v, 413, "body_truncated", "the request body was cut by the proxy and has no content-length, so its cost cannot be bounded"), false
		}
	}
	if r.Model == "" {
		if r.BodyError != nil {
			return deny(v, 400, "invalid_body", "purser cannot read the request body: "+r.BodyError.Error()), false
		}
		if r.Truncated {
			return deny(v, 413, "body_truncated", "the model field was beyond the part of the body the proxy let purser inspect; put \"model\" first or send a smaller request"), false
		}
		return deny(v, 400, "missing_model", "the request names no model"), false
	}
	cat := s.catalog()
	m, ok := cat.Lookup(r.Provider, r.Model)
	if !ok {
		if s.cfg.UnknownModel == UnknownModelDefaultPrice {
			m, ok = cat.DefaultModel()
		}
		if !ok {
			return deny(v, 400, "unknown_model", fmt.Sprintf("purser has no price for model %q, so it cannot admit the request; an operator can add it to the price overrides", r.Model)), false
		}
	}
	if !r.HasOutputCap && s.cfg.MissingCap == MissingCapDeny && r.Flavor != pricing.FlavorEmbeddings && r.Flavor != pricing.FlavorGeminiEmbeddings {
		return deny(v, 400, "output_cap_required", "set an output-token cap (max_tokens, max_completion_tokens or max_output_tokens): purser reserves the worst case before the request runs"), false
	}
	if r.Stream && !r.StreamUsage && s.cfg.StreamWithoutUsage == StreamUsageDeny && (r.Flavor == pricing.FlavorChat || r.Flavor == pricing.FlavorCompletions) {
		return deny(v, 400, "stream_usage_required", `set "stream_options": {"include_usage": true} on streamed requests: without it the response reports no usage and purser would charge the whole reservation`), false
	}
	input := r.InputTokens
	if r.ExternalInput {
		// Input the body does not bound: only the context window does.
		switch {
		case m.ContextWindow > 0:
			input = m.ContextWindow
		case *s.cfg.ExternalInputTokens > 0:
			input = max(input, *s.cfg.ExternalInputTokens) // the operator's assertion
		default:
			return deny(v, 400, "external_input_unbounded", fmt.Sprintf("purser cannot bound the input of this request to model %q from its body (previous_response_id, conversation, cached content, file references, server-side tools, audio, video or documents, images without a documented per-image maximum, or a body purser could not read whole) and knows no context window for the model; an operator can set the model's context_window in the price overrides", r.Model)), false
		}
	}
	if m.ContextWindow > 0 && input > m.ContextWindow {
		input = m.ContextWindow // the provider rejects longer inputs
	}
	out, ok := s.outputBound(r, m)
	if !ok {
		return deny(v, 400, "output_unbounded", fmt.Sprintf("purser knows neither the maximum output nor the context window of model %q, so it cannot bound this request's output: set max_tokens (or an operator can set the model's max_output_tokens in the price overrides)", r.Model)), false
	}
	cost, err := m.UpperBound(input, out)
	if err != nil || cost > budget.MaxLimit || input+out > budget.MaxLimit || input+out < 0 {
		return deny(v, 400, "too_expensive", "the request's worst-case cost is too large to reserve; lower max_tokens"), false
	}
	v.cost, v.tokens = cost, input+out
	return v, true
}

// outputBound is the most output tokens the request can produce, all its choices (n,
// best_of, candidateCount) together; false when nothing bounds it.
//
// The model's limit is its maximum output (catalog), else its context window: no response is
// longer than the window. A request's own cap counts up to that limit (the provider refuses a
// larger one). Reasoning is inside the cap on OpenAI (max_completion_tokens,
// max_output_tokens) and Anthropic (thinking.budget_tokens < max_tokens); Google documents
// Gemini's thinking as separate from maxOutputTokens, so a thinking Gemini's cap is
// maxOutputTokens + thinkingBudget, or the model's limit when the request sets no budget.
// Without a cap, policies.missing_output_cap decides: model_max (the default) holds the
// model's limit, default holds DefaultOutputCap (the operator's assertion, not a bound).
func (s *Server) outputBound(r *request.Request, m *pricing.Model) (int64, bool) {
	if r.Flavor == pricing.FlavorEmbeddings || r.Flavor == pricing.FlavorGeminiEmbeddings {
		return 0, true
	}
	limit := m.MaxOutputTokens
	if limit <= 0 {
		limit = m.ContextWindow
	}
	var out int64
	switch {
	case r.HasOutputCap:
		out = r.OutputCap
		if r.Flavor == pricing.FlavorGemini && request.IsGeminiThinking(r.Model) && (!r.HasThinkingBudget || r.ThinkingBudget != 0) {
			switch {
			case r.HasThinkingBudget && r.ThinkingBudget > 0:
				out = addSat(out, r.ThinkingBudget)
			case limit > 0:
				out = limit // dynamic or default thinking: up to the model's limit
			default:
				return 0, false
			}
		}
	case s.cfg.MissingCap == MissingCapDefault:
		out = s.cfg.DefaultOutputCap
	case limit > 0:
		out = limit
	default:
		return 0, false
	}
	if limit > 0 {
		out = min(out, limit)
	}
	return mulSat(out, max(r.Choices, 1)), true
}

func (s *Server) ttl(r *request.Request) time.Duration {
	if raw := r.Route.Raw["reservation_ttl"]; raw != "" {
		if d, err := time.ParseDuration(raw); err == nil && d >= defaultReservationFloor {
			return d
		}
	}
	return s.cfg.ReservationTTL
}

// idempotencyKey identifies one downstream request: the same Check retried (Envoy
// grpc_service.retry_policy) reserves once. It includes Envoy's stream id, so a client that
// reuses an x-request-id for a new request gets a new reservation, not a free ride.
//
// When the Check carries the time Envoy received the request (the same in every retry), the
// key starts with it in Unix nanoseconds, big-endian, before the SHA-256: keys then arrive in
// nearly ascending order and land on the few rightmost pages of the reservations' unique
// index, which stay cached, instead of on a random page of an index larger than
// shared_buffers each (a measured fifth of purser_reserve's time on a ledger of a million
// reservations).
func idempotencyKey(keyID string, subjects []budget.Subject, r *request.Request, start time.Time) []byte {
	if r.RequestID == "" || r.StreamID == "" {
		return nil
	}
	var key []byte
	if !start.IsZero() && start.UnixNano() > 0 {
		// The start to the nanosecond (budget.RequestStartKey): the access log's fallback join
		// finds this reservation by it, and by nothing a client controls.
		key = binary.BigEndian.AppendUint64(make([]byte, 0, 8+sha256.Size), uint64(start.UnixNano()))
	}
	h := sha256.New()
	h.Write([]byte("purser/v1\x00"))
	if keyID != "" {
		h.Write([]byte(keyID))
	} else {
		for _, s := range subjects {
			h.Write([]byte(s))
			h.Write([]byte{0})
		}
	}
	h.Write([]byte{0})
	h.Write([]byte(r.RequestID))
	h.Write([]byte{0})
	h.Write([]byte(r.StreamID))
	return h.Sum(key)
}

// cannotDecide turns a failure to reserve into a gRPC error (Envoy's failure mode applies),
// or, on a route whose failure_policy is "open", into an unverified admission of the
// identified caller (recorded as unreserved spend when its access-log entry arrives).
func (s *Server) cannotDecide(r *request.Request, v verdict, err error) verdict {
	if r.Route.FailurePolicy == request.FailureOpen {
		v.kind, v.err = kindUnverified, err
		return v
	}
	return verdict{kind: kindError, err: err}
}

func deny(v verdict, status int, reason, message string) verdict {
	v.kind, v.status, v.reason, v.message = kindDeny, status, reason, message
	return v
}

func (s *Server) exhaustedMessage(b *budget.BudgetState, cost, tokens int64) string {
	if b == nil {
		return "a budget has no room for this request"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "budget %q (%s) is exhausted", b.Budget.Name, b.Budget.Subject)
	if b.Budget.Window.Kind == budget.Lifetime {
		sb.WriteString("; it does not reset")
	} else {
		fmt.Fprintf(&sb, " until %s", b.Window.End.UTC().Format(time.RFC3339))
	}
	if s.cfg.ShowAmounts {
		fmt.Fprintf(&sb, " (limit %s, used %s, this request may cost up to %s)",
			formatAmount(b.Budget.Unit, b.Limit), formatAmount(b.Budget.Unit, b.Used), formatAmount(b.Budget.Unit, b.Amount))
	}
	return sb.String()
}

func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func mulSat(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

// formatAmount writes an amount in its unit: USD with a dollar sign, tokens and requests as
// integers.
func formatAmount(u budget.Unit, n int64) string {
	switch u {
	case budget.Tokens:
		return fmt.Sprintf("%d tokens", n)
	case budget.Requests:
		return fmt.Sprintf("%d requests", n)
	}
	return "$" + pricing.FormatMicros(n)
}
