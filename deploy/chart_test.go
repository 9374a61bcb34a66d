package deploy_test

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	secv1beta1 "istio.io/api/security/v1beta1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// valueCases are the default values and every example values file.
func valueCases(t *testing.T) map[string]string {
	t.Helper()
	cases := map[string]string{"default": ""}
	for _, pattern := range []string{"*.values.yaml", "*/values.yaml"} {
		files, err := filepath.Glob(filepath.Join(examplesDir, pattern))
		require.NoError(t, err)
		for _, f := range files {
			cases[strings.TrimSuffix(strings.TrimPrefix(f, examplesDir+"/"), ".yaml")] = f
		}
	}
	require.GreaterOrEqual(t, len(cases), 5, "the default values and the four examples")
	return cases
}

func TestChart_Lint(t *testing.T) {
	for name, file := range valueCases(t) {
		t.Run(name, func(t *testing.T) {
			res := lint.RunAll(chartDir, valuesFile(t, file), namespace)
			for _, m := range res.Messages {
				t.Logf("lint: %s", m)
			}
			require.Less(t, res.HighestSeverity, support.WarningSev, "helm lint: warnings or errors: %v", res.Messages)
		})
	}
}

// The checks below would be worthless if bad input got through: unknown values, misspelt
// fields in the output, and template errors must all fail.
func TestChart_MistakesAreCaught(t *testing.T) {
	_, err := renderValues(map[string]any{"replicaCounts": 3})
	require.ErrorContains(t, err, "replicaCounts", "values.schema.json rejects unknown keys")
	_, err = renderValues(map[string]any{"autoscaling": map[string]any{"enabled": true, "maxReplica": 9}})
	require.ErrorContains(t, err, "maxReplica")
	_, err = renderValues(map[string]any{"database": map[string]any{"tls": map[string]any{"sslmode": "verify"}}})
	require.ErrorContains(t, err, "sslmode")
	_, err = renderValues(map[string]any{"tls": map[string]any{"enabled": true}})
	require.ErrorContains(t, err, "tls.secretName", "TLS without a Secret is refused by name")

	r := &rendered{}
	for name, tc := range map[string][2]string{
		"MisspeltField": {"terminationGracePeriodSecond: 60", `unknown field "spec.template.spec.terminationGracePeriodSecond"`},
		"WrongCase":     {"readOnlyRootFileSystem: true", `unknown field "spec.template.spec.readOnlyRootFileSystem"`},
		"WrongType":     {"terminationGracePeriodSeconds: soon", "of type int64"},
	} {
		t.Run(name, func(t *testing.T) {
			doc := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {}\n  template:\n    spec:\n      " + tc[0] + "\n      containers: []\n"
			require.ErrorContains(t, r.decode([]byte(doc)), tc[1])
		})
	}
	spec := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {action: CUSTOM, provider: {nme: p}}\n"
	require.ErrorContains(t, r.decode([]byte(spec)), "nme", "Istio specs are decoded strictly too")
	ext := "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: x}\nspec: {extAuth: {failOpn: false}}\n"
	require.ErrorContains(t, r.decode([]byte(ext)), "failOpn", "mirrored kinds are decoded strictly too")
}

// TestChart_Renders renders the default values and every example, decodes every object, and
// checks what must hold whatever the values.
func TestChart_Renders(t *testing.T) {
	for name, file := range valueCases(t) {
		t.Run(name, func(t *testing.T) {
			vals := valuesFile(t, file)
			r := render(t, vals)
			checkCommon(t, r)
		})
	}
}

