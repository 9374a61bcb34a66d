package envoysim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	jsonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	credv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	ext_authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	j2mv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	ssev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	// Every "@type" of the shipped bootstraps must resolve, or protojson refuses the file.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/purser-dev/purser/envoy"
)

// Filter names the simulation knows (HttpFilter.name / the extension's canonical name).
const (
	filterExtAuthz = "envoy.filters.http.ext_authz"
	filterJSON     = "envoy.filters.http.json_to_metadata"
	filterSSE      = "envoy.filters.http.sse_to_metadata"
	filterRouter   = "envoy.filters.http.router"

	// ExtAuthzNamespace is where Envoy stores CheckResponse.dynamic_metadata: the canonical
	// filter name, hard-coded (reference 3.4).
	ExtAuthzNamespace = "envoy.filters.http.ext_authz"
	// ExtAuthzDurationKey is added to that namespace on OK answers (reference 3.4).
	ExtAuthzDurationKey = "ext_authz_duration"
)

// Config is what the simulation takes from an Envoy bootstrap. Everything the simulated
// request path does comes from here, not from constants: change envoy.yaml and the
// simulation changes with it.
type Config struct {
	Bootstrap *bootstrapv3.Bootstrap
	Node      *corev3.Node

	// Listener: per_connection_buffer_limit_bytes (Envoy's default 1 MiB when unset).
	BufferLimit uint32
	HCM         *hcmv3.HttpConnectionManager
	RouteConfig *routev3.RouteConfiguration

	ExtAuthz *ExtAuthzConfig // nil when the chain has no ext_authz filter
	// JSONRules: json_to_metadata response_rules (nil when absent).
	JSONRules *j2mv3.JsonToMetadata_MatchRules
	jsonCT    *regexp.Regexp
	// SSE: sse_to_metadata's JSON content parser rules and max_event_size (default 8192).
	SSERules        []*jsonv3.JsonContentParser_RuleConfig
	SSEMaxEventSize uint32
	hasSSE          bool
	// Credentials: credential_injector filters by filter name, in chain order.
	Credentials []*CredentialFilter
	// Lua is the envoy.filters.http.lua filter (nil when absent; lua.go).
	Lua *LuaFilter
	// filters: the name of each HTTP filter of the chain and whether it is disabled unless a
	// route's FilterConfig switches it on (HttpFilter.disabled).
	filters     []string
	disabledDef map[string]bool
	jsonName    string
	sseName     string

	AccessLogs []*AccessLogConfig
	Clusters   map[string]*clusterv3.Cluster
}

// ExtAuthzConfig is the ext_authz filter's configuration (reference 1.1).
type ExtAuthzConfig struct {
	Raw     *ext_authzv3.ExtAuthz
	Cluster string
	// Timeout is grpc_service.timeout (Envoy's default 200 ms when unset; reference 1.1).
	Timeout         time.Duration
	InitialMetadata []*corev3.HeaderValue
	// FailureModeAllow, FailureModeAllowHeaderAdd, StatusOnError (default 403).
	FailureModeAllow          bool
	FailureModeAllowHeaderAdd bool
	StatusOnError             int
	// Body is with_request_body (nil: no buffering, the Check starts at the headers).
	Body                   *ext_authzv3.BufferSettings
	MetadataContextNS      []string
	RouteMetadataContextNS []string
	IngestDynamicMetadata  bool
	MaxDeniedBodyBytes     uint32
	EncodeRawHeaders       bool
	IncludePeerCertificate bool
	AllowedHeadersSet      bool
	DisallowedHeadersSet   bool
	ClearRouteCache        bool
	ValidateMutations      bool
}

// CredentialFilter is one credential_injector filter with a generic credential (reference:
// envoy.yaml filters purser.credentials.*): disabled unless a route enables it.
type CredentialFilter struct {
	Name            string
	DisabledDefault bool
	Overwrite       bool
	Header          string
	// SecretPath is the SDS file (path_config_source.path); the value is read at Start.
	SecretPath string
	SecretName string
}

