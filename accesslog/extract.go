// Package accesslog is purser's Envoy access-log sink
// (envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs). Envoy streams one entry per
// request when it ends; the sink joins it to its reservation (the id ext_authz put in dynamic
// metadata), reads the usage the data plane extracted, and settles the reservation at the real
// price, voids it when the upstream was never reached, or charges the hold when the provider
// may have billed but the usage is unknown. The channel is lossy and at-most-once by design:
// what never arrives expires and is charged in full by the ledger's sweeper.
package accesslog

import (
	"strconv"
	"strings"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aiv3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
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
	return out
}

// Entry is what the sink needs from one access-log entry.
type Entry struct {
	// Final is set for end-of-stream entries (DownstreamEnd, or NotSet from older Envoys).
	Final bool
	Type  alsdata.AccessLogType

	// From ext_authz dynamic metadata.
	Decision      string
	ReservationID string
	Provider      string
	Flavor        string
	Model         string
	KeyID         string
	Subjects      []string

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

	ResponseCode    int    // 0: no response was sent
	Details         string // response_code_details
	UpstreamSent    bool   // Envoy sent request bytes upstream: the provider may bill
	UpstreamAnswer  bool   // a response from the upstream started
	Interrupted     string // the reset or timeout that cut the exchange, "" if none
	ResponseFromExt bool   // the response was a local reply (ext_authz, no route...), not the upstream's
}

// Tokens is usage normalised by the data plane: inclusive input and output totals.
type Tokens struct {
	Model                                                                   string
	Input, Output, CachedInput, CacheCreation, Reasoning                    int64
	HasInput, HasOutput, HasCachedInput, HasCacheCreation, HasReasoning, Ok bool
}

// Extract reads one entry. It is pure and never panics on any input.
func Extract(e *alsdata.HTTPAccessLogEntry, cfg *ExtractConfig) Entry {
	c := e.GetCommonProperties()
	out := Entry{Type: c.GetAccessLogType()}
	out.Final = out.Type == alsdata.AccessLogType_NotSet || out.Type == alsdata.AccessLogType_DownstreamEnd
	if c.GetIntermediateLogEntry() && out.Type == alsdata.AccessLogType_NotSet {
		out.Final = false // pre-1.27 Envoys mark periodic entries this way
	}
	out.RequestID = e.GetRequest().GetRequestId()
	if st := c.GetStartTime(); st != nil {
		out.Start = st.AsTime()
		out.End = out.Start
		if d := c.GetDuration(); d != nil {
			out.End = out.Start.Add(d.AsDuration())
		}
	}
	out.Route = c.GetRouteName()
	if rc := e.GetResponse().GetResponseCode(); rc != nil {
		out.ResponseCode = int(rc.GetValue())
	}
	out.Details = e.GetResponse().GetResponseCodeDetails()
	out.UpstreamSent = c.GetTimeToFirstUpstreamTxByte() != nil
	out.UpstreamAnswer = c.GetTimeToFirstUpstreamRxByte() != nil
	out.ResponseFromExt = out.Details != "" && out.Details != "via_upstream"
	out.Interrupted = interruption(c.GetResponseFlags())

	md := c.GetMetadata().GetFilterMetadata()
	if az := md[ExtAuthzNamespace]; az != nil {
		f := az.GetFields()
		out.Decision = str(f["purser_decision"])
		out.ReservationID = str(f["reservation_id"])
		out.Provider = str(f["provider"])
		out.Flavor = str(f["api_flavor"])
		out.Model = str(f["model"])
		out.KeyID = str(f["key_id"])
		if s := str(f["subjects"]); s != "" {
			out.Subjects = strings.Split(s, ",")
		}
	}

	conf := cfg.withDefaults()
	flat := map[string]any{}
	for _, ns := range conf.UsageNamespaces {
		for k, v := range md[ns].GetFields() {
			if k == "usage_status" {
				out.UsageError = out.UsageError || str(v) == "error"
				continue
			}
			flat[k] = v.AsInterface()
		}
	}
	hdrs := e.GetResponse().GetResponseHeaders()
	trls := e.GetResponse().GetResponseTrailers()
	for h, path := range conf.UsageHeaders {
		v, ok := trls[h]
		if !ok {
			v, ok = hdrs[h]
		}
		if ok && path != "" {
			flat[path] = strings.TrimSpace(v)
		}
	}
	if len(flat) > 0 {
		out.Usage = flat // the caller unflattens with the pricing package
	}
	if conf.AIGatewayNamespace != "-" {
		if ns := md[conf.AIGatewayNamespace]; ns != nil {
			out.Tokens = aiGatewayTokens(ns, &conf.AIGatewayKeys)
		}
	}
	if conf.TokenUsageNamespace != "-" {
		if any := c.GetMetadata().GetTypedFilterMetadata()[conf.TokenUsageNamespace]; any != nil {
			var tu aiv3.TokenUsage
			if err := any.UnmarshalTo(&tu); err == nil {
				switch tu.GetExtractionStatus() {
				case aiv3.TokenUsage_FAILED:
					out.UsageError = true
				default:
					if t := typedTokens(&tu); t != nil {
						out.Tokens = t
					}
				}
			}
		}
	}
	return out
}

func str(v *structpb.Value) string { return v.GetStringValue() }

// interruption names the first flag saying the exchange was cut short.
func interruption(f *alsdata.ResponseFlags) string {
	switch {
	case f == nil:
		return ""
	case f.GetDownstreamRemoteReset():
		return "downstream_remote_reset"
	case f.GetDownstreamConnectionTermination():
		return "downstream_connection_termination"
	case f.GetStreamIdleTimeout():
		return "stream_idle_timeout"
	case f.GetUpstreamRequestTimeout():
		return "upstream_request_timeout"
	case f.GetUpstreamRemoteReset():
		return "upstream_remote_reset"
	case f.GetUpstreamConnectionTermination():
		return "upstream_connection_termination"
	case f.GetLocalReset():
		return "local_reset"
	case f.GetUpstreamMaxStreamDurationReached():
		return "upstream_max_stream_duration"
	case f.GetDurationTimeout():
		return "duration_timeout"
	case f.GetUpstreamProtocolError():
		return "upstream_protocol_error"
	case f.GetDownstreamProtocolError():
		return "downstream_protocol_error"
	case f.GetOverloadManager():
		return "overload_manager"
	}
	return ""
}

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
