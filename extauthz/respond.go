package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/extauthz/request"
	"github.com/purser-dev/purser/proof"
)

// Dynamic metadata keys (namespace envoy.filters.http.ext_authz), see docs/architecture.md.
const (
	MetaDecision       = "purser_decision"
	MetaReservationID  = "reservation_id"
	MetaReservedMicros = "reserved_micros"
	MetaReservedTokens = "reserved_tokens"
	MetaProvider       = "provider"
	MetaFlavor         = "api_flavor"
	MetaModel          = "model"
	MetaKeyID          = "key_id"
	MetaSubjects       = "subjects"
	// MetaProof proves the values above (package proof): on reserved and unverified answers.
	MetaProof = "purser_proof"
)

// Signer signs what a Check answer tells the access-log sink (a *proof.Keyring).
type Signer interface {
	Sign(c *proof.Claims, now, expires time.Time) (string, error)
}

// Decision values of MetaDecision.
const (
	DecisionReserved     = "reserved"
	DecisionDenied       = "denied"
	DecisionPassthrough  = "passthrough"
	DecisionUnidentified = "unidentified"
	DecisionUnverified   = "unverified"
)

// Response headers for the caller.
const (
	HeaderLimit     = "x-budget-limit"
	HeaderRemaining = "x-budget-remaining"
	HeaderReset     = "x-budget-reset"
	HeaderUnit      = "x-budget-unit"
	HeaderWarning   = "x-budget-warning"
	HeaderReason    = "x-purser-reason"
)

func (s *Server) respond(r *request.Request, v verdict) (*authv3.CheckResponse, error) {
	switch v.kind {
	case kindError:
		if errors.Is(v.err, context.DeadlineExceeded) {
			return nil, status.Error(codes.DeadlineExceeded, "purser could not decide before the deadline")
		}
		if errors.Is(v.err, budget.ErrUnavailable) || errors.Is(v.err, context.Canceled) {
			return nil, status.Error(codes.Unavailable, "purser cannot reach its ledger")
		}
		return nil, status.Error(codes.FailedPrecondition, "purser cannot decide: "+v.err.Error())
	case kindDeny, kindUnidentified:
		return s.denied(r, v), nil
	}
	a := new(okAnswer)
	ok := &a.ok
	if *s.cfg.StripCredentials {
		ok.HeadersToRemove, ok.QueryParametersToRemove = purserCredentials(r.Credentials)
	}
	decision := DecisionPassthrough
	switch v.kind {
	case kindAllow:
		decision = DecisionReserved
		if *s.cfg.BudgetHeaders {
			ok.ResponseHeadersToAdd = a.hs.budgetHeaders(v.decision, s.resetFormat)
		}
		ok.Headers = append(a.uncompressed[:0], a.hs.uncompressed())
	case kindUnverified:
		decision = DecisionUnverified
		ok.Headers = append(a.uncompressed[:0], a.hs.uncompressed())
	}
	err := s.fillMetadata(&a.md, &a.vals, decision, r, v)
	if err != nil {
		// No proof, no settlement: the sink would refuse the entry and the hold would expire,
		// charged in full. Say so now instead (Envoy's failure mode applies).
		s.cfg.Logger.LogAttrs(context.Background(), slog.LevelError, "cannot sign the Check answer", slog.String("error", err.Error()))
		return nil, status.Error(codes.Unavailable, "purser cannot sign its answer")
	}
	a.status.Code = int32(code.Code_OK)
	a.wrap.OkResponse = ok
	a.resp.Status, a.resp.HttpResponse, a.resp.DynamicMetadata = &a.status, &a.wrap, &a.md
	return &a.resp, nil
}

// okAnswer is every message of an OK answer in one allocation: an answer is built, encoded
// once and dropped, so its parts live and die together (about 25 small allocations each
// Check otherwise, a measurable share of the Check path's CPU with the GC they cause).
type okAnswer struct {
	resp         authv3.CheckResponse
	status       rpcstatus.Status
	wrap         authv3.CheckResponse_OkResponse
	ok           authv3.OkHttpResponse
	md           structpb.Struct
	vals         stringValues
	hs           headerSlab
	uncompressed [1]*corev3.HeaderValueOption
}

