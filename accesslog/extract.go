// Package accesslog is purser's Envoy access-log sink
// (envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs). Envoy streams one entry per
// request when it ends; the sink joins it to its reservation (the id ext_authz put in dynamic
// metadata), reads the usage the data plane extracted, and settles the reservation at the real
// price, voids it when the upstream was never reached, or charges the hold when the provider
// may have billed but the usage is unknown. The channel is lossy and at-most-once by design:
// what never arrives expires and is charged in full by the ledger's sweeper.
package accesslog

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aiv3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Namespaces read by default (docs/architecture.md).
const (
	ExtAuthzNamespace   = "envoy.filters.http.ext_authz"
	UsageNamespace      = "purser.usage"
	AIGatewayNamespace  = "io.envoy.ai_gateway"
	TokenUsageNamespace = "envoy.ai.token_usage"
)

// ExtractConfig says where usage comes from. The zero value reads the defaults.
type ExtractConfig struct {
	// UsageNamespaces hold provider usage fields keyed by their dot-joined JSON path (or a
	// whole usage Struct under "usage"); default [purser.usage].
	UsageNamespaces []string
	// AIGatewayNamespace holds Envoy AI Gateway's token counts (default io.envoy.ai_gateway;
	// "-" disables); AIGatewayKeys maps its keys (default llm_input_token, ...).
	AIGatewayNamespace string
	AIGatewayKeys      AIGatewayKeys
	// TokenUsageNamespace holds Envoy 1.40's typed envoy.data.ai.v3.TokenUsage (default
	// envoy.ai.token_usage; "-" disables).
	TokenUsageNamespace string
	// UsageHeaders maps a logged response header or trailer (lower-case) to a usage path,
	// e.g. "x-usage-input-tokens": "usage.prompt_tokens".
	UsageHeaders map[string]string

	// Set by withDefaults for decodeMessage: the filter_metadata namespaces read (ext_authz's,
	// the usage namespaces, AI Gateway's), once each, and UsageHeaders' names.
	wireNamespaces []string
	headerNames    []string
}

// AIGatewayKeys names the AIGatewayRoute llmRequestCosts metadata keys.
type AIGatewayKeys struct {
	Input, Output, CachedInput, CacheCreation, Reasoning, Model string
}

func (c *ExtractConfig) withDefaults() ExtractConfig {
	out := *c
	if len(out.UsageNamespaces) == 0 {
		out.UsageNamespaces = []string{UsageNamespace}
	}
	if out.AIGatewayNamespace == "" {
		out.AIGatewayNamespace = AIGatewayNamespace
	}
	if out.TokenUsageNamespace == "" {
		out.TokenUsageNamespace = TokenUsageNamespace
	}
	k := &out.AIGatewayKeys
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&k.Input, "llm_input_token")
	def(&k.Output, "llm_output_token")
	def(&k.CachedInput, "llm_cached_input_token")
	def(&k.CacheCreation, "llm_cache_creation_input_token")
	def(&k.Reasoning, "llm_reasoning_token")
	def(&k.Model, "response_model")
	out.wireNamespaces = []string{ExtAuthzNamespace}
	add := func(ns string) {
		if !slices.Contains(out.wireNamespaces, ns) {
			out.wireNamespaces = append(out.wireNamespaces, ns)
		}
	}
	for _, ns := range out.UsageNamespaces {
		add(ns)
	}
	if out.AIGatewayNamespace != "-" { // "-" disables it; a usage namespace may be called anything
		add(out.AIGatewayNamespace)
	}
	out.headerNames = slices.Sorted(maps.Keys(out.UsageHeaders))
	return out
}