// AccessLogConfig is one HCM access_log entry of type envoy.access_loggers.http_grpc
// (reference 4.4).
type AccessLogConfig struct {
	LogName         string
	Cluster         string
	InitialMetadata []*corev3.HeaderValue
	// FlushInterval: buffer_flush_interval (default 1 s); BufferSize: buffer_size_bytes
	// (default 16384; 0 disables batching).
	FlushInterval time.Duration
	BufferSize    uint32
	// StreamRetries: grpc_stream_retry_policy.num_retries (stream establishment only).
	StreamRetries              uint32
	RequestHeadersToLog        []string
	ResponseHeadersToLog       []string
	ResponseTrailersToLog      []string
	FilterStateObjectsToLog    []string
	customTagsUnsupportedCount int
}

// LoadShipped loads envoy/envoy.yaml as embedded in package envoy (envoy.Files).
func LoadShipped() (*Config, error) { return LoadFile(envoy.Files, "envoy.yaml") }

// LoadFile loads a bootstrap from fsys.
func LoadFile(fsys fs.FS, name string) (*Config, error) {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return nil, err
	}
	cfg, err := Load(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return cfg, nil
}

// DecodeBootstrap decodes a YAML (or JSON) bootstrap strictly through the v3 protos.
func DecodeBootstrap(b []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &bs); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return &bs, nil
}

// Load reads a bootstrap (YAML or JSON) whose first listener's first filter chain is an
// HttpConnectionManager. Filters or fields the simulation cannot imitate are errors, so a
// change to the config the simulation would silently ignore fails loudly instead.
func Load(b []byte) (*Config, error) {
	bs, err := DecodeBootstrap(b)
	if err != nil {
		return nil, err
	}
	c := &Config{Bootstrap: bs, Node: bs.GetNode(), Clusters: map[string]*clusterv3.Cluster{}}
	for _, cl := range bs.GetStaticResources().GetClusters() {
		c.Clusters[cl.GetName()] = cl
	}
	ls := bs.GetStaticResources().GetListeners()
	if len(ls) != 1 || len(ls[0].GetFilterChains()) != 1 || len(ls[0].GetFilterChains()[0].GetFilters()) != 1 {
		return nil, errors.New("envoysim: want exactly one listener with one filter chain holding one HTTP connection manager")
	}
	c.BufferLimit = 1 << 20 // Envoy's default per_connection_buffer_limit_bytes
	if v := ls[0].GetPerConnectionBufferLimitBytes(); v != nil {
		c.BufferLimit = v.GetValue()
	}
	var hcm hcmv3.HttpConnectionManager
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		return nil, fmt.Errorf("http_connection_manager: %w", err)
	}
	c.HCM = &hcm
	if hcm.GetRouteConfig() == nil {
		return nil, errors.New("envoysim: only an inline route_config is simulated (no RDS)")
	}
	c.RouteConfig = hcm.GetRouteConfig()
	if err := c.checkRoutes(); err != nil {
		return nil, err
	}
	for _, f := range hcm.GetHttpFilters() {
		if err := c.addFilter(f); err != nil {
			return nil, err
		}
	}
	for _, al := range hcm.GetAccessLog() {
		if al.GetFilter() != nil {
			return nil, fmt.Errorf("envoysim: access_log %s: filters are not simulated", al.GetName())
		}
		var g grpcv3.HttpGrpcAccessLogConfig
		if err := al.GetTypedConfig().UnmarshalTo(&g); err != nil {
			return nil, fmt.Errorf("envoysim: access_log %s: only http_grpc is simulated: %w", al.GetName(), err)
		}
		c.AccessLogs = append(c.AccessLogs, accessLogConfig(&g))
	}
	for _, m := range hcm.GetLocalReplyConfig().GetMappers() {
		if err := checkFilter(m.GetFilter()); err != nil {
			return nil, fmt.Errorf("envoysim: local_reply_config: %w", err)
		}
	}
	return c, nil
}