// stringValues hands out string Values from arrays: enough for every field metadataFor
// sets, with a fallback to the heap past that.
type stringValues struct {
	v [maxMetaFields]structpb.Value
	s [maxMetaFields]structpb.Value_StringValue
	n int
}

// maxMetaFields is how many fields metadataFor sets at most (every Meta* key).
const maxMetaFields = 10

func (a *stringValues) str(x string) *structpb.Value {
	if a == nil || a.n == len(a.v) {
		return structpb.NewStringValue(x)
	}
	i := a.n
	a.n++
	a.s[i].StringValue = x
	a.v[i].Kind = &a.s[i]
	return &a.v[i]
}

// headerSlab hands out header options from arrays: enough for an OK answer's headers (the
// budget headers and accept-encoding), with a fallback to the heap past that.
type headerSlab struct {
	opt  [maxOKHeaders]corev3.HeaderValueOption
	hv   [maxOKHeaders]corev3.HeaderValue
	ptrs [maxOKHeaders - 1]*corev3.HeaderValueOption // the budget headers' slice
	n    int
}

// maxOKHeaders: x-budget-limit, -remaining, -unit, -reset, -warning and accept-encoding.
const maxOKHeaders = 6

func (h *headerSlab) header(k, v string) *corev3.HeaderValueOption {
	if h.n == len(h.opt) {
		return header(k, v)
	}
	i := h.n
	h.n++
	h.hv[i].Key, h.hv[i].Value = k, v
	h.opt[i].Header = &h.hv[i]
	h.opt[i].AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	return &h.opt[i]
}

// purserCredentials lists every credential that carries a purser key, as headers and query
// parameters to remove before the request goes upstream: all of them, not only the one that
// identified the caller (a second key in another header must not reach the provider). A
// credential that is not a purser key (a provider key on a pass-through route) stays.
func purserCredentials(cs []request.Credential) (headers, params []string) {
	for i := range cs {
		c := &cs[i]
		if !carriesPurserKey(c.Secret) {
			continue
		}
		if c.Header != "" {
			if !slices.Contains(headers, c.Header) {
				headers = append(headers, c.Header)
			}
		} else if p, isQuery := strings.CutPrefix(c.Source, request.QuerySourcePrefix); isQuery && !slices.Contains(params, p) {
			params = append(params, p)
		}
	}
	return headers, params
}

// carriesPurserKey reports whether a credential value holds a purser key as any of its
// tokens: the parser joins repeated headers and query parameters with ",", and a header read
// verbatim may carry a scheme ("Bearer pk_…"), so "sk-…, Bearer pk_…" carries one.
func carriesPurserKey(v string) bool {
	// Each token starts after a separator (or at 0); keyPrefix holds no separator, so a token
	// starts with it exactly when the text at the token's start does. No allocation.
	for i := 0; i < len(v); i++ {
		if (i == 0 || isCredentialSep(v[i-1])) && strings.HasPrefix(v[i:], keyPrefix) {
			return true
		}
	}
	return false
}

func isCredentialSep(c byte) bool { return c == ',' || c == ' ' || c == '\t' }

// metadataFor builds the dynamic metadata the access-log sink joins on, with its proof when
// the sink acts on it (reserved, unverified). Amounts are strings: Struct numbers are doubles.
func (s *Server) metadataFor(decision string, r *request.Request, v verdict) (*structpb.Struct, error) {
	md := new(structpb.Struct)
	if err := s.fillMetadata(md, nil, decision, r, v); err != nil {
		return nil, err
	}
	return md, nil
}