// Entry is what the sink needs from one access-log entry.
type Entry struct {
	// Final is set for end-of-stream entries (DownstreamEnd, or NotSet from older Envoys).
	Final bool
	Type  alsdata.AccessLogType

	// From ext_authz dynamic metadata.
	Decision       string
	ReservationID  string
	ReservedMicros string
	ReservedTokens string
	Provider       string
	Flavor         string
	Model          string
	KeyID          string
	Subjects       []string
	// SubjectsRaw is the subjects value as it travelled (comma-joined), which Proof covers.
	SubjectsRaw string
	// Proof proves the values above (package proof); "" when the entry carries none.
	Proof string

	RequestID string
	Start     time.Time
	End       time.Time
	Route     string
	NodeID    string

	// Usage is the provider's usage-bearing JSON fragment rebuilt from metadata, headers and
	// trailers (nil when none was found).
	Usage map[string]any
	// Tokens is usage already normalised by the data plane (AI Gateway, Envoy's TokenUsage);
	// nil when none. It wins over Usage when both are present.
	Tokens *Tokens
	// UsageError is set when the data plane reported it could not read usage
	// (usage_status: error, TokenUsage FAILED).
	UsageError bool

	// ContentType and ContentEncoding are the response's headers when the access logger
	// logs them (envoy.yaml's additional_response_headers_to_log): a compressed answer carries
	// usage no proxy filter can read, an event stream without usage is a stream that was not
	// asked for it.
	ContentType, ContentEncoding string

	ResponseCode    int    // 0: no response was sent
	Details         string // response_code_details
	UpstreamSent    bool   // Envoy sent request bytes upstream: the provider may bill
	UpstreamAnswer  bool   // a response from the upstream started
	Interrupted     string // the reset or timeout that cut the exchange, "" if none
	ResponseFromExt bool   // the response was a local reply (ext_authz, no route...), not the upstream's

	unsigned bool // queued without a proof (counts against the unsigned share)
}

// Tokens is usage normalised by the data plane: inclusive input and output totals.
type Tokens struct {
	Model                                                                   string
	Input, Output, CachedInput, CacheCreation, Reasoning                    int64
	HasInput, HasOutput, HasCachedInput, HasCacheCreation, HasReasoning, Ok bool
}

// Extract reads one decoded entry. It is pure and never panics on any input. The sink reads
// entries straight from the wire instead (decodeMessage), with the same result.
func Extract(e *alsdata.HTTPAccessLogEntry, cfg *ExtractConfig) Entry {
	conf := cfg.withDefaults()
	p := commonOf(e)
	out := p.entry()
	md := e.GetCommonProperties().GetMetadata()
	fm := md.GetFilterMetadata()
	for k, v := range fm[ExtAuthzNamespace].GetFields() {
		out.authzField(k, str(v))
	}
	var flat map[string]any
	for _, ns := range conf.UsageNamespaces {
		for k, v := range fm[ns].GetFields() {
			flat = out.usageField(flat, k, v.AsInterface())
		}
	}
	hdrs := e.GetResponse().GetResponseHeaders()
	trls := e.GetResponse().GetResponseTrailers()
	out.ContentType, out.ContentEncoding = hdrs["content-type"], hdrs["content-encoding"]
	out.finishUsage(flat, &conf, func(h string) (string, bool) {
		if v, ok := trls[h]; ok {
			return v, true
		}
		v, ok := hdrs[h]
		return v, ok
	})
	if conf.AIGatewayNamespace != "-" {
		if ns := fm[conf.AIGatewayNamespace]; ns != nil {
			out.Tokens = aiGatewayTokens(ns, &conf.AIGatewayKeys)
		}
	}
	if conf.TokenUsageNamespace != "-" {
		if a := md.GetTypedFilterMetadata()[conf.TokenUsageNamespace]; a != nil {
			out.typedUsage(a)
		}
	}
	return out
}

// common is what Extract reads outside the metadata and the response headers.
type common struct {
	typ                       alsdata.AccessLogType
	intermediate              bool
	hasStart, hasDuration     bool
	startSeconds, durSeconds  int64
	startNanos, durNanos      int32
	route, requestID, details string
	hasCode                   bool
	code                      uint32
	sent, answered            bool   // time_to_first_upstream_{tx,rx}_byte present
	flags                     uint64 // bit n: ResponseFlags field n set (those interruptions names)
}

