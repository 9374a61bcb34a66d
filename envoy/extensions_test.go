package envoy_test

// Each shipped config against the extension list of the proxy it targets, kept as data in
// extensions/ with its source: an Envoy rejects a whole listener (or the whole bootstrap) that
// names an extension its build lacks, so a config that validates against the protos can still
// be refused by the proxy that runs it. istio-proxy, for one, builds no sse_to_metadata.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	netv1alpha3api "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"
)

// extensionList is the set of extension names one proxy build has.
type extensionList map[string]bool

// upstreamEnvoy reads extensions/upstream-envoy.txt for Envoy 1.minor: every plain line, and
// "NAME since 1.NN" lines from that release on.
func upstreamEnvoy(t *testing.T, minor int) extensionList {
	t.Helper()
	out := extensionList{}
	for _, l := range dataLines(t, "upstream-envoy.txt") {
		name, since, ok := strings.Cut(l, " since 1.")
		if ok {
			m, err := strconv.Atoi(since)
			require.NoError(t, err, "line %q", l)
			if minor < m {
				continue
			}
		}
		out[name] = true
	}
	require.Contains(t, out, "envoy.filters.http.router")
	return out
}

// istioProxy reads extensions/istio-proxy-<release>.txt.
func istioProxy(t *testing.T, release string) extensionList {
	t.Helper()
	out := extensionList{}
	for _, l := range dataLines(t, "istio-proxy-"+release+".txt") {
		out[l] = true
	}
	require.Greater(t, len(out), 100, "istio-proxy %s list looks truncated", release)
	return out
}

func dataLines(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("extensions", name))
	require.NoError(t, err)
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	require.NoError(t, sc.Err())
	return out
}

// extensionOfType maps a configuration type (full message name) to the extension names that
// provide it ("core" for types every build has): extensions/types.txt.
func extensionOfType(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, l := range dataLines(t, "types.txt") {
		typ, names, ok := strings.Cut(l, " ")
		require.True(t, ok, "line %q", l)
		out[typ] = strings.Split(names, "|")
	}
	return out
}

// usedExtensions walks m and returns every extension it needs, each with where it is used:
// the extension of every typed_config (Any) by its type, and the extensions behind cluster
// discovery types, load-balancing policies and health checkers. A type missing from
// types.txt is reported as "unknown type X" so the list cannot silently fall behind.
func usedExtensions(t *testing.T, m proto.Message, types map[string][]string) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	add := func(alternatives []string, where string) {
		key := strings.Join(alternatives, "|")
		used[key] = append(used[key], where)
	}
	var walk func(m protoreflect.Message, where string)
	walk = func(m protoreflect.Message, where string) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			if a.GetTypeUrl() == "" {
				return // FilterConfig{config: {}}: switches a filter on, names no type
			}
			typ := strings.TrimPrefix(a.GetTypeUrl(), "type.googleapis.com/")
			names, ok := types[typ]
			if !ok {
				add([]string{"unknown type " + typ}, where)
				return
			}
			if names[0] != "core" {
				add(names, where)
			}
			inner, err := a.UnmarshalNew()
			require.NoError(t, err, "%s: %s", where, typ)
			walk(inner.ProtoReflect(), where+">"+typ)
			return
		}
		if cl, ok := m.Interface().(*clusterv3.Cluster); ok {
			switch cl.GetType() {
			case clusterv3.Cluster_STRICT_DNS:
				add([]string{"envoy.clusters.strict_dns"}, "cluster "+cl.GetName())
			case clusterv3.Cluster_LOGICAL_DNS:
				add([]string{"envoy.clusters.logical_dns"}, "cluster "+cl.GetName())
			case clusterv3.Cluster_STATIC:
				add([]string{"envoy.clusters.static"}, "cluster "+cl.GetName())
			default:
				add([]string{"unsupported cluster type " + cl.GetType().String()}, "cluster "+cl.GetName())
			}
			switch cl.GetLbPolicy() {
			case clusterv3.Cluster_ROUND_ROBIN:
				add([]string{"envoy.load_balancing_policies.round_robin"}, "cluster "+cl.GetName())
			case clusterv3.Cluster_LEAST_REQUEST:
				add([]string{"envoy.load_balancing_policies.least_request"}, "cluster "+cl.GetName())
			default:
				add([]string{"unsupported lb_policy " + cl.GetLbPolicy().String()}, "cluster "+cl.GetName())
			}
			for _, hc := range cl.GetHealthChecks() {
				switch {
				case hc.GetGrpcHealthCheck() != nil:
					add([]string{"envoy.health_checkers.grpc"}, "cluster "+cl.GetName())
				case hc.GetHttpHealthCheck() != nil:
					add([]string{"envoy.health_checkers.http"}, "cluster "+cl.GetName())
				case hc.GetTcpHealthCheck() != nil:
					add([]string{"envoy.health_checkers.tcp"}, "cluster "+cl.GetName())
				default:
					add([]string{"unsupported health checker"}, "cluster "+cl.GetName())
				}
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			child := where + "." + string(fd.Name())
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", child, i))
				}
			case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message(), child+"["+k.String()+"]")
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
				walk(v.Message(), child)
			}
			return true
		})
	}
	walk(m.ProtoReflect(), "")
	return used
}

