package envoy_test

import (
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	ext_authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	json_to_metadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// sharedSecretPlaceholder is the x-purser-secret value shipped in every bootstrap; docker-compose
// sets the same value as PURSER_SHARED_SECRET.
const sharedSecretPlaceholder = "change-me-purser-shared-secret"

func TestEnvoyConfigs_Validate(t *testing.T) {
	for _, f := range envoyFiles(t) {
		t.Run(f, func(t *testing.T) {
			loadBootstrap(t, f)
		})
	}
}

// TestEnvoyConfigs_ValidationCatchesMistakes proves the validation above can fail: each case
// damages a copy of envoy.yaml in one way an operator might.
func TestEnvoyConfigs_ValidationCatchesMistakes(t *testing.T) {
	decode := func(b []byte) error { _, err := decodeBootstrap(b); return err }
	cases := []struct {
		name, old, new, wantErr string
	}{
		{"MisspeltField", "failure_mode_allow: false", "failure_mode_alow: false", "failure_mode_alow"},
		{"MisspeltFieldInsideNestedAny", "\n                      stop_processing_after_matches: 0", "\n                      stop_processing_after_match: 0", "stop_processing_after_match"},
		{"UnknownType", "envoy.extensions.filters.http.router.v3.Router", "envoy.extensions.filters.http.router.v3.Rooter", "Rooter"},
		{"InvalidEnum", "transport_api_version: V3", "transport_api_version: V4", "V4"},
		{"InvalidEnumInsideAny", "type: NUMBER }", "type: INTEGER }", "INTEGER"},
		{"WrongValueType", "timeout: 0.5s", "timeout: half-a-second", "Duration"},
		{"ValidatorRuleMaxEventSizeTooLarge", "max_event_size: 4194304", "max_event_size: 20971520", "MaxEventSize"},
		{"ValidatorRuleEmptyClusterName", "cluster_name: purser }", "cluster_name: \"\" }", "ClusterName"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, damage(t, "envoy.yaml", tc.old, tc.new, decode), tc.wantErr)
		})
	}
}

func TestEnvoyConfigs_ExtAuthz(t *testing.T) {
	for _, f := range envoyFiles(t) {
		c := loadCfg(t, f)
		a := c.authz
		t.Run(f+"/FilterOrder", func(t *testing.T) {
			fs := c.hcm.GetHttpFilters()
			require.Equal(t, "envoy.filters.http.ext_authz", fs[0].GetName(), "ext_authz must run first: nothing may touch the request before the decision")
			require.Equal(t, "envoy.filters.http.router", fs[len(fs)-1].GetName())
		})
		t.Run(f+"/PackAsBytes", func(t *testing.T) {
			require.True(t, a.GetWithRequestBody().GetPackAsBytes(), "with_request_body.pack_as_bytes must be true: purser parses raw_body bytes")
			require.True(t, a.GetWithRequestBody().GetAllowPartialMessage(), "allow_partial_message must be true: big bodies are checked, not 413'd")
		})
		t.Run(f+"/BodyLimitWithinConnectionBuffer", func(t *testing.T) {
			limit := c.bs.GetStaticResources().GetListeners()[0].GetPerConnectionBufferLimitBytes()
			require.NotNil(t, limit, "per_connection_buffer_limit_bytes must be set explicitly")
			require.LessOrEqual(t, a.GetWithRequestBody().GetMaxRequestBytes(), limit.GetValue(),
				"max_request_bytes above the listener buffer limit gives 413s even with allow_partial_message")
		})
		t.Run(f+"/FailClosed", func(t *testing.T) {
			require.False(t, a.GetFailureModeAllow(), "failure_mode_allow must be false (fail closed)")
			require.Equal(t, typev3.StatusCode_ServiceUnavailable, a.GetStatusOnError().GetCode(), "status_on_error must be 503")
		})
		t.Run(f+"/Timeout", func(t *testing.T) {
			to := a.GetGrpcService().GetTimeout()
			require.NotNil(t, to, "grpc_service.timeout must be set deliberately (Envoy's default is 200ms)")
			require.GreaterOrEqual(t, to.AsDuration().Milliseconds(), int64(200),
				"timeout must exceed purser's own 150ms deadline plus network time")
			require.Empty(t, a.GetGrpcService().GetRetryPolicy(), "a retried Check could reserve twice")
		})
		t.Run(f+"/AllowedHeadersUnset", func(t *testing.T) {
			require.Nil(t, a.GetAllowedHeaders(), "allowed_headers drops every unlisted header, x-request-id included")
			require.Nil(t, a.GetDisallowedHeaders())
		})
		t.Run(f+"/SharedSecret", func(t *testing.T) {
			require.Equal(t, "purser", a.GetGrpcService().GetEnvoyGrpc().GetClusterName())
			require.Equal(t, corev3.ApiVersion_V3, a.GetTransportApiVersion())
			require.Equal(t, sharedSecretPlaceholder, metadataValue(a.GetGrpcService().GetInitialMetadata(), "x-purser-secret"),
				"initial_metadata must carry x-purser-secret")
		})
		t.Run(f+"/ContextNamespaces", func(t *testing.T) {
			require.Equal(t, []string{"purser"}, a.GetRouteMetadataContextNamespaces())
			require.Contains(t, a.GetMetadataContextNamespaces(), "envoy.filters.http.jwt_authn")
			require.False(t, a.GetIncludePeerCertificate())
		})
	}
}

