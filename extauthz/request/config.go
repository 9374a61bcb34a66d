package request

import (
	"errors"
	"fmt"
	"strings"

	"github.com/purser-dev/purser/budget"
)

// Defaults applied for zero values of Config fields.
const (
	// SourceAuthorization is the credential source that reads "authorization: Bearer <key>".
	SourceAuthorization = "authorization"
	// QuerySourcePrefix starts a credential source that reads a query parameter, e.g.
	// "query:key" for Gemini's ?key=.
	QuerySourcePrefix = "query:"

	DefaultJWTNamespace = "envoy.filters.http.jwt_authn"

	maxConfiguredLength = 4096
)

// defaultCredentialSources is the order used when Config.CredentialSources is nil. It is a
// read-only table.
var defaultCredentialSources = [...]string{SourceAuthorization, "x-api-key", "api-key", "x-goog-api-key"}

// Config tunes Parse. Its zero value is valid and means the defaults documented on each
// field. Parse never fails on a bad Config (invalid entries are skipped); call Validate at
// startup to reject one.
type Config struct {
	// CredentialSources lists where API-key candidates are read, in order. Entries:
	// "authorization" (Bearer token, scheme case-insensitive), "query:<param>" (a query
	// parameter, e.g. "query:key" for Gemini), or any other lower-case header name read
	// verbatim. nil means authorization, x-api-key, api-key, x-goog-api-key.
	CredentialSources []string `json:"credential_sources,omitempty"`
	// JWT maps verified JWT claims (written by Envoy's jwt_authn filter) to subjects.
	JWT JWTConfig `json:"jwt,omitempty"`
	// TrustedHeaders maps request headers to subjects. Only use it for headers that a
	// trusted component sets and overwrites: by default no header is believed.
	TrustedHeaders []HeaderMapping `json:"trusted_headers,omitempty"`
	// ModelHeader, if set, names a header read for the model when neither body nor path
	// gives one (for example "x-ai-eg-model").
	ModelHeader string `json:"model_header,omitempty"`
	// ImageTokens, when set, is charged per image instead of the model's documented maximum
	// (ImageTokensFor). It is the operator's assertion, not a bound: an image may cost more.
	// 0 (the default) means the documented maximum.
	ImageTokens int64 `json:"image_tokens,omitempty"`
}

// JWTConfig says where Envoy's jwt_authn filter put the verified payload and which claims
// become subjects. The payload is read from metadata_context.filter_metadata[Namespace]
// [PayloadKey] (jwt_authn's payload_in_metadata), so ext_authz must list the namespace in
// metadata_context_namespaces.
type JWTConfig struct {
	// Namespace is the dynamic-metadata namespace; "" means DefaultJWTNamespace.
	Namespace string `json:"namespace,omitempty"`
	// PayloadKey is jwt_authn's payload_in_metadata value. "" means: the namespace's only
	// entry, if it holds exactly one Struct (Istio, for instance, keys it by issuer).
	PayloadKey string `json:"payload_key,omitempty"`
	// Claims lists the claim-to-subject mappings, applied in order.
	Claims []ClaimMapping `json:"claims,omitempty"`
}

// ClaimMapping makes subject "<Subject>:<claim value>" from a claim. Claim is a top-level
// claim name, or a dot-separated path into nested claims when no top-level claim has that
// exact name. Array claims give one subject per element; numbers are formatted as integers.
type ClaimMapping struct {
	Claim   string `json:"claim"`
	Subject string `json:"subject"`
}

// HeaderMapping makes subject "<Subject>:<header value>" from a trusted request header.
type HeaderMapping struct {
	Header  string `json:"header"`
	Subject string `json:"subject"`
}

