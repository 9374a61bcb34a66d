// Package extauthz is purser's Envoy ext_authz v3 gRPC server. For every request Envoy holds
// back, Check identifies who is spending, bounds what the request can cost, reserves that
// amount on every budget that applies (through the ledger's batcher), and answers as Envoy
// expects: OK with the reservation in dynamic metadata, a local-reply denial (429 budget
// exhausted, 401/403/400 for bad identity or input) in the caller's API error format, or a
// gRPC error when it cannot decide, so Envoy's failure_mode_allow / status_on_error apply.
package extauthz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/extauthz/request"
)

// Policy values.
const (
	// UnknownModel: what to do when the price catalog does not know the requested model.
	UnknownModelDeny         = "deny"          // 400 naming the model (default)
	UnknownModelDefaultPrice = "default_price" // bound the cost with the catalog's default price
	// MissingCap: what to do when a request sets no output-token cap.
	MissingCapModelMax = "model_max" // hold the model's maximum output (default): a bound
	MissingCapDeny     = "deny"      // 400 "output cap required"
	MissingCapDefault  = "default"   // hold DefaultOutputCap: the operator's assertion, not a bound (excess is an overrun)
	// Body: what to do with a truncated or unusable body.
	BodyEstimate = "estimate" // truncated: bound from content-length (default for truncated)
	BodyDeny     = "deny"     // answer 400 with the precise reason (default for invalid)
	// StreamWithoutUsage: what to do with an OpenAI-style stream (chat or completions, any
	// provider speaking that API) that does not ask for usage (stream_options.include_usage):
	// its response carries no token counts, so its reservation can only be charged in full.
	StreamUsageChargeHold = "charge_hold" // admit; settled at the hold (default)
	StreamUsageDeny       = "deny"        // 400 telling the client to set include_usage
	// Unpriced endpoints (images, audio, batches...): priced by nobody.
	UnpricedDeny  = "deny"  // 403 (default): purser cannot bound what they cost
	UnpricedAllow = "allow" // pass without a reservation (their spend is not budgeted)
)

// Config tunes the server. Its zero value is usable: defaults are documented per field.
type Config struct {
	// Request configures the CheckRequest parser (credential sources, JWT claims, trusted
	// headers...).
	Request request.Config
	// CheckTimeout is the server-side deadline of a Check (default 150ms). The effective
	// deadline is the earlier of it and Envoy's own (grpc-timeout) minus DeadlineMargin.
	CheckTimeout time.Duration
	// DeadlineMargin is kept free before Envoy's deadline to send the answer (default 5ms).
	DeadlineMargin time.Duration
	// MaxInFlight bounds the billable Checks being decided at once (default 10,240: the
	// batcher's default queue and four full batches); past it a Check is shed at once (503,
	// overloaded) before its body is read, so a burst cannot grow memory without bound.
	MaxInFlight int
	// StripCredentials removes the header that carried the purser key before the request
	// goes upstream (default true: purser keys are not provider keys).
	StripCredentials *bool
	// DefaultSubject, when set, is the identity of requests that carry none; otherwise such
	// requests get 401.
	DefaultSubject string
	// UnknownModel is UnknownModelDeny (default) or UnknownModelDefaultPrice.
	UnknownModel string
	// MissingCap is MissingCapModelMax (default), MissingCapDeny or MissingCapDefault.
	MissingCap string
	// DefaultOutputCap is what MissingCapDefault holds for the output of a request without a
	// cap (default 4096 tokens): the operator's assertion, not a bound. Unused otherwise.
	DefaultOutputCap int64
	// ExternalInputTokens is held as the input of a request whose body does not bound its
	// input (request.Request.ExternalInput: previous_response_id, conversation, cached
	// content, file references, server-side tools, audio, video, documents, truncated bodies)
	// when the price catalog knows no context window for its model (nil:
	// DefaultExternalInputTokens; 0 denies such requests). It is the operator's assertion; a
	// known context window (in the catalog, or set in the price overrides) takes precedence.
	ExternalInputTokens *int64
	// StreamWithoutUsage is StreamUsageChargeHold (default) or StreamUsageDeny.
	StreamWithoutUsage string
	// TruncatedBody is BodyEstimate (default) or BodyDeny.
	TruncatedBody string
	// InvalidBody is BodyDeny (default) or BodyEstimate (bound from the bytes with the
	// route's model; without a model the request is still denied).
	InvalidBody string
	// Unpriced is UnpricedDeny (default) or UnpricedAllow.
	Unpriced string
	// BudgetHeaders adds x-budget-limit/-remaining/-reset of the tightest budget to the
	// response (default true).
	BudgetHeaders *bool
	// ShowAmounts puts limits and amounts in denial messages (default false: the message
	// names the budget and its reset time only).
	ShowAmounts bool
	// ReservationTTL overrides the ledger's default reservation lifetime (0: ledger default).
	ReservationTTL time.Duration
	// Signer proves the metadata the access-log sink acts on (a *proof.Keyring): reserved and
	// unverified answers carry MetaProof. nil: no proof (the sink must then not require one).
	Signer Signer
	// ProofGrace is how long after its reservation's expiry a proof still verifies: how late
	// an access-log entry may arrive and still settle (default 24h).
	ProofGrace time.Duration
	// Authenticated reports whether a Check came over an authenticated channel (an Envoy
	// that presented the shared secret or a verified client certificate). Identity claims the
	// caller asserts — source.principal, JWT claims in metadata_context, trusted headers —
	// are believed only then; otherwise they are ignored and a request identified by nothing
	// else is refused (untrusted_identity). nil: every caller is authenticated (the transport
	// guarantees it).
	Authenticated func(ctx context.Context) bool
	// DenialLogRate bounds the info lines logged for denials, per second (default 10; the
	// metrics count every one). Beyond it lines are dropped and the next one logged says how
	// many.
	DenialLogRate float64
	// Logger receives one line per denial and per failure (debug: per admission); no secrets,
	// no bodies. Meter receives the Check metrics (nil: none).
	Logger *slog.Logger
	Meter  metric.Meter
}