func metadataValue(hs []*corev3.HeaderValue, key string) string {
	for _, h := range hs {
		if h.GetKey() == key {
			return h.GetValue()
		}
	}
	return ""
}

func TestEnvoyConfigs_AccessLog(t *testing.T) {
	for _, f := range envoyFiles(t) {
		c := loadCfg(t, f)
		cc := c.als.GetCommonConfig()
		t.Run(f+"/Transport", func(t *testing.T) {
			require.Equal(t, corev3.ApiVersion_V3, cc.GetTransportApiVersion(), "http_grpc transport_api_version must be V3")
			require.Equal(t, "purser", cc.GetLogName())
			require.Equal(t, "purser", cc.GetGrpcService().GetEnvoyGrpc().GetClusterName())
			require.Equal(t, sharedSecretPlaceholder, metadataValue(cc.GetGrpcService().GetInitialMetadata(), "x-purser-secret"))
		})
		t.Run(f+"/ExplicitBuffering", func(t *testing.T) {
			require.NotNil(t, cc.GetBufferFlushInterval(), "buffer_flush_interval must be explicit")
			require.NotNil(t, cc.GetBufferSizeBytes(), "buffer_size_bytes must be explicit (it is also the drop threshold)")
			size := cc.GetBufferSizeBytes().GetValue()
			require.Greater(t, size, uint32(16384), "the 16 KiB default drops entries after a few dozen requests of backlog")
			// One flush is about buffer_size_bytes + one entry; grpc-go rejects messages above 4 MiB by default.
			require.LessOrEqual(t, size, uint32(2<<20), "keep batches well below purser's 4 MiB gRPC receive limit")
			require.LessOrEqual(t, cc.GetBufferFlushInterval().AsDuration().Seconds(), 1.0)
		})
		t.Run(f+"/NoCredentialsLogged", func(t *testing.T) {
			requireNoCredentialHeaders(t, c.als.GetAdditionalRequestHeadersToLog(), c.als.GetAdditionalResponseHeadersToLog())
		})
	}
}

func TestEnvoyConfigs_PurserCluster(t *testing.T) {
	for _, f := range envoyFiles(t) {
		c := loadCfg(t, f)
		cl := c.cluster(t, "purser")
		t.Run(f+"/HTTP2", func(t *testing.T) {
			any := cl.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
			require.NotNil(t, any, "the purser cluster must declare its HTTP protocol: gRPC needs HTTP/2")
			var po httpv3.HttpProtocolOptions
			require.NoError(t, any.UnmarshalTo(&po))
			h2 := po.GetExplicitHttpConfig().GetHttp2ProtocolOptions()
			require.NotNil(t, h2, "explicit_http_config.http2_protocol_options required")
			require.NotNil(t, h2.GetConnectionKeepalive(), "connection_keepalive detects dead long-lived ALS streams")
		})
		t.Run(f+"/HealthCheck", func(t *testing.T) {
			require.Len(t, cl.GetHealthChecks(), 1)
			require.NotNil(t, cl.GetHealthChecks()[0].GetGrpcHealthCheck(), "use grpc.health.v1 health checks")
		})
		t.Run(f+"/Address", func(t *testing.T) {
			require.Equal(t, "STRICT_DNS", cl.GetType().String())
			sa := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			require.Equal(t, "purser", sa.GetAddress(), "docker-compose service name")
			require.Equal(t, uint32(9000), sa.GetPortValue())
		})
	}
}

// Non-billable routes are still checked (identity) but carry no api_flavor.
var nonBillableRoutes = map[string]bool{"openai-models": true, "openai-model": true, "anthropic-count-tokens": true}

