package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/proof"
)

// DefaultMix is the fixture mix of the Check scenarios: chat, streaming chat, Responses,
// Anthropic Messages (plain and streaming) and Gemini, as Envoy sends them.
var DefaultMix = []string{
	"openai_chat", "openai_chat_stream", "openai_responses",
	"anthropic_messages", "anthropic_messages_stream", "gemini_generate",
}

// credentialHeaders are the headers purser reads API keys from by default, in its order.
var credentialHeaders = []string{"authorization", "x-api-key", "api-key", "x-goog-api-key"}

// CheckTemplate is one Envoy-shaped CheckRequest fixture (extauthz/request/testdata) whose
// provider credential is replaced by a purser key on each use.
type CheckTemplate struct {
	Name string
	req  *authv3.CheckRequest
	// credHeader carries the key: the header the fixture's own credential was in (so an
	// Anthropic request sends x-api-key: pk_..., an OpenAI one Authorization: Bearer pk_...).
	credHeader string
	credPrefix string
}

// LoadCheck reads extauthz/request/testdata/<name>.json.
func LoadCheck(name string) (*CheckTemplate, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(root, "extauthz", "request", "testdata", name+".json"))
	if err != nil {
		return nil, err
	}
	var req authv3.CheckRequest
	if err := protojson.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("fixture %s: %w", name, err)
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	if h == nil || h.Headers == nil {
		return nil, fmt.Errorf("fixture %s: no HTTP headers", name)
	}
	t := &CheckTemplate{Name: name, req: &req, credHeader: "authorization", credPrefix: "Bearer "}
	for _, c := range credentialHeaders {
		if _, ok := h.Headers[c]; ok {
			t.credHeader = c
			if c != "authorization" {
				t.credPrefix = ""
			}
			break
		}
	}
	return t, nil
}

