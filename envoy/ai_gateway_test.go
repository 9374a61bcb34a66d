package envoy_test

// Schema-level checks for envoy/ai-gateway: Envoy AI Gateway and Envoy Gateway CRDs have no Go
// module in this repository, so each document is decoded strictly into a mirror of the upstream
// Go types (envoyproxy/ai-gateway api/v1beta1, envoyproxy/gateway api/v1alpha1, Gateway API)
// that declares exactly the fields these files use, with the upstream JSON names. A field we do
// not mirror, or a misspelt one, is an error.

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Gateway API shapes (sigs.k8s.io/gateway-api/apis/v1).
type parentReference struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

type backendObjectReference struct {
	Group     *string `json:"group,omitempty"`
	Kind      *string `json:"kind,omitempty"`
	Name      string  `json:"name"`
	Namespace string  `json:"namespace,omitempty"`
	Port      int32   `json:"port,omitempty"`
}

// aigateway.envoyproxy.io/v1beta1 AIGatewayRoute.
type aiGatewayRoute = manifest[struct {
	ParentRefs []parentReference `json:"parentRefs,omitempty"`
	Rules      []struct {
		Matches []struct {
			Headers []struct {
				Type  string `json:"type,omitempty"`
				Name  string `json:"name"`
				Value string `json:"value"`
			} `json:"headers,omitempty"`
		} `json:"matches,omitempty"`
		BackendRefs []struct {
			Name string `json:"name"`
		} `json:"backendRefs,omitempty"`
		Timeouts *struct {
			Request        string `json:"request,omitempty"`
			BackendRequest string `json:"backendRequest,omitempty"`
		} `json:"timeouts,omitempty"`
	} `json:"rules"`
	LLMRequestCosts []struct {
		MetadataKey string  `json:"metadataKey"`
		Type        string  `json:"type"`
		CEL         *string `json:"cel,omitempty"`
	} `json:"llmRequestCosts,omitempty"`
}]

type policyTargetRef struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
	Name  string `json:"name"`
}

// gateway.envoyproxy.io/v1alpha1 SecurityPolicy (extAuth only).
type securityPolicy = manifest[struct {
	TargetRefs []policyTargetRef `json:"targetRefs"`
	ExtAuth    *struct {
		GRPC *struct {
			BackendRefs []backendObjectReference `json:"backendRefs,omitempty"`
		} `json:"grpc,omitempty"`
		HeadersToExtAuth []string `json:"headersToExtAuth,omitempty"`
		BodyToExtAuth    *struct {
			MaxRequestBytes uint32 `json:"maxRequestBytes"`
		} `json:"bodyToExtAuth,omitempty"`
		Timeout           *string `json:"timeout,omitempty"`
		FailOpen          *bool   `json:"failOpen,omitempty"`
		StatusOnError     *int32  `json:"statusOnError,omitempty"`
		ContextExtensions []struct {
			Name  string  `json:"name"`
			Type  string  `json:"type"`
			Value *string `json:"value,omitempty"`
		} `json:"contextExtensions,omitempty"`
	} `json:"extAuth,omitempty"`
}]

// gateway.envoyproxy.io/v1alpha1 ClientTrafficPolicy (connection buffer only).
type clientTrafficPolicy = manifest[struct {
	TargetRefs []policyTargetRef `json:"targetRefs"`
	Connection *struct {
		BufferLimit *resource.Quantity `json:"bufferLimit,omitempty"`
	} `json:"connection,omitempty"`
}]

// gateway.envoyproxy.io/v1alpha1 EnvoyProxy (ALS access log only).
type envoyProxy = manifest[struct {
	Telemetry *struct {
		AccessLog *struct {
			Settings []struct {
				Sinks []struct {
					Type string `json:"type"`
					ALS  *struct {
						BackendRefs []backendObjectReference `json:"backendRefs"`
						LogName     *string                  `json:"logName,omitempty"`
						Type        string                   `json:"type"`
						HTTP        *struct {
							RequestHeaders  []string `json:"requestHeaders,omitempty"`
							ResponseHeaders []string `json:"responseHeaders,omitempty"`
						} `json:"http,omitempty"`
					} `json:"als,omitempty"`
				} `json:"sinks"`
			} `json:"settings,omitempty"`
		} `json:"accessLog,omitempty"`
	} `json:"telemetry,omitempty"`
}]

