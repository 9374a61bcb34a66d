package envoy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	netv1alpha3api "istio.io/api/networking/v1alpha3"
	secv1beta1api "istio.io/api/security/v1beta1"
	netv1 "istio.io/client-go/pkg/apis/networking/v1"
	netv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	telv1 "istio.io/client-go/pkg/apis/telemetry/v1"
)

// An Istio resource is decoded strictly as a manifest (ObjectMeta included) whose spec is then
// decoded with protojson into the istio.io/api message, because the client-go types' own
// UnmarshalJSON (jsonpb with AllowUnknownFields: true) would silently drop a misspelt field.

type istioObjects struct {
	authz     []*secv1.AuthorizationPolicy
	peerAuth  []*secv1.PeerAuthentication
	telemetry []*telv1.Telemetry
	filters   []*netv1alpha3.EnvoyFilter
	entries   []*netv1.ServiceEntry
	gateways  []*netv1.Gateway
	vservices []*netv1.VirtualService
	drules    []*netv1.DestinationRule
}

func strictSpec(spec json.RawMessage, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: false}.Unmarshal(spec, m)
}

func decodeIstio(doc []byte, o *istioObjects) error {
	var d manifest[json.RawMessage]
	if err := strictYAML(doc, &d); err != nil {
		return err
	}
	var spec proto.Message
	switch d.APIVersion + "/" + d.Kind {
	case "security.istio.io/v1/AuthorizationPolicy":
		v := appendNew(&o.authz)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "security.istio.io/v1/PeerAuthentication":
		v := appendNew(&o.peerAuth)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "telemetry.istio.io/v1/Telemetry":
		v := appendNew(&o.telemetry)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "networking.istio.io/v1alpha3/EnvoyFilter":
		v := appendNew(&o.filters)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "networking.istio.io/v1/ServiceEntry":
		v := appendNew(&o.entries)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "networking.istio.io/v1/Gateway":
		v := appendNew(&o.gateways)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "networking.istio.io/v1/VirtualService":
		v := appendNew(&o.vservices)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	case "networking.istio.io/v1/DestinationRule":
		v := appendNew(&o.drules)
		v.TypeMeta, v.ObjectMeta, spec = d.TypeMeta, d.Metadata, &v.Spec
	default:
		return fmt.Errorf("unexpected kind %s/%s", d.APIVersion, d.Kind)
	}
	return strictSpec(d.Spec, spec)
}

// loadIstio decodes every manifest of istio/ but meshconfig.yaml (Helm values, not a resource).
func loadIstio(t *testing.T) *istioObjects {
	t.Helper()
	o := &istioObjects{}
	files := slices.DeleteFunc(glob(t, "istio/*.yaml"), func(f string) bool { return filepath.Base(f) == "meshconfig.yaml" })
	decodeFiles(t, files, func(d []byte) error { return decodeIstio(d, o) })
	return o
}

func decodeMeshConfig(b []byte) (*meshv1alpha1.MeshConfig, error) {
	var wrapper struct {
		MeshConfig json.RawMessage `json:"meshConfig"`
	}
	if err := strictYAML(b, &wrapper); err != nil {
		return nil, err
	}
	var mc meshv1alpha1.MeshConfig
	if err := strictSpec(wrapper.MeshConfig, &mc); err != nil {
		return nil, err
	}
	return &mc, nil
}

func loadMeshConfig(t *testing.T) *meshv1alpha1.MeshConfig {
	t.Helper()
	b, err := os.ReadFile("istio/meshconfig.yaml")
	require.NoError(t, err)
	mc, err := decodeMeshConfig(b)
	require.NoError(t, err)
	return mc
}