// missing lists the used extensions a build lacks (none of the alternatives present).
func missing(used map[string][]string, have extensionList) []string {
	var out []string
	for alts, where := range used {
		found := false
		for _, a := range strings.Split(alts, "|") {
			found = found || have[a]
		}
		if !found {
			out = append(out, fmt.Sprintf("%s (used at %s)", alts, where[0]))
		}
	}
	slices.Sort(out)
	return out
}

// The bootstraps each name the Envoy releases they are for; each must load on every one.
var bootstrapTargets = map[string][]int{
	"envoy.yaml":      {38, 39, 40}, // "Envoy >= 1.38": sse_to_metadata
	"envoy-demo.yaml": {38, 39, 40}, // docker-compose runs a 1.38+ image
	"envoy-lua.yaml":  {36, 37, 38, 39, 40},
}

func TestExtensions_BootstrapsLoadOnTheirEnvoys(t *testing.T) {
	types := extensionOfType(t)
	for _, f := range envoyFiles(t) {
		minors, ok := bootstrapTargets[f]
		require.True(t, ok, "%s: name the Envoy releases it targets in bootstrapTargets", f)
		used := usedExtensions(t, loadBootstrap(t, f), types)
		require.Contains(t, used, "envoy.filters.http.ext_authz", "the walk must find the filters")
		for _, minor := range minors {
			t.Run(fmt.Sprintf("%s/1.%d", f, minor), func(t *testing.T) {
				require.Empty(t, missing(used, upstreamEnvoy(t, minor)), "extensions Envoy 1.%d does not build", minor)
			})
		}
	}
}

// TestExtensions_CheckCanFail: the native SSE filter is refused before 1.38, and by every
// istio-proxy release: the check sees what the issue was about.
func TestExtensions_CheckCanFail(t *testing.T) {
	used := usedExtensions(t, loadBootstrap(t, "envoy.yaml"), extensionOfType(t))
	require.Contains(t, missing(used, upstreamEnvoy(t, 37)), "envoy.filters.http.sse_to_metadata (used at "+used["envoy.filters.http.sse_to_metadata"][0]+")")
	for _, rel := range istioReleases(t) {
		m := missing(used, istioProxy(t, rel))
		require.NotEmpty(t, m, "istio-proxy %s", rel)
		require.Contains(t, strings.Join(m, "\n"), "envoy.filters.http.sse_to_metadata", "istio-proxy %s", rel)
		require.Contains(t, strings.Join(m, "\n"), "envoy.content_parsers.json", "istio-proxy %s", rel)
	}
}