// fillMetadata is metadataFor into md, its values from vals (nil: the heap).
func (s *Server) fillMetadata(md *structpb.Struct, vals *stringValues, decision string, r *request.Request, v verdict) error {
	f := make(map[string]*structpb.Value, maxMetaFields)
	f[MetaDecision] = vals.str(decision)
	if r.Provider != "" {
		f[MetaProvider] = vals.str(r.Provider)
	}
	if r.Flavor != "" {
		f[MetaFlavor] = vals.str(string(r.Flavor))
	}
	if r.Model != "" {
		f[MetaModel] = vals.str(r.Model)
	}
	if v.key != nil {
		f[MetaKeyID] = vals.str(v.key.ID)
	}
	if decision == DecisionUnverified && len(v.subjects) > 0 {
		// No reservation records who spent: the sink charges these subjects instead.
		ss := make([]string, len(v.subjects))
		for i, s := range v.subjects {
			ss[i] = string(s)
		}
		f[MetaSubjects] = vals.str(strings.Join(ss, ","))
	}
	var c proof.Claims
	if d := v.decision; d != nil && d.ReservationID != "" && d.Outcome != budget.Denied {
		c.ReservationID = d.ReservationID
		c.ReservedMicros, c.ReservedTokens = strconv.FormatInt(v.cost, 10), strconv.FormatInt(v.tokens, 10)
		f[MetaReservationID] = vals.str(c.ReservationID)
		f[MetaReservedMicros] = vals.str(c.ReservedMicros)
		f[MetaReservedTokens] = vals.str(c.ReservedTokens)
	}
	if s.cfg.Signer != nil && (decision == DecisionUnverified || (decision == DecisionReserved && c.ReservationID != "")) {
		c.Decision, c.Provider, c.Flavor, c.Model = decision, r.Provider, string(r.Flavor), r.Model
		c.KeyID, c.Subjects = f[MetaKeyID].GetStringValue(), f[MetaSubjects].GetStringValue()
		now := time.Now()
		ttl := s.ttl(r)
		if ttl <= 0 {
			ttl = budget.DefaultReservationTTL
		}
		tok, err := s.cfg.Signer.Sign(&c, now, now.Add(ttl+s.cfg.ProofGrace))
		if err != nil {
			return err
		}
		f[MetaProof] = vals.str(tok)
	}
	md.Fields = f
	return nil
}

// uncompressed asks the provider for an uncompressed response on every billable request.
// Envoy forwards the client's Accept-Encoding untouched, the official SDKs send gzip (Go's
// transport adds it by itself; Node's fetch adds br, Python's httpx deflate), and providers
// then compress JSON and event streams alike. The data plane's usage extraction
// (json_to_metadata, sse_to_metadata, the Lua scan) reads the bytes as they pass, so a
// compressed answer yields no usage and the whole hold is charged. "identity" rather than
// removing the header: without Accept-Encoding any coding is acceptable (RFC 9110 12.5.3).
// The client loses compression on the last hop only; Envoy's own compressor can restore it.
func (h *headerSlab) uncompressed() *corev3.HeaderValueOption {
	return h.header("accept-encoding", "identity")
}