func TestIstio_StrictDecodingCatchesMistakes(t *testing.T) {
	resources := eachDoc(func(d []byte) error { return decodeIstio(d, &istioObjects{}) })
	meshConfig := func(b []byte) error { _, err := decodeMeshConfig(b); return err }
	cases := []struct {
		name, file, old, new string
		decode               func([]byte) error
		want                 string // what the error must name
	}{
		{"MisspeltSpecField", "istio/authorizationpolicy.yaml", "action: CUSTOM", "actions: CUSTOM", resources, `unknown field "actions"`},
		{"InvalidEnum", "istio/authorizationpolicy.yaml", "action: CUSTOM", "action: CUSTOMISED", resources, `invalid value for enum field action: "CUSTOMISED"`},
		{"MisspeltMetadata", "istio/telemetry.yaml", "namespace: istio-system", "namespce: istio-system", resources, `unknown field "metadata.namespce"`},
		{"MisspeltMeshField", "istio/meshconfig.yaml", "failOpen: false", "failOpn: false", meshConfig, `unknown field "failOpn"`},
		{"MisspeltEnvoyFilterField", "istio/envoyfilter.yaml", "applyTo: LISTENER", "applyTo: LISTENR", resources, `invalid value for enum field applyTo: "LISTENR"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, damage(t, tc.file, tc.old, tc.new, tc.decode), tc.want)
		})
	}
}

func TestIstio_Resources(t *testing.T) {
	mc := loadMeshConfig(t)
	o := loadIstio(t)
	providers := map[string]*meshv1alpha1.MeshConfig_ExtensionProvider{}
	for _, p := range mc.GetExtensionProviders() {
		providers[p.GetName()] = p
	}
	egressGW := map[string]string{"istio": "egressgateway"}

	t.Run("MeshExtAuthz", func(t *testing.T) {
		var authz *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider
		for _, p := range providers {
			if g := p.GetEnvoyExtAuthzGrpc(); g != nil {
				authz = g
			}
		}
		require.NotNil(t, authz)
		require.Equal(t, "purser.purser.svc.cluster.local", authz.GetService(), "the purser Service of kubernetes/service.yaml")
		require.Equal(t, uint32(9000), authz.GetPort())
		require.False(t, authz.GetFailOpen(), "fail closed")
		require.Equal(t, "503", authz.GetStatusOnError())
		require.NotNil(t, authz.GetTimeout(), "Istio defaults to 600s")
		require.GreaterOrEqual(t, authz.GetTimeout().AsDuration().Milliseconds(), int64(200))
		body := authz.GetIncludeRequestBodyInCheck()
		require.True(t, body.GetPackAsBytes())
		require.True(t, body.GetAllowPartialMessage())
		require.LessOrEqual(t, body.GetMaxRequestBytes(), listenerBufferLimit(t, o), "body limit above the gateway's buffer limit gives 413s")
	})
	t.Run("MeshALS", func(t *testing.T) {
		var als *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyHttpGrpcV3LogProvider
		for _, p := range providers {
			if a := p.GetEnvoyHttpAls(); a != nil {
				als = a
			}
		}
		require.NotNil(t, als)
		require.Equal(t, "purser.purser.svc.cluster.local", als.GetService())
		require.Equal(t, uint32(9000), als.GetPort())
		require.Equal(t, "purser", als.GetLogName())
		requireNoCredentialHeaders(t, als.GetAdditionalRequestHeadersToLog(), als.GetAdditionalResponseHeadersToLog())
	})
	t.Run("CustomPolicy", func(t *testing.T) {
		var custom *secv1.AuthorizationPolicy
		for _, ap := range o.authz {
			if ap.Spec.GetAction() == secv1beta1api.AuthorizationPolicy_CUSTOM {
				custom = ap
			}
		}
		require.NotNil(t, custom)
		require.Equal(t, egressGW, custom.Spec.GetSelector().GetMatchLabels(), "CUSTOM authz only acts on the receiving proxy: the egress gateway")
		p := providers[custom.Spec.GetProvider().GetName()]
		require.NotNil(t, p, "provider must be declared in meshconfig.yaml")
		require.NotNil(t, p.GetEnvoyExtAuthzGrpc())
		hosts := custom.Spec.GetRules()[0].GetTo()[0].GetOperation().GetHosts()
		require.ElementsMatch(t, []string{"api.openai.com", "api.anthropic.com"}, hosts)
		require.ElementsMatch(t, hosts, o.entries[0].Spec.GetHosts(), "the policy must cover every host routed through the gateway")
	})
	t.Run("PurserOnlyAcceptsTheGateway", func(t *testing.T) {
		var allow *secv1.AuthorizationPolicy
		for _, ap := range o.authz {
			if ap.Spec.GetAction() == secv1beta1api.AuthorizationPolicy_ALLOW && ap.Namespace == "purser" {
				allow = ap
			}
		}
		require.NotNil(t, allow)
		require.Contains(t, allow.Spec.GetRules()[0].GetFrom()[0].GetSource().GetPrincipals()[0], "istio-egressgateway")
		require.Len(t, o.peerAuth, 1)
		require.Equal(t, "STRICT", o.peerAuth[0].Spec.GetMtls().GetMode().String())
	})
	t.Run("Telemetry", func(t *testing.T) {
		require.Len(t, o.telemetry, 1)
		tel := o.telemetry[0]
		require.Equal(t, egressGW, tel.Spec.GetSelector().GetMatchLabels())
		name := tel.Spec.GetAccessLogging()[0].GetProviders()[0].GetName()
		require.NotNil(t, providers[name].GetEnvoyHttpAls(), "access logs must go to the envoyHttpAls provider")
	})
	t.Run("EnvoyFilterMatchesEnvoyYAML", func(t *testing.T) {
		require.Len(t, o.filters, 1)
		ef := o.filters[0]
		require.Equal(t, egressGW, ef.Spec.GetWorkloadSelector().GetLabels())
		base := loadCfg(t, "envoy.yaml")
		var names []string
		for _, p := range ef.Spec.GetConfigPatches() {
			require.Equal(t, netv1alpha3api.EnvoyFilter_GATEWAY, p.GetMatch().GetContext())
			js, err := p.GetPatch().GetValue().MarshalJSON()
			require.NoError(t, err)
			if p.GetApplyTo() != netv1alpha3api.EnvoyFilter_HTTP_FILTER {
				continue
			}
			require.Equal(t, netv1alpha3api.EnvoyFilter_Patch_INSERT_BEFORE, p.GetPatch().GetOperation())
			require.Equal(t, "envoy.filters.http.router", p.GetMatch().GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName())
			var hf hcmv3.HttpFilter
			require.NoError(t, strictProto(js, &hf), "the patch value must be a valid Envoy HTTP filter")
			names = append(names, hf.GetName())
			want := proto.Clone(base.filter(hf.GetName())).(*hcmv3.HttpFilter)
			want.Disabled = false // route-scoped in envoy.yaml, on for every request here
			requireProtoEqual(t, one(want), one(&hf))
		}
		// istio-proxy builds no sse_to_metadata (extensions_test.go): the Lua scan only.
		require.Equal(t, []string{"envoy.filters.http.lua"}, names)
	})
	t.Run("EgressRouting", func(t *testing.T) {
		require.Len(t, o.entries, 1)
		se := o.entries[0]
		require.Equal(t, "MESH_EXTERNAL", se.Spec.GetLocation().String())
		require.Len(t, o.gateways, 1)
		require.Equal(t, egressGW, o.gateways[0].Spec.GetSelector())
		require.ElementsMatch(t, se.Spec.GetHosts(), o.gateways[0].Spec.GetServers()[0].GetHosts())
		require.Len(t, o.vservices, 1)
		vs := o.vservices[0]
		require.ElementsMatch(t, se.Spec.GetHosts(), vs.Spec.GetHosts())
		require.Contains(t, vs.Spec.GetGateways(), "mesh")
		require.Contains(t, vs.Spec.GetGateways(), o.gateways[0].Name)
		originated := map[string]bool{}
		for _, dr := range o.drules {
			tls := dr.Spec.GetTrafficPolicy().GetPortLevelSettings()[0].GetTls()
			require.Equal(t, "SIMPLE", tls.GetMode().String(), "TLS origination at the gateway")
			require.Equal(t, dr.Spec.GetHost(), tls.GetSni())
			originated[dr.Spec.GetHost()] = true
		}
		for _, h := range se.Spec.GetHosts() {
			require.True(t, originated[h], "no TLS origination for %s: it would go out in plaintext", h)
		}
	})
}

// listenerBufferLimit is the per_connection_buffer_limit_bytes the EnvoyFilter sets on the
// gateway's listeners (Envoy's default, 1 MiB, when absent).
func listenerBufferLimit(t *testing.T, o *istioObjects) uint32 {
	t.Helper()
	for _, ef := range o.filters {
		for _, p := range ef.Spec.GetConfigPatches() {
			if p.GetApplyTo() != netv1alpha3api.EnvoyFilter_LISTENER {
				continue
			}
			js, err := p.GetPatch().GetValue().MarshalJSON()
			require.NoError(t, err)
			var l listenerv3.Listener
			require.NoError(t, protojson.Unmarshal(js, &l), "LISTENER patch must be a valid partial Listener")
			return l.GetPerConnectionBufferLimitBytes().GetValue()
		}
	}
	return 1 << 20
}