func checkCommon(t *testing.T, r *rendered) {
	t.Helper()
	require.Len(t, r.deployments, 1)
	d := r.deployments[0]
	pod := d.Spec.Template
	podLabels := labels.Set(pod.Labels)
	require.Len(t, pod.Spec.Containers, 1)
	c := pod.Spec.Containers[0]
	// purser serve refuses a non-loopback -grpc-addr unless gRPC callers are authenticated
	// (shared secret, mTLS or a mesh) or -insecure-grpc says the network is the only guard
	// (cmd/purser serveConfig.validate): every rendering must start.
	env := envMap(c.Env)
	_, secret := env["PURSER_SHARED_SECRET"]
	_, mtls := env["PURSER_GRPC_CLIENT_CA"]
	require.True(t, secret || mtls || env["PURSER_GRPC_MESH_AUTHN"].Value == "true" || env["PURSER_INSECURE_GRPC"].Value == "true",
		"the gRPC listener is authenticated (or explicitly not): purser would refuse to start otherwise")

	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	require.NoError(t, err)
	require.True(t, sel.Matches(podLabels), "the Deployment selects its own pods")
	require.Equal(t, "serve", c.Args[0])

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
	require.Contains(t, c.Args, "--grpc-addr=0.0.0.0:"+strconv.Itoa(int(port("grpc"))))
	require.Contains(t, c.Args, "--http-addr=0.0.0.0:"+strconv.Itoa(int(port("http"))))
	require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
	require.Equal(t, port("http"), resolve(c.ReadinessProbe.HTTPGet.Port))
	require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
	require.Equal(t, port("http"), resolve(c.LivenessProbe.HTTPGet.Port))
	require.NotNil(t, env["DATABASE_URL"].ValueFrom, "DATABASE_URL comes from a Secret")
	require.NotNil(t, env["DATABASE_URL"].ValueFrom.SecretKeyRef)
	for _, e := range c.Env {
		if strings.Contains(e.Name, "TOKEN") || strings.Contains(e.Name, "SECRET") || e.Name == "DATABASE_URL" {
			require.Empty(t, e.Value, "%s: secrets come from Secrets, never from values", e.Name)
		}
	}

	// Hardening, as in envoy/kubernetes/.
	require.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)
	require.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
	require.True(t, *pod.Spec.SecurityContext.RunAsNonRoot)
	require.False(t, *pod.Spec.AutomountServiceAccountToken)
	require.False(t, c.Resources.Requests.Cpu().IsZero(), "a CPU request: the HPA measures utilisation against it")

	// Shutdown fits in the grace period.
	var preStop int64
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = c.Lifecycle.PreStop.Sleep.Seconds
	}
	delay := durationEnv(t, env, "PURSER_SHUTDOWN_DELAY", 0)
	timeout := durationEnv(t, env, "PURSER_SHUTDOWN_TIMEOUT", 20*time.Second)
	require.Greater(t, time.Duration(*pod.Spec.TerminationGracePeriodSeconds)*time.Second,
		time.Duration(preStop)*time.Second+delay+timeout+5*time.Second, "terminationGracePeriodSeconds covers preStop + shutdown delay + timeout + drain")

	// Every volume mount has its volume; every env path points into a mount.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		_, ok := vols[m.Name]
		require.True(t, ok, "mount %s has a volume", m.Name)
		mounts[m.MountPath] = m.Name
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Value, "/etc/purser/") {
			require.True(t, mountedUnder(mounts, e.Value), "%s=%s is under a mounted volume", e.Name, e.Value)
		}
	}
	cfgVol := vols[mounts["/etc/purser"]]
	require.NotNil(t, cfgVol.ConfigMap)
	require.Len(t, r.configMaps, 1)
	require.Equal(t, r.configMaps[0].Name, cfgVol.ConfigMap.Name)
	require.Contains(t, r.configMaps[0].Data, filepath.Base(env["PURSER_CONFIG"].Value))
	var parsed map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(r.configMaps[0].Data["config.yaml"]), &parsed), "config.yaml is YAML")
	if ca := env["PGSSLROOTCERT"].Value; ca != "" {
		v := vols[mounts[filepath.Dir(ca)]]
		require.NotNil(t, v.Secret)
		require.Len(t, v.Secret.Items, 1, "only the CA certificate is mounted, never the CA's key")
		require.Equal(t, filepath.Base(ca), v.Secret.Items[0].Path)
	}

	// Services and the PDB select the pods; the ServiceAccount exists when referenced.
	require.NotEmpty(t, r.services)
	for _, s := range r.services {
		require.True(t, labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels), "Service %s selects the pods", s.Name)
		for _, p := range s.Spec.Ports {
			require.Equal(t, port(p.TargetPort.StrVal), resolve(intstr.FromInt32(p.Port)), "Service %s port %s = container port", s.Name, p.Name)
		}
	}
	if pod.Spec.ServiceAccountName != "default" {
		require.Len(t, r.accounts, 1)
		require.Equal(t, r.accounts[0].Name, pod.Spec.ServiceAccountName)
	}
	replicas := int32(0)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	if len(r.hpas) > 0 {
		require.Nil(t, d.Spec.Replicas, "with an HPA the Deployment leaves replicas to it")
		h := r.hpas[0]
		require.Equal(t, "Deployment", h.Spec.ScaleTargetRef.Kind)
		require.Equal(t, d.Name, h.Spec.ScaleTargetRef.Name)
		require.NotNil(t, h.Spec.MinReplicas)
		require.GreaterOrEqual(t, *h.Spec.MinReplicas, int32(2))
		require.GreaterOrEqual(t, h.Spec.MaxReplicas, *h.Spec.MinReplicas)
		require.Len(t, h.Spec.Metrics, 1)
		require.Equal(t, corev1.ResourceCPU, h.Spec.Metrics[0].Resource.Name)
		replicas = *h.Spec.MinReplicas
	}
	require.GreaterOrEqual(t, replicas, int32(2), "at least two replicas")
	for _, p := range r.pdbs {
		s, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		require.NoError(t, err)
		require.True(t, s.Matches(podLabels))
		require.Less(t, p.Spec.MinAvailable.IntValue(), int(replicas), "a PDB equal to the (minimum) replicas blocks every drain")
	}
	for _, np := range r.netpols {
		s, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		require.NoError(t, err)
		require.True(t, s.Matches(podLabels))
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port.IntValue() == int(port("grpc")) {
					for _, peer := range rule.From {
						require.NotNil(t, peer.PodSelector, "the gRPC port is open to client pods, not whole namespaces")
					}
				}
			}
		}
	}

	// ServiceMonitor: the ClusterIP Service's http port, /metrics.
	for _, m := range r.monitors {
		s, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		require.NoError(t, err)
		var matched []string
		for _, svc := range r.services {
			if s.Matches(labels.Set(svc.Labels)) {
				matched = append(matched, svc.Name)
				require.True(t, slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == m.Spec.Endpoints[0].Port }),
					"Service %s has the scraped port", svc.Name)
			}
		}
		require.Equal(t, []string{d.Name}, matched, "the ServiceMonitor scrapes the ClusterIP Service only")
		require.Equal(t, "/metrics", m.Spec.Endpoints[0].Path)
	}

	// The migration hook: same image, same database, before install and upgrade, and no
	// dependency on objects the release creates afterwards.
	require.Len(t, r.jobs, 1)
	j := r.jobs[0]
	jc := j.Spec.Template.Spec.Containers[0]
	require.Equal(t, []string{"migrate"}, jc.Args)
	require.Equal(t, c.Image, jc.Image, "migrate with the image you serve")
	require.Equal(t, env["DATABASE_URL"], envMap(jc.Env)["DATABASE_URL"])
	require.Equal(t, env["PGSSLMODE"], envMap(jc.Env)["PGSSLMODE"])
	require.Equal(t, env["PGSSLROOTCERT"], envMap(jc.Env)["PGSSLROOTCERT"])
	require.Equal(t, "pre-install,pre-upgrade", j.Annotations["helm.sh/hook"])
	require.Contains(t, j.Annotations["helm.sh/hook-delete-policy"], "before-hook-creation")
	for _, a := range r.accounts {
		require.NotEqual(t, a.Name, j.Spec.Template.Spec.ServiceAccountName, "a pre-install hook cannot use a ServiceAccount the release has not created yet")
	}
	jobPods := labels.Set(j.Spec.Template.Labels)
	for _, s := range r.services {
		require.False(t, labels.SelectorFromSet(s.Spec.Selector).Matches(jobPods), "Service %s must not route to migration pods", s.Name)
	}

	// Every object is labelled with the release, in the release namespace unless it belongs
	// next to a gateway.
	for _, o := range r.objects {
		require.Equal(t, release, o.meta.Labels["app.kubernetes.io/instance"], "%s %s", o.kind, o.meta.Name)
		switch o.kind {
		case "gateway.envoyproxy.io/v1alpha1/SecurityPolicy", "gateway.envoyproxy.io/v1alpha1/EnvoyProxy", "telemetry.istio.io/v1/Telemetry":
		case "security.istio.io/v1/AuthorizationPolicy":
			if strings.HasSuffix(o.meta.Name, "-budget") {
				continue
			}
			fallthrough
		default:
			require.Equal(t, namespace, o.meta.Namespace, "%s %s", o.kind, o.meta.Name)
		}
	}
	require.Contains(t, r.notes, d.Name+"."+namespace+".svc.cluster.local")
}

