package deploy_test

// Rendering and strict decoding. The chart is rendered as `helm template` does (loader, values
// coalesced with the chart's defaults and validated against values.schema.json, the template
// engine with Sprig and Helm's include/tpl/required), then every document is decoded strictly:
// unknown or duplicate fields, case-mismatched names and wrong types are errors, as with the
// API server's strict field validation.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	telv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "helm/purser"
	examplesDir = "helm/examples"
	release     = "purser"
	namespace   = "purser"
)

// manifest is a custom resource whose spec is a mirror type or raw JSON.
type manifest[S any] struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            S                 `json:"spec"`
}

// Envoy Gateway has no Go module here: mirrors of the fields the chart renders, with the
// upstream JSON names (envoyproxy/gateway api/v1alpha1 securitypolicy_types.go,
// ext_auth_types.go, envoyproxy_types.go, accesslogging_types.go; Gateway API
// apis/v1beta1 referencegrant_types.go). A field not mirrored is an error.
type backendRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	Port      int32  `json:"port,omitempty"`
}

type securityPolicySpec struct {
	TargetRefs []struct {
		Group string `json:"group"`
		Kind  string `json:"kind"`
		Name  string `json:"name"`
	} `json:"targetRefs"`
	ExtAuth struct {
		GRPC struct {
			BackendRefs []backendRef `json:"backendRefs"`
		} `json:"grpc"`
		BodyToExtAuth struct {
			MaxRequestBytes uint32 `json:"maxRequestBytes"`
		} `json:"bodyToExtAuth"`
		Timeout  string `json:"timeout"`
		FailOpen *bool  `json:"failOpen"`
	} `json:"extAuth"`
}

type envoyProxySpec struct {
	Telemetry struct {
		AccessLog struct {
			Settings []struct {
				Sinks []struct {
					Type string `json:"type"`
					ALS  struct {
						BackendRefs []backendRef `json:"backendRefs"`
						Type        string       `json:"type"`
						LogName     string       `json:"logName"`
						HTTP        struct {
							RequestHeaders  []string `json:"requestHeaders"`
							ResponseHeaders []string `json:"responseHeaders"`
						} `json:"http"`
					} `json:"als"`
				} `json:"sinks"`
			} `json:"settings"`
		} `json:"accessLog"`
	} `json:"telemetry"`
}

type referenceGrantSpec struct {
	From []struct {
		Group     string `json:"group"`
		Kind      string `json:"kind"`
		Namespace string `json:"namespace"`
	} `json:"from"`
	To []struct {
		Group string `json:"group"`
		Kind  string `json:"kind"`
		Name  string `json:"name,omitempty"`
	} `json:"to"`
}

// rendered is every object of one rendering, by kind.
type rendered struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	accounts        []*corev1.ServiceAccount
	configMaps      []*corev1.ConfigMap
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	monitors        []*monitoringv1.ServiceMonitor
	netpols         []*networkingv1.NetworkPolicy
	jobs            []*batchv1.Job
	authz           []*secv1.AuthorizationPolicy
	peerAuth        []*secv1.PeerAuthentication
	telemetry       []*telv1.Telemetry
	securityPols    []*manifest[securityPolicySpec]
	envoyProxies    []*manifest[envoyProxySpec]
	referenceGrants []*manifest[referenceGrantSpec]
	// objects is every object's metadata with its kind, for checks across kinds.
	objects []object
	notes   string
}

type object struct {
	kind string
	meta metav1.ObjectMeta
}