func (c *Config) addFilter(f *hcmv3.HttpFilter) error {
	if c.disabledDef == nil {
		c.disabledDef = map[string]bool{}
	}
	c.filters = append(c.filters, f.GetName())
	c.disabledDef[f.GetName()] = f.GetDisabled()
	switch {
	case f.GetTypedConfig().MessageIs(&luav3.Lua{}):
		var l luav3.Lua
		if err := f.GetTypedConfig().UnmarshalTo(&l); err != nil {
			return err
		}
		lf, err := luaFilter(f.GetName(), f.GetDisabled(), &l)
		if err != nil {
			return err
		}
		c.Lua = lf
	case f.GetTypedConfig().MessageIs(&ext_authzv3.ExtAuthz{}):
		var a ext_authzv3.ExtAuthz
		if err := f.GetTypedConfig().UnmarshalTo(&a); err != nil {
			return err
		}
		if f.GetName() != filterExtAuthz {
			return fmt.Errorf("envoysim: ext_authz filter named %q: per-route config is looked up under %q", f.GetName(), filterExtAuthz)
		}
		az, err := extAuthzConfig(&a)
		if err != nil {
			return err
		}
		c.ExtAuthz = az
	case f.GetTypedConfig().MessageIs(&j2mv3.JsonToMetadata{}):
		var j j2mv3.JsonToMetadata
		if err := f.GetTypedConfig().UnmarshalTo(&j); err != nil {
			return err
		}
		c.JSONRules = j.GetResponseRules()
		c.jsonName = f.GetName()
		if r := c.JSONRules.GetAllowContentTypesRegex(); r != nil {
			re, err := regexp.Compile(r.GetRegex())
			if err != nil {
				return fmt.Errorf("json_to_metadata allow_content_types_regex: %w", err)
			}
			c.jsonCT = re
		}
	case f.GetTypedConfig().MessageIs(&ssev3.SseToMetadata{}):
		var s ssev3.SseToMetadata
		if err := f.GetTypedConfig().UnmarshalTo(&s); err != nil {
			return err
		}
		var p jsonv3.JsonContentParser
		if err := s.GetResponseRules().GetContentParser().GetTypedConfig().UnmarshalTo(&p); err != nil {
			return fmt.Errorf("sse_to_metadata: only the JSON content parser is simulated: %w", err)
		}
		c.hasSSE = true
		c.sseName = f.GetName()
		c.SSERules = p.GetRules()
		c.SSEMaxEventSize = 8192 // default (reference 5.2)
		if v := s.GetResponseRules().GetMaxEventSize(); v != nil {
			c.SSEMaxEventSize = v.GetValue()
		}
	case f.GetTypedConfig().MessageIs(&credv3.CredentialInjector{}):
		var ci credv3.CredentialInjector
		if err := f.GetTypedConfig().UnmarshalTo(&ci); err != nil {
			return err
		}
		var g genericv3.Generic
		if err := ci.GetCredential().GetTypedConfig().UnmarshalTo(&g); err != nil {
			return fmt.Errorf("credential_injector %s: only the generic credential is simulated: %w", f.GetName(), err)
		}
		if g.GetCredential().GetSdsConfig().GetPathConfigSource() == nil {
			return fmt.Errorf("credential_injector %s: only a path_config_source SDS secret is simulated", f.GetName())
		}
		c.Credentials = append(c.Credentials, &CredentialFilter{
			Name: f.GetName(), DisabledDefault: f.GetDisabled(), Overwrite: ci.GetOverwrite(),
			Header:     strings.ToLower(nonEmpty(g.GetHeader(), "authorization")),
			SecretPath: g.GetCredential().GetSdsConfig().GetPathConfigSource().GetPath(),
			SecretName: g.GetCredential().GetName(),
		})
	case f.GetName() == filterRouter:
	default:
		return fmt.Errorf("envoysim: HTTP filter %q (%s) is not simulated", f.GetName(), f.GetTypedConfig().GetTypeUrl())
	}
	return nil
}