var providerOfCluster = map[string]string{"openai": "openai", "anthropic": "anthropic", "gemini": "google"}

func TestEnvoyConfigs_Routes(t *testing.T) {
	for _, f := range envoyFiles(t) {
		c := loadCfg(t, f)
		for _, r := range c.routes() {
			t.Run(f+"/"+r.GetName(), func(t *testing.T) {
				require.NotEmpty(t, r.GetName(), "every route needs a name (it is the ALS route_name)")
				perRoute := r.GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"]
				require.NotNil(t, perRoute, "route %s has no ext_authz per-route config", r.GetName())
				var ea ext_authzv3.ExtAuthzPerRoute
				require.NoError(t, perRoute.UnmarshalTo(&ea))

				if r.GetDirectResponse() != nil {
					require.Equal(t, "/healthz", r.GetMatch().GetPath())
					require.True(t, ea.GetDisabled(), "/healthz must not call purser (health checks must work while purser is down)")
					return
				}
				cluster := r.GetRoute().GetCluster()
				require.Contains(t, providerOfCluster, cluster, "route %s: unexpected cluster", r.GetName())
				require.False(t, ea.GetDisabled(), "route %s forwards to a provider: ext_authz must run", r.GetName())
				ce := ea.GetCheckSettings().GetContextExtensions()
				require.NotEmpty(t, ce["route"], "route %s: context_extensions.route is required", r.GetName())
				require.Equal(t, providerOfCluster[cluster], ce["provider"], "route %s: provider", r.GetName())
				if nonBillableRoutes[r.GetName()] {
					require.NotContains(t, ce, "api_flavor")
				} else {
					require.Contains(t, []string{"chat", "completions", "responses", "embeddings", "anthropic", "gemini"}, ce["api_flavor"],
						"billable route %s: api_flavor", r.GetName())
					require.NotNil(t, r.GetRoute().GetTimeout(), "billable route %s: explicit timeout (default 15s cuts LLM calls)", r.GetName())
				}

				// Exactly one credential injector is switched on, the one for this provider.
				var enabled []string
				for name, cfg := range r.GetTypedPerFilterConfig() {
					if !strings.HasPrefix(name, "purser.credentials.") {
						continue
					}
					var fc routev3.FilterConfig
					require.NoError(t, cfg.UnmarshalTo(&fc))
					if !fc.GetDisabled() && fc.GetConfig() != nil {
						enabled = append(enabled, name)
					}
				}
				require.Equal(t, []string{"purser.credentials." + cluster}, enabled, "route %s", r.GetName())
			})
		}
		t.Run(f+"/HealthzExists", func(t *testing.T) {
			var found bool
			for _, r := range c.routes() {
				found = found || r.GetMatch().GetPath() == "/healthz"
			}
			require.True(t, found)
		})
	}
}

func TestEnvoyConfigs_CredentialInjectors(t *testing.T) {
	secretFiles := map[string]string{}
	for _, f := range envoyFiles(t) {
		c := loadCfg(t, f)
		for _, p := range []string{"openai", "anthropic", "gemini"} {
			t.Run(f+"/"+p, func(t *testing.T) {
				hf := c.filter("purser.credentials." + p)
				require.NotNil(t, hf)
				require.True(t, hf.GetDisabled(), "credential injectors are off by default and enabled per route")
				var ci credv3.CredentialInjector
				require.NoError(t, hf.GetTypedConfig().UnmarshalTo(&ci))
				require.True(t, ci.GetOverwrite(), "must overwrite the caller's purser key")
				require.False(t, ci.GetAllowRequestWithoutCredential(), "no key loaded must mean 401, not an unauthenticated call")
				var g genericv3.Generic
				require.NoError(t, ci.GetCredential().GetTypedConfig().UnmarshalTo(&g))
				file := g.GetCredential().GetSdsConfig().GetPathConfigSource().GetPath()
				require.Equal(t, "/etc/envoy/secrets/"+p+".yaml", file)
				secretFiles[path.Base(file)] = g.GetCredential().GetName()
			})
		}
		t.Run(f+"/InjectorsAfterExtAuthz", func(t *testing.T) {
			names := []string{}
			for _, hf := range c.hcm.GetHttpFilters() {
				names = append(names, hf.GetName())
			}
			for _, p := range []string{"openai", "anthropic", "gemini"} {
				require.Greater(t, slices.Index(names, "purser.credentials."+p), slices.Index(names, "envoy.filters.http.ext_authz"))
			}
		})
	}
	for file, name := range secretFiles {
		t.Run("secrets/"+file, func(t *testing.T) {
			b, err := os.ReadFile("secrets/" + file)
			require.NoError(t, err)
			js, err := yaml.YAMLToJSON(b)
			require.NoError(t, err)
			var dr discoveryv3.DiscoveryResponse
			require.NoError(t, strictProto(js, &dr))
			require.Len(t, dr.GetResources(), 1)
			var s tlsv3.Secret
			require.NoError(t, dr.GetResources()[0].UnmarshalTo(&s))
			require.Equal(t, name, s.GetName(), "the SDS resource name must match the one the filter asks for")
			require.Contains(t, s.GetGenericSecret().GetSecret().GetInlineString(), "REPLACE", "only placeholders belong in the repository")
		})
	}
}