// gateway.networking.k8s.io/v1beta1 ReferenceGrant.
type referenceGrant = manifest[struct {
	From []struct {
		Group     string `json:"group"`
		Kind      string `json:"kind"`
		Namespace string `json:"namespace"`
	} `json:"from"`
	To []struct {
		Group string  `json:"group"`
		Kind  string  `json:"kind"`
		Name  *string `json:"name,omitempty"`
	} `json:"to"`
}]

type aiGatewayObjects struct {
	routes   []*aiGatewayRoute
	security []*securityPolicy
	traffic  []*clientTrafficPolicy
	proxies  []*envoyProxy
	grants   []*referenceGrant
}

func decodeAIGateway(doc []byte, o *aiGatewayObjects) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var v any
	switch tm.APIVersion + "/" + tm.Kind {
	case "aigateway.envoyproxy.io/v1beta1/AIGatewayRoute":
		v = appendNew(&o.routes)
	case "gateway.envoyproxy.io/v1alpha1/SecurityPolicy":
		v = appendNew(&o.security)
	case "gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy":
		v = appendNew(&o.traffic)
	case "gateway.envoyproxy.io/v1alpha1/EnvoyProxy":
		v = appendNew(&o.proxies)
	case "gateway.networking.k8s.io/v1beta1/ReferenceGrant":
		v = appendNew(&o.grants)
	default:
		return fmt.Errorf("unexpected kind %s/%s", tm.APIVersion, tm.Kind)
	}
	return strictYAML(doc, v)
}

func loadAIGateway(t *testing.T) *aiGatewayObjects {
	t.Helper()
	o := &aiGatewayObjects{}
	decodeFiles(t, glob(t, "ai-gateway/*.yaml"), func(d []byte) error { return decodeAIGateway(d, o) })
	return o
}

func TestAIGateway_StrictDecodingCatchesMistakes(t *testing.T) {
	decode := eachDoc(func(d []byte) error { return decodeAIGateway(d, &aiGatewayObjects{}) })
	for name, tc := range map[string][4]string{ // file, old, new, what the error must name
		"MisspeltCostField":   {"ai-gateway/aigatewayroute.yaml", "metadataKey: llm_input_token", "metadatakey: llm_input_token", `unknown field "spec.llmRequestCosts[0].metadatakey"`},
		"MisspeltExtAuth":     {"ai-gateway/securitypolicy.yaml", "bodyToExtAuth:", "bodyToExtauth:", `unknown field "spec.extAuth.bodyToExtauth"`},
		"UnknownPolicyField":  {"ai-gateway/securitypolicy.yaml", "failOpen: false", "failOpen: false\n    allowPartialMessage: true", `unknown field "spec.extAuth.allowPartialMessage"`},
		"MisspeltALSField":    {"ai-gateway/envoyproxy.yaml", "logName: purser", "log_name: purser", `unknown field "spec.telemetry.accessLog.settings[0].sinks[0].als.log_name"`},
		"WrongQuantityFormat": {"ai-gateway/clienttrafficpolicy.yaml", "bufferLimit: 8Mi", "bufferLimit: eight-megs", "quantities must match"},
	} {
		t.Run(name, func(t *testing.T) {
			require.ErrorContains(t, damage(t, tc[0], tc[1], tc[2], decode), tc[3])
		})
	}
}

