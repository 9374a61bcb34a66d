package envoy_test

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// splitDocs returns the non-empty YAML documents of a multi-document file.
func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range docSeparator.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// k8sObjects decodes every manifest in kubernetes/ strictly (unknown or duplicate fields are
// errors) into its k8s.io/api type.
type k8sObjects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	secrets     []*corev1.Secret
	pdbs        []*policyv1.PodDisruptionBudget
	jobs        []*batchv1.Job
	netpols     []*networkingv1.NetworkPolicy
	accounts    []*corev1.ServiceAccount
	namespaces  []*corev1.Namespace
}

func decodeK8s(doc []byte, o *k8sObjects) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var v any
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		v = appendNew(&o.deployments)
	case "v1/Service":
		v = appendNew(&o.services)
	case "v1/ConfigMap":
		v = appendNew(&o.configMaps)
	case "v1/Secret":
		v = appendNew(&o.secrets)
	case "policy/v1/PodDisruptionBudget":
		v = appendNew(&o.pdbs)
	case "batch/v1/Job":
		v = appendNew(&o.jobs)
	case "networking.k8s.io/v1/NetworkPolicy":
		v = appendNew(&o.netpols)
	case "v1/ServiceAccount":
		v = appendNew(&o.accounts)
	case "v1/Namespace":
		v = appendNew(&o.namespaces)
	default:
		return fmt.Errorf("unexpected kind %s/%s", tm.APIVersion, tm.Kind)
	}
	return strictYAML(doc, v)
}