func commonOf(e *alsdata.HTTPAccessLogEntry) common {
	c := e.GetCommonProperties()
	p := common{
		typ: c.GetAccessLogType(), route: c.GetRouteName(),
		requestID: e.GetRequest().GetRequestId(), details: e.GetResponse().GetResponseCodeDetails(),
		sent: c.GetTimeToFirstUpstreamTxByte() != nil, answered: c.GetTimeToFirstUpstreamRxByte() != nil,
	}
	//lint:ignore SA1019 pre-1.27 Envoys mark periodic entries only with intermediate_log_entry (see entry)
	p.intermediate = c.GetIntermediateLogEntry()
	if st := c.GetStartTime(); st != nil {
		p.hasStart, p.startSeconds, p.startNanos = true, st.GetSeconds(), st.GetNanos()
	}
	if d := c.GetDuration(); d != nil {
		p.hasDuration, p.durSeconds, p.durNanos = true, d.GetSeconds(), d.GetNanos()
	}
	if rc := e.GetResponse().GetResponseCode(); rc != nil {
		p.hasCode, p.code = true, rc.GetValue()
	}
	if f := c.GetResponseFlags(); f != nil {
		r := f.ProtoReflect()
		fds := r.Descriptor().Fields()
		for _, in := range interruptions {
			if r.Get(fds.ByNumber(in.field)).Bool() {
				p.flags |= 1 << in.field
			}
		}
	}
	return p
}

func (p *common) entry() Entry {
	out := Entry{Type: p.typ}
	out.Final = out.Type == alsdata.AccessLogType_NotSet || out.Type == alsdata.AccessLogType_DownstreamEnd
	if p.intermediate && out.Type == alsdata.AccessLogType_NotSet {
		out.Final = false // pre-1.27 Envoys mark periodic entries this way
	}
	out.RequestID = p.requestID
	if p.hasStart {
		out.Start = time.Unix(p.startSeconds, int64(p.startNanos)).UTC() // Timestamp.AsTime
		out.End = out.Start
		if p.hasDuration {
			d := durationpb.Duration{Seconds: p.durSeconds, Nanos: p.durNanos}
			out.End = out.Start.Add(d.AsDuration())
		}
	}
	out.Route = p.route
	if p.hasCode {
		out.ResponseCode = int(p.code)
	}
	out.Details = p.details
	out.UpstreamSent = p.sent
	out.UpstreamAnswer = p.answered
	out.ResponseFromExt = out.Details != "" && out.Details != "via_upstream"
	for _, in := range interruptions {
		if p.flags&(1<<in.field) != 0 {
			out.Interrupted = in.name
			break
		}
	}
	return out
}

// interruptions are the ResponseFlags saying the exchange was cut short, by field number,
// the first one set naming the interruption.
var interruptions = [...]struct {
	field protowire.Number
	name  string
}{
	{28, "downstream_remote_reset"},
	{15, "downstream_connection_termination"},
	{17, "stream_idle_timeout"},
	{3, "upstream_request_timeout"},
	{5, "upstream_remote_reset"},
	{7, "upstream_connection_termination"},
	{4, "local_reset"},
	{20, "upstream_max_stream_duration"},
	{23, "duration_timeout"},
	{24, "upstream_protocol_error"},
	{19, "downstream_protocol_error"},
	{26, "overload_manager"},
}

// authzField reads one key of the ext_authz namespace (a string value; "" for any other).
func (out *Entry) authzField(key, v string) {
	switch key {
	case "purser_decision":
		out.Decision = v
	case "reservation_id":
		out.ReservationID = v
	case "provider":
		out.Provider = v
	case "api_flavor":
		out.Flavor = v
	case "model":
		out.Model = v
	case "key_id":
		out.KeyID = v
	case "reserved_micros":
		out.ReservedMicros = v
	case "reserved_tokens":
		out.ReservedTokens = v
	case "purser_proof":
		out.Proof = v
	case "subjects":
		out.Subjects, out.SubjectsRaw = nil, v
		if v != "" {
			out.Subjects = strings.Split(v, ",")
		}
	}
}