// Validate reports every invalid field, each error naming the field.
func (c *Config) Validate() error {
	if c == nil {
		return nil
	}
	var errs []error
	seen := make(map[string]bool, len(c.CredentialSources))
	for i, src := range c.CredentialSources {
		field := fmt.Sprintf("credential_sources[%d]", i)
		switch {
		case src == "":
			errs = append(errs, fmt.Errorf("%s: empty", field))
			continue
		case strings.HasPrefix(src, QuerySourcePrefix):
			if name := src[len(QuerySourcePrefix):]; !validQueryName(name) {
				errs = append(errs, fmt.Errorf("%s: %q: query parameter name must be 1-%d characters of [A-Za-z0-9._~-]", field, src, maxConfiguredLength))
			}
		case !validHeaderName(src):
			errs = append(errs, fmt.Errorf("%s: %q: not a lower-case header name", field, src))
		}
		if seen[src] {
			errs = append(errs, fmt.Errorf("%s: %q listed twice", field, src))
		}
		seen[src] = true
	}
	if c.JWT.Namespace != "" && len(c.JWT.Namespace) > maxConfiguredLength {
		errs = append(errs, fmt.Errorf("jwt.namespace: longer than %d bytes", maxConfiguredLength))
	}
	for i, m := range c.JWT.Claims {
		field := fmt.Sprintf("jwt.claims[%d]", i)
		if m.Claim == "" || len(m.Claim) > maxConfiguredLength {
			errs = append(errs, fmt.Errorf("%s.claim: must be 1-%d bytes", field, maxConfiguredLength))
		}
		if err := budget.CheckKind(m.Subject); err != nil {
			errs = append(errs, fmt.Errorf("%s.subject: %w", field, err))
		}
	}
	for i, m := range c.TrustedHeaders {
		field := fmt.Sprintf("trusted_headers[%d]", i)
		switch {
		case !validHeaderName(m.Header):
			errs = append(errs, fmt.Errorf("%s.header: %q: not a lower-case header name", field, m.Header))
		case isCredentialHeader(c, m.Header):
			errs = append(errs, fmt.Errorf("%s.header: %q carries credentials and cannot name a subject", field, m.Header))
		}
		if err := budget.CheckKind(m.Subject); err != nil {
			errs = append(errs, fmt.Errorf("%s.subject: %w", field, err))
		}
	}
	if c.ModelHeader != "" && !validHeaderName(c.ModelHeader) {
		errs = append(errs, fmt.Errorf("model_header: %q: not a lower-case header name", c.ModelHeader))
	}
	if c.ImageTokens < 0 || c.ImageTokens > 1_000_000 {
		errs = append(errs, fmt.Errorf("image_tokens: %d: must be between 0 (the model's documented maximum) and 1000000", c.ImageTokens))
	}
	return errors.Join(errs...)
}

// settings are the effective values of a Config, defaults applied.
type settings struct {
	cfg *Config
}

func resolve(c *Config) settings { return settings{cfg: c} }

// credentialSources returns the configured sources, or the defaults.
func (s *settings) credentialSources() []string {
	if s.cfg == nil || s.cfg.CredentialSources == nil {
		return defaultCredentialSources[:]
	}
	return s.cfg.CredentialSources
}

func isCredentialHeader(c *Config, h string) bool {
	s := resolve(c)
	for _, src := range s.credentialSources() {
		if src == h {
			return true
		}
	}
	return false
}

// validHeaderName accepts lower-case RFC 9110 token characters, no pseudo-headers.
func validHeaderName(h string) bool {
	if h == "" || len(h) > maxConfiguredLength {
		return false
	}
	for i := 0; i < len(h); i++ {
		b := h[i]
		switch {
		case b >= 'a' && b <= 'z', b >= '0' && b <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0:
		default:
			return false
		}
	}
	return true
}

func validQueryName(n string) bool {
	if n == "" || len(n) > maxConfiguredLength {
		return false
	}
	for i := 0; i < len(n); i++ {
		b := n[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || strings.IndexByte("._~-", b) >= 0) {
			return false
		}
	}
	return true
}