func extAuthzConfig(a *ext_authzv3.ExtAuthz) (*ExtAuthzConfig, error) {
	gs := a.GetGrpcService()
	if gs == nil || gs.GetEnvoyGrpc() == nil {
		return nil, errors.New("envoysim: ext_authz: only grpc_service.envoy_grpc is simulated")
	}
	az := &ExtAuthzConfig{
		Raw: a, Cluster: gs.GetEnvoyGrpc().GetClusterName(),
		Timeout:                   200 * time.Millisecond, // GrpcService.timeout default (reference 1.1)
		InitialMetadata:           gs.GetInitialMetadata(),
		FailureModeAllow:          a.GetFailureModeAllow(),
		FailureModeAllowHeaderAdd: a.GetFailureModeAllowHeaderAdd(),
		StatusOnError:             403, // default (reference 1.1)
		Body:                      a.GetWithRequestBody(),
		MetadataContextNS:         a.GetMetadataContextNamespaces(),
		RouteMetadataContextNS:    a.GetRouteMetadataContextNamespaces(),
		IngestDynamicMetadata:     a.GetEnableDynamicMetadataIngestion() == nil || a.GetEnableDynamicMetadataIngestion().GetValue(),
		MaxDeniedBodyBytes:        a.GetMaxDeniedResponseBodyBytes(),
		EncodeRawHeaders:          a.GetEncodeRawHeaders(),
		IncludePeerCertificate:    a.GetIncludePeerCertificate(),
		AllowedHeadersSet:         a.GetAllowedHeaders() != nil,
		DisallowedHeadersSet:      a.GetDisallowedHeaders() != nil,
		ClearRouteCache:           a.GetClearRouteCache(),
		ValidateMutations:         a.GetValidateMutations(),
	}
	if gs.GetTimeout() != nil {
		az.Timeout = gs.GetTimeout().AsDuration()
	}
	if s := a.GetStatusOnError(); s != nil && s.GetCode() != 0 {
		az.StatusOnError = int(s.GetCode())
	}
	// Fields that change what Envoy sends or does, which the simulation does not imitate:
	// refuse them rather than pretend.
	var unsupported []string
	if az.AllowedHeadersSet || az.DisallowedHeadersSet {
		unsupported = append(unsupported, "allowed_headers/disallowed_headers")
	}
	if az.EncodeRawHeaders {
		unsupported = append(unsupported, "encode_raw_headers")
	}
	if a.GetHttpService() != nil || a.GetFilterEnabled() != nil || a.GetFilterEnabledMetadata() != nil || a.GetShadowMode() {
		unsupported = append(unsupported, "http_service/filter_enabled/filter_enabled_metadata/shadow_mode")
	}
	if a.GetIncludePeerCertificate() || a.GetIncludeTlsSession() {
		unsupported = append(unsupported, "include_peer_certificate/include_tls_session (plain-text listener)")
	}
	if gs.GetRetryPolicy() != nil {
		unsupported = append(unsupported, "grpc_service.retry_policy")
	}
	if len(unsupported) > 0 {
		return nil, fmt.Errorf("envoysim: ext_authz fields not simulated: %s", strings.Join(unsupported, ", "))
	}
	return az, nil
}

func accessLogConfig(g *grpcv3.HttpGrpcAccessLogConfig) *AccessLogConfig {
	cc := g.GetCommonConfig()
	c := &AccessLogConfig{
		LogName:                 cc.GetLogName(),
		Cluster:                 cc.GetGrpcService().GetEnvoyGrpc().GetClusterName(),
		InitialMetadata:         cc.GetGrpcService().GetInitialMetadata(),
		FlushInterval:           time.Second, // default (reference 4.4)
		BufferSize:              16384,       // default (reference 4.4)
		RequestHeadersToLog:     lower(g.GetAdditionalRequestHeadersToLog()),
		ResponseHeadersToLog:    lower(g.GetAdditionalResponseHeadersToLog()),
		ResponseTrailersToLog:   lower(g.GetAdditionalResponseTrailersToLog()),
		FilterStateObjectsToLog: cc.GetFilterStateObjectsToLog(),
	}
	if d := cc.GetBufferFlushInterval(); d != nil {
		c.FlushInterval = d.AsDuration()
	}
	if v := cc.GetBufferSizeBytes(); v != nil {
		c.BufferSize = v.GetValue()
	}
	if n := cc.GetGrpcStreamRetryPolicy().GetNumRetries(); n != nil {
		c.StreamRetries = n.GetValue()
	}
	c.customTagsUnsupportedCount = len(cc.GetCustomTags())
	return c
}