func envMap(env []corev1.EnvVar) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range env {
		m[e.Name] = e
	}
	return m
}

func durationEnv(t *testing.T, env map[string]corev1.EnvVar, name string, def time.Duration) time.Duration {
	t.Helper()
	v, ok := env[name]
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v.Value)
	require.NoError(t, err, name)
	return d
}

func mountedUnder(mounts map[string]string, p string) bool {
	for dir := range mounts {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

// The secrets' references follow the values: named Secret and key, and absent when the
// values say "none".
func TestChart_SecretReferences(t *testing.T) {
	r := render(t, map[string]any{
		"database":     map[string]any{"secretName": "db", "secretKey": "url"},
		"adminToken":   map[string]any{"secretName": "", "secretKey": "x"},
		"sharedSecret": map[string]any{"secretName": "envoy", "secretKey": "s"},
	})
	env := envMap(r.deployments[0].Spec.Template.Spec.Containers[0].Env)
	require.Equal(t, &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "url"}, env["DATABASE_URL"].ValueFrom.SecretKeyRef)
	require.Equal(t, &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "envoy"}, Key: "s"}, env["PURSER_SHARED_SECRET"].ValueFrom.SecretKeyRef)
	require.NotContains(t, env, "PURSER_ADMIN_TOKEN", "no admin token Secret: the variable is not set")
	require.NotContains(t, env, "PGSSLMODE")
}

