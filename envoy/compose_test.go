package envoy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

// composeService is the part of a docker-compose service these checks read.
type composeService struct {
	Image       string            `json:"image"`
	Command     []string          `json:"command"`
	Entrypoint  []string          `json:"entrypoint"`
	Environment map[string]string `json:"environment"`
	Ports       []string          `json:"ports"`
	Volumes     []string          `json:"volumes"`
	DependsOn   map[string]struct {
		Condition string `json:"condition"`
	} `json:"depends_on"`
}

func loadCompose(t *testing.T) map[string]composeService {
	t.Helper()
	b, err := os.ReadFile("../docker-compose.yaml")
	require.NoError(t, err)
	var f struct {
		Services map[string]composeService `json:"services"`
	}
	require.NoError(t, yaml.Unmarshal(b, &f)) // YAML merge keys (<<) resolved here, as compose does
	return f.Services
}

func TestCompose(t *testing.T) {
	svcs := loadCompose(t)
	for _, name := range []string{"postgres", "migrate", "seed", "purser", "fakellm", "envoy"} {
		require.Contains(t, svcs, name)
	}
	demo := loadCfg(t, "envoy-demo.yaml")

	t.Run("EnvoyMountsTheDemoConfig", func(t *testing.T) {
		e := svcs["envoy"]
		require.Equal(t, "envoyproxy/envoy:v1.40-latest", e.Image)
		mounts := map[string]string{}
		for _, v := range e.Volumes {
			parts := strings.Split(v, ":")
			require.GreaterOrEqual(t, len(parts), 2, "volume %q", v)
			mounts[parts[1]] = parts[0]
			_, err := os.Stat(filepath.Join("..", parts[0]))
			require.NoError(t, err, "mounted path %s must exist in the repository", parts[0])
		}
		require.Equal(t, "./envoy/envoy-demo.yaml", mounts["/etc/envoy/envoy.yaml"])
		require.Equal(t, "./envoy/secrets", mounts["/etc/envoy/secrets"], "the credential injectors read /etc/envoy/secrets/*.yaml")
		require.Contains(t, strings.Join(e.Command, " "), "-c /etc/envoy/envoy.yaml")
		require.Contains(t, e.Ports, "127.0.0.1:10000:10000")
		listen := demo.bs.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress().GetPortValue()
		require.Equal(t, uint32(10000), listen)
	})
	t.Run("PurserMatchesTheEnvoyCluster", func(t *testing.T) {
		p := svcs["purser"]
		require.Equal(t, "serve", p.Command[0])
		require.Contains(t, p.Command, "--grpc-addr=0.0.0.0:9000")
		require.Contains(t, p.Command, "--http-addr=0.0.0.0:9090")
		sa := demo.cluster(t, "purser").GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		require.Equal(t, "purser", sa.GetAddress(), "Envoy resolves the compose service name")
		require.Equal(t, uint32(9000), sa.GetPortValue())
		require.Equal(t, sharedSecretPlaceholder, p.Environment["PURSER_SHARED_SECRET"], "must equal x-purser-secret in the Envoy configs")
		require.Equal(t, sharedSecretPlaceholder, metadataValue(demo.authz.GetGrpcService().GetInitialMetadata(), "x-purser-secret"))
		require.NotEmpty(t, p.Environment["DATABASE_URL"])
		require.NotEmpty(t, p.Environment["PURSER_ADMIN_TOKEN"])
		require.Equal(t, "service_completed_successfully", p.DependsOn["migrate"].Condition, "serve refuses an unmigrated schema")
		requireTTLCoversRoutes(t, p.Environment["PURSER_RESERVATION_TTL"])
	})
	t.Run("MigrateAndSeed", func(t *testing.T) {
		require.Equal(t, []string{"migrate"}, svcs["migrate"].Command)
		require.Equal(t, "service_healthy", svcs["migrate"].DependsOn["postgres"].Condition)
		require.Equal(t, "seed", svcs["seed"].Command[0])
		require.Equal(t, "service_completed_successfully", svcs["seed"].DependsOn["migrate"].Condition)
		require.Equal(t, "postgres:15", svcs["postgres"].Image)
		for _, s := range []string{"migrate", "seed", "purser"} {
			require.Equal(t, svcs["purser"].Environment["DATABASE_URL"], svcs[s].Environment["DATABASE_URL"], s)
		}
	})
	t.Run("FakeLLMMatchesTheProviderClusters", func(t *testing.T) {
		f := svcs["fakellm"]
		require.Equal(t, []string{"/usr/local/bin/fakellm"}, f.Entrypoint)
		require.Equal(t, []string{"-addr", "0.0.0.0:8000"}, f.Command)
		for _, name := range []string{"openai", "anthropic", "gemini"} {
			sa := demo.cluster(t, name).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			require.Equal(t, "fakellm", sa.GetAddress(), name)
			require.Equal(t, uint32(8000), sa.GetPortValue(), name)
		}
	})
	t.Run("PortsStayOnLoopback", func(t *testing.T) {
		for name, s := range svcs {
			for _, p := range s.Ports {
				require.True(t, strings.HasPrefix(p, "127.0.0.1:"), "%s publishes %s beyond loopback", name, p)
			}
		}
	})
	t.Run("DockerfileBuildsBothCommands", func(t *testing.T) {
		b, err := os.ReadFile("../Dockerfile")
		require.NoError(t, err)
		df := string(b)
		require.Contains(t, df, "FROM golang:1.26")
		require.Contains(t, df, "./cmd/purser")
		require.Contains(t, df, "./cmd/fakellm")
		require.Contains(t, df, "/usr/local/bin/fakellm")
		require.Regexp(t, `(?m)^USER (65532|nonroot)`, df)
	})
}
