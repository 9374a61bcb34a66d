package request

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/purser-dev/purser/budget/pricing"
)

// Parse reads an ext_authz CheckRequest. It is pure (no I/O) and never panics; it never
// yields a "free" answer for a problem: problems are recorded in Request (BodyError,
// CapError, RouteError, SubjectErrors, Truncated, ExternalInput, Unpriced) for the caller's
// policy. cfg may be nil for the defaults.
func Parse(req *authv3.CheckRequest, cfg *Config) Request {
	set := resolve(cfg)
	a := req.GetAttributes()
	h := a.GetRequest().GetHttp()
	hd := newHeaders(h)

	r := Request{
		ContentLength: -1,
		Choices:       1,
		StreamID:      h.GetId(),
		ReceivedAt:    a.GetRequest().GetTime().GetSeconds(),
		Principal:     a.GetSource().GetPrincipal(),
		Method:        firstNonEmpty(h.GetMethod(), hd.get(":method")),
		Host:          lower(firstNonEmpty(h.GetHost(), hd.get(":authority"), hd.get("host"))),
		RequestID:     hd.get("x-request-id"),
	}
	rawPath := firstNonEmpty(h.GetPath(), hd.get(":path"))
	path, query, _ := strings.Cut(rawPath, "?")
	path, _, _ = strings.Cut(path, "#")
	query, _, _ = strings.Cut(query, "#")
	r.Path = path
	r.ContentLength = contentLength(hd.get("content-length"))
	r.Route, r.RouteError = routeContext(a)

	body := h.GetRawBody()
	if len(body) == 0 && h.GetBody() != "" {
		// Read-only view of the string's bytes: the parser never writes to body.
		body = unsafe.Slice(unsafe.StringData(h.GetBody()), len(h.GetBody()))
	}
	r.BodyBytes = len(body)
	r.Truncated = strings.EqualFold(strings.TrimSpace(hd.get("x-envoy-auth-partial-body")), "true") ||
		r.ContentLength > int64(len(body))

	ep := recognize(path)
	r.Provider = firstNonEmpty(r.Route.Provider, providerFromHost(hostname(r.Host)), ep.provider)

	d := ep.dialect
	if strings.EqualFold(r.Method, "POST") {
		switch ep.kind {
		case epBillable:
			r.Billable, r.Flavor = true, ep.flavor
		case epUnpriced:
			r.Unpriced = true
		case epUnknown:
			r.Billable = r.Route.Flavor != ""
		}
	}
	if r.Billable && r.Route.Flavor != "" {
		d, _ = flavorDialect(r.Route.Flavor, ep.dialect)
		if r.Route.Flavor != pricing.FlavorOpenAICompatible || d == dialectGeneric {
			r.Flavor = r.Route.Flavor
		}
	}

	if r.Billable {
		images := r.readBody(body, d, hd.get("content-encoding"))
		switch {
		case ep.pathModel && ep.model != "":
			r.Model = ep.model
		case r.Model != "":
		case ep.model != "":
			r.Model = ep.model
		case cfg != nil && cfg.ModelHeader != "":
			r.Model = strings.TrimSpace(hd.get(cfg.ModelHeader))
		}
		r.Stream = r.Stream || ep.stream || strings.EqualFold(queryParam(query, "alt"), "sse")
		r.chargeImages(images, cfg)
	}

	r.Credentials = credentials(&hd, query, set.credentialSources())
	r.Subjects, r.SubjectErrors = deriveSubjects(&r, a, &hd, cfg)
	return r
}

// readBody fills the body-derived fields of a billable request and returns the number of
// images, which cost the model's per-image maximum (chargeImages, once the model is known).
func (r *Request) readBody(body []byte, d dialect, encoding string) (images int64) {
	// Any text in n bytes of body: at most maxWeightPerByte tokens per byte.
	sizeBound := mulSat(max(r.ContentLength, int64(len(body))), maxWeightPerByte)
	switch {
	case len(body) == 0 && !r.Truncated:
		r.BodyError = errEmptyBody
		return 0
	case encoding != "" && !strings.EqualFold(strings.TrimSpace(encoding), "identity"):
		r.BodyError = fmt.Errorf("unsupported content-encoding %q", encoding)
		r.InputTokens, r.ExternalInput = sizeBound, true // compressed: its size bounds nothing
		return 0
	}
	res := parseBody(body, d)
	r.Model, r.Stream, r.StreamUsage = res.model, res.stream, res.streamUsage
	r.OutputCap, r.HasOutputCap, r.CapError = res.cap, res.hasCap, res.capErr
	r.Choices = max(res.choices, 1)
	r.ThinkingBudget, r.HasThinkingBudget = res.thinking, res.hasThinking
	r.ExternalInput = res.external
	r.InputTokens = res.tokens
	switch {
	case res.err == nil:
	case errors.Is(res.err, errJSONEOF) && r.Truncated:
		// expected: the body was cut
	default:
		// What the parser could not read may hold anything, media included.
		r.BodyError = res.err
		r.InputTokens, r.ExternalInput = max(r.InputTokens, sizeBound), true
	}
	if r.Truncated {
		// The missing part may hold any text (bounded by its size) and any media (bounded
		// by nothing but the context window).
		missing := max(r.ContentLength-int64(len(body)), 0)
		r.InputTokens = addSat(r.InputTokens, mulSat(missing, maxWeightPerByte))
		r.ExternalInput = true
	}
	return res.images
}

// chargeImages adds the images' documented maximum for the request's model; without one the
// input is bounded only by the context window (ExternalInput).
func (r *Request) chargeImages(images int64, cfg *Config) {
	r.Images = images
	if images == 0 {
		return
	}
	per, ok := ImageTokensFor(r.Provider, r.Model, cfg)
	if !ok {
		r.ExternalInput = true
		return
	}
	r.InputTokens = addSat(r.InputTokens, mulSat(images, per))
}

// deriveSubjects builds the database-free subjects: SPIFFE workload and namespace, JWT
// claims, trusted headers, route, tags, budget_subject.
func deriveSubjects(r *Request, a *authv3.AttributeContext, hd *headers, cfg *Config) ([]string, []error) {
	var s subjects
	if r.Principal != "" {
		if ns, ok := spiffeNamespace(r.Principal); ok {
			s.add("workload", r.Principal, "source.principal")
			if ns != "" {
				s.add("namespace", ns, "source.principal")
			}
		}
	}
	if cfg != nil && len(cfg.JWT.Claims) > 0 {
		if payload := jwtPayload(a.GetMetadataContext(), &cfg.JWT); payload != nil {
			for _, m := range cfg.JWT.Claims {
				s.claimSubjects(payload, m)
			}
		}
	}
	if cfg != nil {
		for _, m := range cfg.TrustedHeaders {
			if m.Header == "" {
				continue
			}
			if v := hd.get(m.Header); v != "" {
				s.add(m.Subject, v, "header "+m.Header)
			}
		}
	}
	if r.Route.Route != "" {
		s.add("route", r.Route.Route, "route context route")
	}
	for _, t := range r.Route.Tags {
		s.add("tag", t, "route context tags")
	}
	if r.Route.BudgetSubject != "" {
		s.addSubject(r.Route.BudgetSubject, "route context budget_subject")
	}
	return s.list, s.errs
}

// contentLength parses a content-length value; -1 when absent or not a plain decimal.
func contentLength(v string) int64 {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 18 {
		return -1
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return -1
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