// The default rendering matches the plain manifests of envoy/kubernetes/ (kubectl users'
// path): same pod spec, Services, PDB, NetworkPolicy, migration pod and config. A change to
// one without the other fails here.
func TestChart_MatchesPlainManifests(t *testing.T) {
	r := render(t, nil)
	plain := func(file string, v any) {
		t.Helper()
		require.NoError(t, strictYAML(readFile(t, filepath.Join("..", "envoy", "kubernetes", file)), v), file)
	}

	var d appsv1.Deployment
	plain("deployment.yaml", &d)
	got := r.deployments[0]
	require.Equal(t, d.Name, got.Name)
	require.Equal(t, d.Spec.Replicas, got.Spec.Replicas)
	require.Equal(t, d.Spec.Strategy, got.Spec.Strategy)
	require.Equal(t, d.Spec.RevisionHistoryLimit, got.Spec.RevisionHistoryLimit)
	requireSubset(t, d.Spec.Selector.MatchLabels, got.Spec.Selector.MatchLabels, "selector")
	requireSubset(t, d.Spec.Template.Labels, got.Spec.Template.Labels, "pod labels")
	require.Equal(t, normalizePod(d.Spec.Template.Spec), normalizePod(got.Spec.Template.Spec), "pod spec")

	var svcs []corev1.Service
	for _, doc := range splitDocs(string(readFile(t, filepath.Join("..", "envoy", "kubernetes", "service.yaml")))) {
		var s corev1.Service
		require.NoError(t, strictYAML([]byte(doc), &s))
		svcs = append(svcs, s)
	}
	require.Len(t, r.services, len(svcs))
	for i, s := range svcs {
		require.Equal(t, s.Name, r.services[i].Name)
		require.Equal(t, s.Spec.Ports, r.services[i].Spec.Ports, "Service %s ports", s.Name)
		require.Equal(t, s.Spec.ClusterIP, r.services[i].Spec.ClusterIP, "Service %s clusterIP", s.Name)
		requireSubset(t, s.Spec.Selector, r.services[i].Spec.Selector, "Service "+s.Name)
	}

	var pdb struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			MinAvailable               *intstr.IntOrString   `json:"minAvailable"`
			UnhealthyPodEvictionPolicy string                `json:"unhealthyPodEvictionPolicy"`
			Selector                   *metav1.LabelSelector `json:"selector"`
		} `json:"spec"`
	}
	plain("pdb.yaml", &pdb)
	require.Equal(t, *pdb.Spec.MinAvailable, *r.pdbs[0].Spec.MinAvailable)
	require.Equal(t, pdb.Spec.UnhealthyPodEvictionPolicy, string(*r.pdbs[0].Spec.UnhealthyPodEvictionPolicy))

	var np struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            json.RawMessage   `json:"spec"`
	}
	plain("networkpolicy.yaml", &np)
	var plainSpec, chartSpec map[string]any
	require.NoError(t, json.Unmarshal(np.Spec, &plainSpec))
	js, err := json.Marshal(r.netpols[0].Spec)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(js, &chartSpec))
	delete(plainSpec, "podSelector")
	delete(chartSpec, "podSelector")
	require.Equal(t, plainSpec, chartSpec, "NetworkPolicy rules")

	var job struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			BackoffLimit            *int32                 `json:"backoffLimit"`
			ActiveDeadlineSeconds   *int64                 `json:"activeDeadlineSeconds"`
			TTLSecondsAfterFinished *int32                 `json:"ttlSecondsAfterFinished"`
			Template                corev1.PodTemplateSpec `json:"template"`
		} `json:"spec"`
	}
	plain("migrate-job.yaml", &job)
	gj := r.jobs[0]
	require.Equal(t, job.Spec.BackoffLimit, gj.Spec.BackoffLimit)
	require.Equal(t, job.Spec.ActiveDeadlineSeconds, gj.Spec.ActiveDeadlineSeconds)
	// The plain Job runs as the chart-less ServiceAccount; the hook runs before the release's
	// own ServiceAccount exists (and neither mounts a token).
	pj := job.Spec.Template.Spec
	pj.ServiceAccountName = ""
	require.Equal(t, normalizePod(pj), normalizePod(gj.Spec.Template.Spec), "migration pod spec")

	var cm corev1.ConfigMap
	plain("configmap.yaml", &cm)
	require.Equal(t, cm.Name, r.configMaps[0].Name)
	require.Equal(t, cm.Data, r.configMaps[0].Data)
}