func appendNew[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

// strictJSON decodes like the API server's strict field validation: duplicate keys, unknown
// fields and case-mismatched field names are errors (encoding/json alone matches names
// case-insensitively).
func strictJSON(js []byte, v any) error {
	strictErrs, err := sigsjson.UnmarshalStrict(js, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func strictYAML(doc []byte, v any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	return strictJSON(js, v)
}

// strictProto decodes an Istio spec with protojson: client-go's own UnmarshalJSON would
// silently drop a misspelt field.
func strictProto(spec json.RawMessage, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: false}.Unmarshal(spec, m)
}

// decode adds one YAML document to r.
func (r *rendered) decode(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var v any
	var istioSpec proto.Message
	kind := tm.APIVersion + "/" + tm.Kind
	switch kind {
	case "apps/v1/Deployment":
		v = appendNew(&r.deployments)
	case "v1/Service":
		v = appendNew(&r.services)
	case "v1/ServiceAccount":
		v = appendNew(&r.accounts)
	case "v1/ConfigMap":
		v = appendNew(&r.configMaps)
	case "policy/v1/PodDisruptionBudget":
		v = appendNew(&r.pdbs)
	case "autoscaling/v2/HorizontalPodAutoscaler":
		v = appendNew(&r.hpas)
	case "monitoring.coreos.com/v1/ServiceMonitor":
		v = appendNew(&r.monitors)
	case "networking.k8s.io/v1/NetworkPolicy":
		v = appendNew(&r.netpols)
	case "batch/v1/Job":
		v = appendNew(&r.jobs)
	case "gateway.envoyproxy.io/v1alpha1/SecurityPolicy":
		v = appendNew(&r.securityPols)
	case "gateway.envoyproxy.io/v1alpha1/EnvoyProxy":
		v = appendNew(&r.envoyProxies)
	case "gateway.networking.k8s.io/v1beta1/ReferenceGrant":
		v = appendNew(&r.referenceGrants)
	case "security.istio.io/v1/AuthorizationPolicy", "security.istio.io/v1/PeerAuthentication", "telemetry.istio.io/v1/Telemetry":
		var d manifest[json.RawMessage]
		if err := strictYAML(doc, &d); err != nil {
			return err
		}
		switch tm.Kind {
		case "AuthorizationPolicy":
			o := appendNew(&r.authz)
			o.TypeMeta, o.ObjectMeta, istioSpec = d.TypeMeta, d.Metadata, &o.Spec
		case "PeerAuthentication":
			o := appendNew(&r.peerAuth)
			o.TypeMeta, o.ObjectMeta, istioSpec = d.TypeMeta, d.Metadata, &o.Spec
		default:
			o := appendNew(&r.telemetry)
			o.TypeMeta, o.ObjectMeta, istioSpec = d.TypeMeta, d.Metadata, &o.Spec
		}
		r.objects = append(r.objects, object{kind, d.Metadata})
		return strictProto(d.Spec, istioSpec)
	default:
		return fmt.Errorf("unexpected kind %s", kind)
	}
	if err := strictYAML(doc, v); err != nil {
		return err
	}
	meta, ok := v.(metav1.Object)
	if !ok { // a mirror: read its metadata
		var m struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return err
		}
		r.objects = append(r.objects, object{kind, m.Metadata})
		return nil
	}
	r.objects = append(r.objects, object{kind, metav1.ObjectMeta{Name: meta.GetName(), Namespace: meta.GetNamespace(),
		Labels: meta.GetLabels(), Annotations: meta.GetAnnotations()}})
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// splitDocs returns the non-empty YAML documents of a rendered template.
func splitDocs(s string) []string {
	var out []string
	for _, d := range docSeparator.Split(s, -1) {
		empty := true
		for _, l := range strings.Split(d, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			out = append(out, d)
		}
	}
	return out
}

// renderValues renders the chart for release "purser" in namespace "purser" with the given
// values (nil: the defaults) and returns each template's output by file name.
func renderValues(vals map[string]any) (map[string]string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	if vals == nil {
		vals = map[string]any{}
	}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals,
		common.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true, Revision: 1}, nil, false)
	if err != nil {
		return nil, err
	}
	return engine.Render(ch, rv)
}

// valuesFile reads a values file (empty name: none).
func valuesFile(t *testing.T, name string) map[string]any {
	t.Helper()
	if name == "" {
		return nil
	}
	v, err := common.ReadValuesFile(name)
	require.NoError(t, err)
	return v
}

// render renders and decodes every object; any template or decoding error fails the test.
func render(t *testing.T, vals map[string]any) *rendered {
	t.Helper()
	out, err := renderValues(vals)
	require.NoError(t, err)
	r := &rendered{}
	names := make([]string, 0, len(out))
	for name := range out {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		base := path.Base(name)
		switch {
		case base == "NOTES.txt":
			r.notes = out[name]
			continue
		case strings.HasPrefix(base, "_"):
			continue
		}
		for i, doc := range splitDocs(out[name]) {
			require.NoError(t, r.decode([]byte(doc)), "%s document %d:\n%s", name, i, doc)
		}
	}
	return r
}

// readFile reads a repository file relative to this package.
func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	return b
}