// usageField adds one key of a usage namespace to flat (made on first use) and returns it.
func (out *Entry) usageField(flat map[string]any, key string, v any) map[string]any {
	if key == "usage_status" {
		if s, _ := v.(string); s == "error" {
			out.UsageError = true
		}
		return flat
	}
	if flat == nil {
		flat = make(map[string]any, 8)
	}
	flat[key] = v
	return flat
}

// finishUsage adds the configured usage headers (header looks a response trailer up, then
// the header) to flat, and sets Usage when anything was found. conf has its defaults.
func (out *Entry) finishUsage(flat map[string]any, conf *ExtractConfig, header func(string) (string, bool)) {
	for _, h := range conf.headerNames { // sorted: of two headers naming one path, the last wins
		path := conf.UsageHeaders[h]
		if v, ok := header(h); ok && path != "" {
			if flat == nil {
				flat = make(map[string]any, len(conf.UsageHeaders))
			}
			flat[path] = strings.TrimSpace(v)
		}
	}
	if len(flat) > 0 {
		out.Usage = flat // the caller unflattens with the pricing package
	}
}

// typedUsage reads Envoy's typed envoy.data.ai.v3.TokenUsage.
func (out *Entry) typedUsage(a *anypb.Any) {
	var tu aiv3.TokenUsage
	if err := a.UnmarshalTo(&tu); err != nil {
		return
	}
	if tu.GetExtractionStatus() == aiv3.TokenUsage_FAILED {
		out.UsageError = true
		return
	}
	if t := typedTokens(&tu); t != nil {
		out.Tokens = t
	}
}

func str(v *structpb.Value) string { return v.GetStringValue() }

// count reads a non-negative whole token count from a metadata value (AI Gateway writes
// doubles; a string of digits is accepted too).
func count(v *structpb.Value) (int64, bool) {
	switch x := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		f := x.NumberValue
		if f < 0 || f > 1<<53 || f != float64(int64(f)) {
			return 0, false
		}
		return int64(f), true
	case *structpb.Value_StringValue:
		n, err := strconv.ParseInt(strings.TrimSpace(x.StringValue), 10, 64)
		return n, err == nil && n >= 0
	}
	return 0, false
}

func aiGatewayTokens(ns *structpb.Struct, k *AIGatewayKeys) *Tokens {
	f := ns.GetFields()
	var t Tokens
	t.Input, t.HasInput = count(f[k.Input])
	t.Output, t.HasOutput = count(f[k.Output])
	t.CachedInput, t.HasCachedInput = count(f[k.CachedInput])
	t.CacheCreation, t.HasCacheCreation = count(f[k.CacheCreation])
	t.Reasoning, t.HasReasoning = count(f[k.Reasoning])
	t.Model = str(f[k.Model])
	if !t.HasInput && !t.HasOutput {
		return nil // AI Gateway writes token keys only for successful, complete responses
	}
	t.Ok = t.HasInput && t.HasOutput
	return &t
}

func typedTokens(tu *aiv3.TokenUsage) *Tokens {
	var t Tokens
	t.Model = tu.GetModel()
	if v := tu.GetInputTokens(); v != nil {
		t.Input, t.HasInput = clampU(v.GetValue()), true
	}
	if v := tu.GetOutputTokens(); v != nil {
		t.Output, t.HasOutput = clampU(v.GetValue()), true
	}
	if v := tu.GetInputTokenDetails().GetCachedTokens(); v != nil {
		t.CachedInput, t.HasCachedInput = clampU(v.GetValue()), true
	}
	if v := tu.GetInputTokenDetails().GetCacheCreationTokens(); v != nil {
		t.CacheCreation, t.HasCacheCreation = clampU(v.GetValue()), true
	}
	if v := tu.GetOutputTokenDetails().GetReasoningTokens(); v != nil {
		t.Reasoning, t.HasReasoning = clampU(v.GetValue()), true
	}
	if !t.HasInput && !t.HasOutput {
		return nil
	}
	t.Ok = t.HasInput && t.HasOutput && tu.GetExtractionStatus() != aiv3.TokenUsage_PARTIAL
	return &t
}

func clampU(v uint64) int64 {
	if v > 1<<53 {
		return 1 << 53
	}
	return int64(v)
}