// normalizePod drops what legitimately differs between the chart and the plain manifests
// (label selectors, which carry the release in the chart) and orders env by name.
func normalizePod(p corev1.PodSpec) corev1.PodSpec {
	p = *p.DeepCopy()
	for i := range p.TopologySpreadConstraints {
		p.TopologySpreadConstraints[i].LabelSelector = nil
	}
	for i := range p.Containers {
		slices.SortFunc(p.Containers[i].Env, func(a, b corev1.EnvVar) int { return strings.Compare(a.Name, b.Name) })
	}
	return p
}

func requireSubset(t *testing.T, sub, super map[string]string, what string) {
	t.Helper()
	for k, v := range sub {
		require.Equal(t, v, super[k], "%s: %s", what, k)
	}
}

// cnpgCluster mirrors the fields of cluster.yaml (cloudnative-pg api/v1 cluster_types.go:
// ClusterSpec, PostgresConfiguration, SynchronousReplicaConfiguration, BootstrapInitDB,
// StorageConfiguration); a field not mirrored is an error.
type cnpgCluster = manifest[struct {
	Instances             int    `json:"instances"`
	ImageName             string `json:"imageName"`
	PrimaryUpdateStrategy string `json:"primaryUpdateStrategy"`
	PostgreSQL            struct {
		Parameters  map[string]string `json:"parameters"`
		Synchronous *struct {
			Method         string `json:"method"`
			Number         int    `json:"number"`
			DataDurability string `json:"dataDurability"`
		} `json:"synchronous"`
	} `json:"postgresql"`
	Bootstrap struct {
		InitDB struct {
			Database string `json:"database"`
			Owner    string `json:"owner"`
		} `json:"initdb"`
	} `json:"bootstrap"`
	Storage struct {
		Size string `json:"size"`
	} `json:"storage"`
	Resources corev1.ResourceRequirements `json:"resources"`
}]