func header(k, v string) *corev3.HeaderValueOption {
	// Always explicit: without append_action Envoy's default is to append (envoy.md 3.2).
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// budgetHeaders reports the tightest hard budget and any warnings, with its options from h
// and the reset time formatted by reset.
func (h *headerSlab) budgetHeaders(d *budget.Decision, reset func(time.Time) string) []*corev3.HeaderValueOption {
	if d == nil {
		return nil
	}
	hs := h.ptrs[:0]
	if t := d.Tightest(); t != nil {
		hs = append(hs,
			h.header(HeaderLimit, amount(t.Budget.Unit, t.Limit)),
			h.header(HeaderRemaining, amount(t.Budget.Unit, max(t.Remaining(), 0))),
			h.header(HeaderUnit, string(t.Budget.Unit)))
		if t.Budget.Window.Kind != budget.Lifetime {
			hs = append(hs, h.header(HeaderReset, reset(t.Window.End)))
		}
	}
	if ws := d.Warnings(); len(ws) > 0 {
		parts := make([]string, len(ws))
		for i, w := range ws {
			if w.Exceeded {
				parts[i] = strconv.Quote(w.Budget.Name) + " exceeded (soft)"
			} else {
				parts[i] = strconv.Quote(w.Budget.Name) + " at " + strconv.Itoa(w.Threshold) + "%"
			}
		}
		hs = append(hs, h.header(HeaderWarning, strings.Join(parts, ", ")))
	}
	if len(hs) == 0 {
		return nil // as before: no headers, no slice
	}
	return hs
}

// formatReset is x-budget-reset's value: the window's end in UTC, RFC 3339.
func formatReset(end time.Time) string { return end.UTC().Format(time.RFC3339) }

// lastReset remembers the last window end formatted for x-budget-reset: the answers of a busy
// budget all carry the same one.
type lastReset struct {
	end time.Time
	s   string
}

// resetFormat is formatReset, remembering the last answer (lock-free: a stale or lost
// update only costs a Format).
func (s *Server) resetFormat(end time.Time) string {
	if l := s.reset.Load(); l != nil && l.end.Equal(end) {
		return l.s
	}
	l := &lastReset{end: end, s: formatReset(end)}
	s.reset.Store(l)
	return l.s
}

// amount formats an amount in its unit for a header: decimal USD, whole tokens or requests.
func amount(u budget.Unit, n int64) string { return u.Format(n) }

// denied builds a local reply in the error format the caller's SDK understands.
func (s *Server) denied(r *request.Request, v verdict) *authv3.CheckResponse {
	hs := []*corev3.HeaderValueOption{
		header("content-type", "application/json"),
		header(HeaderReason, v.reason),
	}
	if v.reason == ReasonExceedsBudget {
		// Both official SDKs honour x-should-retry before their status rules
		// (openai-go and anthropic-sdk-go internal/requestconfig: shouldRetry).
		hs = append(hs, header("x-should-retry", "false"))
	}
	if v.reason == "new_subject_rate_limited" || v.reason == ReasonOverloaded {
		hs = append(hs, header("retry-after", "1"))
	}
	if v.status == 429 && v.decision != nil && v.decision.DeniedBy != nil {
		b := v.decision.DeniedBy
		if b.Budget.Window.Kind != budget.Lifetime {
			secs := int64(time.Until(b.Window.End).Seconds()) + 1
			hs = append(hs, header("retry-after", strconv.FormatInt(max(secs, 1), 10)),
				header(HeaderReset, b.Window.End.UTC().Format(time.RFC3339)))
		}
	}
	decision := DecisionDenied
	if v.kind == kindUnidentified {
		decision = DecisionUnidentified
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(grpcCodeFor(v.status)), Message: v.reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.status)},
			Headers: hs,
			Body:    errorBody(r.Flavor, v.status, v.reason, v.message),
		}},
		DynamicMetadata: s.deniedMetadata(decision, r, v),
	}
}

// deniedMetadata is the metadata of a denial: nothing the sink acts on, so never signed.
func (s *Server) deniedMetadata(decision string, r *request.Request, v verdict) *structpb.Struct {
	md, _ := s.metadataFor(decision, r, v) // denied and unidentified answers are not signed: no error
	return md
}

func grpcCodeFor(httpStatus int) code.Code {
	switch httpStatus {
	case 429:
		return code.Code_RESOURCE_EXHAUSTED
	case 401:
		return code.Code_UNAUTHENTICATED
	case 403:
		return code.Code_PERMISSION_DENIED
	case 503:
		return code.Code_UNAVAILABLE
	}
	return code.Code_INVALID_ARGUMENT
}

// errorBody renders the error in the caller's API's envelope, so official SDKs raise their
// usual errors (OpenAI: RateLimitError for 429 with type insufficient_quota; Anthropic:
// rate_limit_error; Gemini: RESOURCE_EXHAUSTED).
func errorBody(flavor pricing.Flavor, httpStatus int, reason, message string) string {
	var v any
	switch flavor {
	case pricing.FlavorAnthropic:
		v = map[string]any{"type": "error", "error": map[string]any{"type": anthropicType(httpStatus), "message": message}}
	case pricing.FlavorGemini, pricing.FlavorGeminiEmbeddings:
		v = map[string]any{"error": map[string]any{"code": httpStatus, "message": message, "status": googleStatus(httpStatus)}}
	default:
		v = map[string]any{"error": map[string]any{"message": message, "type": openAIType(httpStatus), "param": nil, "code": reason}}
	}
	b, _ := json.Marshal(v) // maps of strings and ints always marshal
	return string(b)
}

func openAIType(s int) string {
	switch s {
	case 429:
		return "insufficient_quota"
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	}
	return "invalid_request_error"
}

func anthropicType(s int) string {
	switch s {
	case 429:
		return "rate_limit_error"
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	case 413:
		return "request_too_large"
	}
	return "invalid_request_error"
}

func googleStatus(s int) string {
	switch s {
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 401:
		return "UNAUTHENTICATED"
	case 403:
		return "PERMISSION_DENIED"
	}
	return "INVALID_ARGUMENT"
}