// requiredUsageKeys are the provider usage fields purser prices (docs/architecture.md).
var requiredJSONUsageKeys = []string{
	"usage.prompt_tokens", "usage.completion_tokens", "usage.total_tokens",
	"usage.prompt_tokens_details.cached_tokens", "usage.prompt_tokens_details.audio_tokens",
	"usage.completion_tokens_details.reasoning_tokens", "usage.completion_tokens_details.audio_tokens",
	"usage.input_tokens", "usage.output_tokens", "usage.input_tokens_details.cached_tokens",
	"usage.output_tokens_details.reasoning_tokens",
	"usage.cache_creation_input_tokens", "usage.cache_read_input_tokens",
	"usageMetadata.promptTokenCount", "usageMetadata.candidatesTokenCount", "usageMetadata.cachedContentTokenCount",
	"usageMetadata.thoughtsTokenCount", "usageMetadata.toolUsePromptTokenCount", "usageMetadata.totalTokenCount",
	"model",
}

// Streams: Responses API usage only arrives nested in the terminal event (response.usage.*).
var requiredSSEUsageKeys = append(slices.DeleteFunc(slices.Clone(requiredJSONUsageKeys), func(k string) bool {
	return k == "usage.input_tokens_details.cached_tokens" || k == "usage.output_tokens_details.reasoning_tokens"
}),
	"message.usage.input_tokens", "message.usage.cache_creation_input_tokens", "message.usage.cache_read_input_tokens",
	"response.usage.input_tokens", "response.usage.output_tokens",
	"response.usage.input_tokens_details.cached_tokens", "response.usage.output_tokens_details.reasoning_tokens",
)

var stringUsageKeys = map[string]bool{"model": true, "modelVersion": true, "message.model": true, "response.model": true}

// dotPath is a dot-joined JSON path of object keys (no empty segments, no array indexes).
var dotPath = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

func checkUsageRule(t *testing.T, r *json_to_metadatav3.JsonToMetadata_Rule) string {
	t.Helper()
	var sel []string
	for _, s := range r.GetSelectors() {
		sel = append(sel, s.GetKey())
	}
	p := r.GetOnPresent()
	require.NotNil(t, p, "rule %v: on_present required", sel)
	require.Equal(t, "purser.usage", p.GetMetadataNamespace(), "rule %v: namespace", sel)
	require.Regexp(t, dotPath, p.GetKey())
	require.Equal(t, strings.Join(sel, "."), p.GetKey(), "metadata key must be the dot-joined JSON path of the field")
	require.Nil(t, p.GetValue(), "on_present must copy the field, not a constant")
	want := json_to_metadatav3.JsonToMetadata_NUMBER
	if stringUsageKeys[p.GetKey()] {
		want = json_to_metadatav3.JsonToMetadata_STRING
	}
	require.Equal(t, want, p.GetType(), "key %s: counts are NUMBER, model ids STRING", p.GetKey())
	// on_error fires on every content-type mismatch and on_missing on every other provider's rule:
	// a usage_status written from here would be wrong most of the time.
	require.Nil(t, r.GetOnMissing(), "key %s: no on_missing", p.GetKey())
	require.Nil(t, r.GetOnError(), "key %s: no on_error", p.GetKey())
	return p.GetKey()
}