func istioReleases(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("extensions", "istio-proxy-*.txt"))
	require.NoError(t, err)
	var out []string
	for _, f := range files {
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "istio-proxy-"), ".txt"))
	}
	require.Contains(t, out, "master", "the development branch is checked too")
	require.GreaterOrEqual(t, len(out), 4)
	return out
}

// TestExtensions_IstioKitUsesOnlyWhatIstioProxyShips: the EnvoyFilter's patches, and the
// filters istiod generates for the mesh config's providers (ext_authz, the gRPC access log),
// exist in every istio-proxy release listed.
func TestExtensions_IstioKitUsesOnlyWhatIstioProxyShips(t *testing.T) {
	types := extensionOfType(t)
	o := loadIstio(t)
	used := map[string][]string{
		"envoy.filters.http.ext_authz":   {"meshconfig.yaml envoyExtAuthzGrpc"},
		"envoy.access_loggers.http_grpc": {"meshconfig.yaml envoyHttpAls"},
	}
	require.NotEmpty(t, o.filters)
	for _, ef := range o.filters {
		for i, p := range ef.Spec.GetConfigPatches() {
			if p.GetApplyTo() != netv1alpha3api.EnvoyFilter_HTTP_FILTER {
				continue
			}
			js, err := p.GetPatch().GetValue().MarshalJSON()
			require.NoError(t, err)
			hf := new(hcmv3.HttpFilter)
			require.NoError(t, strictProto(js, hf))
			for k, v := range usedExtensions(t, hf, types) {
				used[k] = append(used[k], fmt.Sprintf("envoyfilter.yaml patch %d%s", i, v[0]))
			}
		}
	}
	require.Contains(t, used, "envoy.filters.http.lua")
	for _, rel := range istioReleases(t) {
		t.Run(rel, func(t *testing.T) {
			require.Empty(t, missing(used, istioProxy(t, rel)), "extensions istio-proxy %s does not build", rel)
		})
	}
}

// TestExtensions_EnvoyGatewayFields: every extAuth field of the SecurityPolicy exists in the
// Envoy Gateway releases it targets (v1.8 on), and the check refuses v1.7 (no statusOnError).
func TestExtensions_EnvoyGatewayFields(t *testing.T) {
	fields := map[string]map[string]bool{}
	for _, l := range dataLines(t, "envoy-gateway.txt") {
		parts := strings.Fields(l)
		require.GreaterOrEqual(t, len(parts), 3, "line %q", l)
		fields[parts[0]] = map[string]bool{}
		for _, f := range parts[2:] {
			fields[parts[0]][f] = true
		}
	}
	b, err := os.ReadFile("ai-gateway/securitypolicy.yaml")
	require.NoError(t, err)
	var used []string
	for _, doc := range splitDocs(b) {
		var d struct {
			Kind string `json:"kind"`
			Spec struct {
				ExtAuth map[string]any `json:"extAuth"`
			} `json:"spec"`
		}
		require.NoError(t, yaml.Unmarshal(doc, &d))
		if d.Kind != "SecurityPolicy" {
			continue
		}
		for k := range d.Spec.ExtAuth {
			used = append(used, k)
		}
	}
	require.Contains(t, used, "statusOnError")
	require.Contains(t, used, "contextExtensions")
	lacking := func(release string) []string {
		have, ok := fields[release]
		require.True(t, ok, "release %s in envoy-gateway.txt", release)
		var out []string
		for _, f := range used {
			if !have[f] {
				out = append(out, f)
			}
		}
		return out
	}
	for _, rel := range []string{"v1.8.0", "v1.9.0"} {
		require.Empty(t, lacking(rel), "Envoy Gateway %s lacks these extAuth fields", rel)
	}
	require.Equal(t, []string{"statusOnError"}, lacking("v1.7.0"), "the check must see v1.7's missing field")
}