// The CloudNativePG example: purser's DATABASE_URL is the operator's generated application
// Secret <cluster>-app, key uri (postgresql://<owner>:<password>@<cluster>-rw.<namespace>:5432/<db>,
// cloudnative-pg pkg/specs/secrets.go CreateSecret), the server certificate is verified
// with the CA of <cluster>-ca (DefaultServerCaSecretSuffix), whose certificate names
// <cluster>-rw.<namespace> (Cluster.GetClusterAltDNSNames), and every commit waits for a
// standby.
func TestChart_CloudNativePGExample(t *testing.T) {
	var cl cnpgCluster
	require.NoError(t, strictYAML(readFile(t, filepath.Join(examplesDir, "cnpg", "cluster.yaml")), &cl))
	require.Equal(t, "postgresql.cnpg.io/v1", cl.APIVersion)
	require.Equal(t, "Cluster", cl.Kind)
	require.Equal(t, namespace, cl.Metadata.Namespace, "the example installs purser next to its database")

	vals := valuesFile(t, filepath.Join(examplesDir, "cnpg", "values.yaml"))
	r := render(t, vals)
	c := r.deployments[0].Spec.Template.Spec.Containers[0]
	env := envMap(c.Env)
	ref := env["DATABASE_URL"].ValueFrom.SecretKeyRef
	require.Equal(t, cl.Metadata.Name+"-app", ref.Name)
	require.Equal(t, "uri", ref.Key)
	require.Equal(t, "verify-full", env["PGSSLMODE"].Value, "the -rw Service name is in the server certificate")
	var caVol *corev1.Volume
	for i, v := range r.deployments[0].Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == cl.Metadata.Name+"-ca" {
			caVol = &r.deployments[0].Spec.Template.Spec.Volumes[i]
		}
	}
	require.NotNil(t, caVol, "the cluster's CA Secret is mounted")
	require.Equal(t, []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}, caVol.Secret.Items, "ca.crt only, never ca.key")

	// No acknowledged reservation is lost in a failover: synchronous replication, and writes
	// wait rather than go on unconfirmed (docs/ha.md).
	sync := cl.Spec.PostgreSQL.Synchronous
	require.NotNil(t, sync)
	require.GreaterOrEqual(t, sync.Number, 1)
	require.Equal(t, "required", sync.DataDurability)
	require.Contains(t, []string{"any", "first"}, sync.Method)
	require.Greater(t, cl.Spec.Instances, sync.Number, "a standby more than the synchronous ones, so a standby can be lost without blocking writes")
	require.NotEmpty(t, cl.Spec.Bootstrap.InitDB.Owner, "purser migrate runs as the database owner")

	// Connections: every pod the HPA may run, with its pools, fits in max_connections.
	require.Len(t, r.hpas, 1)
	maxConns, err := strconv.Atoi(cl.Spec.PostgreSQL.Parameters["max_connections"])
	require.NoError(t, err)
	hot, pool := intEnv(t, env, "PURSER_HOT_POOL_SIZE", 4), intEnv(t, env, "PURSER_POOL_SIZE", 8)
	const migrateAndAdmin = 2 + 3 // purser migrate's pool; superuser_reserved_connections
	need := int(r.hpas[0].Spec.MaxReplicas)*(hot+pool+1) + migrateAndAdmin
	require.LessOrEqual(t, need, maxConns, "maxReplicas x (hot pool + pool + listener) fits in max_connections")
}