func TestEnvoyConfigs_UsageRules(t *testing.T) {
	for _, f := range envoyFiles(t) {
		c := loadCfg(t, f)
		if c.luaOnly {
			t.Run(f+"/Lua", func(t *testing.T) {
				require.Nil(t, c.j2m, "the Lua variant extracts JSON usage in Lua too")
				require.Nil(t, c.sse, "sse_to_metadata does not exist before 1.38")
				require.Contains(t, c.lua.GetDefaultSourceCode().GetInlineString(), `"purser.usage"`)
			})
			continue
		}
		t.Run(f+"/RouteScopedLua", func(t *testing.T) {
			// The Lua scan is switched on only where the native filters cannot read the answer
			// (Gemini's JSON-array stream), and json_to_metadata is switched off there, so the
			// array is not held whole. Its script is envoy-lua.yaml's, byte for byte.
			require.NotNil(t, c.lua, "the Lua scan handles Gemini's JSON-array streams")
			require.Equal(t, loadCfg(t, "envoy-lua.yaml").lua.GetDefaultSourceCode().GetInlineString(),
				c.lua.GetDefaultSourceCode().GetInlineString(), "one Lua script, kept in step")
			var luaRoutes []string
			for _, r := range c.routes() {
				on, off := routeFilter(t, r, "envoy.filters.http.lua")
				require.False(t, off)
				if !on {
					continue
				}
				luaRoutes = append(luaRoutes, r.GetName())
				_, j2mOff := routeFilter(t, r, "envoy.filters.http.json_to_metadata")
				require.True(t, j2mOff, "route %s: json_to_metadata must not hold what Lua reads", r.GetName())
			}
			require.Equal(t, []string{"gemini-stream-json"}, luaRoutes)
		})
		t.Run(f+"/JSON", func(t *testing.T) {
			require.NotNil(t, c.j2m)
			require.Nil(t, c.j2m.GetRequestRules(), "request bodies are purser's job")
			rr := c.j2m.GetResponseRules()
			var keys []string
			for _, r := range rr.GetRules() {
				keys = append(keys, checkUsageRule(t, r))
			}
			for _, k := range requiredJSONUsageKeys {
				require.Contains(t, keys, k)
			}
			require.Len(t, slices.Compact(slices.Sorted(slices.Values(keys))), len(keys), "duplicate keys")

			re := regexp.MustCompile(rr.GetAllowContentTypesRegex().GetRegex())
			for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"} {
				require.True(t, re.MatchString(ct) || slices.Contains(rr.GetAllowContentTypes(), ct), "content type %q must be accepted", ct)
			}
			for _, ct := range []string{"text/event-stream", "application/jsonl", "text/html"} {
				require.False(t, re.MatchString(ct), "content type %q must not be buffered as JSON", ct)
			}
		})
		t.Run(f+"/SSE", func(t *testing.T) {
			require.NotNil(t, c.sse)
			mes := c.sse.GetResponseRules().GetMaxEventSize()
			require.NotNil(t, mes, "max_event_size must be raised: response.completed events embed the whole response")
			require.Greater(t, mes.GetValue(), uint32(8192))
			require.Equal(t, "envoy.content_parsers.json", c.sse.GetResponseRules().GetContentParser().GetName())
			var keys []string
			for _, rc := range c.sseJSON.GetRules() {
				keys = append(keys, checkUsageRule(t, rc.GetRule()))
				require.Zero(t, rc.GetStopProcessingAfterMatches(), "last match must win (cumulative counters)")
			}
			for _, k := range requiredSSEUsageKeys {
				require.Contains(t, keys, k)
			}
			require.Len(t, slices.Compact(slices.Sorted(slices.Values(keys))), len(keys), "duplicate keys")
		})
	}
}

// routeFilter reads a route's FilterConfig for a filter: switched on (config set, not
// disabled) or off (disabled).
func routeFilter(t *testing.T, r *routev3.Route, name string) (on, off bool) {
	t.Helper()
	a := r.GetTypedPerFilterConfig()[name]
	if a == nil {
		return false, false
	}
	var fc routev3.FilterConfig
	require.NoError(t, a.UnmarshalTo(&fc), "route %s: %s", r.GetName(), name)
	return !fc.GetDisabled() && fc.GetConfig() != nil, fc.GetDisabled()
}

func TestEnvoyConfigs_ProviderTLS(t *testing.T) {
	for _, f := range []string{"envoy.yaml", "envoy-lua.yaml"} {
		c := loadCfg(t, f)
		for _, name := range []string{"openai", "anthropic", "gemini"} {
			t.Run(f+"/"+name, func(t *testing.T) {
				cl := c.cluster(t, name)
				var tls tlsv3.UpstreamTlsContext
				require.NoError(t, cl.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tls))
				host := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
				require.Equal(t, host, tls.GetSni())
				vc := tls.GetCommonTlsContext().GetValidationContext()
				require.NotNil(t, vc.GetTrustedCa(), "without a validation_context Envoy does not verify the provider's certificate")
				require.Equal(t, host, vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact())
				require.GreaterOrEqual(t, cl.GetCircuitBreakers().GetThresholds()[0].GetMaxRequests().GetValue(), uint32(4096))
			})
		}
	}
}