func TestAIGateway_Resources(t *testing.T) {
	o := loadAIGateway(t)
	t.Run("LLMRequestCosts", func(t *testing.T) {
		require.Len(t, o.routes, 1)
		// purser's default io.envoy.ai_gateway keys (docs/architecture.md) and the cost types that
		// fill them (envoyproxy/ai-gateway api/v1beta1 LLMRequestCostType).
		want := map[string]string{
			"llm_input_token":                "InputToken",
			"llm_output_token":               "OutputToken",
			"llm_cached_input_token":         "CachedInputToken",
			"llm_cache_creation_input_token": "CacheCreationInputToken",
			"llm_reasoning_token":            "ReasoningToken",
			"llm_total_token":                "TotalToken",
		}
		got := map[string]string{}
		for _, c := range o.routes[0].Spec.LLMRequestCosts {
			require.Nil(t, c.CEL)
			got[c.MetadataKey] = c.Type
		}
		require.Equal(t, want, got)
		for _, r := range o.routes[0].Spec.Rules {
			require.NotNil(t, r.Timeouts, "the AI Gateway's 60s default cuts long generations")
			d, err := time.ParseDuration(r.Timeouts.Request)
			require.NoError(t, err)
			require.GreaterOrEqual(t, d, 10*time.Minute)
		}
	})
	gw := o.routes[0].Spec.ParentRefs[0].Name
	t.Run("ExtAuth", func(t *testing.T) {
		require.Len(t, o.security, 1)
		sp := o.security[0]
		require.Equal(t, gw, sp.Spec.TargetRefs[0].Name, "the policy must target the route's Gateway")
		ea := sp.Spec.ExtAuth
		require.NotNil(t, ea.GRPC)
		require.Equal(t, backendObjectReference{Name: "purser", Namespace: "purser", Port: 9000}, ea.GRPC.BackendRefs[0])
		require.NotNil(t, ea.FailOpen)
		require.False(t, *ea.FailOpen, "fail closed")
		require.NotNil(t, ea.Timeout, "Envoy Gateway defaults to 10s")
		d, err := time.ParseDuration(*ea.Timeout)
		require.NoError(t, err)
		require.GreaterOrEqual(t, d, 200*time.Millisecond)
		require.Empty(t, ea.HeadersToExtAuth, "a header allow-list would drop x-request-id")
		require.NotNil(t, ea.StatusOnError, "without statusOnError Envoy Gateway answers 403 when purser is unreachable")
		require.EqualValues(t, 503, *ea.StatusOnError, "fail closed with a retryable status")
		ce := map[string]string{}
		for _, c := range ea.ContextExtensions {
			require.Equal(t, "Value", c.Type, "context extension %s", c.Name)
			require.NotNil(t, c.Value)
			ce[c.Name] = *c.Value
		}
		require.NotEmpty(t, ce["route"], "context_extensions.route names the Gateway for route budgets")
		require.NotNil(t, ea.BodyToExtAuth, "purser needs the body")
		require.Len(t, o.traffic, 1)
		require.Equal(t, gw, o.traffic[0].Spec.TargetRefs[0].Name)
		limit := o.traffic[0].Spec.Connection.BufferLimit.Value()
		require.LessOrEqual(t, int64(ea.BodyToExtAuth.MaxRequestBytes), limit, "maxRequestBytes above the buffer limit gives 413s")
	})
	t.Run("AccessLog", func(t *testing.T) {
		require.Len(t, o.proxies, 1)
		sinks := o.proxies[0].Spec.Telemetry.AccessLog.Settings[0].Sinks
		require.Equal(t, "ALS", sinks[0].Type)
		als := sinks[0].ALS
		require.Equal(t, "HTTP", als.Type)
		require.Equal(t, "purser", *als.LogName)
		require.Equal(t, backendObjectReference{Name: "purser", Namespace: "purser", Port: 9000}, als.BackendRefs[0])
		requireNoCredentialHeaders(t, als.HTTP.RequestHeaders, als.HTTP.ResponseHeaders)
	})
	t.Run("ReferenceGrant", func(t *testing.T) {
		require.Len(t, o.grants, 1)
		g := o.grants[0]
		require.Equal(t, "purser", g.Metadata.Namespace)
		from := map[string]string{}
		for _, f := range g.Spec.From {
			from[f.Kind] = f.Namespace
		}
		require.Equal(t, o.security[0].Metadata.Namespace, from["SecurityPolicy"])
		require.Equal(t, o.proxies[0].Metadata.Namespace, from["EnvoyProxy"])
		require.Equal(t, "Service", g.Spec.To[0].Kind)
	})
}