func intEnv(t *testing.T, env map[string]corev1.EnvVar, name string, def int) int {
	t.Helper()
	v, ok := env[name]
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v.Value)
	require.NoError(t, err, name)
	return n
}

// The Istio example: the budget check is a CUSTOM policy on the gateway naming the notes'
// extension provider, only the gateway identity reaches the gRPC port, mTLS is strict, and no
// shared secret is required (the mesh's providers cannot send it; envoy/istio/README.md).
func TestChart_IstioExample(t *testing.T) {
	r := render(t, valuesFile(t, filepath.Join(examplesDir, "istio.values.yaml")))
	env := envMap(r.deployments[0].Spec.Template.Spec.Containers[0].Env)
	require.NotContains(t, env, "PURSER_SHARED_SECRET")
	podLabels := labels.Set(r.deployments[0].Spec.Template.Labels)

	var budget, clients *secv1beta1.AuthorizationPolicy
	for _, p := range r.authz {
		switch p.Spec.GetAction() {
		case secv1beta1.AuthorizationPolicy_CUSTOM:
			budget = &p.Spec
			require.Equal(t, "istio-system", p.Namespace)
		case secv1beta1.AuthorizationPolicy_ALLOW:
			clients = &p.Spec
			require.True(t, labels.SelectorFromSet(p.Spec.GetSelector().GetMatchLabels()).Matches(podLabels))
		}
	}
	require.NotNil(t, budget)
	require.NotNil(t, clients)
	require.Equal(t, map[string]string{"istio": "egressgateway"}, budget.GetSelector().GetMatchLabels())
	require.Equal(t, []string{"api.openai.com", "api.anthropic.com"}, budget.GetRules()[0].GetTo()[0].GetOperation().GetHosts())
	require.Equal(t, []string{"cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"},
		clients.GetRules()[0].GetFrom()[0].GetSource().GetPrincipals())
	require.Equal(t, []string{"9000"}, clients.GetRules()[0].GetTo()[0].GetOperation().GetPorts())
	require.Len(t, r.peerAuth, 1)
	require.Equal(t, "STRICT", r.peerAuth[0].Spec.GetMtls().GetMode().String())
	require.Len(t, r.telemetry, 1)
	require.Equal(t, "purser-als", r.telemetry[0].Spec.GetAccessLogging()[0].GetProviders()[0].GetName())

	// The notes' meshConfig snippet is a valid MeshConfig naming both providers and purser's
	// Service.
	i := strings.Index(r.notes, "  extensionProviders:")
	require.GreaterOrEqual(t, i, 0, r.notes)
	snippet := r.notes[i:strings.Index(r.notes, "and apply")]
	js, err := yaml.YAMLToJSONStrict([]byte(dedent(snippet)))
	require.NoError(t, err)
	var mc meshv1alpha1.MeshConfig
	require.NoError(t, strictProto(js, &mc), snippet)
	names := map[string]*meshv1alpha1.MeshConfig_ExtensionProvider{}
	for _, p := range mc.GetExtensionProviders() {
		names[p.GetName()] = p
	}
	authz := names[budget.GetProvider().GetName()].GetEnvoyExtAuthzGrpc()
	require.NotNil(t, authz, "the CUSTOM policy's provider is in the notes")
	require.Equal(t, "purser.purser.svc.cluster.local", authz.GetService())
	require.False(t, authz.GetFailOpen())
	require.Equal(t, "purser.purser.svc.cluster.local", names["purser-als"].GetEnvoyHttpAls().GetService())
}

func dedent(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, "  ")
	}
	return strings.Join(lines, "\n")
}