// Defaults.
const (
	DefaultCheckTimeout   = 150 * time.Millisecond
	DefaultDeadlineMargin = 5 * time.Millisecond
	DefaultMaxInFlight    = 10_240
	DefaultOutputCap      = 4096
	// DefaultExternalInputTokens is the largest context window of the embedded catalog (2M
	// tokens): no model whose window is unknown is assumed to read more than that.
	DefaultExternalInputTokens int64 = 2_000_000
	maxExternalInputTokens     int64 = 100_000_000
	maxReasonableOutputCap           = 10_000_000
	defaultReservationFloor          = time.Second
	DefaultProofGrace                = 24 * time.Hour
	DefaultDenialLogRate             = 10
)

func (c Config) withDefaults() Config {
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = DefaultCheckTimeout
	}
	if c.DeadlineMargin <= 0 {
		c.DeadlineMargin = DefaultDeadlineMargin
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	// The server keeps copies: a caller changing its values later changes nothing.
	c.StripCredentials = valueOr(c.StripCredentials, true)
	c.BudgetHeaders = valueOr(c.BudgetHeaders, true)
	c.ExternalInputTokens = valueOr(c.ExternalInputTokens, DefaultExternalInputTokens)
	if c.UnknownModel == "" {
		c.UnknownModel = UnknownModelDeny
	}
	if c.MissingCap == "" {
		c.MissingCap = MissingCapModelMax
	}
	if c.DefaultOutputCap <= 0 {
		c.DefaultOutputCap = DefaultOutputCap
	}
	if c.StreamWithoutUsage == "" {
		c.StreamWithoutUsage = StreamUsageChargeHold
	}
	if c.TruncatedBody == "" {
		c.TruncatedBody = BodyEstimate
	}
	if c.InvalidBody == "" {
		c.InvalidBody = BodyDeny
	}
	if c.Unpriced == "" {
		c.Unpriced = UnpricedDeny
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProofGrace <= 0 {
		c.ProofGrace = DefaultProofGrace
	}
	if c.DenialLogRate <= 0 {
		c.DenialLogRate = DefaultDenialLogRate
	}
	return c
}

// valueOr returns a pointer to a copy of *p, or to def when p is nil.
func valueOr[T any](p *T, def T) *T {
	if p != nil {
		def = *p
	}
	return &def
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	oneOf := func(field, v string, allowed ...string) {
		if v == "" {
			return
		}
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		errs = append(errs, fmt.Errorf("%s: %q: want one of %v", field, v, allowed))
	}
	oneOf("policies.unknown_model", c.UnknownModel, UnknownModelDeny, UnknownModelDefaultPrice)
	oneOf("policies.missing_output_cap", c.MissingCap, MissingCapModelMax, MissingCapDeny, MissingCapDefault)
	oneOf("policies.stream_without_usage", c.StreamWithoutUsage, StreamUsageChargeHold, StreamUsageDeny)
	oneOf("policies.truncated_body", c.TruncatedBody, BodyEstimate, BodyDeny)
	oneOf("policies.invalid_body", c.InvalidBody, BodyEstimate, BodyDeny)
	oneOf("policies.unpriced_endpoint", c.Unpriced, UnpricedDeny, UnpricedAllow)
	if c.DefaultOutputCap < 0 || c.DefaultOutputCap > maxReasonableOutputCap {
		errs = append(errs, fmt.Errorf("policies.default_output_cap: %d: want 1-%d", c.DefaultOutputCap, maxReasonableOutputCap))
	}
	if n := c.ExternalInputTokens; n != nil && (*n < 0 || *n > maxExternalInputTokens) {
		errs = append(errs, fmt.Errorf("policies.external_input_tokens: %d: want 0 (deny) to %d", *n, maxExternalInputTokens))
	}
	if c.CheckTimeout != 0 && (c.CheckTimeout < 10*time.Millisecond || c.CheckTimeout > time.Minute) {
		errs = append(errs, fmt.Errorf("check_timeout: %s: want 10ms-1m", c.CheckTimeout))
	}
	if c.ReservationTTL != 0 && c.ReservationTTL < defaultReservationFloor {
		errs = append(errs, fmt.Errorf("reservation_ttl: %s: want at least %s", c.ReservationTTL, defaultReservationFloor))
	}
	if c.DefaultSubject != "" {
		if _, err := budget.ParseSubject(c.DefaultSubject); err != nil {
			errs = append(errs, fmt.Errorf("identity.default_subject: %w", err))
		}
	}
	if err := c.Request.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("identity: %w", err))
	}
	return errors.Join(errs...)
}