// strictYAML decodes YAML the way the API server's strict field validation does: duplicate
// keys, unknown fields and case-mismatched field names are errors. (sigs.k8s.io/yaml's
// UnmarshalStrict uses encoding/json, which matches field names case-insensitively, so
// "readOnlyRootFileSystem" would pass it and then be dropped by the API server.)
func strictYAML(doc []byte, v any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(js, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func loadK8s(t *testing.T) *k8sObjects {
	t.Helper()
	o := &k8sObjects{}
	decodeFiles(t, glob(t, "kubernetes/*.yaml"), func(d []byte) error { return decodeK8s(d, o) })
	return o
}

func TestKubernetes_StrictDecodingCatchesMistakes(t *testing.T) {
	decode := func(b []byte) error { return decodeK8s(b, &k8sObjects{}) }
	for name, tc := range map[string][3]string{ // old, new, what the error must name
		"MisspeltField":  {"terminationGracePeriodSeconds:", "terminationGracePeriodSecond:", `unknown field "spec.template.spec.terminationGracePeriodSecond"`},
		"WrongValueType": {"replicas: 2", "replicas: two", "DeploymentSpec.spec.replicas of type int32"},
		"UnknownNested":  {"allowPrivilegeEscalation: false", "allowPrivilegeEscalations: false", `unknown field "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalations"`},
		"WrongCase":      {"readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", `unknown field "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem"`},
		"DuplicateKey":   {"revisionHistoryLimit: 5", "revisionHistoryLimit: 5\n  revisionHistoryLimit: 6", `"revisionHistoryLimit" already set`},
	} {
		t.Run(name, func(t *testing.T) {
			require.ErrorContains(t, damage(t, "kubernetes/deployment.yaml", tc[0], tc[1], decode), tc[2])
		})
	}
}

func TestKubernetes_Manifests(t *testing.T) {
	o := loadK8s(t)
	require.Len(t, o.deployments, 1)
	d := o.deployments[0]
	pod := d.Spec.Template
	require.Len(t, pod.Spec.Containers, 1)
	c := pod.Spec.Containers[0]
	podLabels := labels.Set(pod.Labels)

	t.Run("Replicas", func(t *testing.T) {
		require.NotNil(t, d.Spec.Replicas)
		require.GreaterOrEqual(t, *d.Spec.Replicas, int32(2))
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		require.NoError(t, err)
		require.True(t, sel.Matches(podLabels), "the Deployment selector must match its own pods")
	})
	t.Run("Command", func(t *testing.T) {
		require.Equal(t, "serve", c.Args[0])
		require.Contains(t, c.Args, "--grpc-addr=0.0.0.0:9000")
		require.Contains(t, c.Args, "--http-addr=0.0.0.0:9090")
	})
	port := func(name string) int32 {
		for _, p := range c.Ports {
			if p.Name == name {
				return p.ContainerPort
			}
		}
		t.Fatalf("no container port %q", name)
		return 0
	}
	resolve := func(p intstr.IntOrString) int32 {
		if p.Type == intstr.String {
			return port(p.StrVal)
		}
		return p.IntVal
	}
	t.Run("Probes", func(t *testing.T) {
		require.Equal(t, int32(9000), port("grpc"))
		require.Equal(t, int32(9090), port("http"))
		require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
		require.Equal(t, int32(9090), resolve(c.ReadinessProbe.HTTPGet.Port))
		require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
		require.Equal(t, int32(9090), resolve(c.LivenessProbe.HTTPGet.Port))
	})
	// purser refuses to listen beyond loopback with nobody authenticating its callers
	// (cmd/purser: validateTransport): the Deployment listens on every interface, so it must
	// require the shared secret (from the Secret, never optional) or a client CA, and never
	// opt out with PURSER_INSECURE_GRPC.
	t.Run("GRPCCallersAuthenticate", func(t *testing.T) {
		require.Contains(t, c.Args, "--grpc-addr=0.0.0.0:9000")
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		_, insecure := env["PURSER_INSECURE_GRPC"]
		require.False(t, insecure, "the shipped Deployment never accepts unauthenticated callers")
		secret, mtls := env["PURSER_SHARED_SECRET"], env["PURSER_GRPC_CLIENT_CA"]
		switch {
		case secret.ValueFrom != nil && secret.ValueFrom.SecretKeyRef != nil:
			opt := secret.ValueFrom.SecretKeyRef.Optional
			require.True(t, opt == nil || !*opt, "a missing secret must stop the pod, not open the port")
			require.GreaterOrEqual(t, len(o.secrets[0].StringData[secret.ValueFrom.SecretKeyRef.Key]), 16, "purser wants at least 16 characters")
		case mtls.Value != "":
		default:
			t.Fatal("the Deployment needs PURSER_SHARED_SECRET (from the Secret) or PURSER_GRPC_CLIENT_CA")
		}
	})
	t.Run("SecretsAndConfig", func(t *testing.T) {
		require.Len(t, o.secrets, 1)
		sec := o.secrets[0]
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		for _, k := range []string{"DATABASE_URL", "PURSER_ADMIN_TOKEN", "PURSER_SHARED_SECRET"} {
			ref := env[k].ValueFrom.SecretKeyRef
			require.NotNil(t, ref, "%s must come from the Secret", k)
			require.Equal(t, sec.Name, ref.Name)
			require.Contains(t, sec.StringData, ref.Key)
			require.Contains(t, sec.StringData[ref.Key], "CHANGE-ME", "the Secret is a template: placeholders only")
		}
		var mounted bool
		for _, m := range c.VolumeMounts {
			if m.MountPath == "/etc/purser" {
				mounted = true
				for _, v := range pod.Spec.Volumes {
					if v.Name == m.Name {
						require.NotNil(t, v.ConfigMap)
						require.Equal(t, o.configMaps[0].Name, v.ConfigMap.Name)
						require.Equal(t, "/etc/purser/"+firstKey(o.configMaps[0].Data), env["PURSER_CONFIG"].Value)
					}
				}
			}
		}
		require.True(t, mounted, "config ConfigMap mounted at /etc/purser")
	})
	t.Run("Hardening", func(t *testing.T) {
		sc := c.SecurityContext
		require.True(t, *sc.ReadOnlyRootFilesystem)
		require.True(t, *sc.RunAsNonRoot)
		require.False(t, *sc.AllowPrivilegeEscalation)
		require.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"))
		require.True(t, *pod.Spec.SecurityContext.RunAsNonRoot)
		require.NotNil(t, c.Resources.Requests.Cpu())
		require.False(t, c.Resources.Limits.Memory().IsZero())
		require.NotEmpty(t, pod.Spec.TopologySpreadConstraints)
	})
	t.Run("GracePeriodCoversDrain", func(t *testing.T) {
		var preStop int64
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
			preStop = c.Lifecycle.PreStop.Sleep.Seconds
		}
		env := map[string]string{"PURSER_SHUTDOWN_DELAY": "0s", "PURSER_SHUTDOWN_TIMEOUT": "20s"} // purser's defaults
		for _, e := range c.Env {
			if _, ok := env[e.Name]; ok {
				env[e.Name] = e.Value
			}
		}
		delay, err := time.ParseDuration(env["PURSER_SHUTDOWN_DELAY"])
		require.NoError(t, err)
		timeout, err := time.ParseDuration(env["PURSER_SHUTDOWN_TIMEOUT"])
		require.NoError(t, err)
		const drainAndClose = 5 * time.Second // access-log entries already received, pool close
		need := time.Duration(preStop)*time.Second + delay + timeout + drainAndClose
		require.Greater(t, time.Duration(*pod.Spec.TerminationGracePeriodSeconds)*time.Second, need,
			"terminationGracePeriodSeconds must exceed preStop + purser's shutdown delay + timeout + drain")
	})
	t.Run("ReservationTTLCoversRouteTimeouts", func(t *testing.T) {
		requireTTLCoversRoutes(t, envValue(c.Env, "PURSER_RESERVATION_TTL"))
	})
	t.Run("Services", func(t *testing.T) {
		require.Len(t, o.services, 2)
		for _, s := range o.services {
			require.True(t, labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels), "Service %s must select the purser pods", s.Name)
			var grpc *corev1.ServicePort
			for i := range s.Spec.Ports {
				if s.Spec.Ports[i].Name == "grpc" {
					grpc = &s.Spec.Ports[i]
				}
			}
			require.NotNil(t, grpc, "Service %s: port named grpc", s.Name)
			require.Equal(t, int32(9000), grpc.Port)
			require.Equal(t, "grpc", *grpc.AppProtocol)
			require.Equal(t, int32(9000), resolve(grpc.TargetPort))
		}
	})
	t.Run("PDB", func(t *testing.T) {
		require.Len(t, o.pdbs, 1)
		sel, err := metav1.LabelSelectorAsSelector(o.pdbs[0].Spec.Selector)
		require.NoError(t, err)
		require.True(t, sel.Matches(podLabels))
		require.Less(t, o.pdbs[0].Spec.MinAvailable.IntValue(), int(*d.Spec.Replicas), "a PDB equal to replicas blocks every drain")
	})
	t.Run("MigrationJob", func(t *testing.T) {
		require.Len(t, o.jobs, 1)
		j := o.jobs[0]
		require.Equal(t, []string{"migrate"}, j.Spec.Template.Spec.Containers[0].Args)
		jobPods := labels.Set(j.Spec.Template.Labels)
		for _, s := range o.services {
			require.False(t, labels.SelectorFromSet(s.Spec.Selector).Matches(jobPods), "Service %s must not route to migration pods", s.Name)
		}
		sel, _ := metav1.LabelSelectorAsSelector(o.pdbs[0].Spec.Selector)
		require.False(t, sel.Matches(jobPods))
		require.Equal(t, c.Image, j.Spec.Template.Spec.Containers[0].Image, "migrate with the same image you serve")
	})
	t.Run("NetworkPolicy", func(t *testing.T) {
		require.Len(t, o.netpols, 1)
		np := o.netpols[0]
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		require.NoError(t, err)
		require.True(t, sel.Matches(podLabels))
		var grpcOpen bool
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				if p.Port.IntValue() == 9000 {
					grpcOpen = true
					require.NotEmpty(t, r.From, "port 9000 must be restricted to Envoy/gateway pods")
					for _, peer := range r.From {
						require.NotNil(t, peer.PodSelector, "port 9000: select client pods, not whole namespaces")
					}
				}
			}
		}
		require.True(t, grpcOpen)
	})
	t.Run("Namespaces", func(t *testing.T) {
		objs := []metav1.Object{d, o.pdbs[0], o.jobs[0], o.netpols[0], o.secrets[0], o.configMaps[0]}
		for _, s := range o.services {
			objs = append(objs, s)
		}
		for _, obj := range objs {
			require.Equal(t, o.namespaces[0].Name, obj.GetNamespace(), "%s", obj.GetName())
		}
	})
}

func firstKey(m map[string]string) string {
	for k := range m {
		return k
	}
	return ""
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// requireTTLCoversRoutes checks purser's reservation TTL against the longest route timeout of
// envoy.yaml: an entry that arrives after expiry still settles, but the hold is first charged in
// full and the budget looks spent for a while.
func requireTTLCoversRoutes(t *testing.T, ttl string) {
	t.Helper()
	require.NotEmpty(t, ttl, "set PURSER_RESERVATION_TTL (purser's 15m default is shorter than the route timeouts)")
	d, err := time.ParseDuration(ttl)
	require.NoError(t, err)
	var longest time.Duration
	for _, r := range loadCfg(t, "envoy.yaml").routes() {
		longest = max(longest, r.GetRoute().GetTimeout().AsDuration())
	}
	const flushAndGrace = time.Minute
	require.Greater(t, d, longest+flushAndGrace)
}