func lower(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkRoutes refuses route features the simulation does not implement.
func (c *Config) checkRoutes() error {
	for _, vh := range c.RouteConfig.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			m := r.GetMatch()
			if len(m.GetHeaders()) > 0 || m.GetGrpc() != nil || m.GetRuntimeFraction() != nil {
				return fmt.Errorf("envoysim: route %s: header/grpc/runtime matchers are not simulated", r.GetName())
			}
			for _, q := range m.GetQueryParameters() {
				if q.GetPresentMatch() {
					continue
				}
				sm := q.GetStringMatch()
				if sm == nil || (sm.GetExact() == "" && sm.GetPrefix() == "" && sm.GetSuffix() == "" && sm.GetContains() == "") {
					return fmt.Errorf("envoysim: route %s: query parameter %s: only present_match and exact/prefix/suffix/contains string_match are simulated", r.GetName(), q.GetName())
				}
			}
			for name, a := range r.GetTypedPerFilterConfig() {
				var fc routev3.FilterConfig
				if a.UnmarshalTo(&fc) == nil && fc.GetConfig().GetTypeUrl() != "" {
					return fmt.Errorf("envoysim: route %s: a per-route config for %s inside FilterConfig is not simulated", r.GetName(), name)
				}
			}
			switch m.GetPathSpecifier().(type) {
			case *routev3.RouteMatch_Path, *routev3.RouteMatch_Prefix:
			case *routev3.RouteMatch_SafeRegex:
				if _, err := regexp.Compile(m.GetSafeRegex().GetRegex()); err != nil {
					return fmt.Errorf("envoysim: route %s: regex: %w", r.GetName(), err)
				}
			default:
				return fmt.Errorf("envoysim: route %s: path matcher %T is not simulated", r.GetName(), m.GetPathSpecifier())
			}
			if r.GetRedirect() != nil {
				return fmt.Errorf("envoysim: route %s: redirects are not simulated", r.GetName())
			}
			if ra := r.GetRoute(); ra != nil && ra.GetCluster() == "" {
				return fmt.Errorf("envoysim: route %s: only a fixed cluster is simulated", r.GetName())
			}
		}
	}
	return nil
}

// Secret reads the generic secret value of an SDS file (resources[].generic_secret.secret).
// The file is looked up in fsys by its base name under dir ("secrets" for envoy.Files).
func readSDSSecret(fsys fs.FS, dir, sdsPath, name string) (string, error) {
	b, err := fs.ReadFile(fsys, path.Join(dir, path.Base(sdsPath)))
	if err != nil {
		return "", err
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return "", err
	}
	var doc struct {
		Resources []json.RawMessage `json:"resources"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return "", err
	}
	for _, raw := range doc.Resources {
		var s tlsv3.Secret
		// The resource is an Any in JSON form: "@type" plus the Secret's fields.
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return "", err
		}
		delete(m, "@type")
		rb, _ := json.Marshal(m)
		if err := protojson.Unmarshal(rb, &s); err != nil {
			return "", fmt.Errorf("sds %s: %w", sdsPath, err)
		}
		if s.GetName() == name || name == "" {
			return s.GetGenericSecret().GetSecret().GetInlineString(), nil
		}
	}
	return "", fmt.Errorf("sds %s: no secret named %q", sdsPath, name)
}

// Timeout of a route (route.timeout, default 15 s: reference README "route timeout").
func routeTimeout(r *routev3.Route) time.Duration {
	if t := r.GetRoute().GetTimeout(); t != nil {
		return t.AsDuration() // 0 disables the timeout
	}
	return 15 * time.Second
}

// perFilter returns the typed_per_filter_config for filter at the route configuration,
// virtual host and route levels, least specific first (reference 1.4: merged, the more
// specific level wins per key).
func perFilter(rc *routev3.RouteConfiguration, vh *routev3.VirtualHost, r *routev3.Route, filter string) []*anypb.Any {
	var out []*anypb.Any
	for _, m := range []map[string]*anypb.Any{rc.GetTypedPerFilterConfig(), vh.GetTypedPerFilterConfig(), r.GetTypedPerFilterConfig()} {
		if a, ok := m[filter]; ok {
			out = append(out, a)
		}
	}
	return out
}

// routeMetadata returns route.metadata.filter_metadata[ns].
func routeMetadata(r *routev3.Route, ns string) *structpb.Struct {
	return r.GetMetadata().GetFilterMetadata()[ns]
}