// The Envoy Gateway example: the SecurityPolicy calls purser's gRPC Service port, fails
// closed with a deadline below purser's own budget; the EnvoyProxy sends access logs there;
// the ReferenceGrant admits both from their namespaces to that Service.
func TestChart_EnvoyGatewayExample(t *testing.T) {
	r := render(t, valuesFile(t, filepath.Join(examplesDir, "envoy-gateway.values.yaml")))
	require.NotContains(t, envMap(r.deployments[0].Spec.Template.Spec.Containers[0].Env), "PURSER_SHARED_SECRET")
	svc := r.services[0]
	grpcPort := svc.Spec.Ports[0]
	require.Equal(t, "grpc", grpcPort.Name)
	want := backendRef{Name: svc.Name, Namespace: svc.Namespace, Port: grpcPort.Port}

	require.Len(t, r.securityPols, 1)
	sp := r.securityPols[0]
	require.Equal(t, []backendRef{want}, sp.Spec.ExtAuth.GRPC.BackendRefs)
	require.NotNil(t, sp.Spec.ExtAuth.FailOpen)
	require.False(t, *sp.Spec.ExtAuth.FailOpen, "fail closed")
	timeout, err := time.ParseDuration(sp.Spec.ExtAuth.Timeout)
	require.NoError(t, err)
	require.LessOrEqual(t, timeout, 500*time.Millisecond)
	require.Equal(t, "Gateway", sp.Spec.TargetRefs[0].Kind)

	require.Len(t, r.envoyProxies, 1)
	ep := r.envoyProxies[0]
	sink := ep.Spec.Telemetry.AccessLog.Settings[0].Sinks[0]
	require.Equal(t, "ALS", sink.Type)
	require.Equal(t, []backendRef{want}, sink.ALS.BackendRefs)
	require.Equal(t, "HTTP", sink.ALS.Type)
	require.Contains(t, sink.ALS.HTTP.ResponseHeaders, "x-request-id")

	require.Len(t, r.referenceGrants, 1)
	rg := r.referenceGrants[0]
	require.Equal(t, svc.Namespace, rg.Metadata.Namespace, "a ReferenceGrant lives in the target's namespace")
	from := map[string]string{}
	for _, f := range rg.Spec.From {
		from[f.Kind] = f.Namespace
	}
	require.Equal(t, map[string]string{"SecurityPolicy": sp.Metadata.Namespace, "EnvoyProxy": ep.Metadata.Namespace}, from)
	require.Equal(t, svc.Name, rg.Spec.To[0].Name)
	require.Equal(t, "Service", rg.Spec.To[0].Kind)
}

// The production example: pinned digest, HPA on CPU, a ServiceMonitor, TLS from a Secret.
func TestChart_ProductionExample(t *testing.T) {
	r := render(t, valuesFile(t, filepath.Join(examplesDir, "production.values.yaml")))
	c := r.deployments[0].Spec.Template.Spec.Containers[0]
	require.Contains(t, c.Image, "@sha256:", "pinned to a digest")
	require.Len(t, r.hpas, 1)
	require.Len(t, r.monitors, 1)
	require.Equal(t, "kube-prometheus-stack", r.monitors[0].Labels["release"])
	var tlsVol *corev1.Volume
	for i, v := range r.deployments[0].Spec.Template.Spec.Volumes {
		if v.Name == "tls" {
			tlsVol = &r.deployments[0].Spec.Template.Spec.Volumes[i]
		}
	}
	require.NotNil(t, tlsVol)
	require.Equal(t, "purser-tls", tlsVol.Secret.SecretName)
	env := envMap(c.Env)
	// The variables purser serve reads (cmd/purser: -grpc-tls-cert, -grpc-tls-key,
	// -grpc-client-ca, -grpc-client-names).
	require.Equal(t, "/etc/purser/tls/tls.crt", env["PURSER_GRPC_TLS_CERT"].Value)
	require.Equal(t, "/etc/purser/tls/tls.key", env["PURSER_GRPC_TLS_KEY"].Value)
	require.Equal(t, "/etc/purser/tls/ca.crt", env["PURSER_GRPC_CLIENT_CA"].Value, "mtls: true")
	require.Equal(t, "spiffe://cluster.local/ns/envoy/sa/envoy", env["PURSER_GRPC_CLIENT_NAMES"].Value)
}