// LoadChecks loads several fixtures.
func LoadChecks(names []string) ([]*CheckTemplate, error) {
	out := make([]*CheckTemplate, 0, len(names))
	for _, n := range names {
		t, err := LoadCheck(n)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// Credential is the header value that carries secret in this fixture.
func (t *CheckTemplate) Credential(secret string) string { return t.credPrefix + secret }

// Check is a private, mutable copy of a template: set the key and the ids, send, repeat.
// One goroutine at a time.
type Check struct {
	Req        *authv3.CheckRequest
	headers    map[string]string
	http       *authv3.AttributeContext_HttpRequest
	time       *timestamppb.Timestamp
	credHeader string
}

// New returns a private copy of the fixture.
func (t *CheckTemplate) New() *Check {
	req := proto.Clone(t.req).(*authv3.CheckRequest)
	r := req.GetAttributes().GetRequest()
	if r.Time == nil {
		r.Time = &timestamppb.Timestamp{}
	}
	h := r.GetHttp()
	return &Check{Req: req, headers: h.Headers, http: h, time: r.Time, credHeader: t.credHeader}
}

// SetCredential sets the key header to a value from CheckTemplate.Credential.
func (c *Check) SetCredential(v string) { c.headers[c.credHeader] = v }

// SetIDs sets x-request-id and Envoy's stream id: together with the key they form purser's
// idempotency key, so every request must have its own. It also stamps the request time as
// Envoy does (when the downstream request arrived: now), which leads that key.
func (c *Check) SetIDs(requestID, streamID string) {
	c.headers["x-request-id"] = requestID
	c.http.Id = streamID
	now := time.Now()
	c.time.Seconds, c.time.Nanos = now.Unix(), int32(now.Nanosecond())
}

// EntryTemplate builds access-log entries from an accesslog/testdata fixture, cheaply: only
// the per-entry parts are new messages, the rest is shared read-only.
type EntryTemplate struct {
	e     *alsdata.HTTPAccessLogEntry
	authz map[string]*structpb.Value
	usage *structpb.Struct
	ring  *proof.Keyring // signs each entry's ext_authz metadata, as purser's Check answer does
}

// Namespaces of the access-log metadata purser reads (docs/architecture.md).
const (
	extAuthzNamespace = "envoy.filters.http.ext_authz"
	usageNamespace    = "purser.usage"
)

// LoadEntry reads accesslog/testdata/<name>.json; its placeholders are filled per entry.
func LoadEntry(name string) (*EntryTemplate, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(root, "accesslog", "testdata", name+".json"))
	if err != nil {
		return nil, err
	}
	s := strings.NewReplacer("RESERVED_MICROS", "0", "RESERVED_TOKENS", "0", "KEY_ID", "key_bench").Replace(string(b))
	var e alsdata.HTTPAccessLogEntry
	if err := protojson.Unmarshal([]byte(s), &e); err != nil {
		return nil, fmt.Errorf("access-log fixture %s: %w", name, err)
	}
	md := e.GetCommonProperties().GetMetadata().GetFilterMetadata()
	t := &EntryTemplate{e: &e, usage: md[usageNamespace]}
	if az := md[extAuthzNamespace]; az != nil {
		t.authz = az.Fields
	}
	return t, nil
}

// WithUsage returns a template whose entries carry this usage instead of the fixture's
// (keys are purser.usage metadata keys: the dot-joined JSON path in the provider's response).
func (t *EntryTemplate) WithUsage(usage map[string]any) (*EntryTemplate, error) {
	u, err := structpb.NewStruct(usage)
	if err != nil {
		return nil, err
	}
	return &EntryTemplate{e: t.e, authz: t.authz, usage: u, ring: t.ring}, nil
}

// Signed returns a template whose entries carry the proof purser's Check answer would have
// given them (purser serve refuses entries without one). ring holds the deployment's signing
// keys (SigningKeys).
func (t *EntryTemplate) Signed(ring *proof.Keyring) *EntryTemplate {
	c := *t
	c.ring = ring
	return &c
}

// SigningKeys loads a deployment's signing keys from its database (purser serve creates them
// when it starts).
func SigningKeys(ctx context.Context, databaseURL string) (*proof.Keyring, error) {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	st := store.New(pool)
	ring := &proof.Keyring{}
	if err := budget.New(st, st, budget.Config{}).LoadSigningKeys(ctx, ring, budget.SigningConfig{}); err != nil {
		return nil, err
	}
	return ring, nil
}

// Duration is the fixture's request duration (start to end of the exchange).
func (t *EntryTemplate) Duration() time.Duration {
	return t.e.GetCommonProperties().GetDuration().AsDuration()
}

// Entry is the fixture for one request: its reservation, x-request-id and start time (the
// sink measures settlement lag from start+duration). upstream=false drops the upstream
// timings, which makes the entry one of a request Envoy never sent upstream: the sink voids
// its reservation instead of settling it.
func (t *EntryTemplate) Entry(reservationID, requestID string, start time.Time, upstream bool) *alsdata.HTTPAccessLogEntry {
	c := t.e.GetCommonProperties()
	az := make(map[string]*structpb.Value, len(t.authz))
	for k, v := range t.authz {
		az[k] = v
	}
	az["reservation_id"] = structpb.NewStringValue(reservationID)
	if t.ring != nil {
		str := func(k string) string { return az[k].GetStringValue() }
		c := proof.Claims{Decision: str("purser_decision"), ReservationID: reservationID, ReservedMicros: str("reserved_micros"),
			ReservedTokens: str("reserved_tokens"), KeyID: str("key_id"), Subjects: str("subjects"),
			Provider: str("provider"), Flavor: str("api_flavor"), Model: str("model")}
		if tok, err := t.ring.Sign(&c, time.Now(), time.Now().Add(24*time.Hour)); err == nil {
			az["purser_proof"] = structpb.NewStringValue(tok)
		}
	}
	fm := map[string]*structpb.Struct{extAuthzNamespace: {Fields: az}}
	if t.usage != nil && upstream {
		fm[usageNamespace] = t.usage
	}
	cp := &alsdata.AccessLogCommon{
		StartTime:     timestamppb.New(start),
		Duration:      c.GetDuration(),
		AccessLogType: c.GetAccessLogType(),
		RouteName:     c.GetRouteName(),
		ResponseFlags: c.GetResponseFlags(),
		Metadata:      &corev3.Metadata{FilterMetadata: fm},
	}
	if upstream {
		cp.UpstreamCluster = c.GetUpstreamCluster()
		cp.TimeToFirstUpstreamTxByte = c.GetTimeToFirstUpstreamTxByte()
		cp.TimeToLastUpstreamTxByte = c.GetTimeToLastUpstreamTxByte()
		cp.TimeToFirstUpstreamRxByte = c.GetTimeToFirstUpstreamRxByte()
		cp.TimeToLastUpstreamRxByte = c.GetTimeToLastUpstreamRxByte()
	}
	r := t.e.GetRequest()
	req := &alsdata.HTTPRequestProperties{
		RequestMethod: r.GetRequestMethod(), Scheme: r.GetScheme(), Authority: r.GetAuthority(),
		Path: r.GetPath(), UserAgent: r.GetUserAgent(), RequestId: requestID,
	}
	resp := t.e.GetResponse()
	if !upstream {
		resp = &alsdata.HTTPResponseProperties{}
	}
	return &alsdata.HTTPAccessLogEntry{
		CommonProperties: cp,
		ProtocolVersion:  t.e.GetProtocolVersion(),
		Request:          req,
		Response:         resp,
	}
}