// TestEnvoyConfigs_NoDrift keeps the three bootstraps in step: the Lua variant may differ only
// in its usage filter, the demo only in the provider clusters.
func TestEnvoyConfigs_NoDrift(t *testing.T) {
	base := loadCfg(t, "envoy.yaml")
	for _, f := range []string{"envoy-lua.yaml", "envoy-demo.yaml"} {
		other := loadCfg(t, f)
		t.Run(f+"/ExtAuthz", func(t *testing.T) {
			requireProtoEqual(t, one(base.filter("envoy.filters.http.ext_authz")), one(other.filter("envoy.filters.http.ext_authz")))
		})
		t.Run(f+"/AccessLog", func(t *testing.T) {
			requireProtoEqual(t, base.hcm.GetAccessLog(), other.hcm.GetAccessLog())
		})
		t.Run(f+"/Routes", func(t *testing.T) {
			requireProtoEqual(t, one(base.hcm.GetRouteConfig()), one(other.hcm.GetRouteConfig()))
		})
		t.Run(f+"/PurserCluster", func(t *testing.T) {
			requireProtoEqual(t, one(base.cluster(t, "purser")), one(other.cluster(t, "purser")))
		})
		t.Run(f+"/CredentialInjectors", func(t *testing.T) {
			for _, p := range []string{"openai", "anthropic", "gemini"} {
				requireProtoEqual(t, one(base.filter("purser.credentials."+p)), one(other.filter("purser.credentials."+p)))
			}
		})
		t.Run(f+"/ListenerAndHCM", func(t *testing.T) {
			// Everything but the usage filters (the Lua variant's only difference) is identical.
			requireProtoEqual(t, withoutUsageFilters(t, base), withoutUsageFilters(t, other))
		})
	}
	t.Run("envoy-demo.yaml/OnlyProviderClustersDiffer", func(t *testing.T) {
		demo := loadCfg(t, "envoy-demo.yaml")
		a := proto.Clone(base.bs).(*bootstrapv3.Bootstrap)
		b := proto.Clone(demo.bs).(*bootstrapv3.Bootstrap)
		require.Equal(t, clusterNames(a.GetStaticResources().GetClusters()), clusterNames(b.GetStaticResources().GetClusters()))
		keep := func(cs []*clusterv3.Cluster) []*clusterv3.Cluster {
			return slices.DeleteFunc(cs, func(c *clusterv3.Cluster) bool { _, ok := providerOfCluster[c.GetName()]; return ok })
		}
		a.StaticResources.Clusters = keep(a.StaticResources.Clusters)
		b.StaticResources.Clusters = keep(b.StaticResources.Clusters)
		requireProtoEqual(t, one(a), one(b))
	})
}

func clusterNames(cs []*clusterv3.Cluster) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.GetName())
	}
	return out
}

// withoutUsageFilters returns the listener with its HCM's usage filters (json_to_metadata,
// sse_to_metadata, lua) removed, HCM unpacked so maps compare by value.
func withoutUsageFilters(t *testing.T, c *cfg) []proto.Message {
	t.Helper()
	l := proto.Clone(c.bs.GetStaticResources().GetListeners()[0]).(*listenerv3.Listener)
	l.FilterChains[0].Filters[0].ConfigType = nil
	h := proto.Clone(c.hcm).(*hcmv3.HttpConnectionManager)
	h.HttpFilters = slices.DeleteFunc(h.HttpFilters, func(f *hcmv3.HttpFilter) bool {
		switch f.GetName() {
		case "envoy.filters.http.json_to_metadata", "envoy.filters.http.sse_to_metadata", "envoy.filters.http.lua":
			return true
		}
		return false
	})
	return []proto.Message{l, h}
}

func requireProtoEqual[M proto.Message](t *testing.T, want, got []M) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		if !proto.Equal(want[i], got[i]) {
			// Multiline protojson gives testify a readable diff.
			o := protojson.MarshalOptions{Multiline: true}
			require.Equal(t, o.Format(want[i]), o.Format(got[i]), "configs drifted (envoy.yaml vs other)")
		}
	}
}

func one[M proto.Message](m M) []M { return []M{m} }
